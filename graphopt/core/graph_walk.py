"""Walking an ONNX graph (a ``GraphProto``) with its subgraphs: If's branches, Loop's and Scan's bodies."""
from __future__ import annotations

from typing import Iterator

import onnx

__all__ = ["subgraphs", "node_inputs"]


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it, nested ones too."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from subgraphs(g)


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, plus the outer-scope names its subgraphs (If/Loop/Scan bodies) read."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            inner = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                inner.update(n.output)
            for n in g.node:
                names.extend(x for x in node_inputs(n) if x not in inner)
    return names
