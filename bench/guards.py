"""What the stability rewrites cost on ordinary inputs (issue 17, item 1): every case of
bench/accuracy.py compiled with the default rules and with ``exclude=("stability",)``, timed on 1e6
points drawn from the benign middle of its domain (where guards do not fire), as ratios in one run.

    python bench/guards.py              # all cases, 1e6 points, best of 5 rounds
    python bench/guards.py --quick      # 1e5 points, 3 rounds
    python bench/guards.py --cases cauchy_log_kernel,softmax_pair
    python bench/guards.py --cases softmax,logsumexp,log_softmax --rows 1000   # other row lengths
    python bench/guards.py --threads 1  # one thread: the kernels' own work, less of the machine's noise

A ratio above 1.10 (default rules over no stability rules) is a rewrite that costs run time where
it changes nothing; the table marks it. One JSON line follows the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import accuracy
from timing import best

import exprc
from exprc.config import current

#: Over this, a case's default compile is "slower than without the stability rules".
LIMIT = 1.10


def benign(kind: str, lo: float, hi: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` values from the ordinary middle of a case's range: no overflow, no cancellation regime."""
    if kind == "lin":
        a, b = max(lo, -3.0), min(hi, 3.0)
        if a >= b:
            a, b = lo, hi
        return rng.uniform(a, b, n)
    a, b = max(lo, 1e-3), min(hi, 10.0)  # log-spaced ranges: positive magnitudes
    if a >= b:
        a, b = lo, hi
    v = np.exp(rng.uniform(math.log(a), math.log(b), n))
    return -v if kind == "nlog" else v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--rows", type=int, help="row length of the cases that reduce over rows (default: each case's)")
    p.add_argument("--threads", type=int, default=0, help="threads of the compiled loops (default: one per core)")
    args = p.parse_args(argv)
    n, rounds = (10**5, 3) if args.quick else (10**6, 5)
    wanted = set(args.cases.split(",")) if args.cases else None
    rng = np.random.default_rng(0)
    results = []
    print(f"# stability rewrites on benign inputs: {n:.0e} points, best of {rounds}, "
          f"{args.threads or current().threads()} thread(s); ratio = default / no stability")
    print(f"{'case':<24} {'kind':<9} {'numpy ms':>9} {'exprc ms':>9} {'nostab ms':>10} {'ratio':>7}  kernels")
    for case in accuracy.CASES:
        if wanted and case.name not in wanted:
            continue
        if case.rows:
            width = args.rows or case.rows
            shape = (n // width, width)
            xs = [benign(k, lo, hi, math.prod(shape), rng).reshape(shape) for k, lo, hi in case.ranges]
            variables = [exprc.matrix(f"x{i}") for i in range(len(xs))]
        else:
            xs = [benign(k, lo, hi, n, rng) for k, lo, hi in case.ranges]
            variables = [exprc.vector(f"x{i}") for i in range(len(xs))]
        expr = case.fn(exprc, *variables)
        # (no --threads: the configuration as it is, EXPRC_NUM_THREADS included)
        kw = {"config": exprc.Config(num_threads=args.threads)} if args.threads else {}
        f = exprc.function(variables, expr, **kw)
        g = exprc.function(variables, expr, exclude=("stability",), **kw)
        with np.errstate(all="ignore"):
            t = best({"numpy": lambda fn=case.fn, xs=xs: fn(accuracy.NP, *xs), "exprc": lambda f=f, xs=xs: f(*xs),
                      "nostab": lambda g=g, xs=xs: g(*xs)}, 3 if args.quick else 5, rounds)
        ratio = t["exprc"] / t["nostab"]
        mark = "  <-- over" if ratio > LIMIT else ""
        kernels = "+".join(k["name"].split("_", 1)[0] for k in f.kernels)
        print(f"{case.name:<24} {case.kind:<9} {t['numpy'] * 1e3:9.3f} {t['exprc'] * 1e3:9.3f} "
              f"{t['nostab'] * 1e3:10.3f} {ratio:7.2f}  {len(f.kernels)} vs {len(g.kernels)}{mark}")
        results.append({"case": case.name, "numpy_s": t["numpy"], "exprc_s": t["exprc"], "nostab_s": t["nostab"],
                     "ratio": ratio, "kernels": len(f.kernels), "kernels_nostab": len(g.kernels), "by": kernels})
    over = [r["case"] for r in results if r["ratio"] > LIMIT]
    print(f"\n{len(results) - len(over)} / {len(results)} cases within {LIMIT:.2f}x of their no-stability time; over: "
          f"{', '.join(over) or 'none'}")
    print(json.dumps({"n": n, "rounds": rounds, "threads": args.threads or current().threads(), "limit": LIMIT,
                      "rows": results,
                      "over": over}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
