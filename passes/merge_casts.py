"""``merge_casts``: ``Cast(Cast(x))`` collapsed into one Cast where the first one loses nothing, and a Cast to the
type its input already has removed."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from graphopt.core.ir import ensure_shapes, onnx_dtype, producer
from graphopt.core.pass_infra import PassResult, register_pass
from graphopt.core.rules import Match, NodeBuilder, RewritePass

from ._graph_edits import bypass, drop_then_merge, kept_names

__all__ = ["MergeCasts", "holds_every_value"]

T = onnx.TensorProto
_UNSIGNED = {T.UINT8: 8, T.UINT16: 16, T.UINT32: 32, T.UINT64: 64}
_SIGNED = {T.INT8: 8, T.INT16: 16, T.INT32: 32, T.INT64: 64}
# Float types by (significand bits with the implicit one, largest exponent): a wider one holds every value of a
# narrower one when both numbers are at least as large (subnormals included, by the smaller exponent range).
_FLOATS = {T.FLOAT16: (11, 15), T.BFLOAT16: (8, 127), T.FLOAT: (24, 127), T.DOUBLE: (53, 1023)}


def holds_every_value(src: int, dst: int) -> bool:
    """Whether ONNX type ``dst`` represents every value of ``src`` exactly (so a Cast from ``src`` to ``dst`` loses
    nothing, and a second Cast after it sees the very values it would have seen from ``src``)."""
    if src == dst:
        return True
    if src == T.BOOL:
        return dst in _UNSIGNED or dst in _SIGNED or dst in _FLOATS
    if src in _UNSIGNED:
        bits = _UNSIGNED[src]
        return (_UNSIGNED.get(dst, 0) > bits or _SIGNED.get(dst, 0) > bits
                or dst in _FLOATS and _FLOATS[dst][0] >= bits)
    if src in _SIGNED:
        bits = _SIGNED[src]
        # A float with a p-bit significand holds every integer of magnitude up to 2^p (int8 in fp16: 11 >= 7 bits).
        return _SIGNED.get(dst, 0) > bits or dst in _FLOATS and _FLOATS[dst][0] >= bits - 1
    if src in _FLOATS and dst in _FLOATS:
        (p_src, e_src), (p_dst, e_dst) = _FLOATS[src], _FLOATS[dst]
        return p_dst >= p_src and e_dst >= e_src
    return False


def _name(dtype: int) -> str:
    return onnx.TensorProto.DataType.Name(dtype).lower()


# Types a value keeps its meaning through: a string's or a float8's conversion rules differ from the number's.
_NUMERIC = {T.BOOL, *_UNSIGNED, *_SIGNED, *_FLOATS}


@register_pass("merge_casts")
class MergeCasts(RewritePass):
    """``Cast(Cast(x: T0, to=T1), to=T2)`` -> ``Cast(x, to=T2)``, or ``x`` itself when ``T2 == T0``, exactly when
    ``T1`` holds every value of ``T0`` (bool into any number; an integer into a wider integer, or a float whose
    significand holds it: int8/uint8 into float16, int16 into float32, int32 into float64; a float into a float at
    least as wide in significand and exponent, not float16 <-> bfloat16): the first Cast then changes no value, and
    ONNX's Cast depends only on the value. ``Cast(x: T, to=T)`` is removed as well. So int32 -> int64 -> int32 and
    float16 -> float32 -> float16 collapse; float32 -> float16 -> float32 (rounds), int64 -> int32 -> int64
    (wraps) and float64 -> float32 -> float16 (rounds twice) are left, with the reason in ``skipped``, as are
    string and float8 types and a first Cast read elsewhere. A graph output keeps its name (through an Identity
    when the pair cancels).

    Why: every Cast is a separate vector kernel on the Ascend AI Core; msit's MergeCasts knowledge aims at "fewer
    type conversions, and easier structural merges for later knowledges" (but merges any pair, lossy ones
    included: this pass does not). Sources: onnxscript ``CastCast`` / ``CastIdentity``
    (``rewriter/rules/common/_basic_rules.py``: it allows float -> float16 / bfloat16 second hops only, which is
    inexact from float64); msit ``knowledge_merge_casts.py``.
    """

    library = True
    count_misses = False  # a Cast after anything but a Cast is no candidate

    def pattern(self, op, x):
        return op.Cast(op.Cast(x, to=op.attr("t1")), to=op.attr("t2"))

    def prepare(self, graph: gs.Graph) -> None:
        pairs = [n.inputs[0] for n in graph.nodes if n.op == "Cast" and n.inputs and (p := producer(n.inputs[0]))
                 is not None and p.op == "Cast" and p.inputs and onnx_dtype(p.inputs[0]) is None]
        if pairs:
            ensure_shapes(graph, [producer(t).inputs[0] for t in pairs])

    def check(self, ctx: Match, x: gs.Tensor, t1: int, t2: int) -> str | None:
        t0 = onnx_dtype(x)
        if t0 is None:
            return "input type unknown"
        if not {t0, t1, t2} <= _NUMERIC:
            return f"{_name(t0)} -> {_name(t1)} -> {_name(t2)}: not only bool, integer and float16/32/64 types"
        if not holds_every_value(t0, t1):
            return f"{_name(t0)} -> {_name(t1)} loses values"
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, t1: int, t2: int) -> gs.Tensor | None:
        if onnx_dtype(x) != t2:
            return op.Cast(x, **ctx.root.attrs)
        bypass(ctx.root, x, self._kept, self._renamed)
        return None

    def _same_type(self, graph: gs.Graph) -> int:
        removed = 0
        for node in list(graph.nodes):
            if (node.op == "Cast" and node.outputs and node.inputs and (node.domain or "") in ("", "ai.onnx")
                    and "to" in node.attrs and onnx_dtype(node.inputs[0]) == int(node.attrs["to"])):
                bypass(node, node.inputs[0], self._kept, self._renamed)
                removed += 1
        return removed

    def run(self, graph: gs.Graph) -> PassResult:
        self._kept, self._renamed = kept_names(graph), {}
        return drop_then_merge(self, graph, "Cast", lambda: self._same_type(graph), "same_type", self._kept,
                               self._renamed)
