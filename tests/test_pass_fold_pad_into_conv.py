"""fold_pad_into_conv: zero Pad into Conv (1-D to 3-D, opset 10 attributes, opset 18 axes), into AveragePool
with count_include_pad, into MaxPool only where exact; the other tools' bugs (zero pad into MaxPool of signed
data, AveragePool count_include_pad=0, negative pads) left alone."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt.core.ir import op_counts
from graphopt.core.tolerance import Tolerance
from graphopt.passes.fold_pad_into_conv import FoldPadIntoConv
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

# The Conv sums the same products; onnxruntime may order them differently with and without padding.
CONV = Tolerance(max_abs=1e-5, max_rel=None, cosine=0.999999, top1_agreement=None)


def _model(consumer: str, pads: list[int], *, opset: int = 13, value: str = "", pre: str = "",
           axes: list[int] | None = None, dims: str = "N, 2, 7, 7") -> str:
    rank = len(dims.split(","))
    kernel = ", ".join(["3"] * (rank - 2))
    inits = f"int64[{len(pads)}] pads = {{{', '.join(map(str, pads))}}}"
    pad_inputs = "t, pads"
    if value:
        inits += f", float v = {{{value}}}"
        pad_inputs += ", v"
    if axes is not None:
        inits += f", int64[{len(axes)}] axes = {{{', '.join(map(str, axes))}}}"
        pad_inputs += (", " if value else ", , ") + "axes"
    pad = f"p = Pad({pad_inputs})"
    if opset < 11:
        pad = f"p = Pad<pads = [{', '.join(map(str, pads))}]{', value = ' + value if value else ''}>(t)"
        inits = ""
    if consumer == "Conv":
        inits += (", " if inits else "") + f"float[3, 2, {kernel}] w = {{{', '.join(['0.1'] * 6 * 3 ** (rank - 2))}}}"
        use = "y = Conv(p, w)"
    else:
        use = f"y = {consumer}<kernel_shape = [{kernel}]>(p)"
    out = ", ".join(f"o{i}" for i in range(rank))
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[{dims}] x) => (float[{out}] y) <{inits}> {{
        t = {pre or "Identity"}(x)
        {pad}
        {use}
    }}"""


def _verified(text: str, shape: list[int], tolerance: Tolerance = CONV):
    return assert_pass_verified(model_from_text(text), FoldPadIntoConv(), tolerance=tolerance, shape=shape)


@pytest.mark.parametrize("dims, pads, shape", [
    ("N, 2, 7", [0, 0, 1, 0, 0, 2], [2, 2, 7]),
    ("N, 2, 7, 7", [0, 0, 1, 2, 0, 0, 2, 1], [2, 2, 7, 7]),
    ("N, 2, 5, 5, 5", [0, 0, 1, 0, 1, 0, 0, 0, 2, 1], [2, 2, 5, 5, 5]),
])
def test_zero_pad_into_conv(dims, pads, shape):
    out, result = _verified(_model("Conv", pads, dims=dims), shape)
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == {"Conv": 1, "Identity": 1}
    rank = len(shape)
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert [list(a.ints) for a in conv.attribute if a.name == "pads"] == [pads[2:rank] + pads[rank + 2:]]


def test_opset_10_attributes_and_opset_18_axes():
    out, _ = _verified(_model("Conv", [0, 0, 1, 1, 0, 0, 1, 1], opset=10, value="0.0"), [2, 2, 7, 7])
    assert op_counts(out) == {"Conv": 1, "Identity": 1}
    out, _ = _verified(_model("Conv", [1, 2, 0, 1], opset=18, axes=[-2, 3]), [2, 2, 7, 7])
    assert op_counts(out) == {"Conv": 1, "Identity": 1}


def test_zero_pad_into_average_pool_counts_the_padding():
    text = _model("AveragePool", [0, 0, 1, 1, 0, 0, 2, 1]).replace("AveragePool<", "AveragePool<strides = [2, 2], ")
    out, _ = _verified(text, [2, 2, 7, 7], STRICT_FP32)
    pool = next(n for n in out.graph.node if n.op_type == "AveragePool")
    assert {a.name: a.i for a in pool.attribute if a.name == "count_include_pad"} == {"count_include_pad": 1}


def test_max_pool_folds_minus_inf_and_zero_after_relu():
    out, _ = _verified(_model("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1], value="-inf"), [2, 2, 7, 7], STRICT_FP32)
    assert op_counts(out) == {"Identity": 1, "MaxPool": 1}
    out, _ = _verified(_model("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1], pre="Relu"), [2, 2, 7, 7], STRICT_FP32)
    assert op_counts(out) == {"MaxPool": 1, "Relu": 1}


@pytest.mark.parametrize("text, reason", [
    # A zero pad is not MaxPool's padding on data that can be negative (onnx-optimizer's bug).
    (_model("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1]),
     "MaxPool ignores padding: a pad value other than -inf on a tensor that can be negative"),
    # Its own padding is excluded from the average: fused, it would start to count.
    (_model("AveragePool", [0, 0, 1, 1, 0, 0, 1, 1]).replace("AveragePool<", "AveragePool<pads = [1, 1, 1, 1], "),
     "AveragePool pads already, excluded from its average (count_include_pad=0)"),
    (_model("Conv", [0, 0, -1, 0, 0, 0, 1, 0]), "a negative pad (a crop)"),
    (_model("Conv", [0, 1, 0, 0, 0, 1, 0, 0]), "pads N or C"),
    (_model("Conv", [0, 0, 1, 1, 0, 0, 1, 1], value="1.0"), "pad value is not 0"),
    (_model("AveragePool", [0, 0, 3, 0, 0, 0, 0, 0]), "a pad not smaller than the kernel"),
    # Pad then pool keeps a last window that starts in the end padding; the pool's own padding drops it.
    (_model("AveragePool", [0, 0, 1, 1, 0, 0, 2, 1]).replace("AveragePool<", "AveragePool<ceil_mode = 1, "
                                                              "strides = [2, 2], "), "pool with ceil_mode=1"),
    (_model("Conv", [0, 0, 1, 1, 0, 0, 1, 1]).replace('Pad(t, pads)', 'Pad<mode = "reflect">(t, pads)'), None),
])
def test_left_alone(text, reason):
    result = assert_pass_unchanged(model_from_text(text), FoldPadIntoConv())
    assert result.stats["skipped"] == ({reason: 1} if reason else {})


def test_pad_read_twice_is_left_alone():
    text = _model("Conv", [0, 0, 1, 1, 0, 0, 1, 1]).replace("y = Conv(p, w)", "c = Conv(p, w)\n y = ReduceSum(p)")
    assert_pass_unchanged(model_from_text(text), FoldPadIntoConv())


def test_checked_on_all_negative_data():
    """The zero-pad MaxPool refusal matters: on all-negative data the fold would turn border maxima into 0."""
    text = _model("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1], value="-inf")
    feeds = [{"x": -np.abs(np.random.default_rng(0).standard_normal((1, 2, 7, 7))).astype(np.float32) - 1}]
    assert_pass_verified(model_from_text(text), FoldPadIntoConv(), tolerance=STRICT_FP32, inputs=feeds)
