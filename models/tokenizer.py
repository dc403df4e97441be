"""Train the byte-level BPE tokenizers used by the demo model and the test fixtures.

A GPT-2 style byte-level BPE (no unknown token: every byte string is encodable) trained on
the training split of :mod:`models.corpus`. Training is single-pass and deterministic for a
given corpus and vocabulary size. ``<|endoftext|>`` is token 0 and separates documents.

Usage::

    python -m models.tokenizer                       # 4096 -> sui_onnx/data/demo/tokenizer.json
    python -m models.tokenizer --vocab 512 --out models/work/tokenizer_512.json
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from models.corpus import DATA_DIR, WORK_DIR, build_corpus

EOS = "<|endoftext|>"
DEMO_VOCAB = 4096
FIXTURE_VOCAB = 512
FIXTURE_TOKENIZER = WORK_DIR / "tokenizer_512.json"


def train_bpe(corpus: Path, vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` entries (``EOS`` included) on ``corpus``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"trained {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    return tok


def ensure_tokenizer(vocab_size: int, out: Path, work_dir: Path = WORK_DIR) -> Path:
    """Train (if ``out`` does not exist yet) and save a tokenizer; return its path."""
    if not out.exists():
        files = build_corpus(work_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        train_bpe(files.train, vocab_size).save(str(out))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=DEMO_VOCAB)
    parser.add_argument("--out", type=Path, default=DATA_DIR / "demo" / "tokenizer.json")
    parser.add_argument("--work", type=Path, default=WORK_DIR)
    args = parser.parse_args(argv)
    args.out.unlink(missing_ok=True)
    path = ensure_tokenizer(args.vocab, args.out, args.work)
    tok = Tokenizer.from_file(str(path))
    sample = "It is a truth universally acknowledged, that a single man in possession"
    ids = tok.encode(sample).ids
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    print(f"{path}: vocab {tok.get_vocab_size()}, sha256 {digest}, "
          f"{len(sample) / len(ids):.2f} chars/token on a sample")


if __name__ == "__main__":
    main()
