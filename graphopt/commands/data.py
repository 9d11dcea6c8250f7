"""``graphopt data``: a labelled image set -> one float32 ``.bin`` per image plus ``labels.txt``, preprocessed as the
recipe's ``preprocess:`` section says (the model's seed: resize, center crop, interpolation, normalisation).

Sources (``kind``):

- ``imagenet``: a flat folder of images with ``<file> <class>`` lines in ``ILSVRC2012_validation_ground_truth.txt``
  or ``val_label.txt`` (in the folder or its parent; ``--labels`` names another file), or a ``val/<wnid>/*.JPEG``
  tree (torchvision ImageFolder: classes are the sorted folder names);
- ``cifar10``: the CIFAR-10 python ``test_batch`` (or its folder). It is a pickle, read by a restricted unpickler
  that builds plain containers, bytes, numbers and numeric numpy arrays and refuses every other global, so a
  crafted file cannot run code;
- ``folder``: any folder of images (``--glob``), labels from ``--labels FILE`` or ``--label-from-name REGEX``
  (the class is the regex's first group, e.g. ``'_(\\d+)\\.'`` for ``imagenet_00_243.jpg``), or none.

Output, in ``DIR``: ``<name>.bin`` (raw float32, C x H x W, one image each, the layout ais_bench and the seeds'
scripts read; ``name`` is the image's stem with dots replaced, since ais_bench names outputs after the text before
the first dot), ``labels.txt`` (``<name>.bin <class>`` lines) and ``data.json`` (settings, counts, skipped files).
Images are processed in parallel worker processes with a progress bar. A second run with the same settings reuses
every ``.bin`` whose size is right (an interrupted run resumes; files are written to a temporary name and renamed,
so a partial file never looks complete). Unreadable images are skipped, counted and listed, never silently.
``DIR`` must be new, empty, or a folder graphopt data wrote (its ``data.json``); anything else is refused before
any image is read, so files graphopt did not write are never touched.

Models with several inputs take one sub-folder per input, ``DIR/<input>/`` (the input's name with every character
other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``: ``input_folder_name``), item k of every input
in files of the same name. ``graphopt data folder ... -o DIR/<image input>`` writes the image input's;
``npz`` (``prepare_npz``) writes the others from an ``.npz`` holding one array per input name, the first axis the
items (a tokenizer's output saved with ``numpy.savez``): one raw ``.bin`` per item per input, in the model's input
dtype (``--model`` checks and casts; values that would change are refused), named ``item_<k>`` or after the
files of ``--names-from FOLDER`` (the image input's folder, so names match across inputs); an array named
``labels`` (one integer per item) becomes ``labels.txt``.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import stat
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..core.errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "GROUND_TRUTH_FILES", "Item", "DataResult", "preprocess_image", "read_labels_file",
           "load_cifar_batch", "imagenet_items", "cifar10_items", "folder_items", "write_dataset", "prepare_data",
           "natural_key", "check_data_output", "input_folder_name", "prepare_npz", "add_cli"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff", ".gif")
GROUND_TRUTH_FILES = ("ILSVRC2012_validation_ground_truth.txt", "val_label.txt")
DATA_FORMAT = "graphopt-data-1"
LABELS_FILE = "labels.txt"
META_FILE = "data.json"


def input_folder_name(name: str) -> str:
    """The sub-folder of a data folder holding input ``name``'s files (``graphopt eval`` looks for it there)."""
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return folder if folder not in ("", ".", "..") else f"input_{folder.replace('.', '_')}"


