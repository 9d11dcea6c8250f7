"""The fp16 precision search behind ``graphopt precision`` and the mixlist pass's measured mode: which ops lose
accuracy in fp16, the smallest set to keep in fp32, and ATC's configs.

On the fp16 emulation of ``graphopt.ascend.fp16_emulation`` (one onnxruntime session; a trial is one run with another
switch vector), against the fp32 outputs of the same calibration inputs:

1. **Baselines**: fp32, ``force_fp16``, ``allow_fp32_to_fp16`` and ``allow_mix_precision`` (no mixlist).
2. **Sensitivity per op type** (Ascend names; a decomposed LayerNorm is one ``LayerNorm``, a GELU one ``Gelu``):
   the outputs when *only* that type runs in fp16, and when *everything but* it does.
3. **Worst nodes**: "only this unit in fp16" for up to ``node_trials`` units, taken in turn from each type (most
   sensitive type first), then "everything but this unit" for the ``worst_nodes`` worst of them.
4. **Search** for the cheapest fp32 keep-set meeting the target (top-1 agreement with fp32 and cosine, as
   ``graphopt.core.verify`` measures them): op types are added greedily in order of how much keeping each alone helps
   (``force_fp16`` error minus "everything but it" error) per unit of cost (its Conv/MatMul/Gemm FLOPs plus its
   output elements: keeping a cube op in fp32 is what costs speed), then each kept type is dropped again if the
   target holds without it (costliest first), and a kept Conv/MatMul/Gemm type is narrowed to its most sensitive
   nodes when a prefix of them suffices (binary search; other types stay op-type entries, the robust choice
   when ATC fuses and renames nodes). Every trial is cached, so no assignment is ever run twice; unit-by-unit
   trials (steps 3 and the ranking in 4) run on the first ``screen_items`` calibration items only.
5. **GELU**: with the keep-set, ``Gelu=high_performance`` (tanh approximation) is tried; it is chosen when the
   target still holds, else ``high_precision``.
6. **Configs** (``PassResult.configs`` shape): black-listed Ascend op types (``ops_info.json``, with
   ``allow_mix_precision``), ``op_precision`` for Gelu, node-level keeps for ``keep_dtype.cfg`` (names checked
   against the graph). Fused patterns (LayerNorm, Gelu) are only ever kept by op type: ATC renames their nodes.
   The configs are then emulated as ATC would apply them (``allow_mix_precision``: white = cube ops, gray ops
   follow their inputs) and that is the *predicted* accuracy reported, with the share of Conv/MatMul/Gemm FLOPs
   left in fp16.

Calibration data (``feeds_calibration``): feeds of every input of the model, as ``graphopt.core.inputs`` makes them

Calibration data: ``graphopt.ascend.calibration``. Outputs are compared by ``graphopt.core.verify.compare_outputs``,
feed by feed: integer and bool outputs exactly, top-1 agreement for class-score outputs only.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core.errors import UserError
from ..core.tolerance import OutputTolerance, Tolerance, tolerance_problem
from ..core.verify import compare_outputs
from .calibration import feed_items, screen_batches
from .calibration import RANDOM_INPUTS_WARNING, batch_layout  # re-export for the import sweep
from .calibration import feeds_calibration, fit_feeds  # re-export for the import sweep
from .fp16_emulation import Fp16Emulator
from .fp16_units import Unit

__all__ = ["Target", "PrecisionSearch", "analyse", "generated_configs"]
__all__ += ["RANDOM_INPUTS_WARNING", "batch_layout", "feeds_calibration", "fit_feeds"]  # re-export for the import sweep


def _noop(msg: str) -> None:
    pass


@dataclass(frozen=True)
class Target:
    """The accuracy a precision assignment must keep against fp32, on the calibration data."""

    top1: float | None = 1.0
    cosine: float | None = 0.999

    def __post_init__(self) -> None:
        if self.top1 is None and self.cosine is None:
            raise UserError("precision target: set top1 agreement, cosine, or both")
        for name, criterion in (("top1", "top1_agreement"), ("cosine", "cosine")):
            problem = tolerance_problem(criterion, getattr(self, name))  # the ranges verification thresholds have
            if problem:
                raise UserError(f"precision target {name}: {problem}")

    def tolerance(self, outputs: Sequence[Any] = ()) -> Tolerance:
        """The thresholds as ``graphopt.core.verify`` applies them; ``outputs``: a recipe's per-output tolerances, of
        which only the ``top1`` declarations (class scores or not) are kept."""
        declared = tuple(OutputTolerance(o.name, (), o.top1) for o in outputs if o.top1 is not None)
        return Tolerance(max_abs=None, max_rel=None, cosine=self.cosine, top1_agreement=self.top1, outputs=declared)



class PrecisionSearch:
    """Trials of fp16 assignments on one emulator and one calibration set, each measured once and cached."""

    def __init__(self, emulator: Fp16Emulator, batches: Sequence[Any], target: Target,
                 labels: Sequence[int] | None = None, progress: Callable[[str], None] = _noop,
                 outputs: Sequence[Any] = ()):
        self.emu = emulator
        self.batches = list(batches)
        self.target = target
        self.tolerance = target.tolerance(outputs)
        self.labels = None if labels is None else np.asarray(labels)
        self.progress = progress
        self.cache: dict[tuple[bytes, bool], dict[str, Any]] = {}
        self.ref = emulator.run(self.batches)
        self.class_output = next((k for k, v in self.ref.items() if v.ndim == 2 and v.shape[1] > 1
                                  and v.dtype.kind == "f" and self.tolerance.for_output(k)[1] is not False), None)
        if self.labels is not None and (self.class_output is None
                                        or len(self.labels) != len(self.ref[self.class_output])):
            self.labels = None
        self.n = len(emulator.units)

    def accuracy(self, outputs: Mapping[str, np.ndarray]) -> float | None:
        if self.labels is None or self.class_output is None:
            return None
        return float((outputs[self.class_output].argmax(1) == self.labels).mean())

    def trial(self, fp16: np.ndarray, gelu_high_performance: bool = False) -> dict[str, Any]:
        fp16 = np.asarray(fp16, bool)
        key = (np.packbits(fp16).tobytes(), bool(gelu_high_performance))
        if key not in self.cache:
            got = self.emu.run(self.batches, fp16, gelu_high_performance)
            cmp = compare_outputs(self.ref, got, self.tolerance)
            s = cmp.summary()
            top1 = s["top1_agreement"]
            cosine = s["cosine"] if math.isfinite(s["cosine"]) else 0.0
            self.cache[key] = {
                "cosine": cosine, "top1_agreement": top1, "max_abs": s["max_abs"], "passed": cmp.passed,
                "error": (1.0 - cosine) + (0.0 if top1 is None else 1.0 - top1),
                "accuracy": self.accuracy(got), "fp16_units": int(fp16.sum()),
                "fp16_flop_share": self.emu.fp16_flop_share(fp16)}
        return self.cache[key]

    def keeping(self, keep: set[int]) -> np.ndarray:
        """Everything in fp16 but the units ``keep``."""
        fp16 = np.ones(self.n, bool)
        fp16[list(keep)] = False
        return fp16

    def only(self, units: set[int]) -> np.ndarray:
        fp16 = np.zeros(self.n, bool)
        fp16[list(units)] = True
        return fp16


def _unit_cost(u: Unit) -> int:
    # Keeping a Conv/MatMul in fp32 costs far more than a vector op of the same output size.
    return u.cube_flops + u.elements


def _type_label(units: Sequence[Unit]) -> str:
    kinds = sorted({u.kind for u in units})
    ascend = units[0].ascend_type
    return ascend if kinds == [ascend] else f"{ascend} ({', '.join(kinds)})"


def analyse(emulator: Fp16Emulator, batches: Sequence[Any], target: Target, *,
            labels: Sequence[int] | None = None, node_trials: int = 24, worst_nodes: int = 5,
            gelu: bool = True, graph_node_names: set[str] | None = None, screen_items: int = 4,
            fixed_batch: bool = False, progress: Callable[[str], None] = _noop,
            outputs: Sequence[Any] = ()) -> dict[str, Any]:
    """Baselines, sensitivity, keep-set search, GELU mode, configs and their predicted accuracy (module docstring).

    ``graph_node_names``: the node names of the graph the configs are for (default: the emulated model's).
    ``screen_items``: unit-by-unit trials (worst units, ranking the nodes of a kept type) run on the first this
    many calibration items only; every decision on the keep-set is checked on all of them. ``fixed_batch``: the
    model's batch dimension is fixed (``batches`` are all that size), or its feeds cannot be regrouped: the screen
    keeps whole feeds. ``batches``: feeds (every input) or bare arrays of the emulator's input. ``outputs``: a
    recipe's per-output tolerances, for their ``top1`` declarations (class scores or not)."""
    t0 = time.perf_counter()
    s = PrecisionSearch(emulator, batches, target, labels, progress, outputs)
    screen = s
    total = sum(feed_items(b) for b in batches)
    if total > screen_items:
        first = screen_batches(batches, screen_items, fixed_batch)
        if sum(feed_items(b) for b in first) < total:
            screen = PrecisionSearch(emulator, first, target, outputs=outputs)
    units = emulator.units
    out: dict[str, Any] = {"target": asdict(target), "units": len(units), "calibration_items": total}
    if not units:
        out.update(baselines={}, types=[], worst_nodes=[], search={"keep_types": [], "keep_nodes": []},
                   configs={}, predicted=None, trials=0, seconds=round(time.perf_counter() - t0, 2))
        return out
    progress(f"precision: {len(units)} units, {out['calibration_items']} calibration items; baselines ...")
    ref_metrics = {"cosine": 1.0, "top1_agreement": 1.0 if s.class_output else None, "max_abs": 0.0,
                   "passed": True, "error": 0.0, "accuracy": s.accuracy(s.ref), "fp16_units": 0,
                   "fp16_flop_share": emulator.fp16_flop_share(np.zeros(len(units), bool))}
    baselines = {"fp32": ref_metrics}
    for mode in ("force_fp16", "allow_fp32_to_fp16", "allow_mix_precision"):
        baselines[mode] = s.trial(emulator.assignment(mode))
    full = baselines["force_fp16"]
    out["baselines"] = baselines

    # Sensitivity per op type.
    by_type: dict[str, list[Unit]] = {}
    for u in units:
        by_type.setdefault(u.ascend_type, []).append(u)
    types = []
    for k, (name, us) in enumerate(by_type.items()):
        idx = {u.index for u in us}
        progress(f"precision: op type {k + 1}/{len(by_type)} {name} ({len(us)} units)")
        only = s.trial(s.only(idx))
        all_but = s.trial(s.keeping(idx))
        types.append({"type": name, "label": _type_label(us), "units": len(us), "fused": us[0].fused,
                      "cube_flops": sum(u.cube_flops for u in us), "cost": sum(_unit_cost(u) for u in us),
                      "only_fp16": only, "all_but_fp16": all_but,
                      "benefit": full["error"] - all_but["error"]})
    out["types"] = types

    # Worst nodes: "only this unit in fp16" for units of the most sensitive types.
    # Round-robin over the types, most sensitive first, so the budget is not spent on one type's many units.
    per_unit: dict[int, dict] = {}
    queues = [list(by_type[t["type"]]) for t in sorted(types, key=lambda t: -t["only_fp16"]["error"])]
    while len(per_unit) < node_trials and any(queues):
        for q in queues:
            if q and len(per_unit) < node_trials:
                u = q.pop(0)
                per_unit[u.index] = screen.trial(screen.only({u.index}))
    worst = sorted(per_unit, key=lambda i: -per_unit[i]["error"])[:worst_nodes]
    out["worst_nodes"] = [{**units[i].as_dict(), "only_fp16": per_unit[i],
                           "all_but_fp16": screen.trial(screen.keeping({i}))} for i in worst]
    out["screen_items"] = sum(feed_items(b) for b in screen.batches)

    # Search.
    progress("precision: searching the smallest fp32 keep-set ...")
    search = _search(s, screen, by_type, types, full, per_unit)
    keep_units = set(search["keep_units"])
    # GELU mode, with the keep-set.
    gelu_units = [u for u in units if u.kind == "Gelu"]
    gelu_result = None
    gelu_mode = None
    if gelu_units:
        hp = s.trial(s.keeping(keep_units), gelu_high_performance=True) if gelu else None
        gelu_mode = "high_performance" if hp is not None and hp["passed"] else "high_precision"
        gelu_result = {"units": len(gelu_units), "high_performance": hp, "chosen": gelu_mode}
    out["gelu"] = gelu_result

    names = graph_node_names if graph_node_names is not None else emulator.node_names
    configs, notes = generated_configs(emulator, search["keep_types"], search["keep_nodes"], gelu_mode, names)
    out["search"] = {k: v for k, v in search.items() if k != "keep_units"}
    out["search"]["notes"] = notes
    out["configs"] = configs
    mode = configs.get("precision_mode", "force_fp16")
    fp16 = emulator.assignment(mode, mixlist=configs.get("mixlist"), keep_dtype=configs.get("keep_dtype", []))
    predicted = dict(s.trial(fp16, gelu_mode == "high_performance"))
    predicted["precision_mode"] = mode
    if predicted["accuracy"] is not None and ref_metrics["accuracy"] is not None:
        predicted["accuracy_change"] = predicted["accuracy"] - ref_metrics["accuracy"]
    out["predicted"] = predicted
    out["warnings"] = [] if predicted["passed"] else [
        "the generated configs, emulated as ATC applies them, miss the target (the search's keep-set met it): "
        "check the gray ops following the kept ones"]
    out["trials"] = len(s.cache) + (len(screen.cache) if screen is not s else 0)
    out["screen_trials"] = len(screen.cache) if screen is not s else 0
    out["references"] = 1 if screen is s else 2  # the fp32 outputs, of all items and of the screening ones
    out["session_runs"] = emulator.runs
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _search(s: PrecisionSearch, screen: PrecisionSearch, by_type: dict[str, list[Unit]], types: list[dict],
            full: dict, per_unit: dict[int, dict]) -> dict[str, Any]:
    history: list[dict] = []

    def check(keep: set[int], what: str) -> bool:
        m = s.trial(s.keeping(keep))
        history.append({"step": what, "kept_units": len(keep), "cosine": m["cosine"],
                        "top1_agreement": m["top1_agreement"], "passed": m["passed"]})
        return m["passed"]

    units_of = {name: {u.index for u in us} for name, us in by_type.items()}
    if full["passed"]:
        return {"keep_types": [], "keep_nodes": [], "keep_units": [], "history": history,
                "result": s.trial(s.keeping(set())), "force_fp16_meets_target": True}
    # Cheapest help first: the error keeping a type removes, per unit of cost (Conv/MatMul FLOPs dominate it).
    order = sorted(types, key=lambda t: (-max(t["benefit"], 0.0) / max(t["cost"], 1), -t["only_fp16"]["error"]))
    kept: list[str] = []
    keep: set[int] = set()
    for t in order:  # greedy: the type whose fp32 keep helps most first
        kept.append(t["type"])
        keep |= units_of[t["type"]]
        if check(keep, f"keep {t['type']}"):
            break
    cost = {t["type"]: t["cost"] for t in types}
    for name in sorted(kept, key=lambda n: -cost[n]):  # prune: costliest first
        if len(kept) == 1:
            break
        trial = keep - units_of[name]
        if check(trial, f"drop {name}"):
            kept.remove(name)
            keep = trial
    node_level: dict[str, list[int]] = {}
    for name in sorted(kept, key=lambda n: -cost[n]):  # narrow a kept type to its most sensitive nodes
        us = by_type[name]
        # Only where it pays: a kept Conv/MatMul costs speed; op-type entries are the robust choice otherwise
        # (node names go stale when ATC fuses), and fused patterns have no node names that survive at all.
        if us[0].fused or len(us) < 2 or not any(u.cube_flops for u in us):
            continue
        for u in us:
            if u.index not in per_unit:
                per_unit[u.index] = screen.trial(screen.only({u.index}))
        ranked = sorted((u.index for u in us), key=lambda i: -per_unit[i]["error"])
        rest = keep - units_of[name]
        lo, hi = 1, len(ranked)  # smallest k with the top-k kept meeting the target; k = len passes already
        while lo < hi:
            mid = (lo + hi) // 2
            if check(rest | set(ranked[:mid]), f"keep {mid} of {len(ranked)} {name}"):
                hi = mid
            else:
                lo = mid + 1
        if lo < len(ranked) and check(rest | set(ranked[:lo]), f"keep {lo} of {len(ranked)} {name}"):
            node_level[name] = ranked[:lo]
            keep = rest | set(ranked[:lo])
    keep_types = [n for n in kept if n not in node_level]
    keep_nodes = [s.emu.units[i].nodes[0] for name in node_level for i in node_level[name]]
    return {"keep_types": keep_types, "keep_nodes": keep_nodes, "keep_units": sorted(keep), "history": history,
            "result": s.trial(s.keeping(keep)), "force_fp16_meets_target": False}


def generated_configs(emulator: Fp16Emulator, keep_types: Sequence[str], keep_nodes: Sequence[str],
                      gelu_mode: str | None, graph_node_names: set[str]) -> tuple[dict[str, Any], list[str]]:
    """``PassResult.configs`` for a keep-set: black-listed Ascend types, keep_dtype node names, Gelu's mode.
    A node name the graph does not hold (or an unnamed node) is kept by its op type instead, and said so."""
    notes: list[str] = []
    types = list(dict.fromkeys(keep_types))
    nodes: list[str] = []
    by_node = {n: u for u in emulator.units for n in u.nodes}
    for name in keep_nodes:
        if name and name in graph_node_names and name in by_node:
            nodes.append(name)
        else:
            t = by_node[name].ascend_type if name in by_node else None
            notes.append(f"node {name!r} is not a named node of the graph: keeping its op type {t} instead")
            if t and t not in types:
                types.append(t)
    configs: dict[str, Any] = {}
    if types:
        configs["mixlist"] = {"black-list": {"to-add": types}}
        configs["precision_mode"] = "allow_mix_precision"
    if nodes:
        configs["keep_dtype"] = nodes
    if gelu_mode:
        configs["op_precision"] = {"Gelu": gelu_mode}
    return configs, notes
