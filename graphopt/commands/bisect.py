"""``graphopt bisect``: the first pass of a recipe that breaks numerics, and the smallest subgraph that shows it.

1. The recipe's passes run in order; after each one that changed the graph, the model so far is compared with
   the *input* model (not the previous pass), so a drift that builds up over several passes is pinned too. The
   first prefix outside the recipe's tolerance names the responsible pass (a pass that raises, or leaves an
   invalid graph, is named as such). ``on_fail: skip`` passes are dropped as ``graphopt apply`` would.
2. ``graphopt diff`` of the graph before that pass against the graph after it, through the pass's name map,
   finds the first divergent tensor (if that pass only tipped a drift over the edge and no tensor diverges on its
   own, the input model is diffed against the graph after the pass instead).
3. The subgraph is cut from the divergent tensor back to its nearest inputs the two graphs share: those tensors
   (values from the graph before, where they agree with the graph after) become the subgraph's inputs. The
   before- and after-subgraphs are saved with their inputs for the single sample that shows the largest error,
   and the saved files are loaded back into fresh onnxruntime sessions to confirm that they reproduce the
   difference on their own.

The inputs are the recipe's (``inputs:``, or the single ``input:``; ``graphopt.core.inputs``): every input of the model,
of any dtype, as ``graphopt apply`` verifies with. A subgraph's inputs are saved with their own dtypes (token ids
stay int64, a mask stays bool), and integer and bool tensors are compared exactly.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .apply import input_plan, recipe_inputs, source_model_path, verification_feeds, write_run_dir
from .diff import (DEFAULT_BUDGET_MB, SubgraphRunner, TensorDiff, diff_models, plot_diff, tensor_diff,
                   tensor_tolerance)
from ..core.errors import UserError
from ..core.ir import load_split, node_inputs
from ..core.name_map import compose, pass_name_map, tensor_producers
from ..core.outputs import check_output_dir
from ..core.protoio import SplitModel, check_split, graph_from_split, split_graph, split_model
from .recipe import Recipe
from ..core.tolerance import Tolerance
from ..core.verify import Runner, compare_outputs, comparison_session

__all__ = ["bisect_recipe", "minimal_pair", "check_reproduces", "add_cli"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The smallest failing subgraph


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
    """The ONNX element type of an array (ml_dtypes' bfloat16, and strings, included), as graphopt.core.inputs names
    it."""
    from ..core.inputs import DTYPES, _name_of_array

    return DTYPES.get(_name_of_array(value)) or helper.np_dtype_to_tensor_dtype(value.dtype)


def _savable(value: np.ndarray) -> np.ndarray:
    """An array ``np.load`` reads back without pickles: strings as numpy unicode (onnxruntime takes them)."""
    value = np.asarray(value)
    return value.astype(str) if value.dtype == object else value


def _describe_value(value: np.ndarray) -> str:
    """``int64 [2, 16]``, as graphopt.core.inputs shows an input."""
    from ..core.inputs import _name_of_array

    return f"{_name_of_array(np.asarray(value))} {list(np.shape(value))}"


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
    session, _ = comparison_session(str(model) if isinstance(model, (str, Path)) else model.SerializeToString())
    return np.asarray(session.run(None, dict(feed))[0])


def minimal_pair(a: onnx.ModelProto | SplitModel, b: onnx.ModelProto | SplitModel, first: TensorDiff,
                 shared: Mapping[str, str],
                 feeds: Sequence[Mapping[str, np.ndarray]], tolerance: Tolerance) -> dict[str, Any]:
    """The before- (A) and after- (B) subgraphs computing ``first`` from the nearest tensors A and B share
    (``shared``: {B name: A name}, constants excluded), with inputs for the sample that shows the largest error.
    Returns {"before": model, "before_inputs": {...}, "after": ..., "after_inputs": ..., "info": {...}}."""
    a = a if isinstance(a, SplitModel) else split_model(a)
    b = b if isinstance(b, SplitModel) else split_model(b)
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


_REPRO = '''"""Reproduce a numeric difference found by `graphopt bisect`: run the subgraph before and after the pass on
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


# ---------------------------------------------------------------------------------------------------------------
# The recipe walk


def _npz(values: Mapping[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **values)
    return buf.getvalue()


def bisect_recipe(recipe: Recipe, outdir: str | Path | None = None, *, budget_mb: float = DEFAULT_BUDGET_MB,
                  progress: Callable[[str], None] = _stderr, force: bool = False) -> dict[str, Any]:
    """Find the first pass of ``recipe`` that breaks numerics and write the smallest failing subgraph to
    ``outdir`` (default ``runs/<name>-bisect``). Returns the report (also ``bisect.json``); its ``responsible``
    is None when the recipe's output model is within tolerance, and then nothing is written. An existing
    ``outdir`` that is not an earlier bisect folder is refused before any work, unless ``force``
    (``graphopt.core.outputs``)."""
    t0 = time.perf_counter()
    outdir = Path(outdir) if outdir else Path("runs") / f"{recipe.name}-bisect"
    inputs_read = recipe_inputs(recipe)
    check_output_dir(outdir, "bisect", force=force, inputs=inputs_read)
    src, _ = source_model_path(recipe, progress)
    original = load_split(src, "model")  # weights held once, shared by every graph below
    tolerance = recipe.verify.tolerance
    # Every input of the model, any dtype: the recipe's inputs: (or input:) merged with the model's own, the same
    # verification set graphopt apply uses.
    plan = input_plan(recipe, original)
    feeds = verification_feeds(recipe, plan)
    input_name = recipe.input.name if recipe.input else (plan.names[0] if plan.names else None)
    progress(f"bisect: reference outputs of the input model on {len(feeds)} feed(s) of "
             f"{', '.join(plan.names) or 'no inputs'} ...")
    ref = Runner(original).run(feeds)
    graph = graph_from_split(original)
    traced = {n: n for n in tensor_producers(graph)}
    specs = recipe.passes
    passes = recipe.build_passes()
    rows: list[dict[str, Any]] = []
    responsible = None
    before_graph = after = pass_map = None
    for k, (p, spec) in enumerate(zip(passes, specs), 1):
        on_fail = spec.on_fail if spec.on_fail != "stop" else recipe.verify.on_fail
        label = f"[{k}/{len(passes)}] {p.name}"
        before_graph = graph.copy()  # shares weights: cheap
        names_before = tensor_producers(graph)
        row: dict[str, Any] = {"name": p.name, "where": spec.where}
        rows.append(row)
        try:
            result = p(graph)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            if on_fail == "skip":
                row["status"] = "skipped"
                graph = before_graph
                progress(f"{label}: raised {type(e).__name__}: {e}; dropped (on_fail: skip), as apply would")
                continue
            responsible = {"reason": "raised", "detail": f"{type(e).__name__}: {e}"}
        else:
            if not result.changed:
                row["status"] = "unchanged"
                progress(f"{label}: unchanged")
                continue
            graph.cleanup().toposort()
            names_after = tensor_producers(graph)
            pass_map = pass_name_map(names_before, names_after, result.renamed, {t.name for t in graph.outputs})
            after = split_graph(graph)
            try:
                check_split(after)
                got = Runner(after).run(feeds)
            except onnx.checker.ValidationError as e:
                responsible = {"reason": "invalid graph", "detail": str(e).strip().splitlines()[0]}
            except UserError as e:
                responsible = {"reason": "rejected by onnxruntime", "detail": str(e)}
            else:
                cmp = compare_outputs(ref, got, tolerance)
                row["verify"] = cmp.summary()
                if cmp.passed:
                    row["status"] = "applied"
                    traced = compose(pass_map, traced)
                    progress(f"{label}: within tolerance of the input model (max_abs {cmp.summary()['max_abs']:.2e})")
                    continue
                if on_fail == "skip":
                    row["status"] = "skipped"
                    graph = before_graph
                    progress(f"{label}: outside tolerance; dropped (on_fail: skip), as apply would")
                    continue
                responsible = {"reason": "broke numerics", "detail": cmp.describe("the input model")}
        row["status"] = "responsible"
        responsible.update({"index": k, "name": p.name, "where": spec.where})
        progress(f"{label}: {responsible['reason']}: {responsible['detail']}")
        break
    report: dict[str, Any] = {"recipe": recipe.name, "source": str(src), "input": input_name,
                              "inputs": plan.describe(),
                              "tolerance": asdict(tolerance), "passes": rows, "responsible": responsible,
                              "first_divergent": None, "subgraph": None}
    if responsible is None or responsible["reason"] != "broke numerics":
        report["seconds"] = round(time.perf_counter() - t0, 3)
        if responsible is not None:
            report["files"] = ["bisect.json"]
            write_run_dir(outdir, {"bisect.json": json.dumps(report, indent=2, default=str) + "\n"}, kind="bisect",
                          force=force, inputs=inputs_read)
            report["outdir"] = str(outdir)
        return report

    progress(f"bisect: layer-wise diff of the graph before {responsible['name']} against the graph after it ...")
    a = split_graph(before_graph)
    result = diff_models(a, after, feeds, tolerance=tolerance, name_map=pass_map, budget_mb=budget_mb,
                         progress=progress)
    report["compared_with"] = "the graph before the pass"
    if result.first is None:
        # The pass only tipped a drift over the edge: no tensor diverges across it alone.
        progress("bisect: no tensor diverges across that pass alone; diffing against the input model ...")
        a = original
        result = diff_models(a, after, feeds, tolerance=tolerance, name_map=compose(pass_map, traced),
                             budget_mb=budget_mb, progress=progress)
        report["compared_with"] = "the input model"
    # The subgraph's inputs are cut at compared tensors: shared, computed, and of one shape in both graphs.
    shared = {t.name: t.name_a for t in result.tensors}
    report["diff"] = {k: v for k, v in result.as_dict().items() if k != "tensors"}
    files: dict[str, bytes | str] = {}
    if result.tensors:
        with tempfile.TemporaryDirectory(prefix="graphopt-bisect-") as tmp:
            plot_diff(result, Path(tmp) / "diff.png",
                      f"{responsible['name']} ({responsible['where']}): error along the graph depth")
            files["diff.png"] = (Path(tmp) / "diff.png").read_bytes()
    first = result.first
    if first is not None:
        report["first_divergent"] = asdict(first)
        progress(f"bisect: first divergent {first.describe()}; cutting the smallest subgraph ...")
        pair = minimal_pair(a, after, first, shared, feeds, tolerance)
        for side in ("before", "after"):
            files[f"{side}.onnx"] = pair[side].SerializeToString()
            files[f"{side}_inputs.npz"] = _npz(pair[f"{side}_inputs"])
        files["repro.py"] = _REPRO
        with tempfile.TemporaryDirectory(prefix="graphopt-bisect-") as tmp:
            for name in ("before.onnx", "before_inputs.npz", "after.onnx", "after_inputs.npz"):
                (Path(tmp) / name).write_bytes(files[name])
            pair["info"]["check"] = check_reproduces(Path(tmp), tolerance)
        report["subgraph"] = pair["info"]
    report["files"] = sorted([*files, "bisect.json"])
    report["seconds"] = round(time.perf_counter() - t0, 3)
    files["bisect.json"] = json.dumps(report, indent=2, default=str) + "\n"
    write_run_dir(outdir, files, kind="bisect", force=force, inputs=inputs_read)
    report["outdir"] = str(outdir)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _cmd_bisect(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    if args.budget_mb <= 0:
        raise UserError(f"--budget-mb {args.budget_mb}: expected a positive size")
    recipe = load_recipe(args.recipe)
    report = bisect_recipe(recipe, args.output, budget_mb=args.budget_mb,
                           progress=_stderr if args.verbose else (lambda m: None), force=args.force)
    for i, row in enumerate(report["passes"], 1):
        v = row.get("verify")
        shown = "" if not v else f"  (vs input model: max_abs {v['max_abs']:.2e}, cosine {v['cosine']:.7f})"
        print(f"{i}. {row['name']} ({row['where']}): {row['status']}{shown}")
    r = report["responsible"]
    if r is None:
        print("the recipe's output model is within tolerance of its input model: nothing to bisect")
        return 0
    print(f"responsible: pass {r['name']} ({r['where']}) {r['reason']}: {r['detail']}")
    first = report.get("first_divergent")
    if first:
        t = tensor_diff(first)
        print(f"first divergent {t.describe()}; compared with {report['compared_with']}")
    sub = report.get("subgraph")
    if sub:
        check = sub["check"]
        print(f"smallest subgraph: before {sub['before']['nodes']} node(s) {sub['before']['ops']}, after "
              f"{sub['after']['nodes']} node(s) {sub['after']['ops']}, inputs {sub['after']['inputs']}; "
              f"reproduces on its own in onnxruntime: {'yes' if check['reproduces'] else 'NO'}"
              + (f" ({check['mismatches']} of {check['size']} elements differ)" if "mismatches" in check else
                 f" (max_abs {check['max_abs']:.3g}, cosine {check['cosine']:.8f})" if "max_abs" in check else ""))
    print(f"wrote {report['outdir']}/: {', '.join(report['files'])}")
    return 1


def add_cli(subparsers: Any) -> None:
    """Register ``graphopt bisect``."""
    from .cli import add_force_argument

    p = subparsers.add_parser("bisect", help="find the first pass of a recipe that breaks numerics and save the "
                                             "smallest subgraph showing it (exit 1 when one does)")
    p.add_argument("recipe")
    p.add_argument("-o", "--output", help="folder for the subgraphs and bisect.json (default runs/<name>-bisect)")
    p.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB,
                   help=f"MiB of tensor values per diff batch (default {DEFAULT_BUDGET_MB:g})")
    add_force_argument(p, "DIR")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr (and the libraries' own log lines)")
    p.set_defaults(func=_cmd_bisect)
