"""``gelu_precision``: find every GELU however it was exported, optionally fuse it into one ``Gelu`` node, and
ask ATC for a Gelu precision mode."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import ensure_shapes, opset_of
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.pattern import rank_of
from graphopt.core.rules import Match, NodeBuilder, Rule, apply_match, find_matches

__all__ = ["GeluPrecision", "GeluMatch", "find_gelus", "CONST_RTOL"]

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


def _tails(op, x, t):
    """``0.5 * x * t`` in each exported spelling; each binds its constant under its own name, for the check."""
    return op.any_of(op.Mul(op.Mul(x, t), op.const("prod_half")), op.Div(op.Mul(x, t), op.const("prod_two")),
                     op.Mul(x, op.Mul(t, op.const("sum_half"))), op.Mul(op.Mul(x, op.const("x_half")), t),
                     op.Mul(op.Div(x, op.const("x_two")), t))


def _erf_gelu(op, x):
    scaled = op.any_of(op.Div(x, op.const("sqrt2")), op.Mul(x, op.const("inv_sqrt2")), _name="x / sqrt(2)",
                       _fail="Erf input is not x / c or x * c")
    erf = op.Erf(scaled, _name="erf(x / sqrt(2))", _anchor=True)
    return _tails(op, x, op.Add(erf, op.const("one"), _name="1 + erf"))


def _tanh_gelu(op, x):
    cube = op.any_of(op.Pow(x, 3), op.Mul(x, op.Mul(x, x, _name="x * x")), _name="x^3")
    inner = op.Add(x, op.Mul(cube, op.const("kappa"), _name="kappa * x^3"), _name="x + kappa * x^3",
                   _fail="tanh form: Tanh argument is not sqrt(2/pi) * (x + 0.044715 * x^3)")
    scaled = op.Mul(inner, op.const("beta"), _name="sqrt(2/pi) * (...)", _fail="Tanh input is not c * (...)")
    tanh = op.Tanh(scaled, _name="tanh(...)", _anchor=True)
    return _tails(op, x, op.Add(tanh, op.const("one"), _name="1 + tanh"))


# constant binding -> (value GELU needs, how a reason shows it: {f} is the form, {c} the constant found)
_CONSTANTS = {
    "sqrt2": (SQRT2, f"erf form: x / {{c}}, expected sqrt(2) = {SQRT2:.6g}"),
    "inv_sqrt2": (1 / SQRT2, f"erf form: x * {{c}}, expected 1/sqrt(2) = {1 / SQRT2:.6g}"),
    "beta": (SQRT_2_OVER_PI, f"tanh form: {{c}} * (...), expected sqrt(2/pi) = {SQRT_2_OVER_PI:.6g}"),
    "kappa": (KAPPA, f"tanh form: {{c}} * x^3, expected {KAPPA}"),
    "one": (1.0, "{f} form: {f}(...) + {c}, expected 1"),
    "prod_half": (0.5, "{f} form: x * (1 + {f}) times {c}, expected 0.5"),
    "prod_two": (2.0, "{f} form: x * (1 + {f}) over {c}, expected 2.0"),
    "sum_half": (0.5, "{f} form: (1 + {f}) times {c}, expected 0.5"),
    "x_half": (0.5, "{f} form: x times {c}, expected 0.5"),
    "x_two": (2.0, "{f} form: x over {c}, expected 2.0"),
}


class _GeluRule(Rule):
    name = "gelu"
    patterns = (_erf_gelu, _tanh_gelu)
    const_rtol = CONST_RTOL

    def check(self, ctx: Match, x: gs.Tensor, **consts: np.ndarray) -> str | None:
        form = "tanh" if "beta" in consts else "erf"
        for key, value in consts.items():
            if value.size != 1:
                return f"{form} form: a constant of shape {list(value.shape)}, expected one number"
            want, text = _CONSTANTS[key]
            c = float(value.reshape(()))
            # no closer than the constant's own dtype resolution (an fp16 sqrt(2) is 1.1e-4 off)
            rtol = max(CONST_RTOL, float(np.finfo(value.dtype).eps)) if value.dtype.kind == "f" else CONST_RTOL
            if abs(c - want) > rtol * abs(want):
                return text.format(f=form, c=f"{c:.6g}")
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, **consts: np.ndarray) -> gs.Tensor:
        return op.Gelu(x, approximate="tanh" if "beta" in consts else "none")


_GELU = _GeluRule()


def find_gelus(graph: gs.Graph) -> tuple[list[GeluMatch], list[gs.Node], Counter[str]]:
    """Every decomposed GELU (erf and tanh forms), every ``Gelu`` node, and why each other Erf/Tanh is not one."""
    matches, skipped = find_matches(_GELU, graph)
    gelus = [GeluMatch("tanh" if "beta" in m.bindings else "erf", m.bindings["x"], m.root.outputs[0], m.nodes,
                       m.constants()) for m in matches]
    nodes = [n for n in graph.nodes if n.op == "Gelu" and n.domain in (None, "", "ai.onnx")]
    return gelus, nodes, skipped


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
        matches, skipped = find_matches(_GELU, graph)
        tanh = sum("beta" in m.bindings for m in matches)
        found = {"erf": len(matches) - tanh, "tanh": tanh,
                 "gelu_node": sum(n.op == "Gelu" and n.domain in (None, "", "ai.onnx") for n in graph.nodes)}
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

    def _fuse(self, graph: gs.Graph, matches: list[Match], skipped: Counter[str]) -> int:
        # A constant of rank > 0 may broadcast x to a higher rank; the fused Gelu would not.
        consts = [m.constants() for m in matches]
        if any(c.ndim > 0 for cs in consts for c in cs):
            ensure_shapes(graph, [m.bindings["x"] for m in matches])
        fused = 0
        for m, cs in zip(matches, consts):
            rank = rank_of(m.bindings["x"])
            top = max((c.ndim for c in cs), default=0)
            if top > 0 and (rank is None or rank < top):
                skipped[f"not fused: a rank-{top} constant may broadcast x (rank {rank})"] += 1
                continue
            apply_match(m)
            fused += 1
        return fused
