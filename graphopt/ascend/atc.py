"""The hand-off to Ascend's ATC compiler: config files in the formats ATC takes, and the commands.

- ``ops_info.json`` for ``--modify_mixlist`` (only honoured with a mixed precision mode: ``allow_mix_precision*``,
  ``mixed_float16`` / ``mixed_bfloat16``): ``{"black-list": {"to-add": [...], "to-remove": [...]},
  "white-list": {...}}`` of Ascend op types.
- ``op_precision.ini`` for ``--op_precision_mode``: ``[ByOpType]`` / ``[ByNodeName]`` sections of ``name=mode``
  lines, or bare ``OpType=mode`` lines for a CANN before 6.0 (which reads no node names): ``graphopt.ascend.cann``.
- ``keep_dtype.cfg`` for ``--keep_dtype``: one node name or ``OpType::TypeName`` per line.
- Op type names in all three may be ONNX or Ascend ones; ONNX names are written as the Ascend type ATC's parser
  builds (``graphopt.ascend.op_types``), and a name that is neither is a ``UserError`` with the closest names.
- ``atc.sh``: one ``atc`` command per batch size, ``--input_shape`` naming every input of the model
  (``image:16,3,224,224;meta:16,8``): the batch size goes into each input's first dim where that dim is the batch
  (symbolic in the model); every other dim is the verification shape's. ``--input_format=NCHW`` when every input
  is rank 4 (images), else ``ND``. With ``atc.dynamic`` (``graphopt.ascend.dynamic``) the varying dims are ``-1``
  (or ``lo~hi``) with the gear flag, one job for all batch sizes except with image sizes (one per batch size).
  The precision flag is ``--precision_mode`` or ``--precision_mode_v2`` as the job's CANN version reads it.
- ``atc_jobs.json``: the same jobs as records (``AtcJob``: flags, model and output, every input's shape, config
  files, dynamic profiles), what ``graphopt eval`` and the backends read; ``atc.sh`` is written from them and
  never read back.
"""
from __future__ import annotations

import glob
import json
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core.errors import UserError
from .cann import DEFAULT_CANN, has_op_precision_sections, has_shape_ranges, precision_flag
from .dynamic import AtcDynamic, DynamicSpec, ModelDims, dynamic_shapes
from . import op_types

__all__ = ["ops_info_json", "op_precision_ini", "keep_dtype_cfg", "kept_op_types",
           "config_files", "CONFIG_FLAGS", "AtcInput", "AtcJob", "atc_jobs", "atc_commands", "atc_script",
           "ATC_JOBS_FILE", "ATC_JOBS_FORMAT", "jobs_json", "read_atc_jobs", "jobs_for_batch_sizes"]

ATC_JOBS_FILE = "atc_jobs.json"
ATC_JOBS_FORMAT = "graphopt-atc-jobs-2"


def _ascend(name: str, where: str) -> str:
    """The Ascend type of an op type name in a config (``where``); an unknown name is a ``UserError``."""
    op_types.check_op_type(name, where)
    return op_types.ascend_op_type(name)


