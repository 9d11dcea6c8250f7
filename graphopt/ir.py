"""Graph I/O and small helpers over onnx-graphsurgeon.

Loading checks what it reads and turns every failure into a one-line ``UserError``; saving is atomic (a temporary
name in the destination folder, then ``os.replace``), so an interrupted or failed write never leaves a
half-written model where a finished one is expected, and an input model is never modified in place.
"""
from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import UserError

# onnx-graphsurgeon otherwise nags on every first log line that the optional `colored` package is missing.
gs.logger.G_LOGGER.colors = False

__all__ = [
    "current_umask",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_model",
    "save_model",
    "to_graph",
    "to_model",
    "op_counts",
    "producer",
    "consumers",
    "const_value",
    "opset_of",
    "make_name",
    "infer_shapes",
    "symbolic_shape_inference",
    "replace_graph",
    "set_tensors",
    "replace_uses",
    "ensure_shapes",
    "structure_signature",
    "constants_to_initializers",
]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a finished file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # KeyboardInterrupt included: no partial file is left behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def load_model(path: str | Path, what: str = "model") -> onnx.ModelProto:
    """Load and check an ONNX file; any problem becomes a one-line ``UserError`` naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path}: no such file")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(path))
    except PermissionError:
        raise UserError(f"{what} {path}: permission denied") from None
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{what} {path}: not a readable ONNX model ({first})") from None
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{what} {path}: not an ONNX model (empty graph)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{what} {path}: invalid ONNX model ({first})") from None
    return model


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    atomic_write_bytes(path, model.SerializeToString())


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph) -> onnx.ModelProto:
    model = gs.export_onnx(graph, do_type_check=False)
    return model


def symbolic_shape_inference():
    """onnxruntime's ``SymbolicShapeInference`` class, loaded from its file: importing it as
    ``onnxruntime.tools.symbolic_shape_infer`` runs ``onnxruntime/tools/__init__.py``, which imports torch when it
    is installed (seconds, and about 700 MB of RSS)."""
    import importlib.util
    import sys

    name = "_graphopt_symbolic_shape_infer"
    if name not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        path = Path(list(spec.submodule_search_locations)[0]) / "tools" / "symbolic_shape_infer.py"
        loaded = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].SymbolicShapeInference


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes for every tensor, symbolic dims (a dynamic batch) included.

    onnxruntime's symbolic shape inference first: ONNX's own loses every shape after a dynamic-batch
    ``Expand``/``Reshape`` (the cls-token concat of a ViT), which it resolves. ONNX's inference is the fallback,
    and a model that defeats both is returned unchanged (its shapes stay unknown).
    """
    try:
        return symbolic_shape_inference().infer_shapes(model, auto_merge=True)
    except Exception:
        pass
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return model


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


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, seen through a Constant node; None when it is not constant."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        if value is not None:
            return np.asarray(value)
        for key in ("value_float", "value_int"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        for key in ("value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
    return None


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


def ensure_shapes(graph: gs.Graph, tensors: Iterable[gs.Tensor]) -> None:
    """Run shape inference (in place) when any of ``tensors`` has no shape yet; passes that match on shapes
    call this instead of requiring an ``infer_shapes`` pass before them."""
    if all(t.shape is not None for t in tensors):
        return
    inferred = infer_shapes(to_model(graph))
    known = {t.name: t for t in to_graph(inferred).tensors().values()}
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and t.shape is None and name in known:
            t.shape, t.dtype = known[name].shape, known[name].dtype


def structure_signature(model: onnx.ModelProto) -> bytes:
    """The graph's computation without annotations (value_info, doc strings): nodes with their attributes, inputs,
    outputs and the initializers' names, types and shapes. Equal signatures mean the same computation."""
    import hashlib

    h = hashlib.sha256()
    g = model.graph
    for node in g.node:
        h.update(node.op_type.encode() + b"\0" + node.domain.encode() + b"\0")
        h.update("\0".join(node.input).encode() + b"\1" + "\0".join(node.output).encode() + b"\1")
        for attr in node.attribute:
            h.update(attr.SerializeToString())
    for init in g.initializer:
        h.update(f"{init.name}:{init.data_type}:{list(init.dims)}".encode())
    h.update(str([(i.name, i.type.SerializeToString()) for i in (*g.input, *g.output)]).encode())
    return h.digest()


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
