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
   where searching again on a wider screen would cost several.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from .fp16_units import Unit

__all__ = ["Trials", "unit_cost", "search_keep_set", "rank_units"]


class Trials(Protocol):
    """``fp16_sensitivity.PrecisionSearch``: measured, cached fp16 assignments on one set of items."""

    def trial(self, fp16: Any, gelu_high_performance: bool = False) -> dict[str, Any]: ...

    def keeping(self, keep: set[int]) -> Any: ...

    def only(self, units: set[int]) -> Any: ...


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
