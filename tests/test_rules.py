"""The rewrite-rule layer (graphopt.core.rules): commuted operands, spellings, check reasons, private
intermediates, node names, constants, attributes; each rewrite checked against onnxruntime and for idempotence."""
from __future__ import annotations

import pytest

from graphopt.core.ir import op_counts, to_graph
from graphopt.core.rules import RewritePass, find_matches
from graphopt.core.tolerance import Tolerance
from graphopt.testing import assert_pass_unchanged, assert_pass_verified, model_from_text

# x / 10 against x * 0.1: the two round differently, by an ulp at most
ONE_ULP = Tolerance(max_abs=1e-6, max_rel=None, cosine=0.999999, top1_agreement=None)


def _times(op, x):
    return op.Max(x, op.Mul(x, op.const("alpha")))


def _over(op, x):
    return op.Max(x, op.Div(x, op.const("divisor")))


class FuseLeakyRelu(RewritePass):
    """max(x, a * x) = LeakyRelu(x, alpha=a) for 0 <= a <= 1 (``x / d``: a = 1 / d)."""

    name = "fuse_leaky_relu"
    patterns = (_times, _over)

    def check(self, ctx, x, alpha=None, divisor=None):
        a = float(alpha.reshape(())) if alpha is not None else 1 / float(divisor.reshape(()))
        return None if 0 <= a <= 1 else f"alpha {a:g} is outside [0, 1]"

    def rewrite(self, op, ctx, x, alpha=None, divisor=None):
        a = float(alpha.reshape(())) if alpha is not None else 1 / float(divisor.reshape(()))
        return op.LeakyRelu(x, alpha=a)


class DropDoubledHalf(RewritePass):
    """x * 0.5 + x * 0.5 = x (exact in binary floating point)."""

    name = "drop_doubled_half"
    const_rtol = 1e-3

    def pattern(self, op, x):
        return op.Add(op.Mul(x, 0.5), op.Mul(x, 0.5))

    def rewrite(self, op, ctx, x):
        return op.Identity(x)


def _model(body: str, outputs: str = "float[N, 8] y") -> str:
    return model_from_text(f'<ir_version: 8, opset_import: ["" : 17]>\ng (float[N, 8] x) => ({outputs}) {{\n{body}}}')


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("body", [
    "  a = Constant<value = float {0.1}>()\n  m = Mul(x, a)\n  y = Max(x, m)\n",
    "  a = Constant<value = float {0.1}>()\n  m = Mul(a, x)\n  y = Max(m, x)\n",  # both ops commuted
])
def test_commuted_operands_match(body):
    out, result = assert_pass_verified(_model(body), FuseLeakyRelu(), shape=[4, 8])
    assert result.stats == {"rewritten": 1, "skipped": {}}
    assert _ops(out) == ["LeakyRelu"] and out.graph.output[0].name == "y"


def test_alternative_spelling_matches():
    body = "  d = Constant<value = float {10.0}>()\n  m = Div(x, d)\n  y = Max(m, x)\n"
    out, result = assert_pass_verified(_model(body), FuseLeakyRelu(), shape=[4, 8], tolerance=ONE_ULP)
    assert result.stats["rewritten"] == 1 and _ops(out) == ["LeakyRelu"]


def test_check_reason_is_counted():
    body = "  a = Constant<value = float {2.0}>()\n  m = Mul(x, a)\n  y = Max(x, m)\n"
    result = assert_pass_unchanged(_model(body), FuseLeakyRelu())
    assert result.stats == {"rewritten": 0, "skipped": {"alpha 2 is outside [0, 1]": 1}}


def test_structural_miss_is_counted_once_per_candidate():
    body = "  m = Relu(x)\n  y = Max(x, m)\n"  # Max of two tensors: neither spelling
    result = assert_pass_unchanged(_model(body), FuseLeakyRelu())
    assert result.stats["skipped"] == {"Relu where Mul was expected": 1}


def test_intermediate_with_two_consumers_is_left_alone():
    body = ("  a = Constant<value = float {0.1}>()\n  m = Mul(x, a)\n  l = Max(x, m)\n  y = Add(l, m)\n")
    result = assert_pass_unchanged(_model(body), FuseLeakyRelu())
    assert result.stats["skipped"] == {"Mul output has 2 consumers, expected 1": 1}


def test_intermediate_graph_output_is_left_alone():
    body = "  a = Constant<value = float {0.1}>()\n  m = Mul(x, a)\n  y = Max(x, m)\n"
    result = assert_pass_unchanged(_model(body, "float[N, 8] y, float[N, 8] m"), FuseLeakyRelu())
    assert result.stats["skipped"] == {"Mul output is a graph output": 1}


