"""Verification of every pass, as an instrument of the pass manager (``graphopt.core.instruments``).

After every pass that changed the graph, the model is split into its weightless skeleton and its weights' arrays
(``graphopt.core.model.Model.snapshot``: no copy of them; the split the run restores and saves, made once), checked
with ``onnx.checker``, run in onnxruntime on the verification feeds and compared with the outputs of the graph
before the pass (``graphopt.core.verify``). The outputs of the last verified graph are kept, so each pass costs one
session, not two.

The onnxruntime work runs in background threads (onnxruntime releases the GIL; ``graphopt.core.background``): the
input model's outputs beside the import of the graph and the first pass, a pass's outputs beside the next pass.
Each session has one intra-op thread, leaving the passes in the main thread a core of their own (on 2 cores, a
session with the default pool beside a pass made it up to 2x slower), and they run one at a time, each after the
one before it, except the last pass's: the main thread only waits by then, so it runs beside the one still under
way. A pass's comparison is resolved once the next pass is done, before anything depends on it: the next
comparison, an error (an earlier pass that broke numerics is the failure to report, not what followed it), the end
of the run. A pass with ``on_fail: skip`` is resolved at once, so that a failing one is dropped, and the graph
before it restored, before the next pass runs. A pass outside tolerance stops the run with ``VerificationFailed``
naming the pass, the worst output and the first divergent tensor (``graphopt.core.divergence``). At the end, the
output is compared with the input model's outputs. Each verdict records ``onnxruntime_seconds``, the time its
session took to build and run (the final one: every session's), which is what verification costs beyond the checker
where it does not fit beside the passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from .background import Background
from .divergence import describe_divergence, first_divergence
from .errors import PassError, UserError, VerificationFailed
from .instruments import Instrument, PassContext, PassFailure, PipelineRun
from .model import Model
from .wire import SplitModel
from .verify import compare_outputs
from .runner import Outputs, Runner

__all__ = ["Verification", "FinalCheck", "check", "BEFORE"]

# What a pass's outputs are compared with, as its failure message names it ("output 'y' has shape [3] per sample,
# the graph before it gave [2]").
BEFORE = "the graph before it"


def _outputs(model: Model, feeds: Sequence[dict[str, np.ndarray]], threads: int | None, options) -> Outputs:
    """``model``'s outputs on ``feeds`` in a session of ``threads`` intra-op threads (None: onnxruntime's default
    pool) that never spin: idle workers spinning would slow what the main thread does next."""
    runner = Runner(model, threads=threads, spinning=False)
    if options.terminate:  # cancelled while the session was being built
        raise KeyboardInterrupt
    return runner.run(feeds, options)


def _pass_outputs(model: Model, feeds: Sequence[dict[str, np.ndarray]], who: str, threads: int | None,
                  options) -> Outputs:
    try:
        return _outputs(model, feeds, threads, options)
    except UserError as e:
        raise PassError(f"{who} produced a graph onnxruntime rejects: {e}") from None


def check(model: Model, who: str, note: str = "") -> None:
    """``onnx.checker`` on ``model`` (``Model.check``: its snapshot when it holds one); a failure is a
    ``PassError`` blaming ``who``."""
    try:
        model.check()
    except onnx.checker.ValidationError as e:
        raise PassError(f"{who} produced an invalid graph{note}: {str(e).strip().splitlines()[0]}") from None


@dataclass
class _Pending:
    """A pass's verification under way: the graphs before and after it, and its outputs being computed."""

    ctx: PassContext
    before: SplitModel
    after: SplitModel
    outputs: Background


