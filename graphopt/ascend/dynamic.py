"""Dynamic shapes for ATC: a recipe's ``atc.dynamic`` checked against the model's symbolic dims, turned into the
``-1`` (or ``lo~hi``) entries of ``--input_shape``, the gear flag, and the profiles (shape sets) the compiled model
runs, each with the ais_bench arguments that select it.

Modes (one per recipe; ``hicann/ge`` ``docs/zh/user_guides/atc_tools/CLI_options/--dynamic_*.md`` and
``--input_shape.md``; ais_bench: ``Ascend/tools`` ``ais-bench_workload/tool/ais_bench/Readme.md``):

- ``batch_sizes: [1, 2, 4, 8]``: ``--dynamic_batch_size="1,2,4,8"``, ``-1`` as the first dim of every input whose
  first dim is symbolic; ais_bench ``--dymBatch N``. One ``.om``.
- ``image_sizes: [[224, 224], [448, 448]]``: ``--dynamic_image_size="224,224;448,448"``, ``-1`` for H and W of
  every input (all rank 4, NCHW, H and W symbolic); one ``.om`` per ``atc.batch_sizes`` entry; ``--dymHW H,W``.
- ``dims: [[1, 16], [1, 32]]``: ``--dynamic_dims="1,16;1,32"`` with ``--input_format=ND``: each group gives every
  symbolic dim of every input, in input and dim order; ``--dymDims "a:1,16;b:1,16"`` (full shapes). One ``.om``.
- ``ranges: [[1, 8]]``: one ``[lo, hi]`` per symbolic dim (same order): ``--input_shape="x:1~8,3,224,224"``, no
  gear flag (CANN 6.3 and later); profiles: every dim at its low end, and at its high end; ``--dymShape``.

Gear counts (batch, image sizes, dims): 2 to 100, ATC's range (GE's docs: "(1,100]"), and up to 256 when the
``soc_version`` is an Ascend 950 chip (``max_gears``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..core.errors import UserError

__all__ = ["DYNAMIC_MODES", "DynamicSpec", "Profile", "AtcDynamic", "ModelDims", "dynamic_shapes",
           "MIN_GEARS", "MAX_GEARS", "MAX_GEARS_950", "max_gears"]

DYNAMIC_MODES = ("batch_sizes", "image_sizes", "dims", "ranges")
MIN_GEARS, MAX_GEARS, MAX_GEARS_950 = 2, 100, 256
_FLAGS = {"batch_sizes": "dynamic_batch_size", "image_sizes": "dynamic_image_size", "dims": "dynamic_dims"}
_AIS = {"batch_sizes": "--dymBatch", "image_sizes": "--dymHW", "dims": "--dymDims", "ranges": "--dymShape"}
_SUFFIX = {"batch_sizes": "dynbatch", "image_sizes": "dynhw", "dims": "dyndims", "ranges": "dynshape"}


@dataclass(frozen=True)
class DynamicSpec:
    """A recipe's ``atc.dynamic``: the mode and its values (batch sizes; (h, w) pairs; dim groups; (lo, hi))."""

    mode: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        where = f"atc.dynamic.{self.mode}"
        if self.mode in _FLAGS and not MIN_GEARS <= len(self.values) <= MAX_GEARS_950:
            raise UserError(f"{where}: {len(self.values)} gear(s); ATC takes {MIN_GEARS} to {MAX_GEARS} "
                            f"({MAX_GEARS_950} on Ascend 950)")
        flat = [v for g in self.values for v in (g if isinstance(g, (tuple, list)) else (g,))]
        if any(not isinstance(v, int) or v < 1 for v in flat):
            raise UserError(f"{where}: expected positive integers, got {list(self.values)}")
        if self.mode == "image_sizes" and any(len(g) != 2 for g in self.values):
            raise UserError(f"{where}: expected [height, width] pairs, got {list(self.values)}")
        if self.mode == "ranges" and any(len(g) != 2 or g[0] > g[1] for g in self.values):
            raise UserError(f"{where}: expected one [low, high] per symbolic dim, low <= high, "
                            f"got {list(self.values)}")
        if self.mode in _FLAGS and len(set(self.values)) != len(self.values):
            raise UserError(f"{where}: a gear is listed twice in {list(self.values)}")


