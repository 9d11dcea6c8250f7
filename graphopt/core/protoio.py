"""ONNX files with the weights kept out of protobuf: each weight is held once, as a numpy array.

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
- ``check_split`` runs ``onnx.checker`` on the skeleton; ``session`` feeds the arrays to onnxruntime as inputs,
  which it reads in place.

Protobuf wire format (https://protobuf.dev/programming-guides/encoding/): a message is a sequence of fields, each a
varint key ``(number << 3) | wire_type`` and a value; wire type 2 values are a varint length and that many bytes.
Fields may come in any order and a parser merges them, so concatenating encoded fields is a valid encoding.
"""
from __future__ import annotations

import collections
import functools
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import UserError

__all__ = ["WEIGHT_MIN_BYTES", "MEMORY_LOCATION", "SplitModel", "read_split", "split_graph", "split_model",
           "graph_from_split", "import_graph", "export_graph", "adopt_graph", "write_inline", "check_split",
           "weights_as_inputs", "session", "copy_fields", "little_endian", "external_location"]

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


def _stub(t: onnx.TensorProto) -> None:
    """Turn ``t`` (its data already taken) into a reference to ``MEMORY_LOCATION``."""
    for name in ("raw_data", "external_data", "float_data", "int32_data", "int64_data", "double_data",
                 "uint64_data"):
        t.ClearField(name)
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", MEMORY_LOCATION


def _plain_dtype(t: onnx.TensorProto) -> np.dtype | None:
    code = _PLAIN_DTYPES.get(t.data_type)
    return None if code is None else np.dtype(code)


def _read_weight(t: onnx.TensorProto, f: BinaryIO, offset: int, length: int | None,
                 same_as: np.ndarray | None = None) -> np.ndarray | None:
    """``t``'s data, ``length`` bytes at ``offset`` in ``f`` (None: as many as its dims need), read straight into an
    array of its type and dims; None when it is not one (an exotic type, a length that does not match the dims).
    ``same_as`` itself when it holds exactly these bytes as this type and shape (compared chunk by chunk, never
    allocating the tensor)."""
    dtype = _plain_dtype(t)
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
    file (``ir.load_split`` turns them into one-line messages) and ``UserError`` for bad external data.

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
            _stub(t)
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
        _stub(t)
    return SplitModel(skeleton, weights, had_external)


def split_model(model: onnx.ModelProto) -> SplitModel:
    """A ModelProto in memory as a ``SplitModel`` (its large initializers copied out into arrays once)."""
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, skip=("graph",))
    copy_fields(model.graph, skeleton.graph, skip=("initializer",))
    weights = {}
    for t in model.graph.initializer:
        s = skeleton.graph.initializer.add()
        dtype = _plain_dtype(t)
        if dtype is None or t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data") \
                or len(t.raw_data) < WEIGHT_MIN_BYTES:
            s.CopyFrom(t)
            continue
        copy_fields(t, s, skip=("raw_data",))
        weights[t.name] = onnx.numpy_helper.to_array(t)
        _stub(s)
    return SplitModel(skeleton, weights)


# ---------------------------------------------------------------------------------------------------------- graph


# ---------------------------------------------------------------------------------------------------- fidelity
#
# onnx-graphsurgeon does not hold everything a valid model may carry. Its importer skips attributes of the types
# it has no Python form for (TYPE_PROTO, as Optional's ``type``; TYPE_PROTOS, TENSORS, SPARSE_TENSOR(S)) and
# nodes' doc strings and metadata; its exporter raises on optional-typed (and map-typed) tensors, writes sequence
# types without their element's shape, and leaves out the model's and graph's metadata_props and the model's
# training info. ``import_graph`` and ``export_graph`` (the one place graphopt converts) keep what it drops:
#
# - a skipped attribute goes back into ``node.attrs`` as its protobuf value (``onnx.helper.make_attribute``, which
#   gs's exporter calls for values it does not know, writes it as it was), in the node's attribute order;
# - each tensor with a value info remembers its type as read, with the (dtype, shape, kind) gs made of it: on
#   export, a tensor no pass changed gets its type back exactly (an optional type too, exported by gs as an
#   untyped placeholder); one a pass retyped is gs's, and gs cannot write a changed optional or map type:
#   refused with a ``UserError`` naming it;
# - node doc strings and metadata, the graph's metadata_props and quantization annotations, and the model's
#   fields (producer, doc string, metadata_props, model version, training info, functions) are put back.
#
# GRAPHS attributes (a list of subgraphs; no standard op has one) are refused on import: gs would hold their
# bodies as raw protobuf, outside the graph its passes clean up.

