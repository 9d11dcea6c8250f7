"""The pattern language of rewrite rules (``graphopt.core.rules``) and the matcher that finds it in a gs graph.

A pattern is written as a Python function over a ``PatternBuilder`` (``op``): ``op.Erf(op.Div(x, 1.4142135))``
builds ``PNode`` trees whose leaves are variables (the function's parameters, bound to any tensor), constants
(a number in the pattern matches a constant tensor whose every element is that number: an ``int`` exactly, a
``float`` within the rule's relative tolerance), constant captures (``op.const("c")``: any constant, its value
handed to the check) and attribute captures (``op.Softmax(x, axis=op.attr("axis"))``). ``op.any_of(a, b)``
offers alternative spellings. Binary commutative ops match their operands in either order.

Matching starts at an *anchor* node (by default the pattern's root, its last node) and grows the match up
through producers and down through consumers; each value the pattern computes except the root's must be read by
the pattern alone (one consumer, not a graph output), since a rewrite deletes it. A failed match returns the
reason: the ``_fail`` text of the innermost pattern node around the point of failure, or a generic one.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .ir import const_value, producer

__all__ = ["Var", "Const", "Attr", "PNode", "AnyOf", "PatternBuilder", "Failure", "Found", "expand", "match_at",
           "anchor_of", "COMMUTATIVE", "REASONS"]

# Binary ops whose two operands may be swapped without changing the result.
COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal", "BitwiseAnd",
                         "BitwiseOr", "BitwiseXor"})


@dataclass(frozen=True)
class Var:
    """A pattern variable: binds a tensor (``const``: only a constant one, bound to its value)."""

    name: str
    const: bool = False


@dataclass(frozen=True)
class Const:
    value: float | int


@dataclass(frozen=True)
class Attr:
    """An attribute captured under ``name`` (its schema default when the node does not set it)."""

    name: str


@dataclass(eq=False)
class PNode:
    op: str
    inputs: tuple
    attrs: dict[str, Any]
    domain: str | None = ""  # None: any domain
    name: str | None = None  # how reasons call this node's output ("erf(x / sqrt(2))")
    fail: str | None = None  # the reason when the sub-pattern rooted here does not match
    anchor: bool = False  # matching starts at this node (default: the root)
    other_inputs: bool = False  # the node may have more inputs; the listed ones may sit at any position

    def label(self) -> str:
        return self.name or f"{self.op} output"


@dataclass(eq=False)
class AnyOf:
    options: tuple
    name: str | None = None
    fail: str | None = None


class PatternBuilder:
    """``op`` of a pattern function: ``op.<OpType>(*inputs, **attrs)`` makes a node; options: ``_domain``,
    ``_name`` (the node's output in reasons), ``_fail`` (the reason when the sub-pattern rooted here does not
    match), ``_anchor`` (matching starts here), ``_other_inputs`` (more inputs allowed, listed ones anywhere)."""

    def __getattr__(self, op: str):
        if not op[:1].isupper():
            raise AttributeError(op)

        def make(*inputs, _domain: str | None = "", _name: str | None = None, _fail: str | None = None,
                 _anchor: bool = False, _other_inputs: bool = False, **attrs):
            return PNode(op, tuple(_lift(v) for v in inputs), attrs, _domain, _name, _fail, _anchor, _other_inputs)

        return make

    @staticmethod
    def const(name: str) -> Var:
        return Var(name, const=True)

    @staticmethod
    def attr(name: str) -> Attr:
        return Attr(name)

    @staticmethod
    def any_of(*options, _name: str | None = None, _fail: str | None = None) -> AnyOf:
        return AnyOf(tuple(_lift(v) for v in options), _name, _fail)


def _lift(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return Const(value)


def expand(value, fail: str | None = None, name: str | None = None) -> list:
    """The alternatives of a pattern as trees without ``AnyOf``, each node a fresh object (so a match can tell
    them apart); an ``AnyOf``'s name and reason carry over to options that have none."""
    if isinstance(value, AnyOf):
        return [alt for option in value.options
                for alt in expand(option, value.fail or fail, value.name or name)]
    if not isinstance(value, PNode):
        return [value]
    combos = itertools.product(*(expand(v) for v in value.inputs))
    return [replace(value, inputs=tuple(c), name=value.name or name, fail=value.fail or fail) for c in combos]


@dataclass
class Failure:
    reason: str
    progress: int  # pattern nodes matched when it failed: the furthest-reaching failure is the one reported


@dataclass
class Found:
    """A match: id(pattern node) -> graph node (``nodes``, in the order matched: the anchor first) and
    variable / capture -> binding."""

    nodes: dict[int, gs.Node]
    bindings: dict[str, Any]
    root: gs.Node
    anchor: gs.Node

    def graph_nodes(self) -> list[gs.Node]:
        return list(self.nodes.values())


