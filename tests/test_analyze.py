"""analyze() end to end on committed exported fixtures: exact spectra against a two-pass NumPy
reference over raw onnxruntime outputs, text vs token ids, KV-cache inputs, resume, merge, passes."""

import hashlib
import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sui_onnx.analyze import AnalysisOptions, Interrupted, analyze, plan_groups
from sui_onnx.calib import CalibrationSpec
from sui_onnx.errors import SuiError
from sui_onnx.spectrum import load_accumulators

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.skipif(not (FIXTURES / "gpt2_w128").is_dir(), reason="fixtures not built")


def token_ids(path: Path, n_seq=12, seq=24, vocab=512, seed=0) -> Path:
    ids = np.random.default_rng(seed).integers(0, vocab, (n_seq, seq))
    np.save(path, ids)
    return path


# The FFN hidden tensors of the committed fixtures, read off their graphs once (Netron) and recorded here:
# the tensor the down-projection consumes (GPT-2's c_proj input after gelu, LLaMA's silu(gate) * up fed
# to down_proj, nGPT's scaled gated product fed to w_o). Not found by the package's own tap finder.
HIDDEN = {
    "gpt2_w128": ["/transformer/h.0/mlp/act/Mul_3_output_0", "/transformer/h.1/mlp/act/Mul_3_output_0"],
    "llama_w128": ["/model/layers.0/mlp/Mul_output_0", "/model/layers.1/mlp/Mul_output_0"],
    "ngpt_w128": ["/blocks.0/mlp/Mul_3_output_0", "/blocks.1/mlp/Mul_3_output_0"],
}


def raw_tap_outputs(model_dir: Path, ids: np.ndarray):
    """Independent path: the original graph with the hidden tensors added as outputs by onnx.helper,
    fed by hand (ids, an all-ones mask, positions 0..T-1 where the graph has those inputs), run by a
    plain InferenceSession; float64 rows (tokens x D) per FFN block."""
    graph = onnx.load(str(model_dir / "model.onnx"))
    names = HIDDEN[model_dir.name]
    graph.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = ids.astype(np.int64)
    by_name = {"input_ids": ids, "attention_mask": np.ones_like(ids),
               "position_ids": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()}
    outs = sess.run(names, {i.name: by_name[i.name] for i in sess.get_inputs()})
    return [np.asarray(o, dtype=np.float64).reshape(-1, o.shape[-1]) for o in outs]


def two_pass_eigs(rows: np.ndarray) -> np.ndarray:
    c = rows - rows.mean(axis=0)
    return np.clip(np.linalg.eigvalsh(c.T @ c / (len(rows) - 1))[::-1], 0, None)


@pytest.mark.parametrize("name", ["gpt2_w128", "llama_w128", "ngpt_w128"])
def test_token_id_spectra_equal_two_pass_reference(name, tmp_path):
    ids_path = token_ids(tmp_path / "ids.npy")
    ids = np.load(ids_path)
    rows = raw_tap_outputs(FIXTURES / name, ids)
    assert [r.shape for r in rows] == [(ids.size, 128)] * 2
    ref = [two_pass_eigs(r) for r in rows]
    exact = analyze(FIXTURES / name, CalibrationSpec([ids_path], batch_size=5), AnalysisOptions(device="cpu", precision="fp64"))
    fast = analyze(FIXTURES / name, CalibrationSpec([ids_path], batch_size=5), AnalysisOptions(device="cpu"))
    assert [x.tokens for x in exact.layers] == [ids.size] * len(ref)
    assert [x.tensor for x in exact.layers] == HIDDEN[name] and [x.width for x in exact.layers] == [128, 128]
    for ev_exact, ev_fast, want in zip(exact.eigenvalues, fast.eigenvalues, ref):
        np.testing.assert_allclose(ev_exact, want, rtol=1e-6, atol=1e-9 * want[0])
        np.testing.assert_allclose(ev_fast, want, rtol=0, atol=2e-6 * want[0])
    for a, b in zip(exact.layers, fast.layers):
        assert b.sui == pytest.approx(a.sui, rel=1e-4) and b.hard_rank == pytest.approx(a.hard_rank, rel=1e-4)


def test_text_calibration_equals_the_same_tokens_as_ids(tmp_path):
    from tokenizers import Tokenizer

    text = (Path(__file__).parent.parent / "sui_onnx" / "data" / "calib.txt").read_text(encoding="utf-8")[:20000]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    tok = Tokenizer.from_file(str(FIXTURES / "gpt2_w128" / "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    n = (len(ids) // 32) * 32
    np.save(tmp_path / "ids.npy", np.asarray(ids[:n]).reshape(-1, 32))
    opts = AnalysisOptions(device="cpu", precision="fp64")
    by_text = analyze(FIXTURES / "gpt2_w128", CalibrationSpec([tmp_path / "t.txt"], seq_len=32, batch_size=4, tokens=n), opts)
    by_ids = analyze(FIXTURES / "gpt2_w128", CalibrationSpec([tmp_path / "ids.npy"], batch_size=4), opts)
    assert by_text.calibration["tokens"] == by_ids.calibration["tokens"] == n
    for a, b in zip(by_text.eigenvalues, by_ids.eigenvalues):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14 * b[0])


def test_kv_cache_model_with_empty_past_matches_the_plain_export(tmp_path):
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=6, seq=16)
    opts = AnalysisOptions(device="cpu", precision="fp64")
    past = analyze(FIXTURES / "llama_past", CalibrationSpec([ids_path]), opts)
    plain = analyze(FIXTURES / "llama_w128", CalibrationSpec([ids_path]), opts)
    for a, b in zip(past.eigenvalues, plain.eigenvalues):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9 * b[0])


