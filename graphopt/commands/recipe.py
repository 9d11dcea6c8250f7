"""Recipes: reading a recipe file into a validated ``Recipe``.

A recipe is YAML (``yaml_reader.YamlLoader``), validated completely before anything runs: every mistake becomes one
line naming the recipe file and the YAML path (``passes[2].axis``), with the closest valid names for an unknown one.
The modules a recipe lists under ``plugins:`` are imported first, so the passes they register can be named. See the
README's "Recipe format" for the keys; ``recipe_schema`` holds the sections as dataclasses.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import UserError, closest
from ..core.inputs import InputSpec
from ..core.model_inputs import DTYPES, dtype_name
from ..core.pass_infra import all_passes, get_pass, load_plugin, pass_params, plugin_errors
from ..core.tolerance import CRITERIA, OutputTolerance, Tolerance, tolerance_problem
from .export import exporter_names
from ..ascend.cann import DEFAULT_CANN, PRECISION_MODES, PRECISION_MODES_V2, cann_version, precision_flag
from ..ascend.dynamic import DYNAMIC_MODES, DynamicSpec
from ..ascend.soc import check_soc_version
from .recipe_schema import (EMITS, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, AtcSpec, ModelSpec, PassSpec,
                            PreprocessSpec, Recipe, VerifySpec, build_pass)
from .yaml_reader import Section, check_value, load_yaml, resolve_path

__all__ = ["load_recipe", "parse_recipe", "INPUT_KEYS", "TOP_KEYS"]

TOP_KEYS = ("name", "plugins", "model", "input", "inputs", "passes", "verify", "emit", "atc", "preprocess")
INPUT_KEYS = ("name", "shape", "dtype", "range", "values", "data")


def parse_recipe(data: Any, path: Path | None = None) -> Recipe:
    """A recipe's YAML data (``path`` names it in errors and anchors its relative paths), validated."""
    file = str(path) if path else "<recipe>"
    base = path.parent if path else None
    top = Section(data, "", file, TOP_KEYS)
    name = top.get("name", str, path.stem if path else "recipe")
    plugins = _load_plugins(top, file)
    model = _parse_model(top, file, base)
    specs = _parse_inputs(top, file, base)
    passes = _parse_passes(top.get("passes", list, []), file)
    verify = _parse_verify(top, file, base)
    emit = tuple(top.get("emit", list[typing.Literal[EMITS]], list(EMITS)))  # type: ignore[valid-type]
    atc = _parse_atc(top, file)
    first_shape = specs[0].shape if specs and specs[0].shape is not None else ()
    preprocess = _parse_preprocess(top.get("preprocess", dict, {}), tuple(first_shape), file)
    return Recipe(name, path, model, tuple(specs), tuple(passes), verify, emit, atc, preprocess,
                  "input" if "input" in top.data else "inputs", plugins)


def _load_plugins(top: Section, file: str) -> tuple[str, ...]:
    """Import every module of ``plugins:`` (before the passes are looked up: they register some)."""
    modules = tuple(top.get("plugins", list[str], []))
    for k, module in enumerate(modules):
        try:
            load_plugin(module)
        except UserError as e:
            raise UserError(f"{file}: plugins[{k}]: {e}") from None
    return modules


def _parse_model(top: Section, file: str, base: Path | None) -> ModelSpec:
    m = Section(top.get("model", dict), "model", file, ["exporter", "onnx", "args", "checkpoint", "opset", "seed"])
    exporter = m.get("exporter", str | None, None)
    onnx_path = m.get("onnx", str | None, None)
    if (exporter is None) == (onnx_path is None):
        raise UserError(f"{file}: model: give exactly one of model.exporter or model.onnx")
    if exporter is not None:
        names = exporter_names()
        if exporter not in names:
            raise UserError(f"{file}: model.exporter: unknown exporter {exporter!r}{closest(exporter, names)}")
    return ModelSpec(
        exporter=exporter,
        onnx=resolve_path(base, onnx_path, "model.onnx", file),
        args=m.get("args", dict[str, Any], {}),
        checkpoint=resolve_path(base, m.get("checkpoint", str | None, None), "model.checkpoint", file),
        opset=m.get("opset", int | None, None),
        seed=m.get("seed", int, 0),
    )


