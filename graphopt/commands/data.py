"""``graphopt data``: a labelled image set -> one float32 ``.bin`` per image plus ``labels.txt``, preprocessed as the
recipe's ``preprocess:`` section says (the model's seed: resize, center crop, interpolation, normalisation).

Sources (``kind``), read by ``graphopt.core.datasets``: ``imagenet`` (a flat folder with a ground-truth file, or
``val/<wnid>/`` folders), ``cifar10`` (the python ``test_batch``, unpickled safely), ``folder`` (any images,
``--glob``; labels from ``--labels FILE``, ``--label-from-name REGEX`` whose first group is the class, e.g.
``'_(\\d+)\\.'`` for ``imagenet_00_243.jpg``, or none).

Output, in ``DIR``: ``<name>.bin`` (raw float32, C x H x W, one image each, the layout ais_bench and the seeds'
scripts read; ``name`` is the image's stem with dots replaced, since ais_bench names outputs after the text before
the first dot), ``labels.txt`` (``<name>.bin <class>`` lines) and ``data.json`` (settings, counts, skipped files).
Images are processed in parallel worker processes with a progress bar. A second run with the same settings reuses
every ``.bin`` whose size is right (an interrupted run resumes; files are written to a temporary name and renamed,
so a partial file never looks complete). Unreadable images are skipped, counted and listed, never silently.
``DIR`` must be new, empty, or a folder graphopt data wrote (its ``data.json``); anything else is refused before
any image is read, so files graphopt did not write are never touched.

Models with several inputs take one sub-folder per input, ``DIR/<input>/`` (``input_folder_name``), item k of
every input in files of the same name. ``graphopt data folder ... -o DIR/<image input>`` writes the image input's;
``npz`` (``prepare_npz``) writes the others from an ``.npz`` holding one array per input name, the first axis the
items (a tokenizer's output saved with ``numpy.savez``): one raw ``.bin`` per item per input, in the model's input
dtype (``--model`` checks and casts; values that would change are refused), named ``item_<k>`` or after the
files of ``--names-from FOLDER`` (the image input's folder, so names match across inputs); an array named
``labels`` (one integer per item) becomes ``labels.txt``.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..core.datasets import (DATA_FORMAT, LABELS_FILE, META_FILE, Item, cifar10_items, folder_items, imagenet_items,
                             input_folder_name, preprocess_to_file)
from ..core.errors import UserError

__all__ = ["DataResult", "write_dataset", "prepare_data", "check_data_output", "prepare_npz", "add_cli"]


@dataclass
class DataResult:
    outdir: Path
    written: int
    reused: int
    skipped: list[dict[str, str]]
    labelled: int
    removed_stale: int
    item_shape: tuple[int, ...]




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
    from ..core.files import atomic_write_text

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
        from ..core.files import write_error

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
            results: Iterable = map(preprocess_to_file, tasks)
            for name, st, msg in results:
                status[name] = (st, msg)
                bar.update()
        else:
            # spawn, not fork: the parent may hold onnxruntime / torch threads, which fork does not mix with.
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                chunk = max(1, min(32, len(tasks) // (jobs * 8)))
                for name, st, msg in pool.map(preprocess_to_file, tasks, chunksize=chunk):
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


def prepare_npz(src: str | Path, outdir: str | Path, *, model: str | Path | None = None,
                names_from: str | Path | None = None, limit: int | None = None) -> dict[str, Any]:
    """Write ``DIR/<input>/<item>.bin`` for every array of ``src`` (see the module docstring); returns a summary
    (``inputs``: name -> {folder, dtype, item_shape}, ``items``, ``labelled``, ``missing``: model inputs the file
    does not hold)."""
    from ..ascend.bin_files import fit_to_input, input_files, item_stem, model_input_specs
    from ..core.model_inputs import array_dtype_name

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
    model_ins = model_input_specs(model) if model is not None else None
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
        out[k] = fit_to_input(a, k, model_ins, f"data npz {src}") if model_ins is not None else a
    if names_from is not None:
        folder = Path(names_from)
        if not folder.is_dir():
            raise UserError(f"--names-from {folder}: no such folder")
        names = [item_stem(p) for p in input_files(folder)]
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
            from ..core.files import write_error

            raise write_error(folder, e) from None
        dtype = array_dtype_name(a)
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
