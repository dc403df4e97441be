"""The inference-efficiency gate behind ``sui-onnx check`` (docs/gate.md).

Thresholds on a report's FFN utilization, model level (summary medians over usable layers, the
width advice) and layer level (each usable layer), plus regression against a baseline report,
in the manner of MLflow / TFMA metric thresholds. Pure: reports in, a ``GateResult`` out, and
the result rendered as JUnit XML, SARIF 2.1.0 or GitHub Actions annotations. Nothing here prints.

Boundary semantics: a minimum passes when ``value >= limit``, a maximum (and an allowed drop)
when ``value <= limit``; comparisons allow ``TOLERANCE`` (1e-9) of floating-point slack, so a
value equal to its limit passes, drops computed as differences included.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import ConfigError, SuiError
from .report import Report

TOLERANCE = 1e-9
DEFAULT_MAX_DROP = 0.01  # absolute drop allowed when --baseline comes without --max-drop/--max-drop-rel
RESULT_SCHEMA = "sui-onnx/check"
RESULT_SCHEMA_VERSION = 1
SARIF_SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SCOPES = ("model", "layer", "both")
DROP_METRICS = ("sui", "hard_util", "soft_util", "concentration")
DEFAULT_DROP_METRICS = ("sui", "hard_util", "soft_util")
HIGHER_IS_WORSE = frozenset({"concentration"})  # a rise in these counts as a drop

METRIC_LABELS = {
    "sui": "SUI",
    "hard_util": "hard utilization",
    "soft_util": "soft utilization",
    "concentration": "spectral concentration",
    "width_ratio": "width ratio (recommended / current)",
}

# threshold key -> (metric, "min" | "max"); model level reads summary[metric]["median"]
LIMIT_KEYS = {
    "min_sui": ("sui", "min"),
    "min_hard_util": ("hard_util", "min"),
    "min_soft_util": ("soft_util", "min"),
    "max_concentration": ("concentration", "max"),
}
STATUS_ERRORS = ("non_finite", "degenerate")  # failures with fail_on_status, else warnings
STATUS_STARVED = ("rank_capped",)  # failures unless allow_low_tokens: N - 1 < D, the spectrum is truncated
STATUS_WARNINGS = ("low_tokens",)  # always warnings


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    short: str
    full: str


def _drop_rule(metric: str, relative: bool) -> Rule:
    slug = metric.replace("_", "-")
    label = METRIC_LABELS[metric]
    worse = "rise" if metric in HIGHER_IS_WORSE else "drop"
    if relative:
        return Rule(f"sui-onnx/max-drop-rel-{slug}", f"MaxDropRel{_camel(metric)}",
                    f"{label} regressed against the baseline by more than the allowed relative change",
                    f"The relative {worse} of {label} against the baseline report, (baseline - current) / |baseline|"
                    f"{' with the sign turned, since higher is worse' if metric in HIGHER_IS_WORSE else ''}, "
                    "exceeds --max-drop-rel (model: medians over usable layers; layer: matched by layer index).")
    return Rule(f"sui-onnx/max-drop-{slug}", f"MaxDrop{_camel(metric)}",
                f"{label} regressed against the baseline by more than the allowed absolute change",
                f"The absolute {worse} of {label} against the baseline report exceeds --max-drop "
                "(model: medians over usable layers; layer: matched by layer index).")


def _camel(metric: str) -> str:
    return "".join(part.capitalize() for part in metric.split("_")).replace("Sui", "SUI")


RULES: dict[str, Rule] = {r.id: r for r in [
    Rule("sui-onnx/min-sui", "MinSUI", "Spectral Utilization Index below the minimum",
         "The SUI (docs/metrics.md) is below --min-sui: the FFN hidden activations use little of their width."),
    Rule("sui-onnx/min-hard-util", "MinHardUtil", "hard utilization (hard rank / width) below the minimum",
         "Hard rank (participation ratio) divided by the FFN width is below --min-hard-util."),
    Rule("sui-onnx/min-soft-util", "MinSoftUtil", "soft utilization (soft rank / width) below the minimum",
         "Soft rank (Shannon effective rank) divided by the FFN width is below --min-soft-util."),
    Rule("sui-onnx/max-concentration", "MaxConcentration", "spectral concentration above the maximum",
         "The share of variance in the top fraction of directions is above --max-concentration."),
    Rule("sui-onnx/max-width-ratio", "MaxWidthRatio", "recommended FFN width is a small share of the current width",
         "The width advice (recommended / current FFN width, model level only) is above --max-width-ratio: "
         "the FFN could be that much narrower while keeping the advice's variance share."),
    *[_drop_rule(m, rel) for rel in (False, True) for m in DROP_METRICS],
    Rule("sui-onnx/layer-status", "LayerStatus", "a layer's measurement is unusable or unreliable",
         "degenerate / non_finite layers (no usable spectrum) fail with --fail-on-status and warn otherwise; "
         "rank_capped layers (fewer calibration tokens than the width) fail unless --allow-low-tokens; "
         "low_tokens layers (fewer than 4 x the width) warn."),
]}


def _rule_for(key: str) -> str:
    return "sui-onnx/" + key.replace("_", "-")


def drop_rule_id(metric: str, relative: bool) -> str:
    return f"sui-onnx/max-drop-{'rel-' if relative else ''}{metric.replace('_', '-')}"


# ------------------------------------------------------------------------------------------------
# thresholds and their validation (one definition for config files and command-line flags)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


def _unit(value: Any) -> float:
    value = _number(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value:g}")
    return value


def _nonnegative(value: Any) -> float:
    value = _number(value)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value:g}")
    return value


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a path (a non-empty string), got {value!r}")
    return Path(value)


def _scope(value: Any) -> str:
    if value not in SCOPES:
        raise ValueError(f"must be one of {', '.join(SCOPES)}, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _metrics(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be a non-empty list of {', '.join(DROP_METRICS)}, got {value!r}")
    out = []
    for item in value:
        name = item.strip().replace("-", "_") if isinstance(item, str) else item
        if name not in DROP_METRICS:
            raise ValueError(f"unknown metric {item!r} (choose from {', '.join(DROP_METRICS)})")
        if name not in out:
            out.append(name)
    return tuple(out)


VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "min_sui": _unit,
    "min_hard_util": _unit,
    "min_soft_util": _unit,
    "max_concentration": _unit,
    "max_width_ratio": _unit,
    "baseline": _path,
    "max_drop": _unit,
    "max_drop_rel": _nonnegative,
    "drop_metrics": _metrics,
    "scope": _scope,
    "fail_on_status": _bool,
    "allow_low_tokens": _bool,
    "allow_calibration_change": _bool,
}
CONFIG_KEYS = tuple(VALIDATORS)


def validate_value(key: str, value: Any) -> Any:
    """The normalized value of one threshold key, or ValueError with a one-line reason."""
    try:
        validator = VALIDATORS[key]
    except KeyError:
        raise ValueError(f"unknown key {key!r}{_did_you_mean(key)}") from None
    return validator(value)


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(CONFIG_KEYS)})"


@dataclass(frozen=True)
class Thresholds:
    """What the gate checks. None = not checked. Values already validated."""

    min_sui: float | None = None
    min_hard_util: float | None = None
    min_soft_util: float | None = None
    max_concentration: float | None = None
    max_width_ratio: float | None = None
    baseline: Path | None = None
    max_drop: float | None = None
    max_drop_rel: float | None = None
    drop_metrics: tuple[str, ...] = DEFAULT_DROP_METRICS
    scope: str = "both"
    fail_on_status: bool = False
    allow_low_tokens: bool = False  # rank_capped layers warn instead of failing
    allow_calibration_change: bool = False  # compare with a baseline calibrated on other data / token counts

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str = "config", base_dir: Path | None = None) -> "Thresholds":
        """Validate a mapping of config keys (a TOML table); any problem is a ConfigError naming
        the key and the source. A relative ``baseline`` is resolved against ``base_dir``."""
        kw: dict[str, Any] = {}
        for key, value in d.items():
            try:
                kw[key] = validate_value(key, value)
            except ValueError as exc:
                if key not in VALIDATORS:
                    raise ConfigError(f"{source}: {exc}") from None
                raise ConfigError(f"{source}: {key}: {exc}") from None
        if base_dir is not None and kw.get("baseline") is not None and not kw["baseline"].is_absolute():
            kw["baseline"] = base_dir / kw["baseline"]
        return cls(**kw)

    def override(self, **values: Any) -> "Thresholds":
        """A copy with the given (already validated) values; None means 'not given, keep'."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def has_limits(self) -> bool:
        return any(getattr(self, k) is not None for k in (*LIMIT_KEYS, "max_width_ratio"))

    def effective_max_drop(self) -> float | None:
        if self.baseline is not None and self.max_drop is None and self.max_drop_rel is None:
            return DEFAULT_MAX_DROP
        return self.max_drop

    def validate(self) -> None:
        """Combinations that make no sense: exit 2 before any work is done."""
        if self.baseline is None and (self.max_drop is not None or self.max_drop_rel is not None):
            raise ConfigError("max_drop / max_drop_rel need a baseline report (--baseline REPORT.json)")
        if not self.has_limits and self.baseline is None and not self.fail_on_status:
            raise ConfigError("nothing to check: give a threshold or --baseline "
                              "(e.g. --baseline REPORT.json or --min-sui 0.02; see sui-onnx check --help)")
        if self.max_width_ratio is not None and self.scope == "layer":
            raise ConfigError("max_width_ratio is a model-level threshold: it needs scope model or both")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["baseline"] = None if self.baseline is None else str(self.baseline)
        d["drop_metrics"] = list(self.drop_metrics)
        d["effective_max_drop"] = self.effective_max_drop()
        return d


