"""The ONNX -> Ascend op-type map read from CANN's ONNX parser plugins, and the known Ascend names."""
from __future__ import annotations

import onnx_graphsurgeon as gs
import numpy as np
import pytest

from graphopt.ascend.op_types import (absent_types, ascend_op_type, ascend_types, graph_ascend_types,
                                      node_ascend_type, onnx_ops)
from graphopt.core.errors import UserError


@pytest.mark.parametrize("onnx_type, ascend", [
    ("Clip", "ClipByValue"),  # ops-math conversion/clip_by_value/framework/clip_onnx_plugin.cpp
    ("LayerNormalization", "LayerNorm"),
    ("Softmax", "SoftmaxV2"),
    ("MatMul", "BatchMatMulV2"),
    ("Gemm", "MatMulV2"),
    ("Conv", "Conv2D"),
    ("Div", "RealDiv"),
    ("Where", "SelectV2"),
    ("GreaterOrEqual", "GreaterEqual"),
    ("ReduceMean", "ReduceMean"),
    ("Transpose", "Transpose"),
])
def test_onnx_names_map_to_what_the_parser_builds(onnx_type, ascend):
    assert ascend_op_type(onnx_type) == ascend


def test_ascend_names_and_fused_types_pass_through():
    for name in ("LayerNorm", "Gelu", "ClipByValue", "ReduceMeanD", "TransposeD", "MatMulV2"):
        assert ascend_op_type(name) == name
    assert {"Gelu", "LayerNorm", "FastGelu", "ConfusionTransposeD"} <= ascend_types()


def test_the_type_depends_on_the_models_opset():
    assert ascend_op_type("Squeeze", 11) == "Squeeze"  # axes attribute
    assert ascend_op_type("Squeeze", 13) == "SqueezeV3"  # axes input
    assert ascend_op_type("Squeeze") == "SqueezeV3"  # the newest opset by default
    assert ascend_op_type("Unsqueeze", 12) == "Unsqueeze" and ascend_op_type("Unsqueeze", 17) == "UnsqueezeV3"
    assert ascend_op_type("Squeeze", 21) == "SqueezeV3"  # past the plugin's last opset: its newest type
    assert onnx_ops()["Squeeze"].opsets == ((8, 18),)


def test_the_type_depends_on_the_node():
    assert ascend_op_type("Conv", rank=5) == "Conv3D" and ascend_op_type("MaxPool", rank=4) == "MaxPoolV3"
    assert ascend_op_type("Clip", 13, given=[True, True, True]) == "ClipByValue"
    assert ascend_op_type("Clip", 13, given=[True, False, True]) == "Minimum"  # only a max
    assert ascend_op_type("Clip", 13, given=[True, True]) == "Maximum"  # only a min
    assert ascend_op_type("Resize", attrs={"mode": "nearest"}) == "ResizeNearestNeighborV2"
    assert ascend_op_type("Resize", attrs={"mode": "linear"}) == "Resize"
    assert ascend_op_type("Split", attrs={"num_outputs": 2}) == "SplitV" and ascend_op_type("Split") == "Split"
    x = gs.Variable("x", np.float32, (1, 4))
    hi = gs.Constant("hi", np.array(6.0, np.float32))
    node = gs.Node("Clip", inputs=[x, gs.Variable.empty(), hi], outputs=[gs.Variable("y")])
    assert node_ascend_type(node, 13) == "Minimum"
    custom = gs.Node("FusedMatMulActivation", inputs=[x], outputs=[gs.Variable("z")], domain="com.example")
    assert node_ascend_type(custom) == "FusedMatMulActivation"


@pytest.mark.parametrize("name, near", [("LayerNrom", "LayerNorm"), ("Sofmax", "Softmax"), ("ClipByValu",
                                                                                        "ClipByValue")])
def test_unknown_names_are_errors_with_the_closest_names(name, near):
    with pytest.raises(UserError, match=rf"'{name}' is neither an ONNX op type nor an Ascend op type "
                                        rf"\(did you mean: .*{near}"):
        ascend_op_type(name)


def test_onnx_ops_without_a_plugin_pass_through():
    assert "QLinearConv" not in onnx_ops() and ascend_op_type("QLinearConv") == "QLinearConv"


def test_absent_types_of_a_graph():
    decomposed = {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Mul", "Add", "MatMul", "Softmax"}
    # LayerNorm: no op maps to it (ATC fuses a decomposed layer norm): reported, not refused
    assert absent_types(["LayerNorm", "SoftmaxV2", "Softmax", "BatchMatMulV2"], decomposed) == ["LayerNorm"]
    assert absent_types(["LayerNormalization"], decomposed) == ["LayerNormalization"]
    assert absent_types(["LayerNorm"], {"LayerNormalization"}) == []
    assert {"Conv2D", "Conv3D"} <= graph_ascend_types({"Conv"})
