"""The gate's rules: their ids, names and descriptions (SARIF ``tool.driver.rules``), the metrics
they read, and the constants the other gate modules share."""

from __future__ import annotations

from dataclasses import dataclass


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
         "for a report made with report --eval, the measured width (the smallest slim width within its loss "
         "budget); otherwise the spectrum's estimate (the width keeping the advice's variance share)."),
    *[_drop_rule(m, rel) for rel in (False, True) for m in DROP_METRICS],
    Rule("sui-onnx/layer-status", "LayerStatus", "a layer's measurement is unusable or unreliable",
         "degenerate / non_finite layers (no usable spectrum) fail with --fail-on-status and warn otherwise; "
         "rank_capped layers (fewer calibration tokens than the width) fail unless --allow-low-tokens; "
         "low_tokens layers (fewer than 4 x the width) warn."),
]}


def limit_rule_id(key: str) -> str:
    """The rule id of a threshold key: "min_sui" -> "sui-onnx/min-sui"."""
    return "sui-onnx/" + key.replace("_", "-")


def drop_rule_id(metric: str, relative: bool) -> str:
    return f"sui-onnx/max-drop-{'rel-' if relative else ''}{metric.replace('_', '-')}"
