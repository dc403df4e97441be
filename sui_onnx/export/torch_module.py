"""Plain PyTorch modules (``--torch-module package.module:factory``): ``torch.onnx.export``
with ``dynamo=False``, input ``input_ids``, output ``logits``, dynamic batch and sequence axes."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import onnx

from ..errors import SuiError, first_line
from ..graph.exported import dedupe_transposed_initializers, save_model
from .capture import capture_output, failure, log_dedupe
from .options import MODEL_FILE, META_ARCHITECTURE, META_SOURCE, TORCH_OPSET, ExportOptions


def parse_factory_spec(spec: str) -> tuple[str, str]:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
        raise SuiError(f"--torch-module {spec!r}: expected package.module:factory")
    return module, attr


def load_factory(spec: str) -> Any:
    """Import ``package.module:factory`` (the current folder is searched first, like python -m)."""
    module_name, attr = parse_factory_spec(spec)
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SuiError(f"--torch-module {spec}: cannot import {module_name} ({exc})") from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SuiError(f"--torch-module {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SuiError(f"--torch-module {spec}: {attr} is not callable")
    return obj


def export_torch_module(opts: ExportOptions, staging: Path, log: Path, meta: dict[str, str]) -> str:
    import torch

    assert opts.torch_module is not None
    factory = load_factory(opts.torch_module)
    try:
        model = factory(**opts.factory_kwargs)
    except Exception as exc:  # noqa: BLE001 - user code
        raise SuiError(f"--torch-module {opts.torch_module}: the factory raised {exc.__class__.__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise SuiError(f"--torch-module {opts.torch_module}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if opts.model_dir is not None:
        load_state_dict(model, opts.model_dir)
    model.eval()
    meta[META_SOURCE] = opts.torch_module
    meta[META_ARCHITECTURE] = model.__class__.__name__
    device = "cpu"
    if opts.dtype == "fp16":
        if not torch.cuda.is_available():
            raise SuiError("fp16 export of a --torch-module needs a CUDA GPU (none here): use --dtype fp32")
        device = "cuda"
        model = model.half().to(device)
    vocab = next((m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)), 2)
    dummy = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        try:
            out = model(dummy)
        except Exception as exc:  # noqa: BLE001 - user code
            raise SuiError(f"--torch-module {opts.torch_module}: forward(input_ids [2, 8]) raised {exc.__class__.__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor):
        model = _logits_only(model, torch)
    opset = opts.opset or TORCH_OPSET
    axes = {0: "batch_size", 1: "sequence_length"}
    raw = staging / "_torch"
    raw.mkdir()
    try:
        with capture_output(log), torch.no_grad():
            torch.onnx.export(model, (dummy,), str(raw / MODEL_FILE), input_names=["input_ids"],
                              output_names=["logits"], dynamic_axes={"input_ids": axes, "logits": axes},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        raise failure("torch.onnx.export", exc, log) from None
    proto = onnx.load(str(raw / MODEL_FILE))        # with its data, wherever torch put it
    log_dedupe(log, dedupe_transposed_initializers(proto))
    save_model(proto, staging / MODEL_FILE)
    shutil.rmtree(raw)
    return f"torch.onnx.export dynamo=False opset {opset} (torch {torch.__version__})"


def _logits_only(model: Any, torch: Any) -> Any:
    """Wrap a module whose forward returns a dict / ModelOutput / tuple so that it returns logits."""

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.model = inner

        def forward(self, input_ids: Any) -> Any:
            out = self.model(input_ids)
            if isinstance(out, dict):
                return out["logits"]
            if hasattr(out, "logits"):
                return out.logits
            if isinstance(out, (tuple, list)):
                return out[0]
            return out

    return LogitsOnly(model)


def load_state_dict(model: Any, source: Path) -> None:
    """Load weights into ``model`` from a .safetensors/.pt/.pth/.bin file, or the one such
    file in a folder (strict: every key must match)."""
    import torch

    exts = (".safetensors", ".pt", ".pth", ".bin")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in exts)
        if len(files) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise SuiError(f"MODEL_DIR {source}: expected exactly one weights file ({'/'.join(exts)}) for --torch-module, found {found}")
        source = files[0]
    elif source.suffix not in exts:
        raise SuiError(f"{source}: not a weights file ({'/'.join(exts)})")
    try:
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(source))
        else:
            state = torch.load(str(source), map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            for key in ("state_dict", "model"):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
        model.load_state_dict(state, strict=True)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        first = first_line(exc, limit=200, fallback="")
        raise SuiError(f"cannot load the weights {source} into the module: {exc.__class__.__name__}: {first}") from None
