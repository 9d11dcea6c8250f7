"""The pipeline: per-pass verification catches and names a pass that breaks numerics; on_fail: skip drops it;
outputs are all-or-nothing; apply writes the run directory and report."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from graphopt.commands.apply import apply_recipe
from graphopt.core.errors import PassError, VerificationFailed
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.commands.recipe import load_recipe
from graphopt.testing import model_from_text

TINY = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 2, 3, 4] x) => (float[N, 5] y) {
    m = Mul(x, x)
    s = Softmax<axis=-1>(m)
    shape = Constant<value = int64[2] {0, 24}>()
    f = Reshape(s, shape)
    w = Constant<value = float[24, 5] {""" + ", ".join(str((i % 7) / 7.0 - 0.4) for i in range(120)) + """}>()
    y = MatMul(f, w)
}"""


@register_pass("test_break_softmax_axis")
class BreakSoftmaxAxis(Pass):
    """Test-only: a deliberately wrong pass that moves every Softmax to axis 2."""

    def run(self, graph: gs.Graph) -> PassResult:
        n = 0
        for node in graph.nodes:
            if node.op == "Softmax":
                node.attrs["axis"] = 2
                n += 1
        return PassResult(n > 0, {"broken": n})


@register_pass("test_raise")
class Raise(Pass):
    """Test-only: a pass that crashes."""

    def run(self, graph: gs.Graph) -> PassResult:
        raise RuntimeError("boom")


@pytest.fixture
def workdir(tmp_path):
    onnx.save(model_from_text(TINY), tmp_path / "tiny.onnx")
    return tmp_path


def recipe(workdir, passes: str, extra: str = ""):
    path = workdir / "tiny.yaml"
    path.write_text(textwrap.dedent(f"""
    name: tiny
    model: {{onnx: tiny.onnx}}
    input: {{name: x, shape: [2, 2, 3, 4]}}
    passes:
    {textwrap.indent(textwrap.dedent(passes), '    ').strip()}
    verify: {{samples: 2, tolerance: {{max_abs: 1.0e-5, cosine: 0.99999}}}}
    atc: {{batch_sizes: [1, 4]}}
    """) + extra)
    return load_recipe(path)


def test_apply_writes_run_dir_and_report(workdir):
    out = workdir / "run"
    report = apply_recipe(recipe(workdir, "- simplify\n- pass: softmax_transpose\n"), out, progress=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [".graphopt", "atc.sh", "atc_jobs.json", "model.onnx",
                                                     "report.json", "report.md"]
    data = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in data["passes"]] == ["simplify", "softmax_transpose"]
    assert all(p["verify"]["passed"] for p in data["passes"])
    assert data["ops_before"]["Softmax"] == 1 and data["ops_after"]["Transpose"] == 2
    assert data["final_verify"]["passed"] and data["final_verify"]["max_abs"] <= 1e-5
    # What verification cost: each changed pass's session, and at the end all of them with the input model's.
    changed = [p["verify"]["onnxruntime_seconds"] for p in data["passes"] if p["changed"]]
    assert changed and all(s > 0 for s in changed)
    assert data["final_verify"]["onnxruntime_seconds"] > sum(changed) - 1e-3 * len(changed)
    assert report["recipe"]["name"] == "tiny"
    md = (out / "report.md").read_text()
    assert "| 2 | softmax_transpose | applied" in md
    atc = (out / "atc.sh").read_text()
    assert "--input_shape=x:4,2,3,4" in atc and "--output=tiny_bs1" in atc
    onnx.checker.check_model(onnx.load(out / "model.onnx"))


def test_broken_pass_is_caught_and_named(workdir):
    out = workdir / "run"
    r = recipe(workdir, "- simplify\n- test_break_softmax_axis\n- pass: softmax_transpose\n")
    with pytest.raises(VerificationFailed) as e:
        apply_recipe(r, out, progress=lambda m: None)
    assert "pass test_break_softmax_axis (passes[1]) broke numerics: output 'y'" in str(e.value)
    assert not out.exists(), "a failed run must not ship a model"


def test_failed_run_keeps_previous_complete_result(workdir):
    out = workdir / "run"
    apply_recipe(recipe(workdir, "- simplify\n"), out, progress=lambda m: None)
    before = (out / "model.onnx").read_bytes()
    with pytest.raises(VerificationFailed):
        apply_recipe(recipe(workdir, "- test_break_softmax_axis\n"), out, progress=lambda m: None)
    assert (out / "model.onnx").read_bytes() == before
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".run")] == []


