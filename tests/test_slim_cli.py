"""`sui-onnx slim` and `report --eval` through the real entry point, on hand-built graphs whose answer
is known and on the committed fixtures of every supported FFN architecture."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

FIXTURES = Path(__file__).parent / "fixtures"
HELDOUT = Path(__file__).parent.parent / "sui_onnx" / "data" / "heldout.txt"
ort = pytest.importorskip("onnxruntime")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, COLUMNS="100"))


def relu_lm(folder: Path, vocab=50, d_model=12, k=6, copies=4, n_layers=2, seed=0, gemm=False, post_norm=False) -> Path:
    """A residual stack of ReLU FFNs whose D = k * copies neurons are positive multiples of k base
    neurons (relu(c z) = c relu(z)): every hidden vector lies in the span of k neurons, so a width-k
    FFN with the least-squares refit computes exactly the same outputs."""
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((vocab, d_model)) * 0.5).astype(np.float32)
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(emb.T.copy(), "emb_t")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["x0"])]
    x = "x0"
    d = k * copies
    for i in range(n_layers):
        base_w = rng.standard_normal((d_model, k)) / math.sqrt(d_model)
        base_b = rng.standard_normal(k) * 0.3
        scale = rng.uniform(0.5, 2.0, size=(copies, k))
        w1 = np.concatenate([base_w * s for s in scale], axis=1).astype(np.float32)
        b1 = np.concatenate([base_b * s for s in scale]).astype(np.float32)
        w2 = (rng.standard_normal((d, d_model)) * 2.0 / math.sqrt(d)).astype(np.float32)  # the FFN matters
        b2 = (rng.standard_normal(d_model) * 0.1).astype(np.float32)
        p = f"l{i}"
        inits += [numpy_helper.from_array(b1, f"{p}.b1"), numpy_helper.from_array(b2, f"{p}.b2")]
        if gemm:  # GPT-2 style: Gemm with a bias input, transB on the down projection
            inits += [numpy_helper.from_array(w1, f"{p}.w1"), numpy_helper.from_array(w2.T.copy(), f"{p}.w2t"),
                      numpy_helper.from_array(np.array([-1, d_model], np.int64), f"{p}.flat"),
                      numpy_helper.from_array(np.array([-1, d], np.int64), f"{p}.flat_d")]
            nodes += [helper.make_node("Shape", [x], [f"{p}.shape"]),
                      helper.make_node("Reshape", [x, f"{p}.flat"], [f"{p}.x2"]),
                      helper.make_node("Gemm", [f"{p}.x2", f"{p}.w1", f"{p}.b1"], [f"{p}.up"]),
                      helper.make_node("Relu", [f"{p}.up"], [f"{p}.act"]),
                      helper.make_node("Reshape", [f"{p}.act", f"{p}.flat_d"], [f"{p}.act2"]),
                      helper.make_node("Gemm", [f"{p}.act2", f"{p}.w2t", f"{p}.b2"], [f"{p}.down2"], transB=1),
                      helper.make_node("Reshape", [f"{p}.down2", f"{p}.shape"], [f"{p}.down"])]
        else:
            inits += [numpy_helper.from_array(w1, f"{p}.w1"), numpy_helper.from_array(w2, f"{p}.w2")]
            nodes += [helper.make_node("MatMul", [x, f"{p}.w1"], [f"{p}.mm1"]),
                      helper.make_node("Add", [f"{p}.mm1", f"{p}.b1"], [f"{p}.up"]),
                      helper.make_node("Relu", [f"{p}.up"], [f"{p}.act"]),
                      helper.make_node("MatMul", [f"{p}.act", f"{p}.w2"], [f"{p}.mm2"]),
                      helper.make_node("Add", [f"{p}.mm2", f"{p}.b2"], [f"{p}.down"])]
        out = f"{p}.down"
        if post_norm:  # Gemma-style: the FFN output is RMS-normalized before it joins the residual
            inits += [numpy_helper.from_array(np.array(2.0, np.float32), f"{p}.two"),
                      numpy_helper.from_array(np.array(1e-6, np.float32), f"{p}.eps"),
                      numpy_helper.from_array(rng.uniform(0.1, 5.0, size=d_model).astype(np.float32), f"{p}.gain")]
            nodes += [helper.make_node("Pow", [out, f"{p}.two"], [f"{p}.sq"]),
                      helper.make_node("ReduceMean", [f"{p}.sq"], [f"{p}.ms"], axes=[-1], keepdims=1),
                      helper.make_node("Add", [f"{p}.ms", f"{p}.eps"], [f"{p}.mse"]),
                      helper.make_node("Sqrt", [f"{p}.mse"], [f"{p}.rms"]),
                      helper.make_node("Div", [out, f"{p}.rms"], [f"{p}.unit"]),
                      helper.make_node("Mul", [f"{p}.unit", f"{p}.gain"], [f"{p}.normed"])]
            out = f"{p}.normed"
        nodes.append(helper.make_node("Add", [x, out], [f"x{i + 1}"]))
        x = f"x{i + 1}"
    nodes.append(helper.make_node("MatMul", [x, "emb_t"], ["logits"]))
    graph = helper.make_graph(nodes, "relu_lm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    ids = np.random.default_rng(seed + 1).integers(0, vocab, size=(40, 32))
    np.save(folder.parent / f"{folder.name}_ids.npy", ids)
    return folder / "model.onnx"


def logits(path: Path, ids: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input_ids": ids.astype(np.int64)})[0]


@pytest.mark.parametrize("gemm,post_norm", [(False, False), (True, False), (False, True)],
                         ids=["matmul", "gemm", "post-norm"])
def test_slimmed_to_the_span_the_model_computes_the_same_outputs(tmp_path, gemm, post_norm):
    model = relu_lm(tmp_path / "m", gemm=gemm, post_norm=post_norm)
    ids_file = tmp_path / "m_ids.npy"
    r = cli("slim", model, tmp_path / "out", "--width", 6, "--calib", ids_file, "--ridge", 0, "-q")
    assert r.returncode == 0, r.stderr
    probe = np.random.default_rng(9).integers(0, 50, size=(3, 17))
    a, b = logits(model, probe), logits(tmp_path / "out" / "model.onnx", probe)
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())
    record = json.loads((tmp_path / "out" / "slim.json").read_text())
    assert record["schema"] == "sui-onnx/slim"
    assert [x["width_after"] for x in record["layers"]] == [6, 6]
    assert [x["width_before"] for x in record["layers"]] == [24, 24]
    # an FFN output normalized on its own is fitted token-weighted (the relative error counts)
    assert [x["token_weighting"] for x in record["layers"]] == (["rms", "rms"] if post_norm else [None, None])
    # FFN parameters: 2 layers x (12 x 24 up + 24 up bias + 24 x 12 down + 12 down bias) before,
    # (12 x 6 + 6 + 6 x 12 + 12) after
    assert record["parameters"]["ffn_before"] == 2 * (12 * 24 + 24 + 24 * 12 + 12)
    assert record["parameters"]["ffn_after"] == 2 * (12 * 6 + 6 + 6 * 12 + 12)
    counted = sum(int(np.prod(t.dims)) for t in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer
                  if t.data_type == TensorProto.FLOAT)
    assert record["parameters"]["total_after"] == counted
    taps = json.loads(cli("taps", tmp_path / "out", "--json").stdout)
    assert [t["width"] for t in taps] == [6, 6]


def sampled_text(model: Path, n: int, length: int, seed: int) -> np.ndarray:
    """Token chains drawn from the model itself (its next-token distribution depends only on the
    current token): on such text the original is the true source, so narrowing can only add loss."""
    vocab = 50
    table = logits(model, np.arange(vocab)[None])[0].astype(np.float64)
    p = np.exp(table - table.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), dtype=np.int64)
    ids[:, 0] = rng.integers(0, vocab, size=n)
    for t in range(1, length):
        ids[:, t] = [rng.choice(vocab, p=p[i]) for i in ids[:, t - 1]]
    return ids


def test_the_search_finds_the_span_width_and_records_every_probe(tmp_path):
    model = relu_lm(tmp_path / "m", k=8, copies=4)
    np.save(tmp_path / "held.npy", sampled_text(model, 40, 64, seed=3))
    np.save(tmp_path / "calib.npy", np.load(tmp_path / "m_ids.npy"))
    r = cli("slim", model, tmp_path / "out", "--max-loss-increase", "1e-4", "--calib", tmp_path / "calib.npy",
            "--eval", tmp_path / "held.npy", "--align", 4, "--ridge", 0)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "out" / "slim.json").read_text())
    # 4 neurons cannot carry 8 independent ones; 8 reproduce the model exactly
    assert [x["width_after"] for x in record["layers"]] == [8, 8]
    probes = {p["width"]: p for p in record["search"]}
    assert 8 in probes and probes[8]["within"] and not probes[4]["within"]
    assert abs(record["eval"]["worst_delta_ce"]) <= 1e-4
    assert all(abs(p["worst_delta_ce"]) <= 1e-4 for p in record["search"] if p["width"] >= 8)
    assert record["eval"]["sources"][0]["held_out"] is True
    assert not any("width search" in w for w in record["warnings"])
    # a search measured on one window has no standard error behind its verdicts: it says so
    np.save(tmp_path / "one.npy", np.load(tmp_path / "held.npy")[:1])
    r = cli("slim", model, tmp_path / "out1", "--max-loss-increase", "1e-4", "--calib", tmp_path / "calib.npy",
            "--eval", tmp_path / "one.npy", "--align", 4, "--ridge", 0)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "out1" / "slim.json").read_text())
    assert any("the width search cannot tell widths apart" in w and "single window" in w for w in record["warnings"])


def test_a_search_that_finds_no_narrower_width_names_each_probe_and_its_cost(tmp_path):
    import re

    model = relu_lm(tmp_path / "m", k=8, copies=1)  # 8 independent neurons: every narrower width costs
    np.save(tmp_path / "held.npy", sampled_text(model, 40, 64, seed=3))
    np.save(tmp_path / "calib.npy", np.load(tmp_path / "m_ids.npy"))
    r = cli("slim", model, tmp_path / "out", "--max-loss-increase", "1e-6", "--calib", tmp_path / "calib.npy",
            "--eval", tmp_path / "held.npy", "--align", 2, "--ridge", 0, "-q")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    found = re.search(r"no width below 8 keeps dCE <= 1e-06 nats on every --eval source \(probes, worst dCE: (.*)\): "
                      r"nothing was written", r.stderr)
    assert found, r.stderr
    probes = [p.split() for p in found.group(1).split(", ")]
    assert [int(w) for w, _ in probes] == sorted(int(w) for w, _ in probes) and all(int(w) < 8 for w, _ in probes)
    assert all(float(d) > 1e-6 for _, d in probes)
    assert not (tmp_path / "out").exists()


def test_report_eval_measures_the_ladder_and_recommends_the_smallest_width_within_the_limit(tmp_path):
    model = relu_lm(tmp_path / "m", k=6, copies=8)  # D = 48: the ladder is 8 (too few? 6 suffice), 12, 24, 36
    ids = np.load(tmp_path / "m_ids.npy")
    np.save(tmp_path / "held.npy", ids[:10])
    np.save(tmp_path / "calib.npy", ids[10:])
    out = tmp_path / "r.json"
    r = cli("report", model, "--calib", tmp_path / "calib.npy", "--eval", tmp_path / "held.npy", "--align", 2,
            "--json", out)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    m = data["advice"]["measured"]
    assert data["schema_version"] == 2
    assert [row["label"].split(" ")[0] for row in m["ladder"]][:4] == ["D/8", "D/4", "D/2", "3D/4"]
    assert m["ladder"][0]["widths"] == [6, 6]
    for row in m["ladder"]:  # every rung holds the span of 6 neurons: exact up to the default ridge
        assert abs(row["slim"]["worst_delta_ce"]) < 5e-3
    assert m["recommended_width"] == 6
    assert "width advice (measured)" in r.stdout and "recommended FFN width 6 of 48" in r.stdout
    # the gate's --max-width-ratio checks the measured width a report --eval recommends, and says so
    gate = cli("check", out, "--max-width-ratio", "0.125", "--json", tmp_path / "g.json")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    row = next(c for c in json.loads((tmp_path / "g.json").read_text())["checks"] if c["rule_id"] == "sui-onnx/max-width-ratio")
    assert row["value"] == pytest.approx(6 / 48) and "measured, dCE <= 0.01 nats" in row["message"], row
    assert row["basis"] == "measured, dCE <= 0.01 nats" and "measured, dCE <= 0.01" in " ".join(gate.stdout.split())
    assert cli("check", out, "--max-width-ratio", "0.12").returncode == 1


def test_report_eval_recommends_nothing_from_a_single_window_and_flags_a_noisy_one(tmp_path):
    model = relu_lm(tmp_path / "m", k=6, copies=8)
    ids = np.load(tmp_path / "m_ids.npy")
    np.save(tmp_path / "calib.npy", ids[10:])
    np.save(tmp_path / "one.npy", ids[:1])  # one window: its dCE has no standard error
    r = cli("report", model, "--calib", tmp_path / "calib.npy", "--eval", tmp_path / "one.npy", "--align", 2,
            "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "r.json").read_text())["advice"]["measured"]
    assert min(row["slim"]["worst_delta_ce"] for row in m["ladder"]) <= m["max_loss_increase"]  # one passed
    assert m["recommended_width"] is None and "single window" in m["unresolved"]
    gate = cli("check", tmp_path / "r.json", "--max-width-ratio", "1")  # nothing measured to check: a breach
    assert gate.returncode == 1 and "unresolved" in gate.stdout, gate.stdout
    assert "no width recommended: the held-out measurement cannot tell" in r.stdout
    assert "recommended FFN width" not in r.stdout
    # two windows give a standard error: a width is recommended, flagged when the error exceeds the budget
    np.save(tmp_path / "two.npy", ids[:2])
    r = cli("report", model, "--calib", tmp_path / "calib.npy", "--eval", tmp_path / "two.npy", "--align", 2,
            "--max-loss-increase", "1e-9", "--json", tmp_path / "r2.json")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "r2.json").read_text())["advice"]["measured"]
    assert m["unresolved"] is None and m["recommended_width"] is not None
    se = [x["delta_ce_se"] for row in m["ladder"] for x in row["slim"]["sources"]]
    assert all(v is not None and v > 1e-9 for v in se)
    assert any("cannot resolve the budget" in w for w in m["warnings"])


def test_unmeasured_advice_says_it_is_an_estimate(tmp_path):
    r = cli("report", FIXTURES / "gpt2_w128", "--tokens", 2000, "--seq-len", 50)
    assert r.returncode == 0, r.stderr
    assert "saves" not in r.stdout
    assert "estimate" in r.stdout and "--eval" in r.stdout and "sui-onnx slim" in r.stdout


DECODERS = ["gpt2_w128", "llama_w128", "ngpt_w128", "mixln_w128", "gemma_w128", "opt_w128", "phi3_w128",
            "gpt_neox_w128", "gpt2_ortopt", "llama_extdata", "llama_past"]


@pytest.mark.parametrize("name", DECODERS + ["bert_w128"])
def test_every_supported_architecture_slims_to_a_loadable_narrower_model(tmp_path, name):
    src = FIXTURES / name
    if not src.is_dir():
        pytest.skip("fixture not built")
    out = tmp_path / "slim"
    r = cli("slim", src, out, "--ratio", 0.5, "--align", 16, "--tokens", 1024, "--seq-len", 32,
            "--eval", HELDOUT, "--eval-tokens", 256, "--eval-seq-len", 32, "--json", tmp_path / "s.json", "-q")
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "s.json").read_text())
    assert record == json.loads((out / "slim.json").read_text())
    assert all(x["width_after"] == x["width_before"] // 2 for x in record["layers"])
    assert all(len(x["kept"]) == x["width_after"] for x in record["layers"])
    taps = json.loads(cli("taps", out, "--json").stdout)
    assert [t["width"] for t in taps] == [x["width_after"] for x in record["layers"]]
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == [o.name for o in onnx.load(str(src / "model.onnx"), load_external_data=False).graph.output]
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    p = record["parameters"]

    def floats(m):
        return sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16))

    original = onnx.load(str(src / "model.onnx"))
    assert p["total_before"] == floats(original)
    assert p["total_after"] == floats(model)
    # only the FFNs changed: their count (weights, biases, constants along the width) falls by what the model lost
    assert p["ffn_before"] - p["ffn_after"] == p["total_before"] - p["total_after"] > 0
    # at half width: the width-proportional half is gone, the down biases stay (and are added where missing)
    d_model = max(t.dims[-1] for t in original.graph.initializer if len(t.dims) == 2)
    assert p["ffn_before"] // 2 - len(record["layers"]) * d_model <= p["ffn_after"] <= p["ffn_before"] // 2 + len(record["layers"]) * d_model
    s = record["eval"]["sources"][0]
    if name == "bert_w128":
        assert 0 < s["cosine"] <= 1 and s["rel_error"] > 0
    else:
        assert math.isfinite(s["delta_ce"]) and s["ref_ce"] > 0 and 0 <= s["top1"] <= 1


def test_the_full_width_slim_of_a_fixture_is_the_same_model(tmp_path):
    """A width at or above every layer's D leaves every FFN as it is, whatever the ridge (a refit
    of all D neurons with a ridge would shrink the down projection), and says that nothing was
    removed."""
    src = FIXTURES / "llama_w128"
    r = cli("slim", src, tmp_path / "s", "--width", 1000, "--tokens", 2048, "--seq-len", 32)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "s" / "slim.json").read_text())
    p = record["parameters"]
    assert p["total_after"] == p["total_before"] and p["ffn_after"] == p["ffn_before"] > 0
    assert r.stdout.count("(unchanged)") == 2 and "fewer" not in r.stdout and "more)" not in r.stdout
    assert any("--width 1000 keeps every layer at its full FFN width (128): nothing was removed, and the model "
               "written has the original's FFNs unchanged" in w for w in record["warnings"]), record["warnings"]
    original, slimmed = onnx.load(str(src / "model.onnx")), onnx.load(str(tmp_path / "s" / "model.onnx"))
    before = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in slimmed.graph.initializer}
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    assert [n.op_type for n in slimmed.graph.node] == [n.op_type for n in original.graph.node]
    ids = np.random.default_rng(0).integers(0, 300, size=(2, 16))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(16), (2, 1))}
    a = ort.InferenceSession(str(src / "model.onnx"), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    b = ort.InferenceSession(str(tmp_path / "s" / "model.onnx"), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    assert np.array_equal(a, b)


def test_quantized_ffns_are_refused_with_one_line(tmp_path):
    r = cli("slim", FIXTURES / "gpt2_int8", tmp_path / "s", "--width", 64)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "int8" in r.stderr and "Traceback" not in r.stderr
    # report --eval says it in its own terms, before calibrating, and points at the plain report
    r = cli("report", FIXTURES / "gpt2_int8", "--eval", HELDOUT, "--json", tmp_path / "r.json")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and not (tmp_path / "r.json").exists()
    assert "--eval measures narrower FFNs, which this model cannot give (cannot slim FFN layer 0" in r.stderr
    assert "int8" in r.stderr and "report without --eval" in r.stderr
    assert not (tmp_path / "s").exists()


def test_a_graph_whose_outputs_are_the_ffn_activations_is_refused(tmp_path):
    """sui-onnx's own tapped copy outputs the hidden activations: narrowing would change their width."""
    from sui_onnx.graph import find_taps, load_model, write_tapped

    shutil.copytree(FIXTURES / "llama_w128", tmp_path / "m")
    src = load_model(tmp_path / "m" / "model.onnx")
    write_tapped(src, find_taps(src.model), tmp_path / "m" / "model.tapped.onnx")
    r = cli("slim", tmp_path / "m" / "model.tapped.onnx", tmp_path / "s", "--ratio", 0.5, "--tokens", 512, "--seq-len", 32)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot slim FFN layer 0: its hidden activation" in r.stderr and "is a graph output" in r.stderr
    assert not (tmp_path / "s").exists()


