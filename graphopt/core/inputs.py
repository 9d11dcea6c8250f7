"""Model inputs: what graphopt feeds a model to verify, diff, bisect, measure or evaluate it.

A model's real inputs (graph inputs that are not initializers, nor the weights ``protoio`` feeds as inputs) are
read from the model (``model_inputs``): name, dtype, dims (ints, symbol names, or None for an unknown dim). What
the user says about them (a recipe's ``inputs:``, the CLI's ``--input`` / ``--range`` / ``--data``) is a list of
``InputSpec``; every input not named there is fed with defaults. ``resolve_inputs(model, specs)`` merges the two
into an ``InputPlan``, checking each spec against the model (one line naming the input and what the model expects),
and ``plan.feeds(samples, seed)`` makes the verification set.

Vocabulary (the API other modules build on):

- a **feed** is a dict input name -> numpy array, one ``session.run``; a **verification set** is a list of feeds.
  Every input of the model is in every feed. ``Runner.run(feeds)`` (``graphopt.core.verify``) runs one.
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
the model's order; for a model with one float input that is exactly the old ``make_inputs``):

- floats (fp16, fp32, fp64, bf16): standard normal; with ``range: [lo, hi]`` uniform in [lo, hi);
- integers: uniform in [lo, hi) (lo inclusive, hi exclusive, as ``numpy``'s ``integers``): ``range`` when given,
  else ``[0, rows)`` when the input is the indices of a ``Gather`` from a constant table (directly or through
  ``Cast`` / ``Identity``: token ids into an embedding), else ``INT_RANGE_DEFAULT`` ``[0, 2)``;
- bool: True or False with equal odds;
- strings: ``"0"`` or ``"1"``;
- ``values: [...]``: drawn uniformly from those values (masks, flags, a few valid ids);
- ``data: FILE``: real values, see ``load_feeds``.

Callers (verify, diff, bisect, precision, eval): ``plan = resolve_inputs(model, specs)`` (specs from the
recipe's ``Recipe.inputs`` or from ``cli.input_specs(args)``), ``feeds = plan.feeds(samples, seed, data=...)``, run
``verify.Runner(model).run(feeds)``, and check user-provided feeds with ``check_feed(model_inputs(model), feed)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx

from .errors import UserError

__all__ = ["BATCH_DEFAULT", "DIM_DEFAULT", "INT_RANGE_DEFAULT", "DTYPES", "InputSpec", "ModelInput", "Input",
           "InputPlan", "model_inputs", "resolve_inputs", "check_feed", "np_dtype", "dtype_name", "feeds_of",
           "parse_input_flag", "parse_range_flag", "merge_specs"]

BATCH_DEFAULT = 2
DIM_DEFAULT = 16
INT_RANGE_DEFAULT = (0, 2)


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


# dtype names graphopt accepts (a recipe's ``dtype:``, ``--input NAME:SHAPE:DTYPE``) -> ONNX element types.
DTYPES: dict[str, int] = {
    "bool": onnx.TensorProto.BOOL,
    "int8": onnx.TensorProto.INT8, "int16": onnx.TensorProto.INT16, "int32": onnx.TensorProto.INT32,
    "int64": onnx.TensorProto.INT64,
    "uint8": onnx.TensorProto.UINT8, "uint16": onnx.TensorProto.UINT16, "uint32": onnx.TensorProto.UINT32,
    "uint64": onnx.TensorProto.UINT64,
    "float16": onnx.TensorProto.FLOAT16, "float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE,
    "bfloat16": onnx.TensorProto.BFLOAT16,
    "string": onnx.TensorProto.STRING,
}
_ALIASES = {"fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32", "fp64": "float64",
            "double": "float64", "bf16": "bfloat16", "str": "string"}
_ELEM_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_name(name: str) -> str | None:
    """The canonical dtype name of ``name`` (``fp16`` -> ``float16``), None when it is not one."""
    name = _ALIASES.get(name, name)
    return name if name in DTYPES else None


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a dtype name (``bfloat16``: ml_dtypes'; ``string``: object)."""
    if name == "bfloat16":
        return _bf16()
    if name == "string":
        return np.dtype(object)
    return np.dtype(name)


