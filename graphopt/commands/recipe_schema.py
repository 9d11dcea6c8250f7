"""What a recipe is once read: one frozen dataclass per section, each field a YAML key (the README's "Recipe
format" says what each means), and the constants the parser checks values against."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..ascend.cann import DEFAULT_CANN
from ..ascend.dynamic import DynamicSpec
from ..core.inputs import InputSpec
from ..core.pass_infra import Pass, get_pass
from ..core.tolerance import Tolerance

__all__ = ["Recipe", "ModelSpec", "PassSpec", "VerifySpec", "AtcSpec", "PreprocessSpec", "build_pass", "EMITS",
           "INTERPOLATIONS", "IMAGENET_MEAN", "IMAGENET_STD"]

EMITS = ("model", "report", "atc")


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
    """``atc:``. ``cann``: the CANN version whose ATC formats are written (``graphopt.ascend.cann``);
    ``soc_version_unlisted``: take a ``soc_version`` graphopt's list lacks (``graphopt.ascend.soc``);
    ``dynamic``: dynamic shapes (``graphopt.ascend.dynamic``)."""

    soc_version: str = "Ascend310P3"
    batch_sizes: tuple[int, ...] = (1,)
    precision_mode: str | None = None
    log: str = "error"
    extra_args: tuple[str, ...] = ()
    cann: str = DEFAULT_CANN
    precision_mode_v2: str | None = None
    soc_version_unlisted: bool = False
    dynamic: DynamicSpec | None = None


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
    # Modules imported before the passes are resolved, each registering passes (``pass_infra.load_plugin``).
    plugins: tuple[str, ...] = ()

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


def build_pass(spec: PassSpec) -> Pass:
    cls = get_pass(spec.name)
    assert cls is not None, spec.name  # validated when the recipe was parsed
    return cls(**spec.args)