def natural_key(text: str) -> list:
    """Sort key ais_bench uses for its input files: digit runs as numbers, the rest case-insensitively."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class Item:
    """One image to write: ``name`` (output stem), its source (a path, or raw CHW uint8 bytes) and label."""

    name: str
    source: Path | bytes
    label: int | None
    origin: str  # for messages: the file, or test_batch[i]


@dataclass
class DataResult:
    outdir: Path
    written: int
    reused: int
    skipped: list[dict[str, str]]
    labelled: int
    removed_stale: int
    item_shape: tuple[int, ...]


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing (runs in the worker processes: numpy and PIL only)


def preprocess_image(img: Any, pre: dict[str, Any], channels: int) -> np.ndarray:
    """A PIL image -> float32 (C, H, W) per ``pre`` (a ``PreprocessSpec`` as a dict).

    Resize follows torchvision's ``Resize``: an int is the shorter side (the longer one ``int(s * long / short)``);
    center crop offsets are ``round((size - crop) / 2)``, as torchvision's ``CenterCrop``.
    """
    from PIL import Image

    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}[pre["interpolation"]]
    img = img.convert("RGB" if channels == 3 else "L")
    w, h = img.size
    resize = pre["resize"]
    if len(resize) == 1:
        s = resize[0]
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    else:
        nh, nw = resize
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    ch, cw = pre["crop"]
    top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
    if (top, left, ch, cw) != (0, 0, nh, nw):
        img = img.crop((left, top, left + cw, top + ch))
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    mean = np.asarray(pre["mean"], dtype=np.float32)
    std = np.asarray(pre["std"], dtype=np.float32)
    x = (x * np.float32(pre["scale"]) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _open_image(source: Path | bytes, channels: int):
    from PIL import Image

    if isinstance(source, bytes):  # CIFAR: 3 x 32 x 32 uint8, channel-major
        side = int(round((len(source) // 3) ** 0.5))
        arr = np.frombuffer(source, dtype=np.uint8).reshape(3, side, side).transpose(1, 2, 0)
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    img = Image.open(source)
    img.load()  # decode now: truncated or corrupt files fail here, inside the try
    return img


def _process(task: tuple) -> tuple[str, str, str]:
    """Worker: (name, source, out path, preprocess dict, channels, bytes per file) -> (name, status, message)."""
    name, source, out, pre, channels, nbytes = task
    out = Path(out)
    try:
        if out.stat().st_size == nbytes:
            return name, "reused", ""
    except OSError:
        pass
    try:
        x = preprocess_image(_open_image(source, channels), pre, channels)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), DecompressionBombError, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return name, "unreadable", f"{type(e).__name__}: {msg}"
    if x.nbytes != nbytes:
        return name, "unreadable", f"preprocessed to {list(x.shape)}, expected {nbytes // 4} values"
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    x.tofile(tmp)
    os.replace(tmp, out)
    return name, "written", ""


# ---------------------------------------------------------------------------------------------------------------
# Labels


def read_labels_file(path: Path) -> dict[str, int]:
    """``<file> <class>`` lines -> {file stem: class}. The stem is the name up to the first dot."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels file {path}: no such file")
    labels: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1:
            raise UserError(f"labels file {path}: line {n} holds one value {parts[0]!r}; expected `<file> <class>` "
                            "lines (the ImageNet devkit's one-number-per-line ground truth uses other class ids: "
                            "convert it to `<file> <class>` with classes 0-999)")
        try:
            label = int(parts[-1])
        except ValueError:
            raise UserError(f"labels file {path}: line {n}: class {parts[-1]!r} is not an integer") from None
        labels[Path(" ".join(parts[:-1])).name.split(".")[0]] = label
    if not labels:
        raise UserError(f"labels file {path}: no `<file> <class>` lines")
    return labels


def _label_from_name(regex: str) -> Callable[[str], int]:
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise UserError(f"--label-from-name {regex!r}: not a valid regular expression ({e})") from None

    def label(name: str) -> int:
        m = pattern.search(name)
        if m is None:
            raise UserError(f"--label-from-name {regex!r} does not match the file name {name!r}")
        text = m.group(1) if pattern.groups else m.group(0)
        try:
            return int(text)
        except (TypeError, ValueError):
            raise UserError(f"--label-from-name {regex!r}: {text!r} (from {name!r}) is not an integer class; "
                            r"capture the digits in the first group, e.g. '_(\d+)\.'") from None
    return label


def _output_name(path: Path) -> str:
    return path.stem.replace(".", "_")


