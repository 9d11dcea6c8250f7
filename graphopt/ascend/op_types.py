"""ONNX op type -> the Ascend op type ATC's ONNX parser builds for it, and the Ascend op types there are: the names
a mixlist (``ops_info.json``), a ``keep_dtype.cfg`` ``OpType::`` entry or an ``op_precision.ini`` takes.

The data (``ascend_ops.json``, shipped beside this module) was read from CANN's sources:

- ONNX parser plugins, one ``*_onnx_plugin.cpp`` per ONNX op (``REGISTER_CUSTOM_OP(...).FrameworkType(ONNX)
  .OriginOpType("ai.onnx::<opset>::<Op>")``; ``similar_opp_onnx_plugin.cpp`` is a macro table of the one-to-one
  ones): ``hicann/ops-math`` @ c41933244c31e44fd496e3bb3212164f8c48c214, ``hicann/ops-nn`` @
  e5c3fa9327ea95ba26d06227e746923580d10921, ``hicann/ops-cv`` @ 6ae87653464d2afb064c829e529abba2e278b0c4
  (paths ``**/framework/*_onnx_plugin.cpp``, ``common/src/framework/*_onnx_plugin.cpp``; each entry names its file).
  E.g. ``conversion/clip_by_value/framework/clip_onnx_plugin.cpp`` builds ``ClipByValue`` for ``Clip``.
- How GE uses them: ``hicann/ge`` @ ffdcbc9f7496c17a98c1d12762c61ed608ef3503, ``parser/parser/onnx/onnx_parser.cc``
  (the key is ``<domain>::<model opset>::<op>``, so the opsets are the model's ``opset_import``) and
  ``parser/parser/common/parser_utils.cc`` (a plugin registered as ``PartitionedCall`` is expanded into the ops its
  graph function builds: ``builds`` below; the op doing the ONNX op's arithmetic is the entry's type).
- Every Ascend op type: the ``REG_OP(...)`` names of ``**/op_graph/*_proto.h`` in the three repositories above and
  ``hicann/ops-transformer`` @ c29bc1069d3252c641e2aa059ec88f392d3f05ac, and of ``ops/built-in/op_proto/inc/*.h``
  in a June-2022 copy of CANN's canndev (repository ``dengguojie/vue-element-admin`` @
  a2f1d9ae6d7224eeeb59eaebbdd94e4240bb33bd), which keeps names ATC used then (``ReduceMeanD``, ``TransposeD``).
  ATC's graph fusions build some of them from several ONNX ops (``LayerNorm`` from a decomposed layer norm,
  ``Gelu`` from Erf- or Tanh-based GELU), so an Ascend name need not appear in the parser's map to be real.

The type depends on the model's opset for a few ops (``Squeeze``: ``Squeeze`` to opset 12, ``SqueezeV3`` from 13)
and on the node for others (``Conv`` of a 5-D input is ``Conv3D``; ``Clip`` with only a max is ``Minimum``);
``ascend_op_type`` takes what it needs and, given only the name, answers for the newest opset the parser reads
(18) and the common case (4-D ``Conv``, ``Clip`` with both bounds, ``Resize`` of a non-nearest mode is
``Resize``). ``ScatterND`` is registered twice (ops-math: ``TensorScatterUpdate``; ops-nn: ``ScatterNdUpdate``
and, by ``reduction``, ``ScatterNdAdd`` / ``ScatterNdMax`` / ``ScatterNdMin``); which wins is plugin load order,
so the map gives ``TensorScatterUpdate`` and both are known names.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import onnx

from ..core.errors import UserError, closest

__all__ = ["OnnxOp", "onnx_ops", "ascend_types", "ascend_op_type", "is_known_op_type", "node_ascend_type",
           "graph_ascend_types", "check_op_type", "absent_types", "DEFAULT_OPSET"]

DATA_FILE = "ascend_ops.json"
DEFAULT_OPSET = 18  # the newest opset every standard plugin registers


@dataclass(frozen=True)
class OnnxOp:
    """One ONNX op type as ATC's parser reads it: the model opsets it accepts, its Ascend type per opset range,
    every op its graph function may build, and the plugin source (``repo:path``)."""

    name: str
    opsets: tuple[tuple[int, int], ...]
    by_opset: tuple[tuple[int, int, str], ...]
    builds: tuple[str, ...]
    condition: str
    source: str
    standard: bool

    def ascend(self, opset: int | None = None) -> str:
        """The type for a model of ``opset`` (clamped into the ranges the plugin registers; None: the newest)."""
        if opset is None:
            return self.by_opset[-1][2]
        for lo, hi, kind in self.by_opset:
            if lo <= opset <= hi:
                return kind
        below = [r for r in self.by_opset if r[1] < opset]
        return (below[-1] if below else self.by_opset[0])[2]


@functools.lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def onnx_ops() -> dict[str, OnnxOp]:
    """Every op type ATC's ONNX parser has a plugin for (standard ONNX ops and the custom ones torch_npu, AMCT or
    mmdeploy export in the default domain)."""
    out = {}
    for name, e in _data()["onnx"].items():
        by_opset = tuple((lo, hi, kind) for lo, hi, kind in e["by_opset"]) if "by_opset" in e else \
            tuple((lo, hi, e["ascend"]) for lo, hi in e["opsets"])
        out[name] = OnnxOp(name, tuple((lo, hi) for lo, hi in e["opsets"]), by_opset, tuple(e["builds"]),
                           e.get("condition", ""), e["source"], bool(e["standard"]))
    return out


@functools.lru_cache(maxsize=1)
def ascend_types() -> frozenset[str]:
    """Every Ascend op type name (see the module docstring for where they come from)."""
    return frozenset(_data()["ascend_types"])


def is_known_op_type(name: str) -> bool:
    """An ONNX op type (any opset of the default domain, or one ATC's parser has a plugin for) or an Ascend one."""
    return name in onnx_ops() or name in ascend_types() or onnx.defs.has(name)


def check_op_type(name: str, where: str) -> None:
    """A ``UserError`` naming ``where`` and the closest known names when ``name`` is no known op type."""
    if not is_known_op_type(name):
        valid = set(onnx_ops()) | ascend_types() | {s.name for s in onnx.defs.get_all_schemas()}
        raise UserError(f"{where}: {name!r} is neither an ONNX op type nor an Ascend op type"
                        f"{closest(name, valid)}")


_POOL_3D = {"Conv": "Conv3D", "ConvTranspose": "Conv3DTranspose", "AveragePool": "AvgPool3D",
            "MaxPool": "MaxPool3D"}
_SCATTER_REDUCTION = {"add": "ScatterNdAdd", "max": "ScatterNdMax", "min": "ScatterNdMin"}


def ascend_op_type(op: str, opset: int | None = None, *, rank: int | None = None,
                   attrs: Mapping[str, Any] | None = None, given: Sequence[bool] | None = None) -> str:
    """The Ascend type ATC builds for ONNX op type ``op`` in a model of ``opset`` (None: the newest); ``rank`` of
    its first input, its ``attrs`` and which inputs are ``given`` refine it where the plugin branches on them.
    An Ascend name, or an ONNX op the parser has no plugin for (``Gelu``, which ATC forms by fusion), is returned
    as it is; any other name is a ``UserError`` with the closest known names."""
    entry = onnx_ops().get(op)
    if entry is None:
        check_op_type(op, "op type")
        return op
    kind = entry.ascend(opset)
    attrs = attrs or {}
    if op in _POOL_3D and rank == 5:
        return _POOL_3D[op]
    if op == "Clip" and given is not None and (opset is None or opset >= 11):
        low, high = (len(given) > 1 and given[1]), (len(given) > 2 and given[2])
        if low != high:
            return "Maximum" if low else "Minimum"
    if op == "Resize" and attrs.get("mode", "nearest") == "nearest" and (attrs or given is not None):
        return "ResizeNearestNeighborV2"
    if op == "Split" and ("split" in attrs or "num_outputs" in attrs or (given is not None and any(given[1:]))):
        return "SplitV"
    if op == "BitShift" and attrs.get("direction") == "LEFT":
        return "LeftShift"
    if op == "Pad" and attrs.get("mode") == "reflect" and opset is not None and opset <= 10:
        return "MirrorPad"
    if op == "ScatterND" and attrs.get("reduction") in _SCATTER_REDUCTION:
        return _SCATTER_REDUCTION[attrs["reduction"]]
    return kind


def _text(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def node_ascend_type(node: Any, opset: int | None = None) -> str:
    """``ascend_op_type`` of an onnx-graphsurgeon node: its first input's rank, attributes and given inputs. An op
    the parser has no plugin for (a custom domain's) is returned as it is: it is the graph's, not a misspelling."""
    if node.op not in onnx_ops():
        return node.op
    inputs = list(node.inputs)
    shape = inputs[0].shape if inputs else None
    given = [bool(getattr(t, "name", "")) for t in inputs]
    attrs = {k: _text(v) for k, v in node.attrs.items()}
    return ascend_op_type(node.op, opset, rank=len(shape) if shape is not None else None, attrs=attrs,
                          given=given)


def graph_ascend_types(ops: Iterable[str]) -> set[str]:
    """Every Ascend type the parser may build from ONNX op types ``ops`` (each op's type at any opset and every
    op its graph function builds; names the parser has no plugin for, as they are)."""
    table = onnx_ops()
    out: set[str] = set()
    for op in ops:
        entry = table.get(op)
        if entry is None:
            out.add(op)
            continue
        out.update(kind for _, _, kind in entry.by_opset)
        out.update(entry.builds)
        if op in _POOL_3D:
            out.add(_POOL_3D[op])
    return out


def absent_types(names: Iterable[str], graph_ops: Iterable[str]) -> list[str]:
    """The names (ONNX or Ascend op types) no op of a graph with ONNX op types ``graph_ops`` maps to: ATC may
    still form them by fusion (``LayerNorm`` from a decomposed layer norm), so callers report them, not refuse."""
    graph_ops = set(graph_ops)
    built = graph_ascend_types(graph_ops)
    return [n for n in dict.fromkeys(names) if n not in graph_ops and ascend_op_type(n) not in built]
