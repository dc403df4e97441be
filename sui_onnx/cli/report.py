"""`sui-onnx report [MODEL]`: the main job. Without MODEL it analyzes the bundled demo model on the
bundled calibration text, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import DEFAULT_MAX_LOSS
from ..layout import companion_files
from .options import (path_arg, TokenProgress, add_analysis_args, analysis_options, calib_inputs, calibration_spec,
                      guard_outputs, make_console, model_argument, nonnegative_number, positive_int, print_warnings,
                      refuse_eval_options_without_eval, require_narrower_width, resume_input, write_text_atomic)


PLOT_FILES = ("spectra.png", "utilization.png", "energy.png")  # what --plot DIR receives (plots.py)
MAX_COLUMNS = 100  # the terminal report is laid out for at most this width


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="analyze a model: per-layer hard/soft rank, concentration, SUI and width advice",
        description="Run calibration data through the model with its FFN activations exposed, "
                    "accumulate their covariance per layer and report the spectral utilization "
                    "suite (docs/metrics.md). Without MODEL: the bundled demo model and text.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help=".onnx file or folder holding model.onnx (default: bundled demo)")
    add_analysis_args(p)
    g = p.add_argument_group("outputs")
    g.add_argument("--json", type=path_arg, metavar="OUT", help="write the report JSON (schema sui-onnx/report); '-' for stdout")
    g.add_argument("--spectra", type=path_arg, metavar="OUT.npz", help="write the eigenvalues of every layer; '-' for stdout")
    g.add_argument("--markdown", type=path_arg, metavar="OUT", help="write a markdown summary (PR comments); '-' for stdout")
    g.add_argument("--plot", type=path_arg, metavar="DIR", help="write PNG plots (needs the `plot` extra)")
    g.add_argument("--html", type=path_arg, metavar="OUT.html",
                   help="write the report as one self-contained HTML file (tables, SVG plots, advice, provenance; "
                        "nothing fetched); '-' for stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no terminal report or progress bar (warnings still print, on stderr)")
    g = p.add_argument_group(
        "measured width advice",
        "With --eval the advice is measured: for widths D/8, D/4, D/2, 3D/4 and the k95 estimate the model is "
        "narrowed as `sui-onnx slim` does (and, for comparison, projected onto its top principal directions) and "
        "its held-out dCE against the original is measured; the recommended width is the smallest one within "
        "--max-loss-increase. Site post only.")
    g.add_argument("--eval", metavar="SRC", action="append", type=path_arg, default=[],
                   help="held-out data (same kinds as --calib), repeatable; each source is measured on its own")
    g.add_argument("--max-loss-increase", type=nonnegative_number, default=DEFAULT_MAX_LOSS, metavar="NATS",
                   help=f"largest dCE per token on every eval source for a width to be recommended (default {DEFAULT_MAX_LOSS})")
    g.add_argument("--eval-tokens", type=positive_int, metavar="N",
                   help="token budget per eval source (default: the whole source, at most 16384)")
    g.add_argument("--eval-seq-len", type=positive_int, metavar="L", help="eval window length (default: --seq-len)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..analyze import analyze

    model = model_argument(args)
    refuse_eval_options_without_eval(args, {"max_loss_increase": DEFAULT_MAX_LOSS, "eval_tokens": None, "eval_seq_len": None})
    outputs = [("--json", args.json), ("--spectra", args.spectra), ("--markdown", args.markdown),
               ("--html", args.html), ("--checkpoint", args.checkpoint)]
    guard_outputs([model, *companion_files(model), *calib_inputs(args),
                   *args.eval, args.encoder, resume_input(args), args.stats], outputs,
                  folders=[("--plot", args.plot, PLOT_FILES)])
    if args.plot is not None:
        from ..plots import require_matplotlib

        require_matplotlib()
    quiet = args.quiet or any(o is not None and str(o) == "-" for _, o in outputs)
    if args.eval:
        report = measured_report(model, args, quiet)
    else:
        with TokenProgress(enabled=not quiet) as progress:
            report = analyze(model, calibration_spec(args), analysis_options(args, progress))
    if args.tap:  # named tensors: --site does not describe them
        report.settings["taps"] = "explicit"
    warn_unfilled_budget(report, args.tokens)
    write_outputs(report, args)
    if quiet:
        from ..render.report import quiet_warnings

        print_warnings(quiet_warnings(report), quiet=True)
    else:
        from ..render import report_renderable

        console = make_console()
        console.width = min(console.width, report_columns(report))
        console.print(report_renderable(report))
    return 0


def report_columns(report) -> int:
    """The width the terminal report is laid out for: 100 columns, or as many as the model's path
    needs on its header line (a path is never wrapped when the terminal is wide enough for it)."""
    from ..render import short_path
    from ..safeio import printable

    path = printable(short_path(report.model.get("path", "")))
    return max(MAX_COLUMNS, len(path) + 11)  # "│ model  " + path + " │"


def warn_unfilled_budget(report, tokens: int | None) -> None:
    """A --tokens budget the calibration sources could not fill: one warning line on stderr with the
    tokens actually used (the report header says so too)."""
    import sys

    from ..render import unfilled_budget

    if tokens is not None and unfilled_budget(report):
        used = report.calibration.get("tokens", 0)
        print(f"sui-onnx: warning: --tokens {tokens:,}: the calibration sources hold only {used:,} tokens; "
              f"all {used:,} used", file=sys.stderr, flush=True)


def measured_report(model: Path, args: argparse.Namespace, quiet: bool):
    """The report of one calibration run whose width advice is measured on --eval (slimming.py)."""
    from ..errors import SuiError
    from ..evaluate import Evaluator, ModelInput, calibration_digests_for
    from ..graph import load_model
    from ..graph.source import resolve_model_path
    from ..graph.surgery import NotSlimmable
    from ..slimming import SlimStudy, measured_advice
    from .flags import cli_message

    if args.site != "post":
        raise SuiError("--eval measures narrowed FFNs, which are cut at the down projection's input: use --site post")
    if args.tap or args.include or args.exclude:
        raise SuiError("--eval narrows every FFN block: it cannot be combined with --tap, --include or --exclude")
    path = resolve_model_path(model)
    eval_settings = dict(seq_len=args.eval_seq_len or args.seq_len, batch_size=args.batch_size, tokens=args.eval_tokens,
                         device=args.device, threads=args.threads)
    src = load_model(path, lean=True)  # bad eval data and --align fail before calibrating
    Evaluator(args.eval, path.parent, **eval_settings).precheck(src)
    require_narrower_width(src, args.align, "measure")
    del src
    try:
        with TokenProgress(enabled=not quiet) as progress:
            study = SlimStudy(model, calibration_spec(args), analysis_options(args, progress))
    except NotSlimmable as exc:  # refused before any calibration
        raise NotSlimmable(f"--eval measures narrower FFNs, which this model cannot give ({exc}); "
                           "report without --eval still gives the spectra") from None
    report = study.report
    digests = calibration_digests_for(report.calibration.get("sources"), args.eval)
    evaluator = Evaluator(args.eval, study.src.folder, ModelInput(path=path, label="original"), **eval_settings,
                          calibration_digests=digests, kl=False)  # the ladder shows dCE and top-1: the reference runs once
    measured = measured_advice(study, evaluator, args.align, args.max_loss_increase, report.advice.get("recommended_width"),
                               progress_factory=lambda: TokenProgress(enabled=not quiet))
    measured["warnings"] = [cli_message(w, "report") for w in measured.get("warnings", [])]  # options as their flags
    report.advice["measured"] = measured
    return report


def write_outputs(report, args: argparse.Namespace) -> None:
    """Every output the options ask for, or none: a failure on one (a full disk) replaces none
    (safeio.all_or_nothing)."""
    from ..safeio import all_or_nothing

    with all_or_nothing():
        if args.json is not None:
            write_text_atomic(args.json, report.to_json())
        if args.markdown is not None:
            from ..render import to_markdown

            write_text_atomic(args.markdown, to_markdown(report))
        if args.spectra is not None:
            save_spectra(args.spectra, report)
        if args.html is not None:
            from ..html import report_html

            write_text_atomic(args.html, report_html(report))
        if args.plot is not None:
            from ..plots import write_plots

            write_plots(report, args.plot)


def save_spectra(path: Path, report) -> None:
    """Eigenvalues per layer (descending) as layer_<i>, with tensor names and token counts."""
    import numpy as np

    from .options import write_bytes_atomic

    arrays = {
        "tensors": np.asarray([x.tensor for x in report.layers]),
        "layers": np.asarray([x.layer for x in report.layers], dtype=np.int64),
        "tokens": np.asarray([x.tokens for x in report.layers], dtype=np.int64),
    }
    for x, ev in zip(report.layers, report.eigenvalues or []):
        arrays[f"layer_{x.layer}"] = np.zeros(0) if ev is None else np.asarray(ev)
    write_bytes_atomic(path, lambda fh: np.savez(fh, **arrays))
