"""fold_constants: positive (constants, shapes, no-ops), negative, numerics, checker, idempotence."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.testing import (STRICT_FP32, assert_pass_unchanged, assert_pass_verified, compare_models,
                              model_from_text)
from graphopt.core.feeds import make_inputs

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


@pytest.mark.parametrize("domain_field", [True, False], ids=["domain", "no-domain"])
def test_inferred_shapes_let_deep_shape_arithmetic_fold(domain_field):
    """Shape(h) of an intermediate tensor: its static dims (3, 4) are only known after shape inference; the
    dynamic batch stays symbolic, so the folded target is [-1, 12] and the model keeps serving any batch. The
    same without the nodes' domain field, as torch exports write them (onnx-graphsurgeon reads domain None)."""
    model = model_from_text(DEEP_SHAPE_ARITHMETIC)
    if not domain_field:
        for node in model.graph.node:
            node.ClearField("domain")
    out, result = assert_pass_verified(model, FoldConstants(), shape=[5, 3, 4])
    assert op_counts(out) == {"Relu": 1, "Reshape": 1}
    target = next(t for t in out.graph.initializer if t.name == out.graph.node[1].input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [-1, 12]
    assert compare_models(model, out, shape=[7, 3, 4]).passed  # another batch size than the verification's


def test_without_shape_inference_deep_shape_arithmetic_stays():
    model = model_from_text(DEEP_SHAPE_ARITHMETIC)
    out, _ = assert_pass_verified(model, FoldConstants(infer_shapes=False), shape=[5, 3, 4])
    assert op_counts(out)["Shape"] == 1


def _initializers(model) -> dict[str, list]:
    return {t.name: onnx.numpy_helper.to_array(t).tolist() for t in model.graph.initializer}


def _input_of(model, output: str, index: int = 0) -> str:
    return next(n for n in model.graph.node if output in n.output).input[index]


def test_shape_start_end_fold_to_the_slice_they_name():
    """Shape-15's start / end: negative counts from the end, both clamped to [0, rank]. Folded where the dims
    they select are static; where they include the dynamic batch the Shape stays."""
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 15]>
    g (float[N, 3, 4, 5] x) => (int64[3] y1, int64[2] y2, int64[2] y3, int64[0] y4, int64[1] y5, int64[4] y6) {
        s1 = Shape<start = 1>(x)
        y1 = Identity(s1)
        s2 = Shape<start = -2>(x)
        y2 = Identity(s2)
        s3 = Shape<start = 1, end = -1>(x)
        y3 = Identity(s3)
        s4 = Shape<start = 3, end = 1>(x)
        y4 = Identity(s4)
        s5 = Shape<start = -10, end = 1>(x)
        y5 = Identity(s5)
        s6 = Shape<start = -10, end = 10>(x)
        y6 = Identity(s6)
    }""")
    out, result = assert_pass_verified(model, FoldConstants(), shape=[2, 3, 4, 5])
    values = _initializers(out)
    assert [values[_input_of(out, y)] for y in ("y1", "y2", "y3", "y4")] == [[3, 4, 5], [4, 5], [3, 4], []]
    assert op_counts(out) == {"Identity": 6, "Shape": 2}  # s5 = [N], s6 = [N, 3, 4, 5]: the batch is dynamic
    assert compare_models(model, out, shape=[7, 3, 4, 5]).passed


def test_shape_arithmetic_with_negative_indices_and_steps():
    """Gather with a negative index, Slice stepping backwards from a start before the beginning (ONNX clamps it
    to 0 and takes element 0: [2]; Python's slicing would give []), Slice with a step of 2, Concat, Unsqueeze."""
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3, 4, 5] x) => (float[2, 60] y, int64[3] z) {
        s = Shape(x)
        last = Constant<value = int64 {-1}>()
        w = Gather<axis = 0>(s, last)
        zero = Constant<value = int64[1] {0}>()
        w1 = Unsqueeze(w, zero)
        back = Constant<value = int64[1] {-1}>()
        before = Constant<value = int64[1] {-100}>()
        far = Constant<value = int64[1] {-1000}>()
        b = Slice(s, before, far, zero, back)
        one = Constant<value = int64[1] {1}>()
        big = Constant<value = int64[1] {100}>()
        two = Constant<value = int64[1] {2}>()
        odd = Slice(s, one, big, zero, two)
        mid = Constant<value = int64[1] {12}>()
        target = Concat<axis = 0>(b, mid, w1)
        r = Reshape(x, target)
        flat = Constant<value = int64[2] {2, 60}>()
        y = Reshape(r, flat)
        z = Concat<axis = 0>(odd, w1)
    }""")
    out, _ = assert_pass_verified(model, FoldConstants(), shape=[2, 3, 4, 5])
    assert op_counts(out) == {"Concat": 1, "Reshape": 2}
    assert _initializers(out)[_input_of(out, "r", 1)] == [2, 12, 5]
    concat = next(n for n in out.graph.node if n.op_type == "Concat")
    assert [_initializers(out)[i] for i in concat.input] == [[3, 5], [5]]


def test_cast_to_another_dtype_is_kept():
    """A Cast that changes the dtype rounds (float -> float16 / bfloat16 -> float): only a Cast to the dtype its
    input already has is a no-op. bfloat16 has no numpy dtype: gs holds it as the ONNX enum, which a numpy dtype
    comparison cannot name."""
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) {
        h = Cast<to = 10>(x)
        f = Cast<to = 1>(h)
        b = Cast<to = 16>(f)
        y = Cast<to = 1>(b)
    }""")
    assert_pass_unchanged(model, FoldConstants())
    # Rounding is what would be lost: the input through float16 and bfloat16 differs from the input.
    x = np.array([[1.0001, 3.14159, -2.71828, 1e-8]], dtype=np.float32)
    cmp = compare_models(model, model_from_text(IDENTITY_MODEL), inputs=[x])
    assert not cmp.passed


