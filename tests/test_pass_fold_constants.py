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
    out, result = assert_pass_verified(model, FoldConstants(reshape_targets=False), shape=[5, 3, 4])
    # Only the Constant nodes became initializers: the batch-dependent arithmetic stays.
    assert op_counts(out) == {"Concat": 1, "Gather": 1, "Reshape": 1, "Shape": 1}


def _target(model) -> list[int]:
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == reshape.input[1])).tolist()


def test_dynamic_batch_reshape_target_becomes_constant_with_0():
    """Reshape(x, [Shape(x)[0], 12]): the batch is x's own dim 0, so the target is [0, 12] and the model still
    serves every batch size."""
    model = batch_shape_arithmetic("N")
    out, result = assert_pass_verified(model, FoldConstants(), shape=[5, 3, 4])
    assert op_counts(out) == {"Reshape": 1}
    assert _target(out) == [0, 12]
    assert result.stats["reshape_targets"] == {"constant": 1, "left": {}}
    for batch in (1, 7):
        assert compare_models(model, out, shape=[batch, 3, 4]).passed


BATCH_AT_ANOTHER_POSITION = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 4] x) => (float[N, 12] y) {
        t = Transpose<perm = [1, 0, 2]>(x)
        s = Shape(x)
        i0 = Constant<value = int64[1] {0}>()
        d0 = Gather<axis = 0>(s, i0)
        rest = Constant<value = int64[1] {-1}>()
        target = Concat<axis = 0>(d0, rest)
        y = Reshape(t, target)
    }"""


def test_batch_at_another_position_stays():
    """t = (3, N, 4) reshaped to [N, -1]: the batch is t's dim 1, not its dim 0, so 0 would be wrong there."""
    model = model_from_text(BATCH_AT_ANOTHER_POSITION)
    out, result = assert_pass_verified(model, FoldConstants(), shape=[5, 3, 4])
    assert result.stats["reshape_targets"] == {
        "constant": 0, "left": {"a dynamic dim that is not the input's at the same position": 1}}
    # Only the Constant nodes became initializers: the target is still computed from x's shape.
    assert op_counts(out) == {"Concat": 1, "Gather": 1, "Reshape": 1, "Shape": 1, "Transpose": 1}


def test_slice_of_shape_and_allowzero():
    """Shape -> Slice (the flatten of a patch embedding) is read too; with allowzero=1 a 0 would mean an empty
    dim, so such a Reshape keeps its computed target."""
    text = """
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[N, 8, 2, 2] x) => (float[N, 8, 4] y, float[N, 8, 4] y2) {
        s = Shape(x)
        b = Constant<value = int64[1] {0}>()
        e = Constant<value = int64[1] {2}>()
        head = Slice(s, b, e)
        tail = Constant<value = int64[1] {4}>()
        target = Concat<axis = 0>(head, tail)
        y = Reshape(x, target)
        y2 = Reshape<allowzero = 1>(x, target)
    }"""
    model = model_from_text(text)
    out, result = assert_pass_verified(model, FoldConstants(), shape=[3, 8, 2, 2])
    assert result.stats["reshape_targets"] == {"constant": 1, "left": {"allowzero=1: 0 would mean a zero dim": 1}}
    first = next(n for n in out.graph.node if n.op_type == "Reshape" and not n.attribute)
    assert onnx.numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == first.input[1])).tolist() \
        == [0, 8, 4]
    assert compare_models(model, out, shape=[6, 8, 2, 2]).passed


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
