"""``graphopt precision``: which ops lose accuracy in fp16, the smallest set to keep in fp32, and ATC's configs.

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
(the recipe's ``inputs:`` or the CLI's ``--input`` / ``--range``; integer and bool inputs are fed unchanged, only
float32 tensors are emulated in fp16), from an ``.npz`` (one array per input name) or ``.npy``; for a one-input
model also a folder of images (preprocessed as the recipe's ``preprocess:`` says) or of ``.bin`` files from
``graphopt data`` (with its ``labels.txt``); without data, seeded random feeds, with a warning: random inputs
rarely reach the activation outliers that make real models fp16-sensitive. Items are regrouped into batches when
every input has a symbolic batch (``regroup_feeds``); a model that fixes its batch is measured in whole feeds.
Outputs are compared by ``graphopt.core.verify.compare_outputs``, feed by feed: integer and bool outputs exactly, top-1
agreement for class-score outputs only.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from ..core.errors import UserError
from .fp16_emulation import Fp16Emulator, Unit
from ..core.tolerance import Tolerance, tolerance_problem
from ..core.verify import compare_outputs

__all__ = ["Target", "Calibration", "PrecisionSearch", "analyse", "generated_configs", "load_calibration",
           "rebatch", "RANDOM_INPUTS_WARNING", "report_markdown", "plot_sensitivity", "run_precision", "add_cli"]

RANDOM_INPUTS_WARNING = ("calibration on seeded random inputs: random inputs understate fp16 sensitivity (real "
                         "activations have the outliers that overflow or lose bits); give real data")


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
        from ..core.tolerance import OutputTolerance

        declared = tuple(OutputTolerance(o.name, (), o.top1) for o in outputs if o.top1 is not None)
        return Tolerance(max_abs=None, max_rel=None, cosine=self.cosine, top1_agreement=self.top1, outputs=declared)


@dataclass
class Calibration:
    """Calibration inputs: ``batches`` are feeds (dicts input name -> array, every input of the model) or, from
    ``load_calibration``, bare arrays of the one float input."""

    batches: list[Any]
    labels: list[int] | None
    source: str
    warning: str | None = None

    @property
    def items(self) -> int:
        return sum(feed_items(b) for b in self.batches)


def feed_items(feed: Mapping[str, np.ndarray] | np.ndarray) -> int:
    """The items a feed holds: the first axis of its first input that has one (feeds are ordered with the inputs
    whose batch is symbolic first), 1 for a feed of scalars."""
    if not isinstance(feed, Mapping):
        return len(feed)
    for v in feed.values():
        if np.ndim(v):
            return len(v)
    return 1


def rebatch(batches: Sequence[np.ndarray], batch: int, fixed: bool = False) -> list[np.ndarray]:
    """The same items in batches of ``batch``: the last one shorter, or, when ``fixed`` (the model's batch dimension
    is fixed, and onnxruntime refuses any other size), whole batches only, the remainder dropped. No items, or
    fewer than one fixed batch, is a ``UserError``: there is nothing to measure on."""
    if batch < 1:
        raise UserError(f"calibration: cannot group items into batches of {batch} (a batch holds at least 1)")
    items = np.concatenate(list(batches)) if batches else np.zeros((0,))
    if len(items) == 0:
        raise UserError("calibration: no items to measure on")
    if fixed:
        if len(items) < batch:
            raise UserError(f"calibration: {len(items)} item(s), fewer than one batch of {batch} (the model's fixed "
                            "batch size)")
        items = items[:len(items) - len(items) % batch]
    return [items[i:i + batch] for i in range(0, len(items), batch)]


def _screen_batches(batches: Sequence[Any], items: int, fixed: bool) -> list[Any]:
    """The first ``items`` calibration items for unit-by-unit trials: one batch (every input of a feed cut to its
    first ``items`` items), or, for a model whose batch is fixed (or whose feeds cannot be regrouped), the fewest
    whole feeds holding at least that many (onnxruntime takes no other batch size)."""
    if not fixed:
        if batches and isinstance(batches[0], Mapping):
            return [{k: np.concatenate([b[k] for b in batches])[:items] for k in batches[0]}]
        return [np.concatenate(list(batches))[:items]]
    out: list[Any] = []
    for b in batches:
        if sum(feed_items(x) for x in out) >= items:
            break
        out.append(b)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Feeds: every input of the model


@dataclass(frozen=True)
class BatchLayout:
    """How a model's feeds hold items. ``batched``: inputs whose first dim is symbolic (the batch);
    ``regroupable``: every input is batched, so feeds can be cut and joined along the first axis into batches of
    any size; ``fixed``: the model's own batch size when no input has a symbolic one (the first dim of its first
    input with a dim), else None."""

    batched: tuple[str, ...]
    regroupable: bool
    fixed: int | None
    fixed_input: str | None = None


def batch_layout(model) -> BatchLayout:
    """How ``model`` takes items (``BatchLayout``); a fixed batch of 0, which takes none, is a ``UserError``."""
    from ..core.inputs import model_inputs

    ins = [m for m in model_inputs(model) if m.kind == "tensor"]
    batched = tuple(m.name for m in ins if m.has_batch)
    regroupable = bool(batched) and len(batched) == len(ins)
    fixed = fixed_input = None
    if not batched:
        first = next((m for m in ins if m.dims), None)
        if first is not None:
            fixed, fixed_input = first.dims[0], first.name
    if fixed is not None and fixed < 1:
        raise UserError(f"model input {fixed_input!r} has a fixed batch size of {fixed}: it takes no items, so there "
                        "is nothing to measure fp16 precision on")
    return BatchLayout(batched, regroupable, fixed, fixed_input)


def _ordered(feed: Mapping[str, np.ndarray], batched: Sequence[str]) -> dict[str, np.ndarray]:
    """The feed with its batched inputs first (``feed_items`` counts along the first of them)."""
    return {k: feed[k] for k in sorted(feed, key=lambda k: k not in batched)}


def regroup_feeds(feeds: Sequence[Mapping[str, np.ndarray]], layout: BatchLayout, batch: int,
                  items: int, what: str = "calibration",
                  regroup: bool = True) -> tuple[list[dict[str, np.ndarray]], str]:
    """At most ``items`` items of ``feeds`` as the model takes them, and a note on what was used: joined along the
    first axis and cut into batches of ``batch`` when ``regroup`` and the layout is regroupable (and the feeds agree
    beyond their first axis); else whole feeds, as many as hold at most ``items`` items, at least one (a fixed
    batch larger than ``items`` is measured on one whole batch)."""
    feeds = [_ordered(f, layout.batched) for f in feeds]
    if not feeds:
        raise UserError(f"{what}: no items to measure on")
    names = list(feeds[0])
    if regroup and layout.regroupable and all(list(f) == names for f in feeds) and all(
            len({np.shape(f[k])[1:] for f in feeds}) == 1 for k in names):
        joined = {k: np.concatenate([f[k] for f in feeds])[:items] for k in names}
        total = len(joined[names[0]]) if names else 0
        if total == 0:
            raise UserError(f"{what}: no items to measure on")
        return [{k: v[i:i + batch] for k, v in joined.items()} for i in range(0, total, batch)], ""
    per = feed_items(feeds[0])
    if layout.fixed is not None and sum(feed_items(f) for f in feeds) < layout.fixed:
        raise UserError(f"{what}: {sum(feed_items(f) for f in feeds)} item(s), fewer than one batch of "
                        f"{layout.fixed} (the model's fixed batch size)")
    out: list[dict[str, np.ndarray]] = []
    for f in feeds:
        if out and sum(feed_items(x) for x in out) + feed_items(f) > items:
            break
        out.append(f)
    used = sum(feed_items(f) for f in out)
    note = f", {used} used (whole batches of {per})" if layout.fixed is not None and 0 < items - used < per \
        else f", {used} used (one whole batch: the model fixes it to {per})" if used > items else ""
    return out, note


def fit_feeds(feeds: Sequence[Mapping[str, np.ndarray]], layout: BatchLayout, batch: int, items: int,
              emulator: Fp16Emulator | None = None, what: str = "calibration") -> tuple[list[dict], str, bool]:
    """``regroup_feeds``, checked: when ``emulator`` cannot run the first regrouped batch (an input whose first
    dim is symbolic but no batch, such as a shape or axes vector), whole feeds instead. Returns the batches, the
    note, and whether they were regrouped (else the screen keeps whole feeds)."""
    batches, note = regroup_feeds(feeds, layout, batch, items, what)
    if not layout.regroupable:
        return batches, note, False
    if emulator is not None:
        try:
            emulator.run(batches[:1], count=False)
        except UserError:
            batches, note = regroup_feeds(feeds, layout, batch, items, what, regroup=False)
            return batches, note, False
    return batches, note, True


# ---------------------------------------------------------------------------------------------------------------
# Trials


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
        first = _screen_batches(batches, screen_items, fixed_batch)
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


# ---------------------------------------------------------------------------------------------------------------
# Calibration data


def _image_items(path: Path, shape: Sequence[int], preprocess, pattern: str | None, labels_file: str | None,
                 label_regex: str | None, limit: int) -> tuple[np.ndarray, list[int] | None]:
    from PIL import Image

    from ..commands.data import folder_items, preprocess_image

    items, _ = folder_items(path, pattern, labels_file, label_regex)
    items = items[:limit]
    pre = asdict(preprocess)
    pre = {k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()}
    arrays = []
    for it in items:
        try:
            with Image.open(it.source) as img:
                arrays.append(preprocess_image(img, pre, int(shape[1])))
        except OSError as e:
            raise UserError(f"--data {it.origin}: cannot read the image ({e})") from None
    labels = [it.label for it in items]
    return np.stack(arrays), (labels if all(label is not None for label in labels) else None)


def load_calibration(data: str | Path | None, shape: Sequence[int], *, preprocess=None, samples: int = 64,
                     seed: int = 0, batch: int = 8, dtype: str = "float32", pattern: str | None = None,
                     labels_file: str | None = None, label_regex: str | None = None,
                     fixed_batch: bool = False) -> Calibration:
    """Calibration inputs in batches of ``batch``: images, ``.bin`` files (with ``labels.txt``), a ``.npy``, or
    (no ``data``) ``samples`` seeded standard-normal items with ``RANDOM_INPUTS_WARNING``. ``fixed_batch``: whole
    batches only (``rebatch``), labels trimmed to match."""
    from ..core.verify import load_input_data, make_inputs

    item_shape = [1, *shape[1:]]
    if samples < 1:
        raise UserError(f"--samples {samples}: must be at least 1")
    if data is None:
        items = np.concatenate(make_inputs(item_shape, samples, seed, dtype))
        return _calibration(items, batch, fixed_batch, None, f"seeded normal (seed {seed}, {samples} items)",
                            RANDOM_INPUTS_WARNING)
    path = Path(data)
    if not path.exists():
        raise UserError(f"--data {path}: no such file or folder")
    labels: list[int] | None = None
    if path.is_dir() and any(path.glob("*.bin")):
        files = sorted(str(p) for p in path.glob("*.bin"))  # the order load_input_data reads them in
        items = np.concatenate(load_input_data(path, item_shape, dtype))[:samples]
        if (path / "labels.txt").is_file() and len(files) >= len(items):
            from ..commands.data import read_labels_file

            known = read_labels_file(path / "labels.txt")
            stems = [Path(f).name.split(".")[0] for f in files[:len(items)]]
            if all(st in known for st in stems):
                labels = [known[st] for st in stems]
        source = f"{len(items)} .bin files from {path}"
    elif path.is_dir():
        if preprocess is None:
            raise UserError(f"--data {path}: a folder of images needs a recipe (its preprocess section)")
        items, labels = _image_items(path, shape, preprocess, pattern, labels_file, label_regex, samples)
        source = f"{len(items)} images from {path}"
    else:
        items = np.concatenate(load_input_data(path, item_shape, dtype))[:samples]
        source = f"{len(items)} items from {path}"
    return _calibration(items.astype(np.float32), batch, fixed_batch, labels, source)


def _calibration(items: np.ndarray, batch: int, fixed_batch: bool, labels: list[int] | None, source: str,
                 warning: str | None = None) -> Calibration:
    batches = rebatch([items], batch, fixed_batch)
    used = sum(len(b) for b in batches)
    if used < len(items):  # a fixed batch size: the remainder was dropped
        source += f", {used} used (whole batches of {batch})"
    return Calibration(batches, labels[:used] if labels else labels, source, warning)


def feeds_calibration(model, specs: Sequence[Any] = (), *, where: str = "", paths: Mapping[str, str] | None = None,
                      data: str | Path | None = None, samples: int = 64, seed: int = 0, batch: int = 8,
                      primary: str | None = None, preprocess=None, pattern: str | None = None,
                      labels_file: str | None = None, label_regex: str | None = None,
                      emulator: Fp16Emulator | None = None) -> tuple[Calibration, Any, bool]:
    """Calibration feeds for every input of ``model`` and the ``InputPlan`` they follow (``graphopt.core.inputs``:
    ``specs`` from a recipe's ``inputs:`` or the CLI's ``--input`` / ``--range``; inputs not named take the
    model's shape, symbolic dims their defaults, values by kind: integer and bool inputs are never emulated).

    At most ``samples`` items, in batches of ``batch`` when every input has a symbolic batch (drawn one item per
    feed, so a single float input gets exactly ``load_calibration``'s values, then regrouped); a model with a fixed
    batch is measured in whole batches of its own size. ``data``: an ``.npz`` (one array per input name), a
    ``.npy`` for ``primary`` (default the first input), or, for a model with one input, a folder of images (with
    ``preprocess``) or of ``.bin`` files (``load_calibration``, labels included). Returns the calibration, the
    plan, and whether its batches were regrouped (``fit_feeds``, checked on ``emulator`` when given)."""
    from ..core.inputs import model_inputs, resolve_inputs

    if samples < 1:
        raise UserError(f"--samples {samples}: must be at least 1")
    layout = batch_layout(model)
    ins = {m.name: m for m in model_inputs(model)}
    given = {d for sp in specs if sp.name in ins and (sp.shape is not None or sp.data is not None)
             for d in ins[sp.name].dims or () if isinstance(d, str)}
    batch_symbols = {m.dims[0] for m in ins.values() if m.has_batch and isinstance(m.dims[0], str)} - given
    plan = resolve_inputs(model, specs, where=where, paths=paths,
                          dims={d: 1 if layout.regroupable else batch for d in batch_symbols})
    path = Path(data) if data is not None else None
    if path is not None and path.is_dir():
        first = plan[primary] if primary in plan.names else (plan.inputs[0] if plan.inputs else None)
        if first is None or len(plan.inputs) > 1 or first.dtype != "float32":
            what = f"{len(plan.inputs)} inputs ({', '.join(plan.names)})" if len(plan.inputs) != 1 else \
                f"input {first.name!r} of {first.model.describe()}"
            raise UserError(f"--data {path}: a folder (images or .bin files) feeds one float32 input; the model has "
                            f"{what}: give an .npz with one array per input name")
        fixed = layout.fixed
        cal = load_calibration(path, first.shape, preprocess=preprocess, samples=samples, seed=seed,
                               batch=batch if fixed is None else fixed, pattern=pattern, labels_file=labels_file,
                               label_regex=label_regex, fixed_batch=fixed is not None)
        cal.batches = [{first.name: b} for b in cal.batches]
        return cal, plan, fixed is None
    per = plan[layout.batched[0]].shape[0] if layout.batched else (layout.fixed or 1)
    if layout.fixed is not None:
        count = max(1, samples // per)
    else:
        count = -(-samples // max(per, 1))
    feeds = plan.feeds(count, seed, data=data, primary=primary)
    feeds, note, regrouped = fit_feeds(feeds, layout, batch, samples, emulator)
    items = sum(feed_items(f) for f in feeds)
    if data is None:
        source = f"seeded random (seed {seed}, {items} items{note})"
        return Calibration(feeds, None, source, RANDOM_INPUTS_WARNING), plan, regrouped
    return Calibration(feeds, None, f"{items} items from {data}{note}"), plan, regrouped


# ---------------------------------------------------------------------------------------------------------------
# Report


def _fmt(m: Mapping[str, Any] | None, key: str, spec: str = ".4f") -> str:
    if m is None or m.get(key) is None:
        return "-"
    return format(m[key], spec)


def _one_minus_cos(m: Mapping[str, Any]) -> str:
    return f"{max(1.0 - m['cosine'], 0.0):.2e}"


def report_markdown(result: Mapping[str, Any], title: str = "fp16 precision") -> str:
    lines = [f"# {title}", ""]
    cal = result.get("calibration", {})
    if cal:
        lines.append(f"Calibration: {cal.get('source')}" + (f" (labelled: {cal.get('labelled')})"
                                                            if cal.get("labelled") else ""))
        if cal.get("warning"):
            lines.append(f"**Warning:** {cal['warning']}.")
        lines.append("")
    ins = result.get("model", {}).get("inputs")
    if ins:
        lines.append("Inputs, per batch (only float32 tensors are rounded to fp16; integer and bool inputs pass "
                     "through): " + "; ".join(f"{i['name']} {i['dtype']} {i['shape']} ({i['values']}"
                                              + (f" {i['range']}" if i.get("range") else "") + ")" for i in ins) + ".")
        lines.append("")
    t = result["target"]
    lines += [f"Target against fp32: top-1 agreement >= {t['top1']}, cosine >= {t['cosine']}. "
              f"{result['units']} units, {result['trials']} trials in {result['seconds']} s.", ""]
    lines += ["## Precision modes (emulated)", "",
              "| mode | fp16 units | cube FLOPs in fp16 | cosine | 1 - cosine | top-1 agreement | accuracy | target |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    rows = dict(result.get("baselines", {}))
    if result.get("search", {}).get("result"):
        rows["search keep-set (force_fp16 + keeps)"] = result["search"]["result"]
    if result.get("predicted"):
        rows[f"generated configs ({result['predicted']['precision_mode']})"] = result["predicted"]
    for name, m in rows.items():
        share = "-" if m.get("fp16_flop_share") is None else f"{100 * m['fp16_flop_share']:.1f}%"
        lines.append(f"| {name} | {m['fp16_units']} | {share} | {m['cosine']:.6f} | {_one_minus_cos(m)} | "
                     f"{_fmt(m, 'top1_agreement', '.3f')} | {_fmt(m, 'accuracy', '.3f')} | "
                     f"{'met' if m['passed'] else 'missed'} |")
    lines += ["", "## Sensitivity per op type", "",
              "Only this type in fp16 (the rest fp32), and everything but this type in fp16.", "",
              "| op type | units | cube GFLOPs | only: 1 - cosine | only: top-1 | all but: 1 - cosine | "
              "all but: top-1 | kept fp32 |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    kept = set(result.get("search", {}).get("keep_types", []))
    for t in sorted(result.get("types", []), key=lambda t: -t["only_fp16"]["error"]):
        lines.append(f"| {t['label']} | {t['units']} | {t['cube_flops'] / 1e9:.3f} | "
                     f"{_one_minus_cos(t['only_fp16'])} | "
                     f"{_fmt(t['only_fp16'], 'top1_agreement', '.3f')} | {_one_minus_cos(t['all_but_fp16'])} | "
                     f"{_fmt(t['all_but_fp16'], 'top1_agreement', '.3f')} | {'yes' if t['type'] in kept else ''} |")
    if result.get("worst_nodes"):
        lines += ["", "## Worst units", "", "| unit | op type | only: 1 - cosine | only: top-1 | all but: 1 - cosine |"
                  " all but: top-1 |", "|---|---|---:|---:|---:|---:|"]
        for w in result["worst_nodes"]:
            name = w["nodes"][0] + (f" (+{len(w['nodes']) - 1} nodes)" if len(w["nodes"]) > 1 else "")
            lines.append(f"| {name} | {w['ascend_type']} | {_one_minus_cos(w['only_fp16'])} | "
                         f"{_fmt(w['only_fp16'], 'top1_agreement', '.3f')} | {_one_minus_cos(w['all_but_fp16'])} | "
                         f"{_fmt(w['all_but_fp16'], 'top1_agreement', '.3f')} |")
    search = result.get("search", {})
    lines += ["", "## Keep-set and configs", ""]
    if search.get("force_fp16_meets_target"):
        lines.append("force_fp16 meets the target: nothing needs to stay fp32.")
    else:
        lines.append(f"Kept in fp32 by op type: {', '.join(search.get('keep_types', [])) or 'none'}; "
                     f"by node: {', '.join(search.get('keep_nodes', [])) or 'none'}.")
    for note in search.get("notes", []):
        lines.append(f"- {note}")
    if result.get("gelu"):
        g = result["gelu"]
        hp = g["high_performance"]
        lines.append(f"Gelu ({g['units']} units): high_performance (tanh) gives cosine "
                     f"{_fmt(hp, 'cosine', '.6f')}, top-1 {_fmt(hp, 'top1_agreement', '.3f')}: "
                     f"chosen {g['chosen']}.")
    lines += ["", "```json", json.dumps(result.get("configs", {}), indent=2), "```"]
    p = result.get("predicted")
    if p:
        acc = "" if p.get("accuracy_change") is None else f", accuracy change {100 * p['accuracy_change']:+.1f} points"
        share = "-" if p.get("fp16_flop_share") is None else f"{100 * p['fp16_flop_share']:.1f}%"
        lines += ["", f"Predicted with these configs: cosine {p['cosine']:.6f}, top-1 agreement "
                      f"{_fmt(p, 'top1_agreement', '.3f')}{acc}; Conv/MatMul/Gemm FLOPs in fp16: {share}."]
    for w in result.get("warnings", []):
        lines.append(f"**Warning:** {w}.")
    return "\n".join(lines) + "\n"


def plot_sensitivity(result: Mapping[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = sorted(result.get("types", []), key=lambda t: t["only_fp16"]["error"])
    kept = set(result.get("search", {}).get("keep_types", []))
    floor = 1e-9
    only = [max(t["only_fp16"]["error"], floor) for t in types]
    allbut = [max(t["all_but_fp16"]["error"], floor) for t in types]
    y = np.arange(len(types))
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.35 * max(len(types), 1)))
    ax.barh(y - 0.2, only, 0.4, label="only this type in fp16")
    ax.barh(y + 0.2, allbut, 0.4, label="everything but this type in fp16")
    full = result.get("baselines", {}).get("force_fp16")
    if full:
        ax.axvline(max(full["error"], floor), color="k", ls=":", label="force_fp16")
    target = result["target"].get("cosine")
    if target is not None:
        ax.axvline(max(1 - target, floor), color="r", ls="--", label="target (1 - cosine)")
    ax.set_yticks(y)
    ax.set_yticklabels([t["label"] + (" [fp32]" if t["type"] in kept else "") for t in types])
    ax.set_xscale("log")
    ax.set_xlabel("error vs fp32: (1 - cosine) + (1 - top-1 agreement)")
    ax.set_title("fp16 sensitivity per op type (emulated)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _recipe_model(recipe, progress: Callable[[str], None]) -> onnx.ModelProto:
    """The recipe's model after its graph passes (unverified; a measured mixlist is left out)."""
    from ..commands.apply import source_model_path
    from ..core.ir import load_model
    from ..core.pipeline import run_pipeline

    src, _ = source_model_path(recipe, progress)
    model = load_model(src, "model")
    passes = [(p, spec.where, "stop") for p, spec in zip(recipe.build_passes(), recipe.passes)
              if not (spec.name == "mixlist" and getattr(p, "mode", None) == "measured")]
    if passes:
        model = run_pipeline(model, passes, inputs=None, input_name=recipe.input.name if recipe.input else None,
                             progress=progress).model
    return model


def _already_fp16(model: onnx.ModelProto, emu: Fp16Emulator) -> str | None:
    """Why ``model`` computes in fp16 already (no float32 op to emulate, float16 inputs or weights), else None."""
    if emu.units:
        return None
    from ..core.inputs import model_inputs

    half = [m.name for m in model_inputs(model) if m.dtype in ("float16", "bfloat16")]
    weights = sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT16,
                                                                        onnx.TensorProto.BFLOAT16))
    if not half and not weights:
        return None
    what = f"input(s) {', '.join(repr(n) for n in half)}" if half else f"{weights} weight(s)"
    return (f"the model computes in float16 already ({what} float16, no float32 op): there is no fp32 to measure "
            "fp16 against; run graphopt precision on the fp32 model")


