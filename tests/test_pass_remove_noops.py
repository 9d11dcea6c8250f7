"""remove_noops: every kind of no-op bypassed, graph outputs kept by name, near-misses and look-alikes left."""
from __future__ import annotations

import pytest

from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

RemoveNoops = get_pass("remove_noops")


def _model(body: str, out: str = "float[N, 4, 6] y", opset: int = 13, x: str = "float[N, 4, 6] x") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({x}) => ({out}) {{
        k0 = Constant<value = float[1] {{0.0}}>()
        k1 = Constant<value = float[6] {{1.0, 1.0, 1.0, 1.0, 1.0, 1.0}}>()
        {body}
        y = Neg(z)
    }}"""


@pytest.mark.parametrize("body, what", [
    ("z = Identity(x)", "Identity"),
    ("z = Dropout(x)", "Dropout (inference)"),
    ("f = Constant<value = bool {0}>()\n r = Constant<value = float {0.5}>()\n z = Dropout(x, r, f)",
     "Dropout (inference)"),
    ("z = Cast<to=1>(x)", "Cast to its own type"),
    ("s = Constant<value = int64[3] {0, 4, -1}>()\n z = Reshape(x, s)", "Reshape to the same shape"),
    ("s = Constant<value = int64[2] {4, 1}>()\n z = Expand(x, s)", "Expand to the same shape"),
    ("p = Constant<value = int64[6] {0, 0, 0, 0, 0, 0}>()\n z = Pad<mode=\"reflect\">(x, p)", "Pad by zeros"),
    ("s = Constant<value = int64[2] {0, -10}>()\n e = Constant<value = int64[2] {9223372036854775807, 6}>()\n"
     " a = Constant<value = int64[2] {0, -1}>()\n z = Slice(x, s, e, a)", "Slice of the full range"),
    ("z = Transpose<perm=[0, 1, 2]>(x)", "Transpose with the identity perm"),
    ("z = Add(k0, x)", "Add 0"),
    ("z = Sub(x, k0)", "Sub 0"),
    ("z = Mul(x, k1)", "Mul 1"),
    ("z = Div(x, k1)", "Div 1"),
])
def test_each_noop_goes(body, what):
    out, result = assert_pass_verified(model_from_text(_model(body)), RemoveNoops(), tolerance=STRICT_FP32,
                                       shape=[2, 4, 6])
    assert result.stats["removed"] == {what: 1}
    assert [n.op_type for n in out.graph.node if n.op_type != "Constant"] == ["Neg"]


def test_a_chain_goes_at_once_and_a_graph_output_keeps_its_name():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y, float[N, 4] w) {
        a = Identity(x)
        b = Cast<to=1>(a)
        w = Neg(b)
        y = Transpose<perm=[0, 1]>(b)
    }"""
    out, result = assert_pass_verified(model_from_text(text), RemoveNoops(), shape=[2, 4])
    assert result.stats["rewritten"] == 3
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [
        ("Neg", ["x"], ["w"]), ("Identity", ["x"], ["y"])]
    assert_pass_unchanged(out, RemoveNoops())  # the Identity kept for the name is not removed again


@pytest.mark.parametrize("body", [
    "z = Add(x, k1)",  # adds one
    # zeros that broadcast x to a larger shape
    "j = Constant<value = float[2, 1, 1, 1] {0.0, 0.0}>()\n z1 = Add(x, j)\n r = Constant<value = int64[1] {0}>()\n"
    " z = ReduceSum<keepdims=0>(z1, r)",
    "s = Constant<value = int64[3] {0, 6, 4}>()\n z = Reshape(x, s)",
    "z = Transpose<perm=[0, 2, 1]>(x)",
    "s = Constant<value = int64[1] {1}>()\n e = Constant<value = int64[1] {6}>()\n a = Constant<value = int64[1]"
    " {2}>()\n z = Slice(x, s, e, a)",
    "s = Constant<value = int64[1] {0}>()\n e = Constant<value = int64[1] {6}>()\n t = Constant<value = int64[1]"
    " {-1}>()\n z = Slice(x, s, e, s, t)",  # reversed
])
def test_look_alikes_are_left(body):
    result = assert_pass_unchanged(model_from_text(_model(body, out="float[?, ?, ?] y")), RemoveNoops())
    assert result.stats == {"rewritten": 0, "removed": {}, "skipped": {}}


def test_near_misses_are_counted():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, M] x) => (float[?, ?] y, bool[?, ?] m) {
        k = Constant<value = float[4] {0.0, 0.0, 0.0, 0.0}>()
        a = Add(x, k)
        y, m = Dropout(a)
    }"""
    result = assert_pass_unchanged(model_from_text(text), RemoveNoops())
    assert result.stats["skipped"] == {"Add 0? a dim is not known": 1, "Dropout mask read": 1}


def test_training_mode_dropout_and_fusion_breakers_stay():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) {
        t = Constant<value = bool {1}>()
        r = Constant<value = float {0.5}>()
        a = Dropout(x, r, t)
        one = Constant<value = float {1.0}>()
        y = Mul(a, one)
    }"""
    model = model_from_text(text)
    model.graph.node[-1].name = "fusion_breaker_Mul_a"
    result = assert_pass_unchanged(model, RemoveNoops())
    assert result.stats["skipped"] == {"Dropout in training mode (or not known to be in inference)": 1}
