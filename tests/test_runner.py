"""onnxruntime feeds and tap outputs (no graph detection involved: the taps are plain outputs)."""

from pathlib import Path

import numpy as np
import pytest

from sui_onnx.errors import CalibrationError, SuiError
from sui_onnx.runner import FeedBuilder, TapRunner, create_session
from tests.onnx_builders import tiny_lm

pytest.importorskip("onnxruntime")


class _Input:
    def __init__(self, name, type_, shape):
        self.name, self.type, self.shape = name, type_, shape


def test_runner_returns_tap_tensors_equal_to_reference(tmp_path):
    lm = tiny_lm(tap_outputs=True)
    path = lm.save(tmp_path)
    taps = [o.name for o in lm.model.graph.output[1:]]
    runner = TapRunner(path, taps, device="cpu")
    assert runner.device.providers[0] == "CPUExecutionProvider"
    ids = np.random.default_rng(0).integers(0, 64, (3, 11))
    for _ in range(2):  # second run reuses the bound buffers
        outs = runner.run(ids, [48, 48])
        ref = lm.post_activations(ids)
        for got, want in zip(outs, ref):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    outs = runner.run(ids[:, :5], [48, 48])  # another shape: new buffers
    np.testing.assert_allclose(outs[0], lm.post_activations(ids[:, :5])[0], rtol=1e-4, atol=1e-5)


def test_feeds_cover_every_declared_input():
    fb = FeedBuilder([
        _Input("input_ids", "tensor(int64)", ["b", "s"]),
        _Input("attention_mask", "tensor(int64)", ["b", "t"]),
        _Input("position_ids", "tensor(int32)", ["b", "s"]),
        _Input("token_type_ids", "tensor(int64)", ["b", "s"]),
        _Input("past_key_values.0.key", "tensor(float16)", ["b", 4, "past", 8]),
        _Input("use_cache_branch", "tensor(bool)", [1]),
    ])
    feeds = fb(np.arange(6).reshape(2, 3))
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1]] * 2
    assert feeds["position_ids"].dtype == np.int32 and feeds["position_ids"].tolist() == [[0, 1, 2]] * 2
    assert feeds["token_type_ids"].sum() == 0
    assert feeds["past_key_values.0.key"].shape == (2, 4, 0, 8) and feeds["past_key_values.0.key"].dtype == np.float16
    assert feeds["use_cache_branch"].tolist() == [False]


def test_seq2seq_decoder_feeds_take_the_encoder_states():
    dec = [_Input("encoder_attention_mask", "tensor(int64)", ["b", "e"]), _Input("input_ids", "tensor(int64)", ["b", "s"]),
           _Input("encoder_hidden_states", "tensor(float)", ["b", "e", 4])]
    fb = FeedBuilder(dec)
    assert fb.needs_encoder == "encoder_hidden_states"
    states = np.ones((2, 3, 4), dtype=np.float64)
    feeds = fb(np.zeros((2, 3), dtype=np.int64), states)
    assert feeds["encoder_hidden_states"].dtype == np.float32 and feeds["encoder_hidden_states"].shape == (2, 3, 4)
    assert feeds["encoder_attention_mask"].tolist() == [[1, 1, 1]] * 2
    with pytest.raises(CalibrationError, match="`encoder`"):
        fb(np.zeros((2, 3), dtype=np.int64))
    # a merged decoder: cached cross-attention inputs are fine when encoder states are fed too
    past = [_Input("past_key_values.0.encoder.key", "tensor(float)", ["b", 2, "e", 2]),
            _Input("use_cache_branch", "tensor(bool)", [1])]
    assert FeedBuilder(dec + past).needs_encoder == "encoder_hidden_states"


def test_a_decoder_that_reads_cross_attention_only_from_its_cache_is_refused():
    """decoder_with_past_model.onnx: an empty cache would give cross-attention nothing to attend
    to, and silently wrong activations."""
    with pytest.raises(CalibrationError, match="decoder_model.onnx"):
        FeedBuilder([_Input("input_ids", "tensor(int64)", ["b", "s"]),
                     _Input("past_key_values.0.decoder.key", "tensor(float)", ["b", 2, "p", 2]),
                     _Input("past_key_values.0.encoder.key", "tensor(float)", ["b", 2, "e", 2])])


def test_unfeedable_inputs_are_named():
    with pytest.raises(CalibrationError, match="pixel_values"):
        FeedBuilder([_Input("pixel_values", "tensor(float)", ["b", 3, 224, 224])])


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    path = tiny_lm(tap_outputs=True).save(tmp_path)
    with pytest.raises(SuiError, match="`device` cuda"):
        create_session(path, "cuda")


def test_out_of_vocabulary_ids_are_a_clear_error(tmp_path):
    lm = tiny_lm(tap_outputs=True)
    runner = TapRunner(lm.save(tmp_path), [lm.model.graph.output[1].name], device="cpu")
    with pytest.raises(CalibrationError, match="token id 10000 is outside the vocabulary .*64 rows in 'emb'"):
        runner.run(np.full((1, 4), 10_000), [48])  # checked before onnxruntime runs the batch


def test_onnxruntime_load_errors_are_one_readable_line(tmp_path):
    """A node onnxruntime cannot load is named with its op and the reason, without the status code
    or the operator's signature; a long message is cut at a word, with an ellipsis."""
    import onnx as _onnx

    from sui_onnx.errors import ModelError as _ModelError
    from sui_onnx.runner import create_session, ort_load_message

    m = _onnx.load(str(Path(__file__).parent / "fixtures" / "gpt2_w128" / "model.onnx"))
    node = next(n for n in m.graph.node if n.op_type == "Unsqueeze")
    node.op_type = "NoSuchOp"
    path = tmp_path / "bad.onnx"
    _onnx.save(m, str(path))
    with pytest.raises(_ModelError) as exc:
        create_session(path, "cpu", 1)
    msg = str(exc.value)
    assert msg.startswith(f"onnxruntime cannot load the model: node {node.name!r} (NoSuchOp): No Op registered for NoSuchOp")
    assert "[ONNXRuntimeError]" not in msg and "tensor(int64)" not in msg and "\n" not in msg
    long = "[ONNXRuntimeError] : 1 : FAIL : " + "word " * 200
    cut = ort_load_message(long, limit=100)
    assert len(cut) <= 100 and cut.endswith("…") and cut.startswith("word") and not cut[:-1].endswith(" ")


def test_a_model_that_cannot_be_fed_is_named_before_the_tokenizer(tmp_path):
    """A float-input graph (no input_ids) with text calibration and no tokenizer: the error is about
    the input sui-onnx cannot feed, not the missing tokenizer."""
    import onnx as _onnx
    from onnx import TensorProto, helper, numpy_helper

    from sui_onnx.analyze import AnalysisOptions, analyze
    from sui_onnx.calib import CalibrationSpec

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 8])], inits)
    path = tmp_path / "mlp.onnx"
    _onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(CalibrationError, match=r"cannot feed model input 'x' \(shape \['b', 's', 8\]\)"):
        analyze(path, CalibrationSpec(tokens=600), AnalysisOptions(device="cpu"))
