"""Measurements behind the embedding features (issue 8): update strategies, per-step call overhead
of a training step, and the GIL.  Run:  python bench/embedding.py [--skip updates,step,gil]

* updates: ``s <- 0.9 s + x`` as an update (fresh arrays vs the spare-buffer swap, forced both
  ways) next to the same expression as a plain function (fresh output / ``out=``).
* step: the digits MLP training step of examples/train_digits.py (64 rows): total time per call,
  time inside native kernels, time inside NumPy steps (matmuls …), and the rest (call overhead:
  argument checks, plan lookup, pointer filling, the Python loop over segments, installing updates).
* gil: a Python loop's rate in the main thread while another thread runs a long native kernel,
  next to a sleeping thread (no GIL use) and a thread in one long ``sum(range(n))`` (holds the GIL).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import importlib

import exprc
from exprc.ops import OPS

shared_mod = importlib.import_module("exprc.shared")  # the module (exprc.shared is the function)


def best(fn, n: int, rounds: int = 5) -> float:
    fn()
    fn()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n)
    return min(out)


def updates() -> None:
    cfg = exprc.Config(num_threads=1)
    print("update s <- 0.9*s + x (float64, one thread), microseconds per call (best of 5):")
    for size in (100, 10_000, 1_000_000, 8_000_000):
        n = max(3, min(20_000, 20_000_000 // size))
        xv = np.random.rand(size)
        s = exprc.shared(np.zeros(size), "s")
        x = exprc.vector("x")
        f = exprc.function([x], [], updates=[(s, s * 0.9 + x)], config=cfg)
        saved = shared_mod.SWAP_BYTES
        try:
            shared_mod.SWAP_BYTES = 1 << 62
            fresh = best(lambda f=f, xv=xv: f(xv), n)
            shared_mod.SWAP_BYTES = 0
            swap = best(lambda f=f, xv=xv: f(xv), n)
        finally:
            shared_mod.SWAP_BYTES = saved
        sv = exprc.vector("sv")
        g = exprc.function([x, sv], sv * 0.9 + x, config=cfg)
        a, o = np.zeros(size), np.empty(size)
        plain = best(lambda g=g, xv=xv, a=a: g(xv, a), n)
        plain_out = best(lambda g=g, xv=xv, a=a, o=o: g(xv, a, out=o), n)
        print(f"  {size:>9} ({size * 8 / 2**20:6.2f} MiB): update, fresh array {fresh * 1e6:10.1f} | update, spare swap "
              f"{swap * 1e6:10.1f} | plain function {plain * 1e6:10.1f} | plain function out= {plain_out * 1e6:10.1f}")


def step() -> None:
    import nn

    net = nn.MLP([64, 128, 10], seed=0)
    cfg = exprc.Config(num_threads=1)
    train, _ = nn.compile_classifier(net, nn.Adam(lr=1e-3), n_features=64, n_classes=10, config=cfg)
    xb = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    yb = nn.one_hot(np.arange(64) % 10, 10)
    total = best(lambda: train(xb, yb), 300)
    kern = train._kernel
    clock = {"native": 0.0, "numpy": 0.0, "calls": 0}
    run = kern._run

    def timed_run(*a):
        t = time.perf_counter()
        r = run(*a)
        clock["native"] += time.perf_counter() - t
        clock["calls"] += 1
        return r

    saved = {}
    for name in {s.node.op for s in kern.program.steps if not hasattr(s, "outputs")}:
        row = OPS[name]
        saved[name] = row

        def impl(*a, _f=row.impl, **k):
            t = time.perf_counter()
            r = _f(*a, **k)
            clock["numpy"] += time.perf_counter() - t
            clock["calls"] += 1
            return r

        OPS[name] = dataclasses.replace(row, impl=impl)
    kern._run = timed_run
    try:
        n = 300
        for _ in range(20):
            train(xb, yb)
        clock.update(native=0.0, numpy=0.0, calls=0)
        t = time.perf_counter()
        for _ in range(n):
            train(xb, yb)
        instrumented = (time.perf_counter() - t) / n
    finally:
        kern._run = run
        OPS.update(saved)
    probe = best(lambda: time.perf_counter() - time.perf_counter(), 10_000) * clock["calls"] / n
    native, numpy_ = clock["native"] / n, clock["numpy"] / n
    overhead = instrumented - native - numpy_ - probe
    segments = len(kern.segments)
    print(f"training step, digits MLP 64-128-10, 64 rows, Adam ({len(train.updates)} updates, {len(train.kernels)} fused "
          f"kernels, {segments} segments):")
    print(f"  per call {total * 1e6:.1f} us; instrumented: native kernels {native * 1e6:.1f} us, NumPy steps "
          f"{numpy_ * 1e6:.1f} us, the rest (call overhead) {overhead * 1e6:.1f} us")


def gil() -> None:
    a, b = exprc.vector("a"), exprc.vector("b")
    f = exprc.function([a, b], exprc.sum(exprc.sin(exprc.expand_dims(a, 1) * exprc.expand_dims(b, 0))),
                       backend="c", config=exprc.Config(num_threads=1))
    x, y = np.linspace(0, 1, 3000), np.linspace(0, 2, 3000)
    f(x, y)
    f(x, y)

    def rate(target) -> tuple[float, float]:
        th = threading.Thread(target=target)
        t = time.perf_counter()
        th.start()
        n = 0
        while th.is_alive():
            n += 1
            time.perf_counter()
        el = time.perf_counter() - t
        return n / el, el

    print("main-thread Python loop rate while another thread runs (higher = the other thread leaves the GIL):")
    for name, target in [("a sleeping thread", lambda: time.sleep(1.0)),
                         ("an exprc kernel (C dispatcher)", lambda: [f(x, y) for _ in range(3)]),
                         ("an exprc kernel (cffi call)", lambda: [f._kernel(x, y) for _ in range(3)]),
                         ("builtin sum(range) (holds the GIL)", lambda: sum(range(60_000_000)))]:
        r, el = rate(target)
        print(f"  {name:32s} {r:12.0f} iterations/s over {el:.2f} s")
    ts = [threading.Thread(target=lambda: [f(x, y) for _ in range(3)]) for _ in range(2)]
    t = time.perf_counter()
    [f(x, y) for _ in range(3)]
    one = time.perf_counter() - t
    t = time.perf_counter()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    two = time.perf_counter() - t
    print(f"  two threads x 3 kernel calls {two:.2f} s vs one thread x 3 calls {one:.2f} s (ratio {two / one:.2f}; "
          f"1.0 = parallel, 2.0 = serialized; needs two idle cores, os.cpu_count() = {os.cpu_count()})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", default="")
    skip = set(ap.parse_args().skip.split(","))
    for name, fn in (("updates", updates), ("step", step), ("gil", gil)):
        if name not in skip:
            fn()


if __name__ == "__main__":
    main()
