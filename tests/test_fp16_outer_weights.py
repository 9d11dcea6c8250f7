"""The fp16 emulation reads large weights from the outer scope (``fp16_units.OUTER_WEIGHT_ELEMENTS``): one copy in
the emulated model, rounded by Cast nodes in the fp16 branches, with the same outputs as weights rounded in numpy
and held by each branch."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt.ascend.fp16_units as fp16_units
from graphopt.ascend.fp16_emulation import Fp16Emulator


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    big = (rng.standard_normal((256, 256)) * 0.3).astype(np.float32)  # 65536 elements: read from the outer scope
    bias = (rng.standard_normal(256) * 0.1).astype(np.float32)
    head = rng.standard_normal((256, 10)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "big"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "bias"], ["hb"], name="add"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "head"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(v, k) for k, v in (("big", big), ("bias", bias),
                                                                          ("head", head))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_large_weights_are_read_from_the_outer_scope_with_the_same_outputs(monkeypatch):
    model = _mlp()
    outer = Fp16Emulator(model)
    main = {i.name for i in outer.model.graph.initializer}
    branches = [i.name for n in outer.model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
                for i in a.g.initializer]
    assert "big" in main and not any(name.startswith("big") for name in branches)  # once, in the main graph
    assert "head" not in main and any(name.startswith("head") for name in branches)  # small: in its branches
    assert [u.inputs for u in outer.units][0] == ["x"]  # a weight is no activation the unit reads
    assert len(model.graph.initializer) == 3 and not any(i.name == "big" for i in model.graph.input)  # untouched

    monkeypatch.setattr(fp16_units, "OUTER_WEIGHT_ELEMENTS", 1 << 62)
    inner = Fp16Emulator(model)
    assert "big" not in {i.name for i in inner.model.graph.initializer}
    x = np.random.default_rng(8).standard_normal((5, 256)).astype(np.float32)
    n = len(outer.units)
    assert n == len(inner.units) == 4
    for fp16 in (np.ones(n, bool), np.array([True, False, False, False]), np.array([False, True, True, True])):
        np.testing.assert_array_equal(outer.run([x], fp16)["y"], inner.run([x], fp16)["y"])
    np.testing.assert_allclose(outer.run([x])["y"], inner.run([x])["y"], rtol=1e-5, atol=1e-5)
    assert not np.array_equal(outer.run([x], np.ones(n, bool))["y"], outer.run([x])["y"])  # fp16 does round


def test_the_emulator_counts_its_runs_items_and_seconds():
    emu = Fp16Emulator(_mlp())
    x = np.random.default_rng(9).standard_normal((5, 256)).astype(np.float32)
    assert (emu.runs, emu.items_run, emu.run_seconds) == (0, 0, 0.0)
    emu.run([x, x[:2]])
    emu.run([x[:1]], count=False)  # a check that the feeds run: no trial, but the session still ran
    assert emu.runs == 1 and emu.items_run == 8 and emu.run_seconds > 0.0


def test_the_emulator_session_does_not_spin_its_workers():
    """A run is hundreds of small If subgraphs: spinning workers would fight for a shared machine's cores."""
    emu = Fp16Emulator(_mlp())
    assert emu.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _rms_norm_axes_from_range() -> onnx.ModelProto:
    """RMSNormalization as ONNX's function expands it: the reduced axes are ``Range(0, Size(Shape(X)), 1)``."""
    nodes = [helper.make_node("Shape", ["X"], ["shape"]), helper.make_node("Size", ["shape"], ["rank"]),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
             helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
             helper.make_node("Range", ["zero", "rank", "one"], ["axes"]),
             helper.make_node("Mul", ["X", "X"], ["sq"]), helper.make_node("ReduceMean", ["sq", "axes"], ["mean"]),
             helper.make_node("Constant", [], ["eps"], value=numpy_helper.from_array(np.array(1e-5, np.float32))),
             helper.make_node("Add", ["mean", "eps"], ["ms"]), helper.make_node("Sqrt", ["ms"], ["rms"]),
             helper.make_node("Div", ["X", "rms"], ["Y"])]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_a_graph_onnxruntime_cannot_optimise_is_emulated_unoptimised():
    """onnxruntime's constant folding re-infers the Range axes a ReduceMean unit's If reads from the outer scope with
    another shape ("Can't merge shape info") and refuses the optimised session; the emulator builds it unoptimised,
    says so in its stats, and computes the model: all switches off the fp32 outputs, all on rounded to fp16."""
    import onnxruntime as ort

    model = _rms_norm_axes_from_range()
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    emu = Fp16Emulator(model)
    assert emu.stats.get("unoptimized_session") == 1
    fp32 = emu.run([x])["Y"]
    np.testing.assert_allclose(fp32, want, rtol=1e-6, atol=1e-6)
    fp16 = emu.run([x], np.ones(len(emu.units), bool))["Y"]
    assert not np.array_equal(fp16, fp32) and np.allclose(fp16, want, rtol=5e-3, atol=5e-3)
    assert np.array_equal(fp16, fp16.astype(np.float16).astype(np.float32))  # the last unit's output is rounded
