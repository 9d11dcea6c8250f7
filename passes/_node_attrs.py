"""Reading and writing the operands ONNX moved from attributes to inputs across opsets (``axes``, ``pads``,
``split``), optional inputs, and the small facts the library's rules check (a default-domain node, a float dtype)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, make_name

__all__ = ["attr", "absent", "optional_input", "ints_operand", "ints_value", "is_float", "is_onnx", "scalar",
           "same_type"]


def attr(node: gs.Node, key: str, default=None):
    """An attribute's value, bytes decoded (``auto_pad``, ``mode``)."""
    value = node.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def absent(node: gs.Node, i: int) -> bool:
    """Whether optional input ``i`` is not given (missing, or the empty name ONNX uses to skip one)."""
    return i >= len(node.inputs) or (isinstance(node.inputs[i], gs.Variable) and not node.inputs[i].name)


def optional_input(node: gs.Node, i: int) -> gs.Tensor | None:
    return None if absent(node, i) else node.inputs[i]


def is_onnx(node: gs.Node) -> bool:
    return (node.domain or "") in ("", "ai.onnx")


def is_float(value: np.ndarray | None) -> bool:
    return value is not None and value.dtype.kind == "f"


def scalar(value: np.ndarray | None) -> float | None:
    """The one number of a constant of one element, else None."""
    if value is None or value.size != 1:
        return None
    return value.reshape(()).item()


def ints_operand(node: gs.Node, key: str, index: int, first_input_opset: int, opset: int) -> list[int] | None:
    """An int list operand given as attribute ``key`` before ``first_input_opset`` and as input ``index`` from it
    on (``axes`` of ReduceMean / Squeeze / Unsqueeze, ``pads`` of Pad, ``split`` of Split). None when it is not
    given or not constant; use ``absent`` to tell the two apart where the difference matters."""
    if opset < first_input_opset:
        value = node.attrs.get(key)
        return None if value is None else [int(v) for v in value]
    if absent(node, index):
        return None
    value = const_value(node.inputs[index])
    return None if value is None or value.dtype.kind not in "iu" else [int(v) for v in value.reshape(-1)]


def ints_value(graph: gs.Graph, node_name: str, key: str, values: list[int], first_input_opset: int,
               opset: int) -> tuple[list[gs.Tensor], dict]:
    """The extra inputs and attributes that give a node the int list ``values`` as operand ``key``: an int64
    constant input from ``first_input_opset`` on, an attribute before it."""
    if opset < first_input_opset:
        return [], {key: list(values)}
    const = gs.Constant(make_name(graph, f"{node_name}_{key}"), np.array(values, dtype=np.int64))
    return [const], {}


def same_type(made: gs.Variable, like: gs.Tensor) -> gs.Variable:
    """``made`` (an intermediate a rule's builder made) typed as ``like``, unknown when ``like``'s type is: the
    builder types a tensor it cannot type as float32, which an fp16 or integer graph's value_info would keep."""
    made.dtype = like.dtype
    return made
