"""``infer_shapes``: annotate every tensor with its inferred shape and type (symbolic dims kept)."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt.ir import infer_shapes, replace_graph, to_graph, to_model
from graphopt.pass_infra import Pass, PassResult, register_pass

__all__ = ["InferShapes"]


def _known(graph: gs.Graph) -> int:
    return sum(1 for t in graph.tensors().values() if isinstance(t, gs.Variable) and t.shape is not None)


@register_pass("infer_shapes")
class InferShapes(Pass):
    """Infer every tensor's shape and type (symbolic dims kept) and keep them on the graph.

    Changes no computation: only value_info annotations, which later passes and ATC use. ``changed`` is true
    when inference added shapes the graph did not have.
    """

    def run(self, graph: gs.Graph) -> PassResult:
        before = _known(graph)
        inferred = infer_shapes(to_model(graph))
        replace_graph(graph, to_graph(inferred))
        after = _known(graph)
        return PassResult(after > before, {"shaped_tensors_before": before, "shaped_tensors_after": after})
