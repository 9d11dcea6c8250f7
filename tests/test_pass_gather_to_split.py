"""gather_to_split: scalar and run Gathers tiling an axis as one Split (+ Squeeze); gaps, repeats, computed
indices and unknown sizes left alone."""
from __future__ import annotations

import onnx
import pytest

from graphopt.core.ir import op_counts
from graphopt.passes.gather_to_split import GatherToSplit
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text


def _model(indices: list[str], axis: int = 1, opset: int = 13, dims: str = "N, 3, 4") -> onnx.ModelProto:
    """Gathers of x along ``axis`` by each of ``indices`` ("2": a scalar, "[0, 1]": a run), each an output."""
    shape = [d.strip() for d in dims.split(",")]
    inits, outs = [], []
    for k, i in enumerate(indices):
        values = i.strip("[]")
        run = i.startswith("[")
        inits.append(f"int64{f'[{values.count(chr(44)) + 1}]' if run else ''} i{k} = {{{values}}}")
        out = list(shape)
        if run:
            out[axis] = str(values.count(",") + 1)
        else:
            del out[axis]
        outs.append(f"float[{', '.join(out)}] g{k}")
    body = "\n".join(f"g{k} = Gather<axis = {axis}>(x, i{k})" for k in range(len(indices)))
    return model_from_text(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[{dims}] x) => ({", ".join(outs)}) <{", ".join(inits)}> {{
        {body}
    }}""")


@pytest.mark.parametrize("indices, axis, opset, after", [
    (["0", "1", "2"], 1, 13, {"Split": 1, "Squeeze": 3}),
    (["2", "-3", "1"], 1, 13, {"Split": 1, "Squeeze": 3}),  # any order, negative indices
    (["[0, 1]", "2"], 1, 13, {"Split": 1, "Squeeze": 1}),
    (["[0, 1]", "[2, 3]"], -1, 13, {"Split": 1}),
    (["0", "1", "2"], 1, 11, {"Split": 1, "Squeeze": 3}),  # split and axes as attributes
    (["0", "1", "2"], 1, 18, {"Split": 1, "Squeeze": 3}),
])
def test_gathers_become_a_split(indices, axis, opset, after):
    model = _model(indices, axis, opset)
    out, result = assert_pass_verified(model, GatherToSplit(), tolerance=STRICT_FP32, shape=[2, 3, 4])
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == after


@pytest.mark.parametrize("indices, reason", [
    (["0", "2"], "indices do not take the axis apart (an index left out or taken twice)"),
    (["0", "1", "1", "2"], "indices do not take the axis apart (an index left out or taken twice)"),
    (["[0, 2]", "1"], "indices not consecutive ascending"),
    (["[1, 0]", "2"], "indices not consecutive ascending"),
])
def test_left_alone(indices, reason):
    result = assert_pass_unchanged(_model(indices), GatherToSplit())
    assert result.stats["skipped"] == {reason: 1}


def test_unknown_axis_size_and_single_gather():
    result = assert_pass_unchanged(_model(["0", "1", "2"], dims="N, C, 4"), GatherToSplit())
    assert result.stats["skipped"] == {"axis size unknown": 1}
    result = assert_pass_unchanged(_model(["[0, 1, 2]"]), GatherToSplit())
    assert result.stats == {"rewritten": 0, "skipped": {}}


def test_attention_qkv_unbind():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 5, 24] x) => (float[N, 2, 5, 4] y) <int64[5] s = {0, 5, 3, 2, 4}, int64 zero = {0}, int64 one = {1},
                                                     int64 two = {2}> {
        r = Reshape(x, s)
        t = Transpose<perm = [2, 0, 3, 1, 4]>(r)
        q = Gather(t, zero)
        k = Gather(t, one)
        v = Gather(t, two)
        kt = Transpose<perm = [0, 1, 3, 2]>(k)
        a = MatMul(q, kt)
        y = MatMul(a, v)
    }"""
    out, result = assert_pass_verified(model_from_text(text), GatherToSplit(), tolerance=STRICT_FP32,
                                       shape=[2, 5, 24])
    assert op_counts(out)["Split"] == 1 and "Gather" not in op_counts(out)
