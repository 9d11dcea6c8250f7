"""``replace_shift_scatter``: ScatterND chains that write shifted slices of a tensor into a zeros buffer (ShiftViT's
``shift_feat`` as the TorchScript exporter writes it) become one Slice (+ Pad) per channel group and a Concat."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.core.ir import (const_value, ensure_shapes, make_name, node_inputs, producer, set_tensors,
                         shape_model)
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.pattern import NoMatch
from graphopt.core.quiet import ort_log_severity

__all__ = ["ReplaceShiftScatter", "ShiftGroup", "decompose_shift_map", "simulate_scatter_chain"]

# Ops that only move or repeat elements of their first input; their other inputs are parameters (starts, shape,
# axes, indices) which must be functions of shapes alone. A chain of them maps each output element to one element
# of the input, and that map does not depend on the data.
_MOVEMENT_OPS = frozenset({"Slice", "Expand", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Flatten",
                           "Transpose", "Tile", "Gather"})
_SHAPE_READERS = frozenset({"Shape", "Size"})
# Largest count of consecutive integers each dtype holds exactly: an element's flat position is its probe value.
_EXACT_INTEGERS = {np.dtype(np.float16): 2 ** 11, np.dtype(np.float32): 2 ** 24, np.dtype(np.float64): 2 ** 53,
                   np.dtype(np.int32): 2 ** 31 - 1, np.dtype(np.int64): 2 ** 62}
_DIRECTIONS = {2: ("up", "down"), 3: ("left", "right")}  # NCHW names for content moving to lower / higher index


@dataclass(frozen=True)
class ShiftGroup:
    """Output channels [c0, c1) hold the input window shifted by ``offset``: for (h, w, ...) inside
    ``window`` (one [lo, hi) per axis after the channel axis) ``y[n, c, h, w] = x[n, c + dc, h + dh, w + dw]``;
    zero outside the window. ``offset`` is (dc, dh, dw, ...)."""

    c0: int
    c1: int
    offset: tuple[int, ...]
    window: tuple[tuple[int, int], ...]

    def summary(self, dims: Sequence[int]) -> dict[str, Any]:
        """(axis, direction, amount, channel range) as stats show it; ``dims`` is the full input shape."""
        moves = {axis: -d for axis, d in enumerate(self.offset[1:], start=2) if d}
        out: dict[str, Any] = {"channels": [self.c0, self.c1]}
        if self.offset[0]:
            out["source_channels"] = [self.c0 + self.offset[0], self.c1 + self.offset[0]]
        if not moves:
            out.update(axis=None, direction="none", amount=0)
        elif len(moves) == 1:
            (axis, move), = moves.items()
            names = _DIRECTIONS.get(axis) if len(dims) == 4 else None
            direction = (names[0] if move < 0 else names[1]) if names else ("-" if move < 0 else "+")
            out.update(axis=axis, direction=direction, amount=abs(move))
        else:
            out.update(moves={str(a): m for a, m in moves.items()})
        natural = tuple((max(0, -d), s + min(0, -d)) for d, s in zip(self.offset[1:], dims[2:]))
        if self.window != natural:
            out["window"] = [list(w) for w in self.window]
        return out


def simulate_scatter_chain(shape: Sequence[int],
                           steps: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | NoMatch:
    """Run ScatterND steps (indices, updates) on an int64 "where from" map of ``shape`` that starts all -1 (zero);
    updates hold flat source positions. Refuses what the rewrite must not assume: indices out of range, an element
    written twice in one step (undefined in ONNX) or by two steps (overlapping writes)."""
    shape = tuple(int(s) for s in shape)
    where_from = np.full(shape, -1, dtype=np.int64)
    written = np.zeros(shape, dtype=bool)
    for indices, updates in steps:
        q = indices.shape[-1]
        if q < 1 or q > len(shape):
            return NoMatch("index depth outside the buffer's rank")
        if tuple(updates.shape) != tuple(indices.shape[:-1]) + shape[q:]:
            return NoMatch("updates shape does not match the indices")
        rows = indices.reshape(-1, q).astype(np.int64, copy=False)
        bounds = np.asarray(shape[:q], dtype=np.int64)
        if (rows < 0).any():
            rows = np.where(rows < 0, rows + bounds, rows)
        if ((rows < 0) | (rows >= bounds)).any():
            return NoMatch("indices out of range")
        prefix = int(np.prod(shape[:q]))
        flat = np.ravel_multi_index(tuple(rows.T), shape[:q])
        if len(flat) and np.bincount(flat, minlength=prefix).max() > 1:
            return NoMatch("a ScatterND writes an element twice")
        cells = written.reshape(prefix, -1)
        if cells[flat].any():
            return NoMatch("chain writes overlapping regions")
        where_from.reshape(prefix, -1)[flat] = updates.reshape(len(flat), -1)
        cells[flat] = True
    return where_from


def decompose_shift_map(where_from: np.ndarray) -> list[ShiftGroup] | NoMatch:
    """Read a "where from" map (flat source position per output element, -1 for zero) of a (N, C, ...) tensor as
    consecutive channel groups, each a shifted copy of a box of the same-shaped source, zero outside the box."""
    shape = where_from.shape
    if len(shape) < 2:
        return NoMatch("buffer rank below 2")
    channels = shape[1]
    by_channel = np.moveaxis(where_from, 1, 0)  # (C, N, ...): nonzero() lists elements channel by channel
    written = by_channel >= 0
    counts = written.reshape(channels, -1).sum(axis=1)
    if (counts == 0).any():
        return NoMatch("some channels are never written")
    out_coords = np.nonzero(written)  # (c, n, h, w, ...)
    src_coords = np.unravel_index(by_channel[written], shape)  # (n, c, h, w, ...)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def span(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (min, max) over that channel's written elements."""
        return np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)

    out_by_axis = [out_coords[1], out_coords[0]] + list(out_coords[2:])  # back to (n, c, h, w, ...)
    offsets = []
    for axis in range(len(shape)):
        lo, hi = span(src_coords[axis] - out_by_axis[axis])
        if (lo != hi).any():
            return NoMatch("indices are not a shifted slice (offsets vary within a channel)")
        offsets.append(lo)
    if (offsets[0] != 0).any():
        return NoMatch("elements move between batch items")
    los, his = [], []
    for axis in [0] + list(range(2, len(shape))):
        lo, hi = span(out_by_axis[axis])
        los.append(lo)
        his.append(hi + 1)
    if (los[0] != 0).any() or (his[0] != shape[0]).any():
        return NoMatch("only part of the batch is written")
    if (np.prod(np.subtract(his, los), axis=0) != counts).any():
        return NoMatch("written region is not a box (strided or scattered indices)")
    per_channel = [(int(offsets[1][c]), tuple(int(offsets[a][c]) for a in range(2, len(shape))),
                    tuple((int(los[i][c]), int(his[i][c])) for i in range(1, len(los))))
                   for c in range(channels)]
    groups: list[ShiftGroup] = []
    for c, (dc, dsp, window) in enumerate(per_channel):
        last = groups[-1] if groups else None
        if last is not None and last.c1 == c and last.offset == (dc, *dsp) and last.window == window:
            groups[-1] = ShiftGroup(last.c0, c + 1, last.offset, window)
        else:
            groups.append(ShiftGroup(c, c + 1, (dc, *dsp), window))
    return groups


