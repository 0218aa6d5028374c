#!/usr/bin/env python
"""Loop measurements (exprc.scan / fori_loop): an LSTM's BPTT step and a scalar fori_loop, each as
ratios measured in one run.  Run:  python bench/control.py  [--quick] [--threads N] [--json PATH]

* LSTM compile: the LSTM language model of examples/theano_tutorials/lstm.py (vocabulary 20,
  embedding 32, hidden 128, batch 16), cost and the gradient of every parameter (``grad``
  through ``scan``), with the sequence length fixed in the graph (static shapes) at 10 and at
  1,000 steps.  Each compile runs in a fresh process: *cold* with an empty ``EXPRC_CACHE_DIR``,
  *warm* in a second fresh process over the cache the cold one filled.  ``graph`` is building the
  expression and its gradient, ``function`` is ``exprc.function`` (the C sources, gcc, loading),
  ``first call`` is the first call (what ``function`` left to call time).  JAX (``jit`` of
  ``value_and_grad`` of a ``lax.scan``: trace + XLA compile at the first call) and PyTensor
  (``pytensor.function`` in its default mode, a fresh ``compiledir`` for cold) are measured the
  same way when they import.
* LSTM step: one call computing the cost and all the gradients (and the cost alone) for a batch of
  16 sequences of 10 steps, hidden 128, against the same model in NumPy (a hand-written BPTT),
  JAX and PyTensor.  Every result is checked against the NumPy one (rtol 1e-9) before timing.
* logistic map: ``x = r*x*(1-x)`` 1,000,000 times (r = 3.7, x0 = 0.5) with ``exprc.fori_loop``,
  against the same loop in C (a function compiled here with cffi, gcc -O2) and a Python loop
  (and ``jax.lax.fori_loop`` when JAX imports).  The results must be equal to the bit.

Timing: min over rounds, systems interleaved within each round.  ``--threads`` (default 1) sets
OpenBLAS, OpenMP, exprc and XLA to that many threads: these loops are latency-bound on small
matrices, and on a shared machine a spinning worker thread costs more than it gains.  Ratios are
``other time / exprc time`` (> 1: exprc faster).  Results go to bench/results/control-<time>.json.
JAX and PyTensor are optional (``pip install jax pytensor``); columns of a missing one are skipped.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import best, set_threads, try_import  # (bench/, the script's folder)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "examples" / "theano_tutorials"

V, E, H, B, T_STEPS = 20, 32, 128, 16, 10  # vocabulary, embedding, hidden, batch, sequence length
R, X0, N_MAP = 3.7, 0.5, 1_000_000


def _paths() -> None:
    for p in (str(ROOT), str(EXAMPLES)):
        if p not in sys.path:
            sys.path.insert(0, p)


# -- the LSTM in each system -------------------------------------------------------------------------
def exprc_lstm(params: dict, n_steps: int | None, with_grads: bool = True):
    """A compiled exprc function (x, y) -> cost [, gradients in ``params`` order]."""
    import lstm

    import exprc

    tparams = lstm.init_tparams(params)
    x, y, cost = lstm.build_model(tparams, H, shape=None if n_steps is None else (n_steps, B))
    outs = [cost, *exprc.grad(cost, wrt=list(tparams.values()))] if with_grads else cost
    return x, y, outs


def jax_lstm(with_grads: bool = True):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def loss(p, x, y):
        below = p["Wemb"][x] @ p["lstm_W"] + p["lstm_b"]

        def step(carry, xb):
            h, c = carry
            pre = h @ p["lstm_U"] + xb
            i, f, o = (jax.nn.sigmoid(pre[:, k * H:(k + 1) * H]) for k in range(3))
            c = f * c + i * jnp.tanh(pre[:, 3 * H:])
            h = o * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((x.shape[1], H))
        _, hs = jax.lax.scan(step, (zeros, zeros), below)
        log_p = jax.nn.log_softmax(hs @ p["U"] + p["b"], axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, y[..., None], axis=-1))

    return jax.jit(jax.value_and_grad(loss) if with_grads else loss)


def pytensor_lstm(params: dict, with_grads: bool = True):
    import pytensor
    import pytensor.tensor as pt

    tp = {k: pytensor.shared(v, name=k) for k, v in params.items()}
    x, y = pt.matrix("x", dtype="int64"), pt.matrix("y", dtype="int64")
    below = pt.dot(tp["Wemb"][x], tp["lstm_W"]) + tp["lstm_b"]

    def step(xb, h, c):
        pre = pt.dot(h, tp["lstm_U"]) + xb
        i, f, o = (pt.sigmoid(pre[:, k * H:(k + 1) * H]) for k in range(3))
        c = f * c + i * pt.tanh(pre[:, 3 * H:])
        h = o * pt.tanh(c)
        return h, c

    zeros = pt.zeros((x.shape[1], H))
    hs, _ = pytensor.scan(step, sequences=[below], outputs_info=[zeros, zeros], return_updates=False)
    log_p = pt.special.log_softmax(pt.dot(hs, tp["U"]) + tp["b"], axis=-1)
    cost = -pt.mean(pt.take_along_axis(log_p, y[..., None], axis=-1))
    outs = [cost, *pytensor.grad(cost, list(tp.values()))] if with_grads else cost
    return pytensor.function([x, y], outs)


# -- compile times, each in a fresh process ---------------------------------------------------------
def compile_child(system: str, n_steps: int) -> None:
    """Runs in a subprocess: prints one JSON line of timings."""
    _paths()
    import lstm
    import numpy as np

    params = lstm.init_params(V, E, H)
    data_x, data_y = lstm.make_data(B, n_steps, V)
    out: dict = {}
    if system == "exprc":
        import exprc

        w = exprc.vector("w")
        exprc.function([w], w * 2)(np.ones(3))  # imports and the C toolchain probe: not counted
        t = time.perf_counter()
        x, y, outs = exprc_lstm(params, n_steps)
        out["graph_s"] = time.perf_counter() - t
        t = time.perf_counter()
        f = exprc.function([x, y], outs)
        out["function_s"] = time.perf_counter() - t
        t = time.perf_counter()
        res = f(data_x, data_y)
        out["first_call_s"] = time.perf_counter() - t
        cost = float(res[0])
        t = time.perf_counter()
        f(data_x, data_y)
        out["second_call"] = time.perf_counter() - t
    elif system == "jax":
        import jax
        import jax.numpy as jnp

        t = time.perf_counter()
        f = jax_lstm()
        jp = {k: jnp.asarray(v) for k, v in params.items()}
        out["graph_s"] = time.perf_counter() - t
        t = time.perf_counter()
        jx, jy = jnp.asarray(data_x), jnp.asarray(data_y)
        cost_j, _ = f(jp, jx, jy)
        cost = float(cost_j)
        out["first_call_s"] = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(f(jp, jx, jy))
        out["second_call"] = time.perf_counter() - t
    elif system == "pytensor":
        t = time.perf_counter()
        f = pytensor_lstm(params)
        out["function_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cost = float(f(data_x, data_y)[0])
        out["first_call_s"] = time.perf_counter() - t
        t = time.perf_counter()
        f(data_x, data_y)
        out["second_call"] = time.perf_counter() - t
    else:
        raise ValueError(system)
    out["cost_error"] = abs(cost - lstm.numpy_forward(params, data_x, data_y)) / abs(cost)
    out["total_s"] = sum(v for k, v in out.items() if k.endswith("_s"))
    assert np.isfinite(out["total_s"])
    print(json.dumps(out))


def run_child(system: str, n_steps: int, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_compile-child", system, str(n_steps),
           "--threads", os.environ.get("EXPRC_NUM_THREADS", "1")]
    r = subprocess.run(cmd, check=False, env={**os.environ, **env}, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout) else "failed"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_compile(systems: list[str], steps: list[int]) -> list[dict]:
    rows = []
    for n in steps:
        for system in systems:
            with tempfile.TemporaryDirectory() as d:
                env = {"EXPRC_CACHE_DIR": d, "PYTENSOR_FLAGS": f"compiledir={d}"}
                kinds = ["cold", "warm"] if system in ("exprc", "pytensor") else ["cold"]
                for kind in kinds:
                    print(f"  compiling: {system}, {n} steps, {kind} ...", file=sys.stderr)
                    rows.append({"system": system, "n_steps": n, "cache": kind, **run_child(system, n, env)})
    return rows


# -- step times ---------------------------------------------------------------------------------------
def bench_lstm_step(systems: list[str], rounds: int) -> list[dict]:
    import lstm
    import numpy as np

    import exprc

    params = lstm.init_params(V, E, H)
    data_x, data_y = lstm.make_data(B, T_STEPS, V)
    names = list(params)
    want_cost, want_g = lstm.numpy_grads(params, data_x, data_y)
    rows = []
    for with_grads in (True, False):
        fns, notes = {}, {}

        def check(system, cost, grads=None):
            assert abs(float(cost) - want_cost) <= 1e-9 * abs(want_cost), (system, float(cost), want_cost)
            for k, g in zip(names, grads or []):
                np.testing.assert_allclose(np.asarray(g), want_g[k], rtol=1e-9, atol=1e-12, err_msg=f"{system} {k}")

        if with_grads:
            fns["numpy"] = lambda: lstm.numpy_grads(params, data_x, data_y)
        else:
            fns["numpy"] = lambda: lstm.numpy_forward(params, data_x, data_y)
        x, y, outs = exprc_lstm(params, None, with_grads)
        f = exprc.function([x, y], outs)
        r = f(data_x, data_y)
        check("exprc", r[0], r[1:]) if with_grads else check("exprc", r)
        fns["exprc"] = lambda f=f: f(data_x, data_y)
        notes["exprc"] = _native_report(f, data_x, data_y)
        if "jax" in systems:
            import jax.numpy as jnp

            fj = jax_lstm(with_grads)
            jp = {k: jnp.asarray(v) for k, v in params.items()}
            jx, jy = jnp.asarray(data_x), jnp.asarray(data_y)
            r = fj(jp, jx, jy)
            check("jax", r[0], [r[1][k] for k in names]) if with_grads else check("jax", r)

            def run_jax(fj=fj, jp=jp, jx=jx, jy=jy):
                import jax

                jax.block_until_ready(fj(jp, jx, jy))

            fns["jax"] = run_jax
        if "pytensor" in systems:
            fp = pytensor_lstm(params, with_grads)
            r = fp(data_x, data_y)
            check("pytensor", r[0], r[1:]) if with_grads else check("pytensor", r)
            fns["pytensor"] = lambda fp=fp: fp(data_x, data_y)
        t = best(fns, 5, rounds)
        rows.append({"what": "cost + grads" if with_grads else "cost", "seconds": t,
                     "ratio_vs_exprc": {k: v / t["exprc"] for k, v in t.items()}, "notes": notes})
    return rows


def _native_report(f, *args) -> str:
    """How each loop of ``f`` ran (one call, instrumented): the C stepper, the elementwise C loop
    (loop inside), or the Python loop."""
    from exprc.backends.c import loopkernel, looplib

    step, whole, seen = looplib.CStepper.__call__, loopkernel.ElementwiseLoop.__call__, []

    def spy_step(self, runner, st, start, end):
        r = step(self, runner, st, start, end)
        seen.append(f"{runner.loop.name}: {'native' if r is not None else 'Python loop'}")
        return r

    def spy_whole(self, runner, st):
        r = whole(self, runner, st)
        if r is not None:
            seen.append(f"{runner.loop.name}: elementwise C loop")
        return r

    looplib.CStepper.__call__, loopkernel.ElementwiseLoop.__call__ = spy_step, spy_whole
    try:
        f(*args)
    finally:
        looplib.CStepper.__call__, loopkernel.ElementwiseLoop.__call__ = step, whole
    return "; ".join(seen) or "no loop stepped natively or in Python (n <= 1?)"


C_SOURCE = """
double logistic_map(double r, double x, long n) {
    for (long i = 0; i < n; i++) x = r * x * (1 - x);
    return x;
}
"""


def compile_c(d: str):
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("double logistic_map(double r, double x, long n);")
    ffi.set_source("_bench_logistic", C_SOURCE, extra_compile_args=["-O2"])
    lib_path = ffi.compile(tmpdir=d, verbose=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_logistic", lib_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.lib


def bench_logistic(systems: list[str], rounds: int, n: int = N_MAP) -> dict:
    import exprc

    r, x0, n_sym = exprc.scalar("r"), exprc.scalar("x0"), exprc.scalar("n", "int64")
    f = exprc.function([r, x0, n_sym], exprc.fori_loop(0, n_sym, lambda i, x: r * x * (1 - x), x0))

    def python_loop():
        x = X0
        for _ in range(n):
            x = R * x * (1 - x)
        return x

    with tempfile.TemporaryDirectory() as d:
        lib = compile_c(d)
        want = python_loop()
        results = {"exprc": float(f(R, X0, n)), "C (cffi, -O2)": lib.logistic_map(R, X0, n), "Python loop": want}
        fns = {"exprc": lambda: f(R, X0, n), "C (cffi, -O2)": lambda: lib.logistic_map(R, X0, n),
               "Python loop": python_loop}
        if "jax" in systems:
            import jax

            jax.config.update("jax_enable_x64", True)
            fj = jax.jit(lambda r, x: jax.lax.fori_loop(0, n, lambda i, x: r * x * (1 - x), x))
            results["jax"] = float(fj(R, X0))
            fns["jax"] = lambda: jax.block_until_ready(fj(R, X0))
        t = best(fns, 1, rounds)
    exact = {k: v == want for k, v in results.items()}
    return {"n": n, "seconds": t, "ratio_vs_exprc": {k: v / t["exprc"] for k, v in t.items()},
            "result": results, "equal_to_python": exact, "exprc_ns_per_step": t["exprc"] / n * 1e9,
            "notes": _native_report(f, R, X0, n)}


# -- report ---------------------------------------------------------------------------------------------
def _fmt(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def report(res: dict) -> str:
    title = (f"# exprc loops ({res['date']}, {res['machine']}, {res['cpus']} CPUs, {res['threads']} thread(s), "
             f"load average {res['load_start']:.2f} -> {res['load_end']:.2f})")
    lines = [title, ""]
    if res.get("compile"):
        lines += ["## LSTM compile (cost + grads), fresh process each", "",
                  "| system | steps | cache | graph | function | first call | total | second call |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in res["compile"]:
            if "error" in row:
                lines.append(f"| {row['system']} | {row['n_steps']} | {row['cache']} | ERROR: {row['error']} | | | | |")
                continue
            cells = [_fmt(row[k]) if k in row else "-"
                     for k in ("graph_s", "function_s", "first_call_s", "total_s", "second_call")]
            lines.append(f"| {row['system']} | {row['n_steps']} | {row['cache']} | " + " | ".join(cells) + " |")
        lines += ["", ("total = graph + function + first call (the first call also runs the steps once: compare with "
                  "the second call)"), ""]
    if res.get("lstm_step"):
        lines += [f"## LSTM step: {T_STEPS} steps, batch {B}, hidden {H}, vocabulary {V}, embedding {E}", "",
                  "ratio = system time / exprc time (> 1: exprc faster)", ""]
        systems = list(res["lstm_step"][0]["seconds"])
        lines += ["| computing | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
        for row in res["lstm_step"]:
            cells = [f"{_fmt(row['seconds'][s])} ({row['ratio_vs_exprc'][s]:.2f}x)" for s in systems]
            lines.append(f"| {row['what']} | " + " | ".join(cells) + " |")
        lines += [""] + [f"* exprc loops, {row['what']}: {row['notes']['exprc']}" for row in res["lstm_step"]] + [""]
    if res.get("logistic"):
        lg = res["logistic"]
        lines += [f"## logistic map, {lg['n']:,} iterations of x = r*x*(1-x)", "",
                  "| system | time | ratio vs exprc | result equal to the Python loop's |", "|---|---|---|---|"]
        for s, t in lg["seconds"].items():
            lines.append(f"| {s} | {_fmt(t)} | {lg['ratio_vs_exprc'][s]:.2f}x | {lg['equal_to_python'][s]} |")
        lines += ["", f"* exprc: {lg['exprc_ns_per_step']:.1f} ns per iteration; {lg['notes']}", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds; compile at 10 steps only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma list of: compile,lstm,logistic")
    ap.add_argument("--systems", default="exprc,numpy,jax,pytensor")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--_compile-child", nargs=2, metavar=("SYSTEM", "N_STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads(args.threads)
    if args._compile_child:
        compile_child(args._compile_child[0], int(args._compile_child[1]))
        return
    _paths()
    skip = set(filter(None, args.skip.split(",")))
    systems = args.systems.split(",")
    missing = []
    for opt in ("jax", "pytensor"):
        if opt in systems and try_import(opt) is None:
            systems.remove(opt)
            missing.append(opt)
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}", file=sys.stderr)
    rounds = 3 if args.quick else 7
    res: dict = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "threads": args.threads, "load_start": os.getloadavg()[0],
                 "skipped_systems": missing, "python": platform.python_version()}
    for mod in ("numpy", "jax", "pytensor"):
        m = try_import(mod)
        if m is not None:
            res[f"{mod}_version"] = m.__version__
    if "compile" not in skip:
        res["compile"] = bench_compile([s for s in systems if s != "numpy"], [10] if args.quick else [10, 1000])
    if "lstm" not in skip:
        print("  LSTM step ...", file=sys.stderr)
        res["lstm_step"] = bench_lstm_step(systems, rounds)
    if "logistic" not in skip:
        print("  logistic map ...", file=sys.stderr)
        res["logistic"] = bench_logistic(systems, rounds)
    res["load_end"] = os.getloadavg()[0]
    print(report(res))
    if not args.no_json:
        path = Path(args.json) if args.json else HERE / "results" / f"control-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
        print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
