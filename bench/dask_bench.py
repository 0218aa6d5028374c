#!/usr/bin/env python
"""exprc on dask against dask+NumPy and dask+numexpr: E2 and E4 at 1e9 elements, 1 and 2 workers, one run.

    python bench/dask_bench.py                          # 1e9 float64 elements, chunks of 1e7, workers 1,2
    python bench/dask_bench.py --quick                  # smoke run: 2e6 elements, chunks of 2e5
    python bench/dask_bench.py --size 1e8 --chunk 5e6 --workers 1,2

Every system runs on the same ``distributed.LocalCluster`` (processes, one thread per worker, loopback),
reads the same lazily generated chunks and computes the whole result:

* E2 ``exp(-a*a)*sin(b) + log1p(c*c)`` (bench/run.py's expression) is elementwise: every output chunk is
  computed and handed to a sink that drops it (``dask.array.store``), so nothing of 8 GB is kept;
* E4 ``sum(exp(a - max(a)))`` is a reduction: the scalar comes back.

Systems: ``exprc`` (``exprc.dask.function``: one fused kernel per chunk; E4 in one pass, its max and
shifted sum combined up the tree), ``dask+numpy`` (the expression on dask arrays: dask fuses the
ufuncs into one task per chunk, NumPy makes temporaries; E4 in two passes), ``dask+numexpr`` (numexpr
on each chunk through ``map_blocks``, one thread; E4 as dask's max then numexpr's per-chunk sums).
``inputs`` is the generation alone (the same sink), the floor under every figure.  Each system is warmed
up on a small array first (kernels compiled on the workers, numexpr imported); then one timed compute
per cell, systems interleaved.  Results are checked against each other (E4: rtol 1e-9; E2 at the
warm-up size: rtol 1e-12 against NumPy).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dask.array as da
import distributed

import exprc
import exprc.dask as edask
from bench.run import EXPRS

SYSTEMS = ("exprc", "dask+numpy", "dask+numexpr")
NE_E2, NE_E4 = EXPRS["E2"].ne, EXPRS["E4"].ne  # (plain strings: what the numexpr tasks carry)


def _gen(block_info: Any = None, seed: int = 0) -> np.ndarray:
    """A chunk of inputs, cheap and deterministic: 4099 uniform values in [-3, 3) seeded by the chunk's
    index, repeated to the chunk's length (a memcpy: generation stays small next to the math)."""
    info = block_info[None]
    lo, hi = info["array-location"][0]
    base = np.random.default_rng([seed, info["chunk-location"][0]]).uniform(-3.0, 3.0, 4099)
    return np.resize(base, hi - lo)


def inputs(n: int, chunk: int) -> list[da.Array]:
    chunks = da.core.normalize_chunks(chunk, (n,), dtype=np.float64)
    return [da.map_blocks(_gen, chunks=chunks, dtype=np.float64, meta=np.empty(0), seed=s) for s in range(3)]


