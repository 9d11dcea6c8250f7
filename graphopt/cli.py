"""The ``graphopt`` command line. Bad input: one line on stderr, exit 2. Failed verification: exit 1."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

from .errors import GraphoptError, UserError

__all__ = ["main", "build_parser", "COMMAND_MODULES", "parse_shape", "add_comparison_arguments",
           "comparison_tolerance"]

# Modules that define further subcommands through an ``add_cli(subparsers)`` function.
COMMAND_MODULES = ("data", "evaluate", "diff", "bisect", "fp16_sensitivity")


def _cmd_apply(args: argparse.Namespace) -> int:
    from .apply import apply_recipe
    from .recipe import load_recipe
    from .report import pass_table

    recipe = load_recipe(args.recipe)
    report = apply_recipe(recipe, args.output, verify=False if args.no_verify else None)
    print(pass_table(report["passes"]))
    final = report.get("final_verify")
    if final:
        top1 = "-" if final["top1_agreement"] is None else f"{final['top1_agreement']:.3f}"
        print(f"output vs input model: max_abs {final['max_abs']:.2e}, cosine {final['cosine']:.7f}, "
              f"top-1 agreement {top1}")
    print(f"wrote {report['outdir']}/: {', '.join(report['files'])}")
    return 0


def _cmd_passes(args: argparse.Namespace) -> int:
    from .pass_infra import all_passes, pass_params

    for name, cls in all_passes().items():
        print(f"{name}: {cls.summary()}")
        for p in pass_params(cls):
            default = "required" if p.default is dataclasses.MISSING else f"default {p.default!r}"
            print(f"    {p.name}: {p.type_name} ({default}){' - ' + p.help if p.help else ''}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_cached, get_exporter, list_exporters

    if args.list:
        for e in list_exporters():
            print(f"{e.name}: {e.description} (input {e.input_name}, opset {e.opset})")
        return 0
    if not args.model:
        raise UserError("export: name a model (graphopt export --list shows them)")
    exporter = get_exporter(args.model)
    path, _ = export_cached(exporter.name, {}, args.checkpoint, args.opset,
                            progress=lambda m: print(m, file=sys.stderr))
    out = Path(args.output or f"{exporter.name}.onnx")
    from .ir import atomic_write_bytes

    atomic_write_bytes(out, path.read_bytes())
    print(out)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .ir import load_split
    from .verify import Runner, compare_outputs, make_inputs

    tol = comparison_tolerance(args, top1=args.top1)  # before reading the models: a bad flag is refused at once
    # Held once each, as arrays onnxruntime reads in place (graphopt.protoio), and the weights B shares with A
    # held once for both: two large models fit in memory.
    a = load_split(args.a, "model A")
    b = load_split(args.b, "model B", reuse=a.weights)
    runner_a = Runner(a, args.input)
    runner_b = Runner(b, runner_a.input_name)
    inp = next(i for i in runner_a.session.get_inputs() if i.name == runner_a.input_name)
    shape = parse_shape(args.shape) or [d if isinstance(d, int) else 1 for d in inp.shape]
    inputs = make_inputs(shape, args.samples, args.seed)
    cmp = compare_outputs(runner_a.run(inputs), runner_b.run(inputs), tol)
    for o in cmp.outputs:
        mismatch = o.describe_mismatch("model A")
        if mismatch:  # missing, or another shape or dtype: no values to compare
            print(f"{mismatch}: OUTSIDE TOLERANCE ({', '.join(o.failed_on)})")
            continue
        top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.4f}"
        print(f"{o.name}: max_abs {o.max_abs:.3e}  max_rel {o.max_rel:.3e}  cosine {o.cosine:.8f}  top1 {top1}  "
              f"{'ok' if o.passed else 'OUTSIDE TOLERANCE (' + ', '.join(o.failed_on) + ')'}")
    return 0 if cmp.passed else 1


def parse_shape(text: str | None) -> list[int] | None:
    """``--shape 1,3,224,224`` as a list (None when not given)."""
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"--shape {text!r}: expected comma-separated integers, e.g. 1,3,224,224") from None


def comparison_tolerance(args: argparse.Namespace, top1: float | None):
    """The ``Tolerance`` of ``--max-abs``, ``--max-rel``, ``--cosine`` (and ``--top1``); a threshold no comparison
    can meet or every one meets is bad input (exit 2) naming the flag, not a failed comparison."""
    from .recipe import Tolerance, tolerance_problem

    given = {"max_abs": ("--max-abs", args.max_abs), "max_rel": ("--max-rel", args.max_rel),
             "cosine": ("--cosine", args.cosine), "top1_agreement": ("--top1", top1)}
    for criterion, (flag, value) in given.items():
        problem = tolerance_problem(criterion, value)
        if problem:
            raise UserError(f"{flag}: {problem}")
    return Tolerance(**{criterion: value for criterion, (_, value) in given.items()})


def add_comparison_arguments(p: argparse.ArgumentParser, samples: int) -> None:
    """The inputs and tolerances shared by the commands that compare two models (verify, diff)."""
    p.add_argument("--input", help="input name (default: the first input)")
    p.add_argument("--shape", help="input shape, e.g. 1,3,224,224 (default: the model's, dynamic dims as 1)")
    p.add_argument("--samples", type=int, default=samples)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-abs", type=float, default=1e-4)
    p.add_argument("--max-rel", type=float, default=None)
    p.add_argument("--cosine", type=float, default=0.99999)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphopt", description="Recipe-driven, verified ONNX graph surgery.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("apply", help="run a recipe: export, passes (each verified), report, ATC hand-off")
    p.add_argument("recipe")
    p.add_argument("-o", "--output", help="run directory (default runs/<recipe name>)")
    p.add_argument("--no-verify", action="store_true", help="skip per-pass numeric verification")
    p.set_defaults(func=_cmd_apply)

    p = sub.add_parser("passes", help="list every registered pass with its parameters")
    p.set_defaults(func=_cmd_passes)

    p = sub.add_parser("export", help="export a model to ONNX (cached)")
    p.add_argument("model", nargs="?")
    p.add_argument("--checkpoint")
    p.add_argument("--opset", type=int)
    p.add_argument("-o", "--output")
    p.add_argument("--list", action="store_true", help="list the exporters")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("verify", help="compare two models on the same seeded inputs (exit 1 when outside tolerance)")
    p.add_argument("a")
    p.add_argument("b")
    add_comparison_arguments(p, samples=2)
    p.add_argument("--top1", type=float, default=1.0)
    p.set_defaults(func=_cmd_verify)
    for name in COMMAND_MODULES:  # each adds its own subcommand(s)
        importlib.import_module(f"{__package__}.{name}").add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GraphoptError as e:
        print(f"graphopt: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("graphopt: interrupted; no partial output was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
