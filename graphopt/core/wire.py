"""ONNX files read and written through protobuf's wire format, so that each weight is held once, as a numpy array.

A ``SplitModel`` is a *skeleton* (the model with every initializer of ``WEIGHT_MIN_BYTES`` or more replaced by a
data-less stub: name, type, dims, and an external-data reference to ``MEMORY_LOCATION``) plus the weights as numpy
arrays by name. Everything that works on the structure (the checker, shape inference, onnx-graphsurgeon) reads the
skeleton; the weights are never copied into a protobuf message:

- ``read_split`` scans the file's protobuf wire format: the structure is parsed by protobuf, each weight is read from
  the file straight into its array (``readinto``), so loading holds the weights once, not the file's bytes plus a
  parsed copy. Weights in external-data files are read the same way.
- ``write_inline`` streams a model file: the skeleton's fields in field-number order with each weight spliced in as
  the ``raw_data`` of its tensor, written from the array's memory. The bytes equal ``SerializeToString`` of the whole
  model (tested), without ever building it.

Protobuf wire format (https://protobuf.dev/programming-guides/encoding/): a message is a sequence of fields, each a
varint key ``(number << 3) | wire_type`` and a value; wire type 2 values are a varint length and that many bytes.
Fields may come in any order and a parser merges them, so concatenating encoded fields is a valid encoding.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Mapping

import numpy as np
import onnx

from .errors import UserError

__all__ = ["WEIGHT_MIN_BYTES", "MEMORY_LOCATION", "SplitModel", "copy_fields", "read_split", "external_location",
           "little_endian", "make_stub", "is_stub", "plain_dtype", "is_plain", "write_inline"]

# Initializers this large or larger are held as arrays; smaller ones stay in the skeleton (as onnx.save_model's
# size_threshold for external data).
WEIGHT_MIN_BYTES = 1024
# The external-data location of a stub whose data is in ``SplitModel.weights``. Never a file: a model naming it
# is only ever a skeleton in memory.
MEMORY_LOCATION = "graphopt:memory"

# Field numbers (onnx/onnx.proto).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9

# ONNX element types held as arrays: those numpy represents natively (raw_data is little-endian).
_PLAIN_DTYPES = {
    onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.FLOAT16: "<f2",
    onnx.TensorProto.INT8: "i1", onnx.TensorProto.INT16: "<i2", onnx.TensorProto.INT32: "<i4",
    onnx.TensorProto.INT64: "<i8", onnx.TensorProto.UINT8: "u1", onnx.TensorProto.UINT16: "<u2",
    onnx.TensorProto.UINT32: "<u4", onnx.TensorProto.UINT64: "<u8", onnx.TensorProto.BOOL: "?",
}
_PLAIN_NP = frozenset(np.dtype(code).newbyteorder("=") for code in _PLAIN_DTYPES.values())


@dataclass
class SplitModel:
    """A model as a weightless ``skeleton`` plus its large ``weights`` (name -> array, in the skeleton's order)."""

    skeleton: onnx.ModelProto
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    had_external_data: bool = False  # the file it was read from kept weights in external-data files

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.weights.values())


