"""A plain (non-editable) install maps passes/ and models/ under the graphopt namespace, never as top-level
``passes`` / ``models`` packages."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile


def test_wheel_installs_passes_and_models_under_graphopt(tmp_path, repo):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(repo)], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("graphopt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "graphopt/passes/softmax_transpose.py" in names
    assert "graphopt/models/lvvit.py" in names
    assert not [n for n in names if n.startswith(("passes/", "models/", "tests/"))]

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    # Run the installed copy (not the checkout) from an unrelated folder.
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import graphopt, graphopt.passes; from graphopt.core.pass_infra import all_passes; " \
           "print(graphopt.__file__); print(graphopt.passes.__file__); print(sorted(all_passes()))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert all(line.startswith(str(target)) for line in run.stdout.splitlines()[:2]), run.stdout
    assert "softmax_transpose" in run.stdout
