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

import glob
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from google.protobuf.message import EncodeError

from .errors import UserError
from .quiet import ort_log_severity

__all__ = ["OutputDiff", "Comparison", "Outputs", "compare_outputs", "Runner", "make_inputs", "load_input_data"]


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


class Outputs(dict):
    """Output name -> the outputs of every feed concatenated along the first axis (what ``Runner.run`` returns;
    scalars stacked; outputs whose shapes differ beyond the first axis from feed to feed flattened and joined),
    remembering each feed's own array (``per_feed``) and shape (``batch_shapes``): a comparison measures per feed
    and reports shapes per sample, not the concatenation's."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_shapes: Mapping[str, Sequence[tuple[int, ...]]],
                 per_feed: Mapping[str, Sequence[np.ndarray]] | None = None):
        super().__init__(arrays)
        self.batch_shapes = {k: [tuple(s) for s in v] for k, v in batch_shapes.items()}
        self.per_feed = {k: list(v) for k, v in (per_feed or {}).items()}

    @classmethod
    def of_feeds(cls, per_feed: Mapping[str, Sequence[np.ndarray]]) -> "Outputs":
        arrays = {}
        for n, v in per_feed.items():
            if not v:
                arrays[n] = np.zeros((0,), np.float32)
            elif v[0].ndim == 0:
                arrays[n] = np.stack(v)
            elif all(x.shape[1:] == v[0].shape[1:] for x in v):
                arrays[n] = np.concatenate(v)
            else:
                arrays[n] = np.concatenate([x.ravel() for x in v])
        return cls(arrays, {n: [x.shape for x in v] for n, v in per_feed.items()}, per_feed)


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
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(a).sum(1) + np.abs(b).sum(1) == 0, 1.0, 0.0))
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
    by feed) against ``tolerance`` (a ``graphopt.core.tolerance.Tolerance``: per-output thresholds and ``top1`` declarations in its
    ``outputs``)."""
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
    else:  # vectors and scalars: all feeds as one row, as before
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


_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


def make_inputs(shape: Sequence[int], samples: int, seed: int, dtype: str = "float32") -> list[np.ndarray]:
    """Seeded standard-normal inputs: ``samples`` batches of ``shape``."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(shape)).astype(_NP_DTYPES[dtype]) for _ in range(samples)]


def load_input_data(path: Path, shape: Sequence[int], dtype: str = "float32", limit: int | None = None) -> list[np.ndarray]:
    """Real inputs: a ``.npy`` file (N, ...) or a folder of raw ``.bin`` files (one image or batch each, float32,
    as ``graphopt data`` and the seeds' preprocess scripts write them). Batched to ``shape[0]``."""
    path = Path(path)
    per_item = tuple(shape[1:])
    if path.is_file() and path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.shape[1:] != per_item:
            raise UserError(f"verify.data {path}: items shaped {list(arr.shape[1:])}, input expects {list(per_item)}")
        items = list(arr.astype(_NP_DTYPES[dtype]))
    elif path.is_dir():
        files = sorted(glob.glob(str(path / "*.bin")))
        if not files:
            raise UserError(f"verify.data {path}: no .bin files in this folder")
        items = []
        size = int(np.prod(per_item))
        for f in files[: limit * shape[0] if limit else None]:
            raw = np.fromfile(f, dtype=_NP_DTYPES[dtype])
            if raw.size % size:
                raise UserError(f"verify.data {f}: {raw.size} values, not a multiple of one item {list(per_item)}")
            items.extend(raw.reshape(-1, *per_item))
    else:
        raise UserError(f"verify.data {path}: expected a .npy file or a folder of .bin files")
    batch = shape[0]
    batches = [np.stack(items[i:i + batch]) for i in range(0, len(items) - batch + 1, batch)]
    if not batches:
        raise UserError(f"verify.data {path}: {len(items)} items, fewer than one batch of {batch}")
    return batches[:limit] if limit else batches


# Op domains onnxruntime's CPU build implements; ops of any other domain make it refuse the model.
ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                         "com.microsoft.experimental", "com.ms.internal.nhwc", "ai.onnx.preview.training"})


