"""``graphopt diff``: a layer-wise comparison of two models on the same inputs, in memory-bounded batches.

The engine is ``graphopt.core.divergence`` (shared tensors, batches under a byte budget, the first divergence); this
module is the verb: its inputs as ``graphopt verify`` makes them (``graphopt.core.inputs``: the model's inputs,
``--input NAME:SHAPE[:DTYPE]``, ``--range``, ``--data FILE.npz``), a name map read from a ``report.json``, the
printed summary, the JSON report and the plot of the error along the depth of the graph.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from ..core.divergence import DEFAULT_BUDGET_MB, DiffResult, diff_models
from ..core.errors import UserError
from ..core.inputs import InputSpec, resolve_inputs
from ..core.model_inputs import model_inputs
from ..core.name_map import model_producers
from ..core.onnx_files import load_split
from ..core.wire import SplitModel

__all__ = ["seeded_feeds", "load_name_map", "plot_diff", "add_cli"]


def _noop(msg: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------------------------
# Inputs, maps, plots


def seeded_feeds(model: onnx.ModelProto | SplitModel | str | Path, samples: int, seed: int,
                 input_name: str | None = None, shape: Sequence[int] | None = None,
                 specs: Sequence[InputSpec] = ()) -> list[dict[str, np.ndarray]]:
    """Seeded feeds for every input of ``model`` (any dtype), as ``graphopt verify`` makes them
    (``graphopt.core.inputs``): ``specs`` as given, and ``input_name`` (default the first input) shaped ``shape`` when
    given."""
    specs = list(specs)
    if shape is not None:
        names = [m.name for m in model_inputs(model)]
        if not names:
            raise UserError("diff: the model has no inputs")
        specs.append(InputSpec(input_name or names[0], tuple(shape)))
    from ..core.inputs import merge_specs

    return resolve_inputs(model, merge_specs(specs), where="diff").feeds(samples, seed)


def load_name_map(path: str | Path, a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, str]:
    """{B name: A name} from a ``report.json`` (its ``name_map``, output model -> input model) or a JSON object
    of that shape; turned round when it fits A -> B better (diffing the output model against the input model)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--map {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"--map {path}: not a JSON file ({str(e).splitlines()[0]})") from None
    mapping = data.get("name_map", data) if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise UserError(f"--map {path}: expected a graphopt report.json with a name_map, or a JSON object "
                        "{name in B: name in A}")
    forward = sum(1 for k, v in mapping.items() if k in b and v in a)
    backward = sum(1 for k, v in mapping.items() if k in a and v in b)
    if max(forward, backward) == 0:
        raise UserError(f"--map {path}: none of its {len(mapping)} names are tensors of these two models")
    return mapping if forward >= backward else {v: k for k, v in mapping.items()}


def plot_diff(result: DiffResult, path: str | Path, title: str = "") -> None:
    """A PNG of the error of every compared tensor along the depth of B (its producer's topological index)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-12
    xs = [t.position for t in result.tensors]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, values, label in ((ax1, [max(t.max_abs, floor) for t in result.tensors], "max abs error"),
                              (ax2, [max(1.0 - t.cosine, floor) for t in result.tensors], "1 - cosine")):
        colors = ["tab:red" if not t.passed else "tab:blue" for t in result.tensors]
        ax.scatter(xs, values, c=colors, s=10)
        ax.plot(xs, values, color="tab:gray", linewidth=0.5, alpha=0.6)
        ax.set_yscale("log")
        ax.set_ylabel(f"{label}\n(0 drawn at {floor:g})")
        ax.grid(True, alpha=0.3)
    first = result.first
    if first is not None:
        for ax in (ax1, ax2):
            ax.axvline(first.position, color="tab:red", linestyle="--", linewidth=1)
        ax1.text(0.01, 0.96, f"first divergence: {first.name} ({first.op} node {first.node})",
                 transform=ax1.transAxes, fontsize=8, color="tab:red", va="top",
                 bbox={"facecolor": "white", "edgecolor": "tab:red", "alpha": 0.9})
    ax2.set_xlabel("depth (topological index of the producing node in B)")
    ax1.set_title(title or f"layer-wise diff: {len(result.tensors)} shared tensors, "
                           f"{len(result.divergent)} outside tolerance")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _cmd_diff(args: argparse.Namespace) -> int:
    import sys

    from .cli import comparison_tolerance, input_specs

    progress = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else _noop
    if args.budget_mb <= 0:
        raise UserError(f"--budget-mb {args.budget_mb}: expected a positive size")
    tol = comparison_tolerance(args, top1=None)  # before reading the models: a bad flag is refused at once
    # Each model read once, its weights held as arrays that every session reads in place; B's weights that equal
    # A's are A's arrays.
    a = load_split(args.a, "model A")
    b = load_split(args.b, "model B", reuse=a.weights)
    # The inputs as graphopt verify makes them: every input of A, any dtype (--input, --range, --data).
    specs, paths, primary = input_specs(args, a)
    plan = resolve_inputs(a, specs, paths=paths)
    feeds = plan.feeds(args.samples, args.seed, data=args.data, primary=primary)
    if not feeds:
        raise UserError("diff: no inputs to run the models on")
    name_map = load_name_map(args.map, model_producers(a.skeleton), model_producers(b.skeleton)) if args.map \
        else None
    result = diff_models(a, b, feeds, tolerance=tol, name_map=name_map, budget_mb=args.budget_mb,
                         stop_at_first=args.first, progress=progress)
    print(f"compared {len(result.tensors)} of {result.shared} shared tensors in {result.batches} batch(es) "
          f"({result.sessions} onnxruntime sessions, budget {args.budget_mb:g} MiB)"
          + (f"; not compared: {result.skipped}" if result.skipped else ""))
    first = result.first
    if first is None:
        print("no shared tensor is outside tolerance")
    else:
        stopped = " (stopped at the first batch with one)" if args.first else ""
        print(f"{len(result.divergent)} outside tolerance{stopped}; first divergent {first.describe()}")
        for t in result.divergent[1:1 + args.show]:
            print(f"  then {t.describe()}")
    if args.json:
        from ..core.files import atomic_write_text

        atomic_write_text(args.json, json.dumps({"inputs": plan.describe(), **result.as_dict()}, indent=2,
                                                default=str) + "\n")
        print(f"wrote {args.json}")
    if args.plot and result.tensors:
        plot_diff(result, args.plot)
        print(f"wrote {args.plot}")
    return 0 if first is None else 1


def add_cli(subparsers: Any) -> None:
    """Register ``graphopt diff``."""
    from .cli import add_comparison_arguments
    p = subparsers.add_parser("diff", help="layer-wise diff of two models: the first shared tensor that diverges "
                                           "(exit 1 when one does)")
    p.add_argument("a", help="reference model (e.g. the recipe's input model)")
    p.add_argument("b", help="model to compare (e.g. runs/<name>/model.onnx)")
    p.add_argument("--map", help="report.json of the run that made B from A (its name_map traces renamed tensors)")
    add_comparison_arguments(p, samples=1)
    p.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB,
                   help=f"MiB of tensor values held per batch, both models together (default {DEFAULT_BUDGET_MB:g})")
    p.add_argument("--first", action="store_true", help="stop after the batch holding the first divergence")
    p.add_argument("--plot", default="diff.png", help="PNG of the error along the graph depth ('' for none)")
    p.add_argument("--json", help="write every compared tensor's metrics to this JSON file")
    p.add_argument("--show", type=int, default=5, help="divergent tensors listed after the first")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    p.set_defaults(func=_cmd_diff)