def test_external_data_model_is_analyzed_in_place(tmp_path):
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=4, seq=16)
    before = {p.name: p.read_bytes() for p in (FIXTURES / "llama_extdata").iterdir()}
    rep = analyze(FIXTURES / "llama_extdata", CalibrationSpec([ids_path]), AnalysisOptions(device="cpu"))
    assert rep.model["external_data"] is True and len(rep.layers) == 2
    after = {p.name: p.read_bytes() for p in (FIXTURES / "llama_extdata").iterdir()}
    assert after == before  # nothing written into or left in the model's folder


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path):
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=20, seq=16)
    spec = CalibrationSpec([ids_path], batch_size=2)
    whole = analyze(FIXTURES / "gpt2_w128", spec, AnalysisOptions(device="cpu"))
    ckpt = tmp_path / "ck.npz"

    def stop_after_four(done, total, desc):
        if done >= 4 * 32:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"interrupted after 128 tokens; checkpoint saved to \S*ck\.npz"):
        analyze(FIXTURES / "gpt2_w128", spec, AnalysisOptions(device="cpu", checkpoint=ckpt, checkpoint_every=3, progress=stop_after_four))
    _, meta = load_accumulators(ckpt)
    assert meta["batches_done"] == 4 and not meta["complete"]
    resumed = analyze(FIXTURES / "gpt2_w128", spec, AnalysisOptions(device="cpu", resume=ckpt))
    for a, b in zip(resumed.eigenvalues, whole.eigenvalues):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15 * b[0])
    assert [x.tokens for x in resumed.layers] == [x.tokens for x in whole.layers]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=4, seq=16)
    ckpt = tmp_path / "ck.npz"
    analyze(FIXTURES / "gpt2_w128", CalibrationSpec([ids_path]), AnalysisOptions(device="cpu", checkpoint=ckpt))
    with pytest.raises(SuiError, match=re.escape("checkpoint was made with other settings (batch size: 8 vs 3)")):
        analyze(FIXTURES / "gpt2_w128", CalibrationSpec([ids_path], batch_size=3), AnalysisOptions(device="cpu", resume=ckpt))
    sha = {n: hashlib.sha256((FIXTURES / n / "model.onnx").read_bytes()).hexdigest() for n in ("gpt2_w128", "gpt2_w256")}
    with pytest.raises(SuiError, match=re.escape(f"other settings (model sha256: '{sha['gpt2_w128']}' vs '{sha['gpt2_w256']}')")):
        analyze(FIXTURES / "gpt2_w256", CalibrationSpec([ids_path]), AnalysisOptions(device="cpu", resume=ckpt))


def test_merged_halves_equal_the_whole(tmp_path):
    from sui_onnx.cli import main

    ids = np.random.default_rng(3).integers(0, 512, (16, 16))
    np.save(tmp_path / "a.npy", ids[:8])
    np.save(tmp_path / "b.npy", ids[8:])
    np.save(tmp_path / "all.npy", ids)
    model = str(FIXTURES / "gpt2_w128")
    for part in ("a", "b"):
        assert main(["report", model, "--calib", str(tmp_path / f"{part}.npy"), "--checkpoint", str(tmp_path / f"{part}.npz"), "-q", "--device", "cpu", "--precision", "fp64"]) == 0
    assert main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "-o", str(tmp_path / "m.npz")]) == 0
    assert main(["report", model, "--stats", str(tmp_path / "m.npz"), "--json", str(tmp_path / "m.json"), "-q"]) == 0
    assert main(["report", model, "--calib", str(tmp_path / "all.npy"), "--json", str(tmp_path / "w.json"), "-q", "--device", "cpu", "--precision", "fp64"]) == 0
    merged, whole = (json.loads((tmp_path / f).read_text()) for f in ("m.json", "w.json"))
    for a, b in zip(merged["layers"], whole["layers"]):
        assert a["tokens"] == b["tokens"] == ids.size
        for key in ("hard_rank", "soft_rank", "concentration", "sui"):
            assert a[key] == pytest.approx(b[key], rel=1e-9)


