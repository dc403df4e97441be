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


def save_model(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """``model`` written to ``folder/name`` (the folder made when missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(model, str(path))
    return path


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
        return save_model(self.model, folder, name)


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


@dataclass
class TinyMoE:
    """A mixture-of-experts stack shaped like optimum's Qwen3-MoE / DeepSeek-V3 exports: each
    expert is a MatMul FFN of its own that runs on the tokens routed to it (Compress by a top-1
    routing mask) and writes them back (ScatterND). x = Emb[ids]; per layer, token t goes to
    expert argmax(x_t W_r) and x_t += gelu(x_t W1_e + b1_e) W2_e + b2_e; logits = x Emb^T. With
    ``batched`` the experts are stacked into [E, k, n] weights and run densely on every token in
    one batched MatMul each (as optimum exports GPT-OSS; the sum over experts is not routed)."""

    model: onnx.ModelProto
    emb: np.ndarray
    routers: list[np.ndarray]
    experts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]

    def expert_activations(self, ids: np.ndarray) -> list[list[np.ndarray]]:
        """Per layer, per expert: the hidden activations of the tokens routed to it, float64
        [tokens_e, D], in token order (numpy, from the weights alone)."""
        x = self.emb[ids].reshape(-1, self.emb.shape[1]).astype(np.float64)
        out = []
        for router, experts in zip(self.routers, self.experts):
            choice = np.argmax(x.astype(np.float32) @ router, axis=1)
            y = np.zeros_like(x)
            layer = []
            for e, (w1, b1, w2, b2) in enumerate(experts):
                rows = choice == e
                u = x[rows] @ w1 + b1
                h = 0.5 * u * (1.0 + np.vectorize(math.erf)(u / math.sqrt(2.0))) if len(u) else u
                layer.append(h)
                y[rows] = h @ w2 + b2
            out.append(layer)
            x = x + y
        return out

    def save(self, folder: Path, name: str = "model.onnx") -> Path:
        return save_model(self.model, folder, name)


def tiny_moe(vocab: int = 64, d_model: int = 16, d_ff: int = 24, n_layers: int = 2, n_experts: int = 3,
             seed: int = 0, batched: bool = False) -> TinyMoE:
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((vocab, d_model)) * 0.5).astype(np.float32)
    consts = {"sqrt2": np.array(math.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
              "half": np.array(0.5, np.float32), "zero": np.array(0.0, np.float32),
              "flat": np.array([-1, d_model], np.int64), "axis0": np.array([0], np.int64)}
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(emb.T.copy(), "emb_t")]
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["x0"], name="/model/embed"),
             helper.make_node("Shape", ["x0"], ["x_shape"], name="/model/shape")]

    def gelu(p: str, u: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Div", [u, "sqrt2"], [f"{p}/div"], name=f"{p}/act/Div"),
                helper.make_node("Erf", [f"{p}/div"], [f"{p}/erf"], name=f"{p}/act/Erf"),
                helper.make_node("Add", [f"{p}/erf", "one"], [f"{p}/erf1"], name=f"{p}/act/Add"),
                helper.make_node("Mul", [u, f"{p}/erf1"], [f"{p}/mul"], name=f"{p}/act/Mul"),
                helper.make_node("Mul", [f"{p}/mul", "half"], [f"{p}/act"], name=f"{p}/act/Mul_1")]

    routers, experts = [], []
    x = "x0"
    for i in range(n_layers):
        m = f"/model/layers.{i}/mlp"
        router = rng.standard_normal((d_model, n_experts)).astype(np.float32)
        routers.append(router)
        weights = [((rng.standard_normal((d_model, d_ff)) / math.sqrt(d_model)).astype(np.float32),
                    (rng.standard_normal(d_ff) * 0.1).astype(np.float32),
                    (rng.standard_normal((d_ff, d_model)) / math.sqrt(d_ff)).astype(np.float32),
                    (rng.standard_normal(d_model) * 0.1).astype(np.float32)) for _ in range(n_experts)]
        experts.append(weights)
        nodes.append(helper.make_node("Reshape", [x, "flat"], [f"{m}/xf"], name=f"{m}/Reshape"))
        if batched:
            for j, name in enumerate(("w1", "b1", "w2", "b2")):
                stacked = np.stack([w[j] for w in weights])
                inits.append(numpy_helper.from_array(stacked[:, None, :] if j % 2 else stacked, f"{m}/experts.{name}"))
            p = f"{m}/experts"
            nodes += [helper.make_node("Unsqueeze", [f"{m}/xf", "axis0"], [f"{p}/x3"], name=f"{p}/Unsqueeze"),
                      helper.make_node("MatMul", [f"{p}/x3", f"{p}.w1"], [f"{p}/up_mm"], name=f"{p}/up/MatMul"),
                      helper.make_node("Add", [f"{p}/up_mm", f"{p}.b1"], [f"{p}/up"], name=f"{p}/up/Add"),
                      *gelu(p, f"{p}/up"),
                      helper.make_node("MatMul", [f"{p}/act", f"{p}.w2"], [f"{p}/down_mm"], name=f"{p}/down/MatMul"),
                      helper.make_node("Add", [f"{p}/down_mm", f"{p}.b2"], [f"{p}/down"], name=f"{p}/down/Add"),
                      helper.make_node("ReduceSum", [f"{p}/down", "axis0"], [f"{m}/acc{n_experts - 1}"], keepdims=0,
                                       name=f"{p}/ReduceSum")]
        else:
            inits.append(numpy_helper.from_array(router, f"{m}/router.weight"))
            nodes += [helper.make_node("MatMul", [f"{m}/xf", f"{m}/router.weight"], [f"{m}/logits"], name=f"{m}/router/MatMul"),
                      helper.make_node("ArgMax", [f"{m}/logits"], [f"{m}/choice"], axis=1, keepdims=0, name=f"{m}/ArgMax"),
                      helper.make_node("Mul", [f"{m}/xf", "zero"], [f"{m}/acc_init"], name=f"{m}/zeros")]
            acc = f"{m}/acc_init"
            for e, w in enumerate(weights):
                p = f"{m}/experts.{e}"
                inits += [numpy_helper.from_array(a, f"{p}.{n}") for a, n in zip(w, ("w1", "b1", "w2", "b2"))]
                inits.append(numpy_helper.from_array(np.array(e, np.int64), f"{p}.index"))
                nodes += [helper.make_node("Equal", [f"{m}/choice", f"{p}.index"], [f"{p}/mask"], name=f"{p}/Equal"),
                          helper.make_node("Compress", [f"{m}/xf", f"{p}/mask"], [f"{p}/x"], axis=0, name=f"{p}/Compress"),
                          helper.make_node("MatMul", [f"{p}/x", f"{p}.w1"], [f"{p}/up_mm"], name=f"{p}/up/MatMul"),
                          helper.make_node("Add", [f"{p}/up_mm", f"{p}.b1"], [f"{p}/up"], name=f"{p}/up/Add"),
                          *gelu(p, f"{p}/up"),
                          helper.make_node("MatMul", [f"{p}/act", f"{p}.w2"], [f"{p}/down_mm"], name=f"{p}/down/MatMul"),
                          helper.make_node("Add", [f"{p}/down_mm", f"{p}.b2"], [f"{p}/down"], name=f"{p}/down/Add"),
                          helper.make_node("NonZero", [f"{p}/mask"], [f"{p}/nz"], name=f"{p}/NonZero"),
                          helper.make_node("Transpose", [f"{p}/nz"], [f"{p}/rows"], name=f"{p}/Transpose"),
                          helper.make_node("ScatterND", [acc, f"{p}/rows", f"{p}/down"], [f"{m}/acc{e}"], name=f"{p}/ScatterND")]
                acc = f"{m}/acc{e}"
        nodes += [helper.make_node("Reshape", [f"{m}/acc{n_experts - 1}", "x_shape"], [f"{m}/y"], name=f"{m}/Reshape_1"),
                  helper.make_node("Add", [x, f"{m}/y"], [f"x{i + 1}"], name=f"/model/layers.{i}/residual")]
        x = f"x{i + 1}"
    nodes.append(helper.make_node("MatMul", [x, "emb_t"], ["logits"], name="/lm_head/MatMul"))
    used = {name for node in nodes for name in node.input}
    inits = [t for t in inits if t.name in used]
    graph = helper.make_graph(nodes, "tiny_moe", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sui-onnx-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return TinyMoE(model, emb, routers, experts)


def split_embeddings(lm: TinyLM, d_model: int = 16) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """``lm`` split as the transformers.js layout splits a vision-language model's decoder: an
    embed_tokens model (input_ids -> inputs_embeds, the embedding table) and a decoder that takes
    inputs_embeds instead of ids. The pair computes what ``lm`` computes."""
    decoder = onnx.ModelProto()
    decoder.CopyFrom(lm.model)
    g = decoder.graph
    embed = next(n for n in g.node if n.name == "embed")
    g.node.remove(embed)
    g.node.insert(0, helper.make_node("Identity", ["inputs_embeds"], ["x0"], name="embeds"))
    ids = next(i for i in g.input if i.name == "input_ids")
    g.input.remove(ids)
    g.input.insert(0, helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", d_model]))
    table = next(t for t in g.initializer if t.name == "emb")
    g.initializer.remove(table)
    onnx.checker.check_model(decoder)
    graph = helper.make_graph([helper.make_node("Gather", ["emb", "input_ids"], ["inputs_embeds"], name="embed")], "embed_tokens",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", d_model])],
                              [numpy_helper.from_array(lm.emb, "emb")])
    embed_tokens = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sui-onnx-tests")
    embed_tokens.ir_version = 8
    onnx.checker.check_model(embed_tokens)
    return embed_tokens, decoder
