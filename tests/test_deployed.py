"""ONNX models as they are shipped: onnxruntime-genai builder output (fp32, int4), the
onnxruntime transformers optimizer's BERT and GPT-2, a Hugging Face cache snapshot with external
data, and the transformers.js repo layout (model, model_quantized, model_fp16, model_q4).

Every family: taps found structurally, `sui-onnx taps` / `sui-onnx report` through the real CLI,
and the metrics equal those of the PyTorch hook captures in the fixture's reference.npz (fp32:
rel 1e-4; fp16, int8 and int4 within the tolerances below, measured on these fixtures and stated
in docs/deployed.md). Fast: committed fixtures and onnxruntime only (no torch); the Hub-cache and
transformers.js layouts are laid out in tmp_path by models/deployed_fixtures.py.
"""

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
from onnx import TensorProto as TP
from onnx import helper as oh

from sui_onnx.analyze import AnalysisOptions, analyze
from sui_onnx.calib import CalibrationSpec, load_tokenizer
from sui_onnx.errors import CalibrationError, ModelError
from sui_onnx.graph import find_taps, load_model, tapped_model, write_tapped
from sui_onnx.graph.index import GraphIndex, schema_dtype_source
from sui_onnx.graph.source import external_info, genai_head_size, resolve_model_path
from sui_onnx.graph.tapped import build_tapped_model, cache_input_dims
from sui_onnx.graph.taps import Tap, infer_types
from sui_onnx.metrics import spectral_metrics
from sui_onnx.runner import TapRunner

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
DEPLOYED = FIXTURES / "deployed"
sys.path.insert(0, str(REPO_ROOT))  # `models` is a repo-root folder, not an installed package
from models import deployed_fixtures as layouts  # noqa: E402

pytestmark = pytest.mark.skipif(not (DEPLOYED / "genai_fp32" / "model.onnx").is_file(), reason="fixtures not built")

# relative tolerance of the metrics against the hooks (measured worst case on these fixtures in
# parentheses, 32 tokens): fp32 1e-4 (5e-8), fp16 1e-3 (4e-5), int8 quantize_dynamic 2e-2 (4e-3),
# int4 MatMulNBits 5e-2 (genai builder 1.3e-2, MatMulNBitsQuantizer block 32 2.1e-2)
METRIC_TOL = {"fp32": 1e-4, "fp16": 1e-3, "int8": 2e-2, "int4": 5e-2}
METRICS = ("hard_rank", "soft_rank", "concentration", "sui")
TJS_PRECISION = {"model": "fp32", "model_quantized": "int8", "model_fp16": "fp16", "model_q4": "int4"}


def cli(*args, env=None):
    """The installed console entry point, as a user runs it (wide terminal: paths unwrapped)."""
    e = dict(os.environ, COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=300)


def hook_metrics(post: np.ndarray):
    x = post.reshape(-1, post.shape[-1]).astype(np.float64)
    return spectral_metrics(np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1].clip(0))


def assert_metrics_match_hooks(model, reference: Path, tmp_path: Path, rel: float):
    """analyze() on the reference's input_ids equals the metrics of the hook captures."""
    with np.load(reference) as ref:
        np.save(tmp_path / "ids.npy", ref["input_ids"])
        posts = {k: ref[k] for k in ref.files if k.startswith("post_")}
    rep = analyze(model, CalibrationSpec([tmp_path / "ids.npy"]), AnalysisOptions(device="cpu", precision="fp64", threads=2))
    assert [x.layer for x in rep.layers] == list(range(len(posts)))
    for layer in rep.layers:
        want = hook_metrics(posts[f"post_{layer.layer}"])
        for f in METRICS:
            assert getattr(layer, f) == pytest.approx(getattr(want, f), rel=rel), (layer.layer, f)
    return rep


