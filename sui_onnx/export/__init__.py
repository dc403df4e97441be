"""``sui-onnx export``: turn a local model into an ONNX folder that sui-onnx can analyze.

Three sources, one output layout:

* a Hugging Face model folder (``config.json`` + weights), exported with optimum's
  ``main_export`` (task ``text-generation`` by default, ``text-generation-with-past`` with
  ``with_past``, or any optimum task such as ``feature-extraction`` for encoders);
* a GGUF checkpoint, loaded through transformers' GGUF support (dequantized to float32),
  saved as a temporary Hugging Face folder and exported the same way; the quantization type
  and the file name are recorded in the model's ``metadata_props``;
* a plain PyTorch module built by a ``package.module:factory`` callable, exported with
  ``torch.onnx.export(dynamo=False)`` (input ``input_ids``, output ``logits``, dynamic batch
  and sequence axes).

What lands in OUT_DIR: ``model.onnx`` (plus ``model.onnx_data`` when optimum writes external
data for models over 2 GB), ``model.tapped.onnx`` (the FFN activations as outputs, written by
:func:`sui_onnx.graph.write_tapped` beside the model so that it references the same external
data), the tokenizer files, and optimum's ``config.json`` / ``generation_config.json``. An
encoder-decoder (T5, BART: task ``text2text-generation``) gives optimum's ``encoder_model.onnx``
and ``decoder_model.onnx`` (with ``--with-past`` also ``decoder_model_merged.onnx`` and
``decoder_with_past_model.onnx``), each of the first two with its ``*.tapped.onnx`` copy.
Everything is written into a temporary folder beside OUT_DIR and renamed at the end: a failed
or interrupted export leaves OUT_DIR as it was.  Everything the exporters print or log goes to
``<OUT_DIR>.export.log``.

The package: :mod:`~sui_onnx.export.options` (what to do, what was written),
:mod:`~sui_onnx.export.validate` (the checks made before any heavy import),
:mod:`~sui_onnx.export.hf` (optimum), :mod:`~sui_onnx.export.gguf`,
:mod:`~sui_onnx.export.torch_module`, :mod:`~sui_onnx.export.capture` (the exporters' output into
the log, offline mode); the edits to the exported graphs (tied-embedding duplicates, metadata,
the tapped copy) are :mod:`sui_onnx.graph.exported`.  This module stages, taps and commits.

torch, transformers, optimum and gguf are imported inside the functions that need them, never
at module level: analyzing an ONNX model must not import them.  Everything is offline: the
Hugging Face hub is switched to offline mode and every load is ``local_files_only``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import SuiError
from ..graph.exported import dedupe_file, dedupe_transposed_initializers, save_model, set_metadata, tapped_name, write_taps
from ..graph.source import load_model
from ..layout import DATA_FILE
from ..safeio import chmod_default
from .capture import capture_output, offline
from .gguf import GGUFInfo, gguf_info, gguf_to_hf, spm_bpe_tokenizer
from .hf import config_architecture, copy_tokenizer, export_optimum
from .options import (
    DECODER_FILE, DEFAULT_TASK, DTYPES, ENCODER_FILE, INSTALL_HINT, META_ARCHITECTURE, META_DEQUANTIZED, META_SOURCE,
    MODEL_FILE, SEQ2SEQ_TASK, SITES, TOKENIZER_FILES, TORCH_OPSET, ExportOptions, ExportResult, log_path,
)
from .torch_module import export_torch_module, load_factory, load_state_dict, parse_factory_spec
from .validate import (
    check_model_dir, check_out_dir, default_task, needed_modules, optimum_task, require_extra, resolve_gguf, validate,
)

__all__ = [
    "INSTALL_HINT", "SITES", "DTYPES", "DEFAULT_TASK", "TORCH_OPSET", "MODEL_FILE", "ENCODER_FILE", "DECODER_FILE",
    "SEQ2SEQ_TASK", "DATA_FILE", "TOKENIZER_FILES", "META_SOURCE", "META_DEQUANTIZED", "META_ARCHITECTURE",
    "ExportOptions", "ExportResult", "export", "log_path", "validate", "check_model_dir", "check_out_dir",
    "resolve_gguf", "require_extra", "default_task", "optimum_task", "capture_output", "offline", "GGUFInfo",
    "gguf_info", "spm_bpe_tokenizer", "parse_factory_spec", "load_factory", "load_state_dict",
    "dedupe_transposed_initializers", "dedupe_file", "save_model", "set_metadata", "tapped_name", "write_taps",
]


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
        fh.write(f"sui-onnx export into {opts.out_dir} (staging {staging.name})\n")
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
