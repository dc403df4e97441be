"""A narrower copy of a model: slice each FFN block's neurons and replace its down projection.

``FFNSurgery(src)`` plans every detected FFN block before any work is done, and refuses with
one line what it cannot narrow exactly: weights that are not float32/float16 initializers of a
MatMul or Gemm (int8 MatMulInteger, int4 MatMulNBits, computed weights), weights shared with
other nodes (tied layers), fused gate/up projections split in a way it cannot follow. An optimum
merged decoder (the blocks inside the two branches of If(use_cache_branch)) is narrowed by
``MergedSurgery``, which plans each branch as a graph of its own (``plan_surgery`` picks the
one a model needs). ``apply`` then writes nothing: it returns a new ModelProto in which, per layer,

* the up (and gate) projection keeps the columns of the kept neurons (a fused gate_up keeps the
  same neurons in both halves, and its Slice/Split bounds shrink with it);
* every constant of the activation region that runs along the hidden width (biases, nGPT's
  gate scales) is sliced alike, and shape constants that spell the width (GPT-2's Reshape to
  [..., D]) are rewritten;
* the down projection's weight is replaced by the refitted one and the bias change is folded
  into its bias (a Gemm's C, a following bias Add, or a new Add when it had none).

The input proto is never modified (new tensors get new names; constants that other nodes share
are left for them). The weights of a lean-loaded model stay external references into the
original file, so the copy is small until ``write`` materialises it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, SuiError, first_line
from ..layout import DATA_FILE, DESCRIPTION_FILES, MODEL_FILE, TRANSFORMERS_JS_FOLDER
from ..safeio import umask
from .detect import FFNBlock, region_inputs
from .index import GraphIndex, attr, uses_external_data
from .source import ModelSource, external_info
from .taps import Analysis, inspect_model

_FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}
_SINGLE_FILE_LIMIT = 1 << 28  # bytes of weights above which the copy uses external data, copied range by range
# (a single file would need the whole model in memory twice: the proto and its serialized bytes)
_WIDTH_VECTOR_OPS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,)}


@dataclass(frozen=True)
class LayerEdit:
    """What to do to one FFN block: keep these neurons (sorted) and give the down projection
    these rows (hidden -> output orientation) plus this bias change."""

    keep: np.ndarray
    weight: np.ndarray
    bias_delta: np.ndarray


@dataclass
class _Operand:
    node: int        # index into graph.node
    slot: int        # input position
    name: str        # the tensor currently read there


@dataclass
class BlockPlan:
    """Where one FFN block's width lives in the graph (found once, applied per edit)."""

    layer: int
    width: int
    out_width: int
    down: _Operand                  # the down projection's weight operand
    down_transposed: bool           # Gemm transB: weight stored [m, D]
    down_alpha: float
    down_beta: float
    down_bias: _Operand | None      # a Gemm's C or a bias Add's constant; None: add one
    down_node: int
    post_norm: str | None = None    # "rms" | "layer" | "l2" when the FFN output is normalized on its own (Gemma, nGPT)
    ups: list[tuple[_Operand, bool, bool]] = field(default_factory=list)  # (weight, transposed, fused 2D)
    columns: list[tuple[_Operand, int]] = field(default_factory=list)      # constants along the width, (op, factor)
    shapes: list[tuple[_Operand, int]] = field(default_factory=list)       # width-spelling shape vectors
    bounds: list[_Operand] = field(default_factory=list)                   # Slice starts/ends, Split sizes


class NotSlimmable(ModelError):
    """The graph's FFNs cannot be narrowed (quantized or shared weights, merged decoders, ...)."""


