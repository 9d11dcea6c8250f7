"""Is graph B faster than graph A on the NPU? Each compiled by ATC, timed by ais_bench, decided by a sign test.

The same race as ``graphopt.core.latency.race`` (rounds in alternating order, B faster only when it wins clearly
more rounds than chance gives), with the NPU as the backend: both models go through ``atc`` (one job each, the
feed's shapes static) and each round runs ``ais_bench`` once per model, ``--loop`` calls, on the feed written as
``.bin`` files; a round's time is that run's mean NPU compute time. ``graphopt optimize --gate speed`` uses it when
``atc`` and ais_bench are installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from ..core.errors import UserError
from ..core.latency import Race, race_timers
from .ais_bench import ais_bench_argv, run_ais_bench, summary_latency
from .atc import atc_jobs
from .cann_tools import run_atc

__all__ = ["npu_race"]


def _compile(model: onnx.ModelProto, stem: str, feed: Mapping[str, np.ndarray], soc_version: str, atc: str,
             workdir: Path, log: Callable[[str], None]) -> Path:
    onnx.save(model, workdir / f"{stem}.onnx")
    inputs = [(name, list(arr.shape)) for name, arr in feed.items()]
    jobs = atc_jobs(model=f"{stem}.onnx", output_stem=stem, inputs=inputs, batch_sizes=[1],
                    soc_version=soc_version)
    run_atc(workdir, jobs, atc, log)
    return jobs[0].om_path(workdir)


def _time(prefix: Sequence[str], om: Path, folders: list[Path], workdir: Path, name: str, batch: int,
          loop: int) -> float:
    argv = ais_bench_argv(prefix, om, folders, workdir / "ais", name, "BIN", batch, 2) + ["--loop", str(loop)]
    _, summary = run_ais_bench(argv, workdir / "ais", name)
    mean = summary_latency(summary)[0]["mean"]
    if mean is None:
        raise UserError(f"ais_bench reported no mean NPU compute time for {om.name}")
    return float(mean)


def npu_race(a: onnx.ModelProto, b: onnx.ModelProto, feed: Mapping[str, np.ndarray], *, atc: str,
             ais_bench: Sequence[str], soc_version: str, workdir: Path, rounds: int = 7, loop: int = 20,
             alpha: float = 0.05, log: Callable[[str], None] = lambda msg: None) -> Race:
    """Compile ``a`` and ``b`` with ATC in ``workdir`` and race them with ais_bench (see the module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)
    om_a = _compile(a, "race_a", feed, soc_version, atc, workdir, log)
    om_b = _compile(b, "race_b", feed, soc_version, atc, workdir, log)
    folders = []
    for k, (name, arr) in enumerate(feed.items()):
        folder = workdir / f"input{k}"
        folder.mkdir(exist_ok=True)
        np.ascontiguousarray(arr).tofile(folder / "item_0.bin")
        folders.append(folder)
    batch = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
    runs = iter(range(1 << 30))  # each ais_bench run its own output folder
    return race_timers(lambda: _time(ais_bench, om_a, folders, workdir, f"a_{next(runs)}", batch, loop),
                       lambda: _time(ais_bench, om_b, folders, workdir, f"b_{next(runs)}", batch, loop),
                       rounds=rounds, alpha=alpha)
