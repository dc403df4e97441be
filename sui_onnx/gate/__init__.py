"""The inference-efficiency gate behind ``sui-onnx check`` (docs/gate.md).

Thresholds on a report's FFN utilization, model level (summary medians over usable layers, the
width advice) and layer level (each usable layer), plus regression against a baseline report,
in the manner of MLflow / TFMA metric thresholds. Pure: reports in, a ``GateResult`` out, and
the result rendered as JUnit XML, SARIF 2.1.0 or GitHub Actions annotations. Nothing here prints.

- ``rules``: rule ids and descriptions, the shared constants;
- ``thresholds``: ``Thresholds`` and the validation of each key (config files and flags alike);
- ``config``: the ``[check]`` table of a TOML file or the nearest pyproject.toml;
- ``evaluate``: ``evaluate(report, thresholds, baseline) -> GateResult``;
- ``formats``: JUnit XML, SARIF 2.1.0, GitHub Actions annotations.

Boundary semantics: a minimum passes when ``value >= limit``, a maximum (and an allowed drop)
when ``value <= limit``; comparisons allow ``TOLERANCE`` (1e-9) of floating-point slack, so a
value equal to its limit passes, drops computed as differences included.
"""

from __future__ import annotations

from ..lazy import lazy_names

# Each name is loaded from its submodule on first use (PEP 562): the CLI's parser reads the
# defaults of ``rules`` and the validators of ``thresholds`` without loading the report model that
# ``evaluate`` needs.
_LAZY = {
    **dict.fromkeys(("MAX_CONFIG_BYTES", "find_pyproject", "load_config", "thresholds_from_config"), "config"),
    **dict.fromkeys(("Check", "GateResult", "calibration_digests", "check_comparable", "evaluate", "fmt_value",
                     "summarize_checks", "worst"), "evaluate"),
    **dict.fromkeys(("artifact_uri", "escape_workflow_data", "escape_workflow_property", "github_annotations",
                     "report_json_lines", "to_junit", "to_sarif", "workspace_path"), "formats"),
    **dict.fromkeys(("DEFAULT_DROP_METRICS", "DEFAULT_MAX_DROP", "DROP_METRICS", "HIGHER_IS_WORSE", "LIMIT_KEYS",
                     "METRIC_LABELS", "RESULT_SCHEMA", "RESULT_SCHEMA_VERSION", "RULES", "SARIF_SCHEMA_URI", "SCOPES",
                     "STATUS_ERRORS", "STATUS_STARVED", "STATUS_WARNINGS", "TOLERANCE", "Rule", "drop_rule_id",
                     "limit_rule_id"), "rules"),
    **dict.fromkeys(("CONFIG_KEYS", "VALIDATORS", "Thresholds", "validate_value"), "thresholds"),
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