def _name_of_array(a: np.ndarray) -> str:
    if a.dtype == object or a.dtype.kind in "US":
        return "string"
    if a.dtype.name == "bfloat16":
        return "bfloat16"
    return a.dtype.name


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


@dataclass(frozen=True)
class ModelInput:
    """A real input of a model: its dtype name (None when it is not a tensor: ``kind`` says what) and dims (ints,
    symbol names, None for an unknown dim; ``dims`` None when even the rank is unknown)."""

    name: str
    dtype: str | None
    dims: tuple[int | str | None, ...] | None
    kind: str = "tensor"

    @property
    def rank(self) -> int | None:
        return None if self.dims is None else len(self.dims)

    @property
    def has_batch(self) -> bool:
        """Its first dim is the batch: symbolic or unknown in the model."""
        return bool(self.dims) and not isinstance(self.dims[0], int)

    def describe(self) -> str:
        """``int64 [batch, sequence]``: what the model expects, as error messages show it."""
        if self.kind != "tensor":
            return f"a {self.kind}"
        dims = "rank unknown" if self.dims is None else \
            "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"
        return f"{self.dtype or 'unknown dtype'} {dims}"


def _load_skeleton(model) -> onnx.ModelProto:
    from .protoio import SplitModel

    if isinstance(model, SplitModel):
        return model.skeleton
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    if isinstance(model, (str, Path)):
        return onnx.load(str(model), load_external_data=False)
    raise TypeError(f"not a model: {type(model).__name__}")


def _weight_names(model, skeleton: onnx.ModelProto) -> set[str]:
    from .protoio import SplitModel

    names = set(model.weights) if isinstance(model, SplitModel) else set()
    return names | {i.name for i in skeleton.graph.initializer}


def model_inputs(model, skeleton: onnx.ModelProto | None = None) -> list[ModelInput]:
    """The real inputs of ``model`` (a ModelProto, ``SplitModel``, path or bytes), in the graph's order: graph
    inputs minus initializers and the weights graphopt feeds as inputs. ``skeleton``: ``model`` already loaded
    (a path is read once)."""
    skeleton = _load_skeleton(model) if skeleton is None else skeleton
    weights = _weight_names(model, skeleton)
    out = []
    for vi in skeleton.graph.input:
        if vi.name in weights:
            continue
        t = vi.type
        which = t.WhichOneof("value")
        if which != "tensor_type":
            kind = {"sequence_type": "sequence", "map_type": "map", "optional_type": "optional",
                    "sparse_tensor_type": "sparse tensor"}.get(which or "", "value of unknown type")
            out.append(ModelInput(vi.name, None, None, kind))
            continue
        tt = t.tensor_type
        dtype = _ELEM_NAMES.get(tt.elem_type)
        if dtype is None and tt.elem_type:
            dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
        dims = None
        if tt.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out.append(ModelInput(vi.name, dtype, dims))
    return out


