"""``fold_batchnorm_into_conv``: an inference BatchNormalization, or an ``Add`` / ``Mul`` of a per-output-channel
constant, right after a ``Conv`` folded into the Conv's weight and bias."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import make_name, opset_of
from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import QUIET, Match, NodeBuilder, RewritePass

from ._node_attrs import attr
from .fold_affine_into_conv import channel_vector

__all__ = ["FoldBatchNormIntoConv"]

FIRST_BN_OPSET = 9  # BatchNormalization without ``spatial`` / ``is_test`` / ``consumed_inputs``


def _conv(op, x, bias: bool):
    return op.Conv(x, op.const("w"), op.const("b")) if bias else op.Conv(x, op.const("w"))


def _after_conv(after: str, bias: bool):
    if after == "BatchNormalization":
        return lambda op, x: op.BatchNormalization(_conv(op, x, bias), op.const("scale"), op.const("shift"),
                                                   op.const("mean"), op.const("var"))
    return lambda op, x: getattr(op, after)(_conv(op, x, bias), op.const(after.lower()))


@register_pass("fold_batchnorm_into_conv")
class FoldBatchNormIntoConv(RewritePass):
    """Fold what follows a Conv per output channel into the Conv (o: output channel):

    - ``BatchNormalization`` (inference: ``training_mode`` 0, one output read; opset >= 9):
      ``s = scale / sqrt(var + epsilon)``, ``W'[o] = W[o] * s[o]``, ``b' = (b - mean) * s + shift``;
    - ``Add`` of ``c``: ``b' = b + c``;
    - ``Mul`` by ``k``: ``W'[o] = W[o] * k[o]``, ``b' = b * k``.

    ``c`` / ``k`` must vary along the channels only: shape ``[C, 1, 1]`` or ``[1, C, 1, 1]`` (``[C, 1]`` for a
    1-D Conv). A plain ``[C]`` is refused: it broadcasts along the last (width) axis, not the channels
    (onnxslim's ``convadd`` / ``convmul`` accept it and change the result). A single number is left alone
    too (an activation's constant, as in ``fold_affine_into_conv``). The Conv's weight and bias must be
    constants, the Conv's output read by the folded node alone; new constants are made (a weight shared with
    another Conv is not touched). Exact up to rounding: computed in float64, stored in the weight's type.

    Why: one Cube (Conv) kernel instead of a Conv and a vector BN / elementwise kernel. ATC folds Conv + BN
    itself, so the gain on Ascend is mostly a simpler graph for later fusions (msit's rules doc, section
    BatchNormalization折叠). Sources: onnxscript ``rewriter/rules/common/_fuse_batchnorm.py``; onnxslim
    ``core/pattern/fusion/{convbn,convadd,convmul}.py``.
    """

    library = True
    patterns = tuple(_after_conv(after, bias) for after in ("BatchNormalization", "Add", "Mul")
                     for bias in (True, False))
    count_misses = False  # a BN / Add / Mul after anything but a Conv is no candidate

    def prepare(self, graph: gs.Graph) -> None:
        self._opset = opset_of(graph)

    def _fold(self, ctx: Match, w: np.ndarray, b: np.ndarray | None, consts: dict[str, np.ndarray]):
        """(per-channel scale, shift) the node after the Conv applies, or why it is not foldable."""
        if w.dtype.kind != "f" or w.ndim < 3:
            return QUIET
        node, channels = ctx.root, w.shape[0]
        if b is not None and b.shape != (channels,):
            return QUIET
        if node.op == "BatchNormalization":
            if self._opset < FIRST_BN_OPSET:
                return f"opset {self._opset} < {FIRST_BN_OPSET}: BatchNormalization may be in training form"
            if attr(node, "training_mode", 0) or any(t.outputs or t in ctx.graph.outputs for t in node.outputs[1:]):
                return "BatchNormalization in training mode"
            params = [consts[k] for k in ("scale", "shift", "mean", "var")]
            if any(p.shape != (channels,) for p in params):
                return QUIET
            scale, shift, mean, var = (p.astype(np.float64) for p in params)
            s = scale / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
            return s, shift - mean * s
        value = consts["add" if node.op == "Add" else "mul"]
        vec = channel_vector(value, channels, w.ndim)
        if vec is None:
            if value.ndim == 1 and value.size == channels > 1:
                return "a [C] constant broadcasts along the last axis, not the channels"
            return QUIET
        if value.dtype != w.dtype:
            return QUIET
        vec = vec.astype(np.float64)
        return (np.ones(channels), vec) if node.op == "Add" else (vec, np.zeros(channels))

    def check(self, ctx: Match, x: gs.Tensor, w: np.ndarray, b: np.ndarray | None = None, **consts) -> str | None:
        fold = self._fold(ctx, w, b, consts)
        return fold if isinstance(fold, str) else None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, w: np.ndarray, b: np.ndarray | None = None,
                **consts) -> gs.Tensor:
        scale, shift = self._fold(ctx, w, b, consts)
        conv = next(n for n in ctx.nodes if n.op == "Conv")
        bias = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
        expand = (slice(None),) + (None,) * (w.ndim - 1)
        name = conv.name or "conv"
        weight = gs.Constant(make_name(ctx.graph, f"{name}_weight_folded"),
                             (w.astype(np.float64) * scale[expand]).astype(w.dtype))
        new_bias = gs.Constant(make_name(ctx.graph, f"{name}_bias_folded"), (bias * scale + shift).astype(w.dtype))
        return op.Conv(x, weight, new_bias, **conv.attrs)

