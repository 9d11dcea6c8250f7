"""min_max_to_clip: Min/Max pairs and Relu/Clip pairs as one Clip; lo > hi, non-scalar bounds, old opsets and
shared intermediates left alone."""
from __future__ import annotations

import pytest

from graphopt.core.ir import op_counts
from graphopt.passes.min_max_to_clip import MinMaxToClip
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text


def _model(body: str, opset: int = 13, inits: str = "", dtype: str = "float") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({dtype}[N, 3, 4] x) => ({dtype}[N, 3, 4] y) {inits} {{
        {body}
    }}"""


REASON_RANK = "a bound of shape [1] on x of lower or unknown rank (the output shape would change)"
LO_HI = "<float lo = {-0.5}, float hi = {0.5}>"


@pytest.mark.parametrize("body", [
    "m = Max(x, lo)\n y = Min(m, hi)",
    "m = Max(lo, x)\n y = Min(hi, m)",
    "m = Min(x, hi)\n y = Max(m, lo)",
])
def test_min_max_pairs_become_clip(body):
    out, result = assert_pass_verified(model_from_text(_model(body, inits=LO_HI)), MinMaxToClip(),
                                       tolerance=STRICT_FP32)
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == {"Clip": 1}


@pytest.mark.parametrize("body, inits", [
    ("r = Relu(x)\n y = Clip(r, lo, hi)", LO_HI),
    ("r = Relu(x)\n y = Clip(r, lo, hi)", "<float lo = {0.25}, float hi = {0.5}>"),
    ("r = Relu(x)\n y = Clip(r, , hi)", "<float hi = {0.5}>"),
    ("r = Relu(x)\n y = Clip(r, lo)", "<float lo = {-1.0}>"),
    ("c = Clip(x, lo, hi)\n y = Relu(c)", LO_HI),
    ("c = Clip(x, lo, hi)\n y = Relu(c)", "<float lo = {-1.0}, float hi = {-0.5}>"),
    ("c = Clip(x, lo)\n y = Relu(c)", "<float lo = {-1.0}>"),
])
def test_relu_and_clip_fuse(body, inits):
    out, result = assert_pass_verified(model_from_text(_model(body, inits=inits)), MinMaxToClip(),
                                       tolerance=STRICT_FP32)
    assert result.stats["rewritten"] == 1
    assert op_counts(out) == {"Clip": 1}


def test_integer_clip_keeps_its_type():
    text = _model("m = Max(x, lo)\n y = Min(m, hi)", inits="<int32 lo = {-1}, int32 hi = {2}>", dtype="int32")
    out, result = assert_pass_verified(model_from_text(text), MinMaxToClip(), tolerance=STRICT_FP32)
    assert op_counts(out) == {"Clip": 1}
    assert {i.data_type for i in out.graph.initializer} == {6}


@pytest.mark.parametrize("body, inits, opset, reason", [
    # Max(Min(x, hi), lo) with lo > hi is lo everywhere; a Clip would give hi.
    ("m = Min(x, hi)\n y = Max(m, lo)", "<float lo = {0.5}, float hi = {-0.5}>", 13,
     "Max(Min(x, hi), lo) with lo > hi is lo everywhere, not a Clip"),
    ("m = Max(x, lo)\n y = Min(m, hi)", "<float[4] lo = {-0.5, -0.25, 0.0, 0.25}, float hi = {0.5}>", 13,
     "a bound has more than one element"),
    ("m = Max(x, lo)\n y = Min(m, hi)", LO_HI, 10, "opset 10 < 11: no Clip for this type"),
    ("r = Relu(x)\n y = Clip<min = -0.5, max = 0.5>(r)", "", 10, "opset 10 < 11: Clip bounds are attributes"),
    # The Max result is read twice: deleting it is not this rewrite's to do.
    ("m = Max(x, lo)\n n = Min(m, hi)\n y = Add(m, n)", LO_HI, 13, None),
    ("m = Max(x, x)\n y = Min(m, hi)", LO_HI, 13, None),
])
def test_left_alone(body, inits, opset, reason):
    result = assert_pass_unchanged(model_from_text(_model(body, opset=opset, inits=inits)),
                                   MinMaxToClip())
    assert result.stats["skipped"] == ({reason: 1} if reason else {})


def test_scalar_shape_one_bound_on_a_scalar_x_is_left_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float x) => (float[1] y) <float[1] lo = {-0.5}, float[1] hi = {0.5}> {
        m = Max(x, lo)
        y = Min(m, hi)
    }"""
    # x is 0-D, the bounds [1]: Min / Max give shape [1], which a Clip of x would not.
    result = assert_pass_unchanged(model_from_text(text), MinMaxToClip())
    assert result.stats["skipped"] == {REASON_RANK: 1}


def test_value_read_inside_a_subgraph_is_a_reader():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 4] x, bool c) => (float[N, 3, 4] y, float[N, 3, 4] z) <float lo = {-0.5}, float hi = {0.5}> {
        m = Max(x, lo)
        y = Min(m, hi)
        z = If(c) <then_branch = t () => (float[N, 3, 4] a) { a = Identity(m) },
                   else_branch = e () => (float[N, 3, 4] b) { b = Neg(m) }>
    }"""
    assert_pass_unchanged(model_from_text(text), MinMaxToClip())
