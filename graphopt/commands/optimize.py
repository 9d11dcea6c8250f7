"""``graphopt optimize MODEL.onnx``: the porting knowledge library run to a fixed point, every rewrite verified.

Each round tries every rewrite of the library (``Pass.library``; ``--only`` / ``--skip`` choose) in turn on the
model as the rewrites before it left it. A rewrite that changes the graph is checked (``onnx.checker``) and run in
onnxruntime on the same inputs as the graph before it, held to the tolerance (``graphopt.core.verify``); one that
breaks numerics or raises is dropped, with the reason in the table. With ``--gate speed`` a verified rewrite is kept
only when onnxruntime also runs the graph measurably faster (``graphopt.core.latency``: interleaved timings and a
sign test). Rounds repeat until one changes nothing (at most ``--rounds``).

The run directory is then written by ``graphopt apply`` itself, from ``recipe.yaml``: the kept rewrites in the
order they applied, on the same model and inputs. So the directory is an apply run (model, report, ATC hand-off),
each kept rewrite verified once more as apply verifies, and ``graphopt apply DIR/recipe.yaml`` reproduces it. The
search's own table is ``optimize.md`` / ``optimize.json`` beside them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..core.errors import GraphoptError, UserError, closest
from ..core.input_defaults import initializer_inputs
from ..core.inputs import InputSpec, resolve_inputs
from ..core.latency import race
from ..core.model import Model
from ..core.outputs import check_output_dir
from ..core.pass_infra import Pass, all_passes, library_passes
from ..core.pipeline import run_pipeline
from ..core.runner import Runner
from ..core.tolerance import Tolerance
from ..core.verify import compare_outputs
from ..core.wire import SplitModel
from .inspect import listed

__all__ = ["Attempt", "optimize_model", "recipe_text", "attempts_table", "add_cli"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Attempt:
    """One rewrite tried once: what it hit, its error against the graph before it, the latency change (with the
    speed gate), and what became of it ("kept", "not faster", "broke numerics", "raised")."""

    round: int
    rewrite: str
    hits: int
    max_abs: float | None
    cosine: float | None
    latency_ms: tuple[float, float] | None
    decision: str
    detail: str = ""


def choose_rewrites(only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[str]:
    """The library's rewrites, in order, narrowed by ``only`` / ``skip``; an unknown name is a one-line error."""
    library = list(library_passes())
    for flag, names in (("--only", only), ("--skip", skip)):
        for name in names:
            if name not in library:
                hint = (" (a pass, but not one of the library's rewrites: use it in a recipe)"
                        if name in all_passes() else closest(name, library))
                raise UserError(f"{flag}: unknown rewrite {name!r}{hint}")
    return [n for n in library if (not only or n in only) and n not in skip]


def _hits(stats: dict[str, Any]) -> int:
    counts = [v for k, v in stats.items() if isinstance(v, int) and not isinstance(v, bool)
              and k in ("rewritten", "removed", "merged", "folded", "fused", "replaced")]
    return sum(counts) if counts else 1


