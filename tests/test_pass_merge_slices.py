"""merge_slices: disjoint axes joined, a shared axis composed exactly (clamping, negative steps), near-misses."""
from __future__ import annotations

import itertools

import pytest

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.core.shape_arith import slice_range
from graphopt.passes.merge_slices import compose_slices
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

MergeSlices = get_pass("merge_slices")


def _ints(values) -> str:
    return f"int64[{len(values)}] {{{', '.join(str(v) for v in values)}}}"


def _model(first, second, out: str = "?, ?, ?", x: str = "N, 6, 8", opset: int = 13) -> str:
    lines = []
    for tag, params in (("p", first), ("q", second)):
        for key, values in zip(("s", "e", "a", "t"), params):
            lines.append(f"{tag}{key} = Constant<value = {_ints(values)}>()")
    n0, n1 = len(first), len(second)
    args0 = ", ".join(f"p{k}" for k in "seat"[:n0])
    args1 = ", ".join(f"q{k}" for k in "seat"[:n1])
    lines += [f"a = Slice(x, {args0})", f"y = Slice(a, {args1})"]
    body = "\n        ".join(lines)
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[{x}] x) => (float[{out}] y) {{
        {body}
    }}"""


def test_disjoint_axes_are_joined():
    text = _model(([1], [5], [1]), ([0], [-1], [-1], [2]))
    out, result = assert_pass_verified(model_from_text(text), MergeSlices(), tolerance=STRICT_FP32, shape=[2, 6, 8])
    assert result.stats["rewritten"] == 1
    assert op_counts(out)["Slice"] == 1


@pytest.mark.parametrize("first, second", [
    (([1], [7], [2]), ([1], [100], [2])),
    (([-1], [-100], [2], [-1]), ([1], [5], [2], [2])),  # reversed, then every other element
    (([0], [8], [-1], [3]), ([-1], [-9], [2], [-1])),  # strided, then reversed to before the start
    (([2], [6], [2]), ([3], [1], [2])),  # empty
    (([0, 1], [2, 5], [0, 1]), ([1, 0], [9, 2], [1, 2])),  # one axis shared, one each
])
def test_a_shared_axis_is_composed_exactly(first, second):
    text = _model(first, second, x="3, 6, 8")
    out, result = assert_pass_verified(model_from_text(text), MergeSlices(), shape=[3, 6, 8])
    assert op_counts(out)["Slice"] == 1


def test_composition_matches_numpy_everywhere():
    bounds = [-12, -7, -1, 0, 1, 3, 6, 9, 2**63 - 1, -2**63]
    for d in (0, 1, 5, 7):
        for s0, e0, st0, s1, e1, st1 in itertools.product(bounds[:8], bounds, (-2, 1, 3), (-3, 0, 2), bounds,
                                                          (-1, 2)):
            r0 = slice_range(d, s0, e0, st0)
            want = [r0[k] for k in slice_range(len(r0), s1, e1, st1)]
            assert list(slice_range(d, *compose_slices(d, (s0, e0, st0), (s1, e1, st1)))) == want


def test_a_chain_of_three_becomes_one():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 6, 8] x) => (float[?, ?, ?] y) {
        s = Constant<value = int64[1] {1}>()
        e = Constant<value = int64[1] {100}>()
        a0 = Constant<value = int64[1] {0}>()
        a1 = Constant<value = int64[1] {1}>()
        a2 = Constant<value = int64[1] {2}>()
        a = Slice(x, s, e, a1)
        b = Slice(a, s, e, a2)
        y = Slice(b, s, e, a1)
    }"""
    out, result = assert_pass_verified(model_from_text(text), MergeSlices(), shape=[2, 6, 8])
    assert op_counts(out)["Slice"] == 1


@pytest.mark.parametrize("first, second, x, reason", [
    (([1], [5], [-1]), ([0], [2], [2]), "N, 6, 8", None),  # -1 is axis 2 of rank 3: composed (dim known)
    (([1], [5], [1]), ([0], [2], [1]), "N, M, 8", "both slice axis 1, of unknown size"),
    (([1], [5], [0]), ([0], [2], [0]), "N, 6, 8", "both slice axis 0, of unknown size"),
])
def test_shared_axis_needs_a_known_dim(first, second, x, reason):
    model = model_from_text(_model(first, second, x=x))
    if reason is None:
        assert_pass_verified(model, MergeSlices(), shape=[2, 6, 8])
    else:
        result = assert_pass_unchanged(model, MergeSlices())
        assert result.stats["skipped"] == {reason: 1}


def test_computed_parameters_and_shared_first_slice_are_left():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 6, 8] x, int64[1] e) => (float[?, ?, ?] y, float[?, ?, ?] b, float[?, ?, ?] c) {
        s = Constant<value = int64[1] {1}>()
        a1 = Constant<value = int64[1] {1}>()
        a2 = Constant<value = int64[1] {2}>()
        a = Slice(x, s, e, a1)
        y = Slice(a, s, s, a2)
        b = Slice(x, s, s, a1)
        c = Slice(b, s, s, a2)
    }"""
    result = assert_pass_unchanged(model_from_text(text), MergeSlices())
    assert result.stats["skipped"] == {"ends computed": 1, "first Slice read elsewhere": 1}


def test_opset_9_attributes_are_left_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 9]>
    g (float[N, 6, 8] x) => (float[?, ?, ?] y) {
        a = Slice<starts=[1], ends=[5], axes=[1]>(x)
        y = Slice<starts=[1], ends=[5], axes=[2]>(a)
    }"""
    assert_pass_unchanged(model_from_text(text), MergeSlices())


def test_shapes_are_inferred_when_a_pair_needs_them():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 6, 8] x) => (float[?, ?, ?] y) {
        s = Constant<value = int64[1] {1}>()
        e = Constant<value = int64[1] {100}>()
        a = Constant<value = int64[1] {-1}>()
        r = Relu(x)
        b = Slice(r, s, e, a)
        y = Slice(b, s, e, a)
    }"""
    out, result = assert_pass_verified(model_from_text(text), MergeSlices(), shape=[2, 6, 8])
    assert op_counts(out)["Slice"] == 1
