"""Detection and tapping on the real exported fixtures in tests/fixtures/NAME/ (skipped when
none exist): one tap per layer with width d_ff, and the tapped model's onnxruntime outputs on
reference.npz's input_ids equal the PyTorch hook captures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sui_onnx.graph import find_taps, load_model, write_tapped
from tests.graph_synthetic import default_feeds

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = sorted(p.name for p in FIXTURES.glob("*") if (p / "model.onnx").is_file() and (p / "meta.json").is_file())
pytestmark = pytest.mark.skipif(not NAMES, reason="no exported fixtures in tests/fixtures")


def meta_of(name: str) -> dict:
    return json.loads((FIXTURES / name / "meta.json").read_text())


def fused_bias(model: onnx.ModelProto, tensor: str) -> np.ndarray | None:
    """The bias a FastGelu/BiasGelu adds to ``tensor`` (the documented pre-tap gap)."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("FastGelu", "BiasGelu") and node.input[0] == tensor and len(node.input) > 1:
            return onnx.numpy_helper.to_array(inits[node.input[1]])
    return None


@pytest.mark.parametrize("name", NAMES or ["none"])
def test_fixture_taps(name, tmp_path):
    meta = meta_of(name)
    folder = FIXTURES / name
    src = load_model(folder)
    if src.has_external_data:  # the tapped copy must sit beside the data: work on a copy
        folder = tmp_path / name
        shutil.copytree(FIXTURES / name, folder)
        src = load_model(folder)
    ref = np.load(FIXTURES / name / "reference.npz")
    ids = ref["input_ids"]
    exact = meta.get("check", {}).get("strict", True) and "int8" not in meta.get("exporter", "")
    for site in ("post", "pre"):
        taps = find_taps(src.model, site)
        assert [t.layer for t in taps] == list(range(meta["n_layers"]))
        assert [t.width for t in taps] == [meta["d_ff"]] * meta["n_layers"]
        assert len({t.tensor for t in taps}) == len(taps)
        out = write_tapped(src, taps, tmp_path / f"{site}.onnx")
        onnx.checker.check_model(str(out))
        assert [i.name for i in onnx.load(str(out), load_external_data=False).graph.input] == meta["inputs"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
        got = sess.run(None, default_feeds(src.model, ids))
        for tap, value in zip(taps, got):
            key = f"{site}_{tap.layer}"
            want = ref[key]
            assert value.shape[-1] == tap.width and value.size == want.size, (key, value.shape)
            value = value.reshape(want.shape)  # OPT flattens tokens: [batch*seq, D]
            if site == "pre":
                bias = fused_bias(src.model, tap.tensor)
                if bias is not None:
                    value = value + bias
            if exact:
                np.testing.assert_allclose(value, want, atol=1e-4, rtol=0, err_msg=key)
            else:  # dynamic int8: loose agreement with the float reference
                assert np.abs(value - want).max() < 0.05 * np.abs(want).max() + 0.02, key
                assert np.corrcoef(value.ravel(), want.ravel())[0, 1] > 0.999, key
        if out.parent == src.folder:
            out.unlink()


@pytest.mark.parametrize("name", NAMES or ["none"])
def test_fixture_taps_match_the_recorded_tensors(name):
    """The fixture builder records the tensors it expects (meta onnx_taps); agree with them."""
    meta = meta_of(name)
    expected = meta.get("onnx_taps") or {}
    if not expected:
        pytest.skip("fixture records no tensor names")
    src = load_model(FIXTURES / name)
    for site in ("post", "pre"):
        for tap in find_taps(src.model, site):
            key = f"{site}_{tap.layer}"
            if key in expected:
                assert tap.tensor == expected[key], key
