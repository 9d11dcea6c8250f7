"""Instruments: what the pass manager (``graphopt.core.pipeline``) does around each pass, one concern per object.

An instrument has hooks the manager calls in the order the instruments are listed (each a no-op by default):
``before_run(run)``; for each pass ``before_pass(ctx)``, the pass, ``after_pass(ctx)``; ``on_error(ctx, error)``
when the pass or an ``after_pass`` hook raised (before the error propagates); ``on_skip(ctx, failure)`` when a pass
with ``on_fail: skip`` failed and is dropped; ``after_run(run)``. ``ctx`` (``PassContext``) is one pass's step;
``run`` (``PipelineRun``) what the whole run shares, the model among it (``graphopt.core.model.Model``: passes edit
its view, ``run.graph``; the manager declares each pass that reports a change, or raises, as an edit, so a split
of the model made by one instrument, its snapshot, serves every other until the next edit).

The instruments here: the requirements a pass declares (``Requirements``), timing, the honesty check (a pass that
says "no change" must not have edited), the cleanup and sort of a changed graph, the name map, ``on_fail: skip``
and progress. Verification is ``graphopt.core.pass_verification``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import onnx_graphsurgeon as gs

from .errors import PassError
from .model import Model, structure_hash
from .name_map import compose, pass_name_map, summarize, tensor_producers
from .pass_infra import Pass, PassResult
from .wire import SplitModel

__all__ = ["PassRecord", "PipelineRun", "PassContext", "PassFailure", "Instrument", "Requirements", "Timing",
           "Honesty", "Normalize", "NameMapping", "OnFailSkip", "Progress"]


@dataclass
class PassRecord:
    name: str
    where: str
    changed: bool
    stats: dict[str, Any]
    seconds: float
    verify: dict[str, Any] | None
    status: str  # "applied" | "unchanged" | "skipped"
    configs: dict[str, Any] = field(default_factory=dict)
    name_map: dict[str, int] | None = None  # counts: kept, renamed, replaced, new (graphopt.core.name_map)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "where": self.where, "changed": self.changed, "status": self.status,
                "stats": self.stats, "seconds": round(self.seconds, 4), "verify": self.verify,
                "configs": self.configs, "name_map": self.name_map}


@dataclass
class PipelineRun:
    """What every pass of a run shares. ``model``: the model the passes edit (its snapshot, when it holds one, is
    the split the last checked pass made, or the input model's: what ``on_fail: skip`` restores and the run saves);
    ``traced``: output tensor -> input model tensor."""

    model: Model
    steps: Sequence[tuple[Pass, str, str]]
    records: list[PassRecord] = field(default_factory=list)
    configs: dict[str, Any] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)  # the passes that ran, in order
    traced: dict[str, str] = field(default_factory=dict)
    final_verify: dict[str, Any] | None = None

    @property
    def graph(self) -> gs.Graph:
        """The view passes edit (``Model.view``: the pass manager declares their edits)."""
        return self.model.view


@dataclass
class PassContext:
    """One pass's step: the pass, where the recipe lists it, its on_fail, its 1-based index; what the pass and the
    instruments found (``result``, ``seconds``, ``verify``, ``pass_map`` this pass's own name map, ``name_map`` its
    counts) and its ``record`` once the manager made it."""

    run: PipelineRun
    pass_: Pass
    where: str
    on_fail: str
    index: int
    result: PassResult | None = None
    seconds: float = 0.0
    verify: dict[str, Any] | None = None
    pass_map: dict[str, str] | None = None
    name_map: dict[str, int] | None = None
    record: PassRecord | None = None

    @property
    def label(self) -> str:
        return f"[{self.index}/{len(self.run.steps)}] {self.pass_.name}"

    @property
    def who(self) -> str:
        return f"pass {self.pass_.name} ({self.where})"


class PassFailure(Exception):
    """A failure ``on_fail: skip`` absorbs: the pass raised, or broke numerics. ``error`` is raised (``from
    cause``) when the pass does not skip; otherwise the pass is recorded as skipped with ``changed``, ``stats`` and
    ``verify``, and progress says ``summary``."""

    def __init__(self, error: Exception, summary: str, *, changed: bool, stats: dict[str, Any],
                 verify: dict[str, Any] | None = None, cause: BaseException | None = None) -> None:
        super().__init__(str(error))
        self.error, self.summary, self.cause = error, summary, cause
        self.changed, self.stats, self.verify = changed, stats, verify


class Instrument:
    """The hooks, each a no-op: subclasses override those they need (see the module docstring)."""

    def before_run(self, run: PipelineRun) -> None:
        pass

    def before_pass(self, ctx: PassContext) -> None:
        pass

    def after_pass(self, ctx: PassContext) -> None:
        pass

    def on_error(self, ctx: PassContext, error: Exception) -> None:
        pass

    def on_skip(self, ctx: PassContext, failure: PassFailure) -> None:
        pass

    def after_run(self, run: PipelineRun) -> None:
        pass


class Requirements(Instrument):
    """What passes declare they need, supplied. A pass lists the names in ``requires`` (a class attribute); each
    is set as the pass's attribute of that name before it runs. ``supplies``: name -> value. A pass requiring a
    name the pipeline does not supply stops the run before any pass runs."""

    def __init__(self, supplies: dict[str, Any]) -> None:
        self.supplies = supplies

    def before_run(self, run: PipelineRun) -> None:
        for p, where, _ in run.steps:
            for name in p.requires:
                if name not in self.supplies:
                    offered = ", ".join(sorted(self.supplies)) or "nothing"
                    raise PassError(f"pass {p.name} ({where}) requires {name!r}, which this pipeline cannot supply "
                                    f"(it supplies: {offered})")

    def before_pass(self, ctx: PassContext) -> None:
        for name in ctx.pass_.requires:
            setattr(ctx.pass_, name, self.supplies[name])


class Timing(Instrument):
    """``ctx.seconds``: the pass's own run time (listed first after the pass, so no other hook is counted)."""

    def before_pass(self, ctx: PassContext) -> None:
        self._t0 = time.perf_counter()

    def after_pass(self, ctx: PassContext) -> None:
        ctx.seconds = time.perf_counter() - self._t0

    def on_error(self, ctx: PassContext, error: Exception) -> None:
        if ctx.result is None:  # the pass itself raised
            ctx.seconds = time.perf_counter() - self._t0


class Honesty(Instrument):
    """Holds a pass to its word: one that reports no change must not have edited the graph, since its result then
    skips verification and its model's snapshot stands. Edits are seen by ``structure_hash``'s object form,
    subgraphs included. The hash after a pass that changed nothing is the next pass's hash before it, so it is
    taken again only after a change (once the graph is cleaned up and sorted) or a skipped pass's restore."""

    def __init__(self) -> None:
        self._before: int | None = None  # the graph's hash before the pass under way
        self._lazy: dict = {}  # its constants not loaded yet (``structure_hash``'s ``lazy``)

    def before_run(self, run: PipelineRun) -> None:
        self._before = None

    def before_pass(self, ctx: PassContext) -> None:
        if self._before is None:
            self._lazy = {}
            self._before = structure_hash(ctx.run.graph, weights="identity", lazy=self._lazy)

    def after_pass(self, ctx: PassContext) -> None:
        if ctx.result.changed:
            self._before = None
        elif structure_hash(ctx.run.graph, weights="identity", lazy=self._lazy) != self._before:
            raise PassError(f"{ctx.who} reported no change but modified the graph: its result would skip "
                            "verification (a pass returns PassResult(changed=True, ...) when it edits)")

    def on_error(self, ctx: PassContext, error: Exception) -> None:
        self._before = None

    def on_skip(self, ctx: PassContext, failure: PassFailure) -> None:
        self._before = None


class Normalize(Instrument):
    """A changed graph cleaned up (dead nodes and tensors dropped) and sorted, as every later step expects it."""

    def after_pass(self, ctx: PassContext) -> None:
        if not ctx.result.changed:
            return
        try:
            ctx.run.graph.cleanup().toposort()
        except Exception as e:  # noqa: BLE001 - a cycle, a dangling tensor: the pass broke the graph
            raise PassError(f"{ctx.who} left a graph that cannot be sorted: "
                            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}") from None


class NameMapping(Instrument):
    """The name map (``graphopt.core.name_map``): each changed pass's own map (``ctx.pass_map``, its counts in
    ``ctx.name_map``) composed into the run's, output tensor -> input model tensor; a skipped pass's is undone."""

    def before_run(self, run: PipelineRun) -> None:
        run.traced = {name: name for name in tensor_producers(run.graph)}

    def before_pass(self, ctx: PassContext) -> None:
        self._names = tensor_producers(ctx.run.graph)
        self._traced = ctx.run.traced

    def after_pass(self, ctx: PassContext) -> None:
        if not ctx.result.changed:
            return
        graph = ctx.run.graph
        names_after = tensor_producers(graph)
        ctx.pass_map = pass_name_map(self._names, names_after, ctx.result.renamed, {t.name for t in graph.outputs})
        ctx.name_map = summarize(ctx.pass_map, self._names, names_after)
        ctx.run.traced = compose(ctx.pass_map, self._traced)

    def on_skip(self, ctx: PassContext, failure: PassFailure) -> None:
        ctx.run.traced = self._traced


class OnFailSkip(Instrument):
    """``on_fail: skip``: a pass that fails is dropped and the model before it restored, from the model's snapshot
    (``Model.snapshot``: the split the last checked pass made, no copy; taken before the pass when there is
    none)."""

    def before_pass(self, ctx: PassContext) -> None:
        self._before: SplitModel | None = ctx.run.model.snapshot() if ctx.on_fail == "skip" else None

    def after_pass(self, ctx: PassContext) -> None:
        self._before = None

    def on_skip(self, ctx: PassContext, failure: PassFailure) -> None:
        ctx.run.model.restore(self._before)
        self._before = None


class Progress(Instrument):
    """One line when a pass starts, one when it is done or skipped (verification adds its own when it resolves)."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress = progress

    def before_pass(self, ctx: PassContext) -> None:
        self.progress(f"{ctx.label} ...")

    def after_pass(self, ctx: PassContext) -> None:
        status = "applied" if ctx.result.changed else "unchanged"
        v = ctx.verify
        shown = "" if v is None else f", max_abs {v['max_abs']:.2e}, cosine {v['cosine']:.7f}"
        self.progress(f"{ctx.label}: {status} in {ctx.seconds:.2f}s{shown}")

    def on_skip(self, ctx: PassContext, failure: PassFailure) -> None:
        self.progress(f"{ctx.label}: {failure.summary}; skipped (on_fail: skip)")
