"""Shape inference by probing: ONNX's own (C++) inference at concrete sizes for the symbolic input dims.

onnxruntime's symbolic shape inference (``shapes.infer_shapes``'s fallback) imports sympy, which alone costs about
0.9 s, and then runs in Python (0.5 s on ViT-B/32). ONNX's C++ inference takes milliseconds, but with a symbolic
batch it loses every shape behind a computed ``Reshape`` target (``x.reshape(B, N, -1)``) or a computed ``Expand``
(the cls token of a ViT), and before opset 13 it does not follow shape arithmetic at all. Here the symbolic input
dims get concrete sizes, and then:

1. ONNX's inference runs on the whole model (with its data propagation, which covers opset 13 and later);
2. one pass over the nodes in order completes what it left unknown: each such node gets ONNX's per-node inference
   (``infer_node_outputs``) given the values of its inputs, and every small integer, boolean or float result of
   shape arithmetic (``Shape``, ``Gather``, ``Concat``, ``Equal``, ``Where``, ``ConstantOfShape``, ``Range``, a
   rounding through float, ...) is evaluated with numpy (``_evaluate``).

It runs twice, with different sizes for each symbol (primes, far apart). A dim equal in both runs is static; a dim
``k * size`` in both is ``k*name`` (``name`` for k = 1); any other differing dim is a fresh symbol, one per pair of
sizes. A third run, at small sizes and partial (``_SMALL``), checks those conclusions: large sizes can hit a clamp
(``pos[:, :S]`` of a 64-wide buffer is 64 wide at S = 97 and at S = 227, ``Min(S, 64)``, ``Max``), which makes a
size-dependent dim look static, or look like ``S`` when it is ``max(S, 64)``. A dim the third run knows and
contradicts becomes a fresh symbol: never a static number, never a name it does not have. The result is used only
when it is complete: every tensor a node or the graph reads is typed and shaped in both runs, and there is no
subgraph. Anything else (a custom op, an op ONNX cannot infer, a model whose shapes need particular sizes) returns
None and the caller falls back on symbolic inference. tests/test_shape_probe.py checks the result against that
fallback on every model of the test zoo.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import onnx
from onnx import numpy_helper

from .wire import WEIGHT_MIN_BYTES, copy_fields

__all__ = ["probe_infer", "probe_runs", "slice_range"]

# The concrete sizes given to the i-th symbolic input dim: _FIRST[i] in the first run, _SECOND[i] in the second.
# Primes, so a multiple of one symbol's size is not mistaken for another's; the runs' sizes far apart, so a
# downsampled spatial dim (floor(H / 32)) differs between them instead of passing for static.
_FIRST = (97, 101, 103, 107, 109, 113, 127, 131)
_SECOND = (227, 229, 233, 239, 241, 251, 257, 263)
# The third, checking run's sizes: below the usual clamps (a position table's length, a window), above 1 (which
# broadcasts) and primes distinct from each other and from the static dims one meets most (2, 3, 4, 8, ...).
_SMALL = (5, 7, 11, 13, 17, 19, 23, 29)
_MAX_VALUE_ELEMENTS = 1024  # shape arithmetic is small; larger tensors are not evaluated
_INTEGER_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)
# Shape arithmetic: integers and booleans, and the floats of a rounding (Cast, Div, Floor, Cast back).
_VALUE_TYPES = (*_INTEGER_TYPES, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def probe_infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` with a value info for every node output (types and shapes, symbolic dims named as above), or
    None when probing cannot type and shape every output."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
           for a in n.attribute):
        return None
    symbols: dict[str, int] = {}  # dim_param -> index
    for vi in graph.input:
        if not vi.type.tensor_type.HasField("shape"):
            return None
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                if not d.dim_param:
                    return None
                symbols.setdefault(d.dim_param, len(symbols))
    if len(symbols) > len(_FIRST):
        return None
    light = _weightless(model)
    runs = []
    for run in range(2 if symbols else 1):
        sizes = {name: (_FIRST, _SECOND)[run][i] for name, i in symbols.items()}
        shapes = _concrete(light, sizes)
        if shapes is None:
            return None
        runs.append((sizes, shapes))
    if symbols:  # the check: partial (small sizes may not fit every model), what it knows must agree
        sizes = {name: _SMALL[i] for name, i in symbols.items()}
        runs.append((sizes, _concrete(light, sizes, partial=True) or {}))
    return _merged(model, runs)


def probe_runs(model: onnx.ModelProto) -> list[tuple[dict[str, int], Known]]:
    """What probing evaluates, as far as it gets: ``[(sizes, shapes)]`` for two runs at different sizes of the symbolic
    input dims and a third at small sizes (``_SMALL``; one run when there is none), ``shapes`` giving the element type
    and concrete dims of each main-graph node output that ONNX's inference and the shape arithmetic determine at those
    sizes. Unlike ``probe_infer`` it stops at nothing: a node it cannot infer (a custom op, a subgraph, an inconsistency
    at these sizes) only leaves its outputs, and whatever depends on them, out; an input dim with no name gets its own
    symbol; the graph outputs' declared shapes are not imposed (a stale static batch there would make every other
    size fail). ``shapes.infer_shapes`` checks onnxruntime's symbolic inference against it. ``[]`` when there are too
    many symbols."""
    light = _weightless(model)
    symbols: dict[str, int] = {}
    for vi in light.graph.input:
        if not vi.type.tensor_type.HasField("shape"):
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                if not d.dim_param:
                    d.dim_param = f"unk__probe_input_{vi.name}_{k}"
                symbols.setdefault(d.dim_param, len(symbols))
    if len(symbols) > len(_FIRST):
        return []
    for vi in light.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    runs = []
    for run in range(3 if symbols else 1):
        sizes = {name: (_FIRST, _SECOND, _SMALL)[run][i] for name, i in symbols.items()}
        runs.append((sizes, _concrete(light, sizes, partial=True) or {}))
    return runs


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each initializer of 1 KiB or more (or in external data) made a typed graph input: inference
    needs its type and shape, not its bytes, and the probe copies the model per run. Integer tensors small enough
    to be shape arithmetic stay."""
    out = onnx.ModelProto()
    copy_fields(model, out, skip=("graph",))
    copy_fields(model.graph, out.graph, skip=("initializer",))
    listed = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        arithmetic = init.data_type in _INTEGER_TYPES and math.prod(init.dims) <= _MAX_VALUE_ELEMENTS
        if not arithmetic and (init.external_data or init.ByteSize() >= WEIGHT_MIN_BYTES):
            if init.name not in listed:
                out.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            out.graph.initializer.add().CopyFrom(init)
    return out


