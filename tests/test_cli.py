"""The command line: exit codes 0 / 1 / 2, one-line errors without tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from graphopt.testing import model_from_text
from graphs import TINY


def graphopt(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "graphopt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture
def tiny(tmp_path):
    onnx.save(model_from_text(TINY), tmp_path / "tiny.onnx")
    return tmp_path


def write_recipe(path, passes):
    path.write_text(textwrap.dedent(f"""
        model: {{onnx: tiny.onnx}}
        input: {{name: x, shape: [1, 2, 3, 4]}}
        passes:
        {textwrap.indent(passes, '        ').strip()}
        """))
    return path


def error_line(proc):
    lines = [l for l in proc.stderr.splitlines() if l.startswith("graphopt: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_misspelt_pass_name_exits_2_with_one_line(tiny):
    r = write_recipe(tiny / "bad.yaml", "- pass: simplfy\n")
    proc = graphopt("apply", r, cwd=tiny)
    assert proc.returncode == 2
    assert error_line(proc) == (f"graphopt: error: {r}: passes[0].pass: unknown pass 'simplfy' "
                                "(did you mean: simplify?)")


def test_wrong_argument_type_exits_2_with_one_line(tiny):
    r = write_recipe(tiny / "bad.yaml", "- pass: softmax_transpose\n  rank: four\n")
    proc = graphopt("apply", r, cwd=tiny)
    assert proc.returncode == 2
    assert error_line(proc) == f"graphopt: error: {r}: passes[0].rank: expected int, got str 'four'"


def test_apply_succeeds_and_prints_the_pass_table(tiny):
    r = write_recipe(tiny / "ok.yaml", "- softmax_transpose\n")
    proc = graphopt("apply", r, "-o", tiny / "out", cwd=tiny)
    assert proc.returncode == 0, proc.stderr
    assert "| 1 | softmax_transpose | applied" in proc.stdout
    assert (tiny / "out" / "model.onnx").is_file()


@pytest.mark.parametrize("content, message", [
    (b"this is not onnx", "not a readable ONNX model"),
    (b"", "not an ONNX model"),
])
def test_corrupt_model_exits_2(tiny, content, message):
    (tiny / "tiny.onnx").write_bytes(content)
    r = write_recipe(tiny / "ok.yaml", "- softmax_transpose\n")
    proc = graphopt("apply", r, "-o", tiny / "out", cwd=tiny)
    assert proc.returncode == 2
    assert message in error_line(proc)
    assert not (tiny / "out").exists()


def test_wrong_input_shape_exits_2(tiny):
    r = tiny / "shape.yaml"
    r.write_text("model: {onnx: tiny.onnx}\ninput: {name: x, shape: [1, 3, 224, 224]}\npasses: [softmax_transpose]\n")
    proc = graphopt("apply", r, cwd=tiny)
    assert proc.returncode == 2
    assert "input.shape[1] is 3, the model fixes it to 2" in error_line(proc)


def test_verify_command_exit_codes(tiny):
    same = graphopt("verify", tiny / "tiny.onnx", tiny / "tiny.onnx")
    assert same.returncode == 0 and "ok" in same.stdout
    other = model_from_text(TINY.replace("axis=-1", "axis=2"))
    onnx.save(other, tiny / "other.onnx")
    diff = graphopt("verify", tiny / "tiny.onnx", tiny / "other.onnx")
    assert diff.returncode == 1 and "OUTSIDE TOLERANCE" in diff.stdout
    missing = graphopt("verify", tiny / "tiny.onnx", tiny / "absent.onnx")
    assert missing.returncode == 2 and "model B" in error_line(missing)


def test_passes_lists_every_pass_with_parameters():
    proc = graphopt("passes")
    assert proc.returncode == 0
    assert "softmax_transpose:" in proc.stdout and "    axis: int (default -1)" in proc.stdout
    assert "simplify:" in proc.stdout and "infer_shapes:" in proc.stdout
    assert "fold_constants [library]: " in proc.stdout  # what graphopt optimize runs


RESHAPE_FAILS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 2, 3, 4] x) => (float[5, 7] y) {
    s = Constant<value = int64[2] {5, 7}>()
    y = Reshape(x, s)
}"""


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["quiet", "verbose"])
def test_library_output_is_quiet_unless_verbose(tmp_path, verbose):
    """A model onnxruntime fails on: onnxruntime logs the failure itself, in colour, before graphopt's one line
    that carries the same message. By default that one line is all; -v (before or after the subcommand) lets the
    library speak."""
    onnx.save(model_from_text(RESHAPE_FAILS), tmp_path / "r.onnx")
    proc = graphopt(*verbose, "verify", tmp_path / "r.onnx", tmp_path / "r.onnx")
    assert proc.returncode == 2
    line = "graphopt: error: onnxruntime failed on input 'x' shaped [1, 2, 3, 4]: [ONNXRuntimeError]"
    if not verbose:
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(line), proc.stderr
        assert "\x1b[" not in proc.stderr
    else:
        assert "[E:onnxruntime:" in proc.stderr and line in proc.stderr
        after = graphopt("verify", "-v", tmp_path / "r.onnx", tmp_path / "r.onnx")
        assert after.returncode == 2 and "[E:onnxruntime:" in after.stderr