# ------------------------------------------------------------------------------------------------
# configuration files


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading TOML configuration needs Python 3.11+ or `pip install tomli`") from None
    return tomllib.loads(text)


MAX_CONFIG_BYTES = 4 << 20  # a threshold table is a few hundred bytes; a pyproject.toml a few KiB


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; any problem (not a regular file: a FIFO or a device is refused, never
    read; over 4 MiB; not UTF-8; not TOML; nested too deeply) is one ConfigError line."""
    from .safeio import printable, read_input

    label = printable(path)
    if not os.path.lexists(path):
        raise ConfigError(f"{label}: no such config file")
    data = read_input(path, MAX_CONFIG_BYTES, error=ConfigError, what="configuration file")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text") from None
    try:
        return _toml_loads(text)
    except RecursionError:
        raise ConfigError(f"{label}: not valid TOML (nested too deeply)") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{label}: not valid TOML ({printable(str(exc))[:160]})") from None


def find_pyproject(cwd: Path) -> Path | None:
    """The nearest pyproject.toml from ``cwd`` upward."""
    cwd = Path(cwd).resolve()
    for folder in (cwd, *cwd.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | str | None, cwd: Path | str) -> tuple[dict[str, Any], Path | None]:
    """The raw ``[check]`` table and the file it came from.

    With ``path``: that TOML file's ``[check]`` table (or ``[tool.sui-onnx.check]`` when it is a
    pyproject.toml). Without: ``[tool.sui-onnx.check]`` of the nearest pyproject.toml from ``cwd``
    upward, or ``({}, None)`` when there is none. Values are validated by ``thresholds_from_config``.
    """
    if path is not None:
        path = Path(path)
        data = _read_toml(path)
        table = data.get("check")
        where = "[check]"
        if table is None:
            table = _dig(data, "tool", "sui-onnx", "check")
            where = "[tool.sui-onnx.check]"
        if table is None:
            raise ConfigError(f"{path}: no [check] table (or [tool.sui-onnx.check])")
    else:
        path = find_pyproject(Path(cwd))
        if path is None:
            return {}, None
        table = _dig(_read_toml(path), "tool", "sui-onnx", "check")
        where = "[tool.sui-onnx.check]"
        if table is None:
            return {}, None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    return dict(table), path


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def thresholds_from_config(table: Mapping[str, Any], path: Path | None) -> Thresholds:
    if path is None:
        return Thresholds()
    return Thresholds.from_mapping(table, source=str(path), base_dir=path.parent)


# ------------------------------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True)
class Check:
    """One rule applied at one scope. ``passed`` is False only for breaches (level "error");
    warnings pass with level "warning"; plain passes have level "none"."""

    rule_id: str
    scope: str  # "model" | "layer"
    layer: int | None
    value: float | None
    limit: float | None
    passed: bool
    level: str  # "error" | "warning" | "none"
    message: str
    comparator: str = ""  # ">=" | "<=" | "" (status)
    baseline: float | None = None  # drop checks: the baseline's value of the metric
    current: float | None = None  # drop checks: this report's value (``value`` is the drop)

    @property
    def scope_label(self) -> str:
        return "model" if self.layer is None else f"layer {self.layer}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scope_label"] = self.scope_label
        for key in ("value", "limit", "baseline", "current"):
            if isinstance(d[key], float) and not math.isfinite(d[key]):
                d[key] = None
        return d


@dataclass
class GateResult:
    checks: list[Check]
    thresholds: Thresholds
    target: str = ""
    baseline: str | None = None
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.passed and c.level == "warning"]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA,
            "schema_version": RESULT_SCHEMA_VERSION,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "target": self.target,
            "baseline": self.baseline,
            "model": self.model,
            "thresholds": self.thresholds.to_dict(),
            "counts": {"checks": len(self.checks), "failures": len(self.failures), "warnings": len(self.warnings)},
            "checks": [c.to_dict() for c in self.checks],
        }


def _median(report: Report, metric: str) -> float | None:
    spread = report.summary.get(metric) if isinstance(report.summary, dict) else None
    if isinstance(spread, dict) and isinstance(spread.get("median"), (int, float)):
        return float(spread["median"])
    return None


def fmt_value(value: float | None) -> str:
    """A gate value as the messages show it: 4 significant digits, "n/a" for None, "inf"."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.4g}"


