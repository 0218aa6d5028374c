"""Timing shared by the bench scripts (imports nothing heavy: scripts set thread variables first)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best(fns: dict[str, Callable[[], object]], n: int, rounds: int = 7) -> dict[str, float]:
    """Seconds per call of each function: the best of ``rounds`` rounds of ``n`` calls, the
    functions interleaved within each round (so a noisy moment hits all of them), each warmed
    by one call first."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times[k].append((time.perf_counter() - t) / n)
    return {k: min(v) for k, v in times.items()}
