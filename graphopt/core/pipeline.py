"""The pipeline: passes in order on one model (``graphopt.core.model.Model``: passes edit its onnx-graphsurgeon
view), under a pass manager with instruments.

``PassManager`` is a short loop: for each pass, the instruments' hooks before it, the pass, their hooks after it
(``graphopt.core.instruments``). What happens around a pass is each an instrument: the requirements it declares,
timing, the honesty check (a pass that says "no change" must not have edited), the cleanup and sort of a changed
graph, the name map, verification (``graphopt.core.pass_verification``: checker, onnxruntime and comparison, the
first divergent tensor on failure; without it, the checker once at the end), ``on_fail: skip`` and progress.
``run_pipeline`` lists them and runs the recipe's passes; the manager takes other instruments as well. The manager
declares to the model each pass that reports a change (or raises) as an edit; the honesty check holds the others
to their word. So the model's snapshot, a split of it (the input model's, then the one verification makes of each
changed pass), stands until the next change: ``on_fail: skip`` restores it and the result saves it, and nothing
is split twice.

The verification inputs are a list of feeds (dicts input name -> array, every input of the model: see
``graphopt.core.inputs``); a list of bare arrays, the single-input form, feeds the model's first input (or
``input_name``).

A pass declares what it needs from the pipeline in ``requires`` (a class attribute naming attributes the manager
sets before it runs). The pipeline supplies ``calibration``: ``(feeds, real_data)``, the verification feeds (None
when verification is off) and whether they are real data, for passes that measure (``mixlist`` with ``mode:
measured``). Passes never read files themselves. ``keep_dtype`` node names a pass asks for are checked against the
final graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import GraphoptError, PassError, UserError, VerificationFailed
from .instruments import (Honesty, Instrument, NameMapping, Normalize, OnFailSkip, PassContext, PassFailure,
                          PassRecord, PipelineRun, Progress, Requirements, Timing)
from .ir import op_counts
from .model import Model
from .pass_infra import Pass
from .pass_verification import FinalCheck, Verification
from .wire import SplitModel

__all__ = ["PassRecord", "PipelineResult", "PassManager", "run_pipeline", "merge_configs"]


@dataclass
class PipelineResult:
    # The output model; its snapshot, when it holds one, is the split the run last checked, sharing its weight
    # arrays: what ``output.save`` writes without splitting the graph again. Read it through ``output.view``.
    output: Model
    records: list[PassRecord]
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    configs: dict[str, Any]
    final_verify: dict[str, Any] | None
    name_map: dict[str, str] = field(default_factory=dict)  # output model tensor -> input model tensor

    @property
    def graph(self) -> gs.Graph:
        """The output model's view, for editing (``Model.graph``: its snapshot is forgotten)."""
        return self.output.graph

    @property
    def model(self) -> onnx.ModelProto:
        """The output model as one ``ModelProto`` (``Model.proto``)."""
        return self.output.proto()


def merge_configs(into: dict[str, Any], new: dict[str, Any], who: str) -> None:
    """Merge a pass's compiler-config contributions (see ``PassResult``) into the pipeline's."""
    for key, value in new.items():
        if key == "op_precision":
            into.setdefault(key, {}).update(value)
        elif key == "mixlist":
            mix = into.setdefault(key, {})
            for lst, ops in value.items():
                for action, names in ops.items():
                    cur = mix.setdefault(lst, {}).setdefault(action, [])
                    cur.extend(n for n in names if n not in cur)
        elif key == "keep_dtype":
            cur = into.setdefault(key, [])
            cur.extend(n for n in value if n not in cur)
        elif key == "precision_mode":
            if into.get(key) not in (None, value):
                raise UserError(f"{who}: asks for precision_mode {value!r}, an earlier pass asked for {into[key]!r}")
            into[key] = value
        else:
            raise ValueError(f"{who}: unknown config contribution {key!r}")


