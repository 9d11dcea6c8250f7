"""Inference backends for ``graphopt eval`` and readers of ais_bench's output, in every layout it has used.

- **ATC** (``atc`` on PATH): the commands of the run directory's ``atc.sh``, one ``.om`` per batch size, run in the
  run directory. A batch size that ``atc.sh`` lacks gets its first command with the batch in ``--input_shape`` and
  ``--output`` changed.
- **ais_bench** (``python3 -m ais_bench``, CANN's tool; ``$GRAPHOPT_AIS_BENCH`` overrides the command): run per
  batch size with ``--output OUT --output_dirname bs<N>``. It writes ``OUT/bs<N>/<input stem>_<output index>.<fmt>``
  (stem: the input file name up to its first dot) and ``OUT/bs<N>_summary.json``; older versions wrote one file
  per *batch*, named after the batch's first input, into a ``YYYY_MM_DD-HH_MM_SS`` folder holding ``sumary.json``.
  When there is no summary file, the printed summary lines are parsed (every known wording, including the old
  ``benchmark.x86_64`` tool's ``throughputRate`` lines).
- **onnxruntime** (the fallback here): the same job on the CPU, writing the outputs and a summary JSON with
  ais_bench's keys in ais_bench's layout, so one postprocess reads both.

Times are milliseconds per inference call (one batch), as ais_bench reports them.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..commands.data import natural_key
from ..core.errors import GraphoptError, UserError
from ..core.outputs import record_files
from ..core.quiet import ort_log_severity

__all__ = ["ToolFailed", "AtcJob", "PADDING_FILE", "OUTPUT_FORMATS", "find_atc", "ais_bench_command",
           "atc_jobs", "run_atc", "ais_bench_argv", "run_ais_bench", "parse_printed_summary", "load_summary_json",
           "find_ais_results", "read_output_file", "collect_outputs", "input_files", "latency_stats",
           "OnnxRuntimeBackend", "TimingOptions", "BinInput", "read_item"]

PADDING_FILE = "padding_infer_fake_file"  # ais_bench's name for the filler of a short last batch
OUTPUT_FORMATS = ("BIN", "NPY", "TXT")
_TIMESTAMP_DIR = re.compile(r"\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}")


class ToolFailed(GraphoptError):
    """An external tool (atc, ais_bench) exited with an error."""

    exit_code = 1


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Finding the tools


def find_atc() -> str | None:
    return shutil.which("atc")


def ais_bench_command() -> list[str] | None:
    """How to start ais_bench, or None when it is not installed."""
    env = os.environ.get("GRAPHOPT_AIS_BENCH")
    if env:
        return shlex.split(env)
    if importlib.util.find_spec("ais_bench") is not None:
        return [sys.executable, "-m", "ais_bench"]
    python3 = shutil.which("python3")
    if python3 and Path(python3).resolve() != Path(sys.executable).resolve():
        try:
            probe = subprocess.run([python3, "-c", "import importlib.util, sys; "
                                    "sys.exit(importlib.util.find_spec('ais_bench') is None)"],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if probe.returncode == 0:
            return [python3, "-m", "ais_bench"]
    return None


# ---------------------------------------------------------------------------------------------------------------
# ATC


@dataclass(frozen=True)
class AtcJob:
    batch_size: int
    argv: tuple[str, ...]
    output: str  # --output value: ATC writes <output>.om (relative to the run directory)
    from_script: bool  # False: derived from atc.sh's first command for a batch size it lacks

    def om_path(self, run_dir: Path) -> Path | None:
        """The compiled model, if present (newer ATC may append an OS/arch suffix to the name)."""
        base = run_dir / self.output
        if base.with_name(base.name + ".om").is_file():
            return base.with_name(base.name + ".om")
        found = sorted(glob.glob(glob.escape(str(base)) + "_*.om"))
        return Path(found[0]) if found else None

    def expected_om(self, run_dir: Path) -> Path:
        return run_dir / f"{self.output}.om"

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)


def _flag(argv: Sequence[str], name: str) -> tuple[int, str] | None:
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            return i, a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(argv):
            return i, argv[i + 1]
    return None


def _set_flag(argv: list[str], name: str, value: str) -> None:
    i, _ = _flag(argv, name) or (None, None)
    if i is None:
        argv.append(f"--{name}={value}")
    elif argv[i].startswith(f"--{name}="):
        argv[i] = f"--{name}={value}"
    else:
        argv[i + 1] = value


def atc_jobs(run_dir: str | Path, batch_sizes: Sequence[int]) -> list[AtcJob]:
    """The ATC command for each batch size, from the run directory's ``atc.sh``."""
    script = Path(run_dir) / "atc.sh"
    if not script.is_file():
        raise UserError(f"{run_dir}: no atc.sh (the recipe's emit must include atc)")
    commands = []
    for line in script.read_text().splitlines():
        try:
            argv = shlex.split(line, comments=True)
        except ValueError:
            continue
        if argv and argv[0] == "atc":
            commands.append(argv)
    if not commands:
        raise UserError(f"{script}: holds no atc command")
    by_batch: dict[int, list[str]] = {}
    for argv in commands:
        shape = _flag(argv, "input_shape")
        if shape:
            first = shape[1].split(";")[0].rsplit(":", 1)[-1].split(",")[0]
            if first.isdigit():
                by_batch.setdefault(int(first), argv)
    jobs = []
    batched: set[str] | None | bool = False  # False: model.onnx not read yet (read once, when first needed)
    for bs in batch_sizes:
        if bs in by_batch:
            argv, from_script = list(by_batch[bs]), True
        else:
            argv, from_script = list(commands[0]), False
            shape = _flag(argv, "input_shape")
            if shape is None:
                raise UserError(f"{script}: the atc command has no --input_shape to set batch size {bs} in")
            if batched is False:
                batched = _batched_inputs(Path(run_dir))
            _set_flag(argv, "input_shape", _with_batch(shape[1], bs, batched))
            out = _flag(argv, "output")
            if out is not None:
                _set_flag(argv, "output", re.sub(r"(_bs\d+)?$", f"_bs{bs}", out[1], count=1))
        out = _flag(argv, "output")
        if out is None:
            raise UserError(f"{script}: an atc command has no --output")
        jobs.append(AtcJob(bs, tuple(argv), out[1], from_script))
    return jobs


