"""fuse_layernorm: the exported LayerNorm spellings (Pow / Mul square, Div / Reciprocal, with or without scale and
shift, opset 18 axes inputs, two trailing axes) as LayerNormalization; opsets before 17, other axes, mean(x) - x,
per-row scales and shared intermediates left alone."""
from __future__ import annotations

import pytest

from graphopt.core.ir import op_counts
from graphopt.core.tolerance import Tolerance
from graphopt.passes.fuse_layernorm import FuseLayerNorm
from graphopt.testing import assert_pass_unchanged, assert_pass_verified, model_from_text

# The fused kernel computes the same mean and variance in another order.
FUSED = Tolerance(max_abs=1e-5, max_rel=None, cosine=0.999999, top1_agreement=None)
PARAMS = ("float[6] gamma = {0.5, 1.0, 1.5, 2.0, -1.0, 0.25}, float[6] beta = {0.1, 0.2, 0.3, -0.4, 0.0, 1.0}, "
          "float eps = {1e-5}, float two = {2.0}")


def _model(*, square: str = "Pow(d, two)", norm: str = "Div(d, s)", tail: str = "g = Mul(n, gamma)\n y = Add(g, beta)",
           opset: int = 17, axes: str = "-1", sub: str = "Sub(x, m)", dims: str = "N, 5, 6") -> str:
    if opset >= 18:
        reduce = "m = ReduceMean(x, ax)\n v = ReduceMean(q, ax)"
        extra = f", int64[{axes.count(',') + 1}] ax = {{{axes}}}"
    else:
        reduce = f"m = ReduceMean<axes = [{axes}]>(x)\n v = ReduceMean<axes = [{axes}]>(q)"
        extra = ""
    mean, var = reduce.split("\n")
    if "y =" not in tail:
        tail += "\n y = Identity(n)" if not tail else ""
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[{dims}] x) => (float[{dims}] y) <{PARAMS}{extra}> {{
        {mean}
        d = {sub}
        q = {square}
        {var}
        e = Add(v, eps)
        s = Sqrt(e)
        {"r = Reciprocal(s)" if "r)" in norm else ""}
        n = {norm}
        {tail}
    }}"""


SHAPE = {"shape": [2, 5, 6]}


@pytest.mark.parametrize("square, norm, tail", [
    ("Pow(d, two)", "Div(d, s)", "g = Mul(n, gamma)\n y = Add(g, beta)"),
    ("Mul(d, d)", "Div(d, s)", "g = Mul(gamma, n)\n y = Add(beta, g)"),
    ("Pow(d, two)", "Mul(d, r)", "g = Mul(n, gamma)\n y = Add(g, beta)"),
    ("Pow(d, two)", "Div(d, s)", "y = Mul(n, gamma)"),
])
def test_layernorm_spellings(square, norm, tail):
    out, result = assert_pass_verified(model_from_text(_model(square=square, norm=norm, tail=tail)), FuseLayerNorm(),
                                       tolerance=FUSED, **SHAPE)
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert op_counts(out) == {"LayerNormalization": 1}


def test_no_scale_opset_18_and_two_axes():
    text = _model(tail="y = Div(d, s)", norm="Div(d, s)").replace("n = Div(d, s)\n", "")
    out, _ = assert_pass_verified(model_from_text(text), FuseLayerNorm(), tolerance=FUSED, **SHAPE)
    assert op_counts(out) == {"LayerNormalization": 1}
    out, _ = assert_pass_verified(model_from_text(_model(opset=18)), FuseLayerNorm(), tolerance=FUSED, **SHAPE)
    assert op_counts(out) == {"LayerNormalization": 1}
    text = _model(axes="-2, -1", tail="y = Mul(n, gamma)", dims="N, 4, 6").replace("float[6] gamma",
                                                                                   "float[1, 6] gamma")
    out, _ = assert_pass_verified(model_from_text(text), FuseLayerNorm(), tolerance=FUSED, shape=[2, 4, 6])
    layernorm = next(n for n in out.graph.node if n.op_type == "LayerNormalization")
    assert [a.i for a in layernorm.attribute if a.name == "axis"] == [-2]


@pytest.mark.parametrize("kwargs, reason", [
    ({"opset": 16}, "opset 16 < 17 has no LayerNormalization"),
    ({"axes": "1"}, "not normalized over the trailing axes"),
    ({"sub": "Sub(m, x)"}, "x - mean(x) not found before the variance"),
])
def test_left_alone(kwargs, reason):
    result = assert_pass_unchanged(model_from_text(_model(**kwargs)), FuseLayerNorm())
    assert result.stats["skipped"] == {reason: 1}


def test_per_row_scale_stays_outside():
    """A scale varying along a normalized-away axis is no LayerNormalization scale: the norm alone is fused."""
    text = _model(tail="g = Mul(n, rows)\n y = Add(g, beta)").replace(
        "float eps", "float[5, 1] rows = {1.0, 2.0, 3.0, 4.0, 5.0}, float eps")
    out, result = assert_pass_verified(model_from_text(text), FuseLayerNorm(), tolerance=FUSED, **SHAPE)
    assert op_counts(out) == {"Add": 1, "LayerNormalization": 1, "Mul": 1}


def test_variance_read_elsewhere_is_left_alone():
    text = _model(tail="g = Mul(n, gamma)\n h = Add(g, beta)\n y = Add(h, v)")
    result = assert_pass_unchanged(model_from_text(text), FuseLayerNorm())
    assert result.stats == {"rewritten": 0, "skipped": {}}


def test_transformers_style_layernorm_export():
    import onnx
    import torch
    from graphs import torch_onnx

    class LayerNorm(torch.nn.Module):
        """The hand-written LayerNorm of BERT-era transformers code."""

        def __init__(self, width: int = 8) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.rand(width) + 0.5)
            self.bias = torch.nn.Parameter(torch.rand(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u = x.mean(-1, keepdim=True)
            s = (x - u).pow(2).mean(-1, keepdim=True)
            return self.weight * ((x - u) / torch.sqrt(s + 1e-12)) + self.bias

    model = onnx.load_from_string(torch_onnx(LayerNorm().eval(), (torch.randn(2, 3, 8),), opset=17))
    out, result = assert_pass_verified(model, FuseLayerNorm(), tolerance=FUSED, shape=[2, 3, 8])
    assert result.stats["rewritten"] == 1
    assert op_counts(out) == {"LayerNormalization": 1}
