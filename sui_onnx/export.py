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

torch, transformers, optimum and gguf are imported inside the functions that need them, never
at module level: analyzing an ONNX model must not import them.  Everything is offline: the
Hugging Face hub is switched to offline mode and every load is ``local_files_only``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import SuiError

INSTALL_HINT = "pip install 'sui-onnx[export]'"
SITES = ("post", "pre", "both")
DTYPES = ("fp32", "fp16")
DEFAULT_TASK = "text-generation"
TORCH_OPSET = 18
MODEL_FILE = "model.onnx"
ENCODER_FILE, DECODER_FILE = "encoder_model.onnx", "decoder_model.onnx"  # optimum's seq2seq layout
SEQ2SEQ_TASK = "text2text-generation"
DATA_FILE = "model.onnx_data"
_TWO_GB = 2**31 - 2**24  # protobuf's 2 GiB limit, with room for the graph itself

# tokenizer files copied from the source folder (when present) into OUT_DIR
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
)
META_SOURCE = "sui_onnx.source"
META_DEQUANTIZED = "sui_onnx.dequantized_from"
META_ARCHITECTURE = "sui_onnx.architecture"


@dataclass
class ExportOptions:
    """What to export and how (the CLI fills this from its flags)."""

    out_dir: Path
    model_dir: Path | None = None
    task: str | None = None             # optimum task; default from config.json (default_task)
    with_past: bool = False             # the KV-cache variant (<task>-with-past)
    site: str = "post"                  # post | pre | both
    opset: int | None = None            # None: optimum's default / 18 for torch modules
    dtype: str = "fp32"                 # fp32 | fp16
    trust_remote_code: bool = False
    force: bool = False                 # replace a non-empty OUT_DIR
    gguf: Path | None = None            # a GGUF checkpoint instead of a HF folder
    torch_module: str | None = None     # package.module:factory
    factory_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What was written (paths are the final ones, inside ``out_dir``)."""

    out_dir: Path
    model: Path
    tapped: Path | None
    taps: list = field(default_factory=list)
    site: str = "post"
    external_data: bool = False
    tokenizer: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    exporter: str = ""
    task: str | None = None
    tap_error: str | None = None        # the export landed but no tap could be written
    encoder: "ExportResult | None" = None  # seq2seq: the encoder's model, tapped copy and taps

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir), "model": str(self.model),
            "tapped": str(self.tapped) if self.tapped else None, "site": self.site,
            "taps": [t.to_dict() for t in self.taps], "external_data": self.external_data,
            "tokenizer": self.tokenizer, "metadata": self.metadata,
            "log": str(self.log) if self.log else None, "exporter": self.exporter, "task": self.task,
            "tap_error": self.tap_error,
            "encoder": None if self.encoder is None else {
                "model": str(self.encoder.model), "tapped": str(self.encoder.tapped) if self.encoder.tapped else None,
                "taps": [t.to_dict() for t in self.encoder.taps], "external_data": self.encoder.external_data},
        }

    def moved_to(self, out_dir: Path) -> None:
        """Point the paths at ``out_dir`` (they were written in the staging folder)."""
        self.out_dir = out_dir
        self.model = out_dir / self.model.name
        if self.tapped is not None:
            self.tapped = out_dir / self.tapped.name
        if self.encoder is not None:
            self.encoder.moved_to(out_dir)


# --------------------------------------------------------------------------- entry point


def export(opts: ExportOptions) -> ExportResult:
    """Export, tap and move into place (see the module doc).  Raises SuiError (one line).

    When the export succeeded but no FFN block could be tapped, OUT_DIR still receives the
    plain export and ``result.tap_error`` says why (the CLI exits 2 with that message).
    """
    validate(opts)
    require_extra(*_needed_modules(opts))
    out_dir = opts.out_dir
    log = log_path(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    _chmod_default(staging, 0o777)      # mkdtemp makes it private; OUT_DIR gets the usual mode
    try:
        result = _export_into(staging, opts, log)
        _commit(staging, out_dir, opts.force)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    result.moved_to(out_dir)  # the paths inside the staging folder now live in out_dir
    return result


def _chmod_default(path: Path, mode: int) -> None:
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~umask)


def log_path(out_dir: Path) -> Path:
    """``<OUT_DIR>.export.log``, beside OUT_DIR."""
    return out_dir.with_name(out_dir.name + ".export.log")


def _export_into(staging: Path, opts: ExportOptions, log: Path) -> ExportResult:
    meta: dict[str, str] = {}
    with open(log, "w", encoding="utf-8", errors="replace") as fh:
        fh.write(f"sui-onnx export into {opts.out_dir} (staging {staging.name})\n")
    if opts.torch_module:
        exporter, task = _export_torch_module(opts, staging, log, meta), None
        tokenizer_src = opts.model_dir if opts.model_dir and opts.model_dir.is_dir() else None
    elif opts.gguf:
        hf = staging / "_gguf_hf"
        _gguf_to_hf(opts, hf, log, meta)
        exporter, task = _export_optimum(hf, opts, staging, log)
        _copy_tokenizer(hf, staging)
        shutil.rmtree(hf)
        tokenizer_src = opts.model_dir
    else:
        assert opts.model_dir is not None
        meta[META_SOURCE] = opts.model_dir.resolve().name
        meta.setdefault(META_ARCHITECTURE, _config_architecture(opts.model_dir))
        exporter, task = _export_optimum(opts.model_dir, opts, staging, log)
        tokenizer_src = opts.model_dir
    if tokenizer_src is not None:
        _copy_tokenizer(tokenizer_src, staging)
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
        from .graph import load_model

        part.external_data = load_model(path).has_external_data
    return part


# --------------------------------------------------------------------------- checks


def validate(opts: ExportOptions) -> None:
    """Every check that needs no heavy import: sources exist, OUT_DIR may be written."""
    if opts.out_dir.name in ("", ".", ".."):        # "." or "..": name the folder itself
        opts.out_dir = opts.out_dir.resolve()
    if opts.site not in SITES:
        raise SuiError(f"unknown --site {opts.site!r} (expected one of: {', '.join(SITES)})")
    if opts.dtype not in DTYPES:
        raise SuiError(f"unknown --dtype {opts.dtype!r} (expected one of: {', '.join(DTYPES)})")
    if opts.gguf and opts.torch_module:
        raise SuiError("--gguf and --torch-module exclude each other")
    if opts.torch_module:
        if opts.task or opts.with_past:
            raise SuiError("--task/--with-past are optimum options; a --torch-module export always maps input_ids to logits")
        if opts.trust_remote_code:
            raise SuiError("--trust-remote-code is an optimum/transformers option; it does nothing with --torch-module")
        parse_factory_spec(opts.torch_module)
        if opts.model_dir is not None and not opts.model_dir.exists():
            raise SuiError(f"MODEL_DIR {opts.model_dir} does not exist")
    elif opts.gguf:
        if opts.task and _base_task(opts.task) != DEFAULT_TASK:
            raise SuiError(f"--gguf loads a causal language model: --task must be {DEFAULT_TASK}, not {opts.task!r}")
        opts.gguf = resolve_gguf(opts.gguf, opts.model_dir)
        if opts.model_dir is not None and not opts.model_dir.is_dir():
            raise SuiError(f"MODEL_DIR {opts.model_dir} is not a folder")
    else:
        check_model_dir(opts.model_dir)
        config = _read_config(opts.model_dir)
        if opts.task is None:
            opts.task = default_task(config)
    if opts.factory_kwargs and not opts.torch_module:
        raise SuiError("--factory-kwargs needs --torch-module")
    check_out_dir(opts.out_dir, opts.force, [p for p in (opts.model_dir, opts.gguf) if p is not None])


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


def _needed_modules(opts: ExportOptions) -> list[str]:
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


def _read_config(model_dir: Path) -> dict[str, Any]:
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


def _base_task(task: str) -> str:
    return task[: -len("-with-past")] if task.endswith("-with-past") else task


def optimum_task(opts: ExportOptions) -> str:
    task = opts.task or DEFAULT_TASK
    if opts.with_past and not task.endswith("-with-past"):
        task += "-with-past"
    return task


# --------------------------------------------------------------------------- output capture


@contextlib.contextmanager
def capture_output(log: Path) -> Iterator[None]:
    """Send everything printed or logged while exporting to ``log`` (appending): file
    descriptors 1 and 2 (C++ warnings), sys.stdout/sys.stderr (prints, warnings, tqdm), and
    the streams of the logging handlers already installed (transformers has its own)."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    with open(log, "a", buffering=1, encoding="utf-8", errors="replace") as fh:
        saved: list[tuple[int, int]] = []
        handlers: list[tuple[logging.StreamHandler, Any]] = []
        opt_logger = logging.getLogger("optimum")
        old_level = opt_logger.level
        own_handler = logging.StreamHandler(fh)
        own_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        added = False
        try:
            for fd in (1, 2):
                try:
                    dup = os.dup(fd)
                except OSError:
                    continue
                saved.append((fd, dup))
                os.dup2(fh.fileno(), fd)
            loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                               if isinstance(lg, logging.Logger)]
            seen: set[int] = set()      # a handler may sit on several loggers: swap it once
            for lg in loggers:
                for h in lg.handlers:
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                            and id(h) not in seen:
                        seen.add(id(h))
                        handlers.append((h, h.stream))
                        _swap_stream(h, fh)
            if not opt_logger.handlers:         # optimum may have installed its own (swapped above)
                opt_logger.addHandler(own_handler)
                added = True
            opt_logger.setLevel(logging.INFO)
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield
        finally:
            if added:
                opt_logger.removeHandler(own_handler)
            opt_logger.setLevel(old_level)
            for h, stream in reversed(handlers):
                _swap_stream(h, stream)
            with contextlib.suppress(Exception):
                fh.flush()
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)