class FFNSurgery:
    """Plans the narrowing of every FFN block of ``src`` (see module doc)."""

    def __init__(self, src: ModelSource, analysis: Analysis | None = None):
        """``analysis``: `inspect_model` of ``src.model``, when the caller has it already."""
        self.src = src
        analysis = analysis if analysis is not None else inspect_model(src.model)
        if analysis.inlined:  # plan_surgery gives a merged decoder to MergedSurgery
            raise NotSlimmable("the FFN blocks sit inside If subgraphs (an optimum merged decoder): "
                               "use plan_surgery, which narrows both of its branches")
        self.ix: GraphIndex = analysis.index
        self.blocks: list[FFNBlock] = analysis.blocks
        if not self.blocks:
            raise NotSlimmable("no FFN block found in the model: nothing to slim")
        self.plans = [self._plan(layer, b) for layer, b in enumerate(self.blocks)]

    # ------------------------------------------------------------------ planning
    def _refuse(self, layer: int, why: str) -> NotSlimmable:
        return NotSlimmable(f"cannot slim FFN layer {layer}: {why}")

    def _weight(self, layer: int, node_idx: int, slot: int, role: str) -> _Operand:
        ix = self.ix
        node = ix.nodes[node_idx]
        if node.op_type not in ("MatMul", "Gemm"):
            kind = {"MatMulNBits": "4-bit (MatMulNBits)", "MatMulInteger": "int8 (MatMulInteger)",
                    "QLinearMatMul": "int8 (QLinearMatMul)", "DynamicQuantizeMatMul": "int8 (DynamicQuantizeMatMul)",
                    "MatMulIntegerToFloat": "int8 (MatMulIntegerToFloat)"}.get(node.op_type, node.op_type)
            raise self._refuse(layer, f"its {role} projection is {kind}; slim narrows float32/float16 "
                                      "MatMul/Gemm weights (slim the float model, then quantize)")
        name = ix.canon(node.input[slot])
        tensor = ix.initializers.get(name)
        if tensor is None:
            producer = ix.producer_node(name)
            what = producer.op_type if producer is not None else "a graph input"
            if what in ("DequantizeLinear", "DynamicQuantizeLinear", "QuantizeLinear"):
                raise self._refuse(layer, f"its {role} weight is quantized (QDQ: {what}); slim narrows float32/float16 "
                                          "weights held as initializers (slim the float model, then quantize)")
            raise self._refuse(layer, f"its {role} weight is computed by {what}, not held as an initializer")
        if tensor.data_type not in _FLOAT_TYPES:
            raise self._refuse(layer, f"its {role} weight has type "
                                      f"{onnx.TensorProto.DataType.Name(tensor.data_type)}; slim handles float32 and float16")
        if len(ix.consumer_nodes(name, ignore_shape_only=False)) != 1:
            raise self._refuse(layer, f"its {role} weight {name!r} is shared with other nodes (tied weights); "
                                      "narrowing one use would untie it")
        return _Operand(node_idx, slot, name)

    def _plan(self, layer: int, block: FFNBlock) -> BlockPlan:
        ix = self.ix
        d = block.width
        down = ix.nodes[block.down.node]
        w = self._weight(layer, block.down.node, 1, "down")
        trans = down.op_type == "Gemm" and bool(attr(down, "transB", 0))
        alpha = float(attr(down, "alpha", 1.0)) if down.op_type == "Gemm" else 1.0
        beta = float(attr(down, "beta", 1.0)) if down.op_type == "Gemm" else 1.0
        if alpha == 0.0:
            raise self._refuse(layer, "its down projection Gemm has alpha 0")
        bias = self._down_bias(layer, block)
        out = ix.nodes[bias.node].output[0] if bias is not None and bias.node != block.down.node else down.output[0]
        plan = BlockPlan(layer=layer, width=d, out_width=block.down.n, down=w, down_transposed=trans,
                         down_alpha=alpha, down_beta=beta, down_bias=bias, down_node=block.down.node,
                         post_norm=self._post_norm(out))
        for up in block.ups:
            node = ix.nodes[up.node]
            op = self._weight(layer, up.node, 1, "up")
            if node.op_type == "Gemm" and attr(node, "transA", 0):
                raise self._refuse(layer, "its up projection Gemm has transA set")
            if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
                plan.columns.append((self._constant_operand(layer, up.node, 2), up.n // d))
            plan.ups.append((op, node.op_type == "Gemm" and bool(attr(node, "transB", 0)), up.n == 2 * d))
            if up.n not in (d, 2 * d):
                raise self._refuse(layer, f"its up projection is {up.n} wide for {d} neurons")
        self._plan_region(layer, block, plan)
        hidden = self._hidden_outputs(block)
        if hidden:
            raise self._refuse(layer, f"its hidden activation {hidden[0]!r} is a graph output (as in sui-onnx's tapped "
                                      "copy, model.tapped.onnx), whose width narrowing would change: slim the model "
                                      "without it (model.onnx)")
        return plan

    def _hidden_outputs(self, block: FFNBlock) -> list[str]:
        """Graph outputs that run along the block's hidden width (its activations, tapped)."""
        ix = self.ix
        outputs = {ix.canon(o.name) for o in self.src.model.graph.output}
        hidden = {ix.canon(block.post)} | {ix.canon(u.output) for u in block.ups}
        for n in set(block.region) | self._path_nodes(block):
            hidden.update(ix.canon(o) for o in ix.nodes[n].output if o)
        return sorted(hidden & outputs)

    def _post_norm(self, out: str) -> str | None:
        """How the FFN output ``out`` is normalized on its own before it joins the residual stream
        (Gemma's post_feedforward_layernorm, nGPT's L2 normalization), if it is: "rms", "layer",
        "l2"; None when it is added to the residual first (pre-norm models)."""
        ix = self.ix
        t = ix.canon(out)
        for _ in range(4):  # through Cast
            cons = ix.consumer_nodes(t)
            if len(cons) == 1 and ix.nodes[cons[0]].op_type == "Cast":
                t = ix.canon(ix.nodes[cons[0]].output[0])
                continue
            break
        ops = {ix.nodes[c].op_type: ix.nodes[c] for c in ix.consumer_nodes(t)}
        for op, kind in (("RMSNormalization", "rms"), ("SimplifiedLayerNormalization", "rms"),
                         ("LayerNormalization", "layer"), ("ReduceL2", "l2"), ("LpNormalization", "l2")):
            if op in ops and ix.canon(ops[op].input[0]) == t:
                return kind
        if "ReduceMean" in ops:
            mean_out = ix.canon(ops["ReduceMean"].output[0])
            if any(ix.nodes[c].op_type == "Sub" for c in ix.consumer_nodes(mean_out)):
                return "layer"
        square = ops.get("Pow") or (ops.get("Mul") if "Mul" in ops and len(set(ix.canon(i) for i in ops["Mul"].input)) == 1 else None)
        if square is not None:
            nxt = [ix.nodes[c].op_type for c in ix.consumer_nodes(square.output[0])]
            if "ReduceMean" in nxt or "ReduceSum" in nxt:
                return "rms"
        return None

    def _constant_operand(self, layer: int, node_idx: int, slot: int) -> _Operand:
        name = self.ix.canon(self.ix.nodes[node_idx].input[slot])
        if self._constant(name) is None:
            raise self._refuse(layer, f"constant {name!r} is computed in the graph")
        return _Operand(node_idx, slot, name)

    def _down_bias(self, layer: int, block: FFNBlock) -> _Operand | None:
        ix = self.ix
        node = ix.nodes[block.down.node]
        m = block.down.n
        if node.op_type == "Gemm":
            if len(node.input) > 2 and node.input[2]:
                op = self._constant_operand(layer, block.down.node, 2)
                if self._size(op.name) not in (m, 1):
                    raise self._refuse(layer, "its down projection Gemm's C is not a bias vector")
                return op
            return None
        cons = ix.consumer_nodes(node.output[0], ignore_shape_only=False)
        if len(cons) == 1 and ix.nodes[cons[0]].op_type == "Add":
            add = ix.nodes[cons[0]]
            for slot, name in enumerate(add.input):
                c = ix.canon(name)
                if c != ix.canon(node.output[0]) and ix.is_static(c) and self._constant(c) is not None:
                    shape = list(self._constant(c).dims)
                    if shape and shape[-1] == m and int(np.prod(shape)) == m:
                        return _Operand(cons[0], slot, c)
        return None

    def _plan_region(self, layer: int, block: FFNBlock, plan: BlockPlan) -> None:
        """Constants along the width, shape vectors that spell it, and split bounds."""
        ix = self.ix
        d = block.width
        nodes = set(block.region) | self._path_nodes(block)
        fused = any(f for _, _, f in plan.ups)
        for n in sorted(nodes):
            node = ix.nodes[n]
            data = set(region_inputs(node))
            for slot, name in enumerate(node.input):
                if not name:
                    continue
                c = ix.canon(name)
                if node.op_type in ("Slice", "Split") and slot > 0:
                    if node.op_type == "Slice" and slot == 4 and self._vector(c) is not None and np.any(self._vector(c) != 1):
                        raise self._refuse(layer, "a Slice with steps splits its fused gate/up projection")
                    if slot in (1, 2) or node.op_type == "Split":
                        plan.bounds.append(_Operand(n, slot, c))
                    continue
                if slot in _WIDTH_VECTOR_OPS.get(node.op_type, ()):
                    plan.shapes.append((_Operand(n, slot, c), 2 if self._upstream_of_split(n, block) and fused else 1))
                    continue
                if name not in data or not ix.is_static(c):
                    continue
                shape = self._shape(c)
                if shape is None:
                    continue  # a shape-derived value (it follows the narrower tensor by itself)
                if shape and shape[-1] in (d, 2 * d) and d > 1:
                    factor = shape[-1] // d
                    if self._constant(c) is None:
                        raise self._refuse(layer, f"constant {c!r} along the hidden width is computed in the graph")
                    plan.columns.append((_Operand(n, slot, c), factor))
            if node.op_type == "Split" and len(node.input) < 2 and attr(node, "split") is not None:
                plan.bounds.append(_Operand(n, -1, ""))  # the split sizes are an attribute
            if node.op_type == "Split":
                axis = int(attr(node, "axis", 0))
                if axis not in (-1, self._rank_or(node.input[0], axis + 1) - 1):
                    raise self._refuse(layer, "its fused gate/up projection is split on another axis than the last")
            if node.op_type == "Slice" and len(node.input) > 3 and node.input[3]:
                axes = self._vector(ix.canon(node.input[3]))
                rank = self._rank_or(node.input[0], 0)
                if axes is None or any(int(a) not in (-1, rank - 1) for a in axes):
                    raise self._refuse(layer, "its fused gate/up projection is sliced on another axis than the last")

    def _rank_or(self, name: str, default: int) -> int:
        r = self.ix.rank(name)
        return default if r is None else int(r)

    def _path_nodes(self, block: FFNBlock) -> set[int]:
        """Layout nodes between the post tensor and the down projection's data input."""
        ix = self.ix
        out: set[int] = set()
        t = ix.canon(block.down.data)
        post = ix.canon(block.post)
        while t != post:
            p = ix.producer.get(t)
            if p is None:
                break
            out.add(p[0])
            node = ix.nodes[p[0]]
            if not node.input:
                break
            t = ix.canon(node.input[0])
        return out

    def _upstream_of_split(self, n: int, block: FFNBlock) -> bool:
        """True when node ``n`` runs on the fused (2D-wide) projection output, before the split."""
        ix = self.ix
        t = ix.canon(ix.nodes[n].input[0]) if ix.nodes[n].input else ""
        for _ in range(16):
            if t in {u.output for u in block.ups}:
                return True
            p = ix.producer.get(t)
            if p is None or ix.nodes[p[0]].op_type in ("Slice", "Split"):
                return False
            t = ix.canon(ix.nodes[p[0]].input[0]) if ix.nodes[p[0]].input else ""
        return False

    # ------------------------------------------------------------------ constants
    def _constant(self, name: str) -> onnx.TensorProto | None:
        """The TensorProto holding constant ``name`` (an initializer or a Constant node's value)."""
        ix = self.ix
        t = ix.initializers.get(name)
        if t is not None:
            return t
        node = ix.producer_node(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return a.t
        return None

    def _shape(self, name: str) -> list[int] | None:
        t = self._constant(name)
        if t is not None:
            return list(t.dims)
        v = self.ix.static_value(name)
        return None if v is None else list(v.shape)

    def _size(self, name: str) -> int:
        shape = self._shape(name) or []
        return int(np.prod(shape)) if shape else 1

    def _vector(self, name: str) -> np.ndarray | None:
        v = self.ix.static_value(name)
        return None if v is None else np.atleast_1d(v).astype(np.int64)

    def array(self, name: str) -> np.ndarray:
        """The value of constant ``name``, external data read from the model's folder."""
        t = self._constant(name)
        if t is None:
            raise ModelError(f"constant {name!r} is not held in the model")
        folder = self.src.data_folder or self.src.folder
        try:
            return numpy_helper.to_array(t, base_dir=str(folder))
        except Exception as exc:  # noqa: BLE001 - onnx raises several types for unreadable data
            raise ModelError(f"cannot read weight {name!r}: {first_line(exc, limit=200)}") from None

    def down_weight(self, layer: int) -> np.ndarray:
        """W of layer ``layer`` as float64 [D, m] (hidden -> output), alpha included."""
        plan = self.plans[layer]
        w = self.array(plan.down.name).astype(np.float64)
        w = w.T if plan.down_transposed else w
        if w.shape != (plan.width, plan.out_width):
            raise self._refuse(layer, f"its down weight has shape {w.shape}, expected {(plan.width, plan.out_width)}")
        return w * plan.down_alpha

    # ------------------------------------------------------------------ applying
    def apply(self, edits: Mapping[int, LayerEdit]) -> onnx.ModelProto:
        """A new ModelProto with ``edits`` applied (layers not named are left as they are)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.src.model)
        g = model.graph
        new_inits: list[onnx.TensorProto] = []
        inserts: list[tuple[int, onnx.NodeProto]] = []  # (before node index, node)
        for layer, edit in sorted(edits.items()):
            self._apply_layer(g, self.plans[layer], edit, new_inits, inserts)
        g.initializer.extend(new_inits)
        for before, node in sorted(inserts, key=lambda x: -x[0]):
            g.node.insert(before, node)
        del g.value_info[:]  # shapes along the hidden width changed; onnxruntime infers them again
        _drop_unused_initializers(g)
        _record_widths(model, [len(edits[i].keep) if i in edits else p.width for i, p in enumerate(self.plans)])
        return model

    def _new(self, inits: list, base: str, layer: int, value: np.ndarray) -> str:
        name = f"sui_slim.{layer}.{base}"
        k = 1
        taken = {t.name for t in inits}
        while name in taken or name in self.ix.initializers:
            name, k = f"sui_slim.{layer}.{k}.{base}", k + 1
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def _apply_layer(self, g: onnx.GraphProto, plan: BlockPlan, edit: LayerEdit, inits: list, inserts: list) -> None:
        d, m = plan.width, plan.out_width
        keep = np.asarray(edit.keep, dtype=np.int64)
        k = keep.size
        if k < 1 or keep.min() < 0 or keep.max() >= d or np.any(np.diff(keep) <= 0):
            raise SuiError(f"layer {plan.layer}: kept neurons must be sorted, distinct and in 0..{d - 1}")
        if edit.weight.shape != (k, m) or np.shape(edit.bias_delta) != (m,):
            raise SuiError(f"layer {plan.layer}: new down weight must be {(k, m)} with a bias change of ({m},)")
        narrowed = k < d
        if narrowed:
            cols = {1: keep, 2: np.concatenate([keep, keep + d])}
            for op, transposed, fused in plan.ups:
                w = self.array(op.name)
                idx = cols[2 if fused else 1]
                w = w[idx] if transposed else w[..., idx]
                g.node[op.node].input[op.slot] = self._new(inits, op.name, plan.layer, w)
            for op, factor in plan.columns:
                v = self.array(op.name)
                g.node[op.node].input[op.slot] = self._new(inits, op.name, plan.layer, v[..., cols[factor]])
            for op, factor in plan.shapes:
                self._rewrite_shape(g, plan, op, factor * d, factor * k, inits, inserts)
            for op in plan.bounds:
                self._rewrite_bounds(g, plan, op, k, inits)
        w_dtype = _FLOAT_TYPES[self.ix.initializers[plan.down.name].data_type]
        new_w = edit.weight / plan.down_alpha
        new_w = new_w.T if plan.down_transposed else new_w
        if not np.isfinite(new_w).all() or not np.isfinite(edit.bias_delta).all():
            raise SuiError(f"layer {plan.layer}: the refitted down projection is not finite")
        g.node[plan.down.node].input[plan.down.slot] = self._new(inits, plan.down.name, plan.layer, new_w.astype(w_dtype))
        delta = np.asarray(edit.bias_delta, dtype=np.float64)
        down = g.node[plan.down_node]
        if plan.down_bias is not None:
            old = self.array(plan.down_bias.name)
            scale = plan.down_beta if plan.down_bias.node == plan.down_node else 1.0  # a Gemm's C is scaled by beta
            change = delta.reshape(old.shape) if old.size == m else delta
            bias = old.astype(np.float64) + change / scale
            dtype = old.dtype if old.dtype in (np.float32, np.float16) else w_dtype
            g.node[plan.down_bias.node].input[plan.down_bias.slot] = self._new(inits, plan.down_bias.name, plan.layer, bias.astype(dtype))
        elif down.op_type == "Gemm":
            name = self._new(inits, f"{plan.down.name}.bias", plan.layer, (delta / plan.down_beta).astype(w_dtype))
            while len(down.input) < 3:
                down.input.append("")
            down.input[2] = name
        else:
            bias = self._new(inits, f"{plan.down.name}.bias", plan.layer, delta.astype(w_dtype))
            out = down.output[0]
            pre = f"{out}.sui_slim_unbiased"
            down.output[0] = pre
            inserts.append((plan.down_node + 1, onnx.helper.make_node("Add", [pre, bias], [out], name=f"sui_slim_bias_{plan.layer}")))

    def _rewrite_shape(self, g, plan: BlockPlan, op: _Operand, old: int, new: int, inits: list, inserts: list) -> None:
        """Replace ``old`` (the width) by ``new`` where a shape vector spells it in its last place."""
        value = self._vector(op.name)
        if value is not None:
            if value.size and value[-1] == old:
                value = value.copy()
                value[-1] = new
                g.node[op.node].input[op.slot] = self._new(inits, op.name, plan.layer, value)
            return
        producer = self.ix.producer.get(op.name)
        if producer is None:
            return
        node = self.ix.nodes[producer[0]]
        if node.op_type != "Concat" or not node.input:
            return  # a dynamic shape: it follows the narrower tensor by itself
        last = self.ix.canon(node.input[-1])
        piece = self._vector(last)
        if piece is None or not piece.size or piece[-1] != old:
            return
        piece = piece.copy()
        piece[-1] = new
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        clone.name = f"sui_slim_{plan.layer}_{node.name or 'Concat'}_{op.node}_{op.slot}"
        clone.input[len(clone.input) - 1] = self._new(inits, last, plan.layer, piece)
        clone.output[0] = f"{clone.name}_output"
        inserts.append((op.node, clone))
        g.node[op.node].input[op.slot] = clone.output[0]

    def _rewrite_bounds(self, g, plan: BlockPlan, op: _Operand, k: int, inits: list) -> None:
        """Slice starts/ends and Split sizes of a fused gate/up projection: multiples of D -> of k."""
        d = plan.width
        node = g.node[op.node]
        if op.slot == -1:
            sizes = list(attr(node, "split"))
            for a in node.attribute:
                if a.name == "split":
                    del a.ints[:]
                    a.ints.extend(self._scaled_bounds(plan, np.asarray(sizes), d, k).tolist())
            return
        value = self._vector(op.name)
        if value is None:  # computed from the tensor's shape (torch's chunk): follows the narrower tensor
            return
        new = self._scaled_bounds(plan, value, d, k)
        if not np.array_equal(new, value):
            g.node[op.node].input[op.slot] = self._new(inits, op.name, plan.layer, new)

    def _scaled_bounds(self, plan: BlockPlan, value: np.ndarray, d: int, k: int) -> np.ndarray:
        out = value.copy()
        big = np.iinfo(np.int64).max // 2
        for i, v in enumerate(value.tolist()):
            if abs(v) >= big or v == 0:
                continue
            if v % d or abs(v) > 2 * d:
                raise self._refuse(plan.layer, f"its fused gate/up projection is split at {v}, not at a multiple of {d}")
            out[i] = v // d * k
        return out


def plan_surgery(src: ModelSource) -> "FFNSurgery | MergedSurgery":
    """The surgery for ``src``: `MergedSurgery` for an optimum merged decoder (FFN blocks in the
    two branches of If(use_cache_branch)), else `FFNSurgery`."""
    analysis = inspect_model(src.model)
    return MergedSurgery(src) if analysis.inlined else FFNSurgery(src, analysis)


class MergedSurgery:
    """Narrows an optimum merged decoder: both branches of its If(use_cache_branch) alike.

    Each branch (with and without past) is planned as a graph of its own (the main graph's
    nodes before the If, the branch's nodes, the outer and the branch's initializers), and the
    two must narrow the same weights: every FFN block of the no-past branch has its twin in the
    with-past branch reading the same up and down weights (optimum's merge stores them once, in
    the outer graph). The layers, widths, weights and parameter counts are the no-past branch's
    (the one report taps and eval runs); ``apply`` gives both branches the same edits and puts
    each new weight in the outer graph once (both branches read it), while new scalars and
    integer vectors stay in the branch that uses them, as optimum places them."""

    def __init__(self, src: ModelSource):
        from dataclasses import replace

        from .taps import merged_if_index

        self.src = src
        n = merged_if_index(src.model)
        if n is None:
            raise NotSlimmable("the FFN blocks sit inside If/Loop subgraphs that are not an optimum merged "
                               "decoder's If(use_cache_branch): slim the decoder without past (decoder_model.onnx)")
        self.if_index = n
        self.branches = {which: FFNSurgery(replace(src, model=self._standalone(which)))
                         for which in ("else_branch", "then_branch")}
        plain, past = self.branches["else_branch"], self.branches["then_branch"]
        self.ix, self.blocks, self.plans = plain.ix, plain.blocks, plain.plans
        outer = {t.name for t in src.model.graph.initializer}

        def same(name: str) -> bool:  # one tensor: stored once outside, or equal copies in both branches
            return name in outer or (name in past.ix.initializers and plain.ix.initializers[name].SerializeToString()
                                     == past.ix.initializers[name].SerializeToString())

        by_down = {p.down.name: i for i, p in enumerate(past.plans)}
        self.twin: list[int] = []  # layer of the no-past branch -> its layer in the with-past branch
        for i, p in enumerate(plain.plans):
            j = by_down.get(p.down.name)
            q = past.plans[j] if j is not None else None
            names = [p.down.name] + [u.name for u, _, _ in p.ups]
            if (q is None or q.width != p.width or [u.name for u, _, _ in q.ups] != names[1:]
                    or not all(map(same, names))):
                raise NotSlimmable(f"cannot slim FFN layer {i}: the merged decoder's two branches do not share its "
                                   "weights (slim decoder_model.onnx and decoder_with_past_model.onnx instead)")
            self.twin.append(j)
        if len(set(self.twin)) != len(self.twin) or len(past.plans) != len(plain.plans):
            raise NotSlimmable("the merged decoder's two branches have different FFN blocks: slim decoder_model.onnx "
                               "and decoder_with_past_model.onnx instead")

    def _standalone(self, which: str) -> onnx.ModelProto:
        """The main graph up to the If, then the ``which`` branch's nodes, as one graph whose
        outputs are the branch's."""
        model = onnx.ModelProto()
        model.CopyFrom(self.src.model)
        g = model.graph
        branch = attr(g.node[self.if_index], which)
        pre = list(g.node[:self.if_index])
        del g.node[:]
        g.node.extend(pre)
        g.node.extend(branch.node)
        del g.output[:]
        g.output.extend(branch.output)
        g.initializer.extend(branch.initializer)
        g.sparse_initializer.extend(branch.sparse_initializer)
        g.value_info.extend(branch.value_info)
        return model

    def down_weight(self, layer: int) -> np.ndarray:
        return self.branches["else_branch"].down_weight(layer)

    def array(self, name: str) -> np.ndarray:
        return self.branches["else_branch"].array(name)

    def apply(self, edits: Mapping[int, LayerEdit]) -> onnx.ModelProto:
        """A new merged decoder with ``edits`` (keyed by the no-past branch's layers) applied to
        both branches."""
        model = onnx.ModelProto()
        model.CopyFrom(self.src.model)
        g = model.graph
        if_node = g.node[self.if_index]
        outer = {t.name for t in g.initializer}
        stored: dict[bytes, str] = {}        # a new tensor's content -> its name in the outer graph
        hoisted: dict[str, onnx.TensorProto] = {}
        for which in ("else_branch", "then_branch"):
            sub = self.branches[which]
            layer_edits = edits if which == "else_branch" else {self.twin[i]: e for i, e in edits.items()}
            flat = sub.apply(layer_edits).graph
            pre = flat.node[:self.if_index]
            if [n.SerializeToString() for n in pre] != [n.SerializeToString() for n in g.node[:self.if_index]]:
                raise SuiError("slimming changed nodes outside the merged decoder's branches")  # cannot happen
            branch = next(a.g for a in if_node.attribute if a.name == which)
            local = {t.name for t in branch.initializer}
            keep_local, rename = [], {}
            for t in flat.initializer:
                if t.name in local or (t.name not in outer and _branch_constant(t)):
                    keep_local.append(t)
                elif t.name not in outer:  # new: one copy in the outer graph per distinct content
                    body = onnx.TensorProto()
                    body.CopyFrom(t)
                    body.name = ""
                    key = body.SerializeToString()
                    name = stored.get(key)
                    if name is None:
                        name = t.name
                        k = 1
                        while name in hoisted or name in outer:
                            name, k = f"{t.name}.{k}", k + 1
                        stored[key] = name
                        copy = onnx.TensorProto()
                        copy.CopyFrom(t)
                        copy.name = name
                        hoisted[name] = copy
                    if name != t.name:
                        rename[t.name] = name
            nodes = list(flat.node[self.if_index:])
            for node in nodes:
                for s, name in enumerate(node.input):
                    if name in rename:
                        node.input[s] = rename[name]
            del branch.node[:]
            branch.node.extend(nodes)
            del branch.initializer[:]
            branch.initializer.extend(keep_local)
            del branch.value_info[:]  # shapes along the hidden width changed
        g.initializer.extend(hoisted.values())
        _drop_unused_initializers(g)
        _record_widths(model, [len(edits[i].keep) if i in edits else p.width for i, p in enumerate(self.plans)])
        return model


def _branch_constant(t: onnx.TensorProto) -> bool:
    """A scalar or a 1-D integer vector (shapes, split bounds): optimum's merge keeps such
    constants in the branches (onnxruntime's optimizer mishandles them in the outer graph)."""
    return len(t.dims) == 0 or (len(t.dims) == 1 and t.data_type in (onnx.TensorProto.INT32, onnx.TensorProto.INT64))


def _record_widths(model: onnx.ModelProto, widths: list[int]) -> None:
    """The FFN widths after slimming, in the model's metadata (``sui_onnx.slim``)."""
    meta = {p.key: p for p in model.metadata_props}
    entry = meta.get("sui_onnx.slim") or model.metadata_props.add()
    entry.key = "sui_onnx.slim"
    entry.value = ",".join(map(str, widths))


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    """Remove initializers no node (or subgraph, or output) reads any more, and their input
    entries (models of IR version < 4 list initializers as graph inputs too)."""
    from .index import subgraphs

    used: set[str] = {o.name for o in g.output}

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            used.update(i for i in node.input if i)
            for sub in subgraphs(node):
                visit(sub)

    visit(g)
    dropped = {t.name for t in g.initializer if t.name not in used}
    if not dropped:
        return
    keep = [t for t in g.initializer if t.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(keep)
    inputs = [i for i in g.input if i.name not in dropped]
    if len(inputs) != len(g.input):
        del g.input[:]
        g.input.extend(inputs)


# ---------------------------------------------------------------------- writing
def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers, embedded or external."""
    total = 0
    for t in model.graph.initializer:
        if uses_external_data(t):
            total += int(external_info(t).get("length", 0) or 0)
        else:
            total += t.ByteSize()
    return total


def write_model_folder(model: onnx.ModelProto, src: ModelSource, out_dir: Path, extra_files: Mapping[str, bytes],
                       copy_from: Path | None = None) -> Path:
    """Write ``model`` as OUT_DIR/model.onnx (external data model.onnx_data above 256 MiB of
    weights), the files in ``extra_files`` and the small companion files of ``copy_from``
    (tokenizer, configs, licence), atomically: everything goes to a temporary folder beside
    OUT_DIR, renamed into place at the end. OUT_DIR must not exist or be empty."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SuiError(f"{out_dir} exists and is not an empty folder: nothing was written (choose a new OUT_DIR)")
    parent = out_dir.resolve().parent
    if not parent.is_dir():
        raise SuiError(f"cannot write {out_dir}: folder {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    try:
        folder = src.data_folder or src.folder
        external = weight_bytes(model) > _SINGLE_FILE_LIMIT
        if external:
            _write_external(model, folder, tmp)
        else:
            onnx.load_external_data_for_model(model, str(folder))
            _write_file(tmp / MODEL_FILE, model.SerializeToString())
        for name, data in extra_files.items():
            _write_file(tmp / name, data)
        if copy_from is not None:
            for f in companion_files(copy_from, src):
                shutil.copyfile(f, tmp / f.name)
        os.chmod(tmp, 0o777 & ~umask())
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / MODEL_FILE


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_external(model: onnx.ModelProto, folder: Path, out: Path) -> None:
    """All initializers into out/model.onnx_data, copied range by range (never all in memory)."""
    data_name = DATA_FILE
    offset = 0
    with open(out / data_name, "wb") as sink:
        for t in model.graph.initializer:
            if uses_external_data(t):
                info = external_info(t)
                src_path = folder / info["location"]
                start, length = int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
                with open(src_path, "rb") as fh:
                    fh.seek(start)
                    left = length
                    while left:
                        chunk = fh.read(min(left, 1 << 24))
                        if not chunk:
                            raise ModelError(f"external data of {t.name!r} ends early in {src_path}")
                        sink.write(chunk)
                        left -= len(chunk)
            else:
                raw = numpy_helper.to_array(t).tobytes()
                length = len(raw)
                sink.write(raw)
                t.ClearField("raw_data")
                for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                    t.ClearField(f)
            del t.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                e = t.external_data.add()
                e.key, e.value = key, value
            t.data_location = onnx.TensorProto.EXTERNAL
            pad = (-(offset + length)) % 64  # keep every tensor 64-byte aligned
            sink.write(b"\0" * pad)
            offset += length + pad
        sink.flush()
        os.fsync(sink.fileno())
    _write_file(out / MODEL_FILE, model.SerializeToString())


_COMPANION_SKIP_SUFFIXES = (".onnx", ".onnx_data", ".onnx.data", ".npz", ".tmp")
_COMPANION_MAX_BYTES = 64 << 20


def companion_files(folder: Path, src: ModelSource) -> list[Path]:
    """Small files beside the model that describe it (tokenizer, configs, licence): every regular
    file that is neither a model, its external data, statistics nor a slim record. In the
    transformers.js layout (the model in the repo's onnx/ folder) the tokenizer and config files of
    the repo folder above are taken too, where onnx/ has none of that name."""
    data_files = {external_info(t).get("location") for t in src.model.graph.initializer if uses_external_data(t)}
    out = []
    folder = Path(folder)
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name in data_files or f.name == "slim.json":
            continue
        if f.name.lower().endswith(_COMPANION_SKIP_SUFFIXES) or f.stat().st_size > _COMPANION_MAX_BYTES:
            continue
        out.append(f)
    if folder.name == TRANSFORMERS_JS_FOLDER:
        have = {f.name for f in out}
        out += [folder.parent / name for name in DESCRIPTION_FILES if name not in have
                and (folder.parent / name).is_file() and (folder.parent / name).stat().st_size <= _COMPANION_MAX_BYTES]
    return out

