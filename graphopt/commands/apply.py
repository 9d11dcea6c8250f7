"""``graphopt apply``: recipe -> source model -> verified passes -> run directory.

The run directory is written as a whole: every file goes into a fresh temporary folder beside it, which then
replaces the old directory, so a failed or interrupted run leaves either the previous complete result or nothing.
It is marked as an apply run; an existing folder that is not one is refused before any work (``graphopt.core.outputs``).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

from ..ascend.atc import ATC_JOBS_FILE, atc_jobs, atc_script, config_files, jobs_json, kept_op_types
from ..ascend.dynamic import ModelDims
from ..ascend.op_types import absent_types
from ..core.model import Model
from ..core.onnx_files import constant_nbytes, external_data_threshold, save_model
from ..core.outputs import check_output_dir, staged_dir
from ..core.pipeline import PipelineResult, run_pipeline
from .recipe_schema import Recipe
from .report import report_json, report_markdown
from ..core.inputs import resolve_inputs
from ..core.feeds import InputPlan

__all__ = ["apply_recipe", "source_model_path", "verification_feeds", "input_plan", "write_run_dir",
           "recipe_inputs"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def source_model_path(recipe: Recipe, progress: Callable[[str], None] = _stderr) -> tuple[Path, bool]:
    """The ONNX file the recipe starts from (exported and cached when it names an exporter)."""
    if recipe.model.onnx is not None:
        return recipe.model.onnx, False
    from .export import export_cached

    first = recipe.input
    size = tuple(first.shape[1:]) if first is not None and first.shape else None
    return export_cached(recipe.model.exporter, recipe.model.args, recipe.model.checkpoint, recipe.model.opset,
                         size, recipe.model.seed, progress=progress)


def input_plan(recipe: Recipe, model) -> InputPlan:
    """The recipe's ``inputs:`` merged with ``model``'s inputs (a ``SplitModel``, ModelProto or path): every
    input's dtype, shape and values (``graphopt.core.inputs``); a spec the model contradicts is a one-line error
    naming the recipe and the YAML path."""
    return resolve_inputs(model, recipe.inputs, where=str(recipe.path or "recipe"), paths=recipe.input_paths())


def verification_feeds(recipe: Recipe, plan: InputPlan) -> list[dict]:
    """The recipe's verification set: ``verify.samples`` feeds, seeded by ``verify.seed``, with ``verify.data``
    (and each input's ``data``) where given. For a model with one float input these are the arrays
    ``verify.make_inputs`` draws, as feeds."""
    v = recipe.verify
    return plan.feeds(v.samples, v.seed, data=v.data, primary=recipe.input.name if recipe.input else None)


def write_run_dir(outdir: Path, files: dict[str, Any], executable: set[str] = frozenset(),
                  external_models: bool | None = None, *, kind: str = "apply", force: bool = False,
                  inputs: Iterable[str | Path | None] = ()) -> None:
    """Write ``files`` (name -> bytes, text, or a model: a ``Model``, saved by ``Model.save``, or a graph,
    ``SplitModel`` or ``onnx.ModelProto``, saved by ``onnx_files.save_model``; with external data ``<name>.data``
    when ``external_models`` says so or, for None, when it is large) into a fresh folder that then replaces
    ``outdir`` as a whole, marked as a ``kind`` output (``graphopt.core.outputs``: an existing ``outdir`` that is
    not one is refused unless ``force``). On any failure (an ``OSError`` becomes a one-line ``UserError``) or
    Ctrl-C, the temporary folder is removed and a previous ``outdir`` is left as it was."""
    with staged_dir(outdir, kind, force=force, inputs=inputs) as tmp:
        for name, data in files.items():
            if isinstance(data, (bytes, str)):
                (tmp / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
            elif isinstance(data, Model):
                data.save(tmp / name, external=external_models)
            else:
                save_model(data, tmp / name, external=external_models)
            if name in executable:
                os.chmod(tmp / name, 0o755)


def recipe_inputs(recipe: Recipe) -> list[Path | None]:
    """The files a recipe reads: an output folder must never hold them (``graphopt.core.outputs``)."""
    return [recipe.path, recipe.model.onnx, recipe.model.checkpoint, recipe.verify.data,
            *(s.data for s in recipe.inputs)]


def apply_recipe(recipe: Recipe, outdir: str | Path | None = None, *, verify: bool | None = None,
                 progress: Callable[[str], None] = _stderr, force: bool = False, kind: str = "apply",
                 extra_files: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the recipe and write the run directory; returns the report dict. An existing ``outdir`` that is not
    a previous run is refused before any work, unless ``force`` (``graphopt.core.outputs``). ``kind``: the command
    the folder is marked as written by (``graphopt optimize`` writes apply runs of the recipe it found);
    ``extra_files``: more files (name -> text) written into the folder with the run's own."""
    t0 = time.perf_counter()
    outdir = Path(outdir) if outdir else Path("runs") / recipe.name
    check_output_dir(outdir, kind, force=force, inputs=recipe_inputs(recipe))
    src, cached = source_model_path(recipe, progress)
    model = Model.load(src, "model")  # the weights held once, as arrays (graphopt.core.wire)
    plan = input_plan(recipe, model.split())
    had_external = model.split().had_external_data
    do_verify = recipe.verify.enabled if verify is None else verify
    inputs = verification_feeds(recipe, plan) if do_verify else None
    passes = [(p, spec.where, spec.on_fail if spec.on_fail != "stop" else recipe.verify.on_fail)
              for p, spec in zip(recipe.build_passes(), recipe.passes)]
    primary = recipe.input.name if recipe.input else (plan.names[0] if plan.names else None)
    result: PipelineResult = run_pipeline(model, passes, inputs=inputs, input_name=primary,
                                          tolerance=recipe.verify.tolerance, progress=progress,
                                          real_data=recipe.verify.data is not None)
    del model  # the result's output, edited in place
    output = result.output
    files: dict[str, Any] = {}
    if "model" in recipe.emit:
        # streamed from its arrays (Model.save), from the run's last checked split when it made one
        files["model.onnx"] = output
    atc = recipe.atc
    configs = config_files(result.configs, atc.cann)
    files.update(configs)
    # ATC may still form a type the graph lacks by fusion (LayerNorm from a decomposed layer norm): a note, not an error
    absent = absent_types(kept_op_types(result.configs), {n.op for n in output.view.nodes})
    for name in absent:
        progress(f"warning: {name} is in a keep list of the ATC configs but no op of the graph maps to it (kept: "
                 "ATC may form it by fusion)")
    if "atc" in recipe.emit:
        jobs = atc_jobs(model="model.onnx", output_stem=recipe.name, inputs=plan.atc_inputs(),
                        batch_sizes=atc.batch_sizes, soc_version=atc.soc_version, log=atc.log,
                        precision_mode=atc.precision_mode, configs=result.configs, extra_args=atc.extra_args,
                        cann=atc.cann, precision_mode_v2=atc.precision_mode_v2, dynamic=atc.dynamic,
                        model_dims=[ModelDims(i.name, tuple(i.shape), i.model.dims) for i in plan.inputs])
        files["atc.sh"] = atc_script(jobs)
        files[ATC_JOBS_FILE] = jobs_json(jobs)  # what graphopt eval reads: the jobs as records
    # External data when the source had it (the output stays a pair of files) or the model is large.
    external = had_external or constant_nbytes(output.view) > external_data_threshold()
    data_files = [f"{n}.data" for n, v in files.items() if not isinstance(v, (bytes, str)) and external]
    files.update(extra_files or {})
    report = {
        "recipe": {"name": recipe.name, "path": str(recipe.path) if recipe.path else None},
        "source": {"kind": "export" if recipe.model.exporter else "onnx", "path": str(src), "cached": cached,
                   "exporter": recipe.model.exporter, "args": dict(recipe.model.args),
                   "checkpoint": str(recipe.model.checkpoint) if recipe.model.checkpoint else None},
        # the first input (what single-input readers such as graphopt eval use), then every input
        "input": {"name": primary, "shape": list(plan[primary].shape) if primary else None},
        "inputs": plan.describe(),
        "verification": None if not do_verify else {
            "samples": len(inputs),
            "inputs": "real data" if recipe.verify.data else f"seeded normal (seed {recipe.verify.seed})",
            "tolerance": asdict(recipe.verify.tolerance)},
        "passes": [r.as_dict() for r in result.records],
        "final_verify": result.final_verify,
        "ops_before": result.ops_before,
        "ops_after": result.ops_after,
        "configs": result.configs,
        "configs_absent_types": absent,  # kept op types no op of the graph maps to (ATC may fuse them)
        "name_map": result.name_map,  # output model tensor -> input model tensor (graphopt.core.name_map)
        "files": sorted(list(files) + data_files + ["report.json", "report.md"]),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if "report" in recipe.emit:
        files["report.json"] = report_json(report)
        files["report.md"] = report_markdown(report)
    else:
        report["files"] = sorted(list(files) + data_files)
    write_run_dir(outdir, files, executable={"atc.sh"}, external_models=external, kind=kind, force=force,
                  inputs=recipe_inputs(recipe))
    report["outdir"] = str(outdir)
    return report
