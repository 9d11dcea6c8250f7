"""``int64_to_int32_indices``: int64 index arithmetic whose every value provably fits int32, done in int32 with
Casts where it meets the rest of the graph."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name
from graphopt.core.pass_infra import Pass, PassResult, register_pass

from ._node_attrs import attr, is_onnx

__all__ = ["Int64ToInt32Indices", "value_ranges"]

INT32 = (int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max))
ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Min", "Max"})
# Ops whose outputs hold values of their first input (or, for Concat and Where, of their data inputs) only.
MOVES = frozenset({"Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Expand", "Slice",
                   "Gather", "GatherElements", "GatherND", "Tile", "Split", "Concat", "Where"})
# Index-producing ops whose int64 outputs are bounded by a static dim of their input.
INDEX_SOURCES = frozenset({"ArgMax", "ArgMin", "TopK", "NonZero", "Shape", "Size"})
NARROW_INTS = {onnx.TensorProto.INT32: INT32, onnx.TensorProto.INT16: (-(2 ** 15), 2 ** 15 - 1),
               onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
               onnx.TensorProto.UINT16: (0, 2 ** 16 - 1), onnx.TensorProto.BOOL: (0, 1)}
NARROW_DTYPES = {np.dtype(onnx.helper.tensor_dtype_to_np_dtype(k)): v for k, v in NARROW_INTS.items()}

Range = tuple[int, int]


def _fits(r: Range | None) -> bool:
    return r is not None and INT32[0] <= r[0] and r[1] <= INT32[1]


def _arith(op: str, rs: list[Range]) -> Range | None:
    """The range of an arithmetic op's output from its inputs' (broadcasting changes no value)."""
    if op in ("Neg", "Abs"):
        (lo, hi), = rs
        return (-hi, -lo) if op == "Neg" else (0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))
    if len(rs) != 2 and op not in ("Min", "Max"):
        return None
    if op in ("Min", "Max"):
        pick = min if op == "Min" else max
        return pick(r[0] for r in rs), pick(r[1] for r in rs)
    (a, b), (c, d) = rs
    if op == "Add":
        return a + c, b + d
    if op == "Sub":
        return a - d, b - c
    if op == "Mul":
        products = (a * c, a * d, b * c, b * d)
        return min(products), max(products)
    if c <= 0 <= d:  # Div by a range holding 0: no bound
        return None
    bound = max(abs(a), abs(b))  # |x / y| <= |x| when |y| >= 1 (integer division truncates)
    return -bound, bound


def value_ranges(graph: gs.Graph) -> dict[int, Range]:
    """id(tensor) -> (min, max) of every int64 value it can hold, for the int64 tensors whose values are provably
    bounded: constants, indices of static dims (ArgMax, ArgMin, TopK, NonZero, Shape, Size), Casts to int64 from
    narrower ints, and what arithmetic and data movement make of them. Nodes are visited in graph order (ONNX's
    topological order); a value whose producer comes later is unknown, which only makes the analysis miss. Dims
    are read from the tensors' shapes as they are (no inference here)."""
    ranges: dict[int, Range] = {}
    for node in graph.nodes:
        if not is_onnx(node):
            continue
        for t in node.inputs:
            if id(t) in ranges or isinstance(t, gs.Constant) and np.dtype(t.dtype) != np.int64:
                continue  # known, or a weight of another type (not loaded to find out)
            value = const_value(t)
            if value is not None and value.dtype == np.int64 and value.size:
                ranges[id(t)] = (int(value.min()), int(value.max()))
        if node.op in INDEX_SOURCES:
            r = _index_range(node)
            if r is not None:
                ranges[id(node.outputs[-1 if node.op == "TopK" else 0])] = r
            continue
        if node.op == "Cast" and attr(node, "to") == onnx.TensorProto.INT64:
            source = node.inputs[0]
            r = ranges.get(id(source)) or NARROW_DTYPES.get(np.dtype(source.dtype) if source.dtype else None)
            if r is not None:
                ranges[id(node.outputs[0])] = r
            continue
        data = node.inputs[1:] if node.op == "Where" else node.inputs if node.op == "Concat" else node.inputs[:1]
        known = [ranges.get(id(t)) for t in (node.inputs if node.op in ARITHMETIC else data)]
        if not known or any(r is None for r in known):
            continue
        if node.op in ARITHMETIC:
            r = _arith(node.op, known)
        elif node.op in MOVES:
            r = (min(k[0] for k in known), max(k[1] for k in known))
        else:
            continue
        if r is not None:
            for out in node.outputs:
                ranges[id(out)] = r
    return ranges


def _index_range(node: gs.Node) -> Range | None:
    shape = node.inputs[0].shape
    if shape is None:
        return None
    if node.op in ("ArgMax", "ArgMin", "TopK"):  # an index along one axis: that dim alone bounds it
        axis = attr(node, "axis", -1 if node.op == "TopK" else 0)
        dim = shape[axis] if -len(shape) <= axis < len(shape) else None
        return (0, dim - 1) if isinstance(dim, int) and dim > 0 else None
    if node.op == "Shape":
        shape = shape[attr(node, "start", 0):attr(node, "end", len(shape))]
    if not shape or not all(isinstance(d, int) for d in shape):
        return None
    if node.op == "Size":
        return (int(np.prod(shape)),) * 2
    if node.op == "Shape":
        return min(shape), max(shape)
    return (0, max(shape) - 1) if min(shape) > 0 else None  # NonZero: an index along some axis


