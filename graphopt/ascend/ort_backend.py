"""The onnxruntime stand-in for ais_bench: ``model.onnx`` on the CPU, fed from ``.bin`` files, writing outputs and
a summary JSON with ais_bench's keys in ais_bench's layout (``graphopt.ascend.ais_bench``), so one postprocess
reads both. Times are milliseconds per ``session.run`` (one batch)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import UserError
from ..core.sessions import create_session
from .ais_bench import latency_stats
from .bin_files import BinInput, item_stem, read_item, save_output

__all__ = ["TimingOptions", "OnnxRuntimeBackend"]


@dataclass(frozen=True)
class TimingOptions:
    """Warm-up calls (untimed), then timed calls until both ``min_iterations`` and ``min_seconds`` of compute are
    reached (stopping anyway after ``max_seconds`` of wall time once 3 calls are timed)."""

    warmup: int = 3
    min_iterations: int = 20
    min_seconds: float = 2.0
    max_seconds: float = 120.0


def _pad_pool_inputs(model_path: Path) -> bool:
    """Does a Pad feed a MaxPool? onnxruntime's Pad_Fusion folds such a (zero) Pad into the pool's own padding,
    which pads with -inf, and changes the result wherever the input is negative (BiT's stem)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    producers = {o: n for n in model.graph.node for o in n.output}
    return any(n.op_type == "MaxPool" and n.input and getattr(producers.get(n.input[0]), "op_type", "") == "Pad"
               for n in model.graph.node)


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
        pad_pool = _pad_pool_inputs(self.model_path)
        self.disabled_optimizers = ("Pad_Fusion",) if pad_pool else ()
        try:
            self.session = create_session(self.model_path, "deploy", threads=self.threads,
                                          keep_pad_fusion=not pad_pool)
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
                    path = folder / f"{item_stem(f)}_{k}.{outfmt.lower()}"
                    o = np.asarray(o)
                    save_output(path, o[j:j + 1] if o.ndim else o, outfmt)
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
