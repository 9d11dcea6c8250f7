"""insert_fusion_breaker: the ShiftViT seed's Pow(x, 1.0) before the GroupNorm -> pool -> head tail."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from graphopt.commands.recipe import parse_recipe

from graphopt.core.tolerance import Tolerance
from graphopt.testing import assert_pass_unchanged, assert_pass_verified, model_from_text, run_pass
from graphopt.passes.insert_fusion_breaker import BREAKER_PREFIX, InsertFusionBreaker
from graphs import torch_onnx

SEED_TAIL = ["Mul", "Add", "GlobalAveragePool", "Flatten", "Gemm"]
# x ** 1, x * 1, x + 0 and Identity are exact: outputs must match bit for bit.
EXACT = Tolerance(max_abs=0.0, max_rel=None, cosine=None, top1_agreement=1.0)


class _ShiftViTTail(nn.Module):
    """ShiftViT's head as upstream writes it: GroupNorm(1, C) -> AdaptiveAvgPool2d(1) -> flatten -> Linear.
    The TorchScript export of GroupNorm ends in Reshape -> Mul(weight) -> Add(bias), so the graph's tail is the
    seed's Mul -> Add -> GlobalAveragePool -> Flatten -> Gemm."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.avgpool(self.norm(x)), 1))


@pytest.fixture(scope="module")
def shiftvit_tail() -> onnx.ModelProto:
    torch.manual_seed(0)
    model = _ShiftViTTail().eval()
    with torch.no_grad():  # non-trivial affine parameters
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    return onnx.load_from_string(torch_onnx(model, (torch.randn(1, 16, 6, 6),), opset=12, inputs=("input",),
                                            outputs=("output",), batch="batch"))