def _is_zero_fill(node: gs.Node) -> bool:
    value = node.attrs.get("value")
    if value is None:  # ConstantOfShape's default is a float32 zero
        return True
    arr = np.asarray(value.values if isinstance(value, gs.Constant) else value)
    return bool(arr.size == 1 and arr.reshape(-1)[0] == 0)


def _fill_dtype(node: gs.Node) -> np.dtype:
    value = node.attrs.get("value")
    if value is None:
        return np.dtype(np.float32)
    return np.asarray(value.values if isinstance(value, gs.Constant) else value).dtype


def _reads_values(tensor: gs.Tensor) -> str | None:
    """None when ``tensor`` is a function of constants and tensor *shapes* only; else the name of a tensor whose
    values it reads (a graph input, or anything reached other than through Shape/Size)."""
    todo, seen = [tensor], set()
    while todo:
        t = todo.pop()
        if id(t) in seen or isinstance(t, gs.Constant):
            continue
        seen.add(id(t))
        node = producer(t)
        if node is None:
            return t.name
        if node.op in _SHAPE_READERS or node.op == "Constant":
            continue
        random = node.op.startswith("Random") or node.op in ("Multinomial", "Bernoulli")
        subgraph = any(isinstance(v, gs.Graph) for v in node.attrs.values())
        if node.domain not in (None, "", "ai.onnx") or random or subgraph:
            return t.name
        todo.extend(i for i in node.inputs if i.name)
    return None