_SUPPORTED_KINDS = ("tensor_type", "sequence_type", "sparse_tensor_type")
# Attribute types gs's importer skips, and the NodeProto field each value is in.
_SKIPPED_ATTRS = {onnx.AttributeProto.TYPE_PROTO: "tp", onnx.AttributeProto.TYPE_PROTOS: "type_protos",
                  onnx.AttributeProto.TENSORS: "tensors", onnx.AttributeProto.SPARSE_TENSOR: "sparse_tensor",
                  onnx.AttributeProto.SPARSE_TENSORS: "sparse_tensors"}
_NODE_EXTRAS = ("doc_string", "metadata_props", "overload", "device_configurations")
_GRAPH_EXTRAS = ("metadata_props", "quantization_annotation")
_MODEL_EXTRAS = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string",
                 "metadata_props", "training_info", "configuration")
_SOURCE = "_graphopt_source"  # in a gs object's __dict__ (gs.Graph.__getattr__ treats other names as functions)


class _Refused(Exception):
    pass


@functools.lru_cache(maxsize=None)
def _dtype_text(dtype) -> str:
    return str(dtype)  # one per dtype object, not per tensor: str() of a numpy dtype is slow on 7000-node graphs


def _signature(t) -> tuple:
    shape = getattr(t, "shape", None)
    dtype = getattr(t, "dtype", None)
    try:
        text = _dtype_text(dtype)
    except TypeError:  # an optional or sequence tensor's TypeProto, which is not hashable
        text = str(dtype)
    return (text, None if shape is None else tuple(shape), getattr(t, "type", None))


def _subset(msg, names) -> object:
    """A message of ``msg``'s type holding only its fields among ``names``; None when it sets none of them (checked
    before building one: this runs for every node of every imported graph)."""
    fields = [fd.name for fd, _ in msg.ListFields()]
    if not set(fields) & set(names):
        return None
    keep = type(msg)()
    copy_fields(msg, keep, skip=[f for f in fields if f not in names])
    return keep


def _remember(proto: onnx.GraphProto, graph: gs.Graph) -> None:
    """Record on ``graph`` what gs dropped from ``proto`` (see above); subgraphs too."""
    graph.__dict__[_SOURCE] = _subset(proto, _GRAPH_EXTRAS)
    tensors = graph.tensors()
    by_name = {t.name: t for t in (*graph.inputs, *graph.outputs)}
    for role, vis in (("input", proto.input), ("output", proto.output), ("value_info", proto.value_info)):
        for vi in vis:
            t = by_name.get(vi.name) if role != "value_info" else tensors.get(vi.name)
            if t is not None and (role != "value_info" or isinstance(t, gs.Variable)):
                t.__dict__.setdefault(_SOURCE, {})[id(graph)] = (role, vi.type.SerializeToString(), _signature(t))
    if len(proto.node) != len(graph.nodes):
        raise _Refused(f"its nodes ({len(proto.node)} read, {len(graph.nodes)} imported)")
    for p, n in zip(proto.node, graph.nodes):
        skipped = {a.name: a for a in p.attribute if a.type in _SKIPPED_ATTRS and not a.ref_attr_name}
        for a in p.attribute:
            if a.type == onnx.AttributeProto.GRAPHS:
                raise _Refused(f"a GRAPHS attribute ({a.name!r}, node {p.name or p.op_type!r})")
        if skipped:
            attrs = collections.OrderedDict()
            for a in p.attribute:
                if a.name in skipped:
                    attrs[a.name] = onnx.helper.get_attribute_value(a)
                elif a.name in n.attrs:
                    attrs[a.name] = n.attrs[a.name]
            attrs.update((k, v) for k, v in n.attrs.items() if k not in attrs)
            n.attrs = attrs
        extras = _subset(p, _NODE_EXTRAS)
        if extras is not None:
            n.__dict__[_SOURCE] = extras
        for a in p.attribute:
            if a.type == onnx.AttributeProto.GRAPH and isinstance(n.attrs.get(a.name), gs.Graph):
                _remember(a.g, n.attrs[a.name])


def _unsupported(graph: gs.Graph) -> list:
    """The tensors of ``graph`` (and its subgraphs) whose type gs cannot write, each once."""
    found: dict[int, gs.Variable] = {}
    for g in (graph, *graph.subgraphs(recursive=True)):
        for t in (*g.tensors().values(), *g.inputs, *g.outputs):
            if isinstance(t, gs.Variable) and t.dtype is not None and getattr(t, "type", "tensor_type") \
                    not in _SUPPORTED_KINDS:
                found[id(t)] = t
    return list(found.values())


