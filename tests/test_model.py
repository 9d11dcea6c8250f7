"""graphopt.core.model: one object owning a model's skeleton, weights and graph view; one structural hash."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from graphopt.core.model import Model, structure_hash
from graphopt.core.wire import WEIGHT_MIN_BYTES
from graphopt.testing import model_from_text

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (bool c, float[2] x) => (float[2] y) {
    y = If(c) <then_branch = t () => (float[2] r) { r = Relu(x) },
               else_branch = e () => (float[2] s) { s = Neg(x) }>
}"""


def _matmul(scale: float = 1.0, name: str = "w") -> onnx.ModelProto:
    """y = Relu(x @ w) with w a 16x32 float weight (2 KiB: held as an array) and a small bias (inline)."""
    w = (np.arange(16 * 32, dtype=np.float32).reshape(16, 32) / 100 * scale)
    b = np.full(32, 0.5, dtype=np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", name], ["m"]), onnx.helper.make_node("Add", ["m", "b"], ["a"]),
         onnx.helper.make_node("Relu", ["a"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 32])],
        initializer=[onnx.numpy_helper.from_array(w, name), onnx.numpy_helper.from_array(b, "b")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def test_load_holds_each_weight_once_and_saves_the_same_bytes(tmp_path):
    proto = _matmul()
    onnx.save(proto, tmp_path / "in.onnx")
    model = Model.load(tmp_path / "in.onnx")
    split = model.split()
    assert list(split.weights) == ["w"] and split.weights["w"].nbytes >= WEIGHT_MIN_BYTES
    assert model.nbytes == split.weights["w"].nbytes
    assert model.graph.tensors()["w"]._values is split.weights["w"]  # the view holds the array, not a copy
    assert model.split().weights["w"] is split.weights["w"]  # exporting the view again shares it too
    assert model.save(tmp_path / "out.onnx") == [tmp_path / "out.onnx"]
    assert (tmp_path / "out.onnx").read_bytes() == proto.SerializeToString()


def test_an_edit_through_the_view_is_what_every_edge_sees(tmp_path):
    model = Model.from_proto(_matmul())
    relu = next(n for n in model.graph.nodes if n.op == "Relu")
    relu.op = "Sigmoid"
    assert [n.op_type for n in model.split().skeleton.graph.node] == ["MatMul", "Add", "Sigmoid"]
    assert [n.op_type for n in model.proto().graph.node] == ["MatMul", "Add", "Sigmoid"]
    model.save(tmp_path / "out.onnx")
    assert [n.op_type for n in onnx.load(tmp_path / "out.onnx").graph.node] == ["MatMul", "Add", "Sigmoid"]
    model.check()


def test_session_runs_the_model_fed_its_weights():
    proto = _matmul()
    session, feeds = Model.from_proto(proto).session("compare")
    assert set(feeds) == {"w"}  # the weight is an input fed from its array; the small bias stays inline
    x = np.linspace(-1, 1, 3 * 16, dtype=np.float32).reshape(3, 16)
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    expected = np.maximum(x @ w + 0.5, 0)
    np.testing.assert_allclose(session.run(["y"], {"x": x, **feeds})[0], expected, rtol=1e-6)


def test_check_and_shapes_work_on_the_weightless_skeleton():
    model = Model.from_proto(_matmul())
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
              for vi in model.infer_shapes().graph.value_info}
    assert shapes["m"] == ["N", 32]
    broken = _matmul()
    broken.graph.node[0].input[1] = "missing"
    with pytest.raises(onnx.checker.ValidationError):
        Model.from_proto(broken).check()


def test_equal_graphs_built_twice_hash_equal():
    assert structure_hash(_matmul()) == structure_hash(_matmul())
    assert structure_hash(_matmul(), weights="values") == structure_hash(_matmul(), weights="values")
    # the same model read from protobuf (lazy constants) and held as arrays: the same content
    assert structure_hash(Model.from_proto(_matmul()), weights="values") == structure_hash(_matmul(), weights="values")
    assert structure_hash(model_from_text(IF_MODEL)) == structure_hash(model_from_text(IF_MODEL))


