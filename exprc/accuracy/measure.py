"""Measuring accuracy: bits lost against a high-precision reference (mpmath).

One formula is written once as ``fn(m, *args)`` where ``m`` is a namespace of
math functions: :data:`exprc` builds the graph, NumPy evaluates it naively, and
:func:`reference` evaluates it in mpmath with a few hundred bits, point by point
(a domain error or a complex result is NaN, as in IEEE arithmetic).  The
namespace's functions are the ops of the one exact table, :mod:`exprc.accuracy.exact`.

``bits_lost(got, ref)`` is Herbie's measure: ``log2(1 + n)`` where ``n`` is the
number of floating-point values between the result and the correctly rounded
reference (0 is exact, 1 is one ulp, 64 is garbage; a NaN where the reference is
a number, or a number where it is NaN, counts 64).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from exprc.accuracy.exact import mp, real, table

#: Working precision of the reference, in bits.
PREC = 1200


def _ordinal(a: np.ndarray) -> np.ndarray:
    """Map floats to integers that count representable values (monotone, -0 == +0)."""
    if a.dtype == np.float32:
        i = a.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    i = a.astype(np.float64).view(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFFFFFFFFFF), i)


def bits_lost(got: Any, ref: Any) -> np.ndarray:
    """Bits of error of ``got`` against the exact values ``ref`` (same shape, float64 or float32)."""
    got = np.asarray(got)
    dt = got.dtype if got.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    got = got.astype(dt)
    ref = np.asarray(ref, dtype=np.float64).astype(dt)
    nan_g, nan_r = np.isnan(got), np.isnan(ref)
    ig, ir = _ordinal(np.where(nan_g, 0, got)), _ordinal(np.where(nan_r, 0, ref))
    same_sign = (ig >= 0) == (ir >= 0)  # exact integer difference; else (huge anyway) in floats
    diff = np.where(same_sign, np.abs(np.where(same_sign, ig - ir, 0)).astype(np.float64),
                    np.abs(ig).astype(np.float64) + np.abs(ir).astype(np.float64))
    bits = np.log2(1.0 + diff)
    bits = np.where(nan_g != nan_r, 64.0, bits)
    return np.where(nan_g & nan_r, 0.0, np.minimum(bits, 64.0))


# -- the mpmath namespace -------------------------------------------------------------------
def _lift(fn: Callable) -> Callable:
    """A scalar mpmath function that also maps over object arrays; complex results are NaN, and so
    are complex arguments (what the formula's own operators make of a domain error: ``(-1) ** 0.5``)."""

    def scalar(*xs: Any) -> Any:
        try:
            return real(fn(*[real(x) for x in xs]))
        except (ZeroDivisionError, ValueError, OverflowError, TypeError):
            return mp().nan

    vec = np.vectorize(scalar, otypes=[object])

    def lifted(*xs: Any) -> Any:
        if any(isinstance(x, np.ndarray) for x in xs):
            return vec(*xs)
        return scalar(*xs)

    return lifted


#: The functions of the namespace that are ops of the exact table (the same names).
ELEMENTWISE = ("exp", "expm1", "exp2", "log", "log1p", "log2", "log10", "sqrt", "cbrt", "square", "abs",
               "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "arcsinh", "arccosh",
               "arctanh", "erf", "erfc", "erfcx", "sigmoid", "softplus", "log1mexp", "logaddexp", "hypot")


def _mp_namespace() -> types.SimpleNamespace:
    ops = table()

    def _sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return np.sum(x, axis=axis, keepdims=keepdims)

    def _max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return np.max(x, axis=axis, keepdims=keepdims)

    def _mean(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        s = np.sum(x, axis=axis, keepdims=keepdims)
        n = np.size(x) // max(np.size(s), 1)
        return s / n

    ns: dict[str, Any] = {name: _lift(ops[name]) for name in ELEMENTWISE}
    ns.update(sum=_sum, max=_max, mean=_mean, pi=mp().pi)
    ns["logsumexp"] = lambda x, axis=None, keepdims=False: ns["log"](_sum(ns["exp"](x), axis, keepdims))
    ns["softmax"] = lambda x, axis=-1: ns["exp"](x) / _sum(ns["exp"](x), axis, True)
    ns["log_softmax"] = lambda x, axis=-1: ns["log"](ns["softmax"](x, axis))
    return types.SimpleNamespace(**ns)


_MP_NS: types.SimpleNamespace | None = None


def mp_namespace() -> types.SimpleNamespace:
    """The mpmath namespace (``m.exp``, ``m.sum`` …) that formulas are evaluated in: the elementwise
    functions are the exact table's (:mod:`exprc.accuracy.exact`), without saturation."""
    global _MP_NS
    if _MP_NS is None:
        _MP_NS = _mp_namespace()
    return _MP_NS


class _Undefined(Exception):
    """The formula divided by zero (a pole, where IEEE arithmetic gives a signed infinity)."""


def _eval_point(formula: Callable, pts: list, prec: int) -> np.ndarray:
    m = mp()
    with m.workprec(prec):
        try:
            with np.errstate(all="ignore"):
                v = formula(mp_namespace(), *[_to_mp(p) for p in pts])
        except ZeroDivisionError as e:
            raise _Undefined from e
        except (ValueError, OverflowError):
            v = m.nan
        return np.array([float(real(x)) for x in np.asarray(v, dtype=object).ravel()], dtype=np.float64)


def _to_mp(p: Any) -> Any:
    m = mp()
    if isinstance(p, np.ndarray):
        return np.array([m.mpf(float(v)) for v in p.ravel()], dtype=object).reshape(p.shape)
    return m.mpf(float(p))


def reference(formula: Callable, args: Sequence[np.ndarray], prec: int = PREC, rows: bool = False,
              max_prec: int = 1 << 14, undefined: list | None = None) -> np.ndarray:
    """The exact result of ``formula(m, *args)`` rounded to float64, point by point.

    Each point is evaluated at ``prec`` bits and at twice that, doubling until two
    precisions agree in float64 (up to ``max_prec``): cancellation in the formula does
    not leak into the reference.  ``rows``: the formula reduces over the last axis, and
    each row of the 2-d inputs is one point.  A point where the formula divides by zero is
    NaN; pass a list as ``undefined`` to get their indices.
    """
    args = [np.asarray(a, dtype=np.float64) for a in args]
    shape = np.broadcast_shapes(*[a.shape for a in args])
    args = [np.broadcast_to(a, shape) for a in args]
    n = shape[0] if shape else 1
    out = []
    scalar_rows = True
    for i in range(n):
        pts = [a[i] if a.ndim else a for a in args]
        p = prec
        try:
            v = _eval_point(formula, pts, p)
            while p < max_prec:
                p *= 2
                w = _eval_point(formula, pts, p)
                if np.array_equal(v, w, equal_nan=True):
                    break
                v = w
        except _Undefined:
            v = np.array([math.nan])
            if undefined is not None:
                undefined.append(i)
        out.append(v)
        scalar_rows = scalar_rows and v.size == 1
    res = np.array(out, dtype=np.float64)
    if not rows:
        return res.reshape(shape if shape else ())
    return res.reshape(n) if scalar_rows else res


def sample(spec: tuple, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of an input range: ``("lin", lo, hi)``, ``("log", lo, hi)`` (0 < lo: log-uniform),
    ``("nlog", lo, hi)`` (the same, negated) or ``("slog", lo, hi)`` (log-uniform magnitude, either sign)."""
    kind, lo, hi = spec
    if kind == "lin":
        return rng.uniform(lo, hi, n)
    mag = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    if kind == "log":
        return mag
    if kind == "nlog":
        return -mag
    if kind == "slog":
        return mag * rng.choice([-1.0, 1.0], n)
    raise ValueError(f"unknown range kind {kind!r}")
