"""Structural detection of the FFN (MLP) blocks of a transformer graph.

An FFN block is recognised by its shape, never by names:

1. ``find_projections`` lists every linear projection whose weight is a constant: MatMul,
   Gemm, FusedMatMul, MatMulNBits (K/N attributes), MatMulInteger, QLinearMatMul,
   MatMulIntegerToFloat, DynamicQuantizeMatMul — weights possibly behind Transpose, Cast,
   (De)QuantizeLinear or Reshape.  Each gets its input width ``k`` and output width ``n``.
2. For each projection taken as a *down* projection, ``trace_post_tensor`` walks back from its
   data input through layout/quantisation ops (Reshape, Cast, Q/DQ, DynamicQuantizeLinear) to
   the activation output, the *post* tensor.
3. ``activation_region`` collects the elementwise sub-graph that produced the post tensor,
   stopping at projection outputs and constants.  It must reach one or two *up* projections
   and nothing else (no LayerNorm, Softmax, Transpose, graph input ...): this is what rules out
   attention, whose output projection reads a Softmax·V product.
4. ``branch_roots`` follows each up projection forward through affine ops (bias Add, scale
   Mul, Reshape, Cast) and Split/Slice, giving one root (plain FFN) or two (gated FFN:
   the gate root is the one whose private branch holds the nonlinearity).
5. Widths must agree: up projections map ``d_model -> D`` (or ``-> 2D`` when split), the down
   projection maps ``D -> d_model``.  ``classify_activation`` names the nonlinearity.

Blocks are ordered by the longest-path depth of their down projection (layer ``i+1`` reads
layer ``i``'s residual output), so shuffling the node list or renaming tensors does not change
the result.  Names and torch name scopes are only used to warn when they disagree.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

import onnx

from .index import GraphIndex, attr

# op_type -> (data input index, weight input index)
PROJECTION_OPS: dict[str, tuple[int, int]] = {
    "MatMul": (0, 1),
    "Gemm": (0, 1),
    "FusedMatMul": (0, 1),
    "MatMulNBits": (0, 1),
    "MatMulBnb4": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
    "MatMulIntegerToFloat": (0, 1),
    "DynamicQuantizeMatMul": (0, 1),
}
# Ops between the activation output and the down projection that change layout or encoding only.
LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "QuantizeLinear", "DequantizeLinear"})
# The nonlinearities (any of them makes an elementwise region an activation).
NONLINEAR_OPS = frozenset({
    "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "PRelu", "ThresholdedRelu",
    "Softplus", "Softsign", "Mish", "HardSigmoid", "HardSwish", "Swish", "Gelu", "FastGelu", "BiasGelu",
    "QuickGelu", "Max", "Min", "Clip", "Exp", "Log", "Abs", "Sin", "Cos", "Sign", "Pow", "Sqrt",
})
# Everything an activation region may contain.
REGION_OPS = NONLINEAR_OPS | LAYOUT_OPS | frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Reciprocal", "Where", "Slice", "Split", "Expand", "Tile",
})
# Ops whose data operand is input 0 only (the rest are shapes, indices, exponents or bounds).
FIRST_INPUT_ONLY = LAYOUT_OPS | frozenset({"Slice", "Split", "Expand", "Tile", "Clip"})
SPLIT_OPS = frozenset({"Slice", "Split"})
AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})
GATED_NAMES = {"silu": "swiglu", "gelu": "geglu", "gelu_tanh": "geglu", "relu": "reglu"}
_REGION_LIMIT = 96
_LAYER_HINT = re.compile(r"(?:^|[^a-z0-9])(?:h|layers?|blocks?|block|decoder\.layers|encoder\.layer)[._/](\d+)(?=[^0-9]|$)", re.I)


@dataclass(frozen=True)
class Projection:
    """A linear projection ``x @ W`` with a constant weight of shape (k, n)."""

    node: int       # index into GraphIndex.nodes
    name: str       # node name (or op#index when unnamed)
    op: str
    data: str       # canonical data input
    k: int          # input width
    n: int          # output width
    output: str     # canonical float output (after the int32 -> float epilogue of MatMulInteger)
    batch: int = 1  # product of the weight's leading dimensions: > 1 for [E, k, n] batched experts


@dataclass
class FFNBlock:
    """One detected FFN block; ``post``/``pre`` are canonical tensor names."""

    down: Projection
    ups: list[Projection]
    post: str
    pre: str
    width: int
    activation: str
    depth: int
    hint: int | None = None
    region: set[int] = field(default_factory=set)


# ---------------------------------------------------------------------------- projections
def find_projections(ix: GraphIndex) -> dict[int, Projection]:
    """Every projection with a constant weight of known 2-D (k, n) shape, keyed by node index."""
    found: dict[int, Projection] = {}
    for n in ix.order:
        node = ix.nodes[n]
        spec = PROJECTION_OPS.get(node.op_type)
        if spec is None or len(node.input) <= max(spec):
            continue
        data, weight = node.input[spec[0]], node.input[spec[1]]
        if not data or not weight or ix.is_static(data) or not ix.is_static(weight):
            continue
        if node.op_type in ("Gemm", "FusedMatMul") and attr(node, "transA", 0):
            continue
        kn = weight_widths(ix, node, weight)
        if kn is None:
            continue
        found[n] = Projection(
            node=n,
            name=node.name or f"{node.op_type}#{n}",
            op=node.op_type,
            data=ix.canon(data),
            k=kn[0],
            n=kn[1],
            output=projection_output(ix, n),
            batch=weight_batch(ix, node, weight),
        )
    return found


def weight_batch(ix: GraphIndex, node: onnx.NodeProto, weight: str) -> int:
    """How many matrices a MatMul weight stacks: the product of its leading dimensions ([E, k, n]:
    E, as when a mixture of experts runs all its experts in one batched MatMul); 1 for a matrix."""
    if node.op_type != "MatMul":
        return 1
    shape = ix.static_shape(weight) or ()
    return math.prod(int(d) for d in shape[:-2]) if len(shape) > 2 else 1


def weight_widths(ix: GraphIndex, node: onnx.NodeProto, weight: str) -> tuple[int, int] | None:
    """(k, n) of a projection's weight, from MatMulNBits attributes or the weight's shape."""
    if node.op_type in ("MatMulNBits", "MatMulBnb4"):
        k, n = attr(node, "K"), attr(node, "N")
        return (int(k), int(n)) if k and n else None
    shape = ix.static_shape(weight)
    if shape is None or len(shape) < 2 or any(d <= 0 for d in shape[-2:]):
        return None
    k, n = shape[-2], shape[-1]
    if node.op_type in ("Gemm", "FusedMatMul") and attr(node, "transB", 0):
        k, n = n, k
    return k, n


def projection_output(ix: GraphIndex, n: int) -> str:
    """The float tensor holding ``x @ W``: integer matmuls are followed to their dequantisation."""
    node = ix.nodes[n]
    out = ix.canon(node.output[0])
    if node.op_type == "MatMulInteger":
        for op in ("Cast", "Mul"):
            cons = ix.consumer_nodes(out)
            if len(cons) != 1 or ix.nodes[cons[0]].op_type != op:
                break
            out = ix.canon(ix.nodes[cons[0]].output[0])
    elif node.op_type == "QLinearMatMul":
        cons = ix.consumer_nodes(out)
        if len(cons) == 1 and ix.nodes[cons[0]].op_type == "DequantizeLinear":
            out = ix.canon(ix.nodes[cons[0]].output[0])
    return out


# ---------------------------------------------------------------------------- post tensor
def trace_post_tensor(ix: GraphIndex, data: str, width: int) -> str:
    """Walk back from a down projection's input to the activation output it encodes.

    Crosses Reshape/Flatten/Squeeze/Unsqueeze (when the last dim stays ``width`` or is
    unknown), Cast, QuantizeLinear/DequantizeLinear and DynamicQuantizeLinear (output 0), so
    the result is the float activation output in its natural [batch, seq, D] layout.
    """
    t = ix.canon(data)
    for _ in range(16):
        p = ix.producer.get(t)
        if p is None:
            break
        node, k = ix.nodes[p[0]], p[1]
        op = node.op_type
        if op == "DynamicQuantizeLinear":
            if k != 0:
                break
        elif op not in LAYOUT_OPS:
            break
        if k != 0 or not node.input or not node.input[0]:
            break
        src = ix.canon(node.input[0])
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            last = ix.last_dim(src)
            if last is not None and last != width:
                break
        t = src
    return t


# ---------------------------------------------------------------------------- activation
@dataclass
class Region:
    """Elementwise nodes between the up projection(s) and the post tensor."""

    nodes: set[int]
    ups: list[int]  # projection node indices, in discovery order


def region_inputs(node: onnx.NodeProto) -> list[str]:
    """The data operands of a region node (shape/index/bound operands left out)."""
    if node.op_type in FIRST_INPUT_ONLY:
        return [node.input[0]] if node.input and node.input[0] else []
    if node.op_type == "Where":
        return [i for i in node.input[1:3] if i]
    return [i for i in node.input if i]


def activation_region(ix: GraphIndex, by_output: dict[str, int], post: str) -> Region | None:
    """The elementwise sub-graph producing ``post``, or None when it touches anything else.

    The walk stops at projection outputs (recorded as up projections) and constants; reaching
    a graph input or a non-elementwise op (LayerNorm, Softmax, Transpose, MatMul of two
    activations, ...) disqualifies the candidate.
    """
    nodes: set[int] = set()
    ups: list[int] = []
    seen: set[str] = set()
    stack = [ix.canon(post)]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if ix.is_static(t):
            continue
        if t in by_output:
            if by_output[t] not in ups:
                ups.append(by_output[t])
            continue
        p = ix.producer.get(t)
        if p is None:
            return None
        node = ix.nodes[p[0]]
        if node.op_type not in REGION_OPS:
            return None
        nodes.add(p[0])
        if len(nodes) > _REGION_LIMIT:
            return None
        stack.extend(ix.canon(i) for i in region_inputs(node))
    return Region(nodes, ups)


@dataclass
class Root:
    """Where a projection output enters the nonlinearity or the gating product."""

    tensor: str    # the branch root (input of the nonlinearity / gating product)
    pre: str       # the projection output (+ bias, layout, split) before any constant scaling
    split: bool    # reached through Split/Slice (fused gate_up projection)
    scaled: bool   # multiplied by a constant vector on the way (nGPT's scaled gates)


def branch_roots(ix: GraphIndex, region: Region, start: str) -> list[Root]:
    """Follow a projection output forward through affine and layout ops to its branch roots.

    A root is the first tensor that fans out, enters a nonlinear op, or meets another
    dynamic operand; Split and Slice fan-outs open one branch per part.  Alongside, ``pre``
    follows bias Add/Sub, layout ops and Split/Slice but stops at the first constant Mul/Div
    (nGPT's learned gate scales), so the pre tap is ``x W (+ b)`` as the contract asks.
    """
    roots: list[Root] = []
    t0 = ix.canon(start)
    stack = [(t0, t0, False, False, False)]  # tensor, pre, pre frozen, split, scaled
    seen: set[str] = set()
    while stack:
        t, pre, frozen, split, scaled = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        cons = [c for c in ix.consumer_nodes(t) if c in region.nodes]
        if len(cons) > 1 and all(ix.nodes[c].op_type in SPLIT_OPS for c in cons):
            for c in cons:
                stack.extend((o, o, False, True, scaled) for o in _used_outputs(ix, region, c))
            continue
        if len(cons) == 1:
            node = ix.nodes[cons[0]]
            op = node.op_type
            if op in SPLIT_OPS:
                stack.extend((o, o, False, True, scaled) for o in _used_outputs(ix, region, cons[0]))
                continue
            out = ix.canon(node.output[0]) if node.output else ""
            if op in LAYOUT_OPS and ix.canon(node.input[0]) == t:
                stack.append((out, pre if frozen else out, frozen, split, scaled))
                continue
            if op in AFFINE_OPS and len(node.input) == 2:
                ins = [ix.canon(i) for i in node.input]
                others = [i for i in ins if i != t]
                if len(others) == 1 and ix.is_static(others[0]):
                    scaling = op in ("Mul", "Div")
                    vec = scaling and _size(ix, others[0]) > 1
                    frozen = frozen or scaling
                    stack.append((out, pre if frozen else out, frozen, split, scaled or vec))
                    continue
        roots.append(Root(t, pre, split, scaled))
    return roots


def _used_outputs(ix: GraphIndex, region: Region, n: int) -> list[str]:
    """Canonical outputs of a Split/Slice node that the region reads."""
    outs = [ix.canon(o) for o in ix.nodes[n].output if o]
    used = [o for o in outs if any(c in region.nodes for c in ix.consumer_nodes(o))]
    return used or outs


def _size(ix: GraphIndex, name: str) -> int:
    shape = ix.static_shape(name)
    if shape is None:
        return 1
    size = 1
    for d in shape:
        size *= d
    return size


def forward_reach(ix: GraphIndex, region: Region, start: str) -> set[int]:
    """Region nodes reachable from ``start`` (the branch it feeds)."""
    reached: set[int] = set()
    stack = [ix.canon(start)]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        for c in ix.consumer_nodes(t):
            if c in region.nodes and c not in reached:
                reached.add(c)
                stack.extend(ix.canon(o) for o in ix.nodes[c].output if o)
    return reached


def nonlinear_nodes(ix: GraphIndex, nodes: set[int]) -> list[int]:
    """The nodes of ``nodes`` that are nonlinear (Pow counts unless its exponent is 1)."""
    out = []
    for n in nodes:
        node = ix.nodes[n]
        if node.op_type not in NONLINEAR_OPS:
            continue
        if node.op_type == "Pow" and ix.static_scalar(node.input[1]) == 1.0:
            continue
        out.append(n)
    return out


def classify_activation(ix: GraphIndex, nodes: set[int]) -> str:
    """Name the nonlinearity computed by ``nodes`` (a plain branch, not a gated product)."""
    by_op: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        by_op.setdefault(ix.nodes[n].op_type, []).append(ix.nodes[n])
    ops = set(by_op)
    for op, default in (("QuickGelu", 1.702), ("Swish", 1.0)):  # x * sigmoid(alpha * x)
        if op in ops:
            return _sigmoid_gate_name(float(attr(by_op[op][0], "alpha", default)))
    if "FastGelu" in ops:
        return "gelu_tanh"
    if "BiasGelu" in ops:
        return "gelu"
    if "Gelu" in ops:
        approx = attr(by_op["Gelu"][0], "approximate", b"none")
        approx = approx.decode() if isinstance(approx, bytes) else str(approx)
        return "gelu_tanh" if approx == "tanh" else "gelu"
    if "Erf" in ops:
        return "gelu"
    if "Mish" in ops or {"Softplus", "Tanh"} <= ops:
        return "mish"
    if "Tanh" in ops:
        return "gelu_tanh" if ops & {"Mul", "Pow"} else "tanh"
    if "HardSwish" in ops:
        return "hard_swish"
    if "HardSigmoid" in ops:
        return "hard_swish" if "Mul" in ops else "hard_sigmoid"
    if "Sigmoid" in ops:
        for sig in by_op["Sigmoid"]:
            p = ix.producer_node(sig.input[0])
            if p is not None and p.op_type == "Mul":
                for i in p.input:
                    v = ix.static_scalar(i)
                    if v is not None and abs(v - 1.702) < 1e-2:
                        return "quick_gelu"
        return "silu" if "Mul" in ops else "sigmoid"
    if "Relu" in ops:
        for node in by_op.get("Pow", []):
            if ix.static_scalar(node.input[1]) == 2.0:
                return "relu2"
        for node in by_op.get("Mul", []):
            if len(node.input) == 2 and ix.canon(node.input[0]) == ix.canon(node.input[1]):
                return "relu2"
        return "relu"
    for op, name in _OTHER_ACTIVATIONS.items():
        if op in ops:
            return name
    return "unknown"


_OTHER_ACTIVATIONS = {
    "LeakyRelu": "leaky_relu", "PRelu": "prelu", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "ThresholdedRelu": "thresholded_relu", "Softplus": "softplus", "Softsign": "softsign",
}


def _sigmoid_gate_name(alpha: float) -> str:
    """x * sigmoid(alpha x): SiLU for alpha 1 (onnxruntime fuses SiLU into QuickGelu(alpha=1))."""
    if abs(alpha - 1.0) < 1e-6:
        return "silu"
    return "quick_gelu" if abs(alpha - 1.702) < 1e-2 else "swish"


def match_ffn(ix: GraphIndex, projections: dict[int, Projection], by_output: dict[str, int],
              down: Projection) -> FFNBlock | None:
    """Try ``down`` as the down projection of an FFN block; None when the structure is absent."""
    width = down.k
    post = trace_post_tensor(ix, down.data, width)
    region = activation_region(ix, by_output, post)
    if region is None or not region.ups or len(region.ups) > 2 or down.node in region.ups:
        return None
    if not nonlinear_nodes(ix, region.nodes):
        return None
    ups = [projections[u] for u in region.ups]
    roots: list[Root] = []
    for up in ups:
        branch = branch_roots(ix, region, up.output)
        if up.k != down.n:
            return None
        split = any(r.split for r in branch)
        if up.n != (2 * width if split else width) and not (split and up.n > width and up.n % width == 0):
            return None
        roots.extend(branch)
    if len(roots) == 1:
        gate = roots[0]
        activation = classify_activation(ix, region.nodes)
    elif len(roots) == 2:
        gate, activation = _gated(ix, region, roots)
        if not gate:
            return None
    else:
        return None
    return FFNBlock(
        down=down, ups=ups, post=post, pre=gate.pre, width=width, activation=activation,
        depth=ix.depth.get(down.node, 0), region=region.nodes,
    )


def _gated(ix: GraphIndex, region: Region, roots: list[Root]) -> tuple[Root | None, str]:
    """Pick the gate of a two-branch region and name the gated activation."""
    reach = [forward_reach(ix, region, r.tensor) for r in roots]
    own = [reach[0] - reach[1], reach[1] - reach[0]]
    common = reach[0] & reach[1]
    if not common:
        return None, ""
    first = min(common, key=lambda n: ix.depth.get(n, 0))
    if ix.nodes[first].op_type != "Mul":
        return None, ""
    nonlinear = [bool(nonlinear_nodes(ix, s)) for s in own]
    if nonlinear[0] == nonlinear[1]:
        if not nonlinear[0]:
            return None, ""
        return roots[0], "unknown_glu"
    g = 0 if nonlinear[0] else 1
    base = classify_activation(ix, own[g])
    name = GATED_NAMES.get(base, f"{base}_glu")
    if base == "silu" and any(r.scaled for r in roots):
        name = "ngpt_swiglu"
    return roots[g], name


# ---------------------------------------------------------------------------- blocks
def find_ffn_blocks(ix: GraphIndex) -> list[FFNBlock]:
    """All FFN blocks of a graph, ordered by depth (graph order of layers)."""
    projections = find_projections(ix)
    by_output = {p.output: n for n, p in projections.items()}
    blocks = []
    for n in ix.order:
        if n in projections:
            block = match_ffn(ix, projections, by_output, projections[n])
            if block is not None:
                blocks.append(block)
    blocks = _drop_nested(blocks)
    blocks.sort(key=lambda b: (b.depth, b.down.node))
    for b in blocks:
        b.hint = layer_hint(ix, b)
    _check_hints(blocks)
    return blocks


def _drop_nested(blocks: list[FFNBlock]) -> list[FFNBlock]:
    """A projection that is some block's up projection cannot also be a down projection."""
    ups = {u.node for b in blocks for u in b.ups}
    return [b for b in blocks if b.down.node not in ups]


def layer_hint(ix: GraphIndex, block: FFNBlock) -> int | None:
    """The layer number written in the down projection's name or torch name scope, if any."""
    node = ix.nodes[block.down.node]
    texts = [node.name] + [p.value for p in node.metadata_props if "scope" in p.key or "namespace" in p.key]
    texts.append(block.post)
    for text in texts:
        m = _LAYER_HINT.search(text or "")
        if m:
            return int(m.group(1))
    return None


def _check_hints(blocks: list[FFNBlock]) -> None:
    """Warn when the layer numbers in names disagree with the structural (depth) order. A number
    that repeats in order is not a disagreement: one transformer layer with several FFN blocks
    (the experts of a mixture of experts, a shared expert beside routed ones)."""
    hints = [b.hint for b in blocks]
    if len(blocks) < 2 or any(h is None for h in hints):
        return
    if hints != sorted(hints):
        warnings.warn(
            "FFN layer order from the graph structure disagrees with the layer numbers in node names "
            f"({hints}); using the structural order",
            stacklevel=3,
        )

