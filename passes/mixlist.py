"""``mixlist``: a static mixed-precision list for ATC's ``--modify_mixlist`` (keep some op types in fp32, let
others run in fp16)."""
from __future__ import annotations

from dataclasses import field
from typing import Literal

import onnx
import onnx_graphsurgeon as gs

from graphopt.atc import ascend_op_type
from graphopt.pass_infra import Pass, PassResult, register_pass

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

    Names may be ONNX op types (``LayerNormalization``, mapped to Ascend's names when ``graphopt.atc`` writes
    ops_info.json) or Ascend op types (``LayerNorm``), which are passed through unchecked. With
    ``require_present: true`` an ONNX op type in ``keep_fp32`` or ``allow_fp16`` that no node of the graph has is
    dropped from the list and named in ``stats["absent"]`` rather than failing the recipe. Presence is only
    meaningful for ONNX names: an opset < 17 export has no ``LayerNormalization`` (it is decomposed into
    ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add), yet ATC fuses that pattern back into its ``LayerNorm``,
    so for such graphs name the Ascend op (``LayerNorm``), as the seed does. The same holds for ``Gelu`` below
    opset 20, which is also an ONNX name: use ``require_present: false`` to list it for a decomposed GELU.

    ``mode`` is only ``static`` (lists given by hand); a measured mode, choosing the lists from per-op fp16 error,
    is planned separately.
    """

    keep_fp32: list[str] = field(default_factory=list, metadata={
        "help": "op types kept in fp32 (black-list to-add), ONNX or Ascend names, e.g. [LayerNorm]"})
    allow_fp16: list[str] = field(default_factory=list, metadata={
        "help": "op types allowed to run in fp16 (white-list to-add)"})
    remove_from_black: list[str] = field(default_factory=list, metadata={
        "help": "op types taken off ATC's built-in black list (back to gray)"})
    remove_from_white: list[str] = field(default_factory=list, metadata={
        "help": "op types taken off ATC's built-in white list (back to gray)"})
    mode: Literal["static"] = field(default="static", metadata={
        "help": "how the lists are chosen; only 'static' (as given) for now"})
    require_present: bool = field(default=True, metadata={
        "help": "drop (and report in stats.absent) ONNX op types in keep_fp32/allow_fp16 that the graph lacks"})

    def __post_init__(self) -> None:
        if self.mode != "static":
            raise ValueError(f"mode must be 'static' (the only mode so far), got {self.mode!r}")
        lists = {"keep_fp32": self.keep_fp32, "allow_fp16": self.allow_fp16,
                 "remove_from_black": self.remove_from_black, "remove_from_white": self.remove_from_white}
        for key, names in lists.items():
            bad = [n for n in names if not isinstance(n, str) or not n or any(c.isspace() for c in n)]
            if bad:
                raise ValueError(f"{key}: op type names must be non-empty strings without spaces, got {bad[0]!r}")
        if not any(lists.values()):
            raise ValueError("give at least one of keep_fp32, allow_fp16, remove_from_black, remove_from_white")
        for a, b in (("keep_fp32", "allow_fp16"), ("keep_fp32", "remove_from_black"),
                     ("allow_fp16", "remove_from_white")):
            both = {ascend_op_type(n) for n in lists[a]} & {ascend_op_type(n) for n in lists[b]}
            if both:
                raise ValueError(f"{sorted(both)[0]} is in both {a} and {b}")

    def run(self, graph: gs.Graph) -> PassResult:
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
