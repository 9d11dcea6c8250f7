"""fold_constants: positive (constants, shapes, no-ops), negative, numerics, checker, idempotence."""
from __future__ import annotations

import onnx

from graphopt.ir import op_counts
from graphopt.pass_infra import get_pass
from graphopt.testing import (STRICT_FP32, assert_pass_unchanged, assert_pass_verified, compare_models,
                              model_from_text)

FoldConstants = get_pass("fold_constants")


def test_folds_constant_arithmetic_and_removes_noops():
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 8] x) => (float[N, 8] y) {
        two = Constant<value = float[1] {2.0}>()
        three = Constant<value = float[1] {3.0}>()
        six = Mul(two, three)
        i = Identity(x)
        c = Cast<to = 1>(i)
        y = Mul(c, six)
    }""")
    out, result = assert_pass_verified(model, FoldConstants(), tolerance=STRICT_FP32, shape=[3, 8])
    assert op_counts(out) == {"Mul": 1}
    assert result.stats["noops_removed"] == {"Identity": 1, "Cast to the same dtype": 1}


def batch_shape_arithmetic(batch: str):
    """y = Reshape(x, [x.shape[0], 12]) for x shaped (batch, 3, 4), the target computed from Shape(x)."""
    return model_from_text(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[{batch}, 3, 4] x) => (float[{batch}, 12] y) {{
        s = Shape(x)
        i0 = Constant<value = int64[1] {{0}}>()
        d0 = Gather<axis = 0>(s, i0)
        rest = Constant<value = int64[1] {{12}}>()
        target = Concat<axis = 0>(d0, rest)
        y = Reshape(x, target)
    }}""")


def test_folds_static_shape_arithmetic():
    model = batch_shape_arithmetic("2")
    out, result = assert_pass_verified(model, FoldConstants(), shape=[2, 3, 4])
    assert op_counts(out) == {"Reshape": 1}


def test_same_shape_reshape_is_dropped():
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 12] x) => (float[2, 12] y) {
        target = Constant<value = int64[2] {2, 12}>()
        r = Reshape(x, target)
        y = Relu(r)
    }""")
    out, result = assert_pass_verified(model, FoldConstants(), shape=[2, 12])
    assert op_counts(out) == {"Relu": 1}
    assert result.stats["noops_removed"] == {"Reshape to the same shape": 1}


def test_dynamic_batch_shape_arithmetic_is_kept():
    model = batch_shape_arithmetic("N")
    out, result = assert_pass_verified(model, FoldConstants(), shape=[5, 3, 4])
    # Only the Constant nodes became initializers: the batch-dependent arithmetic stays.
    assert op_counts(out) == {"Concat": 1, "Gather": 1, "Reshape": 1, "Shape": 1}


def test_graph_output_identity_keeps_its_name():
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) {
        r = Relu(x)
        y = Identity(r)
    }""")
    assert_pass_unchanged(model, FoldConstants())


DEEP_SHAPE_ARITHMETIC = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 4] x) => (float[N, 12] y) {
        h = Relu(x)
        s = Shape(h)
        i1 = Constant<value = int64[1] {1}>()
        d1 = Gather<axis = 0>(s, i1)
        i2 = Constant<value = int64[1] {2}>()
        d2 = Gather<axis = 0>(s, i2)
        prod = Mul(d1, d2)
        minus1 = Constant<value = int64[1] {-1}>()
        target = Concat<axis = 0>(minus1, prod)
        y = Reshape(h, target)
    }"""


def test_inferred_shapes_let_deep_shape_arithmetic_fold():
    """Shape(h) of an intermediate tensor: its static dims (3, 4) are only known after shape inference; the
    dynamic batch stays symbolic, so the folded target is [-1, 12] and the model keeps serving any batch."""
    model = model_from_text(DEEP_SHAPE_ARITHMETIC)
    out, result = assert_pass_verified(model, FoldConstants(), shape=[5, 3, 4])
    assert op_counts(out) == {"Relu": 1, "Reshape": 1}
    target = next(t for t in out.graph.initializer if t.name == out.graph.node[1].input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [-1, 12]
    assert compare_models(model, out, shape=[7, 3, 4]).passed  # another batch size than the verification's


def test_without_shape_inference_deep_shape_arithmetic_stays():
    model = model_from_text(DEEP_SHAPE_ARITHMETIC)
    out, _ = assert_pass_verified(model, FoldConstants(infer_shapes=False), shape=[5, 3, 4])
    assert op_counts(out)["Shape"] == 1
