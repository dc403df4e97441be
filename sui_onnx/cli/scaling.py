"""`sui-onnx scaling INPUT...`: the asymmetric spectral scaling law over one model family at several
FFN widths (docs/scaling.md). INPUT is a report JSON (`sui-onnx report --json`) or a model (.onnx
file or folder holding model.onnx), analyzed here with the shared tap / calibration / device /
metric options."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SuiError
from ..defaults import DEFAULT_MIN_R2, DEFAULT_SEED_KEY, DEFAULT_TAU
from .options import (path_arg, TokenProgress, add_analysis_args, analysis_options, calibration_spec, guard_outputs, make_console,
                      positive_number, unit_number, write_text_atomic)

PLOT_FILES = ("scaling_ranks.png", "scaling_sui.png")  # what --plot DIR receives (plots_scaling.py)


@dataclass(frozen=True)
class ScalingConfig:
    """What the fit is asked for (scaling_analysis' keywords)."""

    tau: float = DEFAULT_TAU  # saturation threshold on d hard / d D
    min_r2: float = DEFAULT_MIN_R2  # fits below it are flagged
    seed_key: str = DEFAULT_SEED_KEY  # where a report records its training seed

    def as_kwargs(self) -> dict[str, Any]:
        return {"tau": self.tau, "min_r2": self.min_r2, "seed_key": self.seed_key}


class ScalingArgs:
    """The `scaling` argument group, in the manner of Polygraphy's BaseArgs: ``add_to_parser`` adds
    the flags (validated by their argparse types), ``parse`` turns a namespace into a ScalingConfig."""

    def add_to_parser(self, p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("scaling")
        g.add_argument("--tau", type=positive_number, default=DEFAULT_TAU, metavar="T",
                       help=f"saturation threshold: width where d hard / d D falls below T (default {DEFAULT_TAU})")
        g.add_argument("--min-r2", type=unit_number, default=DEFAULT_MIN_R2, metavar="R",
                       help=f"flag fits whose R^2 is below R: not a clean power law (default {DEFAULT_MIN_R2})")
        g.add_argument("--seed-key", default=DEFAULT_SEED_KEY, metavar="KEY",
                       help="where a report records its training seed: a dotted path in its model provenance; "
                            "reports of one width with different seeds are pooled (default "
                            f"{DEFAULT_SEED_KEY!r}: model.seed, else model.train.seed)")

    def parse(self, args: argparse.Namespace) -> ScalingConfig:
        return ScalingConfig(tau=args.tau, min_r2=args.min_r2, seed_key=args.seed_key)


SCALING_ARGS = ScalingArgs()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scaling",
        help="fit the spectral scaling law (rank = A * D^beta) across FFN widths of one family",
        description="Fit soft and hard rank against FFN width D (rank = A * D^beta, least squares in "
                    "log-log space) over models of one family at >= 3 widths, per layer and for the "
                    "median over layers; several seeds of a width are pooled (mean and spread); report "
                    "R^2 (flagged below --min-r2), 95% t-intervals, the asymmetry beta_soft - beta_hard "
                    "with its interval, SUI against width, the hard-rank saturation width and the SUI "
                    "peak (docs/scaling.md).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="report JSON (sui-onnx report --json), .onnx file or folder holding model.onnx; "
                        "models are analyzed here with the options below")
    add_analysis_args(p, long_runs=False)  # one model per input: no checkpoints, --stats, --ray or --encoder
    SCALING_ARGS.add_to_parser(p)
    g = p.add_argument_group("outputs")
    g.add_argument("--json", type=path_arg, metavar="OUT", help="write the scaling JSON (schema sui-onnx/scaling); '-' for stdout")
    g.add_argument("--plot", type=path_arg, metavar="DIR", help="write scaling_ranks.png and scaling_sui.png (needs the `plot` extra)")
    g.add_argument("--html", type=path_arg, metavar="OUT.html",
                   help="write the analysis as one self-contained HTML file (tables, SVG plots, provenance; nothing "
                        "fetched); '-' for stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no terminal table or progress bar")
    p.set_defaults(run=run)


def classify(path: Path) -> str:
    """'report' or 'model' for one INPUT; SuiError when it is neither."""
    if path.is_dir():
        from ..graph.source import resolve_model_path

        try:
            resolve_model_path(path)  # model.onnx, onnx/model.onnx, a Hugging Face cache repo
            return "model"
        except SuiError:
            raise SuiError(f"{path}: folder without model.onnx (give a report JSON, an .onnx file or a model folder)") from None
    if not path.exists():
        raise SuiError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".onnx":
        return "model"
    return "report"


def refuse_repeated_models(models: list[Path]) -> None:
    """The same model given twice (by another path, or a copy of its file) is refused before any is
    analyzed; the fit would refuse its duplicate width only after every calibration run."""
    from ..graph.source import file_sha256, resolve_model_path
    from ..safeio import first_repeat, printable

    files = [resolve_model_path(p) for p in models]
    repeat = first_repeat(files, file_sha256, lambda f: f.stat().st_size)
    if repeat is not None:
        j, i, _ = repeat
        raise SuiError(f"{printable(models[i])} and {printable(models[j])} are the same model: give one model per "
                       "width and seed")


def run(args: argparse.Namespace) -> int:
    from ..report import load_report
    from ..scaling import MIN_WIDTHS, scaling_analysis

    config = SCALING_ARGS.parse(args)
    paths = [Path(x) for x in args.inputs]
    if len(paths) < MIN_WIDTHS:
        raise SuiError(f"scaling needs at least {MIN_WIDTHS} inputs of distinct FFN widths; got {len(paths)}")
    kinds = [classify(p) for p in paths]
    guard_outputs([*paths, *args.calib], [("--json", args.json), ("--html", args.html)],
                  folders=[("--plot", args.plot, PLOT_FILES)])
    if args.plot is not None:
        from ..plots import require_matplotlib

        require_matplotlib()
    quiet = args.quiet or any(o is not None and str(o) == "-" for o in (args.json, args.html))

    refuse_repeated_models([p for p, kind in zip(paths, kinds) if kind == "model"])
    reports: list[Any] = [load_report(p) if kind == "report" else None for p, kind in zip(paths, kinds)]
    if "model" in kinds:
        from ..analyze import analyze

        spec = calibration_spec(args)
        for i, (p, kind) in enumerate(zip(paths, kinds)):
            if kind == "model":
                with TokenProgress(enabled=not quiet) as progress:
                    reports[i] = analyze(p, spec, analysis_options(args, progress, long_runs=False))

    result = scaling_analysis(reports, labels=[str(p) for p in paths], **config.as_kwargs())
    if args.json is not None:
        write_text_atomic(args.json, result.to_json())
    if args.html is not None:
        from ..html import scaling_html

        write_text_atomic(args.html, scaling_html(result, reports))
    if args.plot is not None:
        from ..plots_scaling import write_scaling_plots

        write_scaling_plots(result, args.plot)
    if not quiet:
        make_console().print(result)  # ScalingResult.__rich__: render.scaling (its warnings included)
    else:
        for warning in result.warnings:
            print(f"sui-onnx: warning: {warning}", file=sys.stderr, flush=True)
    return 0