Known = dict[str, tuple[int, tuple[int, ...]]]  # tensor -> (element type, dims), for the completely typed


def _concrete(model: onnx.ModelProto, sizes: dict[str, int], partial: bool = False) -> Known | None:
    """Every node output's element type and dims at these sizes, or None when some stays unknown. ``partial``:
    whatever is known, a node ONNX cannot infer (or an inconsistent whole) leaving its outputs unknown."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for vi in probe.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = sizes[d.dim_param]  # clears dim_param (a oneof)
    try:
        g = onnx.shape_inference.infer_shapes(probe, data_prop=True).graph
    except Exception:  # noqa: BLE001 - inconsistent at these sizes (or an error ONNX raises): not probed
        if not partial:
            return None
        g = probe.graph  # node by node below, as far as each node allows
    types = {vi.name: vi.type for vi in (*g.input, *g.value_info, *g.output)}  # complete or not
    known: Known = {}
    for name, t in types.items():
        _learn(known, name, t)
    values: dict[str, np.ndarray] = {}  # evaluated small tensors (shape arithmetic)
    for init in g.initializer:
        known[init.name] = (init.data_type, tuple(init.dims))
        types.setdefault(init.name, onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims)))
        if _small_value(known[init.name]) and not init.external_data:
            values[init.name] = numpy_helper.to_array(init)
    protos: dict[str, onnx.TensorProto] = {}  # values as ONNX's inference takes them
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    # One pass in topological order: ONNX's inference of each node still unknown, given the values evaluated so
    # far, and the value of each small result.
    for node in g.node:
        outputs = [o for o in node.output if o]
        if not all(o in known for o in outputs):
            data = {}
            for i in node.input:
                if i in values:
                    if i not in protos:
                        protos[i] = numpy_helper.from_array(values[i], i)
                    data[i] = protos[i]
            try:
                if partial and any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                   for a in node.attribute):
                    raise ValueError("a subgraph: not inferred node by node")
                schema = onnx.defs.get_schema(node.op_type, opsets[node.domain or "ai.onnx"], node.domain)
                inferred = onnx.shape_inference.infer_node_outputs(
                    schema, node, {i: types[i] for i in node.input if i in types}, data)
            except Exception:  # noqa: BLE001 - no schema (a custom op) or inference fails: not probed
                if not partial:
                    return None
                inferred = {}
            for name, t in inferred.items():
                types[name] = t
                _learn(known, name, t)
        if outputs and node.op_type in _EVALUATED and outputs[0] in known and _small_value(known[outputs[0]]):
            try:
                value = _evaluate(node, values, known)
            except Exception:  # noqa: BLE001 - malformed at these sizes: left unevaluated
                value = None
            if value is not None:
                values[outputs[0]] = value
    # Complete: every output read by a node or the graph is typed and shaped (an unused extra output, such as
    # the running statistics of a BatchNormalization exported in training mode, may stay unknown).
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    outputs = [o for n in model.graph.node for o in n.output if o]
    if partial or all(o in known for o in outputs if o in read):
        return {o: known[o] for o in outputs if o in known}
    return None


def _learn(known: Known, name: str, t: onnx.TypeProto) -> None:
    """Record ``t`` when it is a tensor type with an element type and every dim a number."""
    if t.HasField("tensor_type") and t.tensor_type.elem_type and t.tensor_type.HasField("shape"):
        dims = t.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            known[name] = (t.tensor_type.elem_type, tuple(d.dim_value for d in dims))


def _small_value(typed: tuple[int, tuple[int, ...]]) -> bool:
    return typed[0] in _VALUE_TYPES and math.prod(typed[1]) <= _MAX_VALUE_ELEMENTS


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], known: Known) -> np.ndarray | None:
    """``node``'s (first) output value from its inputs' values and known shapes, None when not computable."""
    op = node.op_type
    if op == "Constant":
        t = _attr(node, "value")
        return numpy_helper.to_array(t) if isinstance(t, onnx.TensorProto) else None
    if op in ("Shape", "Size"):
        if node.input[0] not in known:
            return None
        dims = known[node.input[0]][1]
        if op == "Size":
            return np.array(math.prod(dims), dtype=np.int64)
        return np.array(dims[_attr(node, "start", 0):_attr(node, "end", None)], dtype=np.int64)
    args = [values.get(n) if n else None for n in node.input]
    if not node.input or any(a is None for a, n in zip(args, node.input) if n):
        return None
    fn = _OPS.get(op)
    return None if fn is None else fn(node, args)


def slice_range(n: int, start: int, end: int, step: int) -> range:
    """The indices ONNX's Slice takes along a dim of size ``n``: negative bounds count from the end, then start is
    clamped to [0, n] ([0, n-1] stepping backwards) and end to [0, n] ([-1, n-1] backwards). numpy's slicing
    differs stepping backwards from a start before the beginning: it takes nothing, ONNX starts at index 0."""
    start, end = start + n if start < 0 else start, end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return range(start, end, step)


def _slice(node, args):
    x = args[0]
    starts, ends = args[1], args[2]
    axes = args[3] if len(args) > 3 and args[3] is not None else np.arange(len(starts))
    steps = args[4] if len(args) > 4 and args[4] is not None else np.ones(len(starts), dtype=np.int64)
    for s, e, a, st in zip(starts, ends, axes, steps):
        axis = int(a) % x.ndim
        x = np.take(x, np.array(slice_range(x.shape[axis], int(s), int(e), int(st)), dtype=np.int64), axis=axis)
    return x


def _unsqueeze(node, args):
    axes = args[1] if len(args) > 1 and args[1] is not None else _attr(node, "axes")
    out = args[0]
    rank = out.ndim + len(axes)
    for a in sorted(int(a) % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(node, args):
    axes = args[1] if len(args) > 1 and args[1] is not None else _attr(node, "axes")
    return np.squeeze(args[0], axis=None if axes is None else tuple(int(a) for a in axes))


def _reshape(node, args):
    target = [int(d) for d in args[1]]
    target = [args[0].shape[i] if d == 0 else d for i, d in enumerate(target)]
    return args[0].reshape(target)


def _div(node, args):
    """ONNX's Div: integer division truncates toward zero (numpy's ``//`` floors)."""
    a, b = args
    if a.dtype.kind not in "iu":
        return a / b
    return (np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)).astype(np.result_type(a, b))


