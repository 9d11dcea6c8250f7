"""graphopt optimize: the knowledge library to a fixed point, each rewrite verified, the speed gate, the run
directory written by apply from recipe.yaml (which reproduces it), bad names as one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from graphopt.core.forms import split_model
from graphopt.core.ir import replace_uses
from graphopt.core.latency import Race, sign_test_p
from graphopt.core.pass_infra import Pass, PassResult
from graphopt.core.tolerance import Tolerance
from graphopt.testing import model_from_text

# A plugin with two library rewrites: one exact, one that breaks numerics (Relu -> Identity).
PLUGIN = '''
from graphopt.core.ir import replace_uses
from graphopt.core.pass_infra import Pass, PassResult, register_pass


@register_pass("opt_test_drop_identity")
class DropIdentity(Pass):
    """Identity(x) -> x."""

    library = True

    def run(self, graph):
        n = 0
        for node in [n for n in graph.nodes if n.op == "Identity" and n.outputs[0] not in graph.outputs]:
            replace_uses(node.outputs[0], node.inputs[0])
            node.outputs.clear()
            n += 1
        return PassResult(n > 0, {"rewritten": n})


@register_pass("opt_test_wrong")
class Wrong(Pass):
    """Relu -> Identity: not the same function."""

    library = True

    def run(self, graph):
        relus = [n for n in graph.nodes if n.op == "Relu"]
        for node in relus:
            node.op = "Identity"
        return PassResult(bool(relus), {"rewritten": len(relus)})
'''

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 8] x) => (float[N, 8] y) {
    a = Identity(x)
    b = Relu(a)
    c = Identity(b)
    y = Add(c, x)
}"""


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "opt_test_plugin.py").write_text(PLUGIN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    onnx.save(model_from_text(MODEL), tmp_path / "m.onnx")
    return env


def graphopt(env, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphopt", "--plugin", "opt_test_plugin", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_keeps_verified_rewrites_drops_broken_ones_and_reproduces_with_apply(env, tmp_path):
    # (fold_constants, in the library too, would drop the Identities first)
    only = ("--only", "opt_test_drop_identity,opt_test_wrong")
    proc = graphopt(env, "optimize", "m.onnx", "-o", "out", *only, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "recipe.yaml", "optimize.md", "optimize.json",
                                                "report.json", "report.md", "atc.sh", ".graphopt"}
    search = json.loads((out / "optimize.json").read_text())
    assert search["kept"] == ["opt_test_drop_identity"]
    decisions = {a["rewrite"]: a["decision"] for a in search["attempts"]}
    assert decisions == {"opt_test_drop_identity": "kept", "opt_test_wrong": "broke numerics"}
    assert "| 1 | opt_test_wrong | 1 |" in proc.stdout and "broke numerics" in proc.stdout
    model = onnx.load(out / "model.onnx")
    assert [n.op_type for n in model.graph.node] == ["Relu", "Add"]  # the Identities gone, the Relu kept
    # apply of the written recipe gives the same bytes
    proc = graphopt(env, "apply", out / "recipe.yaml", "-o", "again", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert "plugins:\n- opt_test_plugin" in (out / "recipe.yaml").read_text()
    # a second optimize into the same folder replaces its own run
    assert graphopt(env, "optimize", "m.onnx", "-o", "out", *only, cwd=tmp_path).returncode == 0


def test_only_and_skip_choose_and_unknown_names_are_one_line(env, tmp_path):
    proc = graphopt(env, "optimize", "m.onnx", "-o", "out", "--only", "opt_test_wrong", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    search = json.loads((tmp_path / "out" / "optimize.json").read_text())
    assert search["rewrites"] == ["opt_test_wrong"] and search["kept"] == []
    proc = graphopt(env, "optimize", "m.onnx", "-o", "out2", "--only", "opt_test_wrong,opt_test_drop_identity",
                    "--skip", "opt_test_wrong,opt_test_drop_identity", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads((tmp_path / "out2" / "optimize.json").read_text())["attempts"] == []
    for flag, name, hint in (("--only", "opt_test_drop_identiy", "did you mean: opt_test_drop_identity"),
                             ("--skip", "simplify", "not one of the library's rewrites")):
        proc = graphopt(env, "optimize", "m.onnx", flag, name, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and hint in proc.stderr and name in proc.stderr


class _DropIdentity(Pass):
    """Identity(x) -> x (not registered: the registry is what other test modules list)."""

    name = "unregistered_drop_identity"
    library = True

    def run(self, graph):
        n = 0
        for node in [n for n in graph.nodes if n.op == "Identity" and n.outputs[0] not in graph.outputs]:
            replace_uses(node.outputs[0], node.inputs[0])
            node.outputs.clear()
            n += 1
        return PassResult(n > 0, {"rewritten": n})


def test_the_speed_gate_keeps_only_what_the_race_calls_faster(monkeypatch):
    """The gate's decision, with the race's verdict forced: timing itself belongs in benchmarks."""
    import graphopt.commands.optimize as optimize

    feeds = [{"x": np.ones((2, 8), np.float32)}]
    split = split_model(model_from_text(MODEL))
    for faster, decision in ((False, "not faster"), (True, "kept")):
        monkeypatch.setattr(optimize, "race", lambda a, b, feed, rounds: Race(2.0, 1.0, 12, 15, 0.018, faster))
        kept, attempts, _ = optimize.optimize_model(split, [_DropIdentity], feeds, Tolerance(), gate="speed",
                                                 progress=lambda msg: None)
        assert [(a.hits, a.decision, a.latency_ms) for a in attempts] == [(2, decision, (2.0, 1.0))]
        assert kept == (["unregistered_drop_identity"] if faster else [])


def test_sign_test():
    assert sign_test_p(15, 15) == pytest.approx(2 ** -15)
    assert sign_test_p(0, 15) == 1.0
    assert sign_test_p(12, 15) == pytest.approx(0.0176, abs=1e-4)  # 12 of 15 wins: p < 0.05
    assert sign_test_p(11, 15) > 0.05


FAKE_ATC = """#!/usr/bin/env bash
# Records its arguments, then "compiles": the .om is a copy of the ONNX model.
printf '%s\\n' "$@" >> "$FAKE_ATC_LOG"
for a in "$@"; do case "$a" in --output=*) out="${a#--output=}";; --model=*) model="${a#--model=}";; esac; done
cp "$model" "$out.om"
"""

# A deterministic NPU: a model's mean compute time is its node count (ms), printed as ais_bench prints it.
FAKE_AIS_BENCH = '''
import argparse, os
import onnx
p = argparse.ArgumentParser()
for a in ("--model", "--input", "--output", "--output_dirname", "--outfmt", "--batchsize", "--warmup_count", "--loop"):
    p.add_argument(a)
a = p.parse_args()
os.makedirs(os.path.join(a.output, a.output_dirname), exist_ok=True)
t = float(len(onnx.load(a.model).graph.node))
print("[INFO] -----------------Performance Summary------------------")
print(f"[INFO] NPU_compute_time (ms): min = {t}, max = {t}, mean = {t}, median = {t}, percentile(99%) = {t}")
print(f"[INFO] throughput 1000*batchsize.mean(1)/NPU_compute_time.mean({t}): {1000 / t}")
'''


def test_the_speed_gate_times_the_npu_with_atc_and_ais_bench_when_installed(env, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "atc").write_text(FAKE_ATC)
    (tools / "atc").chmod(0o755)
    (tools / "fake_ais_bench.py").write_text(FAKE_AIS_BENCH)
    env = {**env, "PATH": f"{tools}{os.pathsep}{env['PATH']}", "FAKE_ATC_LOG": str(tmp_path / "atc.log"),
           "GRAPHOPT_AIS_BENCH": f"{sys.executable} {tools / 'fake_ais_bench.py'}"}
    only = ("--only", "opt_test_drop_identity")
    proc = graphopt(env, "optimize", "m.onnx", "-o", "out", *only, "--gate", "speed", cwd=tmp_path)
    assert proc.returncode == 2 and "--soc-version" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = graphopt(env, "optimize", "m.onnx", "-o", "out", *only, "--gate", "speed", "--soc-version", "Ascend310P3",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "the speed gate times the NPU (Ascend310P3)" in proc.stderr
    attempt, = json.loads((tmp_path / "out" / "optimize.json").read_text())["attempts"]
    # 4 nodes before, 2 after (the Identities gone): faster in all 7 rounds
    assert attempt["decision"] == "kept" and attempt["latency_ms"] == [4.0, 2.0]
    calls = (tmp_path / "atc.log").read_text().split("\n")
    assert calls.count("--soc_version=Ascend310P3") == 2 and "--framework=5" in calls
    proc = graphopt(env, "optimize", "m.onnx", "-o", "out2", *only, "--gate", "speed", "--gate-backend",
                    "onnxruntime", cwd=tmp_path)
    assert proc.returncode == 0 and "the speed gate times onnxruntime" in proc.stderr


def test_inputs_with_an_initializer_are_named_and_left_to_the_caller(env, tmp_path):
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8] x, float[8] w) => (float[N, 8] y) <float[8] w = {1, 1, 1, 1, 1, 1, 1, 1}> {
        a = Mul(w, w)
        y = Add(x, a)
    }""")
    onnx.save(model, tmp_path / "w.onnx")
    proc = graphopt(env, "optimize", "w.onnx", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 graph input(s) have an initializer (w): defaults a caller may override" in proc.stderr
    out = onnx.load(tmp_path / "out" / "model.onnx")
    assert [i.name for i in out.graph.input] == ["x", "w"] and "Mul" in [n.op_type for n in out.graph.node]
    assert json.loads((tmp_path / "out" / "optimize.json").read_text())["initializer_inputs"] == ["w"]