def _trace_updates(updates: gs.Tensor, src: gs.Tensor) -> NoMatch | None:
    """Updates must be ``src`` through movement ops only, with shape-only parameters."""
    t = updates
    for _ in range(64):
        if t is src:
            return None
        node = producer(t)
        if node is None:
            return NoMatch("updates read a tensor other than the buffer's shape source")
        if node.op not in _MOVEMENT_OPS:
            return NoMatch(f"updates pass through {node.op} "
                           "(only slicing/reshaping of the buffer's source is understood)")
        if any(i.name and _reads_values(i) for i in node.inputs[1:]):
            return NoMatch("update slicing parameters depend on tensor values")
        t = node.inputs[0]
    return NoMatch("updates path too long")


@dataclass
class _Chain:
    scatters: list[gs.Node]
    src: gs.Tensor | None = None
    buffer_dtype: np.dtype | None = None
    buffer_shape: tuple[int, ...] | None = None  # only for a constant buffer (shapes folded, e.g. by onnxsim)
    # For a constant buffer: tensors on the first updates' movement path, the source among them once shapes are known.
    src_candidates: list[gs.Tensor] = field(default_factory=list)

    @property
    def output(self) -> gs.Tensor:
        return self.scatters[-1].outputs[0]


def _find_chains(graph: gs.Graph) -> list[_Chain]:
    """Maximal runs ScatterND -> ScatterND (each the next one's data input and its only ScatterND consumer)."""
    def next_scatter(node: gs.Node) -> gs.Node | None:
        nxt = [c for c in node.outputs[0].outputs if c.op == "ScatterND" and c.inputs[0] is node.outputs[0]]
        return nxt[0] if len(nxt) == 1 else None

    scatters = [n for n in graph.nodes if n.op == "ScatterND" and n.outputs]
    followers = {id(nx) for n in scatters if (nx := next_scatter(n)) is not None}
    chains = []
    for start in scatters:
        if id(start) in followers:
            continue
        chain = [start]
        while (nx := next_scatter(chain[-1])) is not None:
            chain.append(nx)
        chains.append(_Chain(chain))
    return chains


def shape_proxy(graph: gs.Graph, chains: list[_Chain]) -> onnx.ModelProto:
    """``graph``'s shape model (``ir.shape_model``) with each chain's last ScatterND replaced by a Cast of its
    source to the buffer's dtype, and the nodes nothing reads any more dropped. A chain's output has its source's
    shape (the buffer is ``zeros_like(source)``), so shape inference over this model gives every tensor outside the
    chains the shape and type it has in ``graph``, without the index arithmetic feeding the scatters: most of a
    ShiftViT graph, and most of its inference time."""
    model = shape_model(graph)
    stand_in = {c.output.name: c for c in chains if c.src is not None and c.buffer_dtype is not None}
    nodes = list(model.graph.node)
    for k, n in enumerate(nodes):
        if n.op_type == "ScatterND" and n.output[0] in stand_in:
            c = stand_in[n.output[0]]
            nodes[k] = onnx.helper.make_node("Cast", [c.src.name], [n.output[0]],
                                             to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(c.buffer_dtype)))
    live = {o.name for o in model.graph.output}
    keep = []
    for k in range(len(nodes) - 1, -1, -1):
        if any(o in live for o in nodes[k].output):
            keep.append(k)
            live.update(node_inputs(nodes[k]))
    kept = []
    for k in reversed(keep):
        copy = onnx.NodeProto()
        copy.CopyFrom(nodes[k])
        kept.append(copy)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _movement_path(tensor: gs.Tensor) -> list[gs.Tensor]:
    """``tensor`` and the data inputs of the movement ops that produce it, upwards."""
    path = [tensor]
    for _ in range(64):
        node = producer(path[-1])
        if node is None or node.op not in _MOVEMENT_OPS:
            break
        path.append(node.inputs[0])
    return path


def _check_updates(chain: _Chain) -> NoMatch | None:
    for node in chain.scatters:
        reason = _trace_updates(node.inputs[2], chain.src)
        if reason is not None:
            return reason
    return None


