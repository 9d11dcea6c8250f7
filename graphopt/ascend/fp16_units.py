"""The pieces the fp16 emulation (``graphopt.ascend.fp16_emulation``) is built from: units (what ATC compiles as one
op, patterns it fuses included), how they are found and costed, fp16 rounding in numpy, and the editor that adds the
emulation's rounding and switch nodes to a graph. The emulation model itself is described in
``graphopt.ascend.fp16_emulation``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..core.ir import const_value, make_name, producer
from ..core.pattern import NoMatch
from .op_types import ascend_op_type, node_ascend_type

__all__ = ["PRECISION_MODES", "CUBE_OPS", "DATA_MOVEMENT_OPS", "REDUCE_OPS", "UNITS_INPUT", "GELU_INPUT",
           "SQRT_2_OVER_PI", "round_fp16", "gelu_exact", "gelu_tanh", "Unit", "LayerNormMatch", "is_float",
           "int_dims", "numel", "reduce_axes", "match_decomposed_layernorm", "unit_ascend_type", "unit_origins",
           "cube_flops", "Fp16Editor", "OUTER_WEIGHT_ELEMENTS", "big_weights", "weightless"]

PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "allow_mix_precision", "must_keep_origin_dtype")
CUBE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# Exact in any dtype: they move or select values, so an fp16 value stays fp16 and an fp32 one fp32 through them.
DATA_MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split", "Gather",
    "GatherElements", "GatherND", "Identity", "Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth", "Dropout",
    "Shape", "Size", "Constant", "ConstantOfShape", "Cast", "Where", "ScatterND", "ScatterElements", "Range",
    "NonZero", "Equal", "Less", "Greater", "Not", "And", "Or"})
REDUCE_OPS = frozenset({"ReduceMean", "GlobalAveragePool", "ReduceSum"})
UNITS_INPUT = "graphopt_fp16_units"
GELU_INPUT = "graphopt_gelu_high_performance"
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
# fp32 initializers this large stay out of the graph the emulation is built on: its units read them from the outer
# scope (rounded by Cast nodes onnxruntime folds once), so they are copied once into the emulated model, not into
# two If branches each, nor rounded in numpy; LayerNorm's gamma and beta (the hidden size) stay far below.
OUTER_WEIGHT_ELEMENTS = 1 << 16


def round_fp16(x: np.ndarray) -> np.ndarray:
    """fp32 -> fp16 -> fp32 (round to nearest even; overflow to inf), as the emulated graph rounds."""
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    from math import erf

    return (0.5 * x * (1.0 + np.vectorize(erf)(x / math.sqrt(2.0)))).astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))).astype(np.float32)


@dataclass
class Unit:
    """What ATC compiles as one op. ``kind`` is the ONNX op type, or ``LayerNorm`` / ``Gelu`` for a pattern ATC
    fuses; ``ascend_type`` the name ATC's configs use; ``fused`` means ATC replaces the nodes by one op, so their
    node names do not survive compilation (keep such units by op type, never by node name)."""

    index: int
    kind: str
    ascend_type: str
    nodes: list[str]
    fused: bool = False
    cube_flops: int = 0  # multiply-adds x 2 of a Conv/MatMul/Gemm, per batch item (symbolic dims count as 1)
    elements: int = 0  # output elements per batch item
    inputs: list[str] = field(default_factory=list)  # float non-constant tensors read from outside the unit
    outputs: list[str] = field(default_factory=list)
    gelu_exact: bool = False  # a GELU whose high_performance mode differs from it (erf form, Gelu approximate=none)

    def as_dict(self) -> dict:
        return {"index": self.index, "kind": self.kind, "ascend_type": self.ascend_type, "nodes": self.nodes,
                "fused": self.fused, "cube_flops": self.cube_flops}


@dataclass
class LayerNormMatch:
    x: gs.Tensor
    y: gs.Tensor
    nodes: list[gs.Node]


def is_float(t: gs.Tensor) -> bool:
    """fp32 (the only dtype the emulation rounds); False when unknown."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values).dtype == np.float32
    if t.dtype is None:
        return False
    if isinstance(t.dtype, int):
        return t.dtype == onnx.TensorProto.FLOAT
    try:
        return np.dtype(t.dtype) == np.float32
    except TypeError:
        return False


def int_dims(shape) -> list[int] | None:
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def numel(shape, skip_batch: bool = True) -> int:
    dims = int_dims(shape)
    if dims is None:
        return 0
    out = 1
    for k, d in enumerate(dims):
        if k == 0 and skip_batch:
            continue
        out *= max(d, 1)
    return out