def _swap_stream(handler: logging.StreamHandler, stream: Any) -> None:
    """``handler.setStream`` without its flush of the old stream (which may be closed)."""
    handler.acquire()
    try:
        with contextlib.suppress(Exception):
            handler.stream.flush()
        handler.stream = stream
    finally:
        handler.release()


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE for the duration (also when already imported)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old_env = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    patched = []
    for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("transformers.utils.hub", "_is_offline_mode")):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, attr):
            patched.append((m, attr, getattr(m, attr)))
            setattr(m, attr, True)
    try:
        yield
    finally:
        for m, attr, value in patched:
            setattr(m, attr, value)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failure(what: str, exc: BaseException, log: Path, hint: str = "") -> SuiError:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:297] + "..."
    with contextlib.suppress(OSError), open(log, "a", encoding="utf-8") as fh:
        import traceback

        fh.write(f"\n{what} failed:\n")
        fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return SuiError(f"{what} failed: {exc.__class__.__name__}: {first}{hint} (full log: {log})")


# --------------------------------------------------------------------------- optimum


def _export_optimum(model_dir: Path, opts: ExportOptions, staging: Path, log: Path) -> tuple[str, str]:
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
            raise _failure("fp16 export on CPU", exc, log,
                           hint="; fp16 export is not supported on this machine (no CUDA GPU): use --dtype fp32") from None
        raise _failure("optimum export", exc, log) from None
    onnx_files = sorted(p.name for p in staging.glob("*.onnx"))
    seq2seq = {ENCODER_FILE, DECODER_FILE} <= set(onnx_files)
    if onnx_files != [MODEL_FILE] and not seq2seq:
        raise SuiError(
            f"optimum wrote {', '.join(onnx_files) or 'no .onnx file'} for task {task}; sui-onnx export handles "
            f"single-graph models and encoder-decoders ({ENCODER_FILE} + {DECODER_FILE}) (log: {log})"
        )
    for name in onnx_files:
        dedupe_file(staging / name, log)           # tied embeddings optimum left duplicated
    import optimum.version

    return f"optimum {optimum.version.__version__} (torch {torch.__version__})", task


