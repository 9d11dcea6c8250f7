"""Commands never destroy data they did not write (graphopt.core.outputs).

apply, bisect, precision and eval mark their folders (``.graphopt``, naming the command) and replace an existing
``-o`` only when it is their own earlier output; anything else is refused with one line and exit 2 before any work
starts, unless ``--force``, which still never replaces a device, the current folder or a folder above it, a git
repository or the command's inputs. export refuses to overwrite a different file; data refuses a foreign folder.
Every refusal leaves what was there as it was (content and modification time) and no temporary folder.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphopt.commands.apply
import graphopt.commands.bisect
import graphopt.commands.evaluate
import graphopt.commands.precision
from graphopt.commands.cli import main
from graphopt.core.outputs import MARKER, marker_kind
from graphopt.core.pass_infra import Pass, register_pass
from graphopt.testing import model_from_text
from graphs import TINY

GRAPHOPT = [sys.executable, "-m", "graphopt"]


@register_pass("test_outputs_crash")
class _Crash(Pass):
    """Test-only: raises, so that graphopt bisect has something to write (bisect.json naming it)."""

    def run(self, graph):
        raise RuntimeError("boom")


def cli(capsys, *args) -> tuple[int, str, list[str]]:
    """The CLI in process: (exit code, stdout, stderr lines)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err.splitlines()


