"""Small ONNX graphs shared by several test modules (ONNX textual syntax, for graphopt.testing.model_from_text)."""
from __future__ import annotations

__all__ = ["TINY"]

# A last-axis Softmax of a rank-4 tensor: what softmax_transpose rewrites, small enough for any CLI or recipe test.
TINY = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 2, 3, 4] x) => (float[N, 2, 3, 4] y) {
    m = Mul(x, x)
    y = Softmax<axis=-1>(m)
}"""
