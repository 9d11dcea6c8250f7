"""fuse_hardswish: the exported hard-swish spellings as HardSwish (opset >= 14), the hard-sigmoid one as
HardSigmoid; off constants, shared intermediates and SiLU left alone."""
from __future__ import annotations

import pytest

from graphopt.core.ir import op_counts
from graphopt.core.tolerance import Tolerance
from graphopt.passes.fuse_hardswish import FuseHardSwish
from graphopt.testing import assert_pass_unchanged, assert_pass_verified, model_from_text

# x / 6 + 0.5 against (x + 3) / 6: a few float32 ulp apart.
ROUNDING = Tolerance(max_abs=1e-6, max_rel=None, cosine=0.999999, top1_agreement=None)
CONSTS = "<float three = {3.0}, float zero = {0.0}, float six = {6.0}, float sixth = {0.16666667}>"


def _model(body: str, opset: int = 14) -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[N, 3, 4, 4] x) => (float[N, 3, 4, 4] y) {CONSTS} {{
        a = Add(x, three)
        {body}
    }}"""


FEEDS = {"shape": [2, 3, 4, 4]}


@pytest.mark.parametrize("body", [
    "c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)",
    "c = Clip(a, zero, six)\n m = Mul(c, x)\n y = Mul(m, sixth)",
    "c = Clip(a, zero, six)\n d = Div(c, six)\n y = Mul(x, d)",
    "c = Clip(a, zero, six)\n d = Mul(sixth, c)\n y = Mul(d, x)",
])
def test_hardswish_spellings(body):
    out, result = assert_pass_verified(model_from_text(_model(body)), FuseHardSwish(), tolerance=ROUNDING, **FEEDS)
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == {"HardSwish": 1}


def test_hardsigmoid_and_its_product():
    text = """
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[N, 3, 4, 4] x) => (float[N, 3, 4, 4] y) {
        h = HardSigmoid<alpha = 0.16666667, beta = 0.5>(x)
        y = Mul(x, h)
    }"""
    out, result = assert_pass_verified(model_from_text(text), FuseHardSwish(), tolerance=ROUNDING, **FEEDS)
    assert op_counts(out) == {"HardSwish": 1}


def test_hardsigmoid_gate_of_another_tensor():
    body = "c = Clip(a, zero, six)\n g = Div(c, six)\n y = Mul(g, x2)"
    text = _model(body).replace("(float[N, 3, 4, 4] x)", "(float[N, 3, 4, 4] x, float[N, 3, 4, 4] x2)")
    out, result = assert_pass_verified(model_from_text(text), FuseHardSwish(), tolerance=ROUNDING, **FEEDS)
    assert op_counts(out) == {"HardSigmoid": 1, "Mul": 1}


def test_before_opset_14_hardswish_becomes_x_times_hardsigmoid():
    out, result = assert_pass_verified(model_from_text(_model("c = Clip(a, zero, six)\n d = Div(c, six)\n"
                                                              " y = Mul(x, d)", opset=13)),
                                       FuseHardSwish(), tolerance=ROUNDING, **FEEDS)
    assert op_counts(out) == {"HardSigmoid": 1, "Mul": 1}


def test_clip_attributes_before_opset_11():
    body = "c = Clip<min = 0.0, max = 6.0>(a)\n y = Div(c, six)"
    out, _ = assert_pass_verified(model_from_text(_model(body, opset=10)), FuseHardSwish(), tolerance=ROUNDING,
                                  **FEEDS)
    assert op_counts(out) == {"HardSigmoid": 1}


@pytest.mark.parametrize("body, opset, reason", [
    ("c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)", 13, "opset 13 < 14 has no HardSwish"),
    ("c = Clip<min = 0.0, max = 5.0>(a)\n y = Div(c, six)", 10, "x + 3 clipped to [0.0, 5.0], expected [0, 6]"),
    # x + 3 clipped to [0, 3]: another function.
    ("c = Clip(a, zero, three)\n m = Mul(x, c)\n y = Div(m, six)", 14, None),
    # The Clip output is read twice: the rewrite would have to keep it.
    ("c = Clip(a, zero, six)\n m = Mul(x, c)\n d = Div(m, six)\n y = Add(d, c)", 14, None),
    # SiLU stays: no ONNX op for it before opset 24.
    ("s = Sigmoid(x)\n y = Mul(x, s)", 14, None),
])
def test_left_alone(body, opset, reason):
    result = assert_pass_unchanged(model_from_text(_model(body, opset=opset)), FuseHardSwish())
    assert result.stats["skipped"] == ({reason: 1} if reason else {})