def run_precision(source: str | Path, *, data: str | Path | None = None, target: Target = Target(),
                  outdir: str | Path | None = None, samples: int = 64, seed: int = 0, node_trials: int = 24,
                  worst_nodes: int = 5, reduce_accumulation: str = "fp16", labels_file: str | None = None,
                  label_regex: str | None = None, pattern: str | None = None, batch: int = 8,
                  progress: Callable[[str], None] = _stderr, force: bool = False, specs: Sequence[Any] | None = None,
                  paths: Mapping[str, str] | None = None, primary: str | None = None) -> dict[str, Any]:
    """``graphopt precision``: analyse a recipe's model (after its passes) or an ONNX file; write the report. An
    existing ``outdir`` that is not an earlier precision folder is refused before any work, unless ``force``
    (``graphopt.core.outputs``). The inputs: every input of the model (``feeds_calibration``), as the recipe's
    ``inputs:`` says, or ``specs`` (``--input`` / ``--range``: ``cli.input_specs``, over the recipe's)."""
    from ..commands.apply import recipe_inputs, write_run_dir
    from .atc import config_files
    from ..core.inputs import merge_specs, model_inputs
    from ..core.ir import load_model
    from ..core.outputs import check_output_dir
    from ..commands.recipe import PreprocessSpec, load_recipe

    source = Path(source)
    recipe = load_recipe(source) if source.suffix in (".yaml", ".yml") else None
    out = Path(outdir) if outdir else Path("runs") / f"{recipe.name if recipe else source.stem}-precision"
    inputs_read = [*(recipe_inputs(recipe) if recipe else [source]), data, labels_file]
    check_output_dir(out, "precision", force=force, inputs=inputs_read)
    given = list(specs or [])
    where = ""
    declared: Sequence[Any] = ()
    if recipe is not None:
        name, preprocess = recipe.name, recipe.preprocess
        model = _recipe_model(recipe, progress)
        given = merge_specs(recipe.inputs, given)
        paths = {**recipe.input_paths(), **(paths or {})}
        where = str(recipe.path or "recipe")
        primary = primary or (recipe.input.name if recipe.input else None)
        declared = recipe.verify.tolerance.outputs
    else:
        model = load_model(source, "model")
        name = source.stem
        preprocess = None
        ins = model_inputs(model)
        m = next((i for i in ins if i.name == primary), ins[0] if ins else None)
        if m is not None and m.dims is not None and len(m.dims) == 4 and \
                all(isinstance(d, int) and d > 0 for d in m.dims[-2:]):  # an image model: for a folder of images
            hw = tuple(m.dims[-2:])
            preprocess = PreprocessSpec(resize=(int(min(hw) / 0.875),), crop=hw)
    progress(f"precision: building the fp16 emulation of {name} ...")
    t0 = time.perf_counter()
    names = [m.name for m in model_inputs(model)]
    emu = Fp16Emulator(model, primary if primary in names else None, reduce_accumulation=reduce_accumulation)
    problem = _already_fp16(model, emu)
    if problem:
        raise UserError(problem)
    build_seconds = time.perf_counter() - t0
    cal, plan, regrouped = feeds_calibration(
        model, given, where=where, paths=paths, data=data, samples=samples, seed=seed, batch=batch,
        primary=primary, preprocess=preprocess, pattern=pattern, labels_file=labels_file, label_regex=label_regex,
        emulator=emu)
    if cal.warning:
        progress(f"precision: warning: {cal.warning}")
    result = analyse(emu, cal.batches, target, labels=cal.labels, node_trials=node_trials,
                     worst_nodes=worst_nodes, fixed_batch=not regrouped, progress=progress, outputs=declared)
    first_feed = cal.batches[0] if cal.batches and isinstance(cal.batches[0], Mapping) else {}
    inputs = [{**d, "shape": list(np.shape(first_feed[d["name"]]))} if d["name"] in first_feed else d
              for d in plan.describe()]  # the shape of a calibration batch, as regrouped
    result["model"] = {"name": name, "source": str(source), "input": emu.input_name, "inputs": inputs}
    result["calibration"] = {"source": cal.source, "items": cal.items,
                             "labelled": len(cal.labels) if cal.labels else 0, "warning": cal.warning}
    result["emulation"] = {**emu.stats, "reduce_accumulation": reduce_accumulation,
                           "build_seconds": round(build_seconds, 2)}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "sensitivity.png"
        plot_sensitivity(result, png)
        files: dict[str, bytes | str] = {"precision.json": json.dumps(result, indent=2, default=float) + "\n",
                                         "precision.md": report_markdown(result, f"fp16 precision: {name}"),
                                         "sensitivity.png": png.read_bytes()}
    files.update(config_files(result["configs"]))
    write_run_dir(out, files, kind="precision", force=force, inputs=inputs_read)
    result["outdir"] = str(out)
    result["files"] = sorted(files)
    return result


