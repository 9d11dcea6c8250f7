"""merge_reshapes: pairs merged, the second target's 0s resolved exactly, allowzero kept, near-misses left."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

MergeReshapes = get_pass("merge_reshapes")


def _model(s1: str, s2: str, out: str, opset: int = 14, z2: int = 0, x: str = "N, 6, 4") -> str:
    attr = f"<allowzero={z2}>" if z2 else ""
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[{x}] x) => (float[{out}] y) {{
        s1 = Constant<value = int64[{s1.count(',') + 1}] {{{s1}}}>()
        s2 = Constant<value = int64[{s2.count(',') + 1}] {{{s2}}}>()
        a = Reshape(x, s1)
        y = Reshape{attr}(a, s2)
    }}"""


def _target(model) -> list[int]:
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    return [int(v) for v in {**inits, **consts}[reshape.input[1]]]


@pytest.mark.parametrize("s1, s2, out, target", [
    ("0, 24", "0, 4, 6", "N, 4, 6", [0, 4, 6]),  # s1 copies x's dim 0: the merged 0 copies it too
    ("0, 3, 8", "0, 24, -1", "N, 24, 1", [0, 24, -1]),
    ("-1, 12", "4, 0", "M, 12", [4, 12]),  # the 0 copies s1's 12
])
def test_pairs_merge_with_the_target_resolved(s1, s2, out, target):
    out_model, result = assert_pass_verified(model_from_text(_model(s1, s2, out)), MergeReshapes(),
                                             tolerance=STRICT_FP32, shape=[2, 6, 4])
    assert result.stats["rewritten"] == 1
    assert op_counts(out_model)["Reshape"] == 1
    assert _target(out_model) == target


def test_a_zero_copying_an_inferred_dim_takes_the_inferred_value():
    text = _model("2, -1", "0, 3, 2", "2, 3, 2", x="2, 6")
    out, result = assert_pass_verified(model_from_text(text), MergeReshapes(), shape=[2, 6])
    assert _target(out) == [2, 3, 2]


def test_allowzero_keeps_the_target_as_it_is():
    text = _model("0, 0", "2, 0, 24", "2, 0, 24", z2=1, x="2, 0, 4")
    out, result = assert_pass_verified(model_from_text(text), MergeReshapes(),
                                       inputs=[{"x": np.zeros((2, 0, 4), np.float32)}])
    assert _target(out) == [2, 0, 24]
    reshape = next(n for n in out.graph.node if n.op_type == "Reshape")
    assert [a.i for a in reshape.attribute if a.name == "allowzero"] == [1]


def test_a_zero_copying_an_unknown_dim_is_left():
    # The 0 of s2 copies the intermediate dim 0, which is the inferred -1: unknown with a symbolic batch.
    result = assert_pass_unchanged(model_from_text(_model("-1, 4", "0, 2, 2", "M, 2, 2")), MergeReshapes())
    assert result.stats["skipped"] == {"0 in the second target copies intermediate dim 0, which is not known": 1}


def test_onnxslims_mistake_is_not_made():
    # x [N, 6, 4] -> [6, N, 4] keeps 0 unresolvable against x (x's dim 1 is 6, the intermediate's is N).
    text = """
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[2, 6, 4] x) => (float[6, 2, 4] y) {
        s1 = Constant<value = int64[3] {6, 2, 4}>()
        s2 = Constant<value = int64[3] {6, 0, 4}>()
        a = Reshape(x, s1)
        y = Reshape(a, s2)
    }"""
    out, _ = assert_pass_verified(model_from_text(text), MergeReshapes(), shape=[2, 6, 4])
    assert _target(out) == [6, 2, 4]


def test_computed_second_target_and_shared_first_reshape_are_left():
    text = """
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[N, 6, 4] x, int64[2] s2) => (float[?, ?] y, float[N, 24] z) {
        s1 = Constant<value = int64[2] {0, 24}>()
        z = Reshape(x, s1)
        y = Reshape(z, s2)
    }"""
    result = assert_pass_unchanged(model_from_text(text), MergeReshapes())
    assert result.stats["skipped"] == {"first Reshape read elsewhere": 1}
    text = text.replace("float[N, 24] z", "float[N, 4, 6] z").replace("z = Reshape(x, s1)\n", "a = Reshape(x, s1)\n")
    text = text.replace("y = Reshape(z, s2)", "y = Reshape(a, s2)\n z = Reshape(x, s1)")
    result = assert_pass_unchanged(model_from_text(text.replace("float[N, 4, 6] z", "float[N, 24] z")),
                                   MergeReshapes())
    assert result.stats["skipped"] == {"second target is computed": 1}
