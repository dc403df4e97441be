"""`sui-onnx slim MODEL OUT_DIR (--width K | --ratio R | --max-loss-increase NATS)`: write a model
whose FFN blocks are genuinely narrower, chosen and refitted from the calibration statistics, with
its measured cost on held-out text (docs/slim.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..metrics import DEFAULT_TOP_FRACTION
from .options import (path_arg, TokenProgress, add_calib_args, calib_inputs, add_device_args, add_run_args, analysis_options, calibration_spec,
                      fraction, guard_outputs, make_console, nonnegative_number, positive_int, print_warnings,
                      refuse_eval_options_without_eval, require_narrower_width, resume_input,
                      write_text_atomic)

_DESCRIPTION = """\
Narrow every FFN block of MODEL and write the narrower model to OUT_DIR (model.onnx, its tokenizer
and config files, and slim.json). The calibration run is the one `report` makes (same --calib,
--tokens, --stats, --checkpoint); from each layer's activation covariance slim picks the neurons to
keep and refits the down projection by least squares, so the kept neurons also carry what the
dropped ones contributed: W_down' = B W_down with B = (C_SS + ridge)^-1 C_S,:, the means folded into
the down bias. No retraining and no PyTorch. The cost is measured, not assumed: give held-out text
with --eval (another domain too: slimming is specific to the calibration data; calibrate on what
the model will serve). See docs/slim.md."""


def register(sub: argparse._SubParsersAction) -> None:
    from ..defaults import DEFAULT_RIDGE, METHODS, SCHEDULES

    p = sub.add_parser(
        "slim",
        help="write a narrower model: FFN neurons chosen and refitted from the statistics, cost measured",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 success, 2 bad input or a model slim cannot narrow (one line says why), 130 "
               "interrupted (Ctrl-C or SIGTERM; the calibration is saved to a checkpoint first, nothing is half-written).",
    )
    p.add_argument("model", metavar="MODEL", help=".onnx file or folder holding model.onnx (never modified); an optimum merged "
                   "decoder (decoder_model_merged.onnx) is narrowed in both of its branches")
    p.add_argument("out_dir", metavar="OUT_DIR", type=path_arg,
                   help="new folder for the narrower model (must not exist, or be empty)")
    g = p.add_argument_group("target width (one of)")
    how = g.add_mutually_exclusive_group(required=True)
    how.add_argument("--width", type=positive_int, metavar="K", help="keep K neurons in every FFN layer (at most its width)")
    how.add_argument("--ratio", type=fraction, metavar="R", help="keep R x D neurons per layer, rounded up to a multiple of --align")
    how.add_argument("--max-loss-increase", type=nonnegative_number, metavar="NATS",
                     help="the smallest width (a multiple of --align) whose measured dCE on every --eval source is "
                          "at most NATS per token; each probe of the search is measured (needs --eval)")
    g = p.add_argument_group("selection")
    g.add_argument("--method", choices=METHODS, default="id",
                   help="id (default): greedy pivoted Cholesky on the covariance weighted by the down projection, "
                        "then the least-squares refit; variance: the highest-variance neurons, dropped ones "
                        "replaced by their mean (the baseline)")
    g.add_argument("--schedule", choices=SCHEDULES, default="uniform",
                   help="uniform (default): the same width in every layer; per-layer: the same total (at most, "
                        "in whole --align steps), allocated by each layer's output-space residual")
    g.add_argument("--align", type=positive_int, default=64, metavar="N",
                   help="widths are multiples of N for --ratio, --schedule per-layer and the search (default 64)")
    g.add_argument("--ridge", type=nonnegative_number, default=DEFAULT_RIDGE, metavar="R",
                   help=f"ridge of the refit, relative to the kept neurons' mean variance (default {DEFAULT_RIDGE:g})")
    add_calib_args(p, encoder=False)
    add_device_args(p)
    add_run_args(p)
    g = p.add_argument_group("held-out measurement")
    g.add_argument("--eval", metavar="SRC", action="append", type=path_arg, default=[],
                   help="held-out data (same kinds as --calib), repeatable: each source is measured on its own "
                        "against the original model (dCE, KL, top-1) and written to slim.json")
    g.add_argument("--eval-tokens", type=positive_int, metavar="N",
                   help="token budget per eval source (default: the whole source, at most 16384)")
    g.add_argument("--eval-seq-len", type=positive_int, metavar="L", help="eval window length (default: --seq-len)")
    g = p.add_argument_group("outputs")
    g.add_argument("--json", type=path_arg, metavar="OUT", help="also write slim.json here; '-' for stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no terminal summary or progress bar (warnings still print, on stderr)")
    p.set_defaults(run=run, site="post", include=None, exclude=None, tap=[], top_fraction=DEFAULT_TOP_FRACTION,
                   advice_q=0.95, advice_quantile=1.0)


def run(args: argparse.Namespace) -> int:
    from ..errors import SuiError
    from ..evaluate import Evaluator, ModelInput, calibration_digests_for
    from ..graph import load_model
    from ..graph.source import file_sha256, resolve_model_path
    from ..graph.surgery import write_model_folder
    from ..ladder import width_span
    from ..slimming import SlimStudy, eval_summary, resolution, search_width, slim_record, worst_delta
    from .flags import cli_message

    model = resolve_model_path(args.model)
    out_dir: Path = args.out_dir
    if args.max_loss_increase is not None and not args.eval:
        raise SuiError("--max-loss-increase measures every probe on held-out data: give --eval HELDOUT")
    refuse_eval_options_without_eval(args, {"eval_tokens": None, "eval_seq_len": None})
    inputs = [model, *calib_inputs(args), *args.eval, resume_input(args), args.stats]
    outputs = [("--json", args.json), ("--checkpoint", args.checkpoint)]
    guard_outputs(inputs, outputs)
    _guard_out_dir(out_dir, [p for p in inputs if p is not None] + [model.parent], outputs)
    quiet = args.quiet or (args.json is not None and str(args.json) == "-")
    console = make_console(quiet=quiet)
    eval_settings = dict(seq_len=args.eval_seq_len or args.seq_len, batch_size=args.batch_size, tokens=args.eval_tokens,
                         device=args.device, threads=args.threads)
    if args.eval or args.max_loss_increase is not None:  # bad eval data and --align fail now, not after calibrating
        src = load_model(model, lean=True)
        if args.eval:
            Evaluator(args.eval, model.parent, **eval_settings).precheck(src)
        if args.max_loss_increase is not None:
            from ..evaluate import graph_has_logits

            if not graph_has_logits(src.model):
                raise SuiError(ENCODER_SEARCH)
            require_narrower_width(src, args.align, "search")
        del src
    with TokenProgress(enabled=not quiet) as progress:
        study = SlimStudy(model, calibration_spec(args), analysis_options(args, progress), ridge=args.ridge)
    warnings: list[str] = []
    evaluator = None
    if args.eval:
        digests = calibration_digests_for(study.report.calibration.get("sources"), args.eval)
        evaluator = Evaluator(args.eval, study.src.folder, ModelInput(path=model, label="original"), **eval_settings,
                              calibration_digests=digests, kl=False)  # search probes: the reference runs once

    def build(widths: list[int]):
        return study.variant(widths, args.method)

    def widths_for(uniform: list[int]) -> list[int]:
        if args.schedule == "per-layer":
            return study.per_layer_widths(uniform, args.method, args.align)
        return uniform

    def measure(variant):
        with TokenProgress(enabled=not quiet) as bar:
            evaluator.progress = bar
            return evaluator.measure(ModelInput(data=variant.model.SerializeToString(),
                                                external_folder=study.src.data_folder, label=variant.label))

    search: list[dict] = []
    if args.max_loss_increase is not None:
        widest = max(study.widths)

        probed: dict[int, list[int]] = {}

        def probe(k: int) -> float | None:
            v = build(widths_for([min(k, d) for d in study.widths]))
            probed[k] = list(v.widths)
            result = measure(v)
            if result.kind != "decoder":
                raise SuiError(ENCODER_SEARCH)
            if not quiet:
                console.print(f"[dim]probe {v.label}: worst dCE {_fmt(worst_delta(result))} nats[/dim]")
            return worst_delta(result)

        k = search_width(probe, args.align, widest, args.max_loss_increase, search)
        if args.schedule == "per-layer":  # each probe's own per-layer widths, as measured
            for entry in search:
                entry["widths"] = probed.get(entry["width"])
        if k is None:
            probes = ", ".join(f"{s['width']} {_fmt(s['worst_delta_ce'])}" for s in sorted(search, key=lambda s: s["width"]))
            raise SuiError(f"no width below {widest} keeps dCE <= {args.max_loss_increase} nats on every --eval source "
                           f"(probes, worst dCE: {probes}): nothing was written")
        uniform = [min(k, d) for d in study.widths]
        request = {"max_loss_increase": args.max_loss_increase}
    else:
        uniform = study.uniform_widths(args.width, args.ratio, args.align)
        request = {"width": args.width} if args.width is not None else {"ratio": args.ratio}
    variant = build(widths_for(uniform))
    if args.schedule == "per-layer" and sum(variant.widths) < sum(uniform):
        warnings.append(f"--schedule per-layer: the widths add up to {sum(variant.widths)}, below the {sum(uniform)} of "
                        f"the uniform widths asked for: each layer takes whole steps of --align {args.align} (or its "
                        "full width)")
    if list(variant.widths) == list(study.widths):
        asked = f"--width {args.width}" if args.width is not None else f"--ratio {args.ratio}" if args.ratio is not None \
            else "the search"
        raw = [args.width if args.width is not None else args.ratio * d if args.ratio is not None else d for d in study.widths]
        why = (f"; rounded up to a multiple of --align {args.align}, which leaves no narrower width"
               if any(r < d for r, d in zip(raw, study.widths)) else "")
        warnings.append(f"{asked} keeps every layer at its full FFN width ({width_span(study.widths)}{why}): nothing was "
                        "removed, and the model written has the original's FFNs unchanged")
    # the variant is built: neither measuring, writing nor checking it needs the D x D statistics
    study.release()
    evaluation = None
    if evaluator is not None:
        evaluator.kl = True  # the written model is measured in full, KL included
        result = measure(variant)
        evaluation = {**eval_summary(result), "result": result.to_dict()}
        warnings += result.warnings
        if args.max_loss_increase is not None:  # the search's verdicts rest on this data's resolution
            why, wide = resolution(evaluation, args.max_loss_increase)
            warnings += ([f"the width search cannot tell widths apart: {why}"] if why else []) + wide
    else:
        from ..runner import companion_input, companion_role

        fed = companion_input(study.src.model)
        how = (f"eval does not run a model whose {fed!r} takes {companion_role(fed)}" if fed else
               f"sui-onnx eval OUT_DIR --data HELDOUT --reference {model}")
        warnings.append(f"no --eval: the cost of this width was not measured ({how})")
    record = slim_record(study, variant, request, None, None, evaluation, search, warnings, args.method,
                         args.schedule, args.align)
    record["warnings"] = [cli_message(w, "slim") for w in record["warnings"]]  # options as their flags
    evaluator = None  # nor the original's eval session
    written = write_model_folder(variant.model, study.src, out_dir,
                                 {"slim.json": (json.dumps(record, indent=2, allow_nan=False) + "\n").encode()},
                                 copy_from=study.src.folder)
    widths = list(variant.widths)
    del variant  # the narrowed weights are on disk now; the check loads them from there
    note = _verify(written, widths, study.src.path)
    if note is not None:
        record["warnings"].append(note)
    record["model"] = {"path": str(written), "sha256": file_sha256(written)}
    write_text_atomic(out_dir / "slim.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(record, indent=2, allow_nan=False) + "\n")
    if not quiet:
        console.print(summary(record, evaluation))
    print_warnings(record["warnings"], quiet, console)  # the study's (calibration) and this run's
    return 0


def _guard_out_dir(out_dir: Path, inputs: list[Path], outputs: list[tuple[str, Path | None]]) -> None:
    """Before any work: OUT_DIR is a new or empty real folder that holds no input of this run, and
    no other output (--json, --checkpoint) is OUT_DIR or goes inside it."""
    from ..errors import SuiError

    if out_dir.is_symlink():
        raise SuiError(f"OUT_DIR {out_dir} is a symbolic link: give the folder it points to (or a new one)")
    target = out_dir.resolve()

    def within(p: Path) -> bool:  # OUT_DIR itself or a path inside it
        r = Path(p).resolve()
        return r == target or target in r.parents

    for p in inputs:
        if within(p):
            raise SuiError(f"refusing to write into {out_dir}: it holds an input of this run ({p})")
    for flag, p in outputs:
        if p is not None and str(p) != "-" and within(p):
            raise SuiError(f"{flag} {p} is OUT_DIR or inside it, which slim fills with the model: write it elsewhere")
    from .options import in_package_data

    if in_package_data(out_dir):
        raise SuiError(f"refusing to write into {out_dir}: it is in sui-onnx's own bundled data; choose an OUT_DIR elsewhere")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SuiError(f"{out_dir} exists and is not an empty folder: nothing was written (choose a new OUT_DIR)")
    if not target.parent.is_dir():
        raise SuiError(f"cannot write {out_dir}: folder {target.parent} does not exist")


def _verify(path: Path, widths: list[int], original: Path) -> str | None:
    """The written model passes onnx.checker, loads in onnxruntime, and detection finds the new widths.
    A graph the checker rejects for the same reason as the original (onnxruntime's own ops in the
    default domain, as onnxruntime-genai's builder writes them) is verified by onnxruntime alone;
    the note saying so is returned."""
    import onnx

    from ..errors import SuiError, first_line
    from ..graph import find_taps, load_model
    from ..runner import create_session

    def checker(p: Path) -> str | None:
        try:
            onnx.checker.check_model(str(p))
        except Exception as exc:  # noqa: BLE001 - the checker raises several types
            return first_line(exc, limit=200)
        return None

    note = None
    problem = checker(path)
    if problem is not None:
        if checker(original) != problem:
            raise SuiError(f"the narrowed model fails onnx.checker ({problem}); please report it")
        note = (f"onnx.checker rejects the original model too ({problem}); the narrowed one was checked by "
                "loading it in onnxruntime")
    create_session(path, "cpu", 1)
    found = [t.width for t in find_taps(load_model(path, lean=True).model)]
    if found != list(widths):
        raise SuiError(f"the narrowed model's FFN widths read back as {found}, expected {widths}; please report it")
    return note


def _fewer(before: int, after: int) -> str:
    """"25% fewer"; "unchanged"; a count that grew (a new down bias on a layer narrowed by less
    than the bias adds) says by how much."""
    if after == before:
        return "unchanged"
    if after > before:
        return f"{after - before:,} more"
    return f"{1 - after / max(before, 1):.0%} fewer"


def _fmt(value: float | None, spec: str = "+.4f") -> str:
    return "-" if value is None else format(value, spec)


ENCODER_SEARCH = ("--max-loss-increase needs a decoder (an output named logits); for an encoder use --width or "
                  "--ratio with --eval, which measures the hidden states' cosine")


def summary(record: dict, evaluation: dict | None):
    """Widths, parameter counts and the measured cost, one block."""
    from rich import box
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    from ..ladder import width_span

    layers = record["layers"]
    before = sorted({x["width_before"] for x in layers})
    after = [x["width_after"] for x in layers]
    p = record["parameters"]
    lines = [
        f"[bold]wrote[/]  {escape(str(record['model']['path']))}",
        f"[bold]widths[/] {'/'.join(map(str, before))} -> "
        + width_span(after) + ("" if len(set(after)) == 1 else f" per layer (sum {sum(after)})")
        + f" · method {record['method']} · schedule {record['schedule']}",
        f"[bold]params[/] FFN {p['ffn_before']:,} -> {p['ffn_after']:,} ({_fewer(p['ffn_before'], p['ffn_after'])}) · "
        f"total {p['total_before']:,} -> {p['total_after']:,} ({_fewer(p['total_before'], p['total_after'])})",
    ]
    parts: list = [Panel("\n".join(lines), title="sui-onnx slim", title_align="left", box=box.ROUNDED)]
    if evaluation is not None:
        t = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, title="measured against the original",
                  title_justify="left")
        encoder = all(s.get("delta_ce") is None and s.get("cosine") is not None for s in evaluation["sources"])
        names = ("eval source", "tokens", "cosine", "rel err") if encoder else \
            ("eval source", "tokens", "CE before", "dCE", "KL", "top-1")
        for name in names:
            t.add_column(name, justify="left" if name == "eval source" else "right", overflow="fold")
        from .eval import source_labels

        labels = source_labels([s["path"] for s in evaluation["sources"]])
        for label, s in zip(labels, evaluation["sources"]):
            source = escape(label) + ("" if s.get("held_out", True) else " [yellow](calib)[/]")
            if encoder:  # no logits: the last hidden state against the original's
                t.add_row(source, f"{s['tokens']:,}", f"{s['cosine']:.5f}",
                          "-" if s.get("rel_error") is None else f"{s['rel_error']:.4f}")
                continue
            if s["delta_ce"] is None:
                continue
            se = f" ± {s['delta_ce_se']:.4f}" if s.get("delta_ce_se") is not None else ""
            kl = "-" if s.get("kl") is None else f"{s['kl']:.4f}"
            top1 = "-" if s.get("top1") is None else f"{100 * s['top1']:.1f}%"
            t.add_row(source, f"{s['tokens']:,}", f"{s['ref_ce']:.3f}", f"{s['delta_ce']:+.4f}{se}", kl, top1)
        parts.append(t)
    return Group(*parts)