def copy_fields(src, dst, skip: Iterable[str] = ()) -> None:
    """Copy the set fields of protobuf message ``src`` into ``dst``, except ``skip``."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        repeated = getattr(fd, "is_repeated", None)
        if repeated is None:  # protobuf < 5.28
            repeated = fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


# ---------------------------------------------------------------------------------------------------------- wire


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"malformed varint at byte {pos}")


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_field(number: int, length: int) -> bytes:
    """The key and length prefix of a length-delimited field."""
    return _encode_varint((number << 3) | 2) + _encode_varint(length)


def _encoded_size(number: int, length: int) -> int:
    """Bytes a length-delimited field of ``length`` payload bytes takes."""
    return len(_length_field(number, length)) + length


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire_type, field_start, value_start, field_end) of each field in ``buf[start:end]``; for wire
    type 0 the value is the varint itself."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value_start = pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, value_start = _varint(buf, pos)
            pos = value_start + length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {field_start}")
        if pos > end:
            raise ValueError(f"field {number} at byte {field_start} runs past the end of its message")
        yield number, wire, field_start, value_start, pos


# ---------------------------------------------------------------------------------------------------------- read


def make_stub(t: onnx.TensorProto) -> None:
    """Turn ``t`` (its data already taken) into a reference to ``MEMORY_LOCATION``."""
    for name in ("raw_data", "external_data", "float_data", "int32_data", "int64_data", "double_data",
                 "uint64_data"):
        t.ClearField(name)
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", MEMORY_LOCATION


def plain_dtype(t: onnx.TensorProto) -> np.dtype | None:
    """The numpy dtype of ``t``'s data when it is one held as an array (None: an exotic or string type)."""
    code = _PLAIN_DTYPES.get(t.data_type)
    return None if code is None else np.dtype(code)


def is_plain(dtype: np.dtype) -> bool:
    """Whether arrays of ``dtype`` (either byte order) are held as weights: ONNX has a plain type for it."""
    return dtype.newbyteorder("=") in _PLAIN_NP


def _read_weight(t: onnx.TensorProto, f: BinaryIO, offset: int, length: int | None,
                 same_as: np.ndarray | None = None) -> np.ndarray | None:
    """``t``'s data, ``length`` bytes at ``offset`` in ``f`` (None: as many as its dims need), read straight into an
    array of its type and dims; None when it is not one (an exotic type, a length that does not match the dims).
    ``same_as`` itself when it holds exactly these bytes as this type and shape (compared chunk by chunk, never
    allocating the tensor)."""
    dtype = plain_dtype(t)
    count = int(np.prod(t.dims, dtype=np.int64))
    if dtype is None or (length is not None and length != count * dtype.itemsize):
        return None
    if (same_as is not None and same_as.dtype == dtype and same_as.shape == tuple(t.dims)
            and same_as.flags.c_contiguous and _file_holds(f, offset, memoryview(same_as).cast("B"))):
        return same_as
    arr = np.empty(count, dtype=dtype)
    _read_into(f, offset, arr)
    return arr.reshape(tuple(t.dims))


def little_endian(arr: np.ndarray) -> np.ndarray:
    """``arr`` as ONNX stores tensor data: C-contiguous, little-endian (``arr`` itself when it already is)."""
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))


def _file_holds(f: BinaryIO, offset: int, expected: memoryview, chunk: int = 1 << 22) -> bool:
    """Whether ``f`` holds the bytes ``expected`` at ``offset``."""
    f.seek(offset)
    buf = bytearray(min(chunk, len(expected)))
    got = 0
    while got < len(expected):
        n = f.readinto(memoryview(buf)[:min(chunk, len(expected) - got)])
        if not n or memoryview(buf)[:n] != expected[got:got + n]:
            return False
        got += n
    return True


def _read_into(f: BinaryIO, offset: int, arr: np.ndarray) -> None:
    f.seek(offset)
    view = memoryview(arr).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ValueError(f"file ends {len(view) - got} bytes short of a tensor at byte {offset}")
        got += n


