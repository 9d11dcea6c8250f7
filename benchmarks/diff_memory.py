"""``graphopt diff`` keeps memory bounded: ViT-B/32 against a slightly perturbed copy of itself.

Peak RSS of a child process running ``graphopt diff A.onnx B.onnx`` (``resource.getrusage`` in that child),
against the size of the model file. Target: below 4x the file size (marking every tensor as an output at once, as
Polygraphy does, holds every activation; copying the protobuf per run holds the weights again and again).

    python -m benchmarks.diff_memory [--budget-mb 64] [--samples 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["vit_b32_onnx", "perturbed_copy", "measure", "main"]

TARGET_RATIO = 4.0

# Linux carries a process's RSS high-water mark across fork and exec into ru_maxrss: the parent stays small
# (model export and perturbation run in a child of their own) so the diff child's figure is its own. VmHWM (reset
# by exec) is printed beside it as a cross-check.
_CHILD = """
import json, resource, sys
from graphopt.commands.cli import main
code = main(sys.argv[1:])
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("@@" + json.dumps({"exit": code, "peak_rss": peak_kb * 1024, "vm_hwm": hwm_kb * 1024}))
"""

_PREPARE = """
import json, sys
from pathlib import Path
from benchmarks.diff_memory import perturbed_copy, vit_b32_onnx
tmp = Path(sys.argv[1])
a = vit_b32_onnx(tmp)
name = perturbed_copy(a, tmp / "vit_b32_perturbed.onnx")
print("@@" + json.dumps({"a": str(a), "b": str(tmp / "vit_b32_perturbed.onnx"), "perturbed": name}))
"""


def _child(code: str, args: list[str]) -> tuple[dict, list[str], subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    lines = proc.stdout.splitlines()
    result = next((json.loads(line[2:]) for line in lines if line.startswith("@@")), None)
    if result is None:
        raise SystemExit(f"child failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return result, [line for line in lines if not line.startswith("@@")], proc


def vit_b32_onnx(tmp: Path) -> Path:
    """ViT-B/32 (random weights): the ``vit_b32`` exporter through the export cache when it exists, else timm's
    ``vit_base_patch32_224`` exported here."""
    try:
        from graphopt.commands.export import export_cached, get_exporter

        get_exporter("vit_b32")
    except Exception as e:  # noqa: BLE001 - the exporter is not there yet
        print(f"(no vit_b32 exporter: {e}; exporting timm's vit_base_patch32_224 directly)", file=sys.stderr)
    else:
        path, _ = export_cached("vit_b32", progress=lambda m: print(m, file=sys.stderr))
        return path
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch32_224", pretrained=False).eval()
    out = tmp / "vit_b32.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(out), dynamo=False, opset_version=14,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return out


def perturbed_copy(src: Path, dst: Path, scale: float = 1.001) -> str:
    """``src`` with one mid-network weight matrix scaled by ``scale``; returns the initializer's name."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    big = [i for i in model.graph.initializer if int(np.prod(i.dims)) >= 1 << 16]
    target = big[len(big) // 2]
    value = numpy_helper.to_array(target) * np.float32(scale)
    target.CopyFrom(numpy_helper.from_array(value.astype(np.float32), target.name))
    onnx.save(model, str(dst))
    return target.name


def measure(a: Path, b: Path, budget_mb: float, samples: int, plot: Path) -> dict:
    """Run ``graphopt diff a b`` in a child process; its exit code, peak RSS (bytes) and output lines."""
    t0 = time.perf_counter()
    result, output, _ = _child(_CHILD, ["diff", str(a), str(b), "--budget-mb", str(budget_mb),
                                        "--samples", str(samples), "--plot", str(plot)])
    return {**result, "seconds": time.perf_counter() - t0, "output": output}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-mb", type=float, default=64.0)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-") as tmp:
        tmp = Path(tmp)
        prepared, _, proc = _child(_PREPARE, [str(tmp)])
        sys.stderr.write(proc.stderr[-2000:] if "no vit_b32 exporter" in proc.stderr else "")
        a, b, name = Path(prepared["a"]), Path(prepared["b"]), prepared["perturbed"]
        r = measure(a, b, args.budget_mb, args.samples, tmp / "diff.png")
        size = a.stat().st_size
    ratio = r["peak_rss"] / size
    print(f"graphopt diff, ViT-B/32 against a copy with {name!r} scaled by 1.001 "
          f"(budget {args.budget_mb:g} MiB, {args.samples} sample(s)):")
    for line in r["output"]:
        print(f"  | {line}")
    print(f"model file size : {size / 2**20:8.1f} MiB")
    print(f"peak RSS (diff) : {r['peak_rss'] / 2**20:8.1f} MiB  (getrusage ru_maxrss in the child; VmHWM "
          f"{r['vm_hwm'] / 2**20:.1f} MiB)")
    verdict = "met" if ratio < TARGET_RATIO else "MISSED"
    print(f"ratio           : {ratio:8.2f}x  (target < {TARGET_RATIO:g}x: {verdict})")
    print(f"wall time       : {r['seconds']:8.1f} s  (diff exit code {r['exit']}: 1 = a divergence was found)")
    print("RESULT " + json.dumps({"benchmark": "diff_memory", "model_mib": round(size / 2**20, 1),
                                  "peak_rss_mib": round(r["peak_rss"] / 2**20, 1),
                                  "ratio": round(ratio, 2), "target_ratio": TARGET_RATIO,
                                  "met": ratio < TARGET_RATIO, "budget_mb": args.budget_mb,
                                  "seconds": round(r["seconds"], 1)}))
    return 0 if ratio < TARGET_RATIO and r["exit"] == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