def _limit_check(rule_id: str, metric: str, layer: int | None, value: float | None, limit: float,
                 direction: str) -> Check:
    label = METRIC_LABELS[metric]
    where = "median over usable layers" if layer is None and metric != "width_ratio" else ""
    subject = f"layer {layer}: {label}" if layer is not None else f"{label}{' (' + where + ')' if where else ''}"
    comparator = ">=" if direction == "min" else "<="
    if value is None:
        why = "no usable layers" if metric != "width_ratio" else "no width recommendation (no usable layers)"
        return Check(rule_id, "model" if layer is None else "layer", layer, None, limit, False, "error",
                     f"{subject} cannot be checked: {why}", comparator)
    ok = value >= limit - TOLERANCE if direction == "min" else value <= limit + TOLERANCE
    if ok:
        msg = f"{subject} {fmt_value(value)} {comparator} {fmt_value(limit)}"
    else:
        relation = "below the minimum" if direction == "min" else "above the maximum"
        msg = f"{subject} {fmt_value(value)} is {relation} {fmt_value(limit)}"
    return Check(rule_id, "model" if layer is None else "layer", layer, value, limit, ok,
                 "none" if ok else "error", msg, comparator)


def _drop(metric: str, current: float, base: float, relative: bool) -> float:
    drop = current - base if metric in HIGHER_IS_WORSE else base - current
    if not relative:
        return drop
    if abs(base) <= TOLERANCE:
        return 0.0 if drop <= TOLERANCE else math.inf
    return drop / abs(base)


