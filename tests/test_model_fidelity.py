"""Every valid ONNX model in, nothing lost: the graph passes work on (onnx-graphsurgeon's) must hold the model
faithfully, or the model is refused with one clean line. onnx-graphsurgeon skips TYPE_PROTO attributes (Optional's
``type``), cannot export optional-typed tensors, drops node doc strings and the model's metadata;
``forms.import_graph`` / ``export_graph`` keep them."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt.core.errors import UserError
from graphopt.core.pass_infra import get_pass
from graphopt.core.pipeline import run_pipeline
from graphopt.core.forms import graph_from_split, split_graph, split_model

OPTIONAL_CASES = ["test_identity_opt", "test_if_opt", "test_loop16_seq_none",
                  "test_optional_has_element_optional_input", "test_optional_get_element_optional_tensor"]


def _case(name: str):
    from onnx.backend.test.case import node

    return next(c for c in node.collect_testcases(None) if c.name == name)


def _round_trip(model: onnx.ModelProto) -> onnx.ModelProto:
    return split_graph(graph_from_split(split_model(model))).skeleton


def _graph_sig(g: onnx.GraphProto):
    def attr(a):
        if a.type == onnx.AttributeProto.GRAPH:
            return a.name, _graph_sig(a.g)
        if a.type == onnx.AttributeProto.TENSOR:  # gs may re-encode the data (float_data -> raw_data)
            return a.name, a.t.data_type, list(a.t.dims), onnx.numpy_helper.to_array(a.t).tobytes()
        return a.name, a.SerializeToString()

    inits = sorted(t.SerializeToString() for t in g.initializer)
    return ([(n.op_type, n.domain, n.name, list(n.input), list(n.output), n.doc_string,
              [attr(a) for a in n.attribute]) for n in g.node],
            inits, [s.SerializeToString() for s in g.sparse_initializer],
            [vi.SerializeToString() for vi in (*g.input, *g.output)],
            {vi.name: vi.type.SerializeToString() for vi in g.value_info}, g.doc_string,
            [p.SerializeToString() for p in g.metadata_props])


def _assert_same(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    a, b = _graph_sig(model.graph), _graph_sig(out.graph)
    assert a[:4] == b[:4] and a[5:] == b[5:]
    assert all(b[4].get(name) == t for name, t in a[4].items())  # value infos as read (more may be added)
    for field in ("ir_version", "producer_name", "producer_version", "doc_string", "model_version", "domain"):
        assert getattr(out, field) == getattr(model, field), field
    assert [p.SerializeToString() for p in out.metadata_props] == [p.SerializeToString() for p in model.metadata_props]
    assert [f.SerializeToString() for f in out.functions] == [f.SerializeToString() for f in model.functions]


def _run(model: onnx.ModelProto, inputs):
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, inputs)))


def _equal(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_equal, a, b))
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.allclose(a, b, equal_nan=True)


@pytest.mark.parametrize("name", OPTIONAL_CASES)
def test_optional_typed_models_round_trip_unchanged(name):
    model = _case(name).model
    _assert_same(model, _round_trip(model))


@pytest.mark.parametrize("name", OPTIONAL_CASES)
@pytest.mark.parametrize("pass_name", ["fold_constants", "infer_shapes", "simplify"])
def test_optional_typed_models_through_a_pass(name, pass_name):
    """Either a clean refusal or a valid model computing the same, on the case's own inputs."""
    case = _case(name)
    try:
        _run(case.model, case.data_sets[0][0])
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"onnxruntime cannot run the case: {str(e).splitlines()[0][:100]}")
    try:
        result = run_pipeline(case.model, [(get_pass(pass_name)(), "passes[0]", "fail")], inputs=None,
                              input_name=None)
    except UserError as e:
        assert "\n" not in str(e) and "onnx-graphsurgeon cannot hold" in str(e)
        return
    out = split_graph(result.graph).skeleton
    onnx.checker.check_model(out, full_check=True)
    for inputs, _ in case.data_sets:
        assert all(map(_equal, _run(case.model, inputs), _run(out, inputs)))


def test_type_proto_attribute_is_kept():
    """Optional's TYPE_PROTO ``type``: gs's importer skips it (the node would lose its type)."""
    model = _case("test_if_opt").model

    def type_protos(g):
        return [a for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.TYPE_PROTO] + \
            [x for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH for x in type_protos(a.g)]

    assert type_protos(model.graph)
    assert [a.SerializeToString() for a in type_protos(_round_trip(model).graph)] == \
        [a.SerializeToString() for a in type_protos(model.graph)]
    _assert_same(model, _round_trip(model))


def _everything_model(sparse_initializer: bool = True) -> onnx.ModelProto:
    """Sparse initializer, string tensor, metadata_props (model, graph), a model-local function, doc strings
    (model, graph, node), a value info with no type. (A main-graph input or output with no type is not valid ONNX;
    subgraph ones are, and the optional cases' If / Loop bodies have them.)"""
    h = onnx.helper
    sparse = h.make_sparse_tensor(onnx.numpy_helper.from_array(np.array([1.5, 2.5], np.float32), "sp_values"),
                                  onnx.numpy_helper.from_array(np.array([1, 3], np.int64), "sp_indices"), [4])
    words = onnx.numpy_helper.from_array(np.array(["a", "bb"], dtype=object), "words")
    fn = h.make_function("local", "Twice", ["x"], ["y"], [h.make_node("Add", ["x", "x"], ["y"])],
                         [h.make_opsetid("", 18)], doc_string="adds x to itself")
    nodes = [h.make_node("Add", ["x", "sp" if sparse_initializer else "x"], ["a"], name="add", doc_string="the add"),
             h.make_node("Twice", ["a"], ["y"], domain="local", name="twice"),
             h.make_node("Identity", ["words"], ["w"], name="strings"),
             ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4]),
                          h.make_tensor_value_info("w", onnx.TensorProto.STRING, [2])],
                         [words], doc_string="graph doc", sparse_initializer=[sparse] if sparse_initializer else [],
                         value_info=[onnx.ValueInfoProto(name="a")])
    if sparse_initializer:
        graph.sparse_initializer[0].values.name = "sp"
    h.set_metadata_props(graph, {"graph_key": "g"}) if hasattr(h, "set_metadata_props") else None
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("local", 1)],
                         functions=[fn], doc_string="model doc", producer_name="maker", producer_version="1.2",
                         model_version=7, domain="ai.example", ir_version=10)
    h.set_model_props(model, {"author": "someone", "license": "MIT"})
    return model


def test_what_graphsurgeon_drops_survives_a_round_trip():
    model = _everything_model()
    onnx.checker.check_model(model)
    out = _round_trip(model)
    _assert_same(model, out)
    assert out.graph.node[0].doc_string == "the add"
    assert {p.key: p.value for p in out.metadata_props} == {"author": "someone", "license": "MIT"}


@pytest.mark.parametrize("sparse", [False, True])
def test_model_with_everything_through_fold_constants(sparse):
    model = _everything_model(sparse)
    result = run_pipeline(model, [(get_pass("fold_constants")(), "passes[0]", "fail")], inputs=None, input_name=None)
    out = split_graph(result.graph).skeleton
    assert {p.key: p.value for p in out.metadata_props} == {"author": "someone", "license": "MIT"}
    assert [f.name for f in out.functions] == ["Twice"] and out.doc_string == "model doc"