def _parse_inputs(top: Section, file: str, base: Path | None) -> list[InputSpec]:
    if "input" in top.data and "inputs" in top.data:
        raise UserError(f"{file}: inputs: give either input: (one input) or inputs: (a list of them), not both")
    if "input" in top.data:
        return [_parse_input(top.get("input", dict), "input", file, base)]
    raw_inputs = top.get("inputs", list, [])
    specs = [_parse_input(e, f"inputs[{k}]", file, base) for k, e in enumerate(raw_inputs)]
    names = [sp.name for sp in specs]
    dup = next((n for k, n in enumerate(names) if n in names[:k]), None)
    if dup is not None:
        raise UserError(f"{file}: inputs[{names.index(dup, names.index(dup) + 1)}].name: input {dup!r} is "
                        "listed twice")
    return specs


def _parse_passes(raw_passes: list, file: str) -> list[PassSpec]:
    passes = []
    for k, entry in enumerate(raw_passes):
        where = f"passes[{k}]"
        if isinstance(entry, str):
            entry = {"pass": entry}
        if not isinstance(entry, dict) or "pass" not in entry:
            raise UserError(f"{file}: {where}: expected a mapping with a 'pass' key, e.g. '- pass: simplify'")
        pname = entry["pass"]
        cls = get_pass(pname) if isinstance(pname, str) else None
        if cls is None:
            broken = "".join(f"; {why}" for why in plugin_errors().values())
            hint = closest(str(pname), all_passes()) or " (graphopt passes lists them)"
            raise UserError(f"{file}: {where}.pass: unknown pass {pname!r}{hint}{broken}")
        params = {p.name: p for p in pass_params(cls)}
        args = {}
        for key, value in entry.items():
            if key in ("pass", "on_fail"):
                continue
            if key not in params:
                raise UserError(f"{file}: {where}.{key}: unknown argument of pass {pname!r}"
                                f"{closest(str(key), list(params) + ['on_fail'])}")
            args[key] = check_value(value, params[key].type, f"{where}.{key}", file)
        missing = [p for p in params.values() if p.default is dataclasses.MISSING and p.name not in args]
        if missing:
            raise UserError(f"{file}: {where}.{missing[0].name}: required argument of pass {pname!r} is missing")
        on_fail = entry.get("on_fail", "stop")
        check_value(on_fail, typing.Literal["stop", "skip"], f"{where}.on_fail", file)
        spec = PassSpec(pname, args, on_fail, where)
        try:
            build_pass(spec)  # the pass's own __post_init__ checks (value ranges, op names) run now, not mid-pipeline
        except (ValueError, TypeError, UserError) as e:
            raise UserError(f"{file}: {where}: {e}") from None
        passes.append(spec)
    return passes


def _parse_verify(top: Section, file: str, base: Path | None) -> VerifySpec:
    v = Section(top.get("verify", dict, {}), "verify", file, ["enabled", "samples", "seed", "data", "tolerance",
                                                               "on_fail"])
    t = Section(v.get("tolerance", dict, {}), "verify.tolerance", file, [*CRITERIA, "outputs"])
    criteria = {f.name: t.get(f.name, float | None, f.default) for f in dataclasses.fields(Tolerance)
                if f.name in CRITERIA}
    for criterion, value in criteria.items():
        problem = tolerance_problem(criterion, value)
        if problem:
            raise UserError(f"{file}: verify.tolerance.{criterion}: {problem}")
    per_output = []
    for out_name, entry in t.get("outputs", dict[str, Any], {}).items():
        where = f"verify.tolerance.outputs.{out_name}"
        o = Section(entry, where, file, [*CRITERIA, "top1"])
        overrides = []
        for criterion in CRITERIA:
            if criterion in o.data:
                value = o.get(criterion, float | None)
                problem = tolerance_problem(criterion, value)
                if problem:
                    raise UserError(f"{file}: {where}.{criterion}: {problem}")
                overrides.append((criterion, value))
        per_output.append(OutputTolerance(out_name, tuple(overrides), o.get("top1", bool | None, None)))
    tol = Tolerance(**criteria, outputs=tuple(per_output))
    if all(getattr(tol, name) is None for name in CRITERIA) and not per_output:
        raise UserError(f"{file}: verify.tolerance: every criterion is null; set at least one")
    samples = v.get("samples", int, 2)
    if samples < 1:
        raise UserError(f"{file}: verify.samples: must be at least 1, got {samples}")
    return VerifySpec(
        enabled=v.get("enabled", bool, True),
        samples=samples,
        seed=v.get("seed", int, 0),
        data=resolve_path(base, v.get("data", str | None, None), "verify.data", file),
        tolerance=tol,
        on_fail=v.get("on_fail", typing.Literal["stop", "skip"], "stop"),
    )