def _batched_inputs(run_dir: Path) -> set[str] | None:
    """Names of the run's model inputs whose first dim is the batch (symbolic in ``model.onnx``); None when the
    model cannot be read (then only the first input of ``--input_shape`` takes the batch, as before)."""
    from ..core.inputs import model_inputs

    try:
        return {m.name for m in model_inputs(run_dir / "model.onnx") if m.has_batch}
    except Exception:
        return None


def _with_batch(input_shape: str, bs: int, batched: set[str] | None) -> str:
    """``--input_shape`` (``a:1,3,224,224;b:1,16``) with ``bs`` as the first dim of every batched input."""
    parts = []
    for k, part in enumerate(input_shape.split(";")):
        name, _, dims = part.rpartition(":")
        values = dims.split(",") if dims else []
        if values and values[0] and (name in batched if batched is not None else k == 0):
            values[0] = str(bs)
        parts.append(f"{name}:{','.join(values)}")
    return ";".join(parts)


def run_atc(run_dir: Path, jobs: Sequence[AtcJob], atc: str, log: Callable[[str], None] = _stderr) -> None:
    """Run the jobs whose ``.om`` is missing, in the run directory (where atc.sh runs them)."""
    for job in jobs:
        if job.om_path(run_dir) is not None:
            continue
        log(f"eval: atc: compiling batch size {job.batch_size}: {job.shell()}")
        before = set(os.listdir(run_dir))
        try:
            proc = subprocess.run([atc, *job.argv[1:]], cwd=run_dir, capture_output=True, text=True)
            logfile = run_dir / f"atc_bs{job.batch_size}.log"
            logfile.write_text(proc.stdout + proc.stderr)
        finally:
            # What ATC made in the run (the .om, its log, fusion_result.json, kernel_meta/) is graphopt's: listed
            # in the run's marker, so the next graphopt apply to this run may replace it.
            record_files(run_dir, set(os.listdir(run_dir)) - before)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise ToolFailed(f"atc failed for batch size {job.batch_size} (exit {proc.returncode}): {tail[0]} "
                             f"(full log: {logfile})")
        if job.om_path(run_dir) is None:
            raise ToolFailed(f"atc exited 0 for batch size {job.batch_size} but wrote no {job.expected_om(run_dir)}")


