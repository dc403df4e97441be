"""The asymmetric spectral scaling law across FFN widths (Jha & Reagen, EMNLP 2025; docs/scaling.md).

For a family of models that differ only in FFN width D, fit ``rank = A * D^beta`` by least squares
on (ln D, ln rank), separately for soft and hard rank, per layer and for the per-model median over
layers; report R^2 (log space), a 95% Student-t interval for beta, the asymmetry
beta_soft - beta_hard, SUI against width, the width where the fitted hard rank saturates
(d hard / d D < tau) and the measured width with the highest median SUI.

Pure: reports and arrays in, numbers out. No printing, no files, no terminal. Set-level problems
(too few widths, mixed depths or families) raise :class:`sui_onnx.errors.SuiError`; bad arrays
passed to the numeric functions raise ``ValueError``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ._version import __version__
from .errors import SuiError
from .report import Report, _json_safe

SCHEMA = "sui-onnx/scaling"
SCHEMA_VERSION = 1
DEFAULT_TAU = 0.05
CONFIDENCE = 0.95
MIN_WIDTHS = 3


# ------------------------------------------------------------------------------ Student t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            return h
    raise ArithmeticError("incomplete beta continued fraction did not converge")  # pragma: no cover


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x == 0.0 or x == 1.0:
        return float(x)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, dof: float) -> float:
    """Upper tail P(T > t) of Student's t with `dof` degrees of freedom."""
    if not dof > 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return tail if t >= 0 else 1.0 - tail


def student_t_cdf(t: float, dof: float) -> float:
    """P(T <= t) of Student's t with `dof` degrees of freedom."""
    return 1.0 - student_t_sf(t, dof)


def _t_pdf(t: float, dof: float) -> float:
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_c - (dof + 1) / 2 * math.log1p(t * t / dof))


