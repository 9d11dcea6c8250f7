"""``conv1d_to_conv2d``: a 1-D ``Conv`` as ``Unsqueeze -> 2-D Conv -> Squeeze`` over a height-1 axis."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, opset_of
from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import QUIET, Match, NodeBuilder, RewritePass

from ._node_attrs import attr, ints_value, same_type

__all__ = ["Conv1dToConv2d"]

FIRST_AXES_INPUT_OPSET = 13  # Unsqueeze / Squeeze axes: an input (before: an attribute)
HEIGHT = 2  # the axis inserted: N, C, 1, L


@register_pass("conv1d_to_conv2d")
class Conv1dToConv2d(RewritePass):
    """``Conv(x[N, C, L], W[O, C/g, k])`` -> ``Squeeze(Conv(Unsqueeze(x, 2), W[O, C/g, 1, k]), 2)``: the 2-D
    Conv runs over a height-1 axis with kernel ``[1, k]``, strides ``[1, s]``, dilations ``[1, d]``, pads
    ``[0, begin, 0, end]`` (asymmetric pads kept: msit's knowledge writes ``[0, p0, 0, p0]``, right only for
    symmetric ones), the same group and auto_pad (SAME / VALID pad nothing on a height-1 axis with kernel 1).
    A constant weight is reshaped; a computed one gets an Unsqueeze. Exact: the same products and sums.

    Why: ATC turns each Conv1d into a Conv2d with a TransData (format conversion) before and after it; in a
    chain of 1-D convs these conversions cost (msit ``knowledge_conv1d2conv2d.py``, rules doc section Conv1d 转
    Conv2d). Done per Conv: the Squeeze -> Unsqueeze pairs it leaves between adjacent convs are
    ``cancel_squeeze_unsqueeze``'s to remove.
    """

    library = True
    patterns = (lambda op, x, w, b: op.Conv(x, w, b), lambda op, x, w: op.Conv(x, w))

    def prepare(self, graph: gs.Graph) -> None:
        self._opset = opset_of(graph)
        self._shapes_tried = False

    def check(self, ctx: Match, x: gs.Tensor, w: gs.Tensor, b: gs.Tensor | None = None) -> str | None:
        if w.shape is None and x.shape is None and not self._shapes_tried:  # a computed weight: rank unknown
            self._shapes_tried = True
            ensure_shapes(ctx.graph, [w, x])
        ranks = {len(t.shape) for t in (w, x) if t.shape is not None}  # the weight's rank is the input's
        return None if ranks == {3} else QUIET

    def _axes(self, op: NodeBuilder, ctx: Match, kind: str, t: gs.Tensor) -> gs.Tensor:
        name = ctx.root.name or "conv"
        extra, attrs = ints_value(ctx.graph, f"{name}_{kind.lower()}", "axes", [HEIGHT], FIRST_AXES_INPUT_OPSET,
                                  self._opset)
        return same_type(getattr(op, kind)(t, *extra, _tag=f"{kind.lower()}_{self.name}", **attrs), t)

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, w: gs.Tensor, b: gs.Tensor | None = None
                ) -> gs.Tensor:
        conv = ctx.root
        attrs = dict(conv.attrs)
        for key in ("kernel_shape", "strides", "dilations"):
            if key in attrs:
                attrs[key] = [1, *attrs[key]]
        if "pads" in attrs:
            begin, end = attrs["pads"]
            attrs["pads"] = [0, begin, 0, end]
        if attr(conv, "auto_pad", "NOTSET") == "NOTSET":
            attrs.pop("auto_pad", None)
        value = const_value(w)
        w4 = (gs.Constant(make_name(ctx.graph, f"{w.name}_2d"), np.expand_dims(value, HEIGHT))
              if value is not None else self._axes(op, ctx, "Unsqueeze", w))
        inputs = [self._axes(op, ctx, "Unsqueeze", x), w4] + ([] if b is None else [b])
        return self._axes(op, ctx, "Squeeze", same_type(op.Conv(*inputs, **attrs), x))
