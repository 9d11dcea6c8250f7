"""``graphopt inspect MODEL``: what a model is, before anything runs on it.

In the manner of onnxslim's ``--inspect`` and Polygraphy's ``inspect model``: the file and its size (external data
files included), IR version, opsets and producer; every graph input and output with dtype and shape (symbolic dims
by name); node and op-type counts, subgraphs (If/Loop/Scan bodies) counted with their parent; initializers and
parameters; external data by file. ``--json`` prints the same as one JSON object. The model is read without its
weights and is not checked, so a model the checker or onnxruntime rejects can still be inspected.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from ..core.errors import UserError
from ..core.input_defaults import initializer_inputs

__all__ = ["inspect_model", "format_inspection", "listed", "add_cli"]


def _dtype(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "undefined"
    except (KeyError, TypeError):  # bfloat16, float8 and the like have no numpy dtype: ONNX's own name
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _type(tp: onnx.TypeProto) -> tuple[str, list[int | str | None] | None]:
    """(dtype, shape) of a value's type; non-tensor types (sequence, optional, map) by their kind."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        t = getattr(tp, kind)
        if not t.HasField("shape"):
            return _dtype(t.elem_type), None
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
                for d in t.shape.dim]
        return _dtype(t.elem_type) + ("" if kind == "tensor_type" else " (sparse)"), dims
    if kind is None:
        return "undefined", None
    inner, _ = _type(getattr(tp, kind).elem_type) if kind in ("sequence_type", "optional_type") else ("", None)
    return f"{kind.removesuffix('_type')}({inner})" if inner else kind.removesuffix("_type"), None


def _walk(graph: onnx.GraphProto, ops: Counter, depth: int = 0) -> tuple[int, int]:
    """Count ``graph``'s ops (``domain::Op`` outside the default domain) into ``ops``, subgraphs included;
    returns (nodes, subgraphs)."""
    nodes, subgraphs = 0, 0
    for node in graph.node:
        nodes += 1
        ops[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                n, s = _walk(sub, ops, depth + 1)
                nodes, subgraphs = nodes + n, subgraphs + s + 1
    return nodes, subgraphs


def _tensor_bytes(t: onnx.TensorProto) -> int:
    for entry in t.external_data:
        if entry.key == "length":
            return int(entry.value)
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError):
        itemsize = 1
    return math.prod(t.dims) * itemsize


def inspect_model(path: str | Path) -> dict[str, Any]:
    """The facts ``graphopt inspect`` prints, as a JSON-ready dict. Bad input is a one-line ``UserError``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model {path}: no such file")
    if not path.is_file():
        raise UserError(f"model {path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError, EIO ...: one line, whatever the cause
        text = str(e).strip().splitlines()
        raise UserError(f"model {path}: not a readable ONNX file ({type(e).__name__}"
                        f"{': ' + text[0] if text else ''})") from None
    g = model.graph
    if not g.node and not g.output:
        raise UserError(f"model {path}: holds no graph (an empty or non-ONNX protobuf)")
    ops: Counter = Counter()
    nodes, subgraphs = _walk(g, ops)
    initializer_names = {t.name for t in g.initializer}
    external: dict[str, int] = {}
    for t in g.initializer:
        if onnx.external_data_helper.uses_external_data(t):
            location = next((e.value for e in t.external_data if e.key == "location"), "?")
            external[location] = external.get(location, 0) + _tensor_bytes(t)
    external_files = {loc: (path.parent / loc).stat().st_size if (path.parent / loc).is_file() else None
                      for loc in sorted(external)}

    def values(infos) -> list[dict[str, Any]]:
        out = []
        for v in infos:
            if v.name in initializer_names:  # IR < 4 lists the initializers among the inputs
                continue
            dtype, shape = _type(v.type)
            out.append({"name": v.name, "dtype": dtype, "shape": shape})
        return out

    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "external_data": {loc: {"bytes_referenced": external[loc], "file_bytes": size}
                          for loc, size in external_files.items()},
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "graph_name": g.name,
        "inputs": values(g.input),
        "outputs": values(g.output),
        "nodes": nodes,
        "subgraphs": subgraphs,
        "op_counts": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializers": len(g.initializer) + len(g.sparse_initializer),
        # inputs with an initializer: defaults a caller may override (graphopt.core.input_defaults)
        "initializer_inputs": initializer_inputs(g),
        "parameters": sum(math.prod(t.dims) for t in g.initializer),
        "functions": [f"{f.domain}::{f.name}" for f in model.functions],
    }


def _size(n: int | None) -> str:
    if n is None:
        return "missing"
    if n < 1024:
        return f"{n} B"
    exponent = min(3, int(math.log(n, 1024)))
    return f"{n / 1024 ** exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def _shape(dims: list[int | str | None] | None) -> str:
    return "unknown" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def listed(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` of ``names``, and how many more."""
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def format_inspection(info: dict[str, Any]) -> str:
    """The human-readable form: a header, then tables of inputs/outputs and op counts."""
    total = info["file_bytes"] + sum(e["file_bytes"] or 0 for e in info["external_data"].values())
    opsets = ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
    lines = [f"{info['path']}: {_size(total)}, IR {info['ir_version']}, opset {opsets}"
             + (f", producer {info['producer']}" if info["producer"] else ""),
             f"graph {info['graph_name'] or '(unnamed)'}: {info['nodes']} nodes of {len(info['op_counts'])} op types"
             + (f" ({info['subgraphs']} subgraphs counted in)" if info["subgraphs"] else "")
             + f", {info['initializers']} initializers"
             + (f" ({len(info['initializer_inputs'])} of them graph inputs too: {listed(info['initializer_inputs'])})"
                if info["initializer_inputs"] else "")
             + f", {info['parameters']:,} parameters"]
    for loc, e in info["external_data"].items():
        lines.append(f"external data {loc}: {_size(e['bytes_referenced'])} referenced, file {_size(e['file_bytes'])}")
    if info["functions"]:
        lines.append(f"functions: {', '.join(info['functions'])}")
    rows = [("input", v) for v in info["inputs"]] + [("output", v) for v in info["outputs"]]
    width = max((len(v["name"]) for _, v in rows), default=4)
    lines += ["", f"| {'':6} | {'name':{width}} | dtype | shape |", "|---|---|---|---|"]
    lines += [f"| {kind:6} | {v['name']:{width}} | {v['dtype']} | {_shape(v['shape'])} |" for kind, v in rows]
    lines += ["", "| op | count |", "|---|---:|"]
    lines += [f"| {op} | {n} |" for op, n in info["op_counts"].items()]
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect_model(args.model)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("inspect", help="a model's inputs, outputs, op counts, opsets, size and external data")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    p.set_defaults(func=_cmd_inspect)