class Verification(Instrument):
    """Checks, runs and compares every changed pass (see the module docstring); the split it makes of a changed
    pass's model is the model's snapshot, which ``on_fail: skip`` restores and the run's result saves without
    splitting again.

    The input model's outputs are started at once, on ``model`` (its split, which the view is imported from):
    a large export's session takes seconds to build (ShiftViT's 7021 nodes: 2 s), and nothing needs them before
    the first pass is checked, so they are computed while the pipeline imports the graph and runs the first
    pass."""

    def __init__(self, model: Model, feeds: Sequence[dict[str, np.ndarray]], tolerance: Any,
                 progress: Callable[[str], None]) -> None:
        self.feeds, self.tolerance, self.progress = feeds, tolerance, progress
        self._pending: _Pending | None = None
        self._before: SplitModel | None = None  # the model before the pass under way, split
        self._ref: Outputs | None = None  # the input model's outputs
        self._prev: Outputs | None = None  # the last verified graph's
        self._seconds = 0.0  # onnxruntime's time so far: sessions built and run, the input model's and each pass's
        progress(f"verify: reference outputs of the input model on {len(feeds)} batch(es), beside the first pass")
        self._reference = self._job = Background("graphopt-reference", _outputs, Model(model.split()), feeds, 1)

    def before_pass(self, ctx: PassContext) -> None:
        self._before = ctx.run.model.snapshot()  # held: the input model's split, or the last changed pass's

    def after_pass(self, ctx: PassContext) -> None:
        if not ctx.result.changed:
            return
        run = ctx.run
        after = run.model.snapshot()  # the weights stay the graph's arrays
        check(run.model, ctx.who)
        model = Model(after)  # as it is now, for the session beside the next pass
        if ctx.on_fail == "skip":  # settled at once: the main thread waits for it, its pool may take every core
            self._job = Background("graphopt-verify", _pass_outputs, model, self.feeds, ctx.who, None, after=self._job)
        elif ctx.index == len(run.steps):  # the main thread only waits now: beside the run still under way, if any
            self._job = Background("graphopt-verify", _pass_outputs, model, self.feeds, ctx.who, 1)
        else:
            self._job = Background("graphopt-verify", _pass_outputs, model, self.feeds, ctx.who, 1, after=self._job)
        pending = _Pending(ctx, self._before, after, self._job)
        self._settle()  # the previous pass's, which ran beside this one
        self._pending = pending
        if ctx.on_fail == "skip":
            self._settle()

    def on_error(self, ctx: PassContext, error: Exception) -> None:
        self._settle()
        self._previous()  # a model onnxruntime cannot run says so first: verification was impossible

    def after_run(self, run: PipelineRun) -> None:
        self._settle()
        cmp = compare_outputs(self._reference_outputs(), self._previous(), self.tolerance)
        run.final_verify = {**cmp.summary(), "onnxruntime_seconds": round(self._seconds, 4)}
        if not cmp.passed:
            raise VerificationFailed(f"passes {', '.join(run.done)} together drift beyond tolerance from the input "
                                     f"model: {cmp.describe('the input model')}")

    def _reference_outputs(self) -> Outputs:
        if self._ref is None:
            self._ref = self._reference.result()
            self._seconds += self._reference.seconds
        return self._ref

    def _previous(self) -> Outputs:
        if self._prev is None:
            self._prev = self._reference_outputs()
        return self._prev

    def _settle(self) -> None:
        """Compare the pass under way with the graph before it: its verdict in its context and record, or its
        failure raised (a ``PassFailure`` when it skips)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        # The graph before first: an input model onnxruntime cannot run (a custom op) is bad input, not the pass's fault
        prev = self._previous()
        got = pending.outputs.result()
        self._seconds += pending.outputs.seconds
        cmp = compare_outputs(prev, got, self.tolerance)
        ctx = pending.ctx
        ctx.verify = verdict = {**cmp.summary(), "onnxruntime_seconds": round(pending.outputs.seconds, 4)}
        if ctx.record is not None:
            ctx.record.verify = verdict
        if not cmp.passed:
            self.progress(f"{ctx.label}: FAILED verification; locating the first divergent tensor ...")
            verdict["first_divergent"] = first_divergence(  # both share the graphs' weight arrays
                pending.before, pending.after, self.feeds, ctx.pass_map, self.tolerance)
            shown = f"{cmp.describe(BEFORE)}{describe_divergence(verdict['first_divergent'])}"
            error = VerificationFailed(f"{ctx.who} broke numerics: {shown}")
            if ctx.on_fail != "skip":
                raise error
            raise PassFailure(error, f"FAILED verification, {shown}", changed=True, stats=ctx.result.stats,
                              verify=verdict)
        self._prev = got
        if ctx.record is not None:  # its "applied" line is out: the verdict follows it
            self.progress(f"{ctx.label}: verified, max_abs {verdict['max_abs']:.2e}, cosine {verdict['cosine']:.7f} "
                          f"(onnxruntime {pending.outputs.seconds:.2f}s)")


class FinalCheck(Instrument):
    """Without verification, which checks after each pass, ``onnx.checker`` once on the output, split as the
    model's snapshot (what the run saves)."""

    def after_run(self, run: PipelineRun) -> None:
        if any(r.changed for r in run.records):
            run.model.snapshot()
            check(run.model, f"passes {', '.join(run.done)}",
                  " (verification, which checks after each pass, names the pass)")