def test_new_nodes_are_named_after_the_rule_and_unique():
    body = ("  a = Constant<value = float {0.1}>()\n  m1 = Mul(x, a)\n  y1 = Max(x, m1)\n"
            "  m2 = Mul(y1, a)\n  y = Max(y1, m2)\n")
    out, result = assert_pass_verified(_model(body), FuseLeakyRelu(), shape=[4, 8])
    assert result.stats["rewritten"] == 2
    assert sorted(n.name for n in out.graph.node if n.op_type == "LeakyRelu") == \
        ["Max_fuse_leaky_relu", "Max_fuse_leaky_relu_1"]


def test_second_run_changes_nothing():
    body = "  a = Constant<value = float {0.1}>()\n  m = Mul(x, a)\n  y = Max(x, m)\n"
    out, _ = assert_pass_verified(_model(body), FuseLeakyRelu(), shape=[4, 8])
    assert assert_pass_unchanged(out, FuseLeakyRelu()).stats == {"rewritten": 0, "skipped": {}}


@pytest.mark.parametrize("half, reason", [
    ("float {0.5}", None),
    ("float[8] {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}", None),  # any all-equal array
    ("float {0.5004}", None),  # within the rule's 1e-3
    ("float {0.6}", "Mul input is 0.6, expected 0.5"),
    ("float[8] {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6}", "Mul input is a constant of unequal values, expected 0.5"),
])
def test_pattern_constants(half, reason):
    body = f"  h = Constant<value = {half}>()\n  a = Mul(x, h)\n  b = Mul(h, x)\n  y = Add(a, b)\n"
    model = _model(body)
    if reason is None:
        out, _ = assert_pass_verified(model, DropDoubledHalf(), shape=[4, 8], tolerance=Tolerance(
            max_abs=1e-2, max_rel=1e-3, cosine=0.999999, top1_agreement=None))
        assert op_counts(out) == {"Identity": 1}
    else:
        assert assert_pass_unchanged(model, DropDoubledHalf()).stats["skipped"] == {reason: 1}


class _Softmax(RewritePass):
    name = "softmax_last_axis"

    def pattern(self, op, x):
        return op.Softmax(x, axis=-1)


@pytest.mark.parametrize("attrs, opset, matches", [
    ("<axis=-1>", 13, True),
    ("", 13, True),  # absent: the schema's default, -1 from opset 13
    ("", 11, False),  # ... and 1 before it
    ("<axis=1>", 13, False),
])
def test_attribute_match_uses_the_schema_default(attrs, opset, matches):
    graph = to_graph(model_from_text(f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
                                     f'g (float[2, 3] x) => (float[2, 3] y) {{ y = Softmax{attrs}(x) }}'))
    found, skipped = find_matches(_Softmax(), graph)
    assert len(found) == int(matches)
    assert skipped == ({} if matches else {"Softmax axis=1, expected -1": 1})


class TypedReplacements(RewritePass):
    """Relu(x) as Where(x > 0, x, 0), built through ops whose outputs are typed differently (checks the types)."""

    name = "typed_replacements"

    def pattern(self, op, x):
        return op.Relu(x)

    def rewrite(self, op, ctx, x):
        positive = op.Greater(x, 0.0)
        as_int = op.Cast(positive, to=6)  # INT32
        shape = op.Shape(x)
        back = op.Cast(as_int, to=1)  # FLOAT
        like = op.CastLike(back, x)
        self.made = {"greater": positive.dtype, "cast": as_int.dtype, "shape": shape.dtype, "castlike": like.dtype}
        return op.Mul(x, like)


@pytest.mark.parametrize("dtype", ["float", "float16"])
def test_node_builder_types_outputs_by_op(dtype):
    import numpy as np

    model = model_from_text(f'<ir_version: 8, opset_import: ["" : 17]>\ng ({dtype}[N, 8] x) => ({dtype}[N, 8] y) '
                            '{\ny = Relu(x)\n}')
    rule = TypedReplacements()
    after, _ = assert_pass_verified(model, rule, shape=[4, 8],
                                    tolerance=Tolerance(max_abs=0.0, cosine=0.999999, top1_agreement=None))
    assert rule.made == {"greater": np.bool_, "cast": np.int32, "shape": np.int64,
                         "castlike": np.float16 if dtype == "float16" else np.float32}
    assert "Relu" not in _ops(after)
