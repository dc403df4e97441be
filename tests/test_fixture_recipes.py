"""Committed fixtures are complete and self-consistent; the recipe rebuilds them faithfully.

Fast tests (onnx + numpy, onnxruntime where installed) check every folder under
``tests/fixtures``; the ``export``-marked test rebuilds one fixture with ``models.fixtures``
(needs torch / transformers / optimum).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from sui_onnx.runner import FeedBuilder

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
FIXTURE_DIRS = sorted(p for p in FIXTURES.iterdir() if (p / "meta.json").exists()) if FIXTURES.exists() else []
TOLERANCE = 1e-4
META_KEYS = {"arch", "exporter", "n_layers", "d_model", "d_ff", "site_post_widths", "activation",
             "inputs", "notes", "onnx_taps", "check"}


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_fixture_set_is_present():
    names = {p.name for p in FIXTURE_DIRS}
    required = {"gpt2_w128", "gpt2_w256", "llama_w128", "llama_w256", "ngpt_w128", "ngpt_w256",
                "bert_w128", "gpt2_ortopt", "gpt2_int8", "llama_extdata", "llama_past"}
    assert required <= names, f"missing fixtures: {sorted(required - names)}"
    total = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    assert total < 10 * 2**20, f"fixtures take {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("folder", FIXTURE_DIRS, ids=_ids(FIXTURE_DIRS))
def test_fixture_folder_is_valid(folder: Path):
    for name in ("model.onnx", "meta.json", "reference.npz"):
        assert (folder / name).is_file(), f"{folder.name}/{name} missing"
    meta = json.loads((folder / "meta.json").read_text())
    assert META_KEYS <= set(meta), f"meta.json lacks {sorted(META_KEYS - set(meta))}"
    assert meta["check"]["passed"]

    model_path = folder / "model.onnx"
    model = onnx.load(str(model_path))              # path: external data is found next to it
    onnx.checker.check_model(str(model_path))       # path form handles external data and size
    assert [i.name for i in model.graph.input] == meta["inputs"]
    produced = {o for n in model.graph.node for o in n.output}
    assert set(meta["onnx_taps"].values()) <= produced

    with np.load(folder / "reference.npz") as ref:
        assert ref["input_ids"].shape == (2, 16)
        assert len(meta["site_post_widths"]) == meta["n_layers"]
        for i, width in enumerate(meta["site_post_widths"]):
            assert ref[f"post_{i}"].shape == (2, 16, width)
            assert ref[f"post_{i}"].dtype == np.float32
            assert ref[f"pre_{i}"].shape == (2, 16, width)


@pytest.mark.parametrize("folder", FIXTURE_DIRS, ids=_ids(FIXTURE_DIRS))
def test_fixture_taps_match_reference(folder: Path):
    """The recorded ONNX taps reproduce the PyTorch hook captures (int8 only loosely)."""
    ort = pytest.importorskip("onnxruntime")
    meta = json.loads((folder / "meta.json").read_text())
    model = onnx.load(str(folder / "model.onnx"))
    keys = sorted(meta["onnx_taps"])
    for key in keys:
        model.graph.output.append(onnx.ValueInfoProto(name=meta["onnx_taps"][key]))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    with np.load(folder / "reference.npz") as ref:
        outs = sess.run([meta["onnx_taps"][k] for k in keys], FeedBuilder(sess.get_inputs())(ref["input_ids"]))
        tol = TOLERANCE if meta["check"]["strict"] else 0.05
        for key, got in zip(keys, outs):
            diff = np.abs(got.reshape(ref[key].shape) - ref[key]).max()
            assert diff < tol, f"{folder.name} {key}: max abs diff {diff:.2e}"


@pytest.mark.export
def test_recipe_rebuilds_gpt2_fixture(tmp_path: Path):
    """Rebuild gpt2_w128 with the recipe; hooks match onnxruntime and the committed reference."""
    pytest.importorskip("torch")
    pytest.importorskip("optimum")
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(REPO_ROOT))   # `models` is a repo-root folder, not an installed package
    from models.fixtures import SPEC_BY_NAME, build_fixture

    committed = FIXTURES / "gpt2_w128"
    record = build_fixture(SPEC_BY_NAME["gpt2_w128"], tmp_path, tokenizer=committed / "tokenizer.json")
    check = record["meta"]["check"]
    assert check["passed"] and not check["missing_taps"]
    assert len(check["max_abs_diff"]) == 4
    assert max(check["max_abs_diff"].values()) < TOLERANCE
    with np.load(tmp_path / "gpt2_w128" / "reference.npz") as new, np.load(committed / "reference.npz") as old:
        assert sorted(new.files) == sorted(old.files)
        np.testing.assert_array_equal(new["input_ids"], old["input_ids"])
        for key in new.files:
            np.testing.assert_allclose(new[key], old[key], atol=TOLERANCE, rtol=0)
