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


def check_vit_b32(out: Path, report: dict) -> None:
    # The ViT seed's hand-written ops_info.json, to the byte as JSON.
    assert json.loads((out / "ops_info.json").read_text()) == {"black-list": {"to-add": ["LayerNorm"]}}
    atc = (out / "atc.sh").read_text()
    assert "--precision_mode_v2=mixed_float16 --modify_mixlist=ops_info.json" in atc  # CANN 8.0, the default
    assert "--input_shape=input:64,3,224,224" in atc


def check_twins(out: Path, report: dict) -> None:
    assert (out / "op_precision.ini").read_text().splitlines() == ["[ByOpType]", "Gelu=high_performance"]
    assert "--op_precision_mode=op_precision.ini" in (out / "atc.sh").read_text()
    gelu = next(p for p in report["passes"] if p["name"] == "gelu_precision")
    assert sum(gelu["stats"]["found"].values()) > 0
    _assert_shape_arithmetic_gone(out, report)


def _assert_shape_arithmetic_gone(out: Path, report: dict) -> None:
    """fold_constants left no Shape op, every Reshape target constant, and the batch dynamic."""
    model = onnx.load(out / "model.onnx")
    assert report["ops_before"]["Shape"] > 0 and "Shape" not in report["ops_after"]
    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert reshapes and all(n.input[1] in consts for n in reshapes)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def check_shiftvit(out: Path, report: dict) -> None:
    model = onnx.load(out / "model.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert "ScatterND" not in ops
    assert report["ops_before"]["ScatterND"] == 60
    producer, consumers = _neighbours(model)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    path = [gemm]
    for _ in range(4):
        path.insert(0, producer[path[0].input[0]])
    assert [n.op_type for n in path] == ["Mul", "Add", "GlobalAveragePool", "Flatten", "Gemm"]
    assert producer[path[0].input[0]].op_type == "Pow"
    _assert_shape_arithmetic_gone(out, report)


def check_bit(out: Path, report: dict) -> None:
    model = onnx.load(out / "model.onnx")
    assert model.graph.input[0].name == "image"
    dims = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims[1] == 10
    assert "--input_shape=image:16,3,128,128" in (out / "atc.sh").read_text()
    # What the seed's onnxsim run did: every StdConv's weight standardization folded, nothing computed on shapes;
    # and no more nodes than onnxsim 0.4 leaves (272).
    assert not {"ReduceMean", "Sqrt", "Sub", "Div", "Shape"} & set(report["ops_after"]), report["ops_after"]
    assert sum(report["ops_after"].values()) <= 272


def check_efficientnet_lite0(out: Path, report: dict) -> None:
    model = onnx.load(out / "model.onnx")
    assert model.graph.input[0].name == "input"
    assert report["final_verify"]["top1_agreement"] == 1.0
    # What onnxsim does to it: the explicit Pads fused into their Convs, the flatten's shape arithmetic gone; no
    # more nodes than onnxsim 0.4 leaves (98).
    assert not {"Pad", "Shape"} & set(report["ops_after"]) and sum(report["ops_after"].values()) <= 98


CHECKS = {"lvvit": check_lvvit, "vit_b32": check_vit_b32, "twins_pcpvt_s": check_twins, "shiftvit": check_shiftvit,
          "bit": check_bit, "efficientnet_lite0": check_efficientnet_lite0}


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
