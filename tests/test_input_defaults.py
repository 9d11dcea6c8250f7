"""Graph inputs with an initializer (a default a caller may override; every initializer before IR version 4): kept
as inputs through import, passes and export, never folded, their defaults written back; drop_initializer_inputs
makes them constants on request."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.core.errors import UserError
from graphopt.core.ir import op_counts, to_graph, to_model
from graphopt.core.pass_infra import get_pass
from graphopt.testing import assert_pass_unchanged, assert_pass_verified, run_pass

FoldConstants = get_pass("fold_constants")
Drop = get_pass("drop_initializer_inputs")
W = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096  # 16 KiB: held out of protobuf as a weight


def _model(ir_version: int, all_inputs: bool, opset: int = 13) -> onnx.ModelProto:
    """y = x @ (W + C) + C * C, with W an input with an initializer (and C too when ``all_inputs``, as IR 3 has
    it)."""
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.full((64,), 2, np.float32), "C")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
              helper.make_tensor_value_info("W", TensorProto.FLOAT, [64, 64])]
    if all_inputs:
        inputs.append(helper.make_tensor_value_info("C", TensorProto.FLOAT, [64]))
    nodes = [helper.make_node("Add", ["W", "C"], ["wc"]), helper.make_node("Mul", ["C", "C"], ["cc"]),
             helper.make_node("MatMul", ["x", "wc"], ["xw"]), helper.make_node("Add", ["xw", "cc"], ["y"])]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]


def _inputs(model: onnx.ModelProto) -> list[str]:
    return [i.name for i in model.graph.input]


def test_an_input_with_an_initializer_stays_an_overridable_input():
    model = _model(8, all_inputs=False)
    out, result = assert_pass_verified(model, FoldConstants(), shape=[2, 64])
    assert _inputs(out) == ["x", "W"]
    assert op_counts(out) == {"Add": 2, "MatMul": 1}  # C * C folded; W + C not: W may be fed
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    other = np.ones((64, 64), np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x, "W": other}), _run(model, {"x": x, "W": other}))
    np.testing.assert_array_equal(_run(out, {"x": x}), _run(model, {"x": x}))  # its default written back


def test_ir3_models_keep_every_input_and_stay_valid():
    model = _model(3, all_inputs=True, opset=7)
    result = assert_pass_unchanged(model, FoldConstants())  # every initializer is an input: nothing is constant
    out, result = assert_pass_verified(model, Drop(), shape=[2, 64])
    assert result.stats == {"dropped": 2, "inputs": ["W", "C"]}
    assert _inputs(out) == ["x"] and out.ir_version == 4  # the first IR version with initializers that are no inputs
    folded, _ = assert_pass_verified(out, FoldConstants(), shape=[2, 64])
    assert op_counts(folded) == {"MatMul": 1, "Add": 1}


def test_drop_takes_names_and_refuses_unknown_ones():
    model = _model(8, all_inputs=False)
    out, result = assert_pass_verified(model, Drop(names=["W"]), shape=[2, 64])
    assert _inputs(out) == ["x"] and [t.name for t in out.graph.initializer if t.name == "W"] == ["W"]
    with pytest.raises(UserError, match="'x', a graph input without an initializer"):
        run_pass(model, Drop(names=["x"]))
    with pytest.raises(UserError, match=r"'w', not a graph input \(valid: W\)"):
        run_pass(model, Drop(names=["w"]))
    assert_pass_unchanged(out, Drop())


def test_an_unread_input_with_an_initializer_survives_a_round_trip():
    model = _model(8, all_inputs=False)
    model.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [3]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 3], np.float32), "unused"))
    out = to_model(to_graph(model))
    assert _inputs(out) == ["x", "W", "unused"]
    assert {t.name for t in out.graph.initializer} == {"W", "C", "unused"}
    onnx.checker.check_model(out, full_check=True)


def test_a_subgraph_reading_the_input_reads_the_input():
    then = helper.make_graph([helper.make_node("Neg", ["W"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [64, 64])])
    other = helper.make_graph([helper.make_node("Abs", ["W"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [64, 64])])
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])], [numpy_helper.from_array(W, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    graph = to_graph(model)
    read = [t for n in graph.nodes for sub in n.subgraphs() for m in sub.nodes for t in m.inputs]
    assert all(t is graph.inputs[1] for t in read)
    out = to_model(graph)
    assert _inputs(out) == ["c", "W"]
    feeds = {"c": np.array(True), "W": np.ones((64, 64), np.float32)}
    np.testing.assert_array_equal(_run(out, feeds), -np.ones((64, 64), np.float32))


def test_apply_keeps_the_input_through_the_pipeline(tmp_path):
    from graphopt.commands.apply import apply_recipe
    from graphopt.commands.recipe import load_recipe

    model = _model(8, all_inputs=False)
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text(f"name: defaults\nmodel:\n  onnx: {tmp_path / 'm.onnx'}\n"
                                     "input:\n  name: x\n  shape: [2, 64]\npasses:\n  - pass: fold_constants\n")
    report = apply_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", progress=lambda m: None)
    assert report["passes"][0]["status"] == "applied" and report["final_verify"]["max_abs"] == 0.0
    out = onnx.load(tmp_path / "out" / "model.onnx")
    assert _inputs(out) == ["x", "W"]
    np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "W")),
                                  W)


def test_simplify_leaves_such_inputs_to_the_caller():
    model = _model(8, all_inputs=False)
    out, result = assert_pass_verified(model, get_pass("simplify")(), shape=[2, 64])
    assert _inputs(out) == ["x", "W"]  # onnxsim folds every initializer it sees: it was shown a plain input
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    other = np.ones((64, 64), np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x, "W": other}), _run(model, {"x": x, "W": other}))
