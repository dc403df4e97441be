"""Tiny synthetic transformer decoders built with onnx.helper, plus a numpy reference.

Used by the tests (and handy for CLI smoke tests without exported fixtures): each model has
``input_ids`` and ``attention_mask`` inputs, an embedding Gather, ``n_layers`` blocks of
single-head attention (Q/K/V/O projections, Softmax) and an FFN of the requested ``kind``,
a final LayerNorm and an LM head.  ``Synthetic.reference(ids)`` recomputes, in numpy, the
post (down-projection input) and pre (nonlinearity input) activations of every layer for the
kinds whose maths is plain float (quantised kinds have ``reference = None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_gelu(x):
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(np.float32)


def np_gelu_tanh(x):
    return (0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))).astype(np.float32)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# kind -> expected activation name reported by find_taps
KINDS: dict[str, str] = {
    "gelu_erf": "gelu", "gelu_tanh": "gelu_tanh", "gelu_op": "gelu", "gelu_op_tanh": "gelu_tanh",
    "ms_gelu": "gelu", "fastgelu": "gelu_tanh", "biasgelu": "gelu", "quickgelu": "quick_gelu",
    "quickgelu_silu": "silu", "quickgelu_dec": "quick_gelu", "silu": "silu", "relu": "relu", "relu2": "relu2", "relu2_mul": "relu2",
    "swiglu": "swiglu", "geglu": "geglu", "fused_split": "swiglu", "fused_slice": "swiglu",
    "ngpt": "ngpt_swiglu", "gemm": "gelu_tanh", "transposed": "gelu", "fusedmatmul": "relu",
    "matmulnbits": "gelu", "matmulinteger": "gelu", "qdq": "relu",
}
QUANTIZED = frozenset({"matmulnbits", "matmulinteger", "qdq"})


@dataclass
class Synthetic:
    model: onnx.ModelProto
    kind: str
    n_layers: int
    d_model: int
    d_ff: int
    activation: str
    reference: Callable[[np.ndarray], dict[str, list[np.ndarray]]] | None = None
    bias_in_activation: bool = False  # pre tap lacks the bias (FastGelu/BiasGelu)


@dataclass
class _Builder:
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0
    prefix: str = ""

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        self.count += 1
        name = name or f"{self.prefix}c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        self.count += 1
        base = f"{self.prefix}{op_type}_{self.count}"
        outs = [f"{base}_out{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base, domain=domain or None, **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]


def build_transformer(kind: str = "gelu_erf", n_layers: int = 2, d_model: int = 16, d_ff: int = 48,
                      vocab: int = 40, seed: int = 0, attention: bool = True) -> Synthetic:
    """A small decoder whose FFN is of ``kind`` (see KINDS); weights from ``seed``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind}")
    rng = np.random.default_rng(seed)
    b = _Builder()
    d, D = d_model, d_ff

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or 1.0 / math.sqrt(shape[0]))).astype(np.float32)

    emb = w(vocab, d, scale=1.0)
    b.const(emb, "embed.weight")
    h = b.one("Gather", ["embed.weight", "input_ids"])
    mask_f = b.one("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask_u = b.one("Unsqueeze", [mask_f, b.const([1], dtype=np.int64)])
    mask_bias = b.one("Mul", [b.one("Sub", [b.const(1.0), mask_u]), b.const(-1e4)])
    np_layers = []
    for i in range(n_layers):
        b.prefix = f"/model/layers.{i}/"
        g1, b1 = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32), (0.1 * rng.standard_normal(d)).astype(np.float32)
        x1 = b.one("LayerNormalization", [h, b.const(g1), b.const(b1)], axis=-1, epsilon=1e-5)
        att = None
        if attention:
            wq, wk, wv, wo = w(d, d), w(d, d), w(d, d), w(d, d)
            q = b.one("MatMul", [x1, b.const(wq)])
            k = b.one("MatMul", [x1, b.const(wk)])
            v = b.one("MatMul", [x1, b.const(wv)])
            s = b.one("MatMul", [q, b.one("Transpose", [k], perm=[0, 2, 1])])
            s = b.one("Add", [b.one("Mul", [s, b.const(1.0 / math.sqrt(d))]), mask_bias])
            a = b.one("MatMul", [b.one("Softmax", [s], axis=-1), v])
            h = b.one("Add", [h, b.one("MatMul", [a, b.const(wo)])])
            att = (wq, wk, wv, wo)
        g2, b2 = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32), (0.1 * rng.standard_normal(d)).astype(np.float32)
        x2 = b.one("LayerNormalization", [h, b.const(g2), b.const(b2)], axis=-1, epsilon=1e-5)
        b.prefix = f"/model/layers.{i}/mlp/"
        out, np_ffn = _ffn(kind, b, x2, d, D, rng, w)
        h = b.one("Add", [h, out])
        np_layers.append(((g1, b1), att, (g2, b2), np_ffn))
    b.prefix = "/model/"
    gf = np.ones(d, np.float32)
    xf = b.one("LayerNormalization", [h, b.const(gf), b.const(np.zeros(d, np.float32))], axis=-1, epsilon=1e-5)
    lm = w(d, vocab)
    logits = b.one("MatMul", [xf, b.const(lm)])
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_identity"))
    graph = helper.make_graph(
        b.nodes, f"synthetic_{kind}",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(MS, 1)],
                              producer_name="sui-onnx-synthetic")
    model.ir_version = 9

    def reference(ids: np.ndarray, mask: np.ndarray | None = None) -> dict[str, list[np.ndarray]]:
        mask = np.ones_like(ids) if mask is None else mask
        hh = emb[ids]
        mb = (1.0 - mask.astype(np.float32))[:, None, :] * -1e4
        post, pre = [], []
        for (g1, b1), att, (g2, b2), np_ffn in np_layers:
            if att is not None:
                wq, wk, wv, wo = att
                xx = _ln(hh, g1, b1)
                s = (xx @ wq) @ np.swapaxes(xx @ wk, 1, 2) / math.sqrt(d) + mb
                p = np.exp(s - s.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                hh = hh + (p @ (xx @ wv)) @ wo
            out, po, pr = np_ffn(_ln(hh, g2, b2))
            post.append(po.astype(np.float32))
            pre.append(pr.astype(np.float32))
            hh = hh + out
        return {"post": post, "pre": pre}

    return Synthetic(
        model=model, kind=kind, n_layers=n_layers, d_model=d, d_ff=D, activation=KINDS[kind],
        reference=None if kind in QUANTIZED else reference,
        bias_in_activation=kind in ("fastgelu", "biasgelu"),
    )


def _ln(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu_erf_nodes(b: _Builder, x: str) -> str:
    e = b.one("Erf", [b.one("Div", [x, b.const(math.sqrt(2.0))])])
    return b.one("Mul", [b.one("Mul", [x, b.one("Add", [e, b.const(1.0)])]), b.const(0.5)])


def _gelu_tanh_nodes(b: _Builder, x: str) -> str:
    cube = b.one("Mul", [b.one("Pow", [x, b.const(3.0)]), b.const(0.044715)])
    t = b.one("Tanh", [b.one("Mul", [b.one("Add", [x, cube]), b.const(math.sqrt(2.0 / math.pi))])])
    return b.one("Mul", [b.one("Mul", [x, b.const(0.5)]), b.one("Add", [t, b.const(1.0)])])


def _silu_nodes(b: _Builder, x: str) -> str:
    return b.one("Mul", [x, b.one("Sigmoid", [x])])


def _ffn(kind, b: _Builder, x: str, d: int, D: int, rng, w):
    """Append the FFN nodes of ``kind`` reading ``x``; return (output, numpy function)."""
    w1, w2 = w(d, D), w(D, d)
    b1, b2 = (0.1 * rng.standard_normal(D)).astype(np.float32), (0.1 * rng.standard_normal(d)).astype(np.float32)

    def linear(inp, wt, bias=None):
        y = b.one("MatMul", [inp, b.const(wt)])
        return b.one("Add", [y, b.const(bias)]) if bias is not None else y

    def plain(act_nodes, np_act, bias=True):
        """up (+bias) -> act -> down (+bias)."""
        hpre = linear(x, w1, b1 if bias else None)
        post = act_nodes(hpre)
        out = linear(post, w2, b2)

        def f(xx):
            pr = xx @ w1 + (b1 if bias else 0)
            po = np_act(pr)
            return po @ w2 + b2, po, pr
        return out, f

    if kind == "gelu_erf":
        return plain(lambda t: _gelu_erf_nodes(b, t), np_gelu)
    if kind == "gelu_tanh":
        return plain(lambda t: _gelu_tanh_nodes(b, t), np_gelu_tanh)
    if kind == "gelu_op":
        return plain(lambda t: b.one("Gelu", [t]), np_gelu)
    if kind == "gelu_op_tanh":
        return plain(lambda t: b.one("Gelu", [t], approximate="tanh"), np_gelu_tanh)
    if kind == "ms_gelu":
        return plain(lambda t: b.one("Gelu", [t], domain=MS), np_gelu)
    if kind == "quickgelu":
        return plain(lambda t: b.one("QuickGelu", [t], domain=MS, alpha=1.702), lambda z: z * np_sigmoid(1.702 * z))
    if kind == "quickgelu_silu":  # how onnxruntime's optimizer fuses SiLU
        return plain(lambda t: b.one("QuickGelu", [t], domain=MS, alpha=1.0), lambda z: z * np_sigmoid(z))
    if kind == "quickgelu_dec":
        return plain(lambda t: b.one("Mul", [t, b.one("Sigmoid", [b.one("Mul", [t, b.const(1.702)])])]),
                     lambda z: z * np_sigmoid(1.702 * z))
    if kind == "silu":
        return plain(lambda t: _silu_nodes(b, t), lambda z: z * np_sigmoid(z))
    if kind == "relu":
        return plain(lambda t: b.one("Relu", [t]), lambda z: np.maximum(z, 0))
    if kind == "relu2":
        return plain(lambda t: b.one("Pow", [b.one("Relu", [t]), b.const(2.0)]), lambda z: np.maximum(z, 0) ** 2)
    if kind == "relu2_mul":
        def relu2(t):
            r = b.one("Relu", [t])
            return b.one("Mul", [r, r])
        return plain(relu2, lambda z: np.maximum(z, 0) ** 2)
    if kind in ("fastgelu", "biasgelu"):
        hpre = b.one("MatMul", [x, b.const(w1)])
        op = "FastGelu" if kind == "fastgelu" else "BiasGelu"
        post = b.one(op, [hpre, b.const(b1)], domain=MS)
        out = linear(post, w2, b2)
        np_act = np_gelu_tanh if kind == "fastgelu" else np_gelu

        def f(xx):
            pr = xx @ w1
            po = np_act(pr + b1)
            return po @ w2 + b2, po, pr
        return out, f
    if kind in ("swiglu", "geglu", "ngpt"):
        wg, wu = w(d, D), w(d, D)
        g = b.one("MatMul", [x, b.const(wg)])
        u = b.one("MatMul", [x, b.const(wu)])
        sg = su = None
        if kind == "ngpt":
            sg = (1 + 0.2 * rng.standard_normal(D)).astype(np.float32)
            su = (1 + 0.2 * rng.standard_normal(D)).astype(np.float32)
            g = b.one("Mul", [b.one("Mul", [g, b.const(sg)]), b.const(math.sqrt(d))])
            u = b.one("Mul", [u, b.const(su)])
        act = _gelu_tanh_nodes(b, g) if kind == "geglu" else _silu_nodes(b, g)
        post = b.one("Mul", [act, u])
        out = linear(post, w2)

        def f(xx):
            gg, uu = xx @ wg, xx @ wu
            raw = gg  # pre tap: the gate projection output before nGPT's scaling
            if sg is not None:
                gg, uu = gg * sg * math.sqrt(d), uu * su
            po = (np_gelu_tanh(gg) if kind == "geglu" else gg * np_sigmoid(gg)) * uu
            return po @ w2, po, raw
        return out, f
    if kind in ("fused_split", "fused_slice"):
        wgu = w(d, 2 * D)
        gu = b.one("MatMul", [x, b.const(wgu)])
        if kind == "fused_split":
            g, u = b.op("Split", [gu, b.const([D, D], dtype=np.int64)], 2, axis=-1)
        else:
            g = b.one("Slice", [gu, b.const([0], dtype=np.int64), b.const([D], dtype=np.int64), b.const([-1], dtype=np.int64)])
            u = b.one("Slice", [gu, b.const([D], dtype=np.int64), b.const([2 * D], dtype=np.int64), b.const([-1], dtype=np.int64)])
        post = b.one("Mul", [_silu_nodes(b, g), u])
        out = linear(post, w2)

        def f(xx):
            z = xx @ wgu
            gg, uu = z[..., :D], z[..., D:]
            po = gg * np_sigmoid(gg) * uu
            return po @ w2, po, gg
        return out, f
    if kind == "gemm":
        shape = b.one("Shape", [x])
        lead = b.one("Slice", [shape, b.const([0], dtype=np.int64), b.const([2], dtype=np.int64)])
        flat = b.one("Reshape", [x, b.const([-1, d], dtype=np.int64)])
        y = b.one("Gemm", [flat, b.const(w1), b.const(b1)])
        y3 = b.one("Reshape", [y, b.one("Concat", [lead, b.const([D], dtype=np.int64)], axis=0)])
        post = _gelu_tanh_nodes(b, y3)
        flat2 = b.one("Reshape", [post, b.const([-1, D], dtype=np.int64)])
        z = b.one("Gemm", [flat2, b.const(w2.T.copy()), b.const(b2)], transB=1)
        out = b.one("Reshape", [z, b.one("Concat", [lead, b.const([d], dtype=np.int64)], axis=0)])

        def f(xx):
            pr = xx @ w1 + b1
            po = np_gelu_tanh(pr)
            return po @ w2 + b2, po, pr
        return out, f
    if kind == "transposed":
        hpre = b.one("Add", [b.one("MatMul", [x, b.one("Transpose", [b.const(w1.T.copy())], perm=[1, 0])]), b.const(b1)])
        post = _gelu_erf_nodes(b, hpre)
        out = b.one("MatMul", [post, b.one("Transpose", [b.const(w2.T.copy())], perm=[1, 0])])

        def f(xx):
            pr = xx @ w1 + b1
            po = np_gelu(pr)
            return po @ w2, po, pr
        return out, f
    if kind == "fusedmatmul":
        hpre = linear(x, w1, b1)
        post = b.one("Relu", [hpre])
        out = b.one("FusedMatMul", [post, b.const(w2.T.copy())], domain=MS, transB=1, alpha=1.0)

        def f(xx):
            pr = xx @ w1 + b1
            po = np.maximum(pr, 0)
            return po @ w2, po, pr
        return out, f
    if kind == "matmulnbits":
        def nbits(inp, wt):
            k, n = wt.shape
            packed, scales = _pack_4bit(wt, 16)
            return b.one("MatMulNBits", [inp, b.const(packed, dtype=np.uint8), b.const(scales)], domain=MS,
                         K=k, N=n, bits=4, block_size=16)
        hpre = b.one("Add", [nbits(x, w1), b.const(b1)])
        post = _gelu_erf_nodes(b, hpre)
        return b.one("Add", [nbits(post, w2), b.const(b2)]), None
    if kind == "matmulinteger":
        def qlinear(inp, wt):
            scale = float(np.abs(wt).max() / 127.0)
            wq = np.clip(np.round(wt / scale), -127, 127).astype(np.int8)
            xq, xs, xz = b.op("DynamicQuantizeLinear", [inp], 3)
            y = b.one("MatMulInteger", [xq, b.const(wq, dtype=np.int8), xz, b.const(np.int8(0), dtype=np.int8)])
            yf = b.one("Cast", [y], to=TensorProto.FLOAT)
            return b.one("Mul", [yf, b.one("Mul", [xs, b.const(scale)])])
        hpre = b.one("Add", [qlinear(x, w1), b.const(b1)])
        post = _gelu_erf_nodes(b, hpre)
        return b.one("Add", [qlinear(post, w2), b.const(b2)]), None
    if kind == "qdq":
        def dq_weight(wt):
            scale = float(np.abs(wt).max() / 127.0)
            wq = np.clip(np.round(wt / scale), -127, 127).astype(np.int8)
            return b.one("DequantizeLinear", [b.const(wq, dtype=np.int8), b.const(scale), b.const(np.int8(0), dtype=np.int8)])
        hpre = b.one("Add", [b.one("MatMul", [x, dq_weight(w1)]), b.const(b1)])
        post = b.one("Relu", [hpre])
        zp = b.const(np.uint8(0), dtype=np.uint8)
        sc = b.const(0.05)
        qpost = b.one("DequantizeLinear", [b.one("QuantizeLinear", [post, sc, zp]), sc, zp])
        return b.one("Add", [b.one("MatMul", [qpost, dq_weight(w2)]), b.const(b2)]), None
    raise ValueError(kind)


def _pack_4bit(wt: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits layout: B uint8 [N, K/block, block/2] (low nibble first), scales [N*K/block]."""
    k, n = wt.shape
    blocks = k // block
    wn = wt.T.reshape(n, blocks, block)
    scale = np.abs(wn).max(-1) / 7.0 + 1e-8
    q = np.clip(np.round(wn / scale[..., None]) + 8, 0, 15).astype(np.uint8)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    return packed.astype(np.uint8), scale.reshape(-1).astype(np.float32)


def conv_net() -> onnx.ModelProto:
    """A small CNN classifier (Conv/Relu/Pool + one Gemm): has no FFN block."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "c1.w"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "c2.w"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.standard_normal((10,)).astype(np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c1.w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def default_feeds(model: onnx.ModelProto, ids: np.ndarray) -> dict[str, np.ndarray]:
    """A feed for every declared input: ids, mask of ones, arange positions, zero token types,
    empty past (past length 0) and use_cache_branch = False."""
    b, s = ids.shape
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        dt = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        name = vi.name
        if name == "input_ids":
            feeds[name] = ids.astype(dt)
        elif name == "attention_mask":
            feeds[name] = np.ones((b, s), dt)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(s, dtype=dt), (b, s)).copy()
        elif name == "token_type_ids":
            feeds[name] = np.zeros((b, s), dt)
        elif name == "use_cache_branch":
            feeds[name] = np.zeros((1,), dt)
        elif "past" in name:
            dims = [d.dim_value if d.HasField("dim_value") else (b if "batch" in d.dim_param else 0) for d in tt.shape.dim]
            feeds[name] = np.zeros(dims, dt)
        else:
            raise KeyError(f"no default feed for input {name}")
    return feeds


def _copy(t: onnx.TensorProto) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(t)
    return out


def merged_decoder(model: onnx.ModelProto, cond: str = "use_cache_branch",
                   else_keeps_output_names: bool = False, branch_constants: bool = False) -> onnx.ModelProto:
    """Wrap a decoder like optimum's merged export: If(cond) with two copies of the graph as
    then ("with_past/") and else ("no_past/") branches reading the outer inputs/weights.
    ``else_keeps_output_names``: the else branch's outputs carry the If's own output names, as
    in optimum's merged T5 decoder. ``branch_constants``: scalars and 1-D integer initializers
    (shapes, split bounds) are held in each branch under their own names, as optimum's
    merge_decoders places them, instead of in the outer graph."""
    g = model.graph

    def small(t: onnx.TensorProto) -> bool:
        return branch_constants and (len(t.dims) == 0 or (len(t.dims) == 1 and t.data_type in (TensorProto.INT32, TensorProto.INT64)))

    local = [t for t in g.initializer if small(t)]
    outer = {t.name for t in g.initializer} | {i.name for i in g.input}
    out_names = {o.name for o in g.output}

    def branch(prefix: str) -> onnx.GraphProto:
        keep = else_keeps_output_names and prefix == "no_past/"

        def rename(n: str) -> str:
            return n if (not n or n in outer or (keep and n in out_names)) else prefix + n
        nodes = []
        for node in g.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = prefix + node.name
            del copy.input[:]
            copy.input.extend(rename(i) for i in node.input)
            del copy.output[:]
            copy.output.extend(rename(o) for o in node.output)
            nodes.append(copy)
        outs = []
        for o in g.output:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(o)
            vi.name = rename(o.name)
            outs.append(vi)
        if keep:  # as in optimum's T5 export, compute nodes (not Identity) write the outputs
            for ident in [n for n in nodes if n.op_type == "Identity" and n.output[0] in out_names]:
                for other in nodes:
                    other.output[:] = [ident.output[0] if o == ident.input[0] else o for o in other.output]
                nodes.remove(ident)
        return helper.make_graph(nodes, prefix.strip("/"), [], outs, initializer=[_copy(t) for t in local])

    if_node = helper.make_node("If", [cond], [o.name for o in g.output], name="optimum::if",
                               then_branch=branch("with_past/"), else_branch=branch("no_past/"))
    inputs = list(g.input) + [helper.make_tensor_value_info(cond, TensorProto.BOOL, [1])]
    graph = helper.make_graph([if_node], "merged", inputs, list(g.output), [t for t in g.initializer if not small(t)])
    merged = helper.make_model(graph, opset_imports=list(model.opset_import))
    merged.ir_version = model.ir_version
    return merged
