"""Hugging Face folders: optimum's ``main_export`` (offline, its output captured in the log)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import SuiError
from ..graph.exported import dedupe_file
from .capture import capture_output, failure, log_dedupe, offline
from .options import DECODER_FILE, ENCODER_FILE, MODEL_FILE, TOKENIZER_FILES, ExportOptions
from .checks import optimum_task


def export_optimum(model_dir: Path, opts: ExportOptions, staging: Path, log: Path) -> tuple[str, str]:
    """optimum.main_export into ``staging``; returns (exporter description, task)."""
    import torch
    from optimum.exporters.onnx import main_export

    task = optimum_task(opts)
    device = "cuda" if opts.dtype == "fp16" and torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = dict(
        task=task, opset=opts.opset, device=device, dtype=opts.dtype, do_validation=False,
        library_name="transformers", local_files_only=True,
    )
    if opts.trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        with offline(), capture_output(log):
            main_export(str(model_dir), output=str(staging), **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - optimum raises anything; one line + the log
        if opts.dtype == "fp16" and device == "cpu":
            raise failure("fp16 export on CPU", exc, log,
                           hint="; fp16 export is not supported on this machine (no CUDA GPU): use --dtype fp32") from None
        raise failure("optimum export", exc, log) from None
    onnx_files = sorted(p.name for p in staging.glob("*.onnx"))
    seq2seq = {ENCODER_FILE, DECODER_FILE} <= set(onnx_files)
    if onnx_files != [MODEL_FILE] and not seq2seq:
        raise SuiError(
            f"optimum wrote {', '.join(onnx_files) or 'no .onnx file'} for task {task}; sui-onnx export handles "
            f"single-graph models and encoder-decoders ({ENCODER_FILE} + {DECODER_FILE}) (log: {log})"
        )
    for name in onnx_files:
        log_dedupe(log, dedupe_file(staging / name))    # tied embeddings optimum left duplicated
    import optimum.version

    return f"optimum {optimum.version.__version__} (torch {torch.__version__})", task


def config_architecture(model_dir: Path) -> str:
    """config.json's first architecture (or its model_type; "" when unreadable)."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    archs = cfg.get("architectures") or []
    return str(archs[0]) if archs else str(cfg.get("model_type", ""))


def copy_tokenizer(src: Path, dest: Path) -> None:
    """Copy the tokenizer files :data:`TOKENIZER_FILES` that ``src`` holds into ``dest``."""
    for name in TOKENIZER_FILES:
        p = src / name
        if p.is_file():
            shutil.copyfile(p, dest / name)
