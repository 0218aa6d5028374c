#!/usr/bin/env python
"""Accuracy benchmark: textbook formulas as a user writes them, bits lost against mpmath.

    python bench/accuracy.py                  # every case, C backend, JSON to bench/results/
    python bench/accuracy.py --cases sqrt_diff,logsumexp --points 500
    python bench/accuracy.py --timing-only    # only the 1,000-node rewrite time

Each case is a formula ``fn(m, *inputs)`` written once for every namespace (NumPy, exprc, mpmath)
with a range per input, chosen where the naive formula is known to fail (cancellation, overflow,
underflow).  Systems: NumPy (the formula evaluated naively), exprc default (C backend), exprc with
``exclude=("stability",)``, exprc ``accuracy="search"`` (domain: the interval each input range covers; the
search's own compile time, cold and cached, is printed after the table); PyTensor (default mode: its own
stabilize rewrites) and JAX (jit, x64) when importable.  For each case and system: the median
and the max over the points of the bits lost (``exprc.accuracy.bits_lost``, 0 = correctly rounded,
64 = garbage), and whether the case is *fixed*: every point within 4 bits (so finite where the true
result is finite).  Also: the time to rewrite a 1,000-node graph with the default pipeline.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import exprc
from exprc.accuracy import bits_lost, reference, sample

FIXED_BITS = 4.0
SQRT2PI = math.sqrt(2 * math.pi)
SQRT2 = math.sqrt(2)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # a family label, for the table
    fn: Callable
    ranges: tuple  # one ("lin"|"log"|"nlog"|"slog", lo, hi) per input
    rows: int = 0  # > 0: inputs are (points, rows) matrices and the formula reduces over the last axis


def sig(m, x):  # the sigmoid as a user writes it
    return 1 / (1 + m.exp(-x))


L, G, N, S = "lin", "log", "nlog", "slog"
CASES = [
    # -- cancellation ------------------------------------------------------------------------
    Case("log1p", "cancel", lambda m, x: m.log(1 + x), ((S, 1e-18, 0.5),)),
    Case("log_1_minus_x", "cancel", lambda m, x: m.log(1 - x), ((G, 1e-18, 0.5),)),
    Case("expm1", "cancel", lambda m, x: m.exp(x) - 1, ((S, 1e-18, 1.0),)),
    Case("expm1_over_x", "cancel", lambda m, x: (m.exp(x) - 1) / x, ((S, 1e-18, 1.0),)),
    Case("sqrt_diff", "cancel", lambda m, x: m.sqrt(x + 1) - m.sqrt(x), ((G, 1.0, 1e15),)),
    Case("sqrt1p_minus_1", "cancel", lambda m, x: m.sqrt(1 + x) - 1, ((S, 1e-18, 0.9),)),
    Case("recip_diff", "cancel", lambda m, x: 1 / (x + 1) - 1 / x, ((G, 1.0, 1e15),)),
    Case("recip_sym_diff", "cancel", lambda m, x: 1 / (1 - x) - 1 / (1 + x), ((S, 1e-12, 0.5),)),
    Case("one_minus_cos", "cancel", lambda m, x: 1 - m.cos(x), ((S, 1e-9, 3.0),)),
    Case("one_minus_cos_over_x2", "cancel", lambda m, x: (1 - m.cos(x)) / (x * x), ((S, 1e-9, 3.0),)),
    Case("sin_diff", "cancel", lambda m, x, e: m.sin(x + e) - m.sin(x), ((L, -10, 10), (S, 1e-15, 1e-3))),
    Case("cos_diff", "cancel", lambda m, x, e: m.cos(x + e) - m.cos(x), ((L, -10, 10), (S, 1e-15, 1e-3))),
    Case("tan_diff", "cancel", lambda m, x, e: m.tan(x + e) - m.tan(x), ((L, -1.2, 1.2), (S, 1e-15, 1e-3))),
    Case("atan_diff", "cancel", lambda m, x: m.arctan(x + 1) - m.arctan(x), ((G, 1.0, 1e8),)),
    Case("exp_diff", "cancel", lambda m, x, e: m.exp(x + e) - m.exp(x), ((L, -5, 5), (S, 1e-15, 1e-3))),
    Case("log_diff", "cancel", lambda m, x: m.log(x + 1) - m.log(x), ((G, 1.0, 1e15),)),
    Case("cbrt_diff", "cancel", lambda m, x: m.cbrt(x + 1) - m.cbrt(x), ((G, 1.0, 1e15),)),
    Case("quadratic_plus", "cancel", lambda m, a, b, c: (-b + m.sqrt(b * b - 4 * a * c)) / (2 * a),
         ((L, 0.5, 2), (G, 1e2, 1e8), (L, 0.5, 2))),
    Case("quadratic_minus", "cancel", lambda m, a, b, c: (-b - m.sqrt(b * b - 4 * a * c)) / (2 * a),
         ((L, 0.5, 2), (N, 1e2, 1e8), (L, 0.5, 2))),
    Case("sqrt_x2p1_minus_x", "cancel", lambda m, x: m.sqrt(x * x + 1) - x, ((G, 1.0, 1e8),)),
    Case("x_minus_sqrt_x2m1", "cancel", lambda m, x: x - m.sqrt(x * x - 1), ((G, 1.5, 1e8),)),
    Case("diff_of_squares", "cancel", lambda m, x, y: x * x - y * y, ((L, 1, 1 + 1e-6), (L, 1, 1 + 1e-6))),
    Case("cos2_minus_sin2", "cancel", lambda m, x: m.cos(x) ** 2 - m.sin(x) ** 2, ((L, 0.7, 0.87),)),
    Case("cosh_minus_1", "cancel", lambda m, x: m.cosh(x) - 1, ((S, 1e-9, 10.0),)),
    Case("one_minus_erf", "cancel", lambda m, x: 1 - m.erf(x), ((L, 0.0, 26.0),)),
    Case("normal_cdf", "cancel", lambda m, x: 0.5 * (1 + m.erf(x / math.sqrt(2))), ((L, -37.0, 5.0),)),
    Case("variance_one_pass", "cancel", lambda m, x: m.mean(x * x, axis=-1) - m.mean(x, axis=-1) ** 2,
         ((L, 1e6, 1e6 + 1),), rows=8),
    Case("compound_interest", "cancel", lambda m, r, n: (1 + r / n) ** n, ((L, 0.01, 0.2), (G, 1e3, 1e15))),
    Case("pow1p_minus_1", "cancel", lambda m, x, y: (1 + x) ** y - 1, ((S, 1e-12, 1e-3), (L, 1, 100))),
    Case("x_minus_sin", "cancel", lambda m, x: x - m.sin(x), ((S, 1e-8, 1.0),)),
    # -- hyperbolic functions written with exp/log --------------------------------------------
    Case("sinh_exp", "hyperbolic", lambda m, x: (m.exp(x) - m.exp(-x)) / 2, ((S, 1e-10, 710.0),)),
    Case("cosh_exp", "hyperbolic", lambda m, x: (m.exp(x) + m.exp(-x)) / 2, ((L, -710.0, 710.0),)),
    Case("tanh_exp", "hyperbolic", lambda m, x: (m.exp(x) - m.exp(-x)) / (m.exp(x) + m.exp(-x)),
         ((S, 1e-10, 800.0),)),
    Case("tanh_exp2", "hyperbolic", lambda m, x: (m.exp(2 * x) - 1) / (m.exp(2 * x) + 1), ((S, 1e-10, 800.0),)),
    Case("tanh_sigmoid", "hyperbolic", lambda m, x: 2 / (1 + m.exp(-2 * x)) - 1, ((S, 1e-10, 30.0),)),
    Case("asinh_log", "hyperbolic", lambda m, x: m.log(x + m.sqrt(x * x + 1)), ((S, 1e-10, 1e150),)),
    Case("acosh_log", "hyperbolic", lambda m, x: m.log(x + m.sqrt(x * x - 1)), ((G, 1.0001, 1e150),)),
    Case("atanh_log", "hyperbolic", lambda m, x: 0.5 * m.log((1 + x) / (1 - x)), ((S, 1e-12, 0.999),)),
    Case("log_cosh", "hyperbolic", lambda m, x: m.log(m.cosh(x)), ((S, 1e-9, 1000.0),)),
    # -- overflow / underflow -----------------------------------------------------------------
    Case("hypot", "overflow", lambda m, x, y: m.sqrt(x * x + y * y), ((S, 1e-200, 1e200), (S, 1e-200, 1e200))),
    Case("log_exp", "overflow", lambda m, x: m.log(m.exp(x)), ((L, -800.0, 800.0),)),
    Case("exp_log", "overflow", lambda m, x: m.exp(m.log(x)), ((G, 1e-300, 1e300),)),
    Case("log_sqrt", "overflow", lambda m, x: m.log(m.sqrt(x)), ((L, 0.5, 2.0),)),
    Case("log_product", "overflow", lambda m, x, y: m.log(x * y), ((G, 1e-300, 1e300), (G, 1e-300, 1e300))),
    Case("log_quotient", "overflow", lambda m, x, y: m.log(x / y), ((G, 1e-300, 1e300), (G, 1e-300, 1e300))),
    Case("log_square", "overflow", lambda m, x: m.log(x * x), ((S, 1e-300, 1e300),)),
    Case("exp_over_expm1", "overflow", lambda m, x: m.exp(x) / (m.exp(x) - 1), ((S, 1e-10, 800.0),)),
    # -- machine learning ----------------------------------------------------------------------
    Case("sigmoid", "ml", lambda m, x: sig(m, x), ((L, -800.0, 800.0),)),
    Case("sigmoid_exp_ratio", "ml", lambda m, x: m.exp(x) / (1 + m.exp(x)), ((L, -800.0, 800.0),)),
    Case("one_minus_sigmoid", "ml", lambda m, x: 1 - sig(m, x), ((L, -40.0, 800.0),)),
    Case("log_sigmoid", "ml", lambda m, x: m.log(sig(m, x)), ((L, -800.0, 800.0),)),
    Case("log_one_minus_sigmoid", "ml", lambda m, x: m.log(1 - sig(m, x)), ((L, -800.0, 800.0),)),
    Case("softplus", "ml", lambda m, x: m.log(1 + m.exp(x)), ((L, -800.0, 800.0),)),
    Case("softplus_minus_x", "ml", lambda m, x: m.log(1 + m.exp(x)) - x, ((L, -40.0, 800.0),)),
    Case("softplus_minus_xy", "ml", lambda m, x, y: m.log(1 + m.exp(x)) - x * y, ((L, -700.0, 700.0), (L, 0.999, 1.0))),
    Case("x_minus_logaddexp", "ml", lambda m, x, y: x - m.log(m.exp(x) + m.exp(y)),
         ((L, -700.0, 700.0), (L, -700.0, 700.0))),
    Case("bce_logits", "ml", lambda m, z, y: -(y * m.log(sig(m, z)) + (1 - y) * m.log(1 - sig(m, z))),
         ((L, -50.0, 50.0), (L, 0.0, 1.0))),
    Case("logsumexp", "ml", lambda m, x: m.log(m.sum(m.exp(x), axis=-1)), ((L, -1000.0, 1000.0),), rows=8),
    Case("logaddexp", "ml", lambda m, a, b: m.log(m.exp(a) + m.exp(b)), ((L, -1000.0, 1000.0), (L, -1000.0, 1000.0))),
    Case("softmax", "ml", lambda m, x: m.exp(x) / m.sum(m.exp(x), axis=-1, keepdims=True),
         ((L, -1000.0, 1000.0),), rows=8),
    Case("log_softmax", "ml", lambda m, x: m.log(m.exp(x) / m.sum(m.exp(x), axis=-1, keepdims=True)),
         ((L, -50.0, 50.0),), rows=8),
    # self-normalized importance sampling (log-weights x): a softmax-weighted mean
    Case("softmax_weighted_mean", "ml", lambda m, x, u: m.sum(u * m.exp(x), axis=-1) / m.sum(m.exp(x), axis=-1),
         ((L, -1000.0, 1000.0), (L, 0.5, 2.0)), rows=8),
    Case("log1mexp", "ml", lambda m, x: m.log(1 - m.exp(x)), ((N, 1e-20, 700.0),)),
    Case("log_exp_diff", "ml", lambda m, a, d: m.log(m.exp(a) - m.exp(a - d)), ((L, -800.0, 800.0), (G, 1e-10, 50.0))),
    Case("gaussian_logpdf", "ml", lambda m, x: m.log(m.exp(-(x * x) / 2) / SQRT2PI), ((L, -100.0, 100.0),)),
    # -- cancellation the default rules miss (series, identities, regimes: the search's cases) -------------
    Case("tan_minus_sin", "series", lambda m, x: m.tan(x) - m.sin(x), ((S, 1e-9, 1.0),)),
    Case("inv_x_minus_inv_tan", "series", lambda m, x: 1 / x - 1 / m.tan(x), ((S, 1e-9, 1.0),)),
    Case("sinc_minus_1", "series", lambda m, x: m.sin(x) / x - 1, ((S, 1e-9, 1.0),)),
    Case("one_minus_x_over_sin", "series", lambda m, x: 1 - x / m.sin(x), ((S, 1e-9, 1.0),)),
    Case("atan_minus_x", "series", lambda m, x: m.arctan(x) - x, ((S, 1e-9, 0.9),)),
    Case("arcsin_minus_x", "series", lambda m, x: m.arcsin(x) - x, ((S, 1e-9, 0.9),)),
    Case("tanh_over_x_minus_1", "series", lambda m, x: m.tanh(x) / x - 1, ((S, 1e-9, 1.0),)),
    Case("cos_taylor_rem", "series", lambda m, x: m.cos(x) - 1 + x * x / 2, ((S, 1e-5, 1.0),)),
    Case("sqrt_taylor_rem", "series", lambda m, x: m.sqrt(1 + x) - 1 - x / 2, ((S, 1e-9, 0.5),)),
    Case("exp_neg_taylor_rem", "series", lambda m, x: m.exp(-x) - 1 + x, ((S, 1e-9, 1.0),)),
    Case("expm1_over_x_minus_1", "series", lambda m, x: (m.exp(x) - 1) / x - 1, ((S, 1e-9, 1.0),)),
    Case("inv_sqrt_diff", "cancel", lambda m, x: 1 / m.sqrt(x) - 1 / m.sqrt(x + 1), ((G, 1.0, 1e15),)),
    Case("log_ratio", "cancel", lambda m, x: m.log((x + 1) / x), ((G, 1.0, 1e15),)),
    Case("logistic_deriv", "ml", lambda m, x: m.exp(-x) / (1 + m.exp(-x)) ** 2, ((L, -800.0, 800.0),)),
    # -- written after a check of 40 textbook/ML formulas outside this list (session 2): the ones it found
    #    missed, fixed or not --------------------------------------------------------------------------------
    Case("geometric_mean", "overflow", lambda m, x, y: m.sqrt(x * y), ((G, 1e-300, 1e300), (G, 1e-300, 1e300))),
    Case("exp_ratio", "overflow", lambda m, a, b: m.exp(a) / m.exp(b), ((L, -800.0, 800.0), (L, -800.0, 800.0))),
    Case("softmax_pair", "ml", lambda m, a, b: m.exp(a) / (m.exp(a) + m.exp(b)),
         ((L, -800.0, 800.0), (L, -800.0, 800.0))),
    Case("gelu_tanh", "ml", lambda m, x: 0.5 * x * (1 + m.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))),
         ((L, -30.0, 30.0),)),
    Case("swish", "ml", lambda m, x: x / (1 + m.exp(-x)), ((L, -800.0, 800.0),)),
    Case("logit_near_half", "ml", lambda m, p: m.log(p / (1 - p)), ((L, 0.5, 0.999),)),
    Case("kl_bernoulli", "ml", lambda m, p: p * m.log(2 * p) + (1 - p) * m.log(2 * (1 - p)), ((L, 0.49, 0.51),)),
    Case("gaussian_pdf_tail", "ml", lambda m, x: m.exp(-x * x / 2) / SQRT2PI, ((L, 0.0, 38.0),)),
    Case("logit_diff_of_logs", "ml", lambda m, p: m.log(p) - m.log(1 - p), ((L, 0.4, 0.6),)),
    Case("cauchy_log_kernel", "overflow", lambda m, x: m.log(1 + x * x), ((S, 1e-300, 1e300),)),
    # -- issue 18 item 2: roots and powers of sums, over the whole range ---------------------------------------
    Case("root_diff", "cancel", lambda m, x: (x + 1) ** 0.2 - x ** 0.2, ((G, 1e-300, 1e300),)),
    Case("inv_root_diff", "cancel", lambda m, x: x ** -0.75 - (x + 1) ** -0.75, ((G, 1e-300, 1e300),)),
    Case("xlogx_diff", "cancel", lambda m, x: (x + 1) * m.log(x + 1) - x * m.log(x) - 1, ((G, 1e-300, 1e300),)),
    # issue 18 item 3: log(erfc) and the log normal CDF to |x| = 1e150 (erfc underflows from 26.6)
    Case("log_erfc", "ml", lambda m, x: m.log(m.erfc(x)), ((S, 1e-12, 1e150),)),
    Case("log_normal_cdf", "ml", lambda m, x: m.log(0.5 * m.erfc(-x / SQRT2)), ((S, 1e-12, 1e150),)),
]

NP = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("_")})
NP.erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf
NP.erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _inputs(case: Case, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n, case.rows) if case.rows else (n,)
    return [sample(r, int(np.prod(shape)), rng).reshape(shape) for r in case.ranges]


def _exprc_fn(case: Case, exclude: tuple, **options: object) -> Callable:
    vars_ = [exprc.tensor(f"x{i}", "float64", ndim=2 if case.rows else 1) for i in range(len(case.ranges))]
    return exprc.function(vars_, case.fn(exprc, *vars_), exclude=exclude, **options)


def domain_of(spec: tuple) -> tuple[float, float]:
    """The (lo, hi) interval a case's input range covers (the search's domain)."""
    kind, lo, hi = spec
    return {"lin": (lo, hi), "log": (lo, hi), "nlog": (-hi, -lo), "slog": (-hi, hi)}[kind]


#: Per case: seconds the search took when it ran (recorded in its cache entry) and the seconds of a
#: later compile that finds it in the disk cache (in-process memo cleared).
SEARCH_TIMES: dict[str, dict[str, float]] = {}


def _search_fn(case: Case) -> Callable:
    vars_ = [exprc.tensor(f"x{i}", "float64", ndim=2 if case.rows else 1) for i in range(len(case.ranges))]
    options = {"accuracy": "search", "domain": {v: domain_of(r) for v, r in zip(vars_, case.ranges)}}
    f = exprc.function(vars_, case.fn(exprc, *vars_), **options)
    from exprc.function import clear_memo

    clear_memo()
    t0 = time.perf_counter()
    f = exprc.function(vars_, case.fn(exprc, *vars_), **options)
    report = f.accuracy_report
    SEARCH_TIMES[case.name] = {"search_seconds": report.seconds, "cached_compile_seconds": time.perf_counter() - t0,
                               "changes": len(report.changes), "skipped": bool(report.skipped)}
    return f


def _systems() -> dict[str, Callable[[Case], Callable]]:
    systems: dict[str, Callable[[Case], Callable]] = {
        "numpy": lambda case: (lambda *a: case.fn(NP, *a)),
        "exprc": lambda case: _exprc_fn(case, ()),
        "exprc-nostab": lambda case: _exprc_fn(case, ("stability",)),
        "exprc-search": _search_fn,
    }
    try:  # optional peers, measured only where installed
        import pytensor
        import pytensor.tensor as pt

        ns = types.SimpleNamespace(**{k: getattr(pt, k) for k in dir(pt) if not k.startswith("_")})
        ns.cbrt = lambda x: pt.sgn(x) * abs(x) ** (1.0 / 3.0)

        def pytensor_fn(case: Case) -> Callable:
            make = pt.dmatrix if case.rows else pt.dvector
            xs = [make(f"x{i}") for i in range(len(case.ranges))]
            return pytensor.function(xs, case.fn(ns, *xs))  # default mode: PyTensor's own stabilize rewrites

        systems["pytensor"] = pytensor_fn
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp
        import jax.scipy.special as jsp

        jax.config.update("jax_enable_x64", True)
        jns = types.SimpleNamespace(**{k: getattr(jnp, k) for k in dir(jnp) if not k.startswith("_")})
        jns.erf = jsp.erf
        systems["jax"] = lambda case: jax.jit(lambda *a: case.fn(jns, *a))
    except ImportError:
        pass
    return systems


def run_case(case: Case, systems: dict, n: int, seed: int) -> dict:
    args = _inputs(case, n, seed)
    ref = reference(case.fn, args, rows=bool(case.rows))
    out: dict = {"kind": case.kind, "ranges": [list(r) for r in case.ranges], "points": n, "systems": {}}
    for name, make in systems.items():
        try:
            f = make(case)
            with np.errstate(all="ignore"):
                got = np.asarray(f(*args), dtype=np.float64)
            b = bits_lost(got, ref)
            out["systems"][name] = {"median": float(np.median(b)), "max": float(np.max(b)),
                                    "fixed": bool(np.max(b) <= FIXED_BITS)}
        except Exception as e:  # noqa: BLE001
            out["systems"][name] = {"error": f"{type(e).__name__}: {e}"[:200]}
    return out


def run_grad(case: Case, n: int, seed: int) -> dict:
    """Bits lost by ``exprc.grad`` of the case's formula (default pipeline, C backend) against
    mpmath's derivative at the same points: the gradient of the sum of the formula with respect to
    each input, the worst input per point.  Cases that reduce over rows are skipped."""
    if case.rows:
        return {"skipped": "reduces over rows"}
    import mpmath

    args = _inputs(case, n, seed)
    vars_ = [exprc.vector(f"x{i}") for i in range(len(case.ranges))]
    try:
        f = exprc.function(vars_, exprc.grad(exprc.sum(case.fn(exprc, *vars_)), vars_))
        with np.errstate(all="ignore"):
            got = [np.asarray(g, dtype=np.float64) for g in f(*args)]
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"[:200]}
    lost = []
    for k, g in enumerate(got):
        def derivative(m, *pts, k=k):
            return mpmath.diff(lambda t: case.fn(m, *pts[:k], t, *pts[k + 1:]), pts[k])

        lost.append(bits_lost(np.broadcast_to(g, args[k].shape), reference(derivative, args)))
    b = np.max(lost, axis=0)
    return {"median": float(np.median(b)), "max": float(np.max(b)), "fixed": bool(np.max(b) <= FIXED_BITS)}


def grad_table(cases: list, values: dict, n: int, seed: int) -> dict:
    """Print and return the gradient column: per case the bits lost by exprc.grad, and how many of
    the cases whose values the default pipeline fixes have a gradient within 4 bits too."""
    print(f"\ngradients: exprc.grad of each formula (default pipeline, C backend) against mpmath's derivative, "
          f"{n} points per case")
    out: dict = {}
    for case in cases:
        r = out[case.name] = run_grad(case, n, seed)
        cell = r.get("skipped") or r.get("error") or f"{r['median']:6.1f} /{r['max']:5.1f} {'ok' if r['fixed'] else ''}"
        print(f"  {case.name:24s} {cell}", flush=True)
    done = [c for c in out if "max" in out[c]]
    fixed_values = [c for c in done if values.get(c, {}).get("systems", {}).get("exprc", {}).get("fixed")]
    summary = {"cases": len(done), "fixed": sum(out[c]["fixed"] for c in done),
               "value_fixed_cases": len(fixed_values), "value_fixed_with_gradient_fixed":
               sum(out[c]["fixed"] for c in fixed_values)}
    print(f"gradients within 4 bits: {summary['fixed']} / {summary['cases']} cases; of the "
          f"{summary['value_fixed_cases']} whose values are fixed by default: "
          f"{summary['value_fixed_with_gradient_fixed']}")
    return {"cases": out, "summary": summary}


# -- the never-worse contract on many points (issue 18, item 6) -----------------------------------------
#: Special values each input takes in contract mode, beside the draws over all floats and the case's range.
SPECIALS = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 5e-324, -5e-324, 2.2250738585072014e-308,
                     1e-300, -1e-300, 1e300, -1e300, 1.7976931348623157e308, -1.7976931348623157e308,
                     np.inf, -np.inf, np.nan])
#: Rounding noise, as in tests/test_stability.py: a point within this many bits counts as exact.
NOISE = 2.0
#: Two results this many bits apart or closer (4 ulps) cannot break the contract: if the naive one is off by
#: e ulps the other is off by at most e + 4, and log2(1 + e + 4) <= max(log2(1 + e), NOISE) + 1 for every e.
SCREEN_BITS = math.log2(5.0)


def contract_inputs(case: Case, n: int, seed: int) -> list[np.ndarray]:
    """n points per input: 70% log-uniform over all finite floats of either sign (1e-300 .. 1e300), 25% from
    the case's own range (where the naive formula fails), 5% special values (0, -0, 1, subnormals, the
    largest float, inf, NaN …)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in case.ranges:
        wide = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-300, 300, n)
        own = sample(spec, n, rng)
        pick = rng.random(n)
        out.append(np.where(pick < 0.25, own, np.where(pick < 0.95, wide, SPECIALS[rng.integers(len(SPECIALS), size=n)])))
    return out


