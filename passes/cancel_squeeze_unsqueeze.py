"""``cancel_squeeze_unsqueeze``: a Squeeze and an Unsqueeze of the same axes in a row, which together return their
input, removed."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.pass_infra import PassResult, register_pass
from graphopt.core.rules import Match, NodeBuilder, RewritePass

from graphopt.core.ir import producer

from ._graph_edits import bypass, kept_names, to_fixed_point

__all__ = ["CancelSqueezeUnsqueeze"]


def _squeeze_then_unsqueeze_inputs(op, x):
    return op.Unsqueeze(op.Squeeze(x, op.const("first")), op.const("second"))


def _unsqueeze_then_squeeze_inputs(op, x):
    return op.Squeeze(op.Unsqueeze(x, op.const("first")), op.const("second"))


def _squeeze_then_unsqueeze_attrs(op, x):
    return op.Unsqueeze(op.Squeeze(x, axes=op.attr("first")), axes=op.attr("second"))


def _unsqueeze_then_squeeze_attrs(op, x):
    return op.Squeeze(op.Unsqueeze(x, axes=op.attr("first")), axes=op.attr("second"))


_PAIRED = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}  # second op -> the first op it cancels


def _axes(value) -> list[int] | None:
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.ndim > 1:
        return None
    return [int(v) for v in array.reshape(-1)]


def same_axes(first: list[int], second: list[int], rank: int | None) -> bool:
    """Whether two axes lists name the same axes of one tensor of ``rank`` dims (None: unknown). The pair's two
    lists index the same tensor (the Squeeze's input, which is the Unsqueeze's output; or the Unsqueeze's output,
    which is the Squeeze's input), so equal lists match at any rank; a negative axis and its positive twin need the
    rank."""
    if len(set(first)) != len(first) or len(set(second)) != len(second):
        return False  # a repeated axis is an invalid model: left to the checker
    if sorted(first) == sorted(second):
        return True
    if rank is None:
        return False
    norm = [sorted(a + rank if a < 0 else a for a in axes) for axes in (first, second)]
    return norm[0] == norm[1] and all(0 <= a < rank for a in norm[0])


@register_pass("cancel_squeeze_unsqueeze")
class CancelSqueezeUnsqueeze(RewritePass):
    """``Unsqueeze(Squeeze(x, a), a)`` and ``Squeeze(Unsqueeze(x, a), a)`` -> ``x``: the pair returns its input
    (Squeeze removes dims of size 1, which Unsqueeze puts back where they were; or the other way round).

    Applies where both give their axes (as an attribute before opset 13, a constant input from it on) and these
    name the same axes; a Squeeze without axes (every dim of size 1) is left, since which dims those are can change
    with the input. The first node must be read by the second alone (counted in ``skipped`` otherwise). A graph
    output keeps its name through an Identity. Exact: both only reshape.

    Why: ``conv1d_to_conv2d`` leaves one such pair between every two chained 1-D convolutions (Squeeze back to 3-D,
    Unsqueeze to 4-D again), and exporters write them around ops that need another rank; each is a reshape kernel
    launch on the NPU. Sources: onnxscript ``SqueezeUnsqueeze`` (``rewriter/rules/common/_basic_rules.py``),
    onnxslim's unsqueeze / squeeze eliminations.
    """

    library = True
    count_misses = False  # a Squeeze after anything but an Unsqueeze (and back) is no candidate
    patterns = (_squeeze_then_unsqueeze_inputs, _unsqueeze_then_squeeze_inputs, _squeeze_then_unsqueeze_attrs,
                _unsqueeze_then_squeeze_attrs)

    def check(self, ctx: Match, x: gs.Tensor, first=None, second=None) -> str | None:
        a, b = _axes(first), _axes(second)
        if a is None or b is None:
            return "axes not given or not constant"
        # Both lists index one tensor: the Squeeze's input (x, shaped like the result), or the Unsqueeze's output.
        y = ctx.root.outputs[0]
        extra = len(a) if ctx.root.op == "Squeeze" else 0
        rank = len(x.shape) + extra if x.shape is not None else len(y.shape) + extra if y.shape is not None else None
        if not same_axes(a, b, rank):
            return "different axes"
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, first=None, second=None) -> gs.Tensor | None:
        bypass(ctx.root, x, self._kept, self._renamed)
        return None

    def run(self, graph: gs.Graph) -> PassResult:
        self._kept, self._renamed = kept_names(graph), {}
        result = to_fixed_point(lambda: RewritePass.run(self, graph), graph)
        skipped = dict(result.stats["skipped"])
        if shared := self._shared_pairs(graph):
            skipped["first node read elsewhere"] = shared
        return PassResult(result.changed, {"rewritten": result.stats["rewritten"], "skipped": skipped},
                          renamed=self._renamed)

    def _shared_pairs(self, graph: gs.Graph) -> int:
        """Pairs left because their first node's output is read by something else too (or is a graph output):
        removing the pair would not remove that node."""
        count = 0
        for node in graph.nodes:
            if node.op not in _PAIRED or not node.inputs or not node.outputs:
                continue
            inner = producer(node.inputs[0])
            if inner is not None and inner.op == _PAIRED[node.op] and inner.outputs[0] is node.inputs[0]:
                t = inner.outputs[0]
                count += id(t) in self._kept or len(t.outputs) > 1
        return count
