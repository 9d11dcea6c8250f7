"""``fold_constants``: fast native simplification: constant and shape folding, no-op removal."""
from __future__ import annotations

from collections import Counter
from dataclasses import field

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.ir import const_value, ensure_shapes, replace_uses
from graphopt.pass_infra import Pass, PassResult, register_pass

__all__ = ["FoldConstants", "remove_noops"]


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


def _noop_reason(node: gs.Node) -> str | None:
    """Why ``node`` computes its input unchanged, or None."""
    if node.op == "Identity":
        return "Identity"
    x, y = node.inputs[0] if node.inputs else None, node.outputs[0] if node.outputs else None
    if x is None or y is None:
        return None
    if node.op == "Cast" and x.dtype is not None and "to" in node.attrs \
            and np.dtype(x.dtype) == _onnx_to_np(node.attrs["to"]):
        return "Cast to the same dtype"
    if node.op == "Reshape" and len(node.inputs) == 2:
        target = const_value(node.inputs[1])
        if target is not None and _static(x.shape) and list(x.shape) == [int(d) for d in target.reshape(-1)]:
            return "Reshape to the same shape"
    if node.op in ("Squeeze", "Unsqueeze") and len(node.inputs) == 2:
        axes = const_value(node.inputs[1])
        if axes is not None and axes.size == 0:
            return f"{node.op} of no axes"
    return None


def _onnx_to_np(onnx_dtype: int) -> np.dtype:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(onnx_dtype)))


def remove_noops(graph: gs.Graph) -> Counter:
    """Bypass nodes that return their input unchanged (graph outputs keep their producer, so their names stay)."""
    removed: Counter = Counter()
    for node in list(graph.nodes):
        if not node.outputs or node.outputs[0] in graph.outputs or not node.inputs:
            continue
        reason = _noop_reason(node)
        if reason is None:
            continue
        replace_uses(node.outputs[0], node.inputs[0])
        node.outputs.clear()
        removed[reason] += 1
    return removed


@register_pass("fold_constants")
class FoldConstants(Pass):
    """Fold every node whose inputs are all constant into its value, and drop no-op nodes.

    Folding evaluates constant subgraphs with onnxruntime (onnx-graphsurgeon's ``fold_constants``); with
    ``fold_shapes`` it also folds shape arithmetic (Shape -> Gather -> Unsqueeze -> Concat) wherever the shapes
    involved are static, so a fixed-shape model loses its shape subgraphs while a dynamic batch keeps the parts
    that depend on it; with ``infer_shapes`` (default) shapes are inferred first (onnxruntime's symbolic inference,
    symbolic dims kept), which is what lets shape arithmetic deep in the graph fold. No-ops removed: Identity, Cast
    to the dtype it already has, Reshape to the shape it already has, Squeeze/Unsqueeze of no axes. Exact: folded
    values are what the nodes would compute. A fast alternative to ``simplify`` (onnxsim) for the common cases.
    """

    fold_shapes: bool = field(default=True, metadata={"help": "also fold Shape-based arithmetic with static shapes"})
    infer_shapes: bool = field(default=True, metadata={
        "help": "infer shapes first (symbolic dims kept), so shape arithmetic on static dims folds everywhere"})
    remove_noops: bool = field(default=True, metadata={"help": "bypass Identity / same-dtype Cast / same-shape Reshape"})

    def run(self, graph: gs.Graph) -> PassResult:
        import onnxruntime as ort

        nodes_before = len(graph.nodes)
        if self.fold_shapes and self.infer_shapes:
            ensure_shapes(graph, [t for t in graph.tensors().values() if isinstance(t, gs.Variable)])
        # onnx-graphsurgeon folds through onnxruntime sessions whose optimizer warnings would reach the user
        # (onnxruntime has no getter for the level: back to its default, warnings, afterwards).
        ort.set_default_logger_severity(3)
        try:
            graph.fold_constants(fold_shapes=self.fold_shapes, error_ok=True)
        finally:
            ort.set_default_logger_severity(2)
        graph.cleanup()
        folded = nodes_before - len(graph.nodes)
        removed = remove_noops(graph) if self.remove_noops else Counter()
        if removed:
            graph.cleanup()
        return PassResult(folded > 0 or bool(removed), {"nodes_before": nodes_before, "nodes_after": len(graph.nodes),
                                                        "folded": folded, "noops_removed": dict(removed)})
