"""``graphopt precision``: the fp16 precision search (``graphopt.ascend.fp16_sensitivity``) on a recipe's model
(after its graph passes) or an ONNX file, written as a precision folder: ``precision.json``, ``precision.md``,
``sensitivity.png`` and ATC's config files.

Calibration data (``graphopt.ascend.calibration.feeds_calibration``): feeds of every input of the model, as
``graphopt.core.inputs`` makes them (the recipe's ``inputs:`` or the CLI's ``--input`` / ``--range``; integer and
bool inputs are fed unchanged, only float32 tensors are emulated in fp16), from an ``.npz`` (one array per input
name) or ``.npy``; for a one-input model also a folder of images (preprocessed as the recipe's ``preprocess:``
says, or for an .onnx ``--recipe``'s or ``--mean`` / ``--std`` / ``--scale``: never a default, since models differ,
and always printed) or of ``.bin`` files from ``graphopt data`` (with its ``labels.txt``); without data, seeded
random feeds, with a warning: random inputs rarely reach the activation outliers that make real models
fp16-sensitive. ``--holdout`` keeps a share of the items out of the search and reports the keep-set on them.

The folder and the report are named for the recipe, or for an .onnx of a graphopt run (``runs/x/model.onnx``) the
run (``runs/x-precision``), so that two runs' reports do not replace each other.
"""
from __future__ import annotations

import argparse
from fractions import Fraction
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
from ..ascend.calibration import check_holdout, feeds_calibration, split_holdout
from ..ascend.fp16_emulation import Fp16Emulator
from ..ascend.fp16_sensitivity import Target, analyse
from ..ascend.precision_report import fmt_metric, plot_sensitivity, report_markdown
from ..core.errors import UserError
from ..core.inputs import merge_specs
from ..core.model_inputs import model_inputs
from ..core.onnx_files import load_model
from ..core.outputs import check_output_dir, marker_kind
from ..core.pipeline import run_pipeline
from . import apply
from .apply import recipe_inputs, write_run_dir
from .cli import add_force_argument, input_specs
from .recipe import load_recipe
from .recipe_schema import PreprocessSpec

__all__ = ["preprocess_values", "report_name", "image_preprocess", "describe_preprocess", "run_precision", "add_cli"]


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


def report_name(source: Path, recipe: Any = None, preprocess_recipe: Any = None) -> str:
    """What a precision folder and its report are called: the recipe's name; for an .onnx of a graphopt run
    (``runs/x/model.onnx``) the run's folder; else ``--recipe``'s name, else the file's stem."""
    if recipe is not None:
        return recipe.name
    folder = source.resolve().parent
    if source.name == "model.onnx" or marker_kind(folder) is not None:
        return folder.name
    return preprocess_recipe.name if preprocess_recipe is not None else source.stem


def image_preprocess(model: onnx.ModelProto, primary: str | None, recipe: Any = None,
                     flags: Mapping[str, Any] | None = None) -> tuple[dict[str, Any] | None, str]:
    """How images become the model's input, and where that comes from: the recipe's ``preprocess:``, with any of
    ``flags`` (``mean``, ``std``, ``scale``, ``interpolation``) over it; without a recipe, ``mean`` and ``std``
    must be given (no default is assumed: ImageNet's and EfficientNet-Lite's differ) and resize / crop follow the
    model's input (crop its H, W; resize the shorter side to crop / 0.875). None when neither says."""
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    if recipe is not None:
        values = {**preprocess_values(recipe.preprocess), **given}
        return values, f"recipe {recipe.name}" + (f" with --{', --'.join(sorted(given))}" if given else "")
    if "mean" not in given or "std" not in given:
        return None, ""
    ins = model_inputs(model)
    m = next((i for i in ins if i.name == primary), ins[0] if ins else None)
    if m is None or m.dims is None or len(m.dims) != 4 or not all(isinstance(d, int) and d > 0 for d in m.dims[-2:]):
        raise UserError("--mean/--std: the model's input has no fixed image size (N, C, H, W) to crop to; give "
                        "--recipe RECIPE with a preprocess: section")
    hw = tuple(m.dims[-2:])
    spec = PreprocessSpec(resize=(int(min(hw) / 0.875),), crop=hw, **{k: v for k, v in given.items()
                                                                        if k in ("interpolation", "scale")},
                          mean=tuple(given["mean"]), std=tuple(given["std"]))
    return preprocess_values(spec), "--" + ", --".join(sorted(given))


