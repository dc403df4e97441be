"""``write_tapped``: a pruned copy of a model whose only outputs are the tap tensors.

What the copy contains
    * graph outputs: exactly the tap tensors, in tap order, each typed with its dtype and
      (where inference knows it) its shape, last dimension = tap width;
    * only the nodes the taps depend on (a backward reachability pass; subgraph reads of
      If/Loop nodes count), and only the initializers those nodes read;
    * every declared graph input of the original, even when the pruned graph no longer reads
      it (the runner feeds every declared input and onnxruntime rejects feeds for undeclared
      ones).  Only initializers that IR<4 models also list as inputs are dropped together with
      their input entry when unused.  Inputs are unchanged but for one thing: a KV-cache input
      whose head count or head size is symbolic (onnxruntime-genai's ``kv_cache_dim``) gets
      those dimensions pinned to the sizes the attention op reading it needs, so that the
      runner's empty (length-0) past has its real head size (see :func:`cache_input_dims`).
    * a tap whose element type the graph does not determine (an op no schema describes) is
      declared without a type: onnxruntime infers it when it loads the copy, and the runner
      takes it from the session.  Nothing is guessed.  ``write_tapped`` fills such types in
      from an onnxruntime session before writing, so the file is a complete ONNX model.
    * an optimum merged decoder is written as its inlined no-past branch.

Where it is written (external data)
    External-data locations are relative to the .onnx file, and both onnx's checker and
    onnxruntime refuse locations that leave the model's folder.  So when the model has
    external data the tapped file is ALWAYS written into the model's own folder, under the
    file name of ``out_path``, referencing the original data files in place (nothing is
    copied or rewritten).  The path actually written is returned; callers must use (and later
    delete) the returned path.  Models without external data are written to ``out_path``.

    Writing is atomic: a temporary file in the destination folder, fsync, then os.replace.
    The input model and its data files are never written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import onnx

from ..errors import ModelError
from ..safeio import atomic_write
from .index import GraphIndex, attr, node_inputs
from .source import ModelSource, all_tensors, external_info, genai_head_size
from .taps import Tap, corrupt_model_guard, inline_no_past_branch, infer_types

_CACHE_INPUT = re.compile(r"(past|cache)", re.IGNORECASE)  # the runner's KV-cache inputs (runner.FeedBuilder)


@corrupt_model_guard
def tapped_model(src: ModelSource, taps: Sequence[Tap]) -> onnx.ModelProto:
    """The tapped copy of ``src`` in memory (see module doc); external data stays referenced.

    To run it from bytes, point onnxruntime at ``src.data_folder`` for the external data (session
    config ``session.model_external_initializers_file_folder_path``); nothing is written.
    """
    if not taps:
        raise ModelError("no taps to write")
    names = [t.tensor for t in taps]
    if len(set(names)) != len(names):
        raise ModelError("two taps name the same tensor")
    model = src.model
    if not _all_present(model.graph, names):
        flat = inline_no_past_branch(model)
        if flat is None or not _all_present(flat.graph, names):
            missing = [n for n in names if not _all_present(model.graph, [n])]
            raise ModelError(f"tap tensor {missing[0]!r} does not exist in {src.path.name}")
        model = flat
    return build_tapped_model(model, taps, head_size=lambda: genai_head_size(src.folder, src.path.name))


def write_tapped(src: ModelSource, taps: Sequence[Tap], out_path: Path) -> Path:
    """Write the tapped copy of ``src`` (see module doc) and return the path written."""
    tapped = tapped_model(src, taps)
    if any(not o.HasField("type") for o in tapped.graph.output):
        declare_runtime_types(tapped, src.data_folder)
    dest = destination(src, Path(out_path))
    data = tapped.SerializeToString()
    atomic_write(dest, lambda fh: fh.write(data), error=ModelError,
                 hint=" (a model with external data is tapped in its own folder; copy the folder somewhere writable)")
    return dest


def declare_runtime_types(tapped: onnx.ModelProto, data_folder: Path | None) -> None:
    """Type the untyped outputs of ``tapped`` as onnxruntime infers them on loading it."""
    from ..runner import create_session

    session, _ = create_session(tapped.SerializeToString(), "cpu", 1, data_folder)
    found = {o.name: o for o in session.get_outputs()}
    for out in tapped.graph.output:
        if out.HasField("type") or out.name not in found:
            continue
        arg = found[out.name]
        elem = _ORT_TYPES.get(arg.type)
        if elem is None:
            raise ModelError(f"tap {out.name!r} has type {arg.type}, not a tensor sui-onnx can read")
        dims = [d if isinstance(d, int) else (d or None) for d in (arg.shape or [])]
        out.CopyFrom(onnx.helper.make_tensor_value_info(out.name, elem, dims if arg.shape is not None else None))


_ORT_TYPES = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(float16)": onnx.TensorProto.FLOAT16,
              "tensor(double)": onnx.TensorProto.DOUBLE, "tensor(bfloat16)": onnx.TensorProto.BFLOAT16}


def build_tapped_model(model: onnx.ModelProto, taps: Sequence[Tap],
                       head_size: Callable[[], int | None] | None = None) -> onnx.ModelProto:
    """The pruned ModelProto with the taps as its only outputs (weights stay as referenced).

    ``head_size``: called when a KV-cache input's head size is symbolic; gives the head size
    the model's own configuration states (onnxruntime-genai's genai_config.json), or None.
    """
    g = model.graph
    names = [t.tensor for t in taps]
    index = GraphIndex(g, infer_types(model))
    kept = reachable_nodes(g, names)
    used = set(names)
    for n in kept:
        used.update(node_inputs(g.node[n]))
    produced = {o for n in kept for o in g.node[n].output if o}
    init_names = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}

    out = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, f, getattr(model, f))
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    og = out.graph
    og.name = g.name
    og.doc_string = g.doc_string
    og.node.extend(g.node[n] for n in kept)
    og.initializer.extend(t for t in g.initializer if t.name in used)
    og.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in used)
    og.input.extend(i for i in g.input if i.name not in init_names or i.name in used)
    pinned = cache_input_dims(index, head_size)
    for inp in og.input:
        for axis, size in pinned.get(inp.name, {}).items():
            dim = inp.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_value = size
    og.value_info.extend(
        vi for vi in g.value_info if (vi.name in produced or vi.name in used) and vi.name not in set(names)
    )
    og.output.extend(output_info(index, t) for t in taps)
    return out


def model_cache_dims(src: ModelSource) -> dict[str, dict[int, int]]:
    """`cache_input_dims` of the whole model (what a session of the untapped model must be fed):
    the KV-cache axes its graph or genai_config.json determines."""
    model = src.model
    return cache_input_dims(GraphIndex(model.graph, infer_types(model)),
                            head_size=lambda: genai_head_size(src.folder, src.path.name))


def reachable_nodes(graph: onnx.GraphProto, targets: Sequence[str]) -> list[int]:
    """Indices (in original order) of the nodes needed to compute ``targets``."""
    made_by: dict[str, int] = {}
    for n, node in enumerate(graph.node):
        for o in node.output:
            if o:
                made_by[o] = n
    keep: set[int] = set()
    stack = list(targets)
    while stack:
        n = made_by.get(stack.pop())
        if n is None or n in keep:
            continue
        keep.add(n)
        stack.extend(node_inputs(graph.node[n]))
    return sorted(keep)


def output_info(index: GraphIndex, tap: Tap) -> onnx.ValueInfoProto:
    """Graph output for a tap: dtype and shape where known (last dim = width); no type at all
    when the graph does not determine the dtype (onnxruntime then infers it)."""
    dtype = index.dtype(tap.tensor)
    if dtype is None:
        return onnx.ValueInfoProto(name=tap.tensor)
    dims = index.inferred_dims(tap.tensor)
    if dims is not None and len(dims) >= 1:
        shape = [d if d is not None else None for d in dims]
        if not isinstance(shape[-1], int):
            shape[-1] = tap.width
        return onnx.helper.make_tensor_value_info(tap.tensor, dtype, shape)
    rank = index.rank(tap.tensor) or 3  # an FFN activation is [batch, seq, D] unless shown otherwise
    return onnx.helper.make_tensor_value_info(tap.tensor, dtype, [None] * (rank - 1) + [tap.width])


# ---------------------------------------------------------------------------- KV-cache inputs
def cache_input_dims(index: GraphIndex, head_size: Callable[[], int | None] | None = None) -> dict[str, dict[int, int]]:
    """{input: {axis: size}} for the symbolic head-count / head-size axes of KV-cache inputs.

    The sizes come from the op that reads the cache: GroupQueryAttention (past_key/past_value,
    BNSH: kv_num_heads and the head size of its packed or separate query), MultiHeadAttention,
    com.microsoft Attention (past [2, B, N, S, H]), ONNX Attention (opset 23), or a Concat with
    the new keys/values whose shape inference knows those axes.  The head size is the query
    projection's width over the head counts.  ``head_size()`` (the model's configuration,
    genai_config.json) is used when the graph does not tell, and must agree when it does.
    Batch and sequence axes are never pinned.  Raises ModelError on a contradiction.
    """
    pinned: dict[str, dict[int, int]] = {}
    projections: dict[int, int] | None = None
    for vi in index.graph.input:
        name = vi.name
        if name not in index.graph_inputs or not _CACHE_INPUT.search(name):
            continue
        shape = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if len(shape) < 3:
            continue
        symbolic = [j for j, d in enumerate(shape) if not (d.HasField("dim_value") and d.dim_value > 0)]
        if not symbolic:
            continue
        if projections is None:
            from .detect import find_projections

            projections = {p.node: p.n for p in find_projections(index).values()}
        sizes: dict[int, int] = {}
        for n in index.consumer_nodes(name):
            sizes.update(_cache_sizes(index, projections, index.nodes[n], index.canon(name), len(shape)))
        last = len(shape) - 1
        if last in symbolic and head_size is not None:
            configured = head_size()
            if configured is not None:
                if last in sizes and sizes[last] != configured:
                    raise ModelError(
                        f"genai_config.json gives head_size {configured}, but the attention reading {name!r} "
                        f"needs {sizes[last]}: the configuration does not belong to this model"
                    )
                sizes[last] = configured
        keep = {j: sizes[j] for j in symbolic if sizes.get(j, 0) > 0}
        if keep:
            pinned[name] = keep
    return pinned


def _cache_sizes(ix: GraphIndex, projections: dict[int, int], node: onnx.NodeProto, cache: str,
                 rank: int) -> dict[int, int]:
    """Axis sizes of KV-cache input ``cache`` that ``node`` (one of its readers) determines."""
    op, ms = node.op_type, node.domain in ("com.microsoft",)
    slots = [k for k, i in enumerate(node.input) if i and ix.canon(i) == cache]
    if not slots:
        return {}
    slot = slots[0]
    if ms and op == "GroupQueryAttention" and slot in (3, 4) and rank == 4:
        heads, kv = attr(node, "num_heads"), attr(node, "kv_num_heads")
        packed = len(node.input) < 2 or not node.input[1]
        width = _feature_width(ix, projections, node.input[0])
        out = {1: int(kv)} if kv else {}
        if width and heads and kv:
            parts = heads + 2 * kv if packed else heads
            if width % parts == 0:
                out[3] = width // parts
        return out
    if ms and op == "MultiHeadAttention" and slot in (6, 7) and rank == 4:
        heads = attr(node, "num_heads")
        width = _feature_width(ix, projections, node.input[0])
        out = {1: int(heads)} if heads else {}
        if width and heads and width % heads == 0 and ix.rank(node.input[0]) == 3:
            out[3] = width // heads
        return out
    if ms and op == "Attention" and slot == 4 and rank == 5:
        heads = attr(node, "num_heads")
        sizes = attr(node, "qkv_hidden_sizes")
        hidden = int(sizes[0]) if sizes else None
        if hidden is None and len(node.input) > 1:
            w = ix.static_shape(node.input[1])
            hidden = w[-1] // 3 if w and len(w) == 2 and w[-1] % 3 == 0 else None
        out = {2: int(heads)} if heads else {}
        if hidden and heads and hidden % heads == 0:
            out[4] = hidden // heads
        return out
    if not node.domain and op == "Attention" and slot in (4, 5) and rank == 4:
        q_heads, kv = attr(node, "q_num_heads"), attr(node, "kv_num_heads")
        width = _feature_width(ix, projections, node.input[0])
        out = {1: int(kv)} if kv else {}
        if width and q_heads and width % q_heads == 0 and ix.rank(node.input[0]) == 3:
            out[3] = width // q_heads
        return out
    if not node.domain and op == "Concat":
        axis = attr(node, "axis", 0) % rank
        out = {}
        for other in node.input:
            dims = ix.inferred_dims(other) if other and ix.canon(other) != cache else None
            if dims is None or len(dims) != rank:
                continue
            for j, d in enumerate(dims):
                if j != axis and j != 0 and isinstance(d, int) and d > 0:
                    out.setdefault(j, d)
        return out
    return {}


def _feature_width(ix: GraphIndex, projections: dict[int, int], name: str) -> int | None:
    """Last-axis width of a tensor: shape inference, else the projection that makes it (through
    a bias Add or a scale)."""
    for _ in range(8):
        width = ix.last_dim(name)
        if width:
            return width
        n = ix.producer_index(name)
        if n is None:
            return None
        if n in projections:
            return projections[n]
        node = ix.nodes[n]
        if node.op_type in ("Add", "Sub", "Mul", "Div", "Cast") and not node.domain:
            live = [i for i in node.input if i and not ix.is_static(i)]
            if len(live) != 1:
                return None
            name = live[0]
            continue
        return None
    return None


def _all_present(graph: onnx.GraphProto, names: Sequence[str]) -> bool:
    have = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        have.update(node.output)
    return all(n in have for n in names)


def destination(src: ModelSource, out_path: Path) -> Path:
    """Where the tapped copy goes: ``out_path``, or the model folder when data is external.

    A model whose data locations had to be rewritten relative to another folder (a Hugging Face
    cache snapshot linking into ``blobs/``, see graph/source.py) cannot be written as a file
    beside itself: ModelError (its analysis runs in memory and needs no file)."""
    dest = out_path
    if src.has_external_data and src.weights_folder is not None and src.weights_folder != src.folder.resolve():
        raise ModelError(
            f"{src.path} is in a Hugging Face cache snapshot whose data files are links into blobs/: "
            "a tapped copy cannot be written beside it (copy the snapshot with `cp -rL` to write one)"
        )
    if src.has_external_data and out_path.parent.resolve() != src.folder.resolve():
        dest = src.folder / out_path.name
    resolved = dest.resolve()
    protected = {src.path.resolve()}
    for t in all_tensors(src.model.graph):
        loc = external_info(t).get("location")
        if loc:
            protected.add((src.folder / loc).resolve())
    if resolved in protected:
        raise ModelError(f"refusing to overwrite {dest.name}: it is the input model or one of its data files")
    return dest