# ---------------------------------------------------------------------------------------------------------------
# ais_bench: running it and reading what it wrote


def ais_bench_argv(prefix: Sequence[str], om: Path, inputs: Path | Sequence[Path], out_root: Path, dirname: str,
                   outfmt: str, batch_size: int, warmup: int) -> list[str]:
    """ais_bench's command line. ``inputs``: one folder, or one folder per model input in the model's input order
    (``--input dirA,dirB``: ais_bench pairs the i-th file of every folder, each folder in its natural order)."""
    folders = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    for f in folders:
        if "," in str(f):
            raise UserError(f"--data {f}: ais_bench's --input separates folders with commas, so a folder's path "
                            "cannot hold one; move or link the data elsewhere")
    return [*prefix, "--model", str(om), "--input", ",".join(str(f) for f in folders), "--output", str(out_root),
            "--output_dirname", dirname, "--outfmt", outfmt, "--batchsize", str(batch_size),
            "--warmup_count", str(warmup)]


def run_ais_bench(argv: Sequence[str], out_root: Path, dirname: str) -> tuple[Path, dict[str, Any]]:
    """Run ais_bench; returns (its output folder, the normalised summary)."""
    started = time.time()
    out_root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    log = out_root / f"{dirname}.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ToolFailed(f"ais_bench failed (exit {proc.returncode}): {tail[0]} (full log: {log})")
    folder, summary_path = find_ais_results(out_root, dirname, started)
    summary = load_summary_json(summary_path) if summary_path else {}
    printed = parse_printed_summary(proc.stdout + "\n" + proc.stderr)
    if not summary.get("NPU_compute_time") and not printed:
        raise ToolFailed(f"ais_bench ran but neither a summary JSON nor summary lines were found (log: {log})")
    for key, value in printed.items():
        summary.setdefault(key, value)
    summary["graphopt_summary_source"] = str(summary_path) if summary_path else "printed summary lines"
    return folder, summary


_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
_STATS_LINE = re.compile(r"(NPU_compute_time|H2D_latency|D2H_latency)\s*\(ms\)\s*:\s*(.*)")
_STAT = re.compile(r"(min|max|mean|median|percentile\(\s*(\d+)%\s*\))\s*=\s*" + _NUM)
_THROUGHPUTS = [
    re.compile(r"throughput\s+1000\*batchsize\.mean\(([^)]*)\)/NPU_compute_time\.mean\(([^)]*)\)\s*:\s*" + _NUM),
    re.compile(r"throughput\s+1000\*batchsize\(([^)]*)\)/NPU_compute_time\.mean\(([^)]*)\)\s*:\s*" + _NUM),
    re.compile(r"throughput\s*\(1000\*batchsize/NPU_compute_time\)\s*:\s*()()" + _NUM),
]
_SUMMARY_THROUGHPUT = re.compile(r"summary throughput\s*:\s*" + _NUM)
_BENCHMARK_INFER = re.compile(r"\[infer\]\s*throughputRate\s*:\s*" + _NUM
                              + r"(?:\s*,\s*Interface throughputRate\s*:\s*" + _NUM + r")?"
                              + r"(?:\s*,\s*moduleLatency\s*:\s*" + _NUM + r")?")
_BENCHMARK_E2E = re.compile(r"\[e2e\]\s*throughputRate\s*:\s*" + _NUM + r"(?:\s*,\s*latency\s*:\s*" + _NUM + r")?")


