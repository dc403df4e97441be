"""The asymmetric spectral scaling law across FFN widths (Jha & Reagen, EMNLP 2025; docs/scaling.md).

For a family of models that differ only in FFN width D, fit ``rank = A * D^beta`` by least squares
on (ln D, ln rank), separately for soft and hard rank, per layer and for the per-model median over
layers; report R^2 (log space, flagged below a level), a 95% Student-t interval for beta
(sui_onnx/student_t.py), the asymmetry beta_soft - beta_hard with its interval, SUI against width,
the width where the fitted hard rank saturates (d hard / d D < tau) and the measured width with the
highest median SUI. Several seeds of one width are pooled (mean and spread per width) and also
fitted seed by seed.

Pure: reports and arrays in, numbers out. No printing, no files, no terminal. Set-level problems
(too few widths, mixed depths or families) raise :class:`sui_onnx.errors.SuiError`; bad arrays
passed to the numeric functions raise ``ValueError``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._version import __version__
from .errors import SuiError, option
from .report import Report, json_safe
from .defaults import DEFAULT_MIN_R2, DEFAULT_SEED_KEY, DEFAULT_TAU  # noqa: F401 (re-exported)
from .student_t import betainc, student_t_quantile, student_t_sf  # noqa: F401 (re-exported)

SCHEMA = "sui-onnx/scaling"
SCHEMA_VERSION = 2  # 2: seeds pooled per width (per_width, seed_fits, inputs.seeds), low_r2 flags
CONFIDENCE = 0.95
MIN_WIDTHS = 3
# Jha & Reagen (EMNLP 2025), GPT-2 160M, AdamW, D = 768..6144, site post: shown as a labelled comparison
# row of the fits table, never as a result
PAPER_REFERENCE = {"caption": "paper = Jha & Reagen (EMNLP 2025), GPT-2 160M at D = 768..6144: for comparison, "
                              "not a result of this fit",
                   "soft": (0.661, 0.971), "hard": (0.289, 0.338)}


# ------------------------------------------------------------------------------ power-law fit
@dataclass(frozen=True)
class PowerLawFit:
    """rank = A * D^beta fitted by least squares on (ln D, ln rank).

    r2 is the coefficient of determination in log space (NaN when every rank is equal);
    beta_ci95 the 95% Student-t interval for beta with n - 2 degrees of freedom and
    residual_sd the residual standard deviation in ln units (both NaN for n < 3)."""

    beta: float
    A: float
    r2: float
    beta_ci95: tuple[float, float]
    n: int
    residual_sd: float
    beta_se: float = math.nan

    def predict(self, width: Any) -> Any:
        """Fitted rank at width(s) D."""
        return self.A * np.asarray(width, dtype=np.float64) ** self.beta

    def slope(self, width: Any) -> Any:
        """d rank / d D = beta * A * D^(beta - 1) = beta * rank(D) / D."""
        d = np.asarray(width, dtype=np.float64)
        return self.beta * self.A * d ** (self.beta - 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "A": self.A,
            "r2": self.r2,
            "beta_ci95": [self.beta_ci95[0], self.beta_ci95[1]],
            "beta_se": self.beta_se,
            "n": self.n,
            "residual_sd": self.residual_sd,
        }


def fit_power_law(widths: Sequence[float], ranks: Sequence[float]) -> PowerLawFit:
    """Fit rank = A * D^beta by ordinary least squares of ln rank on ln D.

    Needs at least two distinct positive widths and positive finite ranks; the 95% interval for
    beta (beta +- t_{0.975, n-2} * s / sqrt(Sxx)) needs n >= 3 and is (nan, nan) otherwise."""
    d = np.asarray(widths, dtype=np.float64).reshape(-1)
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if d.shape != r.shape:
        raise ValueError(f"widths and ranks differ in length ({d.size} vs {r.size})")
    if d.size < 2:
        raise ValueError("a power-law fit needs at least 2 points")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(r))):
        raise ValueError("widths and ranks must be finite")
    if np.any(d <= 0) or np.any(r <= 0):
        raise ValueError("widths and ranks must be positive for a log-log fit")
    x, y = np.log(d), np.log(r)
    n = int(x.size)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if not sxx > 0:
        raise ValueError("a power-law fit needs at least 2 distinct widths")
    yc = y - y.mean()
    beta = float(xc @ yc) / sxx
    ln_a = float(y.mean() - beta * x.mean())
    resid = yc - beta * xc
    sse = float(resid @ resid)
    sst = float(yc @ yc)
    flat = sst <= n * (1e-12 * max(1.0, float(np.abs(y).max()))) ** 2  # equal ranks, up to round-off
    if not flat:
        r2 = max(0.0, 1.0 - sse / sst) if sse <= sst else 0.0
    else:
        r2 = math.nan
    if n >= 3:
        residual_sd = math.sqrt(sse / (n - 2))
        se = residual_sd / math.sqrt(sxx)
        half = student_t_quantile(0.5 + CONFIDENCE / 2.0, n - 2) * se
        ci = (beta - half, beta + half)
    else:
        residual_sd = se = math.nan
        ci = (math.nan, math.nan)
    return PowerLawFit(beta=beta, A=math.exp(ln_a), r2=r2, beta_ci95=ci, n=n,
                       residual_sd=residual_sd, beta_se=se)


# ------------------------------------------------------------------------------ saturation
@dataclass(frozen=True)
class Saturation:
    """Where the fitted hard-rank curve gains fewer than tau dominant directions per unit width.

    status: "reached" (width holds D*), "no_growth" (beta_hard <= 0: the slope is never positive),
    "not_reached" (beta_hard >= 1: the slope never falls). position: where D* lies against the
    measured widths ("below", "within", "above"); None unless reached."""

    tau: float
    width: float | None
    status: str
    position: str | None
    slope_at_max_width: float

    def to_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "width": self.width, "status": self.status, "position": self.position,
                "slope_at_max_width": self.slope_at_max_width}


def saturation_width(beta: float, a: float, tau: float = DEFAULT_TAU) -> float | None:
    """D* with beta * A * D*^(beta - 1) = tau, for 0 < beta < 1 (the slope falls through tau
    there and stays below it); None when beta <= 0 or beta >= 1."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if not a > 0:
        raise ValueError(f"A must be positive, got {a}")
    if not 0.0 < beta < 1.0:
        return None
    return float(math.exp(math.log(tau / (beta * a)) / (beta - 1.0)))


