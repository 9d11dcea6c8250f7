"""``gelu_precision``: find every GELU however it was exported, optionally fuse it into one ``Gelu`` node, and
ask ATC for a Gelu precision mode."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, opset_of, producer
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.pattern import NoMatch, rank_of

__all__ = ["GeluPrecision", "GeluMatch", "find_gelus", "match_erf_gelu", "match_tanh_gelu", "CONST_RTOL"]

# Relative tolerance on the pattern's constants (loosened to the constant's own dtype resolution, for fp16).
CONST_RTOL = 1e-4
SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
KAPPA = 0.044715
FIRST_GELU_OPSET = 20


@dataclass
class GeluMatch:
    """One decomposed GELU: ``y = gelu(x)`` computed by ``nodes``; ``consts`` are its constant operands."""

    form: str  # "erf" | "tanh"
    x: gs.Tensor
    y: gs.Tensor
    nodes: list[gs.Node]
    consts: list[np.ndarray]


def _close(value: np.ndarray, expected: float) -> bool:
    rtol = CONST_RTOL
    if np.issubdtype(value.dtype, np.floating):
        rtol = max(rtol, float(np.finfo(value.dtype).eps))
    return abs(float(value.reshape(())) - expected) <= rtol * abs(expected)


def _fmt(value: np.ndarray) -> str:
    return f"{float(value.reshape(())):.6g}"


def _scalar(t: gs.Tensor) -> np.ndarray | None:
    value = const_value(t)
    return value if value is not None and value.size == 1 else None


def _private(t: gs.Tensor, graph_outputs: set[int], what: str) -> gs.Node | NoMatch:
    """The one consumer of an intermediate tensor of the pattern (which fusing would delete)."""
    if id(t) in graph_outputs:
        return NoMatch(f"{what} is a graph output")
    if len(t.outputs) != 1:
        return NoMatch(f"{what} has {len(t.outputs)} consumers, expected 1")
    return t.outputs[0]


def _split_const(node: gs.Node) -> tuple[gs.Tensor, np.ndarray] | None:
    """(variable operand, one-element constant operand) of a binary Mul/Add (either order) or Div (divisor)."""
    if node.op not in ("Mul", "Add", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    ca, cb = _scalar(a), _scalar(b)
    if cb is not None and ca is None:
        return a, cb
    if ca is not None and cb is None and node.op != "Div":
        return b, ca
    return None


def _match_plus_one(node: gs.Node, outs, form: str, what: str):
    """The ``Add 1`` after ``erf(...)`` / ``tanh(...)``: (the Add node, (other input, constant)) or NoMatch."""
    add = _private(node.outputs[0], outs, what)
    if isinstance(add, NoMatch):
        return add
    split = _split_const(add)
    if add.op != "Add" or split is None:
        return NoMatch(f"{form}(...) feeds {add.op}, expected Add 1")
    if not _close(split[1], 1.0):
        return NoMatch(f"{form} form: {form}(...) + {_fmt(split[1])}, expected 1")
    return add, split


def _match_tail(one_plus: gs.Tensor, x: gs.Tensor, outs: set[int], form: str
                ) -> tuple[list[gs.Node], list[np.ndarray], gs.Tensor] | NoMatch:
    """The ``0.5 * x * (1 + f)`` end of both forms, from the tensor ``1 + f``. Accepts ``(x * t) * 0.5``,
    ``(x * t) / 2``, ``x * (t * 0.5)`` and ``(x * 0.5) * t`` / ``(x / 2) * t``, operands in either order."""
    m1 = _private(one_plus, outs, f"1 + {form}")
    if isinstance(m1, NoMatch):
        return m1
    if m1.op != "Mul" or len(m1.inputs) != 2:
        return NoMatch(f"1 + {form} feeds {m1.op}, expected Mul")
    other = m1.inputs[1] if m1.inputs[0] is one_plus else m1.inputs[0]
    if other is x:  # (x * t) * 0.5
        half = _private(m1.outputs[0], outs, f"x * (1 + {form})")
        if isinstance(half, NoMatch):
            return half
        split = _split_const(half)
        if split is None or half.op not in ("Mul", "Div"):
            return NoMatch(f"x * (1 + {form}) feeds {half.op}, expected Mul by 0.5 or Div by 2")
        c = split[1]
        want = 0.5 if half.op == "Mul" else 2.0
        if not _close(c, want):
            return NoMatch(f"{form} form: x * (1 + {form}) {'times' if half.op == 'Mul' else 'over'} {_fmt(c)}, "
                           f"expected {want}")
        return [m1, half], [c], half.outputs[0]
    c = _scalar(other)
    if c is not None:  # x * (t * 0.5)
        if not _close(c, 0.5):
            return NoMatch(f"{form} form: (1 + {form}) times {_fmt(c)}, expected 0.5")
        m2 = _private(m1.outputs[0], outs, f"0.5 * (1 + {form})")
        if isinstance(m2, NoMatch):
            return m2
        if m2.op != "Mul" or len(m2.inputs) != 2 or not any(t is x for t in m2.inputs):
            return NoMatch(f"0.5 * (1 + {form}) feeds {m2.op}, expected Mul by x")
        return [m1, m2], [c], m2.outputs[0]
    hx = producer(other)  # (x * 0.5) * t
    split = None if hx is None else _split_const(hx)
    if hx is None or split is None or hx.op not in ("Mul", "Div") or split[0] is not x:
        return NoMatch(f"1 + {form} is multiplied by {hx.op if hx else 'an input'}, expected x, 0.5 or 0.5 * x")
    want = 0.5 if hx.op == "Mul" else 2.0
    if not _close(split[1], want):
        return NoMatch(f"{form} form: x {'times' if hx.op == 'Mul' else 'over'} {_fmt(split[1])}, expected {want}")
    private = _private(other, outs, "0.5 * x")
    if isinstance(private, NoMatch):
        return private
    return [hx, m1], [split[1]], m1.outputs[0]


def match_erf_gelu(erf: gs.Node, outs: set[int]) -> GeluMatch | NoMatch:
    """``x * 0.5 * (1 + erf(x / sqrt(2)))`` around ``erf``: ``Div(x, sqrt 2)`` or ``Mul(x, 1/sqrt 2)`` ->
    Erf -> ``Add(1)`` -> the tail (see ``_match_tail``). TorchScript's export: Div -> Erf -> Add -> Mul(x) ->
    Mul(0.5)."""
    scale = producer(erf.inputs[0])
    split = None if scale is None else _split_const(scale)
    if scale is None or split is None or scale.op not in ("Div", "Mul"):
        return NoMatch("Erf input is not x / c or x * c")
    x, c = split
    if scale.op == "Div" and not _close(c, SQRT2):
        return NoMatch(f"erf form: x / {_fmt(c)}, expected sqrt(2) = {SQRT2:.6g}")
    if scale.op == "Mul" and not _close(c, 1.0 / SQRT2):
        return NoMatch(f"erf form: x * {_fmt(c)}, expected 1/sqrt(2) = {1 / SQRT2:.6g}")
    if isinstance(used := _private(erf.inputs[0], outs, "x / sqrt(2)"), NoMatch):
        return used
    plus_one = _match_plus_one(erf, outs, "erf", "erf(x / sqrt(2))")
    if isinstance(plus_one, NoMatch):
        return plus_one
    add, split1 = plus_one
    tail = _match_tail(add.outputs[0], x, outs, "erf")
    if isinstance(tail, NoMatch):
        return tail
    nodes, consts, y = tail
    return GeluMatch("erf", x, y, [scale, erf, add, *nodes], [c, split1[1], *consts])


def _cube_of(t: gs.Tensor, outs: set[int]) -> tuple[gs.Tensor, list[gs.Node], list[np.ndarray]] | NoMatch:
    """``t = x ** 3`` as ``Pow(x, 3)``, ``x * (x * x)`` or ``(x * x) * x``: (x, nodes, constants)."""
    node = producer(t)
    if node is None:
        return NoMatch("x^3 is not computed")
    if node.op == "Pow" and len(node.inputs) == 2:
        c = _scalar(node.inputs[1])
        if c is None or float(c.reshape(())) != 3.0:
            return NoMatch(f"tanh form: Pow exponent {'not constant' if c is None else _fmt(c)}, expected 3")
        return node.inputs[0], [node], [c]
    if node.op == "Mul" and len(node.inputs) == 2:
        for sq, x in (node.inputs, reversed(node.inputs)):
            sq_node = producer(sq)
            if (sq_node is not None and sq_node.op == "Mul" and len(sq_node.inputs) == 2
                    and sq_node.inputs[0] is x and sq_node.inputs[1] is x):
                if isinstance(used := _private(sq, outs, "x * x"), NoMatch):
                    return used
                return x, [sq_node, node], []
    return NoMatch(f"tanh form: kappa is applied to {node.op}, expected x^3")


def match_tanh_gelu(tanh: gs.Node, outs: set[int]) -> GeluMatch | NoMatch:
    """``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` around ``tanh`` (TorchScript's export of
    ``nn.GELU(approximate='tanh')``: Mul(x, x) -> Mul(x, .) -> Mul(0.044715) -> Add(x) -> Mul(sqrt(2/pi)) -> Tanh
    -> Add(1) -> Mul(x) -> Mul(0.5))."""
    scale = producer(tanh.inputs[0])
    split = None if scale is None else _split_const(scale)
    if scale is None or split is None or scale.op != "Mul":
        return NoMatch("Tanh input is not c * (...)")
    inner, beta = split
    if not _close(beta, SQRT_2_OVER_PI):
        return NoMatch(f"tanh form: {_fmt(beta)} * (...), expected sqrt(2/pi) = {SQRT_2_OVER_PI:.6g}")
    if isinstance(used := _private(tanh.inputs[0], outs, "sqrt(2/pi) * (...)"), NoMatch):
        return used
    add = producer(inner)
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return NoMatch("tanh form: sqrt(2/pi) multiplies something other than x + kappa * x^3")
    if isinstance(used := _private(inner, outs, "x + kappa * x^3"), NoMatch):
        return used
    for x, kx3 in (add.inputs, reversed(add.inputs)):
        kappa_node = producer(kx3)
        ksplit = None if kappa_node is None else _split_const(kappa_node)
        if kappa_node is None or kappa_node.op != "Mul" or ksplit is None:
            continue
        cube = _cube_of(ksplit[0], outs)
        if isinstance(cube, NoMatch) or cube[0] is not x:
            continue
        if not _close(ksplit[1], KAPPA):
            return NoMatch(f"tanh form: {_fmt(ksplit[1])} * x^3, expected {KAPPA}")
        if isinstance(used := _private(kx3, outs, "kappa * x^3"), NoMatch):
            return used
        if isinstance(used := _private(ksplit[0], outs, "x^3"), NoMatch):
            return used
        break
    else:
        return NoMatch("tanh form: Tanh argument is not sqrt(2/pi) * (x + 0.044715 * x^3)")
    plus_one = _match_plus_one(tanh, outs, "tanh", "tanh(...)")
    if isinstance(plus_one, NoMatch):
        return plus_one
    one, split1 = plus_one
    tail = _match_tail(one.outputs[0], x, outs, "tanh")
    if isinstance(tail, NoMatch):
        return tail
    nodes, consts, y = tail
    return GeluMatch("tanh", x, y, [*cube[1], kappa_node, add, scale, tanh, one, *nodes],
                     [*cube[2], ksplit[1], beta, split1[1], *consts])


def find_gelus(graph: gs.Graph) -> tuple[list[GeluMatch], list[gs.Node], Counter[str]]:
    """Every decomposed GELU (erf and tanh forms), every ``Gelu`` node, and why each other Erf/Tanh is not one."""
    outs = {id(t) for t in graph.outputs}
    matches: list[GeluMatch] = []
    nodes: list[gs.Node] = []
    skipped: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op == "Gelu" and node.domain in (None, "", "ai.onnx"):
            nodes.append(node)
        elif node.op in ("Erf", "Tanh") and node.inputs:
            m = match_erf_gelu(node, outs) if node.op == "Erf" else match_tanh_gelu(node, outs)
            if isinstance(m, NoMatch):
                skipped[m.reason] += 1
            else:
                matches.append(m)
    return matches, nodes, skipped


@register_pass("gelu_precision")
class GeluPrecision(Pass):
    """Recognise GELU in any of its exported forms; optionally fuse each into one ``Gelu`` node (opset >= 20);
    record an ATC precision mode for Gelu.

    Forms, with constants checked to 1e-4 relative (or the constant's dtype resolution, for fp16):
    - erf (exact): ``gelu(x) = x * 0.5 * (1 + erf(x / sqrt(2)))``; ``x / 1.4142135`` or ``x * 0.70710678``, the
      0.5 on the product, on ``(1 + erf)`` or on x, Mul operands in either order.
    - tanh: ``gelu(x) ~ 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``, with ``x^3`` as
      ``Pow(x, 3)``, ``x * (x * x)`` or ``(x * x) * x``.
    - an opset-20 ``Gelu`` node (``approximate`` "none" or "tanh").
    A near-GELU whose constant is off (``x / 1.5``), or whose intermediate values are used elsewhere, is left
    alone and the reason counted in ``stats["skipped"]``.

    ``fuse: true`` replaces each decomposed GELU by ``Gelu(x, approximate="none")`` (erf form) or
    ``Gelu(x, approximate="tanh")`` (tanh form): the same function, so outputs move by rounding only. The
    ``Gelu`` op exists from opset 20; on an older graph nothing is fused and the reason is in stats (the pass
    never raises the opset). ATC fuses the decomposed forms into its own Gelu itself, so fusing is optional.

    ``mode`` (``high_performance`` | ``high_precision``) asks ATC for that Gelu implementation
    (``op_precision.ini``: ``Gelu=<mode>``, the Twins seed's ``Gelu=high_performance``); it is recorded whenever
    a GELU of any form is found, and does not by itself change the graph.
    """

    mode: Literal["high_performance", "high_precision"] | None = field(
        default=None, metadata={"help": "ATC precision mode for Gelu (op_precision.ini), recorded when a GELU "
                                        "is found"})
    fuse: bool = field(default=False, metadata={"help": "replace each decomposed GELU by one Gelu node "
                                                        "(opset >= 20 only)"})

    def __post_init__(self) -> None:
        if self.mode not in (None, "high_performance", "high_precision"):
            raise ValueError(f"mode must be high_performance or high_precision, got {self.mode!r}")

    def run(self, graph: gs.Graph) -> PassResult:
        matches, gelu_nodes, skipped = find_gelus(graph)
        found = {"erf": sum(m.form == "erf" for m in matches), "tanh": sum(m.form == "tanh" for m in matches),
                 "gelu_node": len(gelu_nodes)}
        fused = 0
        opset = opset_of(graph)
        if self.fuse and matches:
            if opset < FIRST_GELU_OPSET:
                skipped[f"not fused: opset {opset} < {FIRST_GELU_OPSET} has no Gelu op "
                        "(the pass does not raise the opset)"] += len(matches)
            else:
                fused = self._fuse(graph, matches, skipped)
        stats = {"found": found, "fused": fused, "skipped": dict(skipped)}
        configs = {}
        if self.mode is not None and sum(found.values()):
            configs["op_precision"] = {"Gelu": self.mode}
        return PassResult(fused > 0, stats, configs)

    def _fuse(self, graph: gs.Graph, matches: list[GeluMatch], skipped: Counter[str]) -> int:
        # A constant of rank > 0 may broadcast x to a higher rank; the fused Gelu would not.
        if any(c.ndim > 0 for m in matches for c in m.consts):
            ensure_shapes(graph, [m.x for m in matches])
        fused = 0
        for m in matches:
            rank = rank_of(m.x)
            top = max(c.ndim for c in m.consts) if m.consts else 0
            if top > 0 and (rank is None or rank < top):
                skipped[f"not fused: a rank-{top} constant may broadcast x (rank {rank})"] += 1
                continue
            last = m.nodes[-1]
            approximate = "none" if m.form == "erf" else "tanh"
            gelu = gs.Node("Gelu", make_name(graph, f"{last.name}_gelu"), {"approximate": approximate},
                           [m.x], [m.y])
            last.outputs.clear()  # y is now produced by the Gelu; the old nodes are dead and cleanup drops them
            graph.nodes.append(gelu)
            fused += 1
        return fused
