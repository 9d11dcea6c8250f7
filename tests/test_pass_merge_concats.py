"""merge_concats: nested Concats on one axis flattened in order; other axes and shared inner Concats left."""
from __future__ import annotations

from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

MergeConcats = get_pass("merge_concats")


def _model(body: str, out: str) -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 2, 3] a, float[N, 2, 3] b, float[N, 2, 3] c) => ({out}) {{
        {body}
    }}"""


def test_inner_inputs_take_the_inner_concats_place_in_order():
    body = "i = Concat<axis=1>(b, c)\n y = Concat<axis=-2>(a, i, a)"
    out, result = assert_pass_verified(model_from_text(_model(body, "float[N, 8, 3] y")), MergeConcats(),
                                       tolerance=STRICT_FP32, shape=[2, 2, 3])
    assert result.stats["rewritten"] == 1
    assert [(n.op_type, list(n.input)) for n in out.graph.node] == [("Concat", ["a", "b", "c", "a"])]


def test_nested_three_deep_and_read_twice_by_one_node():
    body = "i = Concat<axis=2>(b, c)\n j = Concat<axis=2>(a, i)\n y = Concat<axis=2>(j, c)"
    out, result = assert_pass_verified(model_from_text(_model(body, "float[N, 2, 12] y")), MergeConcats(),
                                       shape=[2, 2, 3])
    assert [list(n.input) for n in out.graph.node] == [["a", "b", "c", "c"]]
    body = "i = Concat<axis=0>(b, c)\n y = Concat<axis=0>(i, i)"
    result = assert_pass_unchanged(model_from_text(_model(body, "float[M, 2, 3] y")), MergeConcats())
    assert result.stats["skipped"] == {"inner Concat read elsewhere or twice": 1}


def test_other_axis_and_shared_inner_are_left():
    body = "i = Concat<axis=1>(b, c)\n k = Concat<axis=1>(a, b)\n y = Concat<axis=2>(i, k)"
    result = assert_pass_unchanged(model_from_text(_model(body, "float[N, 4, 6] y")), MergeConcats())
    assert result.stats["skipped"] == {"inner Concat on another axis": 1}
    body = "i = Concat<axis=1>(b, c)\n y = Concat<axis=1>(a, i)\n z = Neg(i)"
    result = assert_pass_unchanged(model_from_text(_model(body, "float[N, 6, 3] y, float[N, 4, 3] z")),
                                   MergeConcats())
    assert result.stats["skipped"] == {"inner Concat read elsewhere or twice": 1}


def test_axes_of_different_sign_are_compared_with_the_rank():
    body = "i = Concat<axis=-1>(b, c)\n k = Concat<axis=-1>(a, a)\n y = Concat<axis=1>(i, k)"
    result = assert_pass_unchanged(model_from_text(_model(body, "float[N, 4, 6] y")), MergeConcats())
    assert result.stats["skipped"] == {"inner Concat on another axis": 1}
    body = "i = Concat<axis=-1>(b, c)\n y = Concat<axis=2>(a, i)"
    out, result = assert_pass_verified(model_from_text(_model(body, "float[N, 2, 9] y")), MergeConcats(),
                                       shape=[2, 2, 3])
    assert [list(n.input) for n in out.graph.node] == [["a", "b", "c"]]