def _reduce_prod(node, args):
    axes = args[1] if len(args) > 1 and args[1] is not None else _attr(node, "axes")  # an input from opset 18
    keep = bool(_attr(node, "keepdims", 1))
    if axes is None or len(axes) == 0:
        if _attr(node, "noop_with_empty_axes", 0):
            return args[0]
        return np.prod(args[0], keepdims=keep)
    return np.prod(args[0], axis=tuple(int(x) for x in axes), keepdims=keep)


def _constant_of_shape(node, args):
    value = _attr(node, "value")
    fill = numpy_helper.to_array(value).reshape(()) if value is not None else np.float32(0)
    return np.full(tuple(int(d) for d in args[0]), fill, dtype=fill.dtype)


_OPS = {
    "Identity": lambda n, a: a[0],
    "Cast": lambda n, a: a[0].astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(n, "to"))),
    "Gather": lambda n, a: np.take(a[0], a[1], axis=_attr(n, "axis", 0)),
    "Concat": lambda n, a: np.concatenate(a, axis=_attr(n, "axis")),
    "Unsqueeze": _unsqueeze,
    "Transpose": lambda n, a: np.transpose(a[0], _attr(n, "perm")),
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Reshape": _reshape,
    "Add": lambda n, a: a[0] + a[1],
    "Sub": lambda n, a: a[0] - a[1],
    "Mul": lambda n, a: a[0] * a[1],
    "Div": _div,
    "Equal": lambda n, a: np.equal(a[0], a[1]),
    "Less": lambda n, a: np.less(a[0], a[1]),
    "Greater": lambda n, a: np.greater(a[0], a[1]),
    "Not": lambda n, a: np.logical_not(a[0]),
    "Where": lambda n, a: np.where(a[0], a[1], a[2]),
    "Min": lambda n, a: functools.reduce(np.minimum, a),
    "Max": lambda n, a: functools.reduce(np.maximum, a),
    "Abs": lambda n, a: np.abs(a[0]),
    "Mod": lambda n, a: (np.fmod if _attr(n, "fmod", 0) else np.mod)(a[0], a[1]),
    "Floor": lambda n, a: np.floor(a[0]),
    "Ceil": lambda n, a: np.ceil(a[0]),
    "Sqrt": lambda n, a: np.sqrt(a[0]),
    "Pow": lambda n, a: np.power(a[0], a[1]).astype(a[0].dtype),
    "Neg": lambda n, a: np.negative(a[0]),
    "ReduceProd": _reduce_prod,
    "Range": lambda n, a: np.arange(a[0], a[1], a[2], dtype=np.result_type(a[0], a[1], a[2])),
    "ConstantOfShape": _constant_of_shape,
    "Expand": lambda n, a: a[0] * np.ones(tuple(int(d) for d in a[1]), dtype=a[0].dtype),
}
_EVALUATED = frozenset({"Constant", "Shape", "Size", *_OPS})


