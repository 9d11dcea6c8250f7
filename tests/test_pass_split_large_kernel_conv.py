"""split_large_kernel_conv: Convs with a kernel axis over the limit as summed Convs over kernel slices (1-D and
2-D, pads, dilations, groups, bias once); strides along a split axis and small kernels left alone."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphopt.core.ir import op_counts
from graphopt.core.tolerance import Tolerance
from graphopt.passes.split_large_kernel_conv import SplitLargeKernelConv
from graphopt.testing import assert_pass_unchanged, assert_pass_verified

# Float32 reassociation: the kernel's products summed in pieces.
REASSOCIATED = Tolerance(max_abs=2e-5, max_rel=None, cosine=0.999999, top1_agreement=None)


def _model(kernel: list[int], size: list[int], *, group: int = 1, bias: bool = True, opset: int = 13,
           **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    channels = 2 * group
    w = (rng.standard_normal((2 * group, channels // group, *kernel)) / np.sqrt(np.prod(kernel))).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(2 * group).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", group=group, **attrs)
    rank = len(size) + 2
    graph = helper.make_graph(
        [node], "large_kernel", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", channels, *size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [f"d{i}" for i in range(rank)])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_1d_kernel_300_splits_in_two():
    model = _model([300], [400], pads=[7, 3])
    out, result = assert_pass_verified(model, SplitLargeKernelConv(), tolerance=REASSOCIATED, shape=[2, 2, 400])
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == {"Conv": 2, "Slice": 2, "Sum": 1}
    assert sum(len(n.input) == 3 for n in out.graph.node if n.op_type == "Conv") == 1  # the bias once


@pytest.mark.parametrize("attrs", [
    {},
    {"pads": [1, 9, 3, 0]},
    {"pads": [2, 2, 2, 2], "dilations": [2, 3]},
    {"strides": [2, 1]},  # a stride along the axis that is not split
])
@pytest.mark.parametrize("opset", [9, 13])
def test_2d_pieces_with_pads_dilations_groups(attrs, opset):
    model = _model([3, 9], [8, 30], group=2, opset=opset, **attrs)
    out, result = assert_pass_verified(model, SplitLargeKernelConv(max_kernel=4), tolerance=REASSOCIATED,
                                       shape=[2, 4, 8, 30])
    assert op_counts(out)["Conv"] == 3 and op_counts(out)["Sum"] == 1


def test_both_axes_split_without_bias():
    model = _model([7, 9], [12, 12], bias=False, pads=[3, 4, 3, 4])
    out, _ = assert_pass_verified(model, SplitLargeKernelConv(max_kernel=4), tolerance=REASSOCIATED,
                                  shape=[1, 2, 12, 12])
    assert op_counts(out)["Conv"] == 6


def test_left_alone():
    result = assert_pass_unchanged(_model([3, 9], [8, 30], strides=[1, 2]), SplitLargeKernelConv(max_kernel=4))
    assert result.stats["skipped"] == {"stride > 1 along a split kernel axis": 1}
    result = assert_pass_unchanged(_model([3, 9], [8, 30], auto_pad="SAME_UPPER"), SplitLargeKernelConv(max_kernel=4))
    assert result.stats["skipped"] == {"auto_pad SAME_*": 1}
    result = assert_pass_unchanged(_model([3, 9], [8, 30]), SplitLargeKernelConv())
    assert result.stats == {"rewritten": 0, "skipped": {}}


def test_max_kernel_is_checked():
    with pytest.raises(ValueError, match="max_kernel"):
        SplitLargeKernelConv(max_kernel=0)
