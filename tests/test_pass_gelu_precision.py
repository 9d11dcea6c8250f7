"""gelu_precision: GELU in its erf, tanh and Gelu-node forms; fusion at opset 20; the ATC Gelu precision mode."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from graphopt.ascend.atc import config_files
from graphopt.passes.gelu_precision import GeluPrecision
from graphopt.core.pipeline import run_pipeline
from graphopt.core.tolerance import Tolerance
from graphopt.testing import assert_pass_unchanged, assert_pass_verified, model_from_text, run_pass
from graphopt.core.feeds import make_inputs
from graphs import torch_onnx

# A fused Gelu against the decomposed form of the same approximation: the same function, rounding apart
# (values are O(1); fp32 erf/tanh kernels differ by a few ulp).
SAME_FORM = Tolerance(max_abs=1e-5, max_rel=None, cosine=0.9999999, top1_agreement=None)


def _torch_gelu(approximate: str, opset: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(approximate=approximate)).eval()
    return onnx.load_from_string(torch_onnx(model, (torch.randn(1, 8),), opset=opset))


def _with_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The same graph declared against another opset (test-side only; the pass never changes opsets). Valid
    here because Div/Erf/Add/Mul/Tanh/Gemm are unchanged from opset 14 to 20."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for imp in out.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
    out.ir_version = max(out.ir_version, 9)
    onnx.checker.check_model(out, full_check=True)
    return out


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node if n.op_type != "Constant"]


def _gelu_attr(model: onnx.ModelProto) -> list[str]:
    return [next((a.s.decode() for a in n.attribute if a.name == "approximate"), "none")
            for n in model.graph.node if n.op_type == "Gelu"]


# --- TorchScript exports of nn.GELU ------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("approximate, form", [("none", "erf"), ("tanh", "tanh")])
def test_torch_export_is_found_and_not_fused_below_opset_20(approximate, form, opset):
    model = _torch_gelu(approximate, opset)
    result = assert_pass_unchanged(model, GeluPrecision(mode="high_performance", fuse=True))
    assert result.stats["found"] == {"erf": 0, "tanh": 0, "gelu_node": 0, form: 1}
    assert result.stats["fused"] == 0
    assert result.stats["skipped"] == {
        f"not fused: opset {opset} < 20 has no Gelu op (the pass does not raise the opset)": 1}
    assert result.configs == {"op_precision": {"Gelu": "high_performance"}}
    # numerics: the pass left the graph alone, so the run in the verifier is the identity check
    assert_pass_verified(model, GeluPrecision(mode="high_performance", fuse=True), expect_changed=False,
                         tolerance=Tolerance(max_abs=0.0, cosine=None, top1_agreement=None), shape=[4, 8])


@pytest.mark.parametrize("approximate, form", [("none", "erf"), ("tanh", "tanh")])
def test_torch_export_fused_at_opset_20(approximate, form):
    model = _with_opset(_torch_gelu(approximate, 17), 20)
    out, result = assert_pass_verified(model, GeluPrecision(fuse=True), tolerance=SAME_FORM, shape=[4, 8])
    assert result.stats["found"][form] == 1 and result.stats["fused"] == 1
    assert _ops(out) == ["Gemm", "Gelu"] and _gelu_attr(out) == [approximate]
    assert out.graph.output[0].name == "y"
    assert result.configs == {}  # no mode asked for


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_torch_opset_20_gelu_node(approximate):
    model = _torch_gelu(approximate, 20)
    result = assert_pass_unchanged(model, GeluPrecision(mode="high_precision", fuse=True))
    assert result.stats["found"] == {"erf": 0, "tanh": 0, "gelu_node": 1}
    assert result.configs == {"op_precision": {"Gelu": "high_precision"}}


def test_fused_gelu_matches_torch():
    """Beyond like-for-like: the fused opset-20 graph computes torch's GELU."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.GELU()).eval()
    exported = onnx.load_from_string(torch_onnx(net, (torch.randn(1, 8),), opset=17))
    out, _ = run_pass(_with_opset(exported, 20), GeluPrecision(fuse=True))
    import onnxruntime as ort

    x = make_inputs([16, 8], 1, seed=1)[0]
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# --- onnx.parser variants -----------------------------------------------------------------------------------------

HEADER = '<ir_version: 9, opset_import: ["" : {opset}]>\ng (float[N, 8] x) => (float[N, 8] y) {{\n'

