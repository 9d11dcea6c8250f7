"""Model's snapshot: a split known to equal the view, kept until an edit is declared or the view is handed out for
editing; the pipeline records it (the input model's, then the one verification makes of each changed pass) so
that nothing is split twice, and the honesty check reuses the hash of a graph no pass changed."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import graphopt.core.instruments as instruments
import graphopt.core.model as model_module
from graphopt.core.errors import PassError
from graphopt.core.model import Model
from graphopt.core.pass_infra import Pass, PassResult
from graphopt.core.pipeline import run_pipeline
from onnx_graphsurgeon.ir.tensor import LazyValues


def _matmul() -> onnx.ModelProto:
    """y = Softmax(x @ w) with w a 16x32 float weight (2 KiB: held as an array)."""
    w = np.arange(16 * 32, dtype=np.float32).reshape(16, 32) / 1000
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["m"]), onnx.helper.make_node("Softmax", ["m"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 32])],
        initializer=[onnx.numpy_helper.from_array(w, "w")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


class Nothing(Pass):
    name = "test_snapshot_nothing"

    def run(self, graph: gs.Graph) -> PassResult:
        return PassResult(False)


class Negate(Pass):
    """Appends y = Neg(Neg(y)): a change that keeps numerics."""

    name = "test_snapshot_negate"

    def run(self, graph: gs.Graph) -> PassResult:
        out = graph.outputs[0]
        name, out.name = out.name, f"{out.name}_{len(graph.nodes)}"  # the graph's output keeps its name
        mid, new = gs.Variable(f"{out.name}_n", dtype=out.dtype), gs.Variable(name, out.dtype, out.shape)
        graph.nodes += [gs.Node("Neg", inputs=[out], outputs=[mid]), gs.Node("Neg", inputs=[mid], outputs=[new])]
        graph.outputs = [new]
        return PassResult(True)


class Raises(Pass):
    name = "test_snapshot_raises"

    def run(self, graph: gs.Graph) -> PassResult:
        graph.nodes[0].op = "Relu"  # edited before it fails: the skip must undo it
        raise RuntimeError("boom")


class Quiet(Pass):
    """Edits and says it did not."""

    name = "test_snapshot_quiet"

    def run(self, graph: gs.Graph) -> PassResult:
        graph.nodes[-1].attrs["axis"] = 0
        return PassResult(False)


@pytest.fixture
def exports(monkeypatch):
    """Every split of a graph view the Model makes (``forms.split_graph``), counted."""
    made = []
    real = model_module.split_graph

    def counted(graph):
        made.append(graph)
        return real(graph)

    monkeypatch.setattr(model_module, "split_graph", counted)
    return made


def test_the_snapshot_stands_until_the_view_is_handed_out_or_declared_edited(exports):
    model = Model.from_proto(_matmul())
    first = model.split()
    assert model.has_snapshot and model.view is model.view
    assert model.split() is first and model.snapshot() is first and not exports  # reading the view keeps it
    model.view.nodes[-1].op = "Relu"
    assert model.split() is first  # an edit through ``view`` nobody declares: the snapshot still stands
    model.edited()
    assert not model.has_snapshot
    after = model.split()
    assert [n.op_type for n in after.skeleton.graph.node] == ["MatMul", "Relu"] and len(exports) == 1
    assert model.split() is not after and len(exports) == 2  # ``split`` keeps nothing
    kept = model.snapshot()
    assert model.split() is kept and model.has_snapshot and len(exports) == 3
    assert kept.weights["w"] is first.weights["w"]  # the arrays are shared, never copied
    model.graph.nodes[-1].op = "Softmax"  # handed out for editing: forgotten
    assert not model.has_snapshot
    assert [n.op_type for n in model.split().skeleton.graph.node] == ["MatMul", "Softmax"]


def test_restore_makes_the_model_that_split_again():
    model = Model.from_proto(_matmul())
    before = model.snapshot()
    graph = model.view
    graph.nodes[-1].op = "Relu"
    model.edited()
    model.restore(before)
    assert model.split() is before and model.view is not graph
    assert [n.op for n in model.view.nodes] == ["MatMul", "Softmax"]


def _feeds():
    return [{"x": np.linspace(-1, 1, 2 * 16, dtype=np.float32).reshape(2, 16)}]


def test_verified_pipeline_splits_each_changed_pass_once_and_saves_that_split(exports, tmp_path):
    steps = [(Nothing(), "passes[0]", "stop"), (Negate(), "passes[1]", "stop"), (Nothing(), "passes[2]", "skip"),
             (Negate(), "passes[3]", "skip")]
    result = run_pipeline(Model.from_proto(_matmul()), steps, inputs=_feeds())
    assert [r.status for r in result.records] == ["unchanged", "applied", "unchanged", "applied"]
    assert len(exports) == 2  # one per changed pass: verification's, which skip and saving reuse
    saved = result.output.split()
    assert result.output.has_snapshot and len(exports) == 2
    result.output.save(tmp_path / "out.onnx")
    assert len(exports) == 2
    assert [n.op_type for n in onnx.load(tmp_path / "out.onnx").graph.node] == ["MatMul", "Softmax"] + ["Neg"] * 4
    assert saved.skeleton.graph.output[0].name == "y"


def test_the_input_split_is_what_verification_runs_and_a_skip_restores(exports):
    steps = [(Raises(), "passes[0]", "skip"), (Nothing(), "passes[1]", "stop")]
    source = Model.from_proto(_matmul())
    given = source.split()
    result = run_pipeline(source, steps, inputs=_feeds())
    assert [r.status for r in result.records] == ["skipped", "unchanged"]
    assert result.output is source and source.split() is given and not exports
    assert [n.op for n in source.view.nodes] == ["MatMul", "Softmax"]


def test_unverified_pipeline_checks_and_saves_one_split(exports):
    steps = [(Negate(), "passes[0]", "stop"), (Nothing(), "passes[1]", "skip")]
    result = run_pipeline(_matmul(), steps, inputs=None)
    assert len(exports) == 1  # taken before the skippable pass; the final check and the save reuse it
    result.output.split()
    assert len(exports) == 1


@pytest.fixture
def hashes(monkeypatch):
    taken = []
    real = instruments.structure_hash

    def counted(graph, **kw):
        taken.append(kw)
        return real(graph, **kw)

    monkeypatch.setattr(instruments, "structure_hash", counted)
    return taken


def test_honesty_reuses_the_hash_of_a_graph_no_pass_changed(hashes):
    run_pipeline(_matmul(), [(Nothing(), f"passes[{k}]", "stop") for k in range(3)], inputs=None)
    assert len(hashes) == 4  # once before the first, once after each
    hashes.clear()
    run_pipeline(_matmul(), [(Negate(), "passes[0]", "stop"), (Nothing(), "passes[1]", "stop"),
                             (Nothing(), "passes[2]", "stop")], inputs=None)
    assert len(hashes) == 4  # before the change, then after it (once sorted) and after each unchanged pass


def test_honesty_still_catches_a_quiet_edit_after_a_reused_hash():
    steps = [(Nothing(), "passes[0]", "stop"), (Negate(), "passes[1]", "stop"), (Nothing(), "passes[2]", "stop"),
             (Quiet(), "passes[3]", "stop")]
    with pytest.raises(PassError, match=r"test_snapshot_quiet \(passes\[3\]\) reported no change but modified"):
        run_pipeline(_matmul(), steps, inputs=None)


def _scaled() -> onnx.ModelProto:
    """y = x * k + b: k a Constant node, b a small initializer (both lazy in onnx-graphsurgeon until read)."""
    k = onnx.numpy_helper.from_array(np.full((4,), 2.0, dtype=np.float32), "k")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["kc"], value=k), onnx.helper.make_node("Mul", ["x", "kc"], ["m"]),
         onnx.helper.make_node("Add", ["m", "b"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        initializer=[onnx.numpy_helper.from_array(np.ones(4, dtype=np.float32), "b")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def _constants(graph: gs.Graph) -> list[gs.Constant]:
    found = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    return found + [n.attrs["value"] for n in graph.nodes if n.op == "Constant"]


class Reads(Pass):
    """Reads every constant's value (loading it) and changes nothing; ``first``: the first pass to read them."""

    first = True
    name = "test_snapshot_reads"

    def run(self, graph: gs.Graph) -> PassResult:
        if self.first:  # the hash before loaded none of them
            assert all(isinstance(c._values, LazyValues) for c in _constants(graph))
        assert sum(float(np.asarray(c.values).sum()) for c in _constants(graph)) == 12.0
        return PassResult(False)


