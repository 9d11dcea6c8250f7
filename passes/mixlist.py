"""``mixlist``: the mixed-precision lists for ATC's ``--modify_mixlist`` (keep some op types in fp32, let others
run in fp16), given by hand (``mode: static``) or measured on the fp16 emulation (``mode: measured``)."""
from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar, Literal

import onnx
import onnx_graphsurgeon as gs

from graphopt.ascend.op_types import ascend_op_type
from graphopt.core.errors import UserError
from graphopt.core.ir import to_model
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.tolerance import tolerance_problem

__all__ = ["Mixlist", "is_onnx_op_type"]


def is_onnx_op_type(name: str) -> bool:
    """Whether ``name`` is an op type of the default ONNX domain (any opset), as opposed to an Ascend-only name."""
    return onnx.defs.has(name)


@register_pass("mixlist")
class Mixlist(Pass):
    """Ask ATC to keep chosen op types in fp32 (black list) or let them run in fp16 (white list), under
    ``--precision_mode=allow_mix_precision``. The graph is not touched (``changed`` is always false).

    Maths: none in the graph. ``allow_mix_precision`` lets ATC lower fp32 ops to fp16 by its built-in lists:
    white-list ops run in fp16, black-list ops stay fp32, gray-list ops follow their input's dtype.
    ``--modify_mixlist=ops_info.json`` edits those lists: ``keep_fp32`` -> ``black-list.to-add``,
    ``allow_fp16`` -> ``white-list.to-add``, ``remove_from_black`` / ``remove_from_white`` -> ``to-remove``
    (the op goes back to gray). fp32 keeps 24 mantissa bits where fp16 has 11 and overflows past 65504, which is
    why reductions like LayerNorm's mean/variance are kept fp32. The ViT seed's list is exactly
    ``keep_fp32: [LayerNorm]`` -> ``{"black-list": {"to-add": ["LayerNorm"]}}``.

    Names may be ONNX op types (``LayerNormalization``, mapped to Ascend's names when ``graphopt.ascend.atc`` writes
    ops_info.json) or Ascend op types (``LayerNorm``), which are passed through unchecked. With
    ``require_present: true`` an ONNX op type in ``keep_fp32`` or ``allow_fp16`` that no node of the graph has is
    dropped from the list and named in ``stats["absent"]`` rather than failing the recipe. Presence is only
    meaningful for ONNX names: an opset < 17 export has no ``LayerNormalization`` (it is decomposed into
    ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add), yet ATC fuses that pattern back into its ``LayerNorm``,
    so for such graphs name the Ascend op (``LayerNorm``), as the seed does. The same holds for ``Gelu`` below
    opset 20, which is also an ONNX name: use ``require_present: false`` to list it for a decomposed GELU.

    ``mode: measured`` chooses the lists itself (``graphopt.ascend.fp16_sensitivity``; the graph is still not touched):
    ATC's fp16 modes are emulated in onnxruntime on the graph the pass receives, with the pipeline's verification
    feeds as calibration data (``calibration``: every input of the model, integer and bool ones passed
    through unchanged; regrouped into batches of 8 when every input has a symbolic batch, whole feeds when the
    model fixes its batch; the recipe's ``verify.data`` for real data; seeded random feeds of every input
    otherwise, or when verification is off, with a warning in ``stats["warnings"]``: random inputs understate
    sensitivity).
    It measures each op type's fp16 error, searches the smallest set of op types (or, for plain nodes, node
    names) to keep in fp32 so that top-1 agreement with fp32 stays >= ``target_top1`` and cosine >=
    ``target_cosine`` on that data, and returns: ``mixlist`` (black-list to-add: the kept Ascend op types, with
    ``precision_mode: allow_mix_precision``), ``keep_dtype`` (kept node names, checked against the graph) and
    ``op_precision`` ``Gelu=high_performance`` when the tanh GELU still meets the target, else
    ``high_precision``. A decomposed LayerNorm is measured and listed as one ``LayerNorm``. The measurement and
    the predicted accuracy of the generated configs are in ``stats``. The hand-made lists are for ``static``
    only.
    """

    keep_fp32: list[str] = field(default_factory=list, metadata={
        "help": "op types kept in fp32 (black-list to-add), ONNX or Ascend names, e.g. [LayerNorm]"})
    allow_fp16: list[str] = field(default_factory=list, metadata={
        "help": "op types allowed to run in fp16 (white-list to-add)"})
    remove_from_black: list[str] = field(default_factory=list, metadata={
        "help": "op types taken off ATC's built-in black list (back to gray)"})
    remove_from_white: list[str] = field(default_factory=list, metadata={
        "help": "op types taken off ATC's built-in white list (back to gray)"})
    mode: Literal["static", "measured"] = field(default="static", metadata={
        "help": "'static': the lists as given; 'measured': chosen by measuring fp16 error on the fp16 emulation"})
    require_present: bool = field(default=True, metadata={
        "help": "drop (and report in stats.absent) ONNX op types in keep_fp32/allow_fp16 that the graph lacks"})
    target_top1: float | None = field(default=1.0, metadata={
        "help": "measured: top-1 agreement with fp32 to keep on the calibration data (null: not checked)"})
    target_cosine: float | None = field(default=0.999, metadata={
        "help": "measured: cosine similarity with fp32 to keep (null: not checked)"})
    samples: int = field(default=16, metadata={
        "help": "measured: calibration items used at most (seeded random ones when the pipeline has none)"})
    seed: int = field(default=0, metadata={"help": "measured: seed of random calibration inputs"})
    node_trials: int = field(default=24, metadata={
        "help": "measured: units measured one by one to rank the worst nodes"})
    reduce_accumulation: Literal["fp16", "fp32"] = field(default="fp16", metadata={
        "help": "measured: fp16 ReduceMean/ReduceSum accumulate in fp16 (Ascend310) or fp32 (Ascend310P/910)"})
    gelu_modes: bool = field(default=True, metadata={
        "help": "measured: try Gelu=high_performance (tanh) and choose it when the target holds"})
    # What the pass manager supplies before run() (graphopt.core.pipeline): ``calibration``, (the verification feeds
    # or None when verification is off, whether they are real data). Not a recipe key.
    requires: ClassVar[tuple[str, ...]] = ("calibration",)
    calibration: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lists = {"keep_fp32": self.keep_fp32, "allow_fp16": self.allow_fp16,
                 "remove_from_black": self.remove_from_black, "remove_from_white": self.remove_from_white}
        for key, names in lists.items():
            bad = [n for n in names if not isinstance(n, str) or not n or any(c.isspace() for c in n)]
            if bad:
                raise ValueError(f"{key}: op type names must be non-empty strings without spaces, got {bad[0]!r}")
        if self.mode == "measured":
            given = [k for k, v in lists.items() if v]
            if given:
                raise ValueError(f"{given[0]} is a hand-made list: only mode 'static' takes one (mode 'measured' "
                                 "chooses the black list itself)")
            if self.target_top1 is None and self.target_cosine is None:
                raise ValueError("mode measured: set target_top1, target_cosine or both")
            for name in ("target_top1", "target_cosine"):
                problem = tolerance_problem(name.replace("target_", "").replace("top1", "top1_agreement"),
                                            getattr(self, name))  # the ranges verification thresholds have
                if problem:
                    raise ValueError(f"{name} {problem}")
            if self.samples < 1 or self.node_trials < 0:
                raise ValueError("samples must be >= 1 and node_trials >= 0")
            return
        if self.mode != "static":
            raise ValueError(f"mode must be 'static' or 'measured', got {self.mode!r}")
        if not any(lists.values()):
            raise ValueError("give at least one of keep_fp32, allow_fp16, remove_from_black, remove_from_white")
        for a, b in (("keep_fp32", "allow_fp16"), ("keep_fp32", "remove_from_black"),
                     ("allow_fp16", "remove_from_white")):
            both = {ascend_op_type(n) for n in lists[a]} & {ascend_op_type(n) for n in lists[b]}
            if both:
                raise ValueError(f"{sorted(both)[0]} is in both {a} and {b}")

    def run(self, graph: gs.Graph) -> PassResult:
        if self.mode == "measured":
            return self._run_measured(graph)
        present = {n.op for n in graph.nodes}
        absent: list[str] = []

        def keep(names: list[str]) -> list[str]:
            out = []
            for n in names:
                if self.require_present and is_onnx_op_type(n) and n not in present:
                    if n not in absent:
                        absent.append(n)
                    continue
                if n not in out:
                    out.append(n)
            return out

        lists = {("black-list", "to-add"): keep(self.keep_fp32),
                 ("white-list", "to-add"): keep(self.allow_fp16),
                 ("black-list", "to-remove"): list(dict.fromkeys(self.remove_from_black)),
                 ("white-list", "to-remove"): list(dict.fromkeys(self.remove_from_white))}
        mixlist: dict[str, dict[str, list[str]]] = {}
        for (lst, action), names in lists.items():
            if names:
                mixlist.setdefault(lst, {})[action] = names
        stats = {"black_to_add": lists[("black-list", "to-add")], "white_to_add": lists[("white-list", "to-add")],
                 "black_to_remove": lists[("black-list", "to-remove")],
                 "white_to_remove": lists[("white-list", "to-remove")],
                 "ascend_names": sorted({ascend_op_type(n) for names in lists.values() for n in names}),
                 "absent": absent}
        if absent:
            stats["skipped"] = {f"{n}: no such node in the graph; if ATC forms it by fusion, "
                                + (f"name the Ascend op {ascend_op_type(n)}" if ascend_op_type(n) != n
                                   else "set require_present: false"): 1 for n in absent}
        configs = {"mixlist": mixlist, "precision_mode": "allow_mix_precision"} if mixlist else {}
        return PassResult(False, stats, configs)

    def _run_measured(self, graph: gs.Graph) -> PassResult:
        from graphopt.ascend.fp16_emulation import Fp16Emulator
        from graphopt.ascend.calibration import (RANDOM_INPUTS_WARNING, batch_layout, feed_items, feeds_calibration,
                                                 fit_feeds)
        from graphopt.ascend.fp16_sensitivity import Target, analyse

        what = "mixlist (mode: measured)"
        feeds, real_data = self.calibration or (None, False)
        model = to_model(graph)
        try:
            layout = batch_layout(model)
        except UserError as e:
            raise UserError(f"{what}: {e}") from None
        emulator = Fp16Emulator(model, reduce_accumulation=self.reduce_accumulation)
        warnings: list[str] = []
        if feeds:  # every input of every verification feed, regrouped into batches of 8 where the batch allows
            batches, note, regrouped = fit_feeds(feeds, layout, 8, self.samples, emulator, what)
            source = f"{sum(feed_items(b) for b in batches)} verification input(s) of the pipeline{note} (" \
                + ("real data: verify.data)" if real_data else "seeded random: the recipe sets no verify.data)")
            if not real_data:
                warnings.append(RANDOM_INPUTS_WARNING)
        else:
            try:
                cal, _, regrouped = feeds_calibration(model, samples=self.samples, seed=self.seed, batch=8,
                                                      emulator=emulator)
            except UserError as e:
                raise UserError(f"{what}: {e}") from None
            batches = cal.batches
            source = f"{cal.items} seeded random input(s) (seed {self.seed}; verification is off)"
            warnings.append(RANDOM_INPUTS_WARNING)
        result = analyse(emulator, batches, Target(self.target_top1, self.target_cosine), node_trials=self.node_trials,
                         worst_nodes=3, gelu=self.gelu_modes, graph_node_names={n.name for n in graph.nodes},
                         fixed_batch=not regrouped)
        warnings += result.get("warnings", [])

        def brief(m: dict | None) -> dict | None:
            if m is None:
                return None
            return {k: m[k] for k in ("cosine", "top1_agreement", "passed", "fp16_flop_share") if k in m}

        search = result["search"]
        stats = {
            "mode": "measured", "calibration": source, "warnings": warnings, "units": result["units"],
            "trials": result["trials"], "seconds": result["seconds"],
            "force_fp16": brief(result["baselines"].get("force_fp16")),
            "keep_types": search.get("keep_types", []), "keep_nodes": search.get("keep_nodes", []),
            "gelu": (result.get("gelu") or {}).get("chosen"),
            "predicted": {**(brief(result["predicted"]) or {}),
                          "precision_mode": (result["predicted"] or {}).get("precision_mode")},
            "sensitivity": {t["type"]: {"units": t["units"],
                                        "only_fp16": brief(t["only_fp16"]), "all_but_fp16": brief(t["all_but_fp16"])}
                            for t in result["types"]},
            "emulation": emulator.stats,
        }
        return PassResult(False, stats, result["configs"])
