"""Calibration sources -> batches: packing, budgets, every source kind, and clear errors."""

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.calib import CalibrationSpec, CalibrationStream, bundled_corpus, default_token_budget
from sui_onnx.errors import CalibrationError

TOKENIZER = Path(str(resources.files("sui_onnx") / "data" / "demo" / "tokenizer.json"))


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(TOKENIZER, d / "tokenizer.json")
    return d


def batches(spec, folder, widths=(64,)):
    stream = CalibrationStream(spec, folder, widths)
    out = list(stream)
    return stream, out


def test_text_is_packed_into_full_windows_without_padding(model_dir, tmp_path):
    from tokenizers import Tokenizer

    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune.\n" * 40
    f = tmp_path / "a.txt"
    f.write_text(text, encoding="utf-8")
    stream, out = batches(CalibrationSpec([f], seq_len=16, batch_size=4, tokens=10_000), model_dir)
    ids = Tokenizer.from_file(str(TOKENIZER)).encode(text, add_special_tokens=False).ids
    fed = np.concatenate([b.input_ids.reshape(-1) for b in out])
    assert fed.tolist() == ids  # every token, in order, exactly once
    assert all(b.input_ids.shape[1] == 16 for b in out[:-1]) and all(b.input_ids.shape[0] <= 4 for b in out)
    assert stream.tokens_fed == len(ids)


def test_token_budget_is_exact(model_dir):
    stream, out = batches(CalibrationSpec([], seq_len=32, batch_size=3, tokens=1000), model_dir)
    assert sum(b.tokens for b in out) == 1000 == stream.tokens_fed
    assert out[-1].input_ids.shape[1] in (1000 % 32, 32)


def test_default_source_is_the_bundled_corpus_and_budget_follows_width(model_dir):
    assert bundled_corpus().is_file()
    stream = CalibrationStream(CalibrationSpec(), model_dir, [4096])
    assert stream.budget == 40_960 and stream.describe()[0]["bundled"]
    assert default_token_budget([128]) == 16_384 and default_token_budget([10**6]) == 1 << 20


def test_npy_rows_are_fed_whole(model_dir, tmp_path):
    ids = np.arange(5 * 7).reshape(5, 7) % 50
    np.save(tmp_path / "ids.npy", ids)
    stream, out = batches(CalibrationSpec([tmp_path / "ids.npy"], batch_size=2), model_dir)
    assert np.concatenate([b.input_ids for b in out]).tolist() == ids.tolist()
    assert stream.budget == 35 and [b.input_ids.shape for b in out] == [(2, 7), (2, 7), (1, 7)]
    stream, out = batches(CalibrationSpec([tmp_path / "ids.npy"], batch_size=2, tokens=10), model_dir)
    assert sum(b.tokens for b in out) == 10


def test_npy_needs_no_tokenizer(tmp_path):
    np.save(tmp_path / "ids.npy", np.ones((2, 4), dtype=np.int32))
    _, out = batches(CalibrationSpec([tmp_path / "ids.npy"]), None)
    assert out[0].input_ids.dtype == np.int64


def test_jsonl_and_folders(model_dir, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("second file " * 30)
    (tmp_path / "docs" / "a.txt").write_text("first file " * 30)
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"record {i} " * 10}) for i in range(5)) + "\n")
    stream, out = batches(CalibrationSpec([tmp_path / "docs", jl], seq_len=8), model_dir)
    assert stream.tokens_fed > 100
    assert [s["kind"] for s in stream.describe()] == ["text", "jsonl"]


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"\x00\x01\x02binary", "binary"),
        (b"caf\xe9 au lait", "not UTF-8"),
    ],
)
def test_bad_text_is_a_clear_error(model_dir, tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(CalibrationError, match=match):
        batches(CalibrationSpec([f]), model_dir)


@pytest.mark.parametrize("encoding,bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"),
                                          ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\x00\x00")])
def test_text_with_a_byte_order_mark_gives_the_tokens_of_its_utf8(model_dir, tmp_path, monkeypatch, encoding, bom):
    """A UTF-16/32 file with its byte order mark (Windows PowerShell's '>' writes UTF-16) is the same
    text: the same windows as the UTF-8 file, also when a chunk boundary splits a character."""
    import sui_onnx.calib as calib

    monkeypatch.setattr(calib, "_READ_CHUNK", 7)  # odd: boundaries fall inside UTF-16/32 code units
    text = "Caf\u00e9 \U0001F600 na\u00efve text, line one.\nAnd a second line of it.\n" * 40
    (tmp_path / "u8.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "wide.txt").write_bytes(bom + text.encode(encoding))
    _, want = batches(CalibrationSpec([tmp_path / "u8.txt"], seq_len=16), model_dir)
    _, got = batches(CalibrationSpec([tmp_path / "wide.txt"], seq_len=16), model_dir)
    assert len(got) == len(want) > 1 and all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(got, want))
    (tmp_path / "nobom.txt").write_bytes(text.encode("utf-16-le"))  # no mark: NUL bytes, not guessed
    with pytest.raises(CalibrationError, match="looks binary"):
        batches(CalibrationSpec([tmp_path / "nobom.txt"]), model_dir)
    (tmp_path / "broken.txt").write_bytes(b"\xff\xfe" + "ok".encode("utf-16-le") + b"\x00\xd8\x41\x00")
    with pytest.raises(CalibrationError, match="not UTF-16 text"):
        batches(CalibrationSpec([tmp_path / "broken.txt"]), model_dir)


def test_bad_sources_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(CalibrationError, match="no such"):
        CalibrationStream(CalibrationSpec([tmp_path / "nope.txt"]), model_dir, [8])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CalibrationError, match="unsupported"):
        CalibrationStream(CalibrationSpec([tmp_path / "x.csv"]), model_dir, [8])
    np.save(tmp_path / "f.npy", np.ones((2, 3), dtype=np.float32))
    with pytest.raises(CalibrationError, match="integers"):
        CalibrationStream(CalibrationSpec([tmp_path / "f.npy"]), model_dir, [8])
    np.save(tmp_path / "v.npy", np.ones(5, dtype=np.int64))
    with pytest.raises(CalibrationError, match="shape"):
        CalibrationStream(CalibrationSpec([tmp_path / "v.npy"]), model_dir, [8])
    (tmp_path / "j.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(CalibrationError, match="j.jsonl:1"):
        batches(CalibrationSpec([tmp_path / "j.jsonl"]), model_dir)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CalibrationError, match="no .txt"):
        batches(CalibrationSpec([tmp_path / "empty_dir"]), model_dir)


def test_text_without_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    with pytest.raises(CalibrationError, match="tokenizer.json"):
        CalibrationStream(CalibrationSpec([tmp_path / "a.txt"]), tmp_path, [8])


def test_corrupt_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "a.txt").write_text("hello world")
    with pytest.raises(CalibrationError, match="not a valid tokenizer.json"):
        CalibrationStream(CalibrationSpec([tmp_path / "a.txt"]), tmp_path, [8])


@pytest.mark.parametrize("kw", [{"seq_len": 0}, {"batch_size": 0}, {"tokens": 0}, {"tokens": 1}])
def test_invalid_packing_is_rejected(kw):
    with pytest.raises(CalibrationError):
        CalibrationSpec(**kw)


def test_too_little_text_is_a_clear_error(model_dir, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(CalibrationError, match="fewer than 2 tokens"):
        batches(CalibrationSpec([tmp_path / "a.txt"]), model_dir)
