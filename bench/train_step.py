#!/usr/bin/env python
"""Training steps against NumPy by hand, PyTensor and JAX, as ratios measured in one run (issue 17).
Run:  python bench/train_step.py  [--quick] [--threads N] [--json PATH]

* **softmax regression**: X (128 x 64) -> 10 classes, the loss written naively as
  ``-mean(sum(Y * log(softmax(X @ W + b)), axis=1))`` (Y one-hot), one call returning the loss and
  the SGD-updated ``W`` and ``b`` (learning rate 0.1).
* **MLP**: 64 -> 128 (tanh) -> 10 (softmax), the same loss and update of all four parameters.

Each system computes the same thing and is checked against NumPy (rtol 1e-9) before it is timed:
``exprc.function`` of the loss and the updated parameters; NumPy forward and backward written by
hand (the max-shifted softmax, its gradient ``(p - Y) / n``); ``pytensor.function`` of the same
graph; ``jax.jit`` of ``value_and_grad`` plus the update (x64). Columns of a system that does not
import are skipped (``pip install jax pytensor``).  Figures: microseconds per step (best of the
rounds, systems interleaved, ``bench/timing.py``), **time / NumPy time** (issue 17's targets:
softmax regression <= 0.5, MLP <= 0.8), and the number of exprc kernels, default (row kernels) /
with ``Config(row_fusion=False)`` (softmax regression <= 6); column ``exprc-norows`` is the step
without row kernels.
Also the exprc step with ``Config(nan_guard=True)`` against without (issue 19: <= 1.5x).

Cold compile (issue 17, item 5): in a fresh process with an empty ``EXPRC_CACHE_DIR`` whose
dispatcher and toolchain record were built by an earlier process, ``exprc.function`` of the
softmax-regression step plus a ``predict`` function (argmax of the logits); target <= 0.6 s.
Then the same in a second fresh process on the filled cache (warm).

``--threads`` (default 1) sets OpenBLAS, OpenMP, exprc and XLA to that many threads: these steps
are latency-bound on small matrices.  Results go to bench/results/train-<time>.json.
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
N, D, HID, C, LR = 128, 64, 128, 10, 0.1


def data(model: str):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D))
    y = np.eye(C)[rng.integers(0, C, N)]
    if model == "softmax":
        return x, y, [rng.standard_normal((D, C)) * 0.1, np.zeros(C)]
    return x, y, [rng.standard_normal((D, HID)) * 0.1, np.zeros(HID), rng.standard_normal((HID, C)) * 0.1,
                  np.zeros(C)]


# -- the models in each system ---------------------------------------------------------------------
def exprc_step(model: str, T):
    """(inputs, [loss, *updated params]) built with ``T`` (exprc, or pytensor.tensor)."""
    x, y = T.matrix("x"), T.matrix("y")
    params = [T.matrix("W"), T.vector("b")] if model == "softmax" else \
        [T.matrix("W1"), T.vector("b1"), T.matrix("W2"), T.vector("b2")]
    h = x if model == "softmax" else T.tanh(T.dot(x, params[0]) + params[1])
    W, b = params[-2:]
    p = T.special.softmax(T.dot(h, W) + b, axis=1) if T.__name__.startswith("pytensor") else \
        T.softmax(T.dot(h, W) + b, axis=1)
    loss = -T.mean(T.sum(y * T.log(p), axis=1))
    grads = T.grad(loss, params) if T.__name__ == "exprc" else __import__("pytensor").grad(loss, params)
    return [x, y, *params], [loss, *[v - LR * g for v, g in zip(params, grads)]]


def numpy_step(model: str, x, y, params):
    import numpy as np

    def softmax_grad(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = -np.mean(np.sum(y * (z - np.log(s)), axis=1))
        return loss, (e / s - y) / x.shape[0]

    if model == "softmax":
        W, b = params
        loss, g = softmax_grad(x @ W + b)
        return [loss, W - LR * (x.T @ g), b - LR * g.sum(axis=0)]
    W1, b1, W2, b2 = params
    h = np.tanh(x @ W1 + b1)
    loss, g = softmax_grad(h @ W2 + b2)
    gh = (g @ W2.T) * (1 - h * h)
    return [loss, W1 - LR * (x.T @ gh), b1 - LR * gh.sum(axis=0), W2 - LR * (h.T @ g), b2 - LR * g.sum(axis=0)]


def jax_step(model: str):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def loss(params, x, y):
        h = x if model == "softmax" else jnp.tanh(x @ params[0] + params[1])
        p = jax.nn.softmax(h @ params[-2] + params[-1], axis=1)
        return -jnp.mean(jnp.sum(y * jnp.log(p), axis=1))

    def step(x, y, *params):
        value, grads = jax.value_and_grad(loss)(list(params), x, y)
        return [value, *[v - LR * g for v, g in zip(params, grads)]]

    return jax.jit(step)


# -- step times ------------------------------------------------------------------------------------
def bench_steps(systems: list[str], rounds: int) -> list[dict]:
    return [bench_model(model, systems, rounds) for model in ("softmax", "mlp")]


def bench_model(model: str, systems: list[str], rounds: int) -> dict:
    import numpy as np

    import exprc

    x, y, params = data(model)
    args = [x, y, *params]
    want = numpy_step(model, x, y, params)
    fns, kernels, kernels_norows = {}, None, None

    def check(system, got):
        for w, g in zip(want, got):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9, atol=1e-12, err_msg=f"{model} {system}")

    fns["numpy"] = lambda: numpy_step(model, x, y, params)
    if "exprc" in systems:
        ins, outs = exprc_step(model, exprc)
        f = exprc.function(ins, outs)
        check("exprc", f(*args))
        kernels = len(f.kernels)
        fns["exprc"] = lambda: f(*args)
        norows = exprc.function(ins, outs, config=exprc.Config(row_fusion=False))
        check("exprc-norows", norows(*args))
        kernels_norows = len(norows.kernels)
        fns["exprc-norows"] = lambda: norows(*args)
        guarded = exprc.function(ins, outs, config=exprc.Config(nan_guard=True))
        check("exprc", guarded(*args))
        fns["exprc_guard"] = lambda: guarded(*args)
    if "pytensor" in systems:
        import pytensor
        import pytensor.tensor as pt

        ins, outs = exprc_step(model, pt)
        g = pytensor.function(ins, outs)
        check("pytensor", g(*args))
        fns["pytensor"] = lambda: g(*args)
    if "jax" in systems:
        import jax
        import jax.numpy as jnp

        j = jax_step(model)
        jargs = [jnp.asarray(a) for a in args]
        check("jax", j(*jargs))
        fns["jax"] = lambda: jax.block_until_ready(j(*jargs))
    t = best(fns, 200, rounds)
    return {"model": model, "kernels": kernels, "kernels_norows": kernels_norows, "us": {k: v * 1e6 for k, v in t.items()},
            "vs_numpy": {k: v / t["numpy"] for k, v in t.items()}}


# -- compile ---------------------------------------------------------------------------------------
def compile_child() -> None:
    t0 = time.perf_counter()
    import exprc

    t_import = time.perf_counter() - t0
    ins, outs = exprc_step("softmax", exprc)
    t1 = time.perf_counter()
    exprc.function(ins, outs)
    logits = exprc.dot(ins[0], ins[2]) + ins[3]
    exprc.function([ins[0], ins[2], ins[3]], exprc.argmax(logits, axis=1))
    print(json.dumps({"import_s": t_import, "function_s": time.perf_counter() - t1}))


def bench_compile(reps: int) -> dict:
    out: dict[str, list[float]] = {"cold": [], "warm": []}
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as d:
            env = {**os.environ, "EXPRC_CACHE_DIR": d, "PYTHONPATH": str(ROOT)}
            # an earlier process builds the dispatcher and the toolchain record (not counted)
            warm_up = "import numpy, exprc; x = exprc.vector('x'); exprc.function([x], x + 1)(numpy.ones(2))"
            subprocess.run([sys.executable, "-c", warm_up], env=env, check=True)
            for kind in ("cold", "warm"):
                r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_compile-child"], env=env,
                                   check=True, capture_output=True, text=True, timeout=600)
                out[kind].append(json.loads(r.stdout.strip().splitlines()[-1])["function_s"])
    return {k: min(v) for k, v in out.items()} | {"all": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds, one compile repetition")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--systems", default="exprc,numpy,pytensor,jax")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_compile-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads(args.threads)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if args._compile_child:
        compile_child()
        return
    systems = [s for s in args.systems.split(",") if s in ("exprc", "numpy") or try_import(s) is not None]
    rows = bench_steps(systems, 3 if args.quick else 9)
    print(f"training steps, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}; "
          "us per step (time / NumPy time)")
    names = [s for s in ("exprc", "exprc-norows", "numpy", "pytensor", "jax")
             if s in systems or s == "exprc-norows" and "exprc" in systems]
    print(f"{'model':10} {'kernels':>9} " + " ".join(f"{n:>18}" for n in names))
    for r in rows:
        cells = [f"{r['us'][n]:8.1f} ({r['vs_numpy'][n]:5.2f}x)" for n in names]
        ks = f"{r['kernels']}/{r['kernels_norows']}" if r["kernels"] is not None else ""
        print(f"{r['model']:10} {ks:>9} " + " ".join(f"{c:>18}" for c in cells))
    if "exprc" in systems:
        ratios = {r["model"]: r["us"]["exprc_guard"] / r["us"]["exprc"] for r in rows}
        print("Config(nan_guard=True) step time / plain exprc: " +
              ", ".join(f"{m} {v:.2f}x" for m, v in ratios.items()) + " (issue 19 target <= 1.5x)")
    comp = bench_compile(1 if args.quick else 3)
    print(f"softmax-regression step + predict, exprc.function: cold {comp['cold']:.3f} s, warm {comp['warm']:.3f} s "
          "(fresh processes; dispatcher and toolchain probe already built)")
    soft, mlp = rows
    targets = {"softmax kernels <= 6": soft["kernels"] is not None and soft["kernels"] <= 6,
               "softmax time <= 0.5x numpy": soft["vs_numpy"].get("exprc", 9) <= 0.5,
               "mlp time <= 0.8x numpy": mlp["vs_numpy"].get("exprc", 9) <= 0.8,
               "cold compile <= 0.6 s": comp["cold"] <= 0.6}
    for k, v in targets.items():
        print(f"  {k}: {'MET' if v else 'NOT MET'}")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(args.json) if args.json else HERE / "results" / f"train-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": platform.machine(), "threads": args.threads, "steps": rows,
                                "compile": comp, "targets": targets}, indent=1))


if __name__ == "__main__":
    main()