def saturation(fit: PowerLawFit, widths: Sequence[float], tau: float = DEFAULT_TAU) -> Saturation:
    """Saturation of a hard-rank fit, placed against the measured widths."""
    width = saturation_width(fit.beta, fit.A, tau)
    lo, hi = float(min(widths)), float(max(widths))
    slope_max = float(fit.slope(hi))
    if width is None:
        status = "no_growth" if fit.beta <= 0 else "not_reached"
        return Saturation(tau, None, status, None, slope_max)
    position = "below" if width < lo else "above" if width > hi else "within"
    return Saturation(tau, width, "reached", position, slope_max)


# ------------------------------------------------------------------------------ the analysis
@dataclass(frozen=True)
class Spread:
    """One quantity over the seeds of one width: mean, sample SD (ddof 1; NaN for one seed), range."""

    mean: float
    sd: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        v = np.asarray(values, dtype=np.float64)
        sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        return cls(float(v.mean()), sd, float(v.min()), float(v.max()), int(v.size))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "sd": self.sd, "min": self.min, "max": self.max, "n": self.n}


@dataclass
class _Point:
    """The measurements of one width that the fits read: per-layer ranks and SUI (None where a layer
    is not usable), their medians over the usable layers, and where they came from."""

    label: str
    width: int
    n_layers: int
    usable_layers: int
    min_tokens: int
    median_hard: float
    median_soft: float
    median_sui: float
    layer_hard: list[float | None]
    layer_soft: list[float | None]
    layer_sui: list[float | None]
    layer_widths: list[int]
    provenance: dict[str, Any]


@dataclass
class RunPoint(_Point):
    """One input (one trained model, one seed): its width, seed and per-layer / median measurements."""

    seed: Any = field(kw_only=True)  # required, after the shared fields

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "width": self.width,
            "seed": self.seed,
            "path": self.provenance.get("path"),
            "sha256": self.provenance.get("sha256"),
            "n_layers": self.n_layers,
            "usable_layers": self.usable_layers,
            "min_tokens": self.min_tokens,
            "median_hard_rank": self.median_hard,
            "median_soft_rank": self.median_soft,
            "median_sui": self.median_sui,
        }


