"""`sui-onnx export [MODEL_DIR] OUT_DIR`: export a local model to ONNX and write its tapped copy.

The work is done by :mod:`sui_onnx.export` (which imports torch/transformers/optimum only when
it runs); this module parses the flags and prints what was written (docs/export.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import SuiError
from ..export.options import DTYPES, SITES
from .options import json_object, make_console, path_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a local Hugging Face folder, GGUF file or torch module to ONNX, with a tapped copy",
        description="Export a local model to OUT_DIR/model.onnx (optimum for Hugging Face folders and "
                    "GGUF files, torch.onnx for --torch-module), copy its tokenizer, write "
                    "OUT_DIR/model.tapped.onnx with the FFN activations as outputs and list the taps. "
                    "Offline: nothing is downloaded. Needs the export extra: pip install 'sui-onnx[export]'.",
    )
    p.add_argument("model_dir", nargs="?", type=path_arg, metavar="MODEL_DIR",
                   help="local Hugging Face model folder (config.json + weights); optional with --gguf "
                        "(the folder holding FILE) and --torch-module (weights to load into the module)")
    p.add_argument("out_dir", type=path_arg, metavar="OUT_DIR", help="output folder (must not exist or be empty, unless --force)")
    g = p.add_argument_group("what to export")
    g.add_argument("--task", metavar="TASK",
                   help="optimum task (default: text-generation for causal LMs, feature-extraction for encoder models, from config.json)")
    g.add_argument("--with-past", action="store_true",
                   help="export the KV-cache variant (TASK-with-past: past_key_values inputs and present outputs)")
    g.add_argument("--gguf", type=path_arg, metavar="FILE",
                   help="a GGUF checkpoint (path, or file name inside MODEL_DIR), dequantized to float32 by transformers")
    g.add_argument("--torch-module", metavar="PKG.MODULE:FACTORY",
                   help="build the model by calling FACTORY (for architectures optimum does not know); "
                        "its forward must map input_ids to logits")
    g.add_argument("--factory-kwargs", metavar="JSON", type=json_object, default={},
                   help="keyword arguments for FACTORY, as a JSON object")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model folder's own Python code (passed to transformers; off unless given)")
    g = p.add_argument_group("how")
    g.add_argument("--site", choices=SITES, default="post",
                   help="taps exposed in model.tapped.onnx: post = down-projection input (default), "
                        "pre = nonlinearity input, both")
    g.add_argument("--opset", type=positive_int, metavar="N", help="ONNX opset (default: optimum's for the model; 18 for --torch-module)")
    g.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="weights/activations dtype (fp16 needs support on this machine, usually a CUDA GPU)")
    g.add_argument("--force", action="store_true", help="replace OUT_DIR when it exists and is not empty")
    g.add_argument("--json", action="store_true", help="print a JSON summary (files, taps, metadata) instead of the table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..export import ExportOptions, export, log_path

    opts = ExportOptions(
        out_dir=args.out_dir, model_dir=args.model_dir, task=args.task, with_past=args.with_past,
        site=args.site, opset=args.opset, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        force=args.force, gguf=args.gguf, torch_module=args.torch_module, factory_kwargs=args.factory_kwargs,
    )
    if sys.stderr.isatty() and not args.json:
        source = args.torch_module or args.gguf or args.model_dir
        # the exporters' output goes to the log (fd 2 included): the spinner keeps its own handle
        # on the terminal, taken before that redirection
        with os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1) as tty:
            console = make_console(file=tty)
            console.print(f"exporting {source} -> {args.out_dir} (log: {log_path(args.out_dir)})")
            with console.status("exporting and tapping (optimum / torch can take minutes on large models)"):
                result = export(opts)
    else:
        result = export(opts)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_result(result)
    if result.tap_error:
        raise SuiError(f"exported {result.model}, but wrote no tapped model: {result.tap_error}")
    return 0


def print_result(result) -> None:
    from rich import box
    from rich.table import Table

    console = make_console()
    parts = [result] if result.encoder is None else [result.encoder, result]
    for part in parts:
        if not part.taps:
            continue
        table = Table(box=box.SIMPLE_HEAD, title=f"{len(part.taps)} FFN tap{'' if len(part.taps) == 1 else 's'} in {part.tapped} (site {result.site})",
                      title_justify="left")
        cols = ["layer", "site", "width", "activation", "op", "tensor"] if result.site == "both" else \
            ["layer", "width", "activation", "op", "tensor"]
        for col in cols:
            table.add_column(col, justify="right" if col in ("layer", "width") else "left", overflow="fold")
        for t in part.taps:
            row = {"layer": str(t.layer), "site": t.site, "width": str(t.width), "activation": t.activation,
                   "op": t.op, "tensor": t.tensor}
            table.add_row(*(row[c] for c in cols))
        console.print(table)
    files = [name for part in parts for name in [part.model.name] + ([part.tapped.name] if part.tapped else [])]
    if result.external_data:
        files.append("external data (referenced by both)")
    files.append("tokenizer.json" if result.tokenizer else "no tokenizer.json: calibrate with --calib ids.npy")
    console.print(f"wrote {result.out_dir}: {', '.join(files)}")
    if result.metadata.get("sui_onnx.dequantized_from"):
        console.print(f"[yellow]weights dequantized from {result.metadata['sui_onnx.dequantized_from']} "
                      f"({result.metadata.get('sui_onnx.source', '')}): results describe the dequantized model[/]")
    console.print(f"exporter: {result.exporter}; log: {result.log}")
    if result.encoder is not None:
        console.print(f"analyze: sui-onnx report {result.model} (runs {result.encoder.model.name} first) "
                      f"or sui-onnx report {result.encoder.model}")
