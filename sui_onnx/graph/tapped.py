"""``write_tapped``: a pruned copy of a model whose only outputs are the tap tensors.

What the copy contains
    * graph outputs: exactly the tap tensors, in tap order, each typed with its dtype and
      (where inference knows it) its shape, last dimension = tap width;
    * only the nodes the taps depend on (a backward reachability pass; subgraph reads of
      If/Loop nodes count), and only the initializers those nodes read;
    * every declared graph input of the original, unchanged, even when the pruned graph no
      longer reads it (the runner feeds every declared input and onnxruntime rejects feeds for
      undeclared ones).  Only initializers that IR<4 models also list as inputs are dropped
      together with their input entry when unused.
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

import os
import tempfile
from pathlib import Path
from typing import Sequence

import onnx

from ..errors import ModelError
from .index import GraphIndex, node_inputs
from .source import ModelSource, all_tensors, external_info
from .taps import Tap, corrupt_model_guard, inline_no_past_branch, infer_types


@corrupt_model_guard
def tapped_model(src: ModelSource, taps: Sequence[Tap]) -> onnx.ModelProto:
    """The tapped copy of ``src`` in memory (see module doc); external data stays referenced.

    To run it from bytes, point onnxruntime at ``src.folder`` for the external data (session
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
    return build_tapped_model(model, taps)


def write_tapped(src: ModelSource, taps: Sequence[Tap], out_path: Path) -> Path:
    """Write the tapped copy of ``src`` (see module doc) and return the path written."""
    tapped = tapped_model(src, taps)
    dest = destination(src, Path(out_path))
    atomic_write(tapped.SerializeToString(), dest)
    return dest


def build_tapped_model(model: onnx.ModelProto, taps: Sequence[Tap]) -> onnx.ModelProto:
    """The pruned ModelProto with the taps as its only outputs (weights stay as referenced)."""
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
    og.value_info.extend(
        vi for vi in g.value_info if (vi.name in produced or vi.name in used) and vi.name not in set(names)
    )
    og.output.extend(output_info(index, t) for t in taps)
    return out


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
    """Typed graph output for a tap: dtype always, shape where known (last dim = width)."""
    dtype = index.dtype(tap.tensor) or onnx.TensorProto.FLOAT
    dims = index.inferred_dims(tap.tensor)
    if dims is not None and len(dims) >= 1:
        shape = [d if d is not None else None for d in dims]
        if not isinstance(shape[-1], int):
            shape[-1] = tap.width
        return onnx.helper.make_tensor_value_info(tap.tensor, dtype, shape)
    rank = index.rank(tap.tensor) or 3  # an FFN activation is [batch, seq, D] unless shown otherwise
    return onnx.helper.make_tensor_value_info(tap.tensor, dtype, [None] * (rank - 1) + [tap.width])


def _all_present(graph: onnx.GraphProto, names: Sequence[str]) -> bool:
    have = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        have.update(node.output)
    return all(n in have for n in names)


def destination(src: ModelSource, out_path: Path) -> Path:
    """Where the tapped copy goes: ``out_path``, or the model folder when data is external."""
    dest = out_path
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


def atomic_write(data: bytes, dest: Path) -> None:
    """Write ``data`` to ``dest`` through a temporary file in the same folder and os.replace."""
    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise ModelError(
            f"cannot write the tapped model into {folder}: {e.strerror or e} "
            "(a model with external data must be tapped in its own folder; copy the folder somewhere writable)"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise ModelError(f"cannot write the tapped model {dest}: {e.strerror or e}") from None
        raise
