"""Two benchmark runs side by side: ``python -m benchmarks --compare OLD NEW``.

OLD and NEW are ``bench-results/<commit>`` folders, or just the commit names. Every number the benchmarks reported
(their ``RESULT`` lines in ``summary.json``) is matched by benchmark, item (recipe, model, batch size) and metric;
the table shows both values and NEW / OLD. Metrics only one run has are listed after the table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

class CompareError(Exception):
    """A run that cannot be read: the message says which and where."""


# Fields that name what a result is about rather than measure it.
IDENTITY = ("recipe", "model", "batch", "batch_size")


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, number) for every number under ``value`` (booleans are verdicts, not measurements)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))


def _item(result: dict) -> str:
    return ", ".join(f"{k}={result[k]}" for k in IDENTITY if k in result) or "-"


def flatten(summary: list[dict]) -> dict[tuple[str, str, str], float]:
    """{(benchmark, item, metric): value} of a ``summary.json``; a result's ``rows`` are items of their own."""
    out: dict[tuple[str, str, str], float] = {}
    for bench in summary:
        for result in bench.get("results", []):
            rows = result.get("rows") if isinstance(result.get("rows"), list) else []
            for r in [{k: v for k, v in result.items() if k != "rows"}, *rows]:
                item = _item(r)
                for metric, value in _leaves({k: v for k, v in r.items() if k not in IDENTITY}):
                    out[(bench["benchmark"], item, metric)] = value
        out[(bench["benchmark"], "-", "runner_seconds")] = float(bench["seconds"])
    return out


def _summary(run: str, results_dir: Path) -> tuple[str, list[dict]]:
    folder = Path(run)
    if not (folder / "summary.json").is_file():
        folder = results_dir / run
    path = folder / "summary.json"
    if not path.is_file():
        raise CompareError(f"benchmarks --compare: no summary.json for {run!r} (looked in {Path(run)} and {folder})")
    try:
        return folder.name, json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CompareError(f"benchmarks --compare: {path}: not JSON ({e})") from None


def compare(old: str, new: str, results_dir: Path) -> str:
    """The markdown table of ``old`` against ``new`` (folders or commit names under ``results_dir``)."""
    old_name, old_summary = _summary(old, results_dir)
    new_name, new_summary = _summary(new, results_dir)
    a, b = flatten(old_summary), flatten(new_summary)
    lines = [f"| benchmark | item | metric | {old_name} | {new_name} | new / old |", "|---|---|---|---:|---:|---:|"]
    for key in [k for k in b if k in a]:
        ratio = f"{b[key] / a[key]:.2f}" if a[key] else "-"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {a[key]:.4g} | {b[key]:.4g} | {ratio} |")
    only = [f"only in {name}: " + ", ".join("/".join(k) for k in keys)
            for name, keys in ((old_name, [k for k in a if k not in b]), (new_name, [k for k in b if k not in a]))
            if keys]
    return "\n".join(lines + ([""] + only if only else [])) + "\n"
