"""`sui-onnx report [MODEL]`: the main job. Without MODEL it analyzes the bundled demo model on the
bundled calibration text, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..runner import companion_encoder

from .options import (TokenProgress, add_analysis_args, analysis_options, calibration_spec, guard_outputs, make_console, model_argument, write_text_atomic)


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
    g.add_argument("--json", type=Path, metavar="OUT", help="write the report JSON (schema sui-onnx/report); '-' for stdout")
    g.add_argument("--spectra", type=Path, metavar="OUT.npz", help="write the eigenvalues of every layer")
    g.add_argument("--markdown", type=Path, metavar="OUT", help="write a markdown summary (PR comments)")
    g.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots (needs the `plot` extra)")
    g.add_argument("-q", "--quiet", action="store_true", help="no terminal report or progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..analyze import analyze

    model = model_argument(args)
    outputs = [args.json, args.spectra, args.markdown, args.checkpoint]
    guard_outputs([model, companion_encoder(model), *args.calib, args.encoder, args.resume, args.stats], outputs)
    if args.plot is not None:
        from ..plots import require_matplotlib

        require_matplotlib()
    quiet = args.quiet or (args.json is not None and str(args.json) == "-")
    with TokenProgress(enabled=not quiet) as progress:
        report = analyze(model, calibration_spec(args), analysis_options(args, progress))
    write_outputs(report, args)
    if not quiet:
        from ..render import report_renderable

        make_console().print(report_renderable(report))
    return 0


def write_outputs(report, args: argparse.Namespace) -> None:
    if args.json is not None:
        write_text_atomic(args.json, report.to_json())
    if args.markdown is not None:
        from ..render import to_markdown

        write_text_atomic(args.markdown, to_markdown(report))
    if args.spectra is not None:
        save_spectra(args.spectra, report)
    if args.plot is not None:
        from ..plots import write_plots

        write_plots(report, args.plot)


def save_spectra(path: Path, report) -> None:
    """Eigenvalues per layer (descending) as layer_<i>, with tensor names and token counts."""
    from ..spectrum import atomic_write_bytes

    arrays = {
        "tensors": np.asarray([x.tensor for x in report.layers]),
        "layers": np.asarray([x.layer for x in report.layers], dtype=np.int64),
        "tokens": np.asarray([x.tokens for x in report.layers], dtype=np.int64),
    }
    for x, ev in zip(report.layers, report.eigenvalues or []):
        arrays[f"layer_{x.layer}"] = np.zeros(0) if ev is None else np.asarray(ev)
    atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))
