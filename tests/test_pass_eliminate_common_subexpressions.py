"""eliminate_common_subexpressions: duplicates merged (chains at once), random ops / subgraphs / custom ops kept,
graph outputs keep their names."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

CSE = get_pass("eliminate_common_subexpressions")


def _model(body: str, out: str = "float[N, 4] y") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 13, "custom" : 1]>
    g (float[N, 4] x) => ({out}) {{
        {body}
    }}"""


def test_duplicate_chains_merge_in_one_run():
    body = ("a = Relu(x)\n b = Relu(x)\n c = Mul(a, a)\n d = Mul(b, b)\n"
            " k1 = Constant<value = float[1] {2.0}>()\n k2 = Constant<value = float[1] {2.0}>()\n"
            " e = Add(c, k1)\n f = Add(d, k2)\n y = Sub(e, f)")
    out, result = assert_pass_verified(model_from_text(_model(body)), CSE(), tolerance=STRICT_FP32, shape=[2, 4])
    assert result.stats == {"rewritten": 4, "skipped": {}}
    assert op_counts(out) == {"Add": 1, "Constant": 1, "Mul": 1, "Relu": 1, "Sub": 1}


def test_attributes_and_constants_must_be_equal():
    body = ("a = Softmax<axis=0>(x)\n b = Softmax<axis=1>(x)\n k1 = Constant<value = float[1] {0.0}>()\n"
            " k2 = Constant<value = float[1] {-0.0}>()\n c = Add(a, k1)\n d = Add(b, k2)\n y = Sub(c, d)")
    result = assert_pass_unchanged(model_from_text(_model(body)), CSE())
    assert result.stats == {"rewritten": 0, "skipped": {}}


def test_random_ops_and_custom_ops_are_never_merged():
    body = ("r1 = RandomUniformLike(x)\n r2 = RandomUniformLike(x)\n c1 = custom.Op(x)\n c2 = custom.Op(x)\n"
            " y = Sub(r1, r2)\n z = Sub(c1, c2)")
    result = assert_pass_unchanged(model_from_text(_model(body, "float[N, 4] y, float[N, 4] z")), CSE())
    assert result.stats["skipped"] == {"random op": 1, "op of another domain": 1}


def test_nodes_with_subgraphs_are_never_merged():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2] x, bool c) => (float[2] y) {
        a = If(c) <then_branch = t () => (float[2] o) { o = Neg(x) },
                   else_branch = e () => (float[2] o2) { o2 = Abs(x) }>
        b = If(c) <then_branch = t2 () => (float[2] p) { p = Neg(x) },
                   else_branch = e2 () => (float[2] p2) { p2 = Abs(x) }>
        y = Sub(a, b)
    }"""
    assert_pass_unchanged(model_from_text(text), CSE())


def test_a_duplicate_read_inside_a_subgraph_is_rewired():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2] x, bool c) => (float[2] y) {
        a = Relu(x)
        b = Relu(x)
        y = If(c) <then_branch = t () => (float[2] o) { o = Neg(b) },
                   else_branch = e () => (float[2] o2) { o2 = Abs(a) }>
    }"""
    feeds = [{"x": np.array([1.0, -2.0], np.float32), "c": np.array(v)} for v in (True, False)]
    out, result = assert_pass_verified(model_from_text(text), CSE(), inputs=feeds)
    assert op_counts(out) == {"If": 1, "Relu": 1}


def test_graph_outputs_keep_their_names():
    body = "y = Relu(x)\n z = Relu(x)"
    out, result = assert_pass_verified(model_from_text(_model(body, "float[N, 4] y, float[N, 4] z")), CSE(),
                                       shape=[2, 4])
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [
        ("Relu", ["x"], ["y"]), ("Identity", ["y"], ["z"])]


def test_left_out_optional_outputs_are_never_rewired():
    # Two LSTMs computing Y_h only, and a third also Y: the first two merge, the third (outputs present differ)
    # does not; the empty output names ("") are never rewired.
    h, w, r = 2, np.ones((1, 8, 3), np.float32) * 0.1, np.ones((1, 8, 2), np.float32) * 0.2
    nodes = [oh.make_node("LSTM", ["x", "w", "r"], ["", "a"], hidden_size=h),
             oh.make_node("LSTM", ["x", "w", "r"], ["", "b"], hidden_size=h),
             oh.make_node("LSTM", ["x", "w", "r"], ["y2", "c"], hidden_size=h),
             oh.make_node("Sum", ["a", "b", "c"], ["y"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, "N", 3])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, "N", 2]),
                           oh.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, [2, 1, "N", 2])],
                          [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(r, "r")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)
    out, result = assert_pass_verified(model, CSE(), shape=[2, 2, 3])
    assert result.stats["rewritten"] == 1
    assert [list(n.output) for n in out.graph.node] == [["", "a"], ["y2", "c"], ["y"]]