# Each body computes y = gelu(x) from x; constants are named c_*.
ERF_BODIES = {
    "torch (Div, x*t, *0.5)": """
  s = Constant<value = float {1.4142135}>()
  d = Div(x, s)
  e = Erf(d)
  one = Constant<value = float {1.0}>()
  a = Add(e, one)
  m = Mul(x, a)
  h = Constant<value = float {0.5}>()
  y = Mul(m, h)
""",
    "Mul 0.7071, swapped operands": """
  s = Constant<value = float {0.70710678}>()
  d = Mul(s, x)
  e = Erf(d)
  one = Constant<value = float {1.0}>()
  a = Add(one, e)
  m = Mul(a, x)
  h = Constant<value = float {0.5}>()
  y = Mul(h, m)
""",
    "0.5 on (1 + erf)": """
  s = Constant<value = float {1.4142135}>()
  d = Div(x, s)
  e = Erf(d)
  one = Constant<value = float {1.0}>()
  a = Add(e, one)
  h = Constant<value = float {0.5}>()
  ah = Mul(a, h)
  y = Mul(x, ah)
""",
    "0.5 on x": """
  h = Constant<value = float {0.5}>()
  hx = Mul(h, x)
  s = Constant<value = float {0.70710678}>()
  d = Mul(x, s)
  e = Erf(d)
  one = Constant<value = float {1.0}>()
  a = Add(e, one)
  y = Mul(a, hx)
""",
    "divided by 2": """
  s = Constant<value = float {1.4142135}>()
  d = Div(x, s)
  e = Erf(d)
  one = Constant<value = float {1.0}>()
  a = Add(e, one)
  m = Mul(x, a)
  two = Constant<value = float {2.0}>()
  y = Div(m, two)
""",
}

TANH_BODIES = {
    "torch (x*(x*x))": """
  x2 = Mul(x, x)
  x3 = Mul(x, x2)
  k = Constant<value = float {0.044715}>()
  kx3 = Mul(k, x3)
  i = Add(x, kx3)
  b = Constant<value = float {0.7978846}>()
  bi = Mul(b, i)
  t = Tanh(bi)
  one = Constant<value = float {1.0}>()
  a = Add(one, t)
  m = Mul(x, a)
  h = Constant<value = float {0.5}>()
  y = Mul(h, m)
""",
    "Pow(x, 3), 0.5 * x first": """
  h = Constant<value = float {0.5}>()
  hx = Mul(x, h)
  p = Constant<value = float {3.0}>()
  x3 = Pow(x, p)
  k = Constant<value = float {0.044715}>()
  kx3 = Mul(x3, k)
  i = Add(kx3, x)
  b = Constant<value = float {0.7978845608}>()
  bi = Mul(i, b)
  t = Tanh(bi)
  one = Constant<value = float {1.0}>()
  a = Add(t, one)
  y = Mul(hx, a)
""",
    "(x*x)*x": """
  x2 = Mul(x, x)
  x3 = Mul(x2, x)
  k = Constant<value = float {0.044715}>()
  kx3 = Mul(k, x3)
  i = Add(x, kx3)
  b = Constant<value = float {0.7978846}>()
  bi = Mul(b, i)
  t = Tanh(bi)
  one = Constant<value = float {1.0}>()
  a = Add(one, t)
  m = Mul(x, a)
  h = Constant<value = float {0.5}>()
  y = Mul(m, h)
""",
}


def _model(body: str, opset: int = 20) -> onnx.ModelProto:
    return model_from_text(HEADER.format(opset=opset) + body + "}\n")


@pytest.mark.parametrize("form, body", [("erf", b) for b in ERF_BODIES.values()] +
                         [("tanh", b) for b in TANH_BODIES.values()],
                         ids=[f"erf: {k}" for k in ERF_BODIES] + [f"tanh: {k}" for k in TANH_BODIES])
def test_variants_fuse_at_opset_20(form, body):
    model = _model(body)
    out, result = assert_pass_verified(model, GeluPrecision(mode="high_performance", fuse=True),
                                       tolerance=SAME_FORM, shape=[4, 8])
    assert result.stats == {"found": {"erf": 0, "tanh": 0, "gelu_node": 0, form: 1}, "fused": 1, "skipped": {}}
    assert _ops(out) == ["Gelu"] and _gelu_attr(out) == ["none" if form == "erf" else "tanh"]
    assert result.configs == {"op_precision": {"Gelu": "high_performance"}}
    second = assert_pass_unchanged(out, GeluPrecision(mode="high_performance", fuse=True))
    assert second.stats["found"] == {"erf": 0, "tanh": 0, "gelu_node": 1}
    assert second.configs == result.configs


