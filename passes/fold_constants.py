"""``fold_constants``: fast native simplification: constant and shape folding, constant Reshape targets for a
dynamic batch, no-op removal."""
from __future__ import annotations

from collections import Counter
from dataclasses import field

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.ir import const_value, ensure_shapes, make_name, producer, replace_uses
from graphopt.pass_infra import Pass, PassResult, register_pass

__all__ = ["FoldConstants", "remove_noops", "shape_elements", "constant_reshape_targets"]


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


def _int_list(t: gs.Tensor) -> list[int] | None:
    v = const_value(t)
    return None if v is None or v.dtype.kind not in "iu" else [int(x) for x in v.reshape(-1)]


def shape_elements(t: gs.Tensor) -> list[int | str] | None:
    """The value of a 1-D shape tensor computed from ``Shape`` ops, element by element: an int where it is known,
    the symbol of the dim it copies (``"batch"``) where it is not; None when it is anything else (a value
    computed by arithmetic, a dim of unknown shape). Follows Shape, Gather and Slice with constant indices,
    Concat, Unsqueeze, Squeeze, Identity and Cast."""
    known = _int_list(t)
    if known is not None:
        return known
    node = producer(t)
    if node is None or not node.inputs:
        return None
    if node.op == "Shape":
        shape = node.inputs[0].shape
        if shape is None or any(d is None or (isinstance(d, str) and not d) for d in shape):
            return None
        dims = [d if isinstance(d, str) else int(d) for d in shape]
        start, end = node.attrs.get("start", 0), node.attrs.get("end", len(dims))
        return dims[start:end]
    if node.op in ("Unsqueeze", "Squeeze", "Identity", "Cast"):
        return shape_elements(node.inputs[0])
    if node.op == "Concat":
        parts = [shape_elements(i) for i in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    data = shape_elements(node.inputs[0])
    if data is None:
        return None
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0 and len(node.inputs) == 2:
        idx = _int_list(node.inputs[1])
        if idx is None or any(not -len(data) <= i < len(data) for i in idx):
            return None
        return [data[i] for i in idx]
    if node.op == "Slice" and len(node.inputs) >= 3:
        starts, ends = _int_list(node.inputs[1]), _int_list(node.inputs[2])
        axes = _int_list(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else [0]
        steps = _int_list(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else [1]
        if None in (starts, ends, axes, steps) or len(starts) != 1 or axes not in ([0], [-1]) or steps[0] == 0:
            return None
        return data[slice(starts[0], ends[0], steps[0])]
    return None


def constant_reshape_targets(graph: gs.Graph) -> tuple[int, Counter]:
    """Give each Reshape whose target is computed from ``Shape`` ops a constant target: known dims as numbers, a
    dim that copies the reshaped tensor's own dim at the same position (a dynamic batch) as 0, which Reshape
    reads as "keep this dim" (``allowzero`` 0). Exact whenever the shapes are; the dead Shape arithmetic goes at
    the next cleanup. Returns (targets made constant, reasons others were left)."""
    done, left = 0, Counter()
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) != 2 or _int_list(node.inputs[1]) is not None:
            continue
        if node.attrs.get("allowzero", 0):
            left["allowzero=1: 0 would mean a zero dim"] += 1
            continue
        elements, data_shape = shape_elements(node.inputs[1]), node.inputs[0].shape
        if elements is None:
            left["target is not shape arithmetic"] += 1
            continue
        target = []
        for i, e in enumerate(elements):
            if isinstance(e, int):
                target.append(e)
            elif data_shape is not None and i < len(data_shape) and data_shape[i] == e:
                target.append(0)
            else:
                break
        if len(target) != len(elements):
            left["a dynamic dim that is not the input's at the same position"] += 1
            continue
        const = gs.Constant(make_name(graph, f"{node.name or 'reshape'}_target"), np.array(target, dtype=np.int64))
        node.inputs[1] = const
        done += 1
    return done, left


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
    that depend on it; with ``infer_shapes`` (default) shapes are inferred first (``ir.infer_shapes``: probing,
    else onnxruntime's symbolic inference; symbolic dims kept), which is what lets shape arithmetic deep in the
    graph fold. No-ops removed: Identity, Cast to the dtype it already has, Reshape to the shape it already has,
    Squeeze/Unsqueeze of no axes. Exact: folded values are what the nodes would compute. With ``reshape_targets`` a
    Reshape target that stays computed only because of a dynamic batch becomes a constant with 0 for the batch
    (Reshape's "copy this dim"), as onnxslim does and onnxsim does not. A fast alternative to ``simplify``
    (onnxsim) for the common cases.
    """

    fold_shapes: bool = field(default=True, metadata={"help": "also fold Shape-based arithmetic with static shapes"})
    infer_shapes: bool = field(default=True, metadata={
        "help": "infer shapes first (symbolic dims kept), so shape arithmetic on static dims folds everywhere"})
    remove_noops: bool = field(default=True, metadata={"help": "bypass Identity / same-dtype Cast / same-shape Reshape"})
    reshape_targets: bool = field(default=True, metadata={
        "help": "constant Reshape targets where only a dynamic batch kept them computed (the batch as 0)"})

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
        reshaped, left = constant_reshape_targets(graph) if self.fold_shapes and self.reshape_targets \
            else (0, Counter())
        graph.cleanup()
        folded = nodes_before - len(graph.nodes)
        removed = remove_noops(graph) if self.remove_noops else Counter()
        if removed:
            graph.cleanup()
        stats = {"nodes_before": nodes_before, "nodes_after": len(graph.nodes), "folded": folded,
                 "noops_removed": dict(removed)}
        if reshaped or left:
            stats["reshape_targets"] = {"constant": reshaped, "left": dict(left)}
        return PassResult(folded > 0 or bool(removed) or bool(reshaped), stats)