def _parse_atc(top: Section, file: str) -> AtcSpec:
    a = Section(top.get("atc", dict, {}), "atc", file, ["soc_version", "soc_version_unlisted", "cann", "batch_sizes",
                                                       "precision_mode", "precision_mode_v2", "log", "extra_args",
                                                       "dynamic"])
    batch_sizes = tuple(a.get("batch_sizes", list[int], [1]))
    if not batch_sizes or any(b <= 0 for b in batch_sizes):
        raise UserError(f"{file}: atc.batch_sizes: expected positive integers, got {list(batch_sizes)}")
    soc = a.get("soc_version", str, "Ascend310P3")
    unlisted = a.get("soc_version_unlisted", bool, False)
    if not unlisted:
        try:
            check_soc_version(soc, "atc.soc_version")
        except UserError as e:
            raise UserError(f"{file}: {e}") from None
    cann = a.get("cann", str | float, DEFAULT_CANN)
    cann = cann if isinstance(cann, str) else repr(cann)  # `cann: 8.0` unquoted is YAML's number 8.0
    try:
        cann_version(cann)
    except UserError as e:
        raise UserError(f"{file}: {e}") from None
    mode = a.get("precision_mode", typing.Literal[PRECISION_MODES] | None, None)  # type: ignore[valid-type]
    mode_v2 = a.get("precision_mode_v2", typing.Literal[PRECISION_MODES_V2] | None, None)  # type: ignore
    if mode is not None and mode_v2 is not None:
        raise UserError(f"{file}: atc.precision_mode and atc.precision_mode_v2: give one (ATC refuses both, E10056; "
                        f"graphopt writes --precision_mode_v2 for CANN 7.0 and later where one exists)")
    dynamic = _parse_dynamic(a, file)
    if dynamic is not None and dynamic.mode != "image_sizes" and "batch_sizes" in a.data:
        raise UserError(f"{file}: atc.batch_sizes and atc.dynamic.{dynamic.mode}: give one (one .om covers every "
                        "shape of a dynamic model; atc.batch_sizes goes with dynamic image_sizes only)")
    spec = AtcSpec(soc_version=soc, batch_sizes=batch_sizes, precision_mode=mode,
                   log=a.get("log", typing.Literal["debug", "info", "warning", "error", "null"], "error"),
                   extra_args=tuple(a.get("extra_args", list[str], [])), cann=cann, precision_mode_v2=mode_v2,
                   soc_version_unlisted=unlisted, dynamic=dynamic)
    if mode_v2 is not None:
        try:
            precision_flag(cann, None, mode_v2, None, False)
        except UserError as e:
            raise UserError(f"{file}: {e}") from None
    return spec


def _parse_dynamic(a: Section, file: str) -> DynamicSpec | None:
    """``atc.dynamic``: exactly one of its modes (``graphopt.ascend.dynamic``)."""
    if "dynamic" not in a.data:
        return None
    d = Section(a.get("dynamic", dict), "atc.dynamic", file, DYNAMIC_MODES)
    given = [m for m in DYNAMIC_MODES if m in d.data]
    if len(given) != 1:
        raise UserError(f"{file}: atc.dynamic: give exactly one of {', '.join(DYNAMIC_MODES)}"
                        + (f" (got {', '.join(given)})" if given else ""))
    mode = given[0]
    values = d.get(mode, list[int] if mode == "batch_sizes" else list[list[int]])
    try:
        return DynamicSpec(mode, tuple(v if isinstance(v, int) else tuple(v) for v in values))
    except UserError as e:
        raise UserError(f"{file}: {e}") from None


