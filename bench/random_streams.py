#!/usr/bin/env python
"""Random streams (issue 16): draws made inside exprc's fused C loops against NumPy's Generator, as
ratios measured in one run.  Run:  python bench/random_streams.py  [--quick] [--json PATH | --no-json]

* draws: 1e7 numbers from ``exprc.function([], rng.normal(size=(n,)))`` (``rng`` an
  ``exprc.random.Stream``; Philox4x32-10 and Box-Muller computed in the generated loop), float64
  and float32, and ``rng.uniform``, against ``np.random.default_rng().normal(size=n)``,
  ``standard_normal(out=buf)`` (preallocated), ``standard_normal(n, dtype=float32)`` and
  ``random(n)`` / ``random(out=buf)``.  exprc runs with its default threads (one per core), with
  ``Config(num_threads=1)`` (per-core speed: NumPy's generator is single-threaded) and called with
  ``out=buf``.  Ratio = NumPy time / exprc time (> 1: exprc faster); issue target: normal float64
  >= 3x ``normal(size=n)``.
* dropout: (a) elementwise, ``relu(x) * mask / keep`` with ``mask = rng.bernoulli(size=x.shape,
  p=keep, dtype='float64')`` against ``relu(x)`` alone, x of 1e6 float64; (b) a dense layer,
  ``relu(X @ W + b)`` with X and W 1000 x 1000 (1e6 activations), with and without the same
  dropout.  Reported: time with dropout / time without (issue target: <= 1.2x for both), exprc
  (default threads, and one thread for its own loops: BLAS keeps its threads) and NumPy drawing
  the mask with ``default_rng().random(size) < keep`` (in place, no extra temporaries).  The dense
  layer is timed again with OpenBLAS limited to one thread (``threadpoolctl``, when it imports):
  OpenBLAS's threads spin after a gemm and, on few cores, slow exprc's OpenMP loop that follows.
* Monte Carlo: ``mean(exp(rng.normal(size=(n,))))`` over 1e7 draws, which exprc fuses into one
  reduction (no array is stored), against NumPy's ``standard_normal`` + in-place ``exp`` + ``mean``.

Correctness first: every exprc function's numbers are checked before timing, and the script
exits with an error if one is wrong: moments and a few probabilities of the draws (within 6
standard errors), the same bits for one and all threads and against the NumPy reference backend
(on 4,096 draws), two calls giving different numbers (the stream advances), dropout outputs equal
to 0 or ``relu / keep`` with about ``keep`` of them kept, the Monte Carlo estimate near e**0.5.
Each compiled function's fused loops (``f.kernels``) are stored, and a draw that did not fuse into
its consumer's loop is flagged.

Timing: best of rounds, the systems of one table interleaved within each round (bench/timing.py),
with a 0.1 s pause before each system's (untimed) warm-up call so that OpenBLAS or OpenMP threads
left spinning by the system before do not slow it down.
``--quick``: 1e6 draws, 1e5 dropout activations, a 300 x 300 layer, 3 rounds.  Results: the
tables, then one JSON line on stdout; also bench/results/random-<time>.json unless --no-json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from timing import best  # (bench/, the script's folder)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import exprc

KEEP = 0.5  # dropout: the probability of keeping an activation
SIGMAS = 6.0  # tolerance of the statistical checks, in standard errors
FAILURES: list[str] = []


# -- checks -------------------------------------------------------------------------------------------
def check(ok: bool, what: str) -> None:
    if not ok:
        FAILURES.append(what)
        print(f"CHECK FAILED: {what}", file=sys.stderr)


def near(name: str, got: float, want: float, se: float) -> None:
    check(abs(got - want) <= SIGMAS * se, f"{name}: {got:.6g}, expected {want:.6g} +- {SIGMAS:g} x {se:.3g}")


def check_normal(name: str, z: np.ndarray, n: int, dtype: str) -> None:
    check(z.shape == (n,) and z.dtype == np.dtype(dtype), f"{name}: shape {z.shape} dtype {z.dtype}")
    check(bool(np.isfinite(z).all()), f"{name}: non-finite values")
    z = z.astype(np.float64)
    near(f"{name} mean", float(z.mean()), 0.0, 1 / math.sqrt(n))
    near(f"{name} std", float(z.std()), 1.0, 1 / math.sqrt(2 * n))
    a = np.abs(z)
    for k, p in ((1, math.erf(1 / math.sqrt(2))), (2, math.erf(2 / math.sqrt(2))), (3, math.erf(3 / math.sqrt(2)))):
        near(f"{name} P(|z| < {k})", float(np.count_nonzero(a < k)) / n, p, math.sqrt(p * (1 - p) / n))
    near(f"{name} P(z < 0)", float(np.count_nonzero(z < 0)) / n, 0.5, 0.5 / math.sqrt(n))


def check_uniform(name: str, u: np.ndarray, n: int) -> None:
    check(u.shape == (n,) and u.dtype == np.float64, f"{name}: shape {u.shape} dtype {u.dtype}")
    check(bool(u.min() >= 0.0) and bool(u.max() < 1.0), f"{name}: values outside [0, 1)")
    near(f"{name} mean", float(u.mean()), 0.5, math.sqrt(1 / 12 / n))
    near(f"{name} var", float(u.var()), 1 / 12, math.sqrt(1 / 180 / n))  # var of (u - 1/2)**2 is 1/180
    near(f"{name} P(u < 0.1)", float(np.count_nonzero(u < 0.1)) / n, 0.1, math.sqrt(0.09 / n))


def check_dropout(name: str, out: np.ndarray, relu: np.ndarray, exact: bool) -> float:
    """``out`` must be 0 or relu / KEEP everywhere, with about KEEP of the positive ones kept."""
    pos = relu > 0
    kept = out != 0
    check(not bool((kept & ~pos).any()), f"{name}: a non-zero output where relu(x) is 0")
    want = relu[kept] / KEEP
    ok = np.array_equal(out[kept], want) if exact else np.allclose(out[kept], want, rtol=1e-9, atol=1e-9)
    check(bool(ok), f"{name}: kept outputs differ from relu / keep")
    n_pos = int(pos.sum())
    frac = int(kept.sum()) / n_pos
    near(f"{name} kept fraction", frac, KEEP, math.sqrt(KEEP * (1 - KEEP) / n_pos))
    return frac


FUSE_NOTES: list[str] = []
PAUSE = 0.1  # seconds of sleep before each system's batch (untimed): the previous system's threads go idle


def timed(fns: dict, n: int, rounds: int) -> dict:
    """``best`` (bench/timing.py) with a pause before each system's warm-up call, so that no system is
    timed while the threads of the one before it still spin (OpenBLAS's spin for up to ~0.1 s after a
    gemm; on 2 cores a spinning thread takes half the machine).  ``best`` makes n + 1 calls per round."""

    def paused(fn):
        count = [0]

        def call():
            if count[0] % (n + 1) == 0:
                time.sleep(PAUSE)
            count[0] += 1
            return fn()

        return call

    return best({k: paused(f) for k, f in fns.items()}, n, rounds)


def fused(name: str, f, together: tuple[str, ...]) -> list:
    """The function's kernels; notes it when no one kernel holds all the ops ``together``."""
    ks = f.kernels
    if not any(set(together) <= set(k.get("ops", ())) for k in ks):
        FUSE_NOTES.append(f"{name}: {', '.join(together)} not in one kernel: "
                          + "; ".join(f"{k.get('name')} {k.get('ops')}" for k in ks))
    return ks