def _match_structure(chain: _Chain) -> NoMatch | None:
    """Structural part of the match; sets ``chain.src`` (or its candidates) and what is known of the buffer."""
    for node in chain.scatters:
        if node.attrs.get("reduction", "none") not in ("none", b"none"):
            return NoMatch("ScatterND with a reduction")
        if _reads_values(node.inputs[1]) is not None:
            return NoMatch("indices depend on tensor values, not only shapes")
    buffer = chain.scatters[0].inputs[0]
    fill = producer(buffer)
    folded = const_value(buffer)
    if folded is not None:
        # zeros_like(x) with every shape known ahead: onnxsim folds it to a zeros initializer. The source is then
        # what the updates are sliced from, shaped like the buffer: picked once shapes are known.
        if folded.size == 0 or (folded != 0).any():
            return NoMatch("buffer is a constant with non-zero values")
        chain.buffer_shape = tuple(int(d) for d in folded.shape)
        chain.buffer_dtype = folded.dtype
        chain.src_candidates = [t for t in _movement_path(chain.scatters[0].inputs[2])
                                if not isinstance(t, gs.Constant) and const_value(t) is None]
        if not chain.src_candidates:
            return NoMatch("buffer shape source is a constant")
        return None
    if fill is None or fill.op != "ConstantOfShape":
        what = fill.op if fill is not None else "a graph input"
        return NoMatch(f"buffer is not a zeros_like (ConstantOfShape) tensor but {what}")
    if not _is_zero_fill(fill):
        return NoMatch("buffer is filled with a non-zero value")
    shape_node = producer(fill.inputs[0])
    if (shape_node is None or shape_node.op != "Shape"
            or shape_node.attrs.get("start", 0) != 0 or shape_node.attrs.get("end") is not None):
        return NoMatch("buffer shape is not Shape(tensor)")
    src = shape_node.inputs[0]
    chain.buffer_dtype = _fill_dtype(fill)
    if isinstance(src, gs.Constant) or const_value(src) is not None:
        return NoMatch("buffer shape source is a constant")
    chain.src = src
    return _check_updates(chain)


def _ancestors(chain: _Chain) -> tuple[list[gs.Node], str | None]:
    """Every node the chain output depends on, stopping at the source tensor; and the name of any other
    non-constant leaf (a second input the chain would read)."""
    nodes: dict[int, gs.Node] = {}
    todo = [chain.output]
    other = None
    seen: set[int] = set()
    while todo:
        t = todo.pop()
        if id(t) in seen or t is chain.src or isinstance(t, gs.Constant):
            continue
        seen.add(id(t))
        node = producer(t)
        if node is None:
            other = other or t.name
            continue
        if id(node) not in nodes:
            nodes[id(node)] = node
            todo.extend(i for i in node.inputs if i.name)
    return list(nodes.values()), other


def _dying(graph: gs.Graph, chain: _Chain, ancestors: list[gs.Node]) -> set[int] | None:
    """The nodes (ids) that die once the chain output is produced elsewhere, when every ScatterND of the chain is
    among them (else None): a node dies when its outputs only feed nodes that die too (the chain's own index and
    shape arithmetic). Deaths spread upwards from the last ScatterND, each node visited once."""
    outputs = {id(t) for t in graph.outputs}
    inside = {id(n) for n in ancestors}
    live_consumers = {id(n): {id(c) for t in n.outputs for c in t.outputs} for n in ancestors}
    last = chain.scatters[-1]
    dead = {id(last)}
    todo = [last]
    while todo:
        node = todo.pop()
        for t in node.inputs:
            p = producer(t)
            if p is None or id(p) not in inside or id(p) in dead:
                continue
            live_consumers[id(p)].discard(id(node))
            if not live_consumers[id(p)] and p.outputs and not any(id(o) in outputs for o in p.outputs):
                dead.add(id(p))
                todo.append(p)
    return dead if all(id(n) in dead for n in chain.scatters) else None


def _toposorted(nodes: list[gs.Node]) -> list[gs.Node]:
    """``nodes`` ordered so that each comes after the ones among them it reads from (Kahn's algorithm)."""
    inside = {id(n) for n in nodes}
    waiting: dict[int, int] = {}
    readers: dict[int, list[gs.Node]] = {id(n): [] for n in nodes}
    for n in nodes:
        deps = {id(p) for t in n.inputs if (p := producer(t)) is not None and id(p) in inside}
        waiting[id(n)] = len(deps)
        for d in deps:
            readers[d].append(n)
    order = [n for n in nodes if not waiting[id(n)]]
    for n in order:  # grows while it is walked
        for r in readers[id(n)]:
            waiting[id(r)] -= 1
            if not waiting[id(r)]:
                order.append(r)
    if len(order) != len(nodes):
        raise ValueError("cycle in extracted subgraph")
    return order


