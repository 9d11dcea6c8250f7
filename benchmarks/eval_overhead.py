"""``graphopt eval``'s throughput against a bare onnxruntime ``session.run`` loop, same model, same batch, one run.

    python -m benchmarks.eval_overhead [--batch-sizes 1,8] [--seconds 2] [--rounds 5]

The model is EfficientNet-Lite0 (the recipe ``recipes/efficientnet_lite0.yaml``, applied without verification into
a temporary run directory); the data 64 preprocessed-size random ``.bin`` files. Per batch size and round, the bare
loop (a default ``InferenceSession``, one batch in memory, 3 warm-up calls, then calls for ``--seconds``; throughput
= images / wall time) and ``graphopt eval --backend onnxruntime`` (its reported throughput: batch / median call
latency; also its mean-based figure) run alternately. The ratio is best eval round / best bare round (as timeit
takes the best of its repeats: on a shared machine other processes only ever slow a round down); the median of
the per-round ratios is printed beside it. The target is at least 0.9: eval's number is what the model does, not
what eval adds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def bare_loop(model: Path, input_name: str, batch: np.ndarray, seconds: float) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {input_name: batch}
    for _ in range(3):
        sess.run(None, feed)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, feed)
        n += 1
    return n * len(batch) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    from graphopt.commands.apply import apply_recipe
    from graphopt.ascend.ort_backend import TimingOptions
    from graphopt.commands.evaluate import EvalOptions, evaluate
    from graphopt.commands.recipe import load_recipe

    quiet = lambda msg: None  # noqa: E731
    recipe = load_recipe(REPO / "recipes" / "efficientnet_lite0.yaml")
    with tempfile.TemporaryDirectory(prefix="eval_overhead.") as tmp:
        tmp = Path(tmp)
        apply_recipe(recipe, tmp / "run", verify=False, progress=quiet)
        model = tmp / "run" / "model.onnx"
        item = recipe.input.shape[1:]
        rng = np.random.default_rng(0)
        (tmp / "data").mkdir()
        for i in range(64):
            rng.standard_normal(item).astype(np.float32).tofile(tmp / "data" / f"img_{i:03d}.bin")
        rows = []
        for bs in sizes:
            batch = np.stack([np.fromfile(tmp / "data" / f"img_{i:03d}.bin", dtype=np.float32).reshape(item)
                              for i in range(bs)])
            bare, reported, mean_based = [], [], []
            for _ in range(args.rounds):
                bare.append(bare_loop(model, recipe.input.name, batch, args.seconds))
                opts = EvalOptions(batch_sizes=(bs,), backend="onnxruntime",
                                   timing=TimingOptions(warmup=3, min_iterations=20, min_seconds=args.seconds))
                res = evaluate(tmp / "run", tmp / "data", opts, out=tmp / "eval", log=quiet)
                reported.append(res["rows"][0]["throughput"])
                mean_based.append(res["rows"][0]["throughput_mean"])
            rows.append({"batch_size": bs, "bare_img_s": max(bare), "eval_img_s": max(reported),
                         "eval_mean_img_s": max(mean_based), "ratio": max(reported) / max(bare),
                         "ratio_mean_based": max(mean_based) / max(bare),
                         "median_round_ratio": statistics.median(r / b for r, b in zip(reported, bare)),
                         "rounds": {"bare": bare, "eval": reported}})
    print(f"EfficientNet-Lite0, onnxruntime CPU; best of {args.rounds} alternating rounds of {args.seconds:g} s each")
    print("| batch | bare session.run loop (img/s) | graphopt eval (img/s, batch/median) | eval (img/s, batch/mean) | "
          "eval / bare | mean-based / bare | median of round ratios |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['bare_img_s']:.1f} | {r['eval_img_s']:.1f} | {r['eval_mean_img_s']:.1f} | "
              f"{r['ratio']:.3f} | {r['ratio_mean_based']:.3f} | {r['median_round_ratio']:.3f} |")
    worst = min(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.3f} (target >= 0.9): {'ok' if worst >= 0.9 else 'BELOW TARGET'}")
    print("RESULT " + json.dumps({"benchmark": "eval_overhead", "rows": rows, "worst_ratio": round(worst, 4),
                                  "target": 0.9}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
