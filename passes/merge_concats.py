"""``merge_concats``: a Concat whose input is another Concat on the same axis takes that Concat's inputs."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt.core.pass_infra import PassResult, register_pass
from graphopt.core.rules import Match, NodeBuilder, RewritePass

from ._graph_edits import kept_names, to_fixed_point

__all__ = ["MergeConcats"]


def _rank(tensors) -> int | None:
    return next((len(t.shape) for t in tensors if t.shape is not None), None)


@register_pass("merge_concats")
class MergeConcats(RewritePass):
    """``Concat(a, Concat(b, c, axis=k), d, axis=k)`` -> ``Concat(a, b, c, d, axis=k)``: concatenation along one
    axis is associative, so the inner inputs take the inner Concat's place, in order. Applies when both axes are
    the same after normalising negative ones (with the rank when only one is negative) and the inner Concat is
    read once, by the outer one, and is no graph output (else it is computed anyway: counted in ``skipped``).
    Exact: data is only copied.

    Why: one memory-copy kernel instead of several. msit's MergeConsecutiveConcat knowledge: "when the Concats
    join on the same axis, merging the consecutive Concats into one speeds up inference"; ATC's Concat memory
    optimisations (ConvConcatFusionPass, "removes the cost of executing the Concat task") get one clean target.
    Sources: msit ``knowledge_merge_consecutive_concat.py``; onnxslim ``EliminationConcat``.
    """

    library = True
    count_misses = False  # a Concat without a Concat among its inputs is no candidate

    def pattern(self, op):
        inner = op.Concat(_other_inputs=True, axis=op.attr("inner_axis"))
        return op.Concat(inner, _other_inputs=True, axis=op.attr("axis"))

    def _inner(self, ctx: Match) -> gs.Node:
        return next(n for n in ctx.nodes if n is not ctx.root)

    def check(self, ctx: Match, inner_axis: int | None, axis: int | None) -> str | None:
        if inner_axis is None or axis is None:
            return "Concat without an axis (opset < 4)"
        if inner_axis == axis:
            return None
        if (inner_axis < 0) == (axis < 0):
            return "inner Concat on another axis"
        rank = _rank([*self._inner(ctx).inputs, *ctx.root.inputs, *ctx.root.outputs])
        if rank is None:
            return "axes differ in sign, rank unknown"
        return "inner Concat on another axis" if (inner_axis - axis) % rank else None

    def rewrite(self, op: NodeBuilder, ctx: Match, inner_axis: int, axis: int) -> gs.Tensor:
        inner = self._inner(ctx)
        inputs = []
        for t in ctx.root.inputs:
            inputs.extend(inner.inputs if t is inner.outputs[0] else [t])
        return op.Concat(*inputs, **ctx.root.attrs)

    def run(self, graph: gs.Graph) -> PassResult:
        result = to_fixed_point(lambda: RewritePass.run(self, graph), graph)
        kept = kept_names(graph)
        shared = sum(1 for n in graph.nodes if n.op == "Concat" for t in {id(t): t for t in n.inputs}.values()
                     if t.inputs and t.inputs[0].op == "Concat" and (id(t) in kept or len(t.outputs) > 1))
        skipped = dict(result.stats["skipped"])
        if shared:
            skipped["inner Concat read elsewhere or twice"] = shared
        return PassResult(result.changed, {"rewritten": result.stats["rewritten"], "skipped": skipped})
