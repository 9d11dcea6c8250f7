"""Numeric verification: one comparison used by the pipeline, the CLI and the tests alike.

For each output, over all samples: ``max_abs`` = max |a - b|; ``max_rel`` = max |a - b| / max(|a|, floor) with
``floor = 1e-3 * max|a|`` (so values near zero, where relative error is meaningless, do not dominate);
``cosine`` = the smallest per-sample cosine similarity of the flattened outputs; ``top1_agreement`` = share of
rows whose argmax agrees, for class-score outputs: shaped (N, classes) per feed with more than one class and a
float dtype, or declared so (``Tolerance.outputs``, ``top1: true``; None otherwise).
Integer, bool and string outputs are compared exactly: any differing element fails (``failed_on`` ``exact``,
``mismatches`` the count). Each output is judged by its own thresholds (``Tolerance.for_output``), which fall back
to the global ones. A comparison passes when every criterion the tolerance sets holds for every output. An output
that is missing from the compared outputs, or differs from the reference in shape or dtype, fails whatever the
tolerance (``failed_on`` ``missing``, ``shape`` or ``dtype``): the compared model computes something else, which is
a failed comparison, not a bad input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np


__all__ = ["OutputDiff", "Comparison", "compare_outputs"]


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None
    passed: bool
    failed_on: tuple[str, ...] = ()
    # For a structural mismatch (failed_on "missing", "shape" or "dtype"): what the compared model gave and what
    # the reference gave, as shown to people (a shape per sample when the outputs came from a ``Runner``).
    got: str | None = None
    expected: str | None = None
    # Integer, bool and string outputs: the number of elements that differ (None for float outputs), of ``size``.
    mismatches: int | None = None
    size: int | None = None

    def describe_mismatch(self, reference: str = "the reference") -> str | None:
        """``output 'y' has shape [3] per sample, the reference gave [2]`` (None when shapes and dtypes match)."""
        if "missing" in self.failed_on:
            return f"output {self.name!r} is missing ({reference} gave it; the outputs now: {self.got})"
        if "shape" in self.failed_on:
            return f"output {self.name!r} has shape {self.got}, {reference} gave {self.expected}"
        if "dtype" in self.failed_on:
            return f"output {self.name!r} has dtype {self.got}, {reference} gave {self.expected}"
        if "exact" in self.failed_on:
            return (f"output {self.name!r}: {self.mismatches} of {self.size} elements differ from {reference} "
                    f"({self.expected} outputs must be equal)")
        return None


_MISMATCH = ("missing", "shape", "dtype")


@dataclass(frozen=True)
class Comparison:
    outputs: tuple[OutputDiff, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def worst(self) -> OutputDiff:
        """The failing output (a missing or reshaped one first; when all pass, the one with the largest absolute
        error)."""
        failing = [o for o in self.outputs if not o.passed]
        return max(failing or self.outputs,
                   key=lambda o: (any(f in _MISMATCH for f in o.failed_on), "exact" in o.failed_on,
                                  len(o.failed_on), o.max_abs))

    def summary(self) -> dict:
        """Worst values over all outputs, in the shape ``report.json`` uses."""
        top1 = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return {
            "max_abs": max(o.max_abs for o in self.outputs),
            "max_rel": max(o.max_rel for o in self.outputs),
            "cosine": min(o.cosine for o in self.outputs),
            "top1_agreement": min(top1) if top1 else None,
            "passed": self.passed,
            "outputs": [asdict(o) for o in self.outputs],
        }

    def describe(self, reference: str = "the reference") -> str:
        """The worst output in one line; ``reference`` names what the outputs were compared with."""
        w = self.worst
        mismatch = w.describe_mismatch(reference)
        if mismatch:
            return mismatch
        top1 = "n/a" if w.top1_agreement is None else f"{w.top1_agreement:.4f}"
        return (f"output {w.name!r}: max_abs={w.max_abs:.3g} max_rel={w.max_rel:.3g} cosine={w.cosine:.8f} "
                f"top1_agreement={top1}" + (f" (outside tolerance on {', '.join(w.failed_on)})" if w.failed_on else ""))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1).astype(np.float64) if a.ndim > 1 else a.reshape(1, -1).astype(np.float64)
    b = b.reshape(a.shape).astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two all-zero rows are identical: cosine 1. One zero row against a non-zero one: 0.
    both_zero = np.abs(a).sum(1) + np.abs(b).sum(1) == 0
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(both_zero, 1.0, 0.0))
    return float(cos.min())


def _exact_kind(dtype: np.dtype) -> str | None:
    """'integer', 'bool' or 'string' for outputs compared exactly; None for floats."""
    if dtype == bool:
        return "bool"
    if dtype.kind in "iu":
        return "integer"
    if dtype.kind in "OUS":
        return "string"
    return None


def compare_outputs(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], tolerance) -> Comparison:
    """Compare two dicts of outputs (same names; arrays with the batch first, or ``Runner`` outputs, compared feed
    by feed) against ``tolerance`` (a ``graphopt.core.tolerance.Tolerance``: per-output thresholds and ``top1``
    declarations in its ``outputs``)."""
    diffs = []
    ref_shapes, got_shapes = getattr(ref, "batch_shapes", {}), getattr(got, "batch_shapes", {})
    ref_feeds, got_feeds = getattr(ref, "per_feed", {}), getattr(got, "per_feed", {})
    for name, a in ref.items():
        if name not in got:
            diffs.append(_mismatch(name, "missing", ", ".join(map(repr, got)) or "none", None))
            continue
        b = got[name]
        per_batch_a, per_batch_b = ref_shapes.get(name), got_shapes.get(name)
        differ = next(((x, y) for x, y in zip(per_batch_a or (), per_batch_b or ()) if x != y), None)
        if differ is not None:  # Runner outputs: the first batch that differs, shaped as the model computes it
            diffs.append(_mismatch(name, "shape", f"{list(differ[1])} per sample", f"{list(differ[0])}"))
            continue
        if a.shape != b.shape:
            diffs.append(_mismatch(name, "shape", f"{list(b.shape)}", f"{list(a.shape)}"))
            continue
        if a.dtype != b.dtype:
            diffs.append(_mismatch(name, "dtype", str(b.dtype), str(a.dtype)))
            continue
        tol, declared = tolerance.for_output(name) if hasattr(tolerance, "for_output") else (tolerance, None)
        fa, fb = ref_feeds.get(name), got_feeds.get(name)
        pairs = list(zip(fa, fb)) if fa is not None and fb is not None and len(fa) == len(fb) else [(a, b)]
        diffs.append(_compare_one(name, a, b, pairs, tol, declared))
    return Comparison(tuple(diffs))


def _compare_one(name: str, a: np.ndarray, b: np.ndarray, pairs, tol, declared: bool | None) -> OutputDiff:
    exact = _exact_kind(a.dtype)
    if exact == "string":
        mismatches = int((a != b).sum())
        bad = mismatches > 0
        return OutputDiff(name, float("inf") if bad else 0.0, float("inf") if bad else 0.0, 0.0 if bad else 1.0,
                          None, not bad, ("exact",) if bad else (), expected=exact, mismatches=mismatches,
                          size=int(a.size))
    if a.dtype.name == "bfloat16" or exact:
        a, b = a.astype(np.float64), b.astype(np.float64)
        pairs = [(x.astype(np.float64), y.astype(np.float64)) for x, y in pairs]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    same_nonfinite = (~finite) & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
    err = np.where(finite, np.abs(a64 - b64), np.where(same_nonfinite, 0.0, np.inf))
    max_abs = float(err.max()) if err.size else 0.0
    scale = float(np.abs(a64[finite]).max()) if finite.any() else 0.0
    floor = max(1e-3 * scale, np.finfo(np.float32).tiny)
    max_rel = float((err / np.maximum(np.abs(np.where(finite, a64, 0.0)), floor)).max()) if err.size else 0.0
    if err.size == 0:
        cosine = 1.0
    elif all(x.ndim >= 2 for x, _ in pairs):  # per sample: each feed's rows
        cosine = min(_cosine(*(np.where(np.isfinite(x) & np.isfinite(y), v, 0.0).astype(np.float64)
                               for v in (x, y))) for x, y in pairs if x.size) if any(x.size for x, _ in pairs) else 1.0
    else:  # vectors and scalars: all feeds as one row
        cosine = _cosine(np.where(finite, a64, 0.0).ravel(), np.where(finite, b64, 0.0).ravel())
    if not np.isfinite(max_abs):
        cosine = min(cosine, 0.0)
    top1 = None
    is_scores = declared if declared is not None else (
        exact is None and all(x.ndim == 2 and x.shape[1] > 1 for x, _ in pairs))
    if is_scores and all(x.ndim >= 1 and x.size for x, _ in pairs):
        rows = [(x.reshape(x.shape[0], -1).argmax(1) == y.reshape(y.shape[0], -1).argmax(1)) for x, y in pairs]
        top1 = float(np.concatenate(rows).mean())
    if exact is not None:
        mismatches = int((a64 != b64).sum())
        failed = ("exact",) if mismatches else ()
        return OutputDiff(name, max_abs, max_rel, cosine, top1, not failed, failed, expected=exact,
                          mismatches=mismatches, size=int(a.size))
    failed = []
    if tol.max_abs is not None and not max_abs <= tol.max_abs:
        failed.append("max_abs")
    if tol.max_rel is not None and not max_rel <= tol.max_rel:
        failed.append("max_rel")
    if tol.cosine is not None and not cosine >= tol.cosine:
        failed.append("cosine")
    if tol.top1_agreement is not None and top1 is not None and not top1 >= tol.top1_agreement:
        failed.append("top1_agreement")
    return OutputDiff(name, max_abs, max_rel, cosine, top1, not failed, tuple(failed))


def _mismatch(name: str, kind: str, got: str, expected: str | None) -> OutputDiff:
    """A failing diff for outputs that cannot be compared value by value: every error metric at its worst."""
    return OutputDiff(name, float("inf"), float("inf"), 0.0, None, False, (kind,), got, expected)

