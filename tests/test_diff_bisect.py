"""When numerics break: the name map traces tensors across passes, ``graphopt diff`` names the first divergent
tensor (in memory-bounded batches), ``graphopt bisect`` names the pass that broke numerics and saves the smallest
subgraph that reproduces the difference in onnxruntime on its own."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from graphopt.commands.apply import apply_recipe
from graphopt.commands.bisect import bisect_recipe
from graphopt.commands.cli import main
from graphopt.commands.diff import seeded_feeds
from graphopt.core.divergence import diff_models
from graphopt.core.errors import VerificationFailed
from graphopt.core.ir import const_value, make_name
from graphopt.core.name_map import pass_name_map, summarize
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.commands.recipe import load_recipe
from graphopt.core.tolerance import Tolerance
from graphopt.testing import model_from_text

GRAPH = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 3, 4, 4] x) => (float[N, 5] y) {
    scale = Constant<value = float[1] {0.5}>()
    h = Mul(x, scale)
    bias = Constant<value = float[4] {0.1, -0.2, 0.3, 0.0}>()
    a = Add(h, bias)
    r = Relu(a)
    s = Softmax<axis=-1>(r)
    shape = Constant<value = int64[2] {0, 48}>()
    f = Reshape(s, shape)
    w = Constant<value = float[48, 5] {""" + ", ".join(str((i % 9) / 9.0 - 0.4) for i in range(240)) + """}>()
    y = MatMul(f, w)
}"""

TOL = Tolerance(max_abs=1e-5, max_rel=None, cosine=0.99999, top1_agreement=None)