def describe_preprocess(pre: Mapping[str, Any], source: str) -> str:
    resize = "x".join(str(v) for v in pre["resize"])
    return (f"resize {resize} ({pre['interpolation']}), crop {pre['crop'][0]}x{pre['crop'][1]}, "
            f"(pixel * {pre['scale']:g} - mean {list(pre['mean'])}) / std {list(pre['std'])} (from {source})")


def run_precision(source: str | Path, *, data: str | Path | None = None, target: Target = Target(),
                  outdir: str | Path | None = None, samples: int = 64, seed: int = 0, node_trials: int = 24,
                  worst_nodes: int = 5, reduce_accumulation: str = "fp16", labels_file: str | None = None,
                  label_regex: str | None = None, pattern: str | None = None, batch: int = 8,
                  progress: Callable[[str], None] = _stderr, force: bool = False, specs: Sequence[Any] | None = None,
                  paths: Mapping[str, str] | None = None, primary: str | None = None, holdout: float | None = None,
                  preprocess_recipe: str | Path | None = None,
                  image_flags: Mapping[str, Any] | None = None, sensitivity: bool = False) -> dict[str, Any]:
    """``graphopt precision``: analyse a recipe's model (after its passes) or an ONNX file; write the report. An
    existing ``outdir`` that is not an earlier precision folder is refused before any work, unless ``force``
    (``graphopt.core.outputs``). The inputs: every input of the model (``feeds_calibration``), as the recipe's
    ``inputs:`` says, or ``specs`` (``--input`` / ``--range``: ``cli.input_specs``, over the recipe's).
    ``holdout``: the share of the calibration items held out of the search and measured afterwards
    (``split_holdout``). A folder of images is preprocessed as ``image_preprocess`` says (the recipe, or
    ``preprocess_recipe`` for an .onnx, with ``image_flags`` over it); the report names it."""
    source = Path(source)
    if holdout is not None:
        check_holdout(holdout)
    recipe = load_recipe(source) if source.suffix in (".yaml", ".yml") else None
    if recipe is not None and preprocess_recipe is not None:
        raise UserError(f"--recipe {preprocess_recipe}: the model is a recipe already ({source}); --recipe is for "
                        "an .onnx")
    pre_recipe = load_recipe(preprocess_recipe) if preprocess_recipe is not None else None
    name = report_name(source, recipe, pre_recipe)
    out = Path(outdir) if outdir else Path("runs") / f"{name}-precision"
    inputs_read = [*(recipe_inputs(recipe) if recipe else [source]), data, labels_file]
    check_output_dir(out, "precision", force=force, inputs=inputs_read)
    given = list(specs or [])
    where = ""
    declared: Sequence[Any] = ()
    if recipe is not None:
        model = _recipe_model(recipe, progress)
        given = merge_specs(recipe.inputs, given)
        paths = {**recipe.input_paths(), **(paths or {})}
        where = str(recipe.path or "recipe")
        primary = primary or (recipe.input.name if recipe.input else None)
        declared = recipe.verify.tolerance.outputs
    else:
        model = load_model(source, "model")
    preprocess, pre_source = image_preprocess(model, primary, recipe or pre_recipe, image_flags)
    images = data is not None and Path(data).is_dir() and not any(Path(data).glob("*.bin"))
    if images and preprocess is None:
        raise UserError(f"--data {data}: a folder of images needs its preprocessing: --recipe RECIPE (its "
                        "preprocess: section) or --mean and --std (with --scale, default 1/255)")
    if images:
        progress(f"precision: images preprocessed as {describe_preprocess(preprocess, pre_source)}")
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
    held = None
    if holdout is not None:
        cal, held = split_holdout(cal, holdout, regrouped, batch)
        progress(f"precision: {held.items} of {cal.items + held.items} calibration items held out")
    result = analyse(emu, cal.batches, target, labels=cal.labels, node_trials=node_trials,
                     worst_nodes=worst_nodes, fixed_batch=not regrouped, progress=progress, outputs=declared,
                     sensitivity_when_met=sensitivity,
                     holdout=held.batches if held else (), holdout_labels=held.labels if held else None)
    first_feed = cal.batches[0] if cal.batches and isinstance(cal.batches[0], Mapping) else {}
    inputs = [{**d, "shape": list(np.shape(first_feed[d["name"]]))} if d["name"] in first_feed else d
              for d in plan.describe()]  # the shape of a calibration batch, as regrouped
    result["model"] = {"name": name, "source": str(source), "input": emu.input_name, "inputs": inputs}
    result["calibration"] = {"source": cal.source, "items": cal.items,
                             "labelled": len(cal.labels) if cal.labels else 0, "warning": cal.warning,
                             "preprocess": describe_preprocess(preprocess, pre_source) if images else None,
                             "holdout": held.source if held else None}
    result["emulation"] = {**emu.stats, "reduce_accumulation": reduce_accumulation,
                           "build_seconds": round(build_seconds, 2)}
    files: dict[str, bytes | str] = {"precision.json": json.dumps(result, indent=2, default=float) + "\n",
                                     "precision.md": report_markdown(result, f"fp16 precision: {name}")}
    if not result.get("sensitivity_skipped"):  # nothing to plot when force_fp16 met the target unasked
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "sensitivity.png"
            plot_sensitivity(result, png)
            files["sensitivity.png"] = png.read_bytes()
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
                           paths=paths, primary=primary, holdout=args.holdout, preprocess_recipe=args.recipe,
                           image_flags={"mean": args.mean, "std": args.std, "scale": args.scale,
                                        "interpolation": args.interpolation}, sensitivity=args.sensitivity)
    b = result["baselines"]
    for mode in ("fp32", "force_fp16"):
        m = b[mode]
        acc = "" if m.get("accuracy") is None else f", accuracy {m['accuracy']:.3f}"
        print(f"{mode}: cosine {m['cosine']:.6f}, top-1 agreement {fmt_metric(m, 'top1_agreement', '.3f')}{acc}")
    p = result["predicted"]
    if p:
        acc = "" if p.get("accuracy") is None else f", accuracy {p['accuracy']:.3f}"
        share = "-" if p.get("fp16_flop_share") is None else f"{100 * p['fp16_flop_share']:.1f}%"
        print(f"generated configs ({p['precision_mode']}): cosine {p['cosine']:.6f}, top-1 agreement "
              f"{fmt_metric(p, 'top1_agreement', '.3f')}{acc}; cube FLOPs in fp16 {share}")
    h = result.get("holdout")
    if h:
        for what, key in (("keep-set", "keep_set"), ("generated configs", "predicted")):
            m = h[key]
            print(f"held out ({h['items']} items), {what}: cosine {m['cosine']:.6f}, top-1 agreement "
                  f"{fmt_metric(m, 'top1_agreement', '.3f')}: target {'met' if m['passed'] else 'missed'}")
    print(f"configs: {json.dumps(result['configs'])}")
    print(f"wrote {result['outdir']}/: {', '.join(result['files'])}")
    return 0 if not p or p["passed"] else 1


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: numbers separated by commas, e.g. 127 or 0.485,0.456,0.406")


