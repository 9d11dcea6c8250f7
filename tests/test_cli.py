"""The command line: exit codes 0 / 1 / 2, one-line errors without tracebacks."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
