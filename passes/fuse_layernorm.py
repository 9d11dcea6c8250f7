"""``fuse_layernorm``: a decomposed layer normalization (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul,
Add) as one ``LayerNormalization`` (opset >= 17)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import ensure_shapes, make_name, opset_of, producer
from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import Match, NodeBuilder, RewritePass

from ._node_attrs import absent, attr, ints_operand, is_onnx, scalar

__all__ = ["FuseLayerNorm", "FIRST_LAYERNORM_OPSET"]

FIRST_LAYERNORM_OPSET = 17
FIRST_AXES_INPUT_OPSET = 18  # ReduceMean's axes: an input (before: an attribute)
FUSED_TYPES = (np.dtype(np.float32), np.dtype(np.float16))


def _normalized(op, d):
    """``d / sqrt(mean(d^2) + eps)``, d = x - mean(x) (a variable: it is read twice, checked by ``check``);
    matching starts at the Sqrt, so the longest spelling (with scale and shift) is tried first."""
    square = op.any_of(op.Pow(d, 2), op.Mul(d, d), _name="(x - mean)^2")
    var = op.ReduceMean(square, keepdims=op.attr("keep_var"), _other_inputs=True, _name="variance")
    std = op.Sqrt(op.Add(var, op.const("eps"), _name="variance + eps"), _anchor=True, _name="std")
    return op.any_of(op.Div(d, std), op.Mul(d, op.Reciprocal(std)), _name="normalized x")


def _scaled_shifted(op, d):
    return op.Add(op.Mul(_normalized(op, d), op.const("scale")), op.const("shift"))


def _scaled(op, d):
    return op.Mul(_normalized(op, d), op.const("scale"))


@register_pass("fuse_layernorm")
class FuseLayerNorm(RewritePass):
    """``mean = ReduceMean(x)``, ``d = x - mean``, ``y = d / Sqrt(ReduceMean(d^2) + eps) (* scale) (+ shift)``
    -> ``LayerNormalization(x, scale, shift, axis=-k, epsilon=eps)`` (opset >= 17): the spelling torch's
    ``layer_norm`` exports before opset 17, timm's ``LayerNorm2d`` and transformers' hand-written LayerNorms
    (``d^2`` as ``Pow(d, 2)`` or ``d * d``; ``/ std`` or ``* Reciprocal(std)``; scale / shift operands either
    side).

    Applies when: both ReduceMeans reduce the same trailing k axes with keepdims 1 (opset 18's axes input too),
    ``Sub(x, mean)`` in that order, eps a constant scalar, x float32 or float16, the normalized dims static,
    scale and shift constants varying over the normalized axes only (they become arrays of exactly the
    normalized shape), every intermediate value read by the pattern alone (``d`` may have other readers: its Sub
    is then kept). Numerically the same function: onnxruntime's kernel computes the mean and variance in
    float32 (stash_type 1), which for float16 input is more accurate than the float16 decomposition.

    Why: one kernel instead of nine. CANN's ONNX parser maps LayerNormalization (opset 17 / 18) to its LayerNorm
    op; without it, ATC's LayerNormFusionPass must recognise the decomposition itself (last axis only, gamma
    and beta 1-D, no dynamic shape, ``Sub(x, mean)`` order; CANN graph fusion reference, LayerNormFusionPass).
    Sources: onnxscript ``rewriter/rules/fusion/_layer_norm.py``; ONNX LayerNormalization-17 function body.
    """

    library = True
    patterns = (_scaled_shifted, _scaled, _normalized)
    count_misses = False  # a Sqrt of anything else is no candidate

    def prepare(self, graph: gs.Graph) -> None:
        self._opset = opset_of(graph)
        self._shapes_tried = False

    def _plan(self, ctx: Match, d: gs.Tensor, eps: np.ndarray, scale=None, shift=None):
        """(x, k, normalized shape, epsilon), or why the match is no layer norm."""
        sub = producer(d)
        mean = None if sub is None or sub.op != "Sub" or not is_onnx(sub) else producer(sub.inputs[1])
        if mean is None or mean.op != "ReduceMean" or mean.inputs[0] is not sub.inputs[0]:
            return "x - mean(x) not found before the variance"
        x = sub.inputs[0]
        if any(t in ctx.graph.outputs or len(t.outputs) != 1 for t in mean.outputs):
            return "mean(x) read elsewhere"
        if scalar(eps) is None or eps.dtype not in FUSED_TYPES:
            return f"eps of shape {list(eps.shape)} or type {eps.dtype} (float32 / float16 scalar expected)"
        if self._opset < FIRST_LAYERNORM_OPSET:
            return f"opset {self._opset} < {FIRST_LAYERNORM_OPSET} has no LayerNormalization"
        if x.shape is None and not self._shapes_tried:
            self._shapes_tried = True
            ensure_shapes(ctx.graph, [x])
        if x.shape is None:
            return "rank of x unknown"
        rank = len(x.shape)
        var = next(n for n in ctx.nodes if n.op == "ReduceMean")
        axes = [self._axes(n, rank) for n in (mean, var)]
        if axes[0] is None or axes[0] != axes[1] or attr(mean, "keepdims", 1) != 1 or ctx.bindings["keep_var"] != 1:
            return "the two ReduceMeans differ or drop the reduced axes"
        k = len(axes[0])
        if axes[0] != list(range(rank - k, rank)):
            return "not normalized over the trailing axes"
        shape = x.shape[rank - k:]
        if not all(isinstance(s, int) for s in shape):
            return "normalized dims not static"
        for value in (v for v in (scale, shift) if v is not None):
            if value.dtype != eps.dtype or value.ndim > rank or any(s != 1 for s in value.shape[:-k]) \
                    or np.broadcast_shapes(value.shape[-k:], shape) != tuple(shape):
                return "scale or shift varies along an axis that is not normalized"
        return x, k, tuple(shape), float(scalar(eps))

    def _axes(self, node: gs.Node, rank: int) -> list[int] | None:
        given = "axes" in node.attrs if self._opset < FIRST_AXES_INPUT_OPSET else not absent(node, 1)
        if not given:  # all axes, unless noop_with_empty_axes (opset 18) makes it no reduction at all
            return None if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        axes = ints_operand(node, "axes", 1, FIRST_AXES_INPUT_OPSET, self._opset)
        return None if axes is None else sorted(a + rank if a < 0 else a for a in axes)

    def check(self, ctx: Match, d: gs.Tensor, eps: np.ndarray, keep_var=None, scale=None, shift=None) -> str | None:
        plan = self._plan(ctx, d, eps, scale, shift)
        return plan if isinstance(plan, str) else None

    def rewrite(self, op: NodeBuilder, ctx: Match, d: gs.Tensor, eps: np.ndarray, keep_var=None, scale=None,
                shift=None) -> gs.Tensor:
        x, k, shape, epsilon = self._plan(ctx, d, eps, scale, shift)
        name = ctx.root.name or "layernorm"
        params = [gs.Constant(make_name(ctx.graph, f"{name}_{key}"), _param(value, k, shape, eps.dtype))
                  for key, value in (("scale", scale), ("shift", shift)) if key == "scale" or value is not None]
        return op.LayerNormalization(x, *params, axis=-k, epsilon=epsilon)


def _param(value: np.ndarray | None, k: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A scale / shift as LayerNormalization takes it: an array of the normalized shape (ones: no scale)."""
    if value is None:
        return np.ones(shape, dtype)
    tail = value.reshape(value.shape[-k:]) if value.ndim >= k else value
    return np.ascontiguousarray(np.broadcast_to(tail, shape))