def _drop_check(metric: str, relative: bool, layer: int | None, current: float | None, base: float | None,
                limit: float) -> Check:
    rule_id = drop_rule_id(metric, relative)
    label = METRIC_LABELS[metric]
    subject = f"layer {layer}: {label}" if layer is not None else f"{label} (median)"
    scope = "model" if layer is None else "layer"
    if current is None:
        return Check(rule_id, scope, layer, None, limit, False, "error",
                     f"{subject} cannot be compared with the baseline: no usable layers", "<=", base, None)
    if base is None:
        return Check(rule_id, scope, layer, None, limit, True, "warning",
                     f"{subject}: the baseline has no usable value to compare with", "<=", None, current)
    value = _drop(metric, current, base, relative)
    ok = value <= limit + TOLERANCE
    word = "rise" if metric in HIGHER_IS_WORSE else "drop"
    amount = f"{value:.2%}" if relative and math.isfinite(value) else fmt_value(value)
    allowed = f"{limit:.2%}" if relative else fmt_value(limit)
    kind = "relative " if relative else ""
    msg = f"{subject} {fmt_value(base)} -> {fmt_value(current)}: {kind}{word} {amount} {'<=' if ok else 'exceeds'} {allowed}"
    if not ok:
        msg += " allowed"
    return Check(rule_id, scope, layer, value, limit, ok, "none" if ok else "error", msg, "<=", base, current)


