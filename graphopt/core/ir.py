"""Small helpers passes use over an onnx-graphsurgeon graph: constants, producers, fresh names, rewiring, shapes.

The model itself (loading, saving, the graph view, sessions) is ``graphopt.core.model.Model``; ``to_graph`` and
``to_model`` are the conversions for code that holds a bare ``ModelProto``.
"""
from __future__ import annotations

import collections
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from .forms import adopt_graph, export_graph, import_graph, split_graph, weights_as_inputs
from .shapes import infer_shapes

__all__ = ["onnx_dtype", "to_graph", "to_model", "shape_model", "op_counts", "opset_of", "producer", "consumers",
           "subgraph_nodes", "outer_reads", "const_value", "peek_values",
           "make_name", "replace_graph", "set_tensors", "replace_uses", "inferred_types", "ensure_shapes",
           "constants_to_initializers"]


def shape_model(graph: gs.Graph) -> onnx.ModelProto:
    """``graph`` as a model for shape and type inference only: its weights (constants of 1 KiB and more) are graph
    inputs of their type and shape (``forms.weights_as_inputs``), so inferring shapes never copies them. Not a
    model to run or save."""
    return weights_as_inputs(split_graph(graph))


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """``model`` as an onnx-graphsurgeon graph; what gs drops is kept for ``to_model`` (``forms.import_graph``)."""
    return import_graph(model)


def to_model(graph: gs.Graph) -> onnx.ModelProto:
    """``graph`` as a model, with what gs dropped on import put back (``forms.export_graph``)."""
    return export_graph(graph)


def op_counts(graph_or_model: gs.Graph | onnx.ModelProto) -> dict[str, int]:
    if isinstance(graph_or_model, onnx.ModelProto):
        ops: Iterable[str] = (n.op_type for n in graph_or_model.graph.node)
    else:
        ops = (n.op for n in graph_or_model.nodes)
    return dict(sorted(collections.Counter(ops).items()))


def opset_of(graph: gs.Graph) -> int:
    """The default-domain (ai.onnx) opset the graph is written against."""
    return int(graph.opset)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that computes ``tensor`` (None for graph inputs and constants)."""
    return tensor.inputs[0] if tensor.inputs else None


def subgraph_nodes(node: gs.Node):
    """Every node inside ``node``'s subgraphs, nested ones included, with the graph holding it."""
    if not any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return  # most nodes: spared gs's subgraph walk, which passes over every node of a graph pay for
    for sub in node.subgraphs():
        for n in sub.nodes:
            yield sub, n
            yield from subgraph_nodes(n)


def outer_reads(node: gs.Node) -> list[gs.Tensor]:
    """The tensors of the enclosing scopes that ``node``'s subgraphs (at any depth) read."""
    if not any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return []
    defined: set[int] = set()
    reads = []
    for sub, n in subgraph_nodes(node):
        defined.update(id(t) for t in sub.inputs)
        defined.update(id(t) for t in n.outputs)
    for _, n in subgraph_nodes(node):
        reads.extend(t for t in n.inputs if not t.is_empty() and not isinstance(t, gs.Constant)
                     and id(t) not in defined)
    return reads


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, seen through a Constant node; None when it is not constant."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return peek_values(tensor)
    node = producer(tensor)
    if node is not None and node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return peek_values(value)
        if value is not None:
            return np.asarray(value)
        for key in ("value_float", "value_int"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        for key in ("value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
    return None


def peek_values(c: gs.Constant) -> np.ndarray:
    """``c``'s values without gs caching them in ``c`` (``Constant.values`` loads and keeps lazily loaded ones: a
    weight read only to compare it would stay in memory, and a string tensor kept so is one gs cannot export)."""
    values = c.__dict__.get("_values")
    return np.asarray(values.load() if isinstance(values, LazyValues) else c.values)


def make_name(graph: gs.Graph, base: str) -> str:
    """A node/tensor name not yet used in ``graph``, derived from ``base``."""
    # gs.Graph.__getattr__ treats unknown attributes as ONNX functions: go through __dict__.
    used = graph.__dict__.get("_graphopt_names")
    if used is None:
        used = {n.name for n in graph.nodes} | set(graph.tensors().keys())
        graph.__dict__["_graphopt_names"] = used
    name, i = base, 0
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def replace_graph(graph: gs.Graph, new: gs.Graph) -> None:
    """Make ``graph`` hold ``new``'s contents, for passes that go through a ModelProto-level tool (onnxsim)."""
    adopt_graph(graph, new)
    graph.nodes = new.nodes
    graph.inputs = new.inputs
    graph.outputs = new.outputs
    graph.opset = new.opset
    graph.import_domains = new.import_domains
    graph.__dict__.pop("_graphopt_names", None)


def set_tensors(tensors: list, new: Iterable[gs.Tensor]) -> None:
    """Replace a node's ``inputs``/``outputs`` in place. Plain assignment (``node.inputs = [...]``) would swap
    onnx-graphsurgeon's synchronised list for a plain one and leave the tensors' back-references stale."""
    new = list(new)
    tensors.clear()
    tensors.extend(new)


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Point every consumer of ``old`` at ``new``."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def inferred_types(graph: gs.Graph, model: onnx.ModelProto | None = None) -> dict[str, tuple[list | None, object]]:
    """Shape and type inference (``infer_shapes``) on ``graph``'s ``shape_model`` (or on ``model``, a lighter
    stand-in a pass built for it): name -> (shape, dtype) of every tensor it typed, read from the inferred value
    infos (shape None when only the type is known)."""
    from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape

    g = infer_shapes(shape_model(graph) if model is None else model).graph
    return {vi.name: (get_onnx_tensor_shape(vi), get_onnx_tensor_dtype(vi))
            for vi in (*g.input, *g.output, *g.value_info) if vi.type.HasField("tensor_type")}


def ensure_shapes(graph: gs.Graph, tensors: Iterable[gs.Tensor], model: onnx.ModelProto | None = None) -> None:
    """Run shape inference (in place) when any of ``tensors`` has no shape yet; passes that match on shapes
    call this instead of requiring an ``infer_shapes`` pass before them. ``model``: see ``inferred_types``."""
    if all(t.shape is not None for t in tensors):
        return
    known = inferred_types(graph, model)
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and t.shape is None and name in known:
            t.shape, t.dtype = known[name]


def constants_to_initializers(graph: gs.Graph) -> int:
    """Turn tensor-valued Constant nodes into initializers (what ATC and most tools expect). Returns the count."""
    moved = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or not node.outputs or node.outputs[0] in graph.outputs:
            continue
        value = node.attrs.get("value")
        if not isinstance(value, gs.Constant):
            continue
        out = node.outputs[0]
        const = gs.Constant(out.name, np.asarray(value.values))
        node.outputs.clear()
        replace_uses(out, const)
        moved += 1
    return moved


def onnx_dtype(t: gs.Tensor) -> int | None:
    """``t``'s ONNX element type, None when unknown. gs holds numpy dtypes, or the ONNX enum for types numpy has no
    dtype for (bfloat16, float8), so numpy dtypes alone would call those equal to unrelated types."""
    from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx

    dtype = t.export_dtype if isinstance(t, gs.Constant) and t.export_dtype is not None else t.dtype
    if dtype is None:
        return None
    try:
        return int(dtype_to_onnx(dtype))
    except Exception:  # noqa: BLE001 - a type gs cannot name: unknown
        return None
