"""A model's real inputs as graphopt reads them, and the dtype names graphopt uses for them.

The real inputs are the graph inputs that are not initializers, nor the weights ``graphopt.core.model`` feeds as inputs:
name, dtype name (``DTYPES``), dims (ints, symbol names, or None for an unknown dim). ``check_feed`` holds a feed
to them before onnxruntime sees it, so a wrong feed is one line naming the input rather than onnxruntime's error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .errors import UserError

__all__ = ["DTYPES", "ModelInput", "dtype_name", "np_dtype", "array_dtype_name", "load_skeleton", "model_inputs",
           "gather_rows", "check_feed"]


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


def array_dtype_name(a: np.ndarray) -> str:
    """An array's dtype by the names of ``DTYPES`` (numpy strings and objects are ``string``)."""
    if a.dtype == object or a.dtype.kind in "US":
        return "string"
    if a.dtype.name == "bfloat16":
        return "bfloat16"
    return a.dtype.name


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


def load_skeleton(model) -> onnx.ModelProto:
    """``model`` (a ModelProto, ``SplitModel``, serialized bytes or a path) as a ModelProto; a path is read without
    its external data, which reading the inputs never needs."""
    from .wire import SplitModel

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
    from .wire import SplitModel

    names = set(model.weights) if isinstance(model, SplitModel) else set()
    return names | {i.name for i in skeleton.graph.initializer}


def model_inputs(model, skeleton: onnx.ModelProto | None = None) -> list[ModelInput]:
    """The real inputs of ``model`` (a ModelProto, ``SplitModel``, path or bytes), in the graph's order: graph
    inputs minus initializers and the weights graphopt feeds as inputs. ``skeleton``: ``model`` already loaded
    (a path is read once)."""
    skeleton = load_skeleton(model) if skeleton is None else skeleton
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


def gather_rows(skeleton: onnx.ModelProto) -> dict[str, tuple[int, str]]:
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
        got = array_dtype_name(x)
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


