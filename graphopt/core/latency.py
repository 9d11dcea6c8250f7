"""Is graph B faster than graph A in onnxruntime? Timed side by side, interleaved, and decided by a sign test.

Shared machines are noisy: one timing of each says little, and timing all of A and then all of B lets a load that
comes and goes favour one. So each round times both, in alternating order (A B, then B A), after a short pause
that lets the other session's spinning worker threads go idle; B counts as faster only when it wins clearly more
rounds than chance would give (a one-sided sign test at ``alpha``), and by a median margin of at least
``min_gain``. Both sessions run with one intra-op thread: a fair race on two cores, and steadier timings.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import onnx

from .sessions import create_session

__all__ = ["Race", "race", "race_timers", "sign_test_p"]


@dataclass(frozen=True)
class Race:
    """Medians in milliseconds, B's wins out of ``rounds``, the sign test's p-value, and the verdict."""

    a_ms: float
    b_ms: float
    wins: int
    rounds: int
    p_value: float
    faster: bool

    @property
    def change(self) -> float:
        """B's median latency relative to A's, minus one (-0.1: 10% faster)."""
        return self.b_ms / self.a_ms - 1 if self.a_ms > 0 else 0.0


def sign_test_p(wins: int, rounds: int) -> float:
    """P(at least ``wins`` of ``rounds`` fair coin flips): how often chance alone would give B that many wins."""
    return sum(math.comb(rounds, k) for k in range(wins, rounds + 1)) / 2 ** rounds


def _timer(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]):
    session = create_session(model, "deploy", threads=1)
    names = [o.name for o in session.get_outputs()]

    def once() -> float:
        t0 = time.perf_counter()
        session.run(names, dict(feed))
        return (time.perf_counter() - t0) * 1000

    return once


def race_timers(time_a: Callable[[], float], time_b: Callable[[], float], *, rounds: int, pause: float = 0.0,
                alpha: float = 0.05, min_gain: float = 0.0) -> Race:
    """``rounds`` rounds of one call of each timer (milliseconds), in alternating order, decided by the sign test:
    the shared core of every backend's race (onnxruntime here, the NPU in ``graphopt.ascend.npu_race``)."""
    ta, tb, wins = [], [], 0
    for k in range(rounds):
        time.sleep(pause)
        if k % 2:
            y = time_b()
            x = time_a()
        else:
            x = time_a()
            y = time_b()
        ta.append(x)
        tb.append(y)
        wins += y < x
    a_ms, b_ms = statistics.median(ta), statistics.median(tb)
    p = sign_test_p(wins, rounds)
    return Race(a_ms, b_ms, wins, rounds, p, p <= alpha and b_ms <= a_ms * (1 - min_gain))


def race(a: onnx.ModelProto, b: onnx.ModelProto, feed: Mapping[str, np.ndarray], *, rounds: int = 15,
         warmup: int = 2, pause: float = 0.02, alpha: float = 0.05, min_gain: float = 0.0) -> Race:
    """Time ``a`` and ``b`` (whole models, weights included, so onnxruntime optimises them as it would deploy them)
    on ``feed``: ``rounds`` interleaved pairs after ``warmup`` runs each."""
    time_a, time_b = _timer(a, feed), _timer(b, feed)
    for _ in range(warmup):
        time_a(), time_b()
    return race_timers(time_a, time_b, rounds=rounds, pause=pause, alpha=alpha, min_gain=min_gain)
