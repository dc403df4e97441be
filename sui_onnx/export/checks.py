"""The checks ``sui-onnx export`` makes before importing anything heavy, and the optimum task."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import SuiError
from .options import DEFAULT_TASK, DTYPES, INSTALL_HINT, SEQ2SEQ_TASK, SITES, ExportOptions, LOG_HEADER, log_path
from .torch_module import parse_factory_spec


def validate(opts: ExportOptions) -> ExportOptions:
    """Every check that needs no heavy import: sources exist, OUT_DIR may be written.

    Returns the options resolved (``opts`` itself is left as it was): OUT_DIR "." or ".." as the
    folder it names, the GGUF file found (inside MODEL_DIR or not), the task read from config.json
    when none was given."""
    changes: dict = {}
    out_dir = opts.out_dir
    if out_dir.name in ("", ".", ".."):        # "." or "..": name the folder itself
        out_dir = changes["out_dir"] = out_dir.resolve()
    if opts.site not in SITES:
        raise SuiError(f"unknown --site {opts.site!r} (expected one of: {', '.join(SITES)})")
    if opts.dtype not in DTYPES:
        raise SuiError(f"unknown --dtype {opts.dtype!r} (expected one of: {', '.join(DTYPES)})")
    if opts.gguf and opts.torch_module:
        raise SuiError("--gguf and --torch-module exclude each other")
    gguf = opts.gguf
    if opts.torch_module:
        if opts.task or opts.with_past:
            raise SuiError("--task/--with-past are optimum options; a --torch-module export always maps input_ids to logits")
        if opts.trust_remote_code:
            raise SuiError("--trust-remote-code is an optimum/transformers option; it does nothing with --torch-module")
        parse_factory_spec(opts.torch_module)
        if opts.model_dir is not None and not opts.model_dir.exists():
            raise SuiError(f"MODEL_DIR {opts.model_dir} does not exist")
    elif gguf:
        if opts.task and base_task(opts.task) != DEFAULT_TASK:
            raise SuiError(f"--gguf loads a causal language model: --task must be {DEFAULT_TASK}, not {opts.task!r}")
        gguf = changes["gguf"] = resolve_gguf(gguf, opts.model_dir)
        if opts.model_dir is not None and not opts.model_dir.is_dir():
            raise SuiError(f"MODEL_DIR {opts.model_dir} is not a folder")
    else:
        check_model_dir(opts.model_dir)
        assert opts.model_dir is not None
        config = read_config(opts.model_dir)
        if opts.task is None:
            changes["task"] = default_task(config)
    if opts.factory_kwargs and not opts.torch_module:
        raise SuiError("--factory-kwargs needs --torch-module")
    check_out_dir(out_dir, opts.force, [p for p in (opts.model_dir, gguf) if p is not None])
    return dataclasses.replace(opts, **changes)


def check_model_dir(model_dir: Path | None) -> None:
    if model_dir is None:
        raise SuiError("MODEL_DIR is required (a local Hugging Face model folder), unless --gguf or --torch-module is given")
    if not model_dir.exists():
        raise SuiError(f"MODEL_DIR {model_dir} does not exist (only local folders are exported; nothing is downloaded)")
    if not model_dir.is_dir():
        raise SuiError(f"MODEL_DIR {model_dir} is not a folder (for a .gguf file use --gguf FILE)")
    if not (model_dir / "config.json").is_file():
        raise SuiError(
            f"MODEL_DIR {model_dir} holds no config.json: not a Hugging Face model folder "
            "(use --gguf for a GGUF file, --torch-module for a plain PyTorch module)"
        )


def check_out_dir(out_dir: Path, force: bool, inputs: Sequence[Path]) -> None:
    """OUT_DIR must be creatable in an existing folder; a non-empty one only with --force,
    and never when it is, or holds, one of the inputs (--force would delete it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SuiError(f"OUT_DIR {out_dir} exists and is not a folder")
    parent = out_dir.resolve().parent
    if not parent.is_dir():
        raise SuiError(f"cannot write {out_dir}: folder {parent} does not exist")
    resolved = out_dir.resolve()
    for src in inputs:
        s = src.resolve()
        if s == resolved or resolved in s.parents:
            raise SuiError(f"OUT_DIR {out_dir} is, or holds, the input {src}; choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise SuiError(f"OUT_DIR {out_dir} exists and is not empty; pass --force to replace it")
    if not os.access(parent, os.W_OK):
        raise SuiError(f"cannot write into {parent} (permission denied)")
    check_log(log_path(out_dir), force)


def check_log(log: Path, force: bool) -> None:
    """The log beside OUT_DIR is rewritten only when it is a file an earlier export wrote (or with
    --force): a user's own file of that name is never replaced, a folder there is an error."""
    if not os.path.lexists(log):
        return
    if log.is_symlink() or not log.is_file():
        raise SuiError(f"the export log {log} exists and is not a file; move it away")
    if force:
        return
    try:
        with open(log, encoding="utf-8", errors="replace") as fh:
            ours = fh.read(len(LOG_HEADER)) == LOG_HEADER
    except OSError as e:
        raise SuiError(f"cannot read the existing export log {log}: {e.strerror or e}") from None
    if not ours:
        raise SuiError(f"{log} exists and is not an export log; move it away or pass --force to replace it")


def resolve_gguf(path: Path, model_dir: Path | None) -> Path:
    """The GGUF file: FILE itself, or FILE inside MODEL_DIR; its magic must be GGUF."""
    candidates = [path]
    if model_dir is not None and not path.is_absolute():
        candidates.insert(0, model_dir / path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise SuiError(f"GGUF file {path} does not exist")
    try:
        with open(found, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise SuiError(f"cannot read {found}: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise SuiError(f"{found} is not a GGUF file (it does not start with the GGUF magic)")
    return found


def needed_modules(opts: ExportOptions) -> list[str]:
    if opts.torch_module:
        return ["torch"]
    mods = ["torch", "transformers", "optimum.exporters.onnx"]
    return mods + ["gguf"] if opts.gguf else mods


def require_extra(*modules: str) -> None:
    """Import ``modules`` or raise SuiError naming the extra to install."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or name
            raise SuiError(f"export needs {missing}, which is not installed; install the export extra: {INSTALL_HINT}") from None


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SuiError(f"MODEL_DIR {model_dir}: config.json is not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise SuiError(f"MODEL_DIR {model_dir}: config.json is not a JSON object")
    return data


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def default_task(config: dict[str, Any]) -> str:
    """The optimum task when --task is not given: text2text-generation for encoder-decoders (T5,
    BART), text-generation for causal LMs (and configs that name no architecture),
    feature-extraction for encoder models (BertModel, ...ForMaskedLM)."""
    if config.get("is_encoder_decoder"):
        return SEQ2SEQ_TASK
    archs = [str(a) for a in config.get("architectures") or []]
    if not archs or any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return DEFAULT_TASK
    return "feature-extraction"


def base_task(task: str) -> str:
    return task[: -len("-with-past")] if task.endswith("-with-past") else task


def optimum_task(opts: ExportOptions) -> str:
    task = opts.task or DEFAULT_TASK
    if opts.with_past and not task.endswith("-with-past"):
        task += "-with-past"
    return task
