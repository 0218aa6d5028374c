"""Taylor coefficients (exact fractions) and the branch radius for series rewrites.

``f(u) - T_m(u)`` — a function minus the first terms of its own Taylor series, as in
``x - sin(x)``, ``tan(x) - x`` or ``log1p(x) - x`` — cancels catastrophically near 0.
The rule in :mod:`exprc.rewrite.rules.stability.cancellation` replaces it by the remaining series
``sum_{n > m} a_n u^n`` for ``|u| < r`` and keeps the formula beyond ``r``; this module
chooses ``r`` and the number of terms so that both sides lose at most ~3 bits.  :func:`sum_branch`
does the same for several functions of one argument whose leading terms cancel (``tan(x) - sin(x)``:
the combined series, rule ``series_difference``).  :func:`economize` then shortens the truncated
series for its interval (Chebyshev economization: ``arctan(x) - x`` needs 19 terms in x**2 on
|x| < 0.75, not 61).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

#: Functions with a known series at 0, their radius of convergence and a float implementation.
FUNCTIONS: dict[str, tuple[float, object]] = {
    "sin": (math.inf, math.sin), "sinh": (math.inf, math.sinh), "cos": (math.inf, math.cos),
    "cosh": (math.inf, math.cosh), "exp": (math.inf, math.exp), "expm1": (math.inf, math.expm1),
    "log1p": (1.0, math.log1p), "arctan": (1.0, math.atan), "arctanh": (1.0, math.atanh),
    "arcsin": (1.0, math.asin), "arcsinh": (1.0, math.asinh), "tan": (math.pi / 2, math.tan),
    "tanh": (math.pi / 2, math.tanh),
}
MAX_TERMS = 64
#: The terms a series may use when no radius passes with :data:`MAX_TERMS` (see :func:`branch`).
LONG_TERMS = 128


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


def _mild_cancellation(r: float, radius: float, value: Callable[[float], tuple[float, float]],
                       ratio: float = 10.0) -> bool:
    """Whether the formula loses at most ~3 bits (``ratio`` 10; 20: ~4) to cancellation at +-r and +-2r
    inside the radius of convergence: ``value(v)`` is (|f(v) - T(v)|, |f(v)| + |T(v)|)."""
    for v in (r, -r, 2 * r, -2 * r):
        if abs(v) >= radius:
            continue
        rest, scale = value(v)
        if rest == 0 or scale > ratio * rest:
            return False
    return True


@functools.cache
def branch(op: str, m: int) -> tuple[float, int] | None:
    """(r, N): use the series (terms m+1 .. N-1) for |u| < r, the formula beyond.

    ``r`` is the smallest radius beyond which the formula loses at most ~3 bits to
    cancellation (|f| + |T_m| <= 10 |f - T_m| at r and 2r), and N is enough terms for
    the truncation error to stay below 2**-56 of the result at r.  Where no radius works with
    :data:`MAX_TERMS` terms — series with a radius of convergence of 1 or pi/2 (arctan, tanh …) converge
    too slowly at the radius where the cancellation has become mild — the test is relaxed to ratio 20
    and up to :data:`LONG_TERMS` terms (``arctan(x) - x``: r = 0.75 with 128 terms, ratio 13;
    ``arcsin(x) - x``: r = 0.75 with 120 terms, ratio 16.3, measured 2-3 bits lost at r where the formula
    takes over: the ratio counts |f| + |T|, twice what the rounding of f alone costs).  None if neither
    works."""
    return _branch(op, m, 10.0, MAX_TERMS) or _branch(op, m, 20.0, LONG_TERMS)


def _branch(op: str, m: int, ratio: float, most: int) -> tuple[float, int] | None:
    radius = FUNCTIONS[op][0]
    for r in (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
        if r >= 0.9 * radius:
            break
        if not _mild_cancellation(r, radius, lambda v: _residual(op, m, v), ratio):
            continue
        a = coefficients(op, most + 8)
        rest, _ = _residual(op, m, r)
        for n in range(m + 2, most + 1):
            tail = sum(abs(float(a[i])) * r ** i for i in range(n, n + 8))
            if tail < 2.0 ** -56 * rest:
                return r, n
        return None
    return None


#: The relative error :func:`economize` may add to a series (the truncation already allows 2**-56).
ECONOMY = 2.0 ** -56
_FIX = 384


@functools.cache
def economize(coeffs: tuple[Fraction, ...], r: float) -> tuple[Fraction, ...]:
    """``sum(coeffs[i] u**i)`` on ``|u| <= r`` with fewer terms, within a relative error of
    :data:`ECONOMY` everywhere on the interval (Lanczos' economization).

    The series is ``u**lo P(t)`` with ``t = u**2`` when its terms are all odd or all even powers (then
    ``t`` runs over [0, r**2]: shifted Chebyshev polynomials), else ``t = u`` on [-r, r].  The top term
    ``c t**n`` is traded for the lower-degree rest of ``c T_n(t) / lead(T_n)`` while the sum of what
    the trades cost (each at most ``|c| / lead(T_n)`` on the interval) stays below ``ECONOMY`` times
    the smallest ``|P|`` there: the error is relative to the series' own value, since ``P(0)`` is its
    lowest coefficient.  Returned as coefficients of powers of u, as given."""
    nonzero = [i for i, c in enumerate(coeffs) if c]
    if len(nonzero) < 3:
        return coeffs
    lo = nonzero[0]
    step = 2 if all((i - lo) % 2 == 0 for i in nonzero) else 1
    p = [Fraction(coeffs[i]) for i in range(lo, nonzero[-1] + 1, step)]
    a, b = (Fraction(0), Fraction(r) ** 2) if step == 2 else (-Fraction(r), Fraction(r))
    values = np.polyval([float(c) for c in reversed(p)], np.linspace(float(a), float(b), 257))
    smallest = float(np.min(np.abs(values)))
    if not smallest > 0 or np.any(np.sign(values) != np.sign(values[0])):
        return coeffs  # (P vanishes on the interval: no relative bound to keep)
    budget, spent = ECONOMY * smallest, 0.0
    # Fixed point (integers scaled by 2**_FIX): exact fractions took 20-45 ms a series.  Each step
    # rounds by 2**-_FIX in absolute terms, far below the budget as long as |P| is not tiny (the
    # series here have |P| > 1e-4 on their intervals; a smaller one is left as it is).
    if smallest < 1e-30:
        return coeffs
    one = 1 << _FIX

    def fix(x: Fraction) -> int:
        return (x.numerator << _FIX) // x.denominator

    q = [fix(c) for c in p]
    # T_n(s) with s = (2t - a - b) / (b - a): the Chebyshev polynomials of the interval, in powers of t
    lin = [fix(-(a + b) / (b - a)), fix(2 / (b - a))]
    cheb = [[one], lin]
    while len(cheb) < len(q):
        prev, cur = cheb[-2], cheb[-1]
        nxt = [0] * (len(cur) + 1)
        for i, c in enumerate(cur):
            for j, l in enumerate(lin):
                nxt[i + j] += (2 * c * l) >> _FIX
        for i, c in enumerate(prev):
            nxt[i] -= c
        cheb.append(nxt)
    while len(q) > 2:
        n = len(q) - 1
        c, lead = q[n], cheb[n][n]  # (|T_n| <= 1 on the interval)
        if lead == 0:
            break
        cost = abs(c / lead)
        if spent + cost > budget:
            break
        spent += cost
        for i in range(n):
            q[i] -= (c * cheb[n][i]) // lead
        q.pop()
    if len(q) == len(p):
        return coeffs
    p = [Fraction(c, one) for c in q]
    out = [Fraction(0)] * (lo + step * (len(p) - 1) + 1)
    for j, c in enumerate(p):
        out[lo + step * j] = c
    return tuple(out)


#: Terms of the combined series compared when checking that leading terms cancel (a prefix: the full
#: lists are built only for a sum that does cancel).
_HEAD = 12


def _lowest(coeffs: tuple[Fraction, ...] | list[Fraction]) -> int | None:
    return next((i for i, c in enumerate(coeffs) if c), None)


@functools.cache
def sum_branch(fns: tuple[tuple, ...],
               poly: tuple[tuple[int, Fraction], ...]) -> tuple[float, tuple[Fraction, ...]] | None:
    """For ``S(u) = sum c * f(u) / u**k + sum p * u**d`` (``fns``: (f, c) or (f, c, k) entries, f in
    :data:`FUNCTIONS`, k >= 0; ``poly``: (d, p) pairs, d may be negative) whose leading Taylor terms
    cancel — the lowest power of ``u`` in ``S``'s series is higher than the lowest power in one of its
    terms, as in ``tan(u) - sin(u)`` (u against u^3/2), ``exp(u) - cos(u)`` (1 against u) or
    ``exp(u)/u - expm1(u)/u**2`` (1/u against 1/2) — ``(r, a)``: use the series ``sum a_i u**i`` for
    ``|u| < r``, the formula beyond.  None where nothing cancels, where ``S`` has a pole at 0, or where
    no radius works.

    ``r`` is chosen as in :func:`branch`, from the terms' own values and the radius of convergence of
    the series (the smallest of the functions'): the smallest radius at which the formula loses at most
    ~3 bits to cancellation (``sum |terms| <= 10 |S|`` at +-r and +-2r) while the truncated series,
    evaluated in floats, loses at most ~2 (``sum |a_i u**i| <= 4 |S(u)|`` at +-r, +-r/2, +-r/4: its
    own cancellation) and its tail stays below 2**-56 of ``|S|`` at +-r."""
    pmap = dict(poly)
    terms = [(e[0], e[1], e[2] if len(e) > 2 else 0) for e in fns]
    # (u**K S(u) has no negative powers: its series is built, and S's is it shifted down by K)
    shift = max([k for _, _, k in terms] + [-d for d in pmap] + [0])
    if max(pmap, default=0) + shift >= MAX_TERMS or shift >= MAX_TERMS or any(k < 0 for _, _, k in terms):
        return None

    def combined(n: int) -> list[Fraction]:
        """The first n coefficients of u**K S(u)."""
        out = [Fraction(0)] * n
        for d, p in pmap.items():
            if d + shift < n:
                out[d + shift] += p
        for op, c, k in terms:
            for i, ai in enumerate(coefficients(op, max(n - shift + k, 0))):
                out[i + shift - k] += c * ai
        return out

    # 1. does anything cancel?  (a prefix of each series first: cheap)
    n0 = max(_HEAD, max(pmap, default=0) + shift + 2)
    lows = [d + shift for d, p in pmap.items() if p]
    for op, c, k in terms:
        lo = _lowest(coefficients(op, n0))
        if lo is not None:
            lows.append(lo + shift - k)
    lead = _lowest(combined(n0))
    full = combined(MAX_TERMS + 8 + shift)
    if lead is None:
        lead = _lowest(full)  # (cancels further than the prefix shows, or identically zero: then None)
    if lead is None or not lows or lead <= min(lows) or lead < shift:
        return None
    a_full, lead = full[shift:], lead - shift
    # 2. the radius
    radius = min(FUNCTIONS[op][0] for op, _, _ in terms)
    fl = [float(c) for c in a_full]

    def value(v: float) -> tuple[float, float]:
        """(|S(v)| from the terms' float values, sum of the terms' magnitudes)."""
        parts = [float(c) * FUNCTIONS[op][1](v) / v ** k for op, c, k in terms]
        parts += [float(p) * v ** d for d, p in pmap.items()]
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
                return r, economize(tuple(a_full[:n]), r)
        return None
    return None
