"""The pipeline runner: passes in order on one onnx-graphsurgeon graph, each verified as it runs.

After every pass that changed the graph, the runner cleans up and sorts the graph, checks it with
``onnx.checker``, runs it in onnxruntime on the same inputs as the graph before the pass, and compares
(``graphopt.core.verify``). The outputs of the last verified graph are kept, so each pass costs one session, not two;
the input model's outputs are computed in a background thread beside the first pass.
The graph is never serialized with its weights: the checker reads its weightless skeleton and onnxruntime is fed the
weights' arrays as graph inputs (``graphopt.core.protoio``), so verifying costs no copy of them.
A pass outside tolerance stops the run (``VerificationFailed`` naming the pass and the worst output), or, with
``on_fail: skip``, is dropped and the graph before it restored.

The verification inputs are a list of feeds (dicts input name -> array, every input of the model: see
``graphopt.core.inputs``); a list of bare arrays, the single-input form of before, feeds the model's first input (or
``input_name``).

A pass that measures rather than rewrites (``mixlist`` with ``mode: measured``) declares a ``calibration``
attribute; the runner sets it to ``(feeds, real_data)``, the verification feeds (None when verification is off)
and whether they are real data, before running it. Passes never read files themselves. ``keep_dtype`` node names
a pass asks for are checked against the final graph.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from .errors import GraphoptError, PassError, UserError, VerificationFailed
from .ir import op_counts, to_model
from .protoio import SplitModel, check_split, graph_from_split, split_graph, split_model
from .name_map import compose, pass_name_map, summarize, tensor_producers
from .pass_infra import Pass
from .verify import Runner, compare_outputs

__all__ = ["PassRecord", "PipelineResult", "run_pipeline", "merge_configs", "stop_background"]


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
class PipelineResult:
    graph: gs.Graph  # the output model (``ir.save_model`` streams it to a file)
    records: list[PassRecord]
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    configs: dict[str, Any]
    final_verify: dict[str, Any] | None
    name_map: dict[str, str] = field(default_factory=dict)  # output model tensor -> input model tensor
    # ``graph`` as the SplitModel the run last checked, sharing its weight arrays (None when it made none): what
    # ``ir.save_model`` writes without splitting the graph again.
    split: SplitModel | None = None

    @property
    def model(self) -> onnx.ModelProto:
        return to_model(self.graph)


class _Background:
    """``fn(*args, run_options)`` run in a daemon thread; ``result()`` waits and returns its value or raises its
    exception. ``run_options`` is an onnxruntime ``RunOptions`` for ``fn`` to run with: ``cancel`` sets its
    ``terminate``, which ends a run in flight (and which ``fn`` checks before starting one).

    On Ctrl-C the main thread unwinds while this thread may still be inside onnxruntime: an interpreter that exits
    then crashes in native code ("terminate called without an active exception", a segfault) instead of exiting
    130. ``stop_background`` (the CLI calls it on Ctrl-C) asks every live one to stop and waits for it."""

    _live: "weakref.WeakSet[_Background]" = weakref.WeakSet()

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._outcome: tuple[bool, Any] | None = None
        import onnxruntime as ort

        self._run_options = ort.RunOptions()

        def target() -> None:
            try:
                self._outcome = (True, fn(*args, self._run_options))
            except BaseException as e:  # noqa: BLE001 - handed to the caller of result()
                self._outcome = (False, e)

        self._thread = threading.Thread(target=target, name="graphopt-reference", daemon=True)
        _Background._live.add(self)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        self._run_options.terminate = True

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def stop_background(timeout: float) -> bool:
    """Cancel every background computation still running and wait up to ``timeout`` seconds in all for them to
    end; True when none is left running (one that is still building its onnxruntime session cannot be stopped
    until the session is built)."""
    live = [b for b in list(_Background._live) if b.alive()]
    for b in live:
        b.cancel()
    deadline = time.monotonic() + timeout
    for b in live:
        b.join(max(0.0, deadline - time.monotonic()))
    return not any(b.alive() for b in live)


def _outputs(model: SplitModel, feeds: Sequence[dict[str, np.ndarray]], options) -> dict[str, np.ndarray]:
    runner = Runner(model)
    if options.terminate:  # cancelled while the session was being built
        raise KeyboardInterrupt
    return runner.run(feeds, options)


def _fingerprint(graph: gs.Graph) -> int:
    """A hash of what ``graph`` computes as the objects hold it: nodes (op, domain, attributes, the identities of
    their input and output tensors), tensor names, constants' arrays (by identity: a pass that changes a weight
    replaces its array or writes into it, and the latter is not seen) and dtypes, graph inputs and outputs. A
    subgraph attribute (If's branches, Loop's and Scan's bodies) is hashed by its contents the same way, nested
    ones too: hashing the ``gs.Graph`` object alone would miss every edit made inside it. Not the shapes and
    dtypes inferred for computed tensors: annotations that passes fill in.
    Used to hold a pass to its word when it reports no change."""
    seen: dict[int, tuple] = {}

    def tensor(t) -> int:
        if id(t) not in seen:
            lazy = getattr(t, "_values", None)
            # (a sparse initializer's lazy values hold a SparseTensorProto, whose data type is its values')
            proto = getattr(lazy, "tensor", None)
            proto = getattr(proto, "values", proto)
            if isinstance(lazy, LazyValues) and getattr(proto, "data_type", None) == onnx.TensorProto.STRING:
                # Not loaded: onnx-graphsurgeon writes a loaded string array as raw_data, which strings cannot use,
                # so loading one here would make an untouched model unexportable. Passes never write into strings.
                seen[id(t)] = (t.name, id(lazy), t.export_dtype)
            elif isinstance(t, gs.Constant):  # ``values`` loads lazy values once: the array's identity is stable after
                seen[id(t)] = (t.name, id(t.values), t.export_dtype)
            else:  # its shape and dtype are annotations (passes infer them), not what is computed
                seen[id(t)] = (t.name,)
        return id(t)

    def attr(v):
        if isinstance(v, gs.Graph):
            return contents(v)
        if isinstance(v, gs.Constant):  # a tensor attribute (Constant's value): its name, array and dtype
            return ("tensor", tensor(v))
        if isinstance(v, np.ndarray):
            return id(v)
        if isinstance(v, (list, tuple)):
            return tuple(attr(x) for x in v)
        return v if isinstance(v, (int, float, str, bytes, bool, type(None))) else repr(v)

    def contents(g: gs.Graph) -> tuple:
        # A subgraph's tensors that come from the outer scope are the outer graph's objects: the same ids.
        parts = [g.name, tuple(map(tensor, g.inputs)), tuple(map(tensor, g.outputs))]
        for node in g.nodes:
            parts.append((node.op, node.domain, node.name, tuple(map(tensor, node.inputs)),
                          tuple(map(tensor, node.outputs)),
                          tuple((k, attr(v)) for k, v in node.attrs.items())))
        return tuple(parts)

    parts = contents(graph)
    return hash((parts, tuple(seen.items())))


def _check(split: SplitModel, who: str, note: str = "") -> None:
    """``onnx.checker`` on ``split``; a failure is a ``PassError`` blaming ``who``."""
    try:
        check_split(split)
    except onnx.checker.ValidationError as e:
        raise PassError(f"{who} produced an invalid graph{note}: {str(e).strip().splitlines()[0]}") from None


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


# What a pass's outputs are compared with, as its failure message names it ("output 'y' has shape [3] per sample,
# the graph before it gave [2]").
BEFORE = "the graph before it"


def _progress_noop(msg: str) -> None:
    pass


def run_pipeline(model: onnx.ModelProto | SplitModel, passes: Sequence[tuple[Pass, str, str]], *,
                 inputs: Sequence[dict[str, np.ndarray] | np.ndarray] | None, input_name: str | None = None,
                 tolerance=None, progress: Callable[[str], None] = _progress_noop,
                 real_data: bool = False) -> PipelineResult:
    """Run ``passes`` (each ``(pass, where, on_fail)``) on ``model``; verify each when ``inputs`` is given: a
    list of feeds (``graphopt.core.inputs``: ``resolve_inputs(model, specs).feeds(samples, seed)``), or bare arrays for
    the model's first input (or ``input_name``). ``real_data``: ``inputs`` are real data (a recipe's
    ``verify.data``), not seeded random arrays; measuring passes, which calibrate on them, warn otherwise."""
    from .inputs import feeds_of, model_inputs

    verify = inputs is not None
    if tolerance is None:  # the recipe's defaults
        from .tolerance import Tolerance

        tolerance = Tolerance()
    split = model if isinstance(model, SplitModel) else split_model(model)
    del model
    real_inputs = model_inputs(split)
    feeds = feeds_of(inputs, input_name, real_inputs) if verify else None
    ops_before = op_counts(split.skeleton)
    graph = graph_from_split(split)
    ref = prev = reference = None
    if verify:
        # Built and run beside the first pass (onnxruntime releases the GIL): a large export's session takes
        # seconds (ShiftViT's 7021 nodes: 2 s), and nothing needs the outputs before that pass is checked.
        progress(f"verify: reference outputs of the input model on {len(feeds)} batch(es), beside the first pass")
        reference = _Background(_outputs, split, feeds)
    # The graph as the last verified pass left it, as a SplitModel sharing the graph's weight arrays: what a pass
    # that fails is diffed against and what on_fail: skip goes back to, kept without copying the graph.
    last = split if verify else None
    del split
    records: list[PassRecord] = []
    configs: dict[str, Any] = {}
    done: list[str] = []
    traced = {name: name for name in tensor_producers(graph)}
    for k, (p, where, on_fail) in enumerate(passes, 1):
        label = f"[{k}/{len(passes)}] {p.name}"
        before = last if verify else split_graph(graph) if on_fail == "skip" else None
        names_before = tensor_producers(graph)
        fingerprint_before = _fingerprint(graph)
        progress(f"{label} ...")
        t0 = time.perf_counter()
        if hasattr(p, "calibration"):  # a measuring pass (mixlist mode: measured) gets the verification feeds
            p.calibration = (feeds, real_data)
        try:
            result = p(graph)
        except (UserError, VerificationFailed):  # bad input, broken numerics: skipping the pass cannot help
            raise
        except Exception as e:
            if reference is not None:
                reference.result()  # a model onnxruntime cannot run says so first: verification was impossible
            # A GraphoptError the pass raised itself is deliberate and already names the pass and what went wrong
            # (simplify's PassError quoting onnxsim): re-raised as it is. Only a raw exception, a bug, is wrapped.
            deliberate = isinstance(e, GraphoptError)
            if on_fail == "skip":
                graph = graph_from_split(before)
                records.append(PassRecord(p.name, where, False, {"error": f"{type(e).__name__}: {e}"},
                                          time.perf_counter() - t0, None, "skipped"))
                progress(f"{label}: raised {type(e).__name__}: {e}; skipped (on_fail: skip)")
                continue
            if deliberate:
                raise
            after = f" (after {', '.join(done)})" if done else ""
            raise PassError(f"pass {p.name} ({where}) raised {type(e).__name__}: {e}{after}") from e
        seconds = time.perf_counter() - t0
        verdict = mapped = None
        if not result.changed and _fingerprint(graph) != fingerprint_before:
            raise PassError(f"pass {p.name} ({where}) reported no change but modified the graph: its result would "
                            "skip verification (a pass returns PassResult(changed=True, ...) when it edits)")
        if result.changed:
            try:
                graph.cleanup().toposort()
            except Exception as e:  # noqa: BLE001 - a cycle, a dangling tensor: the pass broke the graph
                raise PassError(f"pass {p.name} ({where}) left a graph that cannot be sorted: "
                                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}") from None
            names_after = tensor_producers(graph)
            pass_map = pass_name_map(names_before, names_after, result.renamed, {t.name for t in graph.outputs})
            mapped = summarize(pass_map, names_before, names_after)
            if verify:
                if prev is None:
                    ref = prev = reference.result()
                after = split_graph(graph)  # the weights stay the graph's arrays
                _check(after, f"pass {p.name} ({where})")
                try:
                    got = Runner(after).run(feeds)
                except UserError as e:
                    raise PassError(f"pass {p.name} ({where}) produced a graph onnxruntime rejects: {e}") from None
                cmp = compare_outputs(prev, got, tolerance)
                verdict = cmp.summary()
                if not cmp.passed:
                    from ..commands.diff import describe_divergence, first_divergence

                    progress(f"{label}: FAILED verification; locating the first divergent tensor ...")
                    verdict["first_divergent"] = first_divergence(  # both share the graphs' weight arrays
                        before, after, feeds, pass_map, tolerance)
                    where_diverged = describe_divergence(verdict["first_divergent"])
                    if on_fail == "skip":
                        graph = graph_from_split(before)
                        records.append(PassRecord(p.name, where, True, result.stats, seconds, verdict, "skipped"))
                        progress(f"{label}: FAILED verification, {cmp.describe(BEFORE)}{where_diverged}; "
                                 "skipped (on_fail: skip)")
                        continue
                    raise VerificationFailed(f"pass {p.name} ({where}) broke numerics: {cmp.describe(BEFORE)}"
                                             f"{where_diverged}")
                prev, last = got, after
                del after
            traced = compose(pass_map, traced)
        del before
        try:
            merge_configs(configs, result.configs, f"pass {p.name} ({where})")
        except (ValueError, TypeError, AttributeError) as e:  # a pass returning configs of the wrong shape
            raise PassError(f"pass {p.name} ({where}) returned unusable compiler configs: {e}") from None
        status = "applied" if result.changed else "unchanged"
        records.append(PassRecord(p.name, where, result.changed, result.stats, seconds, verdict, status,
                                  result.configs, mapped))
        done.append(p.name)
        shown = "" if verdict is None else f", max_abs {verdict['max_abs']:.2e}, cosine {verdict['cosine']:.7f}"
        progress(f"{label}: {status} in {seconds:.2f}s{shown}")
    if not verify and any(r.changed for r in records):  # verification checked after each pass; else once here
        last = split_graph(graph)
        _check(last, f"passes {', '.join(done)}", " (verification, which checks after each pass, names the pass)")
    names = {n.name for n in graph.nodes}
    stale = [e for e in configs.get("keep_dtype", []) if "::" not in e and e not in names]
    if stale:
        raise UserError(f"keep_dtype names node {stale[0]!r}, which is not in the final graph (a later pass renamed "
                        "or removed it): move the pass asking for it after the passes that rewrite the graph")
    final = None
    if verify:
        if prev is None:  # no pass changed the graph
            ref = prev = reference.result()
        cmp = compare_outputs(ref, prev, tolerance)
        final = cmp.summary()
        if not cmp.passed:
            raise VerificationFailed(f"passes {', '.join(done)} together drift beyond tolerance from the input "
                                     f"model: {cmp.describe('the input model')}")
    return PipelineResult(graph, records, ops_before, op_counts(graph), configs, final, traced, last)