@dataclass
class ModelPoint(_Point):
    """One width of the family, pooled over its seeds (one run: that run's numbers).

    median_*: the arithmetic mean over the runs of each run's median over its usable layers;
    layer_*: per layer position, the mean over the runs where that layer is usable (None if none);
    usable_layers / min_tokens: the smallest over the runs. These are the points the fits use."""

    runs: list[RunPoint] = field(default_factory=list)

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    def spread(self, key: str) -> Spread:
        """Spread over the seeds of the per-run median of `key` ("hard", "soft" or "sui")."""
        return Spread.of([getattr(r, f"median_{key}") for r in self.runs])

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "seeds": self.seeds,
            "n_seeds": len(self.runs),
            "usable_layers": self.usable_layers,
            "min_tokens": self.min_tokens,
            "hard_rank": self.spread("hard").to_dict(),
            "soft_rank": self.spread("soft").to_dict(),
            "sui": self.spread("sui").to_dict(),
        }


@dataclass
class LayerScaling:
    layer: int
    widths: list[int]
    soft: PowerLawFit | None
    hard: PowerLawFit | None
    asymmetry: PowerLawFit | None
    saturation: Saturation | None
    note: str = ""

    def to_dict(self, min_r2: float = DEFAULT_MIN_R2) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "widths": self.widths,
            "soft_rank": _fit_dict(self.soft, min_r2),
            "hard_rank": _fit_dict(self.hard, min_r2),
            "asymmetry": _asymmetry_dict(self.asymmetry),
            "saturation": self.saturation.to_dict() if self.saturation else None,
            "note": self.note,
        }


@dataclass
class SeedFit:
    """The fits over the runs of one seed alone (its spread across seeds shows how much one training
    run moves the exponents)."""

    seed: Any
    widths: list[int]
    soft: PowerLawFit
    hard: PowerLawFit
    asymmetry: PowerLawFit

    def to_dict(self, min_r2: float = DEFAULT_MIN_R2) -> dict[str, Any]:
        return {"seed": self.seed, "widths": self.widths, "soft_rank": _fit_dict(self.soft, min_r2),
                "hard_rank": _fit_dict(self.hard, min_r2), "asymmetry": _asymmetry_dict(self.asymmetry)}


@dataclass
class ScalingResult:
    """Everything `scaling_analysis` found; ``to_dict`` is the JSON (schema sui-onnx/scaling)."""

    models: list[ModelPoint]  # one per width (seeds pooled), sorted by width
    n_layers: int
    site: str | None
    top_fraction: float | None
    family: dict[str, Any]
    tau: float
    soft: PowerLawFit
    hard: PowerLawFit
    asymmetry: PowerLawFit  # fit of ln(soft / hard): its beta is beta_soft - beta_hard
    saturation: Saturation
    sui_peak: dict[str, Any]
    layers: list[LayerScaling] = field(default_factory=list)
    runs: list[RunPoint] = field(default_factory=list)  # every input, sorted by width then seed
    seed_fits: list[SeedFit] = field(default_factory=list)  # one per seed when there are >= 2 seeds
    min_r2: float = DEFAULT_MIN_R2
    seed_key: str = DEFAULT_SEED_KEY
    warnings: list[str] = field(default_factory=list)  # calibrations that differ between the inputs

    @property
    def widths(self) -> list[int]:
        return [m.width for m in self.models]

    @property
    def seeds(self) -> list[Any]:
        return sorted({_seed_id(r.seed): r.seed for r in self.runs}.values(), key=_seed_order)

    def low_r2(self, fit: PowerLawFit | None) -> bool:
        """True when the fit's R^2 is defined and below ``min_r2`` (not a clean power law)."""
        return fit is not None and math.isfinite(fit.r2) and fit.r2 < self.min_r2

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "sui-onnx", "version": __version__},
            "inputs": {
                "widths": self.widths,
                "n_layers": self.n_layers,
                "site": self.site,
                "top_fraction": self.top_fraction,
                "family": self.family,
                "seed_key": self.seed_key,
                "seeds": self.seeds,
                "models": [r.to_dict() for r in self.runs],
            },
            "settings": {"tau": self.tau, "confidence": CONFIDENCE, "min_r2": self.min_r2,
                         "fit": "least squares of ln rank on ln D",
                         "model_statistic": "median over usable layers",
                         "seed_pooling": "per width, the arithmetic mean over seeds; the fits use ln of "
                                         "these means (one point per width)"},
            "per_width": [m.to_dict() for m in self.models],
            "median_fits": {
                "soft_rank": _fit_dict(self.soft, self.min_r2),
                "hard_rank": _fit_dict(self.hard, self.min_r2),
                "asymmetry": _asymmetry_dict(self.asymmetry),
            },
            "layers": [x.to_dict(self.min_r2) for x in self.layers],
            "seed_fits": [f.to_dict(self.min_r2) for f in self.seed_fits],
            "sui": [{"width": m.width, "median_sui": m.median_sui} for m in self.models],
            "saturation": self.saturation.to_dict(),
            "sui_peak": self.sui_peak,
            "warnings": list(self.warnings),
        }

    @property
    def paper_reference(self) -> dict[str, Any]:
        """The paper's fits, shown as a labelled comparison row (PAPER_REFERENCE)."""
        return PAPER_REFERENCE

    @property
    def asymmetry_verdict(self) -> str:
        """Where the interval of beta_soft - beta_hard lies (asymmetry_verdict)."""
        return asymmetry_verdict(self.asymmetry)

    def __rich__(self):
        """The terminal tables (render.scaling), so ``console.print(result)`` shows them."""
        from .render.scaling import scaling_renderable

        return scaling_renderable(self)

    def to_json(self) -> str:
        """The JSON text; NaN (undefined R^2 or interval) is written as null."""
        return json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n"