@register_pass("test_rebuild_add")
class RebuildAdd(Pass):
    """Test-only, correct: rebuilds every Add as a new node writing a new tensor, and declares the rename."""

    def run(self, graph: gs.Graph) -> PassResult:
        renamed = {}
        for node in [n for n in graph.nodes if n.op == "Add" and not n.outputs[0].name.endswith("_fused")]:
            old = node.outputs[0]
            new = gs.Variable(make_name(graph, f"{old.name}_fused"), dtype=old.dtype, shape=old.shape)
            for consumer in list(old.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is old:
                        consumer.inputs[i] = new
            graph.nodes.append(gs.Node("Add", make_name(graph, f"{node.name}_fused"), {}, list(node.inputs), [new]))
            node.outputs.clear()
            renamed[new.name] = old.name
        return PassResult(bool(renamed), {"rebuilt": len(renamed)}, renamed=renamed)


@register_pass("test_nudge_bias")
class NudgeBias(Pass):
    """Test-only, deliberately wrong: adds 0.25 to the constant operand of every Add (a bad constant fold)."""

    def run(self, graph: gs.Graph) -> PassResult:
        n = 0
        for node in [n for n in graph.nodes if n.op == "Add"]:
            for i, t in enumerate(node.inputs):
                value = const_value(t)
                if value is not None:
                    node.inputs[i] = gs.Constant(make_name(graph, "bias_nudged"), (value + 0.25).astype(value.dtype))
                    n += 1
        return PassResult(n > 0, {"nudged": n})


@register_pass("test_nudge_weight")
class NudgeWeight(Pass):
    """Test-only, deliberately wrong: adds 0.5 to one element of the weight of the MatMul named mm2 (a copy: the
    input graph's arrays are shared)."""

    def run(self, graph: gs.Graph) -> PassResult:
        node = next(n for n in graph.nodes if n.name == "mm2")
        value = const_value(node.inputs[1]).copy()
        value[5, 7] += 0.5
        node.inputs[1] = gs.Constant(make_name(graph, "w2_nudged"), value)
        return PassResult(True, {"nudged": 1})


@register_pass("test_crash_for_bisect")
class Crash(Pass):
    """Test-only: a pass that raises."""

    def run(self, graph: gs.Graph) -> PassResult:
        raise RuntimeError("boom")


@pytest.fixture
def workdir(tmp_path):
    onnx.save(model_from_text(GRAPH), tmp_path / "tiny.onnx")
    return tmp_path


def recipe(workdir, passes: list[str], on_fail: str = "stop"):
    path = workdir / "tiny.yaml"
    body = "\n".join(f"  - pass: {p}" + (f"\n    on_fail: {on_fail}" if p == "test_nudge_bias" else "")
                     for p in passes)
    path.write_text(textwrap.dedent("""\
    name: tiny
    model: {onnx: tiny.onnx}
    input: {name: x, shape: [2, 3, 4, 4]}
    passes:
    """) + body + "\nverify: {samples: 2, tolerance: {max_abs: 1.0e-5, cosine: 0.99999}}\n")
    return load_recipe(path)


GOOD = ["infer_shapes", "test_rebuild_add", "softmax_transpose"]
BROKEN = ["infer_shapes", "test_rebuild_add", "test_nudge_bias", "softmax_transpose"]


def _run(path, feed):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_name_map_traces_kept_renamed_and_output_tensors(workdir):
    report = apply_recipe(recipe(workdir, GOOD), workdir / "run", progress=lambda m: None)
    rebuild, softmax = report["passes"][1], report["passes"][2]
    assert rebuild["name_map"] == {"kept": 10, "renamed": 1, "replaced": 0, "new": 0}
    # softmax_transpose: the softmax output keeps its name, declared through PassResult.renamed; the
    # transposed tensors around the softmax are new.
    assert softmax["name_map"]["new"] >= 2 and softmax["name_map"]["replaced"] == 0
    data = json.loads((workdir / "run" / "report.json").read_text())
    assert data["name_map"]["a_fused"] == "a" and data["name_map"]["y"] == "y" and data["name_map"]["r"] == "r"
    assert data["name_map"]["s"] == "s"  # the softmax output, now produced by a Transpose, traced via renamed
    before = {"x": "", "h": "Mul", "a": "Add"}
    after = {"x": "", "h": "Mul", "a": "Sub", "a2": "Add"}
    mapping = pass_name_map(before, after, {"a2": "a", "gone": "h"})
    assert mapping == {"x": "x", "h": "h", "a2": "a"}
    assert summarize(mapping, before, after) == {"kept": 2, "renamed": 1, "replaced": 0, "new": 1}


def test_pipeline_failure_names_the_first_divergent_tensor(workdir):
    with pytest.raises(VerificationFailed) as e:
        apply_recipe(recipe(workdir, BROKEN), workdir / "run", progress=lambda m: None)
    msg = str(e.value)
    assert "pass test_nudge_bias (passes[2]) broke numerics" in msg
    assert "first divergent tensor 'a_fused' from Add node" in msg
    report = apply_recipe(recipe(workdir, BROKEN, on_fail="skip"), workdir / "run", progress=lambda m: None)
    first = report["passes"][2]["verify"]["first_divergent"]
    assert report["passes"][2]["status"] == "skipped"
    assert (first["name"], first["op"]) == ("a_fused", "Add") and first["max_abs"] == pytest.approx(0.25, rel=1e-3)


@pytest.fixture
def broken_run(workdir):
    """The broken recipe applied without verification: its model.onnx and report.json (with the name map)."""
    apply_recipe(recipe(workdir, BROKEN), workdir / "run", verify=False, progress=lambda m: None)
    return workdir / "tiny.onnx", workdir / "run" / "model.onnx", workdir / "run" / "report.json"


def test_diff_names_the_first_divergent_tensor_through_the_name_map(broken_run, tmp_path, capsys):
    a, b, report = broken_run
    png = tmp_path / "diff.png"
    code = main(["diff", str(a), str(b), "--map", str(report), "--plot", str(png), "--max-abs", "1e-5",
                 "--json", str(tmp_path / "diff.json")])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "first divergent tensor 'a_fused' ('a' in A) from Add node" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "diff.json").read_text())
    assert data["first_divergent"]["name"] == "a_fused" and data["compared"] >= 4
    assert [t["name"] for t in data["tensors"]][:2] == ["h", "a_fused"]
    # Without the map the renamed tensor is not shared: the first divergence is seen one node later.
    assert main(["diff", str(a), str(b), "--plot", "", "--max-abs", "1e-5"]) == 1
    assert "first divergent tensor 'r' from Relu node" in capsys.readouterr().out
    # A model against itself: nothing diverges.
    assert main(["diff", str(a), str(a), "--plot", ""]) == 0