def test_qdq_quantized_weights_are_refused_as_quantized(tmp_path):
    """A QDQ graph (the weight a DequantizeLinear of an int8 initializer) is said to be quantized."""
    shutil.copytree(FIXTURES / "llama_w128", tmp_path / "m")
    path = tmp_path / "m" / "model.onnx"
    model = onnx.load(str(path))
    down = next(n for n in model.graph.node if n.op_type == "MatMul" and "down_proj" in n.name)
    w = next(t for t in model.graph.initializer if t.name == down.input[1])
    value = numpy_helper.to_array(w)
    scale = np.float32(np.abs(value).max() / 127)
    model.graph.initializer.extend([numpy_helper.from_array(np.round(value / scale).astype(np.int8), "w_q"),
                                    numpy_helper.from_array(np.array(scale, np.float32), "w_scale")])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w_dq"]))
    down.input[1] = "w_dq"
    onnx.save(model, str(path))
    r = cli("slim", tmp_path / "m", tmp_path / "s", "--ratio", 0.5, "--tokens", 512, "--seq-len", 32)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "its down weight is quantized (QDQ: DequantizeLinear)" in r.stderr and "then quantize" in r.stderr
    assert not (tmp_path / "s").exists()


def test_bad_requests_exit_2_and_write_nothing(tmp_path):
    model = relu_lm(tmp_path / "m")
    ids = tmp_path / "m_ids.npy"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    cases = [
        ["slim", model, busy, "--width", 4, "--calib", ids],                           # OUT_DIR not empty
        ["slim", model, tmp_path / "m", "--width", 4, "--calib", ids],                 # the model's own folder
        ["slim", model, tmp_path / "o1", "--max-loss-increase", 0.01, "--calib", ids],  # search without --eval
        ["slim", model, tmp_path / "o2", "--width", 4, "--calib", ids, "--json", model],  # output is an input
        ["slim", model, tmp_path / "o3", "--width", 0, "--calib", ids],
        ["slim", model, tmp_path / "o4", "--ratio", 1.5, "--calib", ids],
        ["slim", model, tmp_path / "o5", "--width", 4, "--ratio", 0.5, "--calib", ids],
        ["slim", model, tmp_path / "o6", "--width", 4, "--calib", tmp_path / "missing.npy"],
        ["slim", tmp_path / "nothing.onnx", tmp_path / "o7", "--width", 4],
        ["report", model, "--calib", ids, "--eval", ids, "--site", "pre"],
        ["report", model, "--calib", ids, "--eval", ids, "--align", 4096, "--json", tmp_path / "o9.json"],
        ["slim", model, tmp_path / "o8", "--max-loss-increase", 0.01, "--eval", ids, "--align", 4096, "--calib", ids],
        ["slim", model, busy.parent / "empty", "--width", 4, "--calib", ids, "--json", busy.parent / "empty" / "model.onnx"],
        ["slim", model, busy.parent / "empty", "--width", 4, "--calib", ids, "--checkpoint", busy.parent / "empty" / "c.npz"],
        ["slim", model, busy.parent / "empty", "--width", 4, "--calib", ids, "--json", busy.parent / "empty"],
        ["slim", model, tmp_path / "link", "--width", 4, "--calib", ids],                # OUT_DIR a symbolic link
        ["slim", model, tmp_path / "o10", "--width", 3, "--align", 4, "--schedule", "per-layer", "--calib", ids],
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    before = sorted(p.name for p in tmp_path.iterdir())
    said = []
    for args in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        said.append(r.stderr)
    # said before calibrating, not an empty ladder or "no width ... (probes: )"
    assert "--align 4096 leaves no narrower width to measure" in said[-7]
    assert "--align 4096 leaves no narrower width to search" in said[-6]
    assert all("inside it" in x for x in said[-5:-3]) and "is a folder" in said[-3] and "symbolic link" in said[-2]
    assert "--schedule per-layer moves whole steps of --align 4" in said[-1] and "unexpected" not in said[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary folder left
    assert not any((tmp_path / "empty").iterdir())
    assert (busy / "keep.txt").read_text() == "mine" and onnx.load(str(model)) is not None


@pytest.mark.parametrize("command", ["slim", "report"])
def test_bad_eval_data_is_refused_before_the_calibration_run(tmp_path, command):
    """--eval data is read and checked against the model's tables before calibrating: with a
    calibration source that would fail too, the eval data's error is the one shown."""
    src = FIXTURES / "gpt2_w128"
    bad_calib = tmp_path / "calib.txt"
    bad_calib.write_bytes(b"caf\xe9")  # not UTF-8: calibration would refuse it
    ids = np.random.default_rng(0).integers(0, 300, (2, 400))  # 400 > the 256 positions of gpt2_w128
    np.save(tmp_path / "long.npy", ids)
    np.save(tmp_path / "oov.npy", np.full((2, 8), 10_000))
    (tmp_path / "wide.txt").write_bytes("no byte order mark".encode("utf-16-le"))
    out = [tmp_path / "out"] if command == "slim" else []
    width = ["--ratio", 0.5] if command == "slim" else []
    for data, match in (("long.npy", "longer than the model's position table (256 positions"),
                        ("oov.npy", "token id 10000 is outside the model's vocabulary"),
                        ("wide.txt", "looks binary")):
        r = cli(command, src, *out, *width, "--calib", bad_calib, "--eval", tmp_path / data)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert data in r.stderr and match in r.stderr and "calib.txt" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_too_few_calibration_tokens_are_warned_about_in_flags(tmp_path):
    """Statistics from fewer than 4 x D tokens are no basis for a selection and a refit: slim says
    so (with the flag, --tokens, not the library's option name), on the terminal and in slim.json."""
    text = tmp_path / "short.txt"
    text.write_text("A short calibration text of a few words only.\n")
    r = cli("slim", FIXTURES / "gpt2_w128", tmp_path / "s", "--ratio", 0.5, "--calib", text)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "s" / "slim.json").read_text())
    said = [w for w in record["warnings"] if "calibration tokens for FFNs 128 wide" in w]
    assert len(said) == 1 and "at least 1,280 tokens (--tokens" in said[0] and "`tokens`" not in said[0]
    assert "calibration tokens for FFNs 128" in " ".join(r.stdout.split())


