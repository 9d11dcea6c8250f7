"""Check a replacement subgraph numerically, for rewrites a pass cannot prove symbolically (a map read from
evaluated indices, a fusion whose maths holds only for some constants): the nodes a rewrite removes and the nodes
it puts in their place, each cut out as a small model with the same inputs, run side by side in onnxruntime on
seeded inputs. A pass checks before it commits, and leaves the graph alone, with the reason, when they disagree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .model import structure_hash
from .sessions import create_session
from .tolerance import Tolerance
from .verify import compare_outputs

__all__ = ["Subgraph", "Agreement", "EXACT", "check_replacement", "seeded_input"]

# Every element equal (NaN to NaN, -0.0 to 0.0): what a rewrite that only moves or copies elements must meet.
EXACT = Tolerance(max_abs=0.0, max_rel=None, cosine=None, top1_agreement=None)
# Integer inputs are drawn from [-1000, 1000) (clipped to the dtype): large enough that a wrong element shows,
# small enough that arithmetic in the subgraph does not overflow.
_INT_RANGE = (-1000, 1000)


def _in_order(nodes: Sequence[gs.Node]) -> bool:
    """Whether each of ``nodes`` comes after those among them it reads from (a node with a subgraph, which may read
    any of them, counts as out of order): a caller that cut them out in order spares gs's toposort, which costs
    far more than this check."""
    position = {id(n): k for k, n in enumerate(nodes)}
    return all(not any(True for _ in n.subgraphs())
               and all(position.get(id(p), -1) < k for t in n.inputs for p in t.inputs)
               for k, n in enumerate(nodes))


class Subgraph:
    """``nodes`` of a graph as a model of their own, fed ``inputs`` (the tensors they read from outside), giving
    ``outputs`` (the interface a replacement must reproduce) and ``observed`` (more of their tensors, evaluated for
    a pass that reads intermediate values; never compared); the nodes in any order. Non-static input dims become
    unnamed, so subgraphs that differ only in the names of symbolic dims give the same model. The model and its
    onnxruntime session ("evaluate": each op's own kernel, one thread) are built once, on first use."""

    def __init__(self, graph: gs.Graph, nodes: Iterable[gs.Node], inputs: Sequence[gs.Tensor],
                 outputs: Sequence[gs.Tensor], observed: Sequence[gs.Tensor] = ()) -> None:
        self.nodes = list(nodes)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.observed = [t for t in observed if all(t is not o for o in self.outputs)]
        self._opset, self._domains = graph.opset, graph.import_domains
        self._graph: gs.Graph | None = None
        self._model: onnx.ModelProto | None = None
        self._session = None

    @property
    def model(self) -> onnx.ModelProto:
        if self._model is None:
            self._model = self._build()
        return self._model

    @property
    def graph(self) -> gs.Graph:
        """The cut as an onnx-graphsurgeon graph of its own (sharing the enclosing graph's nodes and tensors)."""
        if self._graph is None:
            sub = gs.Graph(nodes=self.nodes, outputs=self.outputs + self.observed, opset=self._opset,
                           import_domains=self._domains, name="subgraph")
            if not _in_order(self.nodes):
                # Sorted before the inputs are set: gs's toposort follows a graph input to its producer, which lies
                # outside the cut. Subgraph bodies (If / Loop / Scan) belong to the enclosing graph: not reordered.
                sub.toposort(recurse_subgraphs=False, recurse_functions=False, mode="nodes")
            sub.inputs = list(self.inputs)
            self._graph = sub
        return self._graph

    def structure_key(self) -> int:
        """What the cut computes, up to names (``structure_hash``'s content form, every constant by value): two
        cuts with equal keys are the same function of their inputs, so a check of one holds for the other."""
        return structure_hash(self.graph, weights="values", names=False)

    def _build(self) -> onnx.ModelProto:
        model = gs.export_onnx(self.graph, do_type_check=False)
        # gs stamps the newest IR version, which an older onnxruntime refuses; the opsets decide what is needed.
        model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        # Types of computed tensors left to onnxruntime: an annotation of the enclosing graph may be stale.
        del model.graph.value_info[:]
        for o in model.graph.output:
            o.ClearField("type")
        for i in model.graph.input:
            for d in i.type.tensor_type.shape.dim:
                if not (d.HasField("dim_value") and d.dim_value >= 0):
                    d.Clear()
        return model

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output and observed tensor by name, for ``feeds`` (input name -> array). Raises what onnxruntime
        raises."""
        if self._session is None:
            self._session = create_session(self.model, "evaluate", threads=1)
        names = [t.name for t in self.outputs + self.observed]
        return dict(zip(names, self._session.run(names, dict(feeds))))


@dataclass(frozen=True)
class Agreement:
    """The outcome of ``check_replacement``; true when the two subgraphs agree. ``reason``: why not, in one line.
    ``error``: the type of the exception onnxruntime raised when it could not run one of them (None when both ran),
    for a pass that counts reasons and wants a short one."""

    agree: bool
    reason: str | None = None
    error: str | None = None

    def __bool__(self) -> bool:
        return self.agree


def seeded_input(dtype: np.dtype, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A random array: standard normal for floats, integers in [-1000, 1000) (within the dtype's range) for
    integers, fair coin flips for bool."""
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(_INT_RANGE[0], info.min), min(_INT_RANGE[1], int(info.max) + 1), size=shape
                            ).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise ValueError(f"no random inputs of dtype {dtype}")


