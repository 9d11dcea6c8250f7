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
sizes. Large sizes can hit a clamp (``pos[:, :S]`` of a 64-wide buffer is 64 wide at S = 97 and at S = 227,
``Min(S, 64)``, ``Max``), which makes a size-dependent dim look static, or look like ``S`` when it is
``max(S, 64)``: where the graph could clamp (``_clamps``), a third run at small sizes (``_SMALL``, partial)
checks, and a dim it knows and contradicts becomes a fresh symbol, never a static number or a name it does not
have. A clamp on shape arithmetic alone (LV-ViT's ``expand``) is checked without it, by evaluating that
arithmetic at the small sizes (``_values_follow``). The result is used only when it
is complete: every tensor a node or the graph reads is typed and shaped in both runs, and there is no subgraph.
Anything else (a custom op, an op ONNX cannot infer, a model whose shapes need particular sizes) returns None and
the caller falls back on symbolic inference. tests/test_shape_probe.py checks the result against that fallback on
every model of the test zoo.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from .shape_arith import EVALUATED, evaluate
from .wire import WEIGHT_MIN_BYTES, copy_fields

__all__ = ["probe_infer", "probe_runs"]

# The concrete sizes given to the i-th symbolic input dim: _FIRST[i] in the first run, _SECOND[i] in the second.
# Primes, so a multiple of one symbol's size is not mistaken for another's; the runs' sizes far apart, so a
# downsampled spatial dim (floor(H / 32)) differs between them instead of passing for static.
_FIRST = (97, 101, 103, 107, 109, 113, 127, 131)
_SECOND = (227, 229, 233, 239, 241, 251, 257, 263)
# The third, checking run's sizes: below the usual clamps (a position table's length, a window), above 1 (which
# broadcasts) and primes distinct from each other and from the static dims one meets most (2, 3, 4, 8, ...).
_SMALL = (5, 7, 11, 13, 17, 19, 23, 29)
# Ops that can clamp a size (a result that follows it at some sizes and not at others): selecting by comparison,
# comparing, counting up to a bound (Range), reducing, rectifying.
_CLAMPS = frozenset({"Min", "Max", "Clip", "Where", "Relu", "Abs", "Sign", "Mod", "Range", "Equal", "Less",
                     "Greater", "LessOrEqual", "GreaterOrEqual", "ReduceMin", "ReduceMax", "ArgMin", "ArgMax",
                     "TopK"})
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
    runs, values = [], []
    for run in range(2 if symbols else 1):
        sizes = {name: (_FIRST, _SECOND)[run][i] for name, i in symbols.items()}
        values.append({})
        shapes = _concrete(light, sizes, values=values[-1])
        if shapes is None:
            return None
        runs.append((sizes, shapes))
    small = {name: _SMALL[i] for name, i in symbols.items()}
    if symbols:
        clamps = _clamps(light, runs[0][1], runs[1][1])
        if clamps is None or (clamps and not _values_follow(light, clamps, runs[0][0], runs[1][0], small,
                                                            (runs[0][1], runs[1][1]), (values[0], values[1]))):
            # The check: partial (small sizes may not fit every model), what it knows must agree.
            runs.append((small, _concrete(light, small, partial=True) or {}))
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


def _clamps(model: onnx.ModelProto, a: Known, b: Known) -> list[onnx.NodeProto] | None:
    """Where a dim of ``model`` could depend on a symbol and yet look static (or ``k * S``) at both probe sizes,
    ``a`` and ``b`` being the two runs: through a clamp, the only way a size stops showing (a function of the sizes
    read through shapes alone is linear or rounded: it differs between two sizes far apart). The nodes of
    ``_CLAMPS`` reading shape arithmetic (a small value, or a tensor the runs did not type), for
    ``_values_follow`` to check; or None when a Slice could clamp (computed bounds, or an axis whose size differs
    between the runs cut to the same size in both: ``x[:, :64]`` of S), which only the checking run can check.
    Neither: the checking run could only agree, and is spared."""
    constant = {t.name for t in model.graph.initializer}
    constant.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    # A graph input's values are data: nothing the probe (or ONNX's data propagation) derives a dim from.
    inputs = {vi.name for vi in model.graph.input} - constant
    found = []
    for node in model.graph.node:
        if node.op_type in _CLAMPS and any(i and i not in inputs and (i not in a or _small_value(a[i]))
                                           for i in node.input):
            found.append(node)
        if node.op_type == "Slice":
            sliced, out = node.input[0], node.output[0]
            if any(i and i not in constant for i in node.input[1:]) or not all(t in r for t in (sliced, out)
                                                                                 for r in (a, b)):
                return None
            dims = (a[sliced][1], b[sliced][1], a[out][1], b[out][1])
            if len(set(map(len, dims))) != 1 or any(da != db and oa == ob for da, db, oa, ob in zip(*dims)):
                return None
    return found


def _values_follow(model: onnx.ModelProto, clamps: list[onnx.NodeProto], sizes_a: dict[str, int],
                   sizes_b: dict[str, int], small: dict[str, int], runs: tuple[Known, Known],
                   values: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> bool:
    """Whether each of ``clamps`` computes at the ``small`` sizes what the two runs (their sizes, their shapes and
    evaluated values) say: every element equal in both the same, every element ``k`` times a symbol's size in both
    ``k`` times its small size. Then no clamp acts between the small sizes and the large ones either, and the
    checking run would agree. Only the shape arithmetic is evaluated at the small sizes, reading each tensor's
    shape as the runs say it is there (by induction in graph order: what no clamp acts on is static or ``k * S``
    at every size, as the two runs alone already assume); a clamp it does not reach, or an element of another
    kind, is False, and the checking run decides."""
    graph = model.graph
    known: Known = {}
    for name, (elem, dims_a) in runs[0].items():
        other = runs[1].get(name)
        if other is not None and len(other[1]) == len(dims_a):
            dims = [_extrapolated(x, y, sizes_a, sizes_b, small) for x, y in zip(dims_a, other[1])]
            if None not in dims:
                known[name] = (elem, tuple(dims))
    for vi in graph.input:
        dims = vi.type.tensor_type.shape.dim
        known[vi.name] = (vi.type.tensor_type.elem_type,
                          tuple(d.dim_value if d.HasField("dim_value") else small[d.dim_param] for d in dims))
    ours: dict[str, np.ndarray] = {}
    _initializers(graph, known, ours)
    for node in graph.node:
        if node.op_type not in EVALUATED or not node.output or not node.output[0]:
            continue
        try:
            value = evaluate(node, ours, known)
        except Exception:  # noqa: BLE001 - malformed at these sizes: left out
            continue
        if value is not None and np.size(value) <= _MAX_VALUE_ELEMENTS:
            ours[node.output[0]] = np.asarray(value)
    for node in clamps:
        out = node.output[0]
        if any(out not in v for v in (ours, *values)):
            return False
        x, y, z = (np.asarray(v[out]) for v in (*values, ours))
        if not x.shape == y.shape == z.shape:
            return False
        for p, q, r in zip(x.reshape(-1).tolist(), y.reshape(-1).tolist(), z.reshape(-1).tolist()):
            if _extrapolated(p, q, sizes_a, sizes_b, small) != r:
                return False
    return True


def _extrapolated(p, q, sizes_a: dict[str, int], sizes_b: dict[str, int], small: dict[str, int]):
    """What a dim or value that is ``p`` at ``sizes_a`` and ``q`` at ``sizes_b`` is at ``small``, as ``_merged``
    names it: the same when equal, ``k`` times a symbol's size when it is that in both; None otherwise."""
    if p == q:
        return p
    if type(p) is not int or type(q) is not int:  # bools and floats: equal or nothing
        return None
    sym = _multiple_of(p, q, sizes_a, sizes_b)
    return None if sym is None else p // sizes_a[sym] * small[sym]


def _multiple_of(p: int, q: int, sizes_a: dict[str, int], sizes_b: dict[str, int]) -> str | None:
    """The symbol whose size ``p`` and ``q`` are the same multiple of at ``sizes_a`` and ``sizes_b``, if any."""
    return next((s for s in sizes_a if p % sizes_a[s] == 0 and q % sizes_b[s] == 0
                 and p // sizes_a[s] == q // sizes_b[s]), None)


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


def _concrete(model: onnx.ModelProto, sizes: dict[str, int], partial: bool = False,
              values: dict[str, np.ndarray] | None = None) -> Known | None:
    """Every node output's element type and dims at these sizes, or None when some stays unknown. ``partial``:
    whatever is known, a node ONNX cannot infer (or an inconsistent whole) leaving its outputs unknown.
    ``values``: filled with the shape arithmetic evaluated on the way (tensor -> small array)."""
    values = {} if values is None else values
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
    _initializers(g, known, values)  # ``values``: evaluated small tensors (shape arithmetic)
    for init in g.initializer:
        types.setdefault(init.name, onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims)))
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
        if outputs and node.op_type in EVALUATED and outputs[0] in known and _small_value(known[outputs[0]]):
            try:
                value = evaluate(node, values, known)
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


def _initializers(graph: onnx.GraphProto, known: Known, values: dict[str, np.ndarray]) -> None:
    """Each initializer of ``graph`` into ``known``, and the value of each that is shape arithmetic into
    ``values``."""
    for init in graph.initializer:
        known[init.name] = (init.data_type, tuple(init.dims))
        if _small_value(known[init.name]) and not init.external_data:
            values[init.name] = numpy_helper.to_array(init)


def _learn(known: Known, name: str, t: onnx.TypeProto) -> None:
    """Record ``t`` when it is a tensor type with an element type and every dim a number."""
    if t.HasField("tensor_type") and t.tensor_type.elem_type and t.tensor_type.HasField("shape"):
        dims = t.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            known[name] = (t.tensor_type.elem_type, tuple(d.dim_value for d in dims))


def _small_value(typed: tuple[int, tuple[int, ...]]) -> bool:
    return typed[0] in _VALUE_TYPES and math.prod(typed[1]) <= _MAX_VALUE_ELEMENTS


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
            sym = None if da == db else _multiple_of(da, db, sizes_a, sizes_b)
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
