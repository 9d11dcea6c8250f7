"""The layer-wise diff engine: where two models on the same inputs first differ, in memory-bounded batches.

Verification says *that* two models differ; this says *where*. The two models run on the same inputs and every
tensor they share is compared with the metrics of ``graphopt.core.verify`` (max abs / max rel error, cosine). Shared
tensors are those of the name map (``graphopt.core.name_map``: a recipe's ``report.json`` carries one from the output
model back to the input model), or, without a map, those with the same name and producer op type. The first tensor
in the later model's topological order that is outside tolerance is the first divergence; its producer is the op
to look at. The pipeline names it when a pass fails verification (``first_divergence``); ``graphopt diff`` and
``graphopt bisect`` (``graphopt.commands``) show it to people.

Inputs: feeds of every input of the models, of any dtype (``graphopt.core.inputs``). Integer and bool tensors are
compared exactly, as outputs are (``graphopt.core.verify``): an intermediate integer tensor (a shape, an index) that
differs in one element is divergent, whatever the float tolerances. Each feed's tensors are compared with that
feed's, so feeds of different shapes (real data) compare too.

Memory stays bounded however large the model. Marking every tensor as an output at once (what Polygraphy does)
holds every activation in memory, and rewriting a large model's protobuf for each run copies its weights. Instead
each model is read once as a weightless graph plus its weights as arrays (``graphopt.core.wire``); each run is a
session of a small graph that computes only one batch of tensors (a byte budget, from shape inference), pruned
to the nodes and weights those tensors need, with the weights fed as inputs that onnxruntime reads in place. One
session at a time is alive and nothing is written to disk.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from .errors import UserError
from .graph_walk import node_inputs
from .model_inputs import check_feed, model_inputs
from .model import Model
from .name_map import model_producers, shared_tensors
from .shapes import infer_shapes
from .tolerance import Tolerance
from .verify import compare_outputs
from .runner import Outputs
from .wire import SplitModel, copy_fields

__all__ = ["TensorDiff", "DiffResult", "SubgraphRunner", "diff_models", "first_divergence", "describe_divergence",
           "tensor_diff", "tensor_tolerance", "DEFAULT_BUDGET_MB"]

DEFAULT_BUDGET_MB = 64.0


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
    # Integer and bool tensors, compared exactly: their kind ("integer", "bool") and the elements that differ.
    exact: str | None = None
    mismatches: int | None = None

    def describe(self) -> str:
        alias = "" if self.name_a == self.name else f" ({self.name_a!r} in A)"
        head = f"tensor {self.name!r}{alias} from {self.op} node {self.node!r}: "
        if self.exact is not None and "exact" in self.failed_on:
            return head + (f"{self.mismatches} element(s) differ (max_abs={self.max_abs:.3g}; {self.exact} tensors "
                           "must be equal)")
        return (head + f"max_abs={self.max_abs:.3g} max_rel={self.max_rel:.3g} cosine={self.cosine:.8f}"
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
    """The tolerance for intermediate tensors: the same criteria (an output's own ones for that output), except
    top-1 agreement, which only means something for class scores."""
    outputs = tuple(replace(o, overrides=tuple((c, v) for c, v in o.overrides if c != "top1_agreement"), top1=False)
                    for o in tol.outputs)
    return replace(tol, top1_agreement=None, outputs=outputs)


# ---------------------------------------------------------------------------------------------------------------
# A model held once, run on any set of its tensors


def _as_split(model: Model | onnx.ModelProto | SplitModel | str | Path, what: str,
              reuse: Mapping[str, np.ndarray] | None = None) -> SplitModel:
    if isinstance(model, SplitModel):
        return model
    if isinstance(model, Model):
        return model.split()
    if isinstance(model, onnx.ModelProto):
        return Model.from_proto(model).split()
    return Model.load(model, what, reuse).split()


class SubgraphRunner:
    """A model held once (``wire.SplitModel``: a weightless skeleton plus its weights as arrays) whose
    ``run(names, feeds)`` computes any set of its tensors in a session of the graph pruned to them; the weights
    are fed as inputs, which onnxruntime reads in place, so no session copies them and nothing goes to disk."""

    def __init__(self, model: Model | onnx.ModelProto | SplitModel | str | Path, what: str = "model",
                 reuse: Mapping[str, np.ndarray] | None = None):
        self.what = what
        self.split = _as_split(model, what, reuse)
        self.model = self.split.skeleton
        g = self.model.graph
        self.inits = {i.name for i in g.initializer}
        self.inputs = [i for i in g.input if i.name not in self.inits]
        self.input_names = [i.name for i in self.inputs]
        self.outputs = [o.name for o in g.output]
        self.producers = model_producers(self.model)
        self.node_of: dict[str, int] = {}
        for k, node in enumerate(g.node):
            for name in node.output:
                if name:
                    self.node_of[name] = k
        self.sessions = 0

    def node(self, tensor: str) -> onnx.NodeProto | None:
        k = self.node_of.get(tensor)
        return None if k is None else self.model.graph.node[k]

    def pruned(self, outputs: Sequence[str]) -> SplitModel:
        """The graph computing ``outputs``: only the nodes and weights they need, every input kept (the feeds
        name them all)."""
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
        return SplitModel(sub, {n: w for n, w in self.split.weights.items() if n in needed})

    def run(self, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
        """The values of ``names`` for each feed (a list per name, one array per feed)."""
        try:
            session, weights = Model(self.pruned(names)).session("compare")
        except Exception as e:
            raise UserError(f"{self.what}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
        self.sessions += 1
        wanted = {i.name for i in session.get_inputs()} - set(weights)
        values: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for feed in feeds:
            missing = wanted - set(feed)
            if missing:
                raise UserError(f"{self.what}: no value for input(s) {', '.join(sorted(missing))}")
            try:
                outs = session.run(list(names), {**{k: v for k, v in feed.items() if k in wanted}, **weights})
            except Exception as e:
                raise UserError(f"{self.what}: onnxruntime failed: {str(e).splitlines()[0]}") from None
            for n, v in zip(names, outs):
                values[n].append(np.asarray(v))
        return values


# ---------------------------------------------------------------------------------------------------------------
# Shapes, for the byte budget


def _elem_size(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 4


def _tensor_sizes(runner: SubgraphRunner, feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes per sample of every tensor whose shape inference can fix, with the inputs pinned to the feed's.
    The weights are typed inputs for it: shape inference needs their shapes, not their values."""
    model = Model(runner.split).weightless()
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


def _comparable_pairs(a: SubgraphRunner, b: SubgraphRunner, name_map: Mapping[str, str] | None) -> dict[str, str]:
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


def diff_models(a: onnx.ModelProto | SplitModel | str | Path, b: onnx.ModelProto | SplitModel | str | Path,
                feeds: Sequence[Mapping[str, np.ndarray]], *, tolerance: Tolerance,
                name_map: Mapping[str, str] | None = None, budget_mb: float = DEFAULT_BUDGET_MB,
                stop_at_first: bool = False, progress: Callable[[str], None] = _noop) -> DiffResult:
    """Compare every tensor A and B share (``name_map``: {B name: A name}; default: same name and producer op
    type) on ``feeds`` (one dict of input arrays per sample). At most ``budget_mb`` MiB of tensor values per batch
    (A's and B's together); ``stop_at_first`` stops after the batch holding the first divergence. Intermediate
    tensors are judged with ``tensor_tolerance(tolerance)``. A model given as a path is read once, its weights
    held as arrays (a ``SplitModel`` is used as it is, sharing its arrays)."""
    if not feeds:
        raise UserError("diff: no inputs to run the models on")
    tol = tensor_tolerance(tolerance)
    budget = max(1, int(budget_mb * (1 << 20)))
    progress("diff: reading model A ...")
    sa = SubgraphRunner(a, "model A")
    progress("diff: reading model B ...")
    sb = SubgraphRunner(b, "model B", reuse=sa.split.weights)  # a file: the weights equal to A's are A's
    # Every input present, of the model's dtype and rank: one line naming the input (never onnxruntime's list)
    check_feed(model_inputs(sa.split), feeds[0], "diff: model A", strict=False)
    check_feed(model_inputs(sb.split), feeds[0], "diff: model B", strict=False)
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
            # Feed by feed (the cosine over each feed's rows, as graphopt verify measures outputs); integer and
            # bool tensors exactly.
            cmp = compare_outputs(Outputs.of_feeds({nb: xa}), Outputs.of_feeds({nb: xb}), tol).outputs[0]
            node = sb.node(nb)
            result.tensors.append(TensorDiff(nb, na, node.op_type, node.name or f"#{sb.node_of[nb]}",
                                             sb.node_of[nb], tuple(int(d) for d in xb[0].shape), cmp.max_abs,
                                             cmp.max_rel, cmp.cosine, cmp.passed, cmp.failed_on,
                                             cmp.expected if cmp.mismatches is not None else None, cmp.mismatches))
        del va, vb
        if stop_at_first and result.first is not None:
            result.stopped_early = done < len(order)
            break
    result.skipped = skipped
    result.sessions = sa.sessions + sb.sessions
    return result


def _incomparable(xa: list[np.ndarray], xb: list[np.ndarray]) -> str | None:
    if any(x.shape != y.shape for x, y in zip(xa, xb)):
        return "shape differs"
    if not (np.issubdtype(xa[0].dtype, np.number) or xa[0].dtype == np.bool_):
        return f"not numeric ({xa[0].dtype})"
    return None


def first_divergence(a: onnx.ModelProto | SplitModel, b: onnx.ModelProto | SplitModel,
                     feeds: Sequence[Mapping[str, np.ndarray]], name_map: Mapping[str, str] | None,
                     tolerance: Tolerance) -> dict[str, Any] | None:
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
    return "; first divergent " + tensor_diff(d).describe()


def tensor_diff(d: Mapping[str, Any]) -> TensorDiff:
    """A ``TensorDiff`` from its dict (``asdict``, read back from JSON)."""
    return TensorDiff(**{**d, "shape": tuple(d["shape"]), "failed_on": tuple(d["failed_on"])})
