"""Class 1: every file a run reads is an input and is never an output, whichever form MODEL takes
(a file, its folder, a symlinked Hugging Face cache snapshot): the external data, tokenizer.json,
config.json and a seq2seq encoder beside a model file included. Refused before any work, exit 2,
the folder byte-identical."""

import os
import shutil

import pytest

from tests.robustness.clitools import TOKENIZER, assert_clean_failure, cli, external_model, ids, snapshot


@pytest.fixture()
def layouts(tmp_path):
    """A model folder with external data, tokenizer, config and an encoder beside it, and the same
    files as a Hugging Face cache repo (snapshots/<rev>/* are symlinks into blobs/)."""
    plain = external_model(tmp_path / "plain")
    shutil.copy(TOKENIZER, plain / "tokenizer.json")
    (plain / "config.json").write_text('{"model_type": "gpt2"}\n')
    shutil.copy(plain / "model.onnx", plain / "encoder_model.onnx")
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for f in plain.iterdir():
        blob = repo / "blobs" / f"sha-{f.name}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    ids(tmp_path / "ids.npy")
    (tmp_path / "r").mkdir()
    return tmp_path


# (MODEL as given, the output flag, the input it names) -- every victim, every output flag, each layout
CASES = [
    ("plain/model.onnx", "--json", "plain/weights.bin"),
    ("plain/model.onnx", "--markdown", "plain/tokenizer.json"),
    ("plain/model.onnx", "--spectra", "plain/config.json"),
    ("plain/model.onnx", "--checkpoint", "plain/encoder_model.onnx"),
    ("models--org--tiny/snapshots/abc123/model.onnx", "--json", "models--org--tiny/snapshots/abc123/weights.bin"),
    ("models--org--tiny/snapshots/abc123/model.onnx", "--markdown", "models--org--tiny/blobs/sha-tokenizer.json"),
    ("models--org--tiny", "--spectra", "models--org--tiny/blobs/sha-weights.bin"),
    ("models--org--tiny/snapshots/abc123", "--checkpoint", "models--org--tiny/snapshots/abc123/config.json"),
]


@pytest.mark.parametrize("model,flag,victim", CASES)
def test_report_never_writes_an_input(layouts, model, flag, victim):
    before = snapshot(layouts)
    r = cli("report", model, "--calib", "ids.npy", "-q", flag, victim, cwd=layouts)
    assert_clean_failure(r, layouts, before, "input of this run")


@pytest.mark.parametrize("flag,victim", [("--junit", "plain/tokenizer.json"), ("--sarif", "plain/weights.bin"),
                                         ("--json", "plain/encoder_model.onnx"), ("--save-report", "plain/config.json")])
def test_check_never_writes_an_input(layouts, flag, victim):
    before = snapshot(layouts)
    r = cli("check", "plain/model.onnx", "--calib", "ids.npy", "--min-sui", "0", "-q", flag, victim, cwd=layouts)
    assert_clean_failure(r, layouts, before, "input of this run")


def test_scaling_never_writes_an_input(layouts):
    before = snapshot(layouts)
    r = cli("scaling", "plain/model.onnx", "models--org--tiny", "plain", "--calib", "ids.npy", "-q",
            "--json", "models--org--tiny/snapshots/abc123/tokenizer.json", cwd=layouts)
    assert_clean_failure(r, layouts, before, "input of this run")


def test_a_hard_link_to_an_input_is_that_input(layouts):
    os.link(layouts / "plain" / "tokenizer.json", layouts / "r" / "alias.json")
    before = snapshot(layouts)
    r = cli("report", "plain/model.onnx", "--calib", "ids.npy", "-q", "--json", "r/alias.json", cwd=layouts)
    assert_clean_failure(r, layouts, before, "input of this run")


def test_outputs_beside_a_model_file_are_still_allowed(layouts):
    """What is not an input may be written beside the model (reports next to it are common)."""
    r = cli("report", "plain/model.onnx", "--calib", "ids.npy", "-q", "--json", "plain/report.json", cwd=layouts)
    assert r.returncode == 0, r.stderr
    assert (layouts / "plain" / "report.json").is_file()


def test_transformers_js_layout(tmp_path):
    """repo/onnx/model.onnx reads repo/tokenizer.json: that file is an input too."""
    external_model(tmp_path / "repo" / "onnx")
    shutil.copy(TOKENIZER, tmp_path / "repo" / "tokenizer.json")
    ids(tmp_path / "ids.npy")
    before = snapshot(tmp_path)
    r = cli("report", "repo/onnx/model.onnx", "--calib", "ids.npy", "-q", "--json", "repo/tokenizer.json", cwd=tmp_path)
    assert_clean_failure(r, tmp_path, before, "input of this run")


@pytest.mark.parametrize("command", ["report", "check", "slim"])
def test_the_bundled_calibration_text_is_an_input_when_no_calib_is_given(tmp_path, monkeypatch, capsys, command):
    """Without --calib a run reads the package's own text: an output on it is refused (in process,
    with the bundled path pointed at a copy, so a failing test cannot damage the package)."""
    import sui_onnx.calib as calib
    from sui_onnx.cli import main
    from tests.robustness.clitools import model_folder

    text = tmp_path / "calib.txt"
    shutil.copy(calib.bundled_corpus(), text)
    monkeypatch.setattr(calib, "bundled_corpus", lambda: text)
    model = model_folder(tmp_path / "m")
    before = text.read_bytes()
    args = {"report": ["report", str(model), "--tokens", "256", "--checkpoint", str(text)],
            "check": ["check", str(model), "--tokens", "256", "--min-sui", "0", "--json", str(text)],
            "slim": ["slim", str(model), str(tmp_path / "out"), "--width", "8", "--tokens", "256", "--json", str(text)]}
    assert main(args[command]) == 2
    err = capsys.readouterr().err
    assert "input of this run" in err and err.count("\n") == 1
    assert text.read_bytes() == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("victim", ["texts/new.txt", "texts/sub/deeper.txt"])
def test_a_new_text_file_inside_a_calibration_folder_is_refused(layouts, victim):
    """A folder of text is read as every *.txt under it: a new .txt output there is not an input of
    this run, but the next run over the folder would calibrate on it. Other suffixes may go there."""
    from tests.robustness.clitools import model_folder

    model_folder(layouts / "m")
    (layouts / "texts" / "sub").mkdir(parents=True)
    (layouts / "texts" / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    before = snapshot(layouts)
    r = cli("report", "m", "--calib", "texts", "-q", "--markdown", victim, cwd=layouts)
    line = assert_clean_failure(r, layouts, before, "inside the text folder texts")
    assert "next run" in line
    ok = cli("report", "m", "--calib", "texts", "-q", "--markdown", "texts/report.md", cwd=layouts)
    assert ok.returncode == 0, ok.stderr
    assert (layouts / "texts" / "report.md").is_file()