@dataclass(frozen=True)
class Profile:
    """One shape set a dynamic ``.om`` runs: every input's dims, and the ais_bench arguments selecting it."""

    label: str
    batch_size: int
    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    ais_args: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        return cls(str(d["label"]), int(d["batch_size"]),
                   tuple((str(n), tuple(int(x) for x in dims)) for n, dims in d["shapes"]),
                   tuple(str(a) for a in d["ais_args"]))


@dataclass(frozen=True)
class AtcDynamic:
    """The dynamic part of an ATC job: mode, gear flag and value (none for ranges), output suffix, profiles."""

    mode: str
    flag: str | None
    value: str | None
    suffix: str
    profiles: tuple[Profile, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AtcDynamic:
        return cls(str(d["mode"]), d["flag"], d["value"], str(d["suffix"]),
                   tuple(Profile.from_dict(p) for p in d["profiles"]))


@dataclass(frozen=True)
class ModelDims:
    """One model input: its verification shape and its dims in the model (ints, symbol names, None unknown)."""

    name: str
    shape: tuple[int, ...]
    dims: tuple[int | str | None, ...] | None

    def symbolic(self, k: int) -> bool:
        return self.dims is not None and k < len(self.dims) and not isinstance(self.dims[k], int)

    def fixed_why(self, k: int) -> str:
        return "of unknown rank" if self.dims is None else f"fixed to {self.dims[k]}"


def max_gears(soc_version: str | None) -> int:
    """The most gears ATC compiles for ``soc_version``: 256 on an Ascend 950 chip, 100 on the others."""
    return MAX_GEARS_950 if soc_version and soc_version.startswith("Ascend950") else MAX_GEARS


def _dims_text(dims: Sequence[int | str]) -> str:
    return ",".join(map(str, dims))


def _batch(shapes: Sequence[tuple[str, tuple[int, ...]]], inputs: Sequence[ModelDims]) -> int:
    """A profile's batch size: the first dim of the first input whose first dim is symbolic (1 if none)."""
    for (_, dims), inp in zip(shapes, inputs):
        if inp.symbolic(0) and dims:
            return dims[0]
    return 1


def dynamic_shapes(spec: DynamicSpec, inputs: Sequence[ModelDims], batch_sizes: Sequence[int],
                   ranges_supported: bool, soc_version: str | None = None
                   ) -> list[tuple[int | None, tuple[tuple[str, tuple[int | str, ...]], ...], str, AtcDynamic]]:
    """One entry per ATC job: (its batch size, None when the job's batch varies; every input's ``--input_shape``
    dims with ``-1`` / ``lo~hi`` where they vary; ``--input_format``; the dynamic record). ``soc_version``: what
    the gear count is checked against (``max_gears``)."""
    where = f"atc.dynamic.{spec.mode}"
    if spec.mode in _FLAGS and len(spec.values) > max_gears(soc_version):
        raise UserError(f"{where}: {len(spec.values)} gears; ATC takes at most {max_gears(soc_version)} for "
                        f"{soc_version} ({MAX_GEARS_950} on Ascend 950 chips only)")
    if spec.mode == "batch_sizes":
        varying = [i for i in inputs if i.symbolic(0) and i.shape]
        if not varying:
            first = inputs[0] if inputs else None
            raise UserError(f"{where}: a dynamic batch needs a symbolic first dim, but " + (
                f"input {first.name!r} dim 0 is {first.fixed_why(0)} in the model" if first else "the model has "
                "no inputs"))
        shape = tuple((i.name, (-1, *i.shape[1:]) if i in varying else i.shape) for i in inputs)
        profiles = tuple(Profile(f"bs{b}", b, tuple((i.name, (b, *i.shape[1:]) if i in varying else i.shape)
                                                   for i in inputs), (_AIS[spec.mode], str(b)))
                         for b in spec.values)
        layout = "NCHW" if all(len(i.shape) == 4 for i in inputs) else "ND"
        return [(None, shape, layout, AtcDynamic(spec.mode, _FLAGS[spec.mode], _dims_text(spec.values),
                                                 _SUFFIX[spec.mode], profiles))]
    if spec.mode == "image_sizes":
        for i in inputs:
            if len(i.shape) != 4:
                raise UserError(f"{where}: --dynamic_image_size needs NCHW inputs (rank 4); input {i.name!r} is "
                                f"rank {len(i.shape)}")
            for k in (2, 3):
                if not i.symbolic(k):
                    raise UserError(f"{where}: input {i.name!r} dim {k} ({'HW'[k - 2]}) is {i.fixed_why(k)} in the "
                                    "model; dynamic image sizes need a symbolic height and width")
        value = ";".join(_dims_text(hw) for hw in spec.values)
        jobs = []
        for b in batch_sizes:
            def at(i: ModelDims, hw: Sequence[int | str]) -> tuple[int | str, ...]:
                return (b if i.symbolic(0) else i.shape[0], i.shape[1], *hw)
            profiles = tuple(Profile(f"bs{b}_{h}x{w}", b, tuple((i.name, at(i, (h, w))) for i in inputs),
                                     (_AIS[spec.mode], f"{h},{w}")) for h, w in spec.values)
            jobs.append((b, tuple((i.name, at(i, (-1, -1))) for i in inputs), "NCHW",
                         AtcDynamic(spec.mode, _FLAGS[spec.mode], value, _SUFFIX[spec.mode], profiles)))
        return jobs
    slots = [(i, k) for i in inputs for k in range(len(i.shape)) if i.symbolic(k)]
    if not slots:
        raise UserError(f"{where}: the model's inputs have no symbolic dim to vary "
                        f"({', '.join(f'{i.name}: {list(i.dims or [])}' for i in inputs)})")
    names = ", ".join(f"{i.name}[{k}]" for i, k in slots)
    for g in spec.values if spec.mode == "dims" else (spec.values,):
        if len(g) != len(slots):
            raise UserError(f"{where}: {list(g)} gives {len(g)} value(s) for {len(slots)} symbolic dim(s) "
                            f"({names})")

    def filled(values: Sequence[int | str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        it = iter(values)
        return tuple((i.name, tuple(next(it) if i.symbolic(k) else d for k, d in enumerate(i.shape)))
                     for i in inputs)

    def ais(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> str:
        return ";".join(f"{n}:{_dims_text(d)}" for n, d in shapes)

    if spec.mode == "dims":
        profiles = tuple(Profile(f"dims{k}", _batch(filled(g), inputs), filled(g), (_AIS["dims"], ais(filled(g))))
                         for k, g in enumerate(spec.values))
        return [(None, filled([-1] * len(slots)), "ND",
                 AtcDynamic("dims", _FLAGS["dims"], ";".join(_dims_text(g) for g in spec.values), _SUFFIX["dims"],
                            profiles))]
    if not ranges_supported:
        raise UserError(f"{where}: ranges in --input_shape need CANN 6.3 or later; set atc.cann or use "
                        "batch_sizes / image_sizes / dims")
    ends = [("min", [lo for lo, _ in spec.values]), ("max", [hi for _, hi in spec.values])]
    profiles = tuple(Profile(label, _batch(filled(v), inputs), filled(v), (_AIS["ranges"], ais(filled(v))))
                     for label, v in ends)
    layout = "NCHW" if all(len(i.shape) == 4 for i in inputs) else "ND"
    return [(None, filled([f"{lo}~{hi}" for lo, hi in spec.values]), layout,
             AtcDynamic("ranges", None, None, _SUFFIX["ranges"], profiles))]
