"""Class 13: external data in the bodies of local functions (model.functions) and in every subgraph is
checked like a graph initializer's: a location outside the model folder is refused before any
onnxruntime (older versions, 1.18 among them, read it from wherever it points)."""

import onnx
import pytest
from onnx import TensorProto, helper

from tests.onnx_builders import tiny_lm
from tests.robustness.clitools import cli, ids, one_error_line, snapshot


def _external_constant(name: str, location: str) -> onnx.NodeProto:
    t = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    return helper.make_node("Constant", [], [name], value=t)


def _model_with_function(folder, location: str, in_subgraph: bool):
    """tiny_lm plus a call of a local function whose body (directly, or inside an If branch)
    holds a Constant whose bytes are external data at ``location``."""
    m = tiny_lm(vocab=64).model
    if in_subgraph:
        branch = helper.make_graph([_external_constant("c", location)], "branch", [],
                                   [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])])
        body = [helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
                helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)]
    else:
        body = [_external_constant("c", location), helper.make_node("Identity", ["c"], ["out"])]
    fn = helper.make_function("custom", "Leak", [], ["out"], body, [helper.make_opsetid("", 17)])
    m.functions.append(fn)
    m.opset_import.append(helper.make_opsetid("custom", 1))
    m.graph.node.append(helper.make_node("Leak", [], ["leak"], domain="custom"))
    m.graph.output.append(helper.make_tensor_value_info("leak", TensorProto.FLOAT, [4]))
    folder.mkdir()
    onnx.save(m, str(folder / "model.onnx"))
    return folder


@pytest.fixture()
def work(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\x01" * 64)
    ids(tmp_path / "ids.npy")
    return tmp_path


@pytest.mark.parametrize("in_subgraph", [False, True], ids=["function_body", "if_inside_function"])
@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname"])
@pytest.mark.parametrize("command", ["report", "taps"])
def test_external_data_in_functions_is_confined(work, in_subgraph, location, command):
    _model_with_function(work / "m", location, in_subgraph)
    before = snapshot(work)
    extra = ["--calib", "ids.npy", "-q"] if command == "report" else []
    line = one_error_line(cli(command, "m", *extra, cwd=work), "path traversal refused")
    assert "'c'" in line
    assert snapshot(work) == before


def test_external_data_in_functions_inside_the_folder_is_checked_for_size(work):
    m = _model_with_function(work / "m", "data.bin", in_subgraph=False)
    (m / "data.bin").write_bytes(b"\x00" * 8)  # 8 bytes, the tensor needs 16
    one_error_line(cli("taps", "m", cwd=work), "too short")
