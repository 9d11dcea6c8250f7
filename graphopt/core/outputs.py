"""Where graphopt writes, checked before any work, and never over something graphopt did not write.

Every output folder (``apply``, ``bisect``, ``precision``, ``eval``) carries a marker file, ``.graphopt``, naming
the command that wrote it. A folder is written as a whole: its files go into a fresh temporary folder beside it,
which then takes its place; a failed or interrupted command leaves the previous folder (or nothing) and no
temporary folder. What may be replaced:

- nothing there, or an empty folder: written;
- a folder whose marker names the same command and lists every entry in it: replaced whole (a second
  ``graphopt apply`` to the same run). The marker lists the files the command wrote; ``eval`` adds the ``.om``
  files and logs ATC writes into a run (``record_files``); a sub-folder with a marker of its own (``eval/``) is
  graphopt's too. An entry the marker does not list (notes the user put there) makes the folder foreign;
- anything else (a folder of the user's files, another command's output, a file, a symbolic link): refused with
  one line, unless ``--force``;
- never, even with ``--force``: a device or other special file (``/dev/null``), the filesystem root, the home
  folder, the current folder or a folder above it, a folder holding a git repository, a folder holding one of
  the command's own inputs (the recipe, the model, the run being evaluated).

The location is checked before the first pass (``check_output_dir``): the parent exists or can be created, and a
folder can be made in it. Errors name the path the user gave, never the temporary folder.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import UserError
from .files import current_umask, write_error

__all__ = ["MARKER", "KINDS", "marker_kind", "check_output_dir", "check_output_file", "staged_dir",
           "check_parent", "record_files"]

MARKER = ".graphopt"
# What each kind of folder is called in messages.
KINDS = {"apply": "graphopt apply run", "bisect": "graphopt bisect folder",
         "precision": "graphopt precision folder", "eval": "graphopt eval folder",
         "optimize": "graphopt optimize run"}

_AGAIN = "choose another -o or pass --force"


def marker_text(kind: str, files: Iterable[str] = ()) -> str:
    """The marker's content: the kind and the sorted names of the entries graphopt wrote (the same for every run
    writing the same files, so a run directory's files stay reproducible)."""
    return json.dumps({"written_by": "graphopt", "kind": kind, "files": sorted(set(files))}) + "\n"


def _marker(folder: str | Path) -> dict | None:
    path = Path(folder) / MARKER
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("written_by") == "graphopt" and data.get("kind") in KINDS:
        return data
    return None


def marker_kind(folder: str | Path) -> str | None:
    """The kind named by ``folder``'s marker; None when there is no readable graphopt marker."""
    data = _marker(folder)
    return None if data is None else data["kind"]


def _foreign_entries(folder: Path, data: dict) -> list[str]:
    """Entries of a marked ``folder`` graphopt did not write: neither listed in its marker nor a sub-folder
    with a graphopt marker of its own."""
    listed = data.get("files")
    listed = set(listed) if isinstance(listed, list) else set()
    foreign = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name == MARKER or entry.name in listed:
            continue
        if entry.is_dir(follow_symlinks=False) and _marker(entry.path) is not None:
            continue
        foreign.append(entry.name)
    return foreign


def record_files(folder: str | Path, names: Iterable[str]) -> None:
    """Add ``names`` (entries graphopt made in ``folder`` after writing it, e.g. ATC's ``.om`` files compiled by
    ``graphopt eval``) to ``folder``'s marker, so a later run may replace them."""
    from .files import atomic_write_text

    data = _marker(folder)
    if data is None:
        return
    files = data.get("files") if isinstance(data.get("files"), list) else []
    atomic_write_text(Path(folder) / MARKER, marker_text(data["kind"], [*files, *names]))


