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
    assert "fold_constants [library]:" in proc.stdout
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
    assert lines[1].startswith("graphopt: error: r.yaml: passes[0].pass: unknown pass 'broken' (graphopt passes lists ")
    assert lines[1].endswith("; plugin 'broken' (broken_plugin_passes:BrokenPass) failed to load: ImportError: "
                             "needs libfoo 2.0")


PLUGIN = '''
from dataclasses import field

from graphopt.core.pass_infra import Pass, PassResult, register_pass


@register_pass("drop_identity_plugin")
class DropIdentity(Pass):
    """Bypass every Identity whose output is not a graph output."""

    only_named: str = field(default="", metadata={"help": "only the Identity of this name"})

    def run(self, graph):
        n = 0
        for node in list(graph.nodes):
            if node.op == "Identity" and node.outputs[0] not in graph.outputs and node.name.startswith(self.only_named):
                for consumer in list(node.outputs[0].outputs):
                    consumer.inputs[consumer.inputs.index(node.outputs[0])] = node.inputs[0]
                node.outputs.clear()
                n += 1
        return PassResult(n > 0, {"bypassed": n})
'''

IDENTITY_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
    a = Identity(x)
    y = Relu(a)
}
"""


@pytest.fixture
def plugin_module(tmp_path) -> dict[str, str]:
    """A module on PYTHONPATH (not installed: no entry point) whose import registers a pass."""
    site = tmp_path / "plugsite"
    site.mkdir()
    (site / "my_plugin_passes.py").write_text(PLUGIN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_plugin_flag_registers_the_module_passes(plugin_module):
    proc = graphopt(plugin_module, "--plugin", "my_plugin_passes", "passes")
    assert proc.returncode == 0, proc.stderr
    assert "drop_identity_plugin: Bypass every Identity" in proc.stdout
    assert "only_named: str (default '')" in proc.stdout
    # after the subcommand too, as -v
    proc = graphopt(plugin_module, "passes", "--plugin", "my_plugin_passes")
    assert proc.returncode == 0 and "drop_identity_plugin:" in proc.stdout
    assert "drop_identity_plugin:" not in graphopt(plugin_module, "passes").stdout


def test_plugin_flag_runs_the_pass_in_a_recipe(plugin_module, tmp_path):
    import onnx

    from graphopt.testing import model_from_text

    onnx.save(model_from_text(IDENTITY_MODEL), tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text("model: {onnx: m.onnx}\npasses: [drop_identity_plugin]\n")
    proc = graphopt(plugin_module, "--plugin", "my_plugin_passes", "apply", "r.yaml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = onnx.load(tmp_path / "out" / "model.onnx")
    assert [n.op_type for n in out.graph.node] == ["Relu"]


def test_a_plugin_that_cannot_be_imported_is_one_line_exit_2(plugin_module):
    proc = graphopt(plugin_module, "--plugin", "no_such_plugin_mod", "passes")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["graphopt: error: plugin 'no_such_plugin_mod' failed to load: "
                                        "ModuleNotFoundError: No module named 'no_such_plugin_mod'"]
    assert proc.stdout == ""


def test_a_recipe_loads_only_the_built_in_passes_it_names(broken_plugin, tmp_path):
    """Parsing a recipe imports the modules of the built-in passes it names, not the other built-ins nor the
    entry points (no warning about the broken one); listing the passes then loads them all, and the knowledge
    library keeps its order, built-in modules by name, whatever was loaded first."""
    recipe = tmp_path / "r.yaml"
    (tmp_path / "m.onnx").write_bytes(b"")  # parsing checks that it exists; nothing reads it
    recipe.write_text("model: {onnx: m.onnx}\npasses:\n  - pass: softmax_transpose\n")
    code = textwrap.dedent(f"""
        import sys
        from graphopt.commands.recipe import load_recipe
        from graphopt.core.pass_infra import all_passes, library_passes
        load_recipe({str(recipe)!r})
        loaded = sorted(m for m in sys.modules if m.startswith("graphopt.passes."))
        print(",".join(loaded))
        everything = all_passes()
        library = list(library_passes())
        assert library == sorted(library), library
        assert {{"softmax_transpose", "fold_constants", "merge_casts"}} <= set(everything)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=broken_plugin,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, last = proc.stdout.strip().splitlines()
    assert first.split(",") == ["graphopt.passes.softmax_transpose"] and last == "ok"
    assert proc.stderr.count("failed to load") == 1  # the broken entry point, once all_passes() loads it
