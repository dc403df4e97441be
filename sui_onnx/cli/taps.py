"""`sui-onnx taps MODEL`: list the FFN blocks found in the graph (no calibration run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import add_tap_args, make_console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "taps",
        help="list the FFN blocks of an ONNX model and the tensors sui-onnx would tap",
        description="Find every FFN block structurally (up-projection -> activation -> "
                    "down-projection) and list the tensor tapped for each, in layer order.",
    )
    p.add_argument("model", metavar="MODEL", help=".onnx file, or a folder holding model.onnx")
    add_tap_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON list (layer, tensor, width, site, op, activation, ...)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from ..graph import find_taps, load_model
    from ..safeio import markup

    # structure only: the weights stay in the file, and a model without its external data is listed too
    src = load_model(Path(args.model), lean=True, structure_only=True)
    taps = find_taps(src.model, site=args.site, include=args.include, exclude=args.exclude, explicit=tuple(args.tap))
    if args.json:
        print(json.dumps([t.to_dict() for t in taps], indent=2))
        return 0
    table = Table(box=box.SIMPLE_HEAD, title=f"{len(taps)} FFN tap{'' if len(taps) == 1 else 's'} in {markup(src.path)} ({'named with --tap' if args.tap else 'site ' + args.site})",
                  title_justify="left")
    for col in ("layer", "width", "activation", "op", "tensor"):
        table.add_column(col, justify="right" if col in ("layer", "width") else "left", overflow="fold")
    for t in taps:  # names come from the model file: data, never markup or terminal control
        table.add_row(str(t.layer), str(t.width), markup(t.activation), markup(t.op), markup(t.tensor))
    make_console().print(table)
    return 0
