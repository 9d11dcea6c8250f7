"""Bad input never loses data, and large models go through external data.

Every bad input gets one line (``graphopt: error: ...``) and exit code 2 (1 for a failed verification or a broken
pass, 130 for Ctrl-C), the input stays byte for byte as it was, and no partial output is left where a finished one
is expected: the run directory is either the previous complete one or absent, with no temporary files beside it.
The README's "Bad input" table lists these cases.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphopt.core import files, ir, onnx_files, wire
from graphopt.commands.cli import main
from graphopt.core.errors import UserError
from graphopt.core.model import Model
from graphopt.core.onnx_files import load_model, save_model
from graphopt.core.pass_infra import get_pass
from graphopt.testing import compare_models, model_from_text
from graphopt.core.runner import Runner
from graphopt.core.feeds import make_inputs
from graphs import TINY, cli


def weighted_model(n: int = 4, dim: int = 32) -> onnx.ModelProto:
    """x (N, 2, dim, dim) -> n x (MatMul by a weight, Softmax over the last axis): n dim x dim weights."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(n):
        w = rng.standard_normal((dim, dim)).astype(np.float32) / dim ** 0.5
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        nodes += [oh.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]),
                  oh.make_node("Softmax", [f"h{i}"], [f"s{i}" if i < n - 1 else "y"], axis=-1)]
        x = f"s{i}"
    graph = oh.make_graph(nodes, "weighted", [oh.make_tensor_value_info("x", 1, ["N", 2, dim, dim])],
                          [oh.make_tensor_value_info("y", 1, ["N", 2, dim, dim])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def write_recipe(folder: Path, model: str = "model.onnx", passes: str = "[softmax_transpose]",
                 shape: str = "[1, 2, 3, 4]", name: str = "x") -> Path:
    path = folder / "recipe.yaml"
    path.write_text(f"model: {{onnx: {model}}}\ninput: {{name: {name}, shape: {shape}}}\npasses: {passes}\n")
    return path


def leftovers(folder: Path, name: str = "out") -> list[str]:
    """Temporary files or folders of an interrupted write beside ``folder/name``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}") or p.name.endswith(".tmp"))


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with model.onnx (TINY) and recipe.yaml; temporary files of graphopt go to work/tmp."""
    onnx.save(model_from_text(TINY), tmp_path / "model.onnx")
    write_recipe(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def previous_run(work: Path, capsys) -> str:
    """A finished run in work/out; returns its fingerprint."""
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 0, err
    return run_dir_fingerprint(work / "out")


def run_dir_fingerprint(folder: Path) -> str:
    return digest(*sorted(p for p in folder.iterdir() if p.name != "report.json" and p.name != "report.md"))


# ---------------------------------------------------------------------------------------------------------------
# Bad models

VALID = model_from_text(TINY).SerializeToString()
BAD_MODELS = {
    "corrupt bytes": (bytes(range(256)) * 8, "not a readable ONNX model"),
    "truncated ONNX": (VALID[: len(VALID) // 2], "not a readable ONNX model"),
    "a PNG file": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a readable ONNX model"),
    "a text file": (b"hello, this is not a model\n", "not a readable ONNX model"),
    "an empty file": (b"", "not an ONNX model (empty graph)"),
    "protobuf, but an invalid graph": (
        oh.make_model(oh.make_graph([oh.make_node("NoSuchOp", ["x"], ["y"])], "g",
                                    [oh.make_tensor_value_info("x", 1, [1])], [oh.make_tensor_value_info("y", 1, [1])]),
                      opset_imports=[oh.make_opsetid("", 17)]).SerializeToString(), "invalid ONNX model"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_file(work, capsys, case):
    content, message = BAD_MODELS[case]
    (work / "model.onnx").write_bytes(content)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert (work / "model.onnx").read_bytes() == content
    assert not (work / "out").exists() and leftovers(work) == []


def test_model_path_is_a_directory(work, capsys):
    (work / "adir").mkdir()
    write_recipe(work, model="adir")
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and err == [f"graphopt: error: model {work / 'adir'}: is a directory, expected an .onnx file"]


def test_missing_model(work, capsys):
    write_recipe(work, model="absent.onnx")
    code, _, err = cli(capsys, "apply", work / "recipe.yaml")
    assert code == 2 and err == [f"graphopt: error: {work / 'recipe.yaml'}: model.onnx: absent.onnx: no such file"]


def test_unreadable_model_chmod_000(work, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root reading (see the monkeypatched variant below)")
    (work / "model.onnx").chmod(0)
    try:
        code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    finally:
        (work / "model.onnx").chmod(0o644)
    assert code == 2 and err == [f"graphopt: error: model {work / 'model.onnx'}: permission denied"]


def test_unreadable_model_permission_error(work, capsys, monkeypatch):
    """What chmod 000 does for a non-root user, simulated: the read raises PermissionError."""
    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(wire, "open", denied, raising=False)  # the reader's open()
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and err == [f"graphopt: error: model {work / 'model.onnx'}: permission denied"]
    assert not (work / "out").exists()


def test_read_error_is_one_line(work, capsys, monkeypatch):
    def eio(path, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(wire, "open", eio, raising=False)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and err == [f"graphopt: error: model {work / 'model.onnx'}: cannot be read (Input/output error)"]


@pytest.fixture
def external(work, monkeypatch):
    """work/model.onnx + model.onnx.data: the weighted model, saved with external data."""
    monkeypatch.setenv("GRAPHOPT_EXTERNAL_DATA_THRESHOLD", "1024")
    files = save_model(weighted_model(), work / "model.onnx")
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    write_recipe(work, shape="[1, 2, 32, 32]")
    return work


def test_missing_external_data(external, capsys):
    (external / "model.onnx.data").unlink()
    code, _, err = cli(capsys, "apply", external / "recipe.yaml", "-o", external / "out")
    assert code == 2 and len(err) == 1
    assert "external data file 'model.onnx.data' (tensor 'w0') is missing" in err[0]


def test_truncated_external_data(external, capsys):
    data = external / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    before = digest(external / "model.onnx", data)
    code, _, err = cli(capsys, "apply", external / "recipe.yaml", "-o", external / "out")
    assert code == 2 and len(err) == 1 and "model.onnx" in err[0], err
    assert digest(external / "model.onnx", data) == before and not (external / "out").exists()


def test_external_data_outside_the_model_folder(external, capsys):
    model = onnx.load(str(external / "model.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../elsewhere.data"
    (external / "model.onnx").write_bytes(model.SerializeToString())
    code, _, err = cli(capsys, "apply", external / "recipe.yaml", "-o", external / "out")
    assert code == 2 and len(err) == 1 and "outside the model's folder" in err[0], err


# ---------------------------------------------------------------------------------------------------------------
# Bad recipes

BAD_RECIPES = {
    "a list": ("- pass: simplify\n", "top level: expected a mapping, got list"),
    "a scalar": ("just words\n", "top level: expected a mapping, got str"),
    "invalid YAML": ("model: {onnx: model.onnx\n", "invalid YAML at line"),
    "passes is a string": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\npasses: simplify\n",
                           "passes: expected list, got str"),
    "a shape of strings": ("model: {onnx: model.onnx}\ninput: {name: x, shape: '1,2,3,4'}\n",
                           "input.shape: expected list[int], got str"),
    "a float argument": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n"
                         "passes: [{pass: softmax_transpose, rank: 4.5}]\n", "passes[0].rank: expected int"),
    "a pass entry that is a list": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n"
                                    "passes: [[softmax_transpose]]\n", "passes[0]: expected a mapping"),
    "a number as a key": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n1: 2\n",
                          "1: unknown key"),
    "a tolerance of text": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n"
                            "verify: {tolerance: {max_abs: small}}\n", "verify.tolerance.max_abs: expected"),
    "samples as text": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\nverify: {samples: '2'}\n",
                        "verify.samples: expected int, got str"),
    "batch sizes with text": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n"
                              "atc: {batch_sizes: [1, x]}\n", "atc.batch_sizes: expected list[int]"),
    "the model path as a number": ("model: {onnx: 5}\ninput: {name: x, shape: [1, 2, 3, 4]}\n",
                                   "model.onnx: expected str | null, got int"),
    "an input name that is a list": ("model: {onnx: model.onnx}\ninput: {name: [x], shape: [1, 2, 3, 4]}\n",
                                     "input.name: expected str, got list"),
    "emit as a string": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\nemit: model\n",
                         "emit: expected list"),
    "a negative dimension": ("model: {onnx: model.onnx}\ninput: {name: x, shape: [1, -2, 3, 4]}\n",
                             "input.shape: expected dimensions >= 0"),
    "binary garbage": (None, "cannot be read"),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_bad_recipe(work, capsys, case):
    text, message = BAD_RECIPES[case]
    path = work / "recipe.yaml"
    if text is None:
        path.write_bytes(b"\xff\xfe\x00\x81" * 16)
    else:
        path.write_text(text)
    code, _, err = cli(capsys, "apply", path, "-o", work / "out")
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert err[0].startswith(f"graphopt: error: recipe {path}" if text is None or "YAML" in message
                             else f"graphopt: error: {path}: ")
    assert not (work / "out").exists()


def test_recipe_is_a_directory_or_missing(work, capsys):
    code, _, err = cli(capsys, "apply", work)
    assert code == 2 and err == [f"graphopt: error: recipe {work}: is a directory, expected a .yaml file"]
    code, _, err = cli(capsys, "apply", work / "absent.yaml")
    assert code == 2 and err == [f"graphopt: error: recipe {work / 'absent.yaml'}: no such file"]


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_with_mismatched_keys_lists_them(work, capsys):
    import torch

    torch.save({"stem.weight": torch.zeros(1), "not_a_layer.bias": torch.zeros(1)}, work / "bad.pth")
    code, _, err = cli(capsys, "export", "efficientnet_lite0", "--checkpoint", work / "bad.pth", "-o",
                       work / "lite0.onnx")
    assert code == 2 and len(err) == 1, err
    assert "keys do not match exporter 'efficientnet_lite0': missing " in err[0]
    assert "unexpected not_a_layer.bias, stem.weight" in err[0]
    assert not (work / "lite0.onnx").exists()


def test_checkpoint_that_is_not_a_torch_file(work, capsys):
    (work / "bad.pth").write_bytes(b"GIF89a" + b"\0" * 100)
    code, _, err = cli(capsys, "export", "efficientnet_lite0", "--checkpoint", work / "bad.pth")
    assert code == 2 and len(err) == 1 and "checkpoint" in err[0] and "bad.pth" in err[0], err


# ---------------------------------------------------------------------------------------------------------------
# Failures while writing


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_the_run_dir(work, capsys, monkeypatch):
    before = previous_run(work, capsys)
    monkeypatch.setattr(Path, "write_bytes", enospc)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and err == [f"graphopt: error: cannot write {work / 'out'}: No space left on device"]
    assert run_dir_fingerprint(work / "out") == before and leftovers(work) == []


def test_disk_full_when_swapping_in_the_run_dir(work, capsys, monkeypatch):
    before = previous_run(work, capsys)
    real = os.replace

    def replace(src, dst):
        if Path(dst) == work / "out":
            enospc()
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and err == [f"graphopt: error: cannot write {work / 'out'}: No space left on device"]
    assert run_dir_fingerprint(work / "out") == before and leftovers(work) == []


def test_disk_full_while_saving_external_data(external, capsys, monkeypatch):
    monkeypatch.setattr(os, "fsync", enospc)
    before = digest(external / "model.onnx", external / "model.onnx.data")
    code, _, err = cli(capsys, "apply", external / "recipe.yaml", "-o", external / "out")
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], err
    assert digest(external / "model.onnx", external / "model.onnx.data") == before
    assert not (external / "out").exists() and leftovers(external) == []
    assert list((external / "tmp").iterdir()) == []


def test_permission_denied_creating_the_run_dir(work, capsys, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and err == [f"graphopt: error: cannot write {work / 'out'}: Permission denied"]


def test_output_below_a_regular_file(work, capsys):
    (work / "afile").write_text("x")
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "afile" / "out")
    assert code == 2 and err == [f"graphopt: error: cannot write {work / 'afile' / 'out'}: {work / 'afile'} is a "
                                 "file, not a folder"]
    assert (work / "afile").read_text() == "x"


def test_atomic_write_turns_oserror_into_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(UserError, match=r"cannot write .*x\.bin: No space left on device"):
        files.atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C and passes that raise


def test_ctrl_c_in_a_pass_leaves_the_previous_run(work, capsys, monkeypatch):
    before = previous_run(work, capsys)
    source = digest(work / "model.onnx")

    def interrupted(self, graph):
        graph.nodes[0].op = "Relu"  # halfway through editing the graph
        raise KeyboardInterrupt

    monkeypatch.setattr(get_pass("softmax_transpose"), "run", interrupted)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 130 and err == ["graphopt: interrupted; no partial output was left"]
    assert run_dir_fingerprint(work / "out") == before and leftovers(work) == []
    assert digest(work / "model.onnx") == source and list((work / "tmp").iterdir()) == []


def test_ctrl_c_while_swapping_in_the_run_dir(work, capsys, monkeypatch):
    before = previous_run(work, capsys)
    real = os.replace

    def replace(src, dst):
        if Path(dst) == work / "out":
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 130
    assert run_dir_fingerprint(work / "out") == before and leftovers(work) == []


def test_ctrl_c_while_verifying_a_large_model(external, capsys, monkeypatch):
    real = Runner.run

    def run(self, batches, run_options=None):
        if getattr(run, "calls", 0):
            raise KeyboardInterrupt
        run.calls = 1
        return real(self, batches, run_options)

    monkeypatch.setattr(Runner, "run", run)
    code, _, err = cli(capsys, "apply", external / "recipe.yaml", "-o", external / "out")
    assert code == 130 and not (external / "out").exists() and leftovers(external) == []
    assert list((external / "tmp").iterdir()) == []  # the verification copies with external data are gone


def test_a_pass_that_raises_is_a_pass_error(work, capsys, monkeypatch):
    def broken(self, graph):
        graph.nodes[0].op = "Relu"
        raise ValueError("unexpected model")

    monkeypatch.setattr(get_pass("softmax_transpose"), "run", broken)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 1
    assert err == ["graphopt: error: pass softmax_transpose (passes[0]) raised ValueError: unexpected model"]
    assert not (work / "out").exists()


def test_a_pass_that_breaks_numerics_exits_1(work, capsys, monkeypatch):
    from graphopt.core.pass_infra import PassResult

    def wrong(self, graph):
        node = next(n for n in graph.nodes if n.op == "Softmax")
        node.attrs["axis"] = 1
        return PassResult(True, {"rewritten": 1})

    monkeypatch.setattr(get_pass("softmax_transpose"), "run", wrong)
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 1 and len(err) == 1 and "broke numerics" in err[0]
    assert not (work / "out").exists()


def test_custom_domain_model_through_the_cli(work, capsys):
    from corpus import custom_models

    model, _, _ = custom_models()["custom_domain_op"]
    onnx.save(model, work / "model.onnx")
    write_recipe(work, shape="[1, 4, 8, 8]", passes="[softmax_transpose, gelu_precision]", name="input")
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and len(err) == 1 and "custom-domain ops (org.graphopt.test::FancyActivation)" in err[0]
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out", "--no-verify")
    assert code == 0, err
    out = load_model(work / "out" / "model.onnx")
    assert [n.op_type for n in out.graph.node if n.domain == "org.graphopt.test"] == ["FancyActivation"]


@pytest.mark.parametrize("misbehaviour, message", [
    ("cycle", "left a graph that cannot be sorted"),
    ("configs", "returned unusable compiler configs"),
    ("invalid", "produced an invalid graph"),
    ("unreported", "reported no change but modified the graph"),
    ("unreported_attribute", "reported no change but modified the graph"),
])
def test_a_misbehaving_pass_is_a_pass_error(misbehaviour, message, monkeypatch):
    """Whatever a (third-party) pass does to the graph, the pipeline names it; it never writes the result."""
    from graphopt.core.errors import PassError
    from graphopt.core.pass_infra import PassResult
    from graphopt.core.pipeline import run_pipeline

    def run(self, graph):
        mul, softmax = graph.nodes
        if misbehaviour == "cycle":
            mul.inputs[1] = softmax.outputs[0]
        elif misbehaviour == "invalid":
            mul.op = "NoSuchOp"
        elif misbehaviour == "unreported":  # an edit its result does not report: it would skip verification
            mul.op = "Add"
            return PassResult(False, {})
        elif misbehaviour == "unreported_attribute":
            softmax.attrs["axis"] = 1
            return PassResult(False, {})
        return PassResult(True, {}, {"bogus": 1} if misbehaviour == "configs" else {})

    monkeypatch.setattr(get_pass("softmax_transpose"), "run", run)
    with pytest.raises(PassError, match=message):
        run_pipeline(model_from_text(TINY), [(get_pass("softmax_transpose")(), "passes[0]", "stop")],
                     inputs=make_inputs([1, 2, 3, 4], 1, 0), input_name="x")


def test_simplify_pinned_shape_that_does_not_fit(work, capsys):
    write_recipe(work, passes="[{pass: simplify, fixed_input_shape: {x: [2]}}]")
    code, _, err = cli(capsys, "apply", work / "recipe.yaml", "-o", work / "out")
    assert code == 2 and err == ["graphopt: error: simplify: fixed_input_shape.x [2] does not fit the model's input "
                                 "'x' shaped ['N', 2, 3, 4]"]


def test_simplify_skips_a_model_over_the_protobuf_limit(monkeypatch):
    import graphopt.passes.simplify as simplify

    monkeypatch.setattr(simplify, "PROTOBUF_LIMIT", 1024)
    graph = ir.to_graph(weighted_model())
    result = simplify.Simplify()(graph)
    assert not result.changed and "2 GiB" in result.stats["skipped"]


# ---------------------------------------------------------------------------------------------------------------
# Large models: external data


def test_external_data_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_EXTERNAL_DATA_THRESHOLD", "4096")
    model = weighted_model()
    files = save_model(model, tmp_path / "m.onnx")
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx").stat().st_size < 2048  # the graph only
    skeleton = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    locations = {e.value for t in skeleton.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"m.onnx.data"}  # relative: the pair can be moved together
    loaded = load_model(tmp_path / "m.onnx")
    assert [(t.name, onnx.numpy_helper.to_array(t).tobytes()) for t in loaded.graph.initializer] == \
        [(t.name, onnx.numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer]
    # a graph saves the same way, straight from its constants
    save_model(ir.to_graph(loaded), tmp_path / "g.onnx")
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("g.onnx", "g.onnx.data"):
        os.replace(tmp_path / name, moved / name)
    assert compare_models(model, load_model(moved / "g.onnx"), shape=[2, 2, 32, 32]).passed
    # saving did not modify the model in memory
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def test_large_model_through_apply(external, capsys, monkeypatch):
    """Load, pass, verify and save a model over the (lowered) threshold: its weights are never copied into a
    second model in memory, never serialized into one message, and onnxruntime is handed the arrays."""
    import onnx_graphsurgeon as gs

    total = onnx_files.constant_nbytes(weighted_model())
    exported: list[int] = []
    real_export = gs.export_onnx

    def export(graph, *args, **kwargs):
        model = real_export(graph, *args, **kwargs)
        exported.append(sum(len(t.raw_data) for t in model.graph.initializer))
        return model

    monkeypatch.setattr(gs, "export_onnx", export)
    sessions: list[type] = []
    real_init = Runner.__init__

    def init(self, model, *args, **kwargs):
        sessions.append(type(model))
        real_init(self, model, *args, **kwargs)

    monkeypatch.setattr(Runner, "__init__", init)
    write_recipe(external, shape="[1, 2, 32, 32]", passes=textwrap.dedent("""
        - pass: insert_fusion_breaker
          path: [MatMul, Softmax]
          op: Mul
        """))
    source = digest(external / "model.onnx", external / "model.onnx.data")
    code, out, err = cli(capsys, "apply", external / "recipe.yaml", "-o", external / "out")
    assert code == 0, err
    assert "model.onnx.data" in out  # the "wrote ..." line lists it
    assert digest(external / "model.onnx", external / "model.onnx.data") == source
    assert exported and max(exported) < total / 4, exported  # every export was a data-less skeleton
    assert sessions and all(t in (wire.SplitModel, Model) for t in sessions), sessions  # ORT given the arrays
    run = external / "out"
    assert {"model.onnx", "model.onnx.data"} <= {p.name for p in run.iterdir()}
    result = load_model(run / "model.onnx")
    assert [n.op_type for n in result.graph.node].count("Mul") == 4
    inputs = make_inputs([2, 2, 32, 32], 2, seed=3)
    assert compare_models(weighted_model(), result, inputs=inputs).passed
    assert list((external / "tmp").iterdir()) == []  # verification copies removed


def test_small_model_keeps_external_data_if_its_source_had_it(external, capsys, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_EXTERNAL_DATA_THRESHOLD", str(1 << 30))  # not large: the source decides
    code, _, err = cli(capsys, "apply", external / "recipe.yaml", "-o", external / "out", "--no-verify")
    assert code == 0, err
    assert (external / "out" / "model.onnx.data").is_file()
    assert compare_models(weighted_model(), load_model(external / "out" / "model.onnx"),
                          shape=[1, 2, 32, 32]).passed


@pytest.mark.skipif(not os.environ.get("GRAPHOPT_TEST_2GB"), reason="set GRAPHOPT_TEST_2GB=1: writes ~7 GB, minutes")
def test_model_over_2gb(tmp_path):
    """The real thing: 2.4 GB of weights, default threshold."""
    dim = 8192
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 8 else "y"]) for i in range(9)]
    graph = oh.make_graph(nodes, "big", [oh.make_tensor_value_info("h0", 1, ["N", dim])],
                          [oh.make_tensor_value_info("y", 1, ["N", dim])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    for i in range(9):  # straight into the model: one copy of each weight
        w = (rng.standard_normal((dim, dim), dtype=np.float32) / dim ** 0.5).astype(np.float32)
        model.graph.initializer.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        del w
    assert onnx_files.constant_nbytes(model) > 2 ** 31
    save_model(model, tmp_path / "big.onnx")
    del model
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: {{onnx: big.onnx}}\ninput: {{name: h0, shape: [1, {dim}]}}\n"
                    "passes: [{pass: insert_fusion_breaker, path: [MatMul, MatMul], op: Mul}]\n"
                    "verify: {samples: 1, tolerance: {max_abs: null, cosine: 0.9999}}\n")
    assert main(["apply", str(path), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.onnx.data").stat().st_size > 2 ** 31
    assert (tmp_path / "out" / "model.onnx").stat().st_size < 2 ** 20
    # graphopt verify on the pair: both over 2 GiB, run through files with external data
    assert main(["verify", str(tmp_path / "big.onnx"), str(tmp_path / "out" / "model.onnx"), "--samples", "1",
                 "--max-abs", "1e-3"]) == 0
