"""The ATC hand-off: config files in exactly the formats ATC reads, the jobs as records, and the commands."""
from __future__ import annotations

import json
import shlex

import pytest

from graphopt.ascend.atc import (AtcInput, atc_commands, atc_jobs, atc_script, config_files, jobs_for_batch_sizes,
                                 jobs_json, keep_dtype_cfg, op_precision_ini, ops_info_json, read_atc_jobs)
from graphopt.core.errors import UserError


def test_ops_info_matches_the_vit_seed():
    assert json.loads(ops_info_json({"black-list": {"to-add": ["LayerNormalization"]}})) == {
        "black-list": {"to-add": ["LayerNorm"]}}


def test_ops_info_maps_and_deduplicates_names():
    text = ops_info_json({"black-list": {"to-add": ["Softmax", "SoftmaxV2"], "to-remove": []},
                          "white-list": {"to-add": ["MatMul", "Gemm"], "to-remove": ["Conv"]}})
    assert json.loads(text) == {"black-list": {"to-add": ["SoftmaxV2"]},
                                "white-list": {"to-add": ["MatMulV2"], "to-remove": ["Conv2D"]}}


def test_ops_info_refuses_a_gray_list():
    with pytest.raises(UserError, match="'gray-list'"):
        ops_info_json({"gray-list": {"to-add": ["Add"]}})


def test_op_precision_ini_matches_the_twins_seed():
    assert op_precision_ini({"Gelu": "high_performance"}) == "Gelu=high_performance\n"
    assert op_precision_ini({"Softmax": "high_precision"}) == "SoftmaxV2=high_precision\n"


def test_keep_dtype_cfg_one_entry_per_line():
    assert keep_dtype_cfg(["/blocks.0/norm1/ReduceMean", "OpType::LayerNorm"]) == (
        "/blocks.0/norm1/ReduceMean\nOpType::LayerNorm\n")


def test_commands_carry_shapes_and_precision_flags():
    configs = {"mixlist": {"black-list": {"to-add": ["LayerNorm"]}}, "op_precision": {"Gelu": "high_performance"}}
    cmds = atc_commands(model="model.onnx", output_stem="vit", inputs=[("input", (None, 3, 224, 224))],
                        batch_sizes=(1, 8), soc_version="Ascend310P3", configs=configs)
    assert cmds[1] == ["atc", "--framework=5", "--model=model.onnx", "--output=vit_bs8", "--input_format=NCHW",
                       "--input_shape=input:8,3,224,224", "--soc_version=Ascend310P3", "--log=error",
                       "--precision_mode=allow_mix_precision", "--modify_mixlist=ops_info.json",
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
                "--precision_mode=allow_mix_precision", "--modify_mixlist=ops_info.json",
                "--op_precision_mode=op_precision.ini", "--keep_dtype=keep_dtype.cfg"]
    assert cmds == [[a.format(bs=bs) for a in expected] for bs in (1, 16)]
    # each file a flag names is written, in the format that flag reads
    files = config_files(ALL_CONFIGS)
    flagged = {a.split("=", 1)[1] for a in cmds[0] if a.startswith(("--modify_mixlist=", "--op_precision_mode=",
                                                                    "--keep_dtype="))}
    assert flagged == set(files)
    assert json.loads(files["ops_info.json"]) == {"black-list": {"to-add": ["LayerNorm"]}}
    assert files["op_precision.ini"] == "Gelu=high_performance\n"
    assert files["keep_dtype.cfg"] == "/blocks.0/attn/MatMul\nOpType::Conv2D\n"


def test_keep_dtype_alone_with_the_recipes_precision_mode():
    cmds = atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(4,),
                        soc_version="Ascend310", precision_mode="force_fp16",
                        configs={"keep_dtype": ["stem/Conv"]})
    assert cmds == [["atc", "--framework=5", "--model=m.onnx", "--output=m_bs4", "--input_format=NCHW",
                     "--input_shape=x:4,3,8,8", "--soc_version=Ascend310", "--log=error",
                     "--precision_mode=force_fp16", "--keep_dtype=keep_dtype.cfg"]]


def test_no_precision_flags_without_configs():
    cmds = atc_commands(model="m.onnx", output_stem="m", inputs=[("x", (None, 3, 8, 8))], batch_sizes=(1,),
                        soc_version="Ascend310")
    assert [a for a in cmds[0] if a.split("=")[0] in ("--precision_mode", "--modify_mixlist",
                                                      "--op_precision_mode", "--keep_dtype")] == []
