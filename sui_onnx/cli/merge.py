"""`sui-onnx merge A.npz B.npz ... -o OUT.npz`: combine statistics computed on different machines."""

from __future__ import annotations

import argparse

from ..errors import SuiError
from ..safeio import markup
from .options import guard_outputs, make_console, path_arg

IDENTITY = ("model_sha256", "taps", "widths")  # what two shards must share to be merged


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge finished statistics files (shards of one calibration set) exactly",
        description="Add up the per-layer sufficient statistics of runs made with --checkpoint on "
                    "the same model and taps (e.g. shards of a calibration set on several machines). Each shard "
                    "counts once: a file given twice, two files of the same calibration data, or two that read the "
                    "same source (every run reads a source from its start, so they overlap), are refused. "
                    "Report from the result with: sui-onnx report MODEL --stats OUT.npz",
    )
    p.add_argument("inputs", nargs="+", type=path_arg, metavar="STATS.npz")
    p.add_argument("-o", "--output", type=path_arg, required=True, metavar="OUT.npz",
                   help="where to write the merged statistics (.npz; never one of the inputs)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..safeio import printable
    from ..checkpoint import run_tokens
    from ..spectrum import load_accumulators, save_accumulators
    from .options import FileSet

    guard_outputs(args.inputs, [("--output", args.output)])
    if len(args.inputs) < 2:
        raise SuiError("merge needs at least two statistics files")
    seen = FileSet()
    for path in args.inputs:
        if path in seen:
            raise SuiError(f"{printable(path)} is given twice: each shard may be counted once")
        seen.add(path)
    merged, meta0 = None, None
    total = 0  # the shards' calibration tokens (an expert of a mixture sees only its share of them)
    shards: dict[str, str] = {}  # token-stream digest -> the file that brought it
    sources: dict[str, tuple[str, dict]] = {}  # calibration source sha256 -> (the file that read it, its record)
    window: tuple[int, str] | None = None  # (--seq-len, the file) of the first shard that records one
    unrecorded = False  # a shard that does not say (then the merge does not either)
    for path in args.inputs:
        label = printable(path)
        accs, meta = load_accumulators(path)
        if not meta.get("mergeable"):
            raise SuiError(f"{label}: not a finished single-pass run's statistics (run report with --checkpoint to the end)")
        ident = meta.get("identity")
        if not isinstance(ident, dict) or not all(k in ident for k in IDENTITY):
            raise SuiError(f"{label}: statistics without a run identity (model, taps, widths); cannot merge")
        if [a.width for a in accs] != ident["widths"] or len(accs) != len(ident["taps"]):
            raise SuiError(f"{label}: its statistics do not match the taps it names; cannot merge")
        parts = meta.get("shards")
        if parts is not None and not (isinstance(parts, list) and all(isinstance(x, str) for x in parts)):
            raise SuiError(f"{label}: malformed statistics file ('shards' is not a list of digests)")
        for digest in parts or []:
            if digest in shards:
                raise SuiError(f"{label} holds the same calibration data as {printable(shards[digest])} "
                               f"(token-stream sha256 {digest[:12]}): merging would count it twice")
            shards[digest] = str(path)
        calibration = meta.get("calibration")
        for src in (calibration.get("sources") if isinstance(calibration, dict) else None) or []:
            sha = src.get("sha256") if isinstance(src, dict) else None
            if not isinstance(sha, str) or not src.get("tokens"):
                continue
            if sha in sources and sources[sha][0] != str(path):
                raise SuiError(f"{label} and {printable(sources[sha][0])} both read calibration source "
                               f"{printable(str(src.get('path', '?')))} (sha256 {sha[:12]}): every run reads a source "
                               "from its start, so the tokens they share would count twice; give each shard its own data")
            sources[sha] = (str(path), src)
        seq_len = calibration.get("seq_len") if isinstance(calibration, dict) else None
        if not isinstance(seq_len, int) or isinstance(seq_len, bool):
            unrecorded = True
        elif window is None:
            window = (seq_len, str(path))
        elif seq_len != window[0]:
            raise SuiError(f"{printable(window[1])} was calibrated with windows of {window[0]} tokens and {label} with "
                           f"windows of {seq_len} (--seq-len): one set of statistics has one window length; cannot merge")
        total += run_tokens(accs, meta)
        if merged is None:
            merged, meta0 = accs, meta
        else:
            base = meta0["identity"]
            for key in IDENTITY:
                if ident.get(key) != base.get(key):
                    raise SuiError(f"{label}: different {key.replace('_', ' ')} than {printable(args.inputs[0])}; cannot merge")
            for a, b in zip(merged, accs):
                a.merge(b)
    meta_out = {
        "identity": {k: meta0["identity"][k] for k in IDENTITY},
        "merged": True,
        "mergeable": True,
        "complete": True,
        "parts": [str(p) for p in args.inputs],
        "shards": list(shards),
        "run_tokens": total,
        "calibration": {"tokens": total, "merged_from": [str(p) for p in args.inputs],
                        "sources": [src for _, src in sources.values()]},
    }
    if window is not None and not unrecorded:  # every shard says, and they agree: the gate compares it
        meta_out["calibration"]["seq_len"] = window[0]
    save_accumulators(args.output, merged, meta_out)
    make_console(stderr=True).print(markup(
        f"merged {len(args.inputs)} files: {total:,} calibration tokens -> {args.output}"
    ))
    return 0
