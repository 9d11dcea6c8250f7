"""``merge_reshapes``: ``Reshape(Reshape(x, s1), s2)`` becomes one Reshape of ``x``."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, make_name
from graphopt.core.pass_infra import PassResult, register_pass
from graphopt.core.rules import Match, NodeBuilder, RewritePass

from ._graph_edits import kept_names, merge_to_fixed_point, static_dim

__all__ = ["MergeReshapes", "merged_target"]


def merged_target(s1: np.ndarray | None, s2: np.ndarray, allowzero1: int, allowzero2: int,
                  mid: gs.Tensor) -> np.ndarray | str:
    """The target of one Reshape of ``x`` equal to ``Reshape(Reshape(x, s1), s2)``, or why there is none.

    Only a 0 of ``s2`` read without ``allowzero`` depends on the first Reshape: it copies the intermediate dim at its
    position. That dim is ``s1``'s entry when positive, a literal 0 under the first ``allowzero`` (not expressible:
    refused), ``x``'s own dim when ``s1`` copies it too (the 0 stays: the merged Reshape copies the same dim), or
    the intermediate tensor's known dim (an inferred ``-1``). A -1 of ``s2`` infers from the element count, which
    both Reshapes keep."""
    target = s2.astype(np.int64).reshape(-1).copy()
    if allowzero2:
        return target
    for i in np.flatnonzero(target == 0):
        first = None if s1 is None or i >= s1.size else int(s1.reshape(-1)[i])
        if first is not None and first > 0:
            target[i] = first
        elif first == 0 and not allowzero1:
            continue  # both copy dim i of x
        elif (d := static_dim(mid, int(i))) is not None and d > 0:
            target[i] = d
        else:
            return f"0 in the second target copies intermediate dim {i}, which is not known"
    return target


@register_pass("merge_reshapes")
class MergeReshapes(RewritePass):
    """``Reshape(Reshape(x, s1), s2)`` -> ``Reshape(x, s2')``: a Reshape only relabels the row-major element order,
    so the second one decides the result alone; ``s2' = s2`` except where ``s2`` has a 0 read without ``allowzero``
    (copy the intermediate dim), which becomes that dim (``s1``'s positive entry, or the intermediate's known dim)
    or stays 0 where ``s1`` copied ``x``'s dim at the same place. Needs a constant ``s2`` (``s1`` may be computed
    unless a 0 of ``s2`` needs it), the opset-5 form (targets as inputs), the first Reshape read by the second
    alone. The second Reshape's ``allowzero`` is kept. Exact: no arithmetic.

    Why: one Reshape instead of two (onnxruntime and ATC treat it as a view, but chains of shape ops split fusions
    and format decisions, and one constant target is what ATC's static shape inference wants). Sources:
    onnxscript ``ReshapeReshape`` (``rewriter/rules/common/_basic_rules.py``); onnxslim ``EliminationReshape``
    keeps ``s2``'s 0s unresolved against the first Reshape's input, which differs from the intermediate: not here.
    """

    library = True
    count_misses = False  # a Reshape after anything but a Reshape is no candidate

    def pattern(self, op, x, s1, s2):
        return op.Reshape(op.Reshape(x, s1, allowzero=op.attr("z1")), s2, allowzero=op.attr("z2"))

    def check(self, ctx: Match, x: gs.Tensor, s1: gs.Tensor, s2: gs.Tensor, z1, z2) -> str | None:
        target = const_value(s2)
        if target is None:
            return "second target is computed"
        merged = merged_target(const_value(s1), target, int(z1 or 0), int(z2 or 0), ctx.root.inputs[0])
        return merged if isinstance(merged, str) else None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, s1: gs.Tensor, s2: gs.Tensor, z1,
                z2) -> gs.Tensor:
        target = const_value(s2)
        merged = merged_target(const_value(s1), target, int(z1 or 0), int(z2 or 0), ctx.root.inputs[0])
        if not np.array_equal(merged, target.reshape(-1)):
            s2 = gs.Constant(make_name(ctx.graph, f"{ctx.root.name or 'reshape'}_target"), merged)
        return op.Reshape(x, s2, **ctx.root.attrs)

    def run(self, graph: gs.Graph) -> PassResult:
        result, skipped = merge_to_fixed_point(self, graph, "Reshape", kept_names(graph))
        return PassResult(result.changed, {"rewritten": result.stats["rewritten"], "skipped": skipped})