def _config_architecture(model_dir: Path) -> str:
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    archs = cfg.get("architectures") or []
    return str(archs[0]) if archs else str(cfg.get("model_type", ""))


def _copy_tokenizer(src: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        p = src / name
        if p.is_file():
            shutil.copyfile(p, dest / name)


# --------------------------------------------------------------------------- GGUF


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    quantization: str     # Q4_K_M, Q8_0, F16, F32, ...
    name: str


def gguf_info(path: Path) -> GGUFInfo:
    """Architecture and quantization type of a GGUF file (metadata only, via the gguf package)."""
    import gguf
    import numpy as np

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - gguf raises ValueError/struct errors on bad files
        raise SuiError(f"cannot read GGUF file {path}: {str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__}") from None

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None or not f.data:
            return None
        if hasattr(f, "contents"):
            return f.contents()
        part = f.parts[f.data[0]]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        return part.tolist()[0]

    arch = field_value("general.architecture")
    if not arch:
        raise SuiError(f"{path.name}: the GGUF metadata has no general.architecture")
    quant = ""
    file_type = field_value("general.file_type")
    if isinstance(file_type, (int, np.integer)):
        with contextlib.suppress(ValueError):
            ft = gguf.LlamaFileType(int(file_type) & ~int(gguf.LlamaFileType.GUESSED))
            quant = ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    if not quant:
        quant = _dominant_tensor_type(reader)
    return GGUFInfo(architecture=str(arch), quantization=quant, name=str(field_value("general.name") or ""))


def _dominant_tensor_type(reader: Any) -> str:
    """The tensor type holding the most weight elements (quantized types first)."""
    floats = {"F32", "F16", "BF16", "F64"}
    counts: dict[str, int] = {}
    for t in reader.tensors:
        name = t.tensor_type.name
        counts[name] = counts.get(name, 0) + int(t.n_elements)
    if not counts:
        return "unknown"
    quantized = {k: v for k, v in counts.items() if k not in floats}
    pool = quantized or counts
    return max(pool, key=pool.get)


def _gguf_to_hf(opts: ExportOptions, hf: Path, log: Path, meta: dict[str, str]) -> None:
    """Load the GGUF checkpoint dequantized to float32 and save it as a HF folder ``hf``."""
    assert opts.gguf is not None
    info = gguf_info(opts.gguf)
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if info.architecture not in supported and "t5" not in info.architecture:
        raise SuiError(
            f"transformers {transformers.__version__} cannot load GGUF architecture {info.architecture!r} "
            f"({opts.gguf.name}); it loads: {', '.join(supported)}"
        )
    meta[META_DEQUANTIZED] = info.quantization
    meta[META_SOURCE] = opts.gguf.name
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(opts.gguf.parent), opts.gguf.name
    extra = {"trust_remote_code": True} if opts.trust_remote_code else {}
    try:
        with offline(), capture_output(log):
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                         local_files_only=True, **extra)
            model.save_pretrained(str(hf))
            archs = getattr(model.config, "architectures", None) or [model.__class__.__name__]
            meta[META_ARCHITECTURE] = str(archs[0])
            del model
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        raise _failure(f"loading {name} ({info.architecture}) through transformers' GGUF support", exc, log) from None
    try:
        with offline(), capture_output(log):
            AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True, **extra).save_pretrained(str(hf))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the tokenizer is optional (calibrate with .npy ids)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"no tokenizer from {name}: {exc.__class__.__name__}: {exc}\n")
    if (hf / "tokenizer.json").is_file():
        spm_bpe_tokenizer(opts.gguf, hf / "tokenizer.json", log)


