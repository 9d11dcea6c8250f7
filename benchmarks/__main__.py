"""Run every benchmark in this folder, one after the other, and collect what each printed.

    python -m benchmarks            # all
    python -m benchmarks shift_latency eval_overhead
    python -m benchmarks --compare OLD NEW   # two runs' numbers side by side (commits or folders)

Each benchmark is a module ``benchmarks/<name>.py`` runnable on its own (``python -m benchmarks.<name>``) that
measures the things it compares side by side in one run and prints a table with the ratios. This runner writes
``bench-results/<commit>/<name>.txt`` (and any figure a benchmark draws, there too: ``GRAPHOPT_BENCH_OUT``), a
``summary.md`` and a ``summary.json`` (wall time and exit code of each,
plus any ``RESULT {json}`` line a benchmark prints), so results from two commits can be compared.
"""
from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compare"]:
        if len(argv) != 3:
            print("usage: python -m benchmarks --compare OLD NEW  (bench-results/<commit> folders or commits)",
                  file=sys.stderr)
            return 2
        from ._compare import CompareError, compare

        try:
            print(compare(argv[1], argv[2], HERE.parent / "bench-results"), end="")
        except CompareError as e:
            print(e, file=sys.stderr)
            return 2
        return 0
    names = argv or sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))
    out = HERE.parent / "bench-results" / _commit()
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name in names:
        print(f"== benchmarks.{name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], cwd=HERE.parent, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "GRAPHOPT_BENCH_OUT": str(out)})  # where figures go
        seconds = time.perf_counter() - t0
        print(proc.stdout, flush=True)
        (out / f"{name}.txt").write_text(proc.stdout)
        results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        summary.append({"benchmark": name, "exit_code": proc.returncode, "seconds": round(seconds, 1),
                        "results": results})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = ["| benchmark | exit | seconds | results |", "|---|---:|---:|---|"]
    rows += [f"| {s['benchmark']} | {s['exit_code']} | {s['seconds']} | "
             f"{'; '.join(json.dumps(r) for r in s['results']) or 'see ' + s['benchmark'] + '.txt'} |" for s in summary]
    (out / "summary.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"wrote {out}")
    return 0 if all(s["exit_code"] == 0 for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
