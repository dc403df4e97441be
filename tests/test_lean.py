"""Lean loading (graph/lean.py): large initializers become references into the model file itself.
The references point at exactly the original bytes, onnxruntime computes the same outputs from
them, nothing else in the proto changes, and malformed input fails cleanly."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sui_onnx.graph.lean as lean
from sui_onnx.analyze import AnalysisOptions, analyze
from sui_onnx.calib import CalibrationSpec
from sui_onnx.errors import ModelError
from sui_onnx.graph import find_taps, load_model, tapped_model
from sui_onnx.graph.source import external_info
from sui_onnx.memory import weight_bytes
from sui_onnx.metrics import spectral_metrics
from sui_onnx.runner import FeedBuilder, TapRunner

from .onnx_builders import tiny_lm

FIXTURES = Path(__file__).parent / "fixtures"
BIG_VOCAB = 4096  # embedding 4096 x 128 float32 = 2 MiB: above lean.MIN_BYTES


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    lm = tiny_lm(vocab=BIG_VOCAB, d_model=128, d_ff=96, n_layers=2)
    return lm, lm.save(tmp_path_factory.mktemp("big"))


def _outputs(session, ids):
    return session.run(None, FeedBuilder(session.get_inputs())(ids))


def test_large_initializers_reference_their_own_bytes_in_the_file(big):
    lm, path = big
    data, moved = lean.read_lean(path)
    model = onnx.ModelProto.FromString(data)
    original = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    file_bytes = path.read_bytes()
    referenced = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert moved == len(referenced) == 2  # emb and emb_t; every other tensor is below MIN_BYTES
    for t in model.graph.initializer:
        orig = original[t.name]
        assert list(t.dims) == list(orig.dims) and t.data_type == orig.data_type
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = external_info(t)
            assert info["location"] == path.name and not t.raw_data
            start, length = int(info["offset"]), int(info["length"])
            assert file_bytes[start:start + length] == orig.raw_data
        else:
            assert t.SerializeToString() == orig.SerializeToString()
    assert len(data) < 0.05 * len(file_bytes)
    stripped = onnx.ModelProto.FromString(file_bytes)
    del stripped.graph.initializer[:]
    del model.graph.initializer[:]
    assert model.SerializeToString() == stripped.SerializeToString()  # nothing else changed


def test_onnxruntime_computes_the_same_from_the_references(big):
    lm, path = big
    src = load_model(path, lean=True)
    assert src.weights_in_place and not src.has_external_data and src.data_folder == path.parent
    assert weight_bytes(src.model) == weight_bytes(load_model(path).model)
    ids = np.random.default_rng(0).integers(0, BIG_VOCAB, (2, 9))
    so = ort.SessionOptions()
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    lean_sess = ort.InferenceSession(src.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for a, b in zip(_outputs(lean_sess, ids), _outputs(plain, ids)):
        np.testing.assert_array_equal(a, b)


def test_analysis_of_a_lean_loaded_model_equals_the_reference(big, tmp_path):
    lm, path = big
    ids = np.random.default_rng(1).integers(0, BIG_VOCAB, (16, 24))
    np.save(tmp_path / "ids.npy", ids)
    rep = analyze(path, CalibrationSpec([tmp_path / "ids.npy"]), AnalysisOptions(device="cpu", precision="fp64"))
    assert rep.model["external_data"] is False  # provenance describes the file, not the trick
    for layer, act in zip(rep.layers, lm.post_activations(ids)):
        x = act.reshape(-1, act.shape[-1])
        ev = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1].clip(0)
        assert layer.hard_rank == pytest.approx(spectral_metrics(ev).hard_rank, rel=1e-5)


@pytest.mark.parametrize("name", ["gpt2_w128", "llama_w128", "gpt2_int8", "gpt2_ortopt", "llama_extdata", "bert_w128"])
def test_every_fixture_taps_the_same_with_all_initializers_referenced(name, monkeypatch):
    """With MIN_BYTES = 4 KiB every weight matrix of these tiny models becomes a reference
    (external-data fixtures keep theirs): detection and the tapped activations do not change.
    (Tiny shape constants must stay embedded: onnxruntime's shape inference reads them while it
    loads a model from bytes; the real MIN_BYTES is 1 MiB.)"""
    folder = FIXTURES / name
    plain = load_model(folder)
    monkeypatch.setattr(lean, "MIN_BYTES", 4096)
    leaned = load_model(folder, lean=True)
    assert leaned.weights_in_place == (name != "llama_extdata")  # all its weights are external already
    assert leaned.has_external_data == plain.has_external_data
    taps_plain, taps_lean = find_taps(plain.model), find_taps(leaned.model)
    assert [t.tensor for t in taps_lean] == [t.tensor for t in taps_plain]
    ids = np.load(folder / "reference.npz")["input_ids"]
    widths = [t.width for t in taps_plain]
    run_plain = TapRunner(tapped_model(plain, taps_plain).SerializeToString(), [t.tensor for t in taps_plain], "cpu",
                          external_folder=plain.data_folder)
    expected = [np.array(o) for o in run_plain.run(ids, widths)]
    run_lean = TapRunner(tapped_model(leaned, taps_lean).SerializeToString(), [t.tensor for t in taps_lean], "cpu",
                         external_folder=leaned.data_folder)
    for got, want in zip(run_lean.run(ids, widths), expected):
        np.testing.assert_array_equal(got, want)


def test_garbage_of_lean_size_is_a_one_line_model_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 2 * lean.MIN_BYTES, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(bad, lean=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_the_wire_reader_only_ever_raises_wire_error(data):
    try:
        lean.lean_model_bytes(data, "m.onnx")
    except lean.WireError:
        pass


def test_a_symlinked_model_as_in_the_hugging_face_cache_refers_to_the_real_file(big, tmp_path):
    """snapshots/<rev>/model.onnx -> ../../blobs/<hash>: the references name the blob in its own
    folder (a reference through the link would leave the model folder and be refused)."""
    lm, path = big
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snap.mkdir(parents=True)
    blob = blobs / "0123abcd"
    blob.write_bytes(path.read_bytes())
    (snap / "model.onnx").symlink_to(Path("..") / ".." / "blobs" / blob.name)
    src = load_model(snap, lean=True)
    assert src.weights_in_place and src.data_folder == blobs.resolve() and src.folder == snap
    assert {external_info(t)["location"] for t in src.model.graph.initializer if external_info(t)} == {blob.name}
    ids = np.random.default_rng(2).integers(0, BIG_VOCAB, (12, 16))
    np.save(tmp_path / "ids.npy", ids)
    spec = CalibrationSpec([tmp_path / "ids.npy"])
    via_link = analyze(snap, spec, AnalysisOptions(device="cpu"))
    direct = analyze(path, spec, AnalysisOptions(device="cpu"))
    assert [x.hard_rank for x in via_link.layers] == [x.hard_rank for x in direct.layers]


def test_a_symlinked_model_with_its_own_external_data_is_loaded_whole(tmp_path, monkeypatch):
    """Weights in two folders (the blob's and the external data beside the link) cannot be given
    to onnxruntime as one folder: such a model is loaded the usual way."""
    ext = FIXTURES / "llama_extdata"
    real_dir, link_dir = tmp_path / "real", tmp_path / "link"
    real_dir.mkdir()
    link_dir.mkdir()
    model = onnx.load(str(ext / "model.onnx"), load_external_data=False)
    # make one external tensor embedded again, large enough to be moved by a lean load
    t = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    info = external_info(t)
    data = (ext / info["location"]).read_bytes()[int(info.get("offset", 0)):][: int(info["length"])]
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT
    t.raw_data = data
    onnx.save(model, str(real_dir / "model.onnx"))
    (link_dir / "model.onnx").symlink_to(real_dir / "model.onnx")
    (link_dir / info["location"]).write_bytes((ext / info["location"]).read_bytes())
    monkeypatch.setattr(lean, "MIN_BYTES", 1024)
    assert lean.read_lean(real_dir / "model.onnx")[1] >= 1  # a lean load would move a tensor...
    src = load_model(link_dir, lean=True)  # ...but the link forbids it here
    assert not src.weights_in_place and src.has_external_data and src.data_folder == link_dir


def test_a_file_that_cannot_be_mapped_is_loaded_whole(big, monkeypatch):
    lm, path = big

    def no_mmap(_path):
        raise OSError(19, "No such device")  # e.g. a filesystem without mmap

    monkeypatch.setattr(lean, "read_lean", no_mmap)
    src = load_model(path, lean=True)
    assert not src.weights_in_place and src.data_folder is None
    assert sum(len(t.raw_data) for t in src.model.graph.initializer) > lean.MIN_BYTES
