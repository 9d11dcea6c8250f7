"""Name maps: which tensor of a graph after a pass (or a whole recipe) is which tensor of the graph before it.

A tensor is *kept* by a pass when its name is present before and after with the same producer op type (a graph
input keeps its name and has no producer; a graph output keeps its name because verification compares outputs by
name). A pass may declare more in ``PassResult.renamed`` ({new name: old name}): a tensor it renamed, or one
whose value it kept under the same name with a different producer (``{"y": "y"}``). Every other tensor before the
pass is *replaced*; every other tensor after it is *new*. Initializers are weights, not computed values, and do
not take part.

A map always points from the later graph to the earlier one (``{after: before}``), so maps compose along a recipe
into ``{final name: original name}``.
"""
from __future__ import annotations

from typing import Mapping

import onnx
import onnx_graphsurgeon as gs

__all__ = ["tensor_producers", "model_producers", "pass_name_map", "compose", "summarize", "shared_tensors"]


def tensor_producers(graph: gs.Graph) -> dict[str, str]:
    """{tensor name: producer op type} for the computed tensors and inputs of ``graph`` ("" for an input)."""
    found = {t.name: "" for t in graph.inputs if isinstance(t, gs.Variable)}
    for node in graph.nodes:
        for t in node.outputs:
            if t.name:
                found[t.name] = node.op
    return found


def model_producers(model: onnx.ModelProto) -> dict[str, str]:
    """The same as ``tensor_producers`` for a ModelProto (no graph import)."""
    inits = {i.name for i in model.graph.initializer}
    found = {i.name: "" for i in model.graph.input if i.name not in inits}
    for node in model.graph.node:
        for name in node.output:
            if name:
                found[name] = node.op_type
    return found


def pass_name_map(before: Mapping[str, str], after: Mapping[str, str], renamed: Mapping[str, str] | None = None,
                  outputs: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """{name after: name before} for one pass. ``before``/``after`` are ``tensor_producers`` of the two graphs;
    ``renamed`` the pass's declared renames; ``outputs`` the names of the graph outputs (kept by name).
    Declared renames whose tensors are gone (e.g. removed by cleanup) are ignored."""
    mapping: dict[str, str] = {}
    for new, old in (renamed or {}).items():
        if new in after and old in before:
            mapping[new] = old
    for name, op in after.items():
        if name not in mapping and name in before and (before[name] == op or name in outputs):
            mapping[name] = name
    return mapping


def compose(later: Mapping[str, str], earlier: Mapping[str, str]) -> dict[str, str]:
    """``later`` maps C -> B, ``earlier`` maps B -> A: the result maps C -> A (names B does not carry drop out)."""
    return {c: earlier[b] for c, b in later.items() if b in earlier}


def summarize(mapping: Mapping[str, str], before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, int]:
    """Counts for a report: kept (same name), renamed, replaced (before, no counterpart), new (after, none)."""
    kept = sum(1 for a, b in mapping.items() if a == b)
    return {"kept": kept, "renamed": len(mapping) - kept, "replaced": len(before) - len(set(mapping.values())),
            "new": len(after) - len(mapping)}


def shared_tensors(a: Mapping[str, str], b: Mapping[str, str], name_map: Mapping[str, str] | None = None,
                   outputs: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """{name in B: name in A} for the tensors two graphs share: through ``name_map`` ({B name: A name}) when
    given, else by the kept-name rule above. ``a``/``b`` are producer maps of the two graphs."""
    if name_map is not None:
        return {nb: na for nb, na in name_map.items() if nb in b and na in a}
    return pass_name_map(a, b, None, outputs)