# -- 1. draws --------------------------------------------------------------------------------------------
def bench_draws(n: int, rounds: int) -> dict:
    rng = exprc.random.Stream(1)
    exprs = {"normal float64": rng.normal(size=(n,)), "normal float32": rng.normal(size=(n,), dtype="float32"),
             "uniform float64": rng.uniform(size=(n,))}
    fs, fs1 = {}, {}
    for k, e in exprs.items():
        fs[k] = exprc.function([], e)
        with exprc.config(num_threads=1):
            fs1[k] = exprc.function([], e)
    kernels = {k: fused(k, f, (f"random_{k.split()[0]}",)) for k, f in fs.items()}

    # correctness: statistics, thread-count and backend independence, the stream advancing
    for k, f in fs.items():
        dt = k.split()[1]
        a = f()
        if k.startswith("uniform"):
            check_uniform(k, a, n)
        else:
            check_normal(k, a, n, dt)
        b = f()
        check(not np.array_equal(a[:1000], b[:1000]), f"{k}: two calls gave the same numbers")
        rng.seed(123)
        a = f()
        rng.seed(123)
        check(np.array_equal(a, fs1[k]()), f"{k}: all threads and num_threads=1 gave different bits")
    small = exprc.random.Stream(5)
    for k in exprs:
        kind, dt = k.split()
        e = getattr(small, kind)(size=(4096,), dtype=dt)
        fc, fn = exprc.function([], e), exprc.function([], e, backend="numpy")
        small.seed(9)
        c = fc()
        small.seed(9)
        r = fn()
        check(np.array_equal(c, r), f"{k}: the C and NumPy backends differ on 4,096 draws "
              f"(max |diff| {float(np.max(np.abs(c.astype(float) - r.astype(float)))):.3g})")

    g = np.random.default_rng()
    buf, buf32 = np.empty(n), np.empty(n, np.float32)
    check_normal("numpy normal", g.normal(size=n), n, "float64")
    fns = {
        "np normal(size)": lambda: g.normal(size=n),
        "np standard_normal(out=)": lambda: g.standard_normal(out=buf),
        "np standard_normal(float32)": lambda: g.standard_normal(n, dtype=np.float32),
        "np standard_normal(float32, out=)": lambda: g.standard_normal(dtype=np.float32, out=buf32),
        "np random(n)": lambda: g.random(n),
        "np random(out=)": lambda: g.random(out=buf),
    }
    outbuf = {"normal float64": buf, "normal float32": buf32, "uniform float64": buf}
    for k in exprs:
        fns[f"exprc {k}"] = fs[k]
        fns[f"exprc 1T {k}"] = fs1[k]
        fns[f"exprc out= {k}"] = lambda k=k: fs[k](out=outbuf[k])
    t = timed(fns, 1, rounds)
    rows = []
    for draw, ref in (("normal float64", "np normal(size)"), ("normal float64", "np standard_normal(out=)"),
                      ("normal float32", "np standard_normal(float32)"),
                      ("normal float32", "np standard_normal(float32, out=)"),
                      ("uniform float64", "np random(n)"), ("uniform float64", "np random(out=)")):
        ex = {"exprc": t[f"exprc {draw}"], "exprc 1 thread": t[f"exprc 1T {draw}"],
              "exprc out=": t[f"exprc out= {draw}"]}
        rows.append({"draw": draw, "numpy": ref[3:], "numpy_s": t[ref], "exprc_s": ex,
                     "ratio": {s: t[ref] / v for s, v in ex.items()}})
    return {"n": n, "rows": rows, "kernels": kernels, "seconds": t}


