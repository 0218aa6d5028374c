"""Exact values: one mpmath evaluation per op, keyed by op name (:data:`exprc.ops.OPS`'s names).

Both users of exact arithmetic read this one table: the measurements
(:func:`exprc.accuracy.measure.reference` evaluates a formula written with ``m.exp``, ``m.log1p`` …
whose functions come from here) and the accuracy search (:func:`exact_values` evaluates a graph
node by node).  An entry takes and returns mpmath numbers (booleans for comparisons) and follows
IEEE special values where the real function has none: a division by zero gives ±inf (0/0 NaN),
``log(0)`` is -inf, a point outside the real domain is NaN.  The working precision is the caller's
(``mpmath.workprec``).

``table(saturate=True)`` is the search's variant: an exp-like op whose argument exceeds
:data:`BIG` in magnitude returns the limit (0, ±1, ±inf) instead of a number with a huge exponent.
Those results are 0 or inf in every float format anyway and mpmath is slow on them; but a formula
that brings such a number back (``log(exp(x))``) needs the exact value, so the measurements use
the plain table.

Ops with no entry are listed in :data:`NO_MPMATH` with the reason; tests/test_op_facts.py checks
that every op is in one of the two.  mpmath is imported on first use, never on ``import exprc``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from exprc.graph import Node

#: Beyond |x| > BIG, exp-like results are 0 or inf in every float format (see ``saturate``).
BIG = 1e5
#: Beyond |x| > HUGE (far past the largest float, 1.8e308), even the plain table saturates exp-like ops.
HUGE = 2 ** 1100  # an int: mpmath compares it exactly

#: Ops without an exact (mpmath) evaluation, by reason.  The search leaves a graph holding one of
#: them as the default pipeline made it.
NO_MPMATH: dict[str, str] = {
    **dict.fromkeys(("sum", "prod", "mean", "max", "min", "all", "any", "argmax", "argmin"),
                    "a reduction: the exact evaluation is elementwise, point by point"),
    **dict.fromkeys(("reshape", "reshape_like", "dimshuffle", "broadcast_to", "concatenate", "shape", "getitem",
                     "inc_subtensor", "sum_to", "split_part"),
                    "a shape op: it moves (or sums) values over an array, not point by point"),
    "matmul": "linear algebra: a sum of products over an axis, not elementwise",
    "print": "a side effect (it prints each call): the search leaves it where the user put it",
    **dict.fromkeys(("alloc", "arange"), "a creation op: it lays out values over a shape given by its sizes, "
                                         "not point by point"),
    **dict.fromkeys(("subtensor", "scatter"), "an index op: it picks or writes values by position, not point by point"),
    **dict.fromkeys(("scan", "scan_output", "ifelse"), "control flow: a loop or a choice between graphs, whose "
                                                       "bodies' ops have their own entries"),
    **dict.fromkeys(("random_uniform", "random_normal", "random_integers", "random_binomial", "random_permutation",
                     "random_model"), "a random draw: its value is a bit pattern of its key, not a function of "
                                      "real numbers (tests/test_random.py checks it bit for bit and by statistics)"),
}


def mp() -> Any:
    """The mpmath module (imported on first use)."""
    import mpmath

    return mpmath


def real(v: Any) -> Any:
    """``v`` as a real mpmath number: a complex result with a nonzero imaginary part is NaN."""
    m = mp()
    if isinstance(v, m.mpc):
        return v.real if v.imag == 0 else m.nan
    return v


def _build(saturate: bool) -> dict[str, Callable[..., Any]]:
    m = mp()
    inf, nan = m.inf, m.nan

    def big(x: Any) -> bool:
        # The plain table saturates too, beyond HUGE: such an argument is no float, only the exact
        # value of an exp of an exp (exp(exp(710))), and its exp would need 2**1000 bits of ln 2
        # (the fuzzer's NaN check hung there).  Saturated, it is still inf or 0, never NaN.
        return m.isfinite(x) and abs(x) > (BIG if saturate else HUGE)

    def exp(x: Any) -> Any:
        return (inf if x > 0 else m.mpf(0)) if big(x) else m.exp(x)

    def div(a: Any, b: Any) -> Any:
        if b == 0:
            return nan if a == 0 or m.isnan(a) else (inf if a > 0 else -inf)
        return a / b

    def log(x: Any) -> Any:
        return -inf if x == 0 else (nan if x < 0 else m.log(x))

    def erfcx(x: Any) -> Any:
        if m.isnan(x) or x == inf:
            return nan if m.isnan(x) else m.mpf(0)
        if x > 1e6:  # the asymptotic series (mpmath's erfc fails for x ~ 1e200): 20 terms, error ~ x**-42
            v, s, t = 1 / (2 * x * x), m.mpf(0), m.mpf(1)
            for k in range(20):
                s, t = s + t, -t * (2 * k + 1) * v
            return s / (x * m.sqrt(m.pi))
        return exp(x * x) * m.erfc(x)

    def power(a: Any, b: Any) -> Any:
        if a < 0 and m.isfinite(b) and b != m.floor(b):
            return nan  # a negative base to a non-integer power has no real value, however large
        if a != 0 and m.isfinite(a) and m.isfinite(b) and abs(b * m.log(abs(a), 2)) > BIG:
            if b * m.log(abs(a), 2) < 0:
                return m.mpf(0)
            odd = a < 0 and b == m.floor(b) and int(b) % 2
            return -inf if odd else inf
        if a < 0 and b != m.floor(b):
            return nan
        if a == 0 and b < 0:
            return inf
        return m.power(a, b)

    def sigmoid(x: Any) -> Any:
        return (m.mpf(1) if x > 0 else exp(x)) if big(x) else 1 / (1 + m.exp(-x))

    def softplus(x: Any) -> Any:
        return (x if x > 0 else exp(x)) if big(x) else m.log1p(m.exp(x))

    def logaddexp(a: Any, b: Any) -> Any:
        # The search's variant has always let a NaN ``b`` through as a number (max/min ignore it);
        # making it NaN there changes what the search may choose: do it with an ALGORITHM bump.
        if not saturate and (m.isnan(a) or m.isnan(b)):
            return nan
        hi = max(a, b)
        if not m.isfinite(hi):
            return hi if not m.isnan(hi) else nan
        return hi + softplus(min(a, b) - hi)

    def sqrt(x: Any) -> Any:
        return nan if x < 0 else m.sqrt(x)

    def cbrt(x: Any) -> Any:
        return m.sign(x) * m.cbrt(abs(x)) if x != 0 else x

    def cast(x: Any) -> Any:  # a float cast is the identity on real numbers; bool -> 0/1
        return m.mpf(int(x)) if isinstance(x, bool) else x

    def fb(fn: Callable[..., bool]) -> Callable[..., Any]:
        return lambda *a: bool(fn(*a))

    return {
        "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "truediv": div,
        "neg": lambda a: -a, "square": lambda a: a * a, "reciprocal": lambda a: div(m.mpf(1), a),
        "abs": abs, "sign": lambda a: m.sign(a), "floor": m.floor, "ceil": m.ceil, "round": m.nint,
        "exp": exp, "exp2": lambda x: exp(x * m.ln2), "expm1": lambda x: exp(x) - 1 if big(x) else m.expm1(x),
        "log": log, "log2": lambda x: div(log(x), m.ln2), "log10": lambda x: div(log(x), m.ln10),
        "log1p": lambda x: log(1 + x) if x <= -1 else m.log1p(x), "sqrt": sqrt, "cbrt": cbrt,
        "sin": m.sin, "cos": m.cos, "tan": m.tan,
        "arcsin": lambda x: nan if abs(x) > 1 else m.asin(x), "arccos": lambda x: nan if abs(x) > 1 else m.acos(x),
        "arctan": m.atan, "arctan2": m.atan2,
        "sinh": lambda x: (inf if x > 0 else -inf) if big(x) else m.sinh(x),
        "cosh": lambda x: inf if big(x) else m.cosh(x), "tanh": m.tanh, "arcsinh": m.asinh,
        "arccosh": lambda x: nan if x < 1 else m.acosh(x),
        "arctanh": lambda x: nan if abs(x) > 1 else (inf * m.sign(x) if abs(x) == 1 else m.atanh(x)),
        "sigmoid": sigmoid, "softplus": softplus,
        "log1mexp": lambda x: nan if x > 0 else log(-(exp(x) - 1) if not big(x) else m.mpf(1) - exp(x)),
        "erf": m.erf, "erfc": m.erfc, "erfcx": erfcx, "pow": power, "hypot": lambda a, b: m.sqrt(a * a + b * b),
        "logaddexp": logaddexp,
        "two_sum_err": lambda a, b: m.mpf(0),  # (exact arithmetic does not round a + b)
        "two_prod_err": lambda a, b: m.mpf(0),
        "maximum": lambda a, b: nan if m.isnan(a) or m.isnan(b) else max(a, b),
        "minimum": lambda a, b: nan if m.isnan(a) or m.isnan(b) else min(a, b),
        "floordiv": lambda a, b: m.floor(div(a, b)), "mod": lambda a, b: a - m.floor(div(a, b)) * b,
        "lt": fb(lambda a, b: a < b), "le": fb(lambda a, b: a <= b), "gt": fb(lambda a, b: a > b),
        "ge": fb(lambda a, b: a >= b), "eq": fb(lambda a, b: a == b), "ne": fb(lambda a, b: a != b),
        "and": lambda a, b: a and b, "or": lambda a, b: a or b, "xor": lambda a, b: a != b,
        "invert": lambda a: (not a) if isinstance(a, bool) else ~int(a),  # (a rare guard's ~cond)
        "isnan": fb(m.isnan), "isinf": fb(m.isinf), "isfinite": fb(m.isfinite),
        "where": lambda c, a, b: a if c else b, "fill": lambda s, v: v, "cast": cast,
        "stop_gradient": lambda a: a,  # the identity on values (it only steers exprc.grad)
        "rare": lambda a: a,  # the identity on values (it only steers code generation)
    }


_TABLES: dict[bool, dict[str, Callable[..., Any]]] = {}


def table(saturate: bool = False) -> dict[str, Callable[..., Any]]:
    """The exact evaluation of each op, by op name (built on first use; see the module docstring)."""
    t = _TABLES.get(saturate)
    if t is None:
        t = _TABLES[saturate] = _build(saturate)
    return t


def _value(op: str, args: list, ops: dict) -> Any:
    m = mp()
    try:
        v = ops[op](*args)
    except (ZeroDivisionError, ValueError, OverflowError, TypeError):
        return m.nan
    return real(v)


def exact_values(order: Sequence[Node], inputs: Sequence[Node], points: np.ndarray, prec: int = 160,
                 max_prec: int = 1 << 13, saturate: bool = True) -> dict[Node, np.ndarray]:
    """Every node of ``order`` at each point (columns of ``points``), exactly rounded to float64 (bools as
    0/1), with the saturating table (the search's; ``saturate=False``: the plain one, for a formula that
    brings a huge exponent back, as the fuzzer's NaN checks need): each point is evaluated at ``prec`` bits (plus four times the
    largest binary exponent of its coordinates) and twice that, doubling until all nodes agree and no
    addition cancelled more bits than the precision holds (an exact 0 from nonzero terms is pursued up
    to ``max_prec``)."""
    m = mp()
    ops = table(saturate=saturate)
    pos = {v: i for i, v in enumerate(inputs)}
    k = points.shape[1]
    out = np.empty((len(order), k))

    def run(j: int, p: int) -> tuple[np.ndarray, bool]:
        """The values at precision p, and whether an addition cancelled more bits than p holds (then
        a higher precision could still agree on a wrong result, typically 0: 1 + erf(-15))."""
        short = False
        with m.workprec(p):
            vals: dict[Node, Any] = {}
            for n in order:
                if n.op == "input":
                    vals[n] = m.mpf(float(points[pos[n], j]))
                elif n.op == "constant":
                    c = n.value.item()
                    vals[n] = c if isinstance(c, bool) else m.mpf(float(c))
                else:
                    args = [vals[i] for i in n.inputs]
                    v = vals[n] = _value(n.op, args, ops)
                    if n.op in ("add", "sub") and not short:
                        a, b = args
                        if a != 0 and b != 0 and m.isfinite(a) and m.isfinite(b) and m.isfinite(v):
                            short = v == 0 or m.mag(v) < max(m.mag(a), m.mag(b)) - (p - 64)
            return np.array([float(vals[n]) for n in order]), short

    # Cancellation of f(x) - T(x) at a tiny x (or of sqrt(x + 1) - sqrt(x) at a huge one) loses a few
    # times the exponent of x in bits: start above that.
    expo = np.abs(np.frexp(np.where(np.isfinite(points) & (points != 0), points, 1.0))[1]).max(axis=0)
    for j in range(k):
        p = prec + 4 * int(expo[j])
        v, short = run(j, p)
        while p < max_prec:
            p *= 2
            w, short_w = run(j, p)
            if not short and np.array_equal(v, w, equal_nan=True):
                break
            v, short = w, short_w
        out[:, j] = v
    return {n: out[i] for i, n in enumerate(order)}
