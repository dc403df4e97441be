"""`sui-onnx eval MODEL --data HELDOUT...`: held-out next-token loss of a model, and what it costs
relative to a reference (ΔCE, KL, top-1 agreement); encoders against a reference's hidden states."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import (path_arg, TokenProgress, add_device_args, positive_int, guard_outputs, make_console, print_warnings,
                      write_text_atomic)

_DESCRIPTION = """\
Run held-out data through MODEL with onnxruntime and measure its next-token loss, per --data
source and pooled. Decoders (an output named *logits, or a [batch, seq, V] output with V the
embedding table's rows): CE is the mean -log p(next token) in nats per prediction (each window
of L tokens scores its L-1 next tokens) and ppl = exp(CE).
With --reference (e.g. the model before narrowing) on the same windows: dCE = CE(model) -
CE(reference) with its paired standard error, KL = KL(reference || model) in nats per
prediction, top-1 = share of positions where both models' most likely token agrees. Encoders
(hidden states only) need --reference: cosine = mean per-token cosine of the hidden vectors,
rel err = sqrt(sum |h - h_ref|^2 / sum |h_ref|^2). Errors (±) are standard errors with windows
as the units. See docs/eval.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="held-out loss of a model (CE, perplexity), and its cost against a --reference",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A slim.json beside MODEL (written by `sui-onnx slim`) names the calibration data: eval\n"
               "data with the same sha256 is flagged as not held out.\n"
               "Exit codes: 0 success, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C or SIGTERM).",
    )
    p.add_argument("model", metavar="MODEL", help=".onnx file or folder holding model.onnx (its tokenizer.json "
                                                  "is read from beside it, else from beside --reference)")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="SRC", action="append", type=path_arg, required=True,
                   help="held-out data: .txt file, folder of .txt, .jsonl with a \"text\" field, or .npy token ids "
                        "[n_windows, L] (each row one window). Repeatable: each source is measured on its own; "
                        "use data the model was not calibrated on, ideally from more than one domain")
    g.add_argument("--reference", metavar="MODEL", type=path_arg,
                   help="the model to compare with (e.g. the unnarrowed original): adds dCE, KL and top-1 "
                        "(decoders) or cosine and relative error of the hidden states (encoders)")
    g.add_argument("--seq-len", type=positive_int, default=256, metavar="L",
                   help="window length for text (default 256); .npy rows keep their own length")
    g.add_argument("--batch-size", type=positive_int, default=8, metavar="B",
                   help="windows per run (default 8; fewer when one batch of logits would pass 256 MiB)")
    g.add_argument("--tokens", type=positive_int, metavar="N",
                   help="token budget per source (default: the whole source, at most 16384 tokens; .npy ids: "
                        "whole rows, at least one)")
    add_device_args(p)
    p._option_string_actions["--precision"].help = argparse.SUPPRESS  # analysis only: eval scores in float64
    g = p.add_argument_group("outputs")
    g.add_argument("--json", type=path_arg, metavar="OUT", help="write the result JSON (schema sui-onnx/eval); '-' for stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no terminal table or progress bar (warnings still print, on stderr)")
    p.set_defaults(run=run)


def calibration_digests(model: Path, eval_paths=()) -> list[str]:
    """The sha256s of the calibration sources that gave tokens, from a slim.json beside MODEL
    (written by `sui-onnx slim`); [] if there is none. One that cannot be read is a warning: then
    eval cannot tell whether its data is held out."""
    import sys

    from ..evaluate import calibration_digests_for
    from ..safeio import printable

    folder = model if model.is_dir() else model.parent
    path = folder / "slim.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        sources = data["calibration"]["sources"]
        if not isinstance(sources, list):
            raise TypeError
        return calibration_digests_for(sources, eval_paths)
    except (OSError, ValueError, KeyError, TypeError):
        print(f"sui-onnx: warning: {printable(path)} cannot be read as slim's record (calibration.sources): "
              "eval cannot tell whether the data is the calibration data", file=sys.stderr, flush=True)
        return []


