"""FFN detection on synthetic decoders (sui_onnx.graph.synthetic): every activation kind, both
sites, the tapped copy run in onnxruntime against numpy, explicit/include/exclude taps,
merged decoders, and graphs that must yield nothing."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sui_onnx.errors import ModelError
from sui_onnx.graph import Tap, find_taps
from tests.graph_synthetic import KINDS, build_transformer, conv_net, default_feeds, merged_decoder
from sui_onnx.graph.tapped import build_tapped_model
from sui_onnx.graph.taps import inspect_model

IDS = np.random.default_rng(7).integers(0, 40, (2, 5)).astype(np.int64)
_CACHE: dict[str, object] = {}


def synthetic(kind: str):
    if kind not in _CACHE:
        _CACHE[kind] = build_transformer(kind, n_layers=3 if kind in ("gelu_erf", "swiglu") else 2)
    return _CACHE[kind]


def run(model: onnx.ModelProto, ids: np.ndarray = IDS) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, default_feeds(model, ids))


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The unpruned model with extra outputs (an independent reference for quantised kinds)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return m


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("site", ["post", "pre"])
def test_one_tap_per_layer(kind, site):
    s = synthetic(kind)
    taps = find_taps(s.model, site)
    assert [t.layer for t in taps] == list(range(s.n_layers))
    assert all(isinstance(t, Tap) and t.site == site and t.width == s.d_ff for t in taps)
    assert {t.activation for t in taps} == {s.activation}
    made = producers(s.model)
    for t in taps:
        assert t.op == made[t.tensor].op_type
        assert "/mlp/" in t.tensor  # the builder names every FFN node .../layers.N/mlp/...
        assert f"layers.{t.layer}/" in t.tensor
        assert t.down_proj and "mlp" in t.down_proj
        assert set(t.to_dict()) == {"layer", "tensor", "width", "site", "op", "activation", "down_proj", "group"}
        assert t.group is None  # one FFN per transformer layer


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("site", ["post", "pre"])
def test_tapped_copy_matches_numpy(kind, site):
    s = synthetic(kind)
    taps = find_taps(s.model, site)
    tapped = build_tapped_model(s.model, taps)
    onnx.checker.check_model(tapped)
    assert [o.name for o in tapped.graph.output] == [t.tensor for t in taps]
    assert [i.name for i in tapped.graph.input] == [i.name for i in s.model.graph.input]
    assert len(tapped.graph.node) < len(s.model.graph.node)  # the LM head and the rest are pruned
    for o, t in zip(tapped.graph.output, taps):
        assert o.type.tensor_type.elem_type == TensorProto.FLOAT
        assert o.type.tensor_type.shape.dim[-1].dim_value == t.width
    outs = run(tapped)
    if s.reference is not None:
        expected = s.reference(IDS)[site]
        if site == "pre" and s.bias_in_activation:  # documented gap: the fused op holds the bias
            expected = [e - e.mean(axis=(0, 1)) for e in expected]
            outs = [o - o.mean(axis=(0, 1)) for o in outs]
    else:
        expected = run(with_outputs(s.model, [t.tensor for t in taps]))
    for got, want in zip(outs, expected):
        assert got.shape == (2, 5, s.d_ff)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_gemm_post_tap_is_natural_layout():
    """GPT-2's Gemm path: the tap is the activation output, not the flattened Reshape."""
    s = synthetic("gemm")
    made = producers(s.model)
    for t in find_taps(s.model, "post"):
        assert made[t.tensor].op_type == "Mul"
        consumer = [n for n in s.model.graph.node if t.tensor in n.input]
        assert [n.op_type for n in consumer] == ["Reshape"]
    for t in find_taps(s.model, "pre"):
        assert made[t.tensor].op_type == "Reshape"  # [tokens, D] Gemm output restored to 3-D


def test_gated_pre_is_gate_projection_and_ngpt_pre_is_unscaled():
    for kind in ("swiglu", "geglu", "ngpt"):
        s = synthetic(kind)
        made = producers(s.model)
        for t in find_taps(s.model, "pre"):
            assert made[t.tensor].op_type == "MatMul"
    s = synthetic("fused_split")
    pre = find_taps(s.model, "pre")
    assert all(producers(s.model)[t.tensor].op_type == "Split" and t.tensor.endswith("_out0") for t in pre)


