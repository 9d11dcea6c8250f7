"""What a rewrite-rule layer on onnx_ir (onnxscript's rewriter) would cost next to one on onnx-graphsurgeon.

    python -m benchmarks.rule_layer_ir [--recipes vit_b32,shiftvit] [--repeat 5]

graphopt's pipeline holds an onnx-graphsurgeon graph between passes, so rules written on gs edit it in place at no
conversion cost. Rules on onnx_ir would need, per pass, gs -> ModelProto -> onnx_ir -> ModelProto -> gs. This
measures each leg on the recipes' exported models (``source_model_path``: the cached export), the median of
``--repeat`` runs each, in this process after one untimed warm-up:
- gs: ``gs.import_onnx`` and ``gs.export_onnx`` (ModelProto -> graph view -> ModelProto);
- onnx_ir: ``onnx_ir.from_proto`` and ``onnx_ir.to_proto`` (skipped with a note when onnx-ir is not installed: it
  is a benchmark-only tool, ``pip install onnx-ir``).
Prints a markdown table and ``RESULT {json}`` lines for ``python -m benchmarks``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: first-call imports and allocator growth are not the conversion's cost
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(model: onnx.ModelProto, repeat: int) -> dict[str, float | None]:
    graph = gs.import_onnx(model)
    out: dict[str, float | None] = {
        "gs_import_s": _median_seconds(lambda: gs.import_onnx(model), repeat),
        "gs_export_s": _median_seconds(lambda: gs.export_onnx(graph), repeat),
    }
    try:
        import onnx_ir as ir
    except ImportError:
        out.update(ir_import_s=None, ir_export_s=None)
        return out
    ir_model = ir.from_proto(model)
    out["ir_import_s"] = _median_seconds(lambda: ir.from_proto(model), repeat)
    out["ir_export_s"] = _median_seconds(lambda: ir.to_proto(ir_model), repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", default="vit_b32,shiftvit")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each conversion; the median is kept")
    args = parser.parse_args(argv)

    from graphopt.commands.apply import source_model_path
    from graphopt.commands.recipe import load_recipe

    try:
        import onnx_ir  # noqa: F401 - only whether it is there
    except ImportError:
        print("onnx_ir: not installed (pip install onnx-ir); its columns are skipped", flush=True)
    results = []
    for name in args.recipes.split(","):
        src, _ = source_model_path(load_recipe(ROOT / "recipes" / f"{name}.yaml"), progress=lambda m: None)
        model = onnx.load(src)
        m = _measure(model, args.repeat)
        gs_round = m["gs_import_s"] + m["gs_export_s"]
        ir_round = None if m["ir_import_s"] is None else m["ir_import_s"] + m["ir_export_s"]
        result = {"recipe": name, "model_mb": round(src.stat().st_size / 1e6, 1), "nodes": len(model.graph.node),
                  **{k: (None if v is None else round(v, 4)) for k, v in m.items()},
                  "gs_roundtrip_s": round(gs_round, 4),
                  "ir_roundtrip_s": None if ir_round is None else round(ir_round, 4),
                  # A rule pass on onnx_ir inside graphopt's gs pipeline converts both ways on every pass.
                  "ir_rule_pass_overhead_s": None if ir_round is None else round(ir_round + gs_round, 4)}
        results.append(result)
        print("RESULT " + json.dumps(result), flush=True)

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    print()
    print("| recipe | MB | nodes | gs import s | gs export s | gs round trip s | ir import s | ir export s "
          "| ir round trip s | per-pass cost of an onnx_ir rule in a gs pipeline s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['recipe']} | {r['model_mb']:.0f} | {r['nodes']} | {f(r['gs_import_s'])} | {f(r['gs_export_s'])} "
              f"| {f(r['gs_roundtrip_s'])} | {f(r['ir_import_s'])} | {f(r['ir_export_s'])} | "
              f"{f(r['ir_roundtrip_s'])} | {f(r['ir_rule_pass_overhead_s'])} |")
    print("\nA gs rule edits the pipeline's graph in place: no conversion per pass.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
