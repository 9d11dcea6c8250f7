"""The ``.bin`` files graphopt eval and ais_bench exchange: one item of one model input per file, raw in the input's
dtype (``.npy`` read too), files of one folder taken in ais_bench's natural order; item stems (the name up to the
first dot) pair an input file with its outputs and with its label."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.datasets import natural_key
from ..core.errors import UserError
from ..core.model_inputs import array_dtype_name as _name_of_array, model_inputs, np_dtype

__all__ = ["BinInput", "read_item", "item_stem", "input_files", "save_output", "model_input_specs",
           "fit_to_input"]


@dataclass(frozen=True)
class BinInput:
    """One model input as ``graphopt eval`` feeds it from files: each ``.bin`` / ``.npy`` holds one item of
    ``item_shape`` in ``dtype`` (the model's); a batch stacks items along a new first axis, except for a rank-0
    input (``stacked`` False), which takes the batch's first item as it is."""

    name: str
    dtype: str
    item_shape: tuple[int, ...]
    stacked: bool = True

    @property
    def item_nbytes(self) -> int:
        return int(np.prod(self.item_shape, dtype=np.int64)) * np_dtype(self.dtype).itemsize

    def describe(self) -> str:
        return f"{self.name!r} ({self.dtype} {list(self.item_shape)} per item)"


def read_item(path: Path, inp: BinInput) -> np.ndarray:
    """One item file of ``inp``: raw ``.bin`` in the input's dtype, or ``.npy`` (cast to it), shaped as an item.
    A size or shape that does not fit is one line naming the file and the input."""
    dt = np_dtype(inp.dtype)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"--data {path}: not a readable .npy ({str(e).splitlines()[0]})") from None
        if arr.size != int(np.prod(inp.item_shape, dtype=np.int64)):
            raise UserError(f"--data {path}: shaped {list(arr.shape)}, but one item of input {inp.describe()} "
                            f"holds {int(np.prod(inp.item_shape, dtype=np.int64))} values")
        return np.asarray(arr).astype(dt).reshape(inp.item_shape)
    size = path.stat().st_size
    if size != inp.item_nbytes:
        raise UserError(f"--data {path}: {size} bytes, but one item of input {inp.describe()} is "
                        f"{inp.item_nbytes} bytes (prepared for another model or input?)")
    return np.fromfile(path, dtype=dt).reshape(inp.item_shape)


def item_stem(path: str | Path) -> str:
    """What ais_bench names a file's outputs after: its name up to the first dot."""
    return os.path.basename(str(path)).split(".")[0]


def input_files(data_dir: Path) -> list[Path]:
    """The inputs ais_bench takes from a folder: ``*.bin`` / ``*.npy``, in its natural order."""
    files = [p for p in Path(data_dir).iterdir() if p.suffix.lower() in (".bin", ".npy") and p.is_file()]
    return sorted(files, key=lambda p: natural_key(str(p)))


def save_output(path: Path, arr: np.ndarray, fmt: str) -> None:
    """One output array as ais_bench writes it for ``--outfmt`` ``fmt`` (BIN raw, NPY, TXT rows)."""
    if fmt == "NPY":
        np.save(path, arr)
    elif fmt == "TXT":
        flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)
        fmt_spec = "%f" if np.issubdtype(arr.dtype, np.floating) else "%d"
        with open(path, "w") as f:
            for row in flat:
                f.write(" ".join(fmt_spec % v for v in row) + " \n")
    else:
        np.ascontiguousarray(arr).tofile(path)


def model_input_specs(model: str | Path) -> dict[str, Any]:
    """Input name -> ``ModelInput`` of an ONNX file or a run directory's ``model.onnx`` (``--model``)."""
    path = Path(model)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise UserError(f"--model {model}: no such ONNX file or run directory (with model.onnx)")
    try:
        return {m.name: m for m in model_inputs(path)}
    except Exception as e:
        raise UserError(f"--model {path}: cannot be read as ONNX ({str(e).splitlines()[0] if str(e) else e})") from None


def fit_to_input(a: np.ndarray, name: str, inputs: dict[str, Any], where: str) -> np.ndarray:
    """Items ``a`` (first axis) of the model input ``name`` in its dtype, for ``.bin`` files (which hold no dtype):
    cast where no value changes; an array the input cannot take is one ``UserError`` line starting ``where``."""
    m = inputs.get(name)
    if m is None:
        raise UserError(f"{where}: array {name!r} is not an input of the model "
                        f"(inputs: {', '.join(inputs) or 'none'}; 'labels' holds the classes)")
    if m.dtype is None or m.dtype == "string":
        raise UserError(f"{where}: input {name!r} is {m.describe()}: .bin files hold numbers")
    want = np_dtype(m.dtype)
    if a.dtype != want:
        cast = a.astype(want)
        if want.kind in "biu" and not np.array_equal(cast, a):
            raise UserError(f"{where}: array {name!r} is {_name_of_array(a)} with values that "
                            f"{m.dtype} cannot hold; the model expects {m.describe()}")
        a = cast
    if m.dims is not None:
        if a.ndim - 1 != max(len(m.dims) - 1, 0):  # an item: the input without its first (batch) dim
            raise UserError(f"{where}: array {name!r} items are {list(a.shape[1:])}, the model "
                            f"expects {m.describe()} (the first axis of the array is the items)")
        for d, g in zip(m.dims[1:], a.shape[1:]):
            if isinstance(d, int) and d != g:
                raise UserError(f"{where}: array {name!r} items are {list(a.shape[1:])}, the model "
                                f"expects {m.describe()}")
    return a