def _fraction(text: str) -> float:
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r}: a number or a fraction, e.g. 1/255")


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("precision", help="measure fp16 sensitivity per op type (ATC's precision modes "
                                                "emulated in onnxruntime), find the smallest fp32 keep-set "
                                                "meeting a target, write ATC's precision configs")
    p.add_argument("model", metavar="RECIPE_OR_MODEL", help="a recipe (its model after its passes) or an .onnx")
    p.add_argument("--data", help="calibration data: an .npz with one array per input name (first axis the items), "
                                  "a .npy for the first input, or for a one-input model a folder of images "
                                  "(preprocessed per the recipe, --recipe or --mean/--std) or of .bin files "
                                  "(graphopt data); default seeded random inputs")
    p.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE[:DTYPE]",
                   help="an input's shape (batch first) and dtype, as graphopt verify takes it, e.g. "
                        "input_ids:1,32:int64 (repeatable); inputs not given take the model's shape and graphopt's "
                        "defaults (graphopt.core.inputs); the batch is regrouped into batches of 8 unless the model "
                        "fixes it")
    p.add_argument("--range", action="append", default=[], metavar="NAME:LO,HI",
                   help="values of an input drawn from [LO, HI), e.g. input_ids:0,30522 (repeatable)")
    p.add_argument("--target-top1", type=float, default=1.0, help="top-1 agreement with fp32 to keep (default 1.0)")
    p.add_argument("--target-cosine", type=float, default=0.999, help="cosine with fp32 to keep (default 0.999)")
    p.add_argument("-o", "--output", help="output folder (default runs/<name>-precision, <name> the recipe's, or the "
                                          "run folder's for runs/<name>/model.onnx)")
    add_force_argument(p, "DIR")
    p.add_argument("--samples", type=int, default=64, help="calibration items used at most (default 64)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help="`<file> <class>` lines for an image folder (accuracy is then reported)")
    g.add_argument("--label-from-name", metavar="REGEX", help=r"class from the image name, e.g. '_(\d+)\.'")
    p.add_argument("--glob", help="which images of the --data folder, e.g. 'imagenet_*'")
    p.add_argument("--holdout", type=float, metavar="FRACTION",
                   help="hold this share of the calibration items out of the search (spread evenly) and report the "
                        "keep-set's metrics on them, e.g. 0.25")
    p.add_argument("--recipe", help="for an .onnx: the recipe whose preprocess: section reads a folder of images "
                                    "(and names the report unless the .onnx is a run's model.onnx)")
    p.add_argument("--mean", type=_floats, metavar="M[,M,M]",
                   help="images: (pixel * scale - mean) / std, per channel or one value (e.g. 127 or "
                        "0.485,0.456,0.406); with --std, instead of or over --recipe")
    p.add_argument("--std", type=_floats, metavar="S[,S,S]", help="images: see --mean (e.g. 128 or 0.229,0.224,0.225)")
    p.add_argument("--scale", type=_fraction, help="images: pixel scale before mean/std, e.g. 1/255 (the default "
                                                   "without a recipe) or 1")
    p.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"],
                   help="images: resize filter (default bilinear without a recipe)")
    p.add_argument("--node-trials", type=int, default=24, help="units measured one by one (default 24)")
    p.add_argument("--worst-nodes", type=int, default=5, help="worst units reported (default 5)")
    p.add_argument("--sensitivity", action="store_true",
                   help="measure the sensitivity per op type and the worst units (and plot sensitivity.png) also "
                        "when force_fp16 meets the target; by default they are skipped then (nothing to search)")
    p.add_argument("--reduce-accumulation", choices=["fp16", "fp32"], default="fp16",
                   help="how fp16 ReduceMean/ReduceSum accumulate (fp16: Ascend310 high-performance kernels; "
                        "fp32: Ascend310P/910)")
    p.set_defaults(func=_cmd_precision)
