"""A source given twice is refused (its tokens would count twice in a calibration, its windows twice
in an eval's pooled standard error), whether it is the same path or a copy; sources of equal size
but other content are not. A folder's empty .txt members are skipped; eval's messages say eval."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sui_onnx.calib import CalibrationSpec, CalibrationStream
from sui_onnx.errors import CalibrationError
from sui_onnx.evaluate import Evaluator

pytest.importorskip("onnxruntime")
GPT2 = Path(__file__).parent / "fixtures" / "gpt2_w128"
HELDOUT = Path(__file__).parent.parent / "sui_onnx" / "data" / "heldout.txt"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, COLUMNS="100"))


def error_line(r) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


@pytest.fixture
def texts(tmp_path):
    text = HELDOUT.read_text()[:20000]
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "copy.txt").write_text(text)
    (tmp_path / "other.txt").write_text(text[::-1])  # the same size, other content
    (tmp_path / "fa").mkdir()
    (tmp_path / "fa" / "x.txt").write_text(text)
    return tmp_path


@pytest.mark.parametrize("second, said", [("a.txt", "a.txt: given twice"), ("./a.txt", "given twice"),
                                          ("copy.txt", "copy.txt: the same content as a.txt (sha256 ")])
def test_a_calibration_source_given_twice_is_refused(texts, second, said):
    r = cli("report", GPT2, "--calib", "a.txt", "--calib", second, "--json", "r.json", cwd=texts)
    err = error_line(r)
    assert said in err and "every calibration source is read once" in err
    assert not (texts / "r.json").exists()


def test_sources_of_equal_size_and_other_content_are_both_read(texts):
    spec = CalibrationSpec([texts / "a.txt", texts / "other.txt"], seq_len=64, tokens=100_000)
    stream = CalibrationStream(spec, GPT2, widths=[128])
    assert sum(b.tokens for b in stream) == stream.tokens_fed and all(n > 0 for n in stream.source_tokens)
    with pytest.raises(CalibrationError, match="the same content as"):  # a text file and a folder of it differ:
        CalibrationStream(CalibrationSpec([texts / "a.txt", texts / "copy.txt", texts / "fa"]), GPT2, widths=[128])
    CalibrationStream(CalibrationSpec([texts / "a.txt", texts / "fa"]), GPT2, widths=[128])  # a folder is hashed with its names


@pytest.mark.parametrize("second, said", [("a.txt", "a.txt: given twice"), ("copy.txt", "the same content as a.txt")])
def test_an_eval_source_given_twice_is_refused(texts, second, said):
    r = cli("eval", GPT2, "--data", "a.txt", "--data", second, "--reference", GPT2, "--json", "e.json", cwd=texts)
    err = error_line(r)
    assert said in err and "each eval source is measured once" in err
    assert not (texts / "e.json").exists()
    with pytest.raises(CalibrationError, match="each eval source is measured once"):
        Evaluator([texts / "a.txt", texts / second], GPT2)
    for command in (["report", GPT2, "--eval"], ["slim", GPT2, "out", "--ratio", 0.5, "--eval"]):
        r = cli(*command[:-1], "--eval", "a.txt", "--eval", second, cwd=texts)
        assert "each eval source is measured once" in error_line(r)
    assert not (texts / "out").exists()


def test_empty_members_of_a_folder_are_skipped(texts):
    folder = texts / "fb"
    folder.mkdir()
    (folder / "a.txt").write_text((texts / "a.txt").read_text())
    (folder / "b.txt").write_text("")
    (folder / "c.txt").write_text("  \n\t\n")
    with_empty = CalibrationStream(CalibrationSpec([folder], seq_len=64, tokens=100_000), GPT2, widths=[128])
    alone = CalibrationStream(CalibrationSpec([texts / "a.txt"], seq_len=64, tokens=100_000), GPT2, widths=[128])
    got, want = ([b.input_ids for b in s] for s in (with_empty, alone))
    assert len(got) == len(want) and all((g == w).all() for g, w in zip(got, want))
    (texts / "empty.txt").write_text(" \n")  # given on its own, an empty file is still an error
    err = error_line(cli("eval", GPT2, "--data", "empty.txt", cwd=texts))
    assert "empty.txt: empty text file" in err and "calibration" not in err


def test_eval_messages_name_eval_data_and_eval_flags(texts):
    (texts / "none").mkdir()
    (texts / "none" / "x.txt").write_text("")
    err = error_line(cli("eval", GPT2, "--data", "none", cwd=texts))
    assert "eval data produced fewer than 2 tokens" in err and "calibration" not in err
    err = error_line(cli("eval", GPT2, "--data", "nope.txt", cwd=texts))
    assert "no such eval data file or folder" in err
    r = cli("eval", GPT2, "--data", "a.txt", "--reference", GPT2, "--tokens", 600, "-q", cwd=texts)
    assert r.returncode == 0 and "add --data text from another domain" in r.stderr
    r = cli("slim", GPT2, "out", "--ratio", 0.5, "--tokens", 1500, "--eval", "a.txt", "--eval-tokens", 600, "-q", cwd=texts)
    assert r.returncode == 0 and "add --eval text from another domain" in r.stderr and "--data" not in r.stderr


def test_sources_of_one_file_name_are_told_apart_in_the_table(texts):
    for folder, text in (("x", (texts / "a.txt").read_text()), ("y", (texts / "other.txt").read_text())):
        (texts / folder).mkdir()
        (texts / folder / "a.txt").write_text(text)
    r = cli("eval", GPT2, "--data", "x/a.txt", "--data", "y/a.txt", "--tokens", 300, cwd=texts)
    assert r.returncode == 0, r.stderr
    rows = [line.split()[0] for line in r.stdout.splitlines() if line.strip().endswith(tuple("0123456789"))]
    assert "x/a.txt" in rows and "y/a.txt" in rows, r.stdout


def test_a_calibration_source_that_gave_no_tokens_is_not_calibration_data(texts):
    """With --mix sequential a later source the budget never reached fed nothing: eval data equal to
    it is held out (slim --eval, and eval of the slim model through its slim.json)."""
    r = cli("slim", GPT2, "out", "--ratio", 0.5, "--calib", "a.txt", "--calib", "other.txt", "--tokens", 1500,
            "--seq-len", 64, "--eval", "other.txt", "--eval", "a.txt", "--eval-tokens", 300, "-q", cwd=texts)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "is the calibration data" in line]
    assert len(said) == 1 and "a.txt" in said[0] and "other.txt" not in said[0], r.stderr
    r = cli("eval", "out", "--data", "other.txt", "--data", "a.txt", "--tokens", 300, "--json", "e.json", "-q", cwd=texts)
    assert r.returncode == 0, r.stderr
    import json

    held = {Path(s["source"]["path"]).name: s["source"]["held_out"] for s in json.loads((texts / "e.json").read_text())["sources"]}
    assert held == {"other.txt": True, "a.txt": False}


def test_an_unreadable_slim_json_beside_the_model_is_a_warning(texts):
    folder = texts / "m"
    folder.mkdir()
    for f in GPT2.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "slim.json").write_text("{not json")
    r = cli("eval", "m", "--data", "a.txt", "--tokens", 300, "-q", cwd=texts)
    assert r.returncode == 0 and "slim.json cannot be read as slim's record" in r.stderr
    (folder / "slim.json").unlink()
    r = cli("eval", "m", "--data", "a.txt", "--tokens", 300, "-q", cwd=texts)
    assert r.returncode == 0 and "warning" not in r.stderr


def test_an_eval_file_from_inside_the_calibration_folder_is_calibration_data(texts):
    """Calibrated on a folder, measured on a copy of one of its files: not held out."""
    (texts / "fa" / "y.txt").write_text((texts / "other.txt").read_text())
    (texts / "leak.txt").write_text((texts / "fa" / "x.txt").read_text())
    r = cli("slim", GPT2, "out", "--ratio", 0.5, "--calib", "fa", "--tokens", 1500, "--seq-len", 64,
            "--eval", "leak.txt", "--eval", HELDOUT, "--eval-tokens", 300, "-q", cwd=texts)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "is the calibration data" in line]
    assert len(said) == 1 and "leak.txt" in said[0], r.stderr
    r = cli("eval", "out", "--data", "leak.txt", "--data", HELDOUT, "--tokens", 300, "-q", cwd=texts)
    assert r.returncode == 0 and "leak.txt is the calibration data" in r.stderr, r.stderr


def test_one_held_out_source_beside_the_calibration_data_is_one_domain(texts):
    r = cli("slim", GPT2, "out", "--ratio", 0.5, "--calib", "a.txt", "--tokens", 1500, "--seq-len", 64,
            "--eval", "a.txt", "--eval", "other.txt", "--eval-tokens", 300, "-q", cwd=texts)
    assert r.returncode == 0, r.stderr
    assert "only one held-out eval domain measured (the other sources are the calibration data)" in r.stderr
    assert "add --eval text from another domain" in r.stderr
    r = cli("slim", GPT2, "out2", "--ratio", 0.5, "--calib", "a.txt", "--tokens", 1500, "--seq-len", 64,
            "--eval", "other.txt", "--eval", HELDOUT, "--eval-tokens", 300, "-q", cwd=texts)
    assert r.returncode == 0 and "domain measured" not in r.stderr, r.stderr