def _scan(f: BinaryIO) -> tuple[bytes, list[tuple[int, int] | None]] | None:
    """The skeleton's bytes (large raw_data removed) and, per initializer, the (offset, length) of the raw_data
    left out (None: kept inline). None when the file is not laid out as one graph field (parse it whole)."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:  # an empty message: parsed, it is an empty model
        return None
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        graphs = [(vs, fe) for number, wire, _, vs, fe in _fields(mm, 0, size) if number == _MODEL_GRAPH and wire == 2]
        if len(graphs) != 1:
            return None
        g_start, g_end = graphs[0]
        pieces: list[bytes] = []  # the graph's fields, initializers re-encoded without their large raw_data
        raw: list[tuple[int, int] | None] = []
        copy_from = g_start  # start of the run of fields copied unchanged
        for number, wire, fs, vs, fe in _fields(mm, g_start, g_end):
            if number != _GRAPH_INITIALIZER or wire != 2:
                continue
            data = [(tvs, tfe) for tn, tw, _, tvs, tfe in _fields(mm, vs, fe) if tn == _TENSOR_RAW_DATA and tw == 2]
            if len(data) != 1 or data[0][1] - data[0][0] < WEIGHT_MIN_BYTES:
                raw.append(None)
                continue
            r_start, r_end = data[0]
            header = b"".join(mm[a:b] for a, b in _without(mm, vs, fe, _TENSOR_RAW_DATA))
            pieces.append(mm[copy_from:fs])
            pieces.append(_length_field(_GRAPH_INITIALIZER, len(header)) + header)
            copy_from = fe
            raw.append((r_start, r_end - r_start))
        pieces.append(mm[copy_from:g_end])
        graph = b"".join(pieces)
        del pieces
        outer = b"".join(mm[a:b] for a, b in _without(mm, 0, size, _MODEL_GRAPH))
    return outer + _length_field(_MODEL_GRAPH, len(graph)) + graph, raw


def _without(buf, start: int, end: int, number: int) -> list[tuple[int, int]]:
    """Byte ranges of ``buf[start:end]`` outside the fields numbered ``number``."""
    ranges, copy_from = [], start
    for n, _, fs, _, fe in _fields(buf, start, end):
        if n == number:
            ranges.append((copy_from, fs))
            copy_from = fe
    ranges.append((copy_from, end))
    return ranges


def external_location(t: onnx.TensorProto, folder: Path, what: str) -> tuple[Path, int, int | None]:
    """The file, offset and length (None: to the end) of a tensor's external data, checked: a relative location
    inside ``folder`` naming an existing file. Problems are one-line ``UserError``s starting with ``what``."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    base = folder.resolve()
    target = (base / location).resolve()
    if not location or Path(location).is_absolute() or base not in (target, *target.parents):
        raise UserError(f"{what}: tensor {t.name!r} names external data {location!r} outside the model's folder "
                        "(locations must be relative)")
    if not target.is_file():
        raise UserError(f"{what}: external data file {location!r} (tensor {t.name!r}) is missing; it must be "
                        f"beside the model, in {folder}")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise UserError(f"{what}: tensor {t.name!r} has a malformed external-data offset or length") from None
    return target, offset, length


def read_split(path: str | Path, what: str = "model", reuse: Mapping[str, np.ndarray] | None = None) -> SplitModel:
    """Read an ONNX file as a ``SplitModel``. Raises ``ValueError``/``OSError``/protobuf errors on an unreadable
    file (``onnx_files.load_split`` turns them into one-line messages) and ``UserError`` for bad external data.

    ``reuse`` (another model's weights, by name): a weight whose bytes, type and shape equal ``reuse[name]`` is
    that array rather than a copy, so two versions of one model (a recipe's input and output) hold the weights
    they have in common once."""
    path = Path(path)
    reuse = reuse or {}
    weights: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        scanned = _scan(f)
        skeleton = onnx.ModelProto()
        if scanned is None:  # unusual layout (no graph, or the graph split in several fields): protobuf parses all
            f.seek(0)
            skeleton.ParseFromString(f.read())
            raw: list = [None] * len(skeleton.graph.initializer)
        else:
            data, raw = scanned
            skeleton.ParseFromString(data)
            del data
        if len(raw) != len(skeleton.graph.initializer):
            raise ValueError("initializers changed between scan and parse")
        for t, where in zip(skeleton.graph.initializer, raw):
            if where is None:
                continue
            offset, length = where
            arr = None if t.data_location == onnx.TensorProto.EXTERNAL \
                else _read_weight(t, f, offset, length, reuse.get(t.name))
            if arr is None:
                # Not representable as a plain array (an exotic type, a size that does not match the dims):
                # kept inline, for the checker to judge as it would the original.
                f.seek(offset)
                t.raw_data = f.read(length)
                continue
            weights[t.name] = arr
            make_stub(t)
    had_external = False
    for t in skeleton.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL or t.name in weights:
            continue
        had_external = True
        target, offset, length = external_location(t, path.parent, f"{what} {path}")
        with open(target, "rb") as df:
            try:
                arr = _read_weight(t, df, offset, length, reuse.get(t.name))
            except ValueError as e:
                raise UserError(f"{what} {path}: cannot read its external data ({target.name}: {e})") from None
            if arr is None:  # kept inline, as above
                df.seek(offset)
                blob = df.read(length if length is not None else -1)
                t.ClearField("external_data")
                t.ClearField("data_location")
                t.raw_data = blob
                continue
        weights[t.name] = arr
        make_stub(t)
    return SplitModel(skeleton, weights, had_external)


