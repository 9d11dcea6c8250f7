"""merge_casts: exact pairs collapse or cancel, lossy first hops are left with the reason, same-type Casts go."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text
from graphopt.passes.merge_casts import holds_every_value

MergeCasts = get_pass("merge_casts")
T = onnx.TensorProto


def _model(src: str, body: str, out: str) -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g ({src}[N, 4] x) => ({out}[N, 4] y) {{
        {body}
    }}"""


def test_widening_then_narrowing_back_cancels():
    text = _model("int32", f"a = Cast<to={T.INT64}>(x)\n b = Cast<to={T.INT32}>(a)\n y = Neg(b)", "int32")
    out, result = assert_pass_verified(model_from_text(text), MergeCasts(), tolerance=STRICT_FP32,
                                       inputs=[{"x": np.array([[2**31 - 1, -2**31, 0, 5]] * 2, np.int32)}])
    assert result.stats["rewritten"] == 1
    assert op_counts(out) == {"Neg": 1}


def test_widening_then_another_type_is_one_cast():
    text = _model("float16", f"a = Cast<to={T.FLOAT}>(x)\n y = Cast<to={T.INT32}>(a)", "int32")
    out, result = assert_pass_verified(model_from_text(text), MergeCasts(), shape=[2, 4])
    assert result.stats["rewritten"] == 1
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [("Cast", ["x"], ["y"])]
    assert out.graph.node[0].attribute[0].i == T.INT32


def test_a_cancelling_pair_at_a_graph_output_keeps_the_name():
    text = _model("float16", f"a = Cast<to={T.FLOAT}>(x)\n y = Cast<to={T.FLOAT16}>(a)", "float16")
    out, result = assert_pass_verified(model_from_text(text), MergeCasts(), shape=[2, 4])
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [("Identity", ["x"], ["y"])]


def test_cast_to_its_own_type_goes():
    text = _model("float", f"a = Cast<to={T.FLOAT}>(x)\n y = Relu(a)", "float")
    out, result = assert_pass_verified(model_from_text(text), MergeCasts(), shape=[2, 4])
    assert result.stats["same_type"] == 1
    assert op_counts(out) == {"Relu": 1}


def test_a_chain_of_three_collapses():
    text = _model("int8", f"a = Cast<to={T.INT16}>(x)\n b = Cast<to={T.INT32}>(a)\n c = Cast<to={T.FLOAT}>(b)\n"
                  " y = Relu(c)", "float")
    out, result = assert_pass_verified(model_from_text(text), MergeCasts(),
                                       inputs=[{"x": np.array([[-128, 127, 0, 3]] * 2, np.int8)}])
    assert op_counts(out) == {"Cast": 1, "Relu": 1}


@pytest.mark.parametrize("src, t1, t2, out, reason", [
    ("float", T.FLOAT16, T.FLOAT, "float", "float -> float16 loses values"),
    ("int64", T.INT32, T.INT64, "int64", "int64 -> int32 loses values"),
    ("double", T.FLOAT, T.FLOAT16, "float16", "double -> float loses values"),  # rounds twice: onnxscript's bug
    ("float", T.INT32, T.FLOAT, "float", "float -> int32 loses values"),
    ("float16", T.BFLOAT16, T.FLOAT, "float", "float16 -> bfloat16 loses values"),
    ("int32", T.FLOAT, T.INT32, "int32", "int32 -> float loses values"),
    ("float", T.DOUBLE, T.STRING, "string",
     "float -> double -> string: not only bool, integer and float16/32/64 types"),
])
def test_lossy_first_casts_are_left_with_the_reason(src, t1, t2, out, reason):
    text = _model(src, f"a = Cast<to={t1}>(x)\n y = Cast<to={t2}>(a)", out)
    result = assert_pass_unchanged(model_from_text(text), MergeCasts())
    assert result.stats["skipped"] == {reason: 1}


def test_a_first_cast_read_elsewhere_is_left():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (int32[4] x) => (int32[4] y, int64[4] z) {
        z = Cast<to=7>(x)
        y = Cast<to=6>(z)
    }"""
    result = assert_pass_unchanged(model_from_text(text), MergeCasts())
    assert result.stats["skipped"] == {"first Cast read elsewhere": 1}


def test_double_rounding_is_real():
    # The float64 value 1 + 2^-11 + 2^-40 rounds to fp16 1.001 directly but to 1.0 through float32.
    v = np.float64(1 + 2**-11 + 2**-40)
    assert np.float16(v) != np.float16(np.float32(v))


@pytest.mark.parametrize("src, dst, exact", [
    (T.BOOL, T.FLOAT16, True), (T.UINT8, T.BFLOAT16, True), (T.INT8, T.FLOAT16, True), (T.UINT16, T.FLOAT16, False),
    (T.INT16, T.FLOAT, True), (T.INT32, T.FLOAT, False), (T.INT32, T.DOUBLE, True), (T.UINT32, T.INT64, True),
    (T.INT8, T.UINT16, False), (T.INT64, T.DOUBLE, False), (T.FLOAT16, T.FLOAT, True), (T.FLOAT, T.DOUBLE, True),
    (T.BFLOAT16, T.FLOAT16, False), (T.DOUBLE, T.FLOAT, False), (T.UINT64, T.INT64, False)])
def test_exactness_table(src, dst, exact):
    assert holds_every_value(src, dst) == exact


def test_exactness_table_against_numpy():
    # Every value of the narrow integer types is held by each type called exact for them, and only by those.
    for src, np_src in ((T.INT8, np.int8), (T.UINT8, np.uint8), (T.INT16, np.int16), (T.UINT16, np.uint16)):
        values = np.arange(np.iinfo(np_src).min, np.iinfo(np_src).max + 1).astype(np_src)
        for dst, np_dst in ((T.FLOAT16, np.float16), (T.FLOAT, np.float32), (T.INT16, np.int16)):
            with np.errstate(all="ignore"):
                held = values.astype(np_dst).astype(np.float64) == values.astype(np.float64)
            assert holds_every_value(src, dst) == bool(held.all()), (src, dst)