def test_help_explains_the_method_and_the_measurement():
    r = cli("slim", "--help")
    assert r.returncode == 0
    for word in ("--width", "--ratio", "--max-loss-increase", "--eval", "--method", "--schedule", "least squares",
                 "pivoted Cholesky", "calibrate on what"):
        assert word in r.stdout, word


def test_per_layer_schedule_keeps_the_total_and_varies_the_widths(tmp_path):
    src = FIXTURES / "llama_w256"
    r = cli("slim", src, tmp_path / "s", "--ratio", 0.25, "--align", 16, "--schedule", "per-layer", "--tokens", 2048,
            "--seq-len", 32, "-q")
    assert r.returncode == 0, r.stderr
    layers = json.loads((tmp_path / "s" / "slim.json").read_text())["layers"]
    widths = [x["width_after"] for x in layers]
    assert sum(widths) <= 2 * 64 and all(w % 16 == 0 and 16 <= w <= 256 for w in widths)
    uniform = json.loads(cli("slim", src, tmp_path / "u", "--ratio", 0.25, "--align", 16, "--tokens", 2048,
                             "--seq-len", 32, "-q", "--json", "-").stdout)["layers"]
    # the schedule minimises the summed output-space residual: never worse than the uniform one
    assert [x["width_after"] for x in uniform] == [64, 64]
    assert sum(x["residual"] for x in layers) <= sum(x["residual"] for x in uniform) * (1 + 1e-9)