def test_on_fail_skip_drops_the_pass_and_goes_on(workdir):
    out = workdir / "run"
    r = recipe(workdir, "- pass: test_break_softmax_axis\n  on_fail: skip\n- softmax_transpose\n")
    report = apply_recipe(r, out, progress=lambda m: None)
    statuses = [(p["name"], p["status"]) for p in report["passes"]]
    assert statuses == [("test_break_softmax_axis", "skipped"), ("softmax_transpose", "applied")]
    assert report["passes"][0]["verify"]["passed"] is False
    model = onnx.load(out / "model.onnx")
    axes = [a.i for n in model.graph.node if n.op_type == "Softmax" for a in n.attribute if a.name == "axis"]
    assert axes == [1]  # the broken axis-2 edit was rolled back; softmax_transpose then applied


def test_crashing_pass_names_itself_and_its_predecessors(workdir):
    with pytest.raises(PassError,
                       match=r"pass test_raise \(passes\[1\]\) raised RuntimeError: boom \(after simplify\)"):
        apply_recipe(recipe(workdir, "- simplify\n- test_raise\n"), workdir / "run", progress=lambda m: None)


def test_no_verify_runs_passes_without_comparison(workdir):
    report = apply_recipe(recipe(workdir, "- test_break_softmax_axis\n"), workdir / "run", verify=False,
                          progress=lambda m: None)
    assert report["passes"][0]["verify"] is None and report["final_verify"] is None


def test_input_model_is_never_modified(workdir):
    src = workdir / "tiny.onnx"
    before = src.read_bytes()
    apply_recipe(recipe(workdir, "- simplify\n- softmax_transpose\n"), workdir / "run", progress=lambda m: None)
    assert src.read_bytes() == before


