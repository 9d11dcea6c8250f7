"""``insert_fusion_breaker``: put an identity-valued op on one edge of an op-type path, so the compiler cannot
fuse across it."""
from __future__ import annotations

from collections import Counter
from dataclasses import field
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, producer, set_tensors, shape_model
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.rules import QUIET, Match, Rule, find_matches

__all__ = ["InsertFusionBreaker", "BREAKER_PREFIX", "is_breaker"]

# Names of the nodes this pass creates start with this, so a reader of the graph can tell them apart.
BREAKER_PREFIX = "fusion_breaker"

# The constant operand that makes each op the identity: x ** 1 = x * 1 = x + 0 = x.
_NEUTRAL = {"Pow": 1.0, "Mul": 1.0, "Add": 0.0}
_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def is_breaker(node: gs.Node, op: str) -> bool:
    """Whether ``node`` is an identity-valued ``op``: ``Identity(x)``, or ``Pow(x, 1)``, ``Mul(x, 1)``,
    ``Add(x, 0)`` with a one-element constant as the second operand (as this pass writes them), whoever
    inserted it."""
    if node.op != op:
        return False
    if op == "Identity":
        return True
    if len(node.inputs) != 2 or const_value(node.inputs[0]) is not None:
        return False
    value = const_value(node.inputs[1])
    return value is not None and value.size == 1 and float(value.reshape(())) == _NEUTRAL[op]


def _fill_dtypes(graph: gs.Graph, tensors: list[gs.Tensor]) -> None:
    """Give ``tensors`` that lack one their element type, and their kind (``type``: a sequence or optional is not a
    tensor, and a breaker on it would be invalid). Only types are needed here, so ONNX's own inference (one C++
    call) goes first; ``ensure_shapes`` (shapes too, with its fallbacks) only when that leaves a type unknown."""
    missing = [t for t in tensors if t.dtype is None]
    if not missing:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(shape_model(graph)).graph
        types = {vi.name: vi.type for vi in (*inferred.value_info, *inferred.output)}
        for t in missing:
            tp = types.get(t.name)
            if tp is None:
                continue
            kind = tp.WhichOneof("value")
            if kind != "tensor_type":
                t.type = kind
            elif tp.tensor_type.elem_type:
                t.dtype = onnx.helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type)
    except Exception:  # an op ONNX cannot type (a custom domain): the slower inference below may
        pass
    if any(t.dtype is None and _kind(t) == "tensor_type" for t in missing):
        ensure_shapes(graph, [t for t in missing if t.dtype is None and _kind(t) == "tensor_type"])


def _kind(t: gs.Tensor) -> str:
    """``tensor_type``, ``sequence_type``, ... (onnx-graphsurgeon's ``Variable.type``; constants are tensors)."""
    return getattr(t, "type", "tensor_type") or "tensor_type"


# ONNX releases' (IR version, default-domain opset) pairs, oldest first: the newest opset an IR version can carry.
_IR_OPSETS = sorted({(row[1], row[2]) for row in onnx.helper.VERSION_TABLE})
# Pow, Mul and Add broadcast a scalar operand numpy-style from opset 7 (before it, only with ``broadcast=1``).
_BROADCAST_OPSET = 7


def _default_opset_for(graph: gs.Graph) -> int | None:
    """The default-domain opset to import into a graph that imports none (an ``ai.onnx.ml``-only model): the
    newest one the model's IR version can carry; None when that is too old for the breaker ops."""
    ir = graph.ir_version
    fits = [opset for ir_version, opset in _IR_OPSETS if ir is None or ir_version <= ir]
    return max(fits) if fits and max(fits) >= _BROADCAST_OPSET else None


def _imports_default_domain(graph: gs.Graph) -> bool:
    # onnx-graphsurgeon writes ``import_domains`` as the model's opset imports when it has them; without them it
    # writes ``graph.opset`` for the default domain itself.
    domains = graph.import_domains
    return domains is None or any(d.domain in ("", "ai.onnx") for d in domains)


def _depths(graph: gs.Graph) -> dict[int, int]:
    """id(node) -> longest chain of nodes from the graph inputs to it, breakers of any kind not counted, so that
    inserting a breaker (and the pipeline's re-sort after it) does not change which match is first or last.
    ``graph.nodes`` is in topological order (ONNX requires it; the pipeline re-sorts after each change)."""
    tensor_depth: dict[int, int] = {}
    depth: dict[int, int] = {}
    for node in graph.nodes:
        d = max((tensor_depth.get(id(t), 0) for t in node.inputs), default=0)
        d += 0 if any(is_breaker(node, op) for op in (*_NEUTRAL, "Identity")) else 1
        depth[id(node)] = d
        for t in node.outputs:
            tensor_depth[id(t)] = d
    return depth


