"""Numeric verification: one comparison used by the pipeline, the CLI and the tests alike.

For each output, over all samples: ``max_abs`` = max |a - b|; ``max_rel`` = max |a - b| / max(|a|, floor) with
``floor = 1e-3 * max|a|`` (so values near zero, where relative error is meaningless, do not dominate);
``cosine`` = the smallest per-sample cosine similarity of the flattened outputs; ``top1_agreement`` = share of
rows whose argmax agrees, for outputs shaped (N, classes) with more than one class (None otherwise).
A comparison passes when every criterion the tolerance sets holds for every output. An output that is missing from
the compared outputs, or differs from the reference in shape or dtype, fails whatever the tolerance (``failed_on``
``missing``, ``shape`` or ``dtype``): the compared model computes something else, which is a failed comparison,
not a bad input.
"""
from __future__ import annotations

import glob
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

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

    def describe_mismatch(self, reference: str = "the reference") -> str | None:
        """``output 'y' has shape [3] per sample, the reference gave [2]`` (None when shapes and dtypes match)."""
        if "missing" in self.failed_on:
            return f"output {self.name!r} is missing ({reference} gave it; the outputs now: {self.got})"
        if "shape" in self.failed_on:
            return f"output {self.name!r} has shape {self.got}, {reference} gave {self.expected}"
        if "dtype" in self.failed_on:
            return f"output {self.name!r} has dtype {self.got}, {reference} gave {self.expected}"
        return None


_MISMATCH = ("missing", "shape", "dtype")


class Outputs(dict):
    """Output name -> the outputs of every batch concatenated (what ``Runner.run`` returns), remembering each
    batch's own shape: a comparison reports shapes per sample, not the concatenation's."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_shapes: Mapping[str, Sequence[tuple[int, ...]]]):
        super().__init__(arrays)
        self.batch_shapes = {k: [tuple(s) for s in v] for k, v in batch_shapes.items()}


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
                   key=lambda o: (any(f in _MISMATCH for f in o.failed_on), len(o.failed_on), o.max_abs))

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


def compare_outputs(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], tolerance) -> Comparison:
    """Compare two dicts of outputs (same names; arrays with the batch first) against ``tolerance``."""
    diffs = []
    ref_shapes, got_shapes = getattr(ref, "batch_shapes", {}), getattr(got, "batch_shapes", {})
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
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(a64) & np.isfinite(b64)
        same_nonfinite = (~finite) & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
        err = np.where(finite, np.abs(a64 - b64), np.where(same_nonfinite, 0.0, np.inf))
        max_abs = float(err.max()) if err.size else 0.0
        scale = float(np.abs(a64[finite]).max()) if finite.any() else 0.0
        floor = max(1e-3 * scale, np.finfo(np.float32).tiny)
        max_rel = float((err / np.maximum(np.abs(np.where(finite, a64, 0.0)), floor)).max()) if err.size else 0.0
        cosine = _cosine(np.where(finite, a64, 0.0), np.where(finite, b64, 0.0)) if err.size else 1.0
        if not np.isfinite(max_abs):
            cosine = min(cosine, 0.0)
        top1 = None
        if a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating):
            top1 = float((a.argmax(1) == b.argmax(1)).mean())
        failed = []
        if tolerance.max_abs is not None and not max_abs <= tolerance.max_abs:
            failed.append("max_abs")
        if tolerance.max_rel is not None and not max_rel <= tolerance.max_rel:
            failed.append("max_rel")
        if tolerance.cosine is not None and not cosine >= tolerance.cosine:
            failed.append("cosine")
        if tolerance.top1_agreement is not None and top1 is not None and not top1 >= tolerance.top1_agreement:
            failed.append("top1_agreement")
        diffs.append(OutputDiff(name, max_abs, max_rel, cosine, top1, not failed, tuple(failed)))
    return Comparison(tuple(diffs))


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
    opts.log_severity_level = ort_log_severity()  # fatal only unless -v (graphopt.quiet)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # Pad_Fusion folds a zero Pad into a following MaxPool, whose own padding is -inf: wrong whenever the
    # padded input can be negative (BiT's stem: conv -> Pad -> MaxPool; onnxsim/onnxsim#290).
    kwargs = {"providers": ["CPUExecutionProvider"], "disabled_optimizers": ["Pad_Fusion"]}
    if isinstance(model, SplitModel):
        return session(model, opts, **kwargs)
    return ort.InferenceSession(model, opts, **kwargs), {}


class Runner:
    """Runs an ONNX model in onnxruntime (CPU) on a list of input batches, one session per model. ``model`` may
    be a path, which onnxruntime loads with the external data beside it, or a ``protoio.SplitModel``, whose
    weights it reads without a copy (how models over 2 GB run; a ModelProto that large is split first)."""

    def __init__(self, model, input_name: str | None = None):
        from .protoio import SplitModel, split_model

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
            raise UserError(f"onnxruntime cannot load the model: {str(e).splitlines()[0]}") from None
        names = [i.name for i in self.session.get_inputs() if i.name not in self.weights]
        self.input_name = input_name or names[0]
        if self.input_name not in names:
            raise UserError(f"model has no input {self.input_name!r} (inputs: {', '.join(names)})")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, batches: Sequence[np.ndarray], run_options=None) -> Outputs:
        """Outputs of every batch, concatenated along the batch axis (scalars stacked), with each batch's shape.
        ``run_options``: onnxruntime ``RunOptions`` (another thread setting ``terminate`` cancels the run)."""
        per_output: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for x in batches:
            try:
                outs = self.session.run(self.output_names, {self.input_name: x, **self.weights}, run_options)
            except Exception as e:
                raise UserError(f"onnxruntime failed on input {self.input_name!r} shaped {list(x.shape)}: "
                                f"{str(e).splitlines()[0]}") from None
            for n, o in zip(self.output_names, outs):
                per_output[n].append(np.asarray(o))
        return Outputs({n: np.concatenate(v) if v[0].ndim else np.stack(v) for n, v in per_output.items()},
                       {n: [o.shape for o in v] for n, v in per_output.items()})
