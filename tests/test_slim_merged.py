"""slim on an optimum merged decoder (If(use_cache_branch) over the decoder without and with past,
the weights stored once in the outer graph): both branches are narrowed alike, to the very model
slim makes of the plain decoder. The merged graphs are built from the committed fixtures by
tests/graph_synthetic.merged_decoder; real optimum merges of six architectures are checked against
PyTorch in tests/test_architectures.py (export stack)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from tests.graph_synthetic import merged_decoder

FIXTURES = Path(__file__).parent / "fixtures"
ort = pytest.importorskip("onnxruntime")
SLIM_ARGS = ("--ratio", 0.5, "--align", 16, "--tokens", 1024, "--seq-len", 32, "-q")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="100"))


def constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes holding scalars or 1-D integer vectors become initializers, so that
    merged_decoder(branch_constants=True) keeps them in the branches, as optimum's merge does."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = []
    for node in g.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and (len(value.dims) == 0 or (len(value.dims) == 1 and value.data_type == TensorProto.INT64)):
            t = onnx.TensorProto()
            t.CopyFrom(value)
            t.name = node.output[0]
            g.initializer.append(t)
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return out


def merged_folder(name: str, folder: Path, branch_constants: bool = False) -> Path:
    model = onnx.load(str(FIXTURES / name / "model.onnx"))
    if branch_constants:
        model = constants_as_initializers(model)
    folder.mkdir(parents=True)
    merged = merged_decoder(model, branch_constants=branch_constants)
    onnx.checker.check_model(merged)
    path = folder / "decoder_model_merged.onnx"
    onnx.save(merged, str(path))
    shutil.copyfile(FIXTURES / name / "tokenizer.json", folder / "tokenizer.json")
    return path


def feeds(session, ids: np.ndarray, past: dict | None = None, use_cache: bool | None = None) -> dict:
    b, t = ids.shape
    p = next(iter(past.values())).shape[2] if past else 0
    out = {}
    for inp in session.get_inputs():
        if inp.name == "input_ids":
            out[inp.name] = ids
        elif inp.name == "attention_mask":
            out[inp.name] = np.ones((b, p + t), np.int64)
        elif inp.name == "position_ids":
            out[inp.name] = np.tile(np.arange(p, p + t), (b, 1))
        elif inp.name == "use_cache_branch":
            out[inp.name] = np.array([bool(past) if use_cache is None else use_cache])
        elif inp.name.startswith("past_key_values"):
            out[inp.name] = past[inp.name] if past else np.zeros((b, inp.shape[1], 0, inp.shape[3]), np.float32)
    return out


def run(path: Path, ids: np.ndarray, past: dict | None = None, use_cache: bool | None = None) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds(session, ids, past, use_cache))))


@pytest.mark.parametrize("name,branch_constants", [("llama_past", False), ("llama_past", True), ("gpt2_w128", True),
                                                   ("phi3_w128", False), ("gemma_w128", False)])
def test_a_merged_decoder_is_narrowed_in_both_branches_to_the_plain_decoders_slim(tmp_path, name, branch_constants):
    """Same neurons, same refit, same logits as slim of the decoder itself; the with-past branch
    computes the same narrowed model (a step with the cache gives the full run's last logits);
    every new weight is stored once."""
    merged = merged_folder(name, tmp_path / "m", branch_constants)
    r = cli("slim", merged, tmp_path / "slim_merged", *SLIM_ARGS)
    assert r.returncode == 0, r.stderr
    r = cli("slim", FIXTURES / name, tmp_path / "slim_plain", *SLIM_ARGS)
    assert r.returncode == 0, r.stderr
    rec_m, rec_p = (json.loads((tmp_path / f / "slim.json").read_text()) for f in ("slim_merged", "slim_plain"))
    assert [x["kept"] for x in rec_m["layers"]] == [x["kept"] for x in rec_p["layers"]]
    assert [x["width_after"] for x in rec_m["layers"]] == [x["width_before"] // 2 for x in rec_p["layers"]]
    assert rec_m["parameters"] == rec_p["parameters"]  # the shared weights are counted, and stored, once

    out = tmp_path / "slim_merged" / "model.onnx"
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == [o.name for o in onnx.load(str(merged)).graph.output]
    assert [n.op_type for n in model.graph.node] == ["If"]
    plain = onnx.load(str(tmp_path / "slim_plain" / "model.onnx"))
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    sizes = sorted(int(np.prod(t.dims)) for t in plain.graph.initializer if t.data_type in floats)
    assert sorted(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats) == sizes
    for branch in model.graph.node[0].attribute:
        assert all(t.data_type not in floats or not t.dims for t in branch.g.initializer)

    ids = np.random.default_rng(0).integers(0, 500, (2, 12))
    want = run(tmp_path / "slim_plain" / "model.onnx", ids)["logits"]
    got = run(out, ids, use_cache=False)
    np.testing.assert_allclose(got["logits"], want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert np.abs(want - run(merged, ids, use_cache=False)["logits"]).max() > 1e-3  # it was narrowed
    if "present.0.key" in got:  # the with-past branch, fed the cache of all ids but the last
        first = run(out, ids[:, :-1], use_cache=False)
        past = {k.replace("present", "past_key_values"): v for k, v in first.items() if k.startswith("present")}
        step = run(out, ids[:, -1:], past)
        np.testing.assert_allclose(step["logits"][:, -1], want[:, -1], rtol=0, atol=1e-5 * np.abs(want).max())
    else:  # a copy of the decoder in the with-past branch: the same narrowed model
        np.testing.assert_allclose(run(out, ids, use_cache=True)["logits"], want, rtol=0, atol=1e-5 * np.abs(want).max())

    taps = json.loads(cli("taps", out, "--json").stdout)
    assert [t["width"] for t in taps] == [x["width_after"] for x in rec_m["layers"]]


def test_a_merged_decoder_whose_branches_do_not_share_a_weight_is_refused(tmp_path):
    merged = merged_folder("llama_past", tmp_path / "m")
    model = onnx.load(str(merged))
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    down = next(n for n in then.node if n.op_type == "MatMul" and "down_proj" in n.name)
    weight = next(t for t in model.graph.initializer if t.name == down.input[1])
    copy = numpy_helper.from_array(numpy_helper.to_array(weight).copy(), weight.name + ".then")
    model.graph.initializer.append(copy)
    down.input[1] = copy.name
    onnx.save(model, str(merged))
    r = cli("slim", merged, tmp_path / "s", "--ratio", 0.5, "--tokens", 512, "--seq-len", 32)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "the merged decoder's two branches do not share its weights" in r.stderr
    assert not (tmp_path / "s").exists()


def test_report_eval_measures_a_merged_decoders_narrower_widths(tmp_path):
    merged = merged_folder("llama_past", tmp_path / "m")
    heldout = Path(__file__).parent.parent / "sui_onnx" / "data" / "heldout.txt"
    r = cli("report", merged, "--eval", heldout, "--eval-tokens", 512, "--eval-seq-len", 32, "--tokens", 1024,
            "--seq-len", 32, "--json", tmp_path / "r.json", "-q")
    assert r.returncode == 0, r.stderr
    advice = json.loads((tmp_path / "r.json").read_text())["advice"]
    assert advice["measured"], advice


@pytest.mark.parametrize("differ", [False, True])
def test_weights_held_in_each_branch_are_narrowed_once_when_equal_and_refused_when_not(tmp_path, differ):
    """A merge that left a down weight in each branch under one name: equal copies are one weight
    (narrowed once, stored once in the outer graph); different ones are two models' weights."""
    merged = merged_folder("llama_past", tmp_path / "m")
    model = onnx.load(str(merged))
    branches = {a.name: a.g for a in model.graph.node[0].attribute}
    down = next(n for n in branches["else_branch"].node if n.op_type == "MatMul" and "down_proj" in n.name)
    weight = next(t for t in model.graph.initializer if t.name == down.input[1])
    model.graph.initializer.remove(weight)
    for which, g in branches.items():
        value = numpy_helper.to_array(weight)
        g.initializer.append(numpy_helper.from_array(value * 1.5 if differ and which == "then_branch" else value, weight.name))
    onnx.save(model, str(merged))
    r = cli("slim", merged, tmp_path / "s", *SLIM_ARGS)
    if differ:
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "do not share its weights" in r.stderr, r.stderr
        assert not (tmp_path / "s").exists()
        return
    assert r.returncode == 0, r.stderr
    out = onnx.load(str(tmp_path / "s" / "model.onnx"))
    assert all(t.name != weight.name for a in out.graph.node[0].attribute for t in a.g.initializer)
    ids = np.random.default_rng(1).integers(0, 500, (2, 10))
    first = run(tmp_path / "s" / "model.onnx", ids[:, :-1], use_cache=False)
    past = {k.replace("present", "past_key_values"): v for k, v in first.items() if k.startswith("present")}
    full = run(tmp_path / "s" / "model.onnx", ids, use_cache=False)["logits"]
    step = run(tmp_path / "s" / "model.onnx", ids[:, -1:], past)["logits"]
    np.testing.assert_allclose(step[:, -1], full[:, -1], rtol=0, atol=1e-5 * np.abs(full).max())
