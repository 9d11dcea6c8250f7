"""A model's three forms and the conversions between them: a ``ModelProto``, a ``SplitModel`` (skeleton plus
weights held once, ``wire``) and the onnx-graphsurgeon graph passes edit.

- ``split_model``: ModelProto -> SplitModel, the large initializers copied out into arrays once;
- ``graph_from_split`` / ``split_graph``: SplitModel <-> gs.Graph, the graph's constants holding the very arrays;
- ``import_graph`` / ``export_graph``: ModelProto <-> gs.Graph, keeping what onnx-graphsurgeon drops (below);
- ``weights_as_inputs``: SplitModel -> a weightless ModelProto for onnxruntime and shape inference.

``graphopt.core.model.Model`` owns these conversions; the functions are what it is built from.
"""
from __future__ import annotations

import collections
import functools

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import input_defaults
from .errors import UserError
from .wire import WEIGHT_MIN_BYTES, SplitModel, copy_fields, is_plain, make_stub, plain_dtype

# onnx-graphsurgeon otherwise nags on every first log line that the optional `colored` package is missing.
gs.logger.G_LOGGER.colors = False

__all__ = ["split_model", "import_graph", "export_graph", "adopt_graph", "graph_from_split", "split_graph",
           "weights_as_inputs", "weight_feeds", "with_nodes"]


def split_model(model: onnx.ModelProto) -> SplitModel:
    """A ModelProto in memory as a ``SplitModel`` (its large initializers copied out into arrays once)."""
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, skip=("graph",))
    copy_fields(model.graph, skeleton.graph, skip=("initializer",))
    weights = {}
    for t in model.graph.initializer:
        s = skeleton.graph.initializer.add()
        dtype = plain_dtype(t)
        if dtype is None or t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data") \
                or len(t.raw_data) < WEIGHT_MIN_BYTES:
            s.CopyFrom(t)
            continue
        copy_fields(t, s, skip=("raw_data",))
        weights[t.name] = onnx.numpy_helper.to_array(t)
        make_stub(s)
    return SplitModel(skeleton, weights)


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
    input_defaults.keep(graph, input_defaults.input_defaults(new))


def import_graph(model: onnx.ModelProto, what: str = "model") -> gs.Graph:
    """``gs.import_onnx(model)``, keeping what gs drops for ``export_graph`` to put back; a model gs cannot hold
    faithfully is refused with a one-line ``UserError``."""
    graph = gs.import_onnx(model)
    input_defaults.hold(model.graph, graph)  # before _remember: such an input's declared type is kept too
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
    input_defaults.restore(graph, model)  # after the IR version is restored: it may need raising
    return model


def with_nodes(graph: gs.Graph, nodes: list[gs.Node]) -> gs.Graph:
    """A graph of ``nodes`` (some of ``graph``'s, in its order) with ``graph``'s inputs, outputs, opsets, functions
    and input defaults: to export part of a graph (the part a question needs) without copying or rewiring it. The
    nodes and tensors are shared: not a graph to edit, and a tensor no node of it produces exports as dangling."""
    part = gs.Graph(inputs=graph.inputs, outputs=graph.outputs, name=graph.name, opset=graph.opset,
                    import_domains=graph.import_domains, ir_version=graph.ir_version)
    # Set after construction, which would point the nodes' subgraphs and the functions at a function list of its
    # own: the part shares ``graph``'s list, and ``graph`` is left as it was.
    part.nodes = nodes
    part._functions = graph._functions  # noqa: SLF001
    if "_graphopt_model" in graph.__dict__:
        part.__dict__["_graphopt_model"] = graph.__dict__["_graphopt_model"]
    input_defaults.keep(part, input_defaults.input_defaults(graph))
    return part


def graph_from_split(split: SplitModel) -> gs.Graph:
    """The onnx-graphsurgeon graph of ``split``; its constants hold ``split.weights``' arrays (not copies)."""
    graph = import_graph(split.skeleton)
    tensors = {**graph.tensors(), **input_defaults.input_defaults(graph)}
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
        if plain_dtype(t) is None or t.data_location == onnx.TensorProto.EXTERNAL or \
                t.ByteSize() < WEIGHT_MIN_BYTES:
            return None
        return onnx.numpy_helper.to_array(t)
    arr = np.asarray(values)
    if arr.nbytes < WEIGHT_MIN_BYTES or not is_plain(arr.dtype):
        return None
    return arr


def split_graph(graph: gs.Graph) -> SplitModel:
    """Export ``graph`` as a ``SplitModel``: gs.export_onnx with each large constant swapped for a stub while
    exporting, so no weight is copied (arrays are shared with the graph)."""
    weights: dict[str, np.ndarray] = {}
    swapped: list[tuple[gs.Constant, object]] = []
    try:
        for c in (*graph.tensors().values(), *input_defaults.input_defaults(graph).values()):
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
            make_stub(stub)
            weights[c.name] = arr
            swapped.append((c, values))
            c._values = gs.ir.tensor.LazyValues(stub)  # noqa: SLF001
        skeleton = export_graph(graph)
    finally:
        for c, values in swapped:
            c._values = values  # noqa: SLF001
    order = [t.name for t in skeleton.graph.initializer if t.name in weights]
    return SplitModel(skeleton, {name: weights[name] for name in order})


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


def weight_feeds(split: SplitModel) -> dict[str, np.ndarray]:
    """The weights of ``split`` as the feeds of its ``weights_as_inputs`` model: each array in native byte order
    and contiguous, as onnxruntime reads it in place (no copy for the arrays a model holds)."""
    return {name: np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("=")) for name, arr in split.weights.items()}