def ops_info_json(mixlist: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    unknown = set(mixlist) - {"black-list", "white-list"}
    if unknown:
        raise UserError(f"mixlist: unknown list {sorted(unknown)[0]!r} (ATC takes 'black-list' and 'white-list')")
    out: dict[str, dict[str, list[str]]] = {}
    for lst in ("black-list", "white-list"):
        if lst not in mixlist:
            continue
        for action in ("to-add", "to-remove"):
            names = mixlist[lst].get(action) or []
            if names:
                mapped = [_ascend(n, f"mixlist {lst}.{action}") for n in names]
                out.setdefault(lst, {})[action] = list(dict.fromkeys(mapped))
    return json.dumps(out, indent=4) + "\n"


def op_precision_ini(op_precision: Mapping[str, str], nodes: Mapping[str, str] | None = None,
                     cann: str = DEFAULT_CANN) -> str:
    """``op_precision.ini``: ``op_precision`` by op type, ``nodes`` by node name (CANN 6.0 and later only)."""
    by_type = "".join(f"{_ascend(op, 'op_precision')}={mode}\n" for op, mode in op_precision.items())
    if not has_op_precision_sections(cann):
        if nodes:
            raise UserError(f"op_precision: node {next(iter(nodes))!r}: CANN {cann} reads op_precision.ini by op "
                            "type only ([ByNodeName] from 6.0); set atc.cann or give op types")
        return by_type
    text = f"[ByOpType]\n{by_type}" if by_type else ""
    if nodes:
        text += ("\n" if text else "") + "[ByNodeName]\n" + "".join(f"{n}={mode}\n" for n, mode in nodes.items())
    return text


def keep_dtype_cfg(entries: Sequence[str]) -> str:
    """One entry per line; an ``OpType::`` entry's type is written as Ascend's."""
    lines = []
    for e in entries:
        if e.startswith("OpType::"):
            e = "OpType::" + _ascend(e[len("OpType::"):], "keep_dtype")
        lines.append(f"{e}\n")
    return "".join(lines)


def kept_op_types(configs: Mapping[str, Any]) -> list[str]:
    """The op types the configs' keep lists name: mixlist ``to-add`` lists and ``keep_dtype`` ``OpType::`` entries."""
    names = [n for lst in (configs.get("mixlist") or {}).values() for n in lst.get("to-add") or []]
    names += [e[len("OpType::"):] for e in configs.get("keep_dtype") or [] if e.startswith("OpType::")]
    return list(dict.fromkeys(names))


def config_files(configs: Mapping[str, Any], cann: str = DEFAULT_CANN) -> dict[str, str]:
    """File name -> content for the compiler configs the passes asked for, as ATC of CANN ``cann`` reads them.
    ``op_precision``: {op type: mode}; ``op_precision_nodes``: {node name: mode}."""
    files = {}
    if configs.get("mixlist"):
        files["ops_info.json"] = ops_info_json(configs["mixlist"])
    if configs.get("op_precision") or configs.get("op_precision_nodes"):
        files["op_precision.ini"] = op_precision_ini(configs.get("op_precision") or {},
                                                     configs.get("op_precision_nodes"), cann)
    if configs.get("keep_dtype"):
        files["keep_dtype.cfg"] = keep_dtype_cfg(configs["keep_dtype"])
    return files


# config file -> the ATC flag that reads it, in the order the flags follow --precision_mode
CONFIG_FLAGS = (("ops_info.json", "modify_mixlist"), ("op_precision.ini", "op_precision_mode"),
                ("keep_dtype.cfg", "keep_dtype"))


@dataclass(frozen=True)
class AtcInput:
    """One model input of an ATC job: its dims with the job's batch size in place (``-1`` or ``lo~hi`` where a
    dynamic job lets them vary), and whether the first dim is the batch (symbolic in the model) and so follows
    the batch size."""

    name: str
    dims: tuple[int | str, ...]
    batched: bool


@dataclass(frozen=True)
class AtcJob:
    """One ``atc`` run: compile ``model`` for ``batch_size`` (None: the batch varies, ``dynamic`` says how) into
    ``<output>.om`` (paths relative to the run directory). ``precision``: (flag, value) of the precision flag;
    ``configs``: (file, flag) of each config file the job passes; ``cann``: the CANN version the flags are for."""

    model: str
    output_stem: str
    batch_size: int | None
    inputs: tuple[AtcInput, ...]
    input_format: str
    soc_version: str
    log: str
    precision: tuple[str, str] | None
    configs: tuple[tuple[str, str], ...]
    extra_args: tuple[str, ...]
    cann: str = DEFAULT_CANN
    dynamic: AtcDynamic | None = None

    @property
    def output(self) -> str:
        """``--output``: ATC writes ``<output>.om``."""
        parts = [self.output_stem] + ([f"bs{self.batch_size}"] if self.batch_size is not None else [])
        return "_".join(parts + ([self.dynamic.suffix] if self.dynamic else []))

    @property
    def label(self) -> str:
        return f"batch size {self.batch_size}" if self.dynamic is None else self.output

    def argv(self) -> list[str]:
        shapes = ";".join(f"{i.name}:" + ",".join(map(str, i.dims)) for i in self.inputs)
        cmd = ["atc", "--framework=5", f"--model={self.model}", f"--output={self.output}",
               f"--input_format={self.input_format}", f"--input_shape={shapes}"]
        if self.dynamic and self.dynamic.flag:
            cmd.append(f"--{self.dynamic.flag}={self.dynamic.value}")
        cmd += [f"--soc_version={self.soc_version}", f"--log={self.log}"]
        if self.precision:
            cmd.append(f"--{self.precision[0]}={self.precision[1]}")
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
        fields["inputs"] = tuple(AtcInput(i["name"], tuple(x if isinstance(x, str) else int(x) for x in i["dims"]),
                                          bool(i["batched"])) for i in d["inputs"])
        fields["precision"] = tuple(d["precision"]) if d["precision"] else None
        fields["configs"] = tuple((str(f), str(flag)) for f, flag in d["configs"])
        fields["extra_args"] = tuple(str(a) for a in d["extra_args"])
        fields["dynamic"] = AtcDynamic.from_dict(d["dynamic"]) if d.get("dynamic") else None
        return cls(**fields)


def atc_jobs(*, model: str, output_stem: str, inputs: Sequence[tuple[str, Sequence[int | None]]],
             batch_sizes: Sequence[int], soc_version: str, log: str = "error", precision_mode: str | None = None,
             configs: Mapping[str, Any] | None = None, extra_args: Sequence[str] = (), cann: str = DEFAULT_CANN,
             precision_mode_v2: str | None = None, dynamic: DynamicSpec | None = None,
             model_dims: Sequence[ModelDims] = ()) -> list[AtcJob]:
    """One ATC job per batch size (with ``dynamic``: as ``graphopt.ascend.dynamic`` says). ``inputs``:
    ``(name, dims)`` of every model input, None where the batch size goes (``InputPlan.atc_inputs()``);
    ``model_dims``: every input's verification shape and model dims, what a dynamic job is checked against;
    ``configs``: what the passes asked for (``config_files``), written for CANN ``cann``."""
    configs = configs or {}
    files = config_files(configs, cann)
    precision = precision_flag(cann, precision_mode, precision_mode_v2, configs.get("precision_mode"),
                               "ops_info.json" in files)
    flags = tuple((file, flag) for file, flag in CONFIG_FLAGS if file in files)
    if dynamic is not None:
        batched = {m.name: m.symbolic(0) for m in model_dims}
        return [AtcJob(model, output_stem, bs, tuple(AtcInput(name, dims, batched[name]) for name, dims in shapes),
                       layout, soc_version, log, precision, flags, tuple(extra_args), cann, dyn)
                for bs, shapes, layout, dyn in dynamic_shapes(dynamic, model_dims, batch_sizes,
                                                              has_shape_ranges(cann), soc_version)]
    layout = "NCHW" if inputs and all(len(dims) == 4 for _, dims in inputs) else "ND"
    return [AtcJob(model, output_stem, bs,
                   tuple(AtcInput(name, tuple(bs if d is None else int(d) for d in dims),
                                  bool(dims) and dims[0] is None) for name, dims in inputs),
                   layout, soc_version, log, precision, flags, tuple(extra_args), cann)
            for bs in batch_sizes]


def atc_commands(**kwargs: Any) -> list[list[str]]:
    """The command lines of ``atc_jobs(**kwargs)``."""
    return [job.argv() for job in atc_jobs(**kwargs)]


def atc_script(jobs: Sequence[AtcJob]) -> str:
    dynamic = next((j.dynamic for j in jobs if j.dynamic), None)
    what = f"with dynamic shapes ({dynamic.mode})" if dynamic else "to one .om per batch size"
    lines = [
        "#!/usr/bin/env bash",
        f"# Written by graphopt: compile model.onnx {what} with Huawei ATC (CANN toolkit).",
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
    by_batch: dict[int | None, AtcJob] = {}
    for job in jobs:
        by_batch.setdefault(job.batch_size, job)
    return [by_batch.get(bs) or jobs[0].with_batch_size(bs) for bs in batch_sizes]