def to_float16(path: Path) -> Path:
    """The same graph with float16 weights and activations (ids stay int64)."""
    m = onnx.load(str(path))
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in m.graph.output:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    out = path.parent.parent / "fp16" / "model.onnx"
    out.parent.mkdir()
    onnx.save(m, str(out))
    return out


def test_float16_weights_are_narrowed_in_float16(tmp_path):
    model = to_float16(relu_lm(tmp_path / "m"))
    r = cli("slim", model, tmp_path / "out", "--width", 6, "--calib", tmp_path / "m_ids.npy", "--ridge", 0, "-q")
    assert r.returncode == 0, r.stderr
    slim = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert {t.data_type for t in slim.graph.initializer if t.data_type != TensorProto.INT64} == {TensorProto.FLOAT16}
    probe = np.random.default_rng(4).integers(0, 50, size=(2, 9))
    a = logits(model, probe).astype(np.float32)
    b = logits(tmp_path / "out" / "model.onnx", probe).astype(np.float32)
    assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max()  # float16 arithmetic, same function


@pytest.mark.parametrize("sequential", [False, True])
def test_refining_a_model_that_is_exact_in_the_span_keeps_it_exact(tmp_path, sequential):
    """slimming.refine (measured, not offered by the CLI) regresses the original outputs on the
    narrowed model's own activations, all layers in one pass or one layer at a time: in the span
    that regression is exact again."""
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.slimming import SlimStudy, refine

    model = relu_lm(tmp_path / "m", post_norm=True)
    spec = CalibrationSpec([tmp_path / "m_ids.npy"])
    study = SlimStudy(model, spec, AnalysisOptions(device="cpu"), ridge=0.0)
    refined = refine(study, study.variant([6, 6]), spec, sequential=sequential)
    assert refined.label.endswith("sequential" if sequential else "refined")
    onnx.save(refined.model, str(tmp_path / "r.onnx"))
    probe = np.random.default_rng(6).integers(0, 50, size=(2, 11))
    a, b = logits(model, probe), logits(tmp_path / "r.onnx", probe)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_a_layer_kept_whole_is_left_as_it_is(tmp_path):
    """With the default ridge, a layer at its full width in a variant keeps its original weights
    and no new bias (a ridge refit of all D neurons would shrink them); the narrowed layer is edited."""
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.slimming import SlimStudy

    model = relu_lm(tmp_path / "m")
    study = SlimStudy(model, CalibrationSpec([tmp_path / "m_ids.npy"]), AnalysisOptions(device="cpu"))
    assert study.ridge > 0
    d = study.widths[1]
    variant = study.variant([6, d])
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}
    kept = {t.name: numpy_helper.to_array(t) for t in variant.model.graph.initializer}
    down0, down1 = study.surgery.plans[0].down.name, study.surgery.plans[1].down.name
    assert down1 in kept and np.array_equal(kept[down1], original[down1])
    assert down0 not in kept or kept[down0].shape != original[down0].shape  # layer 0 was narrowed
    assert not any(n.startswith("sui_slim.1.") for n in kept)  # nothing new for layer 1
    assert variant.residual_share[1] == 0.0 and list(variant.keep[1]) == list(range(d))
    assert study.ffn_parameters([d, d]) == study.ffn_parameters([d, d], edited=False)


