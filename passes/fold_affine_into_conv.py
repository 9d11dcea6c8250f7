"""``fold_affine_into_conv``: a per-channel scale and shift (``Mul``/``Add`` by constants) right before a ``Conv``
becomes part of the Conv's weight and bias."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, make_name, producer
from graphopt.core.pass_infra import PassResult, register_pass
from graphopt.core.rules import QUIET, Match, NodeBuilder, RewritePass

__all__ = ["FoldAffineIntoConv", "channel_vector"]


def channel_vector(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as one number per channel when, broadcast against a ``[N, C, ...]`` tensor of ``rank`` dims, it
    varies along C only and has exactly C > 1 elements (``[C, 1, 1]``, ``[1, C, 1, 1]``, ...); None otherwise. A
    single number is refused on purpose: it is how activations spell their constants (GELU's ``* 0.5``), and
    folding it would hide the activation from the runtime's fusions."""
    if value.ndim > rank or value.size != channels or channels < 2 or value.dtype.kind != "f":
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[1] != channels:
        return None
    return value.reshape(channels)


def _conv_pads_zero(node: gs.Node) -> bool:
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return False
    return not any(node.attrs.get("pads", []))


# The longest Mul/Add chain before a Conv that is folded (a norm's affine tail is two).
MAX_CHAIN = 4


def _chain(op, x, depth: int):
    for i in range(depth):  # c0 is the constant farthest from the Conv
        x = op.any_of(op.Mul(x, op.const(f"c{i}")), op.Add(x, op.const(f"c{i}")))
    return x


def _pattern(depth: int, bias: bool):
    if bias:
        return lambda op, x, b: op.Conv(_chain(op, x, depth), op.const("w"), b)
    return lambda op, x: op.Conv(_chain(op, x, depth), op.const("w"))


def _chain_nodes(conv: gs.Node, depth: int) -> list[gs.Node]:
    """The ``depth`` matched Mul/Add nodes before ``conv``, in data order."""
    nodes, t = [], conv.inputs[0]
    for _ in range(depth):
        nodes.insert(0, producer(t))
        t = next(i for i in nodes[0].inputs if const_value(i) is None)
    return nodes


@register_pass("fold_affine_into_conv")
class FoldAffineIntoConv(RewritePass):
    """Fold a per-channel affine map just before a Conv into the Conv: ``Conv(x * s + t, W, b)`` becomes
    ``Conv(x, W * s, b + sum(W * t))``, for a chain of up to four ``Mul``/``Add`` by per-channel constants
    (``[C, 1, 1]`` or ``[1, C, 1, 1]``; Add-then-Mul as well; of a longer chain, the four nearest the Conv),
    grouped convs included. The GroupNorm of ShiftViT and other
    channels-first blocks ends in such a Mul -> Add before a 1x1 Conv: two full passes over the activation per
    block that the runtime (onnxruntime, ATC) then does not run.

    Left alone, with the reason in ``stats["skipped"]``: a shift before a padded Conv (the padded border would not
    see it; a scale alone folds, since padding is zero either way), a Mul/Add result read by anything else, a
    single-number constant (an activation's, e.g. GELU's 0.5), weights or bias that are not constants. Exact up to
    floating-point rounding: the new weights are computed in float64 and stored in the weights' dtype.
    """

    # Longest chain first: a chain whose farthest constant is not per-channel falls back to a shorter one.
    patterns = tuple(_pattern(d, b) for d in range(MAX_CHAIN, 0, -1) for b in (False, True))
    count_misses = False  # a Conv without an affine chain before it is no candidate

    def _affine(self, ctx: Match, w: np.ndarray, consts: dict[str, np.ndarray]):
        """(chain nodes, per-channel scale, shift) of a match, or QUIET when it is no per-channel affine map."""
        if w.dtype.kind != "f" or w.ndim < 3:
            return QUIET
        channels = int(ctx.root.attrs.get("group", 1)) * w.shape[1]
        chain = _chain_nodes(ctx.root, len(consts))
        scale, shift = np.ones(channels), np.zeros(channels)
        for i, node in enumerate(chain):
            value = consts[f"c{i}"]
            operand = next(t for t in node.inputs if const_value(t) is None) \
                if sum(const_value(t) is None for t in node.inputs) == 1 else None
            vec = channel_vector(value, channels, w.ndim)
            if operand is None or vec is None or np.dtype(value.dtype) != np.dtype(operand.dtype or value.dtype):
                return QUIET
            scale, shift = (scale * vec, shift * vec) if node.op == "Mul" else (scale, shift + vec)
        return chain, scale, shift

    def check(self, ctx: Match, x: gs.Tensor, w: np.ndarray, b: gs.Tensor | None = None,
              **consts: np.ndarray) -> str | None:
        affine = self._affine(ctx, w, consts)
        if isinstance(affine, str):
            return affine
        if b is not None and b.name and const_value(b) is None:
            return "bias is not a constant"
        if affine[2].any() and not _conv_pads_zero(ctx.root):
            return "shift before a padded Conv (its border would not see the shift)"
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, w: np.ndarray, b: gs.Tensor | None = None,
                **consts: np.ndarray) -> None:
        # The Conv itself takes the new weights (it keeps its name and place); the chain is left dead.
        graph, conv = ctx.graph, ctx.root
        chain, scale, shift = self._affine(ctx, w, consts)
        bias = None if b is None or not b.name else const_value(b)
        groups, per_group = int(conv.attrs.get("group", 1)), w.shape[1]
        out_channels = w.shape[0]
        # Output channel o reads input channels group(o) * per_group ... + per_group - 1.
        rows = np.arange(out_channels) // (out_channels // groups)
        expand = (slice(None), slice(None)) + (None,) * (w.ndim - 2)
        w64 = w.astype(np.float64)
        new_weight = w64 * scale.reshape(groups, per_group)[rows][expand]
        new_bias = (np.zeros(out_channels) if bias is None else bias.astype(np.float64)) \
            + (w64 * shift.reshape(groups, per_group)[rows][expand]).reshape(out_channels, -1).sum(axis=1)
        base = conv.name or "conv"
        conv.inputs[0] = x
        conv.inputs[1] = gs.Constant(make_name(graph, f"{base}_weight_affine"), new_weight.astype(w.dtype))
        if bias is not None or shift.any():
            new_b = gs.Constant(make_name(graph, f"{base}_bias_affine"),
                                new_bias.astype(bias.dtype if bias is not None else w.dtype))
            if bias is not None:
                conv.inputs[2] = new_b
            else:
                conv.inputs.append(new_b)
        self._removed.update(n.op for n in chain)

    def run(self, graph: gs.Graph) -> PassResult:
        self._removed: Counter[str] = Counter()
        result = super().run(graph)
        stats = {"convs": result.stats["rewritten"], "removed": dict(self._removed),
                 "skipped": result.stats["skipped"]}
        return PassResult(result.changed, stats)
