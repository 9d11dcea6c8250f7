"""What the knowledge library's clean-up rewrites share: the tensors whose name a rewrite must keep, bypassing a
node that returns its input, and running a rule to its fixed point."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import producer, replace_uses, set_tensors
from graphopt.core.pass_infra import PassResult
from graphopt.core.rules import RewritePass

__all__ = ["kept_names", "bypass", "to_fixed_point", "merge_to_fixed_point", "drop_then_merge", "shared_pairs",
           "static_dim",
           "MAX_ROUNDS"]

# A chain of n foldable pairs takes n - 1 rounds; past this many the rest waits for the next run of the pass.
MAX_ROUNDS = 64


def kept_names(graph: gs.Graph) -> set[int]:
    """ids of the tensors a rewrite must leave produced under their name: the graph's outputs, and outer tensors a
    subgraph (at any depth) returns as its own output, which gs does not list as a use of the tensor."""
    ids = {id(t) for t in graph.outputs}
    stack = [sub for n in graph.nodes for sub in n.subgraphs()]
    while stack:
        sub = stack.pop()
        ids.update(id(t) for t in sub.outputs)
        stack.extend(s for n in sub.nodes for s in n.subgraphs())
    return ids


def bypass(node: gs.Node, src: gs.Tensor, kept: set[int], renamed: dict[str, str]) -> None:
    """Make ``node``'s first output's readers read ``src`` instead (``node`` is left dead for cleanup). An output
    that must keep its name gets it from ``node`` turned into ``Identity(src)``, recorded in ``renamed`` (the
    pass's ``PassResult.renamed``: the name now holds what it held before)."""
    y = node.outputs[0]
    if id(y) in kept:
        node.op, node.domain, node.attrs = "Identity", None, {}
        set_tensors(node.inputs, [src])
        set_tensors(node.outputs, [y])
        renamed[y.name] = y.name
        return
    replace_uses(y, src)
    node.outputs.clear()


def to_fixed_point(run_once: Callable[[], PassResult], graph: gs.Graph) -> PassResult:
    """Run a rule pass until it matches nothing (a chain of three pairs overlaps, so one round merges only part of
    it): stats ``rewritten`` summed over the rounds, ``skipped`` as the last round saw them (what is left)."""
    rewritten, renamed, result = 0, {}, run_once()
    for _ in range(MAX_ROUNDS):
        rewritten += result.stats.get("rewritten", 0)
        renamed.update(result.renamed)
        if not result.changed:
            break
        graph.cleanup()  # the matched nodes are dead: matching must not see them again
        result = run_once()
    stats = {**result.stats, "rewritten": rewritten}
    return PassResult(rewritten > 0, stats, renamed=renamed)


def merge_to_fixed_point(rule: RewritePass, graph: gs.Graph, op: str, kept: set[int]
                         ) -> tuple[PassResult, dict[str, int]]:
    """A merge rule over pairs of ``op`` run to its fixed point, and its skip reasons with the pairs it leaves
    because their first node is read elsewhere (``shared_pairs``)."""
    result = to_fixed_point(lambda: RewritePass.run(rule, graph), graph)
    skipped = dict(result.stats["skipped"])
    if shared := shared_pairs(graph, op, kept):
        skipped[f"first {op} read elsewhere"] = shared
    return result, skipped


def drop_then_merge(rule: RewritePass, graph: gs.Graph, op: str, drop: Callable[[], int], kind: str,
                    kept: set[int], renamed: dict[str, str]) -> PassResult:
    """A pair-merging rule's pass: ``drop()`` removes the single ``op`` nodes that do nothing (returns how many),
    then the rule runs to its fixed point (``merge_to_fixed_point``); stats ``rewritten`` counts both, ``kind`` the
    dropped ones."""
    dropped = drop()
    if dropped:
        graph.cleanup()
    result, skipped = merge_to_fixed_point(rule, graph, op, kept)
    stats = {"rewritten": result.stats["rewritten"] + dropped, kind: dropped, "skipped": skipped}
    return PassResult(result.changed or dropped > 0, stats, renamed=renamed)


def shared_pairs(graph: gs.Graph, op: str, kept: set[int]) -> int:
    """How many ``op`` nodes read the first output of another ``op`` that something else reads too (or that is a
    graph output): the pairs a merge leaves alone, since merging would compute the first one twice."""
    count = 0
    for node in graph.nodes:
        if node.op != op or not node.inputs or not node.outputs:
            continue
        inner = producer(node.inputs[0])
        if inner is not None and inner.op == op and inner.outputs[0] is node.inputs[0]:
            t = inner.outputs[0]
            if id(t) in kept or len(t.outputs) > 1:
                count += 1
    return count


def static_dim(t: gs.Tensor, axis: int) -> int | None:
    """Dim ``axis`` of ``t``'s shape when it is a known number, else None."""
    shape = t.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    d = shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None
