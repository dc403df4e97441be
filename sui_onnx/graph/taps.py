"""``Tap`` and ``find_taps``: which tensors of a model carry the FFN activations.

``site="post"`` taps the input of each down projection (the activation output, or the gated
product act(x W_g) * (x W_u)) in its natural [batch, seq, D] layout: when a Reshape/Cast/
quantisation op sits between the activation and the down-projection MatMul/Gemm, the tensor
*before* it is chosen (for GPT-2's Gemm export that is ``.../act/Mul_3_output_0``, not the
flattened [tokens, D] Reshape output).  Models that flatten tokens themselves (OPT) give a
[tokens, D] tensor; every post tap has last dimension D.

``site="pre"`` taps the input of the nonlinearity: the up projection output including its bias
(for gated FFNs the gate projection output x W_g + b_g; for nGPT the gate after its learned
scale and sqrt(d_model); for fused gate_up projections the gate half after Split/Slice).
Known gap: when the bias is folded into a fused activation op (com.microsoft BiasGelu, or
FastGelu with a bias input, as written by onnxruntime's transformer optimizer), no tensor holds
``x W + b`` and the pre tap is ``x W`` (without the constant bias).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Callable, ParamSpec, Sequence, TypeVar

import onnx

from ..errors import ModelError, SuiError, option
from ..config import SITES  # the tap sites (post, pre), defined once
from .detect import PROJECTION_OPS, FFNBlock, find_ffn_blocks, trace_post_tensor
from .index import GraphIndex, attr, uses_external_data

P = ParamSpec("P")
R = TypeVar("R")
_UNEXPECTED = (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError,
               OverflowError, RecursionError, ZeroDivisionError, MemoryError)


def corrupt_model_guard(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn an unexpected failure on a malformed graph into a one-line ModelError (the cause
    stays chained for debugging); ModelError and friends pass through unchanged."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SuiError:
            raise
        except _UNEXPECTED as e:
            detail = " ".join(str(e).split())[:160]
            raise ModelError(
                f"cannot analyze the model graph ({type(e).__name__}: {detail}); the model may be corrupt or unsupported"
            ) from e

    return wrapper


_QOPERATOR_OPS = frozenset({"QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"})
_FUSED_MOE_OPS = frozenset({"MoE", "QMoE"})  # com.microsoft: a whole mixture of experts in one node
_SKELETON_KEEP = 1 << 12  # bytes: initializers larger than this become typed inputs for inference


@dataclass(frozen=True)
class Tap:
    """One tensor to expose: the FFN activations of one layer at one site."""

    layer: int          # 0-based, structural graph order
    tensor: str         # ONNX tensor name to expose
    width: int          # D (d_ff) for site post
    site: str           # "post" | "pre"
    op: str             # op_type of the node producing `tensor`
    activation: str     # "gelu" | "gelu_tanh" | "silu" | "swiglu" | "geglu" | "relu" | ...
    down_proj: str      # name of the down-projection node (or the explicit tensor's consumer)
    group: int | None = None  # the transformer layer (from node names) when it holds several FFN blocks: experts

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Analysis:
    """A graph prepared for tapping: possibly the inlined no-past branch of a merged decoder."""

    model: onnx.ModelProto
    index: GraphIndex
    blocks: list[FFNBlock]
    inlined: bool = False


def inspect_model(model: onnx.ModelProto) -> Analysis:
    """Index the graph and detect its FFN blocks; inline a merged decoder's no-past branch
    when the blocks live in If subgraphs.  Raises ModelError when that is impossible."""
    index = GraphIndex(model.graph, infer_types(model))
    blocks = find_ffn_blocks(index)
    inlined = not blocks and _has_subgraph_projections(model.graph)
    if inlined:
        flat = inline_no_past_branch(model)
        if flat is None:
            raise ModelError(
                "the FFN blocks sit inside If/Loop subgraphs that cannot be exposed as outputs "
                "(an optimum merged decoder?); use the decoder without past instead (decoder_model.onnx)"
            )
        model, index = flat, GraphIndex(flat.graph, infer_types(flat))
        blocks = find_ffn_blocks(index)
    _refuse_batched_experts(index, blocks)
    return Analysis(model, index, blocks, inlined=inlined)


def _refuse_batched_experts(index: GraphIndex, blocks: list[FFNBlock]) -> None:
    """A block whose weights stack several experts ([E, k, n], one batched MatMul for all of a
    mixture's experts, as optimum exports GPT-OSS) has a hidden tensor [E, tokens, D] holding every
    expert's response to every token, routed to it or not: pooled into one covariance it would
    describe none of them. Refused with one line rather than reported wrong."""
    for layer, block in enumerate(blocks):
        proj = next((p for p in [block.down, *block.ups] if p.batch > 1), None)
        if proj is None:
            continue
        node = index.nodes[proj.node]
        weight = node.input[PROJECTION_OPS[node.op_type][1]]
        shape = " x ".join(str(d) for d in index.static_shape(weight) or ())
        raise ModelError(
            f"FFN layer {layer} runs {proj.batch} experts in one batched MatMul (weight {weight!r}, {shape}): "
            "its hidden tensor holds every expert's response to every token, routed or not, so its statistics "
            "would describe no expert; sui-onnx needs each expert as a MatMul of its own (as optimum exports "
            "Qwen3-MoE and DeepSeek-V3)"
        )


@corrupt_model_guard
def find_taps(model: onnx.ModelProto, site: str = "post", include: str | None = None,
              exclude: str | None = None, explicit: Sequence[str] = ()) -> list[Tap]:
    """One Tap per FFN block of ``model`` (sorted by layer), or the ``explicit`` tensors.

    ``include``/``exclude`` are regular expressions searched in the tap tensor names of
    detected blocks (they do not apply to ``explicit``).  ``explicit`` bypasses detection:
    each name must exist; when every name is a detected block's tap its layer is that block's
    (as without ``explicit``, and the taps are sorted by it), else its position in ``explicit``;
    activation/down_proj come from detection when the tensor is a detected tap, else "unknown" /
    its first consumer.
    Raises ModelError when nothing can be tapped.
    """
    if site not in SITES:
        raise ModelError(f"unknown tap site {site!r} (expected one of: {', '.join(SITES)})")
    if explicit:
        return explicit_taps(model, list(explicit), site)
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    analysis = inspect_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    fused = sorted(_FUSED_MOE_OPS & ops.keys())
    if fused and analysis.blocks:
        count = sum(ops[op] for op in fused)
        nodes = f"{count} {'/'.join(fused)} node{'s compute' if count > 1 else ' computes'}"
        warnings.warn(f"{nodes} FFNs (experts) that cannot be tapped: only the other FFN blocks are measured", stacklevel=2)
    if not analysis.blocks:
        if fused:
            raise ModelError(
                f"the FFNs are fused into {'/'.join(fused)} nodes (a mixture of experts, as onnxruntime-genai's "
                "builder writes it): their hidden activations are not tensors of the graph, so there is nothing "
                "to tap; export the model with its experts as MatMuls (optimum, torch.onnx)"
            )
        qlinear = sorted(_QOPERATOR_OPS & ops.keys())
        if qlinear:
            raise ModelError(
                f"no FFN block found: the graph is statically quantized in onnxruntime's QOperator format "
                f"({'/'.join(qlinear[:4])}), whose FFN activations are int8 tensors; analyze the float model, "
                "or quantize in the QDQ format (quantize_static(..., quant_format=QuantFormat.QDQ)) or dynamically"
            )
        name = f" (graph {model.graph.name!r})" if model.graph.name else ""
        raise ModelError(
            f"no FFN block found in the model{name}: looked for an up-projection -> activation -> down-projection chain "
            f"({'/'.join(PROJECTION_OPS)}); use {option('explicit')} TENSOR to name tensors explicitly"
        )
    taps = [block_tap(analysis.index, layer, b, site) for layer, b in enumerate(analysis.blocks)]
    taps = _grouped(taps, [b.hint for b in analysis.blocks])
    kept = [t for t in taps if (inc is None or inc.search(t.tensor)) and (exc is None or not exc.search(t.tensor))]
    if not kept:
        raise ModelError(
            f"all {len(taps)} FFN taps were filtered out by {option('include')}/{option('exclude')} (first tensor: {taps[0].tensor})"
        )
    return kept


def block_tap(ix: GraphIndex, layer: int, block: FFNBlock, site: str) -> Tap:
    tensor = block.post if site == "post" else block.pre
    node = ix.producer_node(tensor)
    return Tap(
        layer=layer, tensor=tensor, width=block.width, site=site,
        op=node.op_type if node is not None else "input",
        activation=block.activation, down_proj=block.down.name,
    )


def _grouped(taps: list[Tap], hints: list[int | None]) -> list[Tap]:
    """``group`` set on the taps of a transformer layer that holds several FFN blocks (the experts of
    a mixture, a shared expert beside them), as the node names number that layer. Only when every
    block has a number, they run in order (detect._check_hints warns otherwise) and name at least
    two layers (one number on every block is more likely a prefix than a layer); else unchanged."""
    if any(h is None for h in hints) or hints != sorted(hints) or len(set(hints)) < 2:
        return taps
    count = Counter(hints)
    return [replace(t, group=h) if count[h] > 1 else t for t, h in zip(taps, hints)]


def explicit_taps(model: onnx.ModelProto, names: list[str], site: str) -> list[Tap]:
    """Taps for user-named tensors: widths from shape inference or a consuming projection."""
    if len(set(names)) != len(names):
        raise ModelError(f"the same tensor is named twice with {option('explicit')}")
    index = GraphIndex(model.graph, infer_types(model))
    if not all(index.exists(n) for n in names) and _has_subgraph_projections(model.graph):
        flat = inline_no_past_branch(model)
        if flat is not None:
            index = GraphIndex(flat.graph, infer_types(flat))
    try:
        blocks = find_ffn_blocks(index) if names else []
    except Exception:  # detection is only a courtesy here
        blocks = []
    known = {b.post: (i, b) for i, b in enumerate(blocks)}
    known.update({b.pre: (i, b) for i, b in enumerate(blocks)} if site == "pre" else {})
    raw_producers = {o: n.op_type for n in index.nodes for o in n.output if o}
    taps, numbers = [], []
    for layer, name in enumerate(names):
        if not index.exists(name):
            raise ModelError(f"{option('explicit')} {name}: no tensor of that name in the model")
        number, block = known.get(index.canon(name), (None, None))
        numbers.append(number)
        width = index.last_dim(name) or (block.width if block else None) or _consumer_width(index, name)
        if not width:
            raise ModelError(f"{option('explicit')} {name}: cannot tell its width (last dimension) from shapes or a consuming projection")
        op = raw_producers.get(name) or ("initializer" if name in index.initializers else "input")
        taps.append(Tap(
            layer=layer, tensor=name, width=int(width), site=site, op=op,
            activation=block.activation if block else "unknown",
            down_proj=block.down.name if block else _consumer_name(index, name),
        ))
    if None in numbers:  # some tensor is no detected tap: the layers are the order given
        return taps
    return sorted((replace(t, layer=n) for t, n in zip(taps, numbers)), key=lambda t: t.layer)


def _consumer_width(ix: GraphIndex, name: str) -> int | None:
    """Input width of a projection reading ``name`` (directly or through layout ops)."""
    from .detect import find_projections

    c = ix.canon(name)
    for p in find_projections(ix).values():
        if p.data == c or trace_post_tensor(ix, p.data, p.k) == c:
            return p.k
    return None


def _consumer_name(ix: GraphIndex, name: str) -> str:
    cons = ix.consumer_nodes(name)
    if not cons:
        return ""
    node = ix.nodes[cons[0]]
    return node.name or f"{node.op_type}#{cons[0]}"


def _compile(pattern: str | None, what: str) -> re.Pattern | None:
    if pattern is None or pattern == "":
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ModelError(f"invalid {option(what)} regular expression {pattern!r}: {e}") from None


# ---------------------------------------------------------------------------- shape inference
def infer_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Tensor types from ONNX shape inference, run on a weight-free skeleton of the model.

    Large initializers are replaced by typed graph inputs so that inference neither copies
    weights nor needs external data; small ones (shape vectors, scalars) stay for data
    propagation.  Failures give an empty result (detection then relies on weight dims).
    """
    skeleton = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(skeleton, f, getattr(model, f))
    skeleton.ir_version = max(model.ir_version, 4)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    g, sg = model.graph, skeleton.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    declared = {i.name for i in g.input}
    sg.input.extend(g.input)
    for t in g.initializer:
        if uses_external_data(t) or t.ByteSize() > _SKELETON_KEEP:
            if t.name not in declared:
                sg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            sg.initializer.append(t)
    sg.sparse_initializer.extend(g.sparse_initializer)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return {}
    types: dict[str, onnx.TypeProto] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type
    return types


# ---------------------------------------------------------------------------- merged decoders
def _has_subgraph_projections(graph: onnx.GraphProto) -> bool:
    from .index import subgraphs

    for node in graph.node:
        for sub in subgraphs(node):
            if any(n.op_type in PROJECTION_OPS for n in sub.node) or _has_subgraph_projections(sub):
                return True
    return False


def merged_if_index(model: onnx.ModelProto) -> int | None:
    """The index of an optimum merged decoder's If(use_cache_branch) among the main graph's
    nodes (the condition read from an input named for the cache, through Identity/Cast), or
    None when there is not exactly one such If."""
    g = model.graph
    candidates = []
    for n, node in enumerate(g.node):
        if node.op_type != "If" or not node.input:
            continue
        cond = node.input[0]
        cond_names = {cond}
        for other in g.node:  # follow a Cast/Identity/Not-free chain back to the input name
            if cond in other.output and other.op_type in ("Identity", "Cast"):
                cond_names.add(other.input[0])
        if any("use_cache" in c or "past" in c for c in cond_names):
            candidates.append(n)
    return candidates[0] if len(candidates) == 1 else None


def inline_no_past_branch(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Replace an optimum merged decoder's If(use_cache_branch) by its no-past (else) branch.

    The branch's nodes and initializers join the main graph and Identity nodes rebind the If
    outputs, so every tensor of the no-past path becomes a main-graph tensor that can be an
    output.  Returns None when there is no such If node.  The declared inputs do not change.
    """
    g = model.graph
    n = merged_if_index(model)
    if n is None:
        return None
    node = g.node[n]
    branch = attr(node, "else_branch")
    if branch is None or len(branch.output) != len(node.output):
        return None
    flat = onnx.ModelProto()
    flat.CopyFrom(model)
    fg = flat.graph
    del fg.node[:]
    for k, other in enumerate(g.node):
        if k == n:
            fg.node.extend(branch.node)
            for src, dst in zip(branch.output, node.output):
                if dst and dst != src.name:  # same name: the branch's node already makes it
                    fg.node.append(onnx.helper.make_node("Identity", [src.name], [dst], name=f"sui_inline_{dst}"))
        else:
            fg.node.append(other)
    fg.initializer.extend(branch.initializer)
    fg.sparse_initializer.extend(branch.sparse_initializer)
    fg.value_info.extend(branch.value_info)
    return flat

