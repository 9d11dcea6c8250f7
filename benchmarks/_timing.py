"""Interleaved onnxruntime timing shared by the latency benchmarks."""
from __future__ import annotations

import time

# Before each timed run. onnxruntime's worker threads spin for a while after a run; on 2 cores the other session's
# spinning threads slowed whichever session ran next (ShiftViT's optimized graph: median 65 ms, 52 ms with the
# pause), so each run starts once they have gone idle.
PAUSE_S = 0.1


def interleaved(sessions: dict, feeds: dict, reps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per run of each session (name -> session, fed ``feeds[name]``): ``warmup`` untimed runs each, then
    ``reps`` rounds, the order rotated every round so that drift hits all alike."""
    names = list(sessions)
    for n in names:
        for _ in range(warmup):
            sessions[n].run(None, feeds[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            sessions[n].run(None, feeds[n])
            times[n].append(time.perf_counter() - t0)
    return times