def optimize_model(split: SplitModel, rewrites: Sequence[type[Pass]], feeds: list[dict], tolerance: Tolerance, *,
                   gate: str | None = None, rounds: int = 4, race_rounds: int = 15, race_fn: Callable | None = None,
                   progress: Callable[[str], None] = _stderr) -> tuple[list[str], list[Attempt], SplitModel]:
    """The search over ``rewrites`` (pass classes, each run with its defaults): returns the names of the kept
    rewrites in the order they applied, every attempt that changed the graph, and the model they leave.
    ``race_fn(a, b, feed) -> Race``: the speed gate's timing (default onnxruntime's, ``core.latency.race``)."""
    current = split
    reference = Runner(current).run(feeds)
    current_proto = None  # ``current`` as one ModelProto for the speed gate, made once per kept rewrite
    kept: list[str] = []
    attempts: list[Attempt] = []
    for r in range(1, rounds + 1):
        changed = False
        for cls in rewrites:
            name = cls.name
            try:
                result = run_pipeline(current, [(cls(), f"optimize round {r}", "stop")], inputs=None)
            except GraphoptError as e:
                attempts.append(Attempt(r, name, 0, None, None, None, "raised", str(e)))
                progress(f"[round {r}] {name}: raised: {e}")
                continue
            record = result.records[0]
            if not record.changed:
                continue
            after = result.output.split()  # the split the pipeline checked (its snapshot): no export
            try:
                got = Runner(after).run(feeds)
            except UserError as e:
                attempts.append(Attempt(r, name, _hits(record.stats), None, None, None, "raised", str(e)))
                continue
            cmp = compare_outputs(reference, got, tolerance)
            summary = cmp.summary()
            attempt = Attempt(r, name, _hits(record.stats), summary["max_abs"], summary["cosine"], None, "kept")
            attempts.append(attempt)
            if not cmp.passed:
                attempt.decision, attempt.detail = "broke numerics", cmp.describe("the graph before it")
                progress(f"[round {r}] {name}: broke numerics ({attempt.detail}); dropped")
                continue
            if gate == "speed":
                if current_proto is None:
                    current_proto = Model(current).proto()
                a, b = current_proto, Model(after).proto()
                outcome = race_fn(a, b, feeds[0]) if race_fn else race(a, b, feeds[0], rounds=race_rounds)
                attempt.latency_ms = (outcome.a_ms, outcome.b_ms)
                if not outcome.faster:
                    attempt.decision = "not faster"
                    attempt.detail = f"won {outcome.wins}/{outcome.rounds} timed rounds, p = {outcome.p_value:.3f}"
                    progress(f"[round {r}] {name}: verified, {outcome.change:+.1%} latency, {attempt.detail}; dropped")
                    continue
            current, reference, current_proto = after, got, (b if gate == "speed" else None)
            kept.append(name)
            changed = True
            progress(f"[round {r}] {name}: {attempt.hits} hit(s), max_abs {attempt.max_abs:.2e}; kept")
        if not changed:
            break
    return kept, attempts, current


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def attempts_table(attempts: Sequence[Attempt], gate: str | None) -> str:
    rows = ["| round | rewrite | hits | max_abs | cosine | latency before -> after (ms) | change | decision |",
            "|---:|---|---:|---:|---:|---:|---:|---|"]
    for a in attempts:
        lat = "-" if a.latency_ms is None else f"{a.latency_ms[0]:.2f} -> {a.latency_ms[1]:.2f}"
        change = "-" if a.latency_ms is None else f"{a.latency_ms[1] / a.latency_ms[0] - 1:+.1%}"
        decision = a.decision + (f" ({a.detail})" if a.detail and a.decision != "kept" else "")
        rows.append(f"| {a.round} | {a.rewrite} | {a.hits} | {_fmt(a.max_abs, '.2e')} | {_fmt(a.cosine, '.7f')} | "
                    f"{lat} | {change} | {decision} |")
    if not attempts:
        rows.append("| - | (no rewrite of the library changes this model) | | | | | | |")
    if gate != "speed":
        rows.append("")
        rows.append("Latency is measured with `--gate speed`, which keeps a rewrite only when it is also faster.")
    return "\n".join(rows)


def recipe_text(name: str, model: Path, kept: Sequence[str], specs: Sequence[InputSpec], samples: int, seed: int,
                data: str | None, tolerance: Tolerance) -> str:
    """The recipe that reproduces the search's result with ``graphopt apply`` (naming the plugin modules of kept
    rewrites that are not built in)."""
    inputs = []
    for s in specs:
        entry: dict[str, Any] = {"name": s.name}
        if s.shape is not None:
            entry["shape"] = list(s.shape)
        if s.dtype is not None:
            entry["dtype"] = s.dtype
        if s.range is not None:
            entry["range"] = list(s.range)
        inputs.append(entry)
    tol = {k: v for k, v in asdict(tolerance).items() if k != "outputs"}
    doc: dict[str, Any] = {"name": name}
    classes = all_passes()
    plugins = sorted({classes[n].__module__ for n in kept if not classes[n].__module__.startswith("graphopt.passes.")})
    if plugins:
        doc["plugins"] = plugins
    doc["model"] = {"onnx": str(model.resolve())}
    if inputs:
        doc["inputs"] = inputs
    doc["passes"] = list(kept)
    doc["verify"] = {"samples": samples, "seed": seed, **({"data": str(Path(data).resolve())} if data else {}),
                     "tolerance": tol}
    head = ("# Written by graphopt optimize: the knowledge-library rewrites it kept, in the order they applied.\n"
            "# graphopt apply reproduces the run from it.\n")
    return head + yaml.safe_dump(doc, sort_keys=False)


