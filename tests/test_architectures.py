"""Graph detection and tapping on real optimum exports of 44 more Hugging Face architectures
(decoders, encoders and the T5 / BART encoder-decoders), each against PyTorch hooks on the
down-projection input; and slim on every single-graph one and on optimum's merged decoders of six,
against the method computed in PyTorch. The recipe is models/architectures.py; needs the export stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")
if str(REPO_ROOT) not in sys.path:  # `models` is a repo-root folder, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from models import architectures as zoo  # noqa: E402

pytestmark = pytest.mark.export


@pytest.mark.parametrize("arch", zoo.ARCHS, ids=[a.name for a in zoo.ARCHS])
def test_every_ffn_is_found_and_tapped_exactly(arch, tmp_path):
    res = zoo.check(arch, tmp_path)
    assert res["widths"] == res["expected_widths"], f"{arch.name}: detected widths {res['widths']}"
    assert res["max_abs_diff"] < zoo.TOLERANCE, f"{arch.name}: taps differ from the hooks by {res['max_abs_diff']:.3g}"
    if arch.kind != "seq2seq":
        assert_slims_like_pytorch(res, arch, tmp_path)


def assert_slims_like_pytorch(res: dict, arch, tmp_path) -> None:
    """slim's narrowed graph (up/gate columns and down rows sliced, the refit and the folded bias)
    computes what the method computes on PyTorch's own activations."""
    s = zoo.slim_check(res["torch_model"], arch, res["files"]["model"], tmp_path)
    assert s["widths"] == s["expected_widths"] == [arch.d_ff // 2] * zoo.LAYERS
    assert s["max_abs_diff"] < SLIM_TOLERANCE * max(1.0, s["scale"]), f"{arch.name}: slim differs by {s['max_abs_diff']:.3g}"


SLIM_TOLERANCE = 2e-5  # float32 graphs against a float64 reference; a wrong neuron or a ridge 10x off gives >= 1e-4


@pytest.mark.parametrize("name", ["qwen2", "gemma2", "phi", "falcon", "bloom", "roberta"])
def test_torch_dynamo_exports_are_found_and_tapped_exactly(name, tmp_path):
    """torch.onnx.export(dynamo=True), torch's default exporter: other node names, no module
    scopes, weights in external data."""
    pytest.importorskip("onnxscript")
    arch = zoo.BY_NAME[name]
    res = zoo.check(arch, tmp_path, exporter="dynamo")
    assert (tmp_path / "model.onnx.data").is_file()
    assert res["widths"] == res["expected_widths"], f"{name}: detected widths {res['widths']}"
    assert res["max_abs_diff"] < zoo.TOLERANCE
    assert_slims_like_pytorch(res, arch, tmp_path)


def test_mixture_of_experts_taps_and_slims_every_expert_like_pytorch(tmp_path):
    """Qwen3-MoE: each expert is an FFN block of its layer, tapped on the tokens routed to it."""
    import onnx

    from sui_onnx.graph import find_taps

    arch, n = zoo.MOE, zoo.LAYERS * zoo.EXPERTS
    res = zoo.check(arch, tmp_path)
    assert res["widths"] == [arch.d_ff] * n
    assert res["max_abs_diff"] < zoo.TOLERANCE
    taps = find_taps(onnx.load(str(res["files"]["model"]), load_external_data=False))
    assert [t.group for t in taps] == [i for i in range(zoo.LAYERS) for _ in range(zoo.EXPERTS)]
    s = zoo.slim_check(res["torch_model"], arch, res["files"]["model"], tmp_path)
    assert s["widths"] == s["expected_widths"] == [arch.d_ff // 2] * n
    assert s["max_abs_diff"] < SLIM_TOLERANCE * max(1.0, s["scale"])


def test_the_survey_fails_when_a_tap_is_wrong(tmp_path, monkeypatch):
    """The comparison can fail: shift one tapped tensor and the check must notice."""
    real = zoo.tap_activations

    def shifted(path, ids, encoder=None):
        widths, outs = real(path, ids, encoder)
        outs[-1] = outs[-1] + 1e-3
        return widths, outs

    monkeypatch.setattr(zoo, "tap_activations", shifted)
    res = zoo.check(zoo.BY_NAME["qwen2"], tmp_path)
    assert res["max_abs_diff"] >= zoo.TOLERANCE


def test_the_slim_check_fails_on_a_wrong_neuron_or_another_ridge(tmp_path, monkeypatch):
    """The slim comparison can fail: a reference that keeps one other neuron in one layer, or
    uses another ridge (ten times slim's), must be told apart from slim's model."""
    import numpy as np

    arch = zoo.BY_NAME["qwen2"]
    res = zoo.check(arch, tmp_path)
    real = zoo.slim_reference

    def one_neuron_off(model, arch_, calib, ids, keep, weighted, ridge):
        other = np.setdiff1d(np.arange(arch_.d_ff), keep[-1])[0]
        return real(model, arch_, calib, ids, keep[:-1] + [np.r_[keep[-1][1:], other]], weighted, ridge)

    def ridge_ten_times(model, arch_, calib, ids, keep, weighted, ridge):
        return real(model, arch_, calib, ids, keep, weighted, 10 * ridge)

    for wrong in (one_neuron_off, ridge_ten_times):
        monkeypatch.setattr(zoo, "slim_reference", wrong)
        s = zoo.slim_check(res["torch_model"], arch, res["files"]["model"], tmp_path)
        assert s["max_abs_diff"] >= SLIM_TOLERANCE * max(1.0, s["scale"]), wrong.__name__


@pytest.mark.parametrize("arch", zoo.MERGED, ids=[a.name for a in zoo.MERGED])
def test_optimum_merged_decoders_slim_in_both_branches_like_pytorch(arch, tmp_path):
    """optimum's merged decoder (decoder_model_merged.onnx: If(use_cache_branch) over the legacy
    decoders without and with past, merged by optimum.onnx.merge_decoders): the narrowed model
    computes the method on PyTorch's activations, and its with-past branch the same model (one
    step with the cache gives the full run's last logits)."""
    model = zoo.build(arch)
    path = zoo.export_merged(model, arch, tmp_path)
    assert zoo.incremental_diff(path, zoo.input_ids()) < zoo.TOLERANCE
    s = zoo.slim_check(model, arch, path, tmp_path, save=tmp_path / "slim.onnx")
    assert s["widths"] == s["expected_widths"] == [arch.d_ff // 2] * zoo.LAYERS
    assert s["max_abs_diff"] < SLIM_TOLERANCE * max(1.0, s["scale"]), f"{arch.name}: slim differs by {s['max_abs_diff']:.3g}"
    assert zoo.incremental_diff(tmp_path / "slim.onnx", zoo.input_ids()) < zoo.TOLERANCE


def test_t5_kv_cache_exports_merged_decoder_equals_hooks_and_cache_only_decoder_is_refused(tmp_path):
    """optimum's with-past seq2seq export: decoder_model_merged.onnx (an If on use_cache_branch whose
    no-past branch names its outputs like the If) is inlined and tapped exactly;
    decoder_with_past_model.onnx, whose cross-attention reads only cached encoder keys, is refused
    (an empty cache would give wrong numbers)."""
    import numpy as np

    arch = zoo.BY_NAME["t5"]
    model = zoo.build(arch)
    ids = zoo.input_ids()
    ref = zoo.reference(model, arch, ids)[zoo.LAYERS:]  # the decoder's layers
    files = zoo.export(model, arch, tmp_path, with_past=True)
    widths, got = zoo.tap_activations(files["decoder_merged"], ids, encoder=files["encoder"])
    assert widths == [arch.d_ff] * zoo.LAYERS
    assert max(float(np.abs(g - r).max()) for g, r in zip(got, ref)) < zoo.TOLERANCE
    np.save(tmp_path / "ids.npy", ids)
    r = subprocess.run([sys.executable, "-m", "sui_onnx", "report", str(files["decoder_with_past"]),
                        "--calib", str(tmp_path / "ids.npy"), "-q"], capture_output=True, text=True)
    assert r.returncode == 2 and "decoder_with_past_model.onnx" in r.stderr and "Traceback" not in r.stderr
