"""Example pass for the README's "Writing a pass": bypass Identity nodes."""
from __future__ import annotations

from dataclasses import field

import onnx_graphsurgeon as gs

from graphopt.core.ir import replace_uses
from graphopt.core.pass_infra import Pass, PassResult, register_pass

__all__ = ["DropIdentity"]


@register_pass("drop_identity")
class DropIdentity(Pass):
    """Identity(x) -> x: consumers of an Identity's output read its input directly.

    Exact (no arithmetic). An Identity whose output is a graph output is kept, so output names do not change.
    """

    keep_outputs: bool = field(default=True, metadata={"help": "keep Identities that produce graph outputs"})

    def run(self, graph: gs.Graph) -> PassResult:
        dropped = kept = 0
        for node in [n for n in graph.nodes if n.op == "Identity"]:
            out = node.outputs[0]
            if out in graph.outputs and self.keep_outputs:
                kept += 1
                continue
            replace_uses(out, node.inputs[0])
            node.outputs.clear()  # now dead: the pipeline's cleanup() removes it
            dropped += 1
        return PassResult(dropped > 0, {"dropped": dropped, "kept_graph_outputs": kept})