def asymmetry_verdict(fit: PowerLawFit | None) -> str:
    """Where the 95% interval of beta_soft - beta_hard lies: "above 0", "below 0", "includes 0",
    or "undefined" (no interval: fewer than 3 widths)."""
    if fit is None:
        return "undefined"
    lo, hi = fit.beta_ci95
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undefined"
    return "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0"


def _fit_dict(fit: PowerLawFit | None, min_r2: float) -> dict[str, Any] | None:
    if fit is None:
        return None
    return {**fit.to_dict(), "low_r2": bool(math.isfinite(fit.r2) and fit.r2 < min_r2)}


def _asymmetry_dict(fit: PowerLawFit | None) -> dict[str, Any] | None:
    if fit is None:
        return None
    return {"beta_soft_minus_hard": fit.beta, "ci95": [fit.beta_ci95[0], fit.beta_ci95[1]],
            "beta_se": fit.beta_se, "n": fit.n, "verdict": asymmetry_verdict(fit)}


def _family_hints(report: Report) -> dict[str, Any]:
    model = report.model.to_dict()  # family is a caller's provenance (ModelInfo.extra), architecture a field
    hints = {key: model[key] for key in ("family", "architecture") if model.get(key) not in (None, "")}
    return hints


def _median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def report_seed(report: Report, key: str = DEFAULT_SEED_KEY, label: str = "report") -> Any:
    """The training seed a report records, or None.

    ``key`` is a dotted path into the report's model provenance (``"model"`` of the report JSON):
    ``--seed-key train.seed`` reads ``model.train.seed``. The default key ``seed`` reads ``model.seed``
    and, when that is absent, ``model.train.seed`` (what models/scaling_families.py and
    bench/results.py write). A seed is a number or a name; anything else is refused."""
    paths = ["seed", "train.seed"] if key == DEFAULT_SEED_KEY else [key]
    for path in paths:
        node: Any = report.model.to_dict()
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None:
            continue
        if isinstance(node, bool) or not isinstance(node, (int, float, str)):
            raise SuiError(f"{label}: the seed at model.{path} is not a number or a name ({type(node).__name__})")
        return node
    return None


def _seed_id(seed: Any) -> tuple[str, str]:
    return (type(seed).__name__, repr(seed))


def _seed_order(seed: Any) -> tuple[int, float, str]:
    if seed is None:
        return (2, 0.0, "")
    if isinstance(seed, (int, float)):
        return (0, float(seed), "")
    return (1, 0.0, str(seed))