def meta_of(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


# ------------------------------------------------------------------------------ onnxruntime-genai
GENAI = ["genai_fp32", "genai_int4"]


@pytest.mark.parametrize("name", GENAI)
def test_genai_taps_are_found_structurally(name):
    folder = DEPLOYED / name
    meta = meta_of(folder)
    src = load_model(folder)
    assert src.has_external_data
    ops = {n.op_type for n in src.model.graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops
    assert ("MatMulNBits" in ops) == (name == "genai_int4")
    assert not any("position_ids" in i.name for i in src.model.graph.input)
    for site in ("post", "pre"):
        taps = find_taps(src.model, site)
        assert [t.width for t in taps] == meta["site_post_widths"]
        assert [t.tensor for t in taps] == [meta["onnx_taps"][f"{site}_{i}"] for i in range(meta["n_layers"])]


@pytest.mark.parametrize("name", GENAI)
def test_genai_tapped_activations_match_the_hooks(name):
    """The empty past gets the real head size (16, not the symbolic 'kv_cache_dim' as 0)."""
    folder = DEPLOYED / name
    meta = meta_of(folder)
    src = load_model(folder, lean=True)
    ref = np.load(folder / "reference.npz")
    for site in ("post", "pre"):
        taps = find_taps(src.model, site)
        runner = TapRunner(tapped_model(src, taps).SerializeToString(), [t.tensor for t in taps], "cpu", 1,
                           external_folder=src.data_folder)
        pasts = [i for i in runner.session.get_inputs() if "past" in i.name]
        assert pasts and all(i.shape[1] == meta["kv_heads"] and i.shape[3] == meta["head_size"] for i in pasts)
        for tap, got in zip(taps, runner.run(ref["input_ids"], [t.width for t in taps])):
            want = ref[f"{site}_{tap.layer}"]
            if name == "genai_fp32":
                np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
            else:  # int4 weights, int8 activations inside MatMulNBits (accuracy level 4): measured 10 % of max
                assert np.abs(got - want).max() < 0.2 * np.abs(want).max()
                assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("name", GENAI)
def test_genai_metrics_match_the_hooks(name, tmp_path):
    assert_metrics_match_hooks(DEPLOYED / name, DEPLOYED / name / "reference.npz", tmp_path,
                               METRIC_TOL["fp32" if name == "genai_fp32" else "int4"])


@pytest.mark.parametrize("name", GENAI)
def test_genai_taps_and_report_through_the_cli(name, tmp_path):
    folder = DEPLOYED / name
    r = cli("taps", folder, "--json")
    assert r.returncode == 0, r.stderr
    assert [t["width"] for t in json.loads(r.stdout)] == [64, 64]
    r = cli("report", folder, "--tokens", "1024", "--seq-len", "64", "--threads", "2", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""  # no onnxruntime log lines
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [x["status"] for x in rep["layers"]] == ["ok", "ok"]


@pytest.mark.parametrize("name", GENAI)
def test_genai_models_are_evaluated_with_their_cache_sized_from_the_graph(name, tmp_path):
    """The whole model's KV-cache inputs are [batch, kv_heads, past, kv_cache_dim] with the head
    size symbolic: eval sizes it as the tapped copy does, and its CE equals the one computed here
    from logits fed by hand (an empty cache of the head size meta.json states)."""
    import onnxruntime as ort

    meta = meta_of(DEPLOYED / name)
    ids = np.random.default_rng(4).integers(0, meta["vocab"], (3, 12)).astype(np.int64)
    np.save(tmp_path / "ids.npy", ids)
    r = cli("eval", DEPLOYED / name, "--data", tmp_path / "ids.npy", "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "e.json").read_text())["sources"][0]
    sess = ort.InferenceSession(str(DEPLOYED / name / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            feed[i.name] = np.zeros((3, meta["kv_heads"], 0, meta["head_size"]), np.float32)
    logits = sess.run(["logits"], feed)[0].astype(np.float64)
    lp = logits[:, :-1] - np.logaddexp.reduce(logits[:, :-1], axis=-1, keepdims=True)
    ce = -np.take_along_axis(lp, ids[:, 1:, None], axis=-1).mean()
    assert got["tokens"] == 3 * 11 and got["ce"] == pytest.approx(ce, rel=1e-6)


@pytest.mark.parametrize("name", GENAI)
def test_a_window_past_the_genai_rotary_cache_is_refused_before_any_batch(name, tmp_path):
    """GroupQueryAttention's cos_cache has context_length rows; a longer window used to fail inside
    onnxruntime on the first batch. report and eval now say which --seq-len fits."""
    rows = json.loads((DEPLOYED / name / "genai_config.json").read_text())["model"]["context_length"]
    heldout = REPO_ROOT / "sui_onnx" / "data" / "heldout.txt"
    for args in (("report", DEPLOYED / name, "--tokens", "2000"), ("eval", DEPLOYED / name, "--data", heldout)):
        r = cli(*args, "--seq-len", str(rows + 1))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"longer than the model's position table ({rows} positions in 'cos_cache')" in r.stderr
    np.save(tmp_path / "ids.npy", np.ones((1, rows), dtype=np.int64))  # exactly the cache: fine
    assert cli("eval", DEPLOYED / name, "--data", tmp_path / "ids.npy").returncode == 0


def test_genai_fp32_slims_and_its_checker_complaint_is_the_originals(tmp_path):
    """onnx.checker rejects the builder's SimplifiedLayerNormalization (onnxruntime's op in the
    default domain) in the original as in the narrowed model: slim says so and verifies the
    narrowed model by loading it, instead of calling its own output broken."""
    out = tmp_path / "slim"
    r = cli("slim", DEPLOYED / "genai_fp32", out, "--ratio", "0.5", "--align", "16", "--tokens", "1024", "--seq-len",
            "32", "--eval", REPO_ROOT / "sui_onnx" / "data" / "heldout.txt", "--eval-tokens", "256", "-q")
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "slim.json").read_text())
    assert [x["width_after"] for x in record["layers"]] == [32, 32]
    assert any("onnx.checker rejects the original model too" in w for w in record["warnings"])
    assert record["eval"]["sources"][0]["kl"] > 0 and (out / "genai_config.json").is_file()


def test_genai_head_size_is_inferred_from_the_graph_without_genai_config(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(DEPLOYED / "genai_int4", folder)
    (folder / "genai_config.json").unlink()
    src = load_model(folder)
    index = GraphIndex(src.model.graph, infer_types(src.model))
    pinned = cache_input_dims(index, lambda: None)
    assert set(pinned) == {i.name for i in src.model.graph.input if "past" in i.name}
    assert all(dims == {3: 16} for dims in pinned.values())
    r = cli("report", folder, "--tokens", "512", "--seq-len", "32", "--threads", "2")
    assert r.returncode == 0, r.stderr


def test_a_genai_config_that_contradicts_the_graph_is_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(DEPLOYED / "genai_fp32", folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"]["head_size"] = 32
    (folder / "genai_config.json").write_text(json.dumps(config))
    src = load_model(folder)
    with pytest.raises(ModelError, match="head_size 32.*needs 16"):
        tapped_model(src, find_taps(src.model))
    r = cli("report", folder, "--tokens", "512", "--seq-len", "32")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _gqa_model(query_width: int | str) -> onnx.ModelProto:
    """A GroupQueryAttention reading a packed query from a graph input and a KV cache with a
    symbolic head count and head size: how much the graph tells depends on ``query_width``."""
    heads, kv = 4, 2
    past = ["batch", "kv_heads", "past", "kv_cache_dim"]
    gqa = oh.make_node("GroupQueryAttention", ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total_len"],
                       ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=heads,
                       kv_num_heads=kv)
    graph = oh.make_graph(
        [gqa], "gqa",
        [oh.make_tensor_value_info("qkv", TP.FLOAT, ["batch", "seq", query_width]),
         oh.make_tensor_value_info("past_key", TP.FLOAT, past), oh.make_tensor_value_info("past_value", TP.FLOAT, past),
         oh.make_tensor_value_info("seqlens_k", TP.INT32, ["batch"]), oh.make_tensor_value_info("total_len", TP.INT32, [])],
        [oh.make_tensor_value_info("out", TP.FLOAT, None)])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.microsoft", 1)])


def test_head_size_from_gqa_attributes_and_query_width():
    model = _gqa_model((4 + 2 * 2) * 16)  # packed QKV: (num_heads + 2 kv_num_heads) * head_size
    pinned = cache_input_dims(GraphIndex(model.graph, infer_types(model)), lambda: None)
    assert pinned == {"past_key": {1: 2, 3: 16}, "past_value": {1: 2, 3: 16}}


def test_head_size_from_genai_config_when_the_graph_cannot_tell(tmp_path):
    model = _gqa_model("hidden")  # symbolic query width: only the kv head count is known
    index = GraphIndex(model.graph, infer_types(model))
    assert cache_input_dims(index, lambda: None) == {"past_key": {1: 2}, "past_value": {1: 2}}
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx",
                                                                                  "head_size": 24}}}))
    assert genai_head_size(tmp_path, "model.onnx") == 24
    assert cache_input_dims(index, lambda: genai_head_size(tmp_path, "model.onnx")) == {
        "past_key": {1: 2, 3: 24}, "past_value": {1: 2, 3: 24}}
    tapped = build_tapped_model(model, [Tap(0, "out", 96, "post", "GroupQueryAttention", "unknown", "")],
                                head_size=lambda: 24)
    dims = [d.dim_value or d.dim_param for d in tapped.graph.input[1].type.tensor_type.shape.dim]
    assert dims == ["batch", 2, "past", 24]  # batch and sequence stay symbolic


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"model": {}}', "no model.decoder"),
    ('{"model": {"decoder": {"head_size": "16"}}}', "positive integer"),
    ('{"model": {"decoder": {"head_size": 0}}}', "positive integer"),
])
def test_a_malformed_genai_config_is_one_line_model_error(tmp_path, text, match):
    (tmp_path / "genai_config.json").write_text(text)
    with pytest.raises(ModelError, match=match):
        genai_head_size(tmp_path, "model.onnx")


