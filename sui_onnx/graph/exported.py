"""Edits to a freshly exported ONNX file: tied-embedding duplicates replaced by a Transpose,
``metadata_props`` set, a ModelProto saved with its data (external past 2 GB), and the tapped
copy written beside it. Used by ``sui-onnx export`` (:mod:`sui_onnx.export`); every write goes
through :func:`sui_onnx.safeio.atomic_write` or :func:`sui_onnx.graph.write_tapped`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..layout import DATA_FILE
from ..safeio import atomic_write
from .index import uses_external_data
from .source import load_model
from .tapped import write_tapped
from .taps import SITES, find_taps

_TWO_GB = 2**31 - 2**24  # protobuf's 2 GiB limit, with room for the graph itself


def dedupe_transposed_initializers(model: Any) -> int:
    """Replace 2-D initializers that are exact transposes of another one by a Transpose node.

    The TorchScript exporter constant-folds a tied ``lm_head.weight = embed.weight`` into a
    second, transposed copy of the embedding matrix (optimum removes it for most models, not
    all: Gemma 3 keeps it).  Works in place on a ModelProto holding its data; the named
    parameter is kept and the ``onnx::`` constant becomes ``Transpose(parameter)``.  Returns
    the number of initializers replaced.
    """
    graph = model.graph
    mats = [i for i in graph.initializer if len(i.dims) == 2 and i.dims[0] != i.dims[1]]
    by_shape: dict[tuple[int, ...], list[Any]] = {}
    for t in mats:
        by_shape.setdefault(tuple(t.dims), []).append(t)
    arrays: dict[str, Any] = {}

    def arr(t: Any) -> Any:
        if t.name not in arrays:
            arrays[t.name] = numpy_helper.to_array(t)
        return arrays[t.name]

    replace: dict[str, str] = {}      # duplicate -> kept
    for t in mats:
        for other in by_shape.get(tuple(t.dims[::-1]), []):
            if {t.name, other.name} & (set(replace) | set(replace.values())):
                continue
            a, b = arr(t), arr(other)
            if a.dtype != b.dtype or not (np.array_equal(a[0], b[:, 0]) and np.array_equal(a[-1], b[:, -1])):
                continue
            if not np.array_equal(a, b.T):
                continue
            dup, kept = (t, other) if t.name.startswith("onnx::") and not other.name.startswith("onnx::") else (other, t)
            replace[dup.name] = kept.name
    if not replace:
        return 0
    for field_ in (graph.initializer, graph.input):   # IR<4 also lists initializers as inputs
        for k in reversed([k for k, t in enumerate(field_) if t.name in replace]):
            del field_[k]
    nodes = [onnx.helper.make_node("Transpose", [src], [dup], name=f"/sui_onnx/dedupe/Transpose_{k}", perm=[1, 0])
             for k, (dup, src) in enumerate(replace.items())]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return len(replace)


def dedupe_file(path: Path) -> int:
    """:func:`dedupe_transposed_initializers` on a single-file model (external data: left alone);
    returns the number of initializers replaced."""
    model = onnx.load(str(path), load_external_data=False)
    if any(uses_external_data(t) for t in model.graph.initializer):
        return 0
    n = dedupe_transposed_initializers(model)
    if n:  # one file, under protobuf's 2 GB (it was one before): rewritten in place, atomically
        data = model.SerializeToString()
        atomic_write(path, lambda fh: fh.write(data))
    return n


def save_model(model: Any, path: Path) -> None:
    """Save a ModelProto holding its data: one file, or ``model.onnx_data`` beside it past 2 GB."""
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size >= _TWO_GB:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


# --------------------------------------------------------------------------- metadata and taps


def set_metadata(model_path: Path, props: dict[str, str]) -> None:
    """Add/replace ``metadata_props`` of an ONNX file without touching its external data."""
    model = onnx.load(str(model_path), load_external_data=False)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in keep + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    data = model.SerializeToString()
    atomic_write(model_path, lambda fh: fh.write(data))


def tapped_name(model_name: str) -> str:
    """``model.onnx`` -> ``model.tapped.onnx``, ``decoder_model.onnx`` -> ``decoder_model.tapped.onnx``."""
    return model_name[: -len(".onnx")] + ".tapped.onnx" if model_name.endswith(".onnx") else model_name + ".tapped.onnx"


def write_taps(model_path: Path, site: str) -> tuple[list, Path, bool]:
    """Find the FFN taps of ``model_path`` (site post, pre or both) and write the tapped copy
    (``model.tapped.onnx``) beside it; returns (taps, path written, has external data)."""
    src = load_model(model_path)
    sites = SITES if site == "both" else (site,)
    taps = [t for s in sites for t in find_taps(src.model, site=s)]
    taps.sort(key=lambda t: (t.layer, sites.index(t.site)))
    entry = src.model.metadata_props.add()     # in memory only: the tapped copy describes its outputs
    entry.key, entry.value = "sui_onnx.taps", json.dumps([t.to_dict() for t in taps])
    written = write_tapped(src, taps, model_path.with_name(tapped_name(model_path.name)))  # mode as model.onnx's
    return taps, written, src.has_external_data
