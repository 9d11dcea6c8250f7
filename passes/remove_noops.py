"""``remove_noops``: nodes that return their input unchanged are bypassed."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, onnx_dtype, producer
from graphopt.core.pass_infra import Pass, PassResult, register_pass

from ._graph_edits import bypass, kept_names, static_dim
from .insert_fusion_breaker import BREAKER_PREFIX

__all__ = ["RemoveNoops"]

INT64_MAX = 2**63 - 1
# What the shape checks answer: the shape is kept, it changes, it may (a dim it depends on is symbolic), or the
# input has no shape yet (shapes are then inferred once for every such candidate).
SAME, DIFFERS, UNKNOWN_DIM, NEED_SHAPE = "same", "differs", "a dim is not known", "no shape"
# Op -> (operand positions that may hold the neutral constant, its value).
_NEUTRAL = {"Add": ((0, 1), 0), "Sub": ((1,), 0), "Mul": ((0, 1), 1), "Div": ((1,), 1)}


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    t = node.inputs[i] if i < len(node.inputs) else None
    return None if t is None or (isinstance(t, gs.Variable) and t.is_empty()) else t


def _ints(t: gs.Tensor | None) -> list[int] | None:
    v = None if t is None else const_value(t)
    return None if v is None or v.dtype.kind not in "iu" else [int(e) for e in v.reshape(-1)]


def _dtype(x: gs.Tensor) -> int | None:
    """x's ONNX type, read from the tensor or, without inferring types, from a Cast, Constant or ConstantOfShape
    producing it."""
    dtype, node = onnx_dtype(x), producer(x)
    if dtype is None and node is not None and node.op == "Cast":
        return node.attrs.get("to")
    if dtype is None and node is not None and node.op in ("Constant", "ConstantOfShape") \
            and isinstance(value := node.attrs.get("value"), gs.Constant):
        return onnx_dtype(value)
    return dtype


def _dim_is(x: gs.Tensor, i: int, want: int) -> str:
    d = static_dim(x, i)
    return UNKNOWN_DIM if d is None else SAME if d == want else DIFFERS


def _worst(answers) -> str:
    answers = list(answers)
    return next((a for a in (DIFFERS, UNKNOWN_DIM) if a in answers), SAME)


def _reshape_keeps(x: gs.Tensor, target: list[int], allowzero: int) -> str:
    """Whether Reshape(x, target) keeps x's shape: each entry a 0 copying the dim, the dim itself, or the one -1
    standing for it while every other dim is kept."""
    if x.shape is None:
        return NEED_SHAPE
    if len(target) != len(x.shape):
        return DIFFERS
    return _worst(SAME if (t == 0 and not allowzero) or (t == -1 and target.count(-1) == 1) else _dim_is(x, i, t)
                  for i, t in enumerate(target))


def _broadcast_keeps(x: gs.Tensor, other: tuple[int, ...]) -> str:
    """Whether broadcasting x with a tensor of shape ``other`` leaves x's shape."""
    if x.shape is None:
        return NEED_SHAPE
    if len(other) > len(x.shape):
        return DIFFERS
    return _worst(SAME if d == 1 else _dim_is(x, i, d) for i, d in enumerate(other, len(x.shape) - len(other)))


def _slice_keeps(x: gs.Tensor, starts, ends, axes, steps) -> str:
    """Whether a Slice takes the whole of x: steps 1, starts at or before 0, ends at or past the dim (INT64_MAX
    whatever the dim)."""
    if any(v is None for v in (starts, ends, axes, steps)) or any(st != 1 for st in steps):
        return DIFFERS
    answers = []
    for s, e, a in zip(starts, ends, axes):
        if s == 0 and e >= INT64_MAX:
            continue
        if x.shape is None:
            return NEED_SHAPE
        d = static_dim(x, a)
        answers.append(UNKNOWN_DIM if d is None else
                       SAME if (s + d if s < 0 else s) <= 0 and (e + d if e < 0 else e) >= d else DIFFERS)
    return _worst(answers)


def _slice_params(node: gs.Node, opset: int):
    if opset < 10:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        n = len(starts or [])
        return starts, ends, node.attrs.get("axes", list(range(n))), [1] * n
    starts, ends = _ints(_input(node, 1)), _ints(_input(node, 2))
    n = len(starts or [])
    axes = _ints(_input(node, 3)) if _input(node, 3) is not None else list(range(n))
    steps = _ints(_input(node, 4)) if _input(node, 4) is not None else [1] * n
    return starts, ends, axes, steps