@dataclass
class _State:
    nodes: dict[int, gs.Node] = field(default_factory=dict)
    bindings: dict[str, Any] = field(default_factory=dict)

    def extend(self, pnode: PNode | None = None, node: gs.Node | None = None, **binds) -> "_State":
        nodes = self.nodes if pnode is None else {**self.nodes, id(pnode): node}
        return _State(nodes, {**self.bindings, **binds})


class _Matcher:
    def __init__(self, root: PNode, anchor: PNode, graph_outputs: set[int], rtol: float, opset: int,
                 reasons: dict[str, str]):
        self.root, self.anchor, self.outs, self.rtol, self.opset = root, anchor, graph_outputs, rtol, opset
        self.reasons = reasons
        # id(pattern node) -> (it, the pattern node reading it, at which input)
        self.parent = {id(p): (p, q, i) for p, q, i in _walk(root)}
        self.best: Failure | None = None

    def fail(self, at: PNode, reason: str, state: _State) -> None:
        p: PNode | None = at
        while p is not None:  # the innermost node with a reason of its own says why
            if p.fail:
                reason = p.fail
                break
            p = self.parent[id(p)][1]
        if self.best is None or len(state.nodes) > self.best.progress:
            self.best = Failure(reason, len(state.nodes))

    # -- upwards: a pattern node against a graph node, and its inputs against the node's inputs ----------------
    def node(self, p: PNode, node: gs.Node, state: _State,
             given: tuple[int, int] | None = None) -> Iterator[_State]:
        """``given``: (pattern input, node input) already matched, by the walk down that reached ``node``."""
        domains = None if p.domain is None else (p.domain,) if p.domain else ("", "ai.onnx")
        if node.op != p.op or (domains is not None and (node.domain or "") not in domains):
            self.fail(p, f"{node.op} where {p.op} was expected", state)
            return
        if len(node.inputs) < len(p.inputs) or (len(node.inputs) > len(p.inputs) and not p.other_inputs):
            self.fail(p, f"{p.op} has {len(node.inputs)} inputs, expected {len(p.inputs)}", state)
            return
        if any(id(node) == id(n) for n in state.nodes.values()):
            self.fail(p, f"{p.op} would be matched twice", state)
            return
        binds = {}
        for key, want in p.attrs.items():
            got = self._attr(node, key)
            if isinstance(want, Attr):
                binds[want.name] = got
            elif got != want:
                self.fail(p, f"{p.op} {key}={got}, expected {want}", state)
                return
        state = state.extend(p, node, **binds)
        orders: Iterable[tuple[int, ...]] = [tuple(range(len(p.inputs)))]
        if p.other_inputs:
            orders = itertools.permutations(range(len(node.inputs)), len(p.inputs))
        elif p.op in COMMUTATIVE and len(p.inputs) == 2:
            orders.append((1, 0))
        for order in orders:
            if given is not None and order[given[0]] != given[1]:
                continue
            yield from self.inputs(p, node, order, 0, state, None if given is None else given[0])

    def _attr(self, node: gs.Node, key: str):
        if key in node.attrs:
            value = node.attrs[key]
            return value.decode() if isinstance(value, bytes) else value
        try:
            schema = onnx.defs.get_schema(node.op, self.opset, node.domain or "")
            default = schema.attributes[key].default_value
            if default.type:
                value = onnx.helper.get_attribute_value(default)
                return value.decode() if isinstance(value, bytes) else value
        except Exception:  # noqa: BLE001 - no schema (custom op) or no default: the attribute is absent
            pass
        return None

    def inputs(self, p: PNode, node: gs.Node, order: tuple, i: int, state: _State,
               skip: int | None) -> Iterator[_State]:
        if i == len(p.inputs):
            yield state
            return
        if i == skip:
            yield from self.inputs(p, node, order, i + 1, state, skip)
            return
        for s in self.value(p.inputs[i], node.inputs[order[i]], p, state):
            yield from self.inputs(p, node, order, i + 1, s, skip)

    def value(self, v, tensor: gs.Tensor, parent: PNode, state: _State) -> Iterator[_State]:
        if isinstance(v, Var):
            if v.name in state.bindings:
                bound = state.bindings[v.name]
                same = np.array_equal(const_value(tensor), bound) if v.const else tensor is bound
                if not same:
                    self.fail(parent, f"{parent.op} input is not {v.name}", state)
                    return
                yield state
            elif v.const:
                value = const_value(tensor)
                if value is None:
                    self.fail(parent, f"{parent.op} input is not a constant", state)
                    return
                yield state.extend(**{v.name: value})
            else:
                yield state.extend(**{v.name: tensor})
        elif isinstance(v, Const):
            value = const_value(tensor)
            if value is None or value.size == 0 or not self._close(value, v.value):
                flat = None if value is None else value.reshape(-1)
                got = ("not a constant" if flat is None else "an empty constant" if not flat.size else
                       f"{flat[0]:g}" if np.all(flat == flat[0]) else "a constant of unequal values")
                self.fail(parent, f"{parent.op} input is {got}, expected {v.value}", state)
                return
            yield state
        else:
            node = producer(tensor)
            if node is None:
                self.fail(v, f"{parent.op} input is not computed, expected {v.op}", state)
                return
            yield from self.node(v, node, state)

    def _close(self, value: np.ndarray, want: float | int) -> bool:
        if isinstance(want, int) or value.dtype.kind not in "fc":
            return bool(np.all(value == want))
        # No closer than the constant's own dtype resolution (an fp16 sqrt(2) is 1.1e-4 off).
        rtol = max(self.rtol, float(np.finfo(value.dtype).eps))
        return bool(np.all(np.abs(value.astype(np.float64) - want) <= rtol * abs(want)))

    # -- downwards: from the anchor to the root, through the one consumer of each value ------------------------
    def private(self, p: PNode, node: gs.Node, state: _State) -> gs.Node | None:
        """The one consumer of ``p``'s output (which a rewrite deletes), or None after recording why not."""
        out = node.outputs[0]
        if id(out) in self.outs:
            self.fail(p, self.reasons["graph_output"].format(label=p.label()), state)
            return None
        if len(out.outputs) != 1:
            self.fail(p, self.reasons["consumers"].format(label=p.label(), n=len(out.outputs)), state)
            return None
        if any(t.outputs or id(t) in self.outs for t in node.outputs[1:]):
            self.fail(p, f"{p.op} has other outputs in use", state)
            return None
        return out.outputs[0]

    def down(self, p: PNode, state: _State) -> Iterator[_State]:
        _, q, slot = self.parent[id(p)]
        if q is None:
            yield state
            return
        node = state.nodes[id(p)]
        consumer = self.private(p, node, state)
        if consumer is None:
            return
        if consumer.op != q.op:
            self.fail(q, self.reasons["feeds"].format(label=p.label(), found=consumer.op, expected=q.op), state)
            return
        for k, t in enumerate(consumer.inputs):
            if t is node.outputs[0]:
                for s in self.node(q, consumer, state, given=(slot, k)):
                    yield from self.down(q, s)

    def run(self, anchor: gs.Node) -> Iterator[_State]:
        for state in self.node(self.anchor, anchor, _State()):
            for s in self.down(self.anchor, state):
                if all(self.private(p, s.nodes[id(p)], s) is not None
                       for p, parent, _ in self.parent.values() if parent is not None):
                    yield s


