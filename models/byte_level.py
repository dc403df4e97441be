"""A byte-level tokenizer: vocabulary 256, token id = the UTF-8 byte value, no merges, no special tokens.

The scaling recipe (models/scaling_families.py, issue 20) trains at this vocabulary: the output layer
is 256 x d_model, so the step time goes to the transformer blocks (with the 4096-entry BPE the
output layer dominated it), and no tokenizer has to be trained. The tokenizer is written as an
ordinary ``tokenizers`` JSON file (a BPE over the GPT-2 byte alphabet with an empty merge list) and
copied into every model folder, so ``sui-onnx report MODEL_DIR`` tokenizes calibration text exactly
as :func:`encode_text` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BYTE_VOCAB = 256


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer():
    """A ``tokenizers.Tokenizer`` whose ids are the UTF-8 bytes of the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def ensure_byte_tokenizer(path: Path) -> Path:
    """Write the byte tokenizer's JSON to ``path`` (once) and return the path."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        byte_tokenizer().save(str(path))
    return path


def encode_text(text: str) -> np.ndarray:
    """Token ids of ``text``: its UTF-8 bytes."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
