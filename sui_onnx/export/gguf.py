"""GGUF checkpoints: loaded through transformers' GGUF support (dequantized to float32) and saved
as a temporary Hugging Face folder, which :mod:`sui_onnx.export.hf` exports; the quantization type
and the file name are recorded in the model's ``metadata_props``."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SuiError, first_line
from .capture import capture_output, failure, note, offline
from .options import META_ARCHITECTURE, META_DEQUANTIZED, META_SOURCE, ExportOptions


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
        raise SuiError(f"cannot read GGUF file {path}: {first_line(exc, limit=200)}") from None

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


def gguf_to_hf(opts: ExportOptions, hf: Path, log: Path, meta: dict[str, str]) -> None:
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
        raise failure(f"loading {name} ({info.architecture}) through transformers' GGUF support", exc, log) from None
    try:
        with offline(), capture_output(log):
            AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True, **extra).save_pretrained(str(hf))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the tokenizer is optional (calibrate with .npy ids)
        note(log, f"no tokenizer from {name}: {exc.__class__.__name__}: {exc}")
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
        note(log, f"tokenizer.json: rebuilt as SentencePiece BPE from {gguf_path.name} ({len(ranked)} merges)")
    return True