def reduce_axes(node: gs.Node, rank: int) -> list[int] | None:
    """Normalised reduction axes of a ReduceMean/ReduceSum/GlobalAveragePool; None when not constant."""
    if node.op == "GlobalAveragePool":
        return list(range(2, rank))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name:
        value = const_value(node.inputs[1])
        if value is None:
            return None
        axes = value.reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        if node.attrs.get("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(int(a) % rank for a in axes)


def match_decomposed_layernorm(mean: gs.Node, outs: set[int]) -> LayerNormMatch | NoMatch:
    """The opset < 17 export of LayerNorm around its first ReduceMean: ``d = x - mean(x)``,
    ``y = d / sqrt(mean(d^2) + eps)`` (``d^2`` as ``Pow(d, 2)`` or ``d * d``), then optionally ``* gamma``
    and ``+ beta`` (constants). Both means must reduce the same axes."""
    if mean.op != "ReduceMean" or not mean.inputs:
        return NoMatch("not a ReduceMean")
    x = mean.inputs[0]
    m = mean.outputs[0]
    if id(m) in outs or len(m.outputs) != 1 or m.outputs[0].op != "Sub":
        return NoMatch("mean(x) does not feed exactly one Sub")
    sub = m.outputs[0]
    if len(sub.inputs) != 2 or sub.inputs[0] is not x or sub.inputs[1] is not m:
        return NoMatch("Sub is not x - mean(x)")
    d = sub.outputs[0]
    users = list(d.outputs)
    if id(d) in outs or len(users) != 2:
        return NoMatch(f"x - mean(x) has {len(users)} consumers, expected 2 (square and Div)")
    square = next((u for u in users if (u.op == "Pow" and u.inputs[0] is d)
                   or (u.op == "Mul" and len(u.inputs) == 2 and u.inputs[0] is d and u.inputs[1] is d)), None)
    div = next((u for u in users if u.op == "Div" and u.inputs[0] is d), None)
    if square is None or div is None:
        return NoMatch("x - mean(x) is not squared and divided")
    if square.op == "Pow":
        exp = const_value(square.inputs[1])
        if exp is None or exp.size != 1 or float(exp.reshape(())) != 2.0:
            return NoMatch("Pow exponent is not 2")

    def single(t: gs.Tensor, op: str, what: str) -> gs.Node | NoMatch:
        if id(t) in outs or len(t.outputs) != 1 or t.outputs[0].op != op:
            return NoMatch(f"{what} does not feed exactly one {op}")
        return t.outputs[0]

    var = single(square.outputs[0], "ReduceMean", "(x - mean)^2")
    if isinstance(var, NoMatch):
        return var
    rank = len(x.shape) if x.shape is not None else None
    if rank is not None and reduce_axes(var, rank) != reduce_axes(mean, rank):
        return NoMatch("the two means reduce different axes")
    add = single(var.outputs[0], "Add", "variance")
    if isinstance(add, NoMatch):
        return add
    eps = [const_value(t) for t in add.inputs]
    if not any(e is not None and e.size == 1 for e in eps):
        return NoMatch("variance + eps: eps is not a constant scalar")
    sqrt = single(add.outputs[0], "Sqrt", "variance + eps")
    if isinstance(sqrt, NoMatch):
        return sqrt
    if len(sqrt.outputs[0].outputs) != 1 or div.inputs[1] is not sqrt.outputs[0]:
        return NoMatch("sqrt(variance + eps) does not divide x - mean(x)")
    nodes = [mean, sub, square, var, add, sqrt, div]
    y = div.outputs[0]
    for op in ("Mul", "Add"):  # the affine part, when its operand is a constant
        if id(y) in outs or len(y.outputs) != 1 or y.outputs[0].op != op:
            break
        nxt = y.outputs[0]
        other = nxt.inputs[1] if nxt.inputs[0] is y else nxt.inputs[0]
        if const_value(other) is None:
            break
        nodes.append(nxt)
        y = nxt.outputs[0]
    return LayerNormMatch(x, y, nodes)


def unit_ascend_type(kind: str, node: gs.Node | None = None) -> str:
    """Ascend op type of a unit (``graphopt.ascend.op_types``): its node's, refined by the node's rank, attributes
    and inputs, for a single node; the pattern's name (``Gelu``) for a fused one."""
    if node is not None and node.op == kind:
        return node_ascend_type(node)
    return ascend_op_type(kind)


def unit_origins(graph: gs.Graph, member: dict[int, int]) -> dict[int, int]:
    """id(tensor) -> the unit whose output reaches it through data-movement ops only, so that it holds fp16 values
    exactly when that unit runs in fp16; tensors of any other origin (inputs, constants, several units) are absent.
    ``member``: id(node) -> its unit."""
    origin: dict[int, int] = {}
    for n in graph.nodes:
        u = member.get(id(n))
        if u is not None:
            origin.update((id(t), u) for t in n.outputs)
        elif n.op in DATA_MOVEMENT_OPS:
            floats = {origin.get(id(t), -1) for t in n.inputs if t is not None and t.name and is_float(t)}
            if len(floats) == 1 and -1 not in floats:
                origin.update((id(t), next(iter(floats))) for t in n.outputs if is_float(t))
    return origin


def cube_flops(node: gs.Node) -> int:
    out = node.outputs[0]
    if node.op in ("Conv", "ConvTranspose"):
        w = node.inputs[1].shape if len(node.inputs) > 1 else None
        if w is None or out.shape is None:
            return 0
        kernel = numel(w, skip_batch=True)  # Cin/groups x kh x kw
        if node.op == "ConvTranspose":  # every input element meets Cout/groups x kh x kw weights
            x = node.inputs[0].shape
            return 2 * numel(x) * kernel if x is not None else 0
        return 2 * numel(out.shape) * kernel
    if node.op in ("MatMul", "Gemm"):
        a = node.inputs[0].shape
        if a is None or out.shape is None:
            return 0
        dims = int_dims(a)
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            k = dims[0]
        else:
            k = dims[-1]
        return 2 * numel(out.shape, skip_batch=len(out.shape) > 1) * max(k, 1)
    return 0


def big_weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The model's fp32 initializers of at least ``OUTER_WEIGHT_ELEMENTS`` elements, by name."""
    return {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
            and math.prod(i.dims) >= OUTER_WEIGHT_ELEMENTS}


def _copy_fields(src, dst, skip: str) -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        field = getattr(dst, fd.name)
        if hasattr(field, "extend"):  # a repeated field
            field.extend(value)
        elif hasattr(field, "CopyFrom"):  # a message
            field.CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def weightless(model: onnx.ModelProto, weights: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """``model`` without the initializers ``weights``, each an input of its dtype and shape instead (the model's
    own inputs first), without copying them."""
    out = onnx.ModelProto()
    _copy_fields(model, out, "graph")
    _copy_fields(model.graph, out.graph, "initializer")
    out.graph.initializer.extend(i for i in model.graph.initializer if i.name not in weights)
    declared = {i.name for i in model.graph.input}
    out.graph.input.extend(onnx.helper.make_tensor_value_info(name, w.data_type, list(w.dims))
                           for name, w in weights.items() if name not in declared)
    return out


class Fp16Editor:
    """Adds the emulation's nodes: fp16 rounding, and ``If(switch)`` selections whose then-branch computes the
    fp16 value (so nothing of it runs while the switch is off) and whose else-branch passes the fp32 value on."""

    def __init__(self, graph: gs.Graph):
        self.g = graph
        self.sink: list[gs.Node] = graph.nodes
        self.rounded_consts: dict[int, gs.Constant] = {}
        self.opset = int(graph.opset)

    def var(self, base: str, dtype=np.float32) -> gs.Variable:
        return gs.Variable(make_name(self.g, base), dtype=dtype)

    def const(self, base: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(make_name(self.g, base), np.asarray(value))

    def node(self, op: str, inputs: list, base: str, attrs: dict | None = None, dtype=np.float32) -> gs.Variable:
        out = self.var(f"{base}_out", dtype)
        self.sink.append(gs.Node(op, make_name(self.g, base), attrs or {}, inputs, [out]))
        return out

    def round(self, t: gs.Tensor) -> gs.Tensor:
        """``t`` rounded to fp16 and back; a constant is rounded here, once."""
        value = const_value(t)
        if value is not None:
            if id(t) not in self.rounded_consts:
                self.rounded_consts[id(t)] = self.const(f"{t.name}_fp16", round_fp16(value))
            return self.rounded_consts[id(t)]
        h = self.node("Cast", [t], f"{t.name}_to_fp16", {"to": onnx.TensorProto.FLOAT16}, dtype=np.float16)
        return self.node("Cast", [h], f"{t.name}_fp16", {"to": onnx.TensorProto.FLOAT})

    def _branch(self, build, base: str) -> gs.Graph:
        saved, self.sink = self.sink, []
        try:
            built = build()
            outs = []
            for t in built if isinstance(built, list) else [built]:
                if producer(t) is None or producer(t) not in self.sink:
                    t = self.node("Identity", [t], f"{base}_pass")
                outs.append(t)
            return gs.Graph(nodes=self.sink, outputs=outs, name=make_name(self.g, base), opset=self.g.opset)
        finally:
            self.sink = saved

    def select(self, switch: gs.Tensor, on, off, base: str, out: gs.Variable | list | None = None):
        """``If(switch)``: ``on()`` builds the then-branch's value (or list of values), ``off()`` the else-branch's;
        ``out``: the If's output tensor (or list of them, one per value)."""
        then_g = self._branch(on, f"{base}_on")
        else_g = self._branch(off, f"{base}_off")
        outs = out if isinstance(out, list) else [out if out is not None else self.var(f"{base}_sel")]
        self.sink.append(gs.Node("If", make_name(self.g, base), {"then_branch": then_g, "else_branch": else_g},
                                 [switch], outs))
        return out if isinstance(out, list) else outs[0]

    def gelu_tanh(self, x: gs.Tensor, y: gs.Tensor, hp: gs.Tensor, base: str) -> list[gs.Node]:
        """The tanh GELU built from ``x`` beside the exact one ending in ``y``, which becomes
        ``If(hp, tanh form, exact form)``; returns the nodes added for the tanh form."""
        start = len(self.g.nodes)
        c = lambda name, v: self.const(f"{base}_gelu_{name}", np.array(v, np.float32))  # noqa: E731
        x2 = self.node("Mul", [x, x], f"{base}_gelu_x2")
        x3 = self.node("Mul", [x2, x], f"{base}_gelu_x3")
        kx3 = self.node("Mul", [x3, c("kappa", 0.044715)], f"{base}_gelu_kx3")
        inner = self.node("Add", [x, kx3], f"{base}_gelu_inner")
        z = self.node("Mul", [inner, c("beta", SQRT_2_OVER_PI)], f"{base}_gelu_z")
        th = self.node("Tanh", [z], f"{base}_gelu_tanh")
        one = self.node("Add", [th, c("one", 1.0)], f"{base}_gelu_1p")
        xh = self.node("Mul", [x, one], f"{base}_gelu_xh")
        ya = self.node("Mul", [xh, c("half", 0.5)], f"{base}_gelu_approx")
        added = list(self.g.nodes[start:])
        last = producer(y)
        exact = self.var(f"{y.name}_exact")
        last.outputs[list(last.outputs).index(y)] = exact
        self.select(hp, lambda: ya, lambda: exact, f"{base}_gelu_mode", out=y)
        return added

    def tree_reduce(self, x16: gs.Tensor, shape: list[int], axes: list[int], mean: bool,
                    like: gs.Tensor, base: str) -> gs.Tensor:
        """fp16 reduction of ``x16`` (fp16 values): for a mean, ``x * fp16(1/N)`` first, as TBE's reduce_mean_d;
        then a pairwise tree sum with every partial sum rounded to fp16; reshaped like ``like``."""
        rank = len(shape)
        kept = [i for i in range(rank) if i not in axes]
        n = int(np.prod([shape[a] for a in axes])) if axes else 1
        t = x16
        if axes != list(range(rank - len(axes), rank)):
            t = self.node("Transpose", [t], f"{base}_acc_perm", {"perm": kept + axes})
        k = len(kept)
        t = self.node("Reshape", [t, self.const(f"{base}_acc_shape", np.array([0] * k + [n], np.int64))],
                      f"{base}_acc_flat")
        if mean:
            inv = self.const(f"{base}_acc_inv_n", round_fp16(np.array(1.0 / n, np.float32)))
            t = self.round(self.node("Mul", [t, inv], f"{base}_acc_scale"))
        p = 1 << max(n - 1, 0).bit_length()
        if p != n:  # zeros add nothing to a sum
            pads = np.array([0] * (k + 1) + [0] * k + [p - n], np.int64)
            if self.opset >= 11:
                t = self.node("Pad", [t, self.const(f"{base}_acc_pads", pads)], f"{base}_acc_pad")
            else:
                t = self.node("Pad", [t], f"{base}_acc_pad", {"pads": pads.tolist()})
        ones = self.const(f"{base}_acc_pair", np.ones((2, 1), np.float32))
        level = 0
        while p > 1:
            pairs = self.const(f"{base}_acc_pairs{level}", np.array([0] * k + [p // 2, 2], np.int64))
            t = self.node("Reshape", [t, pairs], f"{base}_acc_pairs{level}")
            t = self.round(self.node("MatMul", [t, ones], f"{base}_acc_sum{level}"))
            p //= 2
            level += 1
        target = self.node("Shape", [like], f"{base}_acc_like", dtype=np.int64)
        return self.node("Reshape", [t, target], f"{base}_acc_out")
