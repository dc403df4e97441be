"""`sui-onnx check MODEL|REPORT.json`: the inference-efficiency gate for CI (docs/gate.md).

Exit 0 when every threshold holds, 1 when one is breached, 2 on a usage, input or config error;
the same with or without --junit / --sarif / --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import gate
from ..errors import ConfigError, SuiError
from ..layout import MODEL_FILE, companion_files
from .options import (path_arg, TokenProgress, add_analysis_args, analysis_options, calib_inputs, calibration_spec, guard_outputs, refuse_analysis_with_report, make_console, resume_input, write_text_atomic)
from .report import warn_unfilled_budget

# flag dest -> config key; values are validated by gate.validate_value (one definition)
THRESHOLD_FLAGS = {
    "min_sui": ("--min-sui", "X", "fail when SUI is below X (model median and each usable layer)"),
    "min_hard_util": ("--min-hard-util", "X", "fail when hard rank / width is below X"),
    "min_soft_util": ("--min-soft-util", "X", "fail when soft rank / width is below X"),
    "max_concentration": ("--max-concentration", "X", "fail when spectral concentration is above X"),
    "max_width_ratio": ("--max-width-ratio", "X",
                        "fail when the recommended / current FFN width is above X (model level only)"),
    "baseline": ("--baseline", "REPORT.json", "compare with this earlier report (same layers and widths)"),
    "max_drop": ("--max-drop", "D", f"absolute drop allowed against --baseline (default {gate.DEFAULT_MAX_DROP} "
                                    "when neither --max-drop nor --max-drop-rel is given)"),
    "max_drop_rel": ("--max-drop-rel", "R", "relative drop allowed against --baseline, e.g. 0.05 = 5%%"),
    "drop_metrics": ("--drop-metrics", "LIST", "metrics compared with the baseline, comma-separated "
                                               f"(default {','.join(gate.DEFAULT_DROP_METRICS)}; also concentration, "
                                               "whose rise counts as a drop)"),
}


def _flag_type(key: str):
    def parse(text: str):
        value: object = text
        if key not in ("baseline", "drop_metrics", "scope"):
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return gate.validate_value(key, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = key  # argparse names the type in some messages
    return parse


@dataclass(frozen=True)
class GateConfig:
    """What ``check`` gates on: the thresholds (config file, then flags) and the file they came from."""

    thresholds: gate.Thresholds
    config_path: Path | None = None


class ThresholdArgs:
    """The `check` thresholds group, in the manner of Polygraphy's BaseArgs: ``add_to_parser`` adds
    the flags (each validated by gate.validate_value), ``parse`` merges them over the config file
    into a validated GateConfig."""

    def add_to_parser(self, p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("thresholds")
        for key, (flag, metavar, text) in THRESHOLD_FLAGS.items():
            g.add_argument(flag, dest=key, metavar=metavar, type=_flag_type(key), default=None, help=text)
        g.add_argument("--scope", choices=gate.SCOPES, default=None,
                       help="apply thresholds to model medians, each layer, or both (default both)")
        g.add_argument("--fail-on-status", action=argparse.BooleanOptionalAction, default=None,
                       help="degenerate / non_finite layers fail the gate (default: they warn)")
        g.add_argument("--allow-low-tokens", action=argparse.BooleanOptionalAction, default=None,
                       help="rank_capped layers (fewer calibration tokens than their width) warn instead of failing")
        g.add_argument("--allow-calibration-change", action=argparse.BooleanOptionalAction, default=None,
                       help="compare with a --baseline calibrated on a different token count or data (default: exit 2)")
        g.add_argument("--config", type=path_arg, metavar="FILE",
                       help="TOML file with a [check] table (default: [tool.sui-onnx.check] of the nearest pyproject.toml)")
        g.add_argument("--no-config", action="store_true", help="ignore pyproject.toml; use the flags only")

    def parse(self, args: argparse.Namespace, cwd: Path) -> GateConfig:
        if args.config is not None and args.no_config:
            raise ConfigError("--config and --no-config contradict each other")
        table, source = ({}, None) if args.no_config else gate.load_config(args.config, cwd)
        thresholds = gate.thresholds_from_config(table, source)
        flags = {key: getattr(args, key) for key in THRESHOLD_FLAGS}
        flags["scope"] = args.scope
        flags["fail_on_status"] = args.fail_on_status
        flags["allow_low_tokens"] = args.allow_low_tokens
        flags["allow_calibration_change"] = args.allow_calibration_change
        thresholds = thresholds.override(**flags)
        thresholds.validate()
        return GateConfig(thresholds, source)


THRESHOLD_ARGS = ThresholdArgs()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="CI gate: exit 1 when FFN utilization is below thresholds or regressed against a baseline",
        description="Check a model (analyzed as `report` does, same options) or an existing report JSON "
                    "against utilization thresholds, model level (medians over usable layers) and per layer, "
                    "and against a baseline report. Thresholds come from flags, --config FILE ([check] table) "
                    "or [tool.sui-onnx.check] of the nearest pyproject.toml; flags win. "
                    "A value equal to its limit passes. Writes JUnit XML and SARIF 2.1.0 for CI and prints "
                    "GitHub Actions annotations when GITHUB_ACTIONS=true.",
        epilog="Exit codes: 0 every check passed, 1 a threshold was breached, 2 usage/input/config error, "
               "130 interrupted (Ctrl-C or SIGTERM; the calibration is saved to a checkpoint first).",
    )
    p.add_argument("target", metavar="MODEL|REPORT.json",
                   help=".onnx file or folder (analyzed now) or a report JSON from `sui-onnx report --json` (suffix .json), "
                        "checked as written (analysis options are refused with it)")
    THRESHOLD_ARGS.add_to_parser(p)
    add_analysis_args(p)
    o = p.add_argument_group("outputs")
    o.add_argument("--junit", type=path_arg, metavar="OUT.xml", help="write JUnit XML (one testcase per rule and scope); '-' for stdout")
    o.add_argument("--sarif", type=path_arg, metavar="OUT.sarif", help="write SARIF 2.1.0 (GitHub code scanning); '-' for stdout")
    o.add_argument("--json", type=path_arg, metavar="OUT", help="write the gate result as JSON; '-' for stdout")
    o.add_argument("--save-report", type=path_arg, metavar="OUT.json",
                   help="also write the analysis report JSON (e.g. to keep as the next --baseline); '-' for stdout")
    o.add_argument("-q", "--quiet", action="store_true", help="no table or progress bar (annotations still print)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._version import __version__
    from ..report import MAX_REPORT_BYTES, load_report
    from ..safeio import all_or_nothing, read_input

    cwd = Path.cwd()
    config = THRESHOLD_ARGS.parse(args, cwd)
    thresholds, config_path = config.thresholds, config.config_path
    target = Path(args.target)
    is_report = target.suffix.lower() == ".json"
    if not target.exists():
        raise SuiError(f"{target}: no such {'report' if is_report else 'model file or folder'}")
    outputs = [("--junit", args.junit), ("--sarif", args.sarif), ("--json", args.json),
               ("--save-report", args.save_report), ("--checkpoint", args.checkpoint)]
    guard_outputs([target, *companion_files(target), thresholds.baseline,
                   config_path, *calib_inputs(args), args.encoder, resume_input(args), args.stats], outputs)
    if is_report and args.save_report is not None:
        raise SuiError("--save-report needs a model to analyze; the target is already a report")
    if is_report:
        refuse_analysis_with_report(args)

    baseline = load_report(thresholds.baseline) if thresholds.baseline is not None else None
    to_stdout = any(o is not None and str(o) == "-" for _, o in outputs)
    quiet = args.quiet or to_stdout
    if is_report:
        report = load_report(target)
    else:
        from ..analyze import analyze

        with TokenProgress(enabled=not quiet) as progress:
            report = analyze(target, calibration_spec(args), analysis_options(args, progress))
        warn_unfilled_budget(report, args.tokens)

    result = gate.evaluate(report, thresholds, baseline, target=str(target),
                           baseline_label=None if thresholds.baseline is None else str(thresholds.baseline))
    located = target / MODEL_FILE if target.is_dir() and (target / MODEL_FILE).is_file() else target
    lines = gate.report_json_lines(read_input(target, MAX_REPORT_BYTES).decode("utf-8")) if is_report else {}
    with all_or_nothing():  # every output or none (a full disk on the last replaces no earlier one)
        if args.save_report is not None:  # after the comparison: a refused baseline (exit 2) writes nothing
            write_text_atomic(args.save_report, report.to_json())
        if args.junit is not None:
            write_text_atomic(args.junit, gate.to_junit(result))
        if args.sarif is not None:
            sarif = gate.to_sarif(result, gate.artifact_uri(located, cwd), tool_version=__version__, layer_lines=lines)
            write_text_atomic(args.sarif, json.dumps(sarif, indent=2) + "\n")
        if args.json is not None:
            write_text_atomic(args.json, json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    if not quiet:
        make_console().print(result)  # GateResult.__rich__: render.check
    if os.environ.get("GITHUB_ACTIONS") == "true":  # the runner reads workflow commands on both streams
        for line in gate.github_annotations(result, file=gate.workspace_path(located, cwd), layer_lines=lines):
            print(line, file=sys.stderr if to_stdout else sys.stdout, flush=True)
    return result.exit_code
