"""mixlist: ATC's --modify_mixlist lists (the ViT seed's ops_info.json) as a pass that never edits the graph."""
from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

from graphopt.ascend.atc import atc_commands, config_files, ops_info_json
from graphopt.core.errors import UserError
from graphopt.passes.mixlist import Mixlist
from graphopt.core.pipeline import run_pipeline
from graphopt.core.tolerance import Tolerance
from graphopt.testing import assert_pass_unchanged, assert_pass_verified
from graphopt.core.feeds import make_inputs
from graphs import torch_onnx

VIT_SEED_OPS_INFO = {"black-list": {"to-add": ["LayerNorm"]}}
UNCHANGED = Tolerance(max_abs=0.0, cosine=None, top1_agreement=None)


def _layernorm_model(opset: int) -> onnx.ModelProto:
    """Linear -> LayerNorm -> Softmax: opset 17+ exports one LayerNormalization node, older opsets decompose it
    (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Softmax(-1)).eval()
    return onnx.load_from_string(torch_onnx(model, (torch.randn(1, 8),), opset=opset))


@pytest.fixture(scope="module")
def vit_like_opset11() -> onnx.ModelProto:
    return _layernorm_model(11)  # the ViT seed exports opset 11


@pytest.fixture(scope="module")
def opset17() -> onnx.ModelProto:
    return _layernorm_model(17)


def test_decomposed_layernorm_export(vit_like_opset11, opset17):
    ops11 = {n.op_type for n in vit_like_opset11.graph.node}
    assert "LayerNormalization" not in ops11 and {"ReduceMean", "Sqrt", "Div"} <= ops11
    assert "LayerNormalization" in {n.op_type for n in opset17.graph.node}


def test_vit_seed_ops_info_with_the_ascend_name(vit_like_opset11):
    result = assert_pass_unchanged(vit_like_opset11, Mixlist(keep_fp32=["LayerNorm"]))
    assert result.configs == {"mixlist": {"black-list": {"to-add": ["LayerNorm"]}},
                              "precision_mode": "allow_mix_precision"}
    assert json.loads(ops_info_json(result.configs["mixlist"])) == VIT_SEED_OPS_INFO
    assert result.stats["absent"] == [] and result.stats["ascend_names"] == ["LayerNorm"]


def test_vit_seed_ops_info_with_the_onnx_name(opset17):
    out, result = assert_pass_verified(opset17, Mixlist(keep_fp32=["LayerNormalization"]), expect_changed=False,
                                       tolerance=UNCHANGED, shape=[3, 8])
    assert result.configs["mixlist"] == {"black-list": {"to-add": ["LayerNormalization"]}}
    assert json.loads(ops_info_json(result.configs["mixlist"])) == VIT_SEED_OPS_INFO
    assert json.loads(config_files(result.configs)["ops_info.json"]) == VIT_SEED_OPS_INFO
    # both names at once: one entry after mapping to Ascend's
    result = assert_pass_unchanged(opset17, Mixlist(keep_fp32=["LayerNormalization", "LayerNorm"]))
    assert json.loads(ops_info_json(result.configs["mixlist"])) == VIT_SEED_OPS_INFO


def test_absent_onnx_name_is_dropped_and_reported(vit_like_opset11):
    result = assert_pass_unchanged(vit_like_opset11, Mixlist(keep_fp32=["LayerNormalization"]))
    assert result.stats["absent"] == ["LayerNormalization"]
    assert result.stats["skipped"] == {
        "LayerNormalization: no such node in the graph; if ATC forms it by fusion, name the Ascend op LayerNorm": 1}
    assert result.configs == {}  # nothing left to list: no ops_info.json, no precision mode forced
    # with other names left, only the absent one is dropped
    p = Mixlist(keep_fp32=["LayerNormalization", "Softmax", "LayerNorm"])
    result = assert_pass_unchanged(vit_like_opset11, p)
    assert result.configs["mixlist"] == {"black-list": {"to-add": ["Softmax", "LayerNorm"]}}
    assert json.loads(ops_info_json(result.configs["mixlist"])) == {"black-list": {"to-add": ["SoftmaxV2",
                                                                                             "LayerNorm"]}}
    # an ONNX name that is also Ascend's (Gelu) gets the other hint
    result = assert_pass_unchanged(vit_like_opset11, Mixlist(allow_fp16=["Gelu"]))
    assert result.stats["skipped"] == {"Gelu: no such node in the graph; if ATC forms it by fusion, set "
                                       "require_present: false": 1}


def test_require_present_false_passes_names_through(vit_like_opset11):
    result = assert_pass_unchanged(vit_like_opset11, Mixlist(keep_fp32=["LayerNormalization"], require_present=False))
    assert result.stats["absent"] == []
    assert json.loads(ops_info_json(result.configs["mixlist"])) == VIT_SEED_OPS_INFO


def test_all_four_lists(opset17):
    p = Mixlist(keep_fp32=["LayerNormalization", "ReduceMean"], allow_fp16=["MatMul", "Gemm"],
                remove_from_black=["Softmax"], remove_from_white=["Conv"])
    result = assert_pass_unchanged(opset17, p)
    info = json.loads(ops_info_json(result.configs["mixlist"]))
    # to-remove lists are not presence-checked (taking an op off ATC's built-in lists is harmless)
    assert info == {"black-list": {"to-add": ["LayerNorm"], "to-remove": ["SoftmaxV2"]},
                    "white-list": {"to-add": ["MatMulV2"], "to-remove": ["Conv2D"]}}
    assert result.stats["absent"] == ["ReduceMean", "MatMul"]


def test_atc_command_carries_the_flags():
    configs = {"mixlist": {"black-list": {"to-add": ["LayerNorm"]}}, "precision_mode": "allow_mix_precision"}
    (cmd,) = atc_commands(model="model.onnx", output_stem="vit", inputs=[("input", (None, 3, 224, 224))],
                          batch_sizes=[8], soc_version="Ascend310P3", configs=configs)
    line = " ".join(cmd)
    assert "--precision_mode_v2=mixed_float16 --modify_mixlist=ops_info.json" in line  # CANN 8.0's spelling
    assert line.startswith("atc --framework=5 --model=model.onnx --output=vit_bs8")
    with pytest.raises(UserError, match="precision_mode"):
        atc_commands(model="model.onnx", output_stem="vit", inputs=[("input", (None, 3, 224, 224))],
                     batch_sizes=[8], soc_version="Ascend310P3", configs=configs, precision_mode="force_fp16")


def test_pipeline_merges_configs_of_the_unchanged_pass(vit_like_opset11):
    res = run_pipeline(vit_like_opset11, [(Mixlist(keep_fp32=["LayerNorm"]), "passes[0]", "stop")],
                       inputs=make_inputs([2, 8], 1, 0), input_name="x", tolerance=UNCHANGED)
    assert res.records[0].status == "unchanged" and not res.records[0].changed
    assert res.configs == {"mixlist": VIT_SEED_OPS_INFO, "precision_mode": "allow_mix_precision"}
    assert json.loads(config_files(res.configs)["ops_info.json"]) == VIT_SEED_OPS_INFO
    (cmd,) = atc_commands(model="model.onnx", output_stem="vit", inputs=[("input", (None, 3, 224, 224))],
                          batch_sizes=[1], soc_version="Ascend310P3", configs=res.configs)
    assert cmd[-2:] == ["--precision_mode_v2=mixed_float16", "--modify_mixlist=ops_info.json"]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "at least one"),
    ({"keep_fp32": ["LayerNorm"], "mode": "measured"}, "only mode"),
    ({"keep_fp32": ["LayerNorm"], "allow_fp16": ["LayerNormalization"]}, "LayerNorm is in both keep_fp32 and "
                                                                          "allow_fp16"),
    ({"keep_fp32": ["Softmax"], "remove_from_black": ["SoftmaxV2"]}, "in both keep_fp32 and remove_from_black"),
    ({"allow_fp16": ["Gemm"], "remove_from_white": ["MatMulV2"]}, "in both allow_fp16 and remove_from_white"),
    ({"keep_fp32": [""]}, "non-empty"),
    ({"keep_fp32": ["Layer Norm "]}, "without spaces"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mixlist(**kwargs)