@lru_cache(maxsize=256)
def student_t_quantile(p: float, dof: float) -> float:
    """The p-quantile of Student's t with `dof` (> 0, not necessarily integer) degrees of freedom.

    Solves P(T > t) = 1 - p (for p > 1/2; symmetric otherwise) on the upper tail, which is
    computed from the regularized incomplete beta function, by a bracketed Newton iteration
    (bisection whenever a Newton step leaves the bracket). Accurate to ~1e-12 relative."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    if not dof > 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, dof)
    target = 1.0 - p  # upper-tail probability, < 1/2
    lo, hi = 0.0, 1.0
    while student_t_sf(hi, dof) > target:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:  # pragma: no cover - only for p absurdly close to 1
            return math.inf
    t = 0.5 * (lo + hi)
    for _ in range(400):
        g = student_t_sf(t, dof) - target  # decreasing in t
        if g > 0:
            lo = t
        else:
            hi = t
        if g == 0.0 or hi - lo <= 1e-15 * max(1.0, hi):
            break
        step = g / _t_pdf(t, dof)  # Newton: t_new = t - g / g' with g' = -pdf
        t_new = t + step
        if not lo < t_new < hi:
            t_new = 0.5 * (lo + hi)
        if abs(t_new - t) <= 1e-15 * max(1.0, abs(t)):
            t = t_new
            break
        t = t_new
    return float(t)


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
    if sst > 0:
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
@dataclass
class ModelPoint:
    """One model of the family: its width and per-layer / median measurements."""

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "width": self.width,
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
class LayerScaling:
    layer: int
    widths: list[int]
    soft: PowerLawFit | None
    hard: PowerLawFit | None
    asymmetry: PowerLawFit | None
    saturation: Saturation | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "widths": self.widths,
            "soft_rank": self.soft.to_dict() if self.soft else None,
            "hard_rank": self.hard.to_dict() if self.hard else None,
            "asymmetry": _asymmetry_dict(self.asymmetry),
            "saturation": self.saturation.to_dict() if self.saturation else None,
            "note": self.note,
        }


@dataclass
class ScalingResult:
    """Everything `scaling_analysis` found; ``to_dict`` is the JSON (schema sui-onnx/scaling)."""

    models: list[ModelPoint]  # sorted by width
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

    @property
    def widths(self) -> list[int]:
        return [m.width for m in self.models]

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
                "models": [m.to_dict() for m in self.models],
            },
            "settings": {"tau": self.tau, "confidence": CONFIDENCE,
                         "fit": "least squares of ln rank on ln D",
                         "model_statistic": "median over usable layers"},
            "median_fits": {
                "soft_rank": self.soft.to_dict(),
                "hard_rank": self.hard.to_dict(),
                "asymmetry": _asymmetry_dict(self.asymmetry),
            },
            "layers": [x.to_dict() for x in self.layers],
            "sui": [{"width": m.width, "median_sui": m.median_sui} for m in self.models],
            "saturation": self.saturation.to_dict(),
            "sui_peak": self.sui_peak,
        }


    def to_json(self) -> str:
        """The JSON text; NaN (undefined R^2 or interval) is written as null."""
        return json.dumps(_json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n"


def _asymmetry_dict(fit: PowerLawFit | None) -> dict[str, Any] | None:
    if fit is None:
        return None
    return {"beta_soft_minus_hard": fit.beta, "ci95": [fit.beta_ci95[0], fit.beta_ci95[1]]}


def _family_hints(report: Report) -> dict[str, Any]:
    model = report.model or {}
    hints = {key: model[key] for key in ("family", "architecture") if model.get(key) not in (None, "")}
    return hints


def _median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _model_point(report: Report, label: str) -> ModelPoint:
    layers = sorted(report.layers, key=lambda x: x.layer)
    ok = [x.usable and x.hard_rank is not None and x.soft_rank is not None for x in layers]
    usable = [x for x, good in zip(layers, ok) if good]
    if not usable:
        raise SuiError(f"{label}: no usable layer (every layer is degenerate or non-finite)")
    return ModelPoint(
        label=label,
        width=max(x.width for x in layers),
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
        provenance=dict(report.model or {}),
    )


def _site(report: Report) -> str | None:
    return report.settings.get("site") or (report.model or {}).get("site")


def _grouped(values: Sequence[Any], labels: Sequence[str], unit: str) -> str:
    """'3 FFN layers in a.json (+4 more), 2 in b.json': one entry per distinct value."""
    groups: dict[Any, list[str]] = {}
    for v, lab in zip(values, labels):
        groups.setdefault(v, []).append(lab)
    parts = []
    for i, (v, labs) in enumerate(groups.items()):
        more = f" (+{len(labs) - 1} more)" if len(labs) > 1 else ""
        parts.append(f"{v}{' ' + unit if i == 0 else ''} in {labs[0]}{more}")
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
        raise SuiError(f"mixed tap sites ({', '.join(sorted(sites))}); analyze every model at the same --site")
    fractions = {r.settings.get("top_fraction") for r in reports if r.settings.get("top_fraction") is not None}
    if len(fractions) > 1:
        raise SuiError(f"mixed --top-fraction values ({', '.join(map(str, sorted(fractions)))}): SUI is not comparable")
    return common


def scaling_analysis(reports: Sequence[Report], labels: Sequence[str] | None = None,
                     tau: float = DEFAULT_TAU) -> ScalingResult:
    """Fit the spectral scaling law over reports of one model family at several FFN widths.

    The width of a model is its widest FFN layer. Layers are matched by position (sorted layer
    index). Per layer, only usable layers enter the fit; a layer with fewer than 3 usable widths
    gets no fit. Raises SuiError for sets that cannot be fitted."""
    if not tau > 0 or not math.isfinite(tau):
        raise SuiError(f"--tau must be a positive number, got {tau}")
    labels = list(labels) if labels is not None else [f"input {i + 1}" for i in range(len(reports))]
    if len(labels) != len(reports):
        raise ValueError("labels and reports differ in length")
    if len(reports) < MIN_WIDTHS:
        raise SuiError(f"scaling needs reports of at least {MIN_WIDTHS} distinct FFN widths; got {len(reports)} input(s)")
    family = _check_family(reports, labels)
    points = [_model_point(r, lab) for r, lab in zip(reports, labels)]
    by_width: dict[int, str] = {}
    for p in points:
        if p.width in by_width:
            raise SuiError(f"duplicate width D={p.width} ({by_width[p.width]} and {p.label}); give one model per width")
        by_width[p.width] = p.label
    if len(by_width) < MIN_WIDTHS:  # pragma: no cover - implied by the two checks above
        raise SuiError(f"scaling needs at least {MIN_WIDTHS} distinct FFN widths")
    points.sort(key=lambda p: p.width)
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

    best = max(range(len(points)), key=lambda k: (points[k].median_sui, -k))
    position = ("smallest" if best == 0 else "largest" if best == len(points) - 1 else "interior")
    sui_peak = {"width": points[best].width, "median_sui": points[best].median_sui, "position": position}
    return ScalingResult(
        models=points,
        n_layers=len(layer_ids),
        site=next((s for s in (_site(r) for r in reports) if s), None),
        top_fraction=next((r.settings.get("top_fraction") for r in reports if r.settings.get("top_fraction") is not None), None),
        family=family,
        tau=tau,
        soft=soft,
        hard=hard,
        asymmetry=asym,
        saturation=saturation(hard, widths, tau),
        sui_peak=sui_peak,
        layers=layers,
    )