def test_diff_in_tiny_memory_batches_gives_the_same_result(broken_run):
    a, b, report = broken_run
    name_map = json.loads(report.read_text())["name_map"]
    feeds = seeded_feeds(onnx.load(str(a)), samples=2, seed=0)
    whole = diff_models(a, b, feeds, tolerance=TOL, name_map=name_map)
    tiny = diff_models(a, b, feeds, tolerance=TOL, name_map=name_map, budget_mb=1e-6)  # one tensor per batch
    assert whole.batches == 1 and whole.sessions == 2
    assert tiny.batches == len(tiny.tensors) > 3 and tiny.sessions == 2 * tiny.batches
    assert tiny.tensors == whole.tensors
    assert tiny.first.name == "a_fused"
    first = diff_models(a, b, feeds, tolerance=TOL, name_map=name_map, budget_mb=1e-6, stop_at_first=True)
    assert first.first == whole.first and first.stopped_early and first.batches < tiny.batches


def _two_layer(w2_nudge: float) -> onnx.ModelProto:
    """x -> MatMul(w1) -> Relu -> MatMul(w2): weights of 16 KiB, held as arrays and fed to onnxruntime in place."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((64, 64)).astype(np.float32)
    w2 = rng.standard_normal((64, 64)).astype(np.float32)
    w2[5, 7] += w2_nudge
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), onnx.helper.make_node("Relu", ["h"], ["r"]),
         onnx.helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")], "two_layer",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)


def test_diff_of_large_and_external_weights_shares_the_equal_ones(tmp_path, capsys, monkeypatch):
    import tempfile

    from graphopt.core.divergence import SubgraphRunner

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where any temporary file would go
    a, b = tmp_path / "a.onnx", tmp_path / "b" / "b.onnx"
    onnx.save(_two_layer(0.0), a)
    b.parent.mkdir()
    onnx.save(_two_layer(0.5), b, save_as_external_data=True, location="b.data", size_threshold=1024)
    assert main(["diff", str(a), str(b), "--plot", "", "--shape", "2,64"]) == 1
    out = capsys.readouterr().out
    assert "first divergent tensor 'y' from MatMul node 'mm2'" in out and "compared 3 of 3" in out
    ra = SubgraphRunner(a, "model A")
    rb = SubgraphRunner(b, "model B", reuse=ra.split.weights)
    assert rb.split.weights["w1"] is ra.split.weights["w1"] and rb.split.weights["w2"] is not ra.split.weights["w2"]
    assert list(scratch.iterdir()) == []  # nothing staged on disk


def test_pipeline_locates_the_divergence_above_the_external_data_threshold(workdir, monkeypatch):
    """Over the threshold the pipeline diffs the graphs' shared weight arrays (it used to skip the diff)."""
    monkeypatch.setenv("GRAPHOPT_EXTERNAL_DATA_THRESHOLD", "1")
    report = apply_recipe(recipe(workdir, BROKEN, on_fail="skip"), workdir / "run", progress=lambda m: None)
    first = report["passes"][2]["verify"]["first_divergent"]
    assert (first["name"], first["op"]) == ("a_fused", "Add")