def parse_printed_summary(text: str) -> dict[str, Any]:
    """The numbers in ais_bench's (or benchmark.x86_64's) printed summary, in the summary JSON's shape.

    Understands ``NPU_compute_time (ms): min = .., max = .., mean = .., median = .., percentile(99%) = ..``
    (and the H2D/D2H lines of ``--display_all_summary``), the three throughput wordings
    (``1000*batchsize.mean(B)/NPU_compute_time.mean(T): V``, ``1000*batchsize(B)/...``,
    ``(1000*batchsize/NPU_compute_time): V``), ``summary throughput:V`` of several devices, and the old
    benchmark tool's ``[infer] throughputRate: X, Interface throughputRate: Y, moduleLatency: Z``.
    """
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = _STATS_LINE.search(line)
        if m:
            stats = {}
            for s in _STAT.finditer(m.group(2)):
                key = f"percentile({s.group(2)}%)" if s.group(2) else s.group(1)
                stats[key] = float(s.group(3))
            if stats:
                out[m.group(1)] = stats
            continue
        m = _SUMMARY_THROUGHPUT.search(line)
        if m:
            out["summary_throughput"] = float(m.group(1))
            continue
        for pattern in _THROUGHPUTS:
            m = pattern.search(line)
            if m:
                out["throughput"] = float(m.group(3))
                if m.group(1):
                    try:
                        out["batchsize"] = float(m.group(1))
                    except ValueError:
                        pass
                break
        m = _BENCHMARK_INFER.search(line)
        if m:
            out["benchmark_infer"] = {"throughputRate": float(m.group(1)),
                                      "Interface throughputRate": float(m.group(2)) if m.group(2) else None,
                                      "moduleLatency": float(m.group(3)) if m.group(3) else None}
            if "throughput" not in out:
                out["throughput"] = float(m.group(2) or m.group(1))
            continue
        m = _BENCHMARK_E2E.search(line)
        if m:
            out["benchmark_e2e"] = {"throughputRate": float(m.group(1)),
                                    "latency": float(m.group(2)) if m.group(2) else None}
    return out


def load_summary_json(path: str | Path) -> dict[str, Any]:
    """A ``*_summary.json`` / ``sumary.json``, with percentile keys normalised (some versions put spaces in them:
    ``"percentile(99%                )"``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"ais_bench summary {path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"ais_bench summary {path}: expected a JSON object")
    for key in ("NPU_compute_time", "H2D_latency", "D2H_latency"):
        stats = data.get(key)
        if isinstance(stats, dict):
            data[key] = {re.sub(r"\s+", "", k): v for k, v in stats.items()}
    return data


def find_ais_results(out_root: Path, dirname: str | None, started: float | None = None) -> tuple[Path, Path | None]:
    """(output folder, summary JSON or None) of one ais_bench run under ``out_root``.

    ``OUT/<dirname>/`` + ``OUT/<dirname>_summary.json`` (current); ``OUT/<dirname>/sumary.json`` (older);
    without ``--output_dirname``: the newest ``YYYY_MM_DD-HH_MM_SS`` folder (created after ``started``).
    """
    out_root = Path(out_root)
    folder = out_root / dirname if dirname else None
    if folder is None or not folder.is_dir():
        stamped = [p for p in out_root.iterdir() if p.is_dir() and _TIMESTAMP_DIR.fullmatch(p.name)
                   and (started is None or p.stat().st_mtime >= started - 2)]
        if not stamped:
            raise ToolFailed(f"ais_bench output: no folder {dirname or 'YYYY_MM_DD-HH_MM_SS'} in {out_root}")
        folder = max(stamped, key=lambda p: p.name)
    for cand in (out_root / f"{folder.name}_summary.json", folder / "sumary.json", folder / "summary.json"):
        if cand.is_file():
            return folder, cand
    return folder, None


def read_output_file(path: Path, classes: int | None = None) -> np.ndarray:
    """One ais_bench output file (``.bin`` raw, ``.npy``, ``.txt`` rows of space-separated values) as rows.

    ``.bin`` holds no dtype: float32 unless its size only fits float16 rows of ``classes`` values.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".txt":
        rows = [np.array(line.split(), dtype=np.float64) for line in path.read_text().splitlines() if line.strip()]
        arr = np.stack(rows) if rows else np.zeros((0, classes or 0))
    elif suffix == ".bin":
        size = path.stat().st_size
        if classes and size % (4 * classes) and size % (2 * classes) == 0:
            arr = np.fromfile(path, dtype=np.float16)
        else:
            arr = np.fromfile(path, dtype=np.float32)
    else:
        raise UserError(f"output {path}: unknown format (expected .bin, .npy or .txt)")
    arr = np.asarray(arr, dtype=np.float32)
    if classes:
        if arr.size % classes:
            raise UserError(f"output {path}: {arr.size} values, not a multiple of {classes} classes")
        return arr.reshape(-1, classes)
    return arr.reshape(1, -1) if arr.ndim < 2 else arr.reshape(-1, arr.shape[-1])


