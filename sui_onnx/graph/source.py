"""Safe loading of an ONNX model: parse the graph, never the weights, and vet external data.

``load_model`` accepts an ``.onnx`` file or a folder holding ``model.onnx`` (optimum's export
layout).  The protobuf is parsed with ``load_external_data=False``, so models whose weights
live in external files (all models over 2 GB) load in the memory of their graph alone.

Every external-data reference of every tensor (initializers, sparse initializers and Constant
attributes, in the main graph and in all subgraphs) is checked before anything else happens:
its ``location`` must be a relative path that stays inside the model folder after resolving
``..`` and symlinks, and the file must exist and be long enough for the tensor's
offset/length.  Anything else raises :class:`ModelError` with one line.  The input file is only
ever read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator

import onnx

from ..errors import ModelError
from . import lean as lean_module
from .index import subgraphs, uses_external_data

_HASH_CHUNK = 1 << 20


@dataclass
class ModelSource:
    """A model loaded for analysis: the graph proto plus where it came from.

    ``model`` holds no external tensor bytes (they stay on disk, referenced by location
    relative to ``folder``); ``has_external_data`` says whether there are any.
    """

    path: Path
    folder: Path
    model: onnx.ModelProto
    has_external_data: bool
    sha256: str
    opset: int
    # lean load: large initializers reference the model file itself, in this folder (the folder of
    # the real file, symlinks resolved; it then also holds any other external data)
    weights_folder: Path | None = None

    @property
    def weights_in_place(self) -> bool:
        return self.weights_folder is not None

    @property
    def data_folder(self) -> Path | None:
        """Where onnxruntime must look for weights not held in ``model`` (None: all inside)."""
        if self.weights_folder is not None:
            return self.weights_folder
        return self.folder if self.has_external_data else None


def resolve_model_path(path: str | Path) -> Path:
    """The .onnx file meant by ``path``: the file itself, or ``model.onnx`` inside a folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        candidate = p / "model.onnx"
        if not candidate.is_file():
            others = sorted(q.name for q in p.glob("*.onnx"))
            hint = f" (found: {', '.join(others[:6])}; pass one of them)" if others else ""
            raise ModelError(f"{p} holds no model.onnx{hint}")
        return candidate
    if not p.exists():
        raise ModelError(f"{p} does not exist")
    if not p.is_file():
        raise ModelError(f"{p} is not a regular file")
    return p


def load_model(path: str | Path, lean: bool = False) -> ModelSource:
    """Load the graph of an ONNX model without its external data, after validating it.

    ``lean``: large embedded initializers are not read either; they become references into the
    model file by offset (graph/lean.py), so a session built from the proto reads them from the
    file (pass ``data_folder`` to onnxruntime). Not for copies written elsewhere.

    Raises ModelError (one line) for a missing/empty/unreadable/non-ONNX file, a folder
    without model.onnx, an unsafe external-data location or a missing external data file.
    """
    p = resolve_model_path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ModelError(f"cannot read {p}: {e.strerror or e}") from None
    if size == 0:
        raise ModelError(f"{p} is empty (0 bytes), not an ONNX model")
    moved, real = 0, p.resolve()  # a symlinked model (Hugging Face cache): refer to the real file
    try:
        model = None
        if lean and size >= lean_module.MIN_BYTES:
            try:
                data, moved = lean_module.read_lean(real)
                model = onnx.ModelProto.FromString(data)
            except (lean_module.WireError, OSError, ValueError):
                model, moved = None, 0  # not mappable or not a clean protobuf: load it whole
            if moved and real.parent != p.parent.resolve() and any(
                    uses_external_data(t) and external_info(t).get("location") != real.name for t in all_tensors(model.graph)):
                model, moved = None, 0  # weights in two folders: onnxruntime takes one; load them here
        if model is None:
            model = onnx.load(str(p), load_external_data=False)
    except OSError as e:
        raise ModelError(f"cannot read {p}: {e.strerror or e}") from None
    except Exception:
        raise ModelError(f"{p} is not an ONNX model (protobuf parse failed; truncated or wrong file?)") from None
    _check_complete(model, p)
    try:
        check_strings(model)
    except (UnicodeDecodeError, ValueError):
        raise ModelError(f"{p} is a corrupt ONNX model (a name or text field is not valid UTF-8)") from None
    folder = p.parent
    # the references lean loading made were computed from the file itself: only the others are checked
    has_external = validate_external_data(model, folder, p.name, skip_location=real.name if moved else None)
    return ModelSource(
        path=p,
        folder=folder,
        model=model,
        has_external_data=has_external,
        sha256=file_sha256(p),
        opset=default_opset(model),
        weights_folder=real.parent if moved else None,
    )