@pytest.fixture
def work(tmp_path, monkeypatch):
    """tiny.onnx and recipe.yaml (TINY, softmax_transpose) in the current folder."""
    onnx.save(model_from_text(TINY), tmp_path / "tiny.onnx")
    (tmp_path / "recipe.yaml").write_text("model: {onnx: tiny.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n"
                                          "passes: [softmax_transpose]\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def no_work(monkeypatch) -> None:
    """Make any real work fail loudly: a refusal must come before the model is even loaded."""
    def started(*args, **kwargs):
        raise AssertionError("work started before the output location was checked")

    monkeypatch.setattr(graphopt.commands.apply, "source_model_path", started)
    monkeypatch.setattr(graphopt.commands.bisect, "source_model_path", started)
    monkeypatch.setattr(graphopt.commands.precision, "_recipe_model", started)
    monkeypatch.setattr(graphopt.commands.evaluate, "_choose_backend", started)


def snapshot(path: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file under ``path`` (or ``path`` itself): content and modification time in ns."""
    files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*"))
    return {str(p): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in files}


def user_folder(parent: Path, name: str = "mine") -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "notes.txt").write_text("my own notes\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)))
    old = time.time() - 3600  # an hour ago: a rewrite would show
    for p in [*folder.rglob("*"), folder]:
        os.utime(p, (old, old))
    return folder


def temporaries(parent: Path) -> list[str]:
    """What an interrupted or refused write could leave beside its target: hidden temporary folders."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------------------------
# apply


def test_apply_refuses_a_folder_of_the_users_files(work, capsys, monkeypatch):
    mine = user_folder(work)
    before = snapshot(mine)
    no_work(monkeypatch)
    code, _, err = cli(capsys, "apply", "recipe.yaml", "-o", mine)
    assert code == 2
    assert err == [f"graphopt: error: {mine} exists and is not a graphopt apply run (no .graphopt marker); "
                   "choose another -o or pass --force"]
    assert snapshot(mine) == before and temporaries(work) == []


def test_apply_refuses_a_regular_file(work, capsys, monkeypatch):
    (work / "result").write_text("not a folder\n")
    before = snapshot(work / "result")
    no_work(monkeypatch)
    code, _, err = cli(capsys, "apply", "recipe.yaml", "-o", "result")
    assert code == 2 and err == ["graphopt: error: result exists and is a file, not a graphopt apply run; choose "
                                 "another -o or pass --force"]
    assert snapshot(work / "result") == before and temporaries(work) == []


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_apply_never_replaces_dev_null(work, capsys, monkeypatch, force):
    no_work(monkeypatch)
    code, _, err = cli(capsys, "apply", "recipe.yaml", "-o", "/dev/null", *force)
    assert code == 2 and err == ["graphopt: error: /dev/null is a device or special file, not a folder; choose "
                                 "another -o"]
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_apply_replaces_its_own_previous_run(work, capsys):
    assert cli(capsys, "apply", "recipe.yaml", "-o", "run")[0] == 0
    assert marker_kind(work / "run") == "apply"
    first = (work / "run" / "report.json").stat().st_mtime_ns
    (work / "recipe.yaml").write_text("model: {onnx: tiny.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n"
                                      "passes: [softmax_transpose]\nemit: [model, report]\n")
    code, out, _ = cli(capsys, "apply", "recipe.yaml", "-o", "run")
    assert code == 0 and "wrote run/" in out
    assert sorted(p.name for p in (work / "run").iterdir()) == [MARKER, "model.onnx", "report.json", "report.md"]
    assert (work / "run" / "report.json").stat().st_mtime_ns != first and temporaries(work) == []


def test_a_file_the_user_put_into_a_run_is_never_replaced(work, capsys, monkeypatch):
    """The marker lists what graphopt wrote; anything else in the run (notes, a model of the user's) makes it
    foreign: refused and intact, until it is moved out or --force is given."""
    assert cli(capsys, "apply", "recipe.yaml", "-o", "run")[0] == 0
    (work / "run" / "notes.txt").write_text("my notes on this run\n")
    before = snapshot(work / "run")
    with monkeypatch.context() as m:
        no_work(m)
        code, _, err = cli(capsys, "apply", "recipe.yaml", "-o", "run")
    assert code == 2 and err == ["graphopt: error: run is a graphopt apply run, but holds 'notes.txt', which "
                                 "graphopt did not write there; move it out or pass --force"]
    assert snapshot(work / "run") == before and temporaries(work) == []
    (work / "run" / "notes.txt").unlink()
    assert cli(capsys, "apply", "recipe.yaml", "-o", "run")[0] == 0


def test_force_replaces_a_foreign_folder_and_a_file(work, capsys):
    mine = user_folder(work)
    code, _, _ = cli(capsys, "apply", "recipe.yaml", "-o", mine, "--force")
    assert code == 0 and marker_kind(mine) == "apply" and not (mine / "notes.txt").exists()
    (work / "result").write_text("a file\n")
    assert cli(capsys, "apply", "recipe.yaml", "-o", "result", "--force")[0] == 0
    assert marker_kind(work / "result") == "apply" and temporaries(work) == []


def test_force_never_replaces_the_current_folder_a_repository_or_an_input(work, capsys, monkeypatch):
    no_work(monkeypatch)
    code, _, err = cli(capsys, "apply", "recipe.yaml", "-o", ".", "--force")
    assert code == 2 and err == ["graphopt: error: . is the current folder or a folder above it; graphopt will not "
                                 "replace it, even with --force; choose another -o"]
    repo = user_folder(work, "repo")
    (repo / ".git").mkdir()
    code, _, err = cli(capsys, "apply", "recipe.yaml", "-o", repo, "--force")
    assert code == 2 and err == [f"graphopt: error: {repo} holds a git repository (.git); graphopt will not "
                                 "replace it, even with --force; choose another -o"]
    models = work / "models"
    models.mkdir()
    (work / "tiny.onnx").rename(models / "tiny.onnx")
    (work / "recipe.yaml").write_text("model: {onnx: models/tiny.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n")
    before = snapshot(models)
    code, _, err = cli(capsys, "apply", "recipe.yaml", "-o", "models", "--force")
    assert code == 2 and err == ["graphopt: error: models holds models/tiny.onnx, which this command reads; "
                                 "graphopt will not replace it, even with --force; choose another -o"]
    assert snapshot(models) == before and (repo / "notes.txt").is_file()


def test_another_commands_output_is_not_replaced(work, capsys):
    assert cli(capsys, "apply", "recipe.yaml", "-o", "run")[0] == 0
    code, _, err = cli(capsys, "precision", "tiny.onnx", "-o", "run", "--samples", "2")
    assert code == 2 and err == ["graphopt: error: run is a graphopt apply run, not a graphopt precision folder; "
                                 "choose another -o or pass --force"]
    assert marker_kind(work / "run") == "apply"


def test_unwritable_output_is_refused_before_the_first_pass(work, capsys, monkeypatch):
    """The location is tried (a folder made and removed) before anything runs; the message names -o, not the
    probe."""
    import tempfile

    ran = []
    monkeypatch.setattr(graphopt.commands.apply, "run_pipeline", lambda *a, **k: ran.append(1))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(work / ".run.x1y2z3"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    code, _, err = cli(capsys, "apply", "recipe.yaml", "-o", work / "run")
    assert code == 2 and err == [f"graphopt: error: cannot write {work / 'run'}: Permission denied"] and not ran


def _unwritable_parents(tmp_path: Path) -> list[Path]:
    """Folders this process cannot create anything in: a 0o500 folder (not for root, who may write anyway), and
    sysfs, which refuses new entries to root as well."""
    found = []
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):
        found.append(locked)
    try:
        os.mkdir("/sys/graphopt-probe")
    except OSError:
        found.append(Path("/sys"))
    else:
        os.rmdir("/sys/graphopt-probe")
    return found


def test_unwritable_parent_through_the_command_line(work):
    """The real thing, in a subprocess: refused in well under the time a pass takes, no pass started."""
    parents = _unwritable_parents(work)
    if not parents:
        pytest.skip("no folder this process cannot write to")
    for target in [p / "run" for p in parents] + [p / "new" / "run" for p in parents]:  # parent made later
        t0 = time.perf_counter()
        proc = subprocess.run([*GRAPHOPT, "apply", "recipe.yaml", "-o", target], capture_output=True, text=True,
                              timeout=120)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0] in (f"graphopt: error: cannot write {target}: Permission denied",
                            f"graphopt: error: cannot write {target}: Operation not permitted")
        assert "[1/1]" not in proc.stderr and time.perf_counter() - t0 < 60
        assert not os.path.lexists(target)
    (work / "locked").chmod(0o700)


def test_output_below_a_missing_folder_is_created(work, capsys):
    assert cli(capsys, "apply", "recipe.yaml", "-o", "a/b/run")[0] == 0
    assert marker_kind(work / "a" / "b" / "run") == "apply"


# ---------------------------------------------------------------------------------------------------------------
# bisect, precision, eval


def crash_recipe(work: Path) -> Path:
    path = work / "crash.yaml"
    path.write_text("model: {onnx: tiny.onnx}\ninput: {name: x, shape: [1, 2, 3, 4]}\n"
                    "passes: [softmax_transpose, test_outputs_crash]\n")
    return path


def test_bisect_output_rules(work, capsys, monkeypatch):
    crash_recipe(work)
    assert cli(capsys, "bisect", "crash.yaml", "-o", "b")[0] == 1
    assert marker_kind(work / "b") == "bisect" and (work / "b" / "bisect.json").is_file()
    assert cli(capsys, "bisect", "crash.yaml", "-o", "b")[0] == 1  # its own: replaced
    mine = user_folder(work)
    before = snapshot(mine)
    with monkeypatch.context() as m:
        no_work(m)
        code, _, err = cli(capsys, "bisect", "crash.yaml", "-o", mine)
        assert code == 2 and err == [f"graphopt: error: {mine} exists and is not a graphopt bisect folder (no "
                                     ".graphopt marker); choose another -o or pass --force"]
        assert snapshot(mine) == before
        code, _, err = cli(capsys, "bisect", "crash.yaml", "-o", "/dev/null", "--force")
        assert code == 2 and "device or special file" in err[0]
    assert cli(capsys, "bisect", "crash.yaml", "-o", mine, "--force")[0] == 1
    assert marker_kind(mine) == "bisect" and temporaries(work) == []


def test_precision_output_rules(work, capsys, monkeypatch):
    args = ["--samples", "2", "--node-trials", "1", "--worst-nodes", "1"]
    assert cli(capsys, "precision", "recipe.yaml", "-o", "p", *args)[0] in (0, 1)
    assert marker_kind(work / "p") == "precision"
    assert cli(capsys, "precision", "recipe.yaml", "-o", "p", *args)[0] in (0, 1)
    (work / "afile").write_text("x")
    before = snapshot(work / "afile")
    with monkeypatch.context() as m:
        no_work(m)
        code, _, err = cli(capsys, "precision", "recipe.yaml", "-o", "afile", *args)
        assert code == 2 and err == ["graphopt: error: afile exists and is a file, not a graphopt precision "
                                     "folder; choose another -o or pass --force"]
    assert snapshot(work / "afile") == before
    assert cli(capsys, "precision", "recipe.yaml", "-o", "afile", "--force", *args)[0] in (0, 1)
    assert marker_kind(work / "afile") == "precision" and temporaries(work) == []


@pytest.fixture
def evaluated(work, capsys):
    """A classifier's run directory and a data folder of four random items (no labels)."""
    from test_data_eval import tiny_classifier

    tiny_classifier(work / "cls.onnx")
    (work / "cls.yaml").write_text("name: cls\nmodel: {onnx: cls.onnx}\ninput: {name: x, shape: [1, 3, 16, 16]}\n"
                                   "atc: {batch_sizes: [1]}\n")
    assert cli(capsys, "apply", "cls.yaml", "-o", "run")[0] == 0
    (work / "data").mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        rng.standard_normal((3, 16, 16)).astype(np.float32).tofile(work / "data" / f"item{k}.bin")
    return work / "run", work / "data"


EVAL = ["--batch-sizes", "1", "--backend", "onnxruntime", "--warmup", "0", "--min-iterations", "1",
        "--min-seconds", "0"]


def test_eval_output_rules(work, capsys, monkeypatch, evaluated):
    run, data = evaluated
    assert cli(capsys, "eval", run, "--data", data, *EVAL)[0] == 0
    assert marker_kind(run / "eval") == "eval" and (run / "eval" / "outputs" / "bs1").is_dir()
    first = (run / "eval" / "eval.json").stat().st_mtime_ns
    assert cli(capsys, "eval", run, "--data", data, *EVAL)[0] == 0  # its own: replaced
    assert (run / "eval" / "eval.json").stat().st_mtime_ns != first and temporaries(run) == [MARKER]
    mine = user_folder(work)
    before = snapshot(mine)
    with monkeypatch.context() as m:
        no_work(m)
        code, _, err = cli(capsys, "eval", run, "--data", data, "-o", mine, *EVAL)
        assert code == 2 and err == [f"graphopt: error: {mine} exists and is not a graphopt eval folder (no "
                                     ".graphopt marker); choose another -o or pass --force"]
        code, _, err = cli(capsys, "eval", run, "--data", data, "-o", run, "--force", *EVAL)  # the run itself
        assert code == 2 and err == [f"graphopt: error: {run} is an input of this command; graphopt will not "
                                     "replace it, even with --force; choose another -o"]
    assert snapshot(mine) == before and marker_kind(run) == "apply"
    assert cli(capsys, "eval", run, "--data", data, "-o", mine, "--force", *EVAL)[0] == 0
    assert marker_kind(mine) == "eval" and not (mine / "notes.txt").exists()


# ---------------------------------------------------------------------------------------------------------------
# export (one file) and data (a resumable folder)


@pytest.fixture
def cached_export(tmp_path, monkeypatch):
    """GRAPHOPT_CACHE holding an export of shiftvit_t_light (the TINY model's bytes under its cache key): graphopt
    export then copies it without running torch."""
    from graphopt.commands.export import cache_key

    cache = tmp_path / "cache"
    cache.mkdir()
    data = model_from_text(TINY).SerializeToString()
    (cache / f"shiftvit_t_light-{cache_key('shiftvit_t_light', {}, None, None, None, 0)}.onnx").write_bytes(data)
    monkeypatch.setenv("GRAPHOPT_CACHE", str(cache))
    return data


def test_export_never_overwrites_a_different_file(work, capsys, cached_export):
    code, out, _ = cli(capsys, "export", "shiftvit_t_light", "-o", "m.onnx")
    assert code == 0 and out == "m.onnx\n" and (work / "m.onnx").read_bytes() == cached_export
    before = snapshot(work / "m.onnx")
    code, _, err = cli(capsys, "export", "shiftvit_t_light", "-o", "m.onnx")  # the same export: left as it is
    assert code == 0 and err == ["m.onnx already holds this export; left as it was"]
    assert snapshot(work / "m.onnx") == before
    (work / "other.onnx").write_bytes(b"someone else's model")
    before = snapshot(work / "other.onnx")
    code, _, err = cli(capsys, "export", "shiftvit_t_light", "-o", "other.onnx")
    assert code == 2 and err == ["graphopt: error: other.onnx exists (and differs from what would be written); "
                                 "choose another -o or pass --force"]
    assert snapshot(work / "other.onnx") == before
    assert cli(capsys, "export", "shiftvit_t_light", "-o", "other.onnx", "--force")[0] == 0
    assert (work / "other.onnx").read_bytes() == cached_export
    code, _, err = cli(capsys, "export", "shiftvit_t_light", "-o", "/dev/null", "--force")
    assert code == 2 and err == ["graphopt: error: /dev/null is a device or special file, not a regular file; "
                                 "choose another -o"]
    (work / "models").mkdir()  # a folder: the file goes into it, as cp does
    assert cli(capsys, "export", "shiftvit_t_light", "-o", "models")[0] == 0
    assert (work / "models" / "shiftvit_t_light.onnx").read_bytes() == cached_export


def test_data_refuses_a_foreign_folder_and_resumes_its_own(work, capsys, tmp_path):
    from test_data_eval import foolbox_data

    (work / "img.yaml").write_text(textwrap.dedent("""
        model: {onnx: tiny.onnx}
        input: {name: x, shape: [1, 3, 16, 16]}
        """))
    args = ["data", "folder", foolbox_data(), "--recipe", "img.yaml", "--glob", "imagenet_*", "--limit", 2,
            "--jobs", 1]
    mine = user_folder(work)
    before = snapshot(mine)
    code, _, err = cli(capsys, *args, "-o", mine)
    assert code == 2 and err == [f"graphopt: error: -o {mine}: exists and is not a graphopt data folder (no "
                                 "data.json of graphopt data); choose a new or empty folder"]
    assert snapshot(mine) == before
    (work / "afile").write_text("x")
    code, _, err = cli(capsys, *args, "-o", "afile")
    assert code == 2 and err == ["graphopt: error: -o afile: exists and is a file, not a folder; choose another -o"]
    code, _, err = cli(capsys, *args, "-o", "/dev/null")
    assert code == 2 and "device or special file" in err[0]
    assert cli(capsys, *args, "-o", "d")[0] == 0
    code, out, _ = cli(capsys, *args, "-o", "d")
    assert code == 0 and "(0 new, 2 reused)" in out