@register_pass("insert_fusion_breaker")
class InsertFusionBreaker(Rule, Pass):
    """On input ``input_index`` of the first node of every path ``path[0] -> path[1] -> ...`` (each edge with a
    single consumer), insert an identity-valued op: ``x  ->  Pow(x, 1.0)`` (default), ``Mul(x, 1.0)``,
    ``Add(x, 0.0)`` or ``Identity(x)``.

    Maths: x ** 1 = x * 1 = x + 0 = x exactly in IEEE arithmetic (pow(x, 1) is exact, including for negative x,
    +-inf and NaN; only Add turns -0.0 into +0.0), so the outputs do not change, bit for bit in onnxruntime. The
    point is the compiler: ATC fuses op chains it recognises (the ShiftViT seed's GroupNorm tail
    ``Mul -> Add -> GlobalAveragePool -> Flatten -> Gemm``) into kernels that lose precision; a node it does not
    fold away breaks the chain. The seed's ``modify_onnx.py`` puts ``Pow(x, 1.0)`` on the Mul's first input:
    ``path: [Mul, Add, GlobalAveragePool, Flatten, Gemm]``, ``input_index: 0``, ``op: Pow``.

    The constant is a scalar of the edge's dtype (broadcasting a scalar leaves the shape alone). ``Identity`` is
    offered for completeness, but graph simplifiers (onnxsim, onnxoptimizer, ATC itself) delete it, so it only
    breaks a fusion if nothing runs after it; prefer Pow. ``occurrence: first | last`` picks the match nearest to
    / farthest from the graph inputs (longest chain of nodes before the path, breakers not counted; ties by node
    name), an order that inserting breakers does not change.

    Idempotent: an edge whose producer already is a breaker of the requested kind (any ``Pow(x, 1)`` for
    ``op: Pow``, whoever inserted it) is counted as ``already_present`` and left alone. Edges that are
    constants (constant folding would remove the breaker), sequences or optionals (not tensors), or whose dtype is
    not floating are skipped, with the reason in ``stats["skipped"]``.

    Valid at any model version: before IR version 4 (where an initializer must also be a graph input) the neutral
    value comes from a ``Constant`` node; a model importing no default-domain opset (an ``ai.onnx.ml``-only one)
    gets one, the newest its IR version allows (``stats["added_opset_import"]``).
    """

    path: list[str] = field(metadata={"help": "op types from the node whose input gets the breaker, downwards "
                                              "along single-consumer edges, e.g. [Mul, Add, GlobalAveragePool, "
                                              "Flatten, Gemm]"})
    input_index: int = field(default=0, metadata={"help": "which input of the path's first node gets the breaker"})
    op: Literal["Pow", "Mul", "Add", "Identity"] = field(
        default="Pow", metadata={"help": "breaker: Pow(x, 1.0), Mul(x, 1.0), Add(x, 0.0) or Identity(x)"})
    occurrence: Literal["all", "first", "last"] = field(
        default="all", metadata={"help": "which matches get a breaker: all, or the one nearest to (first) / "
                                         "farthest from (last) the graph inputs"})

    def __post_init__(self) -> None:
        if not self.path or not all(isinstance(p, str) and p for p in self.path):
            raise ValueError(f"path must be a non-empty list of op types, got {self.path!r}")
        if self.input_index < 0:
            raise ValueError(f"input_index must be >= 0, got {self.input_index}")
        if self.op not in ("Pow", "Mul", "Add", "Identity"):
            raise ValueError(f"op must be Pow, Mul, Add or Identity, got {self.op!r}")
        if self.occurrence not in ("all", "first", "last"):
            raise ValueError(f"occurrence must be all, first or last, got {self.occurrence!r}")

    # The path as a pattern: each node of ``path`` (any domain) reading the one before it at any input, other
    # inputs free.
    reasons = {"consumers": "{label}: output has {n} consumers, expected 1"}

    def pattern_functions(self):
        def pattern(op):
            v = getattr(op, self.path[0])(_anchor=True, _other_inputs=True, _domain=None, _name=self.path[0])
            for i, kind in enumerate(self.path[1:], 2):
                v = getattr(op, kind)(v, _other_inputs=True, _domain=None, _name=" -> ".join(self.path[:i]))
            return v
        return (pattern,)

    def check(self, ctx: Match) -> str | None:
        # A breaker this pass made is never itself a path start (matters when path[0] is the breaker op).
        return QUIET if ctx.anchor.name.startswith(BREAKER_PREFIX) and is_breaker(ctx.anchor, self.op) else None

    def run(self, graph: gs.Graph) -> PassResult:
        found, misses = find_matches(self, graph)
        matches = [m.anchor for m in found]
        if self.occurrence != "all" and len(matches) > 1:
            depth = _depths(graph)
            matches.sort(key=lambda n: (depth[id(n)], n.name))
        if self.occurrence == "first":
            chosen = matches[:1]
        elif self.occurrence == "last":
            chosen = matches[-1:]
        else:
            chosen = matches
        skipped: Counter[str] = Counter()
        already = 0
        todo: list[gs.Node] = []
        for node in chosen:
            if self.input_index >= len(node.inputs) or node.inputs[self.input_index].name == "":
                skipped[f"{self.path[0]} has no input {self.input_index}"] += 1
                continue
            edge = node.inputs[self.input_index]
            src = producer(edge)
            if src is not None and is_breaker(src, self.op):
                already += 1
                continue
            if const_value(edge) is not None:
                skipped[f"input {self.input_index} is a constant (constant folding would remove a breaker)"] += 1
                continue
            todo.append(node)
        if todo:
            _fill_dtypes(graph, [n.inputs[self.input_index] for n in todo])
        added_opset = None
        if todo and not _imports_default_domain(graph):
            # A model importing only ai.onnx.ml has no default-domain opset, so Pow/Mul/Add/Identity would be ops
            # of no opset: import one the model's IR version allows (it uses no default-domain op yet, so the
            # version changes nothing else).
            added_opset = _default_opset_for(graph)
            if added_opset is None:
                skipped[f"the model imports no default-domain opset and its IR version {graph.ir_version} allows "
                        f"none with {self.op}'s broadcasting (opset >= {_BROADCAST_OPSET})"] += len(todo)
                todo = []
        inserted = 0
        for node in todo:
            edge = node.inputs[self.input_index]
            if _kind(edge) != "tensor_type":
                skipped[f"edge is a {_kind(edge).replace('_type', '')}, not a tensor"] += 1
                continue
            dtype = None if edge.dtype is None else np.dtype(edge.dtype)
            if self.op != "Identity" and (dtype is None or dtype.type not in _FLOAT_DTYPES):
                skipped[f"edge dtype {dtype} is not float16/32/64"] += 1
                continue
            name = make_name(graph, f"{BREAKER_PREFIX}_{self.op}_{node.name}")
            out = gs.Variable(make_name(graph, f"{name}_out"), dtype=edge.dtype, shape=edge.shape)
            inputs = [edge]
            if self.op != "Identity":
                value = gs.Constant(make_name(graph, f"{name}_const"), np.array(_NEUTRAL[self.op], dtype=dtype))
                if graph.ir_version is not None and graph.ir_version < 4:
                    # Before IR 4 every initializer must also be a graph input, which callers could then feed:
                    # a Constant node holds the neutral value instead (const_value and is_breaker see through it).
                    held = gs.Variable(make_name(graph, f"{name}_const_out"), dtype=dtype, shape=[])
                    graph.nodes.append(gs.Node("Constant", make_name(graph, f"{name}_const_node"),
                                               {"value": value}, [], [held]))
                    value = held
                inputs.append(value)
            graph.nodes.append(gs.Node(self.op, name, {}, inputs, [out]))
            new_inputs = list(node.inputs)
            new_inputs[self.input_index] = out
            set_tensors(node.inputs, new_inputs)
            inserted += 1
        if inserted and added_opset is not None:
            graph.import_domains = [*graph.import_domains, onnx.helper.make_opsetid("", added_opset)]
            graph.opset = added_opset
        stats = {"matched": len(matches), "selected": len(chosen), "inserted": inserted, "already_present": already,
                 "skipped": dict(skipped)}
        if inserted and added_opset is not None:
            stats["added_opset_import"] = {"": added_opset}
        if misses:
            stats["near_misses"] = dict(misses)
        return PassResult(inserted > 0, stats)
