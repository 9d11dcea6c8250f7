"""The smallest subgraph that shows a pass's numeric difference, saved so it reproduces without graphopt.

``minimal_pair`` cuts the graph before a pass (A) and after it (B) from their first divergent tensor back to the
nearest tensors both share: those become the subgraphs' inputs, valued from A (where they agree with B), for the one
sample that shows the largest error. ``check_reproduces`` loads the saved files into fresh onnxruntime sessions to
confirm the difference holds on its own; ``REPRO_SCRIPT`` does the same with only numpy and onnxruntime.
A subgraph's inputs keep their own dtypes (token ids stay int64, a mask stays bool); integer and bool tensors are
compared exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.divergence import SubgraphRunner, TensorDiff, tensor_tolerance
from ..core.errors import UserError
from ..core.graph_walk import node_inputs
from ..core.model_inputs import DTYPES, array_dtype_name
from ..core.model import Model
from ..core.wire import SplitModel
from ..core.sessions import create_session
from ..core.tolerance import Tolerance
from ..core.verify import compare_outputs

__all__ = ["minimal_pair", "check_reproduces", "REPRO_SCRIPT"]


def _upstream(model: onnx.ModelProto, target: str, is_boundary: Callable[[str], bool]) -> tuple[list[int], set[str]]:
    """Nodes computing ``target`` back to the nearest boundary tensors, graph inputs or initializers."""
    g = model.graph
    node_of = {name: k for k, n in enumerate(g.node) for name in n.output if name}
    inits = {i.name for i in g.initializer}
    inputs = {i.name for i in g.input} - inits
    nodes: set[int] = set()
    boundary: set[str] = set()
    seen: set[str] = set()
    stack = [target]
    while stack:
        name = stack.pop()
        if not name or name in seen or name in inits:
            continue
        seen.add(name)
        if name != target and (name in inputs or is_boundary(name)):
            boundary.add(name)
            continue
        k = node_of.get(name)
        if k is None:  # read from nowhere: only a broken graph gets here; feed it
            boundary.add(name)
            continue
        nodes.add(k)
        stack.extend(node_inputs(g.node[k]))
    return sorted(nodes), boundary


def _elem_type(value: np.ndarray) -> int:
    """The ONNX element type of an array (ml_dtypes' bfloat16, and strings, included), as graphopt names it."""
    return DTYPES.get(array_dtype_name(value)) or helper.np_dtype_to_tensor_dtype(value.dtype)


def _savable(value: np.ndarray) -> np.ndarray:
    """An array ``np.load`` reads back without pickles: strings as numpy unicode (onnxruntime takes them)."""
    value = np.asarray(value)
    return value.astype(str) if value.dtype == object else value


def _describe_value(value: np.ndarray) -> str:
    """``int64 [2, 16]``, as ``ModelInput.describe`` shows an input."""
    return f"{array_dtype_name(np.asarray(value))} {list(np.shape(value))}"


def _subgraph(split: SplitModel, nodes: Sequence[int], inputs: Mapping[str, np.ndarray], output: str,
              output_value: np.ndarray, label: str) -> onnx.ModelProto:
    """A standalone model: the ``nodes`` of ``split`` with the weights they read (only those), ``inputs`` as its
    inputs and ``output`` as its output."""
    model = split.skeleton
    g = model.graph
    sub = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(sub, f, getattr(model, f))
    sub.opset_import.extend(model.opset_import)
    sub.functions.extend(model.functions)
    sub.graph.name = f"{g.name or 'graph'}_{label}"
    sub.graph.doc_string = f"graphopt bisect: smallest subgraph computing {output!r} ({label} the pass)"
    chosen = [g.node[k] for k in nodes]
    sub.graph.node.extend(chosen)
    read = {name for n in chosen for name in node_inputs(n)}
    for init in g.initializer:
        if init.name in read and init.name not in inputs:
            weight = split.weights.get(init.name)
            sub.graph.initializer.append(init if weight is None else numpy_helper.from_array(weight, init.name))
    for name, value in inputs.items():
        sub.graph.input.append(helper.make_tensor_value_info(name, _elem_type(value), list(value.shape)))
    sub.graph.output.append(helper.make_tensor_value_info(output, _elem_type(output_value), list(output_value.shape)))
    return sub


def _run_once(model: onnx.ModelProto | str | Path, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(create_session(model, "compare").run(None, dict(feed))[0])


def minimal_pair(a: onnx.ModelProto | SplitModel, b: onnx.ModelProto | SplitModel, first: TensorDiff,
                 shared: Mapping[str, str],
                 feeds: Sequence[Mapping[str, np.ndarray]], tolerance: Tolerance) -> dict[str, Any]:
    """The before- (A) and after- (B) subgraphs computing ``first`` from the nearest tensors A and B share
    (``shared``: {B name: A name}, constants excluded), with inputs for the sample that shows the largest error.
    Returns {"before": model, "before_inputs": {...}, "after": ..., "after_inputs": ..., "info": {...}}."""
    a = a if isinstance(a, SplitModel) else Model.from_proto(a).split()
    b = b if isinstance(b, SplitModel) else Model.from_proto(b).split()
    producers_a = {n: node.op_type for node in a.skeleton.graph.node for n in node.output}
    producers_b = {n: node.op_type for node in b.skeleton.graph.node for n in node.output}
    shared = {nb: na for nb, na in shared.items()
              if producers_b.get(nb, "") != "Constant" and producers_a.get(na, "") != "Constant"}
    shared_a = set(shared.values())
    nodes_b, bound_b = _upstream(b.skeleton, first.name, lambda n: n in shared)
    nodes_a, bound_a = _upstream(a.skeleton, first.name_a, lambda n: n in shared_a)
    # Every boundary value comes from A (the graph before): where B reads a shared tensor, it reads A's copy of
    # it, which agrees with B's up to the first divergence, so both subgraphs start from identical inputs.
    source_b = {nb: shared.get(nb, nb) for nb in bound_b}
    graph_inputs = set(feeds[0])
    fetch = sorted({*(n for n in source_b.values() if n not in graph_inputs),
                    *(n for n in bound_a if n not in graph_inputs), first.name_a})
    values = SubgraphRunner(a, "model before the pass").run(fetch, feeds)

    def value(name: str, k: int) -> np.ndarray:
        return _savable(feeds[k][name] if name in graph_inputs else values[name][k])

    tol = tensor_tolerance(tolerance)
    best = None
    for k in range(len(feeds)):
        ins_a = {n: value(n, k) for n in sorted(bound_a)}
        ins_b = {n: value(source_b[n], k) for n in sorted(bound_b)}
        before = _subgraph(a, nodes_a, ins_a, first.name_a, values[first.name_a][k], "before")
        out_b = None
        try:
            out_a = _run_once(before, ins_a)
            after = _subgraph(b, nodes_b, ins_b, first.name, out_a, "after")
            out_b = _run_once(after, ins_b)
            # The after-subgraph's output type comes from its own result (a pass may change a dtype).
            after = _subgraph(b, nodes_b, ins_b, first.name, out_b, "after")
        except Exception as e:  # noqa: BLE001 - reported: the cut could not be run on its own
            raise UserError(f"bisect: the cut subgraph does not run on its own ({str(e).splitlines()[0]})") from None
        if out_a.shape != out_b.shape:
            err = np.inf
            cmp = None
        else:
            cmp = compare_outputs({"t": out_a[None]}, {"t": out_b[None]}, tol).outputs[0]
            err = cmp.max_abs
        if best is None or err > best[0]:
            best = (err, k, before, ins_a, after, ins_b, cmp)
    _, k, before, ins_a, after, ins_b, cmp = best

    def ops(model: onnx.ModelProto) -> list[str]:
        return [n.op_type for n in model.graph.node]

    info = {
        "sample": k,
        "samples_tried": len(feeds),
        "before": {"output": first.name_a, "inputs": sorted(ins_a), "nodes": len(before.graph.node),
                   "ops": ops(before), "input_types": {n: _describe_value(v) for n, v in sorted(ins_a.items())}},
        "after": {"output": first.name, "inputs": sorted(ins_b), "nodes": len(after.graph.node), "ops": ops(after),
                  "input_types": {n: _describe_value(v) for n, v in sorted(ins_b.items())}},
        "metrics": None if cmp is None else {"max_abs": cmp.max_abs, "max_rel": cmp.max_rel, "cosine": cmp.cosine,
                                             "failed_on": list(cmp.failed_on)},
    }
    return {"before": before, "before_inputs": ins_a, "after": after, "after_inputs": ins_b, "info": info}


def check_reproduces(folder: Path, tolerance: Tolerance) -> dict[str, Any]:
    """Load ``before.onnx``/``after.onnx`` and their ``*_inputs.npz`` from ``folder`` into fresh onnxruntime
    sessions and compare the two outputs: ``reproduces`` is True when they differ beyond tolerance."""
    outs = {}
    for side in ("before", "after"):
        model = onnx.load(str(folder / f"{side}.onnx"))
        onnx.checker.check_model(model)
        with np.load(folder / f"{side}_inputs.npz") as data:
            feed = {k: data[k] for k in data.files}
        outs[side] = _run_once(folder / f"{side}.onnx", feed)
    if outs["before"].shape != outs["after"].shape:
        return {"reproduces": True, "reason": f"shapes differ: {list(outs['before'].shape)} vs "
                                              f"{list(outs['after'].shape)}"}
    cmp = compare_outputs({"t": outs["before"][None]}, {"t": outs["after"][None]}, tensor_tolerance(tolerance))
    o = cmp.outputs[0]
    found = {"reproduces": not o.passed, "max_abs": o.max_abs, "max_rel": o.max_rel, "cosine": o.cosine,
             "failed_on": list(o.failed_on)}
    if o.mismatches is not None:  # an integer or bool output: compared exactly
        found.update({"exact": o.expected, "mismatches": o.mismatches, "size": o.size})
    return found


# repro.py, written beside the subgraphs: the comparison without graphopt
REPRO_SCRIPT = (
    '''"""Reproduce a numeric difference found by `graphopt bisect`: run the subgraph before and after the pass on
the same inputs and compare. Needs only numpy and onnxruntime."""
import numpy as np
import onnxruntime as ort


def run(side):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(f"{side}.onnx", opts, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["Pad_Fusion"])  # as graphopt's comparisons
    with np.load(f"{side}_inputs.npz") as data:  # every input with its own dtype (token ids int64, masks bool)
        return session.run(None, {k: data[k] for k in data.files})[0]


a, b = run("before"), run("after")
if a.shape != b.shape:
    print(f"shapes differ: {a.shape} vs {b.shape}")
elif a.dtype != b.dtype:
    print(f"dtypes differ: {a.dtype} vs {b.dtype}")
elif a.dtype.kind in "biuOUS":  # integer, bool and string outputs must be equal
    print(f"{int((a != b).sum())} of {a.size} elements differ ({a.dtype} outputs must be equal)")
else:
    a, b = a.astype(np.float64), b.astype(np.float64)
    err = np.abs(a - b)
    cos = float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    print(f"max_abs {err.max() if err.size else 0.0:.3e}  cosine {cos:.8f}")
'''
)
