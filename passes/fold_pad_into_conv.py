"""``fold_pad_into_conv``: a constant-mode ``Pad`` of the spatial dims folded into the ``pads`` of the Conv,
AveragePool or MaxPool that reads it."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, opset_of, producer
from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import QUIET, Match, NodeBuilder, RewritePass

from ._node_attrs import absent, attr, ints_operand, scalar

__all__ = ["FoldPadIntoConv"]

FIRST_PADS_INPUT_OPSET = 11  # Pad's pads and value: inputs (before: attributes)
FIRST_COUNT_INCLUDE_PAD_OPSET = 7
# Ops whose output is never negative: a zero Pad before a MaxPool of them is what -inf padding would give.
NON_NEGATIVE = frozenset({"Relu", "Sigmoid", "Abs", "Exp", "Softplus"})


def _padded(consumer: str):
    return lambda op, x: getattr(op, consumer)(op.Pad(x, _other_inputs=True, _name="Pad output"),
                                               _other_inputs=True)


def _lowest(dtype: np.dtype) -> float:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


@register_pass("fold_pad_into_conv")
class FoldPadIntoConv(RewritePass):
    """``Conv(Pad(x, pads, v))`` -> ``Conv(x)`` with the Pad's spatial pads added to the Conv's ``pads``; the same
    into ``AveragePool`` and ``MaxPool`` where exact:

    - Conv: ``v == 0`` (the Conv pads with zeros);
    - AveragePool: ``v == 0``, and the fused pool counts its padding (``count_include_pad=1``: the Pad's zeros
      were real elements of every window's average); refused when the pool already pads with
      ``count_include_pad=0`` (its own padding would start to count: onnxruntime PR #23190 fixed this bug);
    - MaxPool: ONNX MaxPool padding is ignored (as -inf), so ``v`` must be -inf (the integer minimum), or 0 on a
      tensor that is never negative (Relu, Sigmoid, Abs, Exp, Softplus, Clip with min >= 0, unsigned):
      onnx-optimizer's fuse_pad_into_pool folded zero padding into MaxPool (onnx/optimizer PR #318); dilations 1,
      Indices output unread;
    - pools: every new pad smaller than the kernel (onnxruntime's rule; it also keeps every window on real data),
      ``ceil_mode`` 0 (a last window starting in the end padding exists after a Pad, not with the pool's own
      padding: 7 + 1 + 2 wide, kernel 3, stride 2 gives 5 outputs against 4).

    Always: ``mode`` constant, pads (and ``axes``, opset 18) constants, no padding of N or C, no negative pad
    (onnxscript issue #2838 fused cropping pads), the consumer's ``auto_pad`` NOTSET or VALID, the Pad's output
    read by the consumer alone. Any number of spatial dims. Exact: the same windows over the same values.

    Why: a Pad is a vector kernel copying the whole tensor, plus format handling around the Cube Conv
    (NC1HWC0); the Conv and pool kernels pad on the fly. Sources: onnxscript
    ``rewriter/rules/common/_fuse_pad_into_conv.py``, onnxslim ``core/pattern/fusion/padconv.py``, ONNX
    AveragePool / MaxPool specs.
    """

    library = True
    patterns = tuple(_padded(op) for op in ("Conv", "AveragePool", "MaxPool"))
    count_misses = False  # a Conv or pool without a Pad before it is no candidate

    def prepare(self, graph: gs.Graph) -> None:
        self._opset = opset_of(graph)

    def _pad(self, pad: gs.Node, rank: int):
        """(spatial pads as the consumer writes them, pad value) of ``pad``, or why not foldable."""
        opset = self._opset
        if attr(pad, "mode", "constant") != "constant":
            return QUIET
        pads = ints_operand(pad, "pads", 1, FIRST_PADS_INPUT_OPSET, opset)
        if pads is None:
            return "pads are not constants"
        if opset < FIRST_PADS_INPUT_OPSET:
            value = np.asarray(attr(pad, "value", 0.0))
        else:
            value = np.zeros(()) if absent(pad, 2) else const_value(pad.inputs[2])
            if value is None or value.size != 1:
                return "pad value is not a constant"
            if len(pad.inputs) > 3 and not absent(pad, 3):
                axes = ints_operand(pad, "axes", 3, FIRST_PADS_INPUT_OPSET, opset)
                if axes is None or len(pads) != 2 * len(axes):
                    return "axes are not constants"
                full = [0] * (2 * rank)
                for i, a in enumerate(axes):
                    a = a + rank if a < 0 else a
                    full[a], full[a + rank] = pads[i], pads[i + len(axes)]
                pads = full
        if len(pads) != 2 * rank:
            return QUIET
        if any(p < 0 for p in pads):
            return "a negative pad (a crop)"
        if any(pads[i] or pads[i + rank] for i in (0, 1)):
            return "pads N or C"
        return pads[2:rank] + pads[rank + 2:], value

    def _fused(self, ctx: Match, x: gs.Tensor):
        """The consumer's attributes after the fold, or why it is refused."""
        node = ctx.root
        pad = ctx.nodes[-1]
        if node.inputs[0] is not pad.outputs[0] or pad.inputs[0] is not x:
            return QUIET
        kernel = node.attrs.get("kernel_shape")
        if kernel is None and node.op == "Conv":
            w = node.inputs[1]
            kernel = None if w.shape is None else list(w.shape[2:])
        if kernel is None or not all(isinstance(k, int) for k in kernel):
            return "kernel shape unknown"
        spatial = len(kernel)
        found = self._pad(pad, spatial + 2)
        if isinstance(found, str):
            return found
        pads, value = found
        auto_pad = attr(node, "auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            return f"auto_pad {auto_pad}"
        own = list(node.attrs.get("pads", [0] * 2 * spatial)) if auto_pad == "NOTSET" else [0] * 2 * spatial
        new = [a + b for a, b in zip(own, pads)]
        attrs = {k: v for k, v in node.attrs.items() if k != "auto_pad"}
        attrs["pads"] = new
        number = scalar(value)
        if node.op != "MaxPool" and number != 0:
            return "pad value is not 0"
        if node.op != "Conv" and any(p >= k for p, k in zip(new, kernel * 2)):
            return "a pad not smaller than the kernel"
        if node.op != "Conv" and attr(node, "ceil_mode", 0):
            # A window starting in the end padding is dropped by a pool's own padding, kept after a Pad.
            return "pool with ceil_mode=1"
        if node.op == "AveragePool":
            if self._opset < FIRST_COUNT_INCLUDE_PAD_OPSET:
                return QUIET
            if any(own) and not attr(node, "count_include_pad", 0):
                return "AveragePool pads already, excluded from its average (count_include_pad=0)"
            attrs["count_include_pad"] = 1
        if node.op == "MaxPool":
            if any(t.outputs or t in ctx.graph.outputs for t in node.outputs[1:]):
                return "MaxPool Indices read"
            if any(d != 1 for d in attr(node, "dilations", [1])):
                return "MaxPool with dilations"
            if not (number == _lowest(value.dtype) or number == 0 and _never_negative(x, value.dtype)):
                return "MaxPool ignores padding: a pad value other than -inf on a tensor that can be negative"
        return attrs

    def check(self, ctx: Match, x: gs.Tensor) -> str | None:
        fused = self._fused(ctx, x)
        return fused if isinstance(fused, str) else None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor) -> gs.Tensor:
        node = ctx.root
        return getattr(op, node.op)(x, *node.inputs[1:], **self._fused(ctx, x))


def _never_negative(x: gs.Tensor, dtype: np.dtype) -> bool:
    if dtype.kind == "u":
        return True
    node = producer(x)
    if node is None:
        return False
    if node.op in NON_NEGATIVE:
        return True
    if node.op == "Clip":
        low = scalar(const_value(node.inputs[1])) if not absent(node, 1) else node.attrs.get("min")
        return low is not None and low >= 0
    return False
