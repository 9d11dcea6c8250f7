"""``graphopt eval``: accuracy and throughput of a run directory, per batch size, as the seeds tabulate them.

Per batch size (a run compiled with ``atc.dynamic``: per profile, ``graphopt.ascend.eval_inputs.EvalUnit``, each
with ais_bench's ``--dymBatch`` / ``--dymHW`` / ``--dymDims`` / ``--dymShape`` and onnxruntime fed the profile's
shapes): compile with ATC when ``atc`` is on PATH (the run's ATC jobs, ``atc_jobs.json``: what ``atc.sh``
runs), run ais_bench when it is installed, otherwise run ``model.onnx`` with onnxruntime on the CPU, writing outputs
and a summary JSON in ais_bench's layout (``graphopt.ascend.ort_backend``); then one postprocess reads either:
top-1 / top-5 against the data folder's ``labels.txt`` when the model has a class-score output (float, rank 2,
several columns; the first such output), else throughput only (the table says which); and latency percentiles from
the per-call times. The run and data folders are read as ``graphopt.ascend.eval_inputs`` describes; ais_bench gets
``--input DIR/a,DIR/b`` in the model's input order; onnxruntime stacks each input's items into the batch.

Throughput is ``batch size x 1000 / median per-call latency (ms)``, over at least ``min_iterations`` timed calls
and ``min_seconds`` of compute after ``warmup`` untimed calls. What a call includes is stated with the numbers:
onnxruntime: ``session.run`` on a batch already in memory (no file reading, preprocessing or output
writing); ais_bench: its ``NPU_compute_time`` (device compute; no host-device copies). ais_bench's own figure,
``1000 x batch / mean``, is kept as ``throughput_mean``.

Writes ``OUT`` (default ``RUN_DIR/eval``): ``eval.json``, ``eval.md``, ``throughput.png`` and ``outputs/``
(``bs<N>/<input stem>_0.<fmt>`` and ``bs<N>_summary.json`` per batch size).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..ascend.ais_bench import OUTPUT_FORMATS, ais_bench_argv, collect_outputs, run_ais_bench, summary_latency
from ..ascend.atc import read_atc_jobs
from ..ascend.cann_tools import ais_bench_command, find_atc, run_atc
from ..ascend.eval_inputs import (EvalData, EvalRun, accuracy, check_data, eval_units, input_dirs, load_run,
                                  profile_ais_args, profile_inputs, seeded_items)
from ..ascend.ort_backend import OnnxRuntimeBackend, TimingOptions
from ..core.errors import UserError
from ..core.outputs import check_output_dir, staged_dir
from .eval_plot import plot_throughput

__all__ = ["EvalOptions", "evaluate", "eval_markdown", "compare_markdown",
           "load_eval", "dry_run_lines", "add_cli", "DEFAULT_BATCH_SIZES"]


DEFAULT_BATCH_SIZES = (1, 4, 8, 16, 32, 64)
EVAL_FILE = "eval.json"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class EvalOptions:
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    backend: str = "auto"  # auto | onnxruntime | ais_bench
    outfmt: str = "BIN"
    timing: TimingOptions = TimingOptions()
    limit: int | None = None
    threads: int | None = None



def _choose_backend(requested: str, log: Callable[[str], None]) -> tuple[str, list[str] | None, str | None]:
    atc = find_atc()
    ais = ais_bench_command()
    if requested == "ais_bench" and ais is None:
        raise UserError("--backend ais_bench: ais_bench is not installed (it comes with Huawei's CANN tools: "
                        "`python3 -m ais_bench`; set GRAPHOPT_AIS_BENCH to its command if it is elsewhere)")
    if requested == "onnxruntime":
        return "onnxruntime", None, None
    if requested == "auto" and ais is None:
        missing = "atc and ais_bench are" if atc is None else "ais_bench is"
        log(f"eval: {missing} not installed (Huawei CANN tools): running model.onnx with onnxruntime on the CPU "
            "instead (`graphopt eval --dry-run` prints the commands it would run)")
        return "onnxruntime", None, atc
    return "ais_bench", ais, atc


def dry_run_lines(run_dir: str | Path, data_dir: str | Path, options: EvalOptions,
                  out: str | Path | None = None) -> list[str]:
    """The ATC and ais_bench commands ``graphopt eval`` would run with the CANN tools installed."""
    run_dir = Path(run_dir)
    out_root = Path(out) if out else run_dir / "eval"
    recorded = read_atc_jobs(run_dir)
    units = eval_units(run_dir, options.batch_sizes, need_jobs=True)
    ais = ais_bench_command() or ["python3", "-m", "ais_bench"]
    run = load_run(run_dir)
    dirs, _ = input_dirs(Path(data_dir), run)  # one folder per input, in the model's order
    lines = [f"# in {run_dir}:"]
    for job in dict.fromkeys(u.job for u in units if u.job is not None):
        derived = "" if job in recorded else f"  # derived: atc.sh has no batch size {job.batch_size}"
        lines.append(job.shell() + derived)
    lines.append("# then, per profile:" if recorded[0].dynamic else "# then, per batch size:")
    for u in units:
        assert u.job is not None  # need_jobs
        argv = ais_bench_argv(ais, u.job.expected_om(run_dir), dirs, out_root / "outputs", u.label, options.outfmt,
                              u.batch_size, options.timing.warmup, profile_ais_args(run.model, u.profile))
        lines.append(" ".join(shlex.quote(a) for a in argv))
    return lines


def evaluate(run_dir: str | Path, data_dir: str | Path, options: EvalOptions = EvalOptions(),
             out: str | Path | None = None, log: Callable[[str], None] = _stderr, *,
             force: bool = False) -> dict[str, Any]:
    """Evaluate a run directory on a prepared data folder; writes and returns the result (see module docstring).
    The results folder is written as a whole and marked (``graphopt.core.outputs``): an existing one that is not an
    earlier eval folder is refused before any work, unless ``force``."""
    t_start = time.perf_counter()
    if options.outfmt not in OUTPUT_FORMATS:
        raise UserError(f"--outfmt {options.outfmt!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    if not options.batch_sizes or any(b < 1 for b in options.batch_sizes):
        raise UserError(f"--batch-sizes: expected positive integers, got {list(options.batch_sizes)}")
    run = load_run(run_dir)
    data = check_data(data_dir, run, options.limit)
    out_root = Path(out) if out else run.path / "eval"
    inputs_read = [run.path, data.root]
    check_output_dir(out_root, "eval", force=force, inputs=inputs_read)
    backend, ais, atc = _choose_backend(options.backend, log)
    # Everything is written into a temporary folder that replaces out_root when complete; what the results
    # record is where the files end up.
    with staged_dir(out_root, "eval", force=force, inputs=inputs_read) as staging:
        result = _evaluate(run, data, options, backend, ais, atc, staging, out_root, log, t_start)
    result["outdir"] = str(out_root)
    return result


def _evaluate(run: EvalRun, data: EvalData, options: EvalOptions, backend: str, ais: list[str] | None,
              atc: str | None, staging: Path, out_root: Path, log: Callable[[str], None],
              t_start: float) -> dict[str, Any]:
    """``evaluate`` writing into ``staging``, which becomes ``out_root``."""
    outputs = staging / "outputs"
    outputs.mkdir()
    atc_ran = atc is not None and options.backend != "onnxruntime"
    units = eval_units(run.path, options.batch_sizes, need_jobs=atc_ran or backend == "ais_bench")
    jobs = list(dict.fromkeys(u.job for u in units if u.job is not None))
    if atc_ran:
        run_atc(run.path, jobs, atc, log)
    elif backend == "ais_bench":
        absent = [j for j in jobs if j.om_path(run.path) is None]
        if absent and options.backend == "ais_bench":
            raise UserError(f"--backend ais_bench: no {absent[0].expected_om(run.path)} and atc is not on PATH to "
                            f"compile it (run {run.path / 'atc.sh'} on a machine with CANN)")
        if absent:
            log(f"eval: ais_bench is installed but atc is not and {absent[0].expected_om(run.path).name} is missing: "
                "running model.onnx with onnxruntime on the CPU instead")
            backend = "onnxruntime"
    fixed = run.fixed_batch
    if backend == "onnxruntime" and fixed is not None:
        wrong = [u.batch_size for u in units if u.batch_size != fixed]
        if wrong:
            raise UserError(f"{run.model}: the input's batch dimension is fixed to {fixed}, so batch size {wrong[0]} "
                            f"cannot run; evaluate with --batch-sizes {fixed} or keep the batch dynamic")

    ort_backend = OnnxRuntimeBackend(run.model, run.inputs, options.threads) if backend == "onnxruntime" else None
    device = ort_backend.describe() if ort_backend else {"backend": "ais_bench", "command": " ".join(ais or []),
                                                         "device": "Ascend NPU"}
    files = data.first(run)
    labels = data.labels
    input_dirs = list(data.dirs)
    if backend == "ais_bench" and options.limit:
        # ais_bench reads whole folders: link the first N files of each input
        input_dirs = [outputs / "inputs"] if data.flat else [outputs / "inputs" / d.name for d in data.dirs]
        for inp, d in zip(run.inputs, input_dirs):
            d.mkdir(parents=True)
            for f in data.files[inp.name]:
                (d / f.name).symlink_to(f.resolve())
    names = [f.name.split(".")[0] for f in files]
    unit = "img" if len(run.inputs) == 1 and len(run.item_shape) == 3 else "items"
    scored = run.class_output is not None and bool(labels)
    if run.class_output is None:
        scoring = ("throughput only: the model has no class-score output (float, rank 2, several columns), so no "
                   "top-1/top-5")
    elif not labels:
        scoring = "throughput only: the data has no labels.txt, so no top-1/top-5"
    else:
        scoring = f"top-1/top-5 of output {run.class_output} ({run.classes} classes) against labels.txt"
    rows_out = []
    for u in units:
        bs, dirname = u.batch_size, u.label
        shaped = profile_inputs(run, u.profile)  # None: the data's items fit
        unit_files, unit_dirs = data.files, (data.dirs if ort_backend is not None else input_dirs)
        if shaped is not None:
            unit_files, unit_dirs = seeded_items(shaped, bs, staging / "profile_inputs" / dirname)
        if ort_backend is not None:
            backend_run = ort_backend if shaped is None else OnnxRuntimeBackend(run.model, shaped, options.threads)
            folder, summary = backend_run.run(bs, unit_files, outputs, dirname, options.outfmt, options.timing,
                                              input_dirs=unit_dirs)
        else:
            assert u.job is not None  # eval_units(need_jobs=True)
            argv = ais_bench_argv(ais or [], u.job.om_path(run.path), unit_dirs, outputs, dirname, options.outfmt,
                                  bs, options.timing.warmup, profile_ais_args(run.model, u.profile))
            log(f"eval: ais_bench: {' '.join(argv)}")
            folder, summary = run_ais_bench(argv, outputs, dirname)
        if scored and shaped is None:
            rows = collect_outputs(folder, summary, files, run.classes, run.class_output)
            produced = len(rows)
        else:  # outputs are not read (they may be of any dtype and shape); counted where the summary lists them
            rows = {}
            info = summary.get("filesinfo") or {}
            produced = sum(1 for v in info.values() if v.get("outfiles")) if info else None
        acc = accuracy(rows, labels if scored and shaped is None else {}, names)
        lat, calls = summary_latency(summary)
        throughput = 1000.0 * bs / lat["p50"] if lat["p50"] else summary.get("throughput")
        rows_out.append({"batch_size": bs, "throughput": throughput,
                         "throughput_from": "median latency" if lat["p50"] else "the tool's own figure",
                         "throughput_mean": summary.get("throughput"), "latency_ms": lat, "timed_calls": calls,
                         "outputs": produced, **acc,
                         "summary": str(out_root / "outputs" / f"{dirname}_summary.json")})
        if u.profile is not None:
            rows_out[-1].update(profile=dirname, shapes={n: list(d) for n, d in u.profile.shapes},
                                items="the data" if shaped is None else f"{bs} seeded random item(s) of the "
                                "profile's shapes (throughput only)")
        top1 = "-" if acc["top1"] is None else f"{acc['top1']:.4f}"
        what = f"batch size {bs}" if u.profile is None else f"profile {dirname}"
        log(f"eval: {what}: {_num(throughput, '.1f')} {unit}/s (p50 {_num(lat['p50'], '.2f')} ms over {calls} "
            f"calls), top-1 {top1}, {'-' if produced is None else produced}/{len(files)} outputs")
    if ort_backend is not None:
        what = (f"onnxruntime session.run on the CPU (CPUExecutionProvider, {device['threads']}), "
                f"{'the input' if len(run.inputs) == 1 else 'every input'} already in memory; excludes reading "
                ".bin files, preprocessing and writing outputs")
    else:
        what = "ais_bench NPU_compute_time: device compute only; excludes host-device copies and file I/O"
    result = {
        "run": str(run.path), "name": run.name, "model": str(run.model), "data": str(data.root),
        "inputs": len(files), "labelled": sum(1 for n in names if n in labels),
        "model_inputs": [{"name": i.name, "dtype": i.dtype, "item_shape": list(i.item_shape), "folder": str(d)}
                         for i, d in zip(run.inputs, data.dirs)],
        "scoring": scoring, "unit": unit,
        "backend": backend, "device": device, "atc_compiled": atc_ran,
        "throughput_definition": f"{'images' if unit == 'img' else 'items'}/s = batch size x 1000 / median latency "
                                 f"(ms) of one call; a call is {what}",
        "timing": asdict(options.timing), "outfmt": options.outfmt,
        "rows": rows_out, "seconds": round(time.perf_counter() - t_start, 2),
    }
    (staging / EVAL_FILE).write_text(json.dumps(result, indent=2) + "\n")
    (staging / "eval.md").write_text(eval_markdown(result))
    plot_throughput([result], staging / "throughput.png")
    return result


def _num(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def eval_markdown(result: Mapping[str, Any]) -> str:
    head = f"# {result['name']}: {result['backend']} on {result['device'].get('device')}\n\n"
    unit = result.get("unit", "img")
    lines = [f"| batch size | throughput ({unit}/s) | p50 (ms) | p90 (ms) | p99 (ms) | timed calls | top-1 | top-5 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['batch_size']}{' (' + r['profile'] + ')' if r.get('profile') else ''} | "
                     f"{_num(r['throughput'], '.1f')} | {_num(lat['p50'], '.2f')} | "
                     f"{_num(lat['p90'], '.2f')} | {_num(lat['p99'], '.2f')} | {r['timed_calls'] or '-'} | "
                     f"{_pct(r['top1'])} | {_pct(r['top5'])} |")
    scoring = f" Accuracy: {result['scoring']}." if result.get("scoring") else ""
    foot = (f"\n{result['inputs']} inputs ({result['labelled']} labelled) from {result['data']}. "
            f"Throughput: {result['throughput_definition']}. Latency: per call (one batch).{scoring}\n")
    return head + "\n".join(lines) + "\n" + foot


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def load_eval(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir)
    path = path if path.is_file() else (path / "eval" / EVAL_FILE if (path / "eval" / EVAL_FILE).is_file()
                                        else path / EVAL_FILE)
    if not path.is_file():
        raise UserError(f"{run_dir}: no eval results ({EVAL_FILE}); run `graphopt eval {run_dir} --data DIR` first")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def compare_markdown(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Two evaluated runs side by side, per batch size (per profile for a dynamic run: batch size and profile label
    pair the rows), with B's throughput over A's."""
    ra = {(r["batch_size"], r.get("profile")): r for r in a["rows"]}
    rb = {(r["batch_size"], r.get("profile")): r for r in b["rows"]}
    na, nb = a["name"], b["name"]
    if na == nb:
        na, nb = f"A ({a['run']})", f"B ({b['run']})"
    lines = [f"| batch size | {na} img/s | {nb} img/s | B/A | {na} p50 ms | {nb} p50 ms | {na} top-1 | {nb} top-1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(dict.fromkeys([*ra, *rb]), key=lambda k: k[0]):  # by batch size, profiles in run order
        x, y = ra.get(key), rb.get(key)
        bs = f"{key[0]} ({key[1]})" if key[1] else key[0]
        tx = x["throughput"] if x else None
        ty = y["throughput"] if y else None
        ratio = f"{ty / tx:.2f}x" if tx and ty else "-"
        lines.append(f"| {bs} | {_num(tx, '.1f')} | {_num(ty, '.1f')} | {ratio} | "
                     f"{_num(x['latency_ms']['p50'] if x else None, '.2f')} | "
                     f"{_num(y['latency_ms']['p50'] if y else None, '.2f')} | "
                     f"{_pct(x['top1'] if x else None)} | {_pct(y['top1'] if y else None)} |")
    notes = [f"A: {a['run']} ({a['backend']}, {a['inputs']} inputs); "
             f"B: {b['run']} ({b['backend']}, {b['inputs']} inputs)"]
    if a["data"] != b["data"]:
        notes.append(f"note: different data ({a['data']} vs {b['data']})")
    if a["backend"] != b["backend"]:
        notes.append("note: different backends; throughputs measure different things")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--batch-sizes {text!r}: expected comma-separated integers, e.g. 1,4,8,16,32,64") from None
    if not sizes or any(s < 1 for s in sizes):
        raise UserError(f"--batch-sizes {text!r}: expected positive integers")
    return sizes


def _cmd_eval(args: Any) -> int:
    options = EvalOptions(
        batch_sizes=_batch_sizes(args.batch_sizes), backend=args.backend, outfmt=args.outfmt.upper(),
        timing=TimingOptions(warmup=args.warmup, min_iterations=args.min_iterations, min_seconds=args.min_seconds,
                             max_seconds=args.max_seconds),
        limit=args.limit, threads=args.threads)
    if args.warmup < 0 or args.min_iterations < 1 or args.min_seconds < 0 or (args.limit or 1) < 1:
        raise UserError("--warmup >= 0, --min-iterations >= 1, --min-seconds >= 0 and --limit >= 1 are required")
    if args.compare:
        if args.run_dir:
            raise UserError("give either RUN_DIR or --compare RUN_A RUN_B, not both")
        if args.data:
            for run in args.compare:
                res = evaluate(run, args.data, options, force=args.force)
                print(f"wrote {res['outdir']}/", file=sys.stderr)
        a, b = (load_eval(r) for r in args.compare)
        print(compare_markdown(a, b), end="")
        return 0
    if not args.run_dir:
        raise UserError("eval: name a run directory (written by graphopt apply), or --compare RUN_A RUN_B")
    if not args.data:
        raise UserError("eval: --data DIR is required (graphopt data prepares it)")
    if args.dry_run:
        print("\n".join(dry_run_lines(args.run_dir, args.data, options, args.output)))
        return 0
    res = evaluate(args.run_dir, args.data, options, args.output, force=args.force)
    print(eval_markdown(res), end="")
    print(f"wrote {res['outdir']}/: eval.json, eval.md, throughput.png, outputs/")
    return 0


def add_cli(subparsers: Any) -> None:
    from .cli import add_force_argument

    p = subparsers.add_parser("eval", help="accuracy (top-1/top-5) and throughput per batch size of a run "
                                           "(ATC + ais_bench when installed, else onnxruntime)")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory written by graphopt apply")
    p.add_argument("--data", help="folder of .bin files + labels.txt (graphopt data); several inputs: one "
                                  "sub-folder per input, DIR/<input>/*.bin, files matched by name")
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                   help="default %(default)s; a run compiled with atc.dynamic evaluates its profiles instead")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "ais_bench"], default="auto")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="two evaluated runs side by side (with --data: evaluate both first)")
    p.add_argument("-o", "--output", help="results folder (default RUN_DIR/eval)")
    add_force_argument(p, "results")
    p.add_argument("--outfmt", default="BIN", type=str.upper, choices=OUTPUT_FORMATS,
                   help="output files, as ais_bench's --outfmt")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default %(default)s)")
    p.add_argument("--min-iterations", type=int, default=20, help="timed calls at least (default %(default)s)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed compute at least (default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="stop timing a batch size after this wall time (default %(default)s)")
    p.add_argument("--limit", type=int, help="only the first N inputs")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: onnxruntime's)")
    p.add_argument("--dry-run", action="store_true", help="print the atc and ais_bench commands, run nothing")
    p.set_defaults(func=_cmd_eval)
