"""The porting knowledge library (``graphopt optimize``) on models no rewrite was written for.

    python -m benchmarks.library [--models all|zoo|recipes|NAME,...] [--latency-rounds 15]

Models: the timm zoo of the test suite (tests/corpus.py: shrunk architectures with random weights, exports cached)
and the six recipes' source models. For each: the library run to a fixed point with every rewrite verified
(``graphopt.commands.optimize.optimize_model``, no speed gate), node counts before / after against onnxslim's on
the same file (``pip install onnxslim``; skipped with a note when absent), onnxruntime latency of the input and
the optimized model (``graphopt.core.latency.race``: interleaved, one thread each, medians), and the time taken.
Then hits per rewrite across the models. Prints markdown tables and ``RESULT {json}`` lines.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("vit_b32", "twins_pcpvt_s", "shiftvit", "lvvit", "bit", "efficientnet_lite0")


def _zoo() -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from corpus import ZOO, export_zoo_model

    return {spec.name: export_zoo_model(spec) for spec in ZOO}


def _recipe_models() -> dict[str, Path]:
    from graphopt.commands.apply import source_model_path
    from graphopt.commands.recipe import load_recipe

    return {name: source_model_path(load_recipe(ROOT / "recipes" / f"{name}.yaml"), lambda msg: None)[0]
            for name in RECIPES}


def _onnxslim_nodes(path: Path) -> int | None:
    try:
        import onnxslim
    except ImportError:
        return None
    import onnx

    try:
        return len(onnxslim.slim(onnx.load(str(path))).graph.node)
    except Exception:  # noqa: BLE001 - a model onnxslim cannot take is a '-' in its column
        return None


def measure(name: str, path: Path, latency_rounds: int) -> dict:
    from graphopt.commands.optimize import optimize_model
    from graphopt.core.forms import export_graph, graph_from_split
    from graphopt.core.inputs import resolve_inputs
    from graphopt.core.latency import race
    from graphopt.core.onnx_files import load_split
    from graphopt.core.pass_infra import library_passes
    from graphopt.core.tolerance import Tolerance

    split = load_split(path)
    nodes_before = len(split.skeleton.graph.node)
    feeds = resolve_inputs(split, []).feeds(2, 0)
    t0 = time.perf_counter()
    kept, attempts, result = optimize_model(split, list(library_passes().values()), feeds, Tolerance(),
                                            progress=lambda msg: None)
    seconds = time.perf_counter() - t0
    row = {"model": name, "nodes": nodes_before, "nodes_graphopt": len(result.skeleton.graph.node),
           "nodes_onnxslim": _onnxslim_nodes(path), "kept": kept, "seconds": round(seconds, 2),
           "hits": {a.rewrite: a.hits for a in attempts if a.decision == "kept"},
           "dropped": {a.rewrite: a.decision for a in attempts if a.decision != "kept"}}
    if latency_rounds and kept:
        outcome = race(export_graph(graph_from_split(split)), export_graph(graph_from_split(result)),
                       feeds[0], rounds=latency_rounds)
        row.update(latency_ms=[round(outcome.a_ms, 3), round(outcome.b_ms, 3)], wins=outcome.wins,
                   p_value=round(outcome.p_value, 4))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="all", help="all | zoo | recipes | comma-separated names")
    parser.add_argument("--latency-rounds", type=int, default=15, help="interleaved timed pairs per model (0: none)")
    args = parser.parse_args(argv)
    from graphopt.core.quiet import quiet_libraries

    quiet_libraries()
    models = {**(_zoo() if args.models != "recipes" else {}), **(_recipe_models() if args.models != "zoo" else {})}
    if args.models not in ("all", "zoo", "recipes"):
        wanted = args.models.split(",")
        models = {k: v for k, v in models.items() if k in wanted}
    import importlib.util

    if importlib.util.find_spec("onnxslim") is None:
        print("note: onnxslim is not installed (pip install onnxslim): its column is '-'")
    rows = []
    for name, path in models.items():
        print(f"== {name}", file=sys.stderr, flush=True)
        rows.append(measure(name, path, args.latency_rounds))
        print("RESULT " + json.dumps(rows[-1]), flush=True)
    print("| model | nodes | graphopt optimize | onnxslim | rewrites kept (hits) | ORT ms before -> after | "
          "speed-up | seconds |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        lat = r.get("latency_ms")
        hits = ", ".join(f"{k} {v}" for k, v in r["hits"].items()) or "-"
        speed = f"{lat[0] / lat[1]:.2f}x (p {r['p_value']:.3f})" if lat else "-"
        print(f"| {r['model']} | {r['nodes']} | {r['nodes_graphopt']} | {r['nodes_onnxslim'] or '-'} | {hits} | "
              f"{f'{lat[0]:.2f} -> {lat[1]:.2f}' if lat else '-'} | {speed} | {r['seconds']} |")
    per_rewrite: dict[str, list[int]] = collections.defaultdict(list)
    for r in rows:
        for k, v in r["hits"].items():
            per_rewrite[k].append(v)
    from graphopt.core.pass_infra import library_passes

    print()
    print("| rewrite | models hit | total hits |")
    print("|---|---:|---:|")
    for name in library_passes():
        hits = per_rewrite.get(name, [])
        print(f"| {name} | {len(hits)} of {len(rows)} | {sum(hits)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
