"""Model inputs: what graphopt feeds a model to verify, diff, bisect, measure or evaluate it.

A model's real inputs (graph inputs that are not initializers, nor the weights ``graphopt.core.model`` feeds as
inputs) are read from the model (``graphopt.core.model_inputs``): name, dtype, dims (ints, symbol names, or None
for an unknown dim). What the user says about them (a recipe's ``inputs:``, the CLI's ``--input`` / ``--range`` /
``--data``) is a list of ``InputSpec``; every input not named there is fed with defaults. ``resolve_inputs(model,
specs)`` merges the two into an ``InputPlan``, checking each spec against the model (one line naming the input and
what the model expects), and ``plan.feeds(samples, seed)`` makes the verification set (``graphopt.core.feeds``).

Vocabulary (the API other modules build on):

- a **feed** is a dict input name -> numpy array, one ``session.run``; a **verification set** is a list of feeds.
  Every input of the model is in every feed. ``Runner.run(feeds)`` (``graphopt.core.runner``) runs one.
- the **batch** of an input is its first dim when that dim is symbolic (or unknown) in the model; a fixed first
  dim stays what the model says. Rank-0 inputs (scalars) have no batch: each feed holds one scalar.

Default shapes. A symbolic or unknown dim gets:

- ``BATCH_DEFAULT`` (2) when it is the first dim of an input (a batch of one hides bugs), and any dim with the same
  symbol name the same value;
- ``DIM_DEFAULT`` (16) otherwise (a sequence length, a symbolic height or width); equal names, equal values.

A shape given for one input (``InputSpec.shape``) or data given for it binds the symbols of its dims, so the other
inputs sharing them follow: ``input_ids: [4, 32]`` makes ``attention_mask`` ``[4, 32]`` too when both are
``[batch, sequence]``.

Default values, per input (seeded: one ``numpy.random.default_rng(seed)`` drawn from feed by feed, input by input in
the model's order; for a model with one float input that is exactly ``feeds.make_inputs``):

- floats (fp16, fp32, fp64, bf16): standard normal; with ``range: [lo, hi]`` uniform in [lo, hi);
- integers: uniform in [lo, hi) (lo inclusive, hi exclusive, as ``numpy``'s ``integers``): ``range`` when given,
  else ``[0, rows)`` when the input is the indices of a ``Gather`` from a constant table (directly or through
  ``Cast`` / ``Identity``: token ids into an embedding), else ``INT_RANGE_DEFAULT`` ``[0, 2)``;
- bool: True or False with equal odds;
- strings: ``"0"`` or ``"1"``;
- ``values: [...]``: drawn uniformly from those values (masks, flags, a few valid ids);
- ``data: FILE``: real values, see ``InputPlan.feeds``.

Callers (verify, diff, bisect, precision, eval): ``plan = resolve_inputs(model, specs)`` (specs from the
recipe's ``Recipe.inputs`` or from ``cli.input_specs(args)``), ``feeds = plan.feeds(samples, seed, data=...)``, run
``runner.Runner(model).run(feeds)``, and check user-provided feeds with ``check_feed(model_inputs(model), feed)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import UserError, closest
from .feeds import Input, InputPlan, data_shape
from .model_inputs import DTYPES, ModelInput, dtype_name, gather_rows, load_skeleton, model_inputs

__all__ = ["BATCH_DEFAULT", "DIM_DEFAULT", "INT_RANGE_DEFAULT", "InputSpec", "resolve_inputs", "parse_input_flag",
           "parse_range_flag", "merge_specs"]

BATCH_DEFAULT = 2
DIM_DEFAULT = 16
INT_RANGE_DEFAULT = (0, 2)


# ---------------------------------------------------------------------------------------------------------------
# What the user says and what the model has


@dataclass(frozen=True)
class InputSpec:
    """One input as a recipe (``inputs:`` entry, or the single ``input:``) or the CLI gives it; every field but
    ``name`` optional (None: from the model, with the module's defaults).

    ``shape``: the whole feed's shape, batch included (the batch stays the first dim); ``dtype``: checked against
    the model's; ``range``: ``[lo, hi)`` of the values; ``values``: the values to draw from; ``data``: a ``.npy``
    (this input's items) or ``.npz`` (its array under the input's name) file."""

    name: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    range: tuple[float, float] | None = None
    values: tuple[Any, ...] | None = None
    data: Path | None = None


# ---------------------------------------------------------------------------------------------------------------
# Resolution


def resolve_inputs(model, specs: Iterable[InputSpec] = (), *, where: str = "",
                   dims: Mapping[str, int] | None = None, paths: Mapping[str, str] | None = None,
                   dim_default: int | None = None) -> InputPlan:
    """Merge ``specs`` (what the user said) with ``model``'s real inputs into an ``InputPlan``.

    ``where`` prefixes errors (``recipes/x.yaml``); ``paths`` names each spec where the user wrote it (input name ->
    ``inputs[1]``, ``input``, ``--input x:1,2``), so errors point there. ``dims``: values for symbolic dim names
    (overrides the defaults, not a shape given); ``dim_default``: the value of every symbolic or unknown dim left
    unbound, batch or not (``graphopt.testing`` uses 2). Errors (``UserError``, one line naming the input and what
    the model expects): a spec naming no input of the model, a dtype other than the model's, a shape of another rank
    or contradicting a fixed dim, a negative dim, an input graphopt cannot make values for (a sequence or map)."""
    specs = list(specs)
    skeleton = load_skeleton(model)
    model_ins = model_inputs(model, skeleton)
    by_name = {m.name: m for m in model_ins}
    prefix = f"{where}: " if where and not where.endswith(": ") else where
    paths = dict(paths or {})

    def loc(name: str, key: str) -> str:
        if name not in paths:
            return f"{prefix}input {name!r}: {key}"
        # a YAML path takes the key after a dot (inputs[1].shape); a flag after a colon (--input x:1,2: shape)
        return f"{prefix}{paths[name]}{': ' if paths[name].startswith('-') else '.'}{key}"

    def expects(m: ModelInput) -> str:
        return f"input {m.name!r}: {m.describe()}" if m.name in paths else m.describe()

    seen: set[str] = set()
    for s in specs:
        if s.name not in by_name:
            names = [m.name for m in model_ins]
            hint = closest(s.name, names) if names else ""
            hint = hint if hint.startswith(" (did you mean") else ""
            at = f"{loc(s.name, 'name')}: " if s.name in paths and not paths[s.name].startswith("-") else \
                f"{prefix}{paths[s.name]}: " if s.name in paths else prefix
            raise UserError(f"{at}input {s.name!r} is not an input of the model{hint} "
                            f"(inputs: {', '.join(names) or 'none'})")
        if s.name in seen:
            raise UserError(f"{prefix}input {s.name!r} is listed twice")
        seen.add(s.name)
    spec_of = {s.name: s for s in specs}

    symbols: dict[str, int] = dict(dims or {})
    bound_by_user: set[str] = set(symbols)
    # 1. Check every spec against the model, and bind the symbols its shape (or its data) gives.
    for m in model_ins:
        s = spec_of.get(m.name)
        if s is None or m.kind != "tensor":
            continue
        if s.dtype is not None:
            want = dtype_name(s.dtype)
            if want is None:
                raise UserError(f"{loc(m.name, 'dtype')}: unknown dtype {s.dtype!r} (valid: {', '.join(DTYPES)})")
            if want != m.dtype:
                raise UserError(f"{loc(m.name, 'dtype')} is {want}, the model expects {expects(m)}")
        given = s.shape
        if given is not None:
            given = tuple(given)
            if any(not isinstance(d, int) or d < 0 for d in given):
                raise UserError(f"{loc(m.name, 'shape')} {list(given)}: expected dims >= 0")
            if m.dims is not None and len(given) != len(m.dims):
                raise UserError(f"{loc(m.name, 'shape')} {list(given)} has rank {len(given)}, the model expects "
                                f"rank {len(m.dims)} ({expects(m)})")
            for k, (d, g) in enumerate(zip(m.dims or (), given)):
                if isinstance(d, int) and d != g:
                    raise UserError(f"{loc(m.name, f'shape[{k}]')} is {g}, the model fixes it to {d} "
                                    f"({expects(m)})")
                if isinstance(d, str) and d not in bound_by_user:
                    symbols.setdefault(d, g)
        elif m.dims is not None and s.data is not None:
            shape = data_shape(s.data, s.name, len(m.dims))
            for d, g in zip(m.dims, shape or ()):
                if isinstance(d, str) and g is not None:
                    symbols.setdefault(d, g)
        if s.range is not None:
            lo, hi = s.range
            if not lo < hi:
                raise UserError(f"{loc(m.name, 'range')} [{lo}, {hi}] is empty (values are drawn from "
                                "[lo, hi): hi must be above lo)")
            if m.dtype in ("bool", "string"):
                raise UserError(f"{loc(m.name, 'range')}: a range is for numbers, the model expects "
                                f"{expects(m)} (use values:)")
        if s.values is not None and not len(s.values):
            raise UserError(f"{prefix}input {m.name!r}: values is empty")
        if sum(x is not None for x in (s.range, s.values, s.data)) > 1:
            raise UserError(f"{prefix}input {m.name!r}: give at most one of range, values, data")
    # 2. Defaults for the symbols left: a symbol that is any input's first dim is the batch.
    batch_symbols = {m.dims[0] for m in model_ins if m.dims and isinstance(m.dims[0], str)}
    for m in model_ins:
        for k, d in enumerate(m.dims or ()):
            if isinstance(d, str) and d not in symbols:
                symbols[d] = dim_default if dim_default is not None else \
                    BATCH_DEFAULT if d in batch_symbols else DIM_DEFAULT
    gathers = gather_rows(skeleton)
    resolved = []
    for m in model_ins:
        s = spec_of.get(m.name) or InputSpec(m.name)
        problem = None
        if m.kind != "tensor":
            problem = f"{prefix}input {m.name!r} is {m.describe()}: graphopt feeds tensors only"
        elif m.dtype is None or m.dtype not in DTYPES:
            problem = (f"{prefix}input {m.name!r} has dtype {m.dtype or 'undefined'}, which graphopt cannot make "
                       f"values for (it makes: {', '.join(DTYPES)})")
        elif s.shape is None and m.dims is None:
            problem = f"{prefix}input {m.name!r}: the model does not give its rank; give its shape"
        if problem:  # an error only when values are needed: --no-verify still runs the passes
            resolved.append(Input(m.name, m.dtype or "undefined", (), m, "unsupported", note=problem))
            continue
        if s.shape is not None:
            shape = tuple(s.shape)
        else:
            shape = tuple(d if isinstance(d, int) else symbols[d] if isinstance(d, str)
                          else dim_default if dim_default is not None
                          else (BATCH_DEFAULT if k == 0 else DIM_DEFAULT) for k, d in enumerate(m.dims))
        kind, low, high, choices, note = _values(m, s, gathers.get(m.name))
        resolved.append(Input(m.name, m.dtype, shape, m, kind, low, high, choices,
                              Path(s.data) if s.data is not None else None, note))
    return InputPlan(tuple(resolved), symbols, prefix)


def _values(m: ModelInput, s: InputSpec, gather: tuple[int, str] | None):
    dt = m.dtype
    if s.data is not None:
        return "data", None, None, None, ""
    if s.values is not None:
        return "choice", None, None, tuple(s.values), ""
    if dt == "bool":
        return "bool", None, None, None, ""
    if dt == "string":
        return "string", None, None, None, ""
    is_float = dt in ("float16", "float32", "float64", "bfloat16")
    if s.range is not None:
        lo, hi = s.range
        return ("uniform" if is_float else "integers"), lo, hi, None, ""
    if is_float:
        return "normal", None, None, None, ""
    if gather is not None and gather[0] > 0:
        return "integers", 0, gather[0], None, f"indices into {gather[1]!r} ({gather[0]} rows)"
    lo, hi = INT_RANGE_DEFAULT
    if dt.startswith("uint"):
        lo = max(lo, 0)
    return "integers", lo, hi, None, ""


# ---------------------------------------------------------------------------------------------------------------
# Checking feeds


# ---------------------------------------------------------------------------------------------------------------
# Command-line spellings


def parse_input_flag(text: str) -> InputSpec:
    """``--input NAME:SHAPE[:DTYPE]`` (``input_ids:2,16:int64``; a scalar: ``NAME::DTYPE`` or ``NAME:``)."""
    parts = text.rsplit(":", 2) if text.count(":") >= 2 else text.split(":")
    if len(parts) == 1 or not parts[0]:
        raise UserError(f"--input {text!r}: expected NAME:SHAPE[:DTYPE], e.g. input_ids:2,16:int64")
    name, shape_text = parts[0], parts[1]
    dtype = parts[2] if len(parts) > 2 and parts[2] else None
    if dtype is not None and dtype_name(dtype) is None:
        raise UserError(f"--input {text!r}: unknown dtype {dtype!r} (valid: {', '.join(DTYPES)})")
    try:
        shape = tuple(int(s) for s in shape_text.split(",")) if shape_text.strip() else ()
    except ValueError:
        raise UserError(f"--input {text!r}: the shape must be comma-separated integers, e.g. 2,16") from None
    if any(d < 0 for d in shape):
        raise UserError(f"--input {text!r}: expected dims >= 0")
    return InputSpec(name, shape, dtype_name(dtype) if dtype else None)


def parse_range_flag(text: str) -> tuple[str, tuple[float, float]]:
    """``--range NAME:LO,HI`` (values drawn from [LO, HI))."""
    name, _, rng = text.rpartition(":")
    try:
        lo, hi = (float(v) for v in rng.split(","))
    except ValueError:
        raise UserError(f"--range {text!r}: expected NAME:LO,HI, e.g. input_ids:0,30522") from None
    if not name:
        raise UserError(f"--range {text!r}: expected NAME:LO,HI, e.g. input_ids:0,30522")
    lo_, hi_ = (int(lo) if lo.is_integer() else lo), (int(hi) if hi.is_integer() else hi)
    return name, (lo_, hi_)


def merge_specs(*groups: Iterable[InputSpec]) -> list[InputSpec]:
    """Specs of several sources by name, later fields (those not None) over earlier ones."""
    out: dict[str, InputSpec] = {}
    for group in groups:
        for s in group:
            if s.name in out:
                prev = out[s.name]
                s = dataclasses.replace(prev, **{f.name: getattr(s, f.name) for f in dataclasses.fields(s)
                                                 if f.name != "name" and getattr(s, f.name) is not None})
            out[s.name] = s
    return list(out.values())
