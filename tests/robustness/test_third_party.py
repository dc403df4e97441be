"""Class 9: failures inside third-party code (tokenizers, onnxruntime, numpy, json, tomllib) become
one line naming the cause: no Rust panic text, no onnxruntime log lines, no "unexpected X"."""

import json
import os
import shutil

import numpy as np
import pytest

from tests.robustness.clitools import FIXTURES, TOKENIZER, cli, ids, model_folder, one_error_line, snapshot


@pytest.fixture()
def work(tmp_path):
    model_folder(tmp_path / "m", vocab=4096)
    (tmp_path / "c.txt").write_text("Some calibration text for the tokenizer. " * 40)
    return tmp_path


def _tokenizer(work, **changes):
    tok = json.loads(TOKENIZER.read_text())
    tok.update(changes)
    (work / "m" / "tokenizer.json").write_text(json.dumps(tok))


def test_a_tokenizer_that_panics_is_one_line(work):
    _tokenizer(work, normalizer={"type": "Precompiled", "precompiled_charsmap": "AAAA"})
    before = snapshot(work)
    r = cli("report", "m", "--calib", "c.txt", "-q", cwd=work, RUST_BACKTRACE="1")
    line = one_error_line(r, "tokenizer.json")
    assert "panicked" not in r.stderr and "backtrace" not in r.stderr.lower()
    assert "not a valid tokenizer.json" in line
    assert snapshot(work) == before


