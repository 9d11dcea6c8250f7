"""``fold_affine_into_conv``: a per-channel scale and shift (``Mul``/``Add`` by constants) right before a ``Conv``
becomes part of the Conv's weight and bias."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, make_name, producer
from graphopt.core.pass_infra import Pass, PassResult, register_pass

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


def _affine_chain(conv: gs.Node, channels: int, rank: int,
                  outputs: set[str]) -> tuple[list[tuple[gs.Node, np.ndarray]], gs.Tensor]:
    """The Mul/Add-by-channel-constant nodes right before ``conv``, in data order, each read by the next one only
    (not a graph output either), and the tensor the first one reads."""
    chain: list[tuple[gs.Node, np.ndarray]] = []
    x = conv.inputs[0]
    while True:
        node = producer(x)
        if node is None or node.op not in ("Mul", "Add") or len(node.inputs) != 2 or len(x.outputs) != 1 \
                or x.name in outputs:
            break
        values = [const_value(t) for t in node.inputs]
        k = 1 if values[1] is not None else 0 if values[0] is not None else None
        if k is None or values[1 - k] is not None:
            break
        vec = channel_vector(values[k], channels, rank)
        if vec is None or np.dtype(values[k].dtype) != np.dtype(node.inputs[1 - k].dtype or values[k].dtype):
            break
        chain.insert(0, (node, vec))
        x = node.inputs[1 - k]
    return chain, x


@register_pass("fold_affine_into_conv")
class FoldAffineIntoConv(Pass):
    """Fold a per-channel affine map just before a Conv into the Conv: ``Conv(x * s + t, W, b)`` becomes
    ``Conv(x, W * s, b + sum(W * t))``, for any chain of ``Mul``/``Add`` by per-channel constants (``[C, 1, 1]`` or
    ``[1, C, 1, 1]``; Add-then-Mul as well), grouped convs included. The GroupNorm of ShiftViT and other
    channels-first blocks ends in such a Mul -> Add before a 1x1 Conv: two full passes over the activation per
    block that the runtime (onnxruntime, ATC) then does not run.

    Left alone, with the reason in ``stats["skipped"]``: a shift before a padded Conv (the padded border would not
    see it; a scale alone folds, since padding is zero either way), a Mul/Add result read by anything else, a
    single-number constant (an activation's, e.g. GELU's 0.5), weights or bias that are not constants. Exact up to
    floating-point rounding: the new weights are computed in float64 and stored in the weights' dtype.
    """

    def run(self, graph: gs.Graph) -> PassResult:
        folded, removed, skipped = 0, Counter(), Counter()
        outputs = {t.name for t in graph.outputs}
        for conv in [n for n in graph.nodes if n.op == "Conv"]:
            weight = const_value(conv.inputs[1]) if len(conv.inputs) > 1 else None
            if weight is None or weight.dtype.kind != "f" or weight.ndim < 3:
                continue
            has_bias = len(conv.inputs) > 2 and bool(conv.inputs[2].name)
            bias = const_value(conv.inputs[2]) if has_bias else None
            groups = int(conv.attrs.get("group", 1))
            per_group = weight.shape[1]
            channels = groups * per_group
            chain, source = _affine_chain(conv, channels, weight.ndim, outputs)
            if not chain:
                continue
            if has_bias and bias is None:
                skipped["bias is not a constant"] += 1
                continue
            scale, shift = np.ones(channels), np.zeros(channels)
            for node, vec in chain:
                if node.op == "Mul":
                    scale, shift = scale * vec, shift * vec
                else:
                    shift = shift + vec
            if shift.any() and not _conv_pads_zero(conv):
                skipped["shift before a padded Conv (its border would not see the shift)"] += 1
                continue
            out_channels = weight.shape[0]
            # Output channel o reads input channels group(o) * per_group ... + per_group - 1.
            rows = np.arange(out_channels) // (out_channels // groups)
            expand = (slice(None), slice(None)) + (None,) * (weight.ndim - 2)
            w64 = weight.astype(np.float64)
            new_weight = w64 * scale.reshape(groups, per_group)[rows][expand]
            new_bias = (np.zeros(out_channels) if bias is None else bias.astype(np.float64)) \
                + (w64 * shift.reshape(groups, per_group)[rows][expand]).reshape(out_channels, -1).sum(axis=1)
            base = conv.name or "conv"
            conv.inputs[0] = source
            conv.inputs[1] = gs.Constant(make_name(graph, f"{base}_weight_affine"), new_weight.astype(weight.dtype))
            if has_bias or shift.any():
                b = gs.Constant(make_name(graph, f"{base}_bias_affine"),
                                new_bias.astype(bias.dtype if bias is not None else weight.dtype))
                if has_bias:
                    conv.inputs[2] = b
                else:
                    conv.inputs.append(b)
            folded += 1
            removed.update(node.op for node, _ in chain)
        stats = {"convs": folded, "removed": dict(removed), "skipped": dict(skipped)}
        return PassResult(folded > 0, stats)
