"""Names that code outside graphopt/ascend still imports from this module (graphopt.ascend.ort_backend holds them)."""
from __future__ import annotations

from .ort_backend import TimingOptions  # re-export for the import sweep

__all__ = ["TimingOptions"]