def test_explicit_taps_bypass_detection():
    s = synthetic("gelu_erf")
    detected = find_taps(s.model, "post")
    names = [detected[2].tensor, detected[0].tensor]
    taps = find_taps(s.model, "post", explicit=names)
    # detected blocks' taps keep their block's layer number, in layer order
    assert [t.tensor for t in taps] == names[::-1] and [t.layer for t in taps] == [0, 2]
    assert [t.width for t in taps] == [s.d_ff, s.d_ff]
    assert taps[0].activation == "gelu" and taps[0].op == "Mul"
    # a tensor that is no FFN at all: width from shape inference, activation unknown
    q = next(n.output[0] for n in s.model.graph.node if n.op_type == "MatMul")
    other = find_taps(s.model, "post", explicit=[q])[0]
    assert other.width == s.d_model and other.activation == "unknown" and other.op == "MatMul"
    # with one name that is not a block's tap, layers are positions in the order given
    mixed = find_taps(s.model, "post", explicit=[detected[2].tensor, q])
    assert [t.tensor for t in mixed] == [detected[2].tensor, q] and [t.layer for t in mixed] == [0, 1]
    with pytest.raises(ModelError, match="no tensor of that name"):
        find_taps(s.model, explicit=["nope"])
    with pytest.raises(ModelError, match="twice"):
        find_taps(s.model, explicit=[q, q])


def test_include_exclude():
    s = synthetic("gelu_erf")
    assert [t.layer for t in find_taps(s.model, include=r"layers\.1/")] == [1]
    assert [t.layer for t in find_taps(s.model, exclude=r"layers\.[01]/")] == [2]
    with pytest.raises(ModelError, match="filtered out"):
        find_taps(s.model, include="no-such-layer")
    with pytest.raises(ModelError, match="invalid `include`"):
        find_taps(s.model, include="(")
    with pytest.raises(ModelError, match="unknown tap site"):
        find_taps(s.model, site="middle")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_no_ffn_in_conv_net():
    with pytest.raises(ModelError) as err:
        find_taps(conv_net())
    msg = _one_line(err)
    assert "no FFN block found" in msg and "`explicit` TENSOR" in msg and "MatMulNBits" in msg


