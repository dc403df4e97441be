"""Tiny transformer-shaped ONNX graphs built with onnx.helper, with NumPy references.

`tiny_lm` is a residual stack of FFN blocks (no attention: every position is independent, which
keeps the reference exact and obvious): x = Emb[ids]; per layer x += gelu(x W1 + b1) W2 + b2;
logits = x Emb^T. Used by runner / analyze / CLI tests that must not depend on torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class TinyLM:
    model: onnx.ModelProto
    emb: np.ndarray
    layers: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]

    def post_activations(self, ids: np.ndarray, offset: np.ndarray | None = None) -> list[np.ndarray]:
        """Reference values of every FFN's down-projection input, float64, [B, L, D]; ``offset``
        is added to the embeddings (a seq2seq decoder's encoder states)."""
        x = self.emb[ids].astype(np.float64)
        if offset is not None:
            x = x + offset
        outs = []
        for w1, b1, w2, b2 in self.layers:
            u = x @ w1 + b1
            a = 0.5 * u * (1.0 + np.vectorize(math.erf)(u / math.sqrt(2.0)))
            outs.append(a)
            x = x + a @ w2 + b2
        return outs

    def save(self, folder: Path, name: str = "model.onnx") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        onnx.save(self.model, str(path))
        return path


def tiny_lm(vocab: int = 64, d_model: int = 16, d_ff: int = 48, n_layers: int = 2, seed: int = 0,
            extra_inputs: bool = True, tap_outputs: bool = False) -> TinyLM:
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((vocab, d_model)) * 0.5).astype(np.float32)
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(emb.T.copy(), "emb_t")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["x0"], name="embed")]
    consts = {
        "sqrt2": np.array(math.sqrt(2.0), np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
    }
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    layers = []
    x = "x0"
    taps = []
    for i in range(n_layers):
        w1 = (rng.standard_normal((d_model, d_ff)) / math.sqrt(d_model)).astype(np.float32)
        b1 = (rng.standard_normal(d_ff) * 0.1).astype(np.float32)
        w2 = (rng.standard_normal((d_ff, d_model)) / math.sqrt(d_ff)).astype(np.float32)
        b2 = (rng.standard_normal(d_model) * 0.1).astype(np.float32)
        layers.append((w1, b1, w2, b2))
        p = f"/h.{i}/mlp"
        inits += [numpy_helper.from_array(a, f"{p}/{n}") for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
        nodes += [
            helper.make_node("MatMul", [x, f"{p}/w1"], [f"{p}/up_mm"], name=f"{p}/up/MatMul"),
            helper.make_node("Add", [f"{p}/up_mm", f"{p}/b1"], [f"{p}/up"], name=f"{p}/up/Add"),
            helper.make_node("Div", [f"{p}/up", "sqrt2"], [f"{p}/div"], name=f"{p}/act/Div"),
            helper.make_node("Erf", [f"{p}/div"], [f"{p}/erf"], name=f"{p}/act/Erf"),
            helper.make_node("Add", [f"{p}/erf", "one"], [f"{p}/erf1"], name=f"{p}/act/Add"),
            helper.make_node("Mul", [f"{p}/up", f"{p}/erf1"], [f"{p}/mul"], name=f"{p}/act/Mul"),
            helper.make_node("Mul", [f"{p}/mul", "half"], [f"{p}/act"], name=f"{p}/act/Mul_1"),
            helper.make_node("MatMul", [f"{p}/act", f"{p}/w2"], [f"{p}/down_mm"], name=f"{p}/down/MatMul"),
            helper.make_node("Add", [f"{p}/down_mm", f"{p}/b2"], [f"{p}/down"], name=f"{p}/down/Add"),
            helper.make_node("Add", [x, f"{p}/down"], [f"x{i + 1}"], name=f"/h.{i}/residual"),
        ]
        taps.append(f"{p}/act")
        x = f"x{i + 1}"
    nodes.append(helper.make_node("MatMul", [x, "emb_t"], ["logits"], name="lm_head"))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    if extra_inputs:  # declared like an optimum export; unused by this graph's arithmetic
        inputs += [
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    if tap_outputs:
        outputs += [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["batch", "seq", d_ff]) for t in taps]
    graph = helper.make_graph(nodes, "tiny_lm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sui-onnx-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return TinyLM(model, emb, layers)


@dataclass
class TinySeq2Seq:
    """A seq2seq pair shaped like optimum's export: the encoder maps ids to last_hidden_state =
    tanh(E_enc[ids]); the decoder is a tiny_lm whose embeddings get encoder_hidden_states added
    and which declares encoder_attention_mask, as T5 / BART decoders do."""

    encoder: onnx.ModelProto
    decoder: TinyLM
    enc_emb: np.ndarray

    def post_activations(self, ids: np.ndarray) -> list[np.ndarray]:
        """The decoder's FFN activations when the encoder reads the same ids."""
        return self.decoder.post_activations(ids, offset=np.tanh(self.enc_emb[ids].astype(np.float64)))

    def save(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(self.encoder, str(folder / "encoder_model.onnx"))
        return folder / "encoder_model.onnx", self.decoder.save(folder, "decoder_model.onnx")


def tiny_seq2seq(vocab: int = 64, d_model: int = 16, d_ff: int = 48, n_layers: int = 2, seed: int = 0) -> TinySeq2Seq:
    dec = tiny_lm(vocab, d_model, d_ff, n_layers, seed, extra_inputs=False)
    g = dec.model.graph
    embed = next(n for n in g.node if n.name == "embed")
    embed.output[0] = "x_emb"
    g.node.insert(1, helper.make_node("Add", ["x_emb", "encoder_hidden_states"], ["x0"], name="cross"))
    g.input.extend([
        helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, ["batch", "enc_seq"]),
        helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", "enc_seq", d_model]),
    ])
    onnx.checker.check_model(dec.model)

    enc_emb = (np.random.default_rng(seed + 1).standard_normal((vocab, d_model))).astype(np.float32)
    enc_graph = helper.make_graph(
        [helper.make_node("Gather", ["enc_emb", "input_ids"], ["e"], name="embed"),
         helper.make_node("Tanh", ["e"], ["last_hidden_state"], name="encode")],
        "tiny_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", d_model])],
        [numpy_helper.from_array(enc_emb, "enc_emb")],
    )
    encoder = helper.make_model(enc_graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sui-onnx-tests")
    encoder.ir_version = 8
    onnx.checker.check_model(encoder)
    return TinySeq2Seq(encoder, dec, enc_emb)
