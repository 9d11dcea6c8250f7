"""``infer_shapes``: annotate every tensor with its inferred shape and type (symbolic dims kept)."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt.core.ir import inferred_types
from graphopt.core.pass_infra import Pass, PassResult, register_pass

__all__ = ["InferShapes"]


def _known(graph: gs.Graph) -> int:
    return sum(1 for t in graph.tensors().values() if isinstance(t, gs.Variable) and t.shape is not None)


@register_pass("infer_shapes")
class InferShapes(Pass):
    """Infer every tensor's shape and type (symbolic dims kept) and keep them on the graph.

    Changes no computation: only value_info annotations, which later passes and ATC use. ``changed`` is true
    when inference added shapes the graph did not have. The graph's inputs keep their declared types, its outputs
    their declared dims (``ir.infer_shapes`` fills in only what an output leaves unknown).
    """

    def run(self, graph: gs.Graph) -> PassResult:
        before = _known(graph)
        # Shapes copied onto the graph's own tensors (the graph is not replaced by the inferred copy, whose
        # weights are data-less stand-ins).
        inferred = inferred_types(graph)
        inputs = {id(t) for t in graph.inputs}  # the model's interface: declared, never rewritten
        for name, t in graph.tensors().items():
            shape, dtype = inferred.get(name, (None, None))
            if isinstance(t, gs.Variable) and shape is not None and id(t) not in inputs:
                t.shape, t.dtype = shape, dtype if dtype is not None else t.dtype
        after = _known(graph)
        return PassResult(after > before, {"shaped_tensors_before": before, "shaped_tensors_after": after})