def _check_complete(model: onnx.ModelProto, p: Path) -> None:
    """Reject protobufs that parsed but are not a whole ONNX model (garbage or cut short)."""
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{p} is not an ONNX model (no graph found; truncated or wrong file?)")
    if model.ir_version <= 0 or not model.opset_import:
        raise ModelError(f"{p} is not a complete ONNX model (missing ir_version/opset_import; truncated?)")


_TENSOR_TEXT = ("name", "doc_string")


def check_strings(message) -> None:
    """Raise ValueError when any string field is not valid UTF-8.

    protobuf parses such fields without complaint and hands them back as ``bytes``, which
    then fail deep inside detection or when copied into another proto.  Tensor payloads are
    skipped (never decoded or copied).
    """
    stack = [message]
    while stack:
        msg = stack.pop()
        if isinstance(msg, onnx.TensorProto):
            if any(isinstance(getattr(msg, f), bytes) for f in _TENSOR_TEXT):
                raise ValueError("invalid UTF-8")
            stack.extend(msg.external_data)
            continue
        for field, value in msg.ListFields():
            if field.type == field.TYPE_STRING:
                if isinstance(value, bytes) or (not isinstance(value, str) and any(isinstance(v, bytes) for v in value)):
                    raise ValueError("invalid UTF-8")
            elif field.type == field.TYPE_MESSAGE:
                if hasattr(value, "ListFields"):
                    stack.append(value)
                else:  # a repeated field
                    stack.extend(value)


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the standard ONNX domain the model imports (0 if it imports none)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def file_sha256(p: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto stored in a graph and its subgraphs (initializers and attributes)."""
    yield from graph.initializer
    for st in graph.sparse_initializer:
        yield st.values
        yield st.indices
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors
            elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices
        for sub in subgraphs(node):
            yield from all_tensors(sub)


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def validate_external_data(model: onnx.ModelProto, folder: Path, model_name: str = "the model",
                           skip_location: str | None = None) -> bool:
    """Check every external-data reference (but those to ``skip_location``, which lean loading
    made); return True when the model has any others.

    A location must be relative, must not escape ``folder`` (``..`` or symlinks), and must
    name an existing file at least ``offset + length`` bytes long.
    """
    root = folder.resolve()
    sizes: dict[Path, int] = {}
    found = False
    for tensor in all_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        if skip_location is not None and external_info(tensor).get("location") == skip_location:
            continue
        found = True
        info = external_info(tensor)
        location = info.get("location", "")
        target = safe_location(location, folder, root, tensor.name, model_name)
        if target not in sizes:
            if not target.is_file():
                raise ModelError(
                    f"external data file {location!r} of tensor {tensor.name!r} is missing next to {model_name} in {folder}"
                )
            sizes[target] = target.stat().st_size
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise ModelError(f"tensor {tensor.name!r} has a malformed external-data offset/length") from None
        if offset < 0 or (length is not None and length < 0):
            raise ModelError(f"tensor {tensor.name!r} has a negative external-data offset/length")
        if length is not None and offset + length > sizes[target]:
            raise ModelError(
                f"external data file {location!r} is too short for tensor {tensor.name!r} "
                f"(needs {offset + length} bytes, has {sizes[target]}; truncated?)"
            )
    return found


def safe_location(location: str, folder: Path, root: Path, tensor: str, model_name: str) -> Path:
    """Resolve an external-data location, refusing anything that leaves the model folder."""
    if not location or "\x00" in location:
        raise ModelError(f"tensor {tensor!r} of {model_name} has an empty or invalid external-data location")
    if (
        os.path.isabs(location)
        or PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive
        or location.startswith(("/", "\\"))
    ):
        raise ModelError(
            f"external data location {location!r} of tensor {tensor!r} is an absolute path (path traversal refused)"
        )
    parts = PurePosixPath(location.replace("\\", "/")).parts
    if ".." in parts:
        raise ModelError(
            f"external data location {location!r} of tensor {tensor!r} leaves the model folder (path traversal refused)"
        )
    target = (folder / location).resolve()
    if target != root and root not in target.parents:
        raise ModelError(
            f"external data location {location!r} of tensor {tensor!r} resolves outside the model folder "
            f"(symlink; path traversal refused)"
        )
    return target
