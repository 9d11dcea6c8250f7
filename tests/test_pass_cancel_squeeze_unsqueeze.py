"""cancel_squeeze_unsqueeze: both orders, axes as inputs and as attributes, negative axes, graph outputs, shared
first nodes, different axes and a Squeeze without axes left alone, and the pairs conv1d_to_conv2d leaves."""
from __future__ import annotations

import pytest

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text, run_pass

Cancel = get_pass("cancel_squeeze_unsqueeze")


def _model(body: str, opset: int = 13, x: str = "float[N, 3, 1, 5] x", out: str = "float[N, 3, 1, 5] y") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({x}) => ({out}) {{
        {body}
    }}"""


@pytest.mark.parametrize("body, opset", [
    ("a = Relu(x)\n axes = Constant<value = int64[1] {2}>()\n s = Squeeze(a, axes)\n u = Unsqueeze(s, axes)\n"
     " y = Neg(u)", 13),
    ("a = Relu(x)\n s = Squeeze<axes = [2]>(a)\n u = Unsqueeze<axes = [2]>(s)\n y = Neg(u)", 11),
    # negative and positive spellings of one axis: the rank (4) decides
    ("s = Squeeze<axes = [-2]>(x)\n u = Unsqueeze<axes = [2]>(s)\n y = Neg(u)", 11),
])
def test_squeeze_then_unsqueeze_of_the_same_axes_goes(body, opset):
    out, result = assert_pass_verified(model_from_text(_model(body, opset)), Cancel(), tolerance=STRICT_FP32,
                                       shape=[2, 3, 1, 5])
    assert result.stats["rewritten"] == 1
    assert op_counts(out) == ({"Relu": 1, "Neg": 1} if "Relu" in body else {"Neg": 1})


def test_unsqueeze_then_squeeze_goes_and_a_graph_output_keeps_its_name():
    body = ("axes = Constant<value = int64[2] {0, -1}>()\n u = Unsqueeze(x, axes)\n"
            " y = Squeeze(u, axes)")
    out, result = assert_pass_verified(model_from_text(_model(body)), Cancel(), shape=[2, 3, 1, 5])
    assert result.stats["rewritten"] == 1
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [("Identity", ["x"], ["y"])]


@pytest.mark.parametrize("body, reason", [
    ("s = Squeeze<axes = [2]>(x)\n y = Unsqueeze<axes = [1]>(s)", "different axes"),
    ("s = Squeeze(x)\n y = Unsqueeze<axes = [2]>(s)", "axes not given or not constant"),
])
def test_other_pairs_are_left_with_the_reason(body, reason):
    out = "float[N, 1, 3, 5] y" if "[1]" in body else "float[N, 3, 1, 5] y"
    result = assert_pass_unchanged(model_from_text(_model(body, 11, x="float[2, 3, 1, 5] x", out=out)), Cancel())
    assert result.stats["skipped"] == {reason: 1}


def test_a_first_node_read_elsewhere_is_left_with_the_reason():
    body = "s = Squeeze<axes = [2]>(x)\n y = Unsqueeze<axes = [2]>(s)\n z = Neg(s)"
    text = _model(body, 11, out="float[N, 3, 1, 5] y, float[N, 3, 5] z")
    result = assert_pass_unchanged(model_from_text(text), Cancel())
    assert result.stats["skipped"] == {"first node read elsewhere": 1}


def test_nothing_to_cancel_is_unchanged():
    result = assert_pass_unchanged(model_from_text(_model("s = Squeeze<axes = [2]>(x)\n y = Neg(s)", 11,
                                                          out="float[N, 3, 5] y")), Cancel())
    assert result.stats == {"rewritten": 0, "skipped": {}}


def test_the_pairs_between_converted_1d_convolutions_go():
    weights = ", ".join(f"float[4, 4, 3] w{k} = {{" + ", ".join(f"{(i * k % 7 - 3) / 4}" for i in range(48)) + "}"
                        for k in (1, 2))
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4, 16] x) => (float[N, 4, 12] y) <{weights}> {{
        a = Conv(x, w1)
        y = Conv(a, w2)
    }}"""
    converted, _ = run_pass(model_from_text(text), get_pass("conv1d_to_conv2d")())
    assert op_counts(converted) == {"Unsqueeze": 2, "Conv": 2, "Squeeze": 2}
    out, result = assert_pass_verified(converted, Cancel(), shape=[2, 4, 16])
    assert result.stats["rewritten"] == 1
    assert op_counts(out) == {"Unsqueeze": 1, "Conv": 2, "Squeeze": 1}
