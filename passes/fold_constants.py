"""``fold_constants``: fast native simplification: constant and shape folding, constant Reshape targets for a
dynamic batch, no-op removal, in the main graph and (folding) inside If / Loop / Scan bodies."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, producer, replace_uses
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.quiet import ort_log_severity
from graphopt.core.shape_probe import slice_range

__all__ = ["FoldConstants", "ShapeValue", "shape_value", "fold_shape_values",
           "constant_reshape_targets", "lower_constant_nodes", "fold_constant_nodes", "if_condition_cone",
           "remove_noops"]

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
_INT_LIMITS = {onnx.TensorProto.INT64: (-(2**63), 2**63 - 1), onnx.TensorProto.INT32: (-(2**31), 2**31 - 1),
               onnx.TensorProto.INT16: (-(2**15), 2**15 - 1), onnx.TensorProto.INT8: (-128, 127),
               onnx.TensorProto.UINT64: (0, 2**64 - 1), onnx.TensorProto.UINT32: (0, 2**32 - 1),
               onnx.TensorProto.UINT16: (0, 2**16 - 1), onnx.TensorProto.UINT8: (0, 255)}


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


def _onnx_dtype(t: gs.Tensor) -> int | None:
    """``t``'s ONNX element type, None when unknown. gs holds numpy dtypes, or the ONNX enum for types numpy has
    no dtype for (bfloat16, float8): comparing numpy dtypes would call those equal to unrelated types."""
    from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx

    if isinstance(t, gs.Constant):
        dtype = t.export_dtype if t.export_dtype is not None else t.dtype
    else:
        dtype = t.dtype
    if dtype is None:
        return None
    try:
        return int(dtype_to_onnx(dtype))
    except Exception:  # noqa: BLE001 - a type gs cannot name: unknown
        return None


def _default_domain(node: gs.Node) -> bool:
    """An ai.onnx op (gs reads a node without a domain field as domain None, one with it as "")."""
    return (node.domain or "") in ("", "ai.onnx")


def _is_output(t: gs.Tensor, graph: gs.Graph) -> bool:
    return any(o is t for o in graph.outputs)


# --- shape values: the value of shape arithmetic, element by element ---------------------------------------------

@dataclass(frozen=True)
class ShapeValue:
    """The value of a rank-0 or rank-1 integer tensor computed from ``Shape`` ops: each element an int where it is
    known, the symbol of the dim it copies (``"batch"``) where that dim is symbolic, None where it is unknown."""

    elements: tuple
    scalar: bool  # rank 0 (one element) rather than rank 1
    dtype: int  # ONNX element type

    @property
    def static(self) -> bool:
        return all(isinstance(e, int) for e in self.elements)

    def array(self) -> np.ndarray:
        values = np.array(self.elements, dtype=onnx.helper.tensor_dtype_to_np_dtype(self.dtype))
        return values.reshape(()) if self.scalar else values


# Attributes each modelled op may carry; any other attribute (a newer opset's, a typo a runtime ignores) means
# the op is not modelled: its value stays unknown and the node unfolded here.
_SHAPE_OPS = {"Shape": {"start", "end"}, "Size": set(), "Identity": set(), "Cast": {"to", "saturate", "round_mode"},
              "Gather": {"axis"}, "Slice": {"starts", "ends", "axes"}, "Concat": {"axis"}, "Unsqueeze": {"axes"},
              "Squeeze": {"axes"}}


def _const_ints(t: gs.Tensor | None) -> np.ndarray | None:
    v = const_value(t) if t is not None and not t.is_empty() else None
    return None if v is None or v.dtype.kind not in "iu" else v


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    return node.inputs[i] if len(node.inputs) > i and not node.inputs[i].is_empty() else None


def _axis_ok(axes) -> bool:
    """Axes naming the only axis of a rank-1 tensor."""
    if axes is None or len(axes) != 1:
        return False
    axis = np.asarray(axes).reshape(-1)[0]
    return isinstance(axis, (int, np.integer)) and int(axis) in (0, -1)


def shape_value(t: gs.Tensor, memo: dict | None = None, opset: int | None = None) -> ShapeValue | None:
    """What ``t`` holds if it is integer shape arithmetic (``ShapeValue``), None when it is anything else.

    Follows constants and, with ONNX's full semantics of every attribute and input, Shape (start / end), Size,
    Identity, Cast to an integer type, Gather on axis 0 (negative indices), Slice (opset 1 attributes or inputs:
    axes, negative steps, clamping), Concat, Unsqueeze of a scalar and Squeeze to one. A dim of unknown size is
    an unknown element; only dims the shape annotations give as numbers become numbers. ``opset``: the graph's
    default-domain opset (for Slice / Unsqueeze / Squeeze, whose parameters moved from attributes to inputs)."""
    memo = {} if memo is None else memo
    key = id(t)
    if key not in memo:
        memo[key] = None  # a cycle (invalid graph) reads as unknown
        memo[key] = _shape_value(t, memo, opset)
    return memo[key]


def _shape_value(t: gs.Tensor, memo: dict, opset: int | None) -> ShapeValue | None:
    v = _const_ints(t)
    if v is not None:
        return ShapeValue(tuple(int(x) for x in v.reshape(-1)), v.ndim == 0,
                          onnx.helper.np_dtype_to_tensor_dtype(v.dtype)) if v.ndim <= 1 else None
    node = producer(t)
    if node is None or not _default_domain(node) or node.op not in _SHAPE_OPS \
            or not set(node.attrs) <= _SHAPE_OPS[node.op] or len(node.outputs) != 1 or not node.inputs:
        return None
    a = node.attrs
    if node.op in ("Shape", "Size"):
        shape = node.inputs[0].shape
        if shape is None:
            return None
        dims = tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else d if isinstance(d, str) and d
                     else None for d in shape)
        if node.op == "Size":
            return ShapeValue((int(np.prod(dims, dtype=np.int64)),), True, onnx.TensorProto.INT64) \
                if all(isinstance(d, int) for d in dims) else None
        # Shape-15's start / end: negative counts from the end, both clamped to [0, rank] (Python's slicing).
        return ShapeValue(dims[int(a.get("start", 0)):int(a["end"]) if "end" in a else None], False,
                          onnx.TensorProto.INT64)
    data = shape_value(node.inputs[0], memo, opset)
    if data is None:
        return None
    if node.op == "Identity":
        return data
    if node.op == "Cast":
        to = int(a["to"])
        if to not in _INT_LIMITS:
            return None
        lo, hi = _INT_LIMITS[to]
        # A symbolic dim fits int32 / int64 (tensors that size do not exist); a narrower type may wrap it.
        return ShapeValue(tuple(e if isinstance(e, int) and lo <= e <= hi
                                else e if isinstance(e, str) and to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
                                else None for e in data.elements), data.scalar, to)
    if data.scalar and node.op != "Unsqueeze":
        return None
    n = len(data.elements)
    if node.op == "Gather":
        idx = _const_ints(_input(node, 1))
        if not _axis_ok([a.get("axis", 0)]) or idx is None or idx.ndim > 1 \
                or any(not -n <= int(i) < n for i in idx.reshape(-1)):
            return None  # out of range: an error at run time, not ours to fold
        return ShapeValue(tuple(data.elements[int(i)] for i in idx.reshape(-1)), idx.ndim == 0, data.dtype)
    if node.op == "Slice":
        if opset is not None and opset < 10:
            if len(node.inputs) != 1:
                return None
            starts, ends, axes, steps = a.get("starts"), a.get("ends"), a.get("axes", [0]), [1]
        else:
            if a:
                return None
            starts, ends = _const_ints(_input(node, 1)), _const_ints(_input(node, 2))
            axes = _const_ints(_input(node, 3)) if _input(node, 3) is not None else [0]
            steps = _const_ints(_input(node, 4)) if _input(node, 4) is not None else [1]
            if _input(node, 3) is not None and axes is None or _input(node, 4) is not None and steps is None:
                return None
        if starts is None or ends is None or len(starts) != 1 or len(ends) != 1 or not _axis_ok(axes) \
                or len(steps) != 1 or int(np.asarray(steps).reshape(-1)[0]) == 0:
            return None
        start, end, step = (int(np.asarray(x).reshape(-1)[0]) for x in (starts, ends, steps))
        return ShapeValue(tuple(data.elements[i] for i in slice_range(n, start, end, step)), False, data.dtype)
    if node.op == "Concat":
        parts = [data] + [shape_value(i, memo, opset) for i in node.inputs[1:]]
        if not _axis_ok([a.get("axis")]) or any(p is None or p.scalar or p.dtype != data.dtype for p in parts):
            return None
        return ShapeValue(tuple(e for p in parts for e in p.elements), False, data.dtype)
    if node.op in ("Unsqueeze", "Squeeze"):
        axes = a.get("axes") if opset is not None and opset < 13 else _const_ints(_input(node, 1))
        if (opset is None or opset >= 13) and a:
            return None
        if node.op == "Unsqueeze":
            return ShapeValue(data.elements, False, data.dtype) if data.scalar and _axis_ok(axes) else None
        no_axes = axes is None and (opset is not None and opset < 13 or _input(node, 1) is None)
        return ShapeValue(data.elements, True, data.dtype) if n == 1 and (no_axes or _axis_ok(axes)) else None
    return None


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


def fold_shape_values(graph: gs.Graph, opset: int, keep: set[int] = frozenset()) -> int:
    """Replace each tensor of ``graph`` that shape arithmetic computes from static dims alone with its value
    (graph outputs keep their producer, nodes in ``keep`` stay). Returns the count."""
    memo: dict = {}
    folded = 0
    for node in graph.nodes:
        if node.op not in _SHAPE_OPS or len(node.outputs) != 1 or id(node) in keep:
            continue
        out = node.outputs[0]
        if isinstance(out, gs.Constant) or _is_output(out, graph):
            continue
        v = shape_value(out, memo, opset)
        if v is not None and v.static:
            out.to_constant(v.array())
            out.inputs.clear()
            folded += 1
    return folded


def constant_reshape_targets(graph: gs.Graph, opset: int | None = None) -> tuple[int, Counter]:
    """Give each Reshape whose target is computed from ``Shape`` ops a constant target: known dims as numbers, a
    dim that copies the reshaped tensor's own dim at the same position (a dynamic batch) as 0, which Reshape
    reads as "keep this dim" (``allowzero`` 0). Exact whenever the shapes are; the dead Shape arithmetic goes at
    the next cleanup. Returns (targets made constant, reasons others were left)."""
    done, left = 0, Counter()
    memo: dict = {}
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) != 2 or _const_ints(node.inputs[1]) is not None:
            continue
        if node.attrs.get("allowzero", 0):
            left["allowzero=1: 0 would mean a zero dim"] += 1
            continue
        v, data_shape = shape_value(node.inputs[1], memo, opset), node.inputs[0].shape
        if v is None or v.scalar or any(e is None for e in v.elements):
            left["target is not shape arithmetic"] += 1
            continue
        target = []
        for i, e in enumerate(v.elements):
            if isinstance(e, int):
                target.append(e)
            elif data_shape is not None and i < len(data_shape) and data_shape[i] == e:
                target.append(0)
            else:
                break
        if len(target) != len(v.elements):
            left["a dynamic dim that is not the input's at the same position"] += 1
            continue
        const = gs.Constant(make_name(graph, f"{node.name or 'reshape'}_target"), np.array(target, dtype=np.int64))
        node.inputs[1] = const
        done += 1
    return done, left


# --- constant subgraphs, evaluated by onnxruntime -----------------------------------------------------------------

def lower_constant_nodes(graph: gs.Graph) -> int:
    """Turn ``Constant`` nodes holding a number or a tensor into constant tensors (initializers), with ONNX's
    types: value_float(s) float32, value_int(s) int64 (onnx-graphsurgeon's own lowering makes floats float64).
    String and sparse Constants stay nodes, as do those whose output is a graph output (its name stays)."""
    lowered = 0
    for node in graph.nodes:
        if node.op != "Constant" or len(node.attrs) != 1 or len(node.outputs) != 1 \
                or _is_output(node.outputs[0], graph):
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


def _subgraph_nodes(node: gs.Node):
    """Every node inside ``node``'s subgraphs, nested ones included, with the graph holding it."""
    for sub in node.subgraphs():
        for n in sub.nodes:
            yield sub, n
            yield from _subgraph_nodes(n)


def _outer_reads(node: gs.Node) -> list[gs.Tensor]:
    """The tensors of the enclosing scopes that ``node``'s subgraphs (at any depth) read."""
    defined: set[int] = set()
    reads = []
    for sub, n in _subgraph_nodes(node):
        defined.update(id(t) for t in sub.inputs)
        defined.update(id(t) for t in n.outputs)
    for _, n in _subgraph_nodes(node):
        reads.extend(t for t in n.inputs if not t.is_empty() and not isinstance(t, gs.Constant)
                     and id(t) not in defined)
    return reads


def _exclusion(node: gs.Node) -> str | None:
    """Why ``node`` is never folded, or None."""
    for n in [node, *(n for _, n in _subgraph_nodes(node))]:
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


def _model_for(nodes: list[gs.Node], outputs: list[gs.Tensor], root: gs.Graph) -> bytes:
    from onnx_graphsurgeon.exporters.onnx_exporter import export_onnx

    g = gs.Graph(nodes=nodes, inputs=[], outputs=outputs, opset=root.opset, import_domains=root.import_domains,
                 name="fold_constants")
    model = export_onnx(g, do_type_check=False)
    # Annotations left as nothing: onnxruntime infers types itself, and a stale or symbolic annotation of an
    # intermediate tensor must not make it reject (or mis-type) the evaluation.
    del model.graph.value_info[:]
    for o in model.graph.output:
        o.ClearField("type")
    model.ir_version = root.ir_version or onnx.helper.find_min_ir_version_for(list(model.opset_import), True)
    return model.SerializeToString()


def _evaluate(nodes: list[gs.Node], targets: list[gs.Tensor], root: gs.Graph) -> list | None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Each op's own kernel, as written: no fusion of what is being folded.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = ort_log_severity()  # fatal only unless -v (graphopt.core.quiet)
    try:
        session = ort.InferenceSession(_model_for(nodes, targets, root), options, providers=["CPUExecutionProvider"])
        return session.run([t.name for t in targets], {})
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
        stack.extend(_outer_reads(node))
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
        inputs = [t for t in node.inputs if not t.is_empty()] + _outer_reads(node)
        if not all(id(t) in const for t in inputs) or not any(not t.is_empty() for t in node.outputs):
            continue
        if any(_is_output(t, graph) for t in node.outputs):
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
        t.to_constant(value)
        t.inputs.clear()
        folded += 1
    return folded, left


# --- no-ops --------------------------------------------------------------------------------------------------------

def _noop_reason(node: gs.Node) -> str | None:
    """Why ``node`` computes its input unchanged, or None."""
    if node.op == "Identity":
        return "Identity"
    if not _default_domain(node) or not node.inputs or len(node.outputs) != 1:
        return None
    x = node.inputs[0]
    if node.op == "Cast" and "to" in node.attrs:
        dtype = _onnx_dtype(x)
        if dtype is not None and dtype == int(node.attrs["to"]):
            return "Cast to the same dtype"
    if node.op == "Reshape" and len(node.inputs) == 2:
        target = _const_ints(node.inputs[1])
        # Equal to a static input shape element for element: the same shape whether a 0 in it copies (allowzero
        # 0) or is a zero dim (allowzero 1), since a 0 there is the input's dim too.
        if target is not None and _static(x.shape) and list(x.shape) == [int(d) for d in target.reshape(-1)]:
            return "Reshape to the same shape"
    if node.op in ("Squeeze", "Unsqueeze") and len(node.inputs) == 2:
        axes = _const_ints(node.inputs[1])
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
        if len(node.outputs) != 1 or _is_output(node.outputs[0], graph) or not node.inputs:
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
    ``simplify`` (onnxsim) for the common cases.
    """

    fold_shapes: bool = field(default=True, metadata={"help": "also fold Shape-based arithmetic with static shapes"})
    infer_shapes: bool = field(default=True, metadata={
        "help": "infer shapes first (symbolic dims kept), so shape arithmetic on static dims folds everywhere"})
    remove_noops: bool = field(default=True, metadata={"help": "bypass Identity / same-dtype Cast / same-shape Reshape"})
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