IDENTITY_MODEL = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) {
        y = Identity(x)
    }"""


def test_cast_of_unknown_dtype_is_kept():
    """Without shape inference an intermediate tensor has no dtype: its Cast may change it, so it stays."""
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) {
        r = Relu(x)
        c = Cast<to = 1>(r)
        y = Relu(c)
    }""")
    assert_pass_unchanged(model, FoldConstants(infer_shapes=False))
    out, result = assert_pass_verified(model, FoldConstants(), shape=[2, 4])  # with inference: float, dropped
    assert result.stats["noops_removed"] == {"Cast to the same dtype": 1}


def test_squeeze_of_empty_axes_is_kept_on_dims_of_size_1():
    """Squeeze with an empty axes input: ONNX's reference and shape inference squeeze nothing, onnxruntime
    squeezes every dim of size 1 (as if axes were not given). Either way it is a no-op only on a tensor without
    such dims, so this one stays; Unsqueeze of no axes is a no-op."""
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 1, 4] x) => (float[N, 1, 4] y) {
        none = Constant<value = int64[0] {}>()
        s = Squeeze(x, none)
        u = Unsqueeze(s, none)
        y = Relu(u)
    }"""
    model = model_from_text(text)
    model.graph.output[0].type.tensor_type.ClearField("shape")  # its rank is what the two readings disagree on
    out, result = assert_pass_verified(model, FoldConstants(), shape=[3, 1, 4])
    assert result.stats["noops_removed"] == {"Unsqueeze of no axes": 1}
    assert op_counts(out) == {"Relu": 1, "Squeeze": 1}
    # Without dims of size 1, batch included (a dynamic batch may be 1): both go.
    without_dims_of_1 = model_from_text(text.replace("N, 1, 4", "3, 2, 4"))
    out, result = assert_pass_verified(without_dims_of_1, FoldConstants(), shape=[3, 2, 4])
    assert op_counts(out) == {"Relu": 1}
    assert result.stats["noops_removed"] == {"Unsqueeze of no axes": 1, "Squeeze of no axes, no dim of size 1": 1}


IF_WITH_FOLDABLE_BRANCHES = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 4] x) => (float[N, 12] y) <float zero = {0.0}> {
        total = ReduceSum<keepdims = 0>(x)
        positive = Greater(total, zero)
        y = If(positive) <
            then_branch = then_g () => (float[N, 12] a) {
                s = Shape(x)
                i1 = Constant<value = int64[1] {1}>()
                d1 = Gather<axis = 0>(s, i1)
                i2 = Constant<value = int64[1] {2}>()
                d2 = Gather<axis = 0>(s, i2)
                prod = Mul(d1, d2)
                minus1 = Constant<value = int64[1] {-1}>()
                target = Concat<axis = 0>(minus1, prod)
                a = Reshape(x, target)
            },
            else_branch = else_g () => (float[N, 12] b) {
                two = Constant<value = float[1] {2.0}>()
                three = Constant<value = float[1] {3.0}>()
                six = Mul(two, three)
                flat = Constant<value = int64[2] {-1, 12}>()
                r = Reshape(x, flat)
                b = Mul(r, six)
            }>
    }"""