def _status_check(layer, fail_on_status: bool, allow_low_tokens: bool = False) -> Check:
    status = layer.status
    if status in STATUS_ERRORS:
        level = "error" if fail_on_status else "warning"
    elif status in STATUS_STARVED:
        level = "warning" if allow_low_tokens else "error"
    elif status in STATUS_WARNINGS:
        level = "warning"
    else:
        level = "none"
    detail = layer.message or status
    msg = f"layer {layer.layer}: status {status}" + (f" ({detail})" if detail and detail != status else "")
    if level == "error" and status in STATUS_STARVED:
        msg += "; raise --tokens, or pass --allow-low-tokens to let it warn"
    return Check("sui-onnx/layer-status", "layer", layer.layer, None, None, level != "error", level, msg)


def check_comparable(report: Report, baseline: Report, baseline_label: str = "baseline",
                     allow_calibration_change: bool = False) -> None:
    """A baseline must have the same layers (indices), widths, tap site and concentration fraction,
    and (unless ``allow_calibration_change``) the same calibration: token count and source digests
    (``calibration.sources[].sha256``); SuiError (exit 2) otherwise."""
    cur = {x.layer: x.width for x in report.layers}
    base = {x.layer: x.width for x in baseline.layers}
    if len(cur) != len(base) or set(cur) != set(base):
        raise SuiError(f"baseline {baseline_label} has {len(base)} FFN layers {_span(base)}, this model has "
                       f"{len(cur)} {_span(cur)}: not comparable")
    for idx in sorted(cur):
        if cur[idx] != base[idx]:
            raise SuiError(f"baseline {baseline_label}: layer {idx} has width {base[idx]}, this model {cur[idx]}: "
                           "not comparable (widths differ)")
    for key in ("site", "top_fraction"):
        a, b = _dig(report.settings, key), _dig(baseline.settings, key)
        if a is not None and b is not None and a != b:
            raise SuiError(f"baseline {baseline_label} was measured with {key} = {b}, this report with {a}: "
                           "not comparable (rerun one with the other's setting)")
    if not allow_calibration_change:
        _check_same_calibration(report.calibration, baseline.calibration, baseline_label)


def calibration_digests(calibration: Mapping[str, Any]) -> list[str | None]:
    """The sha256 of each calibration source, in order (None where a report does not record it)."""
    sources = calibration.get("sources") if isinstance(calibration, Mapping) else None
    if not isinstance(sources, list):
        return []
    return [s.get("sha256") if isinstance(s, Mapping) and isinstance(s.get("sha256"), str) else None for s in sources]


def _check_same_calibration(cur: Mapping[str, Any], base: Mapping[str, Any], label: str) -> None:
    how = "pin --calib and --tokens to the baseline's, or pass --allow-calibration-change"
    a, b = cur.get("tokens"), base.get("tokens")
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise SuiError(f"baseline {label} was calibrated on {b:,} tokens, this run on {a:,}: not comparable ({how})")
    da, db = calibration_digests(cur), calibration_digests(base)
    if da != db:
        def show(d: list[str | None]) -> str:
            return ", ".join((x or "unrecorded")[:12] for x in d) or "none recorded"
        raise SuiError(f"baseline {label} was calibrated on other data (sha256 {show(db)}; this run {show(da)}): "
                       f"not comparable ({how})")


def _span(d: Mapping[int, int]) -> str:
    return f"(layers {min(d)}..{max(d)})" if d else "(none)"


