"""Third-party passes through the ``graphopt.passes`` entry-point group: a plugin whose import fails costs its own
passes and one warning line, never a traceback, and every other command keeps working."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def broken_plugin(tmp_path) -> dict[str, str]:
    """An installed distribution (its metadata on PYTHONPATH) whose entry point names a module that raises."""
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[graphopt.passes]\nbroken = broken_plugin_passes:BrokenPass\n")
    (site / "broken_plugin_passes.py").write_text("raise ImportError('needs libfoo 2.0')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


def graphopt(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


WARNING = ("graphopt: warning: plugin 'broken' (broken_plugin_passes:BrokenPass) failed to load: ImportError: "
           "needs libfoo 2.0; its passes are unavailable")


def test_a_broken_plugin_does_not_take_the_passes_command_down(broken_plugin):
    proc = graphopt(broken_plugin, "passes")
    assert proc.returncode == 0, proc.stderr
    assert "fold_constants:" in proc.stdout
    assert proc.stderr.splitlines() == [WARNING]


def test_a_recipe_naming_a_pass_of_a_broken_plugin_says_why(broken_plugin, tmp_path):
    import onnx

    from graphopt.testing import model_from_text
    from graphs import TINY

    onnx.save(model_from_text(TINY), tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""
        model: {onnx: m.onnx}
        passes: [broken]
        """))
    proc = graphopt(broken_plugin, "apply", "r.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == WARNING and len(lines) == 2
    assert lines[1].startswith("graphopt: error: r.yaml: passes[0].pass: unknown pass 'broken' (valid: ")
    assert lines[1].endswith("; plugin 'broken' (broken_plugin_passes:BrokenPass) failed to load: ImportError: "
                             "needs libfoo 2.0")
