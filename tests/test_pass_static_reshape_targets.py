"""static_reshape_targets: computed Reshape targets (Shape -> Gather -> Unsqueeze -> Concat, Shape slices,
products of dims) made constant with 0 for copied dims and -1 for the one unknown entry; two unknown entries, a
second -1 and constant targets left alone."""
from __future__ import annotations

import pytest
from onnx import numpy_helper

from graphopt.core.ir import op_counts
from graphopt.passes.static_reshape_targets import StaticReshapeTargets
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

CONSTS = "int64[1] four = {4}, int64 zero = {0}, int64 one = {1}, int64 two = {2}, int64[1] minus = {-1}"


def _model(target: str, out: str = "N, 24", dims: str = "N, 4, 6", attrs: str = "") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 15]>
    g (float[{dims}] x) => (float[{out}] y) <{CONSTS}> {{
        s = Shape(x)
        {target}
        y = Reshape{attrs}(x, t)
    }}"""


def _target(out):
    return next(list(n.input)[1] for n in out.graph.node if n.op_type == "Reshape"), \
        {i.name: numpy_helper.to_array(i).tolist() for i in out.graph.initializer}


@pytest.mark.parametrize("target, want", [
    # batch copied, the rest inferred: the flatten torch exports
    ("b = Gather(s, zero)\n bu = Unsqueeze(b, zero)\n t = Concat<axis = 0>(bu, minus)", [0, -1]),
    # a product of dims: unknown, so -1
    ("b = Gather(s, zero)\n c = Gather(s, one)\n h = Gather(s, two)\n p = Mul(c, h)\n bu = Unsqueeze(b, zero)\n"
     " pu = Unsqueeze(p, zero)\n t = Concat<axis = 0>(bu, pu)", [0, -1]),
    # a static dim read through a Shape slice, then the batch at another position
    ("d = Shape<start = 1>(x)\n c = Gather(d, zero)\n h = Gather(d, one)\n p = Mul(c, h)\n pu = Unsqueeze(p, zero)\n"
     " b = Gather(s, zero)\n bu = Unsqueeze(b, zero)\n t = Concat<axis = 0>(bu, pu)", [0, -1]),
])
def test_computed_targets_become_constant(target, want):
    out, result = assert_pass_verified(model_from_text(_model(target)), StaticReshapeTargets(), tolerance=STRICT_FP32,
                                       shape=[3, 4, 6])
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == {"Reshape": 1}
    name, inits = _target(out)
    assert inits[name] == want


def test_static_dims_become_numbers():
    target = "c = Gather(s, two)\n cu = Unsqueeze(c, zero)\n b = Gather(s, zero)\n bu = Unsqueeze(b, zero)\n" \
             " t = Concat<axis = 0>(cu, bu, four)"
    out, _ = assert_pass_verified(model_from_text(_model(target, out="6, N, 4")), StaticReshapeTargets(),
                                  tolerance=STRICT_FP32, shape=[3, 4, 6])
    name, inits = _target(out)
    assert inits[name] == [6, -1, 4]


@pytest.mark.parametrize("target, dims, out, reason", [
    # the batch moved to position 1 and dim C dynamic: two unknown entries
    ("c = Gather(s, one)\n cu = Unsqueeze(c, zero)\n b = Gather(s, zero)\n bu = Unsqueeze(b, zero)\n"
     " t = Concat<axis = 0>(cu, bu, minus)", "N, C, 6", "C, N, 6", "two or more target entries unknown"),
    # one unknown beside a -1 already there
    ("b = Gather(s, zero)\n c = Gather(s, one)\n h = Gather(s, two)\n p = Mul(c, h)\n pu = Unsqueeze(p, zero)\n"
     " t = Concat<axis = 0>(minus, pu)", "N, 4, 6", "N, 24",
     "an unknown target entry beside a -1 (or a 0 with allowzero)"),
])
def test_left_alone(target, dims, out, reason):
    result = assert_pass_unchanged(model_from_text(_model(target, out=out, dims=dims)), StaticReshapeTargets())
    assert result.stats["skipped"] == {reason: 1}


def test_allowzero_does_not_copy():
    target = "b = Gather(s, zero)\n bu = Unsqueeze(b, zero)\n t = Concat<axis = 0>(bu, minus)"
    result = assert_pass_unchanged(model_from_text(_model(target, attrs="<allowzero = 1>")), StaticReshapeTargets())
    assert result.stats["skipped"] == {"an unknown target entry beside a -1 (or a 0 with allowzero)": 1}


def test_constant_target_is_no_candidate():
    text = """
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[N, 4, 6] x) => (float[N, 24] y) <int64[2] t = {0, -1}> {
        y = Reshape(x, t)
    }"""
    result = assert_pass_unchanged(model_from_text(text), StaticReshapeTargets())
    assert result.stats == {"rewritten": 0, "skipped": {}}


def test_graph_input_target_is_left_to_the_user():
    text = """
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[N, 4, 6] x, int64[1] t) => (float[M] y) {
        y = Reshape(x, t)
    }"""
    result = assert_pass_unchanged(model_from_text(text), StaticReshapeTargets())
    assert result.stats == {"rewritten": 0, "skipped": {}}
