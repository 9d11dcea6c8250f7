"""graphopt: recipe-driven, numerically verified ONNX graph surgery for Ascend NPU deployment."""
from __future__ import annotations

__version__ = "0.1.0"
