"""The hand-off to Ascend's ATC compiler: config files in the formats ATC takes, and the commands.

- ``ops_info.json`` for ``--modify_mixlist`` (only honoured with ``--precision_mode=allow_mix_precision``):
  ``{"black-list": {"to-add": [...], "to-remove": [...]}, "white-list": {...}}`` of Ascend op types.
- ``op_precision.ini`` for ``--op_precision_mode``: ``OpType=mode`` lines (the bare form every CANN version reads).
- ``keep_dtype.cfg`` for ``--keep_dtype``: one node name or ``OpType::TypeName`` per line.
- ``atc.sh``: one ``atc`` command per batch size, ``--input_shape`` naming every input of the model
  (``image:16,3,224,224;meta:16,8``): the batch size goes into each input's first dim where that dim is the batch
  (symbolic in the model); every other dim is the verification shape's. ``--input_format=NCHW`` when every input
  is rank 4 (images), else ``ND``.
- ``atc_jobs.json``: the same jobs as records (``AtcJob``: flags, model and output, every input's shape, config
  files), what ``graphopt eval`` and the backends read; ``atc.sh`` is written from them and never read back.
"""
from __future__ import annotations

import glob
import json
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core.errors import UserError

__all__ = ["ASCEND_OP_TYPES", "ascend_op_type", "ops_info_json", "op_precision_ini", "keep_dtype_cfg",
           "config_files", "CONFIG_FLAGS", "AtcInput", "AtcJob", "atc_jobs", "atc_commands", "atc_script",
           "ATC_JOBS_FILE", "ATC_JOBS_FORMAT", "jobs_json", "read_atc_jobs", "jobs_for_batch_sizes"]

ATC_JOBS_FILE = "atc_jobs.json"
ATC_JOBS_FORMAT = "graphopt-atc-jobs-1"

# ONNX op type -> Ascend op type, as ATC names them in mixlists and precision files.
ASCEND_OP_TYPES: dict[str, str] = {
    "LayerNormalization": "LayerNorm",
    "Softmax": "SoftmaxV2",
    "Gelu": "Gelu",
    "MatMul": "MatMulV2",
    "Gemm": "MatMulV2",
    "ReduceMean": "ReduceMeanD",
    "Conv": "Conv2D",
    "Add": "Add",
    "Mul": "Mul",
    "Erf": "Erf",
    "Transpose": "TransposeD",
    "Pow": "Pow",
}


def ascend_op_type(op: str) -> str:
    """The Ascend name of an ONNX op type; Ascend names given directly (e.g. ``LayerNorm``) pass through."""
    return ASCEND_OP_TYPES.get(op, op)


def ops_info_json(mixlist: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    out: dict[str, dict[str, list[str]]] = {}
    for lst in ("black-list", "white-list"):
        if lst not in mixlist:
            continue
        for action in ("to-add", "to-remove"):
            names = mixlist[lst].get(action) or []
            if names:
                mapped: list[str] = []
                for n in names:
                    if ascend_op_type(n) not in mapped:
                        mapped.append(ascend_op_type(n))
                out.setdefault(lst, {})[action] = mapped
    unknown = set(mixlist) - {"black-list", "white-list"}
    if unknown:
        raise UserError(f"mixlist: unknown list {sorted(unknown)[0]!r} (ATC takes 'black-list' and 'white-list')")
    return json.dumps(out, indent=4) + "\n"


def op_precision_ini(op_precision: Mapping[str, str]) -> str:
    return "".join(f"{ascend_op_type(op)}={mode}\n" for op, mode in op_precision.items())


def keep_dtype_cfg(entries: Sequence[str]) -> str:
    return "".join(f"{e}\n" for e in entries)


def config_files(configs: Mapping[str, Any]) -> dict[str, str]:
    """File name -> content for the compiler configs the passes asked for."""
    files = {}
    if configs.get("mixlist"):
        files["ops_info.json"] = ops_info_json(configs["mixlist"])
    if configs.get("op_precision"):
        files["op_precision.ini"] = op_precision_ini(configs["op_precision"])
    if configs.get("keep_dtype"):
        files["keep_dtype.cfg"] = keep_dtype_cfg(configs["keep_dtype"])
    return files


# config file -> the ATC flag that reads it, in the order the flags follow --precision_mode
CONFIG_FLAGS = (("ops_info.json", "modify_mixlist"), ("op_precision.ini", "op_precision_mode"),
                ("keep_dtype.cfg", "keep_dtype"))


@dataclass(frozen=True)
class AtcInput:
    """One model input of an ATC job: its dims with the job's batch size in place, and whether the first dim is
    the batch (symbolic in the model) and so follows the batch size."""

    name: str
    dims: tuple[int, ...]
    batched: bool


@dataclass(frozen=True)
class AtcJob:
    """One ``atc`` run: compile ``model`` for ``batch_size`` into ``<output>.om`` (paths relative to the run
    directory). ``configs``: (file, flag) of each config file the job passes."""

    model: str
    output_stem: str
    batch_size: int
    inputs: tuple[AtcInput, ...]
    input_format: str
    soc_version: str
    log: str
    precision_mode: str | None
    configs: tuple[tuple[str, str], ...]
    extra_args: tuple[str, ...]

    @property
    def output(self) -> str:
        """``--output``: ATC writes ``<output>.om``."""
        return f"{self.output_stem}_bs{self.batch_size}"

    def argv(self) -> list[str]:
        shapes = ";".join(f"{i.name}:" + ",".join(map(str, i.dims)) for i in self.inputs)
        cmd = ["atc", "--framework=5", f"--model={self.model}", f"--output={self.output}",
               f"--input_format={self.input_format}", f"--input_shape={shapes}", f"--soc_version={self.soc_version}",
               f"--log={self.log}"]
        if self.precision_mode:
            cmd.append(f"--precision_mode={self.precision_mode}")
        cmd += [f"--{flag}={file}" for file, flag in self.configs]
        return cmd + list(self.extra_args)

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv())

    def with_batch_size(self, batch_size: int) -> AtcJob:
        """The same job for another batch size: the batched inputs' first dim and the output name change."""
        inputs = tuple(replace(i, dims=(batch_size, *i.dims[1:])) if i.batched and i.dims else i for i in self.inputs)
        return replace(self, batch_size=batch_size, inputs=inputs)

    def expected_om(self, run_dir: Path) -> Path:
        return Path(run_dir) / f"{self.output}.om"

    def om_path(self, run_dir: Path) -> Path | None:
        """The compiled model, if present (newer ATC may append an OS/arch suffix to the name)."""
        base = self.expected_om(run_dir)
        if base.is_file():
            return base
        found = sorted(glob.glob(glob.escape(str(base.with_suffix(""))) + "_*.om"))
        return Path(found[0]) if found else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AtcJob:
        fields = dict(d)
        fields["inputs"] = tuple(AtcInput(i["name"], tuple(int(x) for x in i["dims"]), bool(i["batched"]))
                                 for i in d["inputs"])
        fields["configs"] = tuple((str(f), str(flag)) for f, flag in d["configs"])
        fields["extra_args"] = tuple(str(a) for a in d["extra_args"])
        return cls(**fields)


