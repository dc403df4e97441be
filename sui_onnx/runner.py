"""onnxruntime sessions over a tapped model: feeds every declared input, returns tap tensors.

Knows sessions, not metrics. On CUDA the tap outputs are bound to device buffers (IOBinding) and
handed over as CuPy arrays, so they never visit the host; on CPU they are bound to reused NumPy
buffers, so a batch of the same shape allocates nothing new.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import CalibrationError, ModelError, SuiError, first_line, option
from .config import DEVICES
from .layout import EMBEDDINGS_FILE, ENCODER_FILE, MODEL_FILE

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
_PAST = re.compile(r"(past|cache)", re.IGNORECASE)
_ENCODER_STATES = re.compile(r"^encoder_(hidden_states|outputs?)$", re.IGNORECASE)
_CROSS_PAST = re.compile(r"(\.encoder\.|cross)", re.IGNORECASE)  # cached cross-attention keys/values


def is_embeddings_input(name: str) -> bool:
    """True for a decoder input that takes token embeddings instead of ids (``inputs_embeds``: a
    vision-language model's language decoder, its embed_tokens.onnx beside it)."""
    return name.lower() == "inputs_embeds"


def companion_role(name: str) -> str:
    """What a companion-fed input takes, for messages."""
    if is_embeddings_input(name):
        return "token embeddings (the output of embed_tokens.onnx on the same ids)"
    return "a seq2seq encoder's output"


def is_encoder_states_input(name: str) -> bool:
    """True for an input fed from a companion model run on the same ids: the encoder output of a
    seq2seq decoder (T5, BART, ...), or the inputs_embeds of a decoder whose embedding table is a
    model of its own (embed_tokens.onnx)."""
    if is_embeddings_input(name):
        return True
    return bool(_ENCODER_STATES.match(name))


def companion_input(model: Any) -> str | None:
    """The name of ``model``'s (an onnx ModelProto) declared input that a companion model feeds
    (`is_encoder_states_input`; an initializer listed as an input is not fed), or None."""
    inits = {t.name for t in model.graph.initializer}
    return next((i.name for i in model.graph.input if i.name not in inits and is_encoder_states_input(i.name)), None)


def ort_debug() -> bool:
    """True when onnxruntime's own log may reach stderr (the CLI's --debug sets SUI_ONNX_DEBUG=1)."""
    return os.environ.get("SUI_ONNX_DEBUG", "") not in ("", "0")


def import_onnxruntime():
    """Import onnxruntime, or say why it cannot be: not installed (which extra to install), or
    installed but not loadable (its shared library: memory or address-space limits, a broken
    install). Its default logger is silenced unless --debug (one error line, not its log)."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "onnxruntime":
            raise SuiError(f"onnxruntime cannot be imported: {exc}") from None
        raise SuiError(
            "onnxruntime is not installed: pip install 'sui-onnx[cpu]' (or 'sui-onnx[gpu]' for CUDA)"
        ) from None
    except (ImportError, OSError, MemoryError) as exc:
        first = first_line(exc, limit=200)
        memory = isinstance(exc, MemoryError) or any(
            w in first.lower() for w in ("memory", "map segment", "mmap", "bad_alloc", "allocat"))
        why = "not enough memory or address space (ulimit -v?)" if memory else "a broken installation?"
        raise SuiError(f"onnxruntime is installed but cannot be loaded: {why} ({first})") from None
    if not ort_debug():
        try:
            ort.set_default_logger_severity(4)  # fatal only: errors reach the user as one line instead
        except Exception:  # noqa: BLE001 - an onnxruntime without it: its log stays as it is
            pass
    return ort


def max_threads() -> int:
    """The most intra-op threads a session may get: 4 per usable core, at least 16 (far more
    threads than cores only slow a run down, and 100000 of them crash onnxruntime)."""
    return max(16, 4 * physical_cores())


def physical_cores() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class DeviceChoice:
    requested: str  # auto | cpu | cuda
    providers: tuple[str, ...]  # what the session actually uses (session.get_providers())

    @property
    def cuda(self) -> bool:
        return self.providers[:1] == ("CUDAExecutionProvider",)


def session_options(ort: Any, threads: int | None = None) -> Any:
    """CPU-friendly options: all cores for intra-op, no spinning (idle ORT threads would steal the
    cores from the BLAS reduction that runs between batches), extended graph optimizations, which keep
    every tapped tensor intact (measured: docs/performance.md)."""
    if threads is not None and not 1 <= threads <= max_threads():
        raise SuiError(f"{option('threads')} must be between 1 and {max_threads()} (4 per core), got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3 if ort_debug() else 4  # its log reaches stderr only with --debug
    return so


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : (?:Load model from .*? failed:)?")
_ORT_NODE = re.compile(r'In Node, \("([^"]*)", (\w+), "([^"]*)", -?\d+\) : .*?, Error (.*)$')


def ort_load_message(text: str, limit: int = 300) -> str:
    """onnxruntime's load error, readable in one line: its status code and "Load model from ...
    failed" prefix dropped, a node error shortened to the node, its op and the reason (not the
    operator's full input/output signature), and a long text cut at a word with an ellipsis."""
    m = _ORT_PREFIX.match(text)
    body = text[m.end():].strip() if m else text.strip()
    node = _ORT_NODE.search(body)
    if node is not None:
        name, op, domain, why = node.groups()
        body = f"node {name!r} ({op}{' in ' + domain if domain else ''}): {why.strip()}"
    elif m is not None and m.group(1) not in ("FAIL", "RUNTIME_EXCEPTION"):
        body = f"{m.group(1).lower().replace('_', ' ')}: {body}"
    if len(body) > limit:
        cut = body.rfind(" ", 0, limit - 1)
        body = body[:cut if cut > limit // 2 else limit - 1].rstrip(" ,;:") + "…"
    return body


def create_session(
    model: Path | bytes, device: str = "auto", threads: int | None = None, external_folder: Path | None = None,
    arena: bool = True,
) -> tuple[Any, DeviceChoice]:
    """Create the session and confirm the provider actually in use (never trust availability).

    ``model`` is a path or serialized bytes; for bytes, ``external_folder`` is where the
    model's external-data files live (so a tapped copy never has to be written beside them).
    ``arena`` False: no CPU memory arena, so the buffers of one run are freed after it instead of
    kept for the next (eval: the logits of a large vocabulary, two sessions side by side)."""
    ort = import_onnxruntime()
    model_arg = model if isinstance(model, bytes) else str(model)

    def options() -> Any:
        so = session_options(ort, threads)
        so.enable_cpu_mem_arena = arena
        if external_folder is not None:
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
        return so

    if device not in DEVICES:
        raise SuiError(f"{option('device')} must be auto, cpu or cuda, got {device!r}")
    want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not want_cuda:
        raise SuiError(
            f"{option('device')} cuda: this onnxruntime has no CUDAExecutionProvider "
            f"(installed: {ort.__version__}, providers {ort.get_available_providers()}); "
            "pip install 'sui-onnx[gpu]' and uninstall onnxruntime"
        )
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(model_arg, sess_options=options(), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelError(f"onnxruntime cannot load the model: {ort_load_message(first_line(exc))}") from None
    used = tuple(sess.get_providers())
    choice = DeviceChoice(device, used)
    if device == "cuda" and not choice.cuda:
        raise SuiError(
            f"{option('device')} cuda: onnxruntime fell back to CPU (CUDA driver, CUDA 13 runtime or cuDNN 9 "
            f"not usable on this machine); run with {option('device')} cpu"
        )
    if choice.cuda:
        from .xp import cuda_namespace

        try:
            cuda_namespace()
        except RuntimeError as exc:
            if device == "cuda":
                raise SuiError(f"{option('device')} cuda: {exc}") from None
            sess = ort.InferenceSession(model_arg, sess_options=options(), providers=["CPUExecutionProvider"])
            choice = DeviceChoice(device, tuple(sess.get_providers()))
    return sess, choice


def _unfeedable(name: str, shape: Any) -> str:
    return (f"cannot feed model input {name!r} (shape {shape}): sui-onnx feeds input_ids, attention_mask, "
            "position_ids, token_type_ids, past key/values, use_cache_branch and a seq2seq decoder's "
            "encoder_hidden_states")


def graph_args(values: Any) -> list[Any]:
    """Graph inputs or outputs (onnx ValueInfoProto) as onnxruntime's session reports them (NodeArg:
    ``.name``, ``.shape`` with symbolic dims as their names and unknown ones as None, or None for no
    shape; ``.type`` as "tensor(float)"), so the session's rules can be applied before a session."""
    from types import SimpleNamespace

    import onnx

    out = []
    for v in values:
        t = v.type.tensor_type
        shape = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
                 if t.HasField("shape") else None)
        kind = f"tensor({onnx.TensorProto.DataType.Name(t.elem_type).lower()})" if t.elem_type else ""
        out.append(SimpleNamespace(name=v.name, shape=shape, type=kind))
    return out


def check_feedable(model: Any) -> None:
    """Before the calibration data is opened (and its tokenizer looked for): every graph input is one
    sui-onnx knows how to feed (FeedBuilder.role); the session checks the rest once it is made."""
    inits = {t.name for t in model.graph.initializer}
    for inp in graph_args(i for i in model.graph.input if i.name not in inits):
        if not FeedBuilder.role(inp):
            raise CalibrationError(_unfeedable(inp.name, inp.shape))


class FeedBuilder:
    """Builds a feed for every input the graph declares, from a [B, L] batch of token ids."""

    def __init__(self, inputs: Sequence[Any], pinned: dict[str, dict[int, int]] | None = None):
        """``pinned``: {input: {axis: size}} for KV-cache axes the session leaves symbolic but the
        graph or the model's configuration determines (graph.tapped.cache_input_dims)."""
        self.inputs = list(inputs)
        self.pinned = {k: dict(v) for k, v in (pinned or {}).items()}
        for inp in self.inputs:
            if inp.type not in _ORT_TO_NUMPY:  # e.g. bfloat16, which NumPy cannot hold
                raise CalibrationError(f"cannot feed model input {inp.name!r} of type {inp.type}")
            if not self.role(inp):
                raise CalibrationError(_unfeedable(inp.name, inp.shape))
            if self.role(inp) == "past":
                fixed = self.pinned.get(inp.name, {})
                symbolic = [d for j, d in enumerate(inp.shape) if not (isinstance(d, int) and d > 0) and j not in fixed]
                if len(symbolic) > 2:  # batch and past length are the only axes an empty cache may choose
                    raise CalibrationError(
                        f"cannot build an empty KV cache for model input {inp.name!r} (shape {inp.shape}): "
                        f"besides batch and past length, {', '.join(map(str, symbolic[2:]))} is symbolic "
                        "and its size (the head count or head size) is not known here"
                    )

        cross = next((i.name for i in self.inputs if self.role(i) == "past" and _CROSS_PAST.search(i.name)), None)
        if cross and not self.needs_encoder:
            # an empty cache here would leave cross-attention nothing to attend to: wrong numbers
            raise CalibrationError(
                f"model input {cross!r}: this decoder reads the encoder's keys/values only from its cache "
                "(optimum's decoder_with_past_model.onnx); analyze decoder_model.onnx or "
                "decoder_model_merged.onnx instead"
            )

    @property
    def needs_encoder(self) -> str | None:
        """The name of the encoder-states input (a seq2seq decoder), or None."""
        return next((i.name for i in self.inputs if self.role(i) == "encoder"), None)

    @staticmethod
    def role(inp: Any) -> str | None:
        if is_encoder_states_input(inp.name):
            return "encoder"
        name = inp.name.lower()
        if name in ("input_ids", "input", "tokens", "idx", "ids") or name.endswith("input_ids"):
            return "ids"
        if "attention_mask" in name or name == "mask":
            return "mask"
        if "position_ids" in name or name == "positions":
            return "positions"
        if "token_type_ids" in name or "segment_ids" in name:
            return "types"
        if "use_cache_branch" in name:
            return "branch"
        if _PAST.search(name) and len(inp.shape or ()) >= 3:  # no shape: unknown rank
            return "past"
        return None

    def __call__(self, ids: np.ndarray, encoder_states: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Feeds for one [B, L] batch; a seq2seq decoder also needs ``encoder_states`` [B, L, H]
        (its encoder run on the same ids: the decoder reads the text the encoder read)."""
        b, seq = ids.shape
        feeds: dict[str, np.ndarray] = {}
        for inp in self.inputs:
            dtype = _ORT_TO_NUMPY[inp.type]
            role = self.role(inp)
            if role == "ids":
                feeds[inp.name] = ids.astype(dtype, copy=False)
            elif role == "mask":
                total = seq  # length-0 past: the mask covers the new tokens only
                feeds[inp.name] = np.ones((b, total), dtype=dtype)
            elif role == "positions":
                feeds[inp.name] = np.broadcast_to(np.arange(seq, dtype=dtype), (b, seq)).copy()
            elif role == "types":
                feeds[inp.name] = np.zeros((b, seq), dtype=dtype)
            elif role == "branch":
                feeds[inp.name] = np.zeros((1,) if len(inp.shape) else (), dtype=dtype)
            elif role == "past":
                feeds[inp.name] = np.zeros(self._past_shape(inp, b), dtype=dtype)
            elif role == "encoder":
                if encoder_states is None:
                    raise CalibrationError(f"model input {inp.name!r} takes {companion_role(inp.name)} (pass {option('encoder')})")
                feeds[inp.name] = np.asarray(encoder_states, dtype=dtype)
        return feeds

    def _past_shape(self, inp: Any, batch: int) -> tuple[int, ...]:
        """Length-0 past: fixed (or pinned) dims as declared, the first symbolic dim is the batch,
        the others 0."""
        shape, seen_batch = [], False
        fixed = self.pinned.get(inp.name, {})
        for j, dim in enumerate(inp.shape):
            if j in fixed:
                shape.append(fixed[j])
            elif isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif not seen_batch:
                shape.append(batch)
                seen_batch = True
            else:
                shape.append(0)
        return tuple(shape)


@dataclass(frozen=True)
class TableLimits:
    """What a model's lookup tables allow, read from its graph: ``vocab`` rows in the table that
    input_ids index (every id must be below it) and ``positions``, the longest window its position
    table covers (None: no such table found, nothing is checked)."""

    vocab: int | None = None
    vocab_tensor: str = ""
    positions: int | None = None
    positions_tensor: str = ""

    def check(self, ids: np.ndarray, what: str = "the model") -> None:
        """CalibrationError (one line) before a batch is run when it does not fit the tables:
        onnxruntime would otherwise fail on it (or, on CUDA, read past the table)."""
        if self.vocab is not None and ids.size:
            top = int(ids.max())
            if top >= self.vocab:
                raise CalibrationError(
                    f"token id {top} is outside the vocabulary of {what} ({self.vocab} rows in "
                    f"{self.vocab_tensor!r}): the calibration ids were made for another tokenizer or model")
        if self.positions is not None and ids.ndim == 2 and ids.shape[1] > self.positions:
            raise CalibrationError(
                f"windows of {ids.shape[1]} tokens are longer than the position table of {what} "
                f"({self.positions} positions in {self.positions_tensor!r}): use {option('seq_len')} {self.positions} or less "
                "(or shorter rows in a .npy)")


_PASS_THROUGH = ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand")


# the cos_cache input of com.microsoft ops that index it by position (its rows: the longest
# window, past included); GroupQueryAttention fails past it ("cos_cache dimension 0 shall not be
# less than total_sequence_length")
_ROTARY_CACHE_SLOT = {"GroupQueryAttention": 7, "RotaryEmbedding": 2}


def table_limits(model: Any) -> TableLimits:
    """The :class:`TableLimits` of an onnx ModelProto: Gather nodes (axis 0) on a constant table
    whose indices are input_ids, or the positions (a position_ids input, Range(0, L, 1), a slice of
    a constant position buffer, plus a constant offset), passed through value-preserving ops only.
    Such a Gather fails for any index past the table, so the limits are exactly the model's."""
    from onnx import numpy_helper

    g = model.graph
    dims = {t.name: list(t.dims) for t in g.initializer}
    small: dict[str, np.ndarray] = {}
    for t in g.initializer:
        if len(t.dims) <= 1 and (not t.dims or t.dims[0] <= 16) and not t.external_data:
            try:
                small[t.name] = numpy_helper.to_array(t)
            except Exception:  # noqa: BLE001 - an unusual tensor: not an offset we can use
                pass
    producer = {}
    for node in g.node:
        for o in node.output:
            producer[o] = node
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == a.TENSOR:
                    dims[node.output[0]] = list(a.t.dims)
                    if len(a.t.dims) <= 1:
                        try:
                            small[node.output[0]] = numpy_helper.to_array(a.t)
                        except Exception:  # noqa: BLE001
                            pass
    tensors = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == a.TENSOR:
                    tensors[node.output[0]] = a.t

    def values(name: str) -> np.ndarray | None:
        """The values of a constant of at most 2^20 elements held in the graph, else None."""
        t = tensors.get(name)
        if t is None or t.external_data or int(np.prod(t.dims, dtype=np.int64)) > 1 << 20:
            return None
        try:
            return numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001
            return None

    roles = {}
    for inp in g.input:
        if inp.name in dims:
            continue
        role = FeedBuilder.role(_NameOnly(inp.name))
        if role in ("ids", "positions"):
            roles[inp.name] = role

    def scalar(name: str) -> int | None:
        v = small.get(name)
        if v is None or v.size != 1 or v.dtype.kind not in "iu":
            return None
        return int(v.reshape(-1)[0])

    def is_seq_len(name: str, depth: int = 0) -> bool:
        """True when ``name`` is the window length L (dimension 1 of an ids or positions input)."""
        node = producer.get(name)
        if node is None or depth > 8:
            return False
        if node.op_type in ("Cast", "Squeeze", "Unsqueeze", "Reshape", "Identity"):
            return is_seq_len(node.input[0], depth + 1)
        if node.op_type == "Gather" and scalar(node.input[1]) == 1:
            shape = producer.get(node.input[0])
            return shape is not None and shape.op_type == "Shape" and shape.input[0] in roles and not any(
                a.name == "start" for a in shape.attribute)
        return False

    def trace(name: str) -> tuple[str, int, int | None] | None:
        """(role, constant offset, buffer length) of the values ``name`` holds, or None."""
        offset = 0
        for _ in range(32):
            if name in roles:
                return roles[name], offset, None
            node = producer.get(name)
            if node is None:
                return None
            op = node.op_type
            if op in _PASS_THROUGH and node.domain in ("", "ai.onnx"):
                name = node.input[0]
            elif op == "Add" and len(node.input) == 2:
                a, b = node.input
                if scalar(b) is not None:
                    offset, name = offset + scalar(b), a
                elif scalar(a) is not None:
                    offset, name = offset + scalar(a), b
                else:
                    return None
            elif op == "Range" and len(node.input) == 3:
                if scalar(node.input[0]) == 0 and scalar(node.input[2]) == 1 and is_seq_len(node.input[1]):
                    return "positions", offset, None
                return None
            elif op == "Slice" and node.input[0] in dims and node.input[0] not in roles and len(node.input) >= 3:
                buf = values(node.input[0])  # a constant position buffer (BERT's position_ids): 0, 1, 2, ...
                if (buf is None or buf.size == 0 or buf.dtype.kind not in "iu" or scalar(node.input[1]) != 0
                        or not is_seq_len(node.input[2])):
                    return None
                row = buf.reshape(-1, buf.shape[-1])[0] if buf.ndim else buf.reshape(1)
                if buf.shape[-1:] and np.array_equal(row, np.arange(row.size)):
                    return "positions", offset, int(row.size)  # its first L entries
                return None  # another buffer (token types: zeros): not a position table
            else:
                return None
        return None

    vocab = positions = None
    vocab_tensor = positions_tensor = ""
    for node in g.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        table = dims.get(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if not table or axis not in (0, -len(table)) or table[0] <= 0:
            continue
        found = trace(node.input[1])
        if found is None:
            continue
        role, offset, buffer = found
        if role == "ids" and offset == 0 and (vocab is None or table[0] < vocab):
            vocab, vocab_tensor = table[0], node.input[0]
        elif role == "positions":
            limit = table[0] - offset
            if buffer is not None:
                limit = min(limit, buffer)
            if limit >= 1 and (positions is None or limit < positions):
                positions, positions_tensor = limit, node.input[0]
    for node in g.node:  # rotary caches of onnxruntime's fused attention (the genai builder's GQA)
        slot = _ROTARY_CACHE_SLOT.get(node.op_type) if node.domain == "com.microsoft" else None
        if slot is None or len(node.input) <= slot or len(dims.get(node.input[slot], [])) != 2:
            continue
        rows = dims[node.input[slot]][0]
        if rows >= 1 and (positions is None or rows < positions):
            positions, positions_tensor = rows, node.input[slot]
    return TableLimits(vocab, vocab_tensor, positions, positions_tensor)


def check_calibration(model: Any, stream: Any, seq_len: int) -> None:
    """Before any batch: .npy token ids against the model's vocabulary and position table (whole
    arrays, read once), and the text window length ``seq_len`` against the position table
    (CalibrationError naming the source). Text ids are checked batch by batch (TapRunner)."""
    limits = table_limits(model)
    npy = [s for s in stream.sources if Path(s).suffix.lower() == ".npy"]
    for path, arr in zip(npy, stream.token_ids):
        if limits.positions is not None and arr.shape[1] > limits.positions:
            raise CalibrationError(
                f"{path}: rows of {arr.shape[1]} token ids are longer than the model's position table "
                f"({limits.positions} positions in {limits.positions_tensor!r})")
        if limits.vocab is not None and arr.size and int(arr.max()) >= limits.vocab:
            raise CalibrationError(
                f"{path}: token id {int(arr.max())} is outside the model's vocabulary ({limits.vocab} rows in "
                f"{limits.vocab_tensor!r}): the ids were made for another tokenizer or model")
    if stream.has_text and limits.positions is not None and seq_len > limits.positions:
        raise CalibrationError(
            f"{option('seq_len')} {seq_len} is longer than the model's position table ({limits.positions} positions in "
            f"{limits.positions_tensor!r}): use {option('seq_len')} {limits.positions} or less")


@dataclass(frozen=True)
class _NameOnly:
    name: str
    shape: tuple = ()


def model_table_limits(model: Path | bytes) -> TableLimits:
    """:func:`table_limits` of a model given as a path or serialized bytes, read without its large
    weights; no limits when the graph cannot be read here (onnxruntime then reports any failure)."""
    import onnx

    from .graph import lean

    try:
        if isinstance(model, (bytes, bytearray, memoryview)):
            data, _ = lean.lean_model_bytes(model, MODEL_FILE)
        else:
            data, _ = lean.read_lean(Path(os.path.realpath(model)))
        return table_limits(onnx.ModelProto.FromString(data))
    except Exception:  # noqa: BLE001 - a limit we cannot read is a check we cannot make
        return TableLimits()


class EncoderFeed:
    """A companion model run on each batch to feed ``decoder_input``: a seq2seq encoder giving its
    decoder ``encoder_hidden_states``, or an embed_tokens model giving ``inputs_embeds``."""

    def __init__(self, model: Path, decoder_input: Any, device: str = "auto", threads: int | None = None):
        try:
            self.session, self.device = create_session(Path(model), device, threads)
        except ModelError as exc:
            raise ModelError(f"{option('encoder')} {model}: {exc}") from None
        self.feed = FeedBuilder(self.session.get_inputs())
        if self.feed.needs_encoder:
            raise ModelError(f"{option('encoder')} {model}: this model takes {self.feed.needs_encoder!r} itself; "
                             "pass the encoder (encoder_model.onnx), not a decoder")
        self.limits = model_table_limits(Path(model))
        names = [o.name for o in self.session.get_outputs()]
        self.output = "last_hidden_state" if "last_hidden_state" in names else names[0]
        self.width = next(o.shape[-1] for o in self.session.get_outputs() if o.name == self.output)
        self.label = f"the embeddings model {Path(model).name}" if is_embeddings_input(decoder_input.name) else "the encoder"
        self.check_width(decoder_input, model)

    def check_width(self, decoder_input: Any, model: Path) -> None:
        """A fixed hidden width must agree between the encoder output and the decoder input."""
        want = decoder_input.shape[-1] if decoder_input.shape else None
        if isinstance(want, int) and isinstance(self.width, int) and want != self.width:
            raise ModelError(f"{option('encoder')} {model}: its output {self.output!r} has width {self.width}, the model's "
                             f"{decoder_input.name!r} expects {want}: not this model's encoder")

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        self.limits.check(ids, self.label)
        try:
            return self.session.run([self.output], self.feed(ids))[0]
        except Exception as exc:
            err = run_error(exc, ids.shape)
            raise CalibrationError(f"{self.label}: {err}") from None


class TapRunner:
    """Runs batches through a tapped model and returns the tap tensors ([B, L, D] each).

    Outputs are bound to buffers reused across batches of the same shape: NumPy on CPU, CuPy on
    CUDA (the arrays then never leave the device)."""

    def __init__(self, model: Path | bytes, tap_names: Sequence[str], device: str = "auto", threads: int | None = None,
                 external_folder: Path | None = None, encoder: Path | None = None):
        self.session, self.device = create_session(model, device, threads, external_folder)
        self.tap_names = list(tap_names)
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [t for t in self.tap_names if t not in outputs]
        if missing:
            raise ModelError(f"tapped model lacks outputs {missing[:3]}")
        self.feed = FeedBuilder(self.session.get_inputs())
        self.limits = model_table_limits(model)  # ids and window length checked before each batch
        self.encoder: EncoderFeed | None = None
        if self.feed.needs_encoder:
            if encoder is None:
                name = self.feed.needs_encoder
                companion = (f"{EMBEDDINGS_FILE} (transformers.js writes it beside the decoder)" if is_embeddings_input(name)
                             else f"ENCODER.onnx (optimum writes {ENCODER_FILE} beside decoder_model.onnx)")
                raise CalibrationError(f"model input {name!r} takes {companion_role(name)}: pass {option('encoder')} {companion}")
            decoder_input = next(i for i in self.feed.inputs if i.name == self.feed.needs_encoder)
            self.encoder = EncoderFeed(encoder, decoder_input, device, threads)
        self.xp = np
        if self.device.cuda:
            from .xp import cuda_namespace

            self.xp = cuda_namespace()
        self._binding = self.session.io_binding()
        self._buffers: dict[tuple[int, int], list[Any]] = {}
        self._out_types = {o.name: o.type for o in self.session.get_outputs()}
        self._bind_outputs = True  # falls back to plain run() if a tap's shape is not [B, L, D]

    def _out_buffers(self, ids: np.ndarray, widths: Sequence[int]) -> list[Any]:
        key = ids.shape
        if key not in self._buffers:
            self._buffers.clear()  # keep only one shape's buffers: memory stays bounded
            self._buffers[key] = [
                self.xp.empty((*key, w), dtype=_ORT_TO_NUMPY.get(self._out_types[n], np.float32))
                for n, w in zip(self.tap_names, widths)
            ]
        return self._buffers[key]

    def run(self, ids: np.ndarray, widths: Sequence[int]) -> list[Any]:
        """Feed one [B, L] batch; returns one [..., D] array per tap (valid until the next run)."""
        self.limits.check(ids)
        feeds = self.feed(ids, self.encoder(ids) if self.encoder is not None else None)
        if self._bind_outputs:
            try:
                return self._run_bound(ids, feeds, widths)
            except CalibrationError:
                if self.device.cuda:
                    raise
                self._bind_outputs = False  # e.g. a tap laid out as [B*L, D]
                self._buffers.clear()
        try:
            return self.session.run(self.tap_names, feeds)
        except Exception as exc:
            raise run_error(exc, ids.shape) from None

    def _run_bound(self, ids: np.ndarray, feeds: dict[str, np.ndarray], widths: Sequence[int]) -> list[Any]:
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        bufs = self._out_buffers(ids, widths)
        dev = "cuda" if self.device.cuda else "cpu"
        for name, buf in zip(self.tap_names, bufs):
            ptr = buf.data.ptr if self.device.cuda else buf.ctypes.data
            binding.bind_output(name, dev, 0, buf.dtype, list(buf.shape), ptr)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise run_error(exc, ids.shape) from None
        return bufs


_FIXED_DIM = re.compile(r"index:\s*(\d+)\s+Got:\s*(\d+)\s+Expected:\s*(\d+)")
_DIM_OPTION = {0: "--batch-size", 1: "--seq-len"}


def run_error(exc: Exception, shape: tuple[int, ...]) -> CalibrationError:
    """One line for a failed run; a model exported with a fixed input shape gets the option that
    matches it (onnxruntime puts the dimensions on lines after the first)."""
    text = str(exc)
    fixed = _FIXED_DIM.findall(text)
    if fixed:
        parts = [f"dimension {i} is fixed at {want} (this batch: {got})" for i, got, want in fixed]
        hints = [f"{_DIM_OPTION[int(i)]} {want}" for i, _, want in fixed if int(i) in _DIM_OPTION]
        return CalibrationError(f"onnxruntime failed on a batch of shape {tuple(shape)}: the model's input has a fixed "
                                f"shape: {'; '.join(parts)}" + (f"; pass {' '.join(hints)}" if hints else ""))
    msg = first_line(exc)
    return CalibrationError(f"onnxruntime failed on a batch of shape {tuple(shape)}: {msg[:300]}")
