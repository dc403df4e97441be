"""`sui-onnx merge A.npz B.npz ... -o OUT.npz`: combine statistics computed on different machines."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SuiError
from .options import guard_outputs, make_console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge finished statistics files (shards of one calibration set) exactly",
        description="Add up the per-layer sufficient statistics of runs made with --checkpoint on "
                    "the same model and taps (e.g. shards of a calibration set on several machines). "
                    "Report from the result with: sui-onnx report MODEL --stats OUT.npz",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="STATS.npz")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.npz")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..spectrum import load_accumulators, save_accumulators

    guard_outputs(args.inputs, [args.output])
    if len(args.inputs) < 2:
        raise SuiError("merge needs at least two statistics files")
    merged, meta0 = None, None
    for path in args.inputs:
        accs, meta = load_accumulators(path)
        if not meta.get("mergeable"):
            raise SuiError(f"{path}: not a finished single-pass run's statistics (run report with --checkpoint to the end)")
        ident = meta.get("identity", {})
        if merged is None:
            merged, meta0 = accs, meta
        else:
            base = meta0["identity"]
            for key in ("model_sha256", "taps", "widths"):
                if ident.get(key) != base.get(key):
                    raise SuiError(f"{path}: different {key.replace('_', ' ')} than {args.inputs[0]}; cannot merge")
            for a, b in zip(merged, accs):
                a.merge(b)
    meta_out = {
        "identity": {k: meta0["identity"][k] for k in ("model_sha256", "taps", "widths")},
        "merged": True,
        "mergeable": True,
        "complete": True,
        "parts": [str(p) for p in args.inputs],
        "calibration": {"tokens": merged[0].n if merged else 0, "merged_from": [str(p) for p in args.inputs]},
    }
    save_accumulators(args.output, merged, meta_out)
    make_console(stderr=True).print(
        f"merged {len(args.inputs)} files: {merged[0].n if merged else 0:,} tokens per layer -> {args.output}"
    )
    return 0
