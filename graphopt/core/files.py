"""Writing files so that a failure leaves nothing half-written, and the one-line errors a failed write gives.

Every write goes to a temporary name in the destination folder and is renamed into place (``os.replace``) once
synced: an interrupted or failed write never leaves a partial file where a finished one is expected.
"""
from __future__ import annotations

import functools
import io
import os
import tempfile
from pathlib import Path

from .errors import UserError

__all__ = ["current_umask", "write_error", "atomic_write_bytes", "atomic_write_text", "atomic_write", "temp_file",
           "rename_into_place", "unlink_quietly", "cache_dir"]


def current_umask() -> int:
    """The process's umask (POSIX has no call that only reads it: set it and put it back)."""
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
    atomic_write(Path(path), lambda f: f.write(data))


def atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it to ``path``."""
    rename_into_place([(temp_file(path, write), path)])


def temp_file(path: Path, write) -> Path:
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
        unlink_quietly(Path(tmp))
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


def unlink_quietly(path: Path) -> None:
    """Remove a temporary file that may already be gone; cleaning up must not mask the error being raised."""
    try:
        os.unlink(path)
    except OSError:
        pass


def rename_into_place(moves: list[tuple[Path, Path]]) -> None:
    """Rename each finished temporary file to its destination; on failure remove the temporaries left."""
    done = 0
    try:
        for tmp, dest in moves:
            os.replace(tmp, dest)
            done += 1
    except BaseException as e:
        for tmp, _ in moves[done:]:
            unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise write_error(moves[done][1], e) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


# Models whose weights (constant tensors) exceed this many bytes are saved with ONNX external data: the graph in
# ``model.onnx``, the weights in ``model.onnx.data`` beside it. One protobuf message cannot exceed 2 GiB, and
def cache_dir() -> Path:
    """graphopt's cache: ``$GRAPHOPT_CACHE``, default ``~/.cache/graphopt`` (exports, inferred shapes)."""
    return Path(os.environ.get("GRAPHOPT_CACHE") or Path.home() / ".cache" / "graphopt")