def _stem(path: str | Path) -> str:
    return os.path.basename(str(path)).split(".")[0]


def input_files(data_dir: Path) -> list[Path]:
    """The inputs ais_bench takes from a folder: ``*.bin`` / ``*.npy``, in its natural order."""
    files = [p for p in Path(data_dir).iterdir() if p.suffix.lower() in (".bin", ".npy") and p.is_file()]
    return sorted(files, key=lambda p: natural_key(str(p)))


def collect_outputs(folder: Path, summary: Mapping[str, Any] | None, inputs: Sequence[Path],
                    classes: int | None, output_index: int = 0) -> dict[str, np.ndarray]:
    """{input stem: output row} from one ais_bench (or onnxruntime backend) output folder.

    With the summary's ``filesinfo`` (``{sample: {infiles, outfiles}}``) the mapping is exact. Without it, each
    ``<stem>_<output_index>.<fmt>`` belongs to the input of that stem and, when it holds k rows (older versions
    saved one file per batch), to the k inputs from there on in ais_bench's natural order; rows past the last
    input are the padding of a short last batch and are dropped.
    """
    rows: dict[str, np.ndarray] = {}
    filesinfo = (summary or {}).get("filesinfo") or {}
    if filesinfo:
        for info in filesinfo.values():
            infiles = [f for f in info.get("infiles", []) if os.path.basename(str(f)) != PADDING_FILE]
            outfiles = info.get("outfiles", [])
            if not infiles or output_index >= len(outfiles):
                continue
            out = Path(outfiles[output_index])
            if not out.is_file():
                out = folder / out.name  # the run was moved: the names still hold
            if not out.is_file():
                continue
            arr = read_output_file(out, classes)
            # A sample lists one file per model input; older versions listed a batch's files.
            real = infiles if len(arr) == len(infiles) else infiles[:1]
            for f, row in zip(real, arr):
                rows[_stem(f)] = row
        if rows:
            return rows
    order = [_stem(p) for p in inputs]
    position = {s: i for i, s in enumerate(order)}
    suffix = f"_{output_index}"
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.suffix.lower() not in (".bin", ".npy", ".txt") or not path.stem.endswith(suffix):
            continue
        stem = path.stem[: -len(suffix)]
        if stem not in position:
            continue
        arr = read_output_file(path, classes)
        start = position[stem]
        for k, row in enumerate(arr):
            if start + k < len(order):
                rows.setdefault(order[start + k], row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Latency statistics


def latency_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """ais_bench's statistics of a list of per-call times (ms), plus p50 / p90."""
    t = np.asarray(times_ms, dtype=np.float64)
    if not t.size:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "percentile(99%)": 0.0, "count": 0}
    return {"min": float(t.min()), "max": float(t.max()), "mean": float(t.mean()), "median": float(np.median(t)),
            "percentile(99%)": float(np.percentile(t, 99)), "count": int(t.size),
            "p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90))}


# ---------------------------------------------------------------------------------------------------------------
# onnxruntime


@dataclass(frozen=True)
class TimingOptions:
    """Warm-up calls (untimed), then timed calls until both ``min_iterations`` and ``min_seconds`` of compute are
    reached (stopping anyway after ``max_seconds`` of wall time once 3 calls are timed)."""

    warmup: int = 3
    min_iterations: int = 20
    min_seconds: float = 2.0
    max_seconds: float = 120.0


def _save(path: Path, arr: np.ndarray, fmt: str) -> None:
    if fmt == "NPY":
        np.save(path, arr)
    elif fmt == "TXT":
        flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)
        fmt_spec = "%f" if np.issubdtype(arr.dtype, np.floating) else "%d"
        with open(path, "w") as f:
            for row in flat:
                f.write(" ".join(fmt_spec % v for v in row) + " \n")
    else:
        np.ascontiguousarray(arr).tofile(path)