def _cmd_precision(args: Any) -> int:
    from ..commands.cli import input_specs

    target = Target(top1=args.target_top1, cosine=args.target_cosine)
    import argparse

    flags = argparse.Namespace(input=args.input, range=args.range, shape=None)
    specs, paths, primary = input_specs(flags, None)
    result = run_precision(args.model, data=args.data, target=target, outdir=args.output, samples=args.samples,
                           seed=args.seed, node_trials=args.node_trials, worst_nodes=args.worst_nodes,
                           reduce_accumulation=args.reduce_accumulation, labels_file=args.labels,
                           label_regex=args.label_from_name, pattern=args.glob, force=args.force, specs=specs,
                           paths=paths, primary=primary)
    b = result["baselines"]
    for mode in ("fp32", "force_fp16"):
        m = b[mode]
        acc = "" if m.get("accuracy") is None else f", accuracy {m['accuracy']:.3f}"
        print(f"{mode}: cosine {m['cosine']:.6f}, top-1 agreement {_fmt(m, 'top1_agreement', '.3f')}{acc}")
    p = result["predicted"]
    if p:
        acc = "" if p.get("accuracy") is None else f", accuracy {p['accuracy']:.3f}"
        share = "-" if p.get("fp16_flop_share") is None else f"{100 * p['fp16_flop_share']:.1f}%"
        print(f"generated configs ({p['precision_mode']}): cosine {p['cosine']:.6f}, top-1 agreement "
              f"{_fmt(p, 'top1_agreement', '.3f')}{acc}; cube FLOPs in fp16 {share}")
    print(f"configs: {json.dumps(result['configs'])}")
    print(f"wrote {result['outdir']}/: {', '.join(result['files'])}")
    return 0 if not p or p["passed"] else 1


