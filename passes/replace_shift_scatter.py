"""``replace_shift_scatter``: ScatterND chains that write shifted slices of a tensor into a zeros buffer (ShiftViT's
``shift_feat`` as the TorchScript exporter writes it) become one Slice (+ Pad) per channel group and a Concat."""
from __future__ import annotations

from collections import Counter
from dataclasses import field
from typing import Any, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import const_value, ensure_shapes, make_name, set_tensors
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.pattern import NoMatch
from graphopt.core.subgraph_check import Subgraph, check_replacement

from ._scatter_chain import (Chain, ShiftGroup, chain_ancestors, check_updates, decompose_shift_map, dying_nodes,
                             find_chains, match_structure, shape_proxy, simulate_scatter_chain)

__all__ = ["ReplaceShiftScatter"]

# Largest count of consecutive integers each dtype holds exactly: an element's flat position is its probe value.
_EXACT_INTEGERS = {np.dtype(np.float16): 2 ** 11, np.dtype(np.float32): 2 ** 24, np.dtype(np.float64): 2 ** 53,
                   np.dtype(np.int32): 2 ** 31 - 1, np.dtype(np.int64): 2 ** 62}


def _observed(chain: Chain) -> list[gs.Tensor]:
    """The tensors the map is read from: the ScatterNDs' computed indices and updates."""
    wanted: list[gs.Tensor] = []
    for node in chain.scatters:
        for t in node.inputs[1:]:
            if t is not chain.src and not isinstance(t, gs.Constant) and all(t is not w for w in wanted):
                wanted.append(t)
    return wanted


def _const_i64(graph: gs.Graph, base: str, values: Sequence[int]) -> gs.Constant:
    return gs.Constant(make_name(graph, base), np.asarray(list(values), dtype=np.int64))


def _build_rewrite(graph: gs.Graph, chain: Chain, groups: list[ShiftGroup], dims: Sequence[int | str]
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

    Before rewriting, the replacement is run next to the original chain on seeded random inputs at each probe
    batch size and must match exactly (``graphopt.core.subgraph_check``). Chains whose extracted copies are the
    same model up to names (ShiftViT's blocks of one stage: same ops, attributes, constants, wiring and source
    shape) are probed and checked once; the others of the kind take that outcome. Left alone, with the reason in
    ``stats["skipped"]``: a buffer that is not zeros_like, updates read from another tensor or through
    value-changing ops, indices that depend on values or are not a shifted box, overlapping writes, channels never
    written, chain results used elsewhere, non-static non-batch dims.
    """

    probe_batches: list[int] = field(default_factory=lambda: [1, 3], metadata={
        "help": "batch sizes at which a dynamic-batch chain is evaluated and the rewrite checked"})

    def __post_init__(self) -> None:
        if not self.probe_batches or any(not isinstance(b, int) or b < 1 for b in self.probe_batches):
            raise ValueError(f"probe_batches must be a non-empty list of positive integers, got {self.probe_batches}")

    def run(self, graph: gs.Graph) -> PassResult:
        skipped: Counter[str] = Counter()
        candidates = []
        for chain in find_chains(graph):
            reason = match_structure(chain)
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

    def _rewrite(self, graph: gs.Graph, chain: Chain,
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
            reason = check_updates(chain)
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
        ancestors, other = chain_ancestors(chain)
        if other is not None:
            return NoMatch("chain reads a tensor other than its source")
        dying = dying_nodes(graph, chain, ancestors)
        if dying is None:
            return NoMatch("an intermediate chain result is used elsewhere")
        shapes = [{src.name: [b] + [int(d) for d in dims[1:]]} for b in batches]
        probe = Subgraph(graph, ancestors, [src], [chain.output], observed=_observed(chain))
        try:
            key = (probe.structure_key(), tuple(batches))
        except Exception as e:  # noqa: BLE001 - anything that cannot be extracted is a reason to leave the chain alone
            return NoMatch(f"onnxruntime cannot evaluate the chain ({type(e).__name__})")
        known = checked.get(key)
        if known is None:
            outcome = self._derive_and_verify(graph, chain, probe, shapes, dtype)
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

    def _derive_and_verify(self, graph: gs.Graph, chain: Chain, probe: Subgraph, shapes: list[dict[str, list[int]]],
                           dtype: np.dtype) -> tuple[list[ShiftGroup], list[gs.Node], gs.Variable] | NoMatch:
        """The groups read from ``probe`` (the chain, its indices and updates observed) at each of ``shapes``, and
        the rewrite built from them and checked against the chain on seeded inputs (exact equality at each of
        ``shapes``); the rewrite's nodes are not yet in ``graph``."""
        groups = self._derive(probe, chain, shapes, dtype)
        if isinstance(groups, NoMatch):
            return groups
        nodes, out = _build_rewrite(graph, chain, groups, list(chain.src.shape))
        agreement = check_replacement(probe, Subgraph(graph, nodes, [chain.src], [out]), shapes)
        if not agreement:
            _detach(nodes)
            return NoMatch(f"onnxruntime cannot evaluate the rewrite ({agreement.error})" if agreement.error
                           else "rewrite disagrees with the chain on a random probe")
        return groups, nodes, out

    def _derive(self, probe: Subgraph, chain: Chain, shapes: list[dict[str, list[int]]], dtype: np.dtype
                ) -> list[ShiftGroup] | NoMatch:
        """Evaluate the chain's indices and updates with an element-position probe at each of ``shapes``; read the
        map as channel groups."""
        src = chain.src
        result: list[ShiftGroup] | None = None
        item_map = None
        for trial in shapes:
            shape = trial[src.name]
            size = int(np.prod(shape))
            positions = np.arange(size, dtype=np.int64).reshape(shape).astype(dtype)
            try:
                values = probe.run({src.name: positions})
            except Exception as e:  # noqa: BLE001 - anything onnxruntime refuses is a reason to leave the chain alone
                return NoMatch(f"onnxruntime cannot evaluate the chain ({type(e).__name__})")
            values[src.name] = positions

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
            expected = np.where(where_from >= 0, positions.reshape(-1)[np.maximum(where_from, 0)], 0).astype(dtype)
            if not np.array_equal(expected, values[chain.output.name]):
                return NoMatch("simulated chain disagrees with onnxruntime")
            if result is not None and _same_per_item(where_from, item_map):
                continue  # the first batch size's map, item by item: the same groups
            groups = decompose_shift_map(where_from)
            if isinstance(groups, NoMatch):
                return groups
            if result is not None and groups != result:
                return NoMatch("shift map depends on the batch size")
            result, item_map = groups, where_from[:1]
        assert result is not None
        return result


def _same_per_item(where_from: np.ndarray, item_map: np.ndarray) -> bool:
    """Whether every batch item of ``where_from`` reads the elements of its own item that item 0 of ``item_map``
    (a map that ``decompose_shift_map`` read as groups: no element moves between items) reads of item 0; then the
    map reads as the same groups, and decomposing it again (the costliest step at a larger batch) is spared."""
    if where_from.shape[1:] != item_map.shape[1:]:
        return False
    step = np.arange(where_from.shape[0], dtype=np.int64).reshape(-1, *[1] * (where_from.ndim - 1)) * item_map.size
    return bool(np.array_equal(where_from, np.where(item_map >= 0, item_map + step, -1)))
