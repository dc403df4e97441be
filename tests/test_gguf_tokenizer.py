"""The SentencePiece BPE tokenizer rebuilt from a GGUF file's scores (sui_onnx.export.spm_bpe_tokenizer),
on a tiny GGUF written here: scores are merge priorities, so words are pieces, not letters."""

import json

import pytest

gguf = pytest.importorskip("gguf")
from tokenizers import Tokenizer  # noqa: E402

from sui_onnx.export import spm_bpe_tokenizer  # noqa: E402

PIECES = ["<pad>", "<eos>", "<bos>", "<unk>", "▁", "c", "a", "p", "i", "t", "l", "o", "f", "▁c", "ap", "it", "al",
          "▁cap", "ital", "▁capital", "▁o", "▁of"]
KINDS = [3, 3, 3, 2] + [1] * (len(PIECES) - 4)  # control, unknown, normal


def write(tmp_path, scores):
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(PIECES)
    w.add_token_scores(scores)
    w.add_token_types(KINDS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    unigram = {"version": "1.0", "added_tokens": [], "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
               "pre_tokenizer": None, "post_processor": None, "decoder": None,
               "model": {"type": "Unigram", "unk_id": 3, "vocab": [[p, s] for p, s in zip(PIECES, scores)], "byte_fallback": False}}
    tok = tmp_path / "tokenizer.json"
    tok.write_text(json.dumps(unigram))
    return path, tok


def test_merge_ranks_read_as_unigram_scores_split_words_and_the_rebuild_keeps_them_whole(tmp_path):
    scores = [-1000.0] * 4 + [-float(i) for i in range(len(PIECES) - 4)]  # score = -rank, as llama.cpp writes
    path, tok = write(tmp_path, scores)
    assert Tokenizer.from_file(str(tok)).encode(" capital of").tokens != ["▁capital", "▁of"]
    assert spm_bpe_tokenizer(path, tok) is True
    rebuilt = Tokenizer.from_file(str(tok))
    assert rebuilt.encode(" capital of").tokens == ["▁capital", "▁of"]
    assert json.loads(tok.read_text())["model"]["type"] == "BPE"
    assert spm_bpe_tokenizer(path, tok) is False  # already BPE: left alone


def test_a_real_unigram_model_is_left_alone(tmp_path):
    scores = [-1000.0] * 4 + [-2.0 - (i % 5) for i in range(len(PIECES) - 4)]  # log-probabilities, not ranks
    path, tok = write(tmp_path, scores)
    before = tok.read_text()
    assert spm_bpe_tokenizer(path, tok) is False
    assert tok.read_text() == before