def _gather_rows(skeleton: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """Graph input -> (rows of the constant table it indexes, the table's name) for inputs that are a Gather's
    indices, directly or through Cast / Identity (token ids into an embedding)."""
    g = skeleton.graph
    shapes = {t.name: tuple(t.dims) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    shapes[n.output[0]] = tuple(a.t.dims)
    source = {i.name: i.name for i in g.input}  # tensor -> the graph input it is a Cast/Identity of
    found: dict[str, tuple[int, str]] = {}
    for n in g.node:  # nodes are in topological order in a valid model
        if n.op_type in ("Cast", "Identity") and n.input and n.input[0] in source:
            for o in n.output:
                source[o] = source[n.input[0]]
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in source and n.input[0] in shapes:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            table = shapes[n.input[0]]
            if table and -len(table) <= axis < len(table):
                name = source[n.input[1]]
                rows = table[axis]
                if name not in found or rows < found[name][0]:
                    found[name] = (rows, n.input[0])
    return found


# ---------------------------------------------------------------------------------------------------------------
# The resolved plan


@dataclass(frozen=True)
class Input:
    """One input as graphopt feeds it: the model's view (``model``), the shape of each feed (``shape``), and how
    its values are made (``kind``: normal, uniform, integers, bool, choice, string or data; ``low``/``high`` of
    uniform and integers; ``choices``; ``data`` the file; ``note`` where a default came from)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    model: ModelInput
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    data: Path | None = None
    note: str = ""

    @property
    def has_batch(self) -> bool:
        return self.model.has_batch

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
             "model": None if self.model.dims is None else [d for d in self.model.dims], "values": self.kind}
        if self.kind in ("uniform", "integers"):
            d["range"] = [self.low, self.high]
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.data is not None:
            d["data"] = str(self.data)
        if self.note:
            d["note"] = self.note
        return d


def _draw(inp: Input, rng: np.random.Generator) -> np.ndarray:
    if inp.kind == "unsupported":
        raise UserError(inp.note)
    shape = inp.shape
    dt = np_dtype(inp.dtype)
    if inp.kind == "normal":
        return np.asarray(rng.standard_normal(shape)).astype(dt)
    if inp.kind == "uniform":
        return np.asarray(rng.uniform(inp.low, inp.high, shape)).astype(dt)
    if inp.kind == "integers":
        return np.asarray(rng.integers(int(inp.low), int(inp.high), shape, dtype=np.int64)).astype(dt)
    if inp.kind == "bool":
        return np.asarray(rng.integers(0, 2, shape)).astype(bool)
    if inp.kind in ("choice", "string"):
        choices = inp.choices if inp.kind == "choice" else ("0", "1")
        idx = np.asarray(rng.integers(0, len(choices), shape))
        arr = np.empty(shape, dtype=object)
        arr[...] = np.asarray(choices, dtype=object)[idx] if idx.size else arr
        return arr if dt == object else arr.astype(dt)
    raise ValueError(inp.kind)


@dataclass
class InputPlan:
    """Every real input of a model, resolved: ``inputs`` in the model's order, ``symbols`` the value of each
    symbolic dim. ``feeds(samples, seed)`` makes a verification set."""

    inputs: tuple[Input, ...]
    symbols: dict[str, int] = field(default_factory=dict)
    where: str = ""

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def __getitem__(self, name: str) -> Input:
        return next(i for i in self.inputs if i.name == name)

    def describe(self) -> list[dict[str, Any]]:
        """What ``report.json`` records: each input's dtype, shape per feed, and how its values were made."""
        return [i.as_dict() for i in self.inputs]

    def feeds(self, samples: int, seed: int = 0, data: str | Path | None = None,
              primary: str | None = None) -> list[dict[str, np.ndarray]]:
        """``samples`` feeds: seeded values (the module docstring's defaults), except the inputs given data (their
        ``InputSpec.data``, or ``data``: an ``.npz`` with one array per input name, or a ``.npy`` / folder of
        float32 ``.bin`` files for input ``primary``, default the first), whose items make at most ``samples``
        feeds (all the data makes, when fewer)."""
        real = self._data_feeds(data, samples, primary)
        count = samples if not real else min(len(v) for v in real.values())
        rng = np.random.default_rng(seed)
        out = []
        for k in range(count):
            feed = {}
            for inp in self.inputs:
                feed[inp.name] = real[inp.name][k] if inp.name in real else _draw(inp, rng)
            out.append(feed)
        return out

    def atc_inputs(self) -> list[tuple[str, tuple[int | None, ...]]]:
        """``(name, dims)`` for ATC's ``--input_shape``: None where the batch size goes (the first dim of an input
        whose batch is symbolic in the model), the feed's value elsewhere."""
        return [(i.name, tuple(None if k == 0 and i.has_batch else d for k, d in enumerate(i.shape)))
                for i in self.inputs]

    # -- data

    def _data_feeds(self, data: str | Path | None, samples: int, primary: str | None = None
                    ) -> dict[str, list[np.ndarray]]:
        arrays: dict[str, tuple[Any, str]] = {}  # name -> (array or list of batches, where it came from)
        if data is not None:
            path = Path(data)
            if not path.exists():
                raise UserError(f"data {path}: no such file")
            if path.suffix == ".npz" and path.is_file():
                with _open_npz(path) as z:
                    unknown = [k for k in z.files if k not in self.names]
                    if unknown:
                        raise UserError(f"data {path}: array {unknown[0]!r} is not an input of the model "
                                        f"(inputs: {', '.join(self.names)})")
                    for k in z.files:
                        arrays[k] = (z[k], f"data {path}[{k!r}]")
            else:
                if not self.inputs:
                    raise UserError(f"data {path}: the model has no inputs to feed")
                first = self[primary] if primary in self.names else self.inputs[0]
                from .verify import load_input_data

                if first.dtype not in ("float32", "float16") or not first.shape:
                    arr = _load_array(path, first.name)
                    arrays[first.name] = (arr, f"data {path}")
                else:
                    batches = load_input_data(path, first.shape, first.dtype, limit=samples)
                    arrays[first.name] = (batches, f"data {path}")
        for inp in self.inputs:
            if inp.data is not None and inp.name not in arrays:
                arrays[inp.name] = (_load_array(inp.data, inp.name), f"{self.where}inputs {inp.name!r} data {inp.data}")
        out: dict[str, list[np.ndarray]] = {}
        for name, (arr, src) in arrays.items():
            out[name] = arr if isinstance(arr, list) else _split_items(self[name], np.asarray(arr), src)
        if len({len(v) for v in out.values()}) > 1:
            counts = ", ".join(f"{k!r}: {len(v)}" for k, v in out.items())
            raise UserError(f"data: the inputs' data make different numbers of feeds ({counts}); give each input "
                            "the same number of items")
        return {k: v[:samples] for k, v in out.items()}


class _open_npz:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.z = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"data {self.path}: not a readable .npz file ({str(e).splitlines()[0]})") from None
        return self.z

    def __exit__(self, *exc):
        self.z.close()


def _load_array(path: Path, name: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data {path}: no such file (input {name!r})")
    if path.suffix == ".npz":
        with _open_npz(path) as z:
            if name not in z.files:
                raise UserError(f"data {path}: no array named {name!r} (arrays: {', '.join(z.files)})")
            return z[name]
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"data {path}: not a readable .npy file ({str(e).splitlines()[0]})") from None


def _cast_data(inp: Input, arr: np.ndarray, src: str) -> np.ndarray:
    got = _name_of_array(arr)
    if got == inp.dtype:
        return arr
    want = np_dtype(inp.dtype)
    same_kind = (got == "string") == (inp.dtype == "string") and (
        (arr.dtype.kind in "iub") == (want.kind in "iub") or (arr.dtype.kind in "iu" and want.kind == "f"))
    if inp.dtype == "bool" and got != "bool":
        same_kind = False
    if not same_kind:
        raise UserError(f"{src}: input {inp.name!r} data is {got}, the model expects {inp.model.describe()}")
    return arr.astype(want)


def _split_items(inp: Input, arr: np.ndarray, src: str) -> list[np.ndarray]:
    """An input's data array as feeds: one feed per item when each item is a whole feed (rank + 1), else items
    along axis 0 grouped into batches of the input's first dim (rank equal)."""
    arr = _cast_data(inp, arr, src)
    rank = len(inp.shape)
    if arr.ndim == rank + 1:
        _check_dims(inp, arr.shape[1:], src)
        return [np.asarray(x) for x in arr]  # a scalar item stays a 0-d array
    if arr.ndim == rank and rank > 0:
        _check_dims(inp, (inp.shape[0], *arr.shape[1:]), src)
        b = inp.shape[0]
        if b == 0:
            raise UserError(f"{src}: input {inp.name!r} takes batches of 0 items, so items cannot make feeds")
        feeds = [arr[i:i + b] for i in range(0, len(arr) - b + 1, b)]
        if not feeds:
            raise UserError(f"{src}: {len(arr)} item(s) of input {inp.name!r}, fewer than one batch of {b}")
        return feeds
    raise UserError(f"{src}: input {inp.name!r} data shaped {list(arr.shape)}, the model expects "
                    f"{inp.model.describe()} (items along the first axis)")


def _check_dims(inp: Input, shape: Sequence[int], src: str) -> None:
    for k, (d, got) in enumerate(zip(inp.model.dims or (), shape)):
        if isinstance(d, int) and d != got:
            raise UserError(f"{src}: input {inp.name!r} data has dim {k} = {got}, the model expects "
                            f"{inp.model.describe()}")


# ---------------------------------------------------------------------------------------------------------------
# Resolution


def _data_shape(spec: InputSpec, rank: int) -> tuple[int, ...] | None:
    """The feed shape an input's own data implies (for binding symbols), without loading it all."""
    if spec.data is None or not Path(spec.data).is_file():
        return None
    try:
        if Path(spec.data).suffix == ".npz":
            with _open_npz(Path(spec.data)) as z:
                shape = z[spec.name].shape if spec.name in z.files else None
        else:
            shape = np.load(spec.data, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError, UserError):
        return None
    if shape is None:
        return None
    if len(shape) == rank + 1:
        return tuple(shape[1:])
    if len(shape) == rank and rank > 0:
        return (None, *shape[1:])  # type: ignore[return-value]
    return None


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
    skeleton = _load_skeleton(model)
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
            from .errors import closest

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
            shape = _data_shape(s, len(m.dims))
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
    gathers = _gather_rows(skeleton)
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


def check_feed(model_ins: Sequence[ModelInput], feed: Mapping[str, Any], what: str = "",
               strict: bool = True) -> None:
    """A feed against the model's inputs, before onnxruntime sees it: every input present, none unknown (unless
    not ``strict``), each of the model's dtype and rank with its fixed dims. One-line ``UserError`` naming the
    input (never a weight)."""
    prefix = f"{what}: " if what else ""
    names = [m.name for m in model_ins]
    for name in feed:
        if strict and name not in names:
            raise UserError(f"{prefix}model has no input {name!r} (inputs: {', '.join(names) or 'none'})")
    for m in model_ins:
        if m.name not in feed:
            raise UserError(f"{prefix}input {m.name!r} is missing: the model expects {m.describe()}")
        x = feed[m.name]
        if not isinstance(x, np.ndarray) or m.kind != "tensor":
            continue
        got = _name_of_array(x)
        if m.dtype is not None and got != m.dtype:
            raise UserError(f"{prefix}input {m.name!r} is {got}, the model expects {m.describe()}")
        if m.dims is not None:
            if x.ndim != len(m.dims):
                raise UserError(f"{prefix}input {m.name!r} has shape {list(x.shape)} (rank {x.ndim}), the model "
                                f"expects rank {len(m.dims)}: {m.describe()}")
            for k, (d, g) in enumerate(zip(m.dims, x.shape)):
                if isinstance(d, int) and d != g:
                    raise UserError(f"{prefix}input {m.name!r} has shape {list(x.shape)}, the model fixes dim {k} "
                                    f"to {d}: {m.describe()}")


def feeds_of(inputs: Sequence[Any], input_name: str | None, model_ins: Sequence[ModelInput]) -> list[dict]:
    """A verification set from what callers pass: feeds (dicts) as they are; bare arrays (the single-input form
    of before) as feeds of ``input_name`` (default the first input)."""
    out = []
    for x in inputs:
        if isinstance(x, Mapping):
            out.append(dict(x))
        else:
            name = input_name or (model_ins[0].name if model_ins else None)
            if name is None:
                raise UserError("the model has no inputs to feed")
            out.append({name: x})
    return out


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