def _static_shapes(inputs: Sequence[gs.Tensor]) -> dict[str, list[int]]:
    shapes = {}
    for t in inputs:
        if t.shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in t.shape):
            raise ValueError(f"input {t.name!r} has no static shape ({t.shape}); pass shapes")
        shapes[t.name] = [int(d) for d in t.shape]
    return shapes


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and elements by ``np.array_equal`` (-0.0 equals 0.0, which every tolerance allows; a NaN
    equals nothing, so outputs holding one get the full comparison)."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


def check_replacement(before: Subgraph, after: Subgraph,
                      shapes: Sequence[Mapping[str, Sequence[int]]] | None = None, *,
                      tolerance: Tolerance = EXACT, seed: int = 0) -> Agreement:
    """Whether ``after`` computes what ``before`` does: both fed the same seeded random inputs
    (``seeded_input``, drawn in input order from one generator seeded ``seed``), once for each entry of ``shapes``
    (input name -> concrete shape; None: one run at the inputs' static shapes), and ``after.outputs[k]`` compared
    with ``before.outputs[k]`` by ``verify.compare_outputs`` held to ``tolerance`` (default ``EXACT``). The two
    must read the same inputs (names, dtypes); integer and bool outputs are always compared exactly."""
    if [t.name for t in before.inputs] != [t.name for t in after.inputs]:
        raise ValueError("before and after must read the same inputs")
    if len(before.outputs) != len(after.outputs):
        raise ValueError(f"before has {len(before.outputs)} outputs, after {len(after.outputs)}")
    rng = np.random.default_rng(seed)
    for trial in (shapes if shapes is not None else [_static_shapes(before.inputs)]):
        feeds = {t.name: seeded_input(t.dtype, trial[t.name], rng) for t in before.inputs}
        where = ", ".join(f"{name} {list(shape)}" for name, shape in trial.items())
        results = []
        for side, sub in (("original", before), ("replacement", after)):
            try:
                results.append(sub.run(feeds))
            except Exception as e:  # noqa: BLE001 - anything onnxruntime refuses is a reason, not a crash
                first = (str(e).strip().splitlines() or ["(no message)"])[0][:300]
                return Agreement(False, f"onnxruntime cannot evaluate the {side} with inputs shaped {where}: "
                                        f"{type(e).__name__}: {first}", type(e).__name__)
        ref, got = results
        pairs = list(zip(before.outputs, after.outputs))
        if all(_identical(ref[b.name], got[a.name]) for b, a in pairs):
            continue  # meets any tolerance; the full comparison's statistics cost more than the runs
        comparison = compare_outputs({b.name: ref[b.name] for b, _ in pairs},
                                     {b.name: got[a.name] for b, a in pairs}, tolerance)
        if not comparison.passed:
            return Agreement(False, f"{comparison.describe('the original')} with inputs shaped {where}")
    return Agreement(True)
