"""onnxruntime CPU latency of ShiftViT Shift-T/light: the naive export (60 ScatterND shift chains and their index
arithmetic) against the same model after ``replace_shift_scatter`` (and, with ``--simplify``, after onnxsim too).

    python -m benchmarks.shift_latency                      # batch 1 and 8
    python -m benchmarks.shift_latency --batches 1 --reps 30 --simplify

All variants are loaded first and checked to give the same outputs; then, per batch size, each gets warm-up runs
and the timed repetitions are interleaved (variant order rotated every round) so drift on a shared machine hits
all of them alike. Prints medians (and quartiles), throughput and the ratio to the naive model, then one
``RESULT {json}`` line per batch size for ``python -m benchmarks``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Sequence

import numpy as np
import onnx

from benchmarks._timing import interleaved

__all__ = ["build_variants", "measure", "main"]


def build_variants(simplify: bool, progress=print) -> dict[str, onnx.ModelProto]:
    """The naive export and its rewritten forms, keyed by a short label."""
    from graphopt.commands.export import export_cached
    from graphopt.passes.replace_shift_scatter import ReplaceShiftScatter
    from graphopt.testing import run_pass

    path, cached = export_cached("shiftvit_t_light", progress=progress)
    naive = onnx.load(str(path))
    t0 = time.perf_counter()
    rewritten, result = run_pass(naive, ReplaceShiftScatter())
    progress(f"replace_shift_scatter: {result.stats['chains_rewritten']} chains, "
             f"{result.stats['scatternd_removed']} ScatterND removed, skipped {result.stats['skipped']} "
             f"({time.perf_counter() - t0:.1f} s); nodes {len(naive.graph.node)} -> {len(rewritten.graph.node)}")
    variants = {"naive": naive, "replace_shift_scatter": rewritten}
    if simplify:
        from graphopt.passes.simplify import Simplify

        t0 = time.perf_counter()
        simplified, _ = run_pass(rewritten, Simplify())
        progress(f"simplify: nodes {len(rewritten.graph.node)} -> {len(simplified.graph.node)} "
                 f"({time.perf_counter() - t0:.1f} s)")
        variants["replace_shift_scatter+simplify"] = simplified
    return variants


def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Default (all) optimisations: what a deployment would run.
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def measure(sessions: dict, batch: int, reps: int, warmup: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per run for each session, warm-up first, then ``reps`` interleaved rounds (``_timing``)."""
    x = np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
    return interleaved(sessions, feeds, reps, warmup)


def _output_drift(sessions: dict) -> dict[str, float]:
    """Max |output - naive output| per variant, on one batch of 2."""
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    outs = {n: s.run(None, {s.get_inputs()[0].name: x})[0] for n, s in sessions.items()}
    return {n: float(np.abs(o - outs["naive"]).max()) for n, o in outs.items() if n != "naive"}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.shift_latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=15, help="timed runs per variant and batch size")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--simplify", action="store_true", help="also time the rewritten model after onnxsim")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    variants = build_variants(args.simplify)
    sessions = {name: _session(m, args.threads) for name, m in variants.items()}
    drift = ", ".join(f"{n} {d:.3g}" for n, d in _output_drift(sessions).items())
    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider, {args.threads} threads; "
          f"max |output - naive output|: {drift}")
    header = f"{'batch':>5}  {'variant':<32} {'median ms':>10} {'p25 ms':>9} {'p75 ms':>9} {'img/s':>8} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for batch in args.batches:
        times = measure(sessions, batch, args.reps, args.warmup)
        base = statistics.median(times["naive"])
        result = {"benchmark": "shift_latency", "batch": batch, "threads": args.threads, "reps": args.reps}
        for name, ts in times.items():
            med = statistics.median(ts)
            q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [med, med, med]
            print(f"{batch:>5}  {name:<32} {med * 1e3:>10.2f} {q[0] * 1e3:>9.2f} {q[2] * 1e3:>9.2f} "
                  f"{batch / med:>8.1f} {base / med:>7.2f}x")
            result[f"{name}_median_ms"] = round(med * 1e3, 3)
            result[f"{name}_speedup"] = round(base / med, 3)
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
