"""Exact shape-arithmetic folding for ``fold_constants``: the value of integer tensors computed from ``Shape`` ops,
element by element (a known dim a number, a symbolic one its name), folded where every element is known, and
Reshape targets made constant where only a dynamic batch kept them computed."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, make_name, producer
from graphopt.core.shape_arith import slice_range

__all__ = ["ShapeValue", "shape_value", "fold_shape_values", "constant_reshape_targets", "const_ints",
           "default_domain", "is_output"]

_INT_LIMITS = {onnx.TensorProto.INT64: (-(2**63), 2**63 - 1), onnx.TensorProto.INT32: (-(2**31), 2**31 - 1),
               onnx.TensorProto.INT16: (-(2**15), 2**15 - 1), onnx.TensorProto.INT8: (-128, 127),
               onnx.TensorProto.UINT64: (0, 2**64 - 1), onnx.TensorProto.UINT32: (0, 2**32 - 1),
               onnx.TensorProto.UINT16: (0, 2**16 - 1), onnx.TensorProto.UINT8: (0, 255)}


def default_domain(node: gs.Node) -> bool:
    """An ai.onnx op (gs reads a node without a domain field as domain None, one with it as "")."""
    return (node.domain or "") in ("", "ai.onnx")


def is_output(t: gs.Tensor, graph: gs.Graph) -> bool:
    """Whether ``t`` is one of ``graph``'s outputs (whose producer stays, so its name does)."""
    return any(o is t for o in graph.outputs)


@dataclass(frozen=True)
class ShapeValue:
    """The value of a rank-0 or rank-1 integer tensor computed from ``Shape`` ops: each element an int where it is
    known, the symbol of the dim it copies (``"batch"``) where that dim is symbolic, None where it is unknown."""

    elements: tuple
    scalar: bool  # rank 0 (one element) rather than rank 1
    dtype: int  # ONNX element type

    @property
    def static(self) -> bool:
        return all(isinstance(e, int) for e in self.elements)

    def array(self) -> np.ndarray:
        values = np.array(self.elements, dtype=onnx.helper.tensor_dtype_to_np_dtype(self.dtype))
        return values.reshape(()) if self.scalar else values


# Attributes each modelled op may carry; any other attribute (a newer opset's, a typo a runtime ignores) means
# the op is not modelled: its value stays unknown and the node unfolded here.
_SHAPE_OPS = {"Shape": {"start", "end"}, "Size": set(), "Identity": set(), "Cast": {"to", "saturate", "round_mode"},
              "Gather": {"axis"}, "Slice": {"starts", "ends", "axes"}, "Concat": {"axis"}, "Unsqueeze": {"axes"},
              "Squeeze": {"axes"}}


def const_ints(t: gs.Tensor | None) -> np.ndarray | None:
    """``t``'s value when it is a constant integer tensor, else None."""
    v = const_value(t) if t is not None and not t.is_empty() else None
    return None if v is None or v.dtype.kind not in "iu" else v


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    return node.inputs[i] if len(node.inputs) > i and not node.inputs[i].is_empty() else None


def _axis_ok(axes) -> bool:
    """Axes naming the only axis of a rank-1 tensor."""
    if axes is None or len(axes) != 1:
        return False
    axis = np.asarray(axes).reshape(-1)[0]
    return isinstance(axis, (int, np.integer)) and int(axis) in (0, -1)


def shape_value(t: gs.Tensor, memo: dict | None = None, opset: int | None = None) -> ShapeValue | None:
    """What ``t`` holds if it is integer shape arithmetic (``ShapeValue``), None when it is anything else.

    Follows constants and, with ONNX's full semantics of every attribute and input, Shape (start / end), Size,
    Identity, Cast to an integer type, Gather on axis 0 (negative indices), Slice (opset 1 attributes or inputs:
    axes, negative steps, clamping), Concat, Unsqueeze of a scalar and Squeeze to one. A dim of unknown size is
    an unknown element; only dims the shape annotations give as numbers become numbers. ``opset``: the graph's
    default-domain opset (for Slice / Unsqueeze / Squeeze, whose parameters moved from attributes to inputs)."""
    memo = {} if memo is None else memo
    key = id(t)
    if key not in memo:
        memo[key] = None  # a cycle (invalid graph) reads as unknown
        memo[key] = _shape_value(t, memo, opset)
    return memo[key]