def spm_bpe_tokenizer(gguf_path: Path, tokenizer_json: Path, log: Path | None = None) -> bool:
    """Rewrite ``tokenizer_json`` as the SentencePiece BPE tokenizer the GGUF file describes, when
    transformers converted it to a Unigram model (it does for Gemma 3 with transformers 4.57).

    A GGUF ``llama`` tokenizer (LLaMA, Mistral, Gemma) stores BPE pieces whose scores are merge
    priorities (score = -rank), not log-probabilities: read as a Unigram model they split every word
    into short pieces ("▁capital" -> "▁c ap it al"). The merges are recovered from the scores: each
    normal piece of two or more characters gives the pairs (a, b) of pieces that concatenate to it,
    ranked by the piece's score, which is how SentencePiece's BPE encoder chooses its merges. The
    normalizer, pre-tokenizer, decoder, post-processor and special tokens are kept. Returns True
    when the file was rewritten."""
    import json

    import gguf
    import numpy as np

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    if data.get("model", {}).get("type") != "Unigram":
        return False
    reader = gguf.GGUFReader(str(gguf_path))

    def values(key: str) -> list:
        f = reader.fields.get(key)
        return [] if f is None else [f.parts[i] for i in f.data]

    model = values("tokenizer.ggml.model")
    if not model or bytes(model[0]).decode("utf-8", "replace") != "llama":
        return False
    pieces = [bytes(p).decode("utf-8", errors="replace") for p in values("tokenizer.ggml.tokens")]
    scores = np.array([float(p[0]) for p in values("tokenizer.ggml.scores")])
    kinds = np.array([int(p[0]) for p in values("tokenizer.ggml.token_type")])
    if not pieces or len(scores) != len(pieces) or len(kinds) != len(pieces):
        return False
    normal = kinds == 1
    if normal.sum() < 2 or np.corrcoef(np.flatnonzero(normal), scores[normal])[0, 1] > -0.99:
        return False  # scores are not merge ranks: a real Unigram model
    vocab: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        vocab.setdefault(piece, i)
    mergeable = {i for i in range(len(pieces)) if kinds[i] in (1, 6)}  # normal and byte pieces
    ranked = []
    for i, piece in enumerate(pieces):
        if kinds[i] != 1 or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            a, b = vocab.get(piece[:cut]), vocab.get(piece[cut:])
            if a in mergeable and b in mergeable:
                ranked.append((-scores[i], i, a, b))
    ranked.sort()
    unk = next((pieces[i] for i in range(len(pieces)) if kinds[i] == 2), None)
    data["model"] = {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": bool((kinds == 6).any()),
                     "ignore_merges": False, "vocab": vocab,
                     "merges": [[pieces[a], pieces[b]] for _, _, a, b in ranked]}
    from tokenizers import Tokenizer

    Tokenizer.from_str(json.dumps(data))  # must load before it replaces the converted one
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    if log is not None:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"tokenizer.json: rebuilt as SentencePiece BPE from {gguf_path.name} ({len(ranked)} merges)\n")
    return True


