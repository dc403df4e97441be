"""Mixtures of experts: each expert is an FFN block of its own, measured on the tokens routed to it.

The graphs are tests/onnx_builders.tiny_moe (top-1 routing, experts as separate MatMuls, as
optimum exports Qwen3-MoE and DeepSeek-V3), checked against the same routing and FFNs written out
in NumPy; the stacked-weight form (one batched MatMul for all experts, as optimum exports GPT-OSS)
and onnxruntime-genai's fused MoE node are refused with one line.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from sui_onnx.graph import find_taps
from tests.onnx_builders import tiny_lm, tiny_moe
from tests.robustness.clitools import SIGNAL_AT_BATCH, cli, hook, one_error_line, snapshot

N_EXPERTS, D_FF, LAYERS = 3, 24, 2


def participation_ratio(h: np.ndarray) -> float:
    """Hard rank of the sample covariance of ``h`` [n, D], written out: (sum l)^2 / sum l^2."""
    c = np.cov(h, rowvar=False, bias=False)
    lam = np.clip(np.linalg.eigvalsh(c), 0, None)
    return float(lam.sum() ** 2 / (lam ** 2).sum())


@pytest.fixture()
def moe(tmp_path):
    built = tiny_moe(n_experts=N_EXPERTS, d_ff=D_FF, n_layers=LAYERS)
    built.save(tmp_path / "m")
    ids = np.random.default_rng(1).integers(0, 64, (24, 16))
    np.save(tmp_path / "ids.npy", ids)
    return built, ids, tmp_path


def test_each_expert_is_a_block_of_its_layer_without_an_order_warning(moe):
    built, _, _ = moe
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repeated layer numbers are experts, not a disagreement
        taps = find_taps(built.model)
    assert [t.layer for t in taps] == list(range(LAYERS * N_EXPERTS))
    assert [t.group for t in taps] == [i for i in range(LAYERS) for _ in range(N_EXPERTS)]
    assert [f"layers.{t.group}/mlp/experts.{t.layer % N_EXPERTS}/" in t.tensor for t in taps] == [True] * len(taps)
    assert {t.width for t in taps} == {D_FF}


def test_a_dense_model_has_no_groups():
    assert [t.group for t in find_taps(tiny_lm().model)] == [None, None]


def test_report_measures_each_expert_on_its_routed_tokens(moe):
    built, ids, work = moe
    r = cli("report", "m", "--calib", "ids.npy", "--device", "cpu", "--json", "r.json", cwd=work)
    assert r.returncode == 0, r.stderr
    report = json.loads((work / "r.json").read_text())
    want = [h for layer in built.expert_activations(ids) for h in layer]
    got = report["layers"]
    assert [x["tokens"] for x in got] == [len(h) for h in want]
    for layer in range(LAYERS):  # top-1: every token goes to exactly one expert of each layer
        assert sum(x["tokens"] for x in got[layer * N_EXPERTS:(layer + 1) * N_EXPERTS]) == ids.size
    assert report["calibration"]["tokens"] == ids.size
    for x, h in zip(got, want):
        assert x["hard_rank"] == pytest.approx(participation_ratio(h), rel=1e-4)
        assert x["group"] == x["layer"] // N_EXPERTS
    assert "mixture of experts" in r.stdout and "rows 0-2: layer 0" in r.stdout
    header = next(line for line in r.stdout.splitlines() if line.split()[:3] == ["layer", "D", "tokens"])
    rows = r.stdout.splitlines()[r.stdout.splitlines().index(header) + 2:][:len(got)]
    assert [int(row.split()[2].replace(",", "")) for row in rows] == [x["tokens"] for x in got]


def test_thin_data_budget_scales_by_the_least_routed_experts_share(moe):
    _, ids, work = moe
    np.save(work / "few.npy", ids[:6])  # 96 tokens: every expert has fewer than 4 D
    r = cli("report", "m", "--calib", "few.npy", "--device", "cpu", "--json", "r.json", "-q", cwd=work)
    assert r.returncode == 0, r.stderr
    report = json.loads((work / "r.json").read_text())
    seen = [x["tokens"] for x in report["layers"]]
    run = report["calibration"]["tokens"]
    assert run == 96 and max(seen) < run
    # the run that gives every expert 10 D of its own tokens, at the share of the run each one saw
    want = max(math.ceil(10 * D_FF * run / n) for n in seen if n)
    withheld = report["advice"]["withheld"]
    assert withheld["recommended_tokens"] == want > 10 * D_FF
    assert f"--tokens >= {want:,}" in r.stderr


def test_statistics_and_their_merge_keep_the_runs_token_count(moe):
    _, ids, work = moe
    np.save(work / "a.npy", ids[:12])
    np.save(work / "b.npy", ids[12:])
    for part in ("a", "b"):
        r = cli("report", "m", "--calib", f"{part}.npy", "--device", "cpu", "--checkpoint", f"{part}.npz", "-q", cwd=work)
        assert r.returncode == 0, r.stderr
    r = cli("merge", "a.npz", "b.npz", "-o", "ab.npz", cwd=work)
    assert r.returncode == 0 and f"{ids.size:,} calibration tokens" in r.stderr, r.stderr
    for stats, tokens in (("a.npz", ids.size // 2), ("ab.npz", ids.size)):
        r = cli("report", "m", "--stats", stats, "--json", "-", "-q", cwd=work)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["calibration"]["tokens"] == tokens  # not the first expert's share
        assert report["layers"][0]["tokens"] < tokens


def test_an_interrupted_run_resumes_though_experts_saw_fewer_tokens_than_the_run(moe):
    _, _, work = moe
    run = ("report", "m", "--calib", "ids.npy", "--batch-size", "2", "--device", "cpu", "-q")
    h = hook(work / "hook", SIGNAL_AT_BATCH.format(batch=5, sig="SIGINT"))
    r = cli(*run, "--checkpoint", "ck.npz", "--checkpoint-every", "100", cwd=work, hook=h)
    assert r.returncode == 130, r.stderr
    r = cli(*run, "--resume", "ck.npz", "--json", "resumed.json", cwd=work)
    assert r.returncode == 0, r.stderr
    r = cli(*run, "--json", "whole.json", cwd=work)
    a, b = (json.loads((work / n).read_text())["layers"] for n in ("resumed.json", "whole.json"))
    assert [x["tokens"] for x in a] == [x["tokens"] for x in b]
    assert [x["sui"] for x in a] == pytest.approx([x["sui"] for x in b], rel=1e-9)


def test_slim_narrows_every_expert_and_refuses_one_the_router_never_picked(moe):
    built, ids, work = moe
    r = cli("slim", "m", "out", "--width", "16", "--calib", "ids.npy", "--device", "cpu", "-q", cwd=work)
    assert r.returncode == 0, r.stderr
    record = json.loads((work / "out" / "slim.json").read_text())
    assert [x["width_after"] for x in record["layers"]] == [16] * (LAYERS * N_EXPERTS)
    assert [t.width for t in find_taps(onnx.load(str(work / "out" / "model.onnx")))] == [16] * (LAYERS * N_EXPERTS)
    np.save(work / "one.npy", ids[:1, :2])  # two tokens: an expert of each layer sees one at most
    before = snapshot(work)
    r = cli("slim", "m", "out2", "--width", "16", "--calib", "one.npy", "--device", "cpu", cwd=work)
    one_error_line(r, "fewer than 2 calibration tokens")
    assert snapshot(work) == before


def test_batched_experts_are_refused_not_pooled(tmp_path):
    tiny_moe(batched=True).save(tmp_path / "m")
    np.save(tmp_path / "ids.npy", np.random.default_rng(1).integers(0, 64, (4, 8)))
    for args in (("taps", "m"), ("report", "m", "--calib", "ids.npy"), ("slim", "m", "out", "--width", "8", "--calib", "ids.npy")):
        r = cli(*args, cwd=tmp_path)
        one_error_line(r, f"runs {N_EXPERTS} experts in one batched MatMul")
    assert not (tmp_path / "out").exists()


def test_fused_moe_nodes_are_named(tmp_path):
    node = helper.make_node("MoE", ["x", "router", "w1", "w2"], ["y"], domain="com.microsoft", name="moe")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                            for n in ("x", "router", "w1", "w2")],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "moe.onnx"))
    one_error_line(cli("taps", "moe.onnx", cwd=tmp_path), "fused into MoE nodes")


def test_python_warnings_print_as_one_sui_onnx_line(tmp_path):
    """A layer order the names contradict warns through the CLI as one line, without Python's
    file and line; --debug keeps Python's own format."""
    model = tiny_lm().model
    for node in model.graph.node:
        node.name = node.name.replace("/h.0/", "/h.X/").replace("/h.1/", "/h.0/").replace("/h.X/", "/h.1/")
    onnx.save(model, str(tmp_path / "m.onnx"))
    r = cli("taps", "m.onnx", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stderr.strip().splitlines() == [
        "sui-onnx: warning: FFN layer order from the graph structure disagrees with the layer numbers in node "
        "names ([1, 0]); using the structural order"]
    r = cli("taps", "m.onnx", "--debug", cwd=tmp_path)
    assert "UserWarning" in r.stderr


def test_fused_moe_nodes_beside_other_ffn_blocks_warn_that_they_are_not_measured():
    model = tiny_lm().model
    model.graph.node.append(helper.make_node("MoE", ["x2", "router", "w1", "w2"], ["moe_out"], domain="com.microsoft",
                                             name="moe"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        taps = find_taps(model)
    assert len(taps) == 2
    assert [str(w.message) for w in caught] == [
        "1 MoE node computes FFNs (experts) that cannot be tapped: only the other FFN blocks are measured"]
