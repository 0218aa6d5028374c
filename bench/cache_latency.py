"""Latency of the compile cache on a warm hit.

(a) First call of an already-cached 20-node function in a fresh Python process: time from
    before ``exprc.function`` to after the first call returns (imports excluded: ``exprc`` and
    the modules the C backend imports lazily are imported before the clock starts).  Target <= 30 ms.
(b) ``exprc.function`` repeated on the same graph in one process.  Target <= 1 ms.

Usage: ``PYTHONPATH=. python bench/cache_latency.py [--runs N] [--profile]``.  Uses
$EXPRC_CACHE_DIR when set, else a temporary cache folder (deleted afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import numpy as np
import exprc
import exprc.backends.c.kernel, exprc.backends.c.compile, exprc.cache  # lazy imports of the C backend, excluded from timing
from exprc import cache

x = exprc.vector("x"); y = exprc.vector("y")
e = x
for i in range(3):  # 20 nodes: x, y, 0.5, 3 x (constant, mul, exp, mul, add), mul, add
    e = exprc.exp(e * 0.5) + y * float(i + 1)
e = e + x * y
a = np.linspace(0, 1, 16); b = np.ones(16)
if sys.argv[1] == "profile":
    import cProfile, pstats
    pr = cProfile.Profile(); pr.enable()
t0 = time.perf_counter()
f = exprc.function([x, y], e, backend="c")
f(a, b)
t1 = time.perf_counter()
if sys.argv[1] == "profile":
    pr.disable(); pstats.Stats(pr, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
n = 200
t2 = time.perf_counter()
for _ in range(n):
    exprc.function([x, y], e, backend="c")
t3 = time.perf_counter()
print(json.dumps({"first_ms": (t1 - t0) * 1e3, "repeat_ms": (t3 - t2) / n * 1e3,
                  "compiles": cache.STATS["compiles"], "nodes": len(exprc.graph.toposort([e]))}))
"""


def child(mode: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=True)
    if mode == "profile":
        print(out.stderr, file=sys.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="fresh processes to time (median reported)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one warm first call")
    args = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="exprc-bench-cache-") as tmp:
        env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.setdefault("EXPRC_CACHE_DIR", tmp)
        cold = child("run", env)  # populates the cache (compiles once unless already cached)
        runs = [child("run", env) for _ in range(args.runs)]
        if args.profile:
            child("profile", env)
    first = statistics.median(r["first_ms"] for r in runs)
    repeat = statistics.median(r["repeat_ms"] for r in runs)
    assert all(r["compiles"] == 0 for r in runs), "a warm run compiled: the cache missed"
    print(f"graph: {cold['nodes']} nodes; cold run compiled {cold['compiles']} time(s), first call {cold['first_ms']:.1f} ms")
    print(f"(a) warm first call in a fresh process: median {first:.2f} ms over {len(runs)} processes "
          f"(min {min(r['first_ms'] for r in runs):.2f}, max {max(r['first_ms'] for r in runs):.2f}); target <= 30 ms")
    print(f"(b) exprc.function repeated in one process: median {repeat * 1e3:.1f} us; target <= 1 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