def run_contract(case: Case, n: int, cap: int, seed: int) -> dict:
    """The contract "never worse than the naive formula by more than 1 bit" (beyond NOISE) for the default
    pipeline and the search, at n points: where a result and the naive one are within SCREEN_BITS of each
    other the contract holds without a reference; at the other points the mpmath reference decides (up to
    ``cap`` of the points where either differs, drawn at random; the count checked is reported)."""
    if case.rows:
        return {"skipped": "reduces over rows"}
    args = contract_inputs(case, n, seed)
    with np.errstate(all="ignore"):
        naive = np.asarray(case.fn(NP, *args), dtype=np.float64)
    # (an infinite input where the naive formula gives NaN, inf - inf: a stable form may give the limit
    # instead, as tests/test_stability.py allows)
    has_inf = np.any([np.isinf(a) for a in args], axis=0)
    limit_ok = has_inf & ~np.any([np.isnan(a) for a in args], axis=0) & np.isnan(naive)
    out: dict = {"points": n}
    results: dict[str, np.ndarray] = {}
    for name, make in (("exprc", lambda c: _exprc_fn(c, ())), ("exprc-search", _search_fn)):
        try:
            with np.errstate(all="ignore"):
                results[name] = np.asarray(make(case)(*args), dtype=np.float64)
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {e}"[:200]}
    differ = {name: (bits_lost(got, naive) > SCREEN_BITS) & ~limit_ok for name, got in results.items()}
    union = np.flatnonzero(np.any(list(differ.values()), axis=0)) if differ else np.zeros(0, int)
    rng = np.random.default_rng(seed + 1)
    checked = np.sort(rng.choice(union, cap, replace=False)) if len(union) > cap else union
    poles: list = []
    ref = reference(case.fn, [a[checked] for a in args], undefined=poles) if len(checked) else np.zeros(0)
    # A non-finite reference where a result is finite may be the reference's own failure: two precisions
    # that both lost everything agree (1 - sigmoid(1743) is 0 at 1,200 and 2,400 bits).  Those points are
    # evaluated again at 2**16 bits; what stays non-finite there is counted as unverified, not judged.
    finite_any = np.any([np.isfinite(got[checked]) for got in results.values()], axis=0)
    again = np.flatnonzero(~np.isfinite(ref) & finite_any)
    again = np.setdiff1d(again, poles)
    if len(again):
        ref[again] = reference(case.fn, [a[checked][again] for a in args], prec=1 << 16, max_prec=1 << 17)
    unverified = np.zeros(len(checked), bool)
    unverified[again[~np.isfinite(ref[again])]] = True
    unverified[poles] = True  # (a division by zero: IEEE has a signed infinity, mpmath nothing to compare)
    b_naive = bits_lost(naive[checked], ref)
    for name, got in results.items():
        mine = differ[name][checked] & ~unverified
        b_got = bits_lost(got[checked], ref)
        worse = mine & (b_got > np.maximum(b_naive, NOISE) + 1)
        r = {"differ": int(differ[name].sum()), "checked": int(mine.sum()), "violations": int(worse.sum()),
             "unverified": int((differ[name][checked] & unverified).sum())}
        if worse.any():
            i = int(np.argmax(np.where(worse, b_got - b_naive, -np.inf)))
            r["worst"] = {"inputs": [float(a[checked[i]]) for a in args], "bits": float(b_got[i]),
                          "naive_bits": float(b_naive[i]), "got": float(got[checked[i]]), "exact": float(ref[i])}
        out[name] = r
    return out