def _parse_input(data: Any, where: str, file: str, base: Path | None) -> InputSpec:
    """One ``inputs:`` entry (or the ``input:`` section): every key but ``name`` optional (see graphopt.core.inputs)."""
    i = Section(data, where, file, INPUT_KEYS)
    name = i.get("name", str)
    shape = i.get("shape", list[int], None)
    if shape is not None and any(d < 0 for d in shape):
        raise UserError(f"{file}: {where}.shape: expected dimensions >= 0, got {list(shape)}")
    dtype = i.get("dtype", str, None)
    if dtype is not None and dtype_name(dtype) is None:
        raise UserError(f"{file}: {where}.dtype: unknown dtype {dtype!r}{closest(dtype, DTYPES)}")
    rng = i.get("range", list[float], None)
    if rng is not None:
        if len(rng) != 2:
            raise UserError(f"{file}: {where}.range: expected [lo, hi], got {rng}")
        if not rng[0] < rng[1]:
            raise UserError(f"{file}: {where}.range: [{rng[0]}, {rng[1]}] is empty (values are drawn from "
                            "[lo, hi): hi must be above lo)")
    values = i.get("values", list[int | float | bool | str], None)
    if values is not None and not values:
        raise UserError(f"{file}: {where}.values: expected at least one value")
    data_path = resolve_path(base, i.get("data", str | None, None), f"{where}.data", file)
    if data_path is not None and data_path.suffix not in (".npy", ".npz"):
        raise UserError(f"{file}: {where}.data: {data_path.name}: expected a .npy or .npz file")
    given = [k for k in ("range", "values", "data") if i.data.get(k) is not None]
    if len(given) > 1:
        raise UserError(f"{file}: {where}: give at most one of range, values, data (got {', '.join(given)})")
    return InputSpec(name, None if shape is None else tuple(shape), dtype_name(dtype) if dtype else None,
                     None if rng is None else tuple(rng), None if values is None else tuple(values), data_path)


def _parse_preprocess(data: Any, shape: tuple[int, ...], file: str) -> PreprocessSpec:
    """The ``preprocess:`` section; crop must give the input's H, W (the .bin files are the model's input)."""
    s = Section(data, "preprocess", file, [f.name for f in dataclasses.fields(PreprocessSpec)])

    def size(key: str) -> tuple[int, ...] | None:
        v = s.get(key, int | list[int] | None, None)
        v = (v,) if isinstance(v, int) else v
        if v is not None and (len(v) not in (1, 2) or any(d <= 0 for d in v)):
            raise UserError(f"{file}: preprocess.{key}: expected a positive size or [height, width], got {v}")
        return None if v is None else tuple(v)

    hw = tuple(shape[-2:]) if len(shape) == 4 else None
    crop = size("crop")
    crop = (crop * 2 if crop and len(crop) == 1 else crop) or hw
    if crop is not None and hw is not None and tuple(crop) != hw:
        raise UserError(f"{file}: preprocess.crop: {list(crop)} differs from the input's height and width "
                        f"{list(hw)} (input.shape {list(shape)})")
    resize = size("resize")
    if resize is None and crop is not None:  # ImageNet's 256 for 224; never smaller than the crop
        resize = (max(int(min(crop) / 0.875), max(crop)),)
    if resize is not None and crop is not None:
        fits = crop[0] <= min(resize) and crop[1] <= min(resize) if len(resize) == 1 else \
            crop[0] <= resize[0] and crop[1] <= resize[1]
        if not fits:
            raise UserError(f"{file}: preprocess.crop {list(crop)} is larger than the resized image "
                            f"(preprocess.resize {list(resize)})")
    channels = shape[1] if len(shape) == 4 else None

    def per_channel(key: str, default: tuple[float, ...]) -> tuple[float, ...]:
        if key not in s.data:  # the ImageNet default; graphopt data checks it against the channels
            return default
        v = s.get(key, float | list[float])
        v = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),)
        if len(v) not in (1, channels or len(v)):
            raise UserError(f"{file}: preprocess.{key}: expected 1 or {channels} values (one per channel), "
                            f"got {len(v)}")
        return v

    mean = per_channel("mean", IMAGENET_MEAN)
    std = per_channel("std", IMAGENET_STD)
    if any(x <= 0 for x in std):
        raise UserError(f"{file}: preprocess.std: must be positive, got {list(std)}")
    scale = s.get("scale", float, 1 / 255)
    if scale <= 0:
        raise UserError(f"{file}: preprocess.scale: must be positive, got {scale}")
    interpolation = s.get("interpolation", typing.Literal[INTERPOLATIONS], "bilinear")  # type: ignore[valid-type]
    return PreprocessSpec(resize, crop, interpolation, mean, std, scale)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise UserError(f"recipe {path}: no such file")
    if path.is_dir():
        raise UserError(f"recipe {path}: is a directory, expected a .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"recipe {path}: cannot be read ({e.__class__.__name__}: {e})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"recipe {path}: invalid YAML{at}: {problem}") from None
    return parse_recipe(data, path)
