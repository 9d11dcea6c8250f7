"""ONNX files in and out: loading checks what it reads and turns every failure into a one-line ``UserError``;
saving is atomic (``files``), so an input model is never modified in place and a failed write leaves nothing.

Models over ``external_data_threshold()`` (or saved with ``external=True``) keep their weights in ONNX external data
beside the model file; they are written tensor by tensor from memory, never as one protobuf message.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import EncodeError

from .errors import UserError
from .files import atomic_write, atomic_write_bytes, rename_into_place, temp_file, unlink_quietly
from .forms import split_graph
from .wire import WEIGHT_MIN_BYTES, SplitModel, copy_fields, external_location, is_stub, little_endian, read_split, \
    write_inline

__all__ = ["EXTERNAL_DATA_THRESHOLD", "external_data_threshold", "constant_nbytes", "uses_external_data",
           "check_split", "load_model", "load_split", "save_model"]


# ``model.onnx``, the weights in ``model.onnx.data`` beside it. One protobuf message cannot exceed 2 GiB, and
# going through a file also spares the copy ``SerializeToString`` would make. GRAPHOPT_EXTERNAL_DATA_THRESHOLD
# overrides it (the tests lower it to run the large-model code on small models).
EXTERNAL_DATA_THRESHOLD = 1 << 30
_EXTERNAL_ALIGN = 4096  # offsets of external tensors: page-aligned, so onnxruntime can map them


def external_data_threshold() -> int:
    value = os.environ.get("GRAPHOPT_EXTERNAL_DATA_THRESHOLD")
    if not value:
        return EXTERNAL_DATA_THRESHOLD
    try:
        return int(float(value))
    except ValueError:
        raise UserError(f"GRAPHOPT_EXTERNAL_DATA_THRESHOLD={value!r}: expected a number of bytes") from None


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    if onnx.external_data_helper.uses_external_data(t):
        length = {e.key: e.value for e in t.external_data}.get("length")
        return int(length) if length and length.isdigit() else 0
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return t.ByteSize()


def constant_nbytes(obj: onnx.ModelProto | gs.Graph) -> int:
    """Bytes of the weights: the initializers of a model, the constants of a graph (without loading lazy ones)."""
    if isinstance(obj, onnx.ModelProto):
        return sum(_tensor_nbytes(t) for t in obj.graph.initializer)
    total = 0
    for t in obj.tensors().values():
        if isinstance(t, gs.Constant):
            values = t._values  # noqa: SLF001 - reading .values would load a lazy constant
            total += int(values.nbytes) if hasattr(values, "nbytes") else 0
    return total


def uses_external_data(path: str | Path) -> bool:
    """Whether the ONNX file keeps (some of) its weights in external data files. Reads the graph only; a file
    over the external-data threshold is reported as True without reading it (it gets external data anyway)."""
    path = Path(path)
    try:
        if path.stat().st_size > external_data_threshold():
            return True
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - load_model reports unreadable files
        return False
    return any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def _read_error(what: str, path: Path, e: Exception) -> UserError:
    if isinstance(e, PermissionError):
        return UserError(f"{what} {path}: permission denied")
    if isinstance(e, OSError) and e.strerror:
        return UserError(f"{what} {path}: cannot be read ({e.strerror})")
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return UserError(f"{what} {path}: not a readable ONNX model ({first})")


def _check_external_files(model: onnx.ModelProto, path: Path, what: str) -> None:
    """Every external-data file the model names exists inside its folder (a clear message before onnx's own)."""
    for t in model.graph.initializer:
        if onnx.external_data_helper.uses_external_data(t):
            external_location(t, path.parent, f"{what} {path}")


def _check_path(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{what} {path}: no such file")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory, expected an .onnx file")
    if not path.is_file():
        raise UserError(f"{what} {path}: not a regular file, expected an .onnx file")


def _validate(model: onnx.ModelProto, path: Path, what: str, check) -> None:
    """What every loaded model must pass: a graph at all, then ``check()`` (``onnx.checker``); one-line errors."""
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{what} {path}: not an ONNX model (empty graph)")
    try:
        check()
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{what} {path}: invalid ONNX model ({first})") from None


def check_split(split: SplitModel) -> None:
    """``onnx.checker.check_model`` on the skeleton, in memory. The checker reads a weight only to see that its
    data is there and sized to its dims, which ``read_split`` and ``split_graph`` ensure for every array: for the
    checker each stub becomes an empty tensor of its type (raises ``onnx.checker.ValidationError`` as it does)."""
    light = onnx.ModelProto()
    light.CopyFrom(split.skeleton)
    for t in light.graph.initializer:
        if is_stub(t):
            for name in ("dims", "external_data", "data_location"):
                t.ClearField(name)
            t.dims.append(0)
    onnx.checker.check_model(light)




def load_model(path: str | Path, what: str = "model") -> onnx.ModelProto:
    """Load and check an ONNX file; any problem becomes a one-line ``UserError`` naming the file.

    External data (weights in files beside the model, locations relative to its folder) is loaded into the
    returned model; such a model is checked from its file, before its weights are read, so the checker never
    holds a copy of them."""
    path = Path(path)
    _check_path(path, what)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, PermissionError, EIO ...
        raise _read_error(what, path, e) from None
    external = any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    if external:
        _check_external_files(model, path, what)
    _validate(model, path, what, lambda: onnx.checker.check_model(str(path) if external else model))
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # noqa: BLE001 - a truncated or unreadable data file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{what} {path}: cannot read its external data ({first})") from None
    return model


def load_split(path: str | Path, what: str = "model", reuse: Mapping[str, np.ndarray] | None = None) -> SplitModel:
    """``load_model`` as a ``SplitModel``: the weights read from the file (or its external data) straight into
    arrays, held once; the skeleton checked with ``onnx.checker``. Same one-line errors as ``load_model``.
    ``reuse``: another model's weights, shared where byte-identical (``wire.read_split``)."""
    path = Path(path)
    _check_path(path, what)
    try:
        split = read_split(path, what, reuse)
    except UserError:
        raise
    except Exception as e:  # protobuf DecodeError, a malformed wire format, PermissionError, EIO ...
        raise _read_error(what, path, e) from None
    _validate(split.skeleton, path, what, lambda: check_split(split))
    return split


class _ExternalData:
    """Appends tensors' bytes to an open external-data file; ``stub`` returns the TensorProto pointing at them."""

    def __init__(self, f, location: str):
        self.f, self.location = f, location

    def stub(self, name: str, data_type: int, dims, data: bytes) -> onnx.TensorProto:
        offset = -self.f.tell() % _EXTERNAL_ALIGN + self.f.tell()
        self.f.seek(offset)
        self.f.write(data)
        t = onnx.TensorProto(name=name, data_type=data_type, dims=list(dims))
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(len(data)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        return t


def _proto_bytes(t: onnx.TensorProto) -> bytes | None:
    """The little-endian bytes of a tensor held in memory (None: keep it inline, e.g. strings)."""
    if t.data_type == onnx.TensorProto.STRING or onnx.external_data_helper.uses_external_data(t):
        return None
    if t.HasField("raw_data"):
        return t.raw_data
    try:
        return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t)).raw_data
    except Exception:  # noqa: BLE001 - an exotic dtype: stays inline
        return None