def test_content_forms_tell_weights_apart_as_documented():
    assert structure_hash(_matmul(2.0), weights="values") != structure_hash(_matmul(), weights="values")
    assert structure_hash(_matmul(2.0)) == structure_hash(_matmul())  # "shapes": a weight by dtype and shape
    small = _matmul()
    small.graph.initializer[1].raw_data = np.full(32, 0.25, dtype=np.float32).tobytes()
    assert structure_hash(small) != structure_hash(_matmul())  # a small constant's value is structure


def test_names_count_unless_asked_not_to():
    assert structure_hash(_matmul(name="v")) != structure_hash(_matmul())
    assert structure_hash(_matmul(name="v"), names=False) == structure_hash(_matmul(), names=False)
    rewired = _matmul()
    rewired.graph.node[1].input[:] = ["b", "m"]  # same names, other wiring
    assert structure_hash(rewired, names=False) != structure_hash(_matmul(), names=False)


def test_the_interface_types_are_content_not_identity():
    fixed = _matmul()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    assert structure_hash(fixed) != structure_hash(_matmul())
    graph = Model.from_proto(_matmul()).graph
    before = structure_hash(graph, weights="identity")
    graph.outputs[0].shape = [7, 32]  # an annotation: what passes infer, not what the graph computes
    assert structure_hash(graph, weights="identity") == before


@pytest.mark.parametrize("weights", ["identity", "shapes", "values"])
def test_an_edit_inside_an_if_branch_changes_the_hash(weights):
    graph = gs.import_onnx(model_from_text(IF_MODEL))
    before = structure_hash(graph, weights=weights)
    branch = next(n for n in graph.nodes if n.op == "If").attrs["then_branch"]
    branch.nodes[0].op = "Abs"
    assert structure_hash(graph, weights=weights) != before


def test_a_replaced_weight_array_changes_the_identity_hash():
    graph = Model.from_proto(_matmul()).graph
    w = graph.tensors()["w"]
    before = structure_hash(graph, weights="identity")
    assert structure_hash(graph, weights="identity") == before  # nothing done, nothing seen
    content = structure_hash(graph, weights="values")
    w.values = w.values.copy()  # equal values, a new array: an edit of this graph, the same content
    assert structure_hash(graph, weights="identity") != before
    assert structure_hash(graph, weights="values") == content
    w.values = w.values * 2
    assert structure_hash(graph, weights="values") != content


def _string_keys_model() -> Model:
    """Equal(x, keys) with ``keys`` a string initializer (which gs cannot write once it has loaded it)."""
    keys = onnx.helper.make_tensor("keys", onnx.TensorProto.STRING, [2], [b"a", b"b"])
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Equal", ["x", "keys"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.BOOL, [2])], initializer=[keys])
    return Model.from_proto(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 19)]))


def test_identity_hash_leaves_string_constants_unloaded():
    model = _string_keys_model()
    for weights in ("identity", "shapes", "values"):
        structure_hash(model, weights=weights)
    assert isinstance(model.graph.tensors()["keys"]._values, gs.ir.tensor.LazyValues)
    assert onnx.numpy_helper.to_array(model.proto().graph.initializer[0]).tolist() == ["a", "b"]


def test_const_value_leaves_string_constants_exportable():
    # A string constant read through const_value (as every folding pass reads constants) stays exportable: gs keeps
    # what ``Constant.values`` loads, and a loaded string array is one it cannot write back.
    from graphopt.core.ir import const_value

    model = _string_keys_model()
    assert const_value(model.graph.tensors()["keys"]).tolist() == ["a", "b"]
    assert onnx.numpy_helper.to_array(model.proto().graph.initializer[0]).tolist() == ["a", "b"]
