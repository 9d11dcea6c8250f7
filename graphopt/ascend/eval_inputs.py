"""What ``graphopt eval`` reads: a run directory (its model's inputs as ``.bin`` items, its class-score output) and
a data folder resolved against it (each input's files, matched by name, and the labels), and top-1 / top-5 of the
output rows against those labels.

Data: a single-input model reads ``DIR/*.bin`` (``graphopt data``'s folder) or ``DIR/<input>/``; a model with
several inputs one sub-folder per input, ``DIR/<input>/*.bin`` (``graphopt.core.datasets.input_folder_name``), item
k of every input in files of the same name. Each file holds one item in the model's input dtype (int64 token ids,
bool masks, fp16, ...), its size checked against the item shape (the run's verification shape without the batch,
what the ATC jobs compile). ``labels.txt`` is read from ``DIR``, else from the first input folder that has one.

Rows (``EvalUnit``): one per batch size of a run compiled per batch size; one per profile of a dynamic run
(``atc.dynamic``: ``graphopt.ascend.dynamic``), whose items are the data's when the profile's item shapes are the
data's, else seeded random items of the profile's shapes (throughput only).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.datasets import LABELS_FILE, META_FILE, input_folder_name, read_labels_file
from ..core.errors import UserError
from ..core.model_inputs import np_dtype
from .atc import ATC_JOBS_FILE, AtcJob, jobs_for_batch_sizes, read_atc_jobs
from .bin_files import BinInput, input_files
from .dynamic import Profile

__all__ = ["EvalRun", "load_run", "EvalData", "input_dirs", "check_data", "accuracy", "EvalUnit", "eval_units",
           "profile_inputs", "seeded_items", "profile_ais_args", "output_bytes"]


@dataclass(frozen=True)
class EvalRun:
    """What ``graphopt apply`` left in a run directory that eval needs."""

    path: Path
    name: str
    model: Path
    inputs: tuple[BinInput, ...]  # every model input, in the model's order
    classes: int | None  # columns of the class-score output; None: no such output (throughput only)
    class_output: int | None  # its index among the model's outputs
    fixed_batch: int | None  # the model's batch dimension when it is not dynamic

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self.inputs[0].item_shape


_FLOATS = (1, 10, 11, 16)  # ONNX FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _class_output(proto) -> tuple[int | None, int | None]:
    """(index, classes) of the first class-score output: float, rank 2, a fixed number of columns above one."""
    for k, out in enumerate(proto.graph.output):
        tt = out.type.tensor_type
        dims = tt.shape.dim if tt.HasField("shape") else ()
        if tt.elem_type in _FLOATS and len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 1:
            return k, dims[1].dim_value
    return None, None


def load_run(run_dir: str | Path) -> EvalRun:
    import onnx

    from ..core.inputs import resolve_inputs
    from ..core.model_inputs import model_inputs

    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory {path}: no such folder (graphopt apply writes one)")
    model = path / "model.onnx"
    if not model.is_file():
        raise UserError(f"run directory {path}: no model.onnx (the recipe's emit must include model)")
    proto = onnx.load(str(model), load_external_data=False)
    report_path = path / "report.json"
    name, shapes = path.name, {}
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
            name = report["recipe"]["name"]
            if report.get("input", {}).get("name") and report["input"].get("shape") is not None:
                shapes[report["input"]["name"]] = tuple(report["input"]["shape"])
            for d in report.get("inputs") or ():  # every input's verification shape (what atc.sh compiles)
                shapes[d["name"]] = tuple(d["shape"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{report_path}: not a graphopt report (recipe.name, input.name, input.shape)") from None
    model_ins = model_inputs(proto)
    if not model_ins:
        raise UserError(f"{model}: has no inputs")
    if any(m.name not in shapes for m in model_ins):
        plan = resolve_inputs(proto)  # the defaults of graphopt.core.inputs for what the report does not say
        for inp in plan.inputs:
            shapes.setdefault(inp.name, tuple(inp.shape))
    any_batch = any(m.has_batch for m in model_ins)
    inputs, fixed_batch = [], None
    for m in model_ins:
        if m.kind != "tensor" or m.dtype is None or m.dtype == "string":
            raise UserError(f"{model}: input {m.name!r} is {m.describe()}: graphopt eval feeds numeric tensors "
                            "from .bin files")
        shape = shapes[m.name]
        stacked = len(shape) > 0 and (m.has_batch or not any_batch)
        if stacked and not m.has_batch and fixed_batch is None:
            fixed_batch = int(m.dims[0]) if m.dims else None
        inputs.append(BinInput(m.name, m.dtype, tuple(shape[1:]) if stacked else tuple(shape), stacked))
    class_output, classes = _class_output(proto)
    return EvalRun(path, name, model, tuple(inputs), classes, class_output, fixed_batch or None)


@dataclass(frozen=True)
class EvalData:
    """A data folder resolved against a run: per input (the model's order) its folder and files, item k of every
    input at position k; labels by the first input's file stems."""

    root: Path
    dirs: tuple[Path, ...]
    files: dict[str, list[Path]]
    labels: dict[str, int]
    flat: bool  # one input, its files directly in root

    def first(self, run: EvalRun) -> list[Path]:
        return self.files[run.inputs[0].name]


def input_dirs(data: Path, run: EvalRun) -> tuple[list[Path], bool]:
    """Each input's folder: ``DIR`` itself for a single-input model whose files are there (the flat layout),
    else ``DIR/<input folder name>`` (``graphopt.core.datasets.input_folder_name``)."""
    if len(run.inputs) == 1 and (not data.is_dir() or input_files(data)
                                 or not (data / input_folder_name(run.inputs[0].name)).is_dir()):
        return [data], True
    return [data / input_folder_name(i.name) for i in run.inputs], False


def check_data(data_dir: str | Path, run: EvalRun, limit: int | None) -> EvalData:
    data = Path(data_dir)
    if not data.is_dir():
        raise UserError(f"--data {data}: no such folder (graphopt data writes one)")
    dirs, flat = input_dirs(data, run)
    names = ", ".join(repr(i.name) for i in run.inputs)
    for inp, d in zip(run.inputs, dirs):
        if not d.is_dir():
            raise UserError(f"--data {data}: no folder {d.name}/ for input {inp.name!r} (a model with several "
                            f"inputs takes one sub-folder per input, named after it: {names})")
    files: dict[str, list[Path]] = {}
    first = run.inputs[0]
    for inp, d in zip(run.inputs, dirs):
        meta_path = d / META_FILE
        if meta_path.is_file():
            try:
                settings = json.loads(meta_path.read_text())["settings"]
                shape, dtype = settings.get("item_shape"), settings.get("dtype")
            except (ValueError, KeyError, TypeError, AttributeError):
                shape = dtype = None
            if shape is not None and tuple(shape) != inp.item_shape:
                raise UserError(f"--data {d}: items are {shape}, the model's input {inp.name!r} takes "
                                f"{list(inp.item_shape)} (prepare the data with this run's recipe)")
            if dtype is not None and dtype != inp.dtype:
                raise UserError(f"--data {d}: items are {dtype}, the model's input {inp.name!r} takes {inp.dtype}")
        found = input_files(d)
        if not found:
            raise UserError(f"--data {d}: no .bin or .npy files" + ("" if flat else f" for input {inp.name!r}"))
        files[inp.name] = found
    order = files[first.name][:limit] if limit else files[first.name]
    for inp, d in zip(run.inputs[1:], dirs[1:]):  # items are matched across inputs by name
        by_stem = {p.name.split(".")[0]: p for p in files[inp.name]}
        matched = []
        for f in order:
            stem = f.name.split(".")[0]
            if stem not in by_stem:
                raise UserError(f"--data {d}: no {stem}.bin for input {inp.name!r}, which {dirs[0].name}/ has for "
                                f"input {first.name!r} (each input's folder holds a file of the same name per item)")
            matched.append(by_stem[stem])
        if len(files[inp.name]) != len(files[first.name]):
            extra = sorted(set(by_stem) - {f.name.split(".")[0] for f in files[first.name]})
            raise UserError(f"--data {d}: {extra[0]} has no file for input {first.name!r} in {dirs[0].name}/ "
                            "(each input's folder holds a file of the same name per item)")
        files[inp.name] = matched
    files[first.name] = order
    for inp in run.inputs:
        for f in files[inp.name]:
            if f.suffix.lower() == ".bin" and f.stat().st_size != inp.item_nbytes:
                raise UserError(f"--data {f}: {f.stat().st_size} bytes, but one item of input {inp.describe()} "
                                f"is {inp.item_nbytes} bytes (prepared for another model or input?)")
    labels_at = [data / LABELS_FILE] + [d / LABELS_FILE for d in dirs]
    labels_path = next((p for p in labels_at if p.is_file()), None)
    labels = read_labels_file(labels_path) if labels_path else {}
    return EvalData(data, tuple(dirs), files, labels, flat)


def accuracy(rows: Mapping[str, np.ndarray], labels: Mapping[str, int], names: Sequence[str]) -> dict[str, Any]:
    """Top-1 / top-5 over the inputs ``names`` that have a label; inputs without an output count as wrong."""
    labelled = [n for n in names if n in labels]
    missing = [n for n in labelled if n not in rows]
    top1 = top5 = 0
    for n in labelled:
        if n not in rows:
            continue
        row = np.asarray(rows[n], dtype=np.float64)
        label = labels[n]
        top1 += int(row.argmax() == label)
        k = min(5, row.size)
        top5 += int(label in np.argpartition(-row, k - 1)[:k])
    count = len(labelled)
    return {"labelled": count, "evaluated": count - len(missing), "missing_outputs": len(missing),
            "top1": top1 / count if count else None, "top5": top5 / count if count else None,
            "top1_correct": top1, "top5_correct": top5}



@dataclass(frozen=True)
class EvalUnit:
    """One row of ``graphopt eval``: a batch size (``profile`` None) or a dynamic run's profile; ``job``: the ATC
    job compiling it (None when no job is needed: onnxruntime on a run compiled per batch size)."""

    label: str  # the outputs folder: bs<N>, or the profile's label
    batch_size: int
    job: AtcJob | None
    profile: Profile | None


def eval_units(run_dir: Path, batch_sizes: Sequence[int], need_jobs: bool) -> list[EvalUnit]:
    """The rows to evaluate: every profile of every job when the run is dynamic (``batch_sizes`` do not apply),
    else one per batch size (with its job when ``need_jobs``)."""
    jobs = read_atc_jobs(run_dir) if need_jobs or (Path(run_dir) / ATC_JOBS_FILE).is_file() else []
    if jobs and jobs[0].dynamic is not None:
        return [EvalUnit(p.label, p.batch_size, j, p) for j in jobs for p in (j.dynamic.profiles if j.dynamic else ())]
    chosen = jobs_for_batch_sizes(jobs, batch_sizes) if need_jobs else [None] * len(batch_sizes)
    return [EvalUnit(f"bs{bs}", bs, job, None) for bs, job in zip(batch_sizes, chosen)]


def profile_inputs(run: EvalRun, profile: Profile | None) -> tuple[BinInput, ...] | None:
    """The run's inputs with a profile's item shapes; None when the data's items fit the profile as they are."""
    if profile is None:
        return None
    shapes = dict(profile.shapes)
    shaped = tuple(replace(i, item_shape=tuple(shapes[i.name][1:] if i.stacked else shapes[i.name]))
                   for i in run.inputs)
    return None if shaped == run.inputs else shaped


def seeded_items(inputs: Sequence[BinInput], count: int, folder: Path, seed: int = 0
                 ) -> tuple[dict[str, list[Path]], list[Path]]:
    """``count`` seeded items per input as ``.bin`` files, one folder per input under ``folder`` (normal floats,
    zero integers, false booleans): a profile's shapes when the data has other ones. Returns (files, folders)."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    dirs = []
    for inp in inputs:
        d = folder / input_folder_name(inp.name)
        d.mkdir(parents=True)
        dirs.append(d)
        dt = np_dtype(inp.dtype)
        files[inp.name] = []
        for k in range(count):
            arr = rng.standard_normal(inp.item_shape) if dt.kind == "f" else np.zeros(inp.item_shape)
            path = d / f"item_{k}.bin"
            np.asarray(arr).astype(dt).tofile(path)
            files[inp.name].append(path)
    return files, dirs


def profile_ais_args(model: Path, profile: Profile | None) -> tuple[str, ...]:
    """ais_bench's arguments selecting ``profile`` of a dynamic ``.om`` (none for a static one). A ``--dymShape``
    profile (``atc.dynamic.ranges``) also gets ``--outputSize``: ais_bench cannot size the outputs of a model
    compiled with shape ranges and asks for each output's bytes (its Readme: required for dynamic shapes), here
    the output shapes ``model`` (the run's ``model.onnx``) infers at the profile's input shapes."""
    if profile is None:
        return ()
    args = profile.ais_args
    if args[:1] == ("--dymShape",):
        args = (*args, "--outputSize", ",".join(str(n) for n in output_bytes(model, dict(profile.shapes))))
    return args


def output_bytes(model: Path, shapes: Mapping[str, Sequence[int]]) -> list[int]:
    """Each graph output's size in bytes when ``model``'s inputs have ``shapes`` (name -> dims), from shape
    inference on the model without its weights; a ``UserError`` when an output's shape stays unknown."""
    import onnx

    from ..core.shapes import infer_shapes

    light = onnx.load_from_string(_weightless_bytes(str(model)))  # a copy: its input dims are set below
    for vi in light.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    for vi in light.graph.output:  # a declared symbolic dim would stand: the inference says what it is here
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    inferred = infer_shapes(light).graph
    typed = {vi.name: vi for vi in (*inferred.value_info, *inferred.output) if vi.type.tensor_type.HasField("shape")}
    sizes = []
    for out in light.graph.output:
        t = typed.get(out.name, out).type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if not t.HasField("shape") or None in dims or not t.elem_type:
            raise UserError(f"{model}: the shape of output {out.name!r} at inputs {dict(shapes)} cannot be inferred, "
                            "and ais_bench needs every output's size (--outputSize) to run a model compiled with "
                            "shape ranges")
        sizes.append(int(np.prod(dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize)
    return sizes


@functools.lru_cache(maxsize=4)
def _weightless_bytes(path: str) -> bytes:
    """The run's model without its weights, serialized: read once for all of a run's profiles."""
    from ..core.model import Model

    return Model.load(path).weightless().SerializeToString()