def test_large_models_are_written_with_external_data(tmp_path, monkeypatch):
    """Above the single-file limit the narrowed model's weights go to model.onnx_data, copied
    range by range from the original file (here the limit is lowered to a few bytes)."""
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.graph import surgery
    from sui_onnx.slimming import SlimStudy

    model = relu_lm(tmp_path / "m")
    study = SlimStudy(model, CalibrationSpec([tmp_path / "m_ids.npy"]), AnalysisOptions(device="cpu"), ridge=0.0)
    variant = study.variant([6, 6])
    monkeypatch.setattr(surgery, "_SINGLE_FILE_LIMIT", 16)
    written = surgery.write_model_folder(variant.model, study.src, tmp_path / "big", {"note.txt": b"x"})
    assert (tmp_path / "big" / "model.onnx_data").stat().st_size > 0
    assert (tmp_path / "big" / "note.txt").read_bytes() == b"x"
    onnx.checker.check_model(str(written))
    probe = np.random.default_rng(5).integers(0, 50, size=(2, 7))
    assert np.abs(logits(model, probe) - logits(written, probe)).max() <= 1e-4 * np.abs(logits(model, probe)).max()


def test_covariances_past_the_memory_budget_are_kept_on_disk_with_the_same_result(tmp_path):
    """With --max-memory smaller than the layers' D x D statistics, slim keeps the layers past it
    memory-mapped in a temporary folder: the narrowed model is the same, and the folder goes with
    release()."""
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.slimming import SlimStudy

    src = FIXTURES / "llama_w128"
    spec = CalibrationSpec(sources=[], tokens=2048, seq_len=32)
    whole = SlimStudy(src, spec, AnalysisOptions(device="cpu", max_memory=1 << 30))
    tight = SlimStudy(src, spec, AnalysisOptions(device="cpu", max_memory=128 * 129 * 8 + 1))  # one layer's worth
    assert whole.cov.spilled == [] and tight.cov.spilled == [1]
    assert isinstance(tight.cov[1], np.memmap) and np.array_equal(tight.cov[1], whole.cov[1])
    folder = tight.cov[1].filename
    a, b = whole.variant([64, 80]), tight.variant([64, 80])
    for x, y in zip(a.model.graph.initializer, b.model.graph.initializer):
        assert x.name == y.name and x.SerializeToString() == y.SerializeToString()
    assert Path(folder).is_file()
    tight.release()
    assert not Path(folder).parent.exists() and len(tight.cov) == 0