def test_reference_outputs_computed_beside_the_first_pass(workdir, monkeypatch):
    """The input model's outputs come from a background thread while the first pass runs, and each pass's from
    another while the next pass runs; a model onnxruntime cannot run says so (not the first pass's own failure); a
    run where no pass changes anything still compares the output with them."""
    import threading

    import graphopt.core.pass_verification as verification
    from graphopt.core.errors import UserError

    threads = []
    real = verification._outputs

    def outputs(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(verification, "_outputs", outputs)
    report = apply_recipe(recipe(workdir, "- softmax_transpose\n"), workdir / "run", progress=lambda m: None)
    assert threads == ["graphopt-reference", "graphopt-verify"] and report["passes"][0]["verify"]["passed"]
    report = apply_recipe(recipe(workdir, "- gelu_precision\n"), workdir / "run", progress=lambda m: None)
    assert report["passes"][0]["status"] == "unchanged" and report["final_verify"]["passed"]

    def cannot_run(*args):
        raise UserError("onnxruntime cannot load the model: test")

    monkeypatch.setattr(verification, "_outputs", cannot_run)
    with pytest.raises(UserError, match="cannot load the model: test"):
        apply_recipe(recipe(workdir, "- test_raise\n"), workdir / "run", progress=lambda m: None)


# ---------------------------------------------------------------------------------------------------------------
# A broken last pass, and passes that change an output's shape or drop it: each is the pass's failure (exit 1,
# naming it), never blamed on the input


def test_broken_last_pass_is_named_with_its_first_divergent_tensor(workdir):
    """The last pass's own check must fire: the final whole-model check would also fail, but it names no pass."""
    r = recipe(workdir, "- simplify\n- test_break_softmax_axis\n")
    with pytest.raises(VerificationFailed) as e:
        apply_recipe(r, workdir / "run", progress=lambda m: None)
    message = str(e.value)
    assert message.startswith("pass test_break_softmax_axis (passes[1]) broke numerics: output 'y': max_abs="), message
    # TINY's Softmax writes 's': the first tensor whose values differ after the axis moved
    assert "; first divergent tensor 's' from Softmax node" in message, message
    assert "together drift" not in message


@register_pass("test_widen_output")
class WidenOutput(Pass):
    """Test-only: appends a zero column to the graph output (its per-sample shape changes from [2, 5] to [2, 6])."""

    def run(self, graph: gs.Graph) -> PassResult:
        import numpy as np

        y = graph.outputs[0]
        inner = gs.Variable("y_inner", dtype=y.dtype)
        producer = next(n for n in graph.nodes if y in n.outputs)
        producer.outputs = [inner]
        zeros = gs.Constant("zero_column", np.zeros((2, 1), np.float32))
        graph.nodes.append(gs.Node("Concat", inputs=[inner, zeros], outputs=[y], attrs={"axis": 1}))
        y.shape = [2, 6]
        return PassResult(True, {})


@register_pass("test_rename_output")
class RenameOutput(Pass):
    """Test-only: renames the graph output 'y' (the model's interface loses it)."""

    def run(self, graph: gs.Graph) -> PassResult:
        graph.outputs[0].name = "renamed"
        return PassResult(True, {})


@pytest.mark.parametrize("bad_pass, message", [
    ("test_widen_output", "pass test_widen_output (passes[1]) broke numerics: output 'y' has shape [2, 6] per "
                          "sample, the graph before it gave [2, 5]"),
    ("test_rename_output", "pass test_rename_output (passes[1]) broke numerics: output 'y' is missing (the graph "
                           "before it gave it; the outputs now: 'renamed')"),
])
def test_changed_or_missing_output_is_the_pass_failure_through_the_cli(workdir, capsys, bad_pass, message):
    from graphopt.commands.cli import main

    recipe(workdir, f"- simplify\n- {bad_pass}\n")  # writes tiny.yaml
    code = main(["apply", str(workdir / "tiny.yaml"), "-o", str(workdir / "run")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("graphopt: error: ")]
    assert code == 1, err
    assert len(errors) == 1 and errors[0].startswith(f"graphopt: error: {message}"), errors
    assert not (workdir / "run").exists()


IF_MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (bool c, float[2] x) => (float[2] y) {
    y = If(c) <then_branch = t () => (float[2] r) { r = Relu(x) },
               else_branch = e () => (float[2] s) { s = Neg(x) }>
}"""


@register_pass("test_edit_inside_if_quietly")
class EditInsideIfQuietly(Pass):
    """Test-only: turns the If's then-branch Relu into Abs and reports no change."""

    def run(self, graph: gs.Graph) -> PassResult:
        branch = next(n for n in graph.nodes if n.op == "If").attrs["then_branch"]
        branch.nodes[0].op = "Abs"
        return PassResult(False)


def test_unreported_edit_inside_a_subgraph_is_caught():
    """The honesty check hashes subgraphs by content: an edit inside an If branch is an edit."""
    from graphopt.core.pipeline import run_pipeline

    with pytest.raises(PassError, match=r"test_edit_inside_if_quietly \(passes\[0\]\) reported no change but "
                                        "modified the graph"):
        run_pipeline(model_from_text(IF_MODEL), [(EditInsideIfQuietly(), "passes[0]", "stop")], inputs=None,
                     input_name=None)


@register_pass("test_refuse_on_purpose")
class RefuseOnPurpose(Pass):
    """Test-only: raises a PassError with its own reason, as simplify does when onnxsim fails."""

    def run(self, graph: gs.Graph) -> PassResult:
        raise PassError("pass test_refuse_on_purpose: the tool it wraps failed: because")


def test_deliberate_pass_error_is_raised_as_the_pass_wrote_it(workdir):
    with pytest.raises(PassError) as info:
        apply_recipe(recipe(workdir, "- test_refuse_on_purpose\n"), workdir / "run", progress=lambda m: None)
    assert str(info.value) == "pass test_refuse_on_purpose: the tool it wraps failed: because"
    assert info.value.__cause__ is None  # not the wrapper of a raw exception


def test_deliberate_pass_error_honours_on_fail_skip(workdir):
    report = apply_recipe(recipe(workdir, "- {pass: test_refuse_on_purpose, on_fail: skip}\n- softmax_transpose\n"),
                          workdir / "run", progress=lambda m: None)
    assert [p["status"] for p in report["passes"]] == ["skipped", "applied"]
    assert "the tool it wraps failed" in report["passes"][0]["stats"]["error"]


def test_string_weights_survive_a_pass_that_changes_nothing():
    """The honesty fingerprint must not load a string weight: onnx-graphsurgeon cannot write a loaded string array
    back (raw_data), so the untouched model could not be saved (the ONNX backend's LabelEncoder tensor-mapping
    test, under every pass)."""
    from graphopt.passes.softmax_transpose import SoftmaxTranspose
    from graphopt.core.pipeline import run_pipeline

    keys = onnx.helper.make_tensor("keys", onnx.TensorProto.STRING, [2], [b"a", b"b"])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Equal", ["x", "keys"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.BOOL, [2])], initializer=[keys])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    result = run_pipeline(model, [(SoftmaxTranspose(), "passes[0]", "stop")], inputs=None, input_name=None)
    assert not result.records[0].changed
    out = result.model
    assert onnx.numpy_helper.to_array(out.graph.initializer[0]).tolist() == ["a", "b"]


# ---------------------------------------------------------------------------------------------------------------
# The pass manager: instruments around each pass, requirements a pass declares, verification beside the next pass


def test_custom_instrument_sees_every_pass_and_skip():
    from graphopt.core.instruments import (Honesty, Instrument, NameMapping, Normalize, OnFailSkip, PipelineRun,
                                           Timing)
    from graphopt.core.pass_verification import FinalCheck
    from graphopt.core.pipeline import PassManager
    from graphopt.core.model import Model
    from graphopt.passes.gelu_precision import GeluPrecision
    from graphopt.passes.softmax_transpose import SoftmaxTranspose

    seen = []

    class Recorder(Instrument):
        def before_run(self, run):
            seen.append(("before_run", len(run.steps)))

        def before_pass(self, ctx):
            seen.append(("before_pass", ctx.pass_.name))

        def after_pass(self, ctx):
            seen.append(("after_pass", ctx.pass_.name, ctx.result.changed, ctx.seconds > 0))

        def on_error(self, ctx, error):
            seen.append(("on_error", ctx.pass_.name, type(error).__name__))

        def on_skip(self, ctx, failure):
            seen.append(("on_skip", ctx.pass_.name, failure.summary))

        def after_run(self, run):
            seen.append(("after_run", [r.status for r in run.records]))

    steps = [(SoftmaxTranspose(), "passes[0]", "stop"), (Raise(), "passes[1]", "skip"),
             (GeluPrecision(), "passes[2]", "stop")]
    run = PipelineRun(Model.from_proto(model_from_text(TINY)), steps)
    PassManager([Timing(), Honesty(), Normalize(), NameMapping(), FinalCheck(), OnFailSkip(), Recorder()]).run(run)
    assert seen == [("before_run", 3),
                    ("before_pass", "softmax_transpose"), ("after_pass", "softmax_transpose", True, True),
                    ("before_pass", "test_raise"), ("on_error", "test_raise", "RuntimeError"),
                    ("on_skip", "test_raise", "raised RuntimeError: boom"),
                    ("before_pass", "gelu_precision"), ("after_pass", "gelu_precision", False, True),
                    ("after_run", ["applied", "skipped", "unchanged"])]
    assert run.model.has_snapshot and [n.op for n in run.graph.nodes].count("Transpose") == 2  # the skip kept it


def test_failure_verified_beside_the_next_pass_is_reported_before_that_pass_crashes(workdir):
    """Pass 1's outputs are computed while pass 2 runs; pass 2 crashing must not hide that pass 1 broke
    numerics (the run would have stopped before pass 2)."""
    with pytest.raises(VerificationFailed, match=r"pass test_break_softmax_axis \(passes\[0\]\) broke numerics"):
        apply_recipe(recipe(workdir, "- test_break_softmax_axis\n- test_raise\n"), workdir / "run",
                     progress=lambda m: None)


@register_pass("test_needs_calibration")
class NeedsCalibration(Pass):
    """Test-only: declares that it needs the calibration data and reports what it got."""

    requires = ("calibration",)
    calibration = None

    def run(self, graph: gs.Graph) -> PassResult:
        feeds, real_data = self.calibration
        return PassResult(False, {"feeds": None if feeds is None else len(feeds), "real_data": real_data})


@register_pass("test_undeclared_calibration")
class UndeclaredCalibration(Pass):
    """Test-only: has a ``calibration`` attribute but does not require it, so the pipeline leaves it alone."""

    calibration = "untouched"

    def run(self, graph: gs.Graph) -> PassResult:
        return PassResult(False, {"calibration": self.calibration})


@register_pass("test_needs_the_moon")
class NeedsTheMoon(Pass):
    """Test-only: requires something no pipeline supplies."""

    requires = ("moon",)

    def run(self, graph: gs.Graph) -> PassResult:
        return PassResult(False)


def test_calibration_is_supplied_to_the_passes_that_require_it():
    from graphopt.core.pipeline import run_pipeline

    model = model_from_text(TINY)
    feeds = [{"x": np.ones((2, 2, 3, 4), np.float32)}] * 3
    steps = [(NeedsCalibration(), "passes[0]", "stop"), (UndeclaredCalibration(), "passes[1]", "stop")]
    result = run_pipeline(model, steps, inputs=feeds, real_data=True)
    assert result.records[0].stats == {"feeds": 3, "real_data": True}
    assert result.records[1].stats == {"calibration": "untouched"}
    result = run_pipeline(model, steps[:1], inputs=None)
    assert result.records[0].stats == {"feeds": None, "real_data": False}


def test_a_requirement_the_pipeline_cannot_supply_stops_the_run_before_any_pass():
    from graphopt.core.pipeline import run_pipeline

    with pytest.raises(PassError, match=r"pass test_needs_the_moon \(passes\[1\]\) requires 'moon', which this "
                                        r"pipeline cannot supply \(it supplies: calibration\)"):
        run_pipeline(model_from_text(TINY), [(Raise(), "passes[0]", "stop"), (NeedsTheMoon(), "passes[1]", "stop")],
                     inputs=None)
