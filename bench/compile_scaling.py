"""Compile time against graph size (issue 17, item 3): is it linear?

    python bench/compile_scaling.py            # 100, 1k and 10k nodes, two graph shapes, the unrolled LSTM
    python bench/compile_scaling.py --quick    # 100 and 1k nodes, the LSTM at 5 steps

Each compile runs in a fresh process: *cold* on an empty ``EXPRC_CACHE_DIR``, then *warm* in a second
process on the cache the first filled.  Reported: building the graph, ``exprc.function`` (optimize,
lower, render, gcc, load) and the first call, the C source's size and the number of kernels, and
the growth exponent between consecutive sizes (1.0: linear).  Shapes:

* ``chain``: a deep elementwise chain over three vectors (one fused loop of n nodes);
* ``layers``: n/5 "layers" ``tanh((e - mean(e, axis=1)) * w_k + b_k)`` on a matrix (a row reduction
  and an elementwise loop each: many kernels of the same form);
* ``lstm``: the LSTM cost and gradient unrolled over T steps in Python (hidden 32, batch 32; the
  graph of issue 17's 264 MB C file).  Target: cold <= 3 s, warm <= 0.2 s at T = 10.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
import exprc
kind, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
rng = np.random.default_rng(0)
if kind == "chain":
    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    ins, e = [a, b, c], a
    ops = [lambda e: exprc.sin(e) * b, lambda e: e + c * 0.5, lambda e: exprc.tanh(e) - a, lambda e: e * e + 1.0]
    seen = set(exprc.graph.toposort([e]))  # (the nodes e reaches, kept up to date: toposort per link was quadratic)
    while len(seen) < n:
        e = ops[len(seen) % 4](e)
        stack = [e]
        while stack:
            m = stack.pop()
            if m not in seen:
                seen.add(m)
                stack.extend(m.inputs)
    outs, args = [e], [rng.normal(size=1000) for _ in range(3)]
elif kind == "layers":
    x = exprc.matrix("x")
    ins, e = [x], x
    for k in range(max(n // 5, 1)):
        e = exprc.tanh((e - exprc.mean(e, axis=1, keepdims=True)) * (1.0 + k / n) + k / (2.0 * n))
    outs, args = [e], [rng.normal(size=(64, 32))]
else:  # lstm, n = steps
    H = 32
    xs = [exprc.matrix(f"x{t}") for t in range(n)]
    W, U, bb = exprc.matrix("W"), exprc.matrix("U"), exprc.vector("b")
    h, c = exprc.matrix("h0"), exprc.matrix("c0")
    for t in range(n):
        z = xs[t] @ W + h @ U + bb
        i, f, o, g = (exprc.sigmoid(z[:, :H]), exprc.sigmoid(z[:, H:2 * H]), exprc.sigmoid(z[:, 2 * H:3 * H]),
                      exprc.tanh(z[:, 3 * H:]))
        c = f * c + i * g
        h = o * exprc.tanh(c)
    cost = exprc.sum(h ** 2)
    h0 = [v for v in exprc.graph.graph_inputs([cost]) if v.arg("name") == "h0"][0]
    c0 = [v for v in exprc.graph.graph_inputs([cost]) if v.arg("name") == "c0"][0]
    ins, outs = xs + [W, U, bb, h0, c0], [cost, *exprc.grad(cost, [W, U, bb])]
    args = [rng.normal(size=(32, 16)) for _ in range(n)] + [rng.normal(size=(16, 4 * H)) * 0.1,
            rng.normal(size=(H, 4 * H)) * 0.1, np.zeros(4 * H), np.zeros((32, H)), np.zeros((32, H))]
nodes = len(exprc.graph.toposort(outs))
t1 = time.perf_counter()
fn = exprc.function(ins, outs)
t2 = time.perf_counter()
fn(*args)
t3 = time.perf_counter()
print(json.dumps({"nodes": nodes, "graph_s": t1 - t0, "function_s": t2 - t1, "first_call_s": t3 - t2,
                  "source_bytes": len(fn.source), "kernels": len(fn.kernels)}))
"""


def run(kind: str, n: int, cache: str) -> dict:
    env = {**os.environ, "EXPRC_CACHE_DIR": cache,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(n)], env=env, capture_output=True, text=True,
                         timeout=1800, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    sizes = [100, 1000] if args.quick else [100, 1000, 10000]
    plan = [("chain", n) for n in sizes] + [("layers", n) for n in sizes] + [("lstm", 5 if args.quick else 10)]
    rows = []
    print(f"{'graph':<8} {'nodes':>7} {'kernels':>8} {'source':>9}  {'cold s':>7} {'warm s':>7} {'1st call':>9}  growth")
    prev: dict[str, dict] = {}
    for kind, n in plan:
        with tempfile.TemporaryDirectory() as cache:
            cold = run(kind, n, cache)
            warm = run(kind, n, cache)
        row = {"graph": kind, "n": n, "nodes": cold["nodes"], "kernels": cold["kernels"],
               "source_bytes": cold["source_bytes"], "cold_s": cold["function_s"], "warm_s": warm["function_s"],
               "first_call_s": warm["first_call_s"], "graph_s": cold["graph_s"]}
        growth = ""
        if kind in prev:
            q = prev[kind]
            k = math.log(row["nodes"] / q["nodes"])
            row["cold_exponent"] = math.log(row["cold_s"] / q["cold_s"]) / k
            row["warm_exponent"] = math.log(row["warm_s"] / q["warm_s"]) / k
            growth = f"cold x^{row['cold_exponent']:.2f}, warm x^{row['warm_exponent']:.2f}"
        prev[kind] = row
        rows.append(row)
        print(f"{kind:<8} {row['nodes']:>7} {row['kernels']:>8} {row['source_bytes'] / 1024:8.0f}K  "
              f"{row['cold_s']:7.2f} {row['warm_s']:7.3f} {row['first_call_s'] * 1e3:8.1f}ms  {growth}", flush=True)
    lstm = rows[-1]
    if lstm["n"] == 10:
        print(f"\n  {'MET' if lstm['cold_s'] <= 3 else 'NOT MET':<8} unrolled LSTM (10 steps) cold <= 3 s  "
              f"({lstm['cold_s']:.2f})")
        print(f"  {'MET' if lstm['warm_s'] <= 0.2 else 'NOT MET':<8} unrolled LSTM (10 steps) warm <= 0.2 s  "
              f"({lstm['warm_s']:.3f})")
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
