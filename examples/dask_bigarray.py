"""Out-of-core with exprc on dask: E2 and logsumexp over 2e9 float64 elements per input.

    python examples/dask_bigarray.py                       # 2e9 elements: 16 GB per input, 48 GB in all
    python examples/dask_bigarray.py --size 1e6 --chunk 1e5

The three inputs are never in memory: each chunk of 1e7 elements (80 MB) is drawn when a task needs it
(uniform in [-3, 3), seeded by the chunk's index, so a chunk is the same wherever and whenever it is
drawn), runs through one fused exprc kernel and is dropped.  The results are reductions --
``sum(exp(-a*a)*sin(b) + log1p(c*c))`` (bench E2, summed) and ``logsumexp(a)`` -- computed as tree
reductions of per-chunk partials, so memory stays at a few chunks per thread whatever the size.

Two checks: the first chunks are recomputed with NumPy, chunk by chunk (to 1e-12), and the full results
are compared with their expected values for uniform inputs (within 10 standard errors):
E[E2] = E[exp(-a^2)] E[sin b] + E[log1p(c^2)] = 0 + (3 ln 10 - 6 + 2 atan 3) / 3, and
logsumexp(a) - ln n -> ln E[exp(a)] = ln(sinh(3) / 3).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import dask
import dask.array as da

import exprc
import exprc.dask


def draw(block_info: Any = None, seed: int = 0) -> np.ndarray:
    """One chunk of an input: uniform in [-3, 3), from a generator seeded by (input, chunk index)."""
    info = block_info[None]
    lo, hi = info["array-location"][0]
    return np.random.default_rng([seed, info["chunk-location"][0]]).uniform(-3.0, 3.0, hi - lo)


def lazy_inputs(n: int, chunk: int) -> list[da.Array]:
    """Three lazy inputs of ``n`` elements: nothing is drawn until a task needs a chunk."""
    chunks = da.core.normalize_chunks(chunk, (n,), dtype=np.float64)
    return [da.map_blocks(draw, chunks=chunks, dtype=np.float64, meta=np.empty(0), seed=s) for s in range(3)]


def build() -> exprc.dask.DaskFunction:
    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    e2 = exprc.exp(-a * a) * exprc.sin(b) + exprc.log1p(c * c)
    return exprc.dask.function([a, b, c], [exprc.sum(e2), exprc.logsumexp(a)])


def numpy_chunks(xs: list[da.Array], nblocks: int) -> tuple[float, float]:
    """E2's sum and a's logsumexp over the first ``nblocks`` chunks, in NumPy, one chunk at a time."""
    total, m, s = 0.0, -np.inf, 0.0
    for i in range(nblocks):
        a, b, c = (x.blocks[i].compute() for x in xs)
        total += float(np.sum(np.exp(-a * a) * np.sin(b) + np.log1p(c * c)))
        mi = float(a.max())
        s = s * math.exp(m - max(m, mi)) + float(np.sum(np.exp(a - max(m, mi))))
        m = max(m, mi)
    return total, m + math.log(s)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="E2 and logsumexp over 2e9 float64 elements with exprc on dask")
    p.add_argument("--size", type=float, default=2e9, help="elements per input (default 2e9)")
    p.add_argument("--chunk", type=float, default=1e7, help="elements per chunk (default 1e7: 80 MB)")
    p.add_argument("--threads", type=int, default=None, help="dask threads (default: one per core)")
    args = p.parse_args(argv)
    n, chunk = int(args.size), int(args.chunk)
    xs = lazy_inputs(n, chunk)
    f = build()

    # 1. the first chunks against NumPy
    k = min(2, xs[0].numblocks[0])
    m_sub = sum(xs[0].chunks[0][:k])
    sub = dask.compute(*f(*(x[:m_sub] for x in xs)), scheduler="threads", num_workers=args.threads)
    ref = numpy_chunks(xs, k)
    np.testing.assert_allclose([float(v) for v in sub], ref, rtol=1e-12)

    # 2. the whole arrays, out of core
    t0 = time.perf_counter()
    total, lse = (float(v) for v in dask.compute(*f(*xs), scheduler="threads", num_workers=args.threads))
    seconds = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # (Linux: KiB)

    mean_e2 = (3 * math.log(10) - 6 + 2 * math.atan(3)) / 3
    lse_ref = math.log(n) + math.log(math.sinh(3) / 3)
    tol = 10 / math.sqrt(n)  # ten standard errors (both spreads are about 1)
    assert abs(total / n - mean_e2) < tol, (total / n, mean_e2)
    assert abs(lse - lse_ref) < tol, (lse, lse_ref)
    gb = 3 * n * 8 / 1e9
    print(f"{n:.3g} elements per input ({gb:.1f} GB of inputs, {xs[0].numblocks[0]} chunks of {chunk:.3g}): "
          f"{seconds:.1f} s, peak RSS {rss_gb:.2f} GB")
    print(f"  sum(E2)      = {total!r}  (mean {total / n:.6f}, expected {mean_e2:.6f})")
    print(f"  logsumexp(a) = {lse!r}  (expected {lse_ref:.6f})")
    print(f"  first {k} chunks agree with NumPy to 1e-12")
    return {"n": n, "sum_e2": total, "logsumexp": lse, "seconds": seconds, "peak_rss_gb": rss_gb}


if __name__ == "__main__":
    main()
