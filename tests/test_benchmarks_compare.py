"""python -m benchmarks --compare: two runs' numbers matched by benchmark, item and metric."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks._compare import compare, flatten

ROOT = Path(__file__).resolve().parent.parent


def _run(folder: Path, graphopt_s: float, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    summary = [
        {"benchmark": "apply_vs_tools", "exit_code": 0, "seconds": 60.0, "results": [
            {"recipe": "vit_b32", "model_mb": 352.6, "graphopt_s": graphopt_s, "onnxslim_s": 6.0,
             "speedup_bs1": 1.2, **(extra or {})}]},
        {"benchmark": "eval_overhead", "exit_code": 0, "seconds": 30.0, "results": [
            {"benchmark": "eval_overhead", "worst_ratio": 0.95, "target": 0.9,
             "rows": [{"batch_size": 1, "ratio": 0.97}, {"batch_size": 8, "ratio": 0.95}]}]},
        {"benchmark": "diff_memory", "exit_code": 0, "seconds": 20.0, "results": [
            {"benchmark": "diff_memory", "ratio": 2.17, "met": True}]},
    ]
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_flatten_keys_every_number_by_benchmark_item_and_metric(tmp_path):
    flat = flatten(json.loads((_run(tmp_path / "a", 1.8) / "summary.json").read_text()))
    assert flat[("apply_vs_tools", "recipe=vit_b32", "graphopt_s")] == 1.8
    assert flat[("eval_overhead", "batch_size=8", "ratio")] == 0.95
    assert flat[("eval_overhead", "-", "worst_ratio")] == 0.95
    assert flat[("diff_memory", "-", "runner_seconds")] == 20.0
    assert not any(k[2] == "met" for k in flat)  # a verdict, not a measurement


def test_compare_shows_both_values_and_the_ratio(tmp_path):
    old, new = _run(tmp_path / "abc123", 2.0), _run(tmp_path / "def456", 1.5, {"graphopt_rss_mb": 480})
    table = compare(str(old), str(new), tmp_path / "unused")
    assert table.splitlines()[0] == "| benchmark | item | metric | abc123 | def456 | new / old |"
    assert "| apply_vs_tools | recipe=vit_b32 | graphopt_s | 2 | 1.5 | 0.75 |" in table
    assert "| eval_overhead | batch_size=1 | ratio | 0.97 | 0.97 | 1.00 |" in table
    assert "only in def456: apply_vs_tools/recipe=vit_b32/graphopt_rss_mb" in table


def test_compare_by_commit_name_and_bad_runs_exit_2(tmp_path):
    results = tmp_path / "bench-results"
    _run(results / "abc123", 2.0)
    _run(results / "def456", 1.0)
    assert "| 2 | 1 | 0.50 |" in compare("abc123", "def456", results)
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--compare", str(results / "abc123"),
                           str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("benchmarks --compare: no summary.json for") and "nope" in proc.stderr
    (results / "broken").mkdir()
    (results / "broken" / "summary.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--compare", str(results / "broken"),
                           str(results / "abc123")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "not JSON" in proc.stderr
