"""onnxruntime work run in background threads, and the one place that stops it all.

The pipeline computes the input model's outputs beside the first pass and each pass's outputs beside the next
pass (``graphopt.core.pass_verification``): onnxruntime releases the GIL, so a session runs while Python rewrites
the graph. On Ctrl-C the main thread unwinds while such a thread may still be inside onnxruntime: an interpreter
that exits then crashes in native code ("terminate called without an active exception", a segfault) instead of
exiting 130. ``stop_background`` (the CLI calls it on Ctrl-C and on errors) asks every live one to stop and waits.
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable

__all__ = ["Background", "stop_background"]


class Background:
    """``fn(*args, run_options)`` run in a daemon thread named ``name``; ``result()`` waits and returns its value or
    raises its exception. ``run_options`` is an onnxruntime ``RunOptions`` for ``fn`` to run with: ``cancel`` sets
    its ``terminate``, which ends a run in flight (and which ``fn`` checks before starting one).

    ``seconds``: how long ``fn`` took once it started (waiting for ``after`` left out); set when it is done.

    ``after``: a computation this one starts after (whatever its outcome). Two onnxruntime runs at once share the
    cores their thread pools each expect to have to themselves, and their spinning workers slow both down: chained
    this way, one session runs at a time while Python goes on with the passes."""

    _live: "weakref.WeakSet[Background]" = weakref.WeakSet()

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any, after: Background | None = None) -> None:
        import onnxruntime as ort

        self._outcome: tuple[bool, Any] | None = None
        self._run_options = ort.RunOptions()
        self.seconds = 0.0

        def target() -> None:
            try:
                if after is not None:
                    after.join(None)
                if self._run_options.terminate:  # cancelled while it waited
                    raise KeyboardInterrupt
                start = time.perf_counter()
                try:
                    self._outcome = (True, fn(*args, self._run_options))
                finally:
                    self.seconds = time.perf_counter() - start
            except BaseException as e:  # noqa: BLE001 - handed to the caller of result()
                self._outcome = (False, e)

        self._thread = threading.Thread(target=target, name=name, daemon=True)
        Background._live.add(self)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        self._run_options.terminate = True

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None) -> None:
        self._thread.join(timeout)


def stop_background(timeout: float) -> bool:
    """Cancel every background computation still running and wait up to ``timeout`` seconds in all for them to
    end; True when none is left running (one that is still building its onnxruntime session cannot be stopped
    until the session is built)."""
    live = [b for b in list(Background._live) if b.alive()]
    for b in live:
        b.cancel()
    deadline = time.monotonic() + timeout
    for b in live:
        b.join(max(0.0, deadline - time.monotonic()))
    return not any(b.alive() for b in live)
