"""``static_reshape_targets``: a Reshape whose target shape is computed at run time (Shape -> Gather ->
Unsqueeze -> Concat ...) given a constant target with the same meaning."""
from __future__ import annotations

from typing import Union

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, producer
from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import QUIET, Match, NodeBuilder, RewritePass

from ._node_attrs import attr, is_onnx

__all__ = ["StaticReshapeTargets"]

# One entry of a target: a known number, ("dim", i) for dim i of the reshaped tensor, or None (unknown).
Entry = Union[int, tuple, None]
MAX_DEPTH = 16  # how far up a shape computation is followed


@register_pass("static_reshape_targets")
class StaticReshapeTargets(RewritePass):
    """``Reshape(x, target)`` with ``target`` computed -> ``Reshape(x, constant)``, the target read entry by entry
    through Concat (axis 0), Unsqueeze, Squeeze, Gather / Slice of constant indices, Cast and Shape (with
    ``start`` / ``end``):

    - a constant entry stays as it is (0 and -1 keep their meaning);
    - dim i of a tensor whose dim i is static becomes that number;
    - dim j of x itself, at position j of the target, becomes 0 ("copy dim j", when ``allowzero`` is 0), which
      holds for any value of a dynamic dim;
    - one entry left unknown (a dynamic dim elsewhere, any computed number) becomes -1: a Reshape keeps the
      element count, so that entry is the count over the other entries, whatever it computes to.

    Two or more unknown entries, or one beside a -1 already in the target, leave the Reshape alone (the reason in
    ``stats["skipped"]``). Exact for every input the original runs on, with one edge: an input with a zero-size
    dim among the copied or constant entries, where -1 is undefined (ONNX Reshape) though the computed target
    was not. Shapes are inferred only when a Shape's input has none. Unlike msit, nothing is sampled: every entry
    is derived from the graph.

    Why: in dynamic-shape models, computed targets add many small ops and make the Reshape's shape wait for them
    at run time, breaking ATC's scheduling pipeline (msit ``knowledge_dynamic_reshape.py``, rules doc section
    动态shape模型Reshape算子优化); a constant target is what ATC's static shape inference wants. See also onnxscript
    ``rewriter/rules/common/_materialize_reshape_shape.py`` (from inferred output shapes).
    """

    library = True
    patterns = (lambda op, x, target: op.Reshape(x, target),)
    count_misses = False

    def prepare(self, graph: gs.Graph) -> None:
        self._graph = graph
        self._shapes_tried = False

    def _target(self, ctx: Match, x: gs.Tensor, target: gs.Tensor) -> np.ndarray | str:
        if const_value(target) is not None or producer(target) is None:  # a constant, or a graph input's to keep
            return QUIET
        entries = self._entries(target, x, 0)
        if entries is None:
            return QUIET
        allowzero = attr(ctx.root, "allowzero", 0)
        values: list[int | None] = []
        for j, e in enumerate(entries):
            if isinstance(e, tuple):
                e = 0 if e[1] == j and not allowzero else None
            values.append(e)
        unknown = values.count(None)
        if unknown > 1:
            return "two or more target entries unknown"
        if unknown == 1:
            if -1 in values or allowzero and 0 in values:
                return "an unknown target entry beside a -1 (or a 0 with allowzero)"
            values[values.index(None)] = -1
        return np.array(values, dtype=np.int64)

    def _entries(self, t: gs.Tensor, x: gs.Tensor, depth: int) -> list[Entry] | None:
        """The entries of the 1-D int tensor ``t``, or None when its length is unknown."""
        value = const_value(t)
        if value is not None:
            return [int(v) for v in value.reshape(-1)] if value.ndim == 1 and value.dtype.kind in "iu" else None
        node = producer(t)
        if node is None or depth > MAX_DEPTH or not is_onnx(node):
            return self._unknown(t)
        if node.op == "Concat" and attr(node, "axis", None) in (0, -1):
            parts = [self._entries(i, x, depth + 1) for i in node.inputs]
            return None if any(p is None for p in parts) else [e for p in parts for e in p]
        if node.op == "Shape":
            return self._shape(node, x)
        if node.op == "Cast" and len(node.inputs) == 1:
            return self._entries(node.inputs[0], x, depth + 1)
        if node.op == "Unsqueeze":  # of a scalar: the target is 1-D, so is this piece
            return [self._scalar(node.inputs[0], x, depth + 1)]
        if node.op in ("Gather", "Slice"):
            source = self._entries(node.inputs[0], x, depth + 1)
            if source is not None:
                picked = _pick(node, len(source))
                if picked is not None:
                    return [source[i] for i in picked]
        return self._unknown(t)

    def _scalar(self, t: gs.Tensor, x: gs.Tensor, depth: int) -> Entry:
        value = const_value(t)
        if value is not None:
            return int(value.reshape(())) if value.size == 1 and value.dtype.kind in "iu" else None
        node = producer(t)
        if node is None or depth > MAX_DEPTH or not is_onnx(node):
            return None
        if node.op == "Cast" and len(node.inputs) == 1:
            return self._scalar(node.inputs[0], x, depth + 1)
        if node.op in ("Gather", "Squeeze"):
            source = self._entries(node.inputs[0], x, depth + 1)
            picked = None if source is None else _pick(node, len(source)) if node.op == "Gather" else [0]
            if picked is not None and len(picked) == 1 and (node.op == "Gather" or len(source) == 1):
                return source[picked[0]]
        return None

    def _shape(self, node: gs.Node, x: gs.Tensor) -> list[Entry] | None:
        s = node.inputs[0]
        if s.shape is None and not self._shapes_tried:
            self._shapes_tried = True
            ensure_shapes(self._graph, [s])
        if s.shape is None:
            return None
        rank = len(s.shape)
        start, end = (int(attr(node, k, d)) for k, d in (("start", 0), ("end", rank)))
        start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
        return [d if isinstance(d, int) else ("dim", i) if s is x else None
                for i, d in zip(range(start, end), s.shape[start:end])]

    def _unknown(self, t: gs.Tensor) -> list[Entry] | None:
        """A piece whose values are unknown: as many unknown entries as its static length."""
        shape = t.shape
        if shape is not None and len(shape) == 1 and isinstance(shape[0], int):
            return [None] * shape[0]
        return None

    def check(self, ctx: Match, x: gs.Tensor, target: gs.Tensor) -> str | None:
        found = self._target(ctx, x, target)
        return found if isinstance(found, str) else None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, target: gs.Tensor) -> None:
        values = self._target(ctx, x, target)
        name = make_name(ctx.graph, f"{ctx.root.name or 'reshape'}_target")
        ctx.root.inputs[1] = gs.Constant(name, values)


def _pick(node: gs.Node, length: int) -> list[int] | None:
    """The positions a Gather (axis 0) or Slice of constant operands takes from a 1-D tensor of ``length``."""
    if node.op == "Gather":
        idx = const_value(node.inputs[1]) if len(node.inputs) == 2 else None
        if idx is None or attr(node, "axis", 0) not in (0, -1) or idx.ndim > 1:
            return None
        picked = [int(i) + length if i < 0 else int(i) for i in idx.reshape(-1)]
        return picked if all(0 <= i < length for i in picked) else None
    operands = [const_value(t) for t in node.inputs[1:]]
    if len(node.inputs) < 3 or any(v is None for v in operands):
        return None
    starts, ends = operands[0], operands[1]
    steps = operands[3] if len(operands) > 3 else np.ones(1, np.int64)
    if starts.size != 1 or ends.size != 1 or steps.size != 1 or (len(operands) > 2 and operands[2].size != 1):
        return None
    return list(range(length))[slice(int(starts[0]), int(ends[0]), int(steps[0]))]