def _pad_pool_inputs(model_path: Path) -> bool:
    """Does a Pad feed a MaxPool? onnxruntime's Pad_Fusion folds such a (zero) Pad into the pool's own padding,
    which pads with -inf, and changes the result wherever the input is negative (BiT's stem)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    producers = {o: n for n in model.graph.node for o in n.output}
    return any(n.op_type == "MaxPool" and n.input and getattr(producers.get(n.input[0]), "op_type", "") == "Pad"
               for n in model.graph.node)


@dataclass(frozen=True)
class BinInput:
    """One model input as ``graphopt eval`` feeds it from files: each ``.bin`` / ``.npy`` holds one item of
    ``item_shape`` in ``dtype`` (the model's); a batch stacks items along a new first axis, except for a rank-0
    input (``stacked`` False), which takes the batch's first item as it is."""

    name: str
    dtype: str
    item_shape: tuple[int, ...]
    stacked: bool = True

    @property
    def item_nbytes(self) -> int:
        from ..core.inputs import np_dtype

        return int(np.prod(self.item_shape, dtype=np.int64)) * np_dtype(self.dtype).itemsize

    def describe(self) -> str:
        return f"{self.name!r} ({self.dtype} {list(self.item_shape)} per item)"


def read_item(path: Path, inp: BinInput) -> np.ndarray:
    """One item file of ``inp``: raw ``.bin`` in the input's dtype, or ``.npy`` (cast to it), shaped as an item.
    A size or shape that does not fit is one line naming the file and the input."""
    from ..core.inputs import np_dtype

    dt = np_dtype(inp.dtype)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"--data {path}: not a readable .npy ({str(e).splitlines()[0]})") from None
        if arr.size != int(np.prod(inp.item_shape, dtype=np.int64)):
            raise UserError(f"--data {path}: shaped {list(arr.shape)}, but one item of input {inp.describe()} "
                            f"holds {int(np.prod(inp.item_shape, dtype=np.int64))} values")
        return np.asarray(arr).astype(dt).reshape(inp.item_shape)
    size = path.stat().st_size
    if size != inp.item_nbytes:
        raise UserError(f"--data {path}: {size} bytes, but one item of input {inp.describe()} is "
                        f"{inp.item_nbytes} bytes (prepared for another model or input?)")
    return np.fromfile(path, dtype=dt).reshape(inp.item_shape)


