"""Text windows: the tokenizer's leading special tokens (BOS) start every window, and several
sources share the token budget with --mix even."""

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

from sui_onnx.calib import CalibrationSpec, CalibrationStream
from sui_onnx.errors import CalibrationError

DEMO = Path(__file__).parent.parent / "sui_onnx" / "data" / "demo"
TEXT = "It was a truth universally acknowledged, that a single man in possession of a good fortune. " * 40


def folder_with_bos(tmp_path) -> tuple[Path, int]:
    tok = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    bos = tok.get_vocab_size()
    tok.add_special_tokens(["<bos>"])
    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    tmp_path.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path, bos


def test_every_text_window_starts_with_the_tokenizers_bos_and_no_text_token_is_lost(tmp_path):
    folder, bos = folder_with_bos(tmp_path)
    (tmp_path / "t.txt").write_text(TEXT)
    stream = CalibrationStream(CalibrationSpec([tmp_path / "t.txt"], seq_len=16, batch_size=4), folder, [])
    windows = [row for b in stream for row in b.input_ids]
    assert stream.prefix == [bos]
    assert all(w[0] == bos and len(w) <= 16 for w in windows)
    text_ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    assert np.concatenate([w[1:] for w in windows]).tolist() == text_ids[:sum(len(w) - 1 for w in windows)]
    assert sum(len(w) for w in windows) == stream.tokens_fed


def test_tokenizers_without_a_template_add_nothing_and_npy_ids_are_fed_as_they_are(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    ids = np.arange(32, dtype=np.int64).reshape(2, 16)
    np.save(tmp_path / "ids.npy", ids)
    stream = CalibrationStream(CalibrationSpec([tmp_path / "t.txt"], seq_len=16), DEMO, [])
    first = next(iter(stream)).input_ids[0]
    assert stream.prefix == [] and first.tolist() == Tokenizer.from_file(str(DEMO / "tokenizer.json")).encode(
        TEXT, add_special_tokens=False).ids[:16]
    folder, _ = folder_with_bos(tmp_path / "bos")
    npy = CalibrationStream(CalibrationSpec([tmp_path / "ids.npy"]), folder, [])
    assert np.concatenate([b.input_ids for b in npy]).tolist() == ids.tolist()


def test_a_window_too_short_for_the_bos_is_an_input_error(tmp_path):
    folder, _ = folder_with_bos(tmp_path)
    (tmp_path / "t.txt").write_text(TEXT)
    with pytest.raises(CalibrationError, match="`seq_len` 1 leaves no room"):
        list(CalibrationStream(CalibrationSpec([tmp_path / "t.txt"], seq_len=1), folder, []))


def test_even_mix_gives_each_source_an_equal_share_and_sequential_fills_in_order(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text(TEXT.upper())
    spec = dict(sources=[tmp_path / "a.txt", tmp_path / "b.txt"], seq_len=32, tokens=600)
    seq = CalibrationStream(CalibrationSpec(**spec), DEMO, [])
    assert sum(b.tokens for b in seq) == 600
    assert [d["tokens"] for d in seq.describe()] == [600, 0]
    even = CalibrationStream(CalibrationSpec(**spec, mix="even"), DEMO, [])
    assert sum(b.tokens for b in even) == 600
    assert [d["tokens"] for d in even.describe()] == [300, 300]
    with pytest.raises(CalibrationError, match="`mix`"):
        CalibrationSpec(mix="shuffled")


@pytest.mark.parametrize("short_first", [True, False])
def test_even_mix_gives_what_a_short_source_leaves_to_the_others(tmp_path, short_first):
    """A source too short for its share takes all it has; the budget it leaves goes to the others
    (after it, or, when it comes last, from the earlier ones past their share), no token twice."""
    tok = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    texts = {"long": " ".join(f"line {i} of the long text." for i in range(400)),
             "mid": " ".join(f"Row {i} of another text." for i in range(400)), "tiny": "A short note."}
    for n, t in texts.items():
        (tmp_path / f"{n}.txt").write_text(t)
    tiny = len(tok.encode("A short note.", add_special_tokens=False).ids)
    names = ["tiny", "long", "mid"] if short_first else ["long", "mid", "tiny"]
    spec = CalibrationSpec([tmp_path / f"{n}.txt" for n in names], seq_len=32, tokens=900, mix="even", batch_size=3)
    stream = CalibrationStream(spec, DEMO, [])
    windows = [row for b in stream for row in b.input_ids]
    got = dict(zip(names, (d["tokens"] for d in stream.describe())))
    assert sum(len(w) for w in windows) == 900 == sum(got.values())
    assert got["tiny"] == tiny and got["long"] >= 300 and got["mid"] >= 300
    # every window is a run of one source's text, and no two runs of a source overlap (no token twice)
    ids = {n: tok.encode(t, add_special_tokens=False).ids for n, t in texts.items()}
    runs = {n: [] for n in texts}
    for w in (w.tolist() for w in windows):
        where = [(n, j) for n, src in ids.items() for j in range(len(src) - len(w) + 1) if src[j:j + len(w)] == w]
        assert where, "a window that is no source's text"
        n, j = where[0]
        runs[n].append((j, j + len(w)))
    for n, spans in runs.items():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), n
        assert spans and spans[0][0] == 0  # each share is taken from its source's start
