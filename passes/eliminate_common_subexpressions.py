"""``eliminate_common_subexpressions``: nodes that compute the same thing from the same inputs computed once."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import make_name, peek_values, replace_uses
from graphopt.core.pass_infra import Pass, PassResult, register_pass

from ._graph_edits import kept_names

__all__ = ["EliminateCommonSubexpressions", "RANDOM_OPS"]

# Ops whose outputs are draws, not functions of their inputs (onnxruntime's kOnnxDomainNonDeterministicOps, and
# Bernoulli): two of them are two draws. Dropout is one too while training.
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                        "Bernoulli", "Dropout"})
# Domains whose ops are pure functions of inputs and attributes (a custom op may keep state, as onnxruntime
# assumes of unknown domains).
_PURE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# Constants up to this many elements are compared by value (two copies of a small constant are common: a scale,
# an axes list); larger ones by identity (``merge_duplicate_initializers`` ties equal weights first).
_BY_VALUE = 1024


def _value_key(value: Any) -> Any:
    """A hashable key equal for attribute values that are the same (a float by its bits: -0.0 is not 0.0); a
    subgraph, or any kind of value not compared here, is equal to itself only, so a node with one never merges."""
    if isinstance(value, gs.Constant):
        return ("tensor", _array_key(peek_values(value)), str(value.export_dtype))
    if isinstance(value, np.ndarray):
        return ("array", _array_key(value))
    if isinstance(value, float):
        return ("float", np.float64(value).tobytes())
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_value_key(v) for v in value))
    if isinstance(value, (int, str, bytes, bool)) or value is None:
        return (type(value).__name__, value)
    return ("object", id(value))


def _array_key(a: np.ndarray) -> tuple:
    if a.dtype == object:
        return (str(a.dtype), a.shape, tuple(a.reshape(-1).tolist()))
    return (str(a.dtype), a.shape, a.tobytes())


def _input_key(t: gs.Tensor) -> Any:
    if isinstance(t, gs.Variable) and t.is_empty():
        return ("absent",)
    if isinstance(t, gs.Constant) and t.shape is not None and int(np.prod(t.shape)) <= _BY_VALUE:
        return ("const", _array_key(peek_values(t)), str(t.export_dtype))
    return ("tensor", id(t))


def _exclusion(node: gs.Node) -> str | None:
    """Why ``node`` is never merged with its twin, or None."""
    if node.op in RANDOM_OPS or "seed" in node.attrs:
        return "random op"
    if (node.domain or "") not in _PURE_DOMAINS:
        return "op of another domain"
    return None


@register_pass("eliminate_common_subexpressions")
class EliminateCommonSubexpressions(Pass):
    """Two nodes with the same op, domain, attributes and inputs (the same tensors, or constants of up to 1024
    elements with equal type, shape and bytes) compute the same outputs: the later one's readers read the earlier
    one's, and it goes. In graph order, so merged inputs make their readers equal in the same pass (chains of
    duplicates merge at once). Never merged: random ops (RandomNormal/Uniform[Like], Multinomial, Bernoulli,
    Dropout: each draws its own values), nodes with a ``seed``, ops outside the ONNX domains (a custom op may keep
    state), all counted in ``skipped`` when they have a twin; nodes with subgraphs (If / Loop / Scan: their bodies
    are not compared). A duplicate producing a graph output keeps the name through an Identity of the kept node's
    output.
    Exact: the merged nodes computed the same values.

    Why: every node left is a kernel launch and a task on the NPU; exported models repeat work (the same Shape ->
    Gather chains per layer, the same mask or position computation per block). Sources: onnxslim
    ``subexpression_elimination.py``; onnx-ir ``common_subexpression_elimination.py`` (run by onnxscript's
    optimizer); onnxruntime's list of non-deterministic ops (``core/optimizer/utils.cc``), which neither applies.
    """

    library = True

    def run(self, graph: gs.Graph) -> PassResult:
        kept = kept_names(graph)
        seen: dict[tuple, gs.Node] = {}
        merged, skipped, renamed = 0, Counter(), {}
        for node in list(graph.nodes):
            if not node.outputs:
                continue
            # Which outputs are present is part of the key: a merged node's outputs are all the kept one's.
            key = (node.op, node.domain or "", tuple(o.is_empty() for o in node.outputs),
                   tuple(sorted((k, _value_key(v)) for k, v in node.attrs.items())),
                   tuple(_input_key(t) for t in node.inputs))
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            reason = _exclusion(node)
            if reason is not None:
                skipped[reason] += 1
                continue
            if node.op == "Identity" and id(node.outputs[0]) in kept:
                continue  # already the cheapest way to keep a graph output's name
            for mine, theirs in zip(list(node.outputs), first.outputs):
                if mine.is_empty():
                    continue  # an optional output left out ("" may stand for absent inputs elsewhere too)
                if id(mine) in kept:
                    name = make_name(graph, f"{node.name or node.op}_cse")
                    graph.nodes.append(gs.Node("Identity", name, {}, [theirs], [mine]))
                    renamed[mine.name] = mine.name
                else:
                    replace_uses(mine, theirs)
            node.outputs.clear()
            merged += 1
        return PassResult(merged > 0, {"rewritten": merged, "skipped": dict(skipped)}, renamed=renamed)
