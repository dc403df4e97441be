"""`sui-onnx scaling INPUT...`: the asymmetric spectral scaling law over one model family at several
FFN widths (docs/scaling.md). INPUT is a report JSON (`sui-onnx report --json`) or a model (.onnx
file or folder holding model.onnx), analyzed here with the shared tap / calibration / device /
metric options."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import SuiError
from .options import (TokenProgress, add_analysis_args, add_run_args, analysis_options, calibration_spec, guard_outputs,
                      make_console, positive_number, unit_number, write_text_atomic)

PLOT_FILES = ("scaling_ranks.png", "scaling_sui.png")  # what --plot DIR receives (plots_scaling.py)
# Jha & Reagen (EMNLP 2025), GPT-2 160M, AdamW, D = 768..6144, site post: shown as a labelled comparison
# row of the fits table, never as a result
PAPER_REFERENCE = {"caption": "paper = Jha & Reagen (EMNLP 2025), GPT-2 160M at D = 768..6144: for comparison, "
                              "not a result of this fit",
                   "soft": (0.661, 0.971), "hard": (0.289, 0.338)}


def register(sub: argparse._SubParsersAction) -> None:
    from ..scaling import DEFAULT_MIN_R2, DEFAULT_SEED_KEY, DEFAULT_TAU

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
    add_analysis_args(p, long_runs=False)
    g = p.add_argument_group("scaling")
    g.add_argument("--tau", type=positive_number, default=DEFAULT_TAU, metavar="T",
                   help=f"saturation threshold: width where d hard / d D falls below T (default {DEFAULT_TAU})")
    g.add_argument("--min-r2", type=unit_number, default=DEFAULT_MIN_R2, metavar="R",
                   help=f"flag fits whose R^2 is below R: not a clean power law (default {DEFAULT_MIN_R2})")
    g.add_argument("--seed-key", default=DEFAULT_SEED_KEY, metavar="KEY",
                   help="where a report records its training seed: a dotted path in its model provenance; "
                        "reports of one width with different seeds are pooled (default "
                        f"{DEFAULT_SEED_KEY!r}: model.seed, else model.train.seed)")
    g = p.add_argument_group("outputs")
    g.add_argument("--json", type=Path, metavar="OUT", help="write the scaling JSON (schema sui-onnx/scaling); '-' for stdout")
    g.add_argument("--plot", type=Path, metavar="DIR", help="write scaling_ranks.png and scaling_sui.png (needs the `plot` extra)")
    g.add_argument("--html", type=Path, metavar="OUT.html",
                   help="write the analysis as one self-contained HTML file (tables, SVG plots, provenance; nothing "
                        "fetched); '-' for stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no terminal table or progress bar")
    p.set_defaults(run=run)


def _fill_run_defaults(args: argparse.Namespace) -> None:
    """analysis_options() also reads the long-run options (checkpoints, --stats, memory cap, ...),
    which this command does not offer; give them their defaults from their one definition."""
    probe = argparse.ArgumentParser(add_help=False)
    add_run_args(probe)
    for key, value in vars(probe.parse_args([])).items():
        if not hasattr(args, key):
            setattr(args, key, value)


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


def run(args: argparse.Namespace) -> int:
    from ..report import load_report
    from ..scaling import MIN_WIDTHS, scaling_analysis

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

    reports: list[Any] = [load_report(p) if kind == "report" else None for p, kind in zip(paths, kinds)]
    if "model" in kinds:
        from ..analyze import analyze

        _fill_run_defaults(args)
        spec = calibration_spec(args)
        for i, (p, kind) in enumerate(zip(paths, kinds)):
            if kind == "model":
                with TokenProgress(enabled=not quiet) as progress:
                    reports[i] = analyze(p, spec, analysis_options(args, progress))

    result = scaling_analysis(reports, labels=[str(p) for p in paths], tau=args.tau, min_r2=args.min_r2,
                              seed_key=args.seed_key)
    if args.json is not None:
        write_text_atomic(args.json, result.to_json())
    if args.html is not None:
        from ..html import scaling_html

        write_text_atomic(args.html, scaling_html(result, reports))
    if args.plot is not None:
        from ..plots_scaling import write_scaling_plots

        write_scaling_plots(result, args.plot)
    if not quiet:
        console = make_console()
        for renderable in scaling_renderables(result):
            console.print(renderable)
    return 0


def _num(value: float | None, fmt: str = ".3f") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return format(value, fmt)


def _ci(ci) -> str:
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"[{lo:.3f}, {hi:.3f}]"


def _pm(fit) -> str:
    lo, hi = fit.beta_ci95
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return _num(fit.beta)
    return f"{fit.beta:.3f} ± {(hi - lo) / 2:.3f}"


def _mean_sd(spread, fmt: str = ".2f") -> str:
    return _num(spread.mean, fmt) if spread.n < 2 else f"{_num(spread.mean, fmt)} ± {_num(spread.sd, fmt)}"


def _r2(result, fit) -> str:
    """R^2 with a trailing '!' when it is below --min-r2 (the legend line under the tables says so)."""
    return _num(fit.r2) + (" !" if result.low_r2(fit) else "")


def scaling_renderables(result) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    from ..safeio import printable

    family = ", ".join(f"{k} {v if isinstance(v, str) else '/'.join(v)}" for k, v in result.family.items())

    seeds = result.seeds
    n_seeds = f", {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    head = Text(printable(f"Spectral scaling over {len(result.models)} widths{n_seeds}, {result.n_layers} FFN layers"
                f"{', site ' + result.site if result.site else ''}{' (' + family + ')' if family else ''}"),
                style="bold")

    pooled = len(result.runs) > len(result.models)
    widths = Table(title="Per width (median over usable layers" + ("; mean ± SD over seeds" if pooled else "") + ")",
                   title_justify="left")
    for col in ("D", *(("seeds",) if pooled else ()), "layers", "tokens", "hard rank", "soft rank", "hard/D", "soft/D", "SUI"):
        widths.add_column(col, justify="right")
    for m in result.models:
        peak = " *" if m.width == result.sui_peak["width"] else ""
        widths.add_row(str(m.width), *((str(len(m.runs)),) if pooled else ()), f"{m.usable_layers}/{m.n_layers}",
                       f"{m.min_tokens:,}", _mean_sd(m.spread("hard")), _mean_sd(m.spread("soft")),
                       _num(m.median_hard / m.width), _num(m.median_soft / m.width),
                       _mean_sd(m.spread("sui"), ".3f") + peak)

    fits = Table(title="Power-law fits: rank = A * D^beta (median over layers)", title_justify="left")
    for col in ("quantity", "beta", "95% CI", "A", "R^2", "resid sd", "n"):
        fits.add_column(col, justify="right" if col != "quantity" else "left")
    for name, fit in (("soft rank", result.soft), ("hard rank", result.hard)):
        fits.add_row(name, _num(fit.beta), _ci(fit.beta_ci95), _num(fit.A, ".4g"), _r2(result, fit),
                     _num(fit.residual_sd, ".3g"), str(fit.n))
    a = result.asymmetry
    fits.add_row("soft - hard", _num(a.beta), _ci(a.beta_ci95), "", "", "", str(a.n))
    fits.add_section()
    ref = PAPER_REFERENCE
    for name, key in (("soft rank", "soft"), ("hard rank", "hard")):
        fits.add_row(f"paper: {name}", _num(ref[key][0]), "", "", _num(ref[key][1]), "", "", style="dim")
    fits.add_row("paper: soft - hard", _num(ref["soft"][0] - ref["hard"][0]), "", "", "", "", "", style="dim")
    fits.caption = ref["caption"]
    fits.caption_justify = "left"

    layers = Table(title="Per layer (beta with its 95% half-width)", title_justify="left")
    for col in ("layer", "beta soft", "R^2", "beta hard", "R^2 ", "soft - hard"):
        layers.add_column(col, justify="right")
    for x in result.layers:
        if x.soft is None:
            layers.add_row(str(x.layer), f"no fit ({len(set(x.widths))} widths)", "", "", "", "")
            continue
        layers.add_row(str(x.layer), _pm(x.soft), _r2(result, x.soft), _pm(x.hard), _r2(result, x.hard),
                       _pm(x.asymmetry))
    parts = [head, widths, fits, layers]
    if result.seed_fits:
        per_seed = Table(title="Per seed (each seed's models alone, median over layers)", title_justify="left")
        for col in ("seed", "widths", "beta soft", "R^2", "beta hard", "R^2 ", "soft - hard"):
            per_seed.add_column(col, justify="right")
        for f in result.seed_fits:
            per_seed.add_row(printable(str(f.seed)), str(len(f.widths)), _pm(f.soft), _r2(result, f.soft), _pm(f.hard),
                             _r2(result, f.hard), _pm(f.asymmetry))
        parts.append(per_seed)

    sat = result.saturation
    if sat.status == "reached":
        where = {"below": "below the measured widths", "within": "within the measured widths",
                 "above": "above the measured widths (extrapolated)"}[sat.position]
        sat_line = f"D* = {sat.width:,.0f} ({where})"
    elif sat.status == "no_growth":
        sat_line = "not defined: the fitted hard rank does not grow with width (beta_hard <= 0)"
    else:
        sat_line = "not reached: beta_hard >= 1, the slope never falls"
    lines = Text()
    from ..scaling import asymmetry_verdict

    verdict = asymmetry_verdict(a)
    meaning = {"above 0": "soft rank grows faster than hard rank, as in the paper",
               "includes 0": "not distinguishable from equal exponents at this confidence",
               "below 0": "hard rank grows faster than soft rank, unlike the paper",
               "undefined": "no interval with fewer than 3 widths"}[verdict]
    lines.append(f"asymmetry beta_soft - beta_hard = {_num(a.beta)}, 95% CI {_ci(a.beta_ci95)}: {verdict} "
                 f"({meaning})\n")
    low = [f"median {k}" for k, fit in (("soft", result.soft), ("hard", result.hard)) if result.low_r2(fit)]
    for k in ("soft", "hard"):
        ids = [str(x.layer) for x in result.layers if result.low_r2(getattr(x, k))]
        if ids:
            low.append(f"{k} of layer{'s' if len(ids) > 1 else ''} {', '.join(ids)}")
    if low:
        lines.append(f"! R^2 below {result.min_r2:g} (--min-r2: not a clean power law): {', '.join(low)}\n")
    lines.append(f"hard-rank saturation (d hard / d D = beta_hard * hard / D < {sat.tau:g}): {sat_line}; "
                 f"slope at D = {max(result.widths):,}: {_num(sat.slope_at_max_width, '.4g')}\n")
    peak = result.sui_peak
    edge = {"smallest": " (the smallest measured width: the peak may lie below)",
            "largest": " (the largest measured width: the peak may lie above)", "interior": ""}[peak["position"]]
    lines.append(f"SUI peak: D = {peak['width']:,}, median SUI {_num(peak['median_sui'])}{edge}")
    return [*parts, lines]
