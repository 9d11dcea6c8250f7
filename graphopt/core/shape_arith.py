"""Shape arithmetic evaluated with numpy, each op as ONNX defines it: the small integer, boolean and float results
(``Shape``, ``Gather``, ``Concat``, ``Where``, ``Range``, a rounding through float, ...) that shape probing
(``shape_probe``) evaluates between ONNX's per-node inferences."""
from __future__ import annotations

import functools
import math

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["EVALUATED", "attr", "evaluate", "slice_range"]


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray],
             known: dict[str, tuple[int, tuple[int, ...]]]) -> np.ndarray | None:
    """``node``'s (first) output value from its inputs' values and the known shapes (tensor -> (element type, dims)),
    None when not computable."""
    op = node.op_type
    if op == "Constant":
        t = attr(node, "value")
        return numpy_helper.to_array(t) if isinstance(t, onnx.TensorProto) else None
    if op in ("Shape", "Size"):
        if node.input[0] not in known:
            return None
        dims = known[node.input[0]][1]
        if op == "Size":
            return np.array(math.prod(dims), dtype=np.int64)
        return np.array(dims[attr(node, "start", 0):attr(node, "end", None)], dtype=np.int64)
    args = [values.get(n) if n else None for n in node.input]
    if not node.input or any(a is None for a, n in zip(args, node.input) if n):
        return None
    fn = OPS.get(op)
    return None if fn is None else fn(node, args)


def slice_range(n: int, start: int, end: int, step: int) -> range:
    """The indices ONNX's Slice takes along a dim of size ``n``: negative bounds count from the end, then start is
    clamped to [0, n] ([0, n-1] stepping backwards) and end to [0, n] ([-1, n-1] backwards). numpy's slicing
    differs stepping backwards from a start before the beginning: it takes nothing, ONNX starts at index 0."""
    start, end = start + n if start < 0 else start, end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return range(start, end, step)


def _slice(node, args):
    x = args[0]
    starts, ends = args[1], args[2]
    axes = args[3] if len(args) > 3 and args[3] is not None else np.arange(len(starts))
    steps = args[4] if len(args) > 4 and args[4] is not None else np.ones(len(starts), dtype=np.int64)
    for s, e, a, st in zip(starts, ends, axes, steps):
        axis = int(a) % x.ndim
        x = np.take(x, np.array(slice_range(x.shape[axis], int(s), int(e), int(st)), dtype=np.int64), axis=axis)
    return x


def _unsqueeze(node, args):
    axes = args[1] if len(args) > 1 and args[1] is not None else attr(node, "axes")
    out = args[0]
    rank = out.ndim + len(axes)
    for a in sorted(int(a) % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(node, args):
    axes = args[1] if len(args) > 1 and args[1] is not None else attr(node, "axes")
    return np.squeeze(args[0], axis=None if axes is None else tuple(int(a) for a in axes))


def _reshape(node, args):
    target = [int(d) for d in args[1]]
    target = [args[0].shape[i] if d == 0 else d for i, d in enumerate(target)]
    return args[0].reshape(target)


def _div(node, args):
    """ONNX's Div: integer division truncates toward zero (numpy's ``//`` floors)."""
    a, b = args
    if a.dtype.kind not in "iu":
        return a / b
    return (np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)).astype(np.result_type(a, b))


def _reduce_prod(node, args):
    axes = args[1] if len(args) > 1 and args[1] is not None else attr(node, "axes")  # an input from opset 18
    keep = bool(attr(node, "keepdims", 1))
    if axes is None or len(axes) == 0:
        if attr(node, "noop_with_empty_axes", 0):
            return args[0]
        return np.prod(args[0], keepdims=keep)
    return np.prod(args[0], axis=tuple(int(x) for x in axes), keepdims=keep)


def _constant_of_shape(node, args):
    value = attr(node, "value")
    fill = numpy_helper.to_array(value).reshape(()) if value is not None else np.float32(0)
    return np.full(tuple(int(d) for d in args[0]), fill, dtype=fill.dtype)


OPS = {
    "Identity": lambda n, a: a[0],
    "Cast": lambda n, a: a[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attr(n, "to"))),
    "Gather": lambda n, a: np.take(a[0], a[1], axis=attr(n, "axis", 0)),
    "Concat": lambda n, a: np.concatenate(a, axis=attr(n, "axis")),
    "Unsqueeze": _unsqueeze,
    "Transpose": lambda n, a: np.transpose(a[0], attr(n, "perm")),
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Reshape": _reshape,
    "Add": lambda n, a: a[0] + a[1],
    "Sub": lambda n, a: a[0] - a[1],
    "Mul": lambda n, a: a[0] * a[1],
    "Div": _div,
    "Equal": lambda n, a: np.equal(a[0], a[1]),
    "Less": lambda n, a: np.less(a[0], a[1]),
    "Greater": lambda n, a: np.greater(a[0], a[1]),
    "Not": lambda n, a: np.logical_not(a[0]),
    "Where": lambda n, a: np.where(a[0], a[1], a[2]),
    "Min": lambda n, a: functools.reduce(np.minimum, a),
    "Max": lambda n, a: functools.reduce(np.maximum, a),
    "Abs": lambda n, a: np.abs(a[0]),
    "Mod": lambda n, a: (np.fmod if attr(n, "fmod", 0) else np.mod)(a[0], a[1]),
    "Floor": lambda n, a: np.floor(a[0]),
    "Ceil": lambda n, a: np.ceil(a[0]),
    "Sqrt": lambda n, a: np.sqrt(a[0]),
    "Pow": lambda n, a: np.power(a[0], a[1]).astype(a[0].dtype),
    "Neg": lambda n, a: np.negative(a[0]),
    "ReduceProd": _reduce_prod,
    "Range": lambda n, a: np.arange(a[0], a[1], a[2], dtype=np.result_type(a[0], a[1], a[2])),
    "ConstantOfShape": _constant_of_shape,
    "Expand": lambda n, a: a[0] * np.ones(tuple(int(d) for d in a[1]), dtype=a[0].dtype),
}
EVALUATED = frozenset({"Constant", "Shape", "Size", *OPS})
