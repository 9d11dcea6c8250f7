"""Every recipe in recipes/ applied end to end on its whole model, each pass verified (graphopt.testing),
plus what each seed's hand-made steps must produce."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from graphopt.testing import assert_recipe_verified

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def _neighbours(model: onnx.ModelProto):
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def check_lvvit(out: Path, report: dict) -> None:
    model = onnx.load(out / "model.onnx")
    producer, consumers = _neighbours(model)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 16
    for s in softmaxes:
        assert [a.i for a in s.attribute if a.name == "axis"] == [1]
        assert producer[s.input[0]].op_type == "Transpose"
        assert [c.op_type for c in consumers[s.output[0]]] == ["Transpose"]
    st = next(p for p in report["passes"] if p["name"] == "softmax_transpose")
    assert st["stats"]["rewritten"] == 16
    assert model.graph.input[0].name == "image" and model.graph.output[0].name == "features"
    assert 'input_shape=image:16,3,224,224' in (out / "atc.sh").read_text()


CHECKS = {"lvvit": check_lvvit}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_applies_with_every_pass_verified(recipe, tmp_path):
    out = tmp_path / recipe.stem
    report = assert_recipe_verified(recipe, out)
    on_disk = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in on_disk["passes"]] == [p["name"] for p in report["passes"]]
    assert all(p["verify"]["passed"] for p in on_disk["passes"] if p["changed"])
    onnx.checker.check_model(onnx.load(out / "model.onnx"), full_check=False)
    CHECKS.get(recipe.stem, lambda *_: None)(out, report)


def test_every_recipe_has_its_seed_check():
    assert {r.stem for r in RECIPES} <= set(CHECKS), "add a check of the seed's hand-made step"
