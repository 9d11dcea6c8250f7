"""The ATC hand-off: config files in exactly the formats ATC reads (per CANN version), the jobs as records, the
commands, dynamic shapes and their ais_bench arguments."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from graphopt.ascend.ais_bench import ais_bench_argv
from graphopt.ascend.atc import (AtcInput, atc_commands, atc_jobs, atc_script, config_files, jobs_for_batch_sizes,
                                 jobs_json, keep_dtype_cfg, kept_op_types, op_precision_ini, ops_info_json,
                                 read_atc_jobs)
from graphopt.ascend.dynamic import DynamicSpec, ModelDims
from graphopt.core.errors import UserError


def test_ops_info_matches_the_vit_seed():
    assert json.loads(ops_info_json({"black-list": {"to-add": ["LayerNormalization"]}})) == {
        "black-list": {"to-add": ["LayerNorm"]}}


def test_ops_info_maps_and_deduplicates_names():
    text = ops_info_json({"black-list": {"to-add": ["Softmax", "SoftmaxV2"], "to-remove": []},
                          "white-list": {"to-add": ["MatMul", "Gemm"], "to-remove": ["Conv"]}})
    # MatMul: BatchMatMulV2 at every rank (ops-nn matmul_onnx_plugin.cpp); Gemm: MatMulV2 (gemm_onnx_plugin.cpp)
    assert json.loads(text) == {"black-list": {"to-add": ["SoftmaxV2"]},
                                "white-list": {"to-add": ["BatchMatMulV2", "MatMulV2"], "to-remove": ["Conv2D"]}}


def test_ops_info_refuses_a_gray_list():
    with pytest.raises(UserError, match="'gray-list'"):
        ops_info_json({"gray-list": {"to-add": ["Add"]}})


def test_op_precision_ini_matches_the_twins_seed_on_old_cann():
    assert op_precision_ini({"Gelu": "high_performance"}, cann="5.1") == "Gelu=high_performance\n"
    assert op_precision_ini({"Softmax": "high_precision"}, cann="5.1") == "SoftmaxV2=high_precision\n"


def test_op_precision_ini_sections_from_cann_6():
    assert op_precision_ini({"Gelu": "high_performance"}) == "[ByOpType]\nGelu=high_performance\n"
    assert op_precision_ini({"Softmax": "high_precision"}, {"/blocks.0/mlp/act/Gelu": "high_performance"},
                            cann="6.0") == ("[ByOpType]\nSoftmaxV2=high_precision\n\n"
                                            "[ByNodeName]\n/blocks.0/mlp/act/Gelu=high_performance\n")
    assert op_precision_ini({}, {"gelu_3": "high_precision"}) == "[ByNodeName]\ngelu_3=high_precision\n"
    with pytest.raises(UserError, match=r"op_precision: node 'gelu_3': CANN 5\.1 reads op_precision.ini by op type "
                                        r"only \(\[ByNodeName\] from 6\.0\)"):
        op_precision_ini({"Gelu": "high_performance"}, {"gelu_3": "high_precision"}, cann="5.1")
    configs = {"op_precision": {"Gelu": "high_precision"}, "op_precision_nodes": {"gelu_3": "high_performance"}}
    assert config_files(configs, "8.0") == {
        "op_precision.ini": "[ByOpType]\nGelu=high_precision\n\n[ByNodeName]\ngelu_3=high_performance\n"}


def test_unknown_op_types_in_configs_are_errors_with_the_closest_names():
    with pytest.raises(UserError, match=r"mixlist black-list\.to-add: 'LayerNrom' is neither an ONNX op type nor an "
                                        r"Ascend op type \(did you mean: LayerNorm"):
        ops_info_json({"black-list": {"to-add": ["LayerNrom"]}})
    with pytest.raises(UserError, match=r"op_precision: 'Gelo' is neither .* \(did you mean: .*Gelu"):
        op_precision_ini({"Gelo": "high_performance"})
    with pytest.raises(UserError, match=r"keep_dtype: 'SoftmaxV3' is neither"):
        keep_dtype_cfg(["OpType::SoftmaxV3"])
    # ONNX names become Ascend's in OpType:: entries; node names are written as they are
    assert keep_dtype_cfg(["OpType::Clip", "any/node"]) == "OpType::ClipByValue\nany/node\n"


def test_keep_dtype_cfg_one_entry_per_line():
    assert keep_dtype_cfg(["/blocks.0/norm1/ReduceMean", "OpType::LayerNorm"]) == (
        "/blocks.0/norm1/ReduceMean\nOpType::LayerNorm\n")


def test_commands_carry_shapes_and_precision_flags():
    configs = {"mixlist": {"black-list": {"to-add": ["LayerNorm"]}}, "op_precision": {"Gelu": "high_performance"}}
    cmds = atc_commands(model="model.onnx", output_stem="vit", inputs=[("input", (None, 3, 224, 224))],
                        batch_sizes=(1, 8), soc_version="Ascend310P3", configs=configs)
    assert cmds[1] == ["atc", "--framework=5", "--model=model.onnx", "--output=vit_bs8", "--input_format=NCHW",
                       "--input_shape=input:8,3,224,224", "--soc_version=Ascend310P3", "--log=error",
                       "--precision_mode_v2=mixed_float16", "--modify_mixlist=ops_info.json",
                       "--op_precision_mode=op_precision.ini"]
    assert sorted(config_files(configs)) == ["op_precision.ini", "ops_info.json"]


def test_mixlist_with_an_incompatible_precision_mode_is_refused():
    with pytest.raises(UserError, match="only honours --modify_mixlist with allow_mix_precision"):
        atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                     soc_version="Ascend310", precision_mode="force_fp16",
                     configs={"mixlist": {"black-list": {"to-add": ["LayerNorm"]}}})


def test_script_is_valid_shell_with_one_command_per_batch():
    jobs = atc_jobs(model="model.onnx", output_stem="m", inputs=[("image", (None, 3, 224, 224))],
                    batch_sizes=(1, 16), soc_version="Ascend310", extra_args=["--op_select_implmode=high precision"])
    script = atc_script(jobs)
    assert script.startswith("#!/usr/bin/env bash\n")
    lines = [l for l in script.splitlines() if l.startswith("atc ")]
    assert [shlex.split(l) for l in lines] == [j.argv() for j in jobs]
    assert lines[0].endswith(" '--op_select_implmode=high precision'")


# Two inputs: an image whose batch is symbolic, and a table whose first dim is fixed by the model.
TWO_INPUTS = [("image", (None, 3, 8, 8)), ("table", (5, 4))]


def test_jobs_round_trip_through_their_json(tmp_path):
    jobs = atc_jobs(model="model.onnx", output_stem="two", inputs=TWO_INPUTS, batch_sizes=(1, 4),
                    soc_version="Ascend310P3", configs=ALL_CONFIGS, extra_args=["--log=debug"])
    (tmp_path / "atc_jobs.json").write_text(jobs_json(jobs))
    assert read_atc_jobs(tmp_path) == jobs
    assert jobs[1].inputs == (AtcInput("image", (4, 3, 8, 8), True), AtcInput("table", (5, 4), False))
    assert jobs[1].argv()[5] == "--input_shape=image:4,3,8,8;table:5,4"
    assert jobs[1].input_format == "ND" and jobs[1].output == "two_bs4"


def test_a_batch_size_the_run_lacks_comes_from_the_first_jobs_shapes():
    recorded = atc_jobs(model="model.onnx", output_stem="two", inputs=TWO_INPUTS, batch_sizes=(1, 4),
                        soc_version="Ascend310P3", configs=ALL_CONFIGS)
    got = jobs_for_batch_sizes(recorded, (4, 16))
    assert got[0] is recorded[1]
    (want,) = atc_jobs(model="model.onnx", output_stem="two", inputs=TWO_INPUTS, batch_sizes=(16,),
                       soc_version="Ascend310P3", configs=ALL_CONFIGS)
    assert got[1] == want and got[1].argv()[3:6] == ["--output=two_bs16", "--input_format=ND",
                                                     "--input_shape=image:16,3,8,8;table:5,4"]


@pytest.mark.parametrize("content, message", [
    (None, r"no atc_jobs.json beside atc.sh \(an older graphopt wrote this run\): re-run graphopt apply"),
    ('{"format": "graphopt-atc-jobs-0", "jobs": []}', "not graphopt's ATC jobs .*re-run graphopt apply"),
    ('{"format": "graphopt-atc-jobs-1", "jobs": [{"model": "m.onnx"}]}', "not graphopt's ATC jobs"),
])
def test_a_run_without_readable_jobs_is_one_user_error(tmp_path, content, message):
    (tmp_path / "atc.sh").write_text("#!/usr/bin/env bash\natc --framework=5\n")
    if content is not None:
        (tmp_path / "atc_jobs.json").write_text(content)
    with pytest.raises(UserError, match=message):
        read_atc_jobs(tmp_path)


# The flags as ATC's options reference spells them (CANN's atc CLI options; see the README's "The Ascend hand-off"):
# a misspelt flag is an ATC error on the NPU machine, long after graphopt said the run was fine.
ALL_CONFIGS = {"precision_mode": "allow_mix_precision",
               "mixlist": {"black-list": {"to-add": ["LayerNormalization"]}},
               "op_precision": {"Gelu": "high_performance"},
               "keep_dtype": ["/blocks.0/attn/MatMul", "OpType::Conv2D"]}


def test_every_flag_name_and_value_with_all_four_configs():
    cmds = atc_commands(model="model.onnx", output_stem="vit", inputs=[("image", (None, 3, 224, 224))],
                        batch_sizes=(1, 16), soc_version="Ascend310P3", log="info",
                        precision_mode="allow_mix_precision", configs=ALL_CONFIGS)
    expected = ["atc", "--framework=5", "--model=model.onnx", "--output=vit_bs{bs}", "--input_format=NCHW",
                "--input_shape=image:{bs},3,224,224", "--soc_version=Ascend310P3", "--log=info",
                "--precision_mode_v2=mixed_float16", "--modify_mixlist=ops_info.json",
                "--op_precision_mode=op_precision.ini", "--keep_dtype=keep_dtype.cfg"]
    assert cmds == [[a.format(bs=bs) for a in expected] for bs in (1, 16)]
    # each file a flag names is written, in the format that flag reads
    files = config_files(ALL_CONFIGS)
    flagged = {a.split("=", 1)[1] for a in cmds[0] if a.startswith(("--modify_mixlist=", "--op_precision_mode=",
                                                                    "--keep_dtype="))}
    assert flagged == set(files)
    assert json.loads(files["ops_info.json"]) == {"black-list": {"to-add": ["LayerNorm"]}}
    assert files["op_precision.ini"] == "[ByOpType]\nGelu=high_performance\n"
    assert files["keep_dtype.cfg"] == "/blocks.0/attn/MatMul\nOpType::Conv2D\n"


def test_keep_dtype_alone_with_the_recipes_precision_mode():
    cmds = atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(4,),
                        soc_version="Ascend310", precision_mode="force_fp16",
                        configs={"keep_dtype": ["stem/Conv"]})
    assert cmds == [["atc", "--framework=5", "--model=m.onnx", "--output=m_bs4", "--input_format=NCHW",
                     "--input_shape=x:4,3,8,8", "--soc_version=Ascend310", "--log=error",
                     "--precision_mode_v2=fp16", "--keep_dtype=keep_dtype.cfg"]]


def test_no_precision_flags_without_configs():
    cmds = atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                        soc_version="Ascend310")
    assert [a for a in cmds[0] if a.split("=")[0] in ("--precision_mode", "--modify_mixlist",
                                                      "--op_precision_mode", "--keep_dtype")] == []


# -- CANN versions: which precision flag and which op_precision.ini format ATC reads -----------------------------

VIT_CONFIGS = {"mixlist": {"black-list": {"to-add": ["LayerNorm"]}}, "precision_mode": "allow_mix_precision",
               "op_precision": {"Gelu": "high_performance"}}


@pytest.mark.parametrize("cann, precision, ini", [
    ("6.3.RC2", "--precision_mode=allow_mix_precision", "[ByOpType]\nGelu=high_performance\n"),
    ("5.1", "--precision_mode=allow_mix_precision", "Gelu=high_performance\n"),
    ("7.0.0", "--precision_mode_v2=mixed_float16", "[ByOpType]\nGelu=high_performance\n"),
    ("8.0", "--precision_mode_v2=mixed_float16", "[ByOpType]\nGelu=high_performance\n"),
])
def test_the_cann_version_decides_the_formats(cann, precision, ini):
    (job,) = atc_jobs(model="model.onnx", output_stem="vit", inputs=[("input", (None, 3, 224, 224))],
                      batch_sizes=(8,), soc_version="Ascend310P3", configs=VIT_CONFIGS, cann=cann)
    assert job.shell() == ("atc --framework=5 --model=model.onnx --output=vit_bs8 --input_format=NCHW "
                           "--input_shape=input:8,3,224,224 --soc_version=Ascend310P3 --log=error "
                           f"{precision} --modify_mixlist=ops_info.json --op_precision_mode=op_precision.ini")
    assert config_files(VIT_CONFIGS, cann)["op_precision.ini"] == ini


@pytest.mark.parametrize("mode, cann, flag", [
    ("force_fp16", "8.0", "--precision_mode_v2=fp16"),
    ("must_keep_origin_dtype", "8.0", "--precision_mode_v2=origin"),
    ("allow_mix_precision_bf16", "8.0", "--precision_mode_v2=mixed_bfloat16"),
    ("allow_fp32_to_fp16", "8.0", "--precision_mode=allow_fp32_to_fp16"),  # no v2 value means the same
    ("force_fp32", "8.0", "--precision_mode=force_fp32"),
    ("force_fp16", "6.3", "--precision_mode=force_fp16"),
])
def test_recipe_precision_modes_map_to_v2_where_one_means_the_same(mode, cann, flag):
    (cmd,) = atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                          soc_version="Ascend310P3", precision_mode=mode, cann=cann)
    assert [a for a in cmd if a.startswith("--precision_mode")] == [flag]


def test_precision_mode_v2_given_directly():
    (cmd,) = atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                          soc_version="Ascend910B1", precision_mode_v2="mixed_bfloat16", configs=VIT_CONFIGS)
    assert "--precision_mode_v2=mixed_bfloat16" in cmd and "--modify_mixlist=ops_info.json" in cmd
    with pytest.raises(UserError, match=r"atc.precision_mode_v2 is 'fp16' but a pass needs "
                                        r"--precision_mode=allow_mix_precision \(--precision_mode_v2=mixed_float16\)"):
        atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                     soc_version="Ascend310P3", precision_mode_v2="fp16", configs=VIT_CONFIGS)
    with pytest.raises(UserError, match="only honours --modify_mixlist with mixed_float16 or mixed_bfloat16"):
        atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                     soc_version="Ascend310P3", precision_mode_v2="fp16", configs={"mixlist": VIT_CONFIGS["mixlist"]})
    with pytest.raises(UserError, match=r"CANN 6\.3 has no --precision_mode_v2 \(from 7\.0\)"):
        atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                     soc_version="Ascend310P3", precision_mode_v2="fp16", cann="6.3")
    with pytest.raises(UserError, match=r"mixed_hif8 needs CANN 9\.0 or later"):
        atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                     soc_version="Ascend310P3", precision_mode_v2="mixed_hif8")


# -- dynamic shapes: the exact atc line of each mode and the ais_bench arguments of each profile -------------------

IMAGE = [ModelDims("image", (1, 3, 224, 224), ("N", 3, "H", "W"))]


def _dynamic(mode, values, model_dims=IMAGE, batch_sizes=(1,), cann="8.0", soc_version="Ascend310P3"):
    inputs = [(m.name, tuple(None if k == 0 and not isinstance(d, int) else s for k, (s, d) in
                             enumerate(zip(m.shape, m.dims)))) for m in model_dims]
    return atc_jobs(model="model.onnx", output_stem="m", inputs=inputs, batch_sizes=batch_sizes,
                    soc_version=soc_version, cann=cann, dynamic=DynamicSpec(mode, values), model_dims=model_dims)


def test_gear_counts_follow_the_soc():
    gears = tuple(range(1, 102))  # 101 batch sizes
    with pytest.raises(UserError, match=r"101 gears; ATC takes at most 100 for Ascend310P3 \(256 on Ascend 950"):
        _dynamic("batch_sizes", gears)
    (job,) = _dynamic("batch_sizes", gears, soc_version="Ascend950PR_9579")
    assert job.dynamic.value == ",".join(map(str, gears)) and len(job.dynamic.profiles) == 101



def _ais(job, profile):
    return ais_bench_argv(["ais_bench"], job.expected_om(Path(".")), [Path("data")], Path("out"), profile.label,
                          "BIN", profile.batch_size, 3, profile.ais_args)


def test_dynamic_batch_sizes():
    (job,) = _dynamic("batch_sizes", (1, 2, 4, 8))
    assert job.shell() == ("atc --framework=5 --model=model.onnx --output=m_dynbatch --input_format=NCHW "
                           "--input_shape=image:-1,3,224,224 --dynamic_batch_size=1,2,4,8 --soc_version=Ascend310P3 "
                           "--log=error")
    assert [p.label for p in job.dynamic.profiles] == ["bs1", "bs2", "bs4", "bs8"]
    assert _ais(job, job.dynamic.profiles[2]) == [
        "ais_bench", "--model", "m_dynbatch.om", "--input", "data", "--output", "out", "--output_dirname", "bs4",
        "--outfmt", "BIN", "--batchsize", "4", "--warmup_count", "3", "--dymBatch", "4"]


def test_dynamic_image_sizes_one_job_per_batch_size():
    jobs = _dynamic("image_sizes", ((224, 224), (448, 448)), batch_sizes=(1, 8))
    assert [j.shell() for j in jobs] == [
        f"atc --framework=5 --model=model.onnx --output=m_bs{bs}_dynhw --input_format=NCHW "
        f"--input_shape=image:{bs},3,-1,-1 '--dynamic_image_size=224,224;448,448' --soc_version=Ascend310P3 "
        "--log=error" for bs in (1, 8)]
    profile = jobs[1].dynamic.profiles[1]
    assert (profile.label, profile.batch_size, profile.shapes) == ("bs8_448x448", 8, (("image", (8, 3, 448, 448)),))
    assert _ais(jobs[1], profile)[-2:] == ["--dymHW", "448,448"]


TOKENS = [ModelDims("ids", (1, 16), ("batch", "seq")), ModelDims("mask", (1, 16), ("batch", "seq"))]


def test_dynamic_dims_for_nd_inputs():
    (job,) = _dynamic("dims", ((1, 16, 1, 16), (4, 32, 4, 32)), model_dims=TOKENS)
    assert job.shell() == ("atc --framework=5 --model=model.onnx --output=m_dyndims --input_format=ND "
                           "'--input_shape=ids:-1,-1;mask:-1,-1' '--dynamic_dims=1,16,1,16;4,32,4,32' "
                           "--soc_version=Ascend310P3 --log=error")
    assert _ais(job, job.dynamic.profiles[1])[-2:] == ["--dymDims", "ids:4,32;mask:4,32"]
    assert job.dynamic.profiles[1].batch_size == 4


def test_dynamic_ranges():
    (job,) = _dynamic("ranges", ((1, 8), (224, 448), (224, 448)))
    assert job.shell() == ("atc --framework=5 --model=model.onnx --output=m_dynshape --input_format=NCHW "
                           "'--input_shape=image:1~8,3,224~448,224~448' --soc_version=Ascend310P3 --log=error")
    assert [(p.label, p.shapes) for p in job.dynamic.profiles] == [("min", (("image", (1, 3, 224, 224)),)),
                                                                  ("max", (("image", (8, 3, 448, 448)),))]
    assert _ais(job, job.dynamic.profiles[1])[-2:] == ["--dymShape", "image:8,3,448,448"]
    with pytest.raises(UserError, match=r"ranges in --input_shape need CANN 6\.3 or later"):
        _dynamic("ranges", ((1, 8), (224, 448), (224, 448)), cann="6.0")


STATIC = [ModelDims("image", (1, 3, 224, 224), (1, 3, 224, 224))]


@pytest.mark.parametrize("mode, values, model_dims, message", [
    ("batch_sizes", (1, 2), STATIC, r"a dynamic batch needs a symbolic first dim, but input 'image' dim 0 is fixed "
                                    r"to 1 in the model"),
    ("image_sizes", ((224, 224), (448, 448)), [ModelDims("image", (1, 3, 224, 224), ("N", 3, 224, "W"))],
     r"input 'image' dim 2 \(H\) is fixed to 224 in the model; dynamic image sizes need a symbolic height and width"),
    ("image_sizes", ((224, 224), (448, 448)), TOKENS,
     r"--dynamic_image_size needs NCHW inputs \(rank 4\); input 'ids' is rank 2"),
    ("dims", ((1, 16), (2, 32)), TOKENS, r"\[1, 16\] gives 2 value\(s\) for 4 symbolic dim\(s\) \(ids\[0\], ids\[1\], "
                                         r"mask\[0\], mask\[1\]\)"),
    ("dims", ((1,), (2,)), STATIC, r"the model's inputs have no symbolic dim to vary \(image: \[1, 3, 224, 224\]\)"),
])
def test_dynamic_shapes_are_checked_against_the_models_symbolic_dims(mode, values, model_dims, message):
    with pytest.raises(UserError, match=rf"atc\.dynamic\.{mode}: {message}"):
        _dynamic(mode, values, model_dims=model_dims)


@pytest.mark.parametrize("mode, values, message", [
    ("batch_sizes", (8,), r"1 gear\(s\); ATC takes 2 to 100"),
    ("batch_sizes", tuple(range(1, 258)), r"257 gear\(s\); ATC takes 2 to 100 \(256 on Ascend 950\)"),
    ("batch_sizes", (1, 1), "a gear is listed twice"),
    ("batch_sizes", (0, 2), "expected positive integers"),
    ("image_sizes", ((224,), (448,)), r"expected \[height, width\] pairs"),
    ("ranges", ((8, 1),), r"expected one \[low, high\] per symbolic dim, low <= high"),
])
def test_dynamic_gears_are_checked(mode, values, message):
    with pytest.raises(UserError, match=rf"atc\.dynamic\.{mode}: {message}"):
        DynamicSpec(mode, values)


def test_dynamic_jobs_round_trip_through_their_json(tmp_path):
    jobs = _dynamic("ranges", ((1, 8), (224, 448), (224, 448))) + _dynamic("batch_sizes", (1, 4))
    (tmp_path / "atc_jobs.json").write_text(jobs_json(jobs))
    assert read_atc_jobs(tmp_path) == jobs


def test_kept_op_types_are_the_keep_lists_names():
    configs = {"mixlist": {"black-list": {"to-add": ["LayerNorm"], "to-remove": ["Add"]},
                           "white-list": {"to-add": ["MatMul"]}},
               "op_precision": {"Gelu": "high_performance"}, "keep_dtype": ["OpType::SoftmaxV2", "node/a"]}
    assert kept_op_types(configs) == ["LayerNorm", "MatMul", "SoftmaxV2"]
