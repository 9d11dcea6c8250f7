"""Ctrl-C exits 130 every time, cleanly: ``graphopt apply recipes/shiftvit.yaml`` interrupted (SIGINT) at several
points, the first passes among them, when the input model's reference outputs and a pass's outputs are being
computed by onnxruntime in background threads. No traceback, no "terminate called" (a crash in onnxruntime's
native code as the interpreter exits), no partial output and no temporary folder; an earlier run at the same -o
is left byte for byte as it was.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "shiftvit.yaml"
INTERRUPTED = "graphopt: interrupted; no partial output was left"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> tuple[Path, float]:
    """Two complete runs: the first exports ShiftViT into the cache (the first time) and caches its shapes; the
    second, kept as ``previous`` in the parent folder returned, is timed: a warm run is what the interrupted ones
    are, and the points in time they are interrupted at are shares of it (a fixed 3 s fell after the end once
    apply got faster)."""
    parent = tmp_path_factory.mktemp("interrupt")
    for k in range(2):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "graphopt", "apply", RECIPE, "-o", parent / "previous"],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
    return parent, time.perf_counter() - t0


def interrupt(out: Path, *, after: float | None = None, on_line: str | None = None) -> tuple[int, str, str]:
    """Start ``graphopt apply`` to ``out`` and send SIGINT ``after`` seconds, or as soon as stderr shows a line
    starting with ``on_line``; (exit code, stdout, stderr)."""
    # SIGINT as a terminal delivers it: a test run started in the background of a non-interactive shell inherits
    # SIGINT ignored, which Python (rightly) keeps, so the child resets it to the default before it starts.
    proc = subprocess.Popen([sys.executable, "-m", "graphopt", "apply", str(RECIPE), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err: list[str] = []
    seen = threading.Event()

    def read_stderr() -> None:  # stderr read as it comes, so the signal can follow a line
        for line in proc.stderr:
            err.append(line)
            if on_line is not None and line.startswith(on_line):
                seen.set()

    reader = threading.Thread(target=read_stderr)
    reader.start()
    if on_line is not None:
        assert seen.wait(300), "".join(err)
    else:
        time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out_text = proc.stdout.read()
    code = proc.wait(timeout=120)
    reader.join(timeout=60)
    return code, out_text, "".join(err)


@pytest.mark.parametrize("when", [
    {"share": 0.1},  # still importing, or loading the cached export
    {"share": 0.35},
    {"share": 0.7},
    {"on_line": "[1/4] replace_shift_scatter ..."},  # the reference outputs are being computed beside it
    {"on_line": "[2/4] fold_constants ..."},  # the first pass's outputs are being computed beside it
    {"on_line": "[4/4] insert_fusion_breaker: applied"},  # its outputs being computed, then the final comparison
], ids=["10%", "35%", "70%", "first-pass", "second-pass", "last-pass-done"])
def test_ctrl_c_exits_130_cleanly(warm, when, request):
    parent, seconds = warm
    out = parent / f"out-{request.node.callspec.id}"  # each its own: a run that finished leaves its output
    share = when.get("share")
    code, stdout, stderr = interrupt(out, on_line=when.get("on_line"), after=None if share is None else share * seconds)
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
    leftovers = sorted(p.name for p in parent.iterdir() if p.name != "previous" and not p.name.startswith("out-"))
    assert leftovers == [], leftovers  # no temporary folder beside the output
    if code == 0:  # it finished before the signal arrived (only near the end of the run): the output is whole
        assert "[4/4]" in when.get("on_line", "") or share >= 0.7, (when, seconds)
        assert "wrote" in stdout and (out / ".graphopt").is_file() and (out / "model.onnx").is_file()
        return
    assert code == 130, (code, stderr)
    assert stderr.splitlines()[-1] == INTERRUPTED
    assert not out.exists()


def test_ctrl_c_leaves_the_previous_run(warm):
    parent, _ = warm
    before = files(parent / "previous")
    code, _, stderr = interrupt(parent / "previous", on_line="[1/4] replace_shift_scatter ...")
    assert code == 130 and "Traceback" not in stderr and "terminate called" not in stderr, stderr
    assert files(parent / "previous") == before
    assert sorted(p.name for p in parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("wrapped", [True, False], ids=["from a Ctrl-C", "another error"])
def test_a_ctrl_c_a_library_wraps_is_still_one(monkeypatch, capsys, wrapped):
    """A Ctrl-C that lands while onnxruntime imports its C++ part comes out as an ImportError raised from the
    KeyboardInterrupt (seen once in the earliest case above): still 130 and the one line, no traceback. An ImportError
    of any other cause is no interruption."""
    import graphopt.commands.cli as cli

    def importing(verbose):
        try:
            raise KeyboardInterrupt if wrapped else OSError("libonnxruntime.so: cannot open shared object file")
        except BaseException as e:
            raise ImportError("onnxruntime failed to import its C++ part") from e

    monkeypatch.setattr(cli, "quiet_libraries", importing)
    if not wrapped:
        with pytest.raises(ImportError):
            cli.main(["passes"])
        return
    assert cli.main(["passes"]) == 130
    assert capsys.readouterr().err.splitlines() == [INTERRUPTED]
