"""conv1d_to_conv2d: 1-D Convs (pads asymmetric, strides, dilations, groups, auto_pad, computed weights, opset
11 attributes) as Unsqueeze -> 2-D Conv -> Squeeze; 2-D Convs left alone."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphopt.core.ir import op_counts
from graphopt.core.tolerance import Tolerance
from graphopt.passes.conv1d_to_conv2d import Conv1dToConv2d
from graphopt.testing import assert_pass_unchanged, assert_pass_verified, model_from_text

# The same products and sums; onnxruntime's 1-D and 2-D kernels may order them differently.
CONV = Tolerance(max_abs=1e-5, max_rel=None, cosine=0.999999, top1_agreement=None)
WEIGHT = "float[6, 2, 3] w = {" + ", ".join(f"{(i % 7 - 3) / 4}" for i in range(36)) + "}"


def _model(attrs: str = "", opset: int = 13, bias: bool = True) -> str:
    conv_inputs = "x, w, b" if bias else "x, w"
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[N, 4, 11] x) => (float[N, 6, L] y) <{WEIGHT}, float[6] b = {{1, 2, 3, 4, 5, 6}}> {{
        y = Conv<{attrs or "group = 2"}>({conv_inputs})
    }}"""


@pytest.mark.parametrize("attrs", [
    "group = 2",
    "group = 2, pads = [2, 1], strides = [2], dilations = [2]",
    "group = 2, kernel_shape = [3], pads = [0, 3]",
    'group = 2, auto_pad = "SAME_UPPER", strides = [2]',
    'group = 2, auto_pad = "VALID"',
])
def test_conv1d_becomes_2d(attrs):
    out, result = assert_pass_verified(model_from_text(_model(attrs)), Conv1dToConv2d(), tolerance=CONV,
                                       shape=[2, 4, 11])
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == {"Conv": 1, "Squeeze": 1, "Unsqueeze": 1}
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    pads = [list(a.ints) for a in conv.attribute if a.name == "pads"]
    if "pads = [2, 1]" in attrs:
        assert pads == [[0, 2, 0, 1]]


def test_opset_11_axes_attribute_no_bias_and_fp16():
    out, _ = assert_pass_verified(model_from_text(_model(opset=11, bias=False)), Conv1dToConv2d(), tolerance=CONV,
                                  shape=[2, 4, 11])
    assert op_counts(out) == {"Conv": 1, "Squeeze": 1, "Unsqueeze": 1}
    # fp16: the intermediate Unsqueeze / Conv outputs must not be typed float32.
    model = model_from_text(_model())
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    fp16 = Tolerance(max_abs=1e-2, max_rel=None, cosine=0.9999, top1_agreement=None)
    assert_pass_verified(model, Conv1dToConv2d(), tolerance=fp16, shape=[2, 4, 11])


def test_computed_weight_gets_an_unsqueeze():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4, 11] x, float[6, 4, 3] w) => (float[N, 6, L] y) {
        v = Neg(w)
        y = Conv(x, v)
    }"""
    out, _ = assert_pass_verified(model_from_text(text), Conv1dToConv2d(), tolerance=CONV, shape=[2, 4, 11])
    assert op_counts(out) == {"Conv": 1, "Neg": 1, "Squeeze": 1, "Unsqueeze": 2}


def test_2d_conv_left_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4, 5, 5] x) => (float[N, 2, 3, 3] y) <float[2, 4, 3, 3] w = {""" + ", ".join(["0.5"] * 72) + """}> {
        y = Conv(x, w)
    }"""
    result = assert_pass_unchanged(model_from_text(text), Conv1dToConv2d())
    assert result.stats == {"rewritten": 0, "skipped": {}}