def contract_table(cases: list, n: int, cap: int, seed: int) -> dict:
    """Print and return the contract table (see :func:`run_contract`)."""
    print(f"never worse than naive by more than 1 bit (beyond {NOISE:g} bits of noise): {n} points per case "
          f"(70% log-uniform over +-[1e-300, 1e300], 25% the case's range, 5% special values); mpmath at the points "
          f"where a result differs from the naive one by more than 4 ulps (at most {cap}, drawn at random)")
    print(f"{'case':24s} {'exprc differ/checked/violations':>34s} {'exprc-search differ/checked/violations':>40s}")
    out: dict = {}
    for case in cases:
        r = out[case.name] = run_contract(case, n, cap, seed)
        if "skipped" in r:
            print(f"{case.name:24s} {r['skipped']}")
            continue
        cells = []
        for name, width in (("exprc", 34), ("exprc-search", 40)):
            s = r[name]
            cells.append(f"{'error':>{width}s}" if "error" in s else
                         f"{s['differ']:>{width - 14}d} / {s['checked']:5d} / {s['violations']:3d}")
        print(f"{case.name:24s} " + " ".join(cells), flush=True)
        for name in ("exprc", "exprc-search"):
            w = r[name].get("worst")
            if w:
                print(f"    {name} worst: at {w['inputs']} got {w['got']!r} ({w['bits']:.1f} bits), exact "
                      f"{w['exact']!r}, naive {w['naive_bits']:.1f} bits")
    done = [r for r in out.values() if "skipped" not in r]
    summary = {name: {"cases": sum("error" not in r[name] for r in done),
                      "cases_with_violations": sum(r[name].get("violations", 0) > 0 for r in done),
                      "checked": sum(r[name].get("checked", 0) for r in done),
                      "differ": sum(r[name].get("differ", 0) for r in done),
                      "unverified": sum(r[name].get("unverified", 0) for r in done)} for name in ("exprc", "exprc-search")}
    for name, s in summary.items():
        print(f"{name}: {s['cases_with_violations']} of {s['cases']} cases break the contract; "
              f"{s['checked']} of {s['differ']} differing points checked against mpmath ({s['unverified']} more "
              "drawn but unverified: a pole, or a reference non-finite at 2**16 bits)")
    return {"cases": out, "summary": summary, "points": n, "cap": cap}