def _custom_ops(model: onnx.ModelProto | bytes | str | Path) -> list[str]:
    """``domain::Op`` of every node (subgraphs included) whose domain onnxruntime does not implement."""
    try:
        if isinstance(model, (str, Path)):
            model = onnx.load(str(model), load_external_data=False)
        elif isinstance(model, bytes):
            model = onnx.load_from_string(model)
    except Exception:  # noqa: BLE001 - only for a hint in an error message
        return []
    local = {f.domain for f in model.functions}
    found: dict[str, None] = {}
    todo = [model.graph]
    while todo:
        g = todo.pop()
        for node in g.node:
            if node.domain not in ORT_DOMAINS and node.domain not in local:
                found[f"{node.domain}::{node.op_type}"] = None
            for a in node.attribute:
                todo.extend([a.g] if a.HasField("g") else a.graphs)
    return list(found)


def comparison_session(model):
    """The onnxruntime session every numeric comparison runs in (verification, diff, bisect): CPU, basic graph
    optimisations only (the comparison should measure the graph as written, not ORT's fusions of it), quiet. Of a
    path, serialized bytes or a ``SplitModel``; returns it and the feeds it needs besides the model's inputs (a
    ``SplitModel``'s weights, which onnxruntime reads in place)."""
    import onnxruntime as ort

    from .protoio import SplitModel, session

    opts = ort.SessionOptions()
    opts.log_severity_level = ort_log_severity()  # fatal only unless -v (graphopt.core.quiet)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # Pad_Fusion folds a zero Pad into a following MaxPool, whose own padding is -inf: wrong whenever the
    # padded input can be negative (BiT's stem: conv -> Pad -> MaxPool; onnxsim/onnxsim#290).
    kwargs = {"providers": ["CPUExecutionProvider"], "disabled_optimizers": ["Pad_Fusion"]}
    if isinstance(model, SplitModel):
        return session(model, opts, **kwargs)
    return ort.InferenceSession(model, opts, **kwargs), {}


def _ort_error(e: Exception, weights: Mapping[str, Any]) -> str:
    """onnxruntime's first error line, with the weights graphopt feeds as inputs left out of any list of names."""
    import re

    line = str(e).splitlines()[0] if str(e) else type(e).__name__
    if weights:
        def keep(m: "re.Match[str]") -> str:
            names = re.findall(r"'([^']*)'", m.group(0))
            real = [n for n in names if n not in weights]
            return "[" + ", ".join(repr(n) for n in real) + "]"

        line = re.sub(r"\[(?:'[^']*'(?:,\s*)?)+\]", keep, line)
    return line