@pytest.mark.parametrize("body", [ERF_BODIES["0.5 on x"], TANH_BODIES["Pow(x, 3), 0.5 * x first"]])
def test_variants_found_but_not_fused_at_opset_13(body):
    model = _model(body, opset=13)
    result = assert_pass_unchanged(model, GeluPrecision(fuse=True))
    assert sum(result.stats["found"].values()) == 1 and result.stats["fused"] == 0
    assert list(result.stats["skipped"]) == ["not fused: opset 13 < 20 has no Gelu op (the pass does not raise the "
                                             "opset)"]


def test_recording_a_mode_alone_does_not_change_the_graph():
    model = _model(ERF_BODIES["torch (Div, x*t, *0.5)"])
    result = assert_pass_unchanged(model, GeluPrecision(mode="high_performance"))
    assert result.stats["found"]["erf"] == 1 and result.stats["fused"] == 0 and not result.stats["skipped"]
    assert result.configs == {"op_precision": {"Gelu": "high_performance"}}


@pytest.mark.parametrize("body, old, new, reason", [
    (ERF_BODIES["torch (Div, x*t, *0.5)"], "1.4142135", "1.5", "erf form: x / 1.5, expected sqrt(2) = 1.41421"),
    (ERF_BODIES["Mul 0.7071, swapped operands"], "0.70710678", "0.7072", "erf form: x * 0.7072, expected "
                                                                          "1/sqrt(2) = 0.707107"),
    (ERF_BODIES["torch (Div, x*t, *0.5)"], "float {1.0}", "float {1.001}", "erf form: erf(...) + 1.001, expected 1"),
    (ERF_BODIES["torch (Div, x*t, *0.5)"], "float {0.5}", "float {0.6}",
     "erf form: x * (1 + erf) times 0.6, expected 0.5"),
    (ERF_BODIES["0.5 on (1 + erf)"], "float {0.5}", "float {0.25}", "erf form: (1 + erf) times 0.25, expected 0.5"),
    (ERF_BODIES["0.5 on x"], "float {0.5}", "float {0.4}", "erf form: x times 0.4, expected 0.5"),
    (ERF_BODIES["divided by 2"], "float {2.0}", "float {3.0}", "erf form: x * (1 + erf) over 3, expected 2.0"),
    (TANH_BODIES["torch (x*(x*x))"], "0.044715", "0.05", "tanh form: 0.05 * x^3, expected 0.044715"),
    (TANH_BODIES["torch (x*(x*x))"], "0.7978846", "0.8", "tanh form: 0.8 * (...), expected sqrt(2/pi) = 0.797885"),
    (TANH_BODIES["Pow(x, 3), 0.5 * x first"], "float {3.0}", "float {2.0}", "tanh: not a GELU"),
])
def test_almost_gelu_with_a_wrong_constant_is_left_alone(body, old, new, reason):
    assert old in body
    model = _model(body.replace(old, new, 1))
    result = assert_pass_unchanged(model, GeluPrecision(mode="high_performance", fuse=True))
    assert result.stats["found"] == {"erf": 0, "tanh": 0, "gelu_node": 0} and result.stats["fused"] == 0
    assert result.configs == {}  # no GELU, so no Gelu precision mode
    if reason == "tanh: not a GELU":  # x^2 is not x^3: the Tanh's argument is not GELU's
        reason = "tanh form: Tanh argument is not sqrt(2/pi) * (x + 0.044715 * x^3)"
    assert result.stats["skipped"] == {reason: 1}


def test_constants_within_tolerance_are_accepted():
    # 1e-4 relative: 1.41421 (rel 2.5e-6) and 0.04472 (rel 1.1e-4 > 1e-4, rejected)
    ok = _model(ERF_BODIES["torch (Div, x*t, *0.5)"].replace("1.4142135", "1.41421"))
    assert run_pass(ok, GeluPrecision())[1].stats["found"]["erf"] == 1
    off = _model(TANH_BODIES["torch (x*(x*x))"].replace("0.044715", "0.04472"))
    assert run_pass(off, GeluPrecision())[1].stats["found"]["tanh"] == 0


def test_intermediate_used_elsewhere_is_not_fused():
    body = ERF_BODIES["torch (Div, x*t, *0.5)"].replace("  y = Mul(m, h)\n", "  g = Mul(m, h)\n  y = Add(g, e)\n")
    model = _model(body)
    result = assert_pass_unchanged(model, GeluPrecision(mode="high_performance", fuse=True))
    assert result.stats["found"]["erf"] == 0 and result.configs == {}
    assert result.stats["skipped"] == {"erf(x / sqrt(2)) has 2 consumers, expected 1": 1}


