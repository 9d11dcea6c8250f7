"""One model object: ``Model`` owns a model's skeleton, its weights (each held once, as a numpy array) and the
onnx-graphsurgeon view passes edit, and converts only at the edges: the view for passes, the checker, shape
inference, an onnxruntime session, saving. ``structure_hash`` is the one hash of what a graph computes.

A ``Model`` starts from a file (``Model.load``), a ``ModelProto`` (``Model.from_proto``), a ``SplitModel`` or a
graph. Until its view is made, it is its ``SplitModel``; from then on the view is the model, and beside it the
model may hold a *snapshot*: a ``SplitModel`` known to equal the view, which every edge uses instead of exporting
the view again (``forms.split_graph``, sharing the arrays). Handing the view out for editing (``graph``) forgets
the snapshot. An editor that says when it edits reads the view through ``view``, which keeps it, and declares
each edit (``edited``): the pass manager does (``graphopt.core.pipeline``), so a pass that changes nothing costs
no export, and the split verification makes of a changed pass (``snapshot``) is the one the run saves.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from .forms import export_graph, graph_from_split, split_graph, split_model, weight_feeds, weights_as_inputs
from .onnx_files import check_split, load_split, save_model
from .sessions import Purpose, create_session
from .shapes import infer_shapes
from .wire import WEIGHT_MIN_BYTES, SplitModel, little_endian

__all__ = ["Model", "structure_hash"]


class Model:
    """An ONNX model held once: a ``SplitModel`` until its graph view is made, the view (and maybe a snapshot of
    it) from then on."""

    def __init__(self, source: SplitModel | gs.Graph) -> None:
        self._graph: gs.Graph | None = source if isinstance(source, gs.Graph) else None
        # A SplitModel equal to the view: the model itself until the view is made, then a snapshot (or None).
        self._split: SplitModel | None = source if isinstance(source, SplitModel) else None

    @classmethod
    def load(cls, path: str | Path, what: str = "model", reuse: Mapping[str, np.ndarray] | None = None) -> Model:
        """Read and check an ONNX file (``onnx_files.load_split``: one-line ``UserError`` on any problem)."""
        return cls(load_split(path, what, reuse))

    @classmethod
    def from_proto(cls, model: onnx.ModelProto) -> Model:
        """A model in memory; its large initializers are copied out into arrays once."""
        return cls(split_model(model))

    @property
    def graph(self) -> gs.Graph:
        """The onnx-graphsurgeon view, for editing; its constants hold the weights' arrays, not copies. Handing
        it out forgets the snapshot: whoever holds it may edit it, so every edge exports the view from now on."""
        graph = self.view
        self._split = None
        return graph

    @property
    def view(self) -> gs.Graph:
        """The view, keeping the snapshot: for reading it, or for an editor that declares each edit (``edited``)."""
        if self._graph is None:
            self._graph = graph_from_split(self._split)
        return self._graph

    @property
    def has_snapshot(self) -> bool:
        """Whether a ``SplitModel`` equal to the view is held (``split`` then exports nothing)."""
        return self._split is not None

    def split(self) -> SplitModel:
        """The skeleton and weights as they are now: the snapshot when one is held, else exported from the view
        (arrays shared) and not kept, since the view may be edited next."""
        return self._split if self._split is not None else split_graph(self._graph)

    def snapshot(self) -> SplitModel:
        """``split()``, kept as the snapshot: every edge uses it until the view is handed out (``graph``) or
        declared edited (``edited``)."""
        if self._split is None:
            self._split = split_graph(self._graph)
        return self._split

    def edited(self) -> None:
        """Declare the view edited (or about to be): the snapshot is forgotten."""
        self.view  # noqa: B018 - made first: without a view, the snapshot is the model
        self._split = None

    def restore(self, split: SplitModel) -> None:
        """Make the model ``split`` again (a snapshot taken earlier: ``on_fail: skip`` undoing a pass); the view
        is made from it anew when next asked for."""
        self._graph, self._split = None, split

    def proto(self) -> onnx.ModelProto:
        """The whole model as one ``ModelProto``, weights copied in: for tools that take nothing else (onnxsim)."""
        return export_graph(self.view)

    def weightless(self) -> onnx.ModelProto:
        """The skeleton with each weight a graph input of its type and shape (``forms.weights_as_inputs``)."""
        return weights_as_inputs(self.split())

    @property
    def nbytes(self) -> int:
        """Bytes of the weights held as arrays."""
        return self.split().nbytes

    def check(self) -> None:
        """``onnx.checker`` on the model, without a copy of its weights (raises ``onnx.checker.ValidationError``)."""
        check_split(self.split())

    def infer_shapes(self) -> onnx.ModelProto:
        """Shapes of every tensor (``shapes.infer_shapes``), inferred on the weightless model."""
        return infer_shapes(self.weightless())

    def session(self, purpose: Purpose, *, threads: int | None = None,
                spinning: bool = True) -> tuple[Any, dict[str, np.ndarray]]:
        """An onnxruntime session (``sessions.create_session``; ``threads``, ``spinning`` as there) and the feeds
        it needs besides the model's inputs.

        The weights are graph inputs (``weightless``), fed with their arrays at every run, which onnxruntime reads
        where they are: building the session copies none of them (handed over as initializers, even as external
        ones, onnxruntime copies them all). Pass ``{**inputs, **feeds}`` to ``session.run``."""
        split = self.split()
        return (create_session(weights_as_inputs(split), purpose, threads=threads, spinning=spinning),
                weight_feeds(split))

    def save(self, path: str | Path, *, external: bool | None = None) -> list[Path]:
        """Write the model atomically, each weight streamed from its array (``onnx_files.save_model``)."""
        return save_model(self.split(), path, external=external)


def structure_hash(model: Model | gs.Graph | onnx.ModelProto, *,
                   weights: Literal["shapes", "values", "identity"] = "shapes", names: bool = True,
                   lazy: dict[int, LazyValues] | None = None) -> int:
    """A hash of what a graph computes: nodes (op, domain, attributes) with their wiring, constants, and the graph
    inputs and outputs, subgraphs (If's branches, Loop's and Scan's bodies) hashed by their contents the same way.
    Not the shapes and types inferred for computed tensors: annotations, which passes fill in. Stable within one
    process (Python's string hash is salted per process): compare hashes, never store them.

    Two forms, for the two questions asked:

    - *content* (``weights="shapes"`` or ``"values"``): do two graphs compute the same thing? Constants by dtype,
      shape and bytes, the graph inputs' and outputs' declared types, no node names. ``"shapes"`` hashes the bytes
      of small constants only (under ``WEIGHT_MIN_BYTES``; weights by dtype and shape): exact about the structure,
      blind to a weight's values, and it never reads a weight (hashing ViT-B/32's 350 MB of weights takes 0.3 s
      or more). ``"values"`` hashes every constant's bytes.
    - *objects* (``weights="identity"``): did an edit change this graph? Every tensor and array by identity (a
      weight replaced by a new array is a change; an array written into in place is not seen, unless ``lazy``
      below compares it), node and graph names included; no bytes are read, so it is cheap enough to take before
      and after every pass. A constant not yet
      loaded (onnx-graphsurgeon reads a value only when asked) counts by its lazy value's identity and stays
      unloaded. Pass the same ``lazy`` dict to the hashes before and after an edit: the first records each lazy
      value in it, and the second hashes a constant the edit only loaded (its array equal to that value) as the
      first did, so a pass that reads a constant has not changed it.

    ``names=False``: tensors by their order of first appearance instead of their names, so graphs that differ in
    naming alone hash equal. Wiring is by tensor object in every form: a subgraph reading an outer tensor reads
    the outer graph's object.

    The walk is over the onnx-graphsurgeon graph: a ``ModelProto`` is imported first, which costs more than the
    hash itself (30 ms for 550 nodes against 3 ms): hash the graph you hold where there is one."""
    if isinstance(model, Model):
        graph = model.view
    elif isinstance(model, onnx.ModelProto):
        graph = gs.import_onnx(model)
    else:
        graph = model
    identity = weights == "identity"
    order: dict[int, int] = {}  # id(tensor) -> its index of first appearance
    described: list[tuple] = []  # each tensor, in that order

    def tensor(t: gs.Tensor) -> int:
        index = order.get(id(t))
        if index is None:
            index = order[id(t)] = len(order)
            name = t.name if names else ""
            described.append((name, _constant(t, weights, lazy)) if isinstance(t, gs.Constant) else (name,))
        return index

    def attr(v):
        if isinstance(v, gs.Graph):
            return contents(v)
        if isinstance(v, gs.Tensor):
            return ("tensor", tensor(v))
        if isinstance(v, np.ndarray):
            return id(v) if identity else (_dtype_name(v.dtype), v.shape, _array_digest(v))
        if isinstance(v, (list, tuple)):
            return tuple(attr(x) for x in v)
        if isinstance(v, (int, float, str, bytes, bool, type(None))):
            return v
        return v.SerializeToString() if hasattr(v, "SerializeToString") else repr(v)

    def contents(g: gs.Graph) -> tuple:
        parts: list = [g.name if identity else "", tuple(map(tensor, g.inputs)), tuple(map(tensor, g.outputs))]
        if not identity:  # the interface's declared types are part of what a model computes
            parts.append(tuple((str(t.dtype), None if t.shape is None else tuple(t.shape))
                               for t in (*g.inputs, *g.outputs)))
        for node in g.nodes:
            parts.append((node.op, node.domain, node.name if identity else "", tuple(map(tensor, node.inputs)),
                          tuple(map(tensor, node.outputs)), tuple((k, attr(v)) for k, v in node.attrs.items())))
        return tuple(parts)

    parts = contents(graph)
    return hash((parts, tuple(described)))


def _constant(c: gs.Constant, weights: str, lazy: dict[int, LazyValues] | None = None) -> tuple:
    """What a constant contributes: its dtype and shape, and its values as ``weights`` asks (``lazy``: see
    ``structure_hash``)."""
    values = c._values  # noqa: SLF001 - reading .values would load a lazy constant
    proto = values.tensor if isinstance(values, LazyValues) else None
    if weights == "identity":
        if proto is not None:
            if lazy is not None:
                lazy[id(c)] = values
            return c.export_dtype, id(values)
        was = lazy.get(id(c)) if lazy is not None else None
        if was is not None and isinstance(values, np.ndarray) and _equal_arrays(values, was.load()):
            return c.export_dtype, id(was)  # loaded since, unchanged
        return c.export_dtype, id(values)
    if isinstance(proto, onnx.SparseTensorProto) or getattr(proto, "data_type", None) == onnx.TensorProto.STRING:
        # Never loaded: onnx-graphsurgeon writes a loaded string array as raw_data, which strings cannot use, so
        # loading one here would make an untouched model unexportable. Passes never write into these.
        return c.export_dtype, proto.SerializeToString()
    head = (_dtype_name(c.export_dtype), tuple(values.shape))
    if weights == "shapes" and values.nbytes >= WEIGHT_MIN_BYTES:
        return head
    if proto is not None and proto.HasField("raw_data"):  # the little-endian bytes an array's digest is taken of
        return (*head, hashlib.sha256(proto.raw_data).digest())
    return (*head, _array_digest(np.asarray(c.values)))


def _equal_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes."""
    b = np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype) -> str:
    return str(dtype)  # once per dtype object: str() of a numpy dtype is slow on graphs of thousands of constants


def _array_digest(arr: np.ndarray) -> bytes:
    """A digest of an array's little-endian bytes, as ONNX stores them (its text for object arrays)."""
    if arr.dtype.hasobject:
        return hashlib.sha256(repr(arr.tolist()).encode()).digest()
    return hashlib.sha256(memoryview(little_endian(arr)).cast("B")).digest()
