"""Warm start (issue 17, item 4): the CPU time of fresh processes, as ratios in one run.

    python bench/startup.py            # 7 runs of each program (~1 minute; more with PyTensor/JAX)
    python bench/startup.py --quick    # 3 runs, no PyTensor/JAX

Programs (each a fresh ``python -c``; whole-process user + system CPU time, the minimum and median
of the runs after two warm-ups, so bytecode and exprc's disk cache are warm as for a user):

* ``import numpy`` and ``import exprc`` (target: exprc <= 1.3x numpy);
* NumPy doing a small job, against exprc compiling (from its warm cache) and calling a 20-node
  function (target: <= 1.5x), and PyTensor / JAX doing the same job where installed.

Children get ``PYTHONPYCACHEPREFIX`` (a temporary folder) and no ``PYTHONDONTWRITEBYTECODE``, so
they run from bytecode as an installed package does, and ``EXPRC_CACHE_DIR`` a temporary cache.
The modules exprc's warm job loads that it should not need are listed (networkx, sympy, mpmath).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOB = """
a, b, c = {ns}.vector("a"), {ns}.vector("b"), {ns}.vector("c")
e = a
for i in range(6):
    e = {ns}.sin(e) * b + c * (i + 1.0)
"""

PROGRAMS = {
    "import numpy": "import numpy",
    "import exprc": "import exprc",
    "numpy job": "import numpy as np\nx = np.ones(10)\ne = x\nfor i in range(6):\n    e = np.sin(e) * x + x * (i + 1.0)",
    "exprc job": ("import numpy as np, sys, exprc" + JOB.format(ns="exprc") +
                  "f = exprc.function([a, b, c], e)\nx = np.ones(10)\nf(x, x, x)\n"
                  "print(','.join(m for m in ('networkx', 'sympy', 'mpmath', 'scipy') if m in sys.modules))"),
    "pytensor job": ("import numpy as np, pytensor, pytensor.tensor as pt" + JOB.format(ns="pt") +
                     "f = pytensor.function([a, b, c], e)\nx = np.ones(10)\nf(x, x, x)"),
    "jax job": ("import numpy as np, jax, jax.numpy as jnp\n"
                "f = jax.jit(lambda a, b, c: [e := a] and [e := jnp.sin(e) * b + c * (i + 1.0) for i in range(6)][-1])\n"
                "x = np.ones(10)\nf(x, x, x).block_until_ready()"),
}


def cpu_of(code: str, env: dict) -> tuple[float, str]:
    """Whole-process CPU seconds (user + system) of ``python -c code``, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out.strip()


def available(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], check=False, capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    runs = 3 if args.quick else 7
    names = ["import numpy", "import exprc", "numpy job", "exprc job"]
    if not args.quick:
        names += [n for n, m in (("pytensor job", "pytensor"), ("jax job", "jax")) if available(m)]
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPYCACHEPREFIX=str(Path(tmp, "pyc")), EXPRC_CACHE_DIR=str(Path(tmp, "cache")),
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   JAX_PLATFORMS="cpu")
        times: dict[str, list[float]] = {n: [] for n in names}
        extra = ""
        for _ in range(2):  # warm-ups: bytecode, exprc's cache, the C dispatcher
            for n in names:
                extra = cpu_of(PROGRAMS[n], env)[1] if n == "exprc job" else extra
        for _ in range(runs):  # interleaved, so a noisy moment hits every program
            for n in names:
                times[n].append(cpu_of(PROGRAMS[n], env)[0])
    rows = {n: {"min_s": min(t), "median_s": statistics.median(t)} for n, t in times.items()}
    print(f"# fresh-process CPU time (user + sys), {runs} runs after 2 warm-ups; {os.cpu_count()} CPUs")
    print(f"{'program':<14} {'min ms':>8} {'median ms':>10}   vs")
    for n, r in rows.items():
        ref = "import numpy" if n.startswith("import") else "numpy job"
        print(f"{n:<14} {r['min_s'] * 1e3:8.0f} {r['median_s'] * 1e3:10.0f}   {r['min_s'] / rows[ref]['min_s']:.2f}x {ref}")
    targets = {"import exprc <= 1.3x import numpy": rows["import exprc"]["min_s"] / rows["import numpy"]["min_s"],
               "exprc job (warm cache) <= 1.5x numpy job": rows["exprc job"]["min_s"] / rows["numpy job"]["min_s"]}
    print()
    for label, v in targets.items():
        print(f"  {'MET' if v <= float(label.split('<= ')[1].split('x')[0]) else 'NOT MET':<8} {label}  ({v:.2f})")
    print(f"  modules the exprc job loaded that it should not need: {extra or 'none'}")
    print(json.dumps({"runs": runs, "rows": rows, "targets": targets, "unneeded_modules": extra}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
