"""Recipes: loading and validation.

A recipe is YAML, read with ``YamlLoader``: PyYAML's safe loader, except that plain numbers are floats as YAML 1.2
reads them (``1e-4`` is a float, not the string YAML 1.1 makes of it). It is validated completely before anything
runs; every mistake becomes one line naming the recipe file and the YAML path (``passes[2].axis``), with the closest
valid names for an unknown one. See the README's "Recipe format" for the keys.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..core.errors import UserError, closest
from ..core.inputs import DTYPES, InputSpec, dtype_name
from ..core.tolerance import CRITERIA, OutputTolerance, Tolerance, tolerance_problem
from ..core.pass_infra import Pass, all_passes, get_pass, pass_params, plugin_errors, type_name

__all__ = ["Recipe", "ModelSpec", "InputSpec", "PassSpec", "VerifySpec", "Tolerance", "OutputTolerance", "CRITERIA",
           "AtcSpec", "PreprocessSpec", "load_recipe", "parse_recipe", "closest", "check_value", "build_pass",
           "tolerance_problem", "YamlLoader", "load_yaml"]

PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "allow_mix_precision", "must_keep_origin_dtype",
                   "force_fp32", "allow_mix_precision_fp16", "allow_mix_precision_bf16")
EMITS = ("model", "report", "atc")


# ---------------------------------------------------------------------------------------------------------------
# YAML


FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.1's float forms (as PyYAML's resolver has them) with the exponent sign optional, plus YAML 1.2's forms 1.1
# lacks: digits with an exponent but no dot (1e-4, 2E5) and a signed leading dot (-.5). PyYAML implements YAML 1.1,
# where `max_abs: 1e-4` is the string '1e-4'; every user writing it means the number.
_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects: a recipe cannot run code) reading plain floats as YAML 1.2 does."""


# The float resolver replaced where it stands in each first-character list, so resolution order is unchanged.
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, _FLOAT_RE if tag == FLOAT_TAG else regexp) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":  # every character a float can start with
    if not any(tag == FLOAT_TAG for tag, _ in YamlLoader.yaml_implicit_resolvers.setdefault(_first, [])):
        YamlLoader.yaml_implicit_resolvers[_first].append((FLOAT_TAG, _FLOAT_RE))