def _merged(model: onnx.ModelProto, runs) -> onnx.ModelProto:
    """``model`` with value infos merged from the concrete runs: static dims kept, differing dims named; a dim the
    third (checking) run contradicts is a fresh symbol."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.value_info[:]
    (sizes_a, a), *rest = runs
    sizes_b, b = rest[0] if rest else (sizes_a, a)
    sizes_c, c = rest[1] if len(rest) > 1 else ({}, {})
    # (size in run 1, in run 2, in the check or None) -> name: equal sizes, one symbol
    fresh: dict[tuple[int, int, int | None], str] = {}
    outputs = {o.name: o for o in g.output}
    for name, (elem_type, dims_a) in a.items():
        if name not in b:
            continue
        dims_c = c[name][1] if name in c and len(c[name][1]) == len(dims_a) else (None,) * len(dims_a)
        dims = []
        for da, db, dc in zip(dims_a, b[name][1], dims_c):
            if da == db and dc in (None, da):
                dims.append(da)
                continue
            sym = None if da == db else next(
                (s for s in sizes_a if da % sizes_a[s] == 0 and db % sizes_b[s] == 0
                 and da // sizes_a[s] == db // sizes_b[s]), None)
            if sym is not None and dc is not None and dc != da // sizes_a[sym] * sizes_c[sym]:
                sym = None  # k * size at large sizes only: a clamp from below (max(S, 64))
            if sym is None:
                dims.append(fresh.setdefault((da, db, dc), f"unk__probe_{len(fresh)}"))
            else:
                k = da // sizes_a[sym]
                dims.append(sym if k == 1 else f"{k}*{sym}")
        vi = onnx.helper.make_tensor_value_info(name, elem_type, dims)
        if name in outputs:
            outputs[name].type.CopyFrom(vi.type)
        else:
            g.value_info.append(vi)
    return out
