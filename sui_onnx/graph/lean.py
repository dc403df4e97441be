"""Read a single-file model's graph without its weights: large initializers point into the file.

``onnx.load`` parses every weight into memory, a tapped copy of the proto copies them again, the
serialized copy handed to onnxruntime is a third, and onnxruntime keeps its own: about four times
the model in RAM (measured: `sui-onnx report` on a 472 MiB GPT-2 peaked at 2.84 GB, 1.69 GB
with this module). ONNX
external data can name any file by offset and length, so the weights can stay where they are:
this module rewrites the protobuf wire format of the model's top-level initializers, dropping each
large ``raw_data`` payload and adding ``external_data`` entries ``location=<the model file>,
offset, length`` (plus ``data_location = EXTERNAL``) that point at the very same bytes. The proto
that results is a few hundred KiB; onnxruntime then reads the weights straight from the file,
once, as it does for models saved with external data.

Only ``raw_data`` payloads of at least ``MIN_BYTES`` are moved: far above anything graph detection
reads as a value, and above the shape constants (Split sizes, Reshape shapes) that onnxruntime's
shape inference must read from the proto while it loads it. Everything else, subgraph
initializers included, is copied byte for byte. The file is read through ``mmap``, never written.
analyze() loads this way (a Ray run does not: its workers get the tapped model as bytes).
"""

from __future__ import annotations

import mmap
from pathlib import Path

MIN_BYTES = 1 << 20  # raw_data payloads at least this long are referenced, not copied

# protobuf field numbers (onnx.proto3)
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 9, 13, 14
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise WireError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, first byte of the field, value start, value end)."""
    i = start
    while i < end:
        first = i
        key, i = _varint(buf, i, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, j = _varint(buf, i, end)
        elif wire == _I64:
            j = i + 8
        elif wire == _I32:
            j = i + 4
        elif wire == _LEN:
            length, i = _varint(buf, i, end)
            j = i + length
        else:
            raise WireError(f"unsupported wire type {wire}")
        if j > end or number == 0:
            raise WireError("field runs past the end of its message")
        yield number, wire, first, i, j
        i = j


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    """A StringStringEntryProto (key = 1, value = 2)."""
    return _len_field(1, key.encode()) + _len_field(2, value.encode())


def _tensor(buf, start: int, end: int, location: str) -> tuple[bytes, bool]:
    """One initializer, its large raw_data replaced by a reference to the same bytes."""
    raw = None
    for number, wire, _, vs, ve in _fields(buf, start, end):
        external = number == _TENSOR_DATA_LOCATION and wire == _VARINT and _varint(buf, vs, ve)[0] != 0
        if external or number == _TENSOR_EXTERNAL_DATA:
            return bytes(buf[start:end]), False  # already external: leave it as it is
        if number == _TENSOR_RAW_DATA and wire == _LEN:
            raw = (vs, ve)
    if raw is None or raw[1] - raw[0] < MIN_BYTES:
        return bytes(buf[start:end]), False
    out = bytearray()
    for number, _, first, _, ve in _fields(buf, start, end):
        if number not in (_TENSOR_RAW_DATA, _TENSOR_DATA_LOCATION):  # an explicit DEFAULT is replaced
            out += buf[first:ve]
    for key, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1] - raw[0]))):
        out += _len_field(_TENSOR_EXTERNAL_DATA, _entry(key, value))
    out += _encode_varint(_TENSOR_DATA_LOCATION << 3 | _VARINT) + _encode_varint(_EXTERNAL)
    return bytes(out), True


def _rewrite(buf, start: int, end: int, number: int, rewrite) -> tuple[bytes, int]:
    """The message ``buf[start:end]`` with each length-delimited field ``number`` replaced by
    ``rewrite(buf, value start, value end) -> (bytes, count)``; other fields copied as they are."""
    out, moved = bytearray(), 0
    for num, wire, first, vs, ve in _fields(buf, start, end):
        if num == number and wire == _LEN:
            value, n = rewrite(buf, vs, ve)
            moved += n
            out += _len_field(number, value)
        else:
            out += buf[first:ve]
    return bytes(out), moved


def lean_model_bytes(buf, location: str) -> tuple[bytes, int]:
    """The serialized ModelProto in ``buf`` with large top-level initializers referencing
    ``location`` (the file ``buf`` was read from) by offset; returns (bytes, tensors moved)."""

    def graph(b, s, e):
        return _rewrite(b, s, e, _GRAPH_INITIALIZER, lambda b2, s2, e2: _tensor(b2, s2, e2, location))

    return _rewrite(buf, 0, len(buf), _MODEL_GRAPH, graph)


def read_lean(path: Path) -> tuple[bytes, int]:
    """:func:`lean_model_bytes` of the file at ``path`` (read through mmap, never written)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return lean_model_bytes(mm, path.name)