def load_yaml(text: str) -> Any:
    """YAML text as graphopt reads every YAML file (``YamlLoader``); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - YamlLoader is a SafeLoader


# ---------------------------------------------------------------------------------------------------------------
# Recipe sections


@dataclass(frozen=True)
class ModelSpec:
    exporter: str | None = None
    onnx: Path | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    opset: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class PassSpec:
    name: str
    args: Mapping[str, Any]
    on_fail: str  # "stop" | "skip"
    where: str  # YAML path, e.g. "passes[2]"


@dataclass(frozen=True)
class VerifySpec:
    enabled: bool = True
    samples: int = 2
    seed: int = 0
    data: Path | None = None
    tolerance: Tolerance = Tolerance()
    on_fail: str = "stop"


@dataclass(frozen=True)
class AtcSpec:
    soc_version: str = "Ascend310P3"
    batch_sizes: tuple[int, ...] = (1,)
    precision_mode: str | None = None
    log: str = "error"
    extra_args: tuple[str, ...] = ()


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class PreprocessSpec:
    """How ``graphopt data`` turns an image into the model's input (the seed's preprocessing).

    RGB pixels (0..255) -> resize (``(s,)``: shorter side to s, aspect kept; ``(h, w)``: exactly) -> center crop
    ``(h, w)`` -> ``x * scale`` -> ``(x - mean) / std`` per channel -> float32 CHW. ``None`` resize / crop are
    filled in when the recipe is parsed: crop = the input's H, W; resize = shorter side crop / 0.875 (256 for 224).
    """

    resize: tuple[int, ...] | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 1 / 255


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path | None
    model: ModelSpec
    # What the recipe says about the model's inputs (``inputs:``, or ``input:`` as a list of one); inputs not
    # listed are fed as ``graphopt.core.inputs`` says. ``graphopt.core.inputs.resolve_inputs(model, recipe.inputs)``.
    inputs: tuple[InputSpec, ...]
    passes: tuple[PassSpec, ...]
    verify: VerifySpec
    emit: tuple[str, ...]
    atc: AtcSpec
    preprocess: PreprocessSpec = PreprocessSpec()
    inputs_key: str = "inputs"  # how the recipe wrote them: "input" (one mapping) or "inputs" (a list)

    def input_paths(self) -> dict[str, str]:
        """Input name -> the YAML path of its entry (``input``, ``inputs[1]``), for error messages."""
        if self.inputs_key == "input":
            return {s.name: "input" for s in self.inputs}
        return {s.name: f"inputs[{k}]" for k, s in enumerate(self.inputs)}

    @property
    def input(self) -> InputSpec | None:
        """The first input the recipe names (its ``input:``), None when it names none. The single-input view of
        verbs that feed one input; multi-input code uses ``inputs``."""
        return self.inputs[0] if self.inputs else None

    def build_passes(self) -> list[Pass]:
        return [build_pass(p) for p in self.passes]


# ---------------------------------------------------------------------------------------------------------------
# Type checking of YAML values against Python annotations


def _is_instance(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_is_instance(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return all(_is_instance(v, inner) for v in value)
    if origin in (dict, typing.Mapping):
        if not isinstance(value, dict):
            return False
        kt, vt = args if args else (Any, Any)
        return all(_is_instance(k, kt) and _is_instance(v, vt) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def check_value(value: Any, tp: Any, where: str, file: str) -> Any:
    if not _is_instance(value, tp):
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise UserError(f"{file}: {where}: expected {type_name(tp)}, got {type(value).__name__} {shown}")
    if tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and float in typing.get_args(tp)
                       and isinstance(value, int) and not isinstance(value, bool) and int not in typing.get_args(tp)):
        return float(value)
    return value


def build_pass(spec: PassSpec) -> Pass:
    cls = get_pass(spec.name)
    assert cls is not None, spec.name  # validated when the recipe was parsed
    return cls(**spec.args)


# ---------------------------------------------------------------------------------------------------------------
# Parsing


class _Section:
    """A mapping being read, tracking its YAML path and reporting unknown keys."""

    def __init__(self, data: Any, where: str, file: str, keys: Iterable[str]):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{file}: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.file = data, where, file
        known = list(keys)
        for key in data:
            if not isinstance(key, str) or key not in known:
                raise UserError(f"{file}: {self.path(str(key))}: unknown key{closest(str(key), known)}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, tp: Any, default: Any = dataclasses.MISSING) -> Any:
        if key not in self.data:
            if default is dataclasses.MISSING:
                raise UserError(f"{self.file}: {self.path(key)}: required key is missing")
            return default
        return check_value(self.data[key], tp, self.path(key), self.file)


def _resolve(base: Path | None, value: str | None, where: str, file: str, must_exist: bool = True) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    if must_exist and not p.exists():
        raise UserError(f"{file}: {where}: {value}: no such file")
    return p


def parse_recipe(data: Any, path: Path | None = None) -> Recipe:
    file = str(path) if path else "<recipe>"
    base = path.parent if path else None
    top = _Section(data, "", file,
                   ["name", "model", "input", "inputs", "passes", "verify", "emit", "atc", "preprocess"])
    name = top.get("name", str, path.stem if path else "recipe")

    m = _Section(top.get("model", dict), "model", file, ["exporter", "onnx", "args", "checkpoint", "opset", "seed"])
    exporter = m.get("exporter", str | None, None)
    onnx_path = m.get("onnx", str | None, None)
    if (exporter is None) == (onnx_path is None):
        raise UserError(f"{file}: model: give exactly one of model.exporter or model.onnx")
    if exporter is not None:
        from .export import exporter_names

        names = exporter_names()
        if exporter not in names:
            raise UserError(f"{file}: model.exporter: unknown exporter {exporter!r}{closest(exporter, names)}")
    model = ModelSpec(
        exporter=exporter,
        onnx=_resolve(base, onnx_path, "model.onnx", file),
        args=m.get("args", dict[str, Any], {}),
        checkpoint=_resolve(base, m.get("checkpoint", str | None, None), "model.checkpoint", file),
        opset=m.get("opset", int | None, None),
        seed=m.get("seed", int, 0),
    )

    if "input" in top.data and "inputs" in top.data:
        raise UserError(f"{file}: inputs: give either input: (one input) or inputs: (a list of them), not both")
    if "input" in top.data:
        specs = [_parse_input(top.get("input", dict), "input", file, base)]
    else:
        raw_inputs = top.get("inputs", list, [])
        specs = [_parse_input(e, f"inputs[{k}]", file, base) for k, e in enumerate(raw_inputs)]
        names = [sp.name for sp in specs]
        dup = next((n for k, n in enumerate(names) if n in names[:k]), None)
        if dup is not None:
            raise UserError(f"{file}: inputs[{names.index(dup, names.index(dup) + 1)}].name: input {dup!r} is "
                            "listed twice")
    first_shape = specs[0].shape if specs and specs[0].shape is not None else ()

    raw_passes = top.get("passes", list, [])
    passes = []
    registry = all_passes()
    for k, entry in enumerate(raw_passes):
        where = f"passes[{k}]"
        if isinstance(entry, str):
            entry = {"pass": entry}
        if not isinstance(entry, dict) or "pass" not in entry:
            raise UserError(f"{file}: {where}: expected a mapping with a 'pass' key, e.g. '- pass: simplify'")
        pname = entry["pass"]
        if not isinstance(pname, str) or pname not in registry:
            broken = "".join(f"; {why}" for why in plugin_errors().values())
            raise UserError(f"{file}: {where}.pass: unknown pass {pname!r}{closest(str(pname), registry)}{broken}")
        params = {p.name: p for p in pass_params(registry[pname])}
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
            build_pass(spec)  # the pass's own __post_init__ checks (value ranges) run now, not mid-pipeline
        except (ValueError, TypeError) as e:
            raise UserError(f"{file}: {where}: {e}") from None
        passes.append(spec)

    v = _Section(top.get("verify", dict, {}), "verify", file, ["enabled", "samples", "seed", "data", "tolerance",
                                                                "on_fail"])
    t = _Section(v.get("tolerance", dict, {}), "verify.tolerance", file, [*CRITERIA, "outputs"])
    criteria = {f.name: t.get(f.name, float | None, f.default) for f in dataclasses.fields(Tolerance)
                if f.name in CRITERIA}
    for criterion, value in criteria.items():
        problem = tolerance_problem(criterion, value)
        if problem:
            raise UserError(f"{file}: verify.tolerance.{criterion}: {problem}")
    per_output = []
    for out_name, entry in t.get("outputs", dict[str, Any], {}).items():
        where = f"verify.tolerance.outputs.{out_name}"
        o = _Section(entry, where, file, [*CRITERIA, "top1"])
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
    verify = VerifySpec(
        enabled=v.get("enabled", bool, True),
        samples=samples,
        seed=v.get("seed", int, 0),
        data=_resolve(base, v.get("data", str | None, None), "verify.data", file),
        tolerance=tol,
        on_fail=v.get("on_fail", typing.Literal["stop", "skip"], "stop"),
    )

    emit = tuple(top.get("emit", list[typing.Literal[EMITS]], list(EMITS)))  # type: ignore[valid-type]

    a = _Section(top.get("atc", dict, {}), "atc", file, ["soc_version", "batch_sizes", "precision_mode", "log",
                                                        "extra_args"])
    batch_sizes = tuple(a.get("batch_sizes", list[int], [1]))
    if not batch_sizes or any(b <= 0 for b in batch_sizes):
        raise UserError(f"{file}: atc.batch_sizes: expected positive integers, got {list(batch_sizes)}")
    atc = AtcSpec(
        soc_version=a.get("soc_version", str, "Ascend310P3"),
        batch_sizes=batch_sizes,
        precision_mode=a.get("precision_mode", typing.Literal[PRECISION_MODES] | None, None),  # type: ignore
        log=a.get("log", typing.Literal["debug", "info", "warning", "error", "null"], "error"),
        extra_args=tuple(a.get("extra_args", list[str], [])),
    )
    preprocess = _parse_preprocess(top.get("preprocess", dict, {}), tuple(first_shape), file)
    return Recipe(name, path, model, tuple(specs), tuple(passes), verify, emit, atc, preprocess,
                  "input" if "input" in top.data else "inputs")


INPUT_KEYS = ("name", "shape", "dtype", "range", "values", "data")


def _parse_input(data: Any, where: str, file: str, base: Path | None) -> InputSpec:
    """One ``inputs:`` entry (or the ``input:`` section): every key but ``name`` optional (see graphopt.core.inputs)."""
    i = _Section(data, where, file, INPUT_KEYS)
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
    data_path = _resolve(base, i.get("data", str | None, None), f"{where}.data", file)
    if data_path is not None and data_path.suffix not in (".npy", ".npz"):
        raise UserError(f"{file}: {where}.data: {data_path.name}: expected a .npy or .npz file")
    given = [k for k in ("range", "values", "data") if i.data.get(k) is not None]
    if len(given) > 1:
        raise UserError(f"{file}: {where}: give at most one of range, values, data (got {', '.join(given)})")
    return InputSpec(name, None if shape is None else tuple(shape), dtype_name(dtype) if dtype else None,
                     None if rng is None else tuple(rng), None if values is None else tuple(values), data_path)


def _parse_preprocess(data: Any, shape: tuple[int, ...], file: str) -> PreprocessSpec:
    """The ``preprocess:`` section; crop must give the input's H, W (the .bin files are the model's input)."""
    s = _Section(data, "preprocess", file, [f.name for f in dataclasses.fields(PreprocessSpec)])

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
