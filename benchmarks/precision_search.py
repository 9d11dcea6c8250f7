"""The fp32 keep-set search of ``graphopt precision`` against onnxconverter-common's ``auto_convert_mixed_precision``,
same model, same data, same tolerance, in one run.

    python -m benchmarks.precision_search [--recipe recipes/efficientnet_lite0.yaml] [--target-cosine 0.99999]
                                          [--target-top1 1.0] [--samples 20]

Model: the recipe's model after its passes (default EfficientNet-Lite0 with its real ImageNet weights). Data: the
20 labelled ImageNet images shipped in the PyPI package foolbox (``foolbox/data/imagenet_XX_LABEL.jpg``, found
without importing foolbox), preprocessed as the recipe says. Tolerance: top-1 agreement and cosine against fp32,
both measured with ``graphopt.core.verify.compare_outputs``; the default cosine 0.99999 is tight enough that
``force_fp16`` misses it, so both tools must search.

- graphopt: ``Fp16Emulator`` (built once) + ``analyse`` with ``node_trials=0`` (baselines, sensitivity per op
  type, the keep-set search with its node ranking, the GELU mode, the configs and their predicted accuracy: what
  ``graphopt precision`` does minus its worst-units report);
- onnxconverter-common: ``auto_convert_mixed_precision(model, {input: all images}, validate_fn)``, which
  converts the model to fp16 again for every attempt (a new onnxruntime session each time) and bisects the list
  of nodes to keep in fp32.

Printed: the wall time of each, the ratio, the keep-set each found (nodes kept in fp32, share of Conv/MatMul/Gemm
FLOPs left in fp16) and the accuracy of each result, checked on graphopt's emulation too. onnxconverter-common is a
benchmark-only dependency (``pip install onnxconverter-common``; it is not in graphopt's install_requires): without
it the benchmark says so and exits 0.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def foolbox_images() -> Path | None:
    """foolbox's sample-image folder, located without importing foolbox (it would import torch, eagerpy, ...)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "data"
    return folder if any(folder.glob("imagenet_*.jpg")) else None


