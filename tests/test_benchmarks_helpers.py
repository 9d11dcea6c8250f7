"""Benchmark helpers: the latency benchmarks' interleaved timing (benchmarks/_timing.py: warm-up, rotated order, a
pause before every timed run) and apply_vs_tools' plot."""
from __future__ import annotations

from benchmarks import _timing


class FakeSession:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, outputs, feed):
        assert feed == {"x": self.name}
        self.log.append(self.name)


def test_interleaved_warms_up_rotates_and_pauses_before_each_timed_run(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(_timing.time, "sleep", lambda s: log.append(f"sleep {s}"))
    sessions = {n: FakeSession(n, log) for n in ("a", "b", "c")}
    times = _timing.interleaved(sessions, {n: {"x": n} for n in sessions}, reps=3, warmup=2)
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]
    pause = f"sleep {_timing.PAUSE_S}"
    assert log[6:] == [pause, "a", pause, "b", pause, "c",
                       pause, "b", pause, "c", pause, "a",
                       pause, "c", pause, "a", pause, "b"]
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_apply_vs_tools_plot_draws_every_recipe_even_with_a_tool_missing(tmp_path):
    from benchmarks.apply_vs_tools import plot

    rows = [{"recipe": "a", "model_mb": 100.0, "floor_s": 1.0, "graphopt_s": 0.8, "graphopt_verify_s": 1.2,
             "graphopt_warm_s": 0.7, "onnxsim_s": 4.0, "onnxslim_s": None, "floor_rss_mb": 300, "graphopt_rss_mb": 130},
            {"recipe": "b", "model_mb": 50.0, "floor_s": 0.5, "graphopt_s": 1.5}]
    out = tmp_path / "figs" / "apply_vs_tools.png"
    plot(rows, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_a_baseline_checkout_is_overlaid_never_written_to(tmp_path):
    """``--baseline``: a checkout whose passes/ and models/ sit beside graphopt/ (installed under its namespace)
    is run from an overlay of links in the benchmark's own folder; one with graphopt/passes runs as it is."""
    import pytest

    from benchmarks.apply_vs_tools import _baseline_tree

    old = tmp_path / "old"
    for d in ("graphopt", "passes", "models", "recipes"):
        (old / d).mkdir(parents=True)
    (old / "graphopt" / "__init__.py").write_text("")
    before = sorted(p.relative_to(old) for p in old.rglob("*"))
    overlay = _baseline_tree(old, tmp_path / "work")
    assert overlay != old and sorted(p.relative_to(old) for p in old.rglob("*")) == before
    assert (overlay / "graphopt" / "passes").resolve() == old / "passes"
    assert (overlay / "graphopt" / "__init__.py").resolve() == old / "graphopt" / "__init__.py"
    assert (overlay / "recipes").resolve() == old / "recipes"
    new = tmp_path / "new"
    for d in ("graphopt/passes", "recipes"):
        (new / d).mkdir(parents=True)
    assert _baseline_tree(new, tmp_path / "work2") == new.resolve()
    with pytest.raises(SystemExit, match="not a graphopt checkout"):
        _baseline_tree(tmp_path / "work", tmp_path / "work3")


def test_children_cache_bytecode_outside_the_checkouts(tmp_path, monkeypatch):
    """A host with ``PYTHONDONTWRITEBYTECODE`` set would make graphopt's children compile graphopt from source in
    every timed run while onnx loads pip's bytecode: the children drop it and cache bytecode in the benchmark's own
    folder, and a module imported in one child loads from that cache in the next."""
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.apply_vs_tools import _child_env

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = _child_env(tmp_path / "pycache")
    assert "PYTHONDONTWRITEBYTECODE" not in env and env["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pycache")
    src = tmp_path / "src"
    src.mkdir()
    (src / "probe_mod.py").write_text("X = 1\n")
    code = "import probe_mod, sys; print(probe_mod.__cached__)"
    cached = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(src)}, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert cached.startswith(str(tmp_path / "pycache")) and (tmp_path / "pycache").exists()
    assert not (src / "__pycache__").exists() and Path(cached).is_file()



def test_rounds_order_the_tasks_so_each_follows_each_other_equally_often():
    """A Williams design: over a cycle of rounds every ordered pair of tasks is adjacent equally often (a fixed order
    charged one task for its neighbour's large write), for even and odd counts of tasks."""
    from collections import Counter

    from benchmarks.apply_vs_tools import _round_order

    for n in range(2, 9):
        tasks = [f"t{i}" for i in range(n)]
        cycle = n if n % 2 == 0 else 2 * n
        rounds = [_round_order(tasks, k) for k in range(cycle)]
        assert all(sorted(r) == tasks for r in rounds) and rounds[0][0] == "t0"
        pairs = Counter((r[i - 1], r[i]) for r in rounds for i in range(1, n))
        assert len(pairs) == n * (n - 1) and len(set(pairs.values())) == 1, (n, pairs)
        assert _round_order(tasks, cycle) == rounds[0]
    assert _round_order(["floor"], 3) == ["floor"] and _round_order([], 1) == []