def _images(root: Path, pattern: str | None) -> tuple[list[Path], int]:
    """Image files matching ``pattern`` (default: every image in ``root``), naturally sorted; and how many
    matching files were left out because their extension is not an image's."""
    matched = [p for p in root.glob(pattern or "*") if p.is_file()]
    images = [p for p in matched if p.suffix.lower() in IMAGE_EXTENSIONS]
    images.sort(key=lambda p: natural_key(str(p.relative_to(root))))
    return images, len(matched) - len(images)


def _labelled(paths: Sequence[Path], labels: dict[str, int] | Callable[[str], int] | None,
              where: str) -> list[Item]:
    items = []
    missing = []
    for p in paths:
        if labels is None:
            label = None
        elif callable(labels):
            label = labels(p.name)
        else:
            label = labels.get(p.name.split(".")[0])
            if label is None:
                missing.append(p.name)
        items.append(Item(_output_name(p), p, label, str(p)))
    if missing:
        raise UserError(f"{where}: {len(missing)} image(s) have no label, e.g. {missing[0]!r}")
    return items


def _label_source(labels_file: str | Path | None, label_regex: str | None):
    if labels_file is not None and label_regex is not None:
        raise UserError("give either --labels or --label-from-name, not both")
    if labels_file is not None:
        return read_labels_file(Path(labels_file)), f"labels file {labels_file}"
    if label_regex is not None:
        return _label_from_name(label_regex), f"--label-from-name {label_regex!r}"
    return None, ""


def _check_dir(src: Path, kind: str) -> Path:
    src = Path(src)
    if not src.exists():
        raise UserError(f"data {kind} {src}: no such file or folder")
    if not src.is_dir():
        raise UserError(f"data {kind} {src}: expected a folder of images")
    return src


def folder_items(src: str | Path, pattern: str | None = None, labels_file: str | Path | None = None,
                 label_regex: str | None = None) -> tuple[list[Item], int]:
    """Images in a folder; labels from a file, from the names, or none."""
    root = _check_dir(Path(src), "folder")
    paths, ignored = _images(root, pattern)
    if not paths:
        raise UserError(f"data folder {root}: no images match {pattern or '*'!r} "
                        f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})")
    labels, where = _label_source(labels_file, label_regex)
    return _labelled(paths, labels, where or str(root)), ignored


def imagenet_items(src: str | Path, pattern: str | None = None, labels_file: str | Path | None = None,
                   label_regex: str | None = None) -> tuple[list[Item], int]:
    """An ImageNet validation set: a flat folder plus a ground-truth file, or ``val/<wnid>/*`` folders."""
    root = _check_dir(Path(src), "imagenet")
    if (root / "val").is_dir() and not _images(root, pattern)[0]:
        root = root / "val"
    paths, ignored = _images(root, pattern)
    labels, where = _label_source(labels_file, label_regex)
    if paths:
        if labels is None:
            found = [d / name for d in (root, root.parent) for name in GROUND_TRUTH_FILES if (d / name).is_file()]
            if not found:
                raise UserError(f"data imagenet {root}: no labels: put {' or '.join(GROUND_TRUTH_FILES)} "
                                "(`<file> <class>` lines) beside the images or pass --labels FILE")
            labels, where = read_labels_file(found[0]), f"labels file {found[0]}"
        return _labelled(paths, labels, where), ignored
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    items: list[Item] = []
    for index, wnid in enumerate(classes):
        class_paths, skipped = _images(root / wnid, pattern)
        ignored += skipped
        if labels is None:
            items += [Item(_output_name(p), p, index, str(p)) for p in class_paths]
        else:
            items += _labelled(class_paths, labels, where)
    if not items:
        raise UserError(f"data imagenet {root}: no images (expected image files with a ground-truth file, "
                        "or val/<wnid>/*.JPEG folders)")
    items.sort(key=lambda it: natural_key(it.name))
    return items, ignored


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10: a pickle, read safely


def _plain_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refused dtype spec of type {type(spec).__name__}")
    dt = np.dtype(spec)
    if dt.hasobject:
        raise pickle.UnpicklingError("refused an object dtype (it would unpickle arbitrary Python objects)")
    return np.dtype(spec, align=align, copy=copy)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("refused an ndarray subclass")
    return np.empty((0,), dtype=_plain_dtype(dtype))  # the BUILD opcode that follows sets shape and data


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str = "C") -> np.ndarray:
    if not isinstance(dtype, np.dtype):
        dtype = _plain_dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refused an object dtype")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()