def test_report_eval_on_an_encoder_compares_hidden_states_and_recommends_nothing(tmp_path):
    out = tmp_path / "r.json"
    r = cli("report", FIXTURES / "bert_w128", "--tokens", 1500, "--seq-len", 50, "--eval", HELDOUT, "--eval-tokens", 300,
            "--eval-seq-len", 50, "--align", 16, "--json", out)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())["advice"]["measured"]
    assert m["kind"] == "encoder" and m["recommended_width"] is None
    cos = [row["slim"]["worst_cosine"] for row in m["ladder"]]
    assert all(0 < c <= 1 for c in cos) and cos[0] <= cos[-1]  # wider keeps the hidden states closer
    assert "an encoder" in r.stdout


def test_resuming_a_finished_checkpoint_points_to_stats_which_slims_it(tmp_path):
    model = relu_lm(tmp_path / "m")
    ids = tmp_path / "m_ids.npy"
    assert cli("report", model, "--calib", ids, "--checkpoint", tmp_path / "ck.npz", "-q").returncode == 0
    r = cli("slim", model, tmp_path / "o", "--width", 4, "--calib", ids, "--resume", tmp_path / "ck.npz", "-q")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "finished run" in r.stderr and "--stats" in r.stderr
    assert not (tmp_path / "o").exists()
    r = cli("slim", model, tmp_path / "o", "--width", 4, "--stats", tmp_path / "ck.npz", "-q")
    assert r.returncode == 0, r.stderr
    assert [x["width_after"] for x in json.loads((tmp_path / "o" / "slim.json").read_text())["layers"]] == [4, 4]