def _noop(node: gs.Node, opset: int, kept: set[int]) -> tuple[int | None, str | None]:
    """(the position of the input ``node`` returns unchanged, what the no-op is), or (None, why a candidate is
    not provably one: a near-miss, or ``NEED_SHAPE``), or (None, None)."""
    op, x = node.op, node.inputs[0]
    answer, what, source = DIFFERS, None, 0
    if op == "Identity":
        answer, what = SAME, "Identity"
    elif op == "Dropout":
        mask = node.outputs[1] if len(node.outputs) > 1 else None
        training = _input(node, 2)
        if mask is not None and (mask.outputs or id(mask) in kept):
            return None, "Dropout mask read"
        if training is not None and ((v := const_value(training)) is None or v.any()) \
                or not node.attrs.get("is_test", 1 if opset >= 7 else 0):
            return None, "Dropout in training mode (or not known to be in inference)"
        answer, what = SAME, "Dropout (inference)"
    elif op == "Cast":
        answer, what = (SAME if _dtype(x) == node.attrs.get("to") else DIFFERS), "Cast to its own type"
    elif op == "Reshape" and (target := _ints(_input(node, 1))) is not None:
        answer, what = _reshape_keeps(x, target, int(node.attrs.get("allowzero", 0))), "Reshape to the same shape"
    elif op == "Expand" and (shape := _ints(_input(node, 1))) is not None:
        answer, what = _broadcast_keeps(x, tuple(shape)), "Expand to the same shape"
    elif op == "Pad":
        pads = _ints(_input(node, 1)) if opset >= 11 else node.attrs.get("pads", node.attrs.get("paddings"))
        answer, what = (SAME if pads is not None and not any(pads) else DIFFERS), "Pad by zeros"
    elif op == "Slice":
        answer, what = _slice_keeps(x, *_slice_params(node, opset)), "Slice of the full range"
    elif op == "Transpose":
        perm = node.attrs.get("perm")
        if perm is not None:
            answer = SAME if list(perm) == list(range(len(perm))) else DIFFERS
        else:  # the default perm reverses the axes: the identity at rank 0 and 1 only
            answer = NEED_SHAPE if x.shape is None else SAME if len(x.shape) <= 1 else DIFFERS
        what = "Transpose with the identity perm"
    elif op in _NEUTRAL and len(node.inputs) == 2:
        slots, neutral = _NEUTRAL[op]
        for k in slots:
            c = const_value(node.inputs[k])
            if c is not None and c.size and np.all(c == neutral):  # ONNX types both operands alike
                answer, what, source = _broadcast_keeps(node.inputs[1 - k], c.shape), f"{op} {neutral}", 1 - k
                break
    if answer == SAME:
        return source, what
    return None, None if answer == DIFFERS else NEED_SHAPE if answer == NEED_SHAPE else f"{what}? {answer}"


@register_pass("remove_noops")
class RemoveNoops(Pass):
    """Bypass nodes that return their input unchanged (Identity, inference Dropout, Cast to its own type, Reshape /
    Expand keeping the shape, Pad by zeros, Slice of everything, identity Transpose, ``x + 0``, ``x * 1``, ...).

    - Identity;
    - Dropout in inference (no ``training_mode``, or a constant false one; ``is_test`` before opset 7) whose mask
      nothing reads;
    - Cast to the type its input has (known without inference: a typed tensor, a Constant, another Cast's output);
    - Reshape whose target keeps the input's shape (each entry a 0 copying the dim, the dim itself, or the one -1
      standing for it), Expand to a shape that broadcasting leaves unchanged;
    - Pad by all-zero pads (any mode); Slice of the full range (steps 1, starts at or before 0, ends at or past the
      dim, or INT64_MAX with the dim unknown); Transpose with the identity perm;
    - ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1`` with a constant of zeros / ones whose
      broadcasting keeps x's shape. Exact but for the sign of a zero: ``-0.0 + 0`` is ``+0.0``.

    A graph output keeps its name through an Identity; fusion breakers (nodes named ``fusion_breaker*``, put there on
    purpose by ``insert_fusion_breaker``) stay. Shapes are inferred only when a candidate needs one. Near-misses (a
    Dropout whose mask is read, a no-op but for a dim that is not known) are counted in ``skipped``.

    Why: on the NPU every node is a task, and shape no-ops can force format conversions around them; removing them
    lets the other rewrites' patterns line up. Sources: onnxscript ``_no_op.py`` / ``_basic_rules.py`` /
    ``_collapse_slices.py`` (its Add / Mul patterns match literal scalars only); onnx-ir ``identity_elimination``;
    onnxslim's eliminations; msit ``EmptySliceFix`` (a related ATC-compatibility case).
    """

    library = True

    def run(self, graph: gs.Graph) -> PassResult:
        kept, opset = kept_names(graph), int(graph.opset)
        candidates = [n for n in graph.nodes if n.inputs and n.outputs and (n.domain or "") in ("", "ai.onnx")
                      and not n.name.startswith(BREAKER_PREFIX)]
        unknown = [t for n in candidates if _noop(n, opset, kept)[1] == NEED_SHAPE for t in n.inputs[:2]]
        if unknown:
            ensure_shapes(graph, unknown)
        removed, skipped, renamed = Counter(), Counter(), {}
        for node in candidates:  # in graph order, each seeing the inputs earlier bypasses gave it
            source, what = _noop(node, opset, kept)
            if source is None:
                if what and what != NEED_SHAPE:
                    skipped[what] += 1
                continue
            if node.op == "Identity" and id(node.outputs[0]) in kept:
                continue  # already the cheapest way to keep a graph output's name
            bypass(node, node.inputs[source], kept, renamed)
            removed[what] += 1
        total = sum(removed.values())
        return PassResult(total > 0, {"rewritten": total, "removed": dict(removed), "skipped": dict(skipped)},
                          renamed=renamed)