class Runner:
    """Runs an ONNX model in onnxruntime (CPU) on a verification set (a list of feeds, each a dict input name ->
    array holding every input of the model; see ``graphopt.core.inputs``), one session per model. ``model`` may be a
    path, which onnxruntime loads with the external data beside it, or a ``protoio.SplitModel``, whose weights it
    reads without a copy (how models over 2 GB run; a ModelProto that large is split first).

    ``inputs``: the model's real inputs (``graphopt.core.inputs.ModelInput``), weights left out. Each feed is checked
    against them before onnxruntime sees it (``inputs.check_feed``: a missing input, a wrong dtype or rank is one
    line naming the input; inputs the model does not take are left out of a feed, since a pass may drop a graph
    input nothing reads). The single-input form of before still works: ``input_name`` (default the first input)
    and ``run`` given bare arrays feeds them to that input."""

    def __init__(self, model, input_name: str | None = None, what: str = ""):
        from .protoio import SplitModel, split_model

        self.what = what  # names the model in feed errors ("model B")

        try:
            if isinstance(model, (str, Path, bytes, SplitModel)):
                self.session, self.weights = comparison_session(str(model) if isinstance(model, Path) else model)
            else:
                try:
                    data = model.SerializeToString()
                except (ValueError, EncodeError):  # over 2 GiB: the weights fed from arrays instead
                    data = split_model(model)
                self.session, self.weights = comparison_session(data)
        except UserError:
            raise
        except Exception as e:
            custom = _custom_ops(model.skeleton if isinstance(model, SplitModel) else model)
            if custom:
                shown = ", ".join(custom[:4]) + (f" and {len(custom) - 4} more" if len(custom) > 4 else "")
                raise UserError(f"onnxruntime cannot run the model's custom-domain ops ({shown}), so it cannot be "
                                "verified: turn verification off (--no-verify, or verify: {enabled: false}) or "
                                "use an onnxruntime build that registers them") from None
            who = f"{what}: " if what else ""
            raise UserError(f"{who}onnxruntime cannot load the model: {_ort_error(e, {})}") from None
        names = [i.name for i in self.session.get_inputs() if i.name not in self.weights]
        self.inputs = [self._from_session(n) for n in names]
        self.input_names = names
        if input_name is not None and input_name not in names:
            raise UserError(f"model has no input {input_name!r} (inputs: {', '.join(names) or 'none'})")
        self.input_name = input_name or (names[0] if names else None)
        self.output_names = [o.name for o in self.session.get_outputs()]
        types = [t.type for t in (*self.session.get_inputs(), *self.session.get_outputs())]
        self._bf16 = any("bfloat16" in t for t in types)

    _ORT_TYPES = {"float": "float32", "double": "float64"}

    def _from_session(self, name: str):
        """The input as onnxruntime sees it (no second read of the model): dtype name and dims."""
        from .inputs import ModelInput

        i = next(i for i in self.session.get_inputs() if i.name == name)
        if not i.type.startswith("tensor("):
            kind = {"seq": "sequence", "map": "map", "optional": "optional"}.get(i.type.split("(")[0], i.type)
            return ModelInput(name, None, None, kind)
        elem = i.type[len("tensor("):-1]
        dims = tuple(d if isinstance(d, int) else (d or None) for d in i.shape) if i.shape is not None else None
        return ModelInput(name, self._ORT_TYPES.get(elem, elem), dims)

    def run(self, feeds: Sequence[Mapping[str, np.ndarray] | np.ndarray], run_options=None) -> Outputs:
        """Outputs of every feed (``Outputs``: per feed, and concatenated along the first axis). Bare arrays are
        feeds of ``input_name``. ``run_options``: onnxruntime ``RunOptions`` (another thread setting
        ``terminate`` cancels the run)."""
        from .inputs import check_feed, feeds_of

        per_output: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for feed in feeds_of(feeds, self.input_name, self.inputs):
            # Inputs the model does not take are left out: a pass may drop a graph input nothing reads.
            check_feed(self.inputs, feed, self.what, strict=False)
            feed = {k: v for k, v in feed.items() if k in self.input_names}
            try:
                outs = self._run({**feed, **self.weights}, run_options)
            except Exception as e:
                shown = ", ".join(f"{k!r} shaped {list(np.shape(v))}" for k, v in feed.items())
                raise UserError(f"onnxruntime failed on input {shown}: {_ort_error(e, self.weights)}") from None
            for n, o in zip(self.output_names, outs):
                per_output[n].append(np.asarray(o))
        return Outputs.of_feeds(per_output)

    def _run(self, feed: dict, run_options) -> list:
        if not self._bf16:
            return self.session.run(self.output_names, feed, run_options)
        # numpy has no bfloat16 onnxruntime knows: such tensors go in and come out as OrtValues (ml_dtypes' bfloat16
        # on graphopt's side).
        import ctypes

        import onnxruntime as ort

        values = {}
        for k, v in feed.items():
            if isinstance(v, np.ndarray) and v.dtype.name == "bfloat16":
                values[k] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(v).view(np.uint16), onnx_element_type=onnx.TensorProto.BFLOAT16)
            else:
                values[k] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
        outs = self.session.run_with_ort_values(self.output_names, values, run_options)
        result = []
        for o in outs:
            if o.data_type() == "tensor(bfloat16)":
                from .inputs import np_dtype

                n = int(np.prod(o.shape()))
                raw = np.ctypeslib.as_array((ctypes.c_uint16 * max(n, 1)).from_address(o.data_ptr()))[:n].copy()
                result.append(raw.view(np_dtype("bfloat16")).reshape(o.shape()))
            else:
                result.append(o.numpy())
        return result
