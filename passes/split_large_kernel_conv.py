"""``split_large_kernel_conv``: a Conv whose kernel is longer than the NPU's Conv kernel limit along some axis,
as the sum of Convs over kernel slices."""
from __future__ import annotations

import itertools
import math
from dataclasses import field

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import make_name, opset_of
from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import QUIET, Match, NodeBuilder, RewritePass

from ._node_attrs import attr, same_type

__all__ = ["SplitLargeKernelConv", "ASCEND_MAX_KERNEL"]

# The Ascend C Conv2D API's kernel height range is [1, 255] (CANN, Ascend C API, Conv2D).
ASCEND_MAX_KERNEL = 255
FIRST_SLICE_INPUTS_OPSET = 10
INT64_MAX = np.iinfo(np.int64).max


def _slices(length: int, limit: int) -> list[tuple[int, int]]:
    """``[0, length)`` in the fewest pieces of at most ``limit``, as equal as possible."""
    n = math.ceil(length / limit)
    bounds = [length * i // n for i in range(n + 1)]
    return list(zip(bounds, bounds[1:]))


@register_pass("split_large_kernel_conv")
class SplitLargeKernelConv(RewritePass):
    """A Conv whose kernel is longer than ``max_kernel`` along some spatial axis -> one Conv per kernel slice
    (each at most ``max_kernel`` long, as equal as possible), summed (``Sum``); only the first keeps the bias.

    Along a split axis (stride 1, dilation d, pads b / e, kernel K), the slice ``[lo, hi)`` of the kernel reads
    the input from ``lo * d - b`` to ``e - d * (K - hi)`` past its end: where that lies inside the input the
    branch Slices it, where outside the branch pads by it, so every branch yields the Conv's output positions
    exactly, with no input size needed. Needs a constant weight, ``auto_pad`` NOTSET (or VALID) and stride 1
    along the split axes (a stride would make the window offsets depend on the input size). Any group,
    dilation, number of spatial dims. Exact up to float reassociation: the kernel's products are summed in
    pieces (tests: 2e-5 absolute on unit-variance data with a 300-long kernel).

    Why: the Ascend C Conv2D API takes kernel heights up to 255; msit splits convs beyond an empirical 192
    ("the real threshold may be around 200", measured on few models) for the audio / OCR models with huge
    kernels that "seriously slow inference" (msit ``knowledge_split_large_kernel.py``, rules doc section
    拆分大kernel卷积算子). ``max_kernel`` defaults to the documented 255; 192 is msit's choice.
    """

    library = True
    max_kernel: int = field(default=ASCEND_MAX_KERNEL, metadata={
        "help": "longest kernel axis a Conv keeps (Ascend C Conv2D: 255; msit's empirical threshold: 192)"})
    patterns = (lambda op, x, b: op.Conv(x, op.const("w"), b), lambda op, x: op.Conv(x, op.const("w")))
    count_misses = False  # a Conv whose weight is computed is no candidate

    def __post_init__(self) -> None:
        if self.max_kernel < 1:
            raise ValueError(f"max_kernel must be at least 1, got {self.max_kernel}")

    def prepare(self, graph: gs.Graph) -> None:
        self._opset = opset_of(graph)

    def _axes(self, w: np.ndarray) -> list[int]:
        return [i for i, k in enumerate(w.shape[2:]) if k > self.max_kernel]

    def check(self, ctx: Match, x: gs.Tensor, w: np.ndarray, b: gs.Tensor | None = None) -> str | None:
        if w.ndim < 3 or not self._axes(w):
            return QUIET
        if attr(ctx.root, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return "auto_pad SAME_*"
        strides = ctx.root.attrs.get("strides", [1] * (w.ndim - 2))
        if any(strides[i] != 1 for i in self._axes(w)):
            return "stride > 1 along a split kernel axis"
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, w: np.ndarray, b: gs.Tensor | None = None
                ) -> gs.Tensor:
        conv, spatial = ctx.root, w.ndim - 2
        pads = list(conv.attrs.get("pads", [0] * 2 * spatial)) if attr(conv, "auto_pad", "NOTSET") == "NOTSET" \
            else [0] * 2 * spatial
        dilations = list(conv.attrs.get("dilations", [1] * spatial))
        axes = self._axes(w)
        base = {k: v for k, v in conv.attrs.items() if k not in ("auto_pad", "pads", "kernel_shape")}
        branches = []
        for pieces in itertools.product(*(_slices(w.shape[2 + i], self.max_kernel) for i in axes)):
            new_pads, index = list(pads), [slice(None)] * w.ndim
            starts, ends = [], []
            for i, (lo, hi) in zip(axes, pieces):
                kernel, d = w.shape[2 + i], dilations[i]
                start, end = lo * d - pads[i], pads[i + spatial] - d * (kernel - hi)
                new_pads[i], new_pads[i + spatial] = max(0, -start), max(0, end)
                starts.append(max(0, start))
                ends.append(end if end < 0 else INT64_MAX)
                index[2 + i] = slice(lo, hi)
            source = self._slice(op, ctx, x, starts, ends, [2 + i for i in axes])
            weight = gs.Constant(make_name(ctx.graph, f"{conv.name or 'conv'}_weight_slice"),
                                 np.ascontiguousarray(w[tuple(index)]))
            inputs = [source, weight] + ([b] if b is not None and not branches else [])
            branches.append(same_type(op.Conv(*inputs, pads=new_pads, **base), x))
        return op.Sum(*branches)

    def _slice(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, starts: list[int], ends: list[int],
               axes: list[int]) -> gs.Tensor:
        if not any(starts) and all(e == INT64_MAX for e in ends):
            return x
        if self._opset < FIRST_SLICE_INPUTS_OPSET:
            return same_type(op.Slice(x, starts=starts, ends=ends, axes=axes), x)
        name = ctx.root.name or "conv"
        consts = [gs.Constant(make_name(ctx.graph, f"{name}_{key}"), np.array(v, dtype=np.int64))
                  for key, v in (("starts", starts), ("ends", ends), ("axes", axes))]
        return same_type(op.Slice(x, *consts), x)