def run(args: argparse.Namespace) -> int:
    from ..evaluate import Evaluator, ModelInput, tokenizer_folder_for
    from ..graph.source import resolve_model_path

    for given in (args.model, args.reference):  # a missing model is named before the data is looked at
        if given is not None:
            resolve_model_path(given)
    model = ModelInput(path=Path(args.model), label="model")
    reference = ModelInput(path=args.reference, label="reference") if args.reference is not None else None
    guard_outputs([model.path, args.reference, *args.data], [("--json", args.json)])
    quiet = args.quiet or (args.json is not None and str(args.json) == "-")
    with TokenProgress(enabled=not quiet) as progress:
        evaluator = Evaluator(args.data, tokenizer_folder_for(model, reference), reference, seq_len=args.seq_len,
                              batch_size=args.batch_size, tokens=args.tokens, device=args.device,
                              threads=args.threads, progress=progress,
                              calibration_digests=calibration_digests(model.path, args.data))
        result = evaluator.measure(model)
    from .flags import cli_message

    result.warnings = [cli_message(w, "eval") for w in result.warnings]  # options as this command's flags
    if args.json is not None:
        write_text_atomic(args.json, result.to_json())
    console = None
    if not quiet:
        console = make_console()
        console.print(render(result))
    print_warnings(result.warnings, quiet, console)
    return 0


def _num(value: float, digits: int, sign: bool = False) -> str:
    """Fixed-point, or two significant digits in scientific notation when it would show as zero."""
    if value != 0 and abs(value) < 0.5 * 10 ** -digits:
        return format(value, "+.1e" if sign else ".1e")
    return format(value, f"{'+' if sign else ''}.{digits}f")


def _pm(value: float | None, se: float | None, digits: int, sign: bool = False) -> str:
    if value is None:
        return "-"
    return _num(value, digits, sign) + (f" ± {_num(se, digits)}" if se is not None else "")


def _caption(kind: str, ref: bool) -> str:
    if kind == "encoder":
        return "hidden states against the reference: mean per-token cosine, relative L2 error"
    text = "CE: nats per predicted token, ± one standard error; ppl = exp(CE)"
    if ref:
        text += "\ndCE = CE - CE(reference), paired SE; KL(reference || model) nats per token;\n" \
                "top-1: share of positions where both models' most likely token agrees"
    return text


def source_labels(paths) -> list[str]:
    """Each source as its file name, or with as many parent folders as it takes to tell it from the
    others (``x/a.txt`` and ``y/a.txt``)."""
    parts = [Path(str(p)).parts or (str(p),) for p in paths]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(q[-d:]) for q, d in zip(parts, depth)]
        clash = [i for i, lab in enumerate(labels) if labels.count(lab) > 1 and depth[i] < len(parts[i])]
        if not clash:
            return labels
        for i in clash:
            depth[i] += 1


def render(result):
    """Header lines, a rich table with one row per source (and the pooled row when there are
    several), and a legend; user text is escaped."""
    from rich import box
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    ref = result.reference is not None
    s = result.settings
    header = [f"eval {escape(result.model['label'])}: {escape(str(result.model['path'] or '<bytes>'))}",
              f"{result.kind}, seq_len {s['seq_len'] if s['seq_len'] is not None else 'per .npy source'}, batch {s['batch_size']}, {s['device']}"]
    if ref:
        header.append(f"reference: {escape(str(result.reference['path'] or result.reference['label']))}")
    t = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, 0))
    t.add_column("source", overflow="fold", min_width=10, max_width=32)
    for name in ("windows", "tokens"):
        t.add_column(name, justify="right", no_wrap=True)
    names = (["CE", "ppl"] + (["dCE", "KL", "top-1"] if ref else [])) if result.kind == "decoder" else ["cosine", "rel err"]
    for name in names:
        t.add_column(name, justify="right", no_wrap=True)
    rows = list(zip(source_labels([x.source["path"] for x in result.sources]), result.sources))
    if len(result.sources) > 1 and result.pooled is not None:
        rows.append(("pooled", result.pooled))
    for name, x in rows:
        cells = [escape(name), str(x.windows), f"{x.tokens:,}"]
        if result.kind == "decoder":
            cells += [_pm(x.ce, x.ce_se, 3), "-" if x.ppl is None else f"{x.ppl:,.1f}"]
            if ref:
                cells += [_pm(x.delta_ce, x.delta_ce_se, 4, sign=True), _num(x.kl, 4), f"{100 * x.top1:.1f}%"]
        else:
            cells += [f"{x.cosine:.5f}", _num(x.rel_error, 4) if x.rel_error is not None else "-"]
        t.add_row(*cells)
    return Group("\n".join(header), t, f"[dim]{_caption(result.kind, ref)}[/dim]")
