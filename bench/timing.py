"""Timing shared by the bench scripts (imports nothing heavy: scripts set thread variables first)."""

from __future__ import annotations

import os
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


def set_threads(n: int) -> None:
    """OpenBLAS, OpenMP, MKL, exprc and XLA to ``n`` threads (before numpy/exprc/jax are imported)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "EXPRC_NUM_THREADS"):
        os.environ[var] = str(n)
    if n == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()


def try_import(name: str):
    """The module, or None when it does not import (an optional system is then skipped)."""
    try:
        return __import__(name)
    except Exception:  # noqa: BLE001 - any failure means the system is not available
        return None