def _node(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def _const(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise KeyError(name)


def test_seed_tail_gets_pow_on_the_mul_first_input(shiftvit_tail):
    mul = _node(shiftvit_tail, "Mul")[0]
    norm_out = mul.input[0]  # the GroupNorm's normalised tensor (Reshape output)
    out, result = assert_pass_verified(shiftvit_tail, InsertFusionBreaker(path=SEED_TAIL), tolerance=EXACT,
                                       shape=[2, 16, 6, 6])
    assert {k: result.stats[k] for k in ("matched", "selected", "inserted", "already_present", "skipped")} == \
        {"matched": 1, "selected": 1, "inserted": 1, "already_present": 0, "skipped": {}}
    (pow_,) = _node(out, "Pow")
    assert pow_.name.startswith(BREAKER_PREFIX)
    assert pow_.input[0] == norm_out
    exponent = _const(out, pow_.input[1])
    assert exponent.dtype == np.float32 and exponent.shape == () and exponent == 1.0
    new_mul = _node(out, "Mul")[0]
    assert new_mul.input[0] == pow_.output[0] and new_mul.input[1] == mul.input[1]
    # the rest of the tail is untouched
    assert [n.op_type for n in out.graph.node][-5:] == SEED_TAIL


@pytest.mark.parametrize("op, neutral", [("Pow", 1.0), ("Mul", 1.0), ("Add", 0.0), ("Identity", None)])
def test_each_breaker_kind_is_exact_and_idempotent(shiftvit_tail, op, neutral):
    out, result = assert_pass_verified(shiftvit_tail, InsertFusionBreaker(path=SEED_TAIL, op=op), tolerance=EXACT,
                                       shape=[2, 16, 6, 6])
    assert result.stats["inserted"] == 1
    breaker = [n for n in out.graph.node if n.name.startswith(BREAKER_PREFIX)]
    assert [n.op_type for n in breaker] == [op]
    if neutral is not None:
        assert _const(out, breaker[0].input[1]) == neutral
    second = assert_pass_unchanged(out, InsertFusionBreaker(path=SEED_TAIL, op=op))
    assert second.stats["already_present"] == 1 and second.stats["inserted"] == 0


# Two GroupNorm-like tails, each Mul -> Add -> Relu: the first on the graph input, the second deeper, on an
# intermediate (whose dtype is unknown until shape inference).
TWO_TAILS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y1, float[N, 4] y2) {
  w = Constant<value = float[4] {0.5, 1.5, -2.0, 3.0}>()
  b = Constant<value = float[4] {0.1, 0.2, 0.3, 0.4}>()
  m1 = Mul(x, w)
  a1 = Add(m1, b)
  y1 = Relu(a1)
  t = Sigmoid(x)
  m2 = Mul(t, w)
  a2 = Add(m2, b)
  y2 = Relu(a2)
}
"""


def _breaker_targets(model: onnx.ModelProto) -> list[str]:
    """The Mul outputs whose first input is now a breaker."""
    made = {n.output[0] for n in model.graph.node if n.name.startswith(BREAKER_PREFIX)}
    return [n.output[0] for n in model.graph.node if n.op_type == "Mul" and n.input[0] in made]


@pytest.mark.parametrize("occurrence, targets", [("all", ["m1", "m2"]), ("first", ["m1"]), ("last", ["m2"])])
def test_occurrence(occurrence, targets):
    model = model_from_text(TWO_TAILS)
    out, result = assert_pass_verified(model, InsertFusionBreaker(path=["Mul", "Add", "Relu"], occurrence=occurrence),
                                       tolerance=EXACT, shape=[3, 4])
    assert result.stats["matched"] == 2 and result.stats["inserted"] == len(targets)
    assert sorted(_breaker_targets(out)) == targets
    assert all(_const(out, n.input[1]).dtype == np.float32 for n in out.graph.node if n.op_type == "Pow")


def test_input_index_selects_the_edge():
    model = model_from_text(TWO_TAILS.replace("m2 = Mul(t, w)", "m2 = Mul(w, t)"))
    out, result = assert_pass_verified(model, InsertFusionBreaker(path=["Mul", "Add", "Relu"], input_index=1,
                                                                  occurrence="last"),
                                       tolerance=EXACT, shape=[3, 4])
    (pow_,) = _node(out, "Pow")
    assert pow_.input[0] == "t"
    assert next(n for n in out.graph.node if n.output[0] == "m2").input == ["w", pow_.output[0]]


def test_no_matching_path_is_left_alone_with_reasons():
    model = model_from_text(TWO_TAILS)
    result = assert_pass_unchanged(model, InsertFusionBreaker(path=["Mul", "Add", "Sigmoid"]))
    assert result.stats["matched"] == 0 and result.stats["inserted"] == 0
    assert result.stats["near_misses"] == {"Mul -> Add -> Relu, expected Sigmoid": 2}
    result = assert_pass_unchanged(model, InsertFusionBreaker(path=SEED_TAIL))
    assert result.stats["near_misses"] == {"Mul -> Add -> Relu, expected GlobalAveragePool": 2}


def test_branching_edge_is_not_a_path():
    model = model_from_text(TWO_TAILS.replace("y1 = Relu(a1)", "y1 = Add(a1, m1)"))
    out, result = assert_pass_verified(model, InsertFusionBreaker(path=["Mul", "Add", "Relu"]), tolerance=EXACT,
                                       shape=[3, 4])
    assert result.stats["matched"] == 1 and result.stats["inserted"] == 1
    assert result.stats["near_misses"] == {"Mul: output has 2 consumers, expected 1": 1}
    assert _breaker_targets(out) == ["m2"]


def test_constant_edge_is_skipped():
    model = model_from_text(TWO_TAILS)
    result = assert_pass_unchanged(model, InsertFusionBreaker(path=["Mul", "Add", "Relu"], input_index=1))
    assert result.stats["inserted"] == 0
    assert result.stats["skipped"] == {"input 1 is a constant (constant folding would remove a breaker)": 2}


def test_missing_input_is_skipped():
    model = model_from_text(TWO_TAILS)
    result = assert_pass_unchanged(model, InsertFusionBreaker(path=["Mul", "Add", "Relu"], input_index=2))
    assert result.stats["skipped"] == {"Mul has no input 2": 2}


def test_seed_output_already_has_the_breaker():
    """A graph already edited by the seed's modify_onnx.py (Pow(x, 1.0) on the Mul) counts as done."""
    model = model_from_text(TWO_TAILS.replace("m1 = Mul(x, w)", "one = Constant<value = float {1.0}>()\n"
                                                                 "  p = Pow(x, one)\n  m1 = Mul(p, w)"))
    result = assert_pass_unchanged(model, InsertFusionBreaker(path=["Mul", "Add", "Relu"], occurrence="first"))
    assert result.stats["already_present"] == 1 and result.stats["inserted"] == 0
    # ... but a Pow with another exponent is not a breaker: that edge gets one
    model = model_from_text(TWO_TAILS.replace("m1 = Mul(x, w)", "two = Constant<value = float {2.0}>()\n"
                                                                 "  p = Pow(x, two)\n  m1 = Mul(p, w)"))
    out, result = assert_pass_verified(model, InsertFusionBreaker(path=["Mul", "Add", "Relu"], occurrence="first"),
                                       tolerance=EXACT, shape=[3, 4])
    assert result.stats["inserted"] == 1 and len(_node(out, "Pow")) == 2


def test_constant_dtype_follows_the_edge():
    fp16 = (TWO_TAILS.replace("float[N", "float16[N")
            .replace("w = Constant", "w32 = Constant").replace("b = Constant", "b32 = Constant")
            .replace("  m1 = Mul", "  w = Cast<to = 10>(w32)\n  b = Cast<to = 10>(b32)\n  m1 = Mul"))
    model = model_from_text(fp16)
    out, result = run_pass(model, InsertFusionBreaker(path=["Mul", "Add", "Relu"]))
    assert result.changed and result.stats["inserted"] == 2
    onnx.checker.check_model(out, full_check=True)
    pows = _node(out, "Pow")
    assert len(pows) == 2 and all(_const(out, n.input[1]).dtype == np.float16 for n in pows)


def test_integer_edge_is_skipped():
    model = model_from_text("""
<ir_version: 8, opset_import: ["" : 13]>
g (int64[N] x) => (int64[N] y) {
  w = Constant<value = int64[1] {3}>()
  m = Mul(x, w)
  y = Neg(m)
}
""")
    result = assert_pass_unchanged(model, InsertFusionBreaker(path=["Mul", "Neg"]))
    assert result.stats["skipped"] == {"edge dtype int64 is not float16/32/64": 1}


def test_path_starting_with_the_breaker_op_does_not_grow():
    model = model_from_text(TWO_TAILS.replace("m1 = Mul(x, w)", "two = Constant<value = float {2.0}>()\n"
                                                                 "  m1 = Pow(x, two)"))
    out, result = assert_pass_verified(model, InsertFusionBreaker(path=["Pow", "Add"]), tolerance=EXACT,
                                       shape=[3, 4])
    assert result.stats["inserted"] == 1 and len(_node(out, "Pow")) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"path": []}, "non-empty"),
    ({"path": ["Mul", ""]}, "non-empty"),
    ({"path": ["Mul"], "input_index": -1}, "input_index"),
    ({"path": ["Mul"], "op": "Sub"}, "op must be"),
    ({"path": ["Mul"], "occurrence": "second"}, "occurrence"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InsertFusionBreaker(**kwargs)


def test_recipe_parameters(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx.save(model_from_text(TWO_TAILS), onnx_path)
    recipe = parse_recipe({"model": {"onnx": str(onnx_path)}, "input": {"name": "x", "shape": [1, 4]},
                           "passes": [{"pass": "insert_fusion_breaker", "path": SEED_TAIL, "op": "Pow",
                                       "occurrence": "last"}]}, tmp_path / "r.yaml")
    (p,) = recipe.build_passes()
    assert p == InsertFusionBreaker(path=SEED_TAIL, input_index=0, op="Pow", occurrence="last")
    with pytest.raises(Exception, match=r"passes\[0\]\.path: required argument"):
        parse_recipe({"model": {"onnx": str(onnx_path)}, "input": {"name": "x", "shape": [1, 4]},
                      "passes": [{"pass": "insert_fusion_breaker"}]}, tmp_path / "r.yaml")


def _ir3_model() -> onnx.ModelProto:
    """An IR version 3 model (opset 8): there every initializer must also be listed among the graph inputs."""
    f = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["r"]), onnx.helper.make_node("Exp", ["r"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", f, [2, 3])], [onnx.helper.make_tensor_value_info("y", f, [2, 3])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 8)])
    model.ir_version = 3
    return model


@pytest.mark.parametrize("op", ["Pow", "Mul", "Add"])
def test_ir_version_3_model_stays_valid(op):
    """Before IR 4 an initializer must be a graph input too: the neutral value comes from a Constant node, so no
    new input appears that callers could feed."""
    model = _ir3_model()
    out, result = assert_pass_verified(model, InsertFusionBreaker(path=["Exp"], op=op), tolerance=EXACT)
    assert result.stats["inserted"] == 1
    assert [i.name for i in out.graph.input] == ["x"] and not out.graph.initializer
    assert [n.op_type for n in out.graph.node if n.op_type in (op, "Constant")] == ["Constant", op]


def _ml_only_model() -> onnx.ModelProto:
    """A model importing only ai.onnx.ml (the ONNX backend's Binarizer test): no default-domain opset."""
    f = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)], "g",
        [onnx.helper.make_tensor_value_info("x", f, [2, 3])], [onnx.helper.make_tensor_value_info("y", f, [2, 3])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize("op", ["Pow", "Identity"])
def test_model_importing_only_ai_onnx_ml_gets_a_default_domain_opset(op):
    model = _ml_only_model()
    out, result = assert_pass_verified(model, InsertFusionBreaker(path=["Binarizer"], op=op), tolerance=EXACT)
    imports = {o.domain: o.version for o in out.opset_import}
    # IR 7 carries opsets up to 14 (onnx 1.9, the last release on IR 7): the newest one, the op in its modern form.
    assert imports == {"ai.onnx.ml": 1, "": 14}
    assert result.stats["added_opset_import"] == {"": 14}


def test_sequence_edge_is_left_alone_with_the_reason():
    """Pow on a sequence is invalid, and an Identity output typed as a tensor would be too."""
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (seq(float[2]) s) => (int64 n) {
        n = SequenceLength(s)
    }""")
    for op in ("Pow", "Identity"):
        result = assert_pass_unchanged(model, InsertFusionBreaker(path=["SequenceLength"], op=op))
        assert result.stats["skipped"] == {"edge is a sequence, not a tensor": 1}
