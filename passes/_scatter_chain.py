"""The ScatterND chains ``replace_shift_scatter`` rewrites: finding a chain and matching its structure in a graph,
simulating it on a "where from" map, and reading that map as channel groups of shifted boxes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, outer_reads, producer, shape_model
from graphopt.core.forms import with_nodes
from graphopt.core.pattern import NoMatch

__all__ = ["ShiftGroup", "simulate_scatter_chain", "decompose_shift_map", "Chain", "find_chains", "match_structure",
           "check_updates", "chain_ancestors", "dying_nodes", "shape_proxy"]

# Ops that only move or repeat elements of their first input; their other inputs are parameters (starts, shape,
# axes, indices) which must be functions of shapes alone. A chain of them maps each output element to one element
# of the input, and that map does not depend on the data.
_MOVEMENT_OPS = frozenset({"Slice", "Expand", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Flatten",
                           "Transpose", "Tile", "Gather"})
_SHAPE_READERS = frozenset({"Shape", "Size"})
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
class Chain:
    """A run of ScatterNDs, each writing into the previous one's result, and what matching found out about it."""

    scatters: list[gs.Node]
    src: gs.Tensor | None = None
    buffer_dtype: np.dtype | None = None
    buffer_shape: tuple[int, ...] | None = None  # only for a constant buffer (shapes folded, e.g. by onnxsim)
    # For a constant buffer: tensors on the first updates' movement path, the source among them once shapes are known.
    src_candidates: list[gs.Tensor] = field(default_factory=list)

    @property
    def output(self) -> gs.Tensor:
        return self.scatters[-1].outputs[0]


def find_chains(graph: gs.Graph) -> list[Chain]:
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
        chains.append(Chain(chain))
    return chains


def shape_proxy(graph: gs.Graph, chains: list[Chain]) -> onnx.ModelProto:
    """The shape model (``ir.shape_model``) of the part of ``graph`` its outputs need once each chain's last
    ScatterND is a Cast of its source to the buffer's dtype. A chain's output has its source's shape (the buffer is
    ``zeros_like(source)``), so shape inference over this model gives every tensor outside the chains the shape and
    type it has in ``graph``, without the index arithmetic feeding the scatters: most of a ShiftViT graph, and most
    of its export and inference time, are never exported."""
    stand_in = {id(c.scatters[-1]): c for c in chains if c.src is not None and c.buffer_dtype is not None}
    live: set[int] = set()
    todo = [n for t in graph.outputs for n in t.inputs]
    while todo:
        node = todo.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        chain = stand_in.get(id(node))
        reads = [chain.src] if chain is not None else [*node.inputs, *outer_reads(node)]
        todo.extend(p for t in reads for p in t.inputs if id(p) not in live)
    model = shape_model(with_nodes(graph, [n for n in graph.nodes if id(n) in live]))
    by_output = {c.output.name: c for c in stand_in.values()}
    for n in model.graph.node:
        c = by_output.get(n.output[0]) if n.op_type == "ScatterND" else None
        if c is not None:
            cast = onnx.helper.make_node("Cast", [c.src.name], [n.output[0]],
                                         to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(c.buffer_dtype)))
            n.CopyFrom(cast)
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


def check_updates(chain: Chain) -> NoMatch | None:
    """Why the updates of ``chain`` are not its source moved by shape-only parameters (None when they are)."""
    for node in chain.scatters:
        reason = _trace_updates(node.inputs[2], chain.src)
        if reason is not None:
            return reason
    return None


def match_structure(chain: Chain) -> NoMatch | None:
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
    return check_updates(chain)


def chain_ancestors(chain: Chain) -> tuple[list[gs.Node], str | None]:
    """Every node the chain output depends on, stopping at the source tensor, each after the nodes it reads (a
    depth-first post-order, so the list is a valid node order for a model of its own); and the name of any other
    non-constant leaf (a second input the chain would read)."""
    order: list[gs.Node] = []
    entered: set[int] = set()
    other = None
    stack: list[tuple[gs.Node, bool]] = [(producer(chain.output), False)]
    while stack:
        node, inputs_placed = stack.pop()
        if inputs_placed:
            order.append(node)
            continue
        if id(node) in entered:  # placed already, or a cycle (an invalid graph, which onnxruntime then refuses)
            continue
        entered.add(id(node))
        stack.append((node, True))
        for t in reversed(node.inputs):
            if not t.name or t is chain.src or isinstance(t, gs.Constant):
                continue
            p = producer(t)
            if p is None:
                other = other or t.name
            elif id(p) not in entered:
                stack.append((p, False))
    return order, other


def dying_nodes(graph: gs.Graph, chain: Chain, ancestors: list[gs.Node]) -> set[int] | None:
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