def _encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with {encoding!r}")
    return text.encode(encoding)


class _DatasetUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, bytes, str, numbers and numeric numpy arrays; refuses any other global.

    Pickles only run code through the callables ``find_class`` hands out; every one handed out here builds data.
    """

    _GLOBALS: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): _encode,  # how Python 3 writes bytes in protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only plain data and numeric numpy "
                                         "arrays are accepted") from None


def load_cifar_batch(path: str | Path) -> tuple[np.ndarray, list[int]]:
    """(data (N, 3072) uint8, labels) of a CIFAR-10 python batch, unpickled safely."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _DatasetUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise UserError(f"CIFAR-10 batch {path}: cannot be read ({e.strerror or e})") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a corrupt or hostile file
        raise UserError(f"CIFAR-10 batch {path}: not a CIFAR-10 python batch "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR-10 batch {path}: expected a dict, found {type(obj).__name__}")
    plain = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data, labels = plain.get("data"), plain.get("labels")
    if labels is None and "fine_labels" in plain:
        raise UserError(f"CIFAR-10 batch {path}: this is a CIFAR-100 batch (fine_labels); only CIFAR-10 is supported")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shown = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"CIFAR-10 batch {path}: 'data' should be uint8 [N, 3072], found {shown}")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, list) or len(labels) != len(data) or \
            not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        raise UserError(f"CIFAR-10 batch {path}: 'labels' should be {len(data)} integers")
    return data, labels