def evaluate(report: Report, thresholds: Thresholds, baseline: Report | None = None, *,
             target: str = "", baseline_label: str | None = None) -> GateResult:
    """Apply ``thresholds`` to ``report`` (and compare with ``baseline``); never raises for a breach.
    Raises ConfigError / SuiError (exit 2) for nonsense combinations and incomparable baselines."""
    thresholds.validate()
    if thresholds.baseline is not None and baseline is None:
        raise ConfigError(f"baseline {thresholds.baseline} was configured but not loaded")
    want_model = thresholds.scope in ("model", "both")
    want_layer = thresholds.scope in ("layer", "both")
    usable = sorted((x for x in report.layers if x.usable), key=lambda x: x.layer)
    checks: list[Check] = []

    for key, (metric, direction) in LIMIT_KEYS.items():
        limit = getattr(thresholds, key)
        if limit is None:
            continue
        rule_id = _rule_for(key)
        if want_model:
            checks.append(_limit_check(rule_id, metric, None, _median(report, metric), limit, direction))
        if want_layer:
            for x in usable:
                checks.append(_limit_check(rule_id, metric, x.layer, getattr(x, metric), limit, direction))

    if thresholds.max_width_ratio is not None and want_model:
        ratio = report.advice.get("width_ratio") if isinstance(report.advice, dict) else None
        ratio = float(ratio) if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) else None
        check = _limit_check("sui-onnx/max-width-ratio", "width_ratio", None, ratio, thresholds.max_width_ratio, "max")
        withheld = report.advice.get("withheld") if isinstance(report.advice, dict) else None
        if ratio is None and isinstance(withheld, dict):
            check = dataclasses.replace(check, message=f"{METRIC_LABELS['width_ratio']} cannot be checked: the width "
                                                       f"advice was withheld ({withheld.get('reason', 'thin data')})")
        checks.append(check)

    if baseline is not None:
        label = baseline_label or str(thresholds.baseline or "baseline")
        check_comparable(report, baseline, label, thresholds.allow_calibration_change)
        base_layers = {x.layer: x for x in baseline.layers}
        limits = [(False, thresholds.effective_max_drop()), (True, thresholds.max_drop_rel)]
        for relative, limit in limits:
            if limit is None:
                continue
            for metric in thresholds.drop_metrics:
                if want_model:
                    checks.append(_drop_check(metric, relative, None, _median(report, metric),
                                              _median(baseline, metric), limit))
                if want_layer:
                    for x in usable:
                        b = base_layers[x.layer]
                        checks.append(_drop_check(metric, relative, x.layer, getattr(x, metric),
                                                  getattr(b, metric) if b.usable else None, limit))

    starved = not thresholds.allow_low_tokens and any(x.status in STATUS_STARVED for x in report.layers)
    if want_layer or thresholds.fail_on_status or starved:
        for x in sorted(report.layers, key=lambda x: x.layer):
            checks.append(_status_check(x, thresholds.fail_on_status, thresholds.allow_low_tokens))

    model = {k: report.model.get(k) for k in ("path", "sha256") if isinstance(report.model, dict) and k in report.model}
    return GateResult(checks=checks, thresholds=thresholds, target=target,
                      baseline=None if baseline is None else (baseline_label or str(thresholds.baseline)),
                      model=model)


# ------------------------------------------------------------------------------------------------
# renderings: JUnit XML, SARIF 2.1.0, GitHub Actions annotations


def to_junit(result: GateResult, suite_name: str | None = None) -> str:
    """JUnit XML: one testcase per rule and scope (classname = rule id with dots, name = scope),
    a <failure> for each breach, warnings as passing testcases with a <system-out> line. Text XML
    1.0 cannot hold (control characters from a path or a tensor name) is written as escapes, so
    the document always parses."""
    from .safeio import xml_text as x

    name = suite_name or (f"sui-onnx check {result.target}".strip())
    n, nfail = len(result.checks), len(result.failures)
    counts = {"tests": str(n), "failures": str(nfail), "errors": "0", "skipped": "0", "time": "0"}
    suites = ET.Element("testsuites", {"name": "sui-onnx check", **counts})
    suite = ET.SubElement(suites, "testsuite", {"name": x(name), **counts})
    props = ET.SubElement(suite, "properties")
    for key, value in (("target", result.target), ("baseline", result.baseline or ""),
                       ("model_sha256", str(result.model.get("sha256", "")))):
        ET.SubElement(props, "property", {"name": key, "value": x(value)})
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", {"classname": x(c.rule_id.replace("/", ".")), "name": x(c.scope_label),
                                                 "time": "0"})
        if not c.passed:
            fail = ET.SubElement(case, "failure", {"message": x(c.message), "type": x(c.rule_id)})
            fail.text = x(f"{c.rule_id} at {c.scope_label}: value {fmt_value(c.value)}, limit {c.comparator} "
                          f"{fmt_value(c.limit)}".rstrip() + f"\n{c.message}")
        elif c.level == "warning":
            ET.SubElement(case, "system-out").text = x(f"warning: {c.message}")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def report_json_lines(text: str) -> dict[int, int]:
    """1-based line of each layer's entry in a report JSON written by ``Report.to_json`` (the first
    ``"layer": N`` of each N; the layers array comes before the advice)."""
    lines: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = re.match(r'\s*"layer":\s*(\d+)\s*,?\s*$', line)
        if m:
            lines.setdefault(int(m.group(1)), lineno)
    return lines