# -- the 1,000-node rewrite time -----------------------------------------------------------------
def big_graph(n_nodes: int = 1000, seed: int = 0) -> list:
    """A random elementwise graph of about ``n_nodes`` nodes mixing plain arithmetic with the
    formulas the stability rules look for (1 + x, exp(x) - 1, sqrt differences, log of products)."""
    rng = np.random.default_rng(seed)
    xs = [exprc.vector(f"v{i}") for i in range(8)]
    pool = list(xs)
    builders = [
        lambda a, b: a + b, lambda a, b: a * b - 1.0, lambda a, b: a / (b + 2.0), lambda a, b: exprc.log(1 + a * a),
        lambda a, b: exprc.exp(a) - 1, lambda a, b: exprc.sqrt(exprc.abs(a) + 1) - exprc.sqrt(exprc.abs(a)),
        lambda a, b: exprc.tanh(a) * b, lambda a, b: exprc.log(exprc.abs(a) * b * b + 1.0),
        lambda a, b: 1 / (1 + exprc.exp(-a)), lambda a, b: exprc.sin(a) - b,
    ]
    from exprc.graph import toposort

    while len(toposort(pool[-40:])) < n_nodes:
        a, b = pool[rng.integers(len(pool))], pool[rng.integers(len(pool))]
        pool.append(builders[rng.integers(len(builders))](a, b))
    return pool[-40:]


