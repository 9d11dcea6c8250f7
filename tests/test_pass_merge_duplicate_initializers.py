"""merge_duplicate_initializers: byte-identical initializers tied; -0.0 / 0.0, dtypes, shapes, graph inputs kept."""
from __future__ import annotations

import numpy as np

from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

MergeDuplicateInitializers = get_pass("merge_duplicate_initializers")


def _model(inits: str, body: str) -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) <{inits}> {{
        {body}
    }}"""


def test_identical_weights_are_tied():
    inits = ("float[4] w1 = {1.0, 2.0, 3.0, 4.0}, float[4] w2 = {1.0, 2.0, 3.0, 4.0}, "
             "float[4] w3 = {1.0, 2.0, 3.0, 4.0}")
    body = "a = Mul(x, w1)\n b = Add(a, w2)\n y = Sub(b, w3)"
    out, result = assert_pass_verified(model_from_text(_model(inits, body)), MergeDuplicateInitializers(),
                                       tolerance=STRICT_FP32, shape=[2, 4])
    assert result.stats == {"rewritten": 2, "bytes_saved": 32, "skipped": {}}
    assert [t.name for t in out.graph.initializer] == ["w1"]
    assert [list(n.input) for n in out.graph.node] == [["x", "w1"], ["a", "w1"], ["b", "w1"]]


def test_large_weights_with_a_common_prefix_are_compared_in_full():
    values = np.arange(3000, dtype=np.float32)
    other = values.copy()
    other[-1] = -1
    same = ", ".join(f"{v:.1f}" for v in values)
    inits = (f"float[3000] w1 = {{{same}}}, float[3000] w2 = {{{same}}}, "
             f"float[3000] w3 = {{{', '.join(f'{v:.1f}' for v in other)}}}")
    body = ("a = ReduceSum<keepdims=0>(w1)\n b = ReduceSum<keepdims=0>(w2)\n c = ReduceSum<keepdims=0>(w3)\n"
            " s = Add(a, b)\n t = Add(s, c)\n y = Add(x, t)")
    out, result = assert_pass_verified(model_from_text(_model(inits, body)), MergeDuplicateInitializers(),
                                       shape=[2, 4])
    assert result.stats["rewritten"] == 1
    assert sorted(t.name for t in out.graph.initializer) == ["w1", "w3"]


def test_different_bytes_types_or_shapes_are_not_tied():
    inits = ("float[1] z1 = {0.0}, float[1] z2 = {-0.0}, double[1] z3 = {0.0}, float[1, 1] z4 = {0.0}, "
             "int64[1] axes = {1}")
    body = ("a = Add(x, z1)\n b = Add(a, z2)\n c = Cast<to=11>(b)\n d = Add(c, z3)\n e = Cast<to=1>(d)\n"
            " f = Add(e, z4)\n y = ReduceSum(f, axes)")
    text = _model(inits, body).replace("float[N, 4] y", "float[N, 1] y")
    result = assert_pass_unchanged(model_from_text(text), MergeDuplicateInitializers())
    assert result.stats["rewritten"] == 0
