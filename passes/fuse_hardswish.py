"""``fuse_hardswish``: the decomposed hard-swish / hard-sigmoid of MobileNetV3-style exports as ``HardSwish`` /
``HardSigmoid`` nodes."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import opset_of
from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import QUIET, Match, NodeBuilder, RewritePass

from ._node_attrs import is_float

__all__ = ["FuseHardSwish", "FIRST_HARDSWISH_OPSET"]

FIRST_HARDSWISH_OPSET = 14
CONST_RTOL = 1e-4


def _relu6(op, x):
    """``Clip(x + 3, 0, 6)``, bounds as inputs (opset >= 11) or attributes; matching starts at the Add, the
    first node of every spelling, so the longest spelling is tried before the hard-sigmoid inside it."""
    shifted = op.Add(x, 3.0, _anchor=True, _name="x + 3")
    return op.any_of(op.Clip(shifted, 0.0, 6.0), op.Clip(shifted, min=op.attr("clip_min"), max=op.attr("clip_max")),
                     _name="relu6(x + 3)", _fail="x + 3 is not clipped to [0, 6]")


def _hardswish_div(op, x):
    return op.any_of(op.Div(op.Mul(x, _relu6(op, x)), 6.0), op.Mul(op.Mul(x, _relu6(op, x)), 1 / 6))


def _hardswish_scaled_gate(op, x):
    gate = op.any_of(op.Div(_relu6(op, x), 6.0), op.Mul(_relu6(op, x), 1 / 6), _name="relu6(x + 3) / 6")
    return op.Mul(x, gate)


def _hardswish_sigmoid(op, x):
    return op.Mul(x, op.HardSigmoid(x, alpha=op.attr("alpha"), beta=op.attr("beta"), _anchor=True))


def _hardsigmoid(op, x):
    return op.any_of(op.Div(_relu6(op, x), 6.0), op.Mul(_relu6(op, x), 1 / 6))


@register_pass("fuse_hardswish")
class FuseHardSwish(RewritePass):
    """Recognise hard-swish and hard-sigmoid however exported:

    - ``x * Clip(x + 3, 0, 6) / 6`` (the Div or a ``* 1/6`` on the product or on the Clip) and
      ``x * HardSigmoid(x)`` with alpha = 1/6, beta = 0.5 -> ``HardSwish(x)`` (opset >= 14, where
      ``HardSwish(x) = x * max(0, min(1, x / 6 + 1 / 2))``);
    - ``Clip(x + 3, 0, 6) / 6`` -> ``HardSigmoid(x, alpha=1/6, beta=0.5)``, any opset (on an opset < 14 graph this
      is also what is left of a hard-swish: ``x * HardSigmoid(x)``).

    Constants must be 3, 0, 6 and 6 (or 1/6) to 1e-4 relative, x a float tensor (the constants' type), the
    intermediate values read by the pattern alone. Exact up to rounding (``x / 6 + 0.5`` against
    ``(x + 3) / 6``: a few ulp).

    Why: one vector kernel instead of four or five; CANN's ONNX operator list takes HardSwish (opset 14 to 18,
    alpha 1/6, beta 0.5) and HardSigmoid. Source: onnxscript ``rewriter/rules/common/_fuse_hardswish.py``.

    SiLU ``x * Sigmoid(x)`` is left as it is: ONNX has no SiLU, and ``Swish`` only from opset 24, past the ONNX
    1.12 (opset 17) CANN's ONNX parser states; its Sigmoid + Mul is what CANN's own Swish kernels and fusions
    take.
    """

    library = True
    patterns = (_hardswish_div, _hardswish_scaled_gate, _hardswish_sigmoid, _hardsigmoid)
    const_rtol = CONST_RTOL
    count_misses = False  # a lone Add of 3 or HardSigmoid is no candidate

    def prepare(self, graph: gs.Graph) -> None:
        self._opset = opset_of(graph)

    def check(self, ctx: Match, x: gs.Tensor, **attrs) -> str | None:
        # x's type is the constants' (Add(x, 3) takes one type); HardSwish / HardSigmoid are float only.
        if not all(is_float(c) for c in ctx.constants()):
            return "not a float tensor"
        if "clip_min" in attrs:  # the attribute spelling (Clip before opset 11)
            lo, hi = attrs["clip_min"], attrs["clip_max"]
            if lo is None or hi is None or not (lo == 0.0 and np.isclose(hi, 6.0, rtol=CONST_RTOL)):
                return f"x + 3 clipped to [{lo}, {hi}], expected [0, 6]"
        if "alpha" in attrs and not (np.isclose(attrs["alpha"], 1 / 6, rtol=CONST_RTOL)
                                     and np.isclose(attrs["beta"], 0.5, rtol=CONST_RTOL)):
            return QUIET  # another hard sigmoid: x * HardSigmoid(x) is then no hard-swish
        if _is_hardswish(ctx) and self._opset < FIRST_HARDSWISH_OPSET:
            return f"opset {self._opset} < {FIRST_HARDSWISH_OPSET} has no HardSwish"
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, **_) -> gs.Tensor:
        if _is_hardswish(ctx):
            return op.HardSwish(x)
        return op.HardSigmoid(x, alpha=1 / 6, beta=0.5)


def _is_hardswish(ctx: Match) -> bool:
    """Hard-swish spellings are ``x * HardSigmoid(x)`` (anchored at the HardSigmoid) and the four-node ones; the
    hard-sigmoid spelling has three nodes (Add, Clip, Div or Mul)."""
    return ctx.anchor.op == "HardSigmoid" or len(ctx.nodes) == 4