class Rescales(Pass):
    """Gives the Constant node a new value, equal or not (``same``), and says it changed nothing."""

    same = False
    name = "test_snapshot_rescales"

    def run(self, graph: gs.Graph) -> PassResult:
        value = next(n for n in graph.nodes if n.op == "Constant").attrs["value"]
        value.values = np.full((4,), 2.0 if self.same else 3.0, dtype=np.float32)
        return PassResult(False)


class WritesInPlace(Pass):
    """Loads the initializer and writes into the array it gets."""

    name = "test_snapshot_writes_in_place"

    def run(self, graph: gs.Graph) -> PassResult:
        b = next(t for t in graph.tensors().values() if isinstance(t, gs.Constant))
        b.values[0] = 5.0
        return PassResult(False)


def test_honesty_hashes_lazy_constants_without_loading_them_and_a_read_is_no_edit():
    again = Reads()
    again.first = False
    run_pipeline(_scaled(), [(Reads(), "passes[0]", "stop"), (again, "passes[1]", "stop")], inputs=None)
    same = Rescales()
    same.same = True  # a new array with the same bytes: nothing changed
    run_pipeline(_scaled(), [(same, "passes[0]", "stop")], inputs=None)


@pytest.mark.parametrize("quiet", [Rescales, WritesInPlace])
def test_honesty_catches_a_quiet_edit_of_a_lazy_constant(quiet):
    with pytest.raises(PassError, match=rf"{quiet.name} \(passes\[1\]\) reported no change but modified"):
        run_pipeline(_scaled(), [(Reads(), "passes[0]", "stop"), (quiet(), "passes[1]", "stop")], inputs=None)