# --------------------------------------------------------------------------- torch modules


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


def _export_torch_module(opts: ExportOptions, staging: Path, log: Path, meta: dict[str, str]) -> str:
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
        raise _failure("torch.onnx.export", exc, log) from None
    import onnx

    proto = onnx.load(str(raw / MODEL_FILE))        # with its data, wherever torch put it
    n = dedupe_transposed_initializers(proto)
    if n:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"sui-onnx: replaced {n} transposed duplicate initializer(s) (tied embeddings) by Transpose nodes\n")
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
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SuiError(f"cannot load the weights {source} into the module: {exc.__class__.__name__}: {first}") from None


def dedupe_transposed_initializers(model: Any) -> int:
    """Replace 2-D initializers that are exact transposes of another one by a Transpose node.

    The TorchScript exporter constant-folds a tied ``lm_head.weight = embed.weight`` into a
    second, transposed copy of the embedding matrix (optimum removes it for most models, not
    all: Gemma 3 keeps it).  Works in place on a ModelProto holding its data; the named
    parameter is kept and the ``onnx::`` constant becomes ``Transpose(parameter)``.  Returns
    the number of initializers replaced.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    mats = [i for i in graph.initializer if len(i.dims) == 2 and i.dims[0] != i.dims[1]]
    by_shape: dict[tuple[int, ...], list[Any]] = {}
    for t in mats:
        by_shape.setdefault(tuple(t.dims), []).append(t)
    arrays: dict[str, Any] = {}

    def arr(t: Any) -> Any:
        if t.name not in arrays:
            arrays[t.name] = numpy_helper.to_array(t)
        return arrays[t.name]

    replace: dict[str, str] = {}      # duplicate -> kept
    for t in mats:
        for other in by_shape.get(tuple(t.dims[::-1]), []):
            if {t.name, other.name} & (set(replace) | set(replace.values())):
                continue
            a, b = arr(t), arr(other)
            if a.dtype != b.dtype or not (np.array_equal(a[0], b[:, 0]) and np.array_equal(a[-1], b[:, -1])):
                continue
            if not np.array_equal(a, b.T):
                continue
            dup, kept = (t, other) if t.name.startswith("onnx::") and not other.name.startswith("onnx::") else (other, t)
            replace[dup.name] = kept.name
    if not replace:
        return 0
    for field_ in (graph.initializer, graph.input):   # IR<4 also lists initializers as inputs
        for k in reversed([k for k, t in enumerate(field_) if t.name in replace]):
            del field_[k]
    nodes = [onnx.helper.make_node("Transpose", [src], [dup], name=f"/sui_onnx/dedupe/Transpose_{k}", perm=[1, 0])
             for k, (dup, src) in enumerate(replace.items())]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return len(replace)


def dedupe_file(path: Path, log: Path) -> int:
    """:func:`dedupe_transposed_initializers` on a single-file model (external data: left alone)."""
    import onnx

    from .graph.index import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    if any(uses_external_data(t) for t in model.graph.initializer):
        return 0
    n = dedupe_transposed_initializers(model)
    if n:
        tmp = path.with_name(path.name + ".tmp")
        save_model(model, tmp)
        os.replace(tmp, path)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"sui-onnx: replaced {n} transposed duplicate initializer(s) (tied embeddings) by Transpose nodes\n")
    return n


def save_model(model: Any, path: Path) -> None:
    """Save a ModelProto holding its data: one file, or ``model.onnx_data`` beside it past 2 GB."""
    import onnx

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size >= _TWO_GB:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


# --------------------------------------------------------------------------- metadata and taps


def set_metadata(model_path: Path, props: dict[str, str]) -> None:
    """Add/replace ``metadata_props`` of an ONNX file without touching its external data."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in keep + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    tmp = model_path.with_name(model_path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, model_path)


