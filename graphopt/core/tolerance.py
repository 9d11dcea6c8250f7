"""Verification thresholds: the global criteria of a recipe or a command line, and per-output overrides.
Every comparison (``graphopt.core.verify.compare_outputs``) is held to a ``Tolerance``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["CRITERIA", "OutputTolerance", "Tolerance", "tolerance_problem"]


def tolerance_problem(criterion: str, value: Any) -> str | None:
    """Why ``value`` cannot be the threshold of ``criterion`` (None when it can): a threshold no comparison can
    meet, or one every comparison meets, is a mistake in the recipe or flag, not a pass that broke numerics.

    ``max_abs``, ``max_rel``: a finite number >= 0 (an error bound). ``cosine``: within (0, 1]: a cosine
    similarity is at most 1 (identical direction), and a threshold at or below 0 accepts unrelated or opposite
    outputs (and any output with inf or NaN, whose cosine counts as 0). ``top1_agreement``: within [0, 1], a share
    of rows. ``None`` switches a criterion off."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number or null, got {type(value).__name__} {value!r}"
    if criterion in ("max_abs", "max_rel"):
        if not (math.isfinite(value) and value >= 0):
            return f"must be a finite number >= 0 (an error bound), got {value}"
    elif criterion == "cosine":
        if not 0 < value <= 1:
            return (f"must be within (0, 1] (a cosine similarity: 1 is identical, 0 or less accepts unrelated "
                    f"outputs), got {value}")
    elif criterion == "top1_agreement":
        if not 0 <= value <= 1:
            return f"must be within [0, 1] (a share of rows), got {value}"
    else:
        raise ValueError(f"unknown tolerance criterion {criterion!r}")
    return None


CRITERIA = ("max_abs", "max_rel", "cosine", "top1_agreement")


@dataclass(frozen=True)
class OutputTolerance:
    """One output's own thresholds (``verify.tolerance.outputs.NAME``): each criterion in ``overrides`` replaces the
    global one for that output (``None`` switches it off there); the others fall back to the global ones. ``top1``:
    whether the output holds class scores (top-1 agreement measured), None to infer it (rank 2, more than one
    column, a float dtype)."""

    name: str
    overrides: tuple[tuple[str, float | None], ...] = ()
    top1: bool | None = None

    def __post_init__(self) -> None:
        for criterion, value in self.overrides:
            problem = tolerance_problem(criterion, value)
            if problem:
                raise ValueError(f"tolerance outputs.{self.name}.{criterion}: {problem}")


@dataclass(frozen=True)
class Tolerance:
    """Verification thresholds. ``None`` disables a criterion; at least one must be set. Each set one is checked
    by ``tolerance_problem`` (a ``ValueError`` here: recipes and flags are checked before, with their own names).
    ``outputs``: per-output thresholds (``for_output``)."""

    max_abs: float | None = 1e-4
    max_rel: float | None = None
    cosine: float | None = 0.99999
    top1_agreement: float | None = 1.0
    outputs: tuple[OutputTolerance, ...] = ()

    def __post_init__(self) -> None:
        for name in CRITERIA:
            problem = tolerance_problem(name, getattr(self, name))
            if problem:
                raise ValueError(f"tolerance {name}: {problem}")

    def for_output(self, name: str) -> tuple["Tolerance", bool | None]:
        """The thresholds for output ``name`` (the global ones with its overrides) and its ``top1`` declaration."""
        own = next((o for o in self.outputs if o.name == name), None)
        if own is None:
            return self, None
        return dataclasses.replace(self, outputs=(), **dict(own.overrides)), own.top1