def test_intermediate_graph_output_is_not_fused():
    text = HEADER.format(opset=20).replace("=> (float[N, 8] y)", "=> (float[N, 8] y, float[N, 8] e)")
    model = model_from_text(text + ERF_BODIES["torch (Div, x*t, *0.5)"] + "}\n")
    result = assert_pass_unchanged(model, GeluPrecision(fuse=True))
    assert result.stats["skipped"] == {"erf(x / sqrt(2)) is a graph output": 1}


def test_unrelated_erf_and_tanh_are_left_alone():
    model = _model("""
  e = Erf(x)
  t = Tanh(e)
  y = Mul(t, x)
""")
    result = assert_pass_unchanged(model, GeluPrecision(mode="high_performance", fuse=True))
    assert result.stats["found"] == {"erf": 0, "tanh": 0, "gelu_node": 0} and result.configs == {}
    assert result.stats["skipped"] == {"Erf input is not x / c or x * c": 1, "Tanh input is not c * (...)": 1}


def test_broadcasting_constant_blocks_fusion():
    # a (1, 1, 1) constant turns the rank-2 x into a rank-3 y: a Gelu(x) would not
    body = ERF_BODIES["torch (Div, x*t, *0.5)"].replace("h = Constant<value = float {0.5}>()",
                                                        "h = Constant<value = float[1, 1, 1] {0.5}>()")
    text = HEADER.format(opset=20).replace("=> (float[N, 8] y)", "=> (float[1, N, 8] y)")
    model = model_from_text(text + body + "}\n")
    result = assert_pass_unchanged(model, GeluPrecision(fuse=True))
    assert result.stats["found"]["erf"] == 1
    assert result.stats["skipped"] == {"not fused: a rank-3 constant may broadcast x (rank 2)": 1}


def test_rank_1_constants_fuse():
    body = ERF_BODIES["torch (Div, x*t, *0.5)"].replace("float {1.4142135}", "float[1] {1.4142135}")
    out, result = assert_pass_verified(_model(body), GeluPrecision(fuse=True), tolerance=SAME_FORM, shape=[4, 8])
    assert result.stats["fused"] == 1 and _ops(out) == ["Gelu"]


def test_fp16_constants_use_their_own_resolution():
    # sqrt(2) in fp16 is 1.4140625, 1.1e-4 relative off (> 1e-4): accepted, fp16 cannot get closer. The parser
    # takes fp16 literals as bit patterns: 15784 = 1.4140625, 15360 = 1.0, 14336 = 0.5.
    body = (ERF_BODIES["torch (Div, x*t, *0.5)"].replace("float {1.4142135}", "float16 {15784}")
            .replace("float {1.0}", "float16 {15360}").replace("float {0.5}", "float16 {14336}"))
    model = model_from_text(HEADER.format(opset=20).replace("float[", "float16[") + body + "}\n")
    x = [np.linspace(-4, 4, 64, dtype=np.float16).reshape(8, 8)]
    # the fp16 constant differs from Gelu's internal sqrt(2): allow one fp16 ulp at |y| < 4 (2^-9)
    out, result = assert_pass_verified(model, GeluPrecision(fuse=True), inputs=x, shape=[8, 8],
                                       tolerance=Tolerance(max_abs=2 ** -9, cosine=0.9999, top1_agreement=None))
    assert result.stats["found"]["erf"] == 1 and _ops(out) == ["Gelu"]
    # ... while 1.414 (1.5e-4 off) is not accepted as fp32
    off = _model(ERF_BODIES["torch (Div, x*t, *0.5)"].replace("1.4142135", "1.414"))
    assert run_pass(off, GeluPrecision())[1].stats["found"]["erf"] == 0


def test_pipeline_merges_the_mode_of_an_unchanged_pass():
    model = _torch_gelu("none", 13)
    inputs = make_inputs([2, 8], 1, 0)
    res = run_pipeline(model, [(GeluPrecision(mode="high_performance", fuse=True), "passes[0]", "stop")],
                       inputs=inputs, input_name="x", tolerance=SAME_FORM)
    assert res.records[0].status == "unchanged"
    assert res.configs == {"op_precision": {"Gelu": "high_performance"}}
    assert config_files(res.configs) == {"op_precision.ini": "[ByOpType]\nGelu=high_performance\n"}  # CANN 6.0+
    assert config_files(res.configs, "5.1") == {"op_precision.ini": "Gelu=high_performance\n"}  # the Twins seed's


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be"):
        GeluPrecision(mode="fast")