def _shape_value(t: gs.Tensor, memo: dict, opset: int | None) -> ShapeValue | None:
    v = const_ints(t)
    if v is not None:
        return ShapeValue(tuple(int(x) for x in v.reshape(-1)), v.ndim == 0,
                          onnx.helper.np_dtype_to_tensor_dtype(v.dtype)) if v.ndim <= 1 else None
    node = producer(t)
    if node is None or not default_domain(node) or node.op not in _SHAPE_OPS \
            or not set(node.attrs) <= _SHAPE_OPS[node.op] or len(node.outputs) != 1 or not node.inputs:
        return None
    a = node.attrs
    if node.op in ("Shape", "Size"):
        shape = node.inputs[0].shape
        if shape is None:
            return None
        dims = tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else d if isinstance(d, str) and d
                     else None for d in shape)
        if node.op == "Size":
            return ShapeValue((int(np.prod(dims, dtype=np.int64)),), True, onnx.TensorProto.INT64) \
                if all(isinstance(d, int) for d in dims) else None
        # Shape-15's start / end: negative counts from the end, both clamped to [0, rank] (Python's slicing).
        return ShapeValue(dims[int(a.get("start", 0)):int(a["end"]) if "end" in a else None], False,
                          onnx.TensorProto.INT64)
    data = shape_value(node.inputs[0], memo, opset)
    if data is None:
        return None
    if node.op == "Identity":
        return data
    if node.op == "Cast":
        to = int(a["to"])
        if to not in _INT_LIMITS:
            return None
        lo, hi = _INT_LIMITS[to]
        # A symbolic dim fits int32 / int64 (tensors that size do not exist); a narrower type may wrap it.
        return ShapeValue(tuple(e if isinstance(e, int) and lo <= e <= hi
                                else e if isinstance(e, str) and to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
                                else None for e in data.elements), data.scalar, to)
    if data.scalar and node.op != "Unsqueeze":
        return None
    n = len(data.elements)
    if node.op == "Gather":
        idx = const_ints(_input(node, 1))
        if not _axis_ok([a.get("axis", 0)]) or idx is None or idx.ndim > 1 \
                or any(not -n <= int(i) < n for i in idx.reshape(-1)):
            return None  # out of range: an error at run time, not ours to fold
        return ShapeValue(tuple(data.elements[int(i)] for i in idx.reshape(-1)), idx.ndim == 0, data.dtype)
    if node.op == "Slice":
        if opset is not None and opset < 10:
            if len(node.inputs) != 1:
                return None
            starts, ends, axes, steps = a.get("starts"), a.get("ends"), a.get("axes", [0]), [1]
        else:
            if a:
                return None
            starts, ends = const_ints(_input(node, 1)), const_ints(_input(node, 2))
            axes = const_ints(_input(node, 3)) if _input(node, 3) is not None else [0]
            steps = const_ints(_input(node, 4)) if _input(node, 4) is not None else [1]
            if _input(node, 3) is not None and axes is None or _input(node, 4) is not None and steps is None:
                return None
        if starts is None or ends is None or len(starts) != 1 or len(ends) != 1 or not _axis_ok(axes) \
                or len(steps) != 1 or int(np.asarray(steps).reshape(-1)[0]) == 0:
            return None
        start, end, step = (int(np.asarray(x).reshape(-1)[0]) for x in (starts, ends, steps))
        return ShapeValue(tuple(data.elements[i] for i in slice_range(n, start, end, step)), False, data.dtype)
    if node.op == "Concat":
        parts = [data] + [shape_value(i, memo, opset) for i in node.inputs[1:]]
        if not _axis_ok([a.get("axis")]) or any(p is None or p.scalar or p.dtype != data.dtype for p in parts):
            return None
        return ShapeValue(tuple(e for p in parts for e in p.elements), False, data.dtype)
    if node.op in ("Unsqueeze", "Squeeze"):
        axes = a.get("axes") if opset is not None and opset < 13 else const_ints(_input(node, 1))
        if (opset is None or opset >= 13) and a:
            return None
        if node.op == "Unsqueeze":
            return ShapeValue(data.elements, False, data.dtype) if data.scalar and _axis_ok(axes) else None
        no_axes = axes is None and (opset is not None and opset < 13 or _input(node, 1) is None)
        return ShapeValue(data.elements, True, data.dtype) if n == 1 and (no_axes or _axis_ok(axes)) else None
    return None


def fold_shape_values(graph: gs.Graph, opset: int, keep: set[int] = frozenset()) -> int:
    """Replace each tensor of ``graph`` that shape arithmetic computes from static dims alone with its value
    (graph outputs keep their producer, nodes in ``keep`` stay). Returns the count."""
    memo: dict = {}
    folded = 0
    for node in graph.nodes:
        if node.op not in _SHAPE_OPS or len(node.outputs) != 1 or id(node) in keep:
            continue
        out = node.outputs[0]
        if isinstance(out, gs.Constant) or is_output(out, graph):
            continue
        v = shape_value(out, memo, opset)
        if v is not None and v.static:
            out.to_constant(v.array())
            out.inputs.clear()
            folded += 1
    return folded


def constant_reshape_targets(graph: gs.Graph, opset: int | None = None) -> tuple[int, Counter]:
    """Give each Reshape whose target is computed from ``Shape`` ops a constant target: known dims as numbers, a
    dim that copies the reshaped tensor's own dim at the same position (a dynamic batch) as 0, which Reshape
    reads as "keep this dim" (``allowzero`` 0). Exact whenever the shapes are; the dead Shape arithmetic goes at
    the next cleanup. Returns (targets made constant, reasons others were left)."""
    done, left = 0, Counter()
    memo: dict = {}
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) != 2 or const_ints(node.inputs[1]) is not None:
            continue
        if node.attrs.get("allowzero", 0):
            left["allowzero=1: 0 would mean a zero dim"] += 1
            continue
        v, data_shape = shape_value(node.inputs[1], memo, opset), node.inputs[0].shape
        if v is None or v.scalar or any(e is None for e in v.elements):
            left["target is not shape arithmetic"] += 1
            continue
        target = []
        for i, e in enumerate(v.elements):
            if isinstance(e, int):
                target.append(e)
            elif data_shape is not None and i < len(data_shape) and data_shape[i] == e:
                target.append(0)
            else:
                break
        if len(target) != len(v.elements):
            left["a dynamic dim that is not the input's at the same position"] += 1
            continue
        const = gs.Constant(make_name(graph, f"{node.name or 'reshape'}_target"), np.array(target, dtype=np.int64))
        node.inputs[1] = const
        done += 1
    return done, left
