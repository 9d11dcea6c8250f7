"""simplify and infer_shapes: positive, negative, numerics, checker, idempotence."""
from __future__ import annotations

import pytest

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

Simplify = get_pass("simplify")
InferShapes = get_pass("infer_shapes")

FOLDABLE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 8] x) => (float[N, 8] y) {
    two = Constant<value = float[1] {2.0}>()
    three = Constant<value = float[1] {3.0}>()
    six = Mul(two, three)
    i = Identity(x)
    y = Mul(i, six)
}"""

ALREADY_SIMPLE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 8] x) => (float[N, 8] y) {
    y = Relu(x)
}"""


def test_simplify_folds_constants_and_identities():
    out, result = assert_pass_verified(model_from_text(FOLDABLE), Simplify(), tolerance=STRICT_FP32, shape=[3, 8])
    assert op_counts(out) == {"Mul": 1}
    assert result.stats["nodes_before"] == 5 and result.stats["nodes_after"] == 1


def test_simplify_leaves_a_simple_graph_alone():
    assert_pass_unchanged(model_from_text(ALREADY_SIMPLE), Simplify())


def test_simplify_skip_records_and_changes_nothing():
    result = assert_pass_unchanged(model_from_text(FOLDABLE), Simplify(skip=True))
    assert result.stats == {"skipped": "skip: true"}


def test_simplify_fixed_input_shape():
    out, _ = assert_pass_verified(model_from_text(FOLDABLE), Simplify(fixed_input_shape={"x": [2, 8]}),
                                  shape=[2, 8])
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [2, 8]


def test_simplify_fixed_input_shape_validation():
    with pytest.raises(ValueError, match="positive"):
        Simplify(fixed_input_shape={"x": [0, 8]})


def test_infer_shapes_annotates_and_is_idempotent():
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 8] x) => (float[N, 8] y) {
        a = Relu(x)
        y = Sigmoid(a)
    }""")
    out, result = assert_pass_verified(model, InferShapes(), shape=[2, 8])
    assert result.stats["shaped_tensors_after"] > result.stats["shaped_tensors_before"]
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in out.graph.value_info}
    assert shapes["a"] == ["N", 8]


def test_infer_shapes_leaves_a_fully_shaped_graph_alone():
    assert_pass_unchanged(model_from_text(ALREADY_SIMPLE), InferShapes())


def test_infer_shapes_keeps_what_it_inferred_before_an_unknown_op_and_writes_nothing(tmp_path, monkeypatch):
    """onnxruntime's inference entry point saves sym_shape_infer_temp.onnx into the working directory and drops
    its partial result when an op stops it; graphopt keeps the shapes before and beside that op, writes nothing."""
    from graphopt.core.shapes import infer_shapes

    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 13, "custom" : 1]>
    g (float[N, 8] x) => (float y, float[N, 8] z) {
        a = Transpose<perm = [1, 0]>(x)
        b = custom.MyOp(a)
        y = Relu(b)
        z = Sigmoid(x)
    }""")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRAPHOPT_SHAPE_CACHE", "0")  # run the inference itself, not a cached result
    out = infer_shapes(model)
    assert list(tmp_path.iterdir()) == []
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in (*out.graph.value_info, *out.graph.output) if v.type.tensor_type.HasField("shape")}
    assert shapes["a"] == [8, "N"] and shapes["z"] == ["N", 8]
    assert "b" not in shapes  # MyOp's output: no inference knows it


def test_onnxsim_failure_is_one_clean_line_naming_the_pass(monkeypatch):
    """onnxsim raises RuntimeError from C++ on models it cannot take (the ONNX backend's
    test_affine_grid_3d_align_corners_expanded: "Nodes in a graph must be topologically sorted, ..."): the run
    stops with a deliberate PassError quoting onnxsim's first line, not the pipeline's wrapper of a raw crash."""
    import onnxsim

    from graphopt.core.errors import PassError
    from graphopt.core.pipeline import run_pipeline

    def fail(*args, **kwargs):
        raise RuntimeError("Nodes in a graph must be topologically sorted, however input 'a' of node:\nname: ...")

    monkeypatch.setattr(onnxsim, "simplify", fail)
    with pytest.raises(PassError) as info:
        run_pipeline(model_from_text(FOLDABLE), [(Simplify(), "passes[0]", "stop")], inputs=None, input_name=None)
    assert str(info.value) == ("pass simplify: onnxsim cannot simplify this model: RuntimeError: Nodes in a graph "
                               "must be topologically sorted, however input 'a' of node:")
    assert info.value.__cause__ is None
