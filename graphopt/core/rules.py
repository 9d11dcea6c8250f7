"""Rewrite rules: a multi-node rewrite as a pattern, a check and a replacement, with the plumbing done here.

A rule states what it looks for as a Python function over an op builder, as onnxscript's rewriter writes them::

    def pattern(self, op, x):
        return op.Mul(op.Mul(x, op.Add(op.Erf(op.Div(x, 1.4142135)), 1.0)), 0.5)

and says what replaces it in a function over a builder that makes gs nodes (``op.Gelu(x, approximate="none")``);
``check(ctx, **bindings)`` returns why a structural match is rejected, or None. The layer (the pattern language
and matcher are in ``graphopt.core.rule_match``) tries commuted operands of commutative ops, every spelling a rule
lists (several ``patterns`` or ``op.any_of``), requires each value the pattern computes besides its result to be
read by the pattern alone and not be a graph output, names new nodes ``<matched node>_<rule name>`` (unique), and
counts every reason a candidate was rejected (``stats["skipped"]``: {reason: count}) and every rewrite
(``stats["rewritten"]``). ``RewritePass`` turns rules into a registered ``Pass``: a multi-node pass is one short
file (see the README's "Writing a pass").

Built on onnx-graphsurgeon, not on onnxscript's rewriter (onnx_ir), by measurement
(``python -m benchmarks.rule_layer_ir``): the pipeline already holds a gs graph, which a gs rule edits in place,
while a rule on onnx_ir would convert gs -> ModelProto -> onnx_ir -> ModelProto -> gs on every pass: 1.87 s on
ViT-B/32 (353 MB, 976 nodes) and 1.78 s on ShiftViT (79 MB, 7021 nodes), per pass. (onnx_ir alone converts
faster than gs: a ModelProto round trip takes 0.58 s / 0.54 s against gs's 1.29 s / 1.24 s; that would matter if
the whole pipeline moved to onnx_ir, not for one rule layer under it.)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .ir import const_value, make_name, opset_of
from .pass_infra import Pass, PassResult
from .rule_match import REASONS, Failure, Found, PatternBuilder, Var, anchor_of, expand, match_at

__all__ = ["Rule", "Match", "NodeBuilder", "RewritePass", "find_matches", "apply_match", "QUIET"]

# What ``check`` returns to reject a match without counting a reason: the candidate was never one worth a reason
# (a Conv whose Mul before it multiplies by one number, for a rule folding per-channel scales).
QUIET = ""
_CHECKED = 1 << 30  # the progress of a match every node of which matched: it says more than any partial one


@dataclass
class Match:
    """One place a rule matched (``ctx`` of ``check`` and ``rewrite``): the graph, the matched nodes (``nodes``),
    the pattern's result node (``root``), the node matching started from (``anchor``) and the bindings."""

    rule: "Rule"
    graph: gs.Graph
    found: Found

    @property
    def root(self) -> gs.Node:
        return self.found.root

    @property
    def anchor(self) -> gs.Node:
        return self.found.anchor

    @property
    def nodes(self) -> list[gs.Node]:
        return self.found.graph_nodes()

    @property
    def bindings(self) -> dict[str, Any]:
        return self.found.bindings

    def constants(self) -> list[np.ndarray]:
        """The values of the constant operands of the matched nodes."""
        return [v for n in self.nodes for t in n.inputs if (v := const_value(t)) is not None]


# Standard ops whose output type is not their first input's: a fixed one, or the ``to`` attribute's (Cast).
_BOOL_OUTPUTS = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Not",
                           "IsNaN", "IsInf"})
_INT64_OUTPUTS = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero", "NonMaxSuppression"})


def _output_dtype(op: str, attrs: dict, inputs: tuple, first: Any, domain: str | None) -> Any:
    """The dtype of a built node's (first) output: its first tensor input's for the ops that keep it, the fixed or
    asked-for one for those that do not, None (left to shape inference) when it is not known."""
    if domain not in (None, "", "ai.onnx"):
        return None  # a custom op: its typing is its own
    if op in _BOOL_OUTPUTS:
        return np.bool_
    if op in _INT64_OUTPUTS:
        return np.int64
    if op == "Cast":
        return onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]) if "to" in attrs else None
    if op == "CastLike":
        like = inputs[1] if len(inputs) > 1 else None
        return like.dtype if isinstance(like, gs.Tensor) else None
    return first


class NodeBuilder:
    """``op`` of a replacement: ``op.<OpType>(*inputs, _domain=, _tag=, **attrs)`` appends a node named
    ``<root>_<tag>`` (``root``: the matched result node's name, else its op; ``tag``: the rule's name by default;
    unique in the graph) and returns its output tensor. Number inputs become scalar constants of the first tensor
    input's dtype."""

    def __init__(self, match: Match):
        self._match = match
        self.created: list[gs.Node] = []

    def __getattr__(self, op: str) -> Callable[..., gs.Variable]:
        if not op[:1].isupper():
            raise AttributeError(op)

        def make(*inputs, _domain: str | None = None, _tag: str | None = None, **attrs) -> gs.Variable:
            graph, root = self._match.graph, self._match.root
            name = make_name(graph, f"{root.name or root.op}_{_tag or self._match.rule.name}")
            dtype = next((t.dtype for t in inputs if isinstance(t, gs.Tensor) and t.dtype is not None), None)
            tensors = [t if isinstance(t, gs.Tensor) else
                       gs.Constant(make_name(graph, f"{name}_c{i}"), np.array(t, dtype=dtype or np.float32))
                       for i, t in enumerate(inputs)]
            out = gs.Variable(make_name(graph, f"{name}_out"), dtype=_output_dtype(op, attrs, inputs, dtype, _domain))
            node = gs.Node(op, name, attrs, tensors, [out], domain=_domain)
            graph.nodes.append(node)
            self.created.append(node)
            return out

        return make


