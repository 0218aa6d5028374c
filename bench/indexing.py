#!/usr/bin/env python
"""Indexing measurements (issue 14): embedding gather and its scatter-add gradient against NumPy,
and the cold compile of the Theano tutorial's logistic-SGD step.  Run:  python bench/indexing.py

* gather: ``W[idx]`` from a 50,000 x 128 float64 table, 64 and 1,000 lookups, through a compiled
  exprc function (C backend) vs ``np.take(W, idx, axis=0)``; ratio > 1 means exprc is faster.
* scatter: the gradient of ``sum(W[idx] * G)`` with respect to W (a fresh 50,000 x 128 array with
  the rows of G added at idx, repeats accumulating) vs ``np.zeros`` + ``np.add.at``; and
  ``inc_subtensor(X[idx], G)`` (a copy of X with G added) vs ``X.copy()`` + ``np.add.at``.
  exprc allocates the gradient as ``np.zeros`` does (no fill kernel) and adds the rows in C, so
  both sides pay the same first-write zeroing of the pages the rows land on (NumPy asks for 2 MiB
  pages: with 64 random rows, most of the 51 MB table), which dominates the 64-row time.
* update in place: ``updates={W: inc_subtensor(W[idx], G)}`` and the SGD step
  ``updates={W: W - lr * grad(sum(W[idx] * G), W)}`` of a shared 50,000 x 128 table (the rule
  ``sparse_update`` makes the step ``inc_subtensor(W[idx], -lr * G)``, and the update runs where
  W lies) vs ``np.add.at(W, idx, G)`` on the table in place: no table-sized pass on either side.
* compile: the logistic-SGD step of examples/theano_tutorials compiled with an empty cache
  directory, in a process that has already imported exprc and compiled something else (so imports
  are not counted); then again from the warm cache.

Timing: best of 7 rounds, systems interleaved within each round; results checked before timing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import best  # (bench/, the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "theano_tutorials"))

import exprc


def main() -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal((50_000, 128))
    w, idx, g = exprc.matrix("W"), exprc.vector("idx", "int64"), exprc.matrix("G")
    gather = exprc.function([w, idx], w[idx])
    grad = exprc.function([w, idx, g], exprc.grad(exprc.sum(w[idx] * g), w))
    inc = exprc.function([w, idx, g], exprc.inc_subtensor(w[idx], g))
    print("embedding table 50,000 x 128 float64; microseconds per call (best of 7); ratio = NumPy / exprc")
    for n in (64, 1000):
        I = rng.integers(0, 50_000, n)
        I[: n // 8] = I[0]  # some repeated rows
        G = rng.standard_normal((n, 128))
        assert np.array_equal(gather(W, I), np.take(W, I, axis=0))
        ref = np.zeros_like(W)
        np.add.at(ref, I, G)
        assert np.allclose(grad(W, I, G), ref, rtol=1e-13, atol=1e-13)
        ref2 = W.copy()
        np.add.at(ref2, I, G)
        assert np.allclose(inc(W, I, G), ref2, rtol=1e-13, atol=1e-13)

        def zeros_add_at(I=I, G=G):
            o = np.zeros(W.shape)
            np.add.at(o, I, G)
            return o

        def copy_add_at(I=I, G=G):
            o = W.copy()
            np.add.at(o, I, G)
            return o

        reps = 2000 if n == 64 else 500
        t = best({"exprc": lambda I=I: gather(W, I), "numpy": lambda I=I: np.take(W, I, axis=0)}, reps)
        print(f"  gather {n:5d} rows: exprc {t['exprc'] * 1e6:9.1f}  np.take {t['numpy'] * 1e6:9.1f}  "
              f"ratio {t['numpy'] / t['exprc']:.2f}x")
        t = best({"exprc": lambda I=I, G=G: grad(W, I, G), "numpy": zeros_add_at}, 20)
        print(f"  grad   {n:5d} rows: exprc {t['exprc'] * 1e6:9.1f}  zeros+add.at {t['numpy'] * 1e6:9.1f}  "
              f"ratio {t['numpy'] / t['exprc']:.2f}x")
        t = best({"exprc": lambda I=I, G=G: inc(W, I, G), "numpy": copy_add_at}, 20)
        print(f"  inc    {n:5d} rows: exprc {t['exprc'] * 1e6:9.1f}  copy+add.at  {t['numpy'] * 1e6:9.1f}  "
              f"ratio {t['numpy'] / t['exprc']:.2f}x")
        table = exprc.shared(W.copy(), "table")
        upd = exprc.function([idx, g], [], updates={table: exprc.inc_subtensor(table[idx], g)})
        sgd = exprc.function([idx, g], [], updates={table: table - 0.5 * exprc.grad(exprc.sum(table[idx] * g),
                                                                                     table)})
        ref3, dense = W.copy(), W.copy()
        upd(I, G)
        np.add.at(ref3, I, G)
        assert np.array_equal(table.get_value(borrow=True), ref3)
        table.set_value(W)
        sgd(I, G)
        np.add.at(dense_g := np.zeros_like(W), I, G)
        assert np.allclose(table.get_value(borrow=True), dense - 0.5 * dense_g, rtol=1e-14, atol=1e-14)
        Wn = W.copy()
        t = best({"exprc": lambda I=I, G=G, f=upd: f(I, G), "numpy": lambda I=I, G=G, Wn=Wn: np.add.at(Wn, I, G)},
                 reps)
        print(f"  update in place {n:5d} rows: exprc {t['exprc'] * 1e6:9.1f}  np.add.at {t['numpy'] * 1e6:9.1f}  "
              f"ratio {t['numpy'] / t['exprc']:.2f}x")
        t = best({"exprc": lambda I=I, G=G, f=sgd: f(I, G),
                  "numpy": lambda I=I, G=G, Wn=Wn: np.add.at(Wn, I, -0.5 * G)},
                 reps)
        print(f"  SGD step        {n:5d} rows: exprc {t['exprc'] * 1e6:9.1f}  np.add.at {t['numpy'] * 1e6:9.1f}  "
              f"ratio {t['numpy'] / t['exprc']:.2f}x")

    import logistic_sgd

    with tempfile.TemporaryDirectory() as d:
        os.environ["EXPRC_CACHE_DIR"] = d
        exprc.function([w], exprc.exp(w))  # imports and the C toolchain probe, not counted
        for label in ("cold (empty cache)", "warm (cached)"):
            t = time.perf_counter()
            logistic_sgd.sgd_optimization(n_epochs=0, verbose=False)
            print(f"logistic-SGD step compile, {label}: {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()
