"""The ``graphopt`` command line. Bad input: one line on stderr, exit 2. Failed verification: exit 1."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
import threading
from pathlib import Path

from ..core.errors import GraphoptError, UserError
from ..core.inputs import BATCH_DEFAULT, DIM_DEFAULT
from ..core.pass_infra import load_plugin
from ..core.quiet import quiet_libraries

__all__ = ["main", "build_parser", "COMMAND_MODULES", "parse_shape", "add_comparison_arguments",
           "comparison_tolerance", "add_force_argument", "input_specs"]

# Modules that define further subcommands through an ``add_cli(subparsers)`` function.
COMMAND_MODULES = ("graphopt.commands.data", "graphopt.commands.evaluate", "graphopt.commands.diff",
                   "graphopt.commands.bisect", "graphopt.commands.precision", "graphopt.commands.inspect",
                   "graphopt.commands.optimize")


def _cmd_apply(args: argparse.Namespace) -> int:
    from .apply import apply_recipe
    from .recipe import load_recipe
    from .report import pass_table

    recipe = load_recipe(args.recipe)
    report = apply_recipe(recipe, args.output, verify=False if args.no_verify else None, force=args.force)
    print(pass_table(report["passes"]))
    final = report.get("final_verify")
    if final:
        top1 = "-" if final["top1_agreement"] is None else f"{final['top1_agreement']:.3f}"
        print(f"output vs input model: max_abs {final['max_abs']:.2e}, cosine {final['cosine']:.7f}, "
              f"top-1 agreement {top1}")
    print(f"wrote {report['outdir']}/: {', '.join(report['files'])}")
    return 0


def _cmd_passes(args: argparse.Namespace) -> int:
    from ..core.pass_infra import all_passes, pass_params

    for name, cls in all_passes().items():
        print(f"{name}{' [library]' if cls.library else ''}: {cls.summary()}")
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
    from .export import cached_export_path
    from ..core.files import atomic_write_bytes
    from ..core.outputs import check_output_file

    out = Path(args.output or f"{exporter.name}.onnx")
    if out.is_dir():  # like cp: into the folder, under the exporter's name
        out = out / f"{exporter.name}.onnx"
    # Checked before exporting (which can take minutes): an existing file is refused unless --force, or unless it
    # is byte for byte the export already in the cache (a repeated command: nothing to do).
    try:
        cached = cached_export_path(exporter.name, {}, args.checkpoint, args.opset)
    except OSError:  # an unreadable checkpoint: export_cached names it
        cached = None
    if not check_output_file(out, force=args.force, same_as=cached if cached and cached.is_file() else None):
        print(f"{out} already holds this export; left as it was", file=sys.stderr)
        print(out)
        return 0
    path, _ = export_cached(exporter.name, {}, args.checkpoint, args.opset,
                            progress=lambda m: print(m, file=sys.stderr))
    if check_output_file(out, force=args.force, same_as=path):  # again: the export is known now
        atomic_write_bytes(out, path.read_bytes())
    print(out)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..core.inputs import resolve_inputs
    from ..core.onnx_files import load_split
    from ..core.verify import compare_outputs
    from ..core.runner import Runner

    tol = comparison_tolerance(args, top1=args.top1)  # before reading the models: a bad flag is refused at once
    # Held once each, as arrays onnxruntime reads in place (graphopt.core.wire), and the weights B shares with A
    # held once for both: two large models fit in memory.
    a = load_split(args.a, "model A")
    b = load_split(args.b, "model B", reuse=a.weights)
    specs, paths, primary = input_specs(args, a)
    plan = resolve_inputs(a, specs, paths=paths)
    feeds = plan.feeds(args.samples, args.seed, data=args.data, primary=primary)
    # B takes what A takes: a missing input or another dtype is named (Runner checks each feed), not onnxruntime's
    cmp = compare_outputs(Runner(a).run(feeds), Runner(b, what="model B").run(feeds), tol)
    for o in cmp.outputs:
        mismatch = o.describe_mismatch("model A")
        if mismatch:  # missing, another shape or dtype, or exact outputs that differ
            print(f"{mismatch}: OUTSIDE TOLERANCE ({', '.join(o.failed_on)})")
            continue
        if o.mismatches is not None:
            print(f"{o.name}: {o.expected} output, all {o.size} elements equal  ok")
            continue
        top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.4f}"
        print(f"{o.name}: max_abs {o.max_abs:.3e}  max_rel {o.max_rel:.3e}  cosine {o.cosine:.8f}  top1 {top1}  "
              f"{'ok' if o.passed else 'OUTSIDE TOLERANCE (' + ', '.join(o.failed_on) + ')'}")
    return 0 if cmp.passed else 1


def input_specs(args: argparse.Namespace, model) -> tuple[list, dict[str, str], str | None]:
    """The ``InputSpec`` list of ``--input`` (repeatable: ``NAME:SHAPE[:DTYPE]``, or a bare ``NAME``, which
    ``--shape`` then shapes), ``--shape`` (the first input's when no bare ``--input`` names one) and ``--range``
    (repeatable ``NAME:LO,HI``), for ``graphopt.core.inputs.resolve_inputs``; with the flag each came from (for
    errors) and the input a ``--data`` ``.npy`` feeds (the bare ``--input``, else None: the first)."""
    from ..core.inputs import InputSpec, merge_specs, parse_input_flag, parse_range_flag
    from ..core.model_inputs import model_inputs

    specs, paths, primary = [], {}, None
    given = args.input if isinstance(args.input, list) else ([args.input] if args.input else [])
    for text in given:
        if ":" in text:
            spec = parse_input_flag(text)
        else:
            spec = InputSpec(text)
            primary = text
        specs.append(spec)
        paths[spec.name] = f"--input {text}"
    shape = parse_shape(args.shape)
    if shape is not None:
        if primary is None:
            names = [m.name for m in model_inputs(model)]
            if not names:
                raise UserError("--shape: the model has no inputs")
            primary = names[0]
        specs.append(InputSpec(primary, tuple(shape)))
        paths.setdefault(primary, f"--shape {args.shape}")
    for text in getattr(args, "range", None) or []:
        name, rng = parse_range_flag(text)
        specs.append(InputSpec(name, range=rng))
        paths.setdefault(name, f"--range {text}")
    return merge_specs(specs), {k: v for k, v in paths.items()}, primary


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
    from ..core.tolerance import Tolerance, tolerance_problem

    given = {"max_abs": ("--max-abs", args.max_abs), "max_rel": ("--max-rel", args.max_rel),
             "cosine": ("--cosine", args.cosine), "top1_agreement": ("--top1", top1)}
    for criterion, (flag, value) in given.items():
        problem = tolerance_problem(criterion, value)
        if problem:
            raise UserError(f"{flag}: {problem}")
    return Tolerance(**{criterion: value for criterion, (_, value) in given.items()})


def add_comparison_arguments(p: argparse.ArgumentParser, samples: int) -> None:
    """The inputs and tolerances shared by the commands that compare two models (verify, diff): the inputs flags
    (``--input`` repeatable as NAME:SHAPE[:DTYPE], ``--range``, ``--data``, ``--shape``), read by ``input_specs``."""
    p.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE[:DTYPE]",
                   help="an input's shape (batch first) and dtype, e.g. input_ids:2,16:int64 (repeatable; "
                        "a scalar: NAME::DTYPE); inputs not given take the model's shape, symbolic dims "
                        f"{BATCH_DEFAULT} for a batch (a first dim) and {DIM_DEFAULT} otherwise")
    p.add_argument("--range", action="append", default=[], metavar="NAME:LO,HI",
                   help="values of an input drawn from [LO, HI), e.g. input_ids:0,30522 (repeatable; default "
                        "for integers: [0, rows) for Gather indices, else [0, 2))")
    p.add_argument("--data", metavar="FILE",
                   help="real inputs: an .npz with one array per input name (first axis the items), or an "
                        ".npy / folder of float32 .bin files for the first input")
    p.add_argument("--shape", help="the first input's shape, e.g. 1,3,224,224 (default: the model's, symbolic dims "
                   "as graphopt.core.inputs says)")
    p.add_argument("--samples", type=int, default=samples)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-abs", type=float, default=1e-4)
    p.add_argument("--max-rel", type=float, default=None)
    p.add_argument("--cosine", type=float, default=0.99999)


def add_force_argument(p: argparse.ArgumentParser, metavar: str, folder: bool = True) -> None:
    """``--force``: replace an existing -o that graphopt did not write (``graphopt.core.outputs`` lists what it never
    replaces)."""
    what = "folder that is not an earlier output of this command" if folder else "file"
    p.add_argument("--force", action="store_true",
                   help=f"replace an existing {metavar} {what} (never a device, the current or home folder, "
                        "a git repository or the command's inputs)")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line too, like every other bad input."""

    def error(self, message: str):
        command = self.prog.removeprefix("graphopt").strip()
        self.exit(2, f"graphopt: error: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def _version_line() -> str:
    """graphopt's version and those of the libraries that decide its results (what a bug report needs), read from
    the installed metadata without importing them."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    libs = ", ".join(f"{d} {version(d)}" for d in ("onnx", "onnxruntime", "onnx-graphsurgeon", "onnxsim", "torch"))
    return f"graphopt {version('graphopt')} ({libs})"


class _VersionAction(argparse.Action):
    """``--version`` on one line (argparse's own action wraps it at the terminal width)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphopt", description="Recipe-driven, verified ONNX graph surgery.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show progress and the libraries' own log lines and warnings (onnxruntime, "
                             "onnx-graphsurgeon, torch), which graphopt otherwise keeps quiet")
    parser.add_argument("--version", action=_VersionAction, help="print graphopt's and its libraries' versions")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, registering the passes it defines (repeatable; recipes can "
                             "name theirs under plugins:)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("apply", help="run a recipe: export, passes (each verified), report, ATC hand-off")
    p.add_argument("recipe")
    p.add_argument("-o", "--output", help="run directory (default runs/<recipe name>)")
    p.add_argument("--no-verify", action="store_true", help="skip per-pass numeric verification")
    add_force_argument(p, "DIR")
    p.set_defaults(func=_cmd_apply)

    p = sub.add_parser("passes", help="list every registered pass with its parameters ([library]: run by optimize)")
    p.set_defaults(func=_cmd_passes)

    p = sub.add_parser("export", help="export a model to ONNX (cached)")
    p.add_argument("model", nargs="?")
    p.add_argument("--checkpoint")
    p.add_argument("--opset", type=int)
    p.add_argument("-o", "--output", help="the ONNX file (default <model>.onnx; a folder: <folder>/<model>.onnx)")
    add_force_argument(p, "F", folder=False)
    p.add_argument("--list", action="store_true", help="list the exporters")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("verify", help="compare two models on the same seeded inputs (exit 1 when outside tolerance)")
    p.add_argument("a")
    p.add_argument("b")
    add_comparison_arguments(p, samples=2)
    p.add_argument("--top1", type=float, default=1.0)
    p.set_defaults(func=_cmd_verify)
    for name in COMMAND_MODULES:  # each adds its own subcommand(s)
        importlib.import_module(name).add_cli(sub)
    for p in sub.choices.values():
        # -v after the subcommand as well as before it. SUPPRESS: a subcommand's default does not overwrite a -v
        # given before it (argparse copies a subparser's defaults over the main parser's values).
        own = next((a for a in p._actions if a.dest == "verbose"), None)
        if own is None:
            p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="library log lines and warnings too")
        else:
            own.default = argparse.SUPPRESS
        p.add_argument("--plugin", action="append", dest="sub_plugin", default=[], metavar="MODULE",
                       help="import MODULE first, registering the passes it defines (repeatable)")
    return parser


# How long an interrupted or failed command waits for background onnxruntime work to stop, when called as a
# library (the process goes on). A session being built cannot be cancelled (ShiftViT's takes about 2 s); a run
# can, at once (RunOptions.terminate).
_STOP_TIMEOUT = 1.0


def _exit_now(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown: stdout and stderr flushed, the atexit
    handlers run, then ``os._exit``. What graphopt wrote is already cleaned up by then (the exception unwound
    through every ``finally``)."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def _stop_background_work(code: int, own_process: bool, interrupted: bool) -> None:
    """Cancel the pipeline's background onnxruntime work (its reference outputs), left running when a command
    ends early. An interpreter that exits while such a thread is inside onnxruntime crashes ("terminate called
    without an active exception", SIGSEGV) instead of exiting with ``code``; so does one interrupted by Ctrl-C in
    the middle of onnxruntime calls even once every thread has ended (measured: 1 in 10 tries on ShiftViT). So
    when graphopt owns the process it ends here after a Ctrl-C, and after an error when a thread is still
    running; called as a library it waits up to ``_STOP_TIMEOUT`` for the threads and returns."""
    background = sys.modules.get("graphopt.core.background")  # loaded only when some command started such work
    if own_process and interrupted:
        if background is not None:
            background.stop_background(0.0)
        _exit_now(code)
    if background is not None and not background.stop_background(_STOP_TIMEOUT) and own_process:
        _exit_now(code)


def main(argv: list[str] | None = None) -> int:
    """The command line. ``argv`` None: the process's own arguments, and graphopt owns the process (a Ctrl-C ends
    it, see ``_stop_background_work``); a list: called as a library, which always returns."""
    try:  # parsing included: building the parser imports every command's module, which takes a moment
        args = build_parser().parse_args(argv)
        quiet_libraries(args.verbose)
        for module in args.plugin + args.sub_plugin:
            load_plugin(module)
        return args.func(args)
    except BrokenPipeError:  # `graphopt passes | head`: the reader has what it wanted
        # Python flushes stdout again at exit, into the closed pipe: point it at devnull so that says nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except GraphoptError as e:
        print(f"graphopt: error: {e}", file=sys.stderr)
        _stop_background_work(e.exit_code, own_process=argv is None, interrupted=False)
        return e.exit_code
    except KeyboardInterrupt:
        return _interrupted(argv)
    except Exception as e:
        # A library that wraps the Ctrl-C it was interrupted by (onnxruntime, importing its C++ part, raises an
        # ImportError from it): the user's Ctrl-C all the same.
        cause = e
        while cause is not None and not isinstance(cause, KeyboardInterrupt):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        return _interrupted(argv)


def _interrupted(argv: list[str] | None) -> int:
    """The way out after a Ctrl-C: one line, the background work stopped, 130. A second Ctrl-C must not interrupt
    it (a traceback, a thread left inside onnxruntime)."""
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers are set there only
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        print("graphopt: interrupted; no partial output was left", file=sys.stderr)
        _stop_background_work(130, own_process=argv is None, interrupted=True)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return 130


if __name__ == "__main__":
    sys.exit(main())
