"""Evaluation: thresholds and a baseline over a report -> a ``GateResult`` of ``Check`` s. Pure:
never raises for a breach, never prints."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError, SuiError
from ..fmt import fmt_value
from ..report import CalibrationInfo, Report
from ..safeio import printable
from .rules import (HIGHER_IS_WORSE, LIMIT_KEYS, METRIC_LABELS, RESULT_SCHEMA, RESULT_SCHEMA_VERSION, RULES, STATUS_ERRORS,
                    STATUS_STARVED, STATUS_WARNINGS, TOLERANCE, drop_rule_id, limit_rule_id)
from .thresholds import Thresholds


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
    basis: str = ""  # max-width-ratio: what the width rests on ("k95 estimate", "measured, dCE <= ...")

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

    def by_rule(self) -> list[tuple[str, list[Check]]]:
        """The checks grouped by rule, in rule order (the terminal table's rows)."""
        return summarize_checks(self.checks)

    @staticmethod
    def closest(checks: Sequence[Check]) -> Check | None:
        """The check closest to (or furthest past) its limit."""
        return worst(checks)

    def __rich__(self):
        """The pass/fail table (render.check), so ``console.print(result)`` shows it."""
        from ..render.check import check_renderable

        return check_renderable(self)

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
    return report.summary.median(metric)


def _width_ratio(report: Report) -> tuple[float | None, str, str | None]:
    """The recommended / current FFN width --max-width-ratio checks, what it rests on, and why it
    cannot be checked (None: it can). A report made with ``report --eval`` recommends the measured
    width (the smallest slim one within its loss budget; the full width when none is), as its
    terminal report does; otherwise the width is the spectrum's estimate (advice.width_ratio)."""
    a = report.advice
    m = a.measured
    if m is not None and m.kind != "encoder":
        budget = f"measured, dCE <= {fmt_value(m.max_loss_increase)} nats" if isinstance(m.max_loss_increase, (int, float)) \
            else "measured"
        if m.unresolved:
            return None, budget, f"the measured advice is unresolved ({m.unresolved})"
        widths = [x.width for x in sorted(report.layers, key=lambda y: y.layer)]
        if m.recommended_widths and len(m.recommended_widths) == len(widths) and sum(widths) > 0:
            return sum(m.recommended_widths) / sum(widths), budget, None
        current = a.current_width if isinstance(a.current_width, int) and a.current_width > 0 else max(widths, default=0)
        if isinstance(m.recommended_width, int) and current > 0:
            return m.recommended_width / current, budget, None
        return 1.0, budget + " (no narrower width within it)", None
    ratio = a.width_ratio
    ratio = float(ratio) if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) else None
    return ratio, f"{a.estimate_key()} estimate", None


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
    if "explicit" in (report.settings.taps, baseline.settings.taps):
        # --tap numbers its tensors by position: the same layer index may name another tensor
        names = {x.layer: x.tensor for x in baseline.layers}
        for x in sorted(report.layers, key=lambda y: y.layer):
            if x.tensor != names[x.layer]:
                raise SuiError(f"baseline {baseline_label}: layer {x.layer} is tensor {printable(names[x.layer])}, "
                               f"this report's is {printable(x.tensor)}: not comparable (--tap numbers the tensors "
                               "it names by position: name the same tensors in the same order)")
    for key in ("site", "top_fraction"):
        a, b = getattr(report.settings, key), getattr(baseline.settings, key)
        if a is not None and b is not None and a != b:
            raise SuiError(f"baseline {baseline_label} was measured with {key} = {b}, this report with {a}: "
                           "not comparable (rerun one with the other's setting)")
    if not allow_calibration_change:
        _check_same_calibration(report.calibration, baseline.calibration, baseline_label)


def calibration_digests(calibration: CalibrationInfo) -> list[str | None]:
    """The sha256 of each calibration source, in order (None where a report does not record it)."""
    return calibration.digests()


def _check_same_calibration(cur: CalibrationInfo, base: CalibrationInfo, label: str) -> None:
    how = "pin --calib, --tokens, --seq-len and --mix to the baseline's, or pass --allow-calibration-change"
    a, b = cur.tokens, base.tokens
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise SuiError(f"baseline {label} was calibrated on {b:,} tokens, this run on {a:,}: not comparable ({how})")
    for key, what in (("seq_len", "windows of {} tokens"), ("mix", "--mix {}")):
        a, b = getattr(cur, key), getattr(base, key)
        if a is not None and b is not None and a != b:
            raise SuiError(f"baseline {label} was calibrated with {what.format(b)}, this run with {what.format(a)}: "
                           f"not comparable ({how})")
    da, db = calibration_digests(cur), calibration_digests(base)
    if da != db:
        def show(d: list[str | None]) -> str:
            return ", ".join((x or "unrecorded")[:12] for x in d) or "none recorded"
        raise SuiError(f"baseline {label} was calibrated on other data (sha256 {show(db)}; this run {show(da)}): "
                       f"not comparable ({how})")


def _span(d: Mapping[int, int]) -> str:
    """The layer indices: a range when they are contiguous, else listed."""
    if not d:
        return "(none)"
    idx = sorted(d)
    if idx == list(range(idx[0], idx[-1] + 1)):
        return f"(layers {idx[0]}..{idx[-1]})" if len(idx) > 1 else f"(layer {idx[0]})"
    shown = ", ".join(map(str, idx[:8])) + (f" and {len(idx) - 8} more" if len(idx) > 8 else "")
    return f"(layers {shown})"


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
        rule_id = limit_rule_id(key)
        if want_model:
            checks.append(_limit_check(rule_id, metric, None, _median(report, metric), limit, direction))
        if want_layer:
            for x in usable:
                checks.append(_limit_check(rule_id, metric, x.layer, getattr(x, metric), limit, direction))

    if thresholds.max_width_ratio is not None and want_model:
        ratio, basis, unchecked = _width_ratio(report)
        check = _limit_check("sui-onnx/max-width-ratio", "width_ratio", None, ratio, thresholds.max_width_ratio, "max")
        label = METRIC_LABELS["width_ratio"]
        check = dataclasses.replace(check, message=check.message.replace(label, f"{label}, {basis}", 1), basis=basis)
        withheld = report.advice.withheld
        if unchecked is not None:
            check = dataclasses.replace(check, message=f"{label}, {basis}, cannot be checked: {unchecked}")
        elif ratio is None and withheld is not None:
            reason = withheld.reason if withheld.reason is not None else "thin data"
            check = dataclasses.replace(check, message=f"{label} cannot be checked: the width advice was withheld ({reason})")
        elif ratio is None and usable:
            # usable layers always give a recommendation (or a withheld record): an edited report
            raise SuiError("malformed report: advice.width_ratio is missing although layers are usable "
                           "(--max-width-ratio reads it)")
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

    provenance = report.model.to_dict()
    model = {k: provenance[k] for k in ("path", "sha256") if k in provenance}
    return GateResult(checks=checks, thresholds=thresholds, target=target,
                      baseline=None if baseline is None else (baseline_label or str(thresholds.baseline)),
                      model=model)


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