def unshare_initializers(model):
    """The same model with every initializer read by several nodes copied per node: auto_convert's converter
    turns a shared initializer to fp16 when one reader converts, and a reader kept in fp32 (here the Clips of
    ReLU6, sharing their 0 and 6) then fails to load ("Type parameter (T) bound to different types")."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    readers: dict[str, int] = {}
    for node in out.graph.node:
        for name in node.input:
            if name in inits:
                readers[name] = readers.get(name, 0) + 1
    for node in out.graph.node:
        for k, name in enumerate(node.input):
            if readers.get(name, 0) > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or k}_{k}"
                out.graph.initializer.append(copy)
                node.input[k] = copy.name
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "efficientnet_lite0.yaml"))
    ap.add_argument("--target-cosine", type=float, default=0.99999)
    ap.add_argument("--target-top1", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args(argv)

    if importlib.util.find_spec("onnxconverter_common") is None:
        print("SKIPPED: onnxconverter-common is not installed (a benchmark-only dependency): "
              ".venv/bin/pip install onnxconverter-common")
        return 0
    images = foolbox_images()
    if images is None:
        print("SKIPPED: the foolbox sample images are not installed: .venv/bin/pip install --no-deps foolbox==3.3.4")
        return 0

    from onnxconverter_common.auto_mixed_precision import auto_convert_mixed_precision

    from graphopt.ascend.fp16_emulation import Fp16Emulator
    from graphopt.ascend.fp16_sensitivity import PrecisionSearch, Target, _model_input, analyse
    from graphopt.ascend.calibration import load_calibration
    from graphopt.commands.precision import _recipe_model
    from graphopt.commands.recipe import load_recipe
    from graphopt.core.verify import compare_outputs

    quiet = lambda msg: None  # noqa: E731
    recipe = load_recipe(args.recipe)
    model = _recipe_model(recipe, quiet)
    input_name, _, _ = _model_input(model, recipe.input.name)
    cal = load_calibration(images, list(recipe.input.shape), preprocess=recipe.preprocess, samples=args.samples,
                           batch=args.samples, pattern="imagenet_*", label_regex=r"_(\d+)\.")
    target = Target(top1=args.target_top1, cosine=args.target_cosine)
    tol = target.tolerance()
    batch = np.concatenate(cal.batches)
    print(f"{recipe.name}: {len(model.graph.node)} nodes; {cal.source}; target top-1 agreement >= {target.top1}, "
          f"cosine >= {target.cosine}")

    t0 = time.perf_counter()
    emu = Fp16Emulator(model, input_name)
    # The keep-set search as `graphopt precision` runs it, without the worst-units report (not a search step).
    result = analyse(emu, [batch], target, labels=cal.labels, node_trials=0, worst_nodes=0)
    ours_s = time.perf_counter() - t0
    predicted = result["predicted"]
    ours_keep = set(result["search"]["keep_types"])
    ours_units = [u for u in emu.units if u.ascend_type in ours_keep or u.nodes[0] in result["search"]["keep_nodes"]]
    print(f"graphopt precision: {ours_s:.1f} s ({result['trials']} trials, one session), kept in fp32: "
          f"{sorted(ours_keep) or '-'} types, {result['search']['keep_nodes'] or '-'} nodes")

    out_names = [o.name for o in model.graph.output]

    def validate(res0, res1) -> bool:
        ref = dict(zip(out_names, res0))
        got = {n: np.asarray(r, np.float32) for n, r in zip(out_names, res1)}
        return compare_outputs(ref, got, tol).passed

    attempts = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(attempts), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = auto_convert_mixed_precision(unshare_initializers(model), {input_name: batch}, validate,
                                                 keep_io_types=True)
    theirs_s = time.perf_counter() - t0
    n_attempts = attempts.getvalue().count("Running attempt")
    # Its keep-set (the nodes left in fp32) is the list it prints last, after "Done:".
    done = [line for line in attempts.getvalue().splitlines() if line.startswith("Done:")]
    blocked = ast.literal_eval(done[-1][len("Done:"):].strip()) if done else []
    blocked_units = {u.index for u in emu.units if any(n in blocked for n in u.nodes)}
    theirs_fp16 = emu.assignment("force_fp16", keep=blocked_units)
    theirs_emulated = PrecisionSearch(emu, [batch], target, cal.labels).trial(theirs_fp16)
    import onnxruntime as ort

    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs_out = dict(zip(out_names, sess.run(None, {input_name: batch})))
    ref = dict(zip(out_names, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                   .run(None, {input_name: batch})))
    theirs_ort = compare_outputs(ref, {k: np.asarray(v, np.float32) for k, v in theirs_out.items()}, tol).summary()
    print(f"auto_convert_mixed_precision: {theirs_s:.1f} s ({n_attempts} attempts, each a conversion and a new "
          f"session), kept in fp32: {len(blocked)} nodes")

    def share(fp16) -> str:
        v = emu.fp16_flop_share(fp16)
        return "-" if v is None else f"{100 * v:.1f}%"

    ours = result["search"]["result"]  # force_fp16 + the keep-set, as auto_convert's result is measured
    ours_fp16 = emu.assignment("force_fp16", keep={u.index for u in ours_units})
    rows = [("graphopt precision (keep-set search)", ours_s, len(ours_units), share(ours_fp16), ours),
            ("onnxconverter-common auto_convert_mixed_precision", theirs_s, len(blocked_units), share(theirs_fp16),
             theirs_emulated)]
    fp32_acc = result["baselines"]["fp32"]["accuracy"]
    full = result["baselines"]["force_fp16"]
    print(f"fp32 accuracy {fp32_acc}; force_fp16 (emulated): cosine {full['cosine']:.6f}, top-1 agreement "
          f"{full['top1_agreement']}, accuracy {full['accuracy']}")
    print("On graphopt's emulation (fp16 accumulation in ReduceMean, rounding at every unit):")
    print("| tool | seconds | units kept fp32 | cube FLOPs in fp16 | 1 - cosine | top-1 agreement | accuracy | "
          "target |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, sec, kept, sh, m in rows:
        print(f"| {name} | {sec:.1f} | {kept} | {sh} | {1 - m['cosine']:.2e} | {m['top1_agreement']} | "
              f"{m['accuracy']} | {'met' if m['passed'] else 'missed'} |")
    print(f"auto_convert's keep-set: {blocked[:8]}{' ...' if len(blocked) > 8 else ''}; its own result, in "
          f"onnxruntime's fp16 kernels (which accumulate in fp32): 1 - cosine {1 - theirs_ort['cosine']:.2e}, "
          f"top-1 agreement {theirs_ort['top1_agreement']}")
    print(f"graphopt's generated configs ({predicted['precision_mode']}, {json.dumps(result['configs'])}), "
          f"emulated as ATC applies them: cosine {predicted['cosine']:.6f}, top-1 agreement "
          f"{predicted['top1_agreement']}, accuracy {predicted['accuracy']}")
    ratio = theirs_s / ours_s
    print(f"ratio auto_convert_mixed_precision / graphopt precision wall time: {ratio:.2f}x")
    print("RESULT " + json.dumps({"model": recipe.name, "target": {"top1": target.top1, "cosine": target.cosine},
                                  "graphopt_s": round(ours_s, 1), "auto_convert_s": round(theirs_s, 1),
                                  "ratio": round(ratio, 2), "graphopt_trials": result["trials"],
                                  "auto_convert_attempts": n_attempts, "graphopt_kept_units": len(ours_units),
                                  "auto_convert_kept_units": len(blocked_units)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