def _model_skeleton(model: onnx.ModelProto, ext: _ExternalData) -> onnx.ModelProto:
    """``model`` with its large initializers written by ``ext`` and referenced as external data. ``model`` is not
    modified and its weights are not copied in memory (one tensor at a time goes to the file)."""
    light = onnx.ModelProto()
    copy_fields(model, light, skip=("graph",))
    copy_fields(model.graph, light.graph, skip=("initializer",))
    for t in model.graph.initializer:
        data = _proto_bytes(t) if _tensor_nbytes(t) >= WEIGHT_MIN_BYTES else None
        if data is None:
            light.graph.initializer.add().CopyFrom(t)
        else:
            light.graph.initializer.append(ext.stub(t.name, t.data_type, t.dims, data))
        del data
    return light


def _split_to_external(split: SplitModel, ext: _ExternalData) -> onnx.ModelProto:
    """``split``'s skeleton with each weight written by ``ext`` (from its array, no copy) and referenced there."""
    light = onnx.ModelProto()
    light.CopyFrom(split.skeleton)
    for t in light.graph.initializer:
        arr = split.weights.get(t.name)
        if arr is not None:
            t.CopyFrom(ext.stub(t.name, t.data_type, t.dims, memoryview(little_endian(arr)).cast("B")))
    return light


def save_model(model: onnx.ModelProto | gs.Graph | SplitModel, path: str | Path, *,
               external: bool | None = None) -> list[Path]:
    """Write ``model`` (a ModelProto, an onnx-graphsurgeon graph or a ``SplitModel``) to ``path``; returns the
    files written.

    A graph or ``SplitModel`` is streamed: the structure from its skeleton, each weight from its array
    (``wire.write_inline``), so saving never holds a second copy of the weights. With ``external`` (default:
    when the weights exceed ``external_data_threshold()``) the weights go to ``<name>.data`` beside it as ONNX
    external data (location relative, so the pair can be moved together): never one protobuf message over
    2 GiB. Atomic: the files are written under temporary names and renamed at the end; an ``OSError`` (disk
    full, permission denied) becomes a ``UserError`` and leaves no partial file."""
    path = Path(path)
    if isinstance(model, gs.Graph):
        model = split_graph(model)
    if external is None:
        size = model.nbytes if isinstance(model, SplitModel) else constant_nbytes(model)
        external = size > external_data_threshold()
    if not external:
        if isinstance(model, SplitModel):
            try:
                atomic_write(path, lambda f: write_inline(f, model))
            except ValueError as e:  # over 2 GiB: only reachable with the threshold raised past it
                raise UserError(f"cannot write {path}: {e}; lower GRAPHOPT_EXTERNAL_DATA_THRESHOLD") from None
            return [path]
        try:
            data = model.SerializeToString()
        except (ValueError, EncodeError) as e:
            raise UserError(f"cannot write {path}: {e}; lower GRAPHOPT_EXTERNAL_DATA_THRESHOLD") from None
        atomic_write_bytes(path, data)
        return [path]
    data_path = path.with_name(f"{path.name}.data")
    holder: list[onnx.ModelProto] = []

    def write_data(f) -> None:
        ext = _ExternalData(f, data_path.name)
        holder.append(_split_to_external(model, ext) if isinstance(model, SplitModel) else _model_skeleton(model, ext))

    data_tmp = temp_file(data_path, write_data)
    try:
        skeleton = holder.pop().SerializeToString()
        model_tmp = temp_file(path, lambda f: f.write(skeleton))
    except BaseException:
        unlink_quietly(data_tmp)
        raise
    rename_into_place([(data_tmp, data_path), (model_tmp, path)])
    return [path, data_path]


