"""``drop_initializer_inputs``: graph inputs that have an initializer (a default a caller may override) made plain
constants, so that folding and the other rewrites can use their values."""
from __future__ import annotations

from dataclasses import field

import onnx_graphsurgeon as gs

from graphopt.core.errors import UserError, closest
from graphopt.core.input_defaults import drop, input_defaults
from graphopt.core.pass_infra import Pass, PassResult, register_pass

__all__ = ["DropInitializerInputs"]


@register_pass("drop_initializer_inputs")
class DropInitializerInputs(Pass):
    """Graph inputs with an initializer become constants: the model's interface loses them, their initializers
    become their values. graphopt keeps such inputs as inputs (onnxruntime lets a caller override them, and does
    not fold them), so a model exported with ``keep_initializers_as_inputs=True``, or of IR version 3, where every
    initializer is an input, has nothing to fold until this pass runs. ``names``: only these inputs (default: all;
    an input returned as a graph output as it is stays). A model of IR version 3 comes out as IR version 4, the
    first that allows an initializer that is no input.

    Source: onnxruntime's ``tools/python/remove_initializer_from_input.py``, which its session log recommends for
    such models; onnxsim's folding likewise treats them as constants.
    """

    names: list[str] | None = field(default=None, metadata={"help": "the inputs to drop (default: all of them)"})

    def run(self, graph: gs.Graph) -> PassResult:
        held = list(input_defaults(graph))
        tensors = graph.tensors()
        # A name already a constant (a run before this one dropped it) is done; any other is a mistake.
        unknown = [n for n in self.names or [] if n not in held and not isinstance(tensors.get(n), gs.Constant)]
        if unknown:
            others = [t.name for t in graph.inputs]
            kind = "a graph input without an initializer" if unknown[0] in others else "not a graph input"
            hint = closest(unknown[0], held) if held else " (the model has no input with an initializer)"
            raise UserError(f"drop_initializer_inputs: names {unknown[0]!r}, {kind}{hint}")
        dropped = drop(graph, self.names)
        kept = [n for n in held if n not in dropped]
        stats = {"dropped": len(dropped), "inputs": dropped}
        if kept:
            stats["kept"] = kept
        return PassResult(bool(dropped), stats)