def atc_jobs(*, model: str, output_stem: str, inputs: Sequence[tuple[str, Sequence[int | None]]],
             batch_sizes: Sequence[int], soc_version: str, log: str = "error", precision_mode: str | None = None,
             configs: Mapping[str, Any] | None = None, extra_args: Sequence[str] = ()) -> list[AtcJob]:
    """One ATC job per batch size. ``inputs``: ``(name, dims)`` of every model input, None where the batch size
    goes (``InputPlan.atc_inputs()``); ``configs``: what the passes asked for (``config_files``)."""
    configs = configs or {}
    files = config_files(configs)
    mode = configs.get("precision_mode") or precision_mode
    if precision_mode and configs.get("precision_mode") and precision_mode != configs["precision_mode"]:
        raise UserError(f"atc.precision_mode is {precision_mode!r} but a pass needs {configs['precision_mode']!r}")
    if "ops_info.json" in files:
        if mode is None:
            mode = "allow_mix_precision"
        elif mode not in ("allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16"):
            raise UserError(f"atc.precision_mode {mode!r}: ATC only honours --modify_mixlist with "
                            "allow_mix_precision; change the precision mode or drop the mixlist pass")
    layout = "NCHW" if inputs and all(len(dims) == 4 for _, dims in inputs) else "ND"
    flags = tuple((file, flag) for file, flag in CONFIG_FLAGS if file in files)
    return [AtcJob(model, output_stem, bs,
                   tuple(AtcInput(name, tuple(bs if d is None else int(d) for d in dims),
                                  bool(dims) and dims[0] is None) for name, dims in inputs),
                   layout, soc_version, log, mode or None, flags, tuple(extra_args))
            for bs in batch_sizes]


def atc_commands(**kwargs: Any) -> list[list[str]]:
    """The command lines of ``atc_jobs(**kwargs)``."""
    return [job.argv() for job in atc_jobs(**kwargs)]


def atc_script(jobs: Sequence[AtcJob]) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Written by graphopt: compile model.onnx to one .om per batch size with Huawei ATC (CANN toolkit).",
        "# Run on a machine with CANN installed (source set_env.sh first); soc_version from `npu-smi info`.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "command -v atc >/dev/null || { echo 'atc not found: install CANN and source its set_env.sh' >&2; exit 127; }",
    ]
    lines += [job.shell() for job in jobs]
    return "\n".join(lines) + "\n"


def jobs_json(jobs: Sequence[AtcJob]) -> str:
    """``atc_jobs.json``: the jobs ``atc.sh`` runs, as records."""
    return json.dumps({"format": ATC_JOBS_FORMAT, "jobs": [j.as_dict() for j in jobs]}, indent=2) + "\n"


def read_atc_jobs(run_dir: str | Path) -> list[AtcJob]:
    """The ATC jobs of a run directory (its ``atc_jobs.json``); a run without them is one ``UserError`` line."""
    run_dir = Path(run_dir)
    path = run_dir / ATC_JOBS_FILE
    if not path.is_file():
        if (run_dir / "atc.sh").is_file():
            raise UserError(f"{run_dir}: no {ATC_JOBS_FILE} beside atc.sh (an older graphopt wrote this run): "
                            "re-run graphopt apply on its recipe")
        raise UserError(f"{run_dir}: no {ATC_JOBS_FILE} (the recipe's emit must include atc)")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != ATC_JOBS_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        jobs = [AtcJob.from_dict(d) for d in data["jobs"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not graphopt's ATC jobs ({e}): re-run graphopt apply on its recipe") from None
    if not jobs:
        raise UserError(f"{path}: holds no ATC job")
    return jobs


def jobs_for_batch_sizes(jobs: Sequence[AtcJob], batch_sizes: Sequence[int]) -> list[AtcJob]:
    """The job for each batch size: the recorded one, else the first one with that batch size."""
    by_batch = {}
    for job in jobs:
        by_batch.setdefault(job.batch_size, job)
    return [by_batch.get(bs) or jobs[0].with_batch_size(bs) for bs in batch_sizes]