def test_layer_groups_in_several_passes_equal_one_pass(tmp_path):
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=6, seq=16)
    one = analyze(FIXTURES / "llama_w128", CalibrationSpec([ids_path]), AnalysisOptions(device="cpu"))
    per_layer = 8 * (128 * 128 + 128)
    assert plan_groups([128, 128], per_layer) == [[0], [1]]
    two = analyze(FIXTURES / "llama_w128", CalibrationSpec([ids_path]), AnalysisOptions(device="cpu", max_memory=per_layer))
    assert two.runtime["passes"] == 2
    for a, b in zip(one.eigenvalues, two.eigenvalues):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15 * b[0])


def test_low_token_counts_are_flagged(tmp_path):
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=2, seq=40)
    rep = analyze(FIXTURES / "gpt2_w128", CalibrationSpec([ids_path]), AnalysisOptions(device="cpu"))
    assert all(x.status == "rank_capped" and "low_tokens" in x.flags for x in rep.layers)
    assert "rank capped" in rep.layers[0].message


def test_pre_site_taps_the_up_projection(tmp_path):
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=4, seq=16)
    rep = analyze(FIXTURES / "llama_w128", CalibrationSpec([ids_path]), AnalysisOptions(device="cpu", site="pre"))
    assert [x.site for x in rep.layers] == ["pre", "pre"]
    assert "gate_proj" in rep.layers[0].tensor


def test_accumulation_memory_does_not_grow_with_tokens(tmp_path):
    peaks = []
    for n_seq in (8, 64):
        ids_path = token_ids(tmp_path / f"ids{n_seq}.npy", n_seq=n_seq, seq=64)
        tracemalloc.start()
        analyze(FIXTURES / "gpt2_w128", CalibrationSpec([ids_path], batch_size=4), AnalysisOptions(device="cpu"))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.15 * peaks[0], peaks


def test_progress_names_the_eigenvalue_phase(tmp_path):
    """After the last batch the bar would sit at 100% while eigvalsh runs (minutes for wide
    layers); the description says which layer is being solved."""
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=4, seq=16)
    seen = []
    analyze(FIXTURES / "llama_w128", CalibrationSpec([ids_path]),
            AnalysisOptions(device="cpu", progress=lambda done, total, desc: seen.append((done, total, desc))))
    assert [d for _, _, d in seen][-2:] == ["calibrating: eigenvalues 1/2", "calibrating: eigenvalues 2/2"]
    assert seen[-1][0] == seen[-1][1] == 64


def test_pre_site_on_a_fused_fastgelu_graph_matches_the_unfused_export(tmp_path):
    """gpt2_ortopt folds the up-projection bias into FastGelu, so its pre tap is x W without b:
    a constant column offset, which leaves the covariance (and every metric) unchanged."""
    ids_path = token_ids(tmp_path / "ids.npy", n_seq=16, seq=32)
    opts = AnalysisOptions(device="cpu", site="pre", precision="fp64")
    plain = analyze(FIXTURES / "gpt2_w128", CalibrationSpec([ids_path]), opts)
    fused = analyze(FIXTURES / "gpt2_ortopt", CalibrationSpec([ids_path]), opts)
    for a, b in zip(plain.eigenvalues, fused.eigenvalues):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * a[0])
    for a, b in zip(plain.layers, fused.layers):
        assert b.sui == pytest.approx(a.sui, rel=1e-6)


def test_merged_statistics_keep_the_window_length_so_the_gate_compares_it(tmp_path, capsys):
    """A merge records the shards' --seq-len (they must agree), so check --baseline refuses a
    baseline fed other windows, as it does for a direct report; shards of two window lengths are
    refused."""
    from sui_onnx.cli import main

    demo = Path(__file__).resolve().parent.parent / "sui_onnx" / "data"
    text = (demo / "calib.txt").read_text(encoding="utf-8")
    half = len(text) // 2
    (tmp_path / "a.txt").write_text(text[:half], encoding="utf-8")
    (tmp_path / "b.txt").write_text(text[half:], encoding="utf-8")
    model = str(demo / "demo")
    run = ["--tokens", "1024", "-q", "--device", "cpu"]
    for part, seq in (("a", 64), ("b", 64), ("b128", 128)):
        src = tmp_path / f"{part[0]}.txt"
        assert main(["report", model, "--calib", str(src), "--seq-len", str(seq), "--checkpoint",
                     str(tmp_path / f"{part}.npz"), *run]) == 0
    assert main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "-o", str(tmp_path / "m.npz")]) == 0
    assert main(["report", model, "--stats", str(tmp_path / "m.npz"), "--json", str(tmp_path / "m.json"), "-q"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["calibration"]["seq_len"] == 64
    assert main(["report", model, "--calib", str(tmp_path / "a.txt"), "--calib", str(tmp_path / "b.txt"), "--mix", "even",
                 "--tokens", "2048", "--seq-len", "128", "-q", "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "m.json"), "--baseline", str(tmp_path / "e.json"), "--max-drop", "0.5"]) == 2
    assert "windows of 128 tokens" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b128.npz"), "-o", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "windows of 64" in err and "128" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()
