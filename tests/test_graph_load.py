"""Safe loading (bad files, external-data path checks) and where write_tapped writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sui_onnx.errors import ModelError
from sui_onnx.graph import find_taps, load_model, tapped_model, write_tapped
from tests.graph_synthetic import build_transformer, default_feeds

IDS = np.random.default_rng(3).integers(0, 40, (2, 4)).astype(np.int64)


@pytest.fixture(scope="module")
def syn():
    return build_transformer("relu", n_layers=2)


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (to prove inputs are left byte-identical)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def save_external(model: onnx.ModelProto, folder: Path, name: str = "model.onnx", data: str = "model.onnx_data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model(save_as_external_data=True) rewrites the proto it is given
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=64)  # onnxruntime needs shape constants inline
    return path


def set_location(path: Path, location: str) -> None:
    """Point every external tensor of ``path`` at ``location`` (rewrites the .onnx only)."""
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(m.SerializeToString())


def expect_model_error(path, match: str) -> str:
    with pytest.raises(ModelError) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and match in msg, msg
    return msg


# ------------------------------------------------------------------------------ loading
def test_load_file_and_folder(tmp_path, syn):
    path = tmp_path / "model.onnx"
    onnx.save(syn.model, str(path))
    for arg in (path, str(path), tmp_path):
        src = load_model(arg)
        assert src.path == path and src.folder == tmp_path
        assert src.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert src.opset == 20 and not src.has_external_data
        assert len(src.model.graph.node) == len(syn.model.graph.node)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "random", "folder", "folder_other", "folder_named_onnx",
                                  "model_onnx_is_a_folder"])
def test_bad_inputs_raise_one_line(tmp_path, case):
    target: Path = tmp_path / "x.onnx"
    if case == "empty":
        target.write_bytes(b"")
    elif case == "text":
        target.write_text("hello, I am not a model\n" * 20)
    elif case == "random":
        target.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "folder":
        target = tmp_path
    elif case == "folder_other":
        (tmp_path / "decoder_model_merged.onnx").write_bytes(b"x")
        target = tmp_path
    elif case == "folder_named_onnx":  # a folder whose name ends in .onnx is not taken for a file
        target.mkdir()
    elif case == "model_onnx_is_a_folder":  # nor a folder called model.onnx inside one, nor offered
        (tmp_path / "model.onnx").mkdir()
        target = tmp_path
    before = digest(tmp_path)
    match = {"missing": "does not exist", "empty": "empty", "text": "not an ONNX model",
             "random": "not", "folder": "holds no model.onnx", "folder_other": "decoder_model_merged.onnx",
             "folder_named_onnx": "x.onnx is a folder, not an ONNX file",
             "model_onnx_is_a_folder": "holds no model.onnx (model.onnx there is a folder"}[case]
    expect_model_error(target, match)
    assert digest(tmp_path) == before


def test_truncated_files(tmp_path, syn):
    data = syn.model.SerializeToString()
    graph_end = len(data) - sum(len(helper.make_opsetid(o.domain, o.version).SerializeToString()) + 2
                                for o in syn.model.opset_import) - 40
    cuts = sorted({1, 7, 100, len(data) // 3, len(data) // 2, len(data) - 5, len(data) - 1}
                  | set(range(max(graph_end, 1), len(data), 3)))
    for cut in cuts:
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        before = path.read_bytes()
        with pytest.raises(ModelError) as err:
            load_model(path)
        assert "\n" not in str(err.value)
        assert path.read_bytes() == before


# ------------------------------------------------------------------------------ external data
def test_external_data_loads_without_reading_it(tmp_path, syn):
    path = save_external(syn.model, tmp_path / "m")
    src = load_model(path.parent)
    assert src.has_external_data
    external = [t for t in src.model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert len(external) > 10 and all(not t.raw_data for t in external)
    assert [t.width for t in find_taps(src.model)] == [syn.d_ff] * 2


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "sub/../../outside.bin", "C:\\x.bin", "\\\\host\\share\\x"])
def test_external_data_traversal_refused(tmp_path, syn, location):
    path = save_external(syn.model, tmp_path / "m")
    (tmp_path / "outside.bin").write_bytes((tmp_path / "m" / "model.onnx_data").read_bytes())
    set_location(path, location)
    before = digest(tmp_path)
    msg = expect_model_error(path, "path traversal refused")
    assert location in msg or repr(location) in msg
    assert digest(tmp_path) == before


def test_external_data_symlink_escape_refused(tmp_path, syn):
    path = save_external(syn.model, tmp_path / "m")
    data = tmp_path / "m" / "model.onnx_data"
    shutil.move(data, tmp_path / "elsewhere.bin")
    try:
        os.symlink(tmp_path / "elsewhere.bin", data)
    except OSError:
        pytest.skip("no symlinks here")
    expect_model_error(path, "symlink")


def test_external_data_missing_or_short(tmp_path, syn):
    path = save_external(syn.model, tmp_path / "m")
    data = tmp_path / "m" / "model.onnx_data"
    full = data.read_bytes()
    data.write_bytes(full[: len(full) // 2])
    expect_model_error(path, "too short")
    data.unlink()
    msg = expect_model_error(path, "missing")
    assert "model.onnx_data" in msg


def test_over_2gb_external_weight_stays_on_disk(tmp_path):
    """A 2.5 GB weight (sparse file): load, detect and tap without touching its bytes."""
    d, D = 16, 40_000_000  # w1: 16 x 40M float32 = 2.56 GB
    folder = tmp_path / "big"
    folder.mkdir()
    with open(folder / "weights.bin", "wb") as f:
        f.truncate(2 * d * D * 4 + 4096)
    if os.stat(folder / "weights.bin").st_blocks * 512 > 1 << 26:
        pytest.skip("filesystem has no sparse files")

    def ext(name, dims, offset):
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(int(np.prod(dims)) * 4))):
            t.external_data.add(key=k, value=v)
        return t

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["u"]), helper.make_node("Relu", ["u"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["z"]), helper.make_node("Add", ["x", "z"], ["y"])]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", d])],
                          [ext("w1", [d, D], 0), ext("w2", [D, d], d * D * 4)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    src = load_model(folder)
    taps = find_taps(src.model)
    assert [(t.width, t.activation, t.tensor) for t in taps] == [(D, "relu", "a")]
    out = write_tapped(src, taps, tmp_path / "elsewhere" / "tapped.onnx")
    assert out == folder / "tapped.onnx" and out.stat().st_size < 10_000


# ------------------------------------------------------------------------------ write_tapped
def test_write_tapped_plain_goes_to_out_path(tmp_path, syn):
    path = tmp_path / "in" / "model.onnx"
    path.parent.mkdir()
    onnx.save(syn.model, str(path))
    before = digest(tmp_path / "in")
    src = load_model(path)
    taps = find_taps(src.model, "pre")
    out = write_tapped(src, taps, tmp_path / "out" / "t.onnx")
    assert out == tmp_path / "out" / "t.onnx"
    onnx.checker.check_model(str(out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["t.onnx"]  # no temp files left
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, default_feeds(src.model, IDS))
    for g, want in zip(got, syn.reference(IDS)["pre"]):
        np.testing.assert_allclose(g, want, atol=2e-5, rtol=1e-4)
    assert digest(tmp_path / "in") == before
    with pytest.raises(ModelError, match="refusing to overwrite"):
        write_tapped(src, taps, path)


def test_write_tapped_external_data_lands_in_model_folder(tmp_path, syn):
    path = save_external(syn.model, tmp_path / "m")
    before = digest(tmp_path / "m")
    src = load_model(path)
    taps = find_taps(src.model)
    out = write_tapped(src, taps, tmp_path / "other" / "tapped.onnx")
    assert out == tmp_path / "m" / "tapped.onnx"  # data locations stay valid, nothing copied
    onnx.checker.check_model(str(out))
    tapped = onnx.load(str(out), load_external_data=False)
    assert {e.value for t in tapped.graph.initializer for e in t.external_data if e.key == "location"} == {"model.onnx_data"}
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, default_feeds(src.model, IDS))
    for g, want in zip(got, syn.reference(IDS)["post"]):
        np.testing.assert_allclose(g, want, atol=2e-5, rtol=1e-4)
    out.unlink()
    assert digest(tmp_path / "m") == before
    with pytest.raises(ModelError, match="refusing to overwrite"):
        write_tapped(src, taps, tmp_path / "m" / "model.onnx_data")
    # in memory, for the runner: bytes + the external-data folder
    so = ort.SessionOptions()
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(src.folder))
    sess = ort.InferenceSession(tapped_model(src, taps).SerializeToString(), so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, default_feeds(src.model, IDS))[0], syn.reference(IDS)["post"][0], atol=2e-5)


def test_write_tapped_rejects_bad_taps(tmp_path, syn):
    path = tmp_path / "model.onnx"
    onnx.save(syn.model, str(path))
    src = load_model(path)
    taps = find_taps(src.model)
    with pytest.raises(ModelError, match="no taps"):
        write_tapped(src, [], tmp_path / "t.onnx")
    with pytest.raises(ModelError, match="same tensor"):
        write_tapped(src, [taps[0], taps[0]], tmp_path / "t.onnx")
    ghost = type(taps[0])(**{**taps[0].to_dict(), "tensor": "ghost"})
    with pytest.raises(ModelError, match="ghost"):
        write_tapped(src, [ghost], tmp_path / "t.onnx")
    assert not (tmp_path / "t.onnx").exists()


def test_external_data_in_subgraph_checked(tmp_path, syn):
    """Locations are vetted in If-branch initializers too."""
    t = TensorProto(name="w_sub", data_type=TensorProto.FLOAT, dims=[2])
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../secret.bin")
    branch = helper.make_graph([helper.make_node("Identity", ["w_sub"], ["o"])], "b", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])], [t])
    other = helper.make_graph([helper.make_node("Constant", [], ["o2"], value_floats=[1.0, 2.0])], "c", [],
                              [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [2])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)], "g",
                          [helper.make_tensor_value_info("c", TensorProto.BOOL, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    expect_model_error(path, "path traversal refused")


def test_invalid_utf8_name_is_a_model_error(tmp_path, syn):
    """protobuf decodes strings lazily: a corrupt name must fail at load, as one line."""
    m = onnx.ModelProto()
    m.CopyFrom(syn.model)
    m.graph.node[3].name = "ZZZZZZZZ"
    data = m.SerializeToString().replace(b"ZZZZZZZZ", b"\x80ZZZZZZZ")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    expect_model_error(path, "UTF-8")
    assert path.read_bytes() == data


def test_malformed_graph_gives_model_error_not_traceback(syn):
    """Attributes of the wrong type (a corrupt or hand-made graph) surface as ModelError."""
    m = onnx.ModelProto()
    m.CopyFrom(syn.model)
    for node in m.graph.node:
        if node.op_type == "MatMul":
            node.input.pop()  # a projection without a weight operand
    with pytest.raises(ModelError) as err:
        find_taps(m)
    assert "\n" not in str(err.value)


def test_taps_lists_a_model_whose_external_data_is_missing(tmp_path):
    """taps reads the graph's structure only: a model.onnx copied without its external data file is
    listed (the same taps as with it); a run that reads the weights still refuses it by name."""
    import subprocess
    import sys

    src = Path(__file__).parent / "fixtures" / "llama_extdata"
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        shutil.copy(src / name, folder / name)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True)

    with_data, without = cli("taps", src, "--json"), cli("taps", folder, "--json")
    assert without.returncode == 0, without.stderr
    assert json.loads(without.stdout) == json.loads(with_data.stdout) and len(json.loads(without.stdout)) == 2
    r = cli("report", folder, "--tokens", 600)
    assert r.returncode == 2 and "external data file 'model.onnx_data'" in r.stderr and "is missing" in r.stderr
