"""int64_to_int32_indices: int64 arithmetic bounded by constants and static dims moved to int32 with Casts at
the boundary; graph inputs, dynamic dims and values that could overflow int32 left in int64."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt.core.ir import op_counts
from graphopt.passes.int64_to_int32_indices import Int64ToInt32Indices
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

INT32 = onnx.TensorProto.INT32


def _argmax_model(body: str, consts: str = "int64 one = {1}, int64 three = {3}", dims: str = "N, 10") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[{dims}] x, float[20, 4] table) => (float[N, 4] y) <{consts}> {{
        a = ArgMax<axis = 1, keepdims = 0>(x)
        {body}
        y = Gather(table, i)
    }}"""


def test_argmax_offset_chain_runs_in_int32():
    model = model_from_text(_argmax_model("b = Add(a, one)\n i = Mul(b, one)"))
    out, result = assert_pass_verified(model, Int64ToInt32Indices(), tolerance=STRICT_FP32,
                                       inputs=[_feeds()])
    assert result.stats == {"rewritten": 2, "casts": 2, "skipped": {}}
    assert op_counts(out) == {"Add": 1, "ArgMax": 1, "Cast": 2, "Gather": 1, "Mul": 1}
    add = next(n for n in out.graph.node if n.op_type == "Add")
    assert any(i.data_type == INT32 for i in out.graph.initializer if i.name in add.input)


def _feeds(rows: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((rows, 10)).astype(np.float32),
            "table": rng.standard_normal((20, 4)).astype(np.float32)}


def test_result_read_by_another_op_and_graph_output_keep_int64():
    text = _argmax_model("i = Add(a, three)\n j = Neg(i)").replace("(float[N, 4] y)", "(float[N, 4] y, int64[N] j)")
    out, result = assert_pass_verified(model_from_text(text), Int64ToInt32Indices(), tolerance=STRICT_FP32,
                                       inputs=[_feeds()])
    assert result.stats["rewritten"] == 2
    assert [o.type.tensor_type.elem_type for o in out.graph.output] == [1, onnx.TensorProto.INT64]


@pytest.mark.parametrize("body, consts, dims, reason", [
    # the dim ArgMax indexes is dynamic: no bound
    ("i = Add(a, one)", "int64 one = {1}", "N, K", "an operand's range is not provable (graph input, dynamic dim, data)"),
    # 9 * 2^31 does not fit
    ("b = Mul(a, big)\n i = Sub(b, big)", "int64 big = {2147483647}", "N, 10", "a value could exceed int32"),
])
def test_left_in_int64(body, consts, dims, reason):
    text = _argmax_model(body, consts, dims)
    result = assert_pass_unchanged(model_from_text(text), Int64ToInt32Indices())
    assert set(result.stats["skipped"]) == {reason}


def test_graph_input_indices_are_unbounded():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (int64[N] i, float[20, 4] table) => (float[N, 4] y) <int64 one = {1}> {
        j = Add(i, one)
        y = Gather(table, j)
    }"""
    result = assert_pass_unchanged(model_from_text(text), Int64ToInt32Indices())
    assert result.stats["skipped"] == {"an operand's range is not provable (graph input, dynamic dim, data)": 1}


def test_float_arithmetic_is_no_candidate():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3] x) => (float[N, 3] y) <float one = {1.0}> {
        y = Add(x, one)
    }"""
    result = assert_pass_unchanged(model_from_text(text), Int64ToInt32Indices())
    assert result.stats == {"rewritten": 0, "casts": 0, "skipped": {}}