def test_a_genai_config_about_another_file_or_without_head_size_says_nothing(tmp_path):
    assert genai_head_size(tmp_path, "model.onnx") is None  # no file
    (tmp_path / "genai_config.json").write_text('{"model": {"decoder": {"filename": "decoder.onnx", "head_size": 8}}}')
    assert genai_head_size(tmp_path, "model.onnx") is None
    (tmp_path / "genai_config.json").write_text('{"model": {"decoder": {"filename": "model.onnx"}}}')
    assert genai_head_size(tmp_path, "model.onnx") is None
    (tmp_path / "genai_config.json").unlink()
    os.mkfifo(tmp_path / "genai_config.json")  # not a regular file: never opened
    assert genai_head_size(tmp_path, "model.onnx") is None


# ------------------------------------------------------------------------------ tap output types
def test_contrib_op_outputs_are_typed_from_onnxruntime_schemas():
    """ORT-optimized BERT: the BiasGelu tap is float, not the int32 of the input_ids the walk
    used to reach through EmbedLayerNormalization's first input."""
    src = load_model(FIXTURES / "bert_ortopt")
    index = GraphIndex(src.model.graph, infer_types(src.model))
    for site in ("post", "pre"):
        for tap in find_taps(src.model, site):
            assert index.dtype(tap.tensor) == TP.FLOAT
    node = next(n for n in src.model.graph.node if n.op_type == "EmbedLayerNormalization")
    assert schema_dtype_source(node, 1) == (TP.INT32, None)  # mask_index: fixed by the schema
    assert schema_dtype_source(node, 0) == (None, node.input[2])  # output: the word embedding's type
    odd = oh.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")
    assert schema_dtype_source(odd, 0) == (None, None)  # unknown: never guessed


