"""Measurements behind the embedding features (issue 8): update strategies, per-step call overhead
of a training step, and the GIL.  Run:  python bench/embedding.py [--skip updates,step,gil]

* updates: ``s <- 0.9 s + x`` as an update (through the C dispatcher, which writes into the
  spare buffer, and through the Python path, which takes a fresh array below SWAP_BYTES) next to
  the same expression as a plain function (fresh output / ``out=``).
* step: the digits MLP training step of examples/train_digits.py (64 rows): total time per call,
  the time of its native kernels alone (the generated library called in a loop with one filled
  pointer table), and the difference: the call overhead (argument checks, plan lookup, output
  allocation, NumPy steps if any, installing the updates).
* gil: a Python loop's rate in the main thread while another thread runs a long native kernel,
  next to a sleeping thread (no GIL use) and a thread in one long ``sum(range(n))`` (holds the GIL).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))


import exprc


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
        dispatcher = best(lambda f=f, xv=xv: f(xv), n)  # C dispatcher: written into the spare buffer
        python = best(lambda f=f, xv=xv: f._call((xv,), None, {}), n)  # fresh array below SWAP_BYTES
        sv = exprc.vector("sv")
        g = exprc.function([x, sv], sv * 0.9 + x, config=cfg)
        a, o = np.zeros(size), np.empty(size)
        plain = best(lambda g=g, xv=xv, a=a: g(xv, a), n)
        plain_out = best(lambda g=g, xv=xv, a=a, o=o: g(xv, a, out=o), n)
        print(f"  {size:>9} ({size * 8 / 2**20:6.2f} MiB): update (C dispatcher) {dispatcher * 1e6:10.1f} | update "
              f"(Python path) {python * 1e6:10.1f} | plain function {plain * 1e6:10.1f} | plain function out= "
              f"{plain_out * 1e6:10.1f}")


def step() -> None:
    import nn

    net = nn.MLP([64, 128, 10], seed=0)
    cfg = exprc.Config(num_threads=1)
    train, _ = nn.compile_classifier(net, nn.Adam(lr=1e-3), n_features=64, n_classes=10, config=cfg)
    xb = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    yb = nn.one_hot(np.arange(64) % 10, 10)
    # The kernels alone: one plan for these shapes, its pointer table filled once, and the
    # generated library's entry point called in a loop (what every call runs natively).
    kern = train._kernel
    arrays = [xb, yb] + [v.get_value(borrow=True) for v in train.shared]
    plan = kern._make_plan(arrays, None)
    outs = kern._execute(plan, arrays, None)  # fills the pointers (inputs, fresh outputs, views)
    run, ptrs, P, nk = kern._run, plan.ptrs, plan.P_ptr, kern._nkernels
    # Interleaved rounds (this VM is shared and noisy): the best of each, and the median of the
    # per-round differences.
    totals, natives = [], []
    for _ in range(30):
        totals.append(best(lambda: train(xb, yb), 50, rounds=1))
        natives.append(best(lambda: run(ptrs, P, 0, nk, 1), 50, rounds=1))
    del outs  # the pointer table wrote into them until here
    total, native = min(totals), min(natives)
    diff = float(np.median(np.subtract(totals, natives)))
    steps = [s.node.op for s in plan.segments if not isinstance(s, tuple)]
    print(f"training step, digits MLP 64-128-10, 64 rows, Adam ({len(train.updates)} updates, {len(train.kernels)} "
          f"fused kernels, {len(plan.segments)} native segment(s), NumPy steps per call: {steps or 'none'}; "
          f"C dispatcher: {'yes' if train._fast is not None else 'no'}):")
    print(f"  per call {total * 1e6:.1f} us; native kernels alone {native * 1e6:.1f} us; overhead beyond the "
          f"kernels {(total - native) * 1e6:.1f} us (best vs best), {diff * 1e6:.1f} us (median of 30 interleaved "
          f"rounds); target <= 20")


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
