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
:mod:`~sui_onnx.export.checks` (the checks made before any heavy import),
:mod:`~sui_onnx.export.hf` (optimum), :mod:`~sui_onnx.export.gguf`,
:mod:`~sui_onnx.export.torch_module`, :mod:`~sui_onnx.export.capture` (the exporters' output into
the log, offline mode); the edits to the exported graphs (tied-embedding duplicates, metadata,
the tapped copy) are :mod:`sui_onnx.graph.exported`; :mod:`~sui_onnx.export.run` stages, taps and
commits.  The names below load their module on first use (PEP 562), so that the CLI can read
:mod:`~sui_onnx.export.options` (the choices of its flags) without importing onnx.

torch, transformers, optimum and gguf are imported inside the functions that need them, never
at module level: analyzing an ONNX model must not import them.  Everything is offline: the
Hugging Face hub is switched to offline mode and every load is ``local_files_only``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "options": ("INSTALL_HINT", "SITES", "DTYPES", "DEFAULT_TASK", "TORCH_OPSET", "MODEL_FILE", "ENCODER_FILE",
                "DECODER_FILE", "SEQ2SEQ_TASK", "TOKENIZER_FILES", "META_SOURCE", "META_DEQUANTIZED",
                "META_ARCHITECTURE", "ExportOptions", "ExportResult", "log_path"),
    "run": ("export",),
    "checks": ("validate", "check_model_dir", "check_out_dir", "resolve_gguf", "require_extra", "default_task",
                 "optimum_task"),
    "capture": ("capture_output", "offline"),
    "gguf": ("GGUFInfo", "gguf_info", "spm_bpe_tokenizer"),
    "torch_module": ("parse_factory_spec", "load_factory", "load_state_dict"),
    "..graph.exported": ("dedupe_transposed_initializers", "dedupe_file", "save_model", "set_metadata", "tapped_name",
                         "write_taps"),
    "..layout": ("DATA_FILE",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}
__all__ = ["INSTALL_HINT", "SITES", "DTYPES", "DEFAULT_TASK", "TORCH_OPSET", "MODEL_FILE", "ENCODER_FILE",
    "DECODER_FILE", "SEQ2SEQ_TASK", "TOKENIZER_FILES", "META_SOURCE", "META_DEQUANTIZED", "META_ARCHITECTURE",
    "ExportOptions", "ExportResult", "log_path", "export", "validate", "check_model_dir", "check_out_dir",
    "resolve_gguf", "require_extra", "default_task", "optimum_task", "capture_output", "offline", "GGUFInfo",
    "gguf_info", "spm_bpe_tokenizer", "parse_factory_spec", "load_factory", "load_state_dict",
    "dedupe_transposed_initializers", "dedupe_file", "save_model", "set_metadata", "tapped_name", "write_taps",
    "DATA_FILE"]  # the names of _SOURCES


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module if module.startswith("..") else "." + module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from ..graph.exported import (dedupe_file, dedupe_transposed_initializers, save_model, set_metadata, tapped_name,
                                  write_taps)
    from ..layout import DATA_FILE
    from .capture import capture_output, offline
    from .gguf import GGUFInfo, gguf_info, spm_bpe_tokenizer
    from .options import (DECODER_FILE, DEFAULT_TASK, DTYPES, ENCODER_FILE, INSTALL_HINT, META_ARCHITECTURE,
                          META_DEQUANTIZED, META_SOURCE, MODEL_FILE, SEQ2SEQ_TASK, SITES, TOKENIZER_FILES, TORCH_OPSET,
                          ExportOptions, ExportResult, log_path)
    from .run import export
    from .torch_module import load_factory, load_state_dict, parse_factory_spec
    from .checks import (check_model_dir, check_out_dir, default_task, optimum_task, require_extra, resolve_gguf,
                           validate)
