"""Image and label folders as graphopt reads them, for ``graphopt data`` (which writes them as ``.bin`` files) and
the precision search (which calibrates on them), and the layout of a data folder ``graphopt eval`` reads.

Sources:

- an ImageNet validation set: a flat folder of images with ``<file> <class>`` lines in
  ``ILSVRC2012_validation_ground_truth.txt`` or ``val_label.txt`` (in the folder or its parent; or a named labels
  file), or a ``val/<wnid>/*.JPEG`` tree (torchvision ImageFolder: classes are the sorted folder names);
- CIFAR-10's python ``test_batch`` (or its folder). It is a pickle, read by a restricted unpickler that builds plain
  containers, bytes, numbers and numeric numpy arrays and refuses every other global, so a crafted file cannot run
  code;
- any folder of images (a glob), labels from a file of ``<file> <class>`` lines, from a regex over the file name
  (the class is its first group), or none.

Preprocessing (``preprocess_image``) follows torchvision's ``Resize`` and ``CenterCrop``. Files are ordered as
ais_bench orders its inputs (``natural_key``).
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "GROUND_TRUTH_FILES", "DATA_FORMAT", "LABELS_FILE", "META_FILE", "input_folder_name",
           "natural_key", "Item", "preprocess_image", "open_image", "preprocess_to_file", "read_labels_file",
           "folder_items", "imagenet_items", "load_cifar_batch", "cifar10_items"]

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


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing (runs in graphopt data's worker processes: numpy and PIL only)


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


def open_image(source: Path | bytes, channels: int):
    """A PIL image from a file, or from CIFAR's raw CHW uint8 bytes."""
    from PIL import Image

    if isinstance(source, bytes):  # CIFAR: 3 x 32 x 32 uint8, channel-major
        side = int(round((len(source) // 3) ** 0.5))
        arr = np.frombuffer(source, dtype=np.uint8).reshape(3, side, side).transpose(1, 2, 0)
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    img = Image.open(source)
    img.load()  # decode now: truncated or corrupt files fail here, inside the try
    return img


def preprocess_to_file(task: tuple) -> tuple[str, str, str]:
    """One image to its ``.bin``, in a worker process of graphopt data: (name, source, out path, preprocess dict,
    channels, bytes per file) -> (name, status, message)."""
    name, source, out, pre, channels, nbytes = task
    out = Path(out)
    try:
        if out.stat().st_size == nbytes:
            return name, "reused", ""
    except OSError:
        pass
    try:
        x = preprocess_image(open_image(source, channels), pre, channels)
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
