"""``min_max_to_clip``: ``Min(Max(x, lo), hi)``, ``Max(Min(x, hi), lo)``, ``Clip(Relu(x))`` and ``Relu(Clip(x))``
as one ``Clip``."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, opset_of
from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import QUIET, Match, NodeBuilder, RewritePass

from ._node_attrs import absent, scalar

__all__ = ["MinMaxToClip"]

FIRST_CLIP_INPUTS_OPSET = 11  # Clip takes min / max as inputs (before: float attributes)
FIRST_INT_CLIP_OPSET = 12


def _min_max(op, x):
    return op.Min(op.Max(x, op.const("lo"), _name="Max output"), op.const("hi"))


def _max_min(op, x):
    return op.Max(op.Min(x, op.const("hi"), _name="Min output"), op.const("lo"))


def _clip_relu(op, x):
    return op.Clip(op.Relu(x, _name="Relu output"), _other_inputs=True)


def _relu_clip(op, x):
    return op.Relu(op.Clip(x, _other_inputs=True, _name="Clip output"))


@register_pass("min_max_to_clip")
class MinMaxToClip(RewritePass):
    """Two clamping nodes as one ``Clip`` (opset >= 11; integer types from opset 12):

    - ``Min(Max(x, lo), hi)`` -> ``Clip(x, lo, hi)``: always, since ONNX defines ``Clip(x, lo, hi)`` as
      ``Min(hi, Max(x, lo))`` even when lo > hi;
    - ``Max(Min(x, hi), lo)`` -> ``Clip(x, lo, hi)``: only when lo <= hi (with lo > hi it is lo everywhere, the
      Clip would give hi);
    - ``Clip(Relu(x), lo, hi)`` -> ``Clip(x, max(0, lo), hi)``;
    - ``Relu(Clip(x, lo, hi))`` -> ``Clip(x, max(0, lo), max(0, hi))`` (``max(0, min(hi, z))`` is
      ``min(max(0, hi), max(0, z))``);

    an absent Clip bound is unbounded. ``lo`` / ``hi`` must be constants of one element, and such a constant of
    shape ``[1]`` only where x's rank is known to be at least its rank (else the Min / Max broadcast would change
    the output's shape); the new bounds are scalars of x's type. Exact: the same comparisons in one node.

    Why: one elementwise kernel instead of two, and ``Clip(0, 6)`` is the Relu6 ATC's UB fusions take as an
    activation (CANN graph fusion reference, e.g. TbeFullyconnectionElemwiseDequantFusionPass). Source:
    onnxscript ``rewriter/rules/common/_min_max_to_clip.py``, ``_fuse_relus_clips.py``.
    """

    library = True
    patterns = (_min_max, _max_min, _clip_relu, _relu_clip)
    count_misses = False  # a lone Min, Max, Relu or Clip is no candidate

    def prepare(self, graph: gs.Graph) -> None:
        self._opset = opset_of(graph)
        self._graph = graph
        self._shapes_tried = False

    def _rank_at_least(self, x: gs.Tensor, rank: int) -> bool:
        if rank == 0:
            return True
        if x.shape is None and not self._shapes_tried:
            self._shapes_tried = True
            ensure_shapes(self._graph, [x])
        return x.shape is not None and len(x.shape) >= rank

    def _bounds(self, ctx: Match, x: gs.Tensor, lo: np.ndarray | None, hi: np.ndarray | None):
        """(lo, hi, dtype) of the fused Clip, or the reason it cannot be made."""
        root = ctx.root
        if root.op in ("Clip", "Relu"):
            # The Clip's first input is the other matched node's output (or x): not a bound matched there.
            clip, inner = (root, ctx.nodes[-1].outputs[0]) if root.op == "Clip" else (ctx.nodes[-1], x)
            if len(clip.inputs) > 3 or clip.inputs[0] is not inner:
                return QUIET
            if self._opset < FIRST_CLIP_INPUTS_OPSET:
                return f"opset {self._opset} < {FIRST_CLIP_INPUTS_OPSET}: Clip bounds are attributes"
            bounds = []
            for i in (1, 2):
                value = None if absent(clip, i) else const_value(clip.inputs[i])
                if not absent(clip, i) and (value is None or value.size != 1):
                    return "a Clip bound is not a constant scalar"
                bounds.append(value)
            lo, hi = bounds
            dtype = next((b.dtype for b in bounds if b is not None), x.dtype)
            if dtype is None:
                return "type of x unknown (the Clip has no bounds)"
            zero = np.zeros((), dtype)
            lo = zero if lo is None else np.maximum(zero, lo.reshape(()))
            if hi is not None:
                hi = np.maximum(zero, hi.reshape(())) if root.op == "Relu" else hi.reshape(())
            return lo, hi, np.dtype(dtype)
        if scalar(lo) is None or scalar(hi) is None:
            return "a bound has more than one element"
        if not self._rank_at_least(x, max(lo.ndim, hi.ndim)):
            return "a bound of shape [1] on x of lower or unknown rank (the output shape would change)"
        if root.op == "Max" and scalar(lo) > scalar(hi):
            return "Max(Min(x, hi), lo) with lo > hi is lo everywhere, not a Clip"
        if lo.dtype != hi.dtype:
            return QUIET
        return lo.reshape(()), hi.reshape(()), lo.dtype

    def check(self, ctx: Match, x: gs.Tensor, lo: np.ndarray | None = None, hi: np.ndarray | None = None
              ) -> str | None:
        bounds = self._bounds(ctx, x, lo, hi)
        if isinstance(bounds, str):
            return bounds
        first = FIRST_CLIP_INPUTS_OPSET if bounds[2].kind == "f" else FIRST_INT_CLIP_OPSET
        if self._opset < first:
            return f"opset {self._opset} < {first}: no Clip for this type"
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, lo: np.ndarray | None = None,
                hi: np.ndarray | None = None) -> gs.Tensor:
        lo, hi, dtype = self._bounds(ctx, x, lo, hi)
        name = ctx.root.name or ctx.root.op
        bounds = [gs.Constant(make_name(ctx.graph, f"{name}_{key}"), np.asarray(v, dtype))
                  for key, v in (("min", lo), ("max", hi)) if v is not None]
        return op.Clip(x, *bounds)