def _branches(model) -> dict[str, dict[str, int]]:
    node = next(n for n in model.graph.node if n.op_type == "If")
    return {a.name: op_counts(onnx.ModelProto(graph=a.g)) for a in node.attribute}


def test_folds_inside_if_branches():
    """Constant and static shape arithmetic inside If branches folds (the outer x's static dims count), the
    branches stay topologically sorted (the checker's full check), and the pass says it changed the graph
    though the main graph has nothing to fold."""
    model = model_from_text(IF_WITH_FOLDABLE_BRANCHES)
    out, result = assert_pass_verified(model, FoldConstants(), shape=[2, 3, 4])
    assert _branches(out) == {"then_branch": {"Reshape": 1}, "else_branch": {"Mul": 1, "Reshape": 1}}
    assert op_counts(out) == op_counts(model)
    assert result.stats["folded"] == 12
    # Both branches taken: inputs summing above and below zero.
    for sign in (1, -1):
        x = sign * np.abs(make_inputs([2, 3, 4], 1, seed=3)[0])
        assert compare_models(model, out, inputs=[x]).passed


LOOP_WITH_FOLDABLE_BODY = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) <int64 trips = {3}, bool go = {1}> {
        y = Loop(trips, go, x) <body = body (int64 i, bool c_in, float[N, 4] y_in) => (bool c_out, float[N, 4] y_out) {
            c_out = Identity(c_in)
            one = Constant<value = float[1] {1.0}>()
            two = Add(one, one)
            y_out = Mul(y_in, two)
        }>
    }"""


def test_folds_inside_a_loop_body():
    model = model_from_text(LOOP_WITH_FOLDABLE_BODY)
    out, result = assert_pass_verified(model, FoldConstants(), shape=[2, 4])
    body = next(a.g for a in out.graph.node[0].attribute if a.name == "body")
    assert op_counts(onnx.ModelProto(graph=body)) == {"Identity": 1, "Mul": 1}
    assert result.stats["folded"] == 2


def test_random_ops_are_never_folded():
    """A random op has constant inputs (none, or a constant's shape) but its value is a fresh draw: it stays;
    the deterministic arithmetic beside it folds."""
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) {
        r = RandomUniform<shape = [1, 4], low = 0.0, high = 0.0, dtype = 1>()
        shape = Constant<value = float[1, 4] {1.0, 2.0, 3.0, 4.0}>()
        n = RandomNormalLike<mean = 0.0, scale = 1e-30>(shape)
        two = Constant<value = float[1] {2.0}>()
        four = Add(two, two)
        a = Add(x, r)
        b = Add(a, n)
        y = Mul(b, four)
    }""")
    out, result = assert_pass_verified(model, FoldConstants(), shape=[2, 4])
    assert op_counts(out) == {"Add": 2, "Mul": 1, "RandomNormalLike": 1, "RandomUniform": 1}
    assert result.stats["left"] == {"random": 2}


def test_an_attribute_not_modelled_leaves_the_node():
    """Shape with an attribute the folding does not model (an op from a newer opset, a typo onnxruntime would
    ignore): its value is not known here, so the node stays. Built with onnx-graphsurgeon directly, since
    onnx.checker rejects the attribute."""
    import onnx_graphsurgeon as gs

    x = gs.Variable("x", np.float32, [2, 3, 4])
    s, d, y = gs.Variable("s", np.int64, [3]), gs.Variable("d", np.int64, [1]), gs.Variable("y", np.float32, None)
    index = gs.Constant("index", np.array([1], dtype=np.int64))
    nodes = [gs.Node("Shape", inputs=[x], outputs=[s], attrs={"start": 0, "frobnicate": 1}),
             gs.Node("Gather", inputs=[s, index], outputs=[d], attrs={"axis": 0}),
             gs.Node("Reshape", inputs=[x, gs.Constant("t", np.array([2, -1], dtype=np.int64))], outputs=[y])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y, d], opset=15)
    result = FoldConstants()(graph)
    assert [n.op for n in graph.nodes] == ["Shape", "Gather", "Reshape"]
    assert isinstance(graph.nodes[1].outputs[0], gs.Variable) and not result.changed