def add_cli(subparsers: Any) -> None:
    from ..commands.cli import add_force_argument

    p = subparsers.add_parser("precision", help="measure fp16 sensitivity per op type (ATC's precision modes "
                                                "emulated in onnxruntime), find the smallest fp32 keep-set "
                                                "meeting a target, write ATC's precision configs")
    p.add_argument("model", metavar="RECIPE_OR_MODEL", help="a recipe (its model after its passes) or an .onnx")
    p.add_argument("--data", help="calibration data: an .npz with one array per input name (first axis the items), "
                                  "a .npy for the first input, or for a one-input model a folder of images "
                                  "(preprocessed per the recipe) or of .bin files (graphopt data); default seeded "
                                  "random inputs")
    p.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE[:DTYPE]",
                   help="an input's shape (batch first) and dtype, as graphopt verify takes it, e.g. "
                        "input_ids:1,32:int64 (repeatable); inputs not given take the model's shape and graphopt's "
                        "defaults (graphopt.core.inputs); the batch is regrouped into batches of 8 unless the model fixes "
                        "it")
    p.add_argument("--range", action="append", default=[], metavar="NAME:LO,HI",
                   help="values of an input drawn from [LO, HI), e.g. input_ids:0,30522 (repeatable)")
    p.add_argument("--target-top1", type=float, default=1.0, help="top-1 agreement with fp32 to keep (default 1.0)")
    p.add_argument("--target-cosine", type=float, default=0.999, help="cosine with fp32 to keep (default 0.999)")
    p.add_argument("-o", "--output", help="output folder (default runs/<name>-precision)")
    add_force_argument(p, "DIR")
    p.add_argument("--samples", type=int, default=64, help="calibration items used at most (default 64)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help="`<file> <class>` lines for an image folder (accuracy is then reported)")
    g.add_argument("--label-from-name", metavar="REGEX", help=r"class from the image name, e.g. '_(\d+)\.'")
    p.add_argument("--glob", help="which images of the --data folder, e.g. 'imagenet_*'")
    p.add_argument("--node-trials", type=int, default=24, help="units measured one by one (default 24)")
    p.add_argument("--worst-nodes", type=int, default=5, help="worst units reported (default 5)")
    p.add_argument("--reduce-accumulation", choices=["fp16", "fp32"], default="fp16",
                   help="how fp16 ReduceMean/ReduceSum accumulate (fp16: Ascend310 high-performance kernels; "
                        "fp32: Ascend310P/910)")
    p.set_defaults(func=_cmd_precision)
