"""Pattern-matching helpers. A matcher returns what it found, or a ``NoMatch`` carrying the reason it did not
match, so a pass that leaves something alone can say why in its stats."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import onnx_graphsurgeon as gs

from .ir import const_value, producer

__all__ = ["NoMatch", "match_path_down", "match_path_up", "single_consumer", "rank_of", "const_int_list"]


@dataclass(frozen=True)
class NoMatch:
    """A failed match and why. Falsy, so ``if not (m := matcher(...)): skipped[m.reason] += 1`` reads well."""

    reason: str

    def __bool__(self) -> bool:
        return False


def single_consumer(tensor: gs.Tensor) -> gs.Node | NoMatch:
    if len(tensor.outputs) != 1:
        return NoMatch(f"{tensor.name} has {len(tensor.outputs)} consumers, expected 1")
    return tensor.outputs[0]


def match_path_down(start: gs.Node, ops: Sequence[str]) -> list[gs.Node] | NoMatch:
    """Follow first outputs from ``start`` (whose op must be ``ops[0]``) through nodes of types ``ops[1:]``.
    Each intermediate output must feed exactly the next node of the path."""
    if start.op != ops[0]:
        return NoMatch(f"{start.name} is {start.op}, expected {ops[0]}")
    path = [start]
    for op in ops[1:]:
        nxt = single_consumer(path[-1].outputs[0])
        if not nxt:
            return nxt
        if nxt.op != op:
            return NoMatch(f"{nxt.name} is {nxt.op}, expected {op}")
        path.append(nxt)
    return path


def match_path_up(end: gs.Node, ops: Sequence[str], input_index: int = 0) -> list[gs.Node] | NoMatch:
    """Follow input ``input_index`` upwards from ``end`` (type ``ops[-1]``) through producers of ``ops[:-1]``."""
    if end.op != ops[-1]:
        return NoMatch(f"{end.name} is {end.op}, expected {ops[-1]}")
    path = [end]
    for op in reversed(ops[:-1]):
        if len(path[-1].inputs) <= input_index:
            return NoMatch(f"{path[-1].name} has no input {input_index}")
        prev = producer(path[-1].inputs[input_index])
        if prev is None or prev.op != op:
            return NoMatch(f"input of {path[-1].name} is {prev.op if prev else 'not computed'}, expected {op}")
        path.append(prev)
    return list(reversed(path))


def rank_of(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def const_int_list(tensor: gs.Tensor | None) -> list[int] | None:
    value = const_value(tensor)
    return None if value is None else [int(v) for v in value.reshape(-1)]
