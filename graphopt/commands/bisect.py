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
   difference on their own (``bisect_subgraph``).

The inputs are the recipe's (``inputs:``, or the single ``input:``; ``graphopt.core.inputs``): every input of the
model, of any dtype, as ``graphopt apply`` verifies with. A subgraph's inputs are saved with their own dtypes (token ids
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
from typing import Any, Callable, Mapping

import numpy as np
import onnx

from ..core.divergence import DEFAULT_BUDGET_MB, diff_models, tensor_diff
from ..core.errors import UserError
from ..core.name_map import compose, pass_name_map, tensor_producers
from ..core.outputs import check_output_dir
from ..core.model import Model
from ..core.runner import Runner
from ..core.verify import compare_outputs
from .apply import input_plan, recipe_inputs, source_model_path, verification_feeds, write_run_dir
from .bisect_subgraph import REPRO_SCRIPT, check_reproduces, minimal_pair
from .diff import plot_diff
from .recipe import load_recipe
from .recipe_schema import Recipe

__all__ = ["bisect_recipe", "add_cli"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    model = Model.load(src, "model")  # weights held once, shared by every graph below
    original = model.split()
    tolerance = recipe.verify.tolerance
    # Every input of the model, any dtype: the recipe's inputs: (or input:) merged with the model's own, the same
    # verification set graphopt apply uses.
    plan = input_plan(recipe, original)
    feeds = verification_feeds(recipe, plan)
    input_name = recipe.input.name if recipe.input else (plan.names[0] if plan.names else None)
    progress(f"bisect: reference outputs of the input model on {len(feeds)} feed(s) of "
             f"{', '.join(plan.names) or 'no inputs'} ...")
    ref = Runner(model).run(feeds)
    graph = model.graph  # edited by the passes below
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
            checked = Model(graph)
            after = checked.snapshot()  # checked and run as it is now
            try:
                checked.check()
                got = Runner(checked).run(feeds)
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
    a = Model(before_graph).split()
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
        files["repro.py"] = REPRO_SCRIPT
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
