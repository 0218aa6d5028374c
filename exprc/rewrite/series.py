"""Taylor coefficients (exact fractions) and the branch radius for series rewrites.

``f(u) - T_m(u)`` — a function minus the first terms of its own Taylor series, as in
``x - sin(x)``, ``tan(x) - x`` or ``log1p(x) - x`` — cancels catastrophically near 0.
The rule in :mod:`exprc.rewrite.rules.stability.cancellation` replaces it by the remaining series
``sum_{n > m} a_n u^n`` for ``|u| < r`` and keeps the formula beyond ``r``; this module
chooses ``r`` and the number of terms so that both sides lose at most ~3 bits.  :func:`sum_branch`
does the same for several functions of one argument whose leading terms cancel (``tan(x) - sin(x)``:
the combined series, rule ``series_difference``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
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


def _mild_cancellation(r: float, radius: float, value: Callable[[float], tuple[float, float]]) -> bool:
    """Whether the formula loses at most ~3 bits to cancellation at +-r and +-2r inside the radius of
    convergence: ``value(v)`` is (|f(v) - T(v)|, |f(v)| + |T(v)|)."""
    for v in (r, -r, 2 * r, -2 * r):
        if abs(v) >= radius:
            continue
        rest, scale = value(v)
        if rest == 0 or scale > 10 * rest:
            return False
    return True


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
        if not _mild_cancellation(r, radius, lambda v: _residual(op, m, v)):
            continue
        rest, _ = _residual(op, m, r)
        for n in range(m + 2, MAX_TERMS + 1):
            tail = sum(abs(float(a[i])) * r ** i for i in range(n, min(n + 8, len(a))))
            if tail < 2.0 ** -56 * rest:
                return r, n
        return None
    return None


#: Terms of the combined series compared when checking that leading terms cancel (a prefix: the full
#: lists are built only for a sum that does cancel).
_HEAD = 12


def _lowest(coeffs: tuple[Fraction, ...] | list[Fraction]) -> int | None:
    return next((i for i, c in enumerate(coeffs) if c), None)


@functools.cache
def sum_branch(fns: tuple[tuple[str, Fraction], ...],
               poly: tuple[tuple[int, Fraction], ...]) -> tuple[float, tuple[Fraction, ...]] | None:
    """For ``S(u) = sum c * f(u) + sum p * u**d`` (``fns``: (f, c) pairs, f in :data:`FUNCTIONS`;
    ``poly``: (d, p) pairs) whose leading Taylor terms cancel — the lowest power of ``u`` in ``S``'s
    series is higher than the lowest power in one of its terms, as in ``tan(u) - sin(u)`` (u against
    u^3/2) or ``exp(u) - cos(u)`` (1 against u) — ``(r, a)``: use the series ``sum a_i u**i`` for
    ``|u| < r``, the formula beyond.  None where nothing cancels, or where no radius works.

    ``r`` is chosen as in :func:`branch`, from the terms' own values and the radius of convergence of
    the series (the smallest of the functions'): the smallest radius at which the formula loses at most
    ~3 bits to cancellation (``sum |terms| <= 10 |S|`` at +-r and +-2r) while the truncated series,
    evaluated in floats, loses at most ~2 (``sum |a_i u**i| <= 4 |S(u)|`` at +-r, +-r/2, +-r/4: its
    own cancellation) and its tail stays below 2**-56 of ``|S|`` at +-r."""
    pmap = dict(poly)
    top = max(pmap, default=0)
    if top >= MAX_TERMS or any(d < 0 for d in pmap):
        return None
    # 1. does anything cancel?  (a prefix of each series first: cheap)
    n0 = max(_HEAD, top + 2)
    head = [pmap.get(i, Fraction(0)) for i in range(n0)]
    lows = [d for d, p in pmap.items() if p]
    for op, c in fns:
        a = coefficients(op, n0)
        lo = _lowest(a)
        if lo is not None:
            lows.append(lo)
        for i in range(n0):
            head[i] += c * a[i]
    lead = _lowest(head)
    a_full = [pmap.get(i, Fraction(0)) for i in range(MAX_TERMS + 8)]
    for op, c in fns:
        for i, ai in enumerate(coefficients(op)):
            a_full[i] += c * ai
    if lead is None:
        lead = _lowest(a_full)  # (cancels further than the prefix shows, or identically zero: then None)
    if lead is None or not lows or lead <= min(lows):
        return None
    # 2. the radius
    radius = min(FUNCTIONS[op][0] for op, _ in fns)
    fl = [float(c) for c in a_full]

    def value(v: float) -> tuple[float, float]:
        """(|S(v)| from the terms' float values, sum of the terms' magnitudes)."""
        parts = [float(c) * FUNCTIONS[op][1](v) for op, c in fns] + [float(p) * v ** d for d, p in pmap.items()]
        return abs(math.fsum(parts)), math.fsum(abs(t) for t in parts)

    def series_cond(v: float, n: int) -> float:
        s = math.fsum(fl[i] * v ** i for i in range(n))
        return math.fsum(abs(fl[i] * v ** i) for i in range(n)) / abs(s) if s else math.inf

    for r in (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
        if r >= 0.9 * radius:
            break
        if not _mild_cancellation(r, radius, value):
            continue
        rest = min(value(r)[0], value(-r)[0])
        for n in range(lead + 2, MAX_TERMS + 1):
            tail = sum(abs(fl[i]) * r ** i for i in range(n, min(n + 8, len(fl))))
            if tail < 2.0 ** -56 * rest:
                if any(series_cond(s * r * t, n) > 4 for s in (1, -1) for t in (1.0, 0.5, 0.25)):
                    return None
                return r, tuple(a_full[:n])
        return None
    return None