def test_usage_mistakes_are_one_line():
    proc = graphopt("apply")
    assert proc.returncode == 2 and proc.stderr == ("graphopt: error: apply: the following arguments are required: "
                                                    "recipe (see graphopt apply --help)\n")


def test_version_names_graphopt_and_the_libraries_that_decide_its_results(capsys):
    from importlib import metadata

    from graphopt.commands.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"graphopt {metadata.version('graphopt')} (onnx ")
    assert f"onnxruntime {metadata.version('onnxruntime')}" in out[0]


def test_passes_into_a_closed_pipe_is_quiet():
    """`graphopt passes | head -1`: the reader closes the pipe early; no BrokenPipeError traceback, exit 0."""
    proc = subprocess.run(f"{sys.executable} -m graphopt passes | head -c 10 > /dev/null; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_inspect_prints_inputs_outputs_and_op_counts(tmp_path, capsys):
    from graphs import cli

    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17, "my.domain" : 1]>
        g (float[N, 3] x, int64[4] idx, bool flag) => (float[N, 3] y, float16 z) {
            a = Relu(x)
            b = my.domain.Custom(a)
            y = If(flag) <then_branch = t () => (float[N, 3] o) { o = Abs(b) },
                          else_branch = e () => (float[N, 3] o2) { o2 = Neg(b) }>
            z = Constant<value = float16 {1}>()
        }""")
    onnx.save(model, tmp_path / "m.onnx")
    code, out, errors = cli(capsys, "inspect", tmp_path / "m.onnx")
    assert code == 0 and not errors
    assert "| input  | x    | float32 | [N, 3] |" in out
    assert "| input  | idx  | int64 | [4] |" in out
    assert "| input  | flag | bool | [] |" in out
    assert "| output | z    | float16 | [] |" in out
    assert "opset ai.onnx 17, my.domain 1" in out
    assert "6 nodes of 6 op types (2 subgraphs counted in)" in out
    for row in ("| Relu | 1 |", "| my.domain::Custom | 1 |", "| If | 1 |", "| Abs | 1 |", "| Neg | 1 |"):
        assert row in out
    code, out, errors = cli(capsys, "inspect", tmp_path / "m.onnx", "--json")
    info = json.loads(out)
    assert info["inputs"][0] == {"name": "x", "dtype": "float32", "shape": ["N", 3]}
    assert info["op_counts"]["If"] == 1 and info["nodes"] == 6 and info["subgraphs"] == 2
    assert info["external_data"] == {}


def test_inspect_reports_external_data_and_parameters(tmp_path, capsys):
    from graphs import cli

    w = onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 64])], [w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0)
    code, out, _ = cli(capsys, "inspect", tmp_path / "m.onnx", "--json")
    info = json.loads(out)
    assert info["parameters"] == 64 * 64 and info["initializers"] == 1
    assert info["external_data"] == {"m.weights": {"bytes_referenced": 64 * 64 * 4, "file_bytes": 64 * 64 * 4}}
    code, out, _ = cli(capsys, "inspect", tmp_path / "m.onnx")
    assert "external data m.weights: 16.0 KiB referenced, file 16.0 KiB" in out
    assert "4,096 parameters" in out


def test_inspect_names_the_inputs_that_have_an_initializer(tmp_path, capsys):
    from graphs import cli

    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4]),
         onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])], [w])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    code, out, _ = cli(capsys, "inspect", tmp_path / "m.onnx", "--json")
    info = json.loads(out)
    assert info["initializer_inputs"] == ["w"] and [v["name"] for v in info["inputs"]] == ["x"]
    code, out, _ = cli(capsys, "inspect", tmp_path / "m.onnx")
    assert "1 initializers (1 of them graph inputs too: w)" in out


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not an onnx file at all", "not a readable ONNX file"),
    (b"", "holds no graph"),
])
def test_inspect_bad_input_is_one_line(tmp_path, capsys, content, message):
    from graphs import cli

    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    code, out, errors = cli(capsys, "inspect", path)
    assert code == 2 and out == ""
    assert len(errors) == 1 and message in errors[0] and str(path) in errors[0]
