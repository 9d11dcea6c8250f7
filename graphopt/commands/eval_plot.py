"""The throughput plot of ``graphopt eval``: throughput against batch size, one line per evaluated run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["plot_throughput"]


def plot_throughput(results: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Throughput against batch size (log2 axis), one line per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    sizes: set[int] = set()
    for res in results:
        pts = [(r["batch_size"], r["throughput"]) for r in res["rows"] if r["throughput"]]
        if not pts:
            continue
        xs, ys = zip(*pts)
        sizes.update(xs)
        ax.plot(xs, ys, marker="o", label=f"{res['name']} ({res['backend']})")
        for x, y in pts:
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    if sizes:
        ax.set_xticks(sorted(sizes))
        ax.set_xticklabels([str(s) for s in sorted(sizes)])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (batch / median latency)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    first = results[0] if results else {}
    ax.set_title(f"throughput: {first.get('name', '')} on {first.get('device', {}).get('device', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
