"""``fold_constants``: fast native simplification: constant and shape folding, constant Reshape targets for a
dynamic batch, no-op removal, in the main graph and (folding) inside If / Loop / Scan bodies."""
from __future__ import annotations

from collections import Counter
from dataclasses import field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.core.ir import ensure_shapes, onnx_dtype, outer_reads, producer, replace_uses, subgraph_nodes
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.forms import split_graph, weight_feeds, weights_as_inputs
from graphopt.core.sessions import create_session

from ._shape_folding import const_ints, constant_reshape_targets, default_domain, fold_shape_values, is_output

__all__ = ["FoldConstants", "lower_constant_nodes", "fold_constant_nodes", "if_condition_cone", "remove_noops"]

# Never evaluated at fold time: their outputs are random draws, not functions of their inputs.
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})
# Left as they are, as onnx-graphsurgeon does: a compiler reads quantization from these nodes, and folding a
# DequantizeLinear of constant weights would turn an int8 model's weights back into float.
_QUANTIZATION = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Domains whose ops onnxruntime evaluates with the ONNX definition (a custom domain may be a model-local
# function or an op only the deployment runtime knows).
_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# Element types a folded value may have: numpy holds them exactly and onnx-graphsurgeon writes them back as the
# same ONNX type (bfloat16 / float8 / int4 / strings do not round-trip through numpy and gs reliably).
_FOLDABLE_KINDS = "biuf"


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


def if_condition_cone(graph: gs.Graph) -> set[int]:
    """The ids of the nodes of ``graph`` that the condition of an If in it is computed from.

    These stay as written. onnxruntime inlines an If whose condition it can fold, and infers the taken branch's
    nodes again in the outer graph, where what the model relied on may not hold: the function-expanded AffineGrid
    feeds Range one-element 1-D tensors out of its If, which Range's kernel accepts and its inference rejects, so
    folding the exact ``Size`` its condition is computed from makes onnxruntime refuse the model."""
    cone: set[int] = set()
    stack = [n.inputs[0] for n in graph.nodes if n.op == "If" and n.inputs]
    while stack:
        node = producer(stack.pop())
        if node is None or id(node) in cone:
            continue
        cone.add(id(node))
        stack.extend(t for t in node.inputs if not t.is_empty())
    return cone


# --- constant subgraphs, evaluated by onnxruntime -----------------------------------------------------------------

def lower_constant_nodes(graph: gs.Graph) -> int:
    """Turn ``Constant`` nodes holding a number or a tensor into constant tensors (initializers), with ONNX's
    types: value_float(s) float32, value_int(s) int64 (onnx-graphsurgeon's own lowering makes floats float64).
    String and sparse Constants stay nodes, as do those whose output is a graph output (its name stays)."""
    lowered = 0
    for node in graph.nodes:
        if node.op != "Constant" or len(node.attrs) != 1 or len(node.outputs) != 1 \
                or is_output(node.outputs[0], graph):
            continue
        (key, value), = node.attrs.items()
        if key == "value" and isinstance(value, gs.Constant):
            values = value._values  # not loaded or copied here
        elif key in ("value_float", "value_floats") and not isinstance(value, gs.Node.AttributeRef):
            values = np.array(value, dtype=np.float32)
        elif key in ("value_int", "value_ints") and not isinstance(value, gs.Node.AttributeRef):
            values = np.array(value, dtype=np.int64)
        else:
            continue
        out = node.outputs[0]
        out.to_constant(values)
        out.inputs.clear()
        lowered += 1
    return lowered


def _exclusion(node: gs.Node) -> str | None:
    """Why ``node`` is never folded, or None."""
    for n in [node, *(n for _, n in subgraph_nodes(node))]:
        if n.op in _NONDETERMINISTIC or "seed" in n.attrs:
            return "random"
        if n.op == "Dropout" and (len(n.inputs) > 2 and not n.inputs[2].is_empty() or not n.attrs.get("is_test", 1)):
            return "random"  # a training-mode Dropout draws its mask
        if (n.domain or "") not in _ONNX_DOMAINS:
            return "not an ONNX op"
        if any(isinstance(v, gs.Node.AttributeRef) for v in n.attrs.values()):
            return "attribute of a function"
    if node.op in _QUANTIZATION:
        return "quantization"
    return None


def _evaluate(nodes: list[gs.Node], targets: list[gs.Tensor], root: gs.Graph) -> list | None:
    """The values of ``targets``, computed by ``nodes`` (constant inputs only) in onnxruntime; None when it cannot.
    The weights they read are fed as inputs, in place (``forms.weight_feeds``): serialized into the model, a
    weight-standardized ResNet's 100 MB would be copied twice before the first op runs."""
    part = gs.Graph(outputs=targets, opset=root.opset, import_domains=root.import_domains, name="fold_constants",
                    ir_version=root.ir_version)
    part.nodes = nodes  # set after construction, which would repoint the nodes' subgraphs at its function list
    try:
        split = split_graph(part)
        model = weights_as_inputs(split)
        # Annotations left as nothing: onnxruntime infers types itself, and a stale or symbolic annotation of an
        # intermediate tensor must not make it reject (or mis-type) the evaluation.
        del model.graph.value_info[:]
        for o in model.graph.output:
            o.ClearField("type")
        model.ir_version = root.ir_version or onnx.helper.find_min_ir_version_for(list(model.opset_import), True)
        # "evaluate": each op's own kernel, as written, no fusion of what is being folded.
        return create_session(model, "evaluate").run([t.name for t in targets], weight_feeds(split))
    except Exception:  # noqa: BLE001 - a node onnxruntime cannot evaluate stays a node
        return None


def _ancestors(targets: list[gs.Tensor], foldable: dict[int, gs.Node], order: list[gs.Node]) -> list[gs.Node]:
    """The foldable nodes ``targets`` are computed from, in graph order."""
    need: set[int] = set()
    stack = list(targets)
    while stack:
        t = stack.pop()
        node = producer(t)
        if node is None or id(node) not in foldable or id(node) in need:
            continue
        need.add(id(node))
        stack.extend(i for i in node.inputs if not i.is_empty())
        stack.extend(outer_reads(node))
    return [n for n in order if id(n) in need]


def fold_constant_nodes(graph: gs.Graph, root: gs.Graph, keep: set[int] = frozenset()) -> tuple[int, Counter]:
    """Evaluate every node of ``graph`` (not its subgraphs) whose inputs, and whatever its own subgraphs read
    from outside, are all constant, with onnxruntime, and replace the tensors the rest of the graph reads by their
    values. Nodes producing graph outputs stay (their names stay), as do those in ``keep``, random ops,
    quantization and ops outside the ONNX domains. Returns (tensors replaced, reasons nodes were left)."""
    const = {id(t) for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    foldable: dict[int, gs.Node] = {}
    left: Counter = Counter()
    for node in graph.nodes:
        inputs = [t for t in node.inputs if not t.is_empty()] + outer_reads(node)
        if not all(id(t) in const for t in inputs) or not any(not t.is_empty() for t in node.outputs):
            continue
        if any(is_output(t, graph) for t in node.outputs):
            continue
        if id(node) in keep:
            left["computes an If condition"] += 1
            continue
        why = _exclusion(node)
        if why is not None:
            left[why] += 1
            continue
        foldable[id(node)] = node
        const.update(id(t) for t in node.outputs if not t.is_empty())
    # What the rest of the graph reads (nested subgraphs included: a tensor's consumers list them).
    targets = [t for n in foldable.values() for t in n.outputs
               if not t.is_empty() and any(id(c) not in foldable for c in t.outputs)]
    if not targets:
        return 0, left
    values = _evaluate(_ancestors(targets, foldable, graph.nodes), targets, root)
    if values is None:  # one node onnxruntime rejects: the others still fold, each on its own
        values = []
        for t in targets:
            one = _evaluate(_ancestors([t], foldable, graph.nodes), [t], root)
            values.append(None if one is None else one[0])
    folded = 0
    for t, value in zip(targets, values):
        if not isinstance(value, np.ndarray) or value.dtype.kind not in _FOLDABLE_KINDS:
            left["not a numeric tensor (or not evaluable)"] += 1
            continue
        node = producer(t)
        t.to_constant(value)
        t.inputs.clear()
        if not node.outputs:
            # Dead now: it reads nothing either, so the constant nodes it read are no one's input (else the next
            # round would fold their outputs again, one level up a chain per round).
            node.inputs.clear()
        folded += 1
    return folded, left


# --- no-ops --------------------------------------------------------------------------------------------------------

def _noop_reason(node: gs.Node) -> str | None:
    """Why ``node`` computes its input unchanged, or None."""
    if node.op == "Identity":
        return "Identity"
    if not default_domain(node) or not node.inputs or len(node.outputs) != 1:
        return None
    x = node.inputs[0]
    if node.op == "Cast" and "to" in node.attrs:
        dtype = onnx_dtype(x)
        if dtype is not None and dtype == int(node.attrs["to"]):
            return "Cast to the same dtype"
    if node.op == "Reshape" and len(node.inputs) == 2:
        target = const_ints(node.inputs[1])
        # Equal to a static input shape element for element: the same shape whether a 0 in it copies (allowzero
        # 0) or is a zero dim (allowzero 1), since a 0 there is the input's dim too.
        if target is not None and _static(x.shape) and list(x.shape) == [int(d) for d in target.reshape(-1)]:
            return "Reshape to the same shape"
    if node.op in ("Squeeze", "Unsqueeze") and len(node.inputs) == 2:
        axes = const_ints(node.inputs[1])
        if axes is None or axes.size != 0:
            return None
        if node.op == "Unsqueeze":
            return "Unsqueeze of no axes"
        # Squeeze with empty axes removes every dim of size 1: a no-op only when no dim is (or may be) 1.
        if _static(x.shape) and 1 not in list(x.shape):
            return "Squeeze of no axes, no dim of size 1"
    return None


def remove_noops(graph: gs.Graph) -> Counter:
    """Bypass nodes that return their input unchanged (graph outputs keep their producer, so their names stay)."""
    removed: Counter = Counter()
    for node in list(graph.nodes):
        if len(node.outputs) != 1 or is_output(node.outputs[0], graph) or not node.inputs:
            continue
        reason = _noop_reason(node)
        if reason is None:
            continue
        replace_uses(node.outputs[0], node.inputs[0])
        node.outputs.clear()
        removed[reason] += 1
    return removed


def _node_count(graph: gs.Graph) -> int:
    return sum(1 + sum(_node_count(s) for s in n.subgraphs()) for n in graph.nodes)


@register_pass("fold_constants")
class FoldConstants(Pass):
    """Fold every node whose inputs are all constant into its value, and drop no-op nodes.

    Constant subgraphs are evaluated by onnxruntime (each op as ONNX defines it; random ops, quantization, custom
    domains and anything onnxruntime cannot evaluate stay nodes), in the main graph and inside If / Loop / Scan
    bodies, where tensors from the enclosing graph count as constant when they are. With ``fold_shapes``, shape
    arithmetic on static dims folds too: Shape (start / end), Size, Gather, Slice, Concat, Unsqueeze, Squeeze,
    Identity and integer Cast are followed element by element, with every attribute and input as ONNX defines
    it (an attribute not modelled leaves the node alone), so ``Shape(x)[1]`` folds while ``Shape(x)[0]`` of a
    dynamic batch stays computed; in Loop / Scan bodies, whose tensors may change shape between iterations, only
    fully constant subgraphs fold. With ``infer_shapes`` (default) shapes are inferred first
    (``ir.infer_shapes``: probing, else onnxruntime's symbolic inference; symbolic dims kept), which is what lets
    shape arithmetic deep in the graph fold. No-ops removed (main graph): Identity, Cast to the dtype it already
    has, Reshape to the static shape it already has, Unsqueeze of no axes, Squeeze of no axes of a tensor with
    no dim of size 1. Graph outputs keep their producer. Exact: folded values are what the nodes compute. With
    ``reshape_targets`` a Reshape target that stays computed only because of a dynamic batch becomes a constant
    with 0 for the batch (Reshape's "copy this dim"), as onnxslim does and onnxsim does not. A fast alternative to
    ``simplify`` (onnxsim) for the common cases. In the knowledge library: the folding every other rewrite builds
    on (onnxslim's and onnxsim's first stage).
    """

    library = True
    fold_shapes: bool = field(default=True, metadata={"help": "also fold Shape-based arithmetic with static shapes"})
    infer_shapes: bool = field(default=True, metadata={
        "help": "infer shapes first (symbolic dims kept), so shape arithmetic on static dims folds everywhere"})
    remove_noops: bool = field(default=True, metadata={
        "help": "bypass Identity / same-dtype Cast / same-shape Reshape"})
    reshape_targets: bool = field(default=True, metadata={
        "help": "constant Reshape targets where only a dynamic batch kept them computed (the batch as 0)"})

    def run(self, graph: gs.Graph) -> PassResult:
        nodes_before = _node_count(graph)
        if self.fold_shapes and self.infer_shapes:
            ensure_shapes(graph, [t for t in graph.tensors().values() if isinstance(t, gs.Variable)])
        opset = int(graph.opset)
        counts: Counter = Counter()
        left: Counter = Counter()
        self._fold(graph, graph, opset, self.fold_shapes, counts, left)
        reshaped, reshape_left = constant_reshape_targets(graph, opset) if self.fold_shapes and self.reshape_targets \
            else (0, Counter())
        edits = sum(counts.values()) + reshaped
        if edits:
            graph.cleanup()
        folded = nodes_before - _node_count(graph)
        removed = remove_noops(graph) if self.remove_noops else Counter()
        if removed:
            graph.cleanup()
        nodes_after = _node_count(graph)
        stats = {"nodes_before": nodes_before, "nodes_after": nodes_after, "folded": folded,
                 "noops_removed": dict(removed)}
        if reshaped or reshape_left:
            stats["reshape_targets"] = {"constant": reshaped, "left": dict(reshape_left)}
        if left:
            stats["left"] = dict(left)
        return PassResult(edits > 0 or bool(removed), stats)

    def _fold(self, graph: gs.Graph, root: gs.Graph, opset: int, shapes: bool, counts: Counter,
              left: Counter) -> None:
        """Fold ``graph``, then its nodes' subgraphs (which may read what was just folded). ``shapes``: shape
        annotations describe every execution of ``graph`` (not so in a Loop / Scan body)."""
        counts["constants"] += lower_constant_nodes(graph)
        keep = if_condition_cone(graph)
        # Alternate until neither finds more: a folded constant can make shape arithmetic static and back.
        while True:
            step = fold_shape_values(graph, opset, keep) if shapes else 0
            folded, why = fold_constant_nodes(graph, root, keep)
            counts["shape values"] += step
            counts["evaluated"] += folded
            if not step and not folded:
                left.update(why)
                break
        for node in graph.nodes:
            for sub in node.subgraphs():
                self._fold(sub, root, opset, shapes and node.op == "If", counts, left)
