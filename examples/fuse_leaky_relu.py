"""Example rule for the README's "Writing a pass": ``max(x, a * x)`` (or ``max(x, x / d)``) -> ``LeakyRelu``."""
from __future__ import annotations

from dataclasses import field

from graphopt.core.pass_infra import register_pass
from graphopt.core.rules import RewritePass

__all__ = ["FuseLeakyRelu"]


def _times(op, x):
    return op.Max(x, op.Mul(x, op.const("alpha")))  # also matches Max(a * x, x): Max and Mul commute


def _over(op, x):
    return op.Max(x, op.Div(x, op.const("divisor")))


@register_pass("fuse_leaky_relu")
class FuseLeakyRelu(RewritePass):
    """max(x, a * x) = LeakyRelu(x, alpha=a) when 0 <= a <= max_alpha (a = 1 / d for ``x / d``)."""

    max_alpha: float = field(default=1.0, metadata={"help": "largest slope fused (max(x, a x) needs a <= 1)"})
    patterns = (_times, _over)

    def check(self, ctx, x, alpha=None, divisor=None):
        a = _alpha(alpha, divisor)
        return None if 0 <= a <= self.max_alpha else f"slope {a:g} outside [0, {self.max_alpha:g}]"

    def rewrite(self, op, ctx, x, alpha=None, divisor=None):
        return op.LeakyRelu(x, alpha=_alpha(alpha, divisor))


def _alpha(alpha, divisor) -> float:
    return float(alpha.reshape(())) if alpha is not None else 1 / float(divisor.reshape(()))