class Sink:
    """A ``store`` target that drops what it is given (each task computes its chunk, then forgets it)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _ne_e2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    import numexpr

    return numexpr.evaluate(NE_E2, local_dict={"a": a, "b": b, "c": c})


def _ne_e4_part(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    import numexpr

    return np.atleast_1d(numexpr.evaluate(NE_E4, local_dict={"a": a, "m": m}))


def build(system: str, key: str, xs: list[da.Array]) -> Any:
    """The lazy result of expression ``key`` on ``xs`` for one system (an array to store, or a scalar)."""
    ex = EXPRS[key]
    if system == "exprc":
        vs = [exprc.vector(n) for n in "abc"[:ex.nin]]
        return edask.function(vs, ex.fn(exprc, *vs))(*xs[:ex.nin])
    if system == "dask+numpy":
        return ex.fn(da, *xs[:ex.nin])
    if system == "dask+numexpr":
        if key == "E2":
            return da.map_blocks(_ne_e2, *xs, dtype=np.float64)
        a = xs[0]
        parts = a.map_blocks(_ne_e4_part, a.max(), chunks=((1,) * a.numblocks[0],), dtype=np.float64)
        return parts.sum()
    raise ValueError(system)


def run(client: distributed.Client, system: str, key: str, xs: list[da.Array]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    if system == "inputs":
        da.store(xs, [Sink()] * len(xs), lock=False, compute=True)
        return time.perf_counter() - t0, None
    res = build(system, key, xs)
    if key == "E2":
        da.store(res, Sink(), lock=False, compute=True)
        value = None
    else:
        value = float(res.compute())
    return time.perf_counter() - t0, value


def check(client: distributed.Client, n: int, chunk: int) -> None:
    """Small-size agreement (also the warm-up: kernels compile on the workers, numexpr loads)."""
    xs = inputs(n, chunk)
    ref = {k: build("dask+numpy", k, xs).compute() for k in ("E2", "E4")}
    for system in SYSTEMS[::2]:
        for k in ("E2", "E4"):
            got = build(system, k, xs).compute()
            np.testing.assert_allclose(got, ref[k], rtol=1e-12 if system == "exprc" else 1e-9, atol=0,
                                       err_msg=f"{system} {k}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=float, default=1e9, help="elements per input (default 1e9)")
    p.add_argument("--chunk", type=float, default=1e7, help="elements per chunk (default 1e7: 80 MB)")
    p.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    p.add_argument("--quick", action="store_true", help="2e6 elements, chunks of 2e5")
    p.add_argument("--json", help="where to write the results (default bench/results/dask-<timestamp>.json)")
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    n, chunk = (int(2e6), int(2e5)) if args.quick else (int(args.size), int(args.chunk))
    workers = [int(w) for w in args.workers.split(",")]
    cache = os.environ.get("EXPRC_CACHE_DIR") or tempfile.mkdtemp(prefix="exprc-dask-bench-")
    env = {"EXPRC_CACHE_DIR": cache, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
           "NUMEXPR_MAX_THREADS": "1"}
    print(f"# {n:.3g} float64 elements per input, chunks of {chunk:.3g} ({-(-n // chunk)} chunks), "
          f"workers {workers}, cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows: dict[tuple[str, int], dict[str, float]] = {}
    values: dict[tuple[str, int], dict[str, float]] = {}
    for w in workers:
        with distributed.LocalCluster(n_workers=w, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None, env=env) as lc, distributed.Client(lc) as client:
            client.wait_for_workers(w)
            check(client, min(n, 400_000), min(chunk, 40_000))
            xs = inputs(n, chunk)
            for key in ("E2", "E4"):
                order = ["inputs", *SYSTEMS] if key == "E2" else list(SYSTEMS)
                for system in order:
                    t, v = run(client, system, key, xs)
                    rows.setdefault((key, w), {})[system] = t
                    if v is not None:
                        values.setdefault((key, w), {})[system] = v
                    print(f"  {key} workers={w} {system:13s} {t:8.2f} s", file=sys.stderr)
    for (key, w), vals in values.items():
        ref = vals["dask+numpy"]
        for system, v in vals.items():
            if abs(v - ref) > 1e-9 * abs(ref):
                print(f"MISMATCH {key} workers={w} {system}: {v!r} vs dask+numpy {ref!r}")
    head = (f"{'expr':4s} {'workers':>7s} {'inputs':>8s} {'exprc':>8s} {'dask+np':>8s} {'dask+ne':>8s} "
            f"{'np/exprc':>9s} {'ne/exprc':>9s}")
    print(f"dask bench: {n:.3g} float64 elements, chunks of {chunk:.3g}, times in seconds (one compute each)")
    print(head)
    for (key, w), r in rows.items():
        print(f"{key:4s} {w:7d} {r.get('inputs', float('nan')):8.2f} {r['exprc']:8.2f} {r['dask+numpy']:8.2f} "
              f"{r['dask+numexpr']:8.2f} {r['dask+numpy'] / r['exprc']:9.2f} {r['dask+numexpr'] / r['exprc']:9.2f}")
    if len(workers) > 1:
        w0, w1 = workers[0], workers[-1]
        print(f"scaling {w0} -> {w1} workers (time at {w0} / time at {w1}):")
        for key in ("E2", "E4"):
            parts = [f"{s} {rows[(key, w0)][s] / rows[(key, w1)][s]:.2f}x" for s in SYSTEMS]
            print(f"  {key}: " + ", ".join(parts))
    if not args.no_json:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(args.json) if args.json else HERE / "results" / f"dask-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"size": n, "chunk": chunk, "workers": workers, "cores": os.cpu_count(),
                                    "times": {f"{k}/{w}": r for (k, w), r in rows.items()},
                                    "values": {f"{k}/{w}": v for (k, w), v in values.items()}}, indent=1))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