def _restore(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """Put back into ``proto`` (gs's export of ``graph``) what ``_remember`` recorded; subgraphs too."""
    tensors = graph.tensors()
    extras = graph.__dict__.get(_SOURCE)
    if extras is not None:
        for name in _GRAPH_EXTRAS:
            proto.ClearField(name)
        names = set(tensors)
        for fd, value in extras.ListFields():
            if fd.name == "quantization_annotation":
                proto.quantization_annotation.extend(q for q in value if q.tensor_name in names)
            else:
                getattr(proto, fd.name).extend(value)
    vis = {vi.name: vi for vi in (*proto.input, *proto.output, *proto.value_info)}
    seen: set[int] = set()
    for t in (*graph.inputs, *graph.outputs, *tensors.values()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        source = t.__dict__.get(_SOURCE, {}).get(id(graph))
        if source is None or source[2] != _signature(t):
            continue
        role, type_bytes, _ = source
        vi = vis.get(t.name)
        if vi is None:
            if role != "value_info" or not isinstance(t, gs.Variable):
                continue
            vi = proto.value_info.add(name=t.name)
            vis[t.name] = vi
        vi.ClearField("type")
        if type_bytes:
            vi.type.ParseFromString(type_bytes)
    for n, p in zip(graph.nodes, proto.node):
        node_extras = n.__dict__.get(_SOURCE)
        if node_extras is not None:
            for name in _NODE_EXTRAS:
                p.ClearField(name)
            p.MergeFrom(node_extras)
        for a in p.attribute:
            if a.type == onnx.AttributeProto.GRAPH and isinstance(n.attrs.get(a.name), gs.Graph):
                _restore(n.attrs[a.name], a.g)


def adopt_graph(graph: gs.Graph, new: gs.Graph) -> None:
    """What ``import_graph`` kept for ``new`` (imported from a tool's output, e.g. onnxsim's), made ``graph``'s:
    ``graph`` is about to hold ``new``'s nodes and tensors (``ir.replace_graph``), and ``export_graph`` looks the
    kept types up by the graph they were read in."""
    for t in (*new.inputs, *new.outputs, *new.tensors().values()):
        sources = t.__dict__.get(_SOURCE)
        if sources and id(new) in sources:
            sources[id(graph)] = sources.pop(id(new))
    if _SOURCE in new.__dict__:
        graph.__dict__[_SOURCE] = new.__dict__[_SOURCE]


def import_graph(model: onnx.ModelProto, what: str = "model") -> gs.Graph:
    """``gs.import_onnx(model)``, keeping what gs drops for ``export_graph`` to put back; a model gs cannot hold
    faithfully is refused with a one-line ``UserError``."""
    graph = gs.import_onnx(model)
    try:
        _remember(model.graph, graph)
    except _Refused as e:
        raise UserError(f"{what}: onnx-graphsurgeon cannot hold {e}; graphopt cannot rewrite this model") from None
    model_extras = _subset(model, _MODEL_EXTRAS)
    functions = list(model.functions)
    graph.__dict__["_graphopt_model"] = (model_extras, functions)
    return graph


def export_graph(graph: gs.Graph, what: str = "model") -> onnx.ModelProto:
    """``gs.export_onnx(graph)`` with what ``import_graph`` kept put back: the model as read wherever no pass
    changed it. Raises a one-line ``UserError`` when a pass left a tensor of a type gs cannot write."""
    held = []
    try:
        for t in _unsupported(graph):
            sources = t.__dict__.get(_SOURCE, {})
            if not sources or any(s[2] != _signature(t) for s in sources.values()):
                kind = getattr(t, "type", "?").replace("_type", "")
                producer = t.inputs[0].name if t.inputs else None
                raise UserError(f"{what}: onnx-graphsurgeon cannot hold a changed {kind}-typed tensor {t.name!r}"
                                + (f" (node {producer})" if producer else "")
                                + "; graphopt cannot rewrite this model")
            held.append((t, t.dtype))
            t.dtype = None  # written as an untyped placeholder, its type restored below
        # The restored types are matched by signature, which the placeholder changes: compare with dtype back.
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for t, dtype in held:
            t.dtype = dtype
    _restore(graph, model.graph)
    kept = graph.__dict__.get("_graphopt_model")
    if kept is not None:
        model_extras, functions = kept
        for name in _MODEL_EXTRAS:
            model.ClearField(name)
        if model_extras is not None:
            model.MergeFrom(model_extras)
        if functions:
            original = {(f.domain, f.name, f.overload) for f in functions}
            others = [f for f in model.functions if (f.domain, f.name, f.overload) not in original]
            del model.functions[:]
            model.functions.extend(functions)
            model.functions.extend(others)
    return model


def graph_from_split(split: SplitModel) -> gs.Graph:
    """The onnx-graphsurgeon graph of ``split``; its constants hold ``split.weights``' arrays (not copies)."""
    graph = import_graph(split.skeleton)
    tensors = graph.tensors()
    for name, arr in split.weights.items():
        c = tensors.get(name)
        if isinstance(c, gs.Constant):
            c._values = arr  # noqa: SLF001 - the array itself, not gs's lazy view of the stub
            c.data_location = None  # imported from the stub as EXTERNAL; the data is the array's now
    return graph


def _as_array(values) -> np.ndarray | None:
    """A constant's value as an array, when it is one worth holding out of protobuf."""
    if isinstance(values, gs.ir.tensor.SparseValues):
        return None
    if isinstance(values, gs.ir.tensor.LazyValues):
        t = values.tensor
        if _plain_dtype(t) is None or t.data_location == onnx.TensorProto.EXTERNAL or \
                t.ByteSize() < WEIGHT_MIN_BYTES:
            return None
        return onnx.numpy_helper.to_array(t)
    arr = np.asarray(values)
    if arr.nbytes < WEIGHT_MIN_BYTES or arr.dtype.newbyteorder("=") not in _PLAIN_NP:
        return None
    return arr


def split_graph(graph: gs.Graph) -> SplitModel:
    """Export ``graph`` as a ``SplitModel``: gs.export_onnx with each large constant swapped for a stub while
    exporting, so no weight is copied (arrays are shared with the graph)."""
    weights: dict[str, np.ndarray] = {}
    swapped: list[tuple[gs.Constant, object]] = []
    try:
        for c in graph.tensors().values():
            if not isinstance(c, gs.Constant):
                continue
            values = c._values  # noqa: SLF001
            arr = _as_array(values)
            if arr is None:
                continue
            try:
                data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
            except Exception:  # noqa: BLE001 - a dtype ONNX has no name for: exported as gs would
                continue
            stub = onnx.TensorProto(name=c.name, data_type=data_type, dims=list(arr.shape))
            _stub(stub)
            weights[c.name] = arr
            swapped.append((c, values))
            c._values = gs.ir.tensor.LazyValues(stub)  # noqa: SLF001
        skeleton = export_graph(graph)
    finally:
        for c, values in swapped:
            c._values = values  # noqa: SLF001
    order = [t.name for t in skeleton.graph.initializer if t.name in weights]
    return SplitModel(skeleton, {name: weights[name] for name in order})


def _is_stub(t: onnx.TensorProto) -> bool:
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
        if _is_stub(t):
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


# ---------------------------------------------------------------------------------------------------------- use


def check_split(split: SplitModel) -> None:
    """``onnx.checker.check_model`` on the skeleton, in memory. The checker reads a weight only to see that its
    data is there and sized to its dims, which ``read_split`` and ``split_graph`` ensure for every array: for the
    checker each stub becomes an empty tensor of its type (raises ``onnx.checker.ValidationError`` as it does)."""
    light = onnx.ModelProto()
    light.CopyFrom(split.skeleton)
    for t in light.graph.initializer:
        if _is_stub(t):
            for name in ("dims", "external_data", "data_location"):
                t.ClearField(name)
            t.dims.append(0)
    onnx.checker.check_model(light)


def weights_as_inputs(split: SplitModel) -> onnx.ModelProto:
    """The skeleton with each weight turned into a graph input of its type and shape: a complete, valid model
    without any weight data, for onnxruntime (fed the arrays) and for shape inference (weights' values never decide
    a shape; shape arithmetic reads small constants, which stay initializers)."""
    light = onnx.ModelProto()
    copy_fields(split.skeleton, light, skip=("graph",))
    copy_fields(split.skeleton.graph, light.graph, skip=("initializer",))
    light.graph.initializer.extend(t for t in split.skeleton.graph.initializer if t.name not in split.weights)
    listed = {i.name for i in light.graph.input}  # IR < 4 lists initializers among the inputs already
    for t in split.skeleton.graph.initializer:
        if t.name in split.weights and t.name not in listed:
            light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def session(split: SplitModel, opts, **kwargs):
    """An onnxruntime ``InferenceSession`` of ``split`` and the feeds it needs besides the model's own inputs.

    The weights become graph inputs (``weights_as_inputs``), fed with their arrays at every run, which
    onnxruntime reads where they are: building the session copies none of them (handed over as initializers, even
    as external ones, onnxruntime copies them all) and it runs the graph as written, with no weight folded or
    pre-packed. Returns ``(session, feeds)``; pass ``{**inputs, **feeds}`` to ``session.run``."""
    import onnxruntime as ort

    feeds = {name: np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))  # native order, as ORT reads
             for name, arr in split.weights.items()}
    return ort.InferenceSession(weights_as_inputs(split).SerializeToString(), opts, **kwargs), feeds