def _cmd_optimize(args: argparse.Namespace) -> int:
    from .apply import apply_recipe
    from .cli import comparison_tolerance, input_specs
    from .recipe import parse_recipe
    from .report import pass_table

    t0 = time.perf_counter()
    tolerance = comparison_tolerance(args, top1=1.0)
    names = choose_rewrites(_names(args.only), _names(args.skip))
    path = Path(args.model)
    stem = path.stem if path.name != "model.onnx" else path.resolve().parent.name
    outdir = Path(args.output) if args.output else Path("runs") / f"{stem}-optimized"
    check_output_dir(outdir, "optimize", force=args.force, inputs=[path, args.data])
    split = Model.load(path, "model").split()
    held = initializer_inputs(split.skeleton.graph)
    if held:
        _stderr(f"optimize: {len(held)} graph input(s) have an initializer ({listed(held)}): defaults a caller may "
                "override, which no rewrite folds; if nothing feeds them, a recipe with the drop_initializer_inputs "
                "pass makes them constants first")
    specs, paths, primary = input_specs(args, split)
    feeds = resolve_inputs(split, specs, paths=paths).feeds(args.samples, args.seed, data=args.data, primary=primary)
    classes = all_passes()
    with tempfile.TemporaryDirectory(prefix="graphopt-race-") as workdir:
        race_fn = _gate_backend(args, Path(workdir)) if args.gate else None
        kept, attempts, _ = optimize_model(split, [classes[n] for n in names], feeds, tolerance, gate=args.gate,
                                           rounds=args.rounds, race_fn=race_fn)
    del split
    text = recipe_text(f"{stem}-optimized", path, kept, specs, args.samples, args.seed, args.data, tolerance)
    table = attempts_table(attempts, args.gate)
    search = {"model": str(path), "rewrites": names, "gate": args.gate, "kept": kept, "initializer_inputs": held,
              "attempts": [asdict(a) for a in attempts], "search_seconds": round(time.perf_counter() - t0, 3)}
    recipe = parse_recipe(yaml.safe_load(text), None)  # every path in it is absolute
    report = apply_recipe(recipe, outdir, force=True, kind="optimize",
                          extra_files={"recipe.yaml": text, "optimize.md": table + "\n",
                                       "optimize.json": json.dumps(search, indent=2) + "\n"})
    print(pass_table(report["passes"]))
    print()
    print(table)
    print(f"kept {len(kept)} of {len(attempts)} rewrite(s) that changed the model; "
          f"wrote {report['outdir']}/: {', '.join(report['files'])}")
    return 0


def _gate_backend(args: argparse.Namespace, workdir: Path) -> Callable | None:
    """The speed gate's timing: ATC + ais_bench on the NPU when both are installed (``--gate-backend auto``) or
    asked for (``npu``), else onnxruntime (None: ``core.latency.race``)."""
    from ..ascend.cann_tools import ais_bench_command, find_atc

    atc, ais = find_atc(), ais_bench_command()
    if args.gate_backend == "onnxruntime" or (args.gate_backend == "auto" and not (atc and ais)):
        _stderr("optimize: the speed gate times onnxruntime on this machine's CPU")
        return None
    if not (atc and ais):
        raise UserError("--gate-backend npu: " + ("atc is not on PATH" if not atc else "ais_bench is not installed")
                        + " (source CANN's set_env.sh, pip install ais_bench)")
    if not args.soc_version:
        raise UserError("--gate speed on the NPU: give --soc-version (from npu-smi info), e.g. Ascend310P3")
    from ..ascend.npu_race import npu_race
    from ..ascend.soc import check_soc_version

    check_soc_version(args.soc_version, "--soc-version")
    _stderr(f"optimize: the speed gate times the NPU ({args.soc_version}) with atc and ais_bench")
    counter = iter(range(1 << 30))
    return lambda a, b, feed: npu_race(a, b, feed, atc=atc, ais_bench=ais, soc_version=args.soc_version,
                                       workdir=workdir / f"race{next(counter)}", log=_stderr)


def _names(values: Sequence[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def add_cli(subparsers: Any) -> None:
    from .cli import add_comparison_arguments, add_force_argument

    p = subparsers.add_parser("optimize", help="run the knowledge library's rewrites to a fixed point, each verified "
                                               "(and with --gate speed, kept only when faster)")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("-o", "--output", help="run directory (default runs/<model>-optimized)")
    p.add_argument("--only", action="append", default=[], metavar="NAMES", help="only these rewrites (comma list)")
    p.add_argument("--skip", action="append", default=[], metavar="NAMES", help="not these rewrites (comma list)")
    p.add_argument("--gate", choices=["speed"], help="keep a verified rewrite only when onnxruntime runs the model "
                                                     "measurably faster with it")
    p.add_argument("--gate-backend", choices=["auto", "onnxruntime", "npu"], default="auto",
                   help="what --gate speed times: auto = ATC + ais_bench on the NPU when installed, else onnxruntime")
    p.add_argument("--soc-version", help="the NPU the gate compiles for (from npu-smi info), e.g. Ascend310P3")
    p.add_argument("--rounds", type=int, default=4, help="at most this many passes over the library (default 4)")
    add_comparison_arguments(p, samples=2)
    add_force_argument(p, "DIR")
    p.set_defaults(func=_cmd_optimize)
