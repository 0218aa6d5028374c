"""Stability rules that take log, sqrt or pow of a product or quotient, at special values.

The contract (exprc/rewrite/rules/stability/__init__.py) says NaN stays NaN and ±inf stays ±inf.
These rules rewrite ``log(x*y)`` into ``log|x| + log|y|`` and the like, which forgets the sign of
the product: ``log(-2*inf)`` came out as +inf and ``log(-2*exp(800))`` as 800.69 (issue 13).  Here
every such rule is evaluated on a grid of special operands (signed zeros, ±1, ±2, ±inf, NaN,
products that over- and underflow, exp arguments of ±800) against mpmath and NumPy's naive formula:

* where the exact value is undefined (log or sqrt of a negative number, inf - inf, 0 * inf: mpmath
  gives NaN) and the naive formula gives NaN, the rewritten form gives NaN;
* elsewhere it is never more than one bit worse than the naive formula (so a ±inf or 0 that the
  naive formula gets right is kept; where the naive formula over- or underflows and the exact
  value is finite, the rule may be better);
* where mpmath has no value but IEEE 754 has one (``pow(1, nan) = 1``, ``pow(-2, inf) = inf``),
  the rewritten form gives the naive value or NaN.

Points where the formula divides by zero (a pole: IEEE has a signed infinity, mpmath nothing) are
left out.
"""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest

import exprc
from exprc.accuracy import bits_lost, reference

NP = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("_")})
NP.sigmoid = lambda x: 1 / (1 + np.exp(-x))

#: Rounding noise: within this many bits counts as exact when comparing with the naive formula.
NOISE = 2.0
#: Special operands: signed zeros, units, non-finite values, magnitudes whose product or quotient
#: over- or underflows, and exp arguments that do.
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 5e-324, -5e-324, 1e-200, -1e-200,
                    1e200, -1e200, 800.0, -800.0, np.inf, -np.inf, np.nan])

#: (rule that must fire, formula fn(m, *args), number of args)
CASES = [
    ("log_mul", lambda m, x, y: m.log(x * y), 2),
    ("log_mul", lambda m, x, y: m.log(x * m.exp(y)), 2),
    ("log_mul", lambda m, x, y: m.log(m.exp(x) * y), 2),
    ("log_mul", lambda m, x, y: m.log(x * m.square(y)), 2),
    ("log_mul", lambda m, x, y: m.log(x * m.sigmoid(y)), 2),
    ("log_div", lambda m, x, y: m.log(x / y), 2),
    ("log_div", lambda m, x, y: m.log(x / m.exp(y)), 2),
    ("log_div", lambda m, x, y: m.log(m.exp(x) / y), 2),
    ("log_pow", lambda m, x: m.log(x ** 3.5), 1),
    ("log_pow", lambda m, x: m.log(x ** 3.0), 1),
    ("log_pow", lambda m, x: m.log(x ** 6.0), 1),
    ("log_pow", lambda m, x, y: m.log(x ** y), 2),
    ("log_sqrt", lambda m, x: m.log(m.sqrt(x)), 1),
    ("log_square", lambda m, x: m.log(x * x), 1),
    ("log1p_square", lambda m, x: m.log1p(3 * m.square(x)), 1),
    ("arctanh_from_log", lambda m, x: m.log((1 + x) / (1 - x)), 1),
    ("sqrt_product", lambda m, x, y: m.sqrt(x * y), 2),
    ("sqrt_product", lambda m, x, y: m.sqrt(x * m.exp(y)), 2),
    ("sqrt_square", lambda m, x: m.sqrt(x * x), 1),
    ("bernoulli_kl", lambda m, x: x * m.log(2 * x) + (1 - x) * m.log(2 * (1 - x)), 1),
    ("bernoulli_kl", lambda m, x, y: x * m.log(x / y) + (1 - x) * m.log((1 - x) / (1 - y)), 2),
    ("hypot_from_sqrt", lambda m, x, y: m.sqrt(x * x + y * y), 2),
    ("pow_compensated_base", lambda m, x, y: (1 + x) ** y, 2),
    ("pow_compensated_base", lambda m, x, y: (x + y) ** 7.5, 2),
    ("pow1p_minus_one", lambda m, x, y: (1 + x) ** y - 1, 2),
    ("sigmoid_from_exp", lambda m, x: (1 + m.exp(-x)) ** -2.0, 1),
    # exp(-inf) is exactly 0, so exp(x)/exp(x) is 0/0 there (fuzzer seed 100055 graph 11 gave 1.0)
    ("product_cancel", lambda m, x: m.exp(x) / m.exp(x), 1),
    ("product_cancel", lambda m, x, y: m.sigmoid(x) * y / m.sigmoid(x), 2),
    ("product_cancel", lambda m, x, y: m.square(m.exp(x)) * y / m.exp(x) / m.exp(x), 2),
    ("product_cancel", lambda m, x, y: (x * y) / y, 2),
    # sqrt(inf**2 + c) - inf is inf - inf: NaN, not the limit 0 (fuzzer seed 100110 graph 8)
    ("sqrt_conjugate", lambda m, x, y: m.sqrt(x * x + m.square(y)) - x, 2),
    ("sqrt_conjugate", lambda m, x: m.sqrt(x * x + 1) - x, 1),
    ("sqrt_conjugate", lambda m, x, y: m.sqrt(x) - m.sqrt(y), 2),
]


def _ids(case):
    return case[0]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_special_values_keep_nan_and_inf(case):
    rule, spell, nargs = case
    vs = [exprc.vector(f"x{i}") for i in range(nargs)]
    f = exprc.function(vs, spell(exprc, *vs), backend="numpy")
    assert rule in f.rewrites, (rule, f.rewrites)
    args = [np.array(p) for p in zip(*itertools.product(SPECIAL, repeat=nargs))]
    with np.errstate(all="ignore"):
        got, naive = np.asarray(f(*args)), np.asarray(spell(NP, *args), dtype=np.float64)
    poles: list = []
    ref = reference(spell, args, undefined=poles)
    defined = np.ones(len(got), bool)
    defined[poles] = False
    if "hypot_from_sqrt" in f.rewrites:  # IEEE 754: hypot(±inf, NaN) is +inf (and the naive formula NaN)
        defined &= ~(np.any([np.isinf(a) for a in args], axis=0) & np.any([np.isnan(a) for a in args], axis=0))

    def at(mask):
        return [(*(float(a[i]) for a in args), float(got[i]), float(naive[i]), float(ref[i]))
                for i in np.flatnonzero(mask)[:6]]

    undefined = defined & np.isnan(ref)
    lost = undefined & np.isnan(naive) & ~np.isnan(got)
    assert not lost.any(), f"{rule}: NaN lost (args…, got, naive, exact): {at(lost)}"
    # IEEE's own values where mpmath has none (pow(1, NaN) = 1, pow(-2, inf) = inf): kept
    ieee = undefined & ~np.isnan(naive) & ~np.isnan(got) & (got != naive)
    assert not ieee.any(), f"{rule}: IEEE value changed (args…, got, naive, exact): {at(ieee)}"
    valued = defined & ~np.isnan(ref)
    worse = valued & (bits_lost(got, ref) > np.maximum(bits_lost(naive, ref), NOISE) + 1)
    assert not worse.any(), f"{rule}: worse than naive (args…, got, naive, exact): {at(worse)}"