# How the matcher words its own reasons; a rule may reword them (``Rule.reasons``).
REASONS = {"graph_output": "{label} is a graph output", "consumers": "{label} has {n} consumers, expected 1",
           "feeds": "{label} -> {found}, expected {expected}"}


def anchor_of(pattern: PNode) -> PNode:
    """The node of an ``AnyOf``-free pattern that matching starts from: the one marked ``_anchor``, or the root."""
    anchors = [p for p, _, _ in _walk(pattern) if p.anchor]
    if len(anchors) > 1:
        raise ValueError(f"a pattern has {len(anchors)} nodes marked _anchor, expected at most one")
    return anchors[0] if anchors else pattern


def match_at(pattern: PNode, node: gs.Node, graph_outputs: set[int], rtol: float, opset: int,
             reasons: dict[str, str] = REASONS) -> Found | Failure | None:
    """Match the ``AnyOf``-free ``pattern`` with its anchor at ``node``: the first match, or the furthest-reaching
    failure; None when the anchor's op is not ``node``'s."""
    anchor = anchor_of(pattern)
    if anchor.op != node.op:
        return None
    m = _Matcher(pattern, anchor, graph_outputs, rtol, opset, reasons)
    for state in m.run(node):
        return Found(state.nodes, state.bindings, state.nodes[id(pattern)], node)
    return m.best or Failure("no match", 0)


def _walk(p: PNode) -> Iterator[tuple[PNode, PNode | None, int]]:
    """Every node of a pattern tree with the node reading it and at which input (the root: None, -1)."""
    yield p, None, -1
    stack = [p]
    while stack:
        q = stack.pop()
        for i, v in enumerate(q.inputs):
            if isinstance(v, PNode):
                yield v, q, i
                stack.append(v)
