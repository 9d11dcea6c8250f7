"""graphopt optimize on models no rewrite was written for: a timm ConvNeXt and Swin export and the project's
ShiftViT in its naive export (ScatterND shift chains), shrunk (tests/corpus.py), with and without the speed gate.
What is asserted is what must hold whatever the timings: every kept rewrite verified, the output equal to the
input model within the tolerance, fewer nodes, and apply of the written recipe reproducing the model."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from corpus import ZOO, export_zoo_model
from graphopt.commands.optimize import optimize_model
from graphopt.core.forms import export_graph, graph_from_split
from graphopt.core.inputs import resolve_inputs
from graphopt.core.onnx_files import load_split
from graphopt.core.pass_infra import library_passes
from graphopt.core.runner import Runner
from graphopt.core.tolerance import Tolerance
from graphopt.core.verify import compare_outputs

MODELS = {spec.name: spec for spec in ZOO if spec.name in ("convnext_atto", "swin_mini", "shiftvit_mini")}
TOLERANCE = Tolerance(max_abs=1e-4, max_rel=None, cosine=0.99999, top1_agreement=None)


@pytest.mark.parametrize("gate", [None, "speed"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_optimize_keeps_only_verified_rewrites_and_the_model_stays_equal(name, gate):
    path = export_zoo_model(MODELS[name])
    split = load_split(path)
    feeds = resolve_inputs(split, []).feeds(2, 0)
    kept, attempts, result = optimize_model(split, list(library_passes().values()), feeds, TOLERANCE, gate=gate,
                                            race_rounds=7, progress=lambda msg: None)
    assert attempts, f"no rewrite of the library changed {name}"
    for a in attempts:
        assert a.decision in ({"kept", "broke numerics", "raised"} | ({"not faster"} if gate else set())), a
        if a.decision in ("kept", "not faster"):
            assert a.max_abs is not None and a.max_abs <= 1e-4 and a.cosine >= 0.99999
        assert (a.latency_ms is not None) == (gate == "speed" and a.decision in ("kept", "not faster"))
    assert kept == [a.rewrite for a in attempts if a.decision == "kept"]
    cmp = compare_outputs(Runner(split).run(feeds), Runner(result).run(feeds), TOLERANCE)
    assert cmp.passed, cmp.describe("the input model")
    if gate is None:  # fold_constants alone folds the exports' shape arithmetic
        assert len(result.skeleton.graph.node) < len(split.skeleton.graph.node)
    onnx.checker.check_model(export_graph(graph_from_split(result)), full_check=True)


def test_optimize_command_on_convnext_reproduces_with_apply(tmp_path, capsys):
    from graphs import cli

    path = export_zoo_model(MODELS["convnext_atto"])
    code, out, errors = cli(capsys, "optimize", path, "-o", tmp_path / "opt", "--input", "input:2,3,64,64")
    assert code == 0, errors
    search = json.loads((tmp_path / "opt" / "optimize.json").read_text())
    assert search["kept"] and "| round | rewrite | hits |" in out
    code, _, errors = cli(capsys, "apply", tmp_path / "opt" / "recipe.yaml", "-o", tmp_path / "again")
    assert code == 0, errors
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (tmp_path / "opt" / "model.onnx").read_bytes()
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == search["kept"]
    assert np.isfinite(report["final_verify"]["max_abs"])
