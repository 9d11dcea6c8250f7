"""Calibration data for the fp16 precision search (``graphopt.ascend.fp16_sensitivity``): the items a model is
measured on, grouped into the batches it takes.

Items come from images (preprocessed as ``graphopt.core.datasets.preprocess_image`` takes its settings), ``.bin``
files with ``labels.txt`` (``graphopt data``'s folder), a ``.npy``, an ``.npz`` with one array per input name, or
seeded random values (with ``RANDOM_INPUTS_WARNING``). A model whose inputs all have a symbolic batch has its items
regrouped into batches of any size; a model with a fixed batch is measured in whole batches of its own size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.datasets import LABELS_FILE, folder_items, preprocess_image, read_labels_file
from ..core.errors import UserError
from ..core.inputs import resolve_inputs
from ..core.model_inputs import model_inputs
from ..core.feeds import load_input_data, make_inputs
from .fp16_emulation import Fp16Emulator

__all__ = ["RANDOM_INPUTS_WARNING", "Calibration", "feed_items", "rebatch", "screen_batches", "BatchLayout",
           "batch_layout", "regroup_feeds", "fit_feeds", "load_calibration", "feeds_calibration", "check_holdout",
           "split_holdout"]

RANDOM_INPUTS_WARNING = ("calibration on seeded random inputs: random inputs understate fp16 sensitivity (real "
                         "activations have the outliers that overflow or lose bits); give real data")


@dataclass
class Calibration:
    """Calibration inputs: ``batches`` are feeds (dicts input name -> array, every input of the model) or, from
    ``load_calibration``, bare arrays of the one float input."""

    batches: list[Any]
    labels: list[int] | None
    source: str
    warning: str | None = None

    @property
    def items(self) -> int:
        return sum(feed_items(b) for b in self.batches)


def feed_items(feed: Mapping[str, np.ndarray] | np.ndarray) -> int:
    """The items a feed holds: the first axis of its first input that has one (feeds are ordered with the inputs
    whose batch is symbolic first), 1 for a feed of scalars."""
    if not isinstance(feed, Mapping):
        return len(feed)
    for v in feed.values():
        if np.ndim(v):
            return len(v)
    return 1


def rebatch(batches: Sequence[np.ndarray], batch: int, fixed: bool = False) -> list[np.ndarray]:
    """The same items in batches of ``batch``: the last one shorter, or, when ``fixed`` (the model's batch dimension
    is fixed, and onnxruntime refuses any other size), whole batches only, the remainder dropped. No items, or
    fewer than one fixed batch, is a ``UserError``: there is nothing to measure on."""
    if batch < 1:
        raise UserError(f"calibration: cannot group items into batches of {batch} (a batch holds at least 1)")
    items = np.concatenate(list(batches)) if batches else np.zeros((0,))
    if len(items) == 0:
        raise UserError("calibration: no items to measure on")
    if fixed:
        if len(items) < batch:
            raise UserError(f"calibration: {len(items)} item(s), fewer than one batch of {batch} (the model's fixed "
                            "batch size)")
        items = items[:len(items) - len(items) % batch]
    return [items[i:i + batch] for i in range(0, len(items), batch)]


def screen_batches(batches: Sequence[Any], items: int, fixed: bool, order: Sequence[int] | None = None) -> list[Any]:
    """``items`` calibration items for screening trials, the first ones of ``order`` (item indices, default the
    items in turn): one batch (every input of a feed cut to them, in their order in the data), or, for a model whose
    batch is fixed (or whose feeds cannot be regrouped), the fewest whole feeds holding at least that many, a feed
    taken when ``order`` reaches one of its items (onnxruntime takes no other batch size)."""
    total = sum(feed_items(b) for b in batches)
    order = list(range(total)) if order is None else list(order)
    if not fixed:
        chosen = sorted(order[:items])
        if batches and isinstance(batches[0], Mapping):
            return [{k: np.concatenate([b[k] for b in batches])[chosen] for k in batches[0]}]
        return [np.concatenate(list(batches))[chosen]]
    feed_of = [k for k, b in enumerate(batches) for _ in range(feed_items(b))]
    taken: list[int] = []
    for i in order:
        if sum(feed_items(batches[k]) for k in taken) >= items:
            break
        if feed_of[i] not in taken:
            taken.append(feed_of[i])
    return [batches[k] for k in sorted(taken)]


# ---------------------------------------------------------------------------------------------------------------
# Feeds: every input of the model


@dataclass(frozen=True)
class BatchLayout:
    """How a model's feeds hold items. ``batched``: inputs whose first dim is symbolic (the batch);
    ``regroupable``: every input is batched, so feeds can be cut and joined along the first axis into batches of
    any size; ``fixed``: the model's own batch size when no input has a symbolic one (the first dim of its first
    input with a dim), else None."""

    batched: tuple[str, ...]
    regroupable: bool
    fixed: int | None
    fixed_input: str | None = None


def batch_layout(model) -> BatchLayout:
    """How ``model`` takes items (``BatchLayout``); a fixed batch of 0, which takes none, is a ``UserError``."""
    ins = [m for m in model_inputs(model) if m.kind == "tensor"]
    batched = tuple(m.name for m in ins if m.has_batch)
    regroupable = bool(batched) and len(batched) == len(ins)
    fixed = fixed_input = None
    if not batched:
        first = next((m for m in ins if m.dims), None)
        if first is not None:
            fixed, fixed_input = first.dims[0], first.name
    if fixed is not None and fixed < 1:
        raise UserError(f"model input {fixed_input!r} has a fixed batch size of {fixed}: it takes no items, so there "
                        "is nothing to measure fp16 precision on")
    return BatchLayout(batched, regroupable, fixed, fixed_input)


def _ordered(feed: Mapping[str, np.ndarray], batched: Sequence[str]) -> dict[str, np.ndarray]:
    """The feed with its batched inputs first (``feed_items`` counts along the first of them)."""
    return {k: feed[k] for k in sorted(feed, key=lambda k: k not in batched)}


def regroup_feeds(feeds: Sequence[Mapping[str, np.ndarray]], layout: BatchLayout, batch: int,
                  items: int, what: str = "calibration",
                  regroup: bool = True) -> tuple[list[dict[str, np.ndarray]], str]:
    """At most ``items`` items of ``feeds`` as the model takes them, and a note on what was used: joined along the
    first axis and cut into batches of ``batch`` when ``regroup`` and the layout is regroupable (and the feeds agree
    beyond their first axis); else whole feeds, as many as hold at most ``items`` items, at least one (a fixed
    batch larger than ``items`` is measured on one whole batch)."""
    feeds = [_ordered(f, layout.batched) for f in feeds]
    if not feeds:
        raise UserError(f"{what}: no items to measure on")
    names = list(feeds[0])
    if regroup and layout.regroupable and all(list(f) == names for f in feeds) and all(
            len({np.shape(f[k])[1:] for f in feeds}) == 1 for k in names):
        joined = {k: np.concatenate([f[k] for f in feeds])[:items] for k in names}
        total = len(joined[names[0]]) if names else 0
        if total == 0:
            raise UserError(f"{what}: no items to measure on")
        return [{k: v[i:i + batch] for k, v in joined.items()} for i in range(0, total, batch)], ""
    per = feed_items(feeds[0])
    if layout.fixed is not None and sum(feed_items(f) for f in feeds) < layout.fixed:
        raise UserError(f"{what}: {sum(feed_items(f) for f in feeds)} item(s), fewer than one batch of "
                        f"{layout.fixed} (the model's fixed batch size)")
    out: list[dict[str, np.ndarray]] = []
    for f in feeds:
        if out and sum(feed_items(x) for x in out) + feed_items(f) > items:
            break
        out.append(f)
    used = sum(feed_items(f) for f in out)
    note = f", {used} used (whole batches of {per})" if layout.fixed is not None and 0 < items - used < per \
        else f", {used} used (one whole batch: the model fixes it to {per})" if used > items else ""
    return out, note


def fit_feeds(feeds: Sequence[Mapping[str, np.ndarray]], layout: BatchLayout, batch: int, items: int,
              emulator: Fp16Emulator | None = None, what: str = "calibration") -> tuple[list[dict], str, bool]:
    """``regroup_feeds``, checked: when ``emulator`` cannot run the first regrouped batch (an input whose first
    dim is symbolic but no batch, such as a shape or axes vector), whole feeds instead. Returns the batches, the
    note, and whether they were regrouped (else the screen keeps whole feeds)."""
    batches, note = regroup_feeds(feeds, layout, batch, items, what)
    if not layout.regroupable:
        return batches, note, False
    if emulator is not None:
        try:
            emulator.run(batches[:1], count=False)
        except UserError:
            batches, note = regroup_feeds(feeds, layout, batch, items, what, regroup=False)
            return batches, note, False
    return batches, note, True


# ---------------------------------------------------------------------------------------------------------------



def _image_items(path: Path, shape: Sequence[int], preprocess: Mapping[str, Any], pattern: str | None,
                 labels_file: str | None, label_regex: str | None,
                 limit: int) -> tuple[np.ndarray, list[int] | None]:
    from PIL import Image

    items, _ = folder_items(path, pattern, labels_file, label_regex)
    items = items[:limit]
    pre = dict(preprocess)
    arrays = []
    for it in items:
        try:
            with Image.open(it.source) as img:
                arrays.append(preprocess_image(img, pre, int(shape[1])))
        except OSError as e:
            raise UserError(f"--data {it.origin}: cannot read the image ({e})") from None
    labels = [it.label for it in items]
    return np.stack(arrays), (labels if all(label is not None for label in labels) else None)


def load_calibration(data: str | Path | None, shape: Sequence[int], *, preprocess: Mapping[str, Any] | None = None,
                     samples: int = 64, seed: int = 0, batch: int = 8, dtype: str = "float32",
                     pattern: str | None = None, labels_file: str | None = None, label_regex: str | None = None,
                     fixed_batch: bool = False) -> Calibration:
    """Calibration inputs in batches of ``batch``: images, ``.bin`` files (with ``labels.txt``), a ``.npy``, or
    (no ``data``) ``samples`` seeded standard-normal items with ``RANDOM_INPUTS_WARNING``. ``fixed_batch``: whole
    batches only (``rebatch``), labels trimmed to match. ``preprocess``: how images become items, the settings
    ``graphopt.core.datasets.preprocess_image`` takes (resize, crop, interpolation, mean, std, scale)."""
    item_shape = [1, *shape[1:]]
    if samples < 1:
        raise UserError(f"--samples {samples}: must be at least 1")
    if data is None:
        items = np.concatenate(make_inputs(item_shape, samples, seed, dtype))
        return _calibration(items, batch, fixed_batch, None, f"seeded normal (seed {seed}, {samples} items)",
                            RANDOM_INPUTS_WARNING)
    path = Path(data)
    if not path.exists():
        raise UserError(f"--data {path}: no such file or folder")
    labels: list[int] | None = None
    if path.is_dir() and any(path.glob("*.bin")):
        files = sorted(str(p) for p in path.glob("*.bin"))  # the order load_input_data reads them in
        items = np.concatenate(load_input_data(path, item_shape, dtype))[:samples]
        if (path / LABELS_FILE).is_file() and len(files) >= len(items):
            known = read_labels_file(path / LABELS_FILE)
            stems = [Path(f).name.split(".")[0] for f in files[:len(items)]]
            if all(st in known for st in stems):
                labels = [known[st] for st in stems]
        source = f"{len(items)} .bin files from {path}"
    elif path.is_dir():
        if preprocess is None:
            raise UserError(f"--data {path}: a folder of images needs a recipe (its preprocess section)")
        items, labels = _image_items(path, shape, preprocess, pattern, labels_file, label_regex, samples)
        source = f"{len(items)} images from {path}"
    else:
        items = np.concatenate(load_input_data(path, item_shape, dtype))[:samples]
        source = f"{len(items)} items from {path}"
    return _calibration(items.astype(np.float32), batch, fixed_batch, labels, source)


def _calibration(items: np.ndarray, batch: int, fixed_batch: bool, labels: list[int] | None, source: str,
                 warning: str | None = None) -> Calibration:
    batches = rebatch([items], batch, fixed_batch)
    used = sum(len(b) for b in batches)
    if used < len(items):  # a fixed batch size: the remainder was dropped
        source += f", {used} used (whole batches of {batch})"
    return Calibration(batches, labels[:used] if labels else labels, source, warning)


def feeds_calibration(model, specs: Sequence[Any] = (), *, where: str = "", paths: Mapping[str, str] | None = None,
                      data: str | Path | None = None, samples: int = 64, seed: int = 0, batch: int = 8,
                      primary: str | None = None, preprocess: Mapping[str, Any] | None = None,
                      pattern: str | None = None,
                      labels_file: str | None = None, label_regex: str | None = None,
                      emulator: Fp16Emulator | None = None) -> tuple[Calibration, Any, bool]:
    """Calibration feeds for every input of ``model`` and the ``InputPlan`` they follow (``graphopt.core.inputs``:
    ``specs`` from a recipe's ``inputs:`` or the CLI's ``--input`` / ``--range``; inputs not named take the
    model's shape, symbolic dims their defaults, values by kind: integer and bool inputs are never emulated).

    At most ``samples`` items, in batches of ``batch`` when every input has a symbolic batch (drawn one item per
    feed, so a single float input gets exactly ``load_calibration``'s values, then regrouped); a model with a fixed
    batch is measured in whole batches of its own size. ``data``: an ``.npz`` (one array per input name), a
    ``.npy`` for ``primary`` (default the first input), or, for a model with one input, a folder of images (with
    ``preprocess``) or of ``.bin`` files (``load_calibration``, labels included). Returns the calibration, the
    plan, and whether its batches were regrouped (``fit_feeds``, checked on ``emulator`` when given)."""
    if samples < 1:
        raise UserError(f"--samples {samples}: must be at least 1")
    layout = batch_layout(model)
    ins = {m.name: m for m in model_inputs(model)}
    given = {d for sp in specs if sp.name in ins and (sp.shape is not None or sp.data is not None)
             for d in ins[sp.name].dims or () if isinstance(d, str)}
    batch_symbols = {m.dims[0] for m in ins.values() if m.has_batch and isinstance(m.dims[0], str)} - given
    plan = resolve_inputs(model, specs, where=where, paths=paths,
                          dims={d: 1 if layout.regroupable else batch for d in batch_symbols})
    path = Path(data) if data is not None else None
    if path is not None and path.is_dir():
        first = plan[primary] if primary in plan.names else (plan.inputs[0] if plan.inputs else None)
        if first is None or len(plan.inputs) > 1 or first.dtype != "float32":
            what = f"{len(plan.inputs)} inputs ({', '.join(plan.names)})" if len(plan.inputs) != 1 else \
                f"input {first.name!r} of {first.model.describe()}"
            raise UserError(f"--data {path}: a folder (images or .bin files) feeds one float32 input; the model has "
                            f"{what}: give an .npz with one array per input name")
        fixed = layout.fixed
        cal = load_calibration(path, first.shape, preprocess=preprocess, samples=samples, seed=seed,
                               batch=batch if fixed is None else fixed, pattern=pattern, labels_file=labels_file,
                               label_regex=label_regex, fixed_batch=fixed is not None)
        cal.batches = [{first.name: b} for b in cal.batches]
        return cal, plan, fixed is None
    per = plan[layout.batched[0]].shape[0] if layout.batched else (layout.fixed or 1)
    if layout.fixed is not None:
        count = max(1, samples // per)
    else:
        count = -(-samples // max(per, 1))
    feeds = plan.feeds(count, seed, data=data, primary=primary)
    feeds, note, regrouped = fit_feeds(feeds, layout, batch, samples, emulator)
    items = sum(feed_items(f) for f in feeds)
    if data is None:
        source = f"seeded random (seed {seed}, {items} items{note})"
        return Calibration(feeds, None, source, RANDOM_INPUTS_WARNING), plan, regrouped
    return Calibration(feeds, None, f"{items} items from {data}{note}"), plan, regrouped


def check_holdout(fraction: float) -> None:
    """A ``UserError`` unless ``fraction`` is a share of the calibration items strictly between 0 and 1."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--holdout {fraction}: a fraction of the calibration items in (0, 1), e.g. 0.25")


def split_holdout(cal: Calibration, fraction: float, regrouped: bool, batch: int) -> tuple[Calibration, Calibration]:
    """``cal`` as the items the search runs on and the held-out ones (``fraction`` of them, spread evenly: item
    ``i`` is held out when ``floor((i + 1) * fraction)`` passes an integer, so no end of the data is favoured).
    ``regrouped``: items are split one by one and regrouped into batches of ``batch``; else whole feeds are (a
    fixed batch). A fraction outside (0, 1), or one leaving either side empty, is a ``UserError``."""
    check_holdout(fraction)
    units = cal.items if regrouped else len(cal.batches)
    held = [int((i + 1) * fraction) > int(i * fraction) for i in range(units)]
    if not any(held) or all(held):
        what = "items" if regrouped else f"whole batches of {feed_items(cal.batches[0])}"
        raise UserError(f"--holdout {fraction}: {units} {what} leave no "
                        f"{'item to hold out' if not any(held) else 'item to search on'}: give more data or "
                        "another fraction")
    if regrouped:
        keys = list(cal.batches[0]) if isinstance(cal.batches[0], Mapping) else None
        joined = {k: np.concatenate([b[k] for b in cal.batches]) for k in keys} if keys is not None \
            else np.concatenate(cal.batches)
        per_item = held
    else:
        per_item = [h for b, h in zip(cal.batches, held) for _ in range(feed_items(b))]

    def part(keep_held: bool) -> Calibration:
        sel = [h == keep_held for h in per_item]
        if regrouped:
            idx = np.flatnonzero(sel)
            cut = {k: v[idx] for k, v in joined.items()} if keys is not None else joined[idx]
            n = len(idx)
            batches = [{k: v[i:i + batch] for k, v in cut.items()} if keys is not None else cut[i:i + batch]
                       for i in range(0, n, batch)]
        else:
            batches = [b for b, h in zip(cal.batches, held) if h == keep_held]
        labels = [label for label, h in zip(cal.labels, sel) if h] if cal.labels else cal.labels
        count = sum(sel)
        source = f"{cal.source}: {count} {'held out' if keep_held else 'searched on'}"
        return Calibration(batches, labels, source, cal.warning)

    return part(False), part(True)

