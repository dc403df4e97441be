"""Safe loading of an ONNX model: parse the graph, never the weights, and vet external data.

``load_model`` accepts an ``.onnx`` file or a folder: one holding ``model.onnx`` (optimum's
export layout), a repo folder holding ``onnx/model.onnx`` (the transformers.js layout, with
tokenizer.json one level up), or a Hugging Face cache repo folder (``models--org--name``: its
``refs/main`` snapshot).  The protobuf is parsed with ``load_external_data=False``, so models whose weights
live in external files (all models over 2 GB) load in the memory of their graph alone.

Every external-data reference of every tensor (initializers, sparse initializers and Constant
attributes, in the main graph, in the bodies of local functions and in all subgraphs) is checked
before anything else happens:
its ``location`` must be a relative path that stays inside the model folder after resolving
``..`` and symlinks, and the file must exist and be long enough for the tensor's
offset/length.  Anything else raises :class:`ModelError` with one line.  The input file is only
ever read.

Hugging Face cache snapshots: ``<cache>/models--org--name/snapshots/<rev>/`` holds symlinks into
``<cache>/models--org--name/blobs/``.  For a model inside a snapshot, "inside" means inside the
model folder or inside that same repo's ``blobs/`` folder (both resolved; ``blobs/`` must be a
real folder, not a link): a symlink into another repo's cache, or anywhere else, is still
refused, and the location must still be a plain relative path below the model folder.  Such
references are then rewritten, in the loaded proto only, relative to the folder onnxruntime is
given for the data (``blobs/``, or the repo folder when some data is a real file of the
snapshot): onnxruntime resolves symlinks and refuses a location that leaves the folder it is
given, so it could not follow the snapshot's links.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator

import onnx

from ..errors import ModelError
from ..layout import MODEL_FILE, TRANSFORMERS_JS_FOLDER
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
    # the folder the proto's external-data locations are relative to, when it is not ``folder``:
    # a lean load (large initializers reference the model file itself, in the folder of the real
    # file, symlinks resolved), or a Hugging Face cache snapshot (the repo's blobs/, see above)
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


GENAI_CONFIG = "genai_config.json"  # onnxruntime-genai's model description, beside its model.onnx


def resolve_model_path(path: str | Path) -> Path:
    """The .onnx file meant by ``path``: the file itself, or in a folder ``model.onnx``, else
    ``onnx/model.onnx`` (transformers.js layout); a Hugging Face cache repo folder
    (``models--org--name``) stands for the snapshot its ``refs/main`` names."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = hub_snapshot(p) or p
        for candidate in (p / MODEL_FILE, p / TRANSFORMERS_JS_FOLDER / MODEL_FILE):
            if candidate.is_file():
                return candidate
        others = sorted(q.name for q in p.glob("*.onnx") if q.is_file())
        others += sorted(f"{TRANSFORMERS_JS_FOLDER}/{q.name}" for q in (p / TRANSFORMERS_JS_FOLDER).glob("*.onnx")
                         if q.is_file())
        hint = f" (found: {', '.join(others[:6])}; pass one of them)" if others else ""
        if not others and (p / MODEL_FILE).is_dir():
            hint = f" ({MODEL_FILE} there is a folder, not an ONNX file)"
        what = f"{p} is a folder, not an ONNX file, and holds no model.onnx" if p.suffix.lower() == ".onnx" else \
            f"{p} holds no model.onnx"
        raise ModelError(f"{what}{hint}")
    if not p.exists():
        raise ModelError(f"{p} does not exist")
    if not p.is_file():
        raise ModelError(f"{p} is not a regular file")
    return p


