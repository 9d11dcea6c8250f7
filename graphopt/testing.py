"""Helpers for numeric-diff tests in anyone's pytest suite (graphopt's own tests use them for every pass and
recipe). Each ``assert_*`` raises ``AssertionError`` with the metrics when numerics or structure are off.

    from graphopt.testing import assert_pass_verified, model_from_text
    def test_my_pass():
        model = model_from_text(MY_GRAPH)
        out, result = assert_pass_verified(model, MyPass(), tolerance=Tolerance(max_abs=1e-5))
        assert result.stats["rewritten"] == 1
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .core.inputs import InputSpec, merge_specs, resolve_inputs
from .core.model_inputs import model_inputs
from .core.ir import to_graph, to_model
from .core.pass_infra import Pass, PassResult
from .commands.recipe import load_recipe
from .core.tolerance import Tolerance
from .core.verify import Comparison, compare_outputs
from .core.runner import Runner

__all__ = ["model_from_text", "run_pass", "compare_models", "assert_pass_verified", "assert_pass_unchanged",
           "assert_recipe_verified", "STRICT_FP32", "InputSpec"]

# fp32 rewrites that reorder no arithmetic should match to rounding noise.
STRICT_FP32 = Tolerance(max_abs=1e-5, max_rel=None, cosine=0.999999, top1_agreement=1.0)


def model_from_text(text: str) -> onnx.ModelProto:
    """An ONNX model from ONNX textual syntax (``onnx.parser``), checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def run_pass(model: onnx.ModelProto, p: Pass) -> tuple[onnx.ModelProto, PassResult]:
    """Run one pass the way the pipeline does (cleanup and toposort after a change); the input is not modified."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = to_graph(copy)
    result = p(graph)
    if result.changed:
        graph.cleanup().toposort()
    return to_model(graph), result


def compare_models(a: onnx.ModelProto, b: onnx.ModelProto, *, input_name: str | None = None,
                   shape: Sequence[int] | None = None,
                   inputs: Sequence[np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
                   samples: int = 2, seed: int = 0, tolerance: Tolerance = STRICT_FP32,
                   specs: Sequence[InputSpec] = ()) -> Comparison:
    """Run both models in onnxruntime on the same (seeded) inputs and compare every output.

    ``inputs``: feeds (dicts name -> array, every input), or arrays for one input (``input_name``, default the
    first). Without them, seeded feeds of every input of ``a`` (``graphopt.core.inputs``; each symbolic dim 2 unless
    ``shape`` (of ``input_name``, default the first input) or ``specs`` say otherwise)."""
    if inputs is None:
        given = list(specs)
        if shape is not None:
            name = input_name or next((m.name for m in model_inputs(a)), None)
            given.append(InputSpec(name, tuple(shape)))
        inputs = resolve_inputs(a, merge_specs(given), dim_default=2).feeds(samples, seed)
    return compare_outputs(Runner(a, input_name).run(inputs), Runner(b, input_name).run(inputs), tolerance)


def assert_pass_verified(model: onnx.ModelProto, p: Pass, *, tolerance: Tolerance = STRICT_FP32,
                         input_name: str | None = None, shape: Sequence[int] | None = None,
                         inputs: Sequence[np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
                         expect_changed: bool = True,
                         specs: Sequence[InputSpec] = ()) -> tuple[onnx.ModelProto, PassResult]:
    """The checks every pass owes: it changes the model (or not, as expected), the result passes
    ``onnx.checker`` (full check) and loads in onnxruntime, outputs match within ``tolerance``, and a second run
    changes nothing (idempotence). Models with any inputs: ``inputs``, ``shape`` and ``specs`` as
    ``compare_models`` takes them."""
    out, result = run_pass(model, p)
    assert result.changed == expect_changed, (f"pass {p.name}: changed={result.changed}, expected "
                                              f"{expect_changed}; stats {result.stats}")
    onnx.checker.check_model(out, full_check=True)
    cmp = compare_models(model, out, input_name=input_name, shape=shape, inputs=inputs, tolerance=tolerance,
                         specs=specs)
    assert cmp.passed, f"pass {p.name} changed numerics: {cmp.describe()}"
    _, second = run_pass(out, p)
    assert not second.changed, f"pass {p.name} is not idempotent: second run changed the graph ({second.stats})"
    return out, result


def assert_pass_unchanged(model: onnx.ModelProto, p: Pass) -> PassResult:
    """The negative case: the pass reports no change and the graph is node-for-node what it was."""
    out, result = run_pass(model, p)
    assert not result.changed, f"pass {p.name} changed a graph it should leave alone: {result.stats}"
    before = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    after = [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node]
    assert before == after, f"pass {p.name} reported no change but the nodes differ"
    return result


def assert_recipe_verified(recipe: str | Path, outdir: str | Path, **kwargs: Any) -> dict:
    """Apply a recipe with verification on; every changed pass verified, the output model within tolerance of
    the input model. Returns the report."""
    from .commands.apply import apply_recipe

    report = apply_recipe(load_recipe(recipe), outdir, verify=True, progress=lambda m: None, **kwargs)
    for rec in report["passes"]:
        assert rec["status"] != "skipped", f"pass {rec['name']} was skipped: {rec['stats']}"
        if rec["changed"]:
            assert rec["verify"] and rec["verify"]["passed"], f"pass {rec['name']} not verified: {rec['verify']}"
    assert report["final_verify"]["passed"], f"output model drifts: {report['final_verify']}"
    return report
