"""ais_bench (CANN's inference tool): its command line, running it, and reading what it wrote, in every layout it
has used.

Run per batch size with ``--output OUT --output_dirname bs<N>``, it writes
``OUT/bs<N>/<input stem>_<output index>.<fmt>`` (stem: the input file name up to its first dot) and
``OUT/bs<N>_summary.json``; older versions wrote one file per *batch*, named after the batch's first input, into a
``YYYY_MM_DD-HH_MM_SS`` folder holding ``sumary.json``. When there is no summary file, the printed summary lines
are parsed (every known wording, including the old ``benchmark.x86_64`` tool's ``throughputRate`` lines). The
onnxruntime stand-in (``graphopt.ascend.ort_backend``) writes the same layout, so one postprocess reads both.

Times are milliseconds per inference call (one batch), as ais_bench reports them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.datasets import natural_key
from ..core.errors import UserError
from .bin_files import item_stem
from .cann_tools import ToolFailed

__all__ = ["PADDING_FILE", "OUTPUT_FORMATS", "ais_bench_argv", "run_ais_bench", "parse_printed_summary",
           "load_summary_json", "find_ais_results", "read_output_file", "collect_outputs", "latency_stats",
           "summary_latency"]

PADDING_FILE = "padding_infer_fake_file"  # ais_bench's name for the filler of a short last batch
OUTPUT_FORMATS = ("BIN", "NPY", "TXT")
_TIMESTAMP_DIR = re.compile(r"\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}")


def ais_bench_argv(prefix: Sequence[str], om: Path, inputs: Path | Sequence[Path], out_root: Path, dirname: str,
                   outfmt: str, batch_size: int, warmup: int, dynamic: Sequence[str] = ()) -> list[str]:
    """ais_bench's command line. ``inputs``: one folder, or one folder per model input in the model's input order
    (``--input dirA,dirB``: ais_bench pairs the i-th file of every folder, each folder in its natural order);
    ``dynamic``: the arguments selecting a dynamic model's profile (``--dymBatch 4``, ``--dymHW 448,448``,
    ``--dymDims "a:1,16;b:1,16"``, ``--dymShape ...``: ``graphopt.ascend.dynamic.Profile.ais_args``)."""
    folders = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    for f in folders:
        if "," in str(f):
            raise UserError(f"--data {f}: ais_bench's --input separates folders with commas, so a folder's path "
                            "cannot hold one; move or link the data elsewhere")
    return [*prefix, "--model", str(om), "--input", ",".join(str(f) for f in folders), "--output", str(out_root),
            "--output_dirname", dirname, "--outfmt", outfmt, "--batchsize", str(batch_size),
            "--warmup_count", str(warmup), *dynamic]


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
                rows[item_stem(f)] = row
        if rows:
            return rows
    order = [item_stem(p) for p in inputs]
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



def summary_latency(summary: Mapping[str, Any]) -> tuple[dict[str, float | None], int | None]:
    """(p50 / p90 / p99 / mean in ms, timed calls) of one run's summary: exact percentiles from every call's time
    when it lists them, else the printed summary's median and 99th percentile (no p90)."""
    times = summary.get("npu_compute_time_list") or []
    if times:
        st = latency_stats(times)
        return {"p50": st["p50"], "p90": st["p90"], "p99": st["percentile(99%)"], "mean": st["mean"]}, st["count"]
    npu = summary.get("NPU_compute_time") or {}
    return ({"p50": npu.get("median"), "p90": None, "p99": npu.get("percentile(99%)"), "mean": npu.get("mean")},
            npu.get("count"))