class Rule:
    """A rewrite rule. Subclasses (often a ``RewritePass``, which is one) define:

    - ``pattern(self, op, <vars>)`` or ``patterns`` (a tuple of such functions, each a spelling): the pattern;
    - ``check(self, ctx, **bindings) -> str | None``: why a structural match is rejected (default: never);
    - ``rewrite(self, op, ctx, **bindings) -> gs.Tensor | None``: makes the replacement with ``op`` (a
      ``NodeBuilder``) and returns the tensor that takes the place of the pattern's result (which keeps its name
      and its readers; the matched nodes become dead and the pipeline's cleanup drops them), or None when it
      edited the graph itself (to keep a node's name, say).

    Matching starts from the pattern node marked ``_anchor=True`` (default: the result's node): a candidate is
    every node of its op type, and each rejected candidate counts one reason (the check's, or with
    ``count_misses`` the one of the structural match that got furthest). ``const_rtol``: relative tolerance for
    the float constants of the pattern (an int constant matches exactly). ``reasons`` rewords the matcher's own
    reasons (``graphopt.core.rule_match.REASONS``).
    """

    name: ClassVar[str] = ""
    const_rtol: ClassVar[float] = 0.0
    count_misses: ClassVar[bool] = True
    reasons: ClassVar[dict[str, str]] = {}

    def pattern_functions(self) -> tuple[Callable, ...]:
        patterns = getattr(self, "patterns", None)
        return tuple(patterns) if patterns else (self.pattern,)

    def check(self, ctx: Match, **bindings) -> str | None:
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, **bindings) -> gs.Tensor | None:
        raise NotImplementedError(f"rule {self.name!r} has no rewrite")

    def compiled(self) -> list:
        """The rule's patterns, ``any_of`` expanded: one tree per spelling, in the order written."""
        cache = self.__dict__.get("_compiled")
        if cache is None:
            cache = []
            for fn in self.pattern_functions():
                # The parameters after ``op`` (and ``self``, for a method) are the pattern's variables.
                names = fn.__code__.co_varnames[1 if _is_bound(fn) else 0: fn.__code__.co_argcount]
                cache += expand(fn(PatternBuilder(), *(Var(n) for n in names[1:])))
            self.__dict__["_compiled"] = cache
        return cache


def _is_bound(fn: Callable) -> bool:
    return getattr(fn, "__self__", None) is not None


def find_matches(rule: Rule, graph: gs.Graph, nodes: Iterable[gs.Node] | None = None
                 ) -> tuple[list[Match], Counter[str]]:
    """Every place ``rule`` matches in ``graph`` (no node in two matches), and why each other candidate did not:
    {reason: count}. A candidate is a node of the anchor's op type (from ``nodes``, default all)."""
    patterns = rule.compiled()
    anchors = frozenset(anchor_of(p).op for p in patterns)
    reasons = {**REASONS, **rule.reasons}
    outs = {id(t) for t in graph.outputs}
    opset = opset_of(graph)
    matches: list[Match] = []
    skipped: Counter[str] = Counter()
    claimed: set[int] = set()
    for node in list(graph.nodes if nodes is None else nodes):
        if node.op not in anchors:
            continue
        best: Failure | None = None
        for pattern in patterns:
            found = match_at(pattern, node, outs, rule.const_rtol, opset, reasons)
            if found is None:
                continue
            if isinstance(found, Found):
                if any(id(n) in claimed for n in found.graph_nodes()):
                    found = Failure("overlaps an earlier match", len(found.nodes))
                else:
                    match = Match(rule, graph, found)
                    reason = rule.check(match, **found.bindings)
                    if reason is None:
                        matches.append(match)
                        claimed.update(id(n) for n in found.graph_nodes())
                        break
                    found = Failure(reason, _CHECKED if reason else _CHECKED - 1)
            if best is None or found.progress > best.progress:
                best = found
        else:
            if best is not None and best.reason and (rule.count_misses or best.progress == _CHECKED):
                skipped[best.reason] += 1
    return matches, skipped


def apply_match(match: Match) -> list[gs.Node]:
    """Make ``match``'s replacement; returns the nodes it created."""
    op = NodeBuilder(match)
    result = match.rule.rewrite(op, match, **match.bindings)
    if result is not None:
        made = result.inputs[0] if result.inputs else None
        if made is None or made not in op.created:
            raise ValueError(f"rule {match.rule.name!r}: a rewrite returns a tensor made by its builder")
        y = match.root.outputs[0]
        match.root.outputs.clear()  # y is now produced by the replacement; the matched nodes are dead
        made.outputs[0] = y
    return op.created


class RewritePass(Rule, Pass):
    """A registered pass made of one rule (the pass itself, whose typed fields parameterise it): every match is
    rewritten; stats ``{"rewritten": n, "skipped": {reason: count}}``. Override ``prepare(graph)`` for work the
    checks need first (shapes, say)."""

    def prepare(self, graph: gs.Graph) -> None:
        """Runs before matching."""

    def run(self, graph: gs.Graph) -> PassResult:
        self.prepare(graph)
        matches, skipped = find_matches(self, graph)
        for m in matches:
            apply_match(m)
        return PassResult(bool(matches), {"rewritten": len(matches), "skipped": dict(skipped)})