def to_sarif(result: GateResult, artifact_uri: str, *, tool_version: str = "",
             layer_lines: Mapping[int, int] | None = None) -> dict[str, Any]:
    """A SARIF 2.1.0 log: every rule in tool.driver.rules, one result per breach (level error)
    and warning (level warning), located at ``artifact_uri`` (region: the layer's line in a report
    JSON when ``layer_lines`` is given, else line 1) with the logical location "model" / "layer N"."""
    rule_ids = list(RULES)
    layer_lines = layer_lines or {}
    rules = [{
        "id": r.id,
        "name": r.name,
        "shortDescription": {"text": r.short},
        "fullDescription": {"text": r.full},
        "help": {"text": f"{r.full} See docs/gate.md of sui-onnx."},
        "defaultConfiguration": {"level": "warning" if r.id == "sui-onnx/layer-status" else "error"},
        "properties": {"tags": ["efficiency", "sui-onnx"]},
    } for r in RULES.values()]
    results = []
    for c in result.checks:
        if c.level == "none":
            continue
        line = layer_lines.get(c.layer, 1) if c.layer is not None else 1
        res: dict[str, Any] = {
            "ruleId": c.rule_id,
            "ruleIndex": rule_ids.index(c.rule_id),
            "level": c.level,
            "kind": "fail",
            "message": {"text": c.message},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": {"uri": artifact_uri, "index": 0},
                    "region": {"startLine": line},
                },
                "logicalLocations": [{"name": c.scope_label, "kind": "module",
                                      "fullyQualifiedName": f"{artifact_uri}/{c.scope_label}"}],
            }],
            "partialFingerprints": {"suiOnnxCheck/v1": f"{c.rule_id}:{c.scope_label}"},
            "properties": {k: v for k, v in c.to_dict().items()
                           if k in ("scope", "layer", "value", "limit", "comparator", "baseline", "current")},
        }
        results.append(res)
    driver: dict[str, Any] = {"name": "sui-onnx", "rules": rules}
    if tool_version:
        driver["version"] = tool_version
        driver["semanticVersion"] = tool_version
    return {
        "$schema": SARIF_SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": driver},
            "automationDetails": {"id": "sui-onnx/check/"},
            "artifacts": [{"location": {"uri": artifact_uri}}],
            "invocations": [{"executionSuccessful": True, "exitCode": result.exit_code}],
            "results": results,
            "properties": {"passed": result.passed, "checks": len(result.checks),
                           "failures": len(result.failures), "warnings": len(result.warnings)},
        }],
    }


def artifact_uri(path: Path | str, cwd: Path | str) -> str:
    """A URI reference for a local file: relative (POSIX, percent-encoded) when under ``cwd`` — as
    GitHub code scanning wants, repository-relative — else an absolute file: URI."""
    from urllib.parse import quote

    p = Path(path).resolve()
    try:
        rel = p.relative_to(Path(cwd).resolve())
    except ValueError:
        return p.as_uri()
    return quote(rel.as_posix())


def _escape_data(text: str) -> str:
    from .safeio import printable

    # workflow commands are one line: %, CR and LF as GitHub escapes them, other controls as visible escapes
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return printable(text)


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(result: GateResult, file: str | None = None,
                       layer_lines: Mapping[int, int] | None = None) -> list[str]:
    """GitHub Actions workflow commands (``::error title=...::message``), one per breach / warning."""
    out = []
    layer_lines = layer_lines or {}
    for c in result.checks:
        if c.level == "none":
            continue
        props = []
        if file:
            props.append(f"file={_escape_property(file)}")
            if c.layer is not None and c.layer in layer_lines:
                props.append(f"line={layer_lines[c.layer]}")
        props.append(f"title={_escape_property(f'{c.rule_id} ({c.scope_label})')}")
        out.append(f"::{c.level} {','.join(props)}::{_escape_data(c.message)}")
    return out


def summarize_checks(checks: Iterable[Check]) -> list[tuple[str, list[Check]]]:
    """Checks grouped by rule, in rule order (for the terminal table)."""
    groups: dict[str, list[Check]] = {}
    for c in checks:
        groups.setdefault(c.rule_id, []).append(c)
    order = list(RULES)
    return sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def worst(checks: Sequence[Check]) -> Check | None:
    """The check closest to (or furthest past) its limit."""
    scored = [c for c in checks if c.value is not None and c.limit is not None]
    if not scored:
        return None
    return min(scored, key=lambda c: (c.value - c.limit) if c.comparator == ">=" else (c.limit - c.value))