@dataclass
class OnnxRuntimeBackend:
    """Runs ``model.onnx`` with onnxruntime's CPU provider, full graph optimisations (what a deployment uses),
    feeding every input in ``inputs`` (``BinInput``, the model's order)."""

    model_path: Path
    inputs: Sequence[BinInput]
    threads: int | None = None
    session: Any = field(init=False)
    disabled_optimizers: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = ort_log_severity()  # fatal only unless -v (graphopt.core.quiet)
        if self.threads:
            opts.intra_op_num_threads = self.threads
        self.disabled_optimizers = ("Pad_Fusion",) if _pad_pool_inputs(self.model_path) else ()
        try:
            self.session = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=list(self.disabled_optimizers))
        except Exception as e:
            raise UserError(f"onnxruntime cannot load {self.model_path}: {str(e).splitlines()[0]}") from None
        names = [i.name for i in self.session.get_inputs()]
        for inp in self.inputs:
            if inp.name not in names:
                raise UserError(f"{self.model_path}: no input {inp.name!r} (inputs: {', '.join(names)})")
        missing = [n for n in names if n not in {i.name for i in self.inputs}]
        if missing:
            raise UserError(f"{self.model_path}: input {missing[0]!r} has no data")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        threads = (f"{self.threads} intra-op threads" if self.threads
                   else f"onnxruntime's default intra-op threads ({os.cpu_count()} cores)")
        return {"backend": "onnxruntime", "onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                "device": "CPU", "threads": threads, "disabled_optimizers": list(self.disabled_optimizers)}

    def run(self, batch_size: int, files: Mapping[str, Sequence[Path]], out_root: Path, dirname: str,
            outfmt: str = "BIN", timing: TimingOptions = TimingOptions(),
            input_dirs: Sequence[Path] = ()) -> tuple[Path, dict[str, Any]]:
        """Infer every item (``files``: input name -> its files, item k of every input at position k; batched as
        ais_bench batches them: a short last batch is padded with its first item), write
        ``out_root/dirname/<stem of the first input's file>_<i>.<fmt>`` and ``out_root/dirname_summary.json``;
        returns both.

        Timed: ``session.run`` alone, on inputs already in memory; reading files and writing outputs are not.
        """
        folder = out_root / dirname
        folder.mkdir(parents=True, exist_ok=True)
        first_input = self.inputs[0].name
        count = len(files[first_input])

        def load(start: int) -> dict[str, np.ndarray]:
            feed = {}
            for inp in self.inputs:
                group = [read_item(Path(f), inp) for f in files[inp.name][start:start + batch_size]]
                if not inp.stacked:
                    feed[inp.name] = group[0]
                    continue
                group += [group[0]] * (batch_size - len(group))
                feed[inp.name] = np.stack(group)
            return feed

        starts = list(range(0, count, batch_size))
        run = self.session.run
        names = self.output_names
        first = load(0)
        for _ in range(timing.warmup):
            run(names, first)
        times: list[float] = []
        cache: list[dict[str, np.ndarray]] = []
        cache_bytes = 0
        filesinfo: dict[str, Any] = {}
        sample = 0
        wall0 = time.perf_counter()
        for gi, start in enumerate(starts):
            feed = first if gi == 0 else load(start)
            t0 = time.perf_counter()
            outs = run(names, feed)
            times.append((time.perf_counter() - t0) * 1e3)
            if cache_bytes < 256 << 20:  # keep a few batches for the timing loop
                cache.append(feed)
                cache_bytes += sum(x.nbytes for x in feed.values())
            for j, f in enumerate(files[first_input][start:start + batch_size]):
                outfiles = []
                for k, o in enumerate(outs):
                    path = folder / f"{_stem(f)}_{k}.{outfmt.lower()}"
                    o = np.asarray(o)
                    _save(path, o[j:j + 1] if o.ndim else o, outfmt)
                    outfiles.append(str(path))
                # one file per model input, as ais_bench lists a sample
                filesinfo[str(sample)] = {"infiles": [str(files[i.name][start + j]) for i in self.inputs],
                                          "outfiles": outfiles}
                sample += 1
        i = 0
        total_ms = sum(times)
        while len(times) < timing.min_iterations or total_ms < timing.min_seconds * 1e3:
            if time.perf_counter() - wall0 > timing.max_seconds and len(times) >= 3:
                break
            feed = cache[i % len(cache)]
            i += 1
            t0 = time.perf_counter()
            run(names, feed)
            dt = (time.perf_counter() - t0) * 1e3
            times.append(dt)
            total_ms += dt
        stats = latency_stats(times)
        idle = {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "percentile(99%)": 0.0, "count": 0}
        dirs = [str(d) for d in input_dirs] or sorted({str(Path(fs[0]).parent) for fs in files.values() if fs})
        summary = {
            "NPU_compute_time": {k: v for k, v in stats.items() if k not in ("p50", "p90")},
            "H2D_latency": dict(idle),
            "D2H_latency": dict(idle),
            "throughput": 1000.0 * batch_size / stats["mean"] if stats["mean"] else 0.0,
            "filesinfo": filesinfo,
            "args": {"model": str(self.model_path), "input": ",".join(dirs),
                     "output": str(out_root), "output_dirname": dirname, "outfmt": outfmt,
                     "batchsize": batch_size, "warmup_count": timing.warmup, "loop": 1},
            "npu_compute_time_list": times,
            "pid": os.getpid(),
            "graphopt": {**self.describe(), "warmup_calls": timing.warmup, "timed_calls": len(times),
                         "timed": "onnxruntime session.run only (CPU, inputs already in memory); "
                                  "excludes reading .bin files, preprocessing and writing outputs",
                         "dataset_calls": len(starts)},
        }
        (out_root / f"{dirname}_summary.json").write_text(json.dumps(summary))
        return folder, summary