def _calibration() -> float:
    """CPU seconds of a fixed pure-Python loop (2e6 multiply-adds): scales the figure to a machine."""
    t0 = time.process_time()
    s = 0
    for i in range(2_000_000):
        s += i * i
    return time.process_time() - t0


def rewrite_time(reps: int = 9) -> dict:
    """CPU time of ``exprc.optimize`` (default pipeline) on the 1,000-node graph, min and median."""
    outs = big_graph()
    from exprc.graph import toposort

    size = len(toposort(outs))
    times = []
    g = None
    for _ in range(reps):
        t0 = time.process_time()
        g = exprc.optimize(outs)
        times.append(time.process_time() - t0)
    return {"nodes": size, "seconds": min(times), "median_seconds": float(np.median(times)),
            "rules_fired": len(g.rewrites), "nodes_after": len(g.nodes), "calibration_loop_seconds": _calibration()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--points", type=int, default=1000, help="points (or rows) per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="where to write the results (default bench/results/accuracy-<timestamp>.json)")
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--grad-points", type=int, default=200,
                    help="points per case for the gradient table (mpmath derivatives; 0 skips it)")
    ap.add_argument("--contract", type=int, default=0, metavar="N",
                    help="instead of the tables: the never-worse contract at N points per case (e.g. 100000)")
    ap.add_argument("--contract-cap", type=int, default=5000,
                    help="contract mode: at most this many differing points per case checked against mpmath")
    args = ap.parse_args(argv)
    if args.contract:
        cases = [c for c in CASES if not args.cases or c.name in set(args.cases.split(","))]
        results = {"contract": contract_table(cases, args.contract, args.contract_cap, args.seed)}
        if not args.no_json:
            path = Path(args.json) if args.json else HERE / "results" / (
                "accuracy-contract-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1, allow_nan=True))
            print(f"results: {path}")
        return 0

    timing = rewrite_time()
    results: dict = {"rewrite_1000_nodes": timing, "cases": {}}
    if not args.timing_only:
        cases = CASES
        if args.cases:
            want = set(args.cases.split(","))
            cases = [c for c in CASES if c.name in want]
        systems = _systems()
        names = list(systems)
        print(f"{'case':24s} {'family':10s} " + " ".join(f"{n + ' med/max':>20s}" for n in names)
              + (f" {'search s':>9s}" if "exprc-search" in names else ""))
        for case in cases:
            r = run_case(case, systems, args.points, args.seed)
            results["cases"][case.name] = r
            cells = []
            for n in names:
                s = r["systems"][n]
                cells.append(f"{'error':>20s}" if "error" in s else
                             f"{s['median']:6.1f} /{s['max']:5.1f} {'ok' if s['fixed'] else '  '}     ")
            t = SEARCH_TIMES.get(case.name)
            print(f"{case.name:24s} {case.kind:10s} " + " ".join(cells)
                  + (f" {t['search_seconds']:8.2f}s" if t else ""), flush=True)
        summary = {}
        for n in names:
            rows = [r["systems"][n] for r in results["cases"].values() if "error" not in r["systems"][n]]
            maxes = [s["max"] for s in rows]
            summary[n] = {"cases": len(rows), "fixed": sum(s["fixed"] for s in rows),
                          "median_of_max_bits": float(np.median(maxes)) if maxes else None,
                          "median_of_median_bits": float(np.median([s["median"] for s in rows])) if rows else None,
                          "max_bits": float(np.max(maxes)) if maxes else None}
        results["summary"] = summary
        results["search_times"] = SEARCH_TIMES
        print()
        print(f"{'system':14s} {'fixed (all points <= 4 bits)':>30s} {'median of max bits':>20s} "
              f"{'median of median':>18s} {'worst':>7s}")
        for n, s in summary.items():
            print(f"{n:14s} {s['fixed']:>22d} / {s['cases']:<5d} {s['median_of_max_bits']:>20.1f} "
                  f"{s['median_of_median_bits']:>18.2f} {s['max_bits']:>7.1f}")
        if args.grad_points:
            results["gradients"] = grad_table(cases, results["cases"], args.grad_points, args.seed)
    cold = [t["search_seconds"] for t in SEARCH_TIMES.values() if not t["skipped"]]
    if cold:  # (none where every case chosen skipped the search: --cases softmax,logsumexp)
        warm = [t["cached_compile_seconds"] for t in SEARCH_TIMES.values()]
        changed = sum(t["changes"] > 0 for t in SEARCH_TIMES.values())
        print(f"\naccuracy search compile cost over {len(cold)} searchable cases ({changed} changed; a case with "
              f"reductions searches the formulas they take): search (cold) median {np.median(cold):.2f} s, "
              f"max {np.max(cold):.2f} s, total {np.sum(cold):.1f} s; compile with the search cached: median "
              f"{np.median(warm) * 1e3:.0f} ms, max {np.max(warm) * 1e3:.0f} ms")
    print(f"\nrewrite of a {timing['nodes']}-node graph (default pipeline): {timing['seconds'] * 1e3:.1f} ms CPU "
          f"(median {timing['median_seconds'] * 1e3:.1f} ms; {timing['rules_fired']} rewrites, "
          f"{timing['nodes_after']} nodes after; target < 100 ms)\n"
          f"machine speed: a 2e6-iteration Python loop takes {timing['calibration_loop_seconds'] * 1e3:.0f} ms CPU")
    if not args.no_json:
        path = Path(args.json) if args.json else HERE / "results" / (
            "accuracy-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