def test_attention_only_and_linear_mlp_are_not_ffn():
    """Attention projections (d -> d, Softmax in between) and an MLP without nonlinearity."""
    rng = np.random.default_rng(0)
    d, D = 8, 24
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("wq", (d, d)), ("wk", (d, d)), ("wv", (d, d)), ("wo", (d, d)), ("w1", (d, D)), ("w2", (D, d))]]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"]), helper.make_node("MatMul", ["a", "wo"], ["o"]),
        helper.make_node("Add", ["x", "o"], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["u"]), helper.make_node("MatMul", ["u", "w2"], ["z"]),  # linear
        helper.make_node("Add", ["h", "z"], ["y"]),
    ]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", d])], inits)
    with pytest.raises(ModelError, match="no FFN block found"):
        find_taps(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("same_names", [False, True], ids=["renamed_outputs", "shared_output_names"])
def test_merged_decoder_uses_no_past_branch(same_names):
    """Also when the no-past branch's outputs share the If's names (optimum's merged T5 decoder:
    inlining must not add an Identity from a tensor to itself, which once hung detection)."""
    s = synthetic("swiglu")
    merged = merged_decoder(s.model, else_keeps_output_names=same_names)
    for site in ("post", "pre"):
        taps = find_taps(merged, site)
        assert len(taps) == s.n_layers and all(t.tensor.startswith("no_past/") for t in taps)
        flat = inspect_model(merged).model
        tapped = build_tapped_model(flat, taps)
        onnx.checker.check_model(tapped)
        assert [i.name for i in tapped.graph.input] == [i.name for i in merged.graph.input]
        for got, want in zip(run(tapped), s.reference(IDS)[site]):
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_an_identity_cycle_is_a_one_line_error_not_a_hang():
    g = helper.make_graph(
        [helper.make_node("Identity", ["b"], ["a"]), helper.make_node("Identity", ["a"], ["b"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "cycle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(ModelError, match="cycle"):
        find_taps(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_unrecognised_if_subgraph_names_the_file_to_use():
    with pytest.raises(ModelError) as err:
        find_taps(merged_decoder(synthetic("relu").model, cond="some_flag"))
    assert "decoder_model.onnx" in _one_line(err)


def test_layer_order_is_structural_and_names_only_warn():
    """Names saying layers.2, layers.1, layers.0 in graph order -> warning, structural order kept."""
    s = build_transformer("relu", n_layers=3)
    m = onnx.ModelProto()
    m.CopyFrom(s.model)
    swap = {"layers.0/": "layers.X/", "layers.2/": "layers.0/"}
    for node in m.graph.node:
        for a, b in swap.items():
            node.name = node.name.replace(a, b)
        node.name = node.name.replace("layers.X/", "layers.2/")
    before = find_taps(s.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = find_taps(m)
    assert any("disagrees" in str(w.message) for w in caught)
    assert [t.tensor for t in after] == [t.tensor for t in before]


def test_parallel_independent_stacks_sorted_by_depth():
    """Node list reversed-in-blocks still yields layers in dependency order."""
    s = synthetic("gelu_erf")
    m = onnx.ModelProto()
    m.CopyFrom(s.model)
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))  # not topological: detection must not care
    assert [t.tensor for t in find_taps(m)] == [t.tensor for t in find_taps(s.model)]


@pytest.mark.parametrize("kind", ["gelu_erf", "swiglu", "gemm", "fused_split"])
def test_bottleneck_ffn_narrower_than_model(kind):
    """d_ff < d_model is still an FFN: the structure decides, not the width ratio."""
    s = build_transformer(kind, d_model=32, d_ff=16)
    assert [(t.width, t.activation) for t in find_taps(s.model)] == [(16, s.activation)] * 2


def test_initializers_listed_as_inputs():
    """IR<4 style: initializers also declared as inputs; unused ones leave with their weights."""
    s = synthetic("relu")
    m = onnx.ModelProto()
    m.CopyFrom(s.model)
    for t in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    taps = find_taps(m)
    assert [t.tensor for t in taps] == [t.tensor for t in find_taps(s.model)]
    tapped = build_tapped_model(m, taps)
    inits = {t.name for t in tapped.graph.initializer}
    declared = [i.name for i in tapped.graph.input]
    assert declared[:2] == ["input_ids", "attention_mask"] and set(declared[2:]) <= inits
    sess = ort.InferenceSession(tapped.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(sess.run(None, default_feeds(s.model, IDS)), s.reference(IDS)["post"]):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_layer_hints_from_torch_name_scopes():
    """Dynamo exports carry pkg.torch.onnx.name_scopes; anonymous nodes still get hints."""
    s = build_transformer("swiglu", n_layers=3)
    m = onnx.ModelProto()
    m.CopyFrom(s.model)
    for k, node in enumerate(m.graph.node):
        layer = node.name.split("layers.")[1].split("/")[0] if "layers." in node.name else None
        node.name = f"node_{k}"
        if layer is not None:
            node.metadata_props.add(key="pkg.torch.onnx.name_scopes",
                                    value=f"['', 'model', 'model.layers.{layer}', 'model.layers.{layer}.mlp']")
    blocks = inspect_model(m).blocks
    assert [b.hint for b in blocks] == [0, 1, 2]
    assert [t.down_proj for t in find_taps(m)] == [b.down.name for b in blocks]


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_statically_quantized_graphs_qdq_tapped_qoperator_named(fmt, tmp_path):
    """onnxruntime's static quantization: the QDQ format keeps float activations between
    Quantize/DequantizeLinear pairs and is tapped like the float model; the QOperator format
    (QGemm, QLinearMul, ...) holds them only as int8 tensors and is refused with one line that
    says so and what to do instead."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from tests.onnx_builders import tiny_lm

    float_path = tiny_lm(extra_inputs=False).save(tmp_path, "float.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.feeds = iter([{"input_ids": rng.integers(0, 64, (1, 16))} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    out = tmp_path / f"{fmt}.onnx"
    quantize_static(str(float_path), str(out), Reader(), quant_format=getattr(QuantFormat, fmt))
    model = onnx.load(str(out))
    if fmt == "QDQ":
        assert [t.tensor for t in find_taps(model)] == [t.tensor for t in find_taps(onnx.load(str(float_path)))]
    else:
        assert any(n.op_type.startswith("QLinear") for n in model.graph.node)
        with pytest.raises(ModelError, match="QOperator format"):
            find_taps(model)
