"""Feeds: the values graphopt runs a model on, drawn from a resolved ``InputPlan`` or read from data files.

A **feed** is a dict input name -> numpy array, one ``session.run``; a **verification set** is a list of feeds.
``InputPlan`` (made by ``graphopt.core.inputs.resolve_inputs``) knows each input's dtype, shape per feed and how its
values are made; ``InputPlan.feeds`` draws them (seeded) or reads them from ``.npy`` / ``.npz`` files or a folder of
raw ``.bin`` files, cut into feeds along the first axis.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import UserError
from .model_inputs import ModelInput, array_dtype_name, np_dtype

__all__ = ["Input", "InputPlan", "feeds_of", "data_shape", "load_input_data", "make_inputs"]


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
        """``samples`` feeds: seeded values (the defaults ``graphopt.core.inputs`` lists), except the inputs given
        data (their ``InputSpec.data``, or ``data``: an ``.npz`` with one array per input name, or a ``.npy`` /
        folder of float32 ``.bin`` files for input ``primary``, default the first), whose items make at most
        ``samples`` feeds (all the data makes, when fewer)."""
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
    got = array_dtype_name(arr)
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


def feeds_of(inputs: Sequence[Any], input_name: str | None, model_ins: Sequence[ModelInput]) -> list[dict]:
    """A verification set from what callers pass: feeds (dicts) as they are; bare arrays (the single-input
    form) as feeds of ``input_name`` (default the first input)."""
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


def data_shape(path: Path, name: str, rank: int) -> tuple[int | None, ...] | None:
    """The feed shape that input ``name``'s data file implies (for binding symbolic dims; None for the batch when
    the items are grouped into batches), without loading the data. None when the file does not say."""
    if not Path(path).is_file():
        return None
    try:
        if Path(path).suffix == ".npz":
            with _open_npz(Path(path)) as z:
                shape = z[name].shape if name in z.files else None
        else:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError, UserError):
        return None
    if shape is None:
        return None
    if len(shape) == rank + 1:
        return tuple(shape[1:])
    if len(shape) == rank and rank > 0:
        return (None, *shape[1:])
    return None


_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


def make_inputs(shape: Sequence[int], samples: int, seed: int, dtype: str = "float32") -> list[np.ndarray]:
    """Seeded standard-normal inputs: ``samples`` batches of ``shape``."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(shape)).astype(_NP_DTYPES[dtype]) for _ in range(samples)]


def load_input_data(path: Path, shape: Sequence[int], dtype: str = "float32",
                    limit: int | None = None) -> list[np.ndarray]:
    """Real inputs: a ``.npy`` file (N, ...) or a folder of raw ``.bin`` files (one image or batch each, float32,
    as ``graphopt data`` and the seeds' preprocess scripts write them). Batched to ``shape[0]``."""
    path = Path(path)
    per_item = tuple(shape[1:])
    if path.is_file() and path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.shape[1:] != per_item:
            raise UserError(f"verify.data {path}: items shaped {list(arr.shape[1:])}, input expects {list(per_item)}")
        items = list(arr.astype(_NP_DTYPES[dtype]))
    elif path.is_dir():
        files = sorted(glob.glob(str(path / "*.bin")))
        if not files:
            raise UserError(f"verify.data {path}: no .bin files in this folder")
        items = []
        size = int(np.prod(per_item))
        for f in files[: limit * shape[0] if limit else None]:
            raw = np.fromfile(f, dtype=_NP_DTYPES[dtype])
            if raw.size % size:
                raise UserError(f"verify.data {f}: {raw.size} values, not a multiple of one item {list(per_item)}")
            items.extend(raw.reshape(-1, *per_item))
    else:
        raise UserError(f"verify.data {path}: expected a .npy file or a folder of .bin files")
    batch = shape[0]
    batches = [np.stack(items[i:i + batch]) for i in range(0, len(items) - batch + 1, batch)]
    if not batches:
        raise UserError(f"verify.data {path}: {len(items)} items, fewer than one batch of {batch}")
    return batches[:limit] if limit else batches