def test_an_untyped_tap_is_typed_by_onnxruntime(tmp_path, monkeypatch):
    """A tap whose type the graph does not determine (here: shape inference unavailable and a
    model-local function op) is declared untyped; onnxruntime types it, write_tapped records it."""
    import sui_onnx.graph.tapped as tapped_module

    act = oh.make_function("local", "Act", ["x"], ["y"], [oh.make_node("Relu", ["x"], ["y"])], [oh.make_opsetid("", 18)])
    w1 = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32), "w2")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["input_ids_f", "w1"], ["u"]), oh.make_node("Act", ["u"], ["a"], domain="local"),
         oh.make_node("MatMul", ["a", "w2"], ["y"])], "g",
        [oh.make_tensor_value_info("input_ids_f", TP.FLOAT, ["B", "S", 4])], [oh.make_tensor_value_info("y", TP.FLOAT, None)],
        [w1, w2])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("local", 1)], functions=[act])
    onnx.save(model, tmp_path / "model.onnx")
    src = load_model(tmp_path / "model.onnx")
    monkeypatch.setattr(tapped_module, "infer_types", lambda m: {})
    tap = Tap(0, "a", 8, "post", "Act", "unknown", "")
    out = tapped_model(src, [tap]).graph.output[0]
    assert out.name == "a" and not out.HasField("type")
    written = write_tapped(src, [tap], tmp_path / "tapped.onnx")
    onnx.checker.check_model(str(written))
    assert onnx.load(str(written)).graph.output[0].type.tensor_type.elem_type == TP.FLOAT


