"""Huawei's CANN tools as graphopt eval finds and runs them.

- **atc** (on PATH): the run directory's ATC jobs (``graphopt.ascend.atc``, ``atc_jobs.json``), one ``.om`` per
  batch size (a dynamic run: per job), run in the run directory as ``atc.sh`` runs them; a batch size the run
  lacks is the first job with that batch size (``AtcJob.with_batch_size``).
- **ais_bench** (``python3 -m ais_bench``; ``$GRAPHOPT_AIS_BENCH`` overrides the command): see
  ``graphopt.ascend.ais_bench``.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..core.errors import GraphoptError
from ..core.outputs import record_files
from .atc import AtcJob

__all__ = ["ToolFailed", "find_atc", "ais_bench_command", "run_atc"]


class ToolFailed(GraphoptError):
    """An external tool (atc, ais_bench) exited with an error."""

    exit_code = 1


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_atc() -> str | None:
    """``atc``'s path, or None when CANN is not installed (or its set_env.sh not sourced)."""
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


def run_atc(run_dir: Path, jobs: Sequence[AtcJob], atc: str, log: Callable[[str], None] = _stderr) -> None:
    """Run the jobs whose ``.om`` is missing, in the run directory (where atc.sh runs them)."""
    for job in jobs:
        if job.om_path(run_dir) is not None:
            continue
        log(f"eval: atc: compiling {job.label}: {job.shell()}")
        before = set(os.listdir(run_dir))
        try:
            proc = subprocess.run([atc, *job.argv()[1:]], cwd=run_dir, capture_output=True, text=True)
            logfile = run_dir / (f"atc_bs{job.batch_size}.log" if job.dynamic is None else f"atc_{job.output}.log")
            logfile.write_text(proc.stdout + proc.stderr)
        finally:
            # What ATC made in the run (the .om, its log, fusion_result.json, kernel_meta/) is graphopt's: listed
            # in the run's marker, so the next graphopt apply to this run may replace it.
            record_files(run_dir, set(os.listdir(run_dir)) - before)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise ToolFailed(f"atc failed for {job.label} (exit {proc.returncode}): {tail[0]} "
                             f"(full log: {logfile})")
        if job.om_path(run_dir) is None:
            raise ToolFailed(f"atc exited 0 for {job.label} but wrote no {job.expected_om(run_dir)}")

