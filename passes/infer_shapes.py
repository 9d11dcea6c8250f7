"""``infer_shapes``: annotate every tensor with its inferred shape and type (symbolic dims kept)."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt.ir import infer_shapes, shape_model, to_graph
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
        # Shapes copied onto the graph's own tensors (the graph is not replaced by the inferred copy): a large
        # model's weights are neither copied nor swapped for shape_model's data-less stand-ins.
        inferred = to_graph(infer_shapes(shape_model(graph))).tensors()
        for name, t in graph.tensors().items():
            new = inferred.get(name)
            if isinstance(t, gs.Variable) and isinstance(new, gs.Variable) and new.shape is not None:
                t.shape, t.dtype = new.shape, new.dtype if new.dtype is not None else t.dtype
        after = _known(graph)
        return PassResult(after > before, {"shaped_tensors_before": before, "shaped_tensors_after": after})
