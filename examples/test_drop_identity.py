"""Tests for the example pass: the five checks every pass owes."""
from __future__ import annotations

from drop_identity import DropIdentity

from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

WITH_IDENTITIES = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y) {
    a = Identity(x)
    b = Relu(a)
    y = Identity(b)
}"""


def test_positive_numerics_checker_idempotence():
    # assert_pass_verified: changed, onnx.checker, onnxruntime numerics, second run changes nothing.
    out, result = assert_pass_verified(model_from_text(WITH_IDENTITIES), DropIdentity(), tolerance=STRICT_FP32)
    assert result.stats == {"dropped": 1, "kept_graph_outputs": 1}
    assert [n.op_type for n in out.graph.node] == ["Relu", "Identity"]


def test_negative_unchanged():
    assert_pass_unchanged(model_from_text("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float[N, 4] y) {
        y = Relu(x)
    }"""), DropIdentity())
