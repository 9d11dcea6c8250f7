"""fold_batchnorm_into_conv: BN, per-channel Add and Mul after a Conv folded into it; [C] constants (onnxslim's
bug), single numbers, training-mode BN, shared Conv outputs and non-constant weights left alone."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphopt.core.ir import op_counts
from graphopt.core.tolerance import Tolerance
from graphopt.passes.fold_batchnorm_into_conv import FoldBatchNormIntoConv
from graphopt.testing import assert_pass_unchanged, assert_pass_verified

# Folding reassociates float32 products and sums: outputs agree to rounding, not bit for bit.
FOLDED = Tolerance(max_abs=1e-5, max_rel=None, cosine=0.9999999, top1_agreement=None)
C = 4


def _model(after: str, value: np.ndarray | None = None, *, bias: bool = True, rank: int = 4, opset: int = 13,
           conv_output_read: bool = False, bn_attrs: dict | None = None, weight_input: bool = False
           ) -> onnx.ModelProto:
    """x[N, 3, 6(, 6)] -> Conv(3x3 (or 3), C out) -> ``after`` (BatchNormalization, or Add / Mul by ``value``)."""
    rng = np.random.default_rng(0)
    spatial = [6] * (rank - 2)
    w = rng.standard_normal((C, 3, *[3] * (rank - 2))).astype(np.float32)
    inits = [] if weight_input else [numpy_helper.from_array(w, "w")]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1] * 2 * (rank - 2))]
    if after == "BatchNormalization":
        for name, v in (("scale", rng.uniform(0.5, 2, C)), ("shift", rng.standard_normal(C)),
                        ("mean", rng.standard_normal(C)), ("var", rng.uniform(0.5, 2, C))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), name))
        nodes.append(helper.make_node(after, ["c", "scale", "shift", "mean", "var"], ["y"], **(bn_attrs or {})))
    else:
        inits.append(numpy_helper.from_array(value.astype(np.float32), "k"))
        nodes.append(helper.make_node(after, ["c", "k"], ["y"]))
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, *spatial])]
    if weight_input:
        inputs.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(w.shape)))
    out_dims = ["N", C, *[f"d{i}" for i in range(rank - 2)]]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_dims)]
    if conv_output_read:
        outputs.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, out_dims))
    graph = helper.make_graph(nodes, "conv_after", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


PER_CHANNEL = np.array([0.5, -1.5, 2.0, 0.25])


@pytest.mark.parametrize("after, value", [
    ("BatchNormalization", None),
    ("Add", PER_CHANNEL.reshape(C, 1, 1)),
    ("Add", PER_CHANNEL.reshape(1, C, 1, 1)),
    ("Mul", PER_CHANNEL.reshape(C, 1, 1)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_folds_into_the_conv(after, value, bias):
    out, result = assert_pass_verified(_model(after, value, bias=bias), FoldBatchNormIntoConv(), tolerance=FOLDED,
                                       shape=[2, 3, 6, 6])
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == {"Conv": 1}


def test_conv1d_and_bn_epsilon():
    model = _model("BatchNormalization", rank=3, bn_attrs={"epsilon": 0.1})
    out, _ = assert_pass_verified(model, FoldBatchNormIntoConv(), tolerance=FOLDED, shape=[2, 3, 6])
    assert op_counts(out) == {"Conv": 1}
    out, _ = assert_pass_verified(_model("Mul", PER_CHANNEL.reshape(C, 1), rank=3), FoldBatchNormIntoConv(),
                                  tolerance=FOLDED, shape=[2, 3, 6])
    assert op_counts(out) == {"Conv": 1}


def test_plain_c_vector_is_not_per_channel():
    # [C] adds along the width (here 6 wide, so a [6] constant would broadcast; [4] on a 4-wide output too).
    model = _model("Add", PER_CHANNEL, rank=4)
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 4
    result = assert_pass_unchanged(model, FoldBatchNormIntoConv())
    assert result.stats["skipped"] == {"a [C] constant broadcasts along the last axis, not the channels": 1}


@pytest.mark.parametrize("model, reason", [
    (_model("Mul", np.array([0.5])), None),  # one number: an activation's constant
    (_model("Add", np.arange(6.0).reshape(1, 1, 1, 6)), None),  # along the width
    (_model("BatchNormalization", conv_output_read=True), None),
    (_model("BatchNormalization", weight_input=True), None),
    (_model("BatchNormalization", opset=7), "opset 7 < 9: BatchNormalization may be in training form"),
])
def test_left_alone(model, reason):
    result = assert_pass_unchanged(model, FoldBatchNormIntoConv())
    assert result.stats["skipped"] == ({reason: 1} if reason else {})


def test_shared_weight_is_copied_not_changed():
    model = _model("BatchNormalization")
    model.graph.node.append(helper.make_node("Conv", ["x", "w"], ["z"], name="other", pads=[1, 1, 1, 1]))
    model.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", C, 6, 6]))
    out, _ = assert_pass_verified(model, FoldBatchNormIntoConv(), tolerance=FOLDED, shape=[2, 3, 6, 6])
    assert op_counts(out) == {"Conv": 2}
    assert [n.input[1] for n in out.graph.node if n.name == "other"] == ["w"]
