"""softmax_transpose: positive, negative, numerics, checker, idempotence, transpose fusion."""
from __future__ import annotations

import pytest

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

SoftmaxTranspose = get_pass("softmax_transpose")


def _attn_like(opset: int = 13, axis: int = -1, rank_shape: str = "N, 4, 5, 6") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[{rank_shape}] x) => (float[{rank_shape}] y) {{
        m = Mul(x, x)
        y = Softmax<axis={axis}>(m)
    }}"""


def test_rewrites_last_axis_softmax_of_rank4():
    model = model_from_text(_attn_like())
    out, result = assert_pass_verified(model, SoftmaxTranspose(), tolerance=STRICT_FP32, shape=[3, 4, 5, 6])
    assert result.stats["rewritten"] == 1
    assert op_counts(out) == {"Mul": 1, "Softmax": 1, "Transpose": 2}
    softmax = next(n for n in out.graph.node if n.op_type == "Softmax")
    assert [a.i for a in softmax.attribute if a.name == "axis"] == [1]
    perms = [list(a.ints) for n in out.graph.node if n.op_type == "Transpose" for a in n.attribute]
    assert perms == [[0, 3, 2, 1], [0, 3, 2, 1]]


def test_positive_axis_spelling_matches_too():
    model = model_from_text(_attn_like(axis=3))
    out, result = assert_pass_verified(model, SoftmaxTranspose(), shape=[2, 4, 5, 6])
    assert result.stats["rewritten"] == 1


@pytest.mark.parametrize("text, reason", [
    (_attn_like(axis=1), "axis 1, not 3"),
    (_attn_like(rank_shape="N, 5, 6"), "rank 3, not 4"),
])
def test_leaves_other_softmaxes_alone(text, reason):
    result = assert_pass_unchanged(model_from_text(text), SoftmaxTranspose())
    assert result.stats["skipped"] == {reason: 1}


def test_shape_filter_selects_softmaxes():
    model = model_from_text(_attn_like(rank_shape="N, 4, 5, 6"))
    result = assert_pass_unchanged(model, SoftmaxTranspose(shape=[None, 6, 197, 197]))
    assert result.stats["rewritten"] == 0
    _, result = assert_pass_verified(model, SoftmaxTranspose(shape=[None, 4, 5, 6]), shape=[1, 4, 5, 6])
    assert result.stats["rewritten"] == 1


def test_opset_below_13_is_left_alone():
    # Before opset 13 Softmax(axis=1) flattened axes 1..3: the rewrite would change the maths.
    result = assert_pass_unchanged(model_from_text(_attn_like(opset=11)), SoftmaxTranspose())
    assert result.stats["skipped"] == {"opset 11 < 13": 1}


def test_adjacent_transposes_are_composed_or_cancelled():
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4, 5, 6] x) => (float[N, 5, 6, 4] y) {
        t = Transpose<perm=[0, 3, 2, 1]>(x)
        s = Softmax<axis=-1>(t)
        y = Transpose<perm=[0, 2, 1, 3]>(s)
    }""")
    out, result = assert_pass_verified(model, SoftmaxTranspose(), shape=[2, 4, 5, 6])
    assert result.stats["transposes_fused"] == {"cancelled": 1, "merged": 1}
    assert [n.op_type for n in out.graph.node] == ["Softmax", "Transpose"]
    assert out.graph.node[0].input[0] == "x"
    assert [list(a.ints) for a in out.graph.node[1].attribute] == [[0, 2, 3, 1]]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        SoftmaxTranspose(axis=7)
    with pytest.raises(ValueError, match="rank 4"):
        SoftmaxTranspose(shape=[1, 2, 3])