def _probe_model(graph: gs.Graph, nodes: list[gs.Node], src: gs.Tensor, dims: Sequence[int | str],
                 outputs: list[gs.Tensor], out_types: list[np.dtype]) -> onnx.ModelProto:
    """``nodes`` (a piece of ``graph``) as a model with ``src`` as its one input, for onnxruntime."""
    sub = gs.Graph(nodes=_toposorted(nodes), inputs=[src], outputs=outputs, opset=graph.opset,
                   import_domains=graph.import_domains, name="replace_shift_scatter_probe")
    model = gs.export_onnx(sub, do_type_check=False)
    # gs stamps the newest IR version, which an older onnxruntime refuses; the opsets decide what is needed.
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    del model.graph.value_info[:]  # re-inferred by onnxruntime; the main graph's annotations may be stale
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(src.dtype))
    del model.graph.input[:]
    model.graph.input.append(onnx.helper.make_tensor_value_info(src.name, elem, list(dims)))
    del model.graph.output[:]
    for t, dt in zip(outputs, out_types):
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(t.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), None))
    return model


def _structure_key(model: onnx.ModelProto) -> bytes:
    """``model`` serialized with its node and tensor names replaced by their order of appearance: two probe models
    with the same key compute the same function of their input (same ops, attributes, constants and wiring).
    A model with a subgraph keeps its names (a subgraph may read outer tensors by name), so it equals no other."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in model.graph.node for a in node.attribute):
        return model.SerializeToString()
    canon = onnx.ModelProto()
    canon.CopyFrom(model)
    g = canon.graph
    names: dict[str, str] = {"": ""}  # "" marks an omitted optional input

    def rename(name: str) -> str:
        return names.setdefault(name, f"t{len(names)}")

    for vi in g.input:
        vi.name = rename(vi.name)
    for init in g.initializer:
        init.name = rename(init.name)
    for k, node in enumerate(g.node):
        node.name = f"n{k}"
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
    for vi in g.output:
        vi.name = rename(vi.name)
    return canon.SerializeToString()


def _probe_outputs(chain: _Chain, dtype: np.dtype) -> tuple[list[gs.Tensor], list[np.dtype]]:
    """The tensors the map is read from (the ScatterNDs' computed indices and updates, then the chain output) and
    their element types."""
    wanted: list[gs.Tensor] = []
    for node in chain.scatters:
        for t in node.inputs[1:]:
            if t is not chain.src and not isinstance(t, gs.Constant) and all(t is not w for w in wanted):
                wanted.append(t)
    wanted.append(chain.output)
    types = [np.dtype(np.int64) if any(t is n.inputs[1] for n in chain.scatters) else dtype for t in wanted]
    return wanted, types


def _session(model: onnx.ModelProto):
    """An onnxruntime session for a probe model: one thread, no graph optimizations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = ort_log_severity()  # fatal only unless -v (graphopt.core.quiet)
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _const_i64(graph: gs.Graph, base: str, values: Sequence[int]) -> gs.Constant:
    return gs.Constant(make_name(graph, base), np.asarray(list(values), dtype=np.int64))


def _build_rewrite(graph: gs.Graph, chain: _Chain, groups: list[ShiftGroup], dims: Sequence[int | str]
                   ) -> tuple[list[gs.Node], gs.Variable]:
    """Slice (+ Pad) per group, Concat along channels. Only axes >= 1 are touched, so any batch size works."""
    # Names carry the pass name and the chain they replace, so a reader of the graph sees where they came from.
    src, base = chain.src, f"{chain.scatters[-1].name or chain.output.name}/replace_shift_scatter"
    channels = int(dims[1])
    nodes: list[gs.Node] = []
    parts: list[gs.Tensor] = []
    for i, g in enumerate(groups):
        starts, ends, axes = [], [], []
        ranges = [(g.c0 + g.offset[0], g.c1 + g.offset[0], channels)]
        ranges += [(lo + d, hi + d, int(s)) for (lo, hi), d, s in zip(g.window, g.offset[1:], dims[2:])]
        for axis, (a, b, size) in enumerate(ranges, start=1):
            if (a, b) != (0, size):
                starts.append(a)
                ends.append(b)
                axes.append(axis)
        part_shape = [dims[0], g.c1 - g.c0] + [hi - lo for lo, hi in g.window]
        t: gs.Tensor = src
        if axes:
            sliced = gs.Variable(make_name(graph, f"{base}/slice{i}"), dtype=src.dtype, shape=part_shape)
            nodes.append(gs.Node("Slice", make_name(graph, f"{base}/Slice{i}"), {}, [
                src, _const_i64(graph, f"{base}/slice{i}_starts", starts),
                _const_i64(graph, f"{base}/slice{i}_ends", ends),
                _const_i64(graph, f"{base}/slice{i}_axes", axes)], [sliced]))
            t = sliced
        before = [0, 0] + [lo for lo, _ in g.window]
        after = [0, 0] + [int(s) - hi for (_, hi), s in zip(g.window, dims[2:])]
        if any(before) or any(after):
            padded = gs.Variable(make_name(graph, f"{base}/pad{i}"), dtype=src.dtype,
                                 shape=[dims[0], g.c1 - g.c0, *dims[2:]])
            nodes.append(gs.Node("Pad", make_name(graph, f"{base}/Pad{i}"), {"mode": "constant"},
                                 [t, _const_i64(graph, f"{base}/pad{i}_pads", before + after)], [padded]))
            t = padded
        parts.append(t)
    out = gs.Variable(make_name(graph, f"{base}/out"), dtype=src.dtype, shape=list(dims))
    if len(parts) > 1:
        nodes.append(gs.Node("Concat", make_name(graph, f"{base}/Concat"), {"axis": 1}, parts, [out]))
    elif nodes:
        set_tensors(nodes[-1].outputs, [out])
    else:  # the chain copies its source unchanged
        nodes.append(gs.Node("Identity", make_name(graph, f"{base}/Identity"), {}, [src], [out]))
    return nodes, out


def _detach(nodes: list[gs.Node]) -> None:
    for n in nodes:
        n.inputs.clear()
        n.outputs.clear()


@register_pass("replace_shift_scatter")
class ReplaceShiftScatter(Pass):
    """ScatterND chains that assemble shifted slices of x in a zeros buffer  ->  Slice(x) -> Pad per channel
    group, Concat over channels.

    The chain ``y = ScatterND(... ScatterND(ConstantOfShape(Shape(x), 0), I1, U1) ..., In, Un)`` with every
    ``Uk`` taken from x by slicing/reshaping alone (shape-only parameters) and every ``Ik`` a function of shapes
    alone maps each element of y to one element of x or to zero, independently of the data. The pass evaluates that
    map with onnxruntime on an extracted copy of the chain (probe = element positions, at each ``probe_batches``
    size), and rewrites the chain when the map reads, per consecutive channel group [c0, c1), as
    ``y[:, c0:c1] = Pad(x[:, c0+dc:c1+dc, lo_h+dh:hi_h+dh, lo_w+dw:hi_w+dw], zeros outside [lo, hi))`` with the
    same map at every probe batch size. ShiftViT's shift (g = C / n_div) gives five groups: [0, g) left by one
    column, [g, 2g) right, [2g, 3g) up one row, [3g, 4g) down, the rest copied (dc = 0 for all of them).

    The batch: the exported indices depend on it (a Range over dim 0 of the buffer's shape). The map is accepted
    only if at every probe batch size it writes the whole batch, moves no element between batch items, and reads
    as the same groups; the rewrite slices and pads axes >= 1 only, so it serves any batch size.

    Before rewriting, the replacement is run next to the original chain on random inputs at each probe batch
    size and must match exactly. Chains whose extracted copies are the same model up to names (ShiftViT's blocks
    of one stage: same ops, attributes, constants, wiring and source shape) are probed and checked once; the
    others of the kind take that outcome. Left alone, with the reason in ``stats["skipped"]``: a buffer that is not
    zeros_like, updates read from another tensor or through value-changing ops, indices that depend on values or
    are not a shifted box, overlapping writes, channels never written, chain results used elsewhere, non-static
    non-batch dims.
    """

    probe_batches: list[int] = field(default_factory=lambda: [1, 3], metadata={
        "help": "batch sizes at which a dynamic-batch chain is evaluated and the rewrite checked"})

    def __post_init__(self) -> None:
        if not self.probe_batches or any(not isinstance(b, int) or b < 1 for b in self.probe_batches):
            raise ValueError(f"probe_batches must be a non-empty list of positive integers, got {self.probe_batches}")

    def run(self, graph: gs.Graph) -> PassResult:
        skipped: Counter[str] = Counter()
        candidates = []
        for chain in _find_chains(graph):
            reason = _match_structure(chain)
            if reason is not None:
                skipped[reason.reason] += len(chain.scatters)
            else:
                candidates.append(chain)
        if candidates:
            needed = [t for c in candidates for t in ([c.src] if c.src else c.src_candidates)]
            if all(c.src is not None for c in candidates):
                ensure_shapes(graph, needed, shape_proxy(graph, candidates))
            ensure_shapes(graph, needed)  # whatever the proxy left unknown (nothing, when it applied)
        rewritten: list[dict[str, Any]] = []
        removed = 0
        checked: dict[tuple[bytes, tuple[int, ...]], list[ShiftGroup] | NoMatch] = {}
        detached: set[int] = set()
        for chain in candidates:
            outcome = self._rewrite(graph, chain, checked, detached)
            if isinstance(outcome, NoMatch):
                skipped[outcome.reason] += len(chain.scatters)
            else:
                rewritten.append(outcome)
                removed += len(chain.scatters)
        if detached:
            graph.nodes = [n for n in graph.nodes if id(n) not in detached]
        stats = {"chains_rewritten": len(rewritten), "scatternd_removed": removed, "chains": rewritten,
                 "skipped": dict(skipped)}
        return PassResult(bool(rewritten), stats)

    def _rewrite(self, graph: gs.Graph, chain: _Chain,
                 checked: dict[tuple[bytes, tuple[int, ...]], list[ShiftGroup] | NoMatch],
                 detached: set[int]) -> dict[str, Any] | NoMatch:
        """Check ``chain`` and rewrite it in ``graph``; the nodes it detaches are added to ``detached`` (ids).
        ``checked`` holds the outcome (groups or reason) of every chain derived and verified so far, by probe model
        and batch sizes: a chain whose probe model is the same function of its source (ShiftViT's blocks of one
        stage) gets the same outcome without running onnxruntime again."""
        if chain.src is None:  # constant buffer: the deepest tensor on the updates' path shaped like it
            shaped = [t for t in chain.src_candidates if t.shape is not None
                      and tuple(t.shape) == chain.buffer_shape]
            if not shaped:
                return NoMatch("updates come from no tensor shaped like the constant buffer")
            chain.src = shaped[-1]
            reason = _check_updates(chain)
            if reason is not None:
                return reason
        src = chain.src
        if src.shape is None or src.dtype is None:
            return NoMatch("source shape unknown")
        dims = list(src.shape)
        if len(dims) < 2:
            return NoMatch("buffer rank below 2")
        if any(not isinstance(d, (int, np.integer)) or d < 1 for d in dims[1:]):
            return NoMatch("non-batch dims of the source are not static")
        dtype = np.dtype(src.dtype)
        if dtype != chain.buffer_dtype:
            return NoMatch("buffer dtype differs from its shape source")
        if dtype not in _EXACT_INTEGERS:
            return NoMatch(f"dtype {dtype} not supported")
        dynamic = not isinstance(dims[0], (int, np.integer)) or dims[0] < 1
        batches = list(self.probe_batches) if dynamic else [int(dims[0])]
        if max(batches) * int(np.prod(dims[1:])) > _EXACT_INTEGERS[dtype]:
            return NoMatch(f"too many elements to probe exactly in {dtype}")
        ancestors, other = _ancestors(chain)
        if other is not None:
            return NoMatch("chain reads a tensor other than its source")
        dying = _dying(graph, chain, ancestors)
        if dying is None:
            return NoMatch("an intermediate chain result is used elsewhere")
        in_dims = ["batch" if dynamic else int(dims[0])] + [int(d) for d in dims[1:]]

        wanted, types = _probe_outputs(chain, dtype)
        try:
            probe = _probe_model(graph, ancestors, src, in_dims, wanted, types)
        except Exception as e:  # noqa: BLE001 - anything that cannot be extracted is a reason to leave the chain alone
            return NoMatch(f"onnxruntime cannot evaluate the chain ({type(e).__name__})")
        key = (_structure_key(probe), tuple(batches))
        known = checked.get(key)
        if known is None:
            outcome = self._derive_and_verify(graph, chain, probe, wanted, in_dims, batches, dtype)
            checked[key] = outcome if isinstance(outcome, NoMatch) else outcome[0]
        elif isinstance(known, NoMatch):
            return known
        else:  # the same function of its source as a chain whose rewrite was verified
            outcome = (known, *_build_rewrite(graph, chain, known, dims))
        if isinstance(outcome, NoMatch):
            return outcome
        groups, nodes, out = outcome
        y = chain.output  # read before the last ScatterND, which produces it, is detached
        # The chain's nodes (its last ScatterND among them) are detached here rather than left to the pipeline's
        # cleanup, which formats a log line for every node it removes (ShiftViT: 7000 nodes, 0.2 s); run() drops
        # them from the node list.
        for node in ancestors:
            if id(node) in dying:
                node.inputs.clear()
                node.outputs.clear()
        detached.update(dying)
        set_tensors(nodes[-1].outputs, [y])
        graph.nodes.extend(nodes)
        full = [int(d) if isinstance(d, (int, np.integer)) else d for d in dims]
        return {"output": y.name, "source": src.name, "scatters": len(chain.scatters),
                "groups": [g.summary(full) for g in groups]}

    def _derive_and_verify(self, graph: gs.Graph, chain: _Chain, probe_model: onnx.ModelProto,
                           wanted: list[gs.Tensor], in_dims: list, batches: list[int], dtype: np.dtype
                           ) -> tuple[list[ShiftGroup], list[gs.Node], gs.Variable] | NoMatch:
        """The groups read from ``probe_model`` (the chain with ``wanted`` as outputs), and the rewrite built from
        them and checked against the chain; the rewrite's nodes are not yet in ``graph``."""
        try:
            sess = _session(probe_model)
        except Exception as e:  # noqa: BLE001 - anything onnxruntime refuses is a reason to leave the chain alone
            return NoMatch(f"onnxruntime cannot evaluate the chain ({type(e).__name__})")
        groups = self._derive(sess, chain, wanted, in_dims, batches, dtype)
        if isinstance(groups, NoMatch):
            return groups
        nodes, out = _build_rewrite(graph, chain, groups, list(chain.src.shape))
        reason = self._verify(graph, chain, sess, nodes, out, in_dims, batches, dtype)
        if reason is not None:
            _detach(nodes)
            return reason
        return groups, nodes, out

    def _derive(self, sess, chain: _Chain, wanted: list[gs.Tensor], in_dims: list, batches: list[int],
                dtype: np.dtype) -> list[ShiftGroup] | NoMatch:
        """Evaluate indices and updates (``wanted``, the outputs of the chain's session ``sess``) with an
        element-position probe; read the map as channel groups."""
        src = chain.src
        result: list[ShiftGroup] | None = None
        for b in batches:
            shape = [b] + in_dims[1:]
            size = int(np.prod(shape))
            probe = np.arange(size, dtype=np.int64).reshape(shape).astype(dtype)
            try:
                values = dict(zip([t.name for t in wanted], sess.run([t.name for t in wanted], {src.name: probe})))
            except Exception as e:  # noqa: BLE001
                return NoMatch(f"onnxruntime cannot evaluate the chain ({type(e).__name__})")
            values[src.name] = probe

            def value(t: gs.Tensor) -> np.ndarray:
                c = const_value(t) if isinstance(t, gs.Constant) else None
                return np.asarray(c) if c is not None else values[t.name]

            steps = []
            for node in chain.scatters:
                upd = value(node.inputs[2])
                pos = np.rint(upd).astype(np.int64)
                if not np.array_equal(pos.astype(upd.dtype), upd) or ((pos < 0) | (pos >= size)).any():
                    return NoMatch("updates are not elements of the source")
                steps.append((value(node.inputs[1]), pos))
            where_from = simulate_scatter_chain(shape, steps)
            if isinstance(where_from, NoMatch):
                return where_from
            expected = np.where(where_from >= 0, probe.reshape(-1)[np.maximum(where_from, 0)], 0).astype(dtype)
            if not np.array_equal(expected, values[chain.output.name]):
                return NoMatch("simulated chain disagrees with onnxruntime")
            groups = decompose_shift_map(where_from)
            if isinstance(groups, NoMatch):
                return groups
            if result is not None and groups != result:
                return NoMatch("shift map depends on the batch size")
            result = groups
        assert result is not None
        return result

    def _verify(self, graph: gs.Graph, chain: _Chain, chain_sess, nodes: list[gs.Node], out: gs.Tensor,
                in_dims: list, batches: list[int], dtype: np.dtype) -> NoMatch | None:
        """The rewrite (``nodes``, computing ``out``) against the chain (its session ``chain_sess``) on random
        inputs: exact equality at every probe batch size."""
        rng = np.random.default_rng(0)
        try:
            sess = _session(_probe_model(graph, nodes, chain.src, in_dims, [out], [dtype]))
            for b in batches:
                shape = [b] + in_dims[1:]
                if dtype.kind == "f":
                    x = rng.standard_normal(shape).astype(dtype)
                else:
                    x = rng.integers(-1000, 1000, size=shape).astype(dtype)
                ref, = chain_sess.run([chain.output.name], {chain.src.name: x})
                got, = sess.run([out.name], {chain.src.name: x})
                if ref.shape != got.shape or not np.array_equal(ref, got):
                    return NoMatch("rewrite disagrees with the chain on a random probe")
        except Exception as e:  # noqa: BLE001
            return NoMatch(f"onnxruntime cannot evaluate the rewrite ({type(e).__name__})")
        return None
