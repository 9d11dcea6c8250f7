"""fold_affine_into_conv: positive (plain, grouped, Add-then-Mul, no bias, GroupNorm export), negative (unchanged),
numerics against onnxruntime, checker, idempotence."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from graphopt.core.ir import op_counts
from graphopt.passes.fold_affine_into_conv import FoldAffineIntoConv, channel_vector
from graphopt.core.tolerance import Tolerance
from graphopt.testing import assert_pass_unchanged, assert_pass_verified
from graphs import torch_onnx

# Folding reassociates float32 products and sums: outputs agree to rounding, not bit for bit.
FOLDED = Tolerance(max_abs=1e-5, max_rel=None, cosine=0.9999999, top1_agreement=None)


def _model(ops: list[tuple[str, np.ndarray]], *, out_channels: int = 8, kernel: int = 1, group: int = 1,
           pads: int = 0, bias: bool = True, extra_reader: bool = False, channels: int = 4) -> onnx.ModelProto:
    """x[N, channels, 6, 6] -> the Mul/Add ops (constant second operand) -> Conv -> y. ``extra_reader``: the
    last op's result is also a graph output."""
    rng = np.random.default_rng(1)
    nodes, inits, prev = [], [], "x"
    for k, (op, value) in enumerate(ops):
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"c{k}"))
        nodes.append(helper.make_node(op, [prev, f"c{k}"], [f"t{k}"]))
        prev = f"t{k}"
    w = rng.standard_normal((out_channels, channels // group, kernel, kernel)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "w"))
    conv_inputs = [prev, "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes.append(helper.make_node("Conv", conv_inputs, ["y"], name="conv", group=group, pads=[pads] * 4))
    out = 6 + 2 * pads - kernel + 1
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", out_channels, out, out])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, ["N", channels, 6, 6]))
    graph = helper.make_graph(nodes, "affine_conv",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", channels, 6, 6])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


SCALE = np.array([0.5, -1.5, 2.0, 0.25]).reshape(4, 1, 1)
SHIFT = np.array([0.1, -0.3, 0.7, 1.2]).reshape(1, 4, 1, 1)


def test_folds_scale_and_shift_into_a_1x1_conv():
    out, result = assert_pass_verified(_model([("Mul", SCALE), ("Add", SHIFT)]), FoldAffineIntoConv(),
                                       tolerance=FOLDED)
    assert op_counts(out) == {"Conv": 1}
    assert result.stats == {"convs": 1, "removed": {"Mul": 1, "Add": 1}, "skipped": {}}
    assert out.graph.node[0].input[0] == "x"


@pytest.mark.parametrize("group", [2, 4])
def test_grouped_conv_add_then_mul_and_no_bias(group):
    model = _model([("Add", SHIFT), ("Mul", SCALE)], kernel=3, group=group, bias=False)
    out, _ = assert_pass_verified(model, FoldAffineIntoConv(), tolerance=FOLDED)
    assert op_counts(out) == {"Conv": 1}
    assert len(out.graph.node[0].input) == 3  # the shift became a bias


def test_scale_alone_folds_into_a_padded_conv_a_shift_does_not():
    out, _ = assert_pass_verified(_model([("Mul", SCALE)], kernel=3, pads=1), FoldAffineIntoConv(), tolerance=FOLDED)
    assert op_counts(out) == {"Conv": 1}
    result = assert_pass_unchanged(_model([("Mul", SCALE), ("Add", SHIFT)], kernel=3, pads=1), FoldAffineIntoConv())
    assert result.stats["skipped"] == {"shift before a padded Conv (its border would not see the shift)": 1}


def test_left_alone():
    # A single number: how activations spell constants (GELU's 0.5); folding it would hide them from fusions.
    assert_pass_unchanged(_model([("Mul", np.array([0.5]))]), FoldAffineIntoConv())
    # Varies along another axis than the channels.
    assert_pass_unchanged(_model([("Mul", np.arange(1.0, 7.0).reshape(1, 1, 6, 1))], channels=4), FoldAffineIntoConv())
    # The scaled tensor is read by something else too.
    assert_pass_unchanged(_model([("Mul", SCALE)], extra_reader=True), FoldAffineIntoConv())
    # Nothing before the conv.
    assert_pass_unchanged(_model([]), FoldAffineIntoConv())


def test_channel_vector_shapes():
    assert channel_vector(np.ones((4, 1, 1)), 4, 4) is not None
    assert channel_vector(np.ones((1, 4, 1, 1)), 4, 4) is not None
    assert channel_vector(np.ones((4,)), 4, 4) is None  # broadcasts along the last axis, not the channels
    assert channel_vector(np.ones((1, 1, 1, 4)), 4, 4) is None
    assert channel_vector(np.ones((2, 4, 1, 1)), 4, 4) is None
    assert channel_vector(np.ones((1,)), 1, 4) is None
    assert channel_vector(np.ones((4, 1, 1), dtype=np.int64), 4, 4) is None


class _NormConv(nn.Module):
    """ShiftViT's block start: GroupNorm(1, C) -> 1x1 Conv, and its downsample: GroupNorm -> 2x2 stride-2 Conv."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.norm1, self.fc1 = nn.GroupNorm(1, c), nn.Conv2d(c, 2 * c, 1)
        self.norm2, self.down = nn.GroupNorm(1, 2 * c), nn.Conv2d(2 * c, 4 * c, 2, stride=2)
        with torch.no_grad():
            for norm in (self.norm1, self.norm2):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.norm2(self.fc1(self.norm1(x))))


def test_groupnorm_export_folds_into_both_convs():
    torch.manual_seed(0)
    model = onnx.load_from_string(torch_onnx(_NormConv().eval(), (torch.randn(1, 8, 8, 8),), opset=12))
    before = op_counts(model)
    out, result = assert_pass_verified(model, FoldAffineIntoConv(), tolerance=FOLDED, shape=[2, 8, 8, 8])
    assert result.stats["convs"] == 2
    after = op_counts(out)
    assert before["Mul"] - after.get("Mul", 0) == 2 and before["Add"] - after.get("Add", 0) == 2
    assert after["InstanceNormalization"] == 2 and after["Conv"] == 2