# ------------------------------------------------------------------------------ ORT transformers optimizer
@pytest.mark.parametrize("name", ["bert_ortopt", "gpt2_ortopt"])
def test_ort_optimized_models_match_the_hooks_and_run_through_the_cli(name, tmp_path):
    assert_metrics_match_hooks(FIXTURES / name, FIXTURES / name / "reference.npz", tmp_path, METRIC_TOL["fp32"])
    r = cli("report", FIXTURES / name, "--tokens", "1024", "--seq-len", "64", "--threads", "2")
    assert r.returncode == 0, r.stderr
    r = cli("taps", FIXTURES / name)
    assert r.returncode == 0 and ("BiasGelu" if name == "bert_ortopt" else "FastGelu") in r.stdout, r.stderr


# ------------------------------------------------------------------------------ Hugging Face cache
@pytest.fixture()
def hub(tmp_path) -> Path:
    return layouts.build_hub_cache(tmp_path / "hub")


@pytest.mark.parametrize("lean", [False, True])
def test_a_hub_snapshot_with_external_data_is_analyzed_in_place(hub, tmp_path, lean):
    blobs = (hub.parent.parent / "blobs").resolve()
    assert (hub / "model.onnx_data").is_symlink()
    src = load_model(hub, lean=lean)
    assert src.has_external_data and src.folder == hub and src.data_folder == blobs
    locations = {external_info(t)["location"] for t in src.model.graph.initializer if external_info(t)}
    assert locations == {(hub / "model.onnx_data").resolve().name}  # the blob, relative to blobs/
    assert_metrics_match_hooks(hub, FIXTURES / "llama_extdata" / "reference.npz", tmp_path, METRIC_TOL["fp32"])


def test_the_hub_repo_folder_stands_for_its_refs_main_snapshot(hub):
    repo = hub.parent.parent
    assert resolve_model_path(repo) == hub / "model.onnx"
    (repo / "refs" / "main").write_text("../../etc")
    with pytest.raises(ModelError, match="does not name a snapshot"):
        resolve_model_path(repo)
    (repo / "refs" / "main").unlink()
    assert resolve_model_path(repo) == hub / "model.onnx"  # the only snapshot
    (repo / "snapshots" / "other").mkdir()
    with pytest.raises(ModelError, match="2 snapshots and no refs/main"):
        resolve_model_path(repo)


