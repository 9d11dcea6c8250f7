"""Graph I/O and small helpers over onnx-graphsurgeon.

Loading checks what it reads and turns every failure into a one-line ``UserError``; saving is atomic (a temporary
name in the destination folder, then ``os.replace``), so an interrupted or failed write never leaves a
half-written model where a finished one is expected, and an input model is never modified in place. Models over
``external_data_threshold()`` (or saved with ``external=True``) keep their weights in ONNX external data beside the
model file; they are written tensor by tensor from memory, never as one protobuf message.
"""
from __future__ import annotations

import collections
import functools
import io
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import EncodeError

from .errors import UserError
from .protoio import (WEIGHT_MIN_BYTES, SplitModel, adopt_graph, check_split, copy_fields, export_graph,
                      external_location, import_graph, little_endian, read_split, split_graph, weights_as_inputs,
                      write_inline)

# onnx-graphsurgeon otherwise nags on every first log line that the optional `colored` package is missing.
gs.logger.G_LOGGER.colors = False

__all__ = [
    "copy_fields",
    "EXTERNAL_DATA_THRESHOLD",
    "external_data_threshold",
    "constant_nbytes",
    "uses_external_data",
    "current_umask",
    "write_error",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_model",
    "load_split",
    "save_model",
    "to_graph",
    "to_model",
    "shape_model",
    "op_counts",
    "producer",
    "consumers",
    "const_value",
    "opset_of",
    "make_name",
    "infer_shapes",
    "symbolic_shape_inference",
    "replace_graph",
    "set_tensors",
    "replace_uses",
    "ensure_shapes",
    "inferred_types",
    "structure_signature",
    "node_inputs",
    "constants_to_initializers",
]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: str | Path, e: OSError) -> UserError:
    """The one-line error for a failed write (disk full, permission denied, a file where a folder should be)."""
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename and Path(e.filename).is_file() \
            and Path(e.filename) != Path(path):
        return UserError(f"cannot write {path}: {e.filename} is a file, not a folder")
    return UserError(f"cannot write {path}: {e.strerror or type(e).__name__}"
                     + (f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename. An
    ``OSError`` (disk full, permission denied) becomes a ``UserError``; no partial file is left either way."""
    _atomic_write(Path(path), lambda f: f.write(data))


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it to ``path``."""
    _rename_into_place([(_temp_file(path, write), path)])


def _temp_file(path: Path, write) -> Path:
    """``write(file)`` into a new temporary file beside ``path`` (synced); its path. Nothing is left on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with _WritebackFile(io.FileIO(fd, "w")) as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600; a finished file: the usual mode
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        # KeyboardInterrupt included: no partial file is left behind.
        _unlink_quietly(Path(tmp))
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    return Path(tmp)


# While a large file is written, the kernel is asked to start writing each chunk of this size to disk (Linux
# sync_file_range), so the closing fsync waits for the last chunk only instead of the whole file: ViT-B/32's
# 353 MB output, 0.26 s of fsync down to 0.12 s.
_WRITEBACK_CHUNK = 32 << 20


class _WritebackFile(io.BufferedWriter):
    """A buffered file that starts the writeback of every ``_WRITEBACK_CHUNK`` bytes written."""

    def __init__(self, raw: io.FileIO) -> None:
        super().__init__(raw)
        self._started = 0  # the file's bytes before this offset are being written back

    def write(self, data) -> int:
        n = super().write(data)
        end = self.tell()
        if end - self._started >= _WRITEBACK_CHUNK:
            self.flush()
            _start_writeback(self.fileno(), self._started, end - self._started)
            self._started = end
        return n


@functools.lru_cache(maxsize=1)
def _sync_file_range():
    """libc's ``sync_file_range`` (Linux), None where there is none: the writeback then starts at fsync."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` to disk, without waiting (advisory: a failure
    only leaves the work to fsync)."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _rename_into_place(moves: list[tuple[Path, Path]]) -> None:
    """Rename each finished temporary file to its destination; on failure remove the temporaries left."""
    done = 0
    try:
        for tmp, dest in moves:
            os.replace(tmp, dest)
            done += 1
    except BaseException as e:
        for tmp, _ in moves[done:]:
            _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise write_error(moves[done][1], e) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# Models whose weights (constant tensors) exceed this many bytes are saved with ONNX external data: the graph in
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
    ``reuse``: another model's weights, shared where byte-identical (``protoio.read_split``)."""
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


def shape_model(graph: gs.Graph) -> onnx.ModelProto:
    """``graph`` as a model for shape and type inference only: its weights (constants of 1 KiB and more) are graph
    inputs of their type and shape (``protoio.weights_as_inputs``), so inferring shapes never copies them. Not a
    model to run or save."""
    return weights_as_inputs(split_graph(graph))


def save_model(model: onnx.ModelProto | gs.Graph | SplitModel, path: str | Path, *,
               external: bool | None = None) -> list[Path]:
    """Write ``model`` (a ModelProto, an onnx-graphsurgeon graph or a ``SplitModel``) to ``path``; returns the
    files written.

    A graph or ``SplitModel`` is streamed: the structure from its skeleton, each weight from its array
    (``protoio.write_inline``), so saving never holds a second copy of the weights. With ``external`` (default:
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
                _atomic_write(path, lambda f: write_inline(f, model))
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

    data_tmp = _temp_file(data_path, write_data)
    try:
        skeleton = holder.pop().SerializeToString()
        model_tmp = _temp_file(path, lambda f: f.write(skeleton))
    except BaseException:
        _unlink_quietly(data_tmp)
        raise
    _rename_into_place([(data_tmp, data_path), (model_tmp, path)])
    return [path, data_path]


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """``model`` as an onnx-graphsurgeon graph; what gs drops is kept for ``to_model`` (``protoio.import_graph``)."""
    return import_graph(model)


def to_model(graph: gs.Graph) -> onnx.ModelProto:
    """``graph`` as a model, with what gs dropped on import put back (``protoio.export_graph``)."""
    return export_graph(graph)


def symbolic_shape_inference():
    """onnxruntime's ``SymbolicShapeInference`` class, loaded from its file: importing it as
    ``onnxruntime.tools.symbolic_shape_infer`` runs ``onnxruntime/tools/__init__.py``, which imports torch when it
    is installed (seconds, and about 700 MB of RSS)."""
    import importlib.util
    import sys

    name = "_graphopt_symbolic_shape_infer"
    if name not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        path = Path(list(spec.submodule_search_locations)[0]) / "tools" / "symbolic_shape_infer.py"
        loaded = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].SymbolicShapeInference


def cache_dir() -> Path:
    """graphopt's cache: ``$GRAPHOPT_CACHE``, default ``~/.cache/graphopt`` (exports, inferred shapes)."""
    return Path(os.environ.get("GRAPHOPT_CACHE") or Path.home() / ".cache" / "graphopt")


# Inferred shapes are kept for models up to this size (the serialized model is the key's input), at most
# _SHAPE_CACHE_ENTRIES of them, the least recently used dropped first. The key also covers this file's source
# (the inference code) and the onnx / onnxruntime versions.
_SHAPE_CACHE_MAX_BYTES = 64 << 20
_SHAPE_CACHE_ENTRIES = 256


@functools.lru_cache(maxsize=1)
def _shape_cache_salt() -> bytes:
    """What besides the model decides inferred shapes: the onnx / onnxruntime versions and the inference code
    (this file and ``shape_probe.py``). Read once per process."""
    import onnxruntime

    return (f"onnx {onnx.__version__} ort {onnxruntime.__version__}\n".encode() + Path(__file__).read_bytes()
            + (Path(__file__).parent / "shape_probe.py").read_bytes())


def _shape_cache_path(data: bytes) -> Path | None:
    if os.environ.get("GRAPHOPT_SHAPE_CACHE", "1") == "0":
        return None
    import hashlib

    h = hashlib.sha256(_shape_cache_salt())
    h.update(data)
    return cache_dir() / "shapes" / f"{h.hexdigest()[:32]}.onnx"


def _shape_cache_store(path: Path, model: onnx.ModelProto) -> None:
    """Best effort: a cache that cannot be written (read-only home, full disk) only costs the next run time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, model.SerializeToString())
        entries = sorted(path.parent.glob("*.onnx"), key=lambda e: e.stat().st_mtime)
        for old in entries[:-_SHAPE_CACHE_ENTRIES]:
            old.unlink(missing_ok=True)
    except (OSError, UserError):
        pass


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes for every tensor, symbolic dims (a dynamic batch) included; results for models up to 64 MiB are
    cached under ``cache_dir()/shapes`` by a hash of the model's bytes, the inference code and the onnx /
    onnxruntime versions (``GRAPHOPT_SHAPE_CACHE=0`` turns that off), so a recipe applied again skips the inference.

    Probing first (``shape_probe``): ONNX's C++ inference at two concrete sizes of the symbolic dims, with the
    shape arithmetic evaluated; milliseconds, used when it shapes every tensor. Otherwise onnxruntime's symbolic
    shape inference (it imports sympy: about a second): ONNX's own inference alone loses every shape after a
    dynamic-batch ``Expand``/``Reshape`` (the cls-token concat of a ViT), which it resolves. Where it stops (an op
    it does not know), ONNX's inference completes what it can from its partial result, and a model that defeats
    all of them is returned unchanged (its shapes stay unknown). Nothing is written to disk.
    """
    data = model.SerializeToString() if model.ByteSize() <= _SHAPE_CACHE_MAX_BYTES else None
    cached = None if data is None else _shape_cache_path(data)
    if cached is not None and cached.is_file():
        try:
            out = onnx.load_from_string(cached.read_bytes())
            os.utime(cached)  # recently used
            return out
        except Exception:  # noqa: BLE001 - a damaged entry is inferred again and replaced
            pass
    out = _infer_uncached(model)
    if cached is not None:
        _shape_cache_store(cached, out)
    return out


def _infer_uncached(model: onnx.ModelProto) -> onnx.ModelProto:
    return _keep_declared(model, _infer_any(model))


def _infer_any(model: onnx.ModelProto) -> onnx.ModelProto:
    from .shape_probe import probe_infer

    probed = probe_infer(model)
    if probed is not None:
        return probed
    inferred = _symbolic_infer(model)
    if inferred is not None and _drop_unsound(model, inferred[0]):
        inferred = (inferred[0], False)  # ONNX's inference may complete what was dropped
    complete = inferred is not None and inferred[1]
    if complete:
        return inferred[0]
    start = model if inferred is None else inferred[0]
    try:
        return onnx.shape_inference.infer_shapes(start, data_prop=True)
    except Exception:
        return start


def _declared_inputs(model: onnx.ModelProto, inferred: onnx.ModelProto) -> set[str]:
    """``inferred`` (in place) with one annotation per interface name (onnxruntime annotates a graph output in
    value_info too: the output's is the one checked) and ``model``'s graph inputs as declared; returns the names of
    the inputs inference had rewritten."""
    g = inferred.graph
    interface = {vi.name for vi in (*g.input, *g.output)}
    if any(vi.name in interface for vi in g.value_info):
        kept = [vi for vi in g.value_info if vi.name not in interface]
        del g.value_info[:]
        g.value_info.extend(kept)
    own = {vi.name: vi for vi in model.graph.input}
    rewritten = set()
    for vi in g.input:
        if vi.name in own and vi.type != own[vi.name].type:
            vi.type.CopyFrom(own[vi.name].type)
            rewritten.add(vi.name)
    return rewritten


def _keep_declared(model: onnx.ModelProto, inferred: onnx.ModelProto) -> onnx.ModelProto:
    """``inferred`` (in place) with ``model``'s graph inputs as declared, and its graph outputs' declared element
    types and dims: inference only fills in what an output leaves unknown (a dim with neither value nor name, a
    missing shape). A model's interface is never rewritten: onnxruntime checks feeds against the inputs'
    declared dims, and a symbol merged with a number there (``[N, 4]`` made ``[4, 4]``) rejects every other
    size."""
    _declared_inputs(model, inferred)
    own = {vi.name: vi for vi in model.graph.output}
    for vi in inferred.graph.output:
        mine = own.get(vi.name)
        if mine is None or vi.type == mine.type:
            continue
        if not (mine.type.HasField("tensor_type") and vi.type.HasField("tensor_type")):
            if mine.HasField("type"):
                vi.type.CopyFrom(mine.type)
            continue
        declared, got = mine.type.tensor_type, vi.type.tensor_type
        merged = onnx.TypeProto()
        merged.CopyFrom(mine.type)
        mt = merged.tensor_type
        if not mt.elem_type:
            mt.elem_type = got.elem_type
        if got.HasField("shape") and (not declared.HasField("shape") or len(declared.shape.dim) == len(got.shape.dim)):
            if not declared.HasField("shape"):
                mt.shape.CopyFrom(got.shape)
            else:
                for d, gd in zip(mt.shape.dim, got.shape.dim):
                    if not d.HasField("dim_value") and not d.dim_param:
                        d.CopyFrom(gd)
        vi.type.CopyFrom(merged)
    return inferred


def _symbolic_infer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool] | None:
    """onnxruntime's symbolic inference as (model with value infos, complete?), None when it fails outright.

    Its ``infer_shapes`` entry point saves ``sym_shape_infer_temp.onnx`` into the working directory and raises
    when some shape stays unknown (a custom op), throwing away everything it did infer; these are the steps of
    that entry point without the save, keeping a partial result for ONNX's inference to complete."""
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 7:
        return None  # it supports opset 7 and later
    try:
        inference = symbolic_shape_inference()(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess rank, verbose
        inference._preprocess(model)
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_, bool(complete)
    except Exception:
        return None


def _graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    """``graph`` and every subgraph in it (If / Loop / Scan bodies, nested ones too)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _graphs(g)


def _drop_unsound(model: onnx.ModelProto, inferred: onnx.ModelProto) -> int:
    """Correct (in place) the shapes of ``inferred``, onnxruntime's symbolic inference of ``model``, where a sound
    source contradicts them; the number of annotations changed.

    Symbolic inference guesses where it cannot evaluate: a Split whose lengths are computed is split evenly
    (RotaryEmbedding's expanded function: an 8-wide head "split" into 4 + 4 when it is 8 + 0), a symbol is merged
    with another it meets (the batch of ``position_ids`` taken for the batch of ``input``). Passes take static
    dims as facts (fold_constants folds the shape arithmetic they decide), so one wrong dim becomes an invalid or
    wrong model. The main graph's annotations are followed in node order, each checked against

    - ONNX's per-node inference from the node's inputs as already checked (and the values of small constants):
      a static dim it gives wins; after an input that had to be corrected, only what it gives is kept (what
      symbolic inference derived from a wrong dim is wrong too);
    - probing's concrete runs (``shape_probe.probe_runs``: ONNX's inference and the shape arithmetic evaluated at
      two large sizes of the symbolic input dims and a small one, as far as they get): a static dim must have that
      value in every run, a dim named after input symbols (``N``, ``2*N``) the value it names in each. The runs
      only ever make a dim less specific: a contradicted dim becomes unknown (a missing or different rank becomes
      theirs, every dim unknown).
      They never give a dim a value or a name: concrete sizes can pass a clamp (``pos[:, :S]`` of a 64-wide
      buffer is 64 wide at both large sizes, which says nothing of S <= 64), so a dim named ``S`` that both large
      runs show equal (past the clamp) is kept unless the small run contradicts it;
    - ONNX's own inference of the whole ``model`` (data propagation on): a static dim there wins, a different rank
      drops the shape.

    Graph inputs keep their declared types (symbolic inference merges an input's symbol with a dim it meets and
    rewrites the input: ``[N, 4, 5]`` becomes ``[5, 4, 5]``); what it derived from a rewritten input is followed
    as corrected. Subgraph annotations get the last check. A contradicted element type drops the annotation. What
    the model itself declares (its outputs' and value infos' types) is left as declared."""
    from .shape_probe import probe_runs

    declared = {vi.name: vi.type.SerializeToString()
                for g in _graphs(model.graph) for vi in (*g.input, *g.output, *g.value_info)}
    try:
        runs = probe_runs(model)
    except Exception:  # noqa: BLE001 - the checks are best effort; the others still apply
        runs = []
    (sizes_a, a), (sizes_b, b) = (runs * 2)[:2] if runs else (({}, {}), ({}, {}))
    sizes_c, c = runs[2] if len(runs) > 2 else ({}, {})
    try:
        whole = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
        onnx_types: dict[str, onnx.TypeProto | None] = {}
        for g in _graphs(whole):
            for vi in (*g.value_info, *g.output):
                # A name typed differently in two scopes is checked against neither.
                onnx_types[vi.name] = vi.type if onnx_types.get(vi.name, vi.type) == vi.type else None
    except Exception:  # noqa: BLE001
        onnx_types = {}

    def named(param: str, sizes: dict[str, int]) -> int | None:
        """The value of a dim named ``param`` at ``sizes`` (symbolic inference writes sympy expressions: ``N``,
        ``2*N``, ``N + 1``), None when it names anything else (a symbol of its own)."""
        if param in sizes:
            return sizes[param]
        if not sizes or not any(name in param for name in sizes):
            return None
        try:
            import sympy

            expr = sympy.sympify(param, locals={name: sympy.Symbol(name) for name in sizes})
            if not {str(f) for f in expr.free_symbols} <= set(sizes):
                return None
            value = expr.subs({sympy.Symbol(k): v for k, v in sizes.items()})
            return int(value) if value.is_integer else None
        except Exception:  # noqa: BLE001
            return None

    def check(vi: onnx.ValueInfoProto, node_ref: onnx.TypeProto | None, tainted: bool) -> bool:
        """Correct ``vi`` in place; whether it changed."""
        t = vi.type
        if not t.HasField("tensor_type") or declared.get(vi.name) == t.SerializeToString():
            return False
        before = t.SerializeToString()
        tt = t.tensor_type
        concrete = (a[vi.name], b[vi.name]) if vi.name in a and vi.name in b else None
        whole_ref = onnx_types.get(vi.name)
        refs = [r.tensor_type for r in (node_ref, whole_ref) if r is not None and r.HasField("tensor_type")]
        if any(r.elem_type and tt.elem_type and r.elem_type != tt.elem_type for r in refs) or (
                concrete is not None and tt.elem_type and concrete[0][0] != tt.elem_type):
            vi.ClearField("type")  # nothing of it can be trusted: as declared (an output), or gone (a value info)
            if declared.get(vi.name):
                vi.type.ParseFromString(declared[vi.name])
            return True
        node_tt = refs[0] if node_ref is not None and refs and node_ref.HasField("tensor_type") else None
        if tainted:  # derived from a wrong annotation: only what ONNX's node inference gives
            if node_tt is not None and node_tt.HasField("shape"):
                tt.shape.CopyFrom(node_tt.shape)
            else:
                tt.ClearField("shape")
        for r in refs:
            if not r.HasField("shape"):
                continue
            if not tt.HasField("shape") or len(tt.shape.dim) != len(r.shape.dim):
                if r is node_tt:
                    tt.shape.CopyFrom(r.shape)
                elif tt.HasField("shape"):
                    tt.ClearField("shape")
                continue
            for d, rd in zip(tt.shape.dim, r.shape.dim):
                if rd.HasField("dim_value") and not (d.HasField("dim_value") and d.dim_value == rd.dim_value):
                    d.dim_value = rd.dim_value
        if concrete is not None and len(concrete[0][1]) == len(concrete[1][1]):
            dims_a, dims_b = concrete[0][1], concrete[1][1]
            dims_c = c[vi.name][1] if vi.name in c and len(c[vi.name][1]) == len(dims_a) else (None,) * len(dims_a)
            if not tt.HasField("shape") or len(tt.shape.dim) != len(dims_a):
                tt.ClearField("shape")  # the rank the runs show (no size makes it another), every dim unknown
                tt.shape.SetInParent()
                for _ in dims_a:
                    tt.shape.dim.add()
            for d, da, db, dc in zip(tt.shape.dim, dims_a, dims_b, dims_c):
                if d.HasField("dim_value"):
                    ok = da == db == d.dim_value and dc in (None, d.dim_value)
                elif d.dim_param:
                    va, vb = named(d.dim_param, sizes_a), named(d.dim_param, sizes_b)
                    vc = named(d.dim_param, sizes_c) if dc is not None else None
                    if va is None or vb is None:
                        ok = True  # a symbol of its own: says only that the dim has some size
                    elif dc is not None and vc is not None and dc != vc:
                        ok = False  # wrong at small sizes
                    else:  # right in both large runs, or both past a clamp (equal: nothing to learn from them)
                        ok = (va == da and vb == db) or da == db
                else:
                    ok = True  # unknown stays unknown: a number or a name from the runs could be a clamp's
                if not ok:
                    d.Clear()
        return t.SerializeToString() != before

    g = inferred.graph
    # The graph's inputs as the model declares them; what symbolic inference derived from one it rewrote is
    # followed as corrected.
    corrected: set[str] = _declared_inputs(model, inferred)
    annotated = {vi.name: vi for vi in (*g.value_info, *g.output)}
    types: dict[str, onnx.TypeProto] = {init.name: onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
                                        for init in g.initializer}
    types.update({vi.name: vi.type for vi in (*g.input, *g.value_info, *g.output)})
    data = {t.name: t for t in g.initializer if not t.external_data and t.ByteSize() < 1 << 16}
    opsets = {o.domain or "ai.onnx": o.version for o in inferred.opset_import}
    for node in g.node:
        if node.op_type == "Constant" and not node.domain and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.ByteSize() < 1 << 16:
                    value = onnx.TensorProto()
                    value.CopyFrom(attr.t)
                    value.name = node.output[0]
                    data[node.output[0]] = value
        got: dict[str, onnx.TypeProto] = {}
        if not any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            try:
                schema = onnx.defs.get_schema(node.op_type, opsets[node.domain or "ai.onnx"], node.domain)
                got = onnx.shape_inference.infer_node_outputs(
                    schema, node, {i: types[i] for i in node.input if i in types},
                    {i: data[i] for i in node.input if i in data})
            except Exception:  # noqa: BLE001 - no schema (a custom op), an input left untyped: nothing to add
                got = {}
        tainted = any(i in corrected for i in node_inputs(node))
        for name in node.output:
            vi = annotated.get(name)
            if vi is not None and check(vi, got.get(name), tainted):
                corrected.add(name)
    main = set(annotated)
    for sub in _graphs(g):
        for vi in (*sub.value_info, *sub.output):
            if sub is not g or vi.name not in main or not any(vi.name in n.output for n in g.node):
                if check(vi, None, False):
                    corrected.add(vi.name)
    # A value info left with no type says nothing: remove it.
    for sub in _graphs(g):
        kept = [vi for vi in sub.value_info if vi.HasField("type")]
        if len(kept) != len(sub.value_info):
            del sub.value_info[:]
            sub.value_info.extend(kept)
    return len(corrected)


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, plus the outer-scope names its subgraphs (If/Loop/Scan bodies) read."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            inner = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                inner.update(n.output)
            for n in g.node:
                names.extend(x for x in node_inputs(n) if x not in inner)
    return names


def op_counts(graph_or_model: gs.Graph | onnx.ModelProto) -> dict[str, int]:
    if isinstance(graph_or_model, onnx.ModelProto):
        ops: Iterable[str] = (n.op_type for n in graph_or_model.graph.node)
    else:
        ops = (n.op for n in graph_or_model.nodes)
    return dict(sorted(collections.Counter(ops).items()))


def opset_of(graph: gs.Graph) -> int:
    """The default-domain (ai.onnx) opset the graph is written against."""
    return int(graph.opset)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that computes ``tensor`` (None for graph inputs and constants)."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, seen through a Constant node; None when it is not constant."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        if value is not None:
            return np.asarray(value)
        for key in ("value_float", "value_int"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        for key in ("value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
    return None


def make_name(graph: gs.Graph, base: str) -> str:
    """A node/tensor name not yet used in ``graph``, derived from ``base``."""
    # gs.Graph.__getattr__ treats unknown attributes as ONNX functions: go through __dict__.
    used = graph.__dict__.get("_graphopt_names")
    if used is None:
        used = {n.name for n in graph.nodes} | set(graph.tensors().keys())
        graph.__dict__["_graphopt_names"] = used
    name, i = base, 0
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def replace_graph(graph: gs.Graph, new: gs.Graph) -> None:
    """Make ``graph`` hold ``new``'s contents, for passes that go through a ModelProto-level tool (onnxsim)."""
    adopt_graph(graph, new)
    graph.nodes = new.nodes
    graph.inputs = new.inputs
    graph.outputs = new.outputs
    graph.opset = new.opset
    graph.import_domains = new.import_domains
    graph.__dict__.pop("_graphopt_names", None)


def set_tensors(tensors: list, new: Iterable[gs.Tensor]) -> None:
    """Replace a node's ``inputs``/``outputs`` in place. Plain assignment (``node.inputs = [...]``) would swap
    onnx-graphsurgeon's synchronised list for a plain one and leave the tensors' back-references stale."""
    new = list(new)
    tensors.clear()
    tensors.extend(new)


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Point every consumer of ``old`` at ``new``."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def inferred_types(graph: gs.Graph, model: onnx.ModelProto | None = None) -> dict[str, tuple[list | None, object]]:
    """Shape and type inference (``infer_shapes``) on ``graph``'s ``shape_model`` (or on ``model``, a lighter
    stand-in a pass built for it): name -> (shape, dtype) of every tensor it typed, read from the inferred value
    infos (shape None when only the type is known)."""
    from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape

    g = infer_shapes(shape_model(graph) if model is None else model).graph
    return {vi.name: (get_onnx_tensor_shape(vi), get_onnx_tensor_dtype(vi))
            for vi in (*g.input, *g.output, *g.value_info) if vi.type.HasField("tensor_type")}


def ensure_shapes(graph: gs.Graph, tensors: Iterable[gs.Tensor], model: onnx.ModelProto | None = None) -> None:
    """Run shape inference (in place) when any of ``tensors`` has no shape yet; passes that match on shapes
    call this instead of requiring an ``infer_shapes`` pass before them. ``model``: see ``inferred_types``."""
    if all(t.shape is not None for t in tensors):
        return
    known = inferred_types(graph, model)
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and t.shape is None and name in known:
            t.shape, t.dtype = known[name]


def structure_signature(model: onnx.ModelProto) -> bytes:
    """The graph's computation without annotations (value_info, doc strings): nodes with their attributes, inputs,
    outputs and the initializers' names, types and shapes. Equal signatures mean the same computation."""
    import hashlib

    h = hashlib.sha256()
    g = model.graph
    for node in g.node:
        h.update(node.op_type.encode() + b"\0" + node.domain.encode() + b"\0")
        h.update("\0".join(node.input).encode() + b"\1" + "\0".join(node.output).encode() + b"\1")
        for attr in node.attribute:
            h.update(attr.SerializeToString())
    for init in g.initializer:
        h.update(f"{init.name}:{init.data_type}:{list(init.dims)}".encode())
    h.update(str([(i.name, i.type.SerializeToString()) for i in (*g.input, *g.output)]).encode())
    return h.digest()


def constants_to_initializers(graph: gs.Graph) -> int:
    """Turn tensor-valued Constant nodes into initializers (what ATC and most tools expect). Returns the count."""
    moved = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or not node.outputs or node.outputs[0] in graph.outputs:
            continue
        value = node.attrs.get("value")
        if not isinstance(value, gs.Constant):
            continue
        out = node.outputs[0]
        const = gs.Constant(out.name, np.asarray(value.values))
        node.outputs.clear()
        replace_uses(out, const)
        moved += 1
    return moved