def tapped_name(model_name: str) -> str:
    """``model.onnx`` -> ``model.tapped.onnx``, ``decoder_model.onnx`` -> ``decoder_model.tapped.onnx``."""
    return model_name[: -len(".onnx")] + ".tapped.onnx" if model_name.endswith(".onnx") else model_name + ".tapped.onnx"


def write_taps(model_path: Path, site: str) -> tuple[list, Path, bool]:
    """Find the FFN taps of ``model_path`` (site post, pre or both) and write the tapped copy
    (``model.tapped.onnx``) beside it; returns (taps, path written, has external data)."""
    from .graph import find_taps, load_model, write_tapped

    src = load_model(model_path)
    sites = ("post", "pre") if site == "both" else (site,)
    taps = [t for s in sites for t in find_taps(src.model, site=s)]
    taps.sort(key=lambda t: (t.layer, sites.index(t.site)))
    entry = src.model.metadata_props.add()     # in memory only: the tapped copy describes its outputs
    entry.key, entry.value = "sui_onnx.taps", json.dumps([t.to_dict() for t in taps])
    written = write_tapped(src, taps, model_path.with_name(tapped_name(model_path.name)))
    _chmod_default(written, 0o666)      # written through mkstemp (private); same mode as model.onnx
    return taps, written, src.has_external_data


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
