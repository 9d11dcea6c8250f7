"""``merge_slices``: two Slices in a row become one."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, producer
from graphopt.core.pass_infra import PassResult, register_pass
from graphopt.core.rules import Match, NodeBuilder, RewritePass
from graphopt.core.shape_arith import slice_range

from ._graph_edits import kept_names, merge_to_fixed_point, static_dim

__all__ = ["MergeSlices", "compose_slices"]

INT64_MIN = -(2**63)
_RANK_UNKNOWN = "negative axes, rank unknown"
_DIM_UNKNOWN = "both slice axis {axis}, of unknown size"
_PARAMS = ("starts", "ends", "axes", "steps")


def compose_slices(d: int, first: tuple[int, int, int], second: tuple[int, int, int]) -> tuple[int, int, int]:
    """(start, end, step) of one Slice along a dim of size ``d`` taking what ``second`` takes of what ``first``
    takes, with ONNX's clamping of each (``shape_arith.slice_range``). The k-th index taken is
    ``r0[r1[k]] = start0' + (start1' + k step1) step0``: start ``r0[r1[0]]``, step ``step0 step1``, the same count.
    An end before index 0 stepping backwards is written INT64_MIN (a negative end otherwise counts from the end)."""
    r0 = slice_range(d, *first)
    r1 = slice_range(len(r0), *second)
    if not r1:
        return 0, 0, 1
    start, step = r0[r1[0]], r0.step * r1.step
    end = start + len(r1) * step
    merged = (start, INT64_MIN if end < 0 else end, step)
    assert slice_range(d, *merged) == range(start, end, step), (d, first, second)  # the indices, not the bounds
    return merged


def _params(node: gs.Node) -> dict[str, np.ndarray | None] | str:
    """The constant starts, ends, axes and steps of a Slice (None where absent), or why they are not known."""
    values = {}
    for i, key in enumerate(_PARAMS):
        t = node.inputs[i + 1] if i + 1 < len(node.inputs) else None
        if t is None or (isinstance(t, gs.Variable) and t.is_empty()):
            values[key] = None
            continue
        values[key] = const_value(t)
        if values[key] is None:
            return f"{key} computed"
    if values["starts"] is None or values["ends"] is None:
        return "starts or ends missing"
    n = values["starts"].size
    values["axes"] = np.arange(n) if values["axes"] is None else values["axes"]
    values["steps"] = np.ones(n, np.int64) if values["steps"] is None else values["steps"]
    if any(values[k].size != n for k in _PARAMS):
        return "starts, ends, axes and steps of different lengths"
    return {k: [int(v) for v in values[k].reshape(-1)] for k in _PARAMS}


def _merge(x: gs.Tensor, inner: gs.Node, outer: gs.Node) -> tuple[list[int], ...] | str:
    """The starts, ends, axes and steps of one Slice of ``x`` equal to ``outer(inner(x))``, or why not known."""
    slices = []
    for node in (inner, outer):
        params = _params(node)
        if isinstance(params, str):
            return params
        slices.append(params)
    rank = None if x.shape is None else len(x.shape)
    per_axis: list[dict[int, tuple[int, int, int]]] = []
    for p in slices:
        if any(a < 0 for a in p["axes"]) and rank is None:
            return _RANK_UNKNOWN
        axes = [a % rank if rank else a for a in p["axes"]]
        if len(set(axes)) != len(axes) or 0 in p["steps"]:
            return "repeated axis or zero step"
        per_axis.append({a: (s, e, st) for a, s, e, st in zip(axes, p["starts"], p["ends"], p["steps"])})
    merged = dict(per_axis[0])
    for axis, second in per_axis[1].items():
        if axis not in merged:
            merged[axis] = second
            continue
        d = static_dim(x, axis)
        if d is None:
            return _DIM_UNKNOWN.format(axis=axis)
        merged[axis] = compose_slices(d, merged[axis], second)
    axes = sorted(merged)
    return ([merged[a][0] for a in axes], [merged[a][1] for a in axes], axes, [merged[a][2] for a in axes])


def _wants_shape(x: gs.Tensor, inner: gs.Node, outer: gs.Node) -> bool:
    why = _merge(x, inner, outer)
    return isinstance(why, str) and (why == _RANK_UNKNOWN or why.startswith(_DIM_UNKNOWN.split("{")[0]))


def _pattern(n_inner: int, n_outer: int):
    """Slice of a Slice, with 3 to 5 inputs each (axes and steps are optional)."""
    def pattern(op, x, s0, e0, a0, st0, s1, e1, a1, st1):
        inner = op.Slice(x, *(s0, e0, a0, st0)[:n_inner - 1])
        return op.Slice(inner, *(s1, e1, a1, st1)[:n_outer - 1])
    return pattern


@register_pass("merge_slices")
class MergeSlices(RewritePass):
    """``Slice(Slice(x, s0, e0, a0, st0), s1, e1, a1, st1)`` -> one ``Slice(x, ...)``: on disjoint axes (negative
    ones normalised with the rank) the two parameter lists joined; on an axis both slice, composed exactly from
    the dim's size (ONNX clamps each slice's start and end to the dim it sees, so the composition needs it): the
    k-th element taken is ``r0[r1[k]]``, an arithmetic progression with step ``st0 * st1``. Needs constant
    parameters (opset >= 10: they are inputs), the first Slice read by the second alone (counted in ``skipped``
    when not). Exact: data is only copied.

    Why: one strided copy instead of two. msit's MergeConsecutiveSlice knowledge: "these consecutive Slice ops
    can be merged into one to speed up inference"; it needs non-negative axes and a single consumer, and never
    merges a shared axis. onnxslim's ``EliminationSlice`` compares axes before normalising them (-1 and 3 of a
    rank-4 tensor pass as disjoint): not here. Sources: msit ``knowledge_merge_consecutive_slice.py``; onnxslim
    ``onnxslim/core/pattern/elimination/slice.py``; onnxscript ``_collapse_slices.py``.
    """

    library = True
    count_misses = False  # a Slice after anything but a Slice is no candidate
    patterns = tuple(_pattern(a, b) for a in (5, 4, 3) for b in (5, 4, 3))

    def prepare(self, graph: gs.Graph) -> None:
        # Shapes are inferred only for pairs that need the rank (negative axes) or a dim (a shared axis).
        sources = [p.inputs[0] for n in graph.nodes if n.op == "Slice" and len(n.inputs) >= 3
                   and (p := producer(n.inputs[0])) is not None and p.op == "Slice" and len(p.inputs) >= 3
                   and p.inputs[0].shape is None and _wants_shape(p.inputs[0], p, n)]
        ensure_shapes(graph, sources)

    def check(self, ctx: Match, x: gs.Tensor, **params) -> str | None:
        merged = _merge(x, producer(ctx.root.inputs[0]), ctx.root)
        return merged if isinstance(merged, str) else None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, **params) -> gs.Tensor:
        merged = _merge(x, producer(ctx.root.inputs[0]), ctx.root)
        base = ctx.root.name or "slice"
        consts = [gs.Constant(make_name(ctx.graph, f"{base}_{key}"), np.array(v, np.int64))
                  for key, v in zip(_PARAMS, merged)]
        return op.Slice(x, *consts)

    def run(self, graph: gs.Graph) -> PassResult:
        result, skipped = merge_to_fixed_point(self, graph, "Slice", kept_names(graph))
        return PassResult(result.changed, {"rewritten": result.stats["rewritten"], "skipped": skipped})