def is_stub(t: onnx.TensorProto) -> bool:
    """Whether ``t`` is a stub whose data is held in ``SplitModel.weights``."""
    return t.data_location == onnx.TensorProto.EXTERNAL and len(t.external_data) == 1 \
        and t.external_data[0].value == MEMORY_LOCATION


# ---------------------------------------------------------------------------------------------------------- write


def _split_message(msg, number: int, skip: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """``msg``'s fields numbered below and above ``number`` (minus ``skip``), as two serialized messages."""
    numbers = {fd.name: fd.number for fd, _ in msg.ListFields()}
    lo, hi = type(msg)(), type(msg)()
    copy_fields(msg, lo, skip={n for n, k in numbers.items() if k >= number} | set(skip))
    copy_fields(msg, hi, skip={n for n, k in numbers.items() if k <= number} | set(skip))
    return lo.SerializeToString(), hi.SerializeToString()


def write_inline(f: BinaryIO, split: SplitModel) -> int:
    """Write ``split`` as one ONNX file (weights inline as raw_data) to the open file ``f``; returns the bytes
    written. Each weight is written from its array; the output equals ``SerializeToString`` of the whole model."""
    graph = split.skeleton.graph
    entries: list[tuple[bytes, np.ndarray | None, bytes]] = []  # (head, weight, tail) of each initializer
    for t in graph.initializer:
        if is_stub(t):
            arr = split.weights[t.name]
            head, tail = _split_message(t, _TENSOR_RAW_DATA, skip=("external_data", "data_location"))
            entries.append((head + _length_field(_TENSOR_RAW_DATA, arr.nbytes), arr, tail))
        else:
            entries.append((t.SerializeToString(), None, b""))
    g_head, g_tail = _split_message(graph, _GRAPH_INITIALIZER)
    entry_sizes = [len(h) + (a.nbytes if a is not None else 0) + len(t) for h, a, t in entries]
    graph_size = len(g_head) + sum(_encoded_size(_GRAPH_INITIALIZER, n) for n in entry_sizes) + len(g_tail)
    m_head, m_tail = _split_message(split.skeleton, _MODEL_GRAPH)
    total = len(m_head) + _encoded_size(_MODEL_GRAPH, graph_size) + len(m_tail)
    if total >= 2 ** 31:
        raise ValueError(f"the model is {total / 2 ** 30:.2f} GiB: over protobuf's 2 GiB limit for one message "
                         "(save it with external data)")
    f.write(m_head)
    f.write(_length_field(_MODEL_GRAPH, graph_size))
    f.write(g_head)
    for (head, arr, tail), size in zip(entries, entry_sizes):
        f.write(_length_field(_GRAPH_INITIALIZER, size))
        f.write(head)
        if arr is not None:
            f.write(memoryview(little_endian(arr)).cast("B"))
        f.write(tail)
    f.write(g_tail)
    f.write(m_tail)
    return total