def _suggested_slim(stdout: str) -> list[str]:
    """The `narrow` next step of a terminal report, as argv (after `sui-onnx slim`)."""
    text = " ".join(stdout.split())
    cmd = text.split("narrow sui-onnx slim ", 1)[1].split(" baseline ", 1)[0]
    return cmd.split()


def test_the_suggested_slim_command_runs_and_builds_the_measured_widths(tmp_path):
    """report's `narrow` hint must run as printed and write the model it measured: uneven layer
    widths get the rung's --ratio (not --width of the widest), --align travels with it, an encoder
    gets a ratio (no loss to bound), and a model narrower than --align gets an --align that leaves
    a narrower width to search."""
    heldout = HELDOUT.read_text()
    (tmp_path / "h1.txt").write_text(heldout[:30000])
    (tmp_path / "h2.txt").write_text(heldout[-30000:])
    uneven = tmp_path / "uneven"
    r = cli("slim", FIXTURES / "gpt2_w128", uneven, "--schedule", "per-layer", "--width", 40, "--align", 8,
            "--tokens", 1500, "--seq-len", 64, "-q")
    assert r.returncode == 0, r.stderr
    widths = [t["width"] for t in json.loads(cli("taps", uneven, "--json").stdout)]
    assert len(set(widths)) == 2, widths
    r = cli("report", uneven, "--tokens", 2048, "--seq-len", 64, "--eval", "h1.txt", "--eval", "h2.txt", "--eval-tokens", 512,
            "--align", 8, "--max-loss-increase", 0.002, "--json", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "r.json").read_text())["advice"]["measured"]
    assert m["recommended_widths"] is not None
    args = _suggested_slim(r.stdout)
    assert "--align" in args and args[args.index("--align") + 1] == "8"
    if len(set(m["recommended_widths"])) > 1:
        assert "--ratio" in args and "--width" not in args
        assert f"widths {min(m['recommended_widths'])}..{max(m['recommended_widths'])} of" in " ".join(r.stdout.split())
    args = [str(uneven) if a == "uneven" or a.endswith("/uneven") else a for a in args]
    args = ["out" if a == "OUT" else "h1.txt" if a == "HELDOUT.txt" else a for a in args]
    r2 = cli("slim", *args, "--tokens", 2048, "-q", cwd=tmp_path)
    assert r2.returncode == 0, (args, r2.stderr)
    assert [t["width"] for t in json.loads(cli("taps", tmp_path / "out", "--json").stdout)] == m["recommended_widths"]

    r = cli("report", FIXTURES / "bert_w128", "--tokens", 2048, "--seq-len", 64, "--eval", "h1.txt", "--eval-tokens", 512,
            "--align", 32, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    args = _suggested_slim(r.stdout)
    assert "--max-loss-increase" not in args and "--ratio" in args
    args = [str(FIXTURES / "bert_w128") if a == "MODEL" else "bout" if a == "OUT" else "h1.txt" if a == "HELDOUT.txt" else a
            for a in args]
    r2 = cli("slim", *args, "--tokens", 2048, "--eval-tokens", 256, "-q", cwd=tmp_path)
    assert r2.returncode == 0, (args, r2.stderr)

    narrow = tmp_path / "w50"
    assert cli("slim", FIXTURES / "gpt2_w128", narrow, "--width", 50, "--align", 50, "--tokens", 1500, "--seq-len", 64,
               "-q").returncode == 0
    r = cli("report", narrow, "--tokens", 2048, "--seq-len", 64, cwd=tmp_path)
    args = _suggested_slim(r.stdout)
    if "--max-loss-increase" in args:
        assert int(args[args.index("--align") + 1]) < 50
    args = [str(narrow) if a in ("w50", "MODEL") or a.endswith("/w50") else "nout" if a == "OUT"
            else "h1.txt" if a == "HELDOUT.txt" else a for a in args]
    r2 = cli("slim", *args, "--tokens", 2048, "--eval-tokens", 256, "-q", cwd=tmp_path)
    assert r2.returncode == 0, (args, r2.stderr)


def test_slim_eval_of_an_encoder_shows_the_hidden_state_comparison(tmp_path):
    r = cli("slim", FIXTURES / "bert_w128", tmp_path / "b", "--ratio", 0.5, "--tokens", 2048, "--seq-len", 64,
            "--eval", HELDOUT, "--eval-tokens", 512)
    assert r.returncode == 0, r.stderr
    source = json.loads((tmp_path / "b" / "slim.json").read_text())["eval"]["sources"][0]
    row = next(line for line in r.stdout.splitlines() if line.strip().startswith("heldout.txt"))
    assert "cosine" in r.stdout and f"{source['cosine']:.5f}" in row and f"{source['rel_error']:.4f}" in row


def test_alignment_that_rounds_to_the_full_width_or_below_the_total_is_said(tmp_path):
    """--align is named when it leaves nothing to remove; a per-layer schedule that cannot reach the
    asked total says by how much; a layer may keep its full width in the schedule (as aligned() allows)."""
    r = cli("slim", FIXTURES / "gpt2_w128", tmp_path / "a", "--ratio", 0.5, "--align", 500, "--tokens", 1500,
            "--seq-len", 64, "-q")
    assert r.returncode == 0 and "(128; rounded up to a multiple of --align 500" in r.stderr, r.stderr
    r = cli("slim", FIXTURES / "llama_w128", tmp_path / "b", "--width", 70, "--schedule", "per-layer", "--align", 64,
            "--tokens", 1500, "--seq-len", 64, "-q")
    assert r.returncode == 0, r.stderr
    assert "--schedule per-layer: the widths add up to 128, below the 140 of the uniform widths" in r.stderr
    record = json.loads((tmp_path / "b" / "slim.json").read_text())
    assert [x["width_after"] for x in record["layers"]] == [64, 64]
    assert any("add up to 128" in w for w in record["warnings"])
    from sui_onnx.slim import allocate

    flat = np.linspace(1.0, 0.0, 101)  # a layer of width 100 with --align 64 may stay whole
    assert allocate([flat, np.linspace(1.0, 0.0, 129)], [100, 128], total=164, align=64) == [100, 64]


def test_a_per_layer_search_records_each_probes_widths(tmp_path):
    r = cli("slim", FIXTURES / "gpt2_w128", tmp_path / "s", "--max-loss-increase", 0.05, "--schedule", "per-layer",
            "--align", 32, "--tokens", 1500, "--seq-len", 64, "--eval", HELDOUT, "--eval-tokens", 512, "-q")
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "s" / "slim.json").read_text())
    assert record["search"] and all(len(s["widths"]) == 2 and sum(s["widths"]) <= 2 * s["width"]
                                    for s in record["search"])


def test_the_measured_ladder_fits_80_columns_without_cutting_numbers(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sui_onnx", "report", str(FIXTURES / "gpt2_w128"), "--tokens", "2048",
                        "--seq-len", "64", "--eval", str(HELDOUT), "--eval-tokens", "512", "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, env=dict(os.environ, COLUMNS="80"))
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    ladder = json.loads((tmp_path / "r.json").read_text())["advice"]["measured"]["ladder"]
    panel = r.stdout.split("width advice (measured)", 1)[1]
    assert "…" not in panel.split("dCE: held-out", 1)[0]
    for rung in ladder:
        assert f"{rung['slim']['worst_delta_ce']:+.4f}" in panel
