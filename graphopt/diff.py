"""``graphopt diff``: a layer-wise comparison of two models on the same inputs, in memory-bounded batches.

Verification says *that* two models differ; this says *where*. The two models run on the same inputs and every
tensor they share is compared with the metrics of ``graphopt.verify`` (max abs / max rel error, cosine). Shared
tensors are those of the name map (``graphopt.name_map``: a recipe's ``report.json`` carries one from the output
model back to the input model), or, without a map, those with the same name and producer op type. The first tensor
in the later model's topological order that is outside tolerance is the first divergence; its producer is the op
to look at.

Memory stays bounded however large the model. Marking every tensor as an output at once (what Polygraphy does)
holds every activation in memory, and rewriting a large model's protobuf for each run copies its weights. Instead
each model's weights are written once to a file beside a weight-less copy of its graph; each run then loads a
session from a small graph that computes only one batch of tensors (a byte budget, from shape inference), pruned
to the nodes and weights those tensors need, and one session at a time is alive.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from .errors import UserError
from .ir import copy_fields, infer_shapes
from .name_map import model_producers, shared_tensors
from .recipe import Tolerance
from .verify import compare_outputs, make_inputs

__all__ = ["TensorDiff", "DiffResult", "StagedModel", "diff_models", "first_divergence", "describe_divergence",
           "load_name_map", "seeded_feeds", "plot_diff", "load_model_lean", "tensor_tolerance", "add_cli",
           "DEFAULT_BUDGET_MB"]

DEFAULT_BUDGET_MB = 64.0
# Initializers at most this large stay in the weight-less graph: shape inference reads them (Reshape targets).
_INLINE_BYTES = 4096
# External data aligned to 64 KiB can be memory-mapped by onnxruntime.
_ALIGN = 1 << 16


def _noop(msg: str) -> None:
    pass


@dataclass(frozen=True)
class TensorDiff:
    """One shared tensor compared. ``name`` is its name in B, ``name_a`` in A; ``op``/``node`` its producer in B;
    ``position`` the producer's index in B's topological order (the depth the plot uses)."""

    name: str
    name_a: str
    op: str
    node: str
    position: int
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    failed_on: tuple[str, ...] = ()

    def describe(self) -> str:
        alias = "" if self.name_a == self.name else f" ({self.name_a!r} in A)"
        return (f"tensor {self.name!r}{alias} from {self.op} node {self.node!r}: max_abs={self.max_abs:.3g} "
                f"max_rel={self.max_rel:.3g} cosine={self.cosine:.8f}"
                + (f" (outside tolerance on {', '.join(self.failed_on)})" if self.failed_on else ""))


@dataclass
class DiffResult:
    tensors: list[TensorDiff]  # in B's topological order
    shared: int  # tensors the two models share (compared or not)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count of shared tensors not compared
    batches: int = 0  # tensor batches (each one session per model)
    sessions: int = 0
    budget_bytes: int = 0
    stopped_early: bool = False

    @property
    def first(self) -> TensorDiff | None:
        return next((t for t in self.tensors if not t.passed), None)

    @property
    def divergent(self) -> list[TensorDiff]:
        return [t for t in self.tensors if not t.passed]

    def as_dict(self) -> dict[str, Any]:
        first = self.first
        return {"shared": self.shared, "compared": len(self.tensors), "divergent": len(self.divergent),
                "skipped": self.skipped, "batches": self.batches, "sessions": self.sessions,
                "budget_bytes": self.budget_bytes, "stopped_early": self.stopped_early,
                "first_divergent": None if first is None else asdict(first),
                "tensors": [asdict(t) for t in self.tensors]}


def tensor_tolerance(tol: Tolerance) -> Tolerance:
    """The tolerance for intermediate tensors: the same criteria, except top-1 agreement, which only means
    something for class scores."""
    return replace(tol, top1_agreement=None)


# ---------------------------------------------------------------------------------------------------------------
# Staging: weights to a file, the graph without them in memory


def load_model_lean(path: str | Path, what: str = "model") -> onnx.ModelProto:
    """Load an ONNX file without ``onnx.checker`` (which would hold three more copies of a large model's weights)
    and without its external data (staging reads that tensor by tensor). Problems become one-line UserErrors;
    onnxruntime rejects an invalid graph when the first session is made."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory, expected an .onnx file" if path.is_dir() else "no such file"
        raise UserError(f"{what} {path}: {problem}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{what} {path}: not a readable ONNX model ({first})") from None
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{what} {path}: not an ONNX model (empty graph)")
    return model


def _tensor_bytes(init: onnx.TensorProto, base_dir: Path | None) -> bytes | None:
    """The raw little-endian bytes of an initializer (None for string tensors, which stay inline)."""
    if init.data_type == onnx.TensorProto.STRING:
        return None
    if external_data_helper.uses_external_data(init):
        if base_dir is None:
            raise UserError(f"initializer {init.name!r} uses external data but the model has no folder")
        t = onnx.TensorProto()
        t.CopyFrom(init)
        external_data_helper.load_external_data_for_tensor(t, str(base_dir))
        return t.raw_data
    if init.HasField("raw_data"):
        return init.raw_data
    return numpy_helper.to_array(init).tobytes()


class StagedModel:
    """A model whose large weights live in ``folder/weights.bin`` and whose graph, without them, stays in memory.
    ``run(names, feeds)`` computes any set of its tensors in a session made from a pruned copy of that graph."""

    def __init__(self, model: onnx.ModelProto | str | Path, folder: Path, what: str = "model"):
        base_dir = None
        if not isinstance(model, onnx.ModelProto):
            base_dir = Path(model).parent
            model = load_model_lean(model, what)
        self.what = what
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        light = onnx.ModelProto()
        copy_fields(model, light, skip=("graph",))
        copy_fields(model.graph, light.graph, skip=("initializer",))
        init = None
        with open(self.folder / "weights.bin", "wb") as f:
            for init in model.graph.initializer:
                raw = None if _approx_bytes(init) <= _INLINE_BYTES else _tensor_bytes(init, base_dir)
                if raw is None:
                    inline = light.graph.initializer.add()
                    inline.CopyFrom(init)
                    if external_data_helper.uses_external_data(inline):
                        inline.raw_data = _tensor_bytes(init, base_dir)
                        del inline.external_data[:]
                        inline.data_location = onnx.TensorProto.DEFAULT
                    continue
                offset = -f.tell() % _ALIGN + f.tell()
                f.seek(offset)
                f.write(raw)
                ext = light.graph.initializer.add()
                ext.name, ext.data_type = init.name, init.data_type
                ext.dims.extend(init.dims)
                ext.data_location = onnx.TensorProto.EXTERNAL
                for k, v in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = ext.external_data.add()
                    entry.key, entry.value = k, v
                del raw
        self.model = light
        g = light.graph
        self.inits = {i.name for i in g.initializer}
        self.inputs = [i for i in g.input if i.name not in self.inits]
        self.input_names = [i.name for i in self.inputs]
        self.outputs = [o.name for o in g.output]
        self.producers = model_producers(light)
        self.node_of: dict[str, int] = {}
        for k, node in enumerate(g.node):
            for name in node.output:
                if name:
                    self.node_of[name] = k
        self.sessions = 0
        del model, init  # a submessage keeps its whole message's memory alive
        release_memory()

    def node(self, tensor: str) -> onnx.NodeProto | None:
        k = self.node_of.get(tensor)
        return None if k is None else self.model.graph.node[k]

    def pruned(self, outputs: Sequence[str]) -> onnx.ModelProto:
        """The graph computing ``outputs``: only the nodes and initializers they need, every input kept (the
        feeds name them all)."""
        g = self.model.graph
        keep: set[int] = set()
        needed: set[str] = set()
        stack = list(outputs)
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            k = self.node_of.get(name)
            if k is None or k in keep:
                continue
            keep.add(k)
            stack.extend(node_inputs(g.node[k]))
        sub = onnx.ModelProto()
        copy_fields(self.model, sub, skip=("graph",))
        sub.graph.name = g.name or "graph"
        sub.graph.node.extend(g.node[k] for k in sorted(keep))
        sub.graph.initializer.extend(i for i in g.initializer if i.name in needed)
        sub.graph.input.extend(self.inputs)
        typed = {o.name: o for o in g.output}
        for name in outputs:
            if name in typed:
                sub.graph.output.append(typed[name])
            else:
                sub.graph.output.add().name = name  # onnxruntime infers the type
        return sub

    def run(self, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
        """The values of ``names`` for each feed (a list per name, one array per feed)."""
        import onnxruntime as ort

        path = self.folder / "run.onnx"
        path.write_bytes(self.pruned(names).SerializeToString())
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # as graphopt.verify.Runner
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"{self.what}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
        self.sessions += 1
        wanted = {i.name for i in session.get_inputs()}
        values: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for feed in feeds:
            missing = wanted - set(feed)
            if missing:
                raise UserError(f"{self.what}: no value for input(s) {', '.join(sorted(missing))}")
            try:
                outs = session.run(list(names), {k: v for k, v in feed.items() if k in wanted})
            except Exception as e:
                raise UserError(f"{self.what}: onnxruntime failed: {str(e).splitlines()[0]}") from None
            for n, v in zip(names, outs):
                values[n].append(np.asarray(v))
        del session
        release_memory()
        return values


def release_memory() -> None:
    """Hand freed memory back to the OS. After a large model's protobuf is freed, glibc keeps most of it in its
    heap, where it would count towards the peak again when onnxruntime allocates elsewhere."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _approx_bytes(init: onnx.TensorProto) -> int:
    if init.HasField("raw_data"):
        return len(init.raw_data)
    if external_data_helper.uses_external_data(init):
        return _ALIGN  # staged however small: it is read from its file
    return int(np.prod(init.dims, dtype=np.int64)) * 4


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


# ---------------------------------------------------------------------------------------------------------------
# Shapes, for the byte budget


def _elem_size(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 4


def _tensor_sizes(staged: StagedModel, feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes per sample of every tensor whose shape inference can fix, with the inputs pinned to the feed's.
    The staged weights become typed inputs for it: shape inference needs their shapes, not their values."""
    model = onnx.ModelProto()
    copy_fields(staged.model, model, skip=("graph",))
    copy_fields(staged.model.graph, model.graph, skip=("initializer",))
    for init in staged.model.graph.initializer:
        if external_data_helper.uses_external_data(init):
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            model.graph.initializer.append(init)
    for inp in model.graph.input:
        if inp.name in feed:
            dims = inp.type.tensor_type.shape.dim
            del dims[:]
            for d in feed[inp.name].shape:
                dims.add().dim_value = int(d)
    inferred = infer_shapes(model)  # sizes are an estimate either way
    sizes = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if all(d is not None for d in dims):
            sizes[vi.name] = int(np.prod(dims, dtype=np.int64)) * _elem_size(tt.elem_type)
    return sizes


# ---------------------------------------------------------------------------------------------------------------
# The diff


def _comparable_pairs(a: StagedModel, b: StagedModel, name_map: Mapping[str, str] | None) -> dict[str, str]:
    pairs = shared_tensors(a.producers, b.producers, name_map, set(a.outputs) & set(b.outputs))
    # Graph inputs are fed identically; Constant outputs are weights, not computed values.
    return {nb: na for nb, na in pairs.items()
            if b.producers[nb] not in ("", "Constant") and a.producers[na] not in ("", "Constant")}


def _next_batch(order: Sequence[tuple[str, str]], start: int, size_a: Mapping[str, int],
                size_b: Mapping[str, int], guess: int, samples: int, budget: int) -> list[tuple[str, str]]:
    """The tensors from ``order[start]`` on whose values (A's and B's, every sample) fit the budget; at least
    one. A size shape inference could not fix is taken as ``guess``."""
    batch: list[tuple[str, str]] = []
    used = 0
    for nb, na in order[start:]:
        cost = (size_a.get(na, guess) + size_b.get(nb, guess)) * samples
        if batch and used + cost > budget:
            break
        batch.append((nb, na))
        used += cost
    return batch


def diff_models(a: onnx.ModelProto | str | Path, b: onnx.ModelProto | str | Path,
                feeds: Sequence[Mapping[str, np.ndarray]], *, tolerance: Tolerance,
                name_map: Mapping[str, str] | None = None, budget_mb: float = DEFAULT_BUDGET_MB,
                stop_at_first: bool = False, progress: Callable[[str], None] = _noop,
                workdir: str | Path | None = None) -> DiffResult:
    """Compare every tensor A and B share (``name_map``: {B name: A name}; default: same name and producer op
    type) on ``feeds`` (one dict of input arrays per sample). At most ``budget_mb`` MiB of tensor values per batch
    (A's and B's together); ``stop_at_first`` stops after the batch holding the first divergence. Intermediate
    tensors are judged with ``tensor_tolerance(tolerance)``."""
    if not feeds:
        raise UserError("diff: no inputs to run the models on")
    tol = tensor_tolerance(tolerance)
    budget = max(1, int(budget_mb * (1 << 20)))
    with tempfile.TemporaryDirectory(prefix="graphopt-diff-", dir=workdir) as tmp:
        progress("diff: staging model A's weights ...")
        sa = StagedModel(a, Path(tmp) / "a", "model A")
        del a
        progress("diff: staging model B's weights ...")
        sb = StagedModel(b, Path(tmp) / "b", "model B")
        del b
        for name in sa.input_names:
            if name not in feeds[0]:
                raise UserError(f"diff: model A has input {name!r} the feeds do not give")
        pairs = _comparable_pairs(sa, sb, name_map)
        order = sorted(pairs.items(), key=lambda p: (sb.node_of[p[0]], p[0]))
        size_a = _tensor_sizes(sa, feeds[0])
        size_b = _tensor_sizes(sb, feeds[0])
        # An unknown size is taken as the largest known one, or seen so far (shape inference can miss tensors
        # behind dynamic reshapes, e.g. in opset-11 exports).
        known = [*size_a.values(), *size_b.values()]
        guess = max(known) if known else 1 << 20
        result = DiffResult([], len(pairs), budget_bytes=budget)
        skipped: dict[str, int] = {}
        done = 0
        while done < len(order):
            batch = _next_batch(order, done, size_a, size_b, guess, len(feeds), budget)
            done += len(batch)
            progress(f"diff: batch {result.batches + 1}: {len(batch)} tensor(s), {done}/{len(order)}")
            va = sa.run([na for _, na in batch], feeds)
            vb = sb.run([nb for nb, _ in batch], feeds)
            result.batches += 1
            guess = max(guess, *(v[0].nbytes for v in (*va.values(), *vb.values())))
            for nb, na in batch:
                xa, xb = va.pop(na), vb.pop(nb)
                reason = _incomparable(xa, xb)
                if reason:
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                # One row per sample: the cosine is over each sample's whole tensor.
                cmp = compare_outputs({nb: np.stack(xa)}, {nb: np.stack(xb)}, tol).outputs[0]
                node = sb.node(nb)
                result.tensors.append(TensorDiff(nb, na, node.op_type, node.name or f"#{sb.node_of[nb]}",
                                                 sb.node_of[nb], tuple(int(d) for d in xb[0].shape), cmp.max_abs,
                                                 cmp.max_rel, cmp.cosine, cmp.passed, cmp.failed_on))
            del va, vb
            if stop_at_first and result.first is not None:
                result.stopped_early = done < len(order)
                break
        result.skipped = skipped
        result.sessions = sa.sessions + sb.sessions
    return result


def _incomparable(xa: list[np.ndarray], xb: list[np.ndarray]) -> str | None:
    if xa[0].shape != xb[0].shape:
        return "shape differs"
    if not (np.issubdtype(xa[0].dtype, np.number) or xa[0].dtype == np.bool_):
        return f"not numeric ({xa[0].dtype})"
    return None


def first_divergence(a: onnx.ModelProto, b: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
                     name_map: Mapping[str, str] | None, tolerance: Tolerance) -> dict[str, Any] | None:
    """For the pipeline, when a pass fails verification: the first divergent tensor as a dict (``error`` set
    instead when the diff itself could not run, so it never hides the verification failure)."""
    try:
        first = diff_models(a, b, feeds, tolerance=tolerance, name_map=name_map, stop_at_first=True).first
    except Exception as e:  # noqa: BLE001 - a diagnostic must not mask the failure it explains
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return None if first is None else asdict(first)


def describe_divergence(d: Mapping[str, Any] | None) -> str:
    """'; first divergent tensor ...' for an error message (empty when there is nothing to add)."""
    if not d:
        return ""
    if "error" in d:
        return f"; (the layer-wise diff could not run: {d['error']})"
    return "; first divergent " + TensorDiff(**{**d, "shape": tuple(d["shape"]),
                                                  "failed_on": tuple(d["failed_on"])}).describe()


# ---------------------------------------------------------------------------------------------------------------
# Inputs, maps, plots


def seeded_feeds(model: onnx.ModelProto, samples: int, seed: int, input_name: str | None = None,
                 shape: Sequence[int] | None = None) -> list[dict[str, np.ndarray]]:
    """Seeded inputs for every input of ``model``: ``input_name`` (default the first) shaped ``shape`` (default
    the model's, dynamic dims as 1) from ``make_inputs``, as ``graphopt verify`` feeds it; other float inputs
    standard normal, integer and bool inputs zero."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise UserError("diff: the model has no inputs")
    main = input_name or inputs[0].name
    if main not in {i.name for i in inputs}:
        raise UserError(f"diff: model has no input {main!r} (inputs: {', '.join(i.name for i in inputs)})")
    feeds: list[dict[str, np.ndarray]] = [{} for _ in range(samples)]
    rng = np.random.default_rng(seed + 1)
    for inp in inputs:
        tt = inp.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        if inp.name == main:
            dims = list(shape) if shape is not None else dims
            if not np.issubdtype(dtype, np.floating):
                raise UserError(f"diff: input {main!r} is {dtype}, expected a float input")
            xs = (make_inputs(dims, samples, seed, dtype.name) if dtype.name in ("float32", "float16") else
                  [x.astype(dtype) for x in make_inputs(dims, samples, seed)])
            for feed, x in zip(feeds, xs):
                feed[main] = x
            continue
        for feed in feeds:
            feed[inp.name] = (rng.standard_normal(dims).astype(dtype) if np.issubdtype(dtype, np.floating)
                              else np.zeros(dims, dtype))
    return feeds


def load_name_map(path: str | Path, a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, str]:
    """{B name: A name} from a ``report.json`` (its ``name_map``, output model -> input model) or a JSON object
    of that shape; turned round when it fits A -> B better (diffing the output model against the input model)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--map {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"--map {path}: not a JSON file ({str(e).splitlines()[0]})") from None
    mapping = data.get("name_map", data) if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise UserError(f"--map {path}: expected a graphopt report.json with a name_map, or a JSON object "
                        "{name in B: name in A}")
    forward = sum(1 for k, v in mapping.items() if k in b and v in a)
    backward = sum(1 for k, v in mapping.items() if k in a and v in b)
    if max(forward, backward) == 0:
        raise UserError(f"--map {path}: none of its {len(mapping)} names are tensors of these two models")
    return mapping if forward >= backward else {v: k for k, v in mapping.items()}


def plot_diff(result: DiffResult, path: str | Path, title: str = "") -> None:
    """A PNG of the error of every compared tensor along the depth of B (its producer's topological index)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-12
    xs = [t.position for t in result.tensors]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, values, label in ((ax1, [max(t.max_abs, floor) for t in result.tensors], "max abs error"),
                              (ax2, [max(1.0 - t.cosine, floor) for t in result.tensors], "1 - cosine")):
        colors = ["tab:red" if not t.passed else "tab:blue" for t in result.tensors]
        ax.scatter(xs, values, c=colors, s=10)
        ax.plot(xs, values, color="tab:gray", linewidth=0.5, alpha=0.6)
        ax.set_yscale("log")
        ax.set_ylabel(f"{label}\n(0 drawn at {floor:g})")
        ax.grid(True, alpha=0.3)
    first = result.first
    if first is not None:
        for ax in (ax1, ax2):
            ax.axvline(first.position, color="tab:red", linestyle="--", linewidth=1)
        ax1.text(0.01, 0.96, f"first divergence: {first.name} ({first.op} node {first.node})",
                 transform=ax1.transAxes, fontsize=8, color="tab:red", va="top",
                 bbox={"facecolor": "white", "edgecolor": "tab:red", "alpha": 0.9})
    ax2.set_xlabel("depth (topological index of the producing node in B)")
    ax1.set_title(title or f"layer-wise diff: {len(result.tensors)} shared tensors, "
                           f"{len(result.divergent)} outside tolerance")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _cmd_diff(args: argparse.Namespace) -> int:
    import sys

    from .cli import parse_shape

    progress = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else _noop
    if args.budget_mb <= 0:
        raise UserError(f"--budget-mb {args.budget_mb}: expected a positive size")
    # Only what is needed from each graph here; diff_models loads and stages one model at a time, so that a
    # large model's weights are never held twice.
    a = load_model_lean(args.a, "model A")
    feeds = seeded_feeds(a, args.samples, args.seed, args.input, parse_shape(args.shape))
    producers_a = model_producers(a)
    del a
    name_map = None
    if args.map:
        b = load_model_lean(args.b, "model B")
        producers_b = model_producers(b)
        del b
        name_map = load_name_map(args.map, producers_a, producers_b)
    tol = Tolerance(max_abs=args.max_abs, max_rel=args.max_rel, cosine=args.cosine, top1_agreement=None)
    result = diff_models(args.a, args.b, feeds, tolerance=tol, name_map=name_map, budget_mb=args.budget_mb,
                         stop_at_first=args.first, progress=progress)
    print(f"compared {len(result.tensors)} of {result.shared} shared tensors in {result.batches} batch(es) "
          f"({result.sessions} onnxruntime sessions, budget {args.budget_mb:g} MiB)"
          + (f"; not compared: {result.skipped}" if result.skipped else ""))
    first = result.first
    if first is None:
        print("no shared tensor is outside tolerance")
    else:
        stopped = " (stopped at the first batch with one)" if args.first else ""
        print(f"{len(result.divergent)} outside tolerance{stopped}; first divergent {first.describe()}")
        for t in result.divergent[1:1 + args.show]:
            print(f"  then {t.describe()}")
    if args.json:
        from .ir import atomic_write_text

        atomic_write_text(args.json, json.dumps(result.as_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot and result.tensors:
        plot_diff(result, args.plot)
        print(f"wrote {args.plot}")
    return 0 if first is None else 1


def add_cli(subparsers: Any) -> None:
    """Register ``graphopt diff``."""
    from .cli import add_comparison_arguments
    p = subparsers.add_parser("diff", help="layer-wise diff of two models: the first shared tensor that diverges "
                                           "(exit 1 when one does)")
    p.add_argument("a", help="reference model (e.g. the recipe's input model)")
    p.add_argument("b", help="model to compare (e.g. runs/<name>/model.onnx)")
    p.add_argument("--map", help="report.json of the run that made B from A (its name_map traces renamed tensors)")
    add_comparison_arguments(p, samples=1)
    p.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB,
                   help=f"MiB of tensor values held per batch, both models together (default {DEFAULT_BUDGET_MB:g})")
    p.add_argument("--first", action="store_true", help="stop after the batch holding the first divergence")
    p.add_argument("--plot", default="diff.png", help="PNG of the error along the graph depth ('' for none)")
    p.add_argument("--json", help="write every compared tensor's metrics to this JSON file")
    p.add_argument("--show", type=int, default=5, help="divergent tensors listed after the first")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    p.set_defaults(func=_cmd_diff)