def _special(mode: int) -> bool:
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def _real(path: Path) -> Path:
    """``path`` with its folder's symbolic links resolved but not its own last part (a link is replaced, not
    followed)."""
    absolute = Path(os.path.abspath(path))
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def check_parent(path: Path) -> None:
    """A folder can be made where ``path`` goes: in its parent, or, when the parent does not exist yet (it is made
    when the output is written), in the nearest existing folder above it. Tried, not inferred from permission
    bits, which neither root's rights nor a read-only file system show: a folder is made there and removed."""
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():  # a file (or a link to one) where a folder is needed
        raise UserError(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise write_error(path, OSError(e.errno, e.strerror)) from None  # without the probe's name


def _protected(path: Path, inputs: Iterable[str | Path | None]) -> str | None:
    """Why ``path`` may never be replaced, even with ``--force`` (None when it may)."""
    real = _real(path)
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == Path(real.anchor):
        return "is the filesystem root"
    if real == Path(os.path.realpath(Path.home())):
        return "is your home folder"
    if real == cwd or real in cwd.parents:
        return "is the current folder or a folder above it"
    for item in inputs:
        if item is None:
            continue
        src = Path(os.path.realpath(item))
        if src == real:
            return "is an input of this command"
        if real in src.parents:
            return f"holds {item}, which this command reads"
    return None


def _modes(path: Path) -> tuple[int, int | None] | None:
    """``path``'s own mode and, for a symbolic link, its target's (None when dangling); None when nothing is
    there yet, after ``check_parent`` has made sure it can be made. Any other error is a one-line ``UserError``."""
    try:
        own = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # absent, or below a file: check_parent says which
        check_parent(path)
        return None
    except OSError as e:  # e.g. a file where a folder is expected above it
        raise write_error(path, e) from None
    if not stat.S_ISLNK(own):
        return own, own
    try:
        return own, os.stat(path).st_mode
    except OSError:
        return own, None


def check_output_dir(path: str | Path, kind: str, *, force: bool = False,
                     inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check that ``path`` may be written as a ``kind`` output folder (see the module docstring); raises a
    one-line ``UserError`` otherwise. ``inputs``: the files and folders the command reads. Returns ``path``."""
    path = Path(path)
    what = KINDS[kind]
    inputs = list(inputs)
    modes = _modes(path)
    if modes is None:
        return path
    mode, target = modes
    if stat.S_ISLNK(mode) and target is not None and _special(target):
        raise UserError(f"{path} is a link to a device or special file, not a folder; choose another -o")
    if _special(mode):
        raise UserError(f"{path} is a device or special file, not a folder; choose another -o")
    why = _protected(path, inputs)
    if why:
        raise UserError(f"{path} {why}; graphopt will not replace it, even with --force; choose another -o")
    if stat.S_ISDIR(mode):
        data = _marker(path)
        found = None if data is None else data["kind"]
        foreign = _foreign_entries(path, data) if found == kind and not force else []
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise UserError(f"{path} is a {what}, but holds {foreign[0]!r}{more}, which graphopt did not write "
                            f"there; move it out or pass --force")
        if found == kind:
            pass
        elif not force and found is not None:
            raise UserError(f"{path} is a {KINDS[found]}, not a {what}; {_AGAIN}")
        elif not force and any(os.scandir(path)):
            raise UserError(f"{path} exists and is not a {what} (no {MARKER} marker); {_AGAIN}")
        elif force and os.path.lexists(path / ".git"):
            raise UserError(f"{path} holds a git repository (.git); graphopt will not replace it, even with "
                            "--force; choose another -o")
    elif not force:
        if stat.S_ISLNK(mode):
            raise UserError(f"{path} is a symbolic link, not a {what}; {_AGAIN} (which replaces the link, not "
                            "what it points to)")
        raise UserError(f"{path} exists and is a file, not a {what}; {_AGAIN}")
    check_parent(path)
    return path


def check_output_file(path: str | Path, *, force: bool = False, same_as: Path | None = None) -> bool:
    """Check that the single file ``path`` may be written; raises a one-line ``UserError`` otherwise. An existing
    file is refused unless ``force``, or unless it already holds exactly the bytes of ``same_as`` (then nothing
    needs writing: returns False). A device, special file, or folder is always refused. Returns True when
    ``path`` is to be written."""
    path = Path(path)
    modes = _modes(path)
    if modes is None:
        return True
    own, target = modes
    mode = own if target is None else target  # a dangling link: replaced by the file with --force
    if _special(mode) and not stat.S_ISLNK(mode):
        raise UserError(f"{path} is a device or special file, not a regular file; choose another -o")
    if stat.S_ISDIR(mode):
        raise UserError(f"{path} is a folder; name a file to write")
    if same_as is not None and stat.S_ISREG(mode) and _same_bytes(path, same_as):
        return False
    if not force:
        raise UserError(f"{path} exists (and differs from what would be written); {_AGAIN}")
    check_parent(path)
    return True


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


@contextmanager
def staged_dir(outdir: str | Path, kind: str, *, force: bool = False,
               inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """A fresh temporary folder beside ``outdir`` to write into; when the block ends without an exception, the
    marker is added and the folder takes the place of ``outdir`` (checked again first: something may have
    appeared there meanwhile). On any exception or Ctrl-C the temporary folder is removed and a previous
    ``outdir`` is left as it was; an ``OSError`` becomes a one-line ``UserError`` naming ``outdir``, and a
    ``UserError`` naming the temporary folder is reworded to name ``outdir``."""
    outdir = Path(outdir)
    inputs = list(inputs)
    check_output_dir(outdir, kind, force=force, inputs=inputs)
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    except OSError as e:
        raise write_error(outdir, e) from None
    old = None
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the finished folder gets the usual mode
        yield tmp
        (tmp / MARKER).write_text(marker_text(kind, (e.name for e in os.scandir(tmp))), encoding="utf-8")
        check_output_dir(outdir, kind, force=force, inputs=inputs)
        if os.path.lexists(outdir):
            old = outdir.parent / f".{outdir.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(outdir, old)
        os.replace(tmp, outdir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(outdir):
            try:
                os.rename(old, outdir)  # put the previous result back
            except OSError:
                pass
        if isinstance(e, OSError):
            filename = e.filename and str(e.filename).replace(str(tmp), str(outdir))
            if filename == str(outdir):
                filename = None
            raise write_error(outdir, OSError(e.errno, e.strerror, filename)) from None
        if isinstance(e, UserError) and str(tmp) in str(e):
            raise UserError(str(e).replace(str(tmp), str(outdir))) from None
        raise
    if old is not None:
        _remove(old)
