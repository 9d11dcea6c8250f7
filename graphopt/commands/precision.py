"""``graphopt precision``: the fp16 precision search (``graphopt.ascend.fp16_sensitivity``) on a recipe's model
(after its graph passes) or an ONNX file, written as a precision folder: ``precision.json``, ``precision.md``,
``sensitivity.png`` and ATC's config files.

Calibration data (``graphopt.ascend.calibration.feeds_calibration``): feeds of every input of the model, as
``graphopt.core.inputs`` makes them (the recipe's ``inputs:`` or the CLI's ``--input`` / ``--range``; integer and
bool inputs are fed unchanged, only float32 tensors are emulated in fp16), from an ``.npz`` (one array per input
name) or ``.npy``; for a one-input model also a folder of images (preprocessed as the recipe's ``preprocess:``
says) or of ``.bin`` files from ``graphopt data`` (with its ``labels.txt``); without data, seeded random feeds,
with a warning: random inputs rarely reach the activation outliers that make real models fp16-sensitive.
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

from ..ascend.atc import config_files
from ..ascend.calibration import feeds_calibration
from ..ascend.fp16_emulation import Fp16Emulator
from ..ascend.fp16_sensitivity import Target, analyse
from ..core.errors import UserError
from ..core.inputs import merge_specs
from ..core.model_inputs import model_inputs
from ..core.ir import load_model
from ..core.outputs import check_output_dir
from ..core.pipeline import run_pipeline
from . import apply
from .apply import recipe_inputs, write_run_dir
from .cli import add_force_argument, input_specs
from .recipe import load_recipe
from .recipe_schema import PreprocessSpec

__all__ = ["report_markdown", "plot_sensitivity", "preprocess_values", "run_precision", "add_cli"]


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
# Running the search


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def preprocess_values(spec: PreprocessSpec) -> dict[str, Any]:
    """A recipe's ``preprocess:`` as the plain settings the calibration's image reading takes
    (``graphopt.core.datasets.preprocess_image``)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def _recipe_model(recipe, progress: Callable[[str], None]) -> onnx.ModelProto:
    """The recipe's model after its graph passes (unverified; a measured mixlist is left out)."""
    src, _ = apply.source_model_path(recipe, progress)
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
    source = Path(source)
    recipe = load_recipe(source) if source.suffix in (".yaml", ".yml") else None
    out = Path(outdir) if outdir else Path("runs") / f"{recipe.name if recipe else source.stem}-precision"
    inputs_read = [*(recipe_inputs(recipe) if recipe else [source]), data, labels_file]
    check_output_dir(out, "precision", force=force, inputs=inputs_read)
    given = list(specs or [])
    where = ""
    declared: Sequence[Any] = ()
    if recipe is not None:
        name, preprocess = recipe.name, preprocess_values(recipe.preprocess)
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
            preprocess = preprocess_values(PreprocessSpec(resize=(int(min(hw) / 0.875),), crop=hw))
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
    target = Target(top1=args.target_top1, cosine=args.target_cosine)
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
                        "defaults (graphopt.core.inputs); the batch is regrouped into batches of 8 unless the model "
                        "fixes it")
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
