"""The fp16 precision search behind ``graphopt precision`` and the mixlist pass's measured mode: which ops lose
accuracy in fp16, the smallest set to keep in fp32, and ATC's configs.

On the fp16 emulation of ``graphopt.ascend.fp16_emulation`` (one onnxruntime session; a trial is one run with another
switch vector), against the fp32 outputs of the same calibration inputs:

1. **Baselines**: fp32 and ``force_fp16`` on every calibration item; ``allow_fp32_to_fp16`` and
   ``allow_mix_precision`` (no mixlist) on the screening items (the ``screen_items`` that ``force_fp16`` hurts
   most), for the report.
2. **Sensitivity per op type** (Ascend names; a decomposed LayerNorm is one ``LayerNorm``, a GELU one ``Gelu``),
   screened: the outputs when *only* that type runs in fp16, and when *everything but* it does. When
   ``force_fp16`` meets the target nothing is to be searched: this and the worst nodes are then skipped (the
   report says so) unless ``sensitivity_when_met`` (``graphopt precision --sensitivity``), and measured on the one
   item ``force_fp16`` hurts most.
3. **Worst nodes** (screened): "only this unit in fp16" for up to ``node_trials`` units, taken in turn from each
   type (most sensitive type first), then "everything but this unit" for the ``worst_nodes`` worst of them.
4. **Search** for the cheapest fp32 keep-set meeting the target (top-1 agreement with fp32 and cosine, as
   ``graphopt.core.verify`` measures them): ``graphopt.ascend.precision_keepset`` (types greedily by benefit per
   cost, pruned, cube types narrowed to the units keeping which pays most, all screened; then the configs confirmed
   on every item, the keep-set growing until they hold). Every trial is cached, so no
   assignment is ever run twice. A trial on all items (a confirmation) runs in stages, the items ``force_fp16``
   hurts most first (the screen, then twice as many again, then the rest: ``PrecisionSearch.stage``), and stops at
   the first stage whose failure no other item can undo; the screen's outputs are reused, and the fp32 outputs of
   every stage and screen are sliced from the one reference run on all items.
5. **GELU**: with the keep-set, ``Gelu=high_performance`` (tanh approximation) is tried (screened, then on every
   item); it is chosen when the target still holds, else ``high_precision``.
6. **Configs** (``PassResult.configs`` shape): black-listed Ascend op types (``ops_info.json``, with
   ``allow_mix_precision``), ``op_precision`` for Gelu, node-level keeps for ``keep_dtype.cfg`` (names checked
   against the graph). Fused patterns (LayerNorm, Gelu) are only ever kept by op type: ATC renames their nodes.
   The configs are then emulated as ATC would apply them (``allow_mix_precision``: white = cube ops, gray ops
   follow their inputs) and that is the *predicted* accuracy reported, with the share of Conv/MatMul/Gemm FLOPs
   left in fp16.
7. **Held-out items** (``holdout``): the fp32 reference, ``force_fp16``, the keep-set and the generated configs
   measured on items the search never saw.

Calibration data: ``graphopt.ascend.calibration``. Outputs are compared by ``graphopt.core.verify.compare_outputs``,
feed by feed: integer and bool outputs exactly, top-1 agreement for class-score outputs only.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core.errors import UserError
from ..core.tolerance import OutputTolerance, Tolerance, tolerance_problem
from .calibration import screen_batches
from .fp16_emulation import Fp16Emulator
from .fp16_units import Unit
from .precision_keepset import PrecisionSearch, search_keep_set, unit_cost

__all__ = ["Target", "analyse", "generated_configs"]


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



def _deployed(emulator: Fp16Emulator, configs: Mapping[str, Any]) -> np.ndarray:
    """Which units run in fp16 when ATC applies ``configs``."""
    return emulator.assignment(configs.get("precision_mode", "force_fp16"), mixlist=configs.get("mixlist"),
                               keep_dtype=configs.get("keep_dtype", []))


def _type_label(units: Sequence[Unit]) -> str:
    kinds = sorted({u.kind for u in units})
    ascend = units[0].ascend_type
    return ascend if kinds == [ascend] else f"{ascend} ({', '.join(kinds)})"


def _reference_metrics(s: PrecisionSearch) -> dict[str, Any]:
    return {"cosine": 1.0, "top1_agreement": 1.0 if s.class_output else None, "max_abs": 0.0, "passed": True,
            "error": 0.0, "accuracy": s.accuracy(s.ref), "fp16_units": 0,
            "fp16_flop_share": s.emu.fp16_flop_share(np.zeros(s.n, bool)), "items": s.items}


def analyse(emulator: Fp16Emulator, batches: Sequence[Any], target: Target, *,
            labels: Sequence[int] | None = None, node_trials: int = 24, worst_nodes: int = 5,
            gelu: bool = True, graph_node_names: set[str] | None = None, screen_items: int = 4, rank_items: int = 1,
            fixed_batch: bool = False, progress: Callable[[str], None] = _noop, sensitivity_when_met: bool = False,
            outputs: Sequence[Any] = (), holdout: Sequence[Any] = (),
            holdout_labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Baselines, sensitivity, keep-set search, GELU mode, configs and their predicted accuracy (module docstring).

    ``graph_node_names``: the node names of the graph the configs are for (default: the emulated model's).
    ``screen_items``: the trials that choose (sensitivity, worst units, the search's steps) run on this many
    calibration items, those ``force_fp16`` hurts most; units are ranked on the ``rank_items`` most hurt; what is
    decided is confirmed on all of them. ``fixed_batch``: the
    model's batch dimension is fixed (``batches`` are all that size), or its feeds cannot be regrouped: the screen
    keeps whole feeds. ``batches``: feeds (every input) or bare arrays of the emulator's input. ``outputs``: a
    recipe's per-output tolerances, for their ``top1`` declarations (class scores or not). ``holdout``: batches
    the search never sees, on which the fp32 reference, ``force_fp16``, the keep-set and the generated configs are
    measured afterwards (``result["holdout"]``), to show whether the keep-set generalises.
    ``sensitivity_when_met``: measure the sensitivity per op type and the worst units also when ``force_fp16``
    meets the target (nothing to search); without it they are skipped then (``result["sensitivity_skipped"]``)."""
    t0 = time.perf_counter()
    s = PrecisionSearch(emulator, batches, target, labels, progress, outputs)
    total = s.items
    made = [s]

    def screen_of(chosen: Sequence[int]) -> PrecisionSearch:
        """A search on the items ``chosen`` (or the whole feeds holding them); their fp32 outputs sliced from the
        reference run on all items when the feeds can be cut (every output one row per item)."""
        if len(chosen) >= total:
            return s
        part = sorted(chosen)  # screen_batches keeps the items in their order in the data
        ps = PrecisionSearch(emulator, screen_batches(batches, len(chosen), fixed_batch, chosen), target,
                             outputs=outputs, ref=s.ref_of(part) if cut else None, item_index=part if cut else None)
        made.append(ps)
        return ps

    units = emulator.units
    out: dict[str, Any] = {"target": asdict(target), "units": len(units), "calibration_items": total}
    if not units:
        out.update(baselines={}, types=[], worst_nodes=[], search={"keep_types": [], "keep_nodes": []},
                   configs={}, predicted=None, trials=0, seconds=round(time.perf_counter() - t0, 2))
        return out
    progress(f"precision: {len(units)} units, {total} calibration items; baselines ...")
    force = emulator.assignment("force_fp16")
    baselines = {"fp32": _reference_metrics(s), "force_fp16": s.trial(force)}
    full = baselines["force_fp16"]
    order = [int(i) for i in np.argsort(-s.item_errors(force), kind="stable")]  # most hurt by fp16 first
    cut = not fixed_batch and s.per_item_outputs() and s.separable(order[0], screen_batches(batches, 1, False,
                                                                                             order[:1])[0])
    screen = screen_of(order[:screen_items])
    ranker = screen_of(order[:rank_items])
    if cut and screen is not s:  # confirmations: the screen, then twice as many items again, then the rest
        cuts = [screen.items, min(3 * screen.items, total), total]
        s.stage([screen] + [screen_of(order[a:b]) for a, b in zip(cuts, cuts[1:]) if a < b])
    # For the report only when force_fp16 meets the target: then on the one item it hurts most, and the
    # sensitivity per op type and per unit only when asked (``sensitivity_when_met``).
    sens = ranker if full["passed"] else screen
    for mode in ("allow_fp32_to_fp16", "allow_mix_precision"):
        baselines[mode] = sens.trial(emulator.assignment(mode))
    out["baselines"] = baselines
    skip = full["passed"] and not sensitivity_when_met
    out["sensitivity_skipped"] = skip

    # Sensitivity per op type, on the screening items.
    by_type: dict[str, list[Unit]] = {}
    for u in units:
        by_type.setdefault(u.ascend_type, []).append(u)
    types = []
    screen_full = None if skip else sens.trial(emulator.assignment("force_fp16"))
    for k, (name, us) in enumerate([] if skip else by_type.items()):
        idx = {u.index for u in us}
        progress(f"precision: op type {k + 1}/{len(by_type)} {name} ({len(us)} units)")
        only = sens.trial(sens.only(idx))
        all_but = sens.trial(sens.keeping(idx))
        types.append({"type": name, "label": _type_label(us), "units": len(us), "fused": us[0].fused,
                      "cube_flops": sum(u.cube_flops for u in us), "cost": sum(unit_cost(u) for u in us),
                      "only_fp16": only, "all_but_fp16": all_but,
                      "benefit": screen_full["error"] - all_but["error"]})
    out["types"] = types

    # Worst nodes: "only this unit in fp16" for units of the most sensitive types.
    # Round-robin over the types, most sensitive first, so the budget is not spent on one type's many units.
    measured: dict[int, dict] = {}
    queues = [list(by_type[t["type"]]) for t in sorted(types, key=lambda t: -t["only_fp16"]["error"])]
    while len(measured) < node_trials and any(queues):
        for q in queues:
            if q and len(measured) < node_trials:
                u = q.pop(0)
                measured[u.index] = screen.trial(screen.only({u.index}))
    worst = sorted(measured, key=lambda i: -measured[i]["error"])[:worst_nodes]
    out["worst_nodes"] = [{**units[i].as_dict(), "only_fp16": measured[i],
                           "all_but_fp16": screen.trial(screen.keeping({i}))} for i in worst]
    out["screen_items"] = screen.items
    out["sensitivity_items"] = sens.items

    progress("precision: searching the smallest fp32 keep-set ...")
    names = graph_node_names if graph_node_names is not None else emulator.node_names
    if full["passed"]:
        search = {"keep_types": [], "keep_nodes": [], "keep_units": [], "history": [],
                  "result": full, "force_fp16_meets_target": True}
    else:
        search = search_keep_set(s, screen, ranker, by_type, types, {},
                                 lambda keep_types, keep_nodes: _deployed(emulator, generated_configs(
                                     emulator, keep_types, keep_nodes, None, names)[0]))
    keep_units = set(search["keep_units"])
    # GELU mode, with the keep-set: screened, then confirmed.
    gelu_units = [u for u in units if u.kind == "Gelu"]
    gelu_result = None
    gelu_mode = None
    if gelu_units:
        hp = None
        if gelu:
            hp = screen.trial(screen.keeping(keep_units), gelu_high_performance=True)
            hp = s.trial(s.keeping(keep_units), gelu_high_performance=True) if hp["passed"] else hp
        gelu_mode = "high_performance" if hp is not None and hp["passed"] else "high_precision"
        gelu_result = {"units": len(gelu_units), "high_performance": hp, "chosen": gelu_mode}
    out["gelu"] = gelu_result

    configs, notes = generated_configs(emulator, search["keep_types"], search["keep_nodes"], gelu_mode, names)
    out["search"] = {k: v for k, v in search.items() if k != "keep_units"}
    out["search"]["notes"] = notes
    out["configs"] = configs
    mode = configs.get("precision_mode", "force_fp16")
    fp16 = _deployed(emulator, configs)
    predicted = dict(s.trial(fp16, gelu_mode == "high_performance"))
    predicted["precision_mode"] = mode
    if predicted["accuracy"] is not None and baselines["fp32"]["accuracy"] is not None:
        predicted["accuracy_change"] = predicted["accuracy"] - baselines["fp32"]["accuracy"]
    out["predicted"] = predicted
    out["warnings"] = [] if predicted["passed"] else [
        "the generated configs, emulated as ATC applies them, miss the target (with the GELU mode chosen on the "
        "keep-set)"]
    out["trials"] = sum(ps.runs for ps in made)  # runs of trials (a staged trial runs in its stages)
    out["screen_trials"] = out["trials"] - s.runs
    out["references"] = sum(ps.ref_runs for ps in made)  # fp32 runs: all items (a screen's is sliced from it)
    if holdout:
        progress("precision: measuring the keep-set on the held-out items ...")
        h = PrecisionSearch(emulator, holdout, target, holdout_labels, outputs=outputs)
        out["holdout"] = {"items": h.items, "fp32": _reference_metrics(h),
                          "force_fp16": h.trial(emulator.assignment("force_fp16")),
                          "keep_set": h.trial(h.keeping(keep_units)),
                          "predicted": {**h.trial(fp16, gelu_mode == "high_performance"), "precision_mode": mode}}
        out["holdout_trials"] = h.runs
        out["references"] += 1
    out["session_runs"] = emulator.runs
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


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