def hub_snapshot(repo: Path) -> Path | None:
    """The snapshot folder a Hugging Face cache repo folder stands for (None: not such a folder).

    A repo folder holds ``snapshots/`` and ``blobs/``; ``refs/main`` names the revision, else
    the only snapshot is taken.  Several snapshots and no ``refs/main``: ModelError."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir() or not (repo / "blobs").is_dir() or (repo / MODEL_FILE).exists():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        try:
            rev = ref.read_text(encoding="utf-8", errors="replace")[:200].strip() if ref.stat().st_size < 4096 else ""
        except OSError:
            rev = ""
        if not rev or rev in (".", "..") or "/" in rev or "\\" in rev or "\x00" in rev:
            raise ModelError(f"{ref} does not name a snapshot (expected a revision hash)")
        if not (snapshots / rev).is_dir():
            raise ModelError(f"{ref} names snapshot {rev[:40]!r}, which is not in {snapshots}")
        return snapshots / rev
    revs = sorted(q.name for q in snapshots.iterdir() if q.is_dir())
    if len(revs) == 1:
        return snapshots / revs[0]
    if not revs:
        raise ModelError(f"{repo} is a Hugging Face cache folder without snapshots")
    raise ModelError(f"{repo} holds {len(revs)} snapshots and no refs/main: pass one of {snapshots}/<rev>")


def hub_blobs(folder: Path) -> Path | None:
    """The resolved ``blobs/`` folder of the Hugging Face cache repo whose snapshot holds
    ``folder`` (``<repo>/snapshots/<rev>/...``), or None when ``folder`` is in no snapshot."""
    real = folder.resolve()
    for anc in (real, *real.parents):
        if anc.parent.name == "snapshots" and anc.parent != anc:
            blobs = anc.parent.parent / "blobs"
            return blobs if blobs.is_dir() and not blobs.is_symlink() else None
    return None


def genai_head_size(folder: Path, model_name: str) -> int | None:
    """The attention head size onnxruntime-genai's ``genai_config.json`` beside the model states
    (``model.decoder.head_size``), or None when there is no such file or it describes another
    model file.  A config that is there but unreadable or malformed raises ModelError."""
    path = folder / GENAI_CONFIG
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > 1 << 20:
            raise ModelError(f"{path} is over 1 MiB: not an onnxruntime-genai configuration")
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError):
        raise ModelError(f"{path} is not valid JSON") from None
    decoder = config.get("model", {}).get("decoder") if isinstance(config, dict) else None
    if not isinstance(decoder, dict) or not isinstance(config.get("model"), dict):
        raise ModelError(f"{path} has no model.decoder section (not an onnxruntime-genai configuration)")
    filename = decoder.get("filename")
    if isinstance(filename, str) and filename and Path(filename).name != model_name:
        return None  # the configuration is about another file of this folder
    size = decoder.get("head_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ModelError(f"{path}: model.decoder.head_size must be a positive integer, got {size!r}")
    return size


def load_model(path: str | Path, lean: bool = False, structure_only: bool = False) -> ModelSource:
    """Load the graph of an ONNX model without its external data, after validating it.

    ``lean``: large embedded initializers are not read either; they become references into the
    model file by offset (graph/lean.py), so a session built from the proto reads them from the
    file (pass ``data_folder`` to onnxruntime). Not for copies written elsewhere.

    Raises ModelError (one line) for a missing/empty/unreadable/non-ONNX file, a folder
    without model.onnx, an unsafe external-data location or a missing external data file
    (``structure_only``: a missing one is allowed, for callers that read no weight, as taps).
    """
    p = resolve_model_path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ModelError(f"cannot read {p}: {e.strerror or e}") from None
    if size == 0:
        raise ModelError(f"{p} is empty (0 bytes), not an ONNX model")
    if p.suffix.lower() == ".npz":  # a checkpoint or merged statistics given where the model goes
        raise ModelError(f"{p} is a statistics file, not an ONNX model: give the model, and the file with "
                         f"--stats {p} (finished or merged statistics) or --resume {p} (an interrupted run)")
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
    skip = real.name if moved else None
    has_external = validate_external_data(model, folder, p.name, skip_location=skip, require_files=not structure_only)
    data_root = relocate_hub_data(model, folder, skip_location=skip) if has_external else None
    return ModelSource(
        path=p,
        folder=folder,
        model=model,
        has_external_data=has_external,
        sha256=file_sha256(p),
        opset=default_opset(model),
        weights_folder=data_root or (real.parent if moved else None),
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
    yield from _node_tensors(graph.node)


def _attribute_tensors(a: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    if a.type == onnx.AttributeProto.TENSOR:
        yield a.t
    elif a.type == onnx.AttributeProto.TENSORS:
        yield from a.tensors
    elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
        yield a.sparse_tensor.values
        yield a.sparse_tensor.indices
    elif a.type == onnx.AttributeProto.SPARSE_TENSORS:
        for st in a.sparse_tensors:
            yield st.values
            yield st.indices


def _node_tensors(nodes) -> Iterator[onnx.TensorProto]:
    """The tensors in the attributes of ``nodes`` and in the subgraphs they hold."""
    for node in nodes:
        for a in node.attribute:
            yield from _attribute_tensors(a)
        for sub in subgraphs(node):
            yield from all_tensors(sub)


def model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a model: its graph's (:func:`all_tensors`) and those of its local
    functions (``model.functions``: default attribute values, the attributes of their nodes, such
    as a Constant's value, and every subgraph those nodes hold)."""
    yield from all_tensors(model.graph)
    for f in model.functions:
        for a in f.attribute_proto:
            yield from _attribute_tensors(a)
        yield from _node_tensors(f.node)


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def validate_external_data(model: onnx.ModelProto, folder: Path, model_name: str = "the model",
                           skip_location: str | None = None, require_files: bool = True) -> bool:
    """Check every external-data reference (but those to ``skip_location``, which lean loading
    made); return True when the model has any others.

    A location must be relative, must not escape ``folder`` (``..`` or symlinks; in a Hugging
    Face cache snapshot a symlink into the same repo's ``blobs/`` stays inside), and must name
    an existing file at least ``offset + length`` bytes long.
    """
    root = folder.resolve()
    blobs = hub_blobs(folder)
    sizes: dict[Path, int] = {}
    found = False
    # function bodies too: onnxruntime < 1.20 reads their external data without confining it
    for tensor in model_tensors(model):
        if not uses_external_data(tensor):
            continue
        if skip_location is not None and external_info(tensor).get("location") == skip_location:
            continue
        found = True
        info = external_info(tensor)
        location = info.get("location", "")
        target = safe_location(location, folder, root, tensor.name, model_name, also=blobs)
        if target not in sizes:
            if not target.is_file() and not require_files:
                continue  # the graph's structure only (taps): the location is safe, the weights are not read
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


