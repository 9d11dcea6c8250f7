"""Tests for the example rule: the five checks every pass owes, and the reasons it counts."""
from __future__ import annotations

from fuse_leaky_relu import FuseLeakyRelu

from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text


def _model(body: str) -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) {{
        {body}
    }}"""


def test_both_spellings_and_commuted_operands_fuse():
    for body in ("a = Constant<value = float {0.1}>()\n m = Mul(a, x)\n y = Max(m, x)",
                 "d = Constant<value = float {10.0}>()\n m = Div(x, d)\n y = Max(x, m)"):
        out, result = assert_pass_verified(model_from_text(_model(body)), FuseLeakyRelu(), tolerance=STRICT_FP32)
        assert result.stats == {"rewritten": 1, "skipped": {}}
        assert [n.op_type for n in out.graph.node] == ["LeakyRelu"]


def test_a_slope_above_one_is_left_alone_with_its_reason():
    body = "a = Constant<value = float {2.0}>()\n m = Mul(x, a)\n y = Max(x, m)"
    result = assert_pass_unchanged(model_from_text(_model(body)), FuseLeakyRelu())
    assert result.stats["skipped"] == {"slope 2 outside [0, 1]": 1}
