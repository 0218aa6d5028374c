#!/usr/bin/env python
"""exprc benchmark suite: one command, every figure measured in one run as a ratio against NumPy.

    python bench/run.py                      # full run (a few minutes on 2 cores)
    python bench/run.py --quick              # smoke run for CI (small sizes, float64, few repetitions)
    python bench/run.py --sizes 1e3,1e5 --dtypes float32 --exprs E2,E4 --systems numpy,exprc,numexpr

Sections: throughput of five expressions (E1-E5) for every system, dtype and size; call overhead on
10-element arrays; compile latency (cold and warm, each in a fresh process); a STREAM-like triad as
the memory-bandwidth reference.  Results go to bench/results/<timestamp>.json.  See bench/README.md.

Timing: min of N repetitions, systems interleaved inside every repetition (the order rotates), so that
a noisy, shared machine slows every system alike.  Every system's result is checked against NumPy
(allclose) before it is timed; a mismatch or an error is reported instead of a time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` from a checkout, without PYTHONPATH
    sys.path.insert(0, str(ROOT))

import exprc

perf = time.perf_counter


def _ncores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


NCORES = _ncores()

# ---------------------------------------------------------------------------------------------------------------
# Expressions.  `fn(m, *inputs)` is written once for every NumPy-like module (numpy, exprc, jax.numpy,
# pytensor.tensor); `ne` is the numexpr text; `loop` is the body of a Numba loop (T is the dtype's scalar type,
# so that constants keep float32 loops in float32).
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    key: str
    text: str
    fn: Callable[..., Any]
    ne: str
    loop: str
    nin: int = 3
    reduction: bool = False


EXPRS = {e.key: e for e in [
    Expr("E1", "a*b + c", lambda m, a, b, c: a * b + c,
         "a*b + c", "a[i]*b[i] + c[i]"),
    Expr("E2", "exp(-a*a)*sin(b) + log1p(c*c)", lambda m, a, b, c: m.exp(-a * a) * m.sin(b) + m.log1p(c * c),
         "exp(-a*a)*sin(b) + log1p(c*c)", "np.exp(-a[i]*a[i])*np.sin(b[i]) + np.log1p(c[i]*c[i])"),
    Expr("E3", "sqrt(a*a + b*b) / (1 + exp(-c))", lambda m, a, b, c: m.sqrt(a * a + b * b) / (1 + m.exp(-c)),
         "sqrt(a*a + b*b) / (1 + exp(-c))", "np.sqrt(a[i]*a[i] + b[i]*b[i]) / (T(1) + np.exp(-c[i]))"),
    Expr("E4", "sum(exp(a - max(a)))", lambda m, a: m.sum(m.exp(a - m.max(a))),
         "sum(exp(a - m))", "np.exp(a[i] - m)", nin=1, reduction=True),
    Expr("E5", "2*a + 3*b - c*0.5 + a*b*c", lambda m, a, b, c: 2 * a + 3 * b - c * 0.5 + a * b * c,
         "2*a + 3*b - c*0.5 + a*b*c", "T(2)*a[i] + T(3)*b[i] - c[i]*T(0.5) + a[i]*b[i]*c[i]"),
]}

# Display order of the systems; `numpy` is the reference.
SYSTEMS = ["numpy", "exprc", "exprc-out", "ne-1", "ne-all", "numba", "numba-par", "pytensor", "jax"]
HEADERS = {"numpy": "numpy", "exprc": "exprc", "exprc-out": "exprc(out=)", "ne-1": "numexpr-1",
           "ne-all": f"numexpr-{NCORES}", "numba": "numba", "numba-par": "numba-par", "pytensor": "pytensor",
           "jax": "jax"}
GROUPS = {"numexpr": ["ne-1", "ne-all"], "numba": ["numba", "numba-par"], "exprc": ["exprc", "exprc-out"]}

TOL = {"float64": {"rtol": 1e-9, "atol": 1e-12}, "float32": {"rtol": 2e-4, "atol": 1e-5}}


# ---------------------------------------------------------------------------------------------------------------
# Optional systems
# ---------------------------------------------------------------------------------------------------------------

def _try_import(name: str) -> Any:
    try:
        return __import__(name)
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return None


ne = _try_import("numexpr")
numba = _try_import("numba")
pytensor = _try_import("pytensor")
jax = _try_import("jax")
if pytensor is not None:
    import pytensor.tensor as pt
if jax is not None:
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "numpy": np.__version__,
                                  "exprc": exprc.__version__}
    for name, mod in [("numexpr", ne), ("numba", numba), ("pytensor", pytensor), ("jax", jax)]:
        out[name] = getattr(mod, "__version__", None) if mod is not None else None
    try:
        cc = os.environ.get("CC", "cc")
        out["cc"] = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        out["cc"] = None
    return out


def _git() -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], check=False,
                           capture_output=True, text=True)
        return p.stdout.strip() or None
    except OSError:
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Runner:
    """One timed system for one cell: `call()` runs it once; `before()` runs before each timed batch."""

    call: Callable[[], Any]
    before: Callable[[], None] = lambda: None
    result: Callable[[Any], Any] = lambda r: r
    number: int = 1
    times: list[float] = field(default_factory=list)


def _settle() -> None:
    # Let spinning worker threads (OpenMP, numexpr, Numba) of the previous system go idle, so that they do
    # not steal a core from the next one on a small machine.
    time.sleep(0.005)


def calibrate(run: Runner, target: float) -> int:
    """Calls per timed batch so that one batch lasts about `target` seconds."""
    run.before()
    for _ in range(3):  # warm up: a system's first calls (plans, dispatchers, JIT) are not its speed
        run.call()
    n = 1
    while True:
        t0 = perf()
        for _ in range(n):
            run.call()
        dt = perf() - t0
        if dt >= target / 4 or n >= 1 << 20:
            break
        n *= 8
    return max(1, min(1 << 22, round(n * target / max(dt, 1e-9))))


def time_batch(run: Runner) -> float:
    run.before()
    call, number = run.call, run.number
    gc.disable()
    try:
        t0 = perf()
        for _ in range(number):
            call()
        return (perf() - t0) / number
    finally:
        gc.enable()


def interleaved(runners: dict[str, Runner], reps: int, target: float) -> dict[str, float]:
    """Min-of-`reps` seconds per call of each runner, systems interleaved, order rotating every repetition."""
    names = list(runners)
    for name in names:
        runners[name].number = calibrate(runners[name], target) if target > 0 else 1
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            _settle()
            runners[name].times.append(time_batch(runners[name]))
    return {name: min(r.times) for name, r in runners.items()}


def verify(got: Any, ref: np.ndarray, dtype: str) -> str | None:
    """None when `got` matches the NumPy reference, else a short description."""
    try:
        arr = np.asarray(got)
    except Exception as exc:  # noqa: BLE001
        return f"result not an array ({type(exc).__name__})"
    if arr.shape != np.shape(ref):
        return f"shape {arr.shape} != {np.shape(ref)}"
    a64, r64 = arr.astype(np.float64), np.asarray(ref, dtype=np.float64)
    if np.allclose(a64, r64, equal_nan=True, **TOL[dtype]):
        return None
    with np.errstate(all="ignore"):
        rel = np.nanmax(np.abs(a64 - r64) / np.maximum(np.abs(r64), TOL[dtype]["atol"]))
    return f"mismatch (max rel err {rel:.2e})"


# ---------------------------------------------------------------------------------------------------------------
# System adapters: each returns a Runner for (expr, dtype, inputs) or raises
# ---------------------------------------------------------------------------------------------------------------

_NUMBA_CACHE: dict[tuple, Any] = {}
_EXPRC_CACHE: dict[tuple, Any] = {}
COMPILE_TIMES: dict[str, float] = {}


def exprc_function(e: Expr, dtype: str) -> Any:
    key = (e.key, dtype)
    if key not in _EXPRC_CACHE:
        ins = [exprc.vector(n, dtype) for n in "abc"[:e.nin]]
        t0 = perf()
        _EXPRC_CACHE[key] = exprc.function(ins, e.fn(exprc, *ins))
        COMPILE_TIMES[f"exprc {e.key} {dtype}"] = perf() - t0
    return _EXPRC_CACHE[key]


def numba_function(e: Expr, dtype: str, parallel: bool) -> Any:
    key = (e.key, dtype, parallel)
    if key in _NUMBA_CACHE:
        return _NUMBA_CACHE[key]
    if e.reduction:
        src = (f"def f(a):\n    m = np.max(a)\n    s = 0.0\n    for i in prange(a.shape[0]):\n"
               f"        s += {e.loop}\n    return s\n")
    else:
        src = (f"def f(a, b, c):\n    n = a.shape[0]\n    out = np.empty(n, a.dtype)\n"
               f"    for i in prange(n):\n        out[i] = {e.loop}\n    return out\n")
    scope: dict[str, Any] = {"np": np, "prange": numba.prange, "T": np.dtype(dtype).type}
    exec(compile(src, f"<numba {e.key} {dtype}>", "exec"), scope)  # noqa: S102 - our own source text
    fn = numba.njit(parallel=parallel)(scope["f"])
    _NUMBA_CACHE[key] = fn
    return fn


def make_runner(system: str, e: Expr, dtype: str, xs: list[np.ndarray]) -> Runner:
    if system == "numpy":
        return Runner(lambda: e.fn(np, *xs))
    if system == "exprc":
        f = exprc_function(e, dtype)
        return Runner(lambda: f(*xs))
    if system == "exprc-out":
        if e.reduction:
            raise NotImplementedError("elementwise only")
        f = exprc_function(e, dtype)
        out = np.empty_like(xs[0])
        return Runner(lambda: f(*xs, out=out), result=lambda r: out)
    if system in ("ne-1", "ne-all"):
        if ne is None:
            raise ModuleNotFoundError("numexpr")
        nt = 1 if system == "ne-1" else NCORES

        def before() -> None:
            ne.set_num_threads(nt)

        env = dict(zip("abc", xs))
        if e.reduction:
            ev = ne.evaluate

            def call() -> Any:  # numexpr reductions must be outermost: max first, then the sum
                return ev(e.ne, local_dict={"a": xs[0], "m": ev("max(a)", local_dict=env)})
        else:
            def call() -> Any:
                return ne.evaluate(e.ne, local_dict=env)
        return Runner(call, before=before)
    if system in ("numba", "numba-par"):
        if numba is None:
            raise ModuleNotFoundError("numba")
        f = numba_function(e, dtype, system == "numba-par")
        t0 = perf()
        f(*xs)  # compile outside the timing
        COMPILE_TIMES.setdefault(f"{system} {e.key} {dtype}", perf() - t0)
        return Runner(lambda: f(*xs))
    if system == "pytensor":
        if pytensor is None:
            raise ModuleNotFoundError("pytensor")
        ins = [pt.vector(n, dtype=dtype) for n in "abc"[:e.nin]]
        f = pytensor.function(ins, e.fn(pt, *ins))
        return Runner(lambda: f(*xs))
    if system == "jax":
        if jax is None:
            raise ModuleNotFoundError("jax")
        f = jax.jit(lambda *args: e.fn(jnp, *args))
        jxs = [jax.device_put(x) for x in xs]
        return Runner(lambda: f(*jxs).block_until_ready())
    raise ValueError(system)


def available(system: str) -> bool:
    return {"ne-1": ne, "ne-all": ne, "numba": numba, "numba-par": numba, "pytensor": pytensor,
            "jax": jax}.get(system, exprc) is not None


# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------

def inputs(dtype: str, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2.0, 2.0, n).astype(dtype) for _ in range(3)]


def plan_for(n: int, quick: bool, reps_override: int | None) -> tuple[int, float]:
    """(repetitions, seconds per timed batch) for arrays of n elements."""
    # Many short batches rather than a few long ones: the minimum then finds the quiet moments of a busy machine.
    if n >= 3_000_000:
        reps, target = 5, 0.0  # one call per repetition
    elif n >= 100_000:
        reps, target = 11, 0.003
    else:
        reps, target = 21, 0.001
    if quick:
        reps = min(reps, 5 if n < 3_000_000 else 3)
    return (reps_override or reps), target


def bench_cell(e: Expr, dtype: str, n: int, systems: list[str], quick: bool, reps: int | None) -> dict:
    xs = inputs(dtype, n)[:e.nin]
    with np.errstate(all="ignore"):
        ref = e.fn(np, *xs)
    runners: dict[str, Runner] = {}
    status: dict[str, str] = {}
    for s in systems:
        if not available(s):
            continue
        try:
            r = make_runner(s, e, dtype, xs)
            with np.errstate(all="ignore"):
                got = r.result(r.call())
            bad = verify(got, ref, dtype)
        except NotImplementedError:
            continue
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            bad = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
        if bad:
            status[s] = bad
        else:
            runners[s] = r
    nreps, target = plan_for(n, quick, reps)
    gc.collect()
    with np.errstate(all="ignore"):
        best = interleaved(runners, nreps, target)
    base = best.get("numpy")
    cell = {"expr": e.key, "text": e.text, "dtype": dtype, "n": n, "reps": nreps,
            "calls_per_rep": {s: r.number for s, r in runners.items()}, "seconds": best,
            "all_seconds": {s: r.times for s, r in runners.items()},
            "ratio_vs_numpy": {s: base / t for s, t in best.items()} if base else {}, "problems": status}
    return cell


def bench_call_overhead(quick: bool, systems: list[str]) -> dict:
    """µs per call of a*b + c on 10-element float64 arrays."""
    xs = inputs("float64", 10)
    e = EXPRS["E1"]
    ref = e.fn(np, *xs)
    runners, status = {}, {}
    for s in systems:
        if not available(s) or s == "ne-all":
            continue
        try:
            r = make_runner(s, e, "float64", xs)
            bad = verify(r.result(r.call()), ref, "float64")
        except Exception as exc:  # noqa: BLE001
            bad = f"error: {type(exc).__name__}: {exc}"
        if bad:
            status[s] = bad
        else:
            runners[s] = r
    if "ne-1" in runners:  # thread count is irrelevant at n=10; name it plainly
        runners["numexpr"] = runners.pop("ne-1")
    best = interleaved(runners, 5 if quick else 25, 0.002)
    return {"n": 10, "expr": e.text, "us_per_call": {s: t * 1e6 for s, t in best.items()}, "problems": status}


# A 20-operation elementwise function of three inputs (built in the child process).
_GRAPH20 = """
t = a * b + c                         # 2
t = exprc.exp(-t) * exprc.sin(a)      # 6
t = t + exprc.log1p(b * b)            # 9
t = t / (1 + c * c)                   # 12
t = exprc.sqrt(exprc.abs(t) + a)      # 15
t = t - exprc.tanh(b)                 # 17
t = t * exprc.cos(c) + a              # 20
"""

_CHILD = """
import json, sys, time
perf = time.perf_counter
t0 = perf()
import numpy as np
import exprc
try:  # modules the C backend imports lazily (networkx: fusion's scheduler): import time, not compile time
    import cffi, networkx, exprc.backends.c.kernel, exprc.backends.c.compile, exprc.backends.c.render  # noqa: F401