def cifar10_items(src: str | Path) -> list[Item]:
    path = Path(src)
    if path.is_dir():
        for cand in (path / "test_batch", path / "cifar-10-batches-py" / "test_batch"):
            if cand.is_file():
                path = cand
                break
        else:
            raise UserError(f"data cifar10 {src}: no test_batch file in this folder")
    elif not path.exists():
        raise UserError(f"data cifar10 {src}: no such file")
    data, labels = load_cifar_batch(path)
    return [Item(f"cifar10_{i:05d}", data[i].tobytes(), labels[i], f"{path}[{i}]") for i in range(len(data))]


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _settings(kind: str, src: str | Path, pre: dict[str, Any], item_shape: Sequence[int]) -> dict[str, Any]:
    return {"kind": kind, "source": str(Path(src).resolve()), "preprocess": pre, "item_shape": list(item_shape),
            "dtype": "float32"}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _read_meta(outdir: Path) -> dict[str, Any] | None:
    """``data.json`` of a folder graphopt data wrote; None when there is none (or it is someone else's file)."""
    try:
        meta = json.loads((outdir / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == DATA_FORMAT else None


def check_data_output(outdir: str | Path) -> None:
    """``-o DIR`` may be written: new (its parent writable), empty, or a folder graphopt data wrote, which is
    resumed; anything else is a one-line ``UserError``, raised before any work."""
    from ..core.outputs import check_parent

    outdir = Path(outdir)
    if not os.path.lexists(outdir):
        check_parent(outdir)
        return
    try:
        mode = os.stat(outdir).st_mode
    except OSError as e:
        raise UserError(f"-o {outdir}: cannot be read ({e.strerror})") from None
    if not stat.S_ISDIR(mode):
        kind = "a file" if stat.S_ISREG(mode) else "a device or special file"
        raise UserError(f"-o {outdir}: exists and is {kind}, not a folder; choose another -o")
    if _read_meta(outdir) is None and any(os.scandir(outdir)):
        raise UserError(f"-o {outdir}: exists and is not a graphopt data folder (no {META_FILE} of graphopt data); "
                        "choose a new or empty folder")
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {outdir}: Permission denied")


def _write_labels(folder: Path, labels: Sequence[tuple[str, int]] | None) -> None:
    """``labels.txt`` (``<name>.bin <class>`` lines), written under a temporary name and renamed; removed when there
    are no labels (a stale one from an earlier run would pair files with wrong classes)."""
    from ..core.ir import atomic_write_text

    if labels:
        atomic_write_text(folder / LABELS_FILE, "".join(f"{name}.bin {label}\n" for name, label in labels))
    else:
        (folder / LABELS_FILE).unlink(missing_ok=True)


def write_dataset(items: Sequence[Item], outdir: str | Path, pre: dict[str, Any], item_shape: Sequence[int],
                  settings: dict[str, Any], jobs: int | None = None, progress: bool | None = None) -> DataResult:
    """Write one ``.bin`` per item (in parallel), ``labels.txt`` and ``data.json``; see the module docstring."""
    outdir = Path(outdir)
    names = [it.name for it in items]
    first: dict[str, Item] = {}
    for it in items:
        if it.name in first:
            raise UserError(f"two images would both be written as {it.name}.bin: {first[it.name].origin} and "
                            f"{it.origin}")
        first[it.name] = it
    check_data_output(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from ..core.ir import write_error  # not at the top: the worker processes import this module, and not onnx

        raise write_error(outdir, e) from None
    meta_path = outdir / META_FILE
    existing = sorted(outdir.glob("*.bin"))
    old = _read_meta(outdir)
    if old is not None:
        settings_before = old.get("settings") if isinstance(old.get("settings"), dict) else {}
        differs = [k for k in settings if settings_before.get(k) != settings[k]]
        if differs:
            raise UserError(f"-o {outdir}: holds data prepared with other settings (differing: {', '.join(differs)}); "
                            "choose another folder or delete this one")
    for tmp in outdir.glob("*.tmp-*"):
        tmp.unlink(missing_ok=True)
    _write_json(meta_path, {"format": DATA_FORMAT, "settings": settings, "complete": False})

    wanted = {f"{n}.bin" for n in names}
    stale = [p for p in existing if p.name not in wanted]
    for p in stale:
        p.unlink()
    nbytes = int(np.prod(item_shape)) * 4
    tasks = [(it.name, it.source, str(outdir / f"{it.name}.bin"), pre, int(item_shape[0]), nbytes) for it in items]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    from tqdm import tqdm

    status: dict[str, tuple[str, str]] = {}
    with tqdm(total=len(tasks), desc="graphopt data", unit="img", disable=None if progress is None else not progress,
              file=sys.stderr, mininterval=0.5) as bar:
        if jobs == 1:
            results: Iterable = map(_process, tasks)
            for name, st, msg in results:
                status[name] = (st, msg)
                bar.update()
        else:
            # spawn, not fork: the parent may hold onnxruntime / torch threads, which fork does not mix with.
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                chunk = max(1, min(32, len(tasks) // (jobs * 8)))
                for name, st, msg in pool.map(_process, tasks, chunksize=chunk):
                    status[name] = (st, msg)
                    bar.update()

    skipped = [{"file": it.origin, "error": status[it.name][1]} for it in items if status[it.name][0] == "unreadable"]
    good = [it for it in items if status[it.name][0] != "unreadable"]
    labelled = [it for it in good if it.label is not None]
    _write_labels(outdir, [(it.name, it.label) for it in labelled])
    result = DataResult(outdir, sum(1 for s, _ in status.values() if s == "written"),
                        sum(1 for s, _ in status.values() if s == "reused"), skipped, len(labelled), len(stale),
                        tuple(item_shape))
    _write_json(meta_path, {
        "format": DATA_FORMAT, "settings": settings, "complete": True,
        "layout": "one raw float32 C x H x W array per .bin file, native byte order",
        "files": len(good), "labelled": len(labelled), "labels": LABELS_FILE if labelled else None,
        "skipped_unreadable": skipped,
    })
    if not good:
        raise UserError(f"data: none of the {len(items)} images could be read, e.g. {skipped[0]['file']}: "
                        f"{skipped[0]['error']}")
    return result


def prepare_data(kind: str, src: str | Path, outdir: str | Path, recipe_path: str | Path, *,
                 pattern: str | None = None, labels_file: str | Path | None = None, label_regex: str | None = None,
                 limit: int | None = None, jobs: int | None = None,
                 progress: bool | None = None) -> tuple[DataResult, int]:
    """Gather the images of ``src`` and write them preprocessed per the recipe; returns (result, ignored files)."""
    from .recipe import load_recipe

    recipe = load_recipe(recipe_path)
    check_data_output(outdir)  # before any image is read
    shape = recipe.input.shape if recipe.input is not None and recipe.input.shape is not None else ()
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise UserError(f"recipe {recipe_path}: input.shape {list(shape)} is not an image batch [N, 1 or 3, H, W]")
    if recipe.input.dtype not in (None, "float32"):  # None: the model's (an image model's is float32)
        raise UserError(f"recipe {recipe_path}: graphopt data writes float32; input.dtype is {recipe.input.dtype}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    for key in ("mean", "std"):
        values = getattr(recipe.preprocess, key)
        if len(values) not in (1, shape[1]):
            raise UserError(f"recipe {recipe_path}: preprocess.{key} has {len(values)} values, the input has "
                            f"{shape[1]} channel(s): give 1 or {shape[1]}")
    ignored = 0
    if kind == "cifar10":
        if pattern or labels_file or label_regex:
            raise UserError("data cifar10: --glob, --labels and --label-from-name do not apply (the batch holds "
                            "the images and their labels)")
        items = cifar10_items(src)
    elif kind == "imagenet":
        items, ignored = imagenet_items(src, pattern, labels_file, label_regex)
    elif kind == "folder":
        items, ignored = folder_items(src, pattern, labels_file, label_regex)
    else:
        raise UserError(f"data: unknown kind {kind!r} (imagenet, cifar10, folder)")
    items = items[:limit] if limit else items
    pre = asdict(recipe.preprocess)
    pre = {k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()}
    settings = _settings(kind, src, pre, shape[1:])
    return write_dataset(items, outdir, pre, shape[1:], settings, jobs=jobs, progress=progress), ignored


# ---------------------------------------------------------------------------------------------------------------
# Non-image inputs: an .npz with one array per input name


def _npz_model_inputs(model: str | Path) -> dict[str, Any]:
    from ..core.inputs import model_inputs

    path = Path(model)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise UserError(f"--model {model}: no such ONNX file or run directory (with model.onnx)")
    try:
        return {m.name: m for m in model_inputs(path)}
    except Exception as e:
        raise UserError(f"--model {path}: cannot be read as ONNX ({str(e).splitlines()[0] if str(e) else e})") from None


def prepare_npz(src: str | Path, outdir: str | Path, *, model: str | Path | None = None,
                names_from: str | Path | None = None, limit: int | None = None) -> dict[str, Any]:
    """Write ``DIR/<input>/<item>.bin`` for every array of ``src`` (see the module docstring); returns a summary
    (``inputs``: name -> {folder, dtype, item_shape}, ``items``, ``labelled``, ``missing``: model inputs the file
    does not hold)."""
    from ..core.inputs import _name_of_array, np_dtype

    src, outdir = Path(src), Path(outdir)
    if not src.is_file():
        raise UserError(f"data npz {src}: no such file")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    try:
        with np.load(src, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise UserError(f"data npz {src}: a single array; expected an .npz with one array per input name")
            arrays = {k: z[k] for k in z.files}
    except UserError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"data npz {src}: not a readable .npz ({str(e).splitlines()[0] if str(e) else e})") from None
    model_ins = _npz_model_inputs(model) if model is not None else None
    labels = arrays.pop("labels") if "labels" in arrays and (model_ins is None or "labels" not in model_ins) else None
    if not arrays:
        raise UserError(f"data npz {src}: holds no input arrays")
    counts = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    for k, n in counts.items():
        if n is None:
            raise UserError(f"data npz {src}: array {k!r} is a scalar; the first axis must be the items")
    n = next(iter(counts.values()))
    for k, c in counts.items():
        if c != n:
            raise UserError(f"data npz {src}: array {k!r} holds {c} items, {next(iter(counts))!r} holds {n} "
                            "(the first axis is the items: every array needs the same number)")
    if labels is not None and (labels.shape != (n,) or labels.dtype.kind not in "iu"):
        raise UserError(f"data npz {src}: 'labels' should be {n} integers (one class per item), found "
                        f"{labels.dtype} {list(labels.shape)}")
    out: dict[str, np.ndarray] = {}
    for k, a in arrays.items():
        if a.dtype.kind in "OUSV":
            raise UserError(f"data npz {src}: array {k!r} is {a.dtype}; .bin files hold numbers")
        if model_ins is not None:
            m = model_ins.get(k)
            if m is None:
                raise UserError(f"data npz {src}: array {k!r} is not an input of the model "
                                f"(inputs: {', '.join(model_ins) or 'none'}; 'labels' holds the classes)")
            if m.dtype is None or m.dtype == "string":
                raise UserError(f"data npz {src}: input {k!r} is {m.describe()}: .bin files hold numbers")
            want = np_dtype(m.dtype)
            if a.dtype != want:
                cast = a.astype(want)
                if want.kind in "biu" and not np.array_equal(cast, a):
                    raise UserError(f"data npz {src}: array {k!r} is {_name_of_array(a)} with values that "
                                    f"{m.dtype} cannot hold; the model expects {m.describe()}")
                a = cast
            if m.dims is not None:
                if a.ndim - 1 != max(len(m.dims) - 1, 0):  # an item: the input without its first (batch) dim
                    raise UserError(f"data npz {src}: array {k!r} items are {list(a.shape[1:])}, the model "
                                    f"expects {m.describe()} (the first axis of the array is the items)")
                for d, g in zip(m.dims[1:], a.shape[1:]):
                    if isinstance(d, int) and d != g:
                        raise UserError(f"data npz {src}: array {k!r} items are {list(a.shape[1:])}, the model "
                                        f"expects {m.describe()}")
        out[k] = a
    if names_from is not None:
        folder = Path(names_from)
        if not folder.is_dir():
            raise UserError(f"--names-from {folder}: no such folder")
        from ..ascend.backends import _stem, input_files  # backends imports this module: here, not at the top

        names = [_stem(p) for p in input_files(folder)]
        if len(names) != n:
            raise UserError(f"--names-from {folder}: {len(names)} .bin/.npy files, but {src} holds {n} items "
                            "(item k takes the k-th file's name, in natural order)")
    else:
        width = max(6, len(str(n - 1)))
        names = [f"item_{i:0{width}d}" for i in range(n)]
    if limit:
        names = names[:limit]
        out = {k: a[:limit] for k, a in out.items()}
        labels = labels[:limit] if labels is not None else None
    folders = {k: outdir / input_folder_name(k) for k in out}
    seen: dict[Path, str] = {}
    for k, f in folders.items():
        if f in seen:
            raise UserError(f"data npz {src}: inputs {seen[f]!r} and {k!r} would share the folder {f}")
        seen[f] = k
        check_data_output(f)  # each input's folder: new, empty or graphopt data's; before anything is written
    result: dict[str, Any] = {"outdir": outdir, "items": len(names), "labelled": 0 if labels is None else len(names),
                              "inputs": {}, "missing": [m for m in (model_ins or {}) if m not in out]}
    for k, a in out.items():
        folder = folders[k]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from ..core.ir import write_error

            raise write_error(folder, e) from None
        dtype = _name_of_array(a)
        settings = {"kind": "npz", "source": str(src.resolve()), "input": k, "item_shape": list(a.shape[1:]),
                    "dtype": dtype}
        _write_json(folder / META_FILE, {"format": DATA_FORMAT, "settings": settings, "complete": False})
        for old in folder.glob("*.bin"):
            old.unlink()
        for name, item in zip(names, a):
            tmp = folder / f"{name}.bin.tmp-{os.getpid()}"
            np.ascontiguousarray(item).tofile(tmp)
            os.replace(tmp, folder / f"{name}.bin")
        _write_labels(folder, None if labels is None else [(nm, int(c)) for nm, c in zip(names, labels)])
        _write_json(folder / META_FILE, {
            "format": DATA_FORMAT, "settings": settings, "complete": True,
            "layout": f"one raw {dtype} array of {list(a.shape[1:])} per .bin file, native byte order",
            "files": len(names), "labelled": result["labelled"], "labels": LABELS_FILE if labels is not None else None,
            "skipped_unreadable": []})
        result["inputs"][k] = {"folder": folder, "dtype": dtype, "item_shape": tuple(a.shape[1:])}
    return result


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _cmd_npz(args: Any) -> int:
    if args.recipe or args.glob or args.labels or args.label_from_name or args.jobs:
        raise UserError("data npz: --recipe, --glob, --labels, --label-from-name and --jobs are for images "
                        "(npz takes --model, --names-from and --limit)")
    res = prepare_npz(args.src, args.output, model=args.model, names_from=args.names_from, limit=args.limit)
    for name, info in res["inputs"].items():
        print(f"wrote {info['folder']}/: {res['items']} .bin files for input {name!r}, each {info['dtype']} "
              f"{list(info['item_shape'])}" + (f"; labels.txt ({res['labelled']} labelled)" if res["labelled"] else ""))
    if res["missing"]:
        print(f"graphopt data: the model's input(s) {', '.join(map(repr, res['missing']))} are not in {args.src}: "
              "give their files in their own folders (e.g. graphopt data folder ... -o DIR/<input>)",
              file=sys.stderr)
    return 0


def _cmd_data(args: Any) -> int:
    if args.kind == "npz":
        return _cmd_npz(args)
    if args.model or args.names_from:
        raise UserError(f"data {args.kind}: --model and --names-from are for npz")
    if not args.recipe:
        raise UserError(f"data {args.kind}: --recipe is required (its input shape and preprocess section)")
    result, ignored = prepare_data(args.kind, args.src, args.output, args.recipe, pattern=args.glob,
                                   labels_file=args.labels, label_regex=args.label_from_name, limit=args.limit,
                                   jobs=args.jobs)
    c, h, w = result.item_shape
    total = result.written + result.reused
    print(f"wrote {result.outdir}/: {total} .bin files ({result.written} new, {result.reused} reused), "
          f"each float32 {c}x{h}x{w}; "
          + (f"labels.txt ({result.labelled} labelled)" if result.labelled else "no labels"))
    if result.removed_stale:
        print(f"removed {result.removed_stale} .bin files of an earlier run that are not in this selection")
    if ignored:
        print(f"ignored {ignored} matching files that are not images by their extension", file=sys.stderr)
    if result.skipped:
        shown = "; ".join(f"{s['file']} ({s['error']})" for s in result.skipped[:5])
        more = f"; ... ({len(result.skipped)} in all, listed in data.json)" if len(result.skipped) > 5 else ""
        print(f"graphopt data: skipped {len(result.skipped)} unreadable image(s): {shown}{more}", file=sys.stderr)
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="preprocess a labelled image set to float32 .bin files + labels.txt "
                                           "(per the recipe's preprocess section); npz: one .bin per item per "
                                           "input from an .npz of one array per input name")
    p.add_argument("kind", choices=["imagenet", "cifar10", "folder", "npz"])
    p.add_argument("src", help="image folder, ImageNet val folder, CIFAR-10 test_batch, or .npz (npz)")
    p.add_argument("-o", "--output", required=True,
                   help="output folder for the .bin files (npz: DIR/<input>/ for each array)")
    p.add_argument("--recipe", help="recipe whose input shape and preprocess section to apply (images)")
    p.add_argument("--model", help="npz: ONNX file or run directory whose input dtypes and shapes the arrays must "
                                   "fit (cast to the input's dtype)")
    p.add_argument("--names-from", metavar="FOLDER",
                   help="npz: name item k after the k-th .bin of FOLDER (e.g. the image input's folder)")
    p.add_argument("--glob", help="which files of SRC (default: every image); e.g. 'imagenet_*'")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help="`<file> <class>` lines")
    g.add_argument("--label-from-name", metavar="REGEX", help=r"class from the file name, e.g. '_(\d+)\.'")
    p.add_argument("--limit", type=int, help="only the first N images (natural order)")
    p.add_argument("--jobs", type=int, help="worker processes (default: every core)")
    p.set_defaults(func=_cmd_data)
