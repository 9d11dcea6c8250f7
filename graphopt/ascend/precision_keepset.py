"""The keep-set search of ``graphopt.ascend.fp16_sensitivity.analyse``: the cheapest set of units to keep in fp32
so that the rest in fp16 meets the target.

Decisions are screened on a few calibration items and confirmed on all of them (a trial's cost grows with its
items; on EfficientNet-Lite2 one run over 20 items costs as much as five over 4):

1. **Types, greedy** (screened): op types are added to the keep-set in order of how much keeping each alone helps
   (``force_fp16`` error minus "everything but it" error) per unit of cost (Conv/MatMul/Gemm FLOPs plus output
   elements: keeping a cube op in fp32 is what costs speed) until the screen meets the target; then each kept type
   is dropped again if the screen still meets it without it (costliest first).
2. **Narrowing** (screened): a kept Conv/MatMul/Gemm type is cut to the units keeping which pays most when a prefix
   of them suffices (binary search over the ranking). The ranking is "only this unit in fp16" error per unit of
   cost, measured on the one item ``force_fp16`` hurts most (a unit's trial there costs a 25th of one on 25 items).
   Other types stay op-type entries, the robust choice when ATC fuses and renames nodes; fused patterns have no
   node names that survive at all.
3. **Confirmation** on all items, of the configs written for the keep-set as ATC applies them (with
   ``allow_mix_precision``, gray ops after a kept one stay fp32 too). The target's cosine is the worst item's, so
   the screen holds the items ``force_fp16`` hurts most (``fp16_sensitivity``); when the configs still miss on all
   items, each narrowed type keeps a quarter as many again of its ranked units (the whole type at most), then the
   types not kept yet come in, in greedy order, each step checked on all items: a step costs one run on all items,
   where searching again on a wider screen would cost several. A check on all items runs in stages, worst items
   first, and stops at a conclusive failure (``PrecisionSearch.stage``), so a missed check mostly costs a few items.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..core.tolerance import Tolerance
from ..core.verify import compare_outputs
from .calibration import feed_items
from .fp16_emulation import Fp16Emulator
from .fp16_units import Unit

__all__ = ["Trials", "PrecisionSearch", "unit_cost", "search_keep_set", "rank_units", "KEEP_OUTPUT_BYTES"]

KEEP_OUTPUT_BYTES = 16 << 20  # a stage's outputs per trial kept for joining at most (larger ones are run again)




def _noop(msg: str) -> None:
    pass



class Trials(Protocol):
    """``fp16_sensitivity.PrecisionSearch``: measured, cached fp16 assignments on one set of items."""

    def trial(self, fp16: Any, gelu_high_performance: bool = False) -> dict[str, Any]: ...

    def keeping(self, keep: set[int]) -> Any: ...

    def only(self, units: set[int]) -> Any: ...


class PrecisionSearch:
    """Trials of fp16 assignments on one emulator and one calibration set, each measured once and cached."""

    def __init__(self, emulator: Fp16Emulator, batches: Sequence[Any], target: Any,
                 labels: Sequence[int] | None = None, progress: Callable[[str], None] = _noop,
                 outputs: Sequence[Any] = (), ref: Any = None, item_index: Sequence[int] | None = None):
        """``ref``: the fp32 outputs of ``batches`` when known already (sliced from a run over more items), else
        they are run here; ``item_index``: the items of a larger search these are (``stages``)."""
        self.emu = emulator
        self.batches = list(batches)
        self.target = target
        self.tolerance = target.tolerance(outputs)
        self.labels = None if labels is None else np.asarray(labels)
        self.progress = progress
        self.cache: dict[tuple[bytes, bool], dict[str, Any]] = {}
        self.ref_runs = int(ref is None)
        self.ref = emulator.run(self.batches) if ref is None else ref
        self.class_output = next((k for k, v in self.ref.items() if v.ndim == 2 and v.shape[1] > 1
                                  and v.dtype.kind == "f" and self.tolerance.for_output(k)[1] is not False), None)
        if self.labels is not None and (self.class_output is None
                                        or len(self.labels) != len(self.ref[self.class_output])):
            self.labels = None
        self.n = len(emulator.units)
        self.items = sum(feed_items(b) for b in self.batches)
        self.per_item: dict[tuple[bytes, bool], np.ndarray] = {}  # trial key -> ``item_errors``
        self.runs = 0  # trials run here (a staged trial runs in its stages)
        self.item_index = None if item_index is None else list(item_index)
        self.outputs: dict[tuple[bytes, bool], Any] = {}  # a stage's outputs per trial, for its search to join
        self.conclusive: dict[tuple[bytes, bool], bool] = {}  # a stage's failure fails every superset of its items
        self.stages: list[PrecisionSearch] = []
        self.keep = False  # a stage: keep each trial's outputs (up to KEEP_OUTPUT_BYTES) for its search to join

    def per_item_outputs(self) -> bool:
        """Every output has one row per item, feed by feed: trials can be run on parts of the items and joined."""
        return all(v.ndim >= 1 and len(v) == self.items
                   and [len(x) for x in self.ref.per_feed.get(k, [v])] == [feed_items(b) for b in self.batches]
                   for k, v in self.ref.items()) if hasattr(self.ref, "per_feed") else False

    def separable(self, item: int, feed: Any) -> bool:
        """Whether the model computes item ``item`` on its own, as slicing the reference assumes: run alone
        (``feed``: its feed), its outputs are its rows of the reference run. Not so when an input's first axis is
        something else than the items (a weight fed with a symbolic first dim) or the model mixes items (a
        statistic over the batch)."""
        got = self.emu.run([feed])
        self.ref_runs += 1  # an fp32 run
        for name, want in self.ref_of([item]).items():
            have, want = np.asarray(got[name]), np.asarray(want)
            if have.shape != want.shape:
                return False
            if want.dtype.kind == "f":
                scale = float(np.nanmax(np.abs(want))) if want.size and not np.all(np.isnan(want)) else 0.0
                if not np.allclose(have, want, rtol=1e-4, atol=1e-5 * scale, equal_nan=True):
                    return False
            elif not np.array_equal(have, want):
                return False
        return True

    def ref_of(self, items: Sequence[int]) -> Any:
        """The fp32 outputs of ``items`` (indices, in this order), as one feed."""
        from ..core.runner import Outputs

        return Outputs.of_feeds({k: [np.asarray(v)[list(items)]] for k, v in self.ref.items()})

    def stage(self, stages: Sequence["PrecisionSearch"]) -> None:
        """Run every later trial in ``stages`` (searches on disjoint parts of the items, those ``force_fp16`` hurts
        most first), stopping at the first whose failure is conclusive for all items (the worst item's cosine, or a
        top-1 disagreement at a top-1 target of 1); a trial passing them all is measured on all items joined."""
        covered = sorted(i for st in stages for i in st.item_index or [])
        if covered != list(range(self.items)):
            raise ValueError("stages must cover every item once")
        self.stages = list(stages)
        for st in self.stages:
            st.keep = True

    def outputs_of(self, key: tuple[bytes, bool], fp16: np.ndarray, hp: bool) -> Any:
        """The outputs of a trial run already: kept, or (too large to keep) run again."""
        if key not in self.outputs:
            self.runs += 1
            return self.emu.run(self.batches, fp16, hp)
        return self.outputs[key]

    def accuracy(self, outputs: Mapping[str, np.ndarray]) -> float | None:
        if self.labels is None or self.class_output is None:
            return None
        return float((outputs[self.class_output].argmax(1) == self.labels).mean())

    def trial(self, fp16: np.ndarray, gelu_high_performance: bool = False) -> dict[str, Any]:
        fp16 = np.asarray(fp16, bool)
        key = (np.packbits(fp16).tobytes(), bool(gelu_high_performance))
        if key in self.cache:
            return self.cache[key]
        if self.stages:
            return self._staged(key, fp16, gelu_high_performance)
        got = self.emu.run(self.batches, fp16, gelu_high_performance)
        self.runs += 1
        return self._measure(key, fp16, got)

    def _measure(self, key: tuple[bytes, bool], fp16: np.ndarray, got: Any) -> dict[str, Any]:
        self.per_item[key] = _item_errors(self.ref, got, self.items)
        cmp = compare_outputs(self.ref, got, self.tolerance)
        self.conclusive[key] = not cmp.passed and _conclusive(cmp, self.ref, self.tolerance)
        if self.keep and sum(np.asarray(v).nbytes for v in got.values()) <= KEEP_OUTPUT_BYTES:
            self.outputs[key] = got
        s = cmp.summary()
        top1 = s["top1_agreement"]
        cosine = s["cosine"] if math.isfinite(s["cosine"]) else 0.0
        self.cache[key] = {
            "cosine": cosine, "top1_agreement": top1, "max_abs": s["max_abs"], "passed": cmp.passed,
            "error": (1.0 - cosine) + (0.0 if top1 is None else 1.0 - top1),
            "accuracy": self.accuracy(got), "fp16_units": int(fp16.sum()),
            "fp16_flop_share": self.emu.fp16_flop_share(fp16), "items": self.items}
        return self.cache[key]

    def _staged(self, key: tuple[bytes, bool], fp16: np.ndarray, hp: bool) -> dict[str, Any]:
        from ..core.runner import Outputs

        done = 0
        for st in self.stages:
            m = st.trial(fp16, hp)
            done += st.items
            if not m["passed"] and st.conclusive[key]:
                # Measured on the items run so far (the failing stage's metrics): the rest cannot make it pass.
                self.cache[key] = {**m, "items": st.items, "stopped_after_items": done}
                return self.cache[key]
        index = np.concatenate([np.asarray(st.item_index, int) for st in self.stages])
        outs = [st.outputs_of(key, fp16, hp) for st in self.stages]
        joined: dict[str, list[np.ndarray]] = {}
        for name, r in self.ref.items():
            part = np.concatenate([np.asarray(outs[k][name]) for k in range(len(self.stages))])
            whole = np.empty_like(part)
            whole[index] = part
            sizes = [len(x) for x in self.ref.per_feed.get(name, [r])]
            joined[name] = np.split(whole, np.cumsum(sizes)[:-1])
        return self._measure(key, fp16, Outputs.of_feeds(joined))

    def item_errors(self, fp16: np.ndarray, gelu_high_performance: bool = False) -> np.ndarray:
        """Per item, 1 - cosine with fp32 summed over the outputs that have one row per item, of a trial run
        already (``trial``)."""
        return self.per_item[(np.packbits(np.asarray(fp16, bool)).tobytes(), bool(gelu_high_performance))]

    def keeping(self, keep: set[int]) -> np.ndarray:
        """Everything in fp16 but the units ``keep``."""
        fp16 = np.ones(self.n, bool)
        fp16[list(keep)] = False
        return fp16

    def only(self, units: set[int]) -> np.ndarray:
        fp16 = np.zeros(self.n, bool)
        fp16[list(units)] = True
        return fp16


def _conclusive(cmp: Any, ref: Mapping[str, np.ndarray], tolerance: Tolerance) -> bool:
    """Whether a failure on some items fails every set of items holding them: an output compared exactly, or whose
    cosine (the worst item's, for outputs of one row per item) misses, or whose top-1 agreement misses a target of 1;
    a missed top-1 agreement below 1 could still be made up by the other items."""
    for o in cmp.outputs:
        if o.passed:
            continue
        failed = set(o.failed_on)
        if "top1_agreement" in failed and (tolerance.for_output(o.name)[0].top1_agreement or 0.0) >= 1.0:
            failed.discard("top1_agreement")
        if "cosine" in failed and np.ndim(ref.get(o.name)) >= 2:
            failed.discard("cosine")
        if not failed - {"exact", "shape", "dtype", "missing"}:
            return True
    return False


def _item_errors(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], items: int) -> np.ndarray:
    out = np.zeros(items)
    for name, r in ref.items():
        if r.dtype.kind != "f" or r.ndim == 0 or len(r) != items:
            continue
        a = r.reshape(items, -1).astype(np.float64)
        b = np.asarray(got[name]).reshape(items, -1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out += np.where(np.isfinite(cos), 1.0 - cos, 1.0)
    return out


def unit_cost(u: Unit) -> int:
    """What keeping ``u`` in fp32 costs: a Conv/MatMul costs far more than a vector op of the same output size."""
    return u.cube_flops + u.elements


def rank_units(ranker: Trials, units: Sequence[Unit], per_unit: dict[int, dict]) -> list[int]:
    """``units`` (their indices) in the order keeping them in fp32 pays most: their "only this unit in fp16" error
    on ``ranker`` (``per_unit`` caches it) per unit of cost, so that a cheap depthwise Conv goes before a costly one
    that helps as much."""
    for u in units:
        if u.index not in per_unit:
            per_unit[u.index] = ranker.trial(ranker.only({u.index}))
    return [u.index for u in sorted(units, key=lambda u: -per_unit[u.index]["error"] / max(unit_cost(u), 1))]


def search_keep_set(full: Trials, screen: Trials, ranker: Trials, by_type: dict[str, list[Unit]],
                    types: list[dict], per_unit: dict[int, dict],
                    deployed: Callable[[list[str], list[str]], Any]) -> dict[str, Any]:
    """The keep-set (module docstring), searched on ``screen`` (units ranked on ``ranker``) and grown until it holds
    on all items as ATC applies it (``deployed(keep_types, keep_nodes)``: the assignment of the configs written for
    it). Returns ``keep_types`` (op-type entries), ``keep_nodes`` (node names of narrowed types),
    ``keep_units``, the ``history`` of checks, and the ``result``: the configs' metrics on all items."""
    history: list[dict] = []

    def check(ps: Trials, keep: set[int], what: str) -> bool:
        m = ps.trial(ps.keeping(keep))
        history.append({"step": what, "kept_units": len(keep), "items": m["items"], "cosine": m["cosine"],
                        "top1_agreement": m["top1_agreement"], "passed": m["passed"]})
        return m["passed"]

    units_of = {name: {u.index for u in us} for name, us in by_type.items()}
    unit_at = {u.index: u for us in by_type.values() for u in us}
    cost = {t["type"]: t["cost"] for t in types}
    order = [t["type"] for t in sorted(types, key=lambda t: (-max(t["benefit"], 0.0) / max(t["cost"], 1),
                                                            -t["only_fp16"]["error"]))]
    kept: list[str] = []
    for name in order:  # greedy: the type whose fp32 keep helps most per cost first
        kept.append(name)
        if check(screen, _units(kept, units_of), f"keep {name}"):
            break
    for name in sorted(kept, key=lambda n: -cost[n]):  # prune: costliest first
        if len(kept) > 1 and check(screen, _units([n for n in kept if n != name], units_of), f"drop {name}"):
            kept.remove(name)
    rankings: dict[str, list[int]] = {}
    narrowed: dict[str, int] = {}  # type -> how many of its ranked units are kept
    for name in sorted(kept, key=lambda n: -cost[n]):
        us = by_type[name]
        if us[0].fused or len(us) < 2 or not any(u.cube_flops for u in us):
            continue
        ranked = rankings[name] = rank_units(ranker, us, per_unit)
        rest = _units([n for n in kept if n != name and n not in narrowed], units_of)
        rest |= _kept_units(rankings, narrowed)
        lo, hi = 1, len(ranked)  # smallest k with the top-k kept meeting the target; k = len passes already
        while lo < hi:
            mid = (lo + hi) // 2
            if check(screen, rest | set(ranked[:mid]), f"keep {mid} of {len(ranked)} {name}"):
                hi = mid
            else:
                lo = mid + 1
        if lo < len(ranked):
            narrowed[name] = lo
    later = [n for n in order if n not in kept]
    while True:
        keep = _units([n for n in kept if n not in narrowed], units_of) | _kept_units(rankings, narrowed)
        keep_types = [n for n in kept if n not in narrowed]
        keep_nodes = [unit_at[i].nodes[0] for n, k in narrowed.items() for i in rankings[n][:k]]
        result = full.trial(deployed(keep_types, keep_nodes))
        history.append({"step": "confirm the configs on all items", "kept_units": len(keep),
                        "items": result["items"], "cosine": result["cosine"],
                        "top1_agreement": result["top1_agreement"], "passed": result["passed"]})
        if result["passed"]:
            break
        if narrowed:  # a quarter as many again of each narrowed type's ranked units, the whole type at most
            narrowed = {n: k + max(1, k // 4) for n, k in narrowed.items()}
            narrowed = {n: k for n, k in narrowed.items() if k < len(rankings[n])}
        elif later:
            kept.append(later.pop(0))
        else:  # every unit kept: the fp32 model, as ATC may not quite apply it
            break
    return {"keep_types": keep_types, "keep_nodes": keep_nodes, "keep_units": sorted(keep), "history": history,
            "result": result, "force_fp16_meets_target": False}


def _units(names: Sequence[str], units_of: dict[str, set[int]]) -> set[int]:
    return set().union(*(units_of[n] for n in names)) if names else set()


def _kept_units(rankings: dict[str, list[int]], narrowed: dict[str, int]) -> set[int]:
    return {i for n, k in narrowed.items() for i in rankings[n][:k]}
