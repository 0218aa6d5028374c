"""exprc/rewrite/series.py: the economized series keep their relative accuracy on the whole branch."""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest

from exprc.rewrite import series

MP = {"sin": mpmath.sin, "sinh": mpmath.sinh, "cos": mpmath.cos, "cosh": mpmath.cosh, "exp": mpmath.exp,
      "expm1": mpmath.expm1, "log1p": mpmath.log1p, "arctan": mpmath.atan, "arctanh": mpmath.atanh,
      "arcsin": mpmath.asin, "arcsinh": mpmath.asinh, "tan": mpmath.tan, "tanh": mpmath.tanh}


def _remainder(op: str, m: int) -> tuple[float, tuple[Fraction, ...]]:
    """(r, the Taylor remainder's coefficients) as taylor_cancellation builds them for f(u) - T_m(u)."""
    r, n = series.branch(op, m)
    a = series.coefficients(op, n)
    return r, tuple([Fraction(0)] * (m + 1) + list(a[m + 1:n]))


def _poly(coeffs, u):
    return mpmath.fsum(mpmath.mpf(c.numerator) / c.denominator * u ** i for i, c in enumerate(coeffs) if c)


def _first(op: str) -> int:
    """m of f(u) - T_m(u) with T_m the series' first nonzero term."""
    return next(i for i, c in enumerate(series.coefficients(op, 8)) if c and i > 0)


@pytest.mark.parametrize("op", [op for op in sorted(series.FUNCTIONS) if series.branch(op, _first(op))])
def test_economized_remainder_is_within_its_budget_everywhere_on_the_branch(op):
    m = _first(op)
    r, coeffs = _remainder(op, m)
    short = series.economize(coeffs, r)
    assert sum(1 for c in short if c) <= sum(1 for c in coeffs if c)
    with mpmath.workdps(60):
        us = [mpmath.mpf(float(v)) for v in np.concatenate([np.linspace(-r, r, 301), [1e-300, -1e-8, 1e-3, r]])]
        for u in us:
            if u == 0:
                continue
            exact = MP[op](u) - mpmath.fsum(mpmath.mpf(c.numerator) / c.denominator * u ** i
                                            for i, c in enumerate(series.coefficients(op, m + 1)))
            if exact == 0:
                continue
            rel = abs(_poly(short, u) / exact - 1)
            assert rel < 2.0 ** -55, (op, float(u), float(rel))  # (economize adds at most 2**-56)


def test_arctan_minus_x_needs_a_third_of_the_terms():
    r, coeffs = _remainder("arctan", 1)
    short = series.economize(coeffs, r)
    assert r == 0.75 and sum(1 for c in coeffs if c) > 60 and sum(1 for c in short if c) <= 20
    assert all(c == 0 for c in short[::2])  # still odd: evaluated as u**3 P(u**2)


def test_what_is_not_economized():
    assert series.economize((Fraction(0), Fraction(1), Fraction(1, 3)), 0.5) == (0, 1, Fraction(1, 3))  # 2 terms
    vanishing = (Fraction(1), Fraction(0), Fraction(-4), Fraction(0), Fraction(1, 10 ** 6))  # 1 - 4u^2 + ...: 0 at 1/2
    assert series.economize(vanishing, 1.0) == vanishing
    tiny_interval = series.economize(tuple(Fraction(1, k + 1) for k in range(12)), 1e-6)
    assert sum(1 for c in tiny_interval if c) < 12  # a short interval drops most terms