@register_pass("int64_to_int32_indices")
class Int64ToInt32Indices(Pass):
    """Run int64 arithmetic (Add, Sub, Mul, Div, Neg, Abs, Min, Max) in int32 where every value it reads and
    computes provably fits int32 (``value_ranges``: interval arithmetic from constants and static dims; a graph
    input, a dynamic dim or a data-dependent value bounds nothing, so arithmetic on them stays int64). Connected
    converted ops pass int32 between them; an int64 value entering gets a ``Cast(to=INT32)`` (a constant is
    converted instead), and a result read by anything else (or a graph output, or read inside a subgraph) gets a
    ``Cast(to=INT64)`` under its own name. Exact: integer arithmetic within range gives the same numbers in
    int32 and int64 (division truncates the same way). Only arithmetic is moved; shape ops keep their int64
    operands, as ONNX requires for Reshape / Expand / Tile targets.

    E.g. ``ArgMax(x[N, 1000]) + offset`` before a Gather, or position ids from a static sequence length.

    Why: AI Core kernels take no int64, so int64 arithmetic falls back to AI CPU (CANN PyTorch tuning guide,
    "AI CPU算子转AI CORE"; msprof-analyze's AICPU rules suggest converting). Source: msit
    ``knowledge_type_cast.py`` (KnowledgeTypeCast), which clamps out-of-range constants instead of proving the
    values fit; here nothing is converted without that proof. Each boundary costs a Cast: a lone op gains two,
    so whether it pays is a measurement (``graphopt optimize --gate speed``).
    """

    library = True

    def run(self, graph: gs.Graph) -> PassResult:
        candidates = [n for n in graph.nodes if n.op in ARITHMETIC and is_onnx(n) and len(n.outputs) == 1
                      and any(not isinstance(t, gs.Constant) and const_value(t) is None for t in n.inputs)]
        if not candidates:
            return PassResult(False, {"rewritten": 0, "casts": 0, "skipped": {}})
        ranges = value_ranges(graph)
        unsized = [n.inputs[0] for n in graph.nodes if n.op in INDEX_SOURCES and n.inputs and n.inputs[0].shape is None]
        if unsized and any(_partly_known(n, ranges) for n in candidates):  # static dims may bound the rest
            ensure_shapes(graph, unsized)
            ranges = value_ranges(graph)
        skipped: Counter[str] = Counter()
        chosen: list[gs.Node] = []
        for node in candidates:
            known = [ranges.get(id(t)) for t in node.inputs]
            if not any(r is not None for r in known):
                continue  # not provably int64 arithmetic at all
            if any(r is None for r in known):
                skipped["an operand's range is not provable (graph input, dynamic dim, data)"] += 1
            elif not all(_fits(r) for r in (*known, ranges.get(id(node.outputs[0])))):
                skipped["a value could exceed int32"] += 1
            else:
                chosen.append(node)
        casts = _convert(graph, chosen)
        return PassResult(bool(chosen), {"rewritten": len(chosen), "casts": casts, "skipped": dict(skipped)})


def _partly_known(node: gs.Node, ranges: dict[int, Range]) -> bool:
    known = [id(t) in ranges for t in node.inputs]
    return any(known) and not all(known)


def _convert(graph: gs.Graph, nodes: list[gs.Node]) -> int:
    """Move ``nodes`` to int32; returns the number of Casts inserted."""
    converted = {id(n) for n in nodes}
    twins: dict[int, gs.Tensor] = {}  # id(int64 tensor) -> its int32 counterpart
    outputs = []
    for node in nodes:
        y = node.outputs[0]
        y32 = gs.Variable(make_name(graph, f"{y.name}_int32"), dtype=np.int32, shape=y.shape)
        twins[id(y)] = y32
        outputs.append((y, y32))
        node.outputs[0] = y32
    casts = 0
    for node in nodes:
        for i, t in enumerate(node.inputs):
            if id(t) not in twins:
                value = const_value(t)
                if value is not None:
                    twins[id(t)] = gs.Constant(make_name(graph, f"{t.name}_int32"), value.astype(np.int32))
                else:
                    cast = gs.Variable(make_name(graph, f"{t.name}_int32"), dtype=np.int32, shape=t.shape)
                    graph.nodes.append(gs.Node("Cast", make_name(graph, f"{t.name}_to_int32"),
                                               {"to": onnx.TensorProto.INT32}, [t], [cast]))
                    twins[id(t)] = cast
                    casts += 1
            node.inputs[i] = twins[id(t)]
    for y, y32 in outputs:
        if y in graph.outputs or any(id(c) not in converted for c in y.outputs):
            graph.nodes.append(gs.Node("Cast", make_name(graph, f"{y.name}_to_int64"),
                                       {"to": onnx.TensorProto.INT64}, [y32], [y]))
            casts += 1
    return casts