def test_a_tokenizer_truncation_setting_neither_panics_nor_cuts_the_text(work):
    """tokenizer.json's own truncation (here one whose stride panics inside encode) is not ours to apply:
    sui-onnx packs the windows itself."""
    _tokenizer(work, truncation={"max_length": 2, "stride": 5, "strategy": "LongestFirst", "direction": "Right"})
    r = cli("report", "m", "--calib", "c.txt", "-q", "--json", "r.json", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "panicked" not in r.stderr
    assert json.loads((work / "r.json").read_text())["calibration"]["tokens"] > 100


def test_token_ids_beyond_the_vocabulary_are_checked_before_running(work):
    np.save(work / "ids.npy", np.full((2, 16), 5000, np.int64))
    r = cli("report", "m", "--calib", "ids.npy", "-q", cwd=work)
    line = one_error_line(r, "outside the model's vocabulary")
    assert "4096 rows" in line and "onnxruntime" not in r.stderr


def test_text_ids_beyond_the_vocabulary_name_the_table(work):
    """The bundled tokenizer has 4096+ ids; a model with a 300-row table cannot take them all."""
    model_folder(work / "small", vocab=300)
    r = cli("report", "small", "--calib", "c.txt", "-q", cwd=work)
    one_error_line(r, "outside the vocabulary")
    assert "[E:onnxruntime" not in r.stderr


@pytest.mark.skipif(not (FIXTURES / "gpt2_w128").is_dir(), reason="fixtures not built")
def test_windows_longer_than_the_position_table_are_checked_before_running(work):
    shutil.copytree(FIXTURES / "gpt2_w128", work / "gpt2")
    r = cli("report", "gpt2", "--seq-len", "300", "--tokens", "1200", "-q", cwd=work)
    line = one_error_line(r, "position table")
    assert "256 positions" in line and "--seq-len 256" in line and "onnxruntime" not in r.stderr
    np.save(work / "long.npy", np.zeros((2, 300), np.int64))
    one_error_line(cli("report", "gpt2", "--calib", "long.npy", "-q", cwd=work), "position table")


def test_onnxruntime_failures_are_one_line_without_its_log(work):
    """A batch onnxruntime fails on at run time (a Reshape the batch does not fit): its coloured log
    lines stay off stderr, one line says what failed; with --debug its log is shown."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(work / "m" / "model.onnx"))
    m.graph.initializer.append(numpy_helper.from_array(np.array([7, -1, 16], np.int64), "odd_shape"))
    m.graph.node.insert(1, helper.make_node("Reshape", ["x0", "odd_shape"], ["x0_odd"], name="odd"))
    for node in m.graph.node:
        if node.name == "/h.0/mlp/up/MatMul":
            node.input[0] = "x0_odd"
    onnx.save(m, str(work / "m" / "model.onnx"))
    ids(work / "ids.npy", vocab=64)
    r = cli("report", "m", "--calib", "ids.npy", "-q", "--device", "cpu", cwd=work)
    line = one_error_line(r, "onnxruntime failed on a batch")
    assert "Reshape" in line or "odd" in line, line
    assert "[E:onnxruntime" not in r.stderr and "\x1b[" not in r.stderr
    debug = cli("report", "m", "--calib", "ids.npy", "-q", "--device", "cpu", "--debug", cwd=work)
    assert debug.returncode == 2 and "[E:onnxruntime" in debug.stderr


# -- "unexpected X" cases: each names its cause ------------------------------------------------------
def test_deeply_nested_json_report_and_toml_config(work):
    (work / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    one_error_line(cli("check", "deep.json", "--min-sui", "0", cwd=work), "nested too deeply")
    (work / "deep.toml").write_text("[check]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (work / "ok.json").write_text("{}")
    one_error_line(cli("check", "ok.json", "--config", "deep.toml", cwd=work), "deep.toml")


def test_jsonl_records_that_json_or_unicode_refuse(work):
    cases = {
        "surrogate": ('{"text": "abc \\ud800 def"}\n', "lone surrogate"),
        "nested": ("[" * 200_000 + "]" * 200_000 + "\n", "nested too deeply"),
        "broken": ('{"text": "abc"\n', "not valid JSON"),
        "not_text": ('{"text": 5}\n', "string \"text\" field"),
    }
    for name, (content, what) in cases.items():
        (work / f"{name}.jsonl").write_text(content)
        line = one_error_line(cli("report", "m", "--calib", f"{name}.jsonl", "-q", cwd=work), what)
        assert f"{name}.jsonl:1" in line, line


def test_malformed_npz_metadata_names_the_problem(work):
    ids(work / "ids.npy", vocab=64)
    assert cli("report", "m", "--calib", "ids.npy", "-q", "--checkpoint", "ck.npz", cwd=work).returncode == 0
    with np.load(work / "ck.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for meta, what in (("{", "not valid JSON"), ("[]", "JSON object"), ('{"identity": 3}', "identity")):
        np.savez(work / "bad.npz", **dict(arrays, meta=np.asarray(meta)))
        one_error_line(cli("report", "m", "--stats", "bad.npz", "-q", cwd=work), what)
    np.savez(work / "bad.npz", **dict(arrays, names=np.asarray(7)))
    one_error_line(cli("report", "m", "--stats", "bad.npz", "-q", cwd=work), "names")
    np.savez(work / "bad.npz", **{k: v for k, v in arrays.items() if k != "0/gram"})
    one_error_line(cli("report", "m", "--stats", "bad.npz", "-q", cwd=work), "missing")


def test_folders_holding_odd_symlinks_are_read_around(work):
    """A symlink loop, a dangling link and a link to a FIFO in a --calib folder and a model folder:
    skipped (they cannot be read), the run goes on."""
    for folder in (work / "texts", work / "m"):
        folder.mkdir(exist_ok=True)
        os.symlink("loop.txt", folder / "loop.txt")
        os.symlink("/nonexistent/x.txt", folder / "dangling.txt")
        os.mkfifo(folder / "pipe")
        os.symlink("pipe", folder / "pipe.txt")
    (work / "texts" / "a.txt").write_text("Some calibration text for the tokenizer. " * 40)
    r = cli("report", "m", "--calib", "texts", "-q", "--json", "r.json", cwd=work, timeout=120)
    assert r.returncode == 0, r.stderr
