"""Taylor coefficients (exact fractions) and the branch radius for series rewrites.

``f(u) - T_m(u)`` — a function minus the first terms of its own Taylor series, as in
``x - sin(x)``, ``tan(x) - x`` or ``log1p(x) - x`` — cancels catastrophically near 0.
The rule in :mod:`exprc.rewrite.rules.stability.cancellation` replaces it by the remaining series
``sum_{n > m} a_n u^n`` for ``|u| < r`` and keeps the formula beyond ``r``; this module
chooses ``r`` and the number of terms so that both sides lose at most ~3 bits.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

#: Functions with a known series at 0, their radius of convergence and a float implementation.
FUNCTIONS: dict[str, tuple[float, object]] = {
    "sin": (math.inf, math.sin), "sinh": (math.inf, math.sinh), "cos": (math.inf, math.cos),
    "cosh": (math.inf, math.cosh), "exp": (math.inf, math.exp), "expm1": (math.inf, math.expm1),
    "log1p": (1.0, math.log1p), "arctan": (1.0, math.atan), "arctanh": (1.0, math.atanh),
    "arcsin": (1.0, math.asin), "arcsinh": (1.0, math.asinh), "tan": (math.pi / 2, math.tan),
    "tanh": (math.pi / 2, math.tanh),
}
MAX_TERMS = 64


@functools.cache
def coefficients(op: str, n: int = MAX_TERMS + 8) -> tuple[Fraction, ...]:
    """a_0 .. a_{n-1} of the Taylor series of ``op`` at 0."""
    fact = [1]
    for i in range(1, n + 1):
        fact.append(fact[-1] * i)
    a = [Fraction(0)] * n
    for i in range(n):
        if op in ("exp", "expm1"):
            a[i] = Fraction(1, fact[i]) if (i or op == "exp") else Fraction(0)
        elif op in ("sin", "sinh") and i % 2:
            a[i] = Fraction((-1) ** (i // 2) if op == "sin" else 1, fact[i])
        elif op in ("cos", "cosh") and i % 2 == 0:
            a[i] = Fraction((-1) ** (i // 2) if op == "cos" else 1, fact[i])
        elif op == "log1p" and i:
            a[i] = Fraction((-1) ** (i + 1), i)
        elif op in ("arctan", "arctanh") and i % 2:
            a[i] = Fraction((-1) ** (i // 2) if op == "arctan" else 1, i)
        elif op in ("arcsin", "arcsinh") and i % 2:
            k = i // 2
            c = Fraction(fact[2 * k], 4 ** k * fact[k] ** 2 * (2 * k + 1))
            a[i] = c if op == "arcsin" else c * (-1) ** k
    if op in ("tan", "tanh"):  # f' = 1 ± f^2:  (n + 1) a_{n+1} = ± sum a_i a_{n-i}
        s = 1 if op == "tan" else -1
        a = [Fraction(0)] * n
        if n > 1:
            a[1] = Fraction(1)
        for m in range(1, n - 1):
            a[m + 1] = s * sum((a[i] * a[m - i] for i in range(m + 1)), Fraction(0)) / (m + 1)
    return tuple(a)


def _residual(op: str, m: int, u: float) -> tuple[float, float]:
    """(|f(u) - T_m(u)| computed with the series in floats, |f(u)| + |T_m(u)|)."""
    a = coefficients(op)
    fu = FUNCTIONS[op][1](u)
    t = sum(float(a[i]) * u ** i for i in range(m + 1))
    rest = sum(float(a[i]) * u ** i for i in range(m + 1, len(a)))
    return abs(rest), abs(fu) + abs(t)


@functools.cache
def branch(op: str, m: int) -> tuple[float, int] | None:
    """(r, N): use the series (terms m+1 .. N-1) for |u| < r, the formula beyond.

    ``r`` is the smallest radius beyond which the formula loses at most ~3 bits to
    cancellation (|f| + |T_m| <= 10 |f - T_m| at r and 2r), and N is enough terms for
    the truncation error to stay below 2**-56 of the result at r; None if the series
    does not converge fast enough there."""
    radius = FUNCTIONS[op][0]
    a = coefficients(op)
    for r in (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
        if r >= 0.9 * radius:
            break
        ok = True
        for v in (r, -r, 2 * r, -2 * r):
            if abs(v) >= radius:
                continue
            rest, scale = _residual(op, m, v)
            if rest == 0 or scale > 10 * rest:
                ok = False
        if not ok:
            continue
        rest, _ = _residual(op, m, r)
        for n in range(m + 2, MAX_TERMS + 1):
            tail = sum(abs(float(a[i])) * r ** i for i in range(n, min(n + 8, len(a))))
            if tail < 2.0 ** -56 * rest:
                return r, n
        return None
    return None
