"""``gather_to_split``: Gathers of constant indices that together take a tensor apart along one axis, as one
``Split`` (and a ``Squeeze`` per scalar index)."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, opset_of
from graphopt.core.pass_infra import Pass, PassResult, register_pass

from ._node_attrs import attr, ints_value, is_onnx, same_type

__all__ = ["GatherToSplit"]

FIRST_SPLIT_INPUT_OPSET = 13  # Split's sizes and Squeeze's axes: inputs (before: attributes)


@register_pass("gather_to_split")
class GatherToSplit(Pass):
    """``Gather(x, i_k, axis=a)`` for k = 1..n (n >= 2) whose constant indices, each a scalar or a run of
    consecutive ascending indices, tile ``[0, dim_a)`` exactly (each index once, negative ones counted from the
    end) -> ``Split(x, axis=a, split=[len(i_1), ...])``, each piece in index order; a scalar index's piece gets a
    ``Squeeze(axis=a)`` (Gather with a scalar drops the axis). Every Gather output keeps its name. Needs x's
    size along a (shape inference is run when it is not known). Exact: the same elements, copied.

    E.g. ``q, k, v = qkv[0], qkv[1], qkv[2]`` of a ViT attention (``qkv`` of shape ``[3, B, heads, N, d]``).

    Left alone, with the reason in ``stats["skipped"]``: indices that leave part of the axis out or take an
    index twice (a Split would copy data no one reads; two Gathers of the same index are for common-
    subexpression elimination), a run that is not consecutive ascending, an unknown axis size.

    Why: one Split kernel instead of n index-driven Gather kernels, each with its int64 indices (msit
    ``knowledge_gather_to_split.py``, rules doc section Split算子替换Gather算子; msit states the equivalence only,
    no measurement).
    """

    library = True

    def run(self, graph: gs.Graph) -> PassResult:
        opset = opset_of(graph)
        groups: dict[tuple[int, int], list[gs.Node]] = defaultdict(list)
        for node in graph.nodes:
            if node.op != "Gather" or not is_onnx(node) or len(node.inputs) != 2 or len(node.outputs) != 1:
                continue
            data, indices = node.inputs
            value = const_value(indices)
            if const_value(data) is None and value is not None and value.ndim <= 1 and value.size:
                groups[(id(data), int(attr(node, "axis", 0)))].append(node)
        candidates = [g for g in groups.values() if len(g) >= 2]
        if not candidates:
            return PassResult(False, {"rewritten": 0, "skipped": {}})
        ensure_shapes(graph, [g[0].inputs[0] for g in candidates])
        skipped: Counter[str] = Counter()
        rewritten = 0
        for gathers in candidates:
            plan = _plan(gathers)
            if isinstance(plan, str):
                skipped[plan] += 1
                continue
            _split(graph, gathers, *plan, opset)
            rewritten += 1
        return PassResult(rewritten > 0, {"rewritten": rewritten, "skipped": dict(skipped)})


def _plan(gathers: list[gs.Node]):
    """(axis, [(gather, start, length, scalar)] in index order) when the Gathers tile the axis, else why not."""
    data = gathers[0].inputs[0]
    if data.shape is None:
        return "axis size unknown"
    axis = int(attr(gathers[0], "axis", 0))
    axis = axis + len(data.shape) if axis < 0 else axis
    dim = data.shape[axis] if 0 <= axis < len(data.shape) else None
    if not isinstance(dim, int):
        return "axis size unknown"
    pieces = []
    for node in gathers:
        value = const_value(node.inputs[1]).astype(np.int64)
        idx = np.where(value < 0, value + dim, value).reshape(-1)
        if idx.min() < 0 or idx.max() >= dim:
            return "an index out of range"
        if not np.array_equal(idx, idx[0] + np.arange(idx.size)):
            return "indices not consecutive ascending"
        pieces.append((node, int(idx[0]), int(idx.size), value.ndim == 0))
    pieces.sort(key=lambda p: p[1])
    covered = 0
    for _, start, length, _ in pieces:
        if start != covered:
            return "indices do not take the axis apart (an index left out or taken twice)"
        covered += length
    if covered != dim:
        return "indices do not take the axis apart (an index left out or taken twice)"
    return axis, pieces


def _split(graph: gs.Graph, gathers: list[gs.Node], axis: int, pieces: list, opset: int) -> None:
    data = gathers[0].inputs[0]
    base = gathers[0].name or "gather"
    split_name = make_name(graph, f"{base}_split")
    extra, attrs = ints_value(graph, split_name, "split", [p[2] for p in pieces], FIRST_SPLIT_INPUT_OPSET, opset)
    outputs = []
    for node, _, _, scalar_index in pieces:
        y = node.outputs[0]
        node.outputs.clear()  # the Gather is dead; its output is made by the Split (or the Squeeze after it)
        if not scalar_index:
            outputs.append(y)
            continue
        piece = same_type(gs.Variable(make_name(graph, f"{y.name}_piece")), data)
        squeeze = make_name(graph, f"{node.name or y.name}_squeeze")
        axes, squeeze_attrs = ints_value(graph, squeeze, "axes", [axis], FIRST_SPLIT_INPUT_OPSET, opset)
        graph.nodes.append(gs.Node("Squeeze", squeeze, squeeze_attrs, [piece, *axes], [y]))
        outputs.append(piece)
    graph.nodes.append(gs.Node("Split", split_name, {"axis": axis, **attrs}, [data, *extra], outputs))
