"""``export()``: stage the export in a folder beside OUT_DIR, tap it, and move it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import SuiError
from ..graph.exported import set_metadata, write_taps
from ..graph.source import load_model
from ..safeio import chmod_default
from .gguf import gguf_to_hf
from .hf import config_architecture, copy_tokenizer, export_optimum
from .options import DECODER_FILE, ENCODER_FILE, META_ARCHITECTURE, META_SOURCE, MODEL_FILE, ExportOptions, ExportResult, LOG_HEADER, log_path
from .torch_module import export_torch_module
from .checks import needed_modules, require_extra, validate


def export(opts: ExportOptions) -> ExportResult:
    """Export, tap and move into place (see the module doc).  Raises SuiError (one line).

    When the export succeeded but no FFN block could be tapped, OUT_DIR still receives the
    plain export and ``result.tap_error`` says why (the CLI exits 2 with that message).
    """
    opts = validate(opts)
    require_extra(*needed_modules(opts))
    out_dir = opts.out_dir
    log = log_path(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    chmod_default(staging, 0o777)      # mkdtemp makes it private; OUT_DIR gets the usual mode
    try:
        result = _export_into(staging, opts, log)
        _commit(staging, out_dir, opts.force)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    result.moved_to(out_dir)  # the paths inside the staging folder now live in out_dir
    return result


def _export_into(staging: Path, opts: ExportOptions, log: Path) -> ExportResult:
    meta: dict[str, str] = {}
    with open(log, "w", encoding="utf-8", errors="replace") as fh:
        fh.write(f"{LOG_HEADER}{opts.out_dir} (staging {staging.name})\n")
    if opts.torch_module:
        exporter, task = export_torch_module(opts, staging, log, meta), None
        tokenizer_src = opts.model_dir if opts.model_dir and opts.model_dir.is_dir() else None
    elif opts.gguf:
        hf = staging / "_gguf_hf"
        gguf_to_hf(opts, hf, log, meta)
        exporter, task = export_optimum(hf, opts, staging, log)
        copy_tokenizer(hf, staging)
        shutil.rmtree(hf)
        tokenizer_src = opts.model_dir
    else:
        assert opts.model_dir is not None
        meta[META_SOURCE] = opts.model_dir.resolve().name
        meta.setdefault(META_ARCHITECTURE, config_architecture(opts.model_dir))
        exporter, task = export_optimum(opts.model_dir, opts, staging, log)
        tokenizer_src = opts.model_dir
    if tokenizer_src is not None:
        copy_tokenizer(tokenizer_src, staging)
    meta = {k: v for k, v in meta.items() if v}
    meta["sui_onnx.exporter"] = exporter
    if task:
        meta["sui_onnx.task"] = task
    seq2seq = (staging / DECODER_FILE).is_file()
    for name in sorted(p.name for p in staging.glob("*.onnx")):
        set_metadata(staging / name, meta)
    result = _tap_part(staging / (DECODER_FILE if seq2seq else MODEL_FILE), opts.site)
    result.metadata, result.log, result.exporter, result.task = meta, log, exporter, task
    result.tokenizer = (staging / "tokenizer.json").is_file()
    if seq2seq:
        result.encoder = _tap_part(staging / ENCODER_FILE, opts.site)
        if result.encoder.tap_error and not result.tap_error:
            result.tap_error = f"{ENCODER_FILE}: {result.encoder.tap_error}"
    return result


def _tap_part(path: Path, site: str) -> ExportResult:
    """One exported graph with its tapped copy (or the reason there is none)."""
    part = ExportResult(out_dir=path.parent, model=path, tapped=None, site=site)
    try:
        part.taps, part.tapped, part.external_data = write_taps(path, site)
    except SuiError as exc:
        part.tap_error = str(exc)
        part.external_data = load_model(path).has_external_data
    return part


def _commit(staging: Path, out_dir: Path, force: bool) -> None:
    """Move the finished staging folder to ``out_dir`` (replacing it with --force)."""
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            if not force:
                raise SuiError(f"OUT_DIR {out_dir} exists and is not empty; pass --force to replace it")
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
            try:
                os.replace(staging, out_dir)
            except OSError:
                os.replace(trash / "old", out_dir)
                shutil.rmtree(trash, ignore_errors=True)
                raise
            shutil.rmtree(trash, ignore_errors=True)
            return
        out_dir.rmdir()
    os.replace(staging, out_dir)
