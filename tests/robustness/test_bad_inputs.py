"""Bad inputs through the real CLI: exit 2, one line on stderr, no traceback, inputs byte-identical
afterwards, no partial output file."""

import hashlib
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_builders import tiny_lm

TOKENIZER = Path(str(resources.files("sui_onnx") / "data" / "demo" / "tokenizer.json"))


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, COLUMNS="100"))


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean_failure(r, folder: Path, before: dict, match: str):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sui-onnx: error:"), r.stderr
    assert match.lower() in lines[0].lower(), lines[0]
    assert snapshot(folder) == before  # inputs identical, no partial outputs left behind




def conv_net(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture()
def work(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path


def test_garbage_truncated_and_empty_models(work):
    good = tiny_lm().model.SerializeToString()
    (work / "garbage.onnx").write_bytes(os.urandom(4096))
    (work / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (work / "empty.onnx").write_bytes(b"")
    (work / "notes.onnx").write_text("hello, I am not a model\n")
    for name in ("garbage.onnx", "truncated.onnx", "empty.onnx", "notes.onnx"):
        before = snapshot(work)
        r = cli("report", work / name, "--json", work / "out" / "r.json", cwd=work)
        assert_clean_failure(r, work, before, name)


def test_folder_without_model_and_missing_file(work):
    (work / "empty_dir").mkdir()
    before = snapshot(work)
    assert_clean_failure(cli("taps", work / "empty_dir", cwd=work), work, before, "model.onnx")
    assert_clean_failure(cli("report", work / "nope.onnx", cwd=work), work, before, "nope.onnx")


def test_graph_without_ffn(work):
    conv_net(work / "conv.onnx")
    before = snapshot(work)
    assert_clean_failure(cli("report", work / "conv.onnx", "--json", work / "out" / "r.json", cwd=work), work, before, "no FFN")


def _external(work: Path, location: str) -> Path:
    m = tiny_lm().model
    for t in m.graph.initializer:
        if t.name == "/h.0/mlp/w1":
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", "0"), ("length", str(16 * 48 * 4))):
                e = t.external_data.add()
                e.key, e.value = k, v
    d = work / "ext"
    d.mkdir()
    onnx.save(m, str(d / "model.onnx"))
    return d


def test_external_data_path_traversal_is_refused(work):
    (work / "secret.bin").write_bytes(b"\0" * 4096)
    d = _external(work, "../secret.bin")
    before = snapshot(work)
    assert_clean_failure(cli("report", d, "--json", work / "out" / "r.json", cwd=work), work, before, "path traversal refused")


def test_missing_external_data_is_named(work):
    d = _external(work, "weights.bin")
    before = snapshot(work)
    assert_clean_failure(cli("report", d, cwd=work), work, before, "weights.bin")


def test_inputs_the_runner_cannot_feed(work):
    m = tiny_lm().model
    m.graph.input.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3, 8, 8]))
    onnx.save(m, str(work / "m.onnx"))
    np.save(work / "ids.npy", np.zeros((2, 8), np.int64))
    before = snapshot(work)
    assert_clean_failure(cli("report", work / "m.onnx", "--calib", work / "ids.npy", "--json", work / "out" / "r.json", cwd=work),
                         work, before, "pixel_values")


def test_a_model_exported_with_a_fixed_input_shape_names_the_options_that_match_it(work):
    m = tiny_lm().model
    ids = next(i for i in m.graph.input if i.name == "input_ids")
    for dim, size in zip(ids.type.tensor_type.shape.dim, (1, 16)):
        dim.Clear()
        dim.dim_value = size
    onnx.save(m, str(work / "m.onnx"))
    np.save(work / "ids.npy", np.zeros((4, 8), np.int64))
    before = snapshot(work)
    r = cli("report", work / "m.onnx", "--calib", work / "ids.npy", "--json", work / "out" / "r.json", cwd=work)
    assert_clean_failure(r, work, before, "fixed shape")
    assert "--seq-len 16" in r.stderr


@pytest.mark.parametrize("tokenizer", [None, b"{ not json", b"\x00\x01"])
def test_missing_or_corrupt_tokenizer(work, tokenizer):
    tiny_lm().save(work / "m")
    if tokenizer is not None:
        (work / "m" / "tokenizer.json").write_bytes(tokenizer)
    (work / "c.txt").write_text("Some calibration text. " * 50)
    before = snapshot(work)
    assert_clean_failure(cli("report", work / "m", "--calib", work / "c.txt", cwd=work), work, before, "tokenizer.json")


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
                                           (b"na\xefve caf\xe9", "UTF-8")])
def test_bad_calibration_text(work, content, match):
    tiny_lm().save(work / "m")
    shutil.copy(TOKENIZER, work / "m" / "tokenizer.json")
    (work / "c.txt").write_bytes(content)
    before = snapshot(work)
    assert_clean_failure(cli("report", work / "m", "--calib", work / "c.txt", "--json", work / "out" / "r.json", cwd=work),
                         work, before, match)


def test_tokens_zero_is_a_usage_error(work):
    tiny_lm().save(work / "m")
    before = snapshot(work)
    r = cli("report", work / "m", "--tokens", "0", cwd=work)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--tokens" in r.stderr
    assert snapshot(work) == before


def test_calibration_shorter_than_one_window_is_flagged_not_fatal(work):
    tiny_lm(vocab=4096).save(work / "m")
    shutil.copy(TOKENIZER, work / "m" / "tokenizer.json")
    (work / "c.txt").write_text("A very short calibration text indeed.")
    r = cli("report", work / "m", "--calib", work / "c.txt", "--json", work / "out" / "r.json", cwd=work)
    assert r.returncode == 0, r.stderr
    import json

    layers = json.loads((work / "out" / "r.json").read_text())["layers"]
    assert all(x["status"] == "rank_capped" for x in layers)


def test_non_finite_activations_mark_the_layer_and_the_rest_goes_on(work):
    lm = tiny_lm(vocab=64)
    for t in lm.model.graph.initializer:
        if t.name == "/h.1/mlp/b1":  # an overflowed unit in layer 1 only (as an fp16 overflow leaves)
            bias = numpy_helper.to_array(t).copy()
            bias[3] = np.inf
            t.CopyFrom(numpy_helper.from_array(bias, t.name))
    lm.save(work / "m")
    np.save(work / "ids.npy", np.random.default_rng(0).integers(0, 64, (8, 16)))
    r = cli("report", work / "m", "--calib", work / "ids.npy", "--json", work / "out" / "r.json", cwd=work)
    assert r.returncode == 0, r.stderr
    import json

    layers = json.loads((work / "out" / "r.json").read_text())["layers"]
    assert layers[0]["status"] in ("ok", "low_tokens") and layers[0]["sui"] is not None
    assert layers[1]["status"] == "non_finite" and layers[1]["sui"] is None
    assert "NaN" in layers[1]["message"] and "/h.1/mlp" in layers[1]["message"]


def test_unwritable_output_leaves_nothing_behind(work):
    tiny_lm().save(work / "m")
    np.save(work / "ids.npy", np.zeros((2, 8), np.int64))
    before = snapshot(work)
    r = cli("report", work / "m", "--calib", work / "ids.npy", "--json", work / "missing_dir" / "r.json", cwd=work)
    assert_clean_failure(r, work, before, "does not exist")
