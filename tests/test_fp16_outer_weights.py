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