def _run_point(report: Report, label: str, seed_key: str) -> RunPoint:
    layers = sorted(report.layers, key=lambda x: x.layer)
    ok = [x.usable and x.hard_rank is not None and x.soft_rank is not None for x in layers]
    usable = [x for x, good in zip(layers, ok) if good]
    if not usable:
        raise SuiError(f"{label}: no usable layer (every layer is degenerate or non-finite)")
    return RunPoint(
        label=label,
        width=max(x.width for x in layers),
        seed=report_seed(report, seed_key, label),
        n_layers=len(layers),
        usable_layers=len(usable),
        min_tokens=min(x.tokens for x in layers),
        median_hard=_median([x.hard_rank for x in usable]),
        median_soft=_median([x.soft_rank for x in usable]),
        median_sui=_median([x.sui for x in usable]),
        layer_hard=[x.hard_rank if good else None for x, good in zip(layers, ok)],
        layer_soft=[x.soft_rank if good else None for x, good in zip(layers, ok)],
        layer_sui=[x.sui if good else None for x, good in zip(layers, ok)],
        layer_widths=[x.width for x in layers],
        provenance=report.model.to_dict(),
    )


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(np.asarray(kept, dtype=np.float64))) if kept else None


def _pooled(runs: list[RunPoint]) -> ModelPoint:
    """One width's runs (distinct seeds) as one point: means over the seeds."""
    first = runs[0]
    n = first.n_layers
    label = first.label if len(runs) == 1 else f"{first.label} (+{len(runs) - 1} more seed{'s' if len(runs) > 2 else ''})"
    return ModelPoint(
        label=label,
        width=first.width,
        n_layers=n,
        usable_layers=min(r.usable_layers for r in runs),
        min_tokens=min(r.min_tokens for r in runs),
        median_hard=float(np.mean([r.median_hard for r in runs])),
        median_soft=float(np.mean([r.median_soft for r in runs])),
        median_sui=float(np.mean([r.median_sui for r in runs])),
        layer_hard=[_mean_or_none([r.layer_hard[i] for r in runs]) for i in range(n)],
        layer_soft=[_mean_or_none([r.layer_soft[i] for r in runs]) for i in range(n)],
        layer_sui=[_mean_or_none([r.layer_sui[i] for r in runs]) for i in range(n)],
        layer_widths=list(first.layer_widths),
        provenance=first.provenance,
        runs=list(runs),
    )


def _site(report: Report) -> str | None:
    return report.settings.site or report.model.site


def _grouped(values: Sequence[Any], labels: Sequence[str], unit: str) -> str:
    """'3 FFN layers in a.json (+4 more), 2 in b.json': one entry per distinct value."""
    groups: dict[Any, list[str]] = {}
    for v, lab in zip(values, labels):
        groups.setdefault(v, []).append(lab)
    parts = []
    for i, (v, labs) in enumerate(groups.items()):
        more = f" (+{len(labs) - 1} more)" if len(labs) > 1 else ""
        parts.append(f"{v}{' ' + unit if i == 0 and unit else ''} in {labs[0]}{more}")
    return ", ".join(parts)


def _check_family(reports: Sequence[Report], labels: Sequence[str]) -> dict[str, Any]:
    """Same depth, same family / architecture hints, same activation kinds, same site and top
    fraction; returns the common family hints."""
    depths = [len(r.layers) for r in reports]
    if len(set(depths)) > 1:
        raise SuiError(f"mixed depths ({_grouped(depths, labels, 'FFN layers')}); a scaling fit needs one family at one depth")
    common: dict[str, Any] = {}
    for key in ("family", "architecture"):
        seen = {}
        for lab, r in zip(labels, reports):
            value = _family_hints(r).get(key)
            if value is not None:
                seen.setdefault(str(value), lab)
        if len(seen) > 1:
            parts = ", ".join(f"{lab}: {v}" for v, lab in seen.items())
            raise SuiError(f"mixed families ({key} differs: {parts}); fit one family at a time")
        if seen:
            common[key] = next(iter(seen))
    ref_acts = None
    ref_label = None
    for lab, r in zip(labels, reports):
        acts = [x.activation for x in sorted(r.layers, key=lambda y: y.layer)]
        if ref_acts is None:
            ref_acts, ref_label = acts, lab
            continue
        for i, (a, b) in enumerate(zip(ref_acts, acts)):
            if "unknown" in (a, b) or a == b:
                continue
            raise SuiError(f"mixed families (activation of FFN layer {i}: {ref_label} {a}, {lab} {b}); "
                           "fit one family at a time")
    if ref_acts:
        known = sorted({a for a in ref_acts if a != "unknown"})
        if known:
            common["activations"] = known
    sites = {s for s in (_site(r) for r in reports) if s is not None}
    if len(sites) > 1:
        raise SuiError(f"mixed tap sites ({', '.join(sorted(sites))}); analyze every model at the same {option('site')}")
    fractions = {r.settings.top_fraction for r in reports if r.settings.top_fraction is not None}
    if len(fractions) > 1:
        raise SuiError(f"mixed {option('top_fraction')} values ({', '.join(map(str, sorted(fractions)))}): SUI is not comparable")
    return common