def test_bisect_names_the_pass_and_saves_a_subgraph_that_reproduces(workdir, capsys):
    out = workdir / "bisect"
    report = bisect_recipe(recipe(workdir, BROKEN), out, progress=lambda m: None)
    r = report["responsible"]
    assert (r["name"], r["where"], r["reason"]) == ("test_nudge_bias", "passes[2]", "broke numerics")
    assert [p["status"] for p in report["passes"]] == ["applied", "applied", "responsible"]
    assert report["first_divergent"]["name"] == "a_fused"
    sub = report["subgraph"]
    # The bias is a Constant node before the pass and an initializer after it.
    assert sub["before"]["ops"] == ["Constant", "Add"] and sub["after"]["ops"] == ["Add"]
    assert sub["before"]["inputs"] == sub["after"]["inputs"] == ["h"]
    assert sub["check"]["reproduces"]
    assert sorted(p.name for p in out.iterdir()) == sorted([".graphopt", *report["files"]])  # graphopt.core.outputs
    # On its own: only the saved files, fresh sessions.
    outs = {}
    for side in ("before", "after"):
        model = onnx.load(str(out / f"{side}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert [n.op_type for n in model.graph.node if n.op_type != "Constant"] == ["Add"]
        with np.load(out / f"{side}_inputs.npz") as data:
            outs[side] = _run(out / f"{side}.onnx", {k: data[k] for k in data.files})
    assert np.abs(outs["before"] - outs["after"]).max() == pytest.approx(0.25, rel=1e-4)
    # The CLI: exit 1, names the pass.
    assert main(["bisect", str(workdir / "tiny.yaml"), "-o", str(workdir / "b2")]) == 1
    text = capsys.readouterr().out
    assert "responsible: pass test_nudge_bias (passes[2]) broke numerics" in text
    assert "reproduces on its own in onnxruntime: yes" in text


def test_bisect_cuts_a_subgraph_with_its_large_weights(tmp_path):
    """Weights held as arrays are written into the saved subgraphs (only the ones they read)."""
    onnx.save(_two_layer(0.0), tmp_path / "two.onnx")
    path = tmp_path / "two.yaml"
    path.write_text(textwrap.dedent("""\
    name: two
    model: {onnx: two.onnx}
    input: {name: x, shape: [2, 64]}
    passes: [test_nudge_weight]
    verify: {samples: 2, tolerance: {max_abs: 1.0e-5, cosine: 0.99999}}
    """))
    report = bisect_recipe(load_recipe(path), tmp_path / "b", progress=lambda m: None)
    assert report["responsible"]["name"] == "test_nudge_weight" and report["first_divergent"]["name"] == "y"
    assert report["subgraph"]["check"]["reproduces"]
    before, after = (onnx.load(str(tmp_path / "b" / f"{side}.onnx")) for side in ("before", "after"))
    assert [i.name for i in before.graph.initializer] == ["w2"]
    w2 = onnx.numpy_helper.to_array(before.graph.initializer[0])
    w2_after = onnx.numpy_helper.to_array(after.graph.initializer[0])
    assert np.array_equal(w2, onnx.numpy_helper.to_array(_two_layer(0.0).graph.initializer[1]))
    assert w2_after[5, 7] == pytest.approx(w2[5, 7] + 0.5) and w2_after[0, 0] == w2[0, 0]


def test_bisect_of_a_good_recipe_finds_nothing(workdir, capsys):
    assert main(["bisect", str(recipe(workdir, GOOD).path), "-o", str(workdir / "b")]) == 0
    assert "nothing to bisect" in capsys.readouterr().out
    assert not (workdir / "b").exists()


def test_bisect_names_a_crashing_pass(workdir):
    report = bisect_recipe(recipe(workdir, ["test_rebuild_add", "test_crash_for_bisect", "softmax_transpose"]),
                           workdir / "b", progress=lambda m: None)
    assert report["responsible"] == {"reason": "raised", "detail": "RuntimeError: boom", "index": 2,
                                     "name": "test_crash_for_bisect", "where": "passes[1]"}
    assert report["files"] == ["bisect.json"] and (workdir / "b" / "bisect.json").is_file()


def test_diff_bad_input_is_a_user_error(workdir, capsys):
    a = str(workdir / "tiny.onnx")
    assert main(["diff", a, str(workdir / "missing.onnx"), "--plot", ""]) == 2
    assert "missing.onnx: no such file" in capsys.readouterr().err
    (workdir / "bad.json").write_text("[1, 2]")
    assert main(["diff", a, a, "--map", str(workdir / "bad.json"), "--plot", ""]) == 2
    assert "--map" in capsys.readouterr().err
    assert main(["diff", a, a, "--budget-mb", "0", "--plot", ""]) == 2


IDS_GRAPH = """
<ir_version: 8, opset_import: ["" : 13]>
g (int64[N, 4] ids, float[N, 4] x) => (float[N, 4] y, int64[N] largest) {
    largest = ReduceMax<keepdims=0, axes=[1]>(ids)
    lf = Cast<to=1>(largest)
    ax = Constant<value = int64[1] {1}>()
    l2 = Unsqueeze(lf, ax)
    y = Add(x, l2)
}"""


@register_pass("test_off_by_one_ids")
class OffByOneIds(Pass):
    """Test-only, deliberately wrong: lowers the ids the ReduceMax reads by 1 (an integer tensor off by one)."""

    def run(self, graph: gs.Graph) -> PassResult:
        node = next(n for n in graph.nodes if n.op == "ReduceMax")
        lowered = gs.Variable(make_name(graph, "ids_lowered"), dtype=np.int64)
        graph.nodes.append(gs.Node("Sub", inputs=[node.inputs[0], gs.Constant(make_name(graph, "one"),
                                                                                np.array([1], np.int64))],
                                   outputs=[lowered]))
        node.inputs[0] = lowered
        return PassResult(True, {})


def test_bisect_of_an_integer_divergence_with_several_inputs(tmp_path, capsys):
    """Two inputs (int64 ids, float x), loose float tolerances: the integer output and tensor differ by one, which
    is a divergence; the saved subgraph takes the int64 ids and reproduces it exactly."""
    onnx.save(model_from_text(IDS_GRAPH), tmp_path / "ids.onnx")
    path = tmp_path / "ids.yaml"
    path.write_text(textwrap.dedent("""\
    name: ids
    model: {onnx: ids.onnx}
    inputs:
      - {name: ids, shape: [3, 4], range: [10, 20]}
    passes: [infer_shapes, test_off_by_one_ids]
    verify: {samples: 2, tolerance: {max_abs: 100, cosine: null, top1_agreement: null}}
    """))
    out = tmp_path / "b"
    assert main(["bisect", str(path), "-o", str(out)]) == 1
    text = capsys.readouterr().out
    assert "responsible: pass test_off_by_one_ids (passes[1]) broke numerics: output 'largest': 6 of 6" in text
    assert ("first divergent tensor 'largest' from ReduceMax node" in text
            and "6 element(s) differ (max_abs=1; integer tensors must be equal)" in text)  # 2 feeds of 3
    assert "reproduces on its own in onnxruntime: yes (3 of 3 elements differ)" in text
    report = json.loads((out / "bisect.json").read_text())
    assert [i["name"] for i in report["inputs"]] == ["ids", "x"]
    sub = report["subgraph"]
    assert sub["before"]["input_types"] == sub["after"]["input_types"] == {"ids": "int64 [3, 4]"}
    assert sub["check"]["exact"] == "integer" and sub["check"]["mismatches"] == 3
    with np.load(out / "after_inputs.npz") as data:
        ids = data["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 10 and ids.max() < 20
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "repro.py"], cwd=out, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "3 of 3 elements differ (int64 outputs must be equal)"