except ImportError:
    pass
t1 = perf()
a, b, c = (exprc.vector(n) for n in "abc")
GRAPH
f = exprc.function([a, b, c], t)
t2 = perf()
x = np.linspace(0.1, 1.0, 1000)
f(x, x, x)
t3 = perf()
print(json.dumps({"import": t1 - t0, "function": t2 - t1, "first_call": t3 - t2, "total": t3 - t1,
                  "cache_path": f.cache_path}))
""".replace("GRAPH", _GRAPH20)


def _child(cache_dir: str) -> dict:
    env = dict(os.environ, EXPRC_CACHE_DIR=cache_dir, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env.pop("EXPRC_CACHE", None)
    p = subprocess.run([sys.executable, "-c", _CHILD], check=False, env=env, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_compile(quick: bool) -> dict:
    """Cold: empty cache folder.  Warm: cache populated, fresh process.  Both exclude `import exprc`."""
    reps = 1 if quick else 3
    cold, warm = [], []
    with tempfile.TemporaryDirectory(prefix="exprc-bench-compile-") as tmp:
        for i in range(reps):
            d = os.path.join(tmp, f"cold{i}")
            cold.append(_child(d))
            warm.append(_child(d))
    best = lambda rs: min(rs, key=lambda r: r["total"])
    return {"ops": 20, "reps": reps, "cold": best(cold), "warm": best(warm), "cold_all": cold, "warm_all": warm}


_TRIAD_C = r"""
#include <stdint.h>
void triad(int64_t n, double *restrict a, const double *restrict b, const double *restrict c, double s, int nt)
{
    #pragma omp parallel for simd num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
}
"""


def bench_triad(n: int, reps: int) -> dict:
    """STREAM triad a = b + s*c in C (OpenMP), preallocated arrays: GB/s with 24 bytes per element."""
    import cffi

    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory(prefix="exprc-bench-triad-") as tmp:
        src, lib = os.path.join(tmp, "triad.c"), os.path.join(tmp, "triad.so")
        Path(src).write_text(_TRIAD_C)
        subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", src, "-o", lib], check=True,
                       capture_output=True)
        ffi = cffi.FFI()
        ffi.cdef("void triad(int64_t n, double *a, const double *b, const double *c, double s, int nt);")
        so = ffi.dlopen(lib)
    b, c = inputs("float64", n)[:2]
    a = np.zeros(n)
    pa, pb, pc = (ffi.cast("double *", ffi.from_buffer(x)) for x in (a, b, c))
    out = {"n": n, "bytes_per_elem": 24}
    runners = {nt: Runner(lambda nt=nt: so.triad(n, pa, pb, pc, 3.0, nt)) for nt in sorted({1, NCORES})}
    for r in runners.values():
        r.call()
    if not np.allclose(a, b + 3.0 * c):
        return {"error": "triad result mismatch"}
    best = interleaved(runners, reps, 0.0)
    for nt, t in best.items():
        out[f"GBps_{nt}thr"] = 24 * n / t / 1e9
    out["GBps"] = max(v for k, v in out.items() if k.startswith("GBps_"))  # the best thread count is the reference
    return out


def bandwidth_fractions(cells: list[dict], triad: dict) -> list[dict]:
    """E1/E5 at the largest size >= 1e6: bytes moved (3 inputs + 1 output) / time, as a fraction of triad."""
    rows = []
    if "GBps" not in triad:
        return rows
    big = [c for c in cells if c["expr"] in ("E1", "E5") and c["n"] >= 1_000_000]
    if not big:
        return rows
    nmax = max(c["n"] for c in big)
    for c in big:
        if c["n"] != nmax:
            continue
        nbytes = 4 * np.dtype(c["dtype"]).itemsize * c["n"]
        for s, t in c["seconds"].items():
            gbps = nbytes / t / 1e9
            rows.append({"expr": c["expr"], "dtype": c["dtype"], "n": c["n"], "system": s, "GBps": gbps,
                         "fraction_of_triad": gbps / triad["GBps"]})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------------------------

def check_targets(cells: list[dict], call: dict | None, comp: dict | None) -> list[dict]:
    by = {(c["expr"], c["dtype"], c["n"]): c for c in cells}
    out: list[dict] = []

    def add(name: str, value: Any, ok: bool | None, note: str = "") -> None:
        out.append({"target": name, "value": value, "met": ok, "note": note})

    def ratio(ex: str, n: int, s: str = "exprc") -> float | None:
        c = by.get((ex, "float64", n))
        return None if c is None else c["ratio_vs_numpy"].get(s)

    for ex, goal in [("E2", 8.0), ("E4", 3.0), ("E5", 3.5)]:
        r = ratio(ex, 10**7)
        add(f"1e7 float64 {ex} >= {goal}x NumPy", None if r is None else round(r, 2),
            None if r is None else r >= goal)
    for rival in ("ne-all", "numba-par"):
        for ex in ("E1", "E2", "E3", "E4", "E5"):
            c = by.get((ex, "float64", 10**7))
            if c is None:
                continue
            mine, theirs = c["seconds"].get("exprc"), c["seconds"].get(rival)
            if mine is None or theirs is None:
                add(f"1e7 float64 {ex} exprc ahead of {HEADERS[rival]}", None, None,
                    c["problems"].get("exprc") or c["problems"].get(rival) or "not measured")
            else:
                add(f"1e7 float64 {ex} exprc ahead of {HEADERS[rival]}", round(theirs / mine, 2), mine < theirs,
                    "value: their time / exprc time")
    for ex in ("E1", "E2", "E3", "E4", "E5"):
        goal = 5.0 if ex == "E5" else 1.0
        r = ratio(ex, 1000)
        if (ex, "float64", 1000) in by:
            add(f"1e3 float64 {ex} {'>= 5x' if ex == 'E5' else 'faster than'} NumPy",
                None if r is None else round(r, 2), None if r is None else (r >= goal if ex == "E5" else r > 1.0))
    if call is not None:
        us = call["us_per_call"].get("exprc")
        add("call overhead <= 0.5 us", None if us is None else round(us, 2), None if us is None else us <= 0.5)
    if comp is not None and "cold" in comp:
        s = comp["cold"]["total"]
        add("cold compile <= 0.25 s", round(s, 3), s <= 0.25)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------------------------

def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def fmt_n(n: int) -> str:
    e = round(float(np.log10(n))) if n > 0 else 0
    return f"1e{e}" if 10**e == n else str(n)


def print_table(cells: list[dict], systems: list[str]) -> None:
    shown = [s for s in systems if s != "numpy" and any(s in c["seconds"] or s in c["problems"] for c in cells)]
    heads = ["expr", "dtype", "size", "numpy time"] + [HEADERS[s] for s in shown]
    widths = [4, 7, 4, 11] + [max(len(HEADERS[s]), 8) for s in shown]
    print("Throughput: NumPy time per call, and ratio = NumPy time / system time (> 1: faster than NumPy)")
    print("  ".join(h.rjust(w) if i >= 3 else h.ljust(w) for i, (h, w) in enumerate(zip(heads, widths))))
    notes = []
    for c in cells:
        row = [c["expr"], c["dtype"], fmt_n(c["n"])]
        row.append(fmt_time(c["seconds"]["numpy"]) if "numpy" in c["seconds"] else c["problems"].get("numpy", "-"))
        for s in shown:
            if s in c["ratio_vs_numpy"]:
                row.append(f"{c['ratio_vs_numpy'][s]:.2f}x")
            elif s in c["problems"]:
                tag = "ERROR" if c["problems"][s].startswith("error") else "MISMATCH"
                notes.append(f"  {c['expr']} {c['dtype']} {fmt_n(c['n'])} {HEADERS[s]}: {c['problems'][s]}")
                row.append(tag)
            else:
                row.append("-")
        print("  ".join(x.rjust(w) if i >= 3 else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths))))
    if notes:
        print("Not timed:")
        print("\n".join(notes))


def print_report(res: dict, systems: list[str]) -> None:
    print()
    print(f"exprc benchmark  {res['timestamp']}  {res['machine']['cpu']}, {NCORES} cores  "
          f"({', '.join(f'{k} {v}' for k, v in res['versions'].items() if v)})")
    print(f"exprc checkout: {res['git']}")
    print(f"command: {res['command']}   load average (1/5/15 min) at start {res['loadavg_start']}, "
          f"at end {res['loadavg_end']}")
    print()
    if res["throughput"]:
        print_table(res["throughput"], systems)
        print()
    if res.get("call_overhead"):
        co = res["call_overhead"]
        print(f"Call overhead: {co['expr']} on {co['n']}-element float64 arrays, us per call")
        for s, us in sorted(co["us_per_call"].items(), key=lambda kv: kv[1]):
            print(f"  {HEADERS.get(s, s):14s} {us:8.2f} us")
        for s, p in co["problems"].items():
            print(f"  {HEADERS.get(s, s):14s} {p}")
        print()
    if res.get("compile"):
        cp = res["compile"]
        if "error" in cp:
            print(f"Compile latency: ERROR {cp['error']}")
        else:
            print(f"Compile latency: {cp['ops']}-op elementwise function, exprc.function + first call, fresh process, "
                  f"import excluded (min of {cp['reps']})")
            for k in ("cold", "warm"):
                r = cp[k]
                print(f"  {k:5s} {r['total'] * 1e3:8.1f} ms   (function {r['function'] * 1e3:.1f} ms, "
                      f"first call {r['first_call'] * 1e3:.2f} ms; import exprc + backend modules {r['import'] * 1e3:.0f} ms)")
        print()
    tr = res.get("triad")
    if tr:
        if "error" in tr:
            print(f"Bandwidth reference: ERROR {tr['error']}")
        else:
            per = ", ".join(f"{k[5:]} {v:.1f} GB/s" for k, v in tr.items() if k.startswith("GBps_"))
            print(f"Bandwidth reference: C triad a = b + s*c, n = {fmt_n(tr['n'])} doubles, 24 B/elem: {per}")
            rows = res.get("bandwidth", [])
            if rows:
                print("  E1/E5 effective bandwidth (3 inputs + 1 output moved) as a fraction of triad "
                      f"({tr['GBps']:.1f} GB/s):")
                for r in rows:
                    print(f"  {r['expr']} {r['dtype']:7s} {fmt_n(r['n'])} {HEADERS.get(r['system'], r['system']):12s} "
                          f"{r['GBps']:6.1f} GB/s  {r['fraction_of_triad'] * 100:5.0f}%")
        print()
    if res.get("targets"):
        print("Targets")
        for t in res["targets"]:
            mark = {True: "MET    ", False: "NOT MET", None: "n/a    "}[t["met"]]
            val = "" if t["value"] is None else f"  ({t['value']})"
            note = f"  [{t['note']}]" if t["note"] and t["met"] is None else ""
            print(f"  {mark} {t['target']}{val}{note}")


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------

def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: sizes 1e3,1e5, float64, fewer repetitions, one compile repetition")
    p.add_argument("--sizes", help="comma-separated sizes (default 1e3,1e5,1e7)")
    p.add_argument("--dtypes", help="comma-separated dtypes (default float64,float32)")
    p.add_argument("--exprs", help="comma-separated expressions (default E1,E2,E3,E4,E5)")
    p.add_argument("--systems", help="comma-separated systems or groups (default: all available): "
                                     + ", ".join(SYSTEMS) + "; groups: " + ", ".join(GROUPS))
    p.add_argument("--reps", type=int, help="repetitions per cell (default: 7 / 5 / 3 by size)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: throughput,call,compile,triad")
    p.add_argument("--json", help="where to write the JSON (default bench/results/<timestamp>.json)")
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    args = p.parse_args(argv)
    args.sizes = [int(float(x)) for x in _csv(args.sizes or ("1e3,1e5" if args.quick else "1e3,1e5,1e7"))]
    args.dtypes = [str(np.dtype(x)) for x in _csv(args.dtypes or ("float64" if args.quick else "float64,float32"))]
    for d in args.dtypes:
        if d not in TOL:
            p.error(f"unsupported dtype {d}: use float64 or float32")
    args.exprs = [x.upper() for x in _csv(args.exprs or ",".join(EXPRS))]
    for x in args.exprs:
        if x not in EXPRS:
            p.error(f"unknown expression {x}: choose from {', '.join(EXPRS)}")
    wanted = _csv(args.systems) if args.systems else list(SYSTEMS)
    systems: list[str] = []
    for w in wanted:
        for s in GROUPS.get(w, [w]):
            if s not in SYSTEMS:
                p.error(f"unknown system {s}")
            if s not in systems:
                systems.append(s)
    if "numpy" not in systems:
        systems.insert(0, "numpy")  # the reference is always measured
    args.systems = [s for s in SYSTEMS if s in systems]
    args.skip = set(_csv(args.skip))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = perf()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    res: dict[str, Any] = {
        "timestamp": stamp, "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {"cpu": cpu_model(), "cores": NCORES, "platform": platform.platform()},
        "versions": versions(),
        "git": _git(),
        "env": {k: os.environ.get(k) for k in ("EXPRC_CACHE_DIR", "EXPRC_NUM_THREADS", "OMP_NUM_THREADS",
                                                 "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS", "NUMEXPR_MAX_THREADS")},
        "options": {"quick": args.quick, "sizes": args.sizes, "dtypes": args.dtypes, "exprs": args.exprs,
                    "systems": args.systems, "reps": args.reps},
        "unavailable": [s for s in args.systems if not available(s)],
        "loadavg_start": _loadavg(),
        "throughput": [],
    }
    say = lambda msg: print(f"[{perf() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # Compile latency first: its child processes start before this process has any worker threads.
    comp = None
    if "compile" not in args.skip:
        say("compile latency (cold / warm, fresh processes)")
        try:
            comp = bench_compile(args.quick)
        except Exception as exc:  # noqa: BLE001
            comp = {"error": f"{type(exc).__name__}: {exc}"}
        res["compile"] = comp
    if "throughput" not in args.skip:
        for dtype in args.dtypes:
            for n in args.sizes:
                for ex in args.exprs:
                    say(f"{ex} {dtype} n={fmt_n(n)}")
                    res["throughput"].append(bench_cell(EXPRS[ex], dtype, n, args.systems, args.quick, args.reps))
    call = None
    if "call" not in args.skip:
        say("call overhead")
        call = bench_call_overhead(args.quick, args.systems)
        res["call_overhead"] = call
    if "triad" not in args.skip:
        say("triad bandwidth")
        try:
            n = max([10**7] + [n for n in args.sizes if n >= 10**6]) if not args.quick else 2 * 10**6
            res["triad"] = bench_triad(n, 3 if args.quick else 5)
        except Exception as exc:  # noqa: BLE001
            res["triad"] = {"error": f"{type(exc).__name__}: {exc}"}
        res["bandwidth"] = bandwidth_fractions(res["throughput"], res["triad"])
    res["compile_seconds_in_process"] = COMPILE_TIMES
    if numba is not None:
        with contextlib.suppress(Exception):  # no parallel function ran
            res["versions"]["numba_threading_layer"] = numba.threading_layer()
    res["targets"] = check_targets(res["throughput"], call, comp if comp and "error" not in comp else None)
    res["wall_seconds"] = perf() - t_start
    res["loadavg_end"] = _loadavg()
    print_report(res, args.systems)
    print(f"\nwall time {res['wall_seconds']:.0f} s")
    if not args.no_json:
        path = Path(args.json) if args.json else HERE / "results" / f"{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1, default=float))
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