def calibration_differences(reports: Sequence[Report], labels: Sequence[str]) -> list[str]:
    """One line per calibration setting that differs between the inputs (token count, window length,
    mix, source data): the ranks of each width are then measured on different data, so the fit mixes
    width with calibration. Hard rank is bounded by the token count and soft rank rises with it, so
    a token count that grows with width alone can make a slope; token counts in proportion to the
    width (the same tokens per FFN neuron) are a deliberate design and not warned about. Warned,
    not refused: a caller may mean it."""
    how = "calibrate every width on the same --calib, --tokens, --seq-len and --mix"
    widths = [max((x.width for x in r.layers), default=0) for r in reports]
    order = sorted(range(len(reports)), key=lambda i: (widths[i], labels[i]))  # by width: independent of input order
    reports, labels, widths = [reports[i] for i in order], [labels[i] for i in order], [widths[i] for i in order]
    out = []
    tokens = [r.calibration.tokens for r in reports]
    per_width = [t / w for t, w in zip(tokens, widths) if isinstance(t, int) and w > 0]
    in_proportion = bool(per_width) and max(per_width) <= 1.01 * min(per_width)  # the same tokens per neuron
    if len({t for t in tokens if isinstance(t, int)}) > 1 and not in_proportion:
        shown = [f"{t:,}" if isinstance(t, int) else "unrecorded" for t in tokens]
        out.append(f"the inputs were calibrated on different token counts ({_grouped(shown, labels, 'tokens')}): "
                   f"hard rank is bounded by and soft rank rises with the token count, so the fit mixes width "
                   f"with calibration; {how}")
    for key, what in (("seq_len", "window lengths"), ("mix", "--mix settings")):
        values = [getattr(r.calibration, key) for r in reports]
        if len({v for v in values if v is not None}) > 1:
            out.append(f"the inputs were calibrated with different {what} "
                       f"({_grouped(['unrecorded' if v is None else v for v in values], labels, '')}); {how}")
    digests = [tuple(r.calibration.digests()) for r in reports]
    if len({d for d in digests if d and all(d)}) > 1:
        shown = [", ".join(x[:12] for x in d) if d and all(d) else "unrecorded" for d in digests]
        out.append(f"the inputs were calibrated on different data (sha256 {_grouped(shown, labels, '')}); {how}")
    return out


