"""Hand-written matchers' helpers. A matcher returns what it found, or a ``NoMatch`` carrying the reason it did not
match, so a pass that leaves something alone can say why in its stats. Multi-node rewrites are better stated as
rules (``graphopt.core.rules``), whose layer does this plumbing."""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

__all__ = ["NoMatch", "rank_of"]


@dataclass(frozen=True)
class NoMatch:
    """A failed match and why. Falsy, so ``if not (m := matcher(...)): skipped[m.reason] += 1`` reads well."""

    reason: str

    def __bool__(self) -> bool:
        return False


def rank_of(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)
