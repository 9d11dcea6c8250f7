"""Graph inputs with an initializer: inputs whose initializer is a default value a caller may override.

ONNX lets a graph input have an initializer of the same name (before IR version 4 every initializer had to be
listed as an input; ``torch.onnx.export(keep_initializers_as_inputs=True)`` still writes them so). The initializer
is the input's default, and feeding the input replaces it: onnxruntime does not fold such a tensor. onnx-graphsurgeon
imports it as a constant and leaves it out of the graph's inputs, so a pass would fold it and the written model
would have lost the input. ``hold`` (called by ``forms.import_graph``) turns each such constant back into a graph
input in its place and keeps its value aside; ``restore`` (called by ``forms.export_graph``) writes the value again
as the input's initializer. Passes see a variable, as onnxruntime does; ``drop_initializer_inputs`` is the pass
that makes them plain constants when the model's user never feeds them.
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

__all__ = ["hold", "restore", "input_defaults", "initializer_inputs", "drop", "strip", "keep"]

_KEY = "_graphopt_input_defaults"  # in the gs.Graph's __dict__ (its __getattr__ treats other names as functions)
_FIRST_IR_WITHOUT = 4  # from IR version 4 an initializer need not be a graph input


def input_defaults(graph: gs.Graph) -> dict[str, gs.Constant]:
    """Graph input name -> its default value (a constant outside the graph), for the inputs ``hold`` kept."""
    return graph.__dict__.get(_KEY, {})


def initializer_inputs(model_graph: onnx.GraphProto) -> list[str]:
    """The graph inputs of ``model_graph`` that have an initializer, in input order."""
    names = {t.name for t in model_graph.initializer}
    return [i.name for i in model_graph.input if i.name in names]


def hold(model_graph: onnx.GraphProto, graph: gs.Graph) -> None:
    """Make every input of ``model_graph`` that has an initializer a graph input of ``graph`` (just imported from
    it) again, in its place, with its value kept as its default."""
    names = initializer_inputs(model_graph)
    if not names:
        return
    initializers = {t.name: t for t in model_graph.initializer}
    tensors: dict[str, gs.Tensor] = {}  # a tensor only subgraphs read is in none of the main graph's lists
    for g in (graph, *graph.subgraphs(recursive=True)):
        for name, t in g.tensors().items():
            tensors.setdefault(name, t)  # SSA across scopes: one tensor per name
    declared = {i.name: i for i in model_graph.input}
    defaults: dict[str, gs.Constant] = {}
    variables: dict[str, gs.Variable] = {}
    for name in names:
        const = tensors.get(name)
        if not isinstance(const, gs.Constant):  # read by no node: gs never made it a tensor
            const = gs.Constant(name, LazyValues(initializers[name]))
        variable = gs.Variable(name, dtype=const.dtype, shape=_declared_shape(declared[name], const))
        _swap(graph, const, variable)
        defaults[name] = const
        variables[name] = variable
    others = iter(graph.inputs)
    graph.inputs = [variables[i.name] if i.name in variables else next(others) for i in model_graph.input]
    graph.__dict__[_KEY] = defaults


def _swap(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """``new`` in place of ``old`` for every node that reads it (in subgraphs too) and among the graph's outputs
    (``ir.replace_uses``, which this module cannot import: ``ir`` imports ``forms``, which imports this)."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    graph.outputs = [new if t is old else t for t in graph.outputs]


def _declared_shape(info: onnx.ValueInfoProto, const: gs.Constant) -> list:
    """The input's declared shape (a symbolic dim kept), else its default's."""
    t = info.type.tensor_type
    if info.type.HasField("tensor_type") and t.HasField("shape"):
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return list(const.shape)


def restore(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """Write the defaults of the inputs ``graph`` still has as their initializers in ``model`` (exported from
    ``graph``); a model of IR version below 4 whose initializers are not all inputs any more (a pass folded new
    constants) is marked IR version 4, which allows that."""
    listed = {i.name for i in model.graph.input}
    for name, const in input_defaults(graph).items():
        if name in listed:
            model.graph.initializer.append(OnnxExporter.export_tensor_proto(const))
    if model.ir_version < _FIRST_IR_WITHOUT and any(t.name not in listed for t in model.graph.initializer):
        model.ir_version = _FIRST_IR_WITHOUT


def drop(graph: gs.Graph, names: list[str] | None = None) -> list[str]:
    """Make the held inputs (all, or ``names``) plain constants again: no longer inputs, their defaults their
    values. Returns the names dropped."""
    defaults = input_defaults(graph)
    chosen = [n for n in (defaults if names is None else names) if n in defaults]
    for name in list(chosen):
        variable = next(t for t in graph.inputs if t.name == name)
        # an input returned as it is stays: a constant graph output would be no output at all
        if any(t is variable for t in graph.outputs):
            chosen.remove(name)
            continue
        const = defaults.pop(name)
        _swap(graph, variable, const)
        graph.inputs = [t for t in graph.inputs if t is not variable]
    return chosen


def strip(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """Remove from ``model`` (an export of ``graph``, for a tool that would fold every initializer: onnxsim) the
    initializers that are ``graph``'s input defaults: the tool then sees plain inputs. ``keep`` puts them back."""
    held = input_defaults(graph)
    if held:
        kept = [t for t in model.graph.initializer if t.name not in held]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)


def keep(new: gs.Graph, defaults: dict[str, gs.Constant]) -> None:
    """Give ``new`` (a tool's output, imported; ``strip`` took the defaults out of its input) the ``defaults`` of
    the inputs it still has."""
    names = {t.name for t in new.inputs}
    new.__dict__[_KEY] = {n: c for n, c in defaults.items() if n in names}