def scaling_analysis(reports: Sequence[Report], labels: Sequence[str] | None = None,
                     tau: float = DEFAULT_TAU, min_r2: float = DEFAULT_MIN_R2,
                     seed_key: str = DEFAULT_SEED_KEY) -> ScalingResult:
    """Fit the spectral scaling law over reports of one model family at several FFN widths.

    The width of a model is its widest FFN layer. Reports of the same width are seeds of that width
    (their seed: :func:`report_seed` with ``seed_key``) and are pooled into one point per width (the
    mean over seeds); two reports with the same width and seed are refused. Layers are matched by
    position (sorted layer index). Per layer, only usable layers enter the fit; a layer with fewer
    than 3 usable widths gets no fit. With two or more seeds, each seed present at >= 3 widths is
    also fitted on its own (``seed_fits``). Fits with R^2 below ``min_r2`` are flagged (``low_r2``).
    Raises SuiError for sets that cannot be fitted."""
    if not tau > 0 or not math.isfinite(tau):
        raise SuiError(f"{option('tau')} must be a positive number, got {tau}")
    if not (math.isfinite(min_r2) and 0.0 <= min_r2 <= 1.0):
        raise SuiError(f"{option('min_r2')} must be a number in [0, 1], got {min_r2}")
    if not seed_key or any(not part for part in seed_key.split(".")):
        raise SuiError(f"{option('seed_key')} must be a dotted path such as seed or train.seed, got {seed_key!r}")
    labels = list(labels) if labels is not None else [f"input {i + 1}" for i in range(len(reports))]
    if len(labels) != len(reports):
        raise ValueError("labels and reports differ in length")
    if len(reports) < MIN_WIDTHS:
        raise SuiError(f"scaling needs reports of at least {MIN_WIDTHS} distinct FFN widths; got {len(reports)} input(s)")
    family = _check_family(reports, labels)
    runs = [_run_point(r, lab, seed_key) for r, lab in zip(reports, labels)]
    by_key: dict[tuple[int, tuple[str, str]], str] = {}
    for run in runs:
        key = (run.width, _seed_id(run.seed))
        if key in by_key:
            seed = "no seed recorded" if run.seed is None else f"seed {run.seed}"
            raise SuiError(f"duplicate width D={run.width} with the same seed ({by_key[key]} and {run.label}: {seed}); "
                           f"give one model per width and seed (the seed is read from the report's model "
                           f"provenance, {option('seed_key')} {seed_key})")
        by_key[key] = run.label
    runs.sort(key=lambda r: (r.width, _seed_order(r.seed)))
    groups: dict[int, list[RunPoint]] = {}
    for run in runs:
        groups.setdefault(run.width, []).append(run)
    if len(groups) < MIN_WIDTHS:
        raise SuiError(f"scaling needs reports of at least {MIN_WIDTHS} distinct FFN widths; got {len(groups)} "
                       f"width(s) in {len(runs)} input(s)")
    points = [_pooled(groups[w]) for w in sorted(groups)]
    widths = [p.width for p in points]

    soft = fit_power_law(widths, [p.median_soft for p in points])
    hard = fit_power_law(widths, [p.median_hard for p in points])
    asym = fit_power_law(widths, [p.median_soft / p.median_hard for p in points])

    layers = []
    layer_ids = [x.layer for x in sorted(reports[0].layers, key=lambda y: y.layer)]
    for i, layer_id in enumerate(layer_ids):
        pts = [(p.layer_widths[i], p.layer_soft[i], p.layer_hard[i]) for p in points
               if p.layer_soft[i] is not None and p.layer_hard[i] is not None]
        lw = [w for w, _, _ in pts]
        if len(set(lw)) < MIN_WIDTHS:
            layers.append(LayerScaling(layer_id, lw, None, None, None, None,
                                       note=f"no fit: only {len(set(lw))} usable width(s), {MIN_WIDTHS} needed"))
            continue
        ls = fit_power_law(lw, [s for _, s, _ in pts])
        lh = fit_power_law(lw, [h for _, _, h in pts])
        la = fit_power_law(lw, [s / h for _, s, h in pts])
        layers.append(LayerScaling(layer_id, lw, ls, lh, la, saturation(lh, lw, tau)))

    seed_fits = []
    seeds = sorted({_seed_id(r.seed): r.seed for r in runs}.values(), key=_seed_order)
    if len(seeds) >= 2:
        for seed in seeds:
            own = [r for r in runs if _seed_id(r.seed) == _seed_id(seed)]
            if len({r.width for r in own}) < MIN_WIDTHS:
                continue
            sw = [r.width for r in own]
            seed_fits.append(SeedFit(seed, sw, fit_power_law(sw, [r.median_soft for r in own]),
                                     fit_power_law(sw, [r.median_hard for r in own]),
                                     fit_power_law(sw, [r.median_soft / r.median_hard for r in own])))

    best = max(range(len(points)), key=lambda k: (points[k].median_sui, -k))
    position = ("smallest" if best == 0 else "largest" if best == len(points) - 1 else "interior")
    sui_peak = {"width": points[best].width, "median_sui": points[best].median_sui, "position": position}
    return ScalingResult(
        models=points,
        n_layers=len(layer_ids),
        site=next((s for s in (_site(r) for r in reports) if s), None),
        top_fraction=next((r.settings.top_fraction for r in reports if r.settings.top_fraction is not None), None),
        family=family,
        tau=tau,
        soft=soft,
        hard=hard,
        asymmetry=asym,
        saturation=saturation(hard, widths, tau),
        sui_peak=sui_peak,
        layers=layers,
        runs=runs,
        seed_fits=seed_fits,
        min_r2=min_r2,
        seed_key=seed_key,
        warnings=calibration_differences(reports, labels),
    )
