"""graphopt apply against onnxslim and onnxsim on the same exported files, with the load + save floor.

    python -m benchmarks.apply_vs_tools [--recipes vit_b32,twins_pcpvt_s,shiftvit,lvvit] [--repeat 3]
                                        [--latency-reps 20] [--tasks floor,graphopt,graphopt_verify]

Each measurement runs in its own child process (fresh interpreter, so peak RSS is that task's alone), ``--repeat``
times round robin across the tasks (each round in its own order: ``_round_order``), after one untimed run of each
task that fills the children's bytecode cache (``_child_env``); the median time (and the largest peak RSS) is
reported:
- floor: onnx.load + onnx.save of the exported file;
- graphopt apply --no-verify, and graphopt apply with verification on, both cold (``GRAPHOPT_SHAPE_CACHE=0``: no
  inferred shapes from earlier runs); graphopt apply --no-verify warm (its inferred shapes cached by an untimed
  priming run, as when a recipe is applied again);
- onnxsim.simplify + save; onnxslim.slim + save (each skipped with a note when not installed: both are
  benchmark-only tools, `pip install onnxslim`);
- with ``--baseline DIR`` (a checkout of an earlier graphopt, e.g. ``git worktree add /tmp/base cf170b5``), that
  code's apply without and with verification, on the same recipes and export, in the same round robin.
graphopt's children also report the seconds its passes took (report.json): what is left, graphopt's own fixed cost
(imports, reading, the graph import and export, checks, writing), is set against the floor in ``rest/floor``. With
verification on, its onnxruntime work (every session built and run, report.json's
``final_verify.onnxruntime_seconds``) is ``verify ORT s``; ``added/ORT`` is the wall time verification added over
that work: the part of it that did not fit beside the passes.
Then onnxruntime latency of the naive export against graphopt's output at batch 1 and 8, interleaved, each timed
run after a 0.1 s pause (so the other session's spinning worker threads are idle): the table's speed-up is the
ratio of medians; the RESULT lines add the ratio of the fastest runs.
Prints a markdown table with ratios and `RESULT {json}` lines for `python -m benchmarks`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("floor", "graphopt", "graphopt_verify", "graphopt_warm", "onnxsim", "onnxslim")
BASELINE_TASKS = ("baseline", "baseline_verify")  # with --baseline
_FILE_TASKS = ("floor", "onnxsim", "onnxslim")  # their output is a file; graphopt's a run folder


def _child(task: str, src: str, out: str, recipe: str) -> None:
    t0 = time.perf_counter()
    if task == "floor":
        import onnx

        onnx.save(onnx.load(src), out)
    elif task in ("graphopt", "graphopt_verify", "graphopt_warm", *BASELINE_TASKS):
        import graphopt

        if (Path(graphopt.__file__).parent / "commands").is_dir():
            from graphopt.commands.apply import apply_recipe
            from graphopt.commands.recipe import load_recipe
        else:  # a baseline from before graphopt/commands (cf170b5: graphopt.apply, graphopt.recipe)
            from graphopt.apply import apply_recipe
            from graphopt.recipe import load_recipe

        apply_recipe(load_recipe(recipe), out, verify=task.endswith("_verify"), progress=lambda m: None)
        seconds = time.perf_counter() - t0
        report = json.loads((Path(out) / "report.json").read_text())
        passes = sum(p.get("seconds") or 0 for p in report["passes"])
        # Verification's onnxruntime work (sessions built and run), where the report has it (not before 2026-11).
        ort_seconds = (report.get("final_verify") or {}).get("onnxruntime_seconds")
        print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "passes_seconds": passes,
                          "cpu_seconds": _cpu_seconds(), "verify_ort_seconds": ort_seconds}))
        return
    elif task == "onnxsim":
        import onnx
        import onnxsim

        model, _ = onnxsim.simplify(onnx.load(src))
        onnx.save(model, out)
    elif task == "onnxslim":
        import onnx
        import onnxslim

        onnx.save(onnxslim.slim(onnx.load(src)), out)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}))


def _cpu_seconds() -> float:
    """This process's CPU time (user + system, every thread): what wall time is when the disk and the host's other
    guests are left out (writing ViT-B/32's 350 MB varies by a second between runs here)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (``ru_maxrss`` carries the peak of the process
    that forked it, here the runner's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_env(pycache: Path) -> dict[str, str]:
    """The children's environment: Python's compiled bytecode cached in ``pycache``, as a user's Python caches it.
    A host that sets ``PYTHONDONTWRITEBYTECODE`` (this one does) would otherwise have graphopt compile its own
    modules from source in every run (0.12-0.15 s), while onnx and the other tools load the bytecode pip compiled
    when it installed them. The cache is outside both checkouts (``PYTHONPYCACHEPREFIX``), so neither is written
    to; an untimed priming round fills it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONWARNINGS": "ignore", "PYTHONPYCACHEPREFIX": str(pycache)}


def _output(folder: Path, task: str) -> Path:
    """Where ``task`` writes in ``folder``: a model file for the tools, the run folder itself for graphopt."""
    return folder / "model.onnx" if task in _FILE_TASKS else folder


def _measure(task: str, src: Path, out: Path, recipe: Path, baseline: Path | None, env: dict[str, str]
             ) -> dict | None:
    # graphopt runs cold (no inferred shapes cached, as on a first run) except graphopt_warm, which a priming run
    # has given its cached shapes (a recipe applied again).
    cold = {"GRAPHOPT_SHAPE_CACHE": "0"} if task in ("graphopt", "graphopt_verify", *BASELINE_TASKS) else {}
    # A baseline runs from its own tree (this script too, so the child is the same code), its recipe its own.
    where = baseline if task in BASELINE_TASKS else None
    if where is not None:
        recipe = where / "recipes" / recipe.name
        cold["PYTHONPATH"] = str(where)
    # The previous task's output flushed first, untimed: else its dirty pages (onnx.save does not sync; 350 MB for
    # ViT-B/32) are written back during this task, and whichever task follows the floor pays for both.
    out.parent.mkdir(parents=True, exist_ok=True)
    os.sync()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", task, str(src), str(out),
                           str(recipe)], cwd=where or ROOT, capture_output=True, text=True,
                          env={**env, **cold})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {task}: failed ({last})", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _round_order(tasks: list[str], k: int) -> list[str]:
    """Round ``k``'s order of ``tasks``: row ``k`` of a Williams design, in which every task follows every other
    one equally often within rounds over a cycle (``len(tasks)`` rounds, twice that for an odd count). A fixed order
    gave ViT-B/32's apply 1.14-1.34x the baseline's time (CPU time too) in two runs of 5 rounds, against 0.89x in
    10 alternating runs: a task's time moves by a third with what ran before it (the floor's 353 MB write)."""
    n = len(tasks)
    if n < 2:
        return list(tasks)
    first, lo, hi = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    r = k % (n if n % 2 == 0 else 2 * n)
    row = [(i + r) % n for i in first]
    return [tasks[i] for i in (reversed(row) if r >= n else row)]  # odd n: the mirrored square follows


def _rss_over_size(rss_mib: float, size_mb: float) -> float:
    """Peak RSS (MiB, as VmHWM reports it) over a file size in MB (10^6 bytes)."""
    return rss_mib * 1.048576 / size_mb


def _latency(naive: Path, optimized: Path, input_name: str, item_shape: list[int], batch: int,
             reps: int) -> tuple[float, float, float, float]:
    """Milliseconds per run: (naive median, optimized median, naive fastest, optimized fastest)."""
    import numpy as np
    import onnxruntime as ort

    from benchmarks._timing import interleaved

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                for name, p in (("naive", naive), ("optimized", optimized))}
    x = np.random.default_rng(0).standard_normal((batch, *item_shape)).astype(np.float32)
    times = interleaved(sessions, {name: {input_name: x} for name in sessions}, reps)
    naive_t, opt_t = times["naive"], times["optimized"]
    return (statistics.median(naive_t) * 1e3, statistics.median(opt_t) * 1e3, min(naive_t) * 1e3,
            min(opt_t) * 1e3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, metavar=("TASK", "SRC", "OUT", "RECIPE"))
    parser.add_argument("--recipes", default="vit_b32,twins_pcpvt_s,shiftvit,lvvit")
    parser.add_argument("--latency-reps", type=int, default=20,
                        help="timed runs per session for the latency comparison (0: none)")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"the measurements to make, comma-separated (default all: {','.join(TASKS)})")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each task (round robin across tasks); the median time is reported")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier graphopt to measure beside this one")
    parser.add_argument("--latency", nargs=6, metavar=("NAIVE", "OPTIMIZED", "INPUT", "ITEM_SHAPE", "BATCH", "REPS"))
    bench_out = os.environ.get("GRAPHOPT_BENCH_OUT")  # set by `python -m benchmarks`: its results folder
    parser.add_argument("--plot", default=str(Path(bench_out) / "apply_vs_tools.png") if bench_out else None,
                        help="PNG of time and peak RSS per tool and recipe (default: none when run alone)")
    args = parser.parse_args(argv)
    if args.latency:
        naive, optimized, name, item, batch, reps = args.latency
        print(json.dumps(_latency(Path(naive), Path(optimized), name, [int(d) for d in item.split(",")], int(batch),
                                  int(reps))))
        return 0
    if args.child:
        _child(*args.child)
        return 0

    from graphopt.commands.apply import source_model_path
    from graphopt.commands.recipe import load_recipe

    results = []
    primed: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        env = _child_env(Path(tmp) / "pycache")
        baseline = _baseline_tree(args.baseline, Path(tmp)) if args.baseline else None
        for name in args.recipes.split(","):
            recipe_path = ROOT / "recipes" / f"{name}.yaml"
            recipe = load_recipe(recipe_path)
            src, _ = source_model_path(recipe, progress=lambda m: None)
            size_mb = src.stat().st_size / 1e6
            print(f"{name}: {src} ({size_mb:.0f} MB)", flush=True)
            tasks = []
            for task in args.tasks.split(","):
                if task not in TASKS:
                    parser.error(f"--tasks: unknown task {task!r} (tasks: {', '.join(TASKS)})")
                if task in ("onnxsim", "onnxslim"):
                    try:
                        __import__(task)
                    except ImportError:
                        print(f"  {task}: not installed (pip install {task}); skipped", flush=True)
                        continue
                tasks.append(task)
            if baseline is not None:
                tasks += [t for t in BASELINE_TASKS if t.replace("baseline", "graphopt") in tasks]
            runs: dict[str, list[dict]] = {t: [] for t in tasks}
            # Untimed: each tool's modules compiled once (graphopt_warm's priming below, each recipe, does it too).
            for task in [t for t in tasks if t not in primed and t != "graphopt_warm"]:
                primed.add(task)
                prime = Path(tmp) / f"prime-{task}"
                _measure(task, src, _output(prime, task), recipe_path, baseline, env)
                shutil.rmtree(prime, ignore_errors=True)  # a child that failed may not have made it
            if "graphopt_warm" in tasks:  # untimed: caches shapes
                _measure("graphopt_warm", src, Path(tmp) / f"{name}-prime", recipe_path, None, env)
            for k in range(args.repeat):  # round robin: a slow spell of the host hits every task alike
                for task in _round_order(tasks, k):
                    r = _measure(task, src, _output(Path(tmp) / f"{name}-{task}", task), recipe_path, baseline, env)
                    if r:
                        runs[task].append(r)
            m = {}
            for task in tasks:
                if not runs[task]:
                    m[task] = None
                    continue
                times = [r["seconds"] for r in runs[task]]
                m[task] = {"seconds": statistics.median(times),
                           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[task])}
                if "passes_seconds" in runs[task][0]:
                    m[task]["passes"] = statistics.median(r["passes_seconds"] for r in runs[task])
                    m[task]["cpu"] = statistics.median(r["cpu_seconds"] for r in runs[task])
                    ort = [r["verify_ort_seconds"] for r in runs[task] if r.get("verify_ort_seconds") is not None]
                    m[task]["ort"] = statistics.median(ort) if ort else None
                spread = f" (median of {len(times)}: {min(times):.2f}-{max(times):.2f})" if len(times) > 1 else ""
                print(f"  {task}: {m[task]['seconds']:.2f} s{spread}, peak RSS {m[task]['peak_rss_mb']:.0f} MB",
                      flush=True)
            item = list(recipe.input.shape[1:])
            lat = {}
            optimized = Path(tmp) / f"{name}-graphopt" / "model.onnx"
            if optimized.is_file() and args.latency_reps > 0:
                for bs in (1, 8):
                    # In a child too: Linux children inherit the parent's peak RSS, so the parent stays small.
                    lat[bs] = tuple(json.loads(subprocess.run(
                        [sys.executable, "-m", "benchmarks.apply_vs_tools", "--latency", str(src), str(optimized),
                         recipe.input.name, ",".join(map(str, item)), str(bs), str(args.latency_reps)],
                        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]))
                    print(f"  latency bs{bs}: naive {lat[bs][0]:.1f} ms, graphopt {lat[bs][1]:.1f} ms (median; fastest "
                          f"{lat[bs][2]:.1f} / {lat[bs][3]:.1f} ms: {lat[bs][2] / lat[bs][3]:.2f}x)", flush=True)

            def sec(task):
                return m.get(task)["seconds"] if m.get(task) else None

            def ratio(a, b):
                return None if a is None or b is None else a / b

            ort = (m.get("graphopt_verify") or {}).get("ort")  # None without a verify run or before 2026-11
            result = {
                "recipe": name, "model_mb": round(size_mb, 1),
                **{f"{t}_s": (round(sec(t), 2) if sec(t) is not None else None) for t in m},
                **{f"{t}_rss_mb": round(m[t]["peak_rss_mb"]) for t in m if m[t]},
                "graphopt_over_floor": ratio(sec("graphopt"), sec("floor")),
                "graphopt_passes_s": round(m["graphopt"]["passes"], 2) if m.get("graphopt") else None,
                # graphopt's own fixed cost: its time less its passes' (medians of each).
                "rest_over_floor": ratio(sec("graphopt") - m["graphopt"]["passes"], sec("floor"))
                if m.get("graphopt") and sec("floor") else None,
                **{f"{t}_cpu_s": round(m[t]["cpu"], 2) for t in m if m[t] and "cpu" in m[t]},
                "graphopt_over_baseline": ratio(sec("graphopt"), sec("baseline")),
                "cpu_over_baseline": ratio(m["graphopt"]["cpu"], m["baseline"]["cpu"])
                if m.get("graphopt") and m.get("baseline") else None,
                "verify_over_baseline": ratio(sec("graphopt_verify"), sec("baseline_verify")),
                "graphopt_over_onnxslim": ratio(sec("graphopt"), sec("onnxslim")),
                "warm_over_onnxslim": ratio(sec("graphopt_warm"), sec("onnxslim")),
                "graphopt_over_onnxsim": ratio(sec("graphopt"), sec("onnxsim")),
                "verify_over_noverify": ratio(sec("graphopt_verify"), sec("graphopt")),
                # Verification's onnxruntime work, and how much of it shows as added wall time (below 1: the rest
                # ran beside the passes).
                "verify_ort_s": None if ort is None else round(ort, 2),
                "verify_added_over_ort": ratio(sec("graphopt_verify") - sec("graphopt"), ort)
                if ort and m.get("graphopt") else None,
                "rss_over_model_size": _rss_over_size(m["graphopt"]["peak_rss_mb"], size_mb) if m.get("graphopt")
                else None,
                **{f"speedup_bs{bs}": round(v[0] / v[1], 3) for bs, v in lat.items()},
                # Noise only ever adds time: the fastest runs' ratio is the speed-up a quiet host shows.
                **{f"speedup_bs{bs}_fastest": round(v[2] / v[3], 3) for bs, v in lat.items()},
            }
            results.append(result)
            print("RESULT " + json.dumps(result), flush=True)

    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    print()
    print("| recipe | MB | floor s | graphopt s | passes s | +verify s | warm s | onnxsim s | onnxslim s | /floor "
          "| rest/floor | /onnxslim | warm/onnxslim | verify/off | verify ORT s | added/ORT | RSS/size "
          "| ORT speedup bs1 | bs8 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['recipe']} | {r['model_mb']:.0f} | {f(r.get('floor_s'))} | {f(r.get('graphopt_s'))} | "
              f"{f(r.get('graphopt_passes_s'))} | {f(r.get('graphopt_verify_s'))} | {f(r.get('graphopt_warm_s'))} | "
              f"{f(r.get('onnxsim_s'))} | {f(r.get('onnxslim_s'))} | {f(r['graphopt_over_floor'])} | "
              f"{f(r['rest_over_floor'])} | {f(r['graphopt_over_onnxslim'])} | {f(r['warm_over_onnxslim'])} | "
              f"{f(r['verify_over_noverify'])} | {f(r.get('verify_ort_s'))} | {f(r.get('verify_added_over_ort'))} | "
              f"{f(r['rss_over_model_size'])} | {f(r.get('speedup_bs1'))} | "
              f"{f(r.get('speedup_bs8'))} |")
    if baseline is not None:
        print(f"\nAgainst the baseline ({args.baseline}), the same runs:\n")
        print("| recipe | baseline s | graphopt s | / baseline | CPU s: baseline | graphopt | / baseline "
              "| baseline + verify s | graphopt + verify s | / baseline |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['recipe']} | {f(r.get('baseline_s'))} | {f(r.get('graphopt_s'))} | "
                  f"{f(r['graphopt_over_baseline'])} | {f(r.get('baseline_cpu_s'))} | {f(r.get('graphopt_cpu_s'))} | "
                  f"{f(r['cpu_over_baseline'])} | {f(r.get('baseline_verify_s'))} | "
                  f"{f(r.get('graphopt_verify_s'))} | {f(r['verify_over_baseline'])} |")
    print("\nTargets (issue 8): ViT-B/32 graphopt/onnxslim <= 0.2, /floor <= 2, RSS/size <= 3, verify/off <= 2; "
          "ShiftViT ORT speedup bs1 >= 1.7. (issue 16): verify/off <= 1.5, /floor <= 1.5, no slower than before.")
    if args.plot and results:
        plot(results, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def _baseline_tree(tree: Path, tmp: Path) -> Path:
    """``tree`` as a tree the baseline runs from with ``PYTHONPATH``: as it is when ``graphopt.passes`` is a folder
    of its own; else (passes/ and models/ beside graphopt/, installed under its namespace) an overlay in ``tmp`` of
    symbolic links, so ``tree`` itself is never written to."""
    tree = tree.resolve()
    if not (tree / "graphopt").is_dir() or not (tree / "recipes").is_dir():
        raise SystemExit(f"--baseline {tree}: not a graphopt checkout (no graphopt/ or recipes/)")
    if (tree / "graphopt" / "passes").exists() or not (tree / "passes").is_dir():
        return tree
    overlay = tmp / "baseline"
    (overlay / "graphopt").mkdir(parents=True)
    for entry in (tree / "graphopt").iterdir():
        (overlay / "graphopt" / entry.name).symlink_to(entry)
    for name in ("passes", "models"):
        if (tree / name).is_dir():
            (overlay / "graphopt" / name).symlink_to(tree / name)
    (overlay / "recipes").symlink_to(tree / "recipes")
    return overlay


# The tools in the plot, in order, with their labels.
_TOOLS = (("floor", "onnx load + save"), ("graphopt", "graphopt"), ("graphopt_verify", "graphopt + verify"),
          ("graphopt_warm", "graphopt warm"), ("onnxsim", "onnxsim"), ("onnxslim", "onnxslim"))


def plot(results: list[dict], path: Path) -> None:
    """Grouped bars per recipe: wall time of each tool, and its peak RSS over the model file's size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = [r["recipe"] for r in results]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(_TOOLS)
    for k, (tool, label) in enumerate(_TOOLS):
        xs = [i + (k - (len(_TOOLS) - 1) / 2) * width for i in range(len(recipes))]
        seconds = [r.get(f"{tool}_s") or 0.0 for r in results]
        rss = [_rss_over_size(r.get(f"{tool}_rss_mb") or 0.0, r["model_mb"]) for r in results]
        ax_t.bar(xs, seconds, width, label=label)
        ax_m.bar(xs, rss, width, label=label)
    for ax, title in ((ax_t, "wall time (s), median"), (ax_m, "peak RSS / model file size")):
        ax.set_xticks(range(len(recipes)), recipes)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    target = ax_m.axhline(3.0, color="k", linestyle=":", linewidth=1, label="issue 8's target on ViT-B/32: 3x")
    ax_m.legend(handles=[target], fontsize=8)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