# -- 2. dropout ------------------------------------------------------------------------------------------
def bench_dropout(n_elem: int, dim: int, rounds: int) -> dict:
    rng = exprc.random.Stream(2)
    g = np.random.default_rng(3)
    out: dict = {}

    # (a) elementwise
    x = exprc.vector("x")
    relu = exprc.maximum(x, 0.0)
    drop = relu * rng.bernoulli(size=x.shape, p=KEEP, dtype="float64") / KEEP
    f_relu, f_drop = exprc.function([x], relu), exprc.function([x], drop)
    with exprc.config(num_threads=1):
        f_relu1, f_drop1 = exprc.function([x], relu), exprc.function([x], drop)
    xv = g.standard_normal(n_elem)
    ref = np.maximum(xv, 0.0)
    check(np.array_equal(f_relu(xv), ref), "elementwise: relu(x) differs from np.maximum(x, 0)")
    d1 = f_drop(xv)
    frac = check_dropout("elementwise dropout", d1, ref, exact=True)
    check(not np.array_equal(d1, f_drop(xv)), "elementwise dropout: two calls drew the same mask")
    check_dropout("elementwise dropout (1 thread)", f_drop1(xv), ref, exact=True)
    kern = {"relu": f_relu.kernels, "dropout": fused("elementwise dropout", f_drop, ("maximum", "random_uniform"))}

    def np_relu():
        return np.maximum(xv, 0.0)

    def np_drop():
        h = np.maximum(xv, 0.0)
        h *= g.random(h.shape) < KEEP
        h /= KEEP
        return h

    check_dropout("numpy elementwise dropout", np_drop(), ref, exact=True)
    fns = {"exprc without": lambda: f_relu(xv), "exprc with": lambda: f_drop(xv),
           "exprc 1T without": lambda: f_relu1(xv), "exprc 1T with": lambda: f_drop1(xv),
           "numpy without": np_relu, "numpy with": np_drop}
    calls = max(1, 20_000_000 // max(n_elem, 1) // 4)
    t = timed(fns, calls, rounds)
    out["elementwise"] = {"n": n_elem, "kept_fraction": frac, "kernels": kern, "seconds": t, "rows": _drop_rows(t)}

    # (b) a dense layer
    X, W, b = exprc.matrix("X"), exprc.matrix("W"), exprc.vector("b")
    h = exprc.maximum(X @ W + b, 0.0)
    hd = h * rng.bernoulli(size=h.shape, p=KEEP, dtype="float64") / KEEP
    f_h, f_hd = exprc.function([X, W, b], h), exprc.function([X, W, b], hd)
    with exprc.config(num_threads=1):
        f_h1, f_hd1 = exprc.function([X, W, b], h), exprc.function([X, W, b], hd)
    Xv = g.standard_normal((dim, dim))
    Wv = g.standard_normal((dim, dim)) / math.sqrt(dim)
    bv = g.standard_normal(dim) * 0.1
    ref = np.maximum(Xv @ Wv + bv, 0.0)
    check(np.allclose(f_h(Xv, Wv, bv), ref, rtol=1e-9, atol=1e-9), "dense: relu(X @ W + b) differs from NumPy")
    frac = check_dropout("dense dropout", f_hd(Xv, Wv, bv), ref, exact=False)
    check_dropout("dense dropout (1 thread)", f_hd1(Xv, Wv, bv), ref, exact=False)
    kern = {"relu": f_h.kernels, "dropout": fused("dense dropout", f_hd, ("maximum", "random_uniform"))}

    def np_dense():
        y = Xv @ Wv
        y += bv
        np.maximum(y, 0.0, out=y)
        return y

    def np_dense_drop():
        y = np_dense()
        y *= g.random(y.shape) < KEEP
        y /= KEEP
        return y

    check_dropout("numpy dense dropout", np_dense_drop(), ref, exact=False)
    fns = {"exprc without": lambda: f_h(Xv, Wv, bv), "exprc with": lambda: f_hd(Xv, Wv, bv),
           "exprc 1T without": lambda: f_h1(Xv, Wv, bv), "exprc 1T with": lambda: f_hd1(Xv, Wv, bv),
           "numpy without": np_dense, "numpy with": np_dense_drop}
    calls = 2 if dim >= 1000 else 10
    t = timed(fns, calls, rounds)
    out["dense"] = {"dim": dim, "kept_fraction": frac, "kernels": kern, "seconds": t, "rows": _drop_rows(t)}
    try:  # the same with OpenBLAS on one thread (exprc's matmul calls the OpenBLAS NumPy ships)
        from threadpoolctl import threadpool_limits
    except ImportError:
        return out
    with threadpool_limits(1, user_api="blas"):
        t = timed(fns, calls, rounds)
    out["dense_blas1"] = {"dim": dim, "seconds": t, "rows": _drop_rows(t)}
    return out


def _drop_rows(t: dict) -> list:
    rows = []
    for sys_, label in (("exprc", "exprc"), ("exprc 1T", "exprc 1 thread"), ("numpy", "numpy")):
        a, b = t[f"{sys_} without"], t[f"{sys_} with"]
        rows.append({"system": label, "without_s": a, "with_s": b, "ratio": b / a, "cost_s": b - a})
    return rows


# -- 3. Monte Carlo --------------------------------------------------------------------------------------
def bench_monte_carlo(n: int, rounds: int) -> dict:
    rng = exprc.random.Stream(4)
    est = exprc.mean(exprc.exp(rng.normal(size=(n,))))
    f = exprc.function([], est)
    with exprc.config(num_threads=1):
        f1 = exprc.function([], est)
    kern = fused("Monte Carlo", f, ("random_normal", "exp", "mean"))
    want, se = math.exp(0.5), math.sqrt((math.e - 1) * math.e / n)  # E exp(Z), sd(exp(Z)) / sqrt(n)
    g = np.random.default_rng()

    def np_mc():
        z = g.standard_normal(n)
        np.exp(z, out=z)
        return z.mean()

    vals = {"exprc": float(f()), "exprc 1 thread": float(f1()), "numpy": float(np_mc())}
    for k, v in vals.items():
        near(f"Monte Carlo {k}", v, want, se)
    check(float(f()) != vals["exprc"], "Monte Carlo: two calls gave the same estimate")
    t = timed({"exprc": f, "exprc 1 thread": f1, "numpy": np_mc}, 1, rounds)
    return {"n": n, "want": want, "standard_error": se, "estimate": vals, "seconds": t, "kernels": kern,
            "ratio": {k: t["numpy"] / v for k, v in t.items()}}


# -- report ----------------------------------------------------------------------------------------------
def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def _mark(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def report(res: dict) -> str:
    lines = [(f"# exprc random streams ({res['date']}, {res['machine']}, {res['cpus']} CPUs, numpy "
              f"{res['numpy_version']}, load average {res['load_start']:.2f} -> {res['load_end']:.2f})"), ""]
    d = res["draws"]
    lines += [f"## draws: {d['n']:.0e} numbers, ms per call (best of {res['rounds']}); ratio = NumPy / exprc", "",
              "| draw | NumPy call | NumPy ms | exprc ms (ratio) | exprc 1 thread | exprc out= |",
              "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        cells = [f"{_ms(r['exprc_s'][s])} ({r['ratio'][s]:.2f}x)" for s in ("exprc", "exprc 1 thread", "exprc out=")]
        lines.append(f"| {r['draw']} | `{r['numpy']}` | {_ms(r['numpy_s'])} | " + " | ".join(cells) + " |")
    dr = res["dropout"]
    lines += ["", f"## dropout (keep {KEEP}): ms per call; ratio = with dropout / without", "",
              "| layer | system | without ms | with ms | ratio | dropout cost ms |", "|---|---|---|---|---|---|"]
    dim = dr["dense"]["dim"]
    for key, label in (("elementwise", f"relu(x), x {dr['elementwise']['n']:.0e}"),
                       ("dense", f"relu(X@W+b), {dim}x{dim}"),
                       ("dense_blas1", f"relu(X@W+b), {dim}x{dim}, BLAS 1 thread")):
        for r in dr.get(key, {}).get("rows", []):
            lines.append(f"| {label} | {r['system']} | {_ms(r['without_s'])} | {_ms(r['with_s'])} | "
                         f"{r['ratio']:.2f}x | {_ms(r['cost_s'])} |")
    mc = res["monte_carlo"]
    lines += ["", (f"## Monte Carlo: mean(exp(normal)) over {mc['n']:.0e} draws (want e**0.5 = {mc['want']:.5f}, "
                   f"standard error {mc['standard_error']:.1e}); ratio = NumPy / system"), "",
              "| system | ms | ratio | estimate |", "|---|---|---|---|"]
    for k, s in mc["seconds"].items():
        lines.append(f"| {k} | {_ms(s)} | {mc['ratio'][k]:.2f}x | {mc['estimate'][k]:.5f} |")
    lines += ["", "## targets (issue 16)", ""]
    for name, v in res["targets"].items():
        lines.append(f"* {name}: {v['value']:.2f}x ({v['status']})")
    lines += ["", "## fused loops (f.kernels; the k*_add kernel is the stream state's update)", ""]
    kk = [("normal float64", d["kernels"]["normal float64"]), ("dropout, elementwise", dr["elementwise"]["kernels"]["dropout"]),
          ("dropout, dense", dr["dense"]["kernels"]["dropout"]), ("Monte Carlo", mc["kernels"])]
    for name, ks in kk:
        lines.append(f"* {name}: " + "; ".join(f"{k.get('name')} ({k.get('kind')}: {', '.join(k.get('ops', ()))})"
                                               for k in ks))
    lines += [f"* NOT FUSED: {note}" for note in res["fusion_notes"]] or ["* every draw fused into its consumer's loop"]
    return "\n".join(lines)


def _git() -> str | None:
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                           timeout=10, check=False)
    except OSError:
        return None
    return r.stdout.strip() or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1e6 draws, 1e5 dropout activations, 300x300 layer, 3 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args()
    n, n_elem, dim = (10**6, 10**5, 300) if args.quick else (10**7, 10**6, 1000)
    rounds = args.rounds or (3 if args.quick else 7)
    t0 = time.perf_counter()
    res: dict = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "python": platform.python_version(), "numpy_version": np.__version__,
                 "exprc_version": exprc.__version__, "git": _git(), "quick": args.quick, "rounds": rounds,
                 "env": {k: os.environ[k] for k in ("EXPRC_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
                         if k in os.environ},
                 "load_start": os.getloadavg()[0]}
    print("  draws ...", file=sys.stderr)
    res["draws"] = bench_draws(n, rounds)
    print("  dropout ...", file=sys.stderr)
    res["dropout"] = bench_dropout(n_elem, dim, rounds)
    print("  Monte Carlo ...", file=sys.stderr)
    res["monte_carlo"] = bench_monte_carlo(n, rounds)
    res["load_end"] = os.getloadavg()[0]
    r0 = res["draws"]["rows"][0]
    tg = {"normal float64 >= 3x numpy normal(size)": (r0["ratio"]["exprc"], r0["ratio"]["exprc"] >= 3),
          "normal float64, 1 thread, vs numpy normal(size) (per core; no target)":
              (r0["ratio"]["exprc 1 thread"], None)}
    for key in ("elementwise", "dense"):
        e = res["dropout"][key]["rows"][0]
        tg[f"dropout {key}: with / without <= 1.2x"] = (e["ratio"], e["ratio"] <= 1.2)
    if "dense_blas1" in res["dropout"]:
        e = res["dropout"]["dense_blas1"]["rows"][0]
        tg["dropout dense, OpenBLAS on 1 thread (no target)"] = (e["ratio"], None)
    res["targets"] = {k: {"value": v, "status": "info" if ok is None else _mark(ok)} for k, (v, ok) in tg.items()}
    res["fusion_notes"] = FUSE_NOTES
    res["check_failures"] = FAILURES
    res["wall_seconds"] = time.perf_counter() - t0
    print(report(res))
    if FAILURES:
        print("\nCHECKS FAILED:\n" + "\n".join(f"* {f}" for f in FAILURES))
    line = json.dumps(res, default=float)
    print(line)
    if not args.no_json:
        path = Path(args.json) if args.json else HERE / "results" / f"random-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1, default=float))
        print(f"results: {path}", file=sys.stderr)
    if FAILURES:
        sys.exit(1)


if __name__ == "__main__":
    main()