def safe_location(location: str, folder: Path, root: Path, tensor: str, model_name: str,
                  also: Path | None = None) -> Path:
    """Resolve an external-data location, refusing anything that leaves the model folder
    (``root``, resolved) or ``also`` (the resolved ``blobs/`` of a Hugging Face cache repo)."""
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
    if not _inside(target, root) and not (also is not None and _inside(target, also)):
        where = "the model folder and its Hugging Face cache repo's blobs/" if also is not None else "the model folder"
        raise ModelError(
            f"external data location {location!r} of tensor {tensor!r} resolves outside {where} "
            f"(symlink; path traversal refused)"
        )
    return target


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def relocate_hub_data(model: onnx.ModelProto, folder: Path, skip_location: str | None = None) -> Path | None:
    """For a model in a Hugging Face cache snapshot whose external data resolve (through the
    snapshot's symlinks) into the repo's ``blobs/``: rewrite every external-data location, in
    ``model`` only, relative to the folder onnxruntime must be given, and return that folder
    (``blobs/`` when all data is there, else the repo folder).  None when nothing resolves out
    of the model folder (no rewrite).  Locations were vetted by :func:`validate_external_data`;
    ``skip_location`` (a lean load's references to the model file) is relative to the resolved
    model folder, like every other location.
    """
    blobs = hub_blobs(folder)
    if blobs is None:
        return None
    root = folder.resolve()
    refs: list[tuple[onnx.TensorProto, Path]] = []
    for tensor in all_tensors(model.graph):
        if uses_external_data(tensor):
            location = external_info(tensor).get("location", "")
            base = root if location == skip_location else folder
            refs.append((tensor, (base / location).resolve()))
    if all(_inside(target, root) for _, target in refs):
        return None
    base = blobs if all(_inside(target, blobs) for _, target in refs) else blobs.parent
    for tensor, target in refs:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = target.relative_to(base).as_posix()
    return base
