"""Seq2seq decoders (T5, BART as optimum exports them): the encoder runs on each batch and feeds
the decoder's encoder_hidden_states. Tiny onnx.helper graphs with NumPy references; the real T5 and
BART exports are checked against PyTorch hooks in test_architectures.py (export marker)."""

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from sui_onnx.graph import find_taps, load_model, tapped_model
from sui_onnx.graph.source import file_sha256
from sui_onnx.metrics import spectral_metrics
from sui_onnx.runner import TapRunner

from .onnx_builders import tiny_lm, tiny_seq2seq

SCHEMA = json.loads((Path(str(resources.files("sui_onnx"))) / "schema" / "report.schema.json").read_text())
VOCAB = 64


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ, COLUMNS="80"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(model, folder with encoder_model.onnx + decoder_model.onnx, calibration ids .npy)."""
    folder = tmp_path_factory.mktemp("s2s")
    model = tiny_seq2seq(VOCAB)
    model.save(folder)
    ids = np.random.default_rng(7).integers(0, VOCAB, (24, 32))
    np.save(folder / "ids.npy", ids)
    return model, folder, folder / "ids.npy"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tapped_decoder_activations_equal_the_reference(pair):
    model, folder, _ = pair
    src = load_model(folder / "decoder_model.onnx")
    taps = find_taps(src.model)
    assert [t.width for t in taps] == [48, 48]
    runner = TapRunner(tapped_model(src, taps).SerializeToString(), [t.tensor for t in taps], "cpu",
                       encoder=folder / "encoder_model.onnx")
    ids = np.random.default_rng(0).integers(0, VOCAB, (3, 9))
    outs = runner.run(ids, [t.width for t in taps])
    for got, ref in zip(outs, model.post_activations(ids)):
        np.testing.assert_allclose(got, ref, atol=2e-6)


def test_report_finds_the_encoder_beside_the_decoder(pair, tmp_path):
    model, folder, ids_path = pair
    out = tmp_path / "r.json"
    r = cli("report", folder / "decoder_model.onnx", "--calib", ids_path, "--batch-size", "5", "--json", out, "-q")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    jsonschema.validate(data, SCHEMA)
    enc = folder / "encoder_model.onnx"
    assert data["model"]["encoder"] == {"path": str(enc), "sha256": file_sha256(enc)}
    # every layer's metrics equal those of the reference activations' covariance (two-pass, float64)
    ids = np.load(ids_path)
    for layer, act in zip(data["layers"], model.post_activations(ids)):
        x = act.reshape(-1, act.shape[-1])
        ev = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1].clip(0)
        ref = spectral_metrics(ev).to_dict()
        for key in ("hard_rank", "soft_rank", "concentration", "sui"):
            assert layer[key] == pytest.approx(ref[key], rel=1e-4), key


def test_explicit_encoder_anywhere_gives_the_same_numbers(pair, tmp_path):
    _, folder, ids_path = pair
    elsewhere = tmp_path / "enc" / "my_encoder.onnx"
    elsewhere.parent.mkdir()
    shutil.copyfile(folder / "encoder_model.onnx", elsewhere)
    lone = tmp_path / "dec"
    lone.mkdir()
    shutil.copyfile(folder / "decoder_model.onnx", lone / "decoder_model.onnx")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("report", folder / "decoder_model.onnx", "--calib", ids_path, "--json", a, "-q").returncode == 0
    r = cli("report", lone / "decoder_model.onnx", "--calib", ids_path, "--encoder", elsewhere, "--json", b, "-q")
    assert r.returncode == 0, r.stderr
    la, lb = json.loads(a.read_text())["layers"], json.loads(b.read_text())["layers"]
    assert [x["hard_rank"] for x in la] == [x["hard_rank"] for x in lb]
    assert json.loads(b.read_text())["model"]["encoder"]["path"] == str(elsewhere)


def test_check_gates_a_decoder_too(pair, tmp_path):
    _, folder, ids_path = pair
    r = cli("check", folder / "decoder_model.onnx", "--calib", ids_path, "--min-sui", "0.001")
    assert r.returncode == 0, r.stderr + r.stdout
    r = cli("check", folder / "decoder_model.onnx", "--calib", ids_path, "--min-sui", "0.999")
    assert r.returncode == 1


@pytest.mark.parametrize("case", ["missing", "self", "decoder", "not_seq2seq", "width", "nonexistent"])
def test_encoder_errors_are_one_line_exit_2_and_touch_nothing(pair, tmp_path, case):
    model, folder, ids_path = pair
    work = tmp_path / "w"
    work.mkdir()
    shutil.copyfile(folder / "decoder_model.onnx", work / "decoder_model.onnx")
    target, extra, expect = work / "decoder_model.onnx", [], ""
    if case == "missing":
        expect = "pass --encoder"
    elif case == "self":
        extra, expect = ["--encoder", target], "the model itself"
    elif case == "decoder":
        other = tmp_path / "other.onnx"
        shutil.copyfile(folder / "decoder_model.onnx", other)
        extra, expect = ["--encoder", other], "not a decoder"
    elif case == "not_seq2seq":
        target = tiny_lm(VOCAB).save(work, "lm.onnx")
        extra, expect = ["--encoder", folder / "encoder_model.onnx"], "not a seq2seq or vision-language decoder"
    elif case == "width":
        narrow = tiny_seq2seq(VOCAB, d_model=8)
        enc, _ = narrow.save(tmp_path / "narrow")
        extra, expect = ["--encoder", enc], "expects 16"
    elif case == "nonexistent":
        extra, expect = ["--encoder", tmp_path / "nope.onnx"], "--encoder"
    before = _snapshot(work)
    r = cli("report", target, "--calib", ids_path, *extra, "--json", work / "out.json")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert expect in r.stderr
    assert _snapshot(work) == before  # nothing written, nothing changed


@pytest.mark.parametrize("command", ["report", "check"])
def test_an_output_never_overwrites_the_encoder_found_beside_the_decoder(pair, tmp_path, command):
    _, folder, ids_path = pair
    work = tmp_path / "w"
    shutil.copytree(folder, work)
    before = _snapshot(work)
    extra = ["--json"] if command == "report" else ["--min-sui", "0.1", "--junit"]
    r = cli(command, work / "decoder_model.onnx", "--calib", ids_path, *extra, work / "encoder_model.onnx")
    assert r.returncode == 2 and "input of this run" in r.stderr
    assert _snapshot(work) == before