def test_a_hub_snapshot_through_the_cli(hub):
    repo = hub.parent.parent
    r = cli("taps", repo)
    assert r.returncode == 0, r.stderr
    r = cli("report", repo, "--tokens", "1024", "--seq-len", "64", "--threads", "2")  # text: tokenizer.json is a link
    assert r.returncode == 0, r.stderr
    assert f"model  {hub / 'model.onnx'}" in r.stdout


def _relink(link: Path, target: Path) -> None:
    link.unlink()
    link.symlink_to(target)


def test_a_snapshot_link_that_leaves_the_repo_is_refused(hub, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(hub / "model.onnx_data", outside / "model.onnx_data")
    _relink(hub / "model.onnx_data", outside / "model.onnx_data")
    with pytest.raises(ModelError, match="resolves outside the model folder and its Hugging Face cache repo's blobs"):
        load_model(hub)
    r = cli("report", hub)
    assert r.returncode == 2 and "path traversal refused" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_link_into_another_repos_blobs_is_refused(hub, tmp_path):
    other = layouts.build_hub_cache(tmp_path / "hub2")  # same files, another cache
    _relink(hub / "model.onnx_data", (other / "model.onnx_data").resolve())
    with pytest.raises(ModelError, match="resolves outside"):
        load_model(hub)


def test_blobs_that_are_a_link_themselves_are_not_trusted(hub, tmp_path):
    repo = hub.parent.parent
    shutil.move(repo / "blobs", tmp_path / "elsewhere")
    (repo / "blobs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelError, match="resolves outside the model folder \\("):
        load_model(hub)


def test_a_hub_snapshot_with_linked_data_is_not_written_as_a_tapped_file(hub, tmp_path):
    src = load_model(hub)
    with pytest.raises(ModelError, match="cp -rL"):
        write_tapped(src, find_taps(src.model), tmp_path / "t.onnx")


def test_a_snapshot_with_a_real_data_file_keeps_the_model_folder(hub):
    """Not every snapshot entry is a link (a copied file): data inside the snapshot stays as it is."""
    data = hub / "model.onnx_data"
    real = data.read_bytes()
    data.unlink()
    data.write_bytes(real)
    src = load_model(hub)
    assert src.has_external_data and src.data_folder == hub
    assert {external_info(t)["location"] for t in src.model.graph.initializer if external_info(t)} == {"model.onnx_data"}


def test_a_real_model_file_in_a_snapshot_with_linked_data_uses_the_repo_folder(hub, tmp_path, monkeypatch):
    """Lean references into the snapshot's own (real) model file and data linked into blobs/:
    two folders, so every location is rewritten relative to the repo folder."""
    from sui_onnx.graph import lean

    model = onnx.load(str(hub / "model.onnx"), load_external_data=False)
    t = next(t for t in model.graph.initializer if t.data_location == TP.EXTERNAL and len(t.dims) == 2)
    info = external_info(t)
    t.raw_data = (hub / info["location"]).read_bytes()[int(info.get("offset", 0)):][: int(info["length"])]
    del t.external_data[:]
    t.data_location = TP.DEFAULT
    (hub / "model.onnx").unlink()
    onnx.save(model, str(hub / "model.onnx"))  # a real file now, one weight embedded
    monkeypatch.setattr(lean, "MIN_BYTES", 1024)
    src = load_model(hub, lean=True)
    repo = hub.parent.parent.resolve()
    assert src.data_folder == repo
    locations = {external_info(t)["location"] for t in src.model.graph.initializer if external_info(t)}
    assert locations == {f"snapshots/{hub.name}/model.onnx", "blobs/" + (hub / "model.onnx_data").resolve().name}
    assert_metrics_match_hooks(hub, FIXTURES / "llama_extdata" / "reference.npz", tmp_path, METRIC_TOL["fp32"])


# ------------------------------------------------------------------------------ transformers.js
@pytest.fixture(scope="module")
def tjs(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("tjs") / "tiny-llama"
    layouts.build_transformers_js(repo)
    return repo


def test_the_transformers_js_layout_has_the_four_variants(tjs):
    assert sorted(p.name for p in (tjs / "onnx").iterdir()) == sorted(f"{v}.onnx" for v in layouts.VARIANTS)
    ops = {v: {n.op_type for n in onnx.load(str(tjs / "onnx" / f"{v}.onnx"), load_external_data=False).graph.node}
           for v in layouts.VARIANTS}
    assert "MatMulInteger" in ops["model_quantized"] and "MatMulNBits" in ops["model_q4"]
    fp16 = onnx.load(str(tjs / "onnx" / "model_fp16.onnx"), load_external_data=False)
    assert any(t.data_type == TP.FLOAT16 for t in fp16.graph.initializer)


def test_the_repo_folder_means_onnx_model_onnx(tjs):
    assert resolve_model_path(tjs) == tjs / "onnx" / "model.onnx"
    empty = tjs.parent / "no-model"
    (empty / "onnx").mkdir(parents=True)
    (empty / "onnx" / "model_q4.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="holds no model.onnx .*onnx/model_q4.onnx"):
        resolve_model_path(empty)


def test_the_tokenizer_is_found_one_level_above_onnx(tjs, tmp_path):
    assert load_tokenizer(tjs / "onnx").get_vocab_size() == 512
    other = tmp_path / "models"  # any other folder name: only its own tokenizer.json
    other.mkdir()
    with pytest.raises(CalibrationError, match="no tokenizer.json beside the model"):
        load_tokenizer(other)


@pytest.mark.parametrize("variant", layouts.VARIANTS)
def test_every_transformers_js_variant_matches_the_hooks(tjs, tmp_path, variant):
    path = tjs / "onnx" / f"{variant}.onnx"
    assert_metrics_match_hooks(path, FIXTURES / "llama_w128" / "reference.npz", tmp_path,
                               METRIC_TOL[TJS_PRECISION[variant]])


@pytest.mark.parametrize("variant", [None, *layouts.VARIANTS])
def test_every_transformers_js_variant_through_the_cli_with_text(tjs, tmp_path, variant):
    """Text calibration (tokenizer.json above onnx/); the header names the file analyzed."""
    target = tjs if variant is None else tjs / "onnx" / f"{variant}.onnx"
    analyzed = tjs / "onnx" / f"{variant or 'model'}.onnx"
    r = cli("report", target, "--tokens", "1024", "--seq-len", "64", "--threads", "2", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert f"model  {analyzed}" in r.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["model"]["path"] == str(analyzed) and rep["calibration"]["tokens"] >= 1024
    assert [x["width"] for x in rep["layers"]] == [128, 128]


def test_transformers_js_and_hub_layouts_are_measured_and_slimmed_with_text(tjs, hub, tmp_path):
    """eval, report --eval and slim --eval find the tokenizer where calibration does (above onnx/,
    in the snapshot a cache repo folder stands for), and a slim of a transformers.js repo takes
    its tokenizer and config along."""
    heldout = REPO_ROOT / "sui_onnx" / "data" / "heldout.txt"
    for target in (tjs, tjs / "onnx" / "model_fp16.onnx", hub.parent.parent):
        r = cli("eval", target, "--data", heldout, "--tokens", "200", "--json", tmp_path / "e.json")
        assert r.returncode == 0, (target, r.stderr)
        assert json.loads((tmp_path / "e.json").read_text())["sources"][0]["tokens"] >= 199
        r = cli("report", target, "--tokens", "1024", "--seq-len", "32", "--eval", heldout, "--eval-tokens", "128", "-q")
        assert r.returncode == 0, (target, r.stderr)
    out = tmp_path / "slim"
    r = cli("slim", tjs, out, "--ratio", "0.5", "--tokens", "1024", "--seq-len", "32", "--eval", heldout,
            "--eval-tokens", "128", "-q")
    assert r.returncode == 0, r.stderr
    for name in ("tokenizer.json", "config.json"):
        assert (out / name).read_bytes() == (tjs / name).read_bytes()
    assert not (out / "onnx").exists() and [x["width_after"] for x in json.loads((out / "slim.json").read_text())["layers"]] == [64, 64]


# ------------------------------------------------------------------------------ recipes
@pytest.mark.export
def test_recipe_rebuilds_bert_ortopt(tmp_path):
    """models/fixtures.py derives bert_ortopt from bert_w128 again: same fusions, same numbers."""
    pytest.importorskip("torch")
    from models.fixtures import SPEC_BY_NAME, build_fixture

    shutil.copytree(FIXTURES / "bert_w128", tmp_path / "bert_w128")
    record = build_fixture(SPEC_BY_NAME["bert_ortopt"], tmp_path, tokenizer=FIXTURES / "bert_w128" / "tokenizer.json")
    meta, committed = record["meta"], meta_of(FIXTURES / "bert_ortopt")
    assert meta["check"]["passed"] and meta["ort_optimizer"]["op_types"] == committed["ort_optimizer"]["op_types"]
    assert {"Attention", "BiasGelu", "EmbedLayerNormalization", "SkipLayerNormalization"} <= set(meta["ort_optimizer"]["op_types"])
    assert meta["onnx_taps"] == committed["onnx_taps"]


@pytest.mark.export
def test_genai_recipe_rebuilds_the_fixtures_byte_for_byte(tmp_path):
    """Only where onnxruntime-genai and transformers 5 are installed (models/genai_fixtures.py
    says how to make that venv); the committed fixtures are what it writes."""
    pytest.importorskip("onnxruntime_genai")
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the genai model builder needs transformers 5")
    from models import genai_fixtures

    genai_fixtures.main(["--out", str(tmp_path)])
    for name in GENAI:
        for f in ("model.onnx", "model.onnx.data", "genai_config.json", "reference.npz"):
            assert (tmp_path / name / f).read_bytes() == (DEPLOYED / name / f).read_bytes(), f"{name}/{f}"


def test_the_header_names_the_file_even_with_markup_in_its_path(tjs, tmp_path):
    from rich.console import Console

    from sui_onnx.render import header

    odd = tmp_path / "a[red]b[/x]" / "onnx"
    odd.mkdir(parents=True)
    shutil.copyfile(tjs / "onnx" / "model_q4.onnx", odd / "model_q4.onnx")
    ids = np.load(FIXTURES / "llama_w128" / "reference.npz")["input_ids"]
    np.save(tmp_path / "ids.npy", ids)
    rep = analyze(odd / "model_q4.onnx", CalibrationSpec([tmp_path / "ids.npy"]), AnalysisOptions(device="cpu", threads=2))
    console = Console(width=300, record=True)
    console.print(header(rep))
    assert f"model  {odd / 'model_q4.onnx'}" in console.export_text()


def test_an_empty_cache_with_an_unknown_head_size_is_a_one_line_error():
    """The untapped genai model as declared: 'kv_cache_dim' would be fed as 0 (onnxruntime's
    "should match the packed KV head dimension"); the feed builder says why instead."""
    from types import SimpleNamespace

    from sui_onnx.runner import FeedBuilder

    ids = SimpleNamespace(name="input_ids", type="tensor(int64)", shape=["batch_size", "sequence_length"])
    past = SimpleNamespace(name="past_key_values.0.key", type="tensor(float)",
                           shape=["batch_size", 1, "past_sequence_length", "kv_cache_dim"])
    with pytest.raises(CalibrationError, match="kv_cache_dim is symbolic"):
        FeedBuilder([ids, past])
    pinned = SimpleNamespace(name=past.name, type=past.type, shape=["batch_size", 1, "past_sequence_length", 16])
    assert FeedBuilder([ids, pinned])(np.zeros((2, 5), np.int64))[past.name].shape == (2, 1, 0, 16)