class PassManager:
    """Runs passes on ``run.graph`` with ``instruments`` around each (their hooks called in list order). A pass
    that reports a change, or raises, is declared to ``run.model`` as an edit (``Model.edited``)."""

    def __init__(self, instruments: Sequence[Instrument]) -> None:
        self.instruments = list(instruments)

    def run(self, run: PipelineRun) -> None:
        self._each("before_run", run)
        for k, (p, where, on_fail) in enumerate(run.steps, 1):
            ctx = PassContext(run, p, where, on_fail, k)
            try:
                self._step(ctx)
            except PassFailure as failure:
                if on_fail != "skip":
                    raise failure.error from failure.cause
                self._each("on_skip", ctx, failure)
                run.records.append(PassRecord(p.name, where, failure.changed, failure.stats, ctx.seconds,
                                              failure.verify, "skipped"))
                continue
            result = ctx.result
            ctx.record = PassRecord(p.name, where, result.changed, result.stats, ctx.seconds, ctx.verify,
                                    "applied" if result.changed else "unchanged", result.configs, ctx.name_map)
            run.records.append(ctx.record)
            run.done.append(p.name)
        self._each("after_run", run)

    def _step(self, ctx: PassContext) -> None:
        self._each("before_pass", ctx)
        try:
            ctx.result = ctx.pass_(ctx.run.graph)
        except Exception as e:
            ctx.run.model.edited()  # whatever the pass did before it raised
            self._each("on_error", ctx, e)
            if isinstance(e, (UserError, VerificationFailed)):  # bad input, broken numerics: skipping cannot help
                raise
            # A GraphoptError the pass raised itself is deliberate and already names the pass and what went wrong
            # (simplify's PassError quoting onnxsim): raised as it is. Only a raw exception, a bug, is wrapped.
            summary = f"{type(e).__name__}: {e}"
            if isinstance(e, GraphoptError):
                raise PassFailure(e, f"raised {summary}", changed=False, stats={"error": summary}) from e
            after = f" (after {', '.join(ctx.run.done)})" if ctx.run.done else ""
            raise PassFailure(PassError(f"{ctx.who} raised {summary}{after}"), f"raised {summary}", changed=False,
                              stats={"error": summary}, cause=e) from e
        if getattr(ctx.result, "changed", True):  # the others are held to their word (``Honesty``)
            ctx.run.model.edited()
        try:
            self._each("after_pass", ctx)
            try:
                merge_configs(ctx.run.configs, ctx.result.configs, ctx.who)
            except (ValueError, TypeError, AttributeError) as e:  # a pass returning configs of the wrong shape
                raise PassError(f"{ctx.who} returned unusable compiler configs: {e}") from None
        except PassFailure:
            raise
        except Exception as e:
            self._each("on_error", ctx, e)
            raise

    def _each(self, hook: str, *args: Any) -> None:
        for instrument in self.instruments:
            getattr(instrument, hook)(*args)


def _progress_noop(msg: str) -> None:
    pass


def run_pipeline(model: Model | onnx.ModelProto | SplitModel, passes: Sequence[tuple[Pass, str, str]], *,
                 inputs: Sequence[dict[str, np.ndarray] | np.ndarray] | None, input_name: str | None = None,
                 tolerance=None, progress: Callable[[str], None] = _progress_noop,
                 real_data: bool = False) -> PipelineResult:
    """Run ``passes`` (each ``(pass, where, on_fail)``) on ``model`` (a ``Model`` is edited in place and is the
    result's ``output``; a ModelProto or ``SplitModel`` is wrapped in one); verify each when ``inputs`` is given: a
    list of feeds (``graphopt.core.inputs``: ``resolve_inputs(model, specs).feeds(samples, seed)``), or bare arrays for
    the model's first input (or ``input_name``). ``real_data``: ``inputs`` are real data (a recipe's
    ``verify.data``), not seeded random arrays; measuring passes, which calibrate on them, warn otherwise."""
    from .feeds import feeds_of
    from .model_inputs import model_inputs

    verify = inputs is not None
    if tolerance is None:  # the recipe's defaults
        from .tolerance import Tolerance

        tolerance = Tolerance()
    if not isinstance(model, Model):
        model = Model(model) if isinstance(model, SplitModel) else Model.from_proto(model)
    if verify:
        model.snapshot()  # the input model as a split (held already when given as one): what verification runs
    feeds = feeds_of(inputs, input_name, model_inputs(model.split())) if verify else None
    ops_before = op_counts(model.split().skeleton if model.has_snapshot else model.view)
    checking = Verification(model, feeds, tolerance, progress) if verify else FinalCheck()  # before the import
    run = PipelineRun(model, passes)
    # Order matters: timing first after the pass; the honesty check before the graph is sorted; the name map
    # before verification, which names the first divergent tensor through it; progress once the pass stands.
    PassManager([Requirements({"calibration": (feeds, real_data)}), Timing(), Honesty(), Normalize(), NameMapping(),
                 checking, OnFailSkip(), Progress(progress)]).run(run)
    graph = model.view
    names = {n.name for n in graph.nodes}
    stale = [e for e in run.configs.get("keep_dtype", []) if "::" not in e and e not in names]
    if stale:
        raise UserError(f"keep_dtype names node {stale[0]!r}, which is not in the final graph (a later pass renamed "
                        "or removed it): move the pass asking for it after the passes that rewrite the graph")
    return PipelineResult(model, run.records, ops_before, op_counts(graph), run.configs, run.final_verify,
                          run.traced)
