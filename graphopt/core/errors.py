"""Error types. A ``UserError`` is a bad input (file, recipe, argument): the CLI prints its one-line message
and exits 2. A ``VerificationFailed`` is a pass or model that broke numerics: exit 1."""
from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["GraphoptError", "UserError", "VerificationFailed", "PassError", "closest"]


class GraphoptError(Exception):
    """Base class of every error graphopt raises on purpose."""

    exit_code = 2


class UserError(GraphoptError):
    """Bad input: a missing or corrupt file, a recipe mistake, a wrong shape. Message is one line."""


class VerificationFailed(GraphoptError):
    """A pass (or a model comparison) changed the outputs beyond the configured tolerance."""

    exit_code = 1


class PassError(GraphoptError):
    """A pass raised while running; the message names the pass and the passes before it."""

    exit_code = 1


def closest(name: str, valid: Iterable[str]) -> str:
    """' (did you mean: a, b?)' or ' (valid: ...)' suffix for an unknown name."""
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if near:
        return f" (did you mean: {', '.join(near)}?)"
    return f" (valid: {', '.join(valid)})" if len(valid) <= 12 else ""
