"""Stability rules on ``log(...)``: log/exp forms, log-sum-exp, inverse hyperbolics, overflow.

``log(1 + x) -> log1p(x)``, ``log(sum(exp x)) -> logsumexp``, ``log(x + sqrt(x*x + 1)) ->
arcsinh(x)``, ``log(x*y)`` where the product over- or underflows.  Rules made with
:func:`_log_rule` also look through a guard that an earlier rule put on the argument (see
:func:`~exprc.rewrite.rules.stability._common.guarded`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from exprc.graph import Node
from exprc.rewrite import forms as F
from exprc.rewrite import series as SERIES
from exprc.rewrite.core import P, X
from exprc.rewrite.forms import SumView, build_sum, make, scale
from exprc.rewrite.rules.stability._common import (
    HALF,
    LN2,
    ONE,
    POSITIVE_OPS,
    SUM_OPS,
    TWO,
    add,
    div,
    f,
    finite_max,
    guarded,
    k,
    max_shifted,
    mul,
    nan_where,
    negated,
    negative_product,
    single,
    sqrt_of,
    stability_rule,
    sub,
    sum_of_exp,
    unguard,
    view_of,
    with_rest,
)


def _log_rule(name: str) -> Callable:
    """A rule on log(a); it also tries the formula behind a guarded ``a`` (log(x + sqrt(x*x + 1))
    is still arcsinh after sqrt_conjugate guarded the sum)."""

    def deco(fn: Callable[..., Node | None]) -> Callable[..., Node | None]:
        def both(node: Node, a: Node) -> Node | None:
            naive = unguard(a)
            out = fn(node, naive) if naive is not None else None
            out = out if out is not None else fn(node, a)
            if out is not None and F.origin(out) is None:
                F.set_origin(out, ("log", a))  # (rules on sums of logs still read log(a): _log_of)
            return out

        both.__doc__ = fn.__doc__
        stability_rule(name, P("log", X("a")))(both)
        return fn

    return deco


@stability_rule("log_exp", P("log", P("exp", X("x"))))
def log_exp(node: Node, x: Node) -> Node:
    """log(exp(x)) -> x (no overflow for x > 709)."""
    return x


def _lse(x: Node, axes: tuple) -> Node:
    """log(sum(exp(x))) over ``axes`` (keepdims) as m + log1p(T): m is the maximum (0 when it is
    not finite, so ±inf stay exact) and T = sum(exp(x - m)) - 1 computed without rounding the 1
    in: the terms at the maximum are counted, not added.  Accurate also when the result is tiny
    (log_softmax of a confident prediction)."""
    shift, _, l1p = _lse_parts(x, axes)
    return add(shift, l1p)


def _shifted_by_max(x: Node, axes: tuple) -> bool:
    """``x`` is ``z - max(z)`` over ``axes``, or ``z - where(isfinite(max(z)), max(z), 0)`` (softmax's
    own shift): its maximum over ``axes`` is exactly 0 where ``max(z)`` is finite, and where it is
    not, NaN (inf - inf, NaN - NaN) or ``max(z)`` itself (shifted by 0), so the shift
    :func:`_lse_parts` would subtract is 0 either way."""
    if x.op == "sub":
        pairs = [x.inputs]
    elif x.op == "add":  # z + (-m) in either order: canonical graphs spell subtraction so
        pairs = [(z, n.inputs[0]) for z, n in (x.inputs, x.inputs[::-1]) if n.op == "neg"]
    else:
        return False
    for z, m in pairs:
        while m.op == "dimshuffle":
            m = m.inputs[0]
        if (m.op == "where" and m.inputs[0].op == "isfinite" and m.inputs[0].inputs[0] is m.inputs[1]
                and m.inputs[2].op == "constant" and not m.inputs[2].value.any()):
            m = m.inputs[1]  # (finite_max's form)
        if m.op == "max" and m.inputs[0] is z and tuple(m.arg("axis")) == tuple(axes):
            return True
    return False


def _lse_parts(x: Node, axes: tuple) -> tuple[Node, Node, Node]:
    """(m, x - m, log1p(T)) of _lse: log_softmax is (x - m) - log1p(T), exact at the maximum.

    When ``x`` is already shifted by its maximum (``z - max(z)``) that shift is 0, so x - m is ``x``
    to the bit and is not computed again: log(softmax(z)) finds the row maximum once, not twice."""
    if _shifted_by_max(x, axes):
        shift, y = k(0.0, x), x
    else:
        shift = finite_max(x, axes)
        y = sub(x, shift)
    top = make("eq", y, k(0.0, y))
    # (exp(y) - 1 at the maxima: exactly the 0 they add, with exp(y)'s derivative; with a 0 there the
    # form's gradient was right but its own derivative dropped the maxima: the Hessian of
    # log(sum(exp(x))) at x = 0 came out 0.  Given the masks, the form is then
    # log(sum(exp(x - m))) + m for every x and m, so derivatives of every order are right wherever
    # the gradient routes m's.  Frozen: not expm1(y), a second vector call per element.)
    ey = f("exp", y)
    others = make("sum", F.where(top, F.freeze(sub(ey, k(1.0, y))), ey), axis=axes, keepdims=True)
    count = make("sum", make("cast", top, dtype=x.dtype), axis=axes, keepdims=True)
    return shift, y, f("log1p", add(others, sub(count, k(1.0, x))))


@stability_rule("logsumexp_from_log", P("log", P(("sum", "mean"), P("exp", X("x")), name="s")))
def logsumexp_from_log(node: Node, s: Node, x: Node) -> Node | None:
    """log(sum(exp(x))) -> logsumexp(x) (max-shifted, exact for ±inf); log(mean(exp x)) likewise."""
    if max_shifted(x):
        return None
    from exprc import api

    axes, keep = s.arg("axis"), s.arg("keepdims")
    out = _lse(x, axes)
    if not keep:
        out = api.squeeze(out, axes) if axes else out
    if s.op == "mean":
        out = sub(out, f("log", api._count(x, axes).astype(node.dtype)))
    return out


def _log_softmax_from_log(node: Node, a: Node) -> Node | None:
    """log(exp(x) / sum(exp(x))) -> x - logsumexp(x) (log_softmax; see _lse)."""
    if a.op != "truediv" or a.inputs[0].op != "exp":
        return None
    x, s = a.inputs[0].inputs[0], a.inputs[1]
    se = sum_of_exp(s)
    if se is None or se[0] is not x:
        return None
    _, y, l1p = _lse_parts(x, se[1])
    return sub(y, l1p)


log_softmax_from_log = _log_rule("log_softmax_from_log")(_log_softmax_from_log)


@_log_rule("arctanh_from_log")
def arctanh_from_log(node: Node, a: Node) -> Node | None:
    """log((1 + x) / (1 - x)) -> 2 arctanh(x)."""
    if a.op != "truediv":
        return None
    vn, vd = view_of(a.inputs[0]), view_of(a.inputs[1])
    if vn is None or vd is None or vn.const != 1 or vd.const != 1:
        return None
    sn, sd = SumView(vn.terms, Fraction(0)), SumView(vd.terms, Fraction(0))
    if len(sn.terms) != 1 or not negated(sn, sd):
        return None
    return scale(f("arctanh", build_sum(sn, node)), TWO)



def _is_square_of(view: SumView | None, t: Node, const: Fraction) -> bool:
    if view is None or view.const != const or len(view.terms) != 1:
        return False
    c, sq = view.terms[0]
    return c == 1 and sq.op == "square" and sq.inputs[0] is t


@_log_rule("arcsinh_from_log")
def arcsinh_from_log(node: Node, a: Node) -> Node | None:
    """log(x + sqrt(x*x + 1)) -> arcsinh(x) (also with hypot(x, 1))."""
    v = view_of(a)
    if v is None or len(v.terms) != 2 or v.const != 0:
        return None
    for (c1, t), (c2, r) in (v.terms, v.terms[::-1]):
        if c1 == 1 and c2 == 1 and _is_square_of(sqrt_of(r), t, ONE):
            return f("arcsinh", t)
    return None


@_log_rule("arccosh_from_log")
def arccosh_from_log(node: Node, a: Node) -> Node | None:
    """log(x + sqrt(x*x - 1)) -> arccosh(x) (also sqrt((x - 1) * (x + 1)))."""
    v = view_of(a)
    if v is None or len(v.terms) != 2 or v.const != 0:
        return None
    for (c1, t), (c2, r) in (v.terms, v.terms[::-1]):
        if c1 == 1 and c2 == 1 and r.op == "sqrt" and _is_square_of(sqrt_of(r), t, -ONE):
            return f("arccosh", t)
    return None


@_log_rule("log1p_from_log")
def log1p_from_log(node: Node, a: Node) -> Node | None:
    """log(1 + x) -> log1p(x); log(1 - x) -> log1p(-x) (any spelling)."""
    v = view_of(a)
    if v is None or v.const != 1 or not v.terms:
        return None
    rest = SumView(v.terms, Fraction(0))
    if not F.broadcast_safe([t for _, t in rest.terms], node):
        return None
    return f("log1p", build_sum(rest, a))


@_log_rule("log1mexp_from_log")
def log1mexp_from_log(node: Node, a: Node) -> Node | None:
    """log(-expm1(x)) -> log1mexp(x) (i.e. log(1 - exp(x)), after expm1_from_exp)."""
    one = single(a)
    if one and one[0] == -1 and one[1].op == "expm1":
        return f("log1mexp", one[1].inputs[0])
    return None


@_log_rule("log_expm1")
def log_expm1(node: Node, a: Node) -> Node | None:
    """log(expm1(x)) -> x + log1p(-exp(-x)) for x > 30 (i.e. log(exp(x) - 1); no overflow for x > 709)."""
    if a.op != "expm1":
        return None
    x = a.inputs[0]
    large = add(x, f("log1p", F.neg(f("exp", F.neg(x)))))
    return F.where(x > k(30.0, x), large, F.freeze(node))


@_log_rule("logaddexp_from_log")
def logaddexp_from_log(node: Node, a: Node) -> Node | None:
    """log(exp(a) + exp(b)) -> logaddexp(a, b); more terms chain; a constant c > 0 counts as exp(log c)."""
    v = view_of(a)
    if v is None or v.const < 0:
        return None
    args = []
    for c, t in v.terms:
        if t.op != "exp" or c <= 0:
            return None
        args.append(t.inputs[0] if c == 1 else add(t.inputs[0], k(math.log(float(c)), node)))
    if v.const > 0:
        args.append(k(math.log(float(v.const)), node))
    if len(args) < 2:
        return None
    out = args[0]
    for x in args[1:]:
        out = make("logaddexp", out, x)
    return out


@_log_rule("log_exp_difference")
def log_exp_difference(node: Node, a: Node) -> Node | None:
    """log(exp(a) - exp(b)) -> a + log1mexp(b - a)."""
    v = view_of(a)
    if v is None or len(v.terms) != 2 or v.const != 0:
        return None
    (c1, t1), (c2, t2) = v.terms
    if t1.op != "exp" or t2.op != "exp" or c1 != -c2 or c1 < 0 and c2 < 0:
        return None
    if c1 < 0:
        (c1, t1), (c2, t2) = (c2, t2), (c1, t1)
    x, y = t1.inputs[0], t2.inputs[0]
    diff = sub(y, x)
    out = add(x, f("log1mexp", diff))
    out = out if c1 == 1 else add(out, k(math.log(float(c1)), node))
    # log(0) = -inf where x = y, also for x = y = -inf (inf - inf would be NaN) -- but not where x = y
    # only by rounding and the sum views found y - x exactly: x = a, y = a - d with |d| << |a| (d < 0 is
    # outside the domain, NaN; d > 0 is a + log(d) to first order, both from log1mexp(-d))
    same = make("and", make("eq", x, y), make("or", make("eq", diff, k(0.0, diff)), f("isnan", diff)))
    return F.where(same, F.where(x < k(math.inf, x), k(-math.inf, x), k(math.nan, x)), out)


@stability_rule("log_sigmoid", P("log", P("sigmoid", X("x"))))
def log_sigmoid(node: Node, x: Node) -> Node:
    """log(sigmoid(x)) -> -softplus(-x)."""
    return F.neg(f("softplus", F.neg(x)))


@stability_rule("log_cosh", P("log", P("cosh", X("x"))))
def log_cosh(node: Node, x: Node) -> Node:
    """log(cosh(x)) -> log1p(2 sinh(x/2)^2) for |x| < 20, |x| - ln 2 + log1p(exp(-2|x|)) beyond."""
    ax = f("abs", x)
    small = F.freeze(f("log1p", scale(f("square", f("sinh", scale(x, HALF))), TWO)))  # |x| < 20: no overflow
    large = add(sub(ax, k(LN2, x)), f("log1p", f("exp", scale(ax, -TWO))))
    return F.where(ax < k(20.0, x), small, large)


@stability_rule("log_sinh", P("log", P("sinh", X("x"))))
def log_sinh(node: Node, x: Node) -> Node:
    """log(sinh(x)) -> x - ln 2 + log1p(-exp(-2x)) for x > 20 (no overflow)."""
    large = add(sub(x, k(LN2, x)), f("log1p", F.neg(f("exp", scale(x, -TWO)))))
    return F.where(x > k(20.0, x), large, F.freeze(node))


@stability_rule("log_sqrt", P("log", P("sqrt", X("x"))))
def log_sqrt(node: Node, x: Node) -> Node:
    """log(sqrt(x)) -> 0.5 log(x) (exact near 1, one op fewer)."""
    return scale(f("log", x), HALF)


@stability_rule("log_square", P("log", P("square", X("x"))))
def log_square(node: Node, x: Node) -> Node:
    """log(x*x) -> 2 log|x| (no overflow for |x| > 1e154)."""
    return scale(f("log", f("abs", x)), TWO)


@stability_rule("log1p_square", P("log1p", X("a")))
def log1p_square(node: Node, a: Node) -> Node | None:
    """log1p(c x*x) (log(1 + c x**2), c > 0) -> 2 log|x| + log(c) + log1p(1/(c x*x)) where c x*x
    overflows (|x| > 1e150; the Cauchy log-density log(1 + x**2)); log1p(c x*x) elsewhere."""
    one = single(a)
    if not one or one[0] <= 0 or one[1].op != "square":
        return None
    c, x = one[0], one[1].inputs[0]
    tail = F.freeze(f("log1p", scale(f("square", div(k(1.0, x), x)), Fraction(1) / Fraction(c))))  # not again
    big = scale(f("log", f("abs", x)), TWO)
    big = add(add(big, k(math.log(c), node)), tail) if c != 1 else add(big, tail)
    # c x*x overflows at |x| = sqrt(max / c): 1e154 for float64 and c = 1, 1.8e19 for float32 (whose
    # threshold is not 1e150, which would round to inf and never fire)
    limit = min(1e150, 1e-4 * math.sqrt(float(np.finfo(x.dtype).max) / c))
    return F.guard(f("abs", x) > k(limit, x), big, F.freeze(node))


@stability_rule("log_pow", P("log", P("pow", X("x"), X("p"))))
def log_pow(node: Node, x: Node, p: Node) -> Node | None:
    """log(x**p) -> p log(x) (p log|x| for an even integer p; x > 0 for a variable p)."""
    pv = F.scalar_const(p) if p.op == "constant" else None
    if p.op == "constant":
        if pv is None or not math.isfinite(pv) or pv == 0:
            return None
        if float(pv).is_integer() and int(pv) % 2 == 0:
            return mul(f("log", f("abs", x)), p)
        return mul(f("log", x), p)
    return guarded(mul(p, f("log", x)), node, x > k(0.0, x))


def _magnitude(t: Node) -> Node:
    """|t|, or ``t`` where it is >= 0 by construction (an exp, a sum of exps): log(sum(exp(x)))
    is then still logsumexp's to find (log(sum(exp(x)) / 3) was inf at x = 800)."""
    if t.op in POSITIVE_OPS or t.op in ("sum", "mean") and t.inputs[0].op in POSITIVE_OPS:
        return t
    return f("abs", t)


def _log_product(node: Node, a: Node, quotient: bool) -> Node | None:
    x, y = a.inputs
    info = np.finfo(node.dtype)
    la, lb = f("log", _magnitude(x)), f("log", _magnitude(y))
    wide = sub(la, lb) if quotient else add(la, lb)
    # x*y < 0 however it rounds (-0.0 by underflow, -inf by overflow, exp(v) = 0 or inf): log is NaN
    fallback = nan_where(negative_product(x, y, quotient), wide)
    safe = (a >= k(float(info.tiny), a)) & (a <= k(float(info.max), a))
    # a guard marked rare: a loop chunk where the product neither over- nor underflows computes
    # log(x*y) alone, not also the two logs of the fallback (the same values)
    return F.guard(f("invert", safe), fallback, F.freeze(node))


def _scaled_erfc(a: Node) -> tuple[float, Node] | None:
    """(c, t) when ``a`` is c * erfc(t) with c = 1 or 1/2 (the normal CDF, 0.5 * erfc(-x / sqrt 2))."""
    pv = F.product_view(a) if a.op in ("erfc", "mul", "truediv") else None
    if pv is None:
        return None
    coef, factors, _, guards = pv
    if guards or len(factors) != 1 or factors[0][1] != 1 or factors[0][0].op != "erfc" or coef not in (1, HALF):
        return None
    return float(coef), factors[0][0].inputs[0]


def _scaled_exp(a: Node) -> tuple[Node, float] | None:
    """(u, log c) when ``a`` is c * exp(u)**(+-1) with a constant 1/e**2 < c < e**2 (see log_exp_scaled)."""
    pv = F.product_view(a) if a.op in ("mul", "truediv") else None
    if pv is None:
        return None
    coef, factors, _, guards = pv
    if guards or len(factors) != 1 or factors[0][0].op != "exp" or factors[0][1] not in (1, -1) or coef <= 0:
        return None
    lc = math.log(coef)
    if not abs(lc) < 2:
        return None
    u = factors[0][0].inputs[0]
    return (u if factors[0][1] == 1 else F.neg(u)), lc


@_log_rule("log_exp_scaled")
def log_exp_scaled(node: Node, a: Node) -> Node | None:
    """log(c exp(u)) -> u + log(c) for a constant 1/e**2 < c < e**2 (the Gaussian log-density
    log(exp(-x*x/2) / sqrt(2 pi))): no exp to overflow or underflow (-inf from x = 38.6) and no log.
    Where u + log(c) cancels (|u + log c| < |log c|/2) the naive form is kept, in a rare branch: the
    sum is exact there but log(c) is rounded, half an ulp every time, where the naive form's error
    varies (constant folding would join a second part of log(c) into the first).  (The bound on c
    keeps that half ulp within the naive form's error elsewhere.)"""
    found = _scaled_exp(a)
    if found is None:
        return None
    u, lc = found
    if not lc:
        return u
    out = add(u, k(lc, u))
    return F.guard(f("abs", out) < k(abs(lc) / 2, u), F.freeze(node), out)


#: From here up erfc(t) is near the smallest normal float (it is subnormal from 26.55, 0 from 27.3).
ERFC_TAIL = 26.0


@_log_rule("log_erfc")
def log_erfc(node: Node, a: Node) -> Node | None:
    """log(erfc(t)) -> log(erfcx(t)) - t*t where erfc(t) underflows (t > 26; finite and accurate up
    to t = 1e154, where t*t overflows), log1p(-erf(t)) for |t| < 1/2 (erfc near 1 rounds away the
    small result); log(0.5 erfc(t)), the log of the normal CDF, the same less log 2, and
    log1p(-erfc(-t)/2) for t < -1, where the CDF is near 1 and its log is its tiny tail."""
    se = _scaled_erfc(a)
    if se is None:
        return None
    c, t = se
    naive = F.freeze(node)
    far = sub(f("log", f("erfcx", t)), f("square", t))
    if c == 1:
        near = F.where(f("abs", t) < k(0.5, t), f("log1p", F.neg(f("erf", t))), naive)
    else:
        far = sub(far, k(LN2, node))
        near = F.where(t < k(-1.0, t), f("log1p", mul(f("erfc", F.neg(t)), k(-0.5, t))), naive)
    return F.guard(t > k(ERFC_TAIL, t), far, near)


@_log_rule("log_mul")
def log_mul(node: Node, a: Node) -> Node | None:
    """log(x*y) -> log|x| + log|y| where x*y over- or underflows (log(x*y) elsewhere)."""
    if a.op != "mul" or _scaled_erfc(a) is not None or _scaled_exp(a) is not None:  # (log_erfc's, log_exp_scaled's)
        return None
    return _log_product(node, a, quotient=False)


@_log_rule("log_div")
def log_div(node: Node, a: Node) -> Node | None:
    """log(x/y) -> log1p((x - y)/y) where 1/2 < x/y < 2, with x - y taken from the sum views
    (log(p/(1 - p)) -> log1p((2p - 1)/(1 - p)); log((x + 1)/x) -> log1p(1/x)): log near 1 turns the
    quotient's rounding into all of its error, and x - y is exact there (Sterbenz);
    log|x| - log|y| where x/y over- or underflows; log(x/y) elsewhere."""
    if a.op != "truediv" or _scaled_erfc(a) is not None or _scaled_exp(a) is not None:
        return None
    out = _log_product(node, a, quotient=True)
    x, y = a.inputs
    vx, vy = view_of(x), view_of(y)
    num = build_sum(vx.plus(vy, -ONE), node) if vx is not None and vy is not None else sub(x, y)
    near_one = (a > k(0.5, a)) & (a < k(2.0, a))
    return F.where(near_one, f("log1p", div(num, y)), out)


def _log_of(t: Node) -> Node | None:
    """``a`` when ``t`` is log(a) or what a log rule made of it this pass (log(2p) is guarded
    against over- and underflow by then: the rules run bottom-up)."""
    if t.op == "log":
        return t.inputs[0]
    info = F.origin(t)
    if info is not None and info[0] == "log":
        return info[1]
    naive = unguard(t)
    return naive.inputs[0] if naive is not None and naive.op == "log" else None


def _relative_entropy_term(t: Node) -> tuple[Fraction, Node, Node | Fraction] | None:
    """(w, a, q) when term ``t`` is w * a * log(a / q) for a constant w (also a * log(a * c) with q =
    1/c, which :func:`_kl_pair` takes only where it is a float)."""
    tv = F.product_view(t) if t.op == "mul" else None
    if tv is None or tv[3] or len(tv[1]) != 2 or any(e != 1 for _, e in tv[1]):
        return None
    for (a, _), (lg, _) in (tv[1], tv[1][::-1]):
        arg = _log_of(lg)
        pv = F.product_view(arg) if arg is not None else None
        if pv is None or pv[3] or (a, 1) not in pv[1] or not pv[0]:
            continue
        coef, factors = pv[0], [fe for fe in pv[1] if fe[0] is not a]
        if not factors:
            return Fraction(tv[0]), a, 1 / Fraction(coef)
        if len(factors) == 1 and factors[0][1] == -1 and coef == 1:
            return Fraction(tv[0]), a, factors[0][0]
    return None


#: Where KL's stable form applies: |s| <= 1/3, s = (p - q)/(p + q), that is q/2 <= p <= 2q on both
#: sides (p - q exact there by Sterbenz); beyond, the naive terms cancel by less than 2 bits.
_KL_RADIUS = 1 / 3


@functools.cache
def _kl_series() -> tuple[Fraction, ...]:
    """C(w) = sum w**j/(2j + 3) economized for 0 <= w <= (1/3)**2 (see :func:`bernoulli_kl`), as
    coefficients of powers of w."""
    even = []
    for j in range(40):
        even += [Fraction(1, 2 * j + 3), Fraction(0)]
    return SERIES.economize(tuple(even), _KL_RADIUS * 1.01)[::2]


@stability_rule("bernoulli_kl", SUM_OPS, needs=("mul",))
def bernoulli_kl(node: Node) -> Node | None:
    """p log(p/q) + (1 - p) log((1 - p)/(1 - q)), the Bernoulli KL divergence (q a variable or a
    constant: p log(2p) + (1 - p) log(2(1 - p))), -> q h(u) + (1 - q) h(v) near p = q, where u = (p -
    q)/q, v = (q - p)/(1 - q) and h(t) = (1 + t) log1p(t) - t >= 0, each from a short series in s =
    t/(2 + t) with positive terms: nothing cancels, where the naive terms cancel to d**2 from |d| (8
    bits at p = 0.5007, q = 1/2).  The naive form elsewhere (q/2 > p or p > 2q on either side), where
    its terms cancel by less than 2 bits.  Constants q1, q2 must be floats; where their exact sum
    misses 1 (0.3 + 0.7 by 2**-54) the difference is added.  Declined where p - q is not one exact
    subtraction on both sides (see :func:`_kl_pair`)."""
    view = view_of(node)
    if view is None or len(view.terms) < 2:
        return None
    found = [(c, t, _relative_entropy_term(t)) for c, t in view.terms if t.op == "mul"]
    found = [x for x in found if x[2] is not None]
    for i, (c1, t1, (w1, a1, q1)) in enumerate(found):
        for c2, t2, (w2, a2, q2) in found[i + 1:]:
            if c1 * w1 != c2 * w2 or q1 is a1 or q2 is a2:
                continue
            found_kl = _kl_pair(node, a1, q1, a2, q2)
            if found_kl is not None:
                stable, inside = found_kl
                naive = F.freeze(build_sum(SumView(((c1, t1), (c2, t2)), Fraction(0)), node))
                return with_rest(view, [t1, t2], F.where(inside, scale(stable, c1 * w1), naive), node)
    return None


def _kl_pair(node: Node, a1: Node, q1: Node | Fraction, a2: Node, q2: Node | Fraction) -> tuple[Node, Node] | None:
    """(stable form, where it applies) of a1 log(a1/q1) + a2 log(a2/q2) when a1 + a2 = q1 + q2 = 1
    (see :func:`bernoulli_kl`)."""
    va1, va2 = view_of(a1), view_of(a2)
    if va1 is None or va2 is None:
        return None
    total = va1.plus(va2)
    if not (total.is_const and total.const == 1):
        return None
    if isinstance(q1, Fraction) and isinstance(q2, Fraction):
        vq1, vq2 = SumView((), q1), SumView((), q2)
        residual = 1 - q1 - q2  # (a1 + a2 - q1 - q2: p log(p/0.3) + (1-p) log((1-p)/0.7) has 2**-54)
        if not all(_float_of(v, node.dtype) for v in (q1, q2, residual)):
            return None
    elif not isinstance(q1, Fraction) and not isinstance(q2, Fraction):
        vq1, vq2 = view_of(q1), view_of(q2)
        qt = vq1.plus(vq2) if vq1 is not None and vq2 is not None else None
        if qt is None or not (qt.is_const and qt.const == 1):
            return None
        residual = Fraction(0)
    else:
        return None
    # d = a - q from the views, on each side one subtraction, exact near p = q (p - q, p - 0.5, 0.7 - p:
    # Sterbenz); declined where the views fold a constant that rounds ((1 - p) - 0.1 is 0.9 - p, and
    # 1 - 0.1 is no float: 30 bits lost at p = 0.9 + 2.45e-9)
    diffs = [va1.plus(vq1, -ONE), va2.plus(vq2, -ONE)]
    if not all(_one_subtraction(d, node.dtype) for d in diffs):
        return None
    parts = []
    inside = None
    for a, q, dv in ((a1, q1, diffs[0]), (a2, q2, diffs[1])):
        # q h(u) = (a + q) s**2 (1 + s (1 + s) C(s**2)) with s = (a - q)/(a + q) = u/(2 + u): log1p(u) =
        # 2 atanh(s) and (1 + u) = (1 + s)/(1 - s) make h(u) = 2 s**2 (1 + s/3 + s**2/3 + s**3/5 + s**4/5
        # + ...)/(1 - s); C(w) = 1/3 + w/5 + w**2/7 + ...  Both sides are >= 0: nothing cancels.
        # (a + q from the nodes, not the views: (1 - p) + (1 - q) is exact where 2 - p - q cancels)
        # (a + q) s**2 computed as d s, frozen: product_cancel made (a + q) square(d/(a + q)) into
        # square(d)/(a + q), which underflows to 0 from |d| = 1.5e-162 (p = 1e-200, q = p/1.5 gave 0)
        aq = add(a, k(float(q), node) if isinstance(q, Fraction) else q)
        d = build_sum(dv, node)
        s_ = div(d, aq)
        series = F.horner(f("square", s_), [float(c) for c in _kl_series()], node)
        rest = add(k(1.0, node), mul(mul(s_, add(s_, k(1.0, node))), series))
        parts.append(F.freeze(mul(d, mul(s_, rest))))
        near = f("abs", s_) <= k(_KL_RADIUS, s_)
        inside = near if inside is None else inside & near
    stable = add(parts[0], parts[1])
    # (a log(a/q) = q h(u) + d, d = a - q: the d's sum to the residual)
    return (add(stable, k(float(residual), node)) if residual else stable), inside


def _float_of(v: Fraction, dtype: str) -> bool:
    """``v`` is a finite float of ``dtype`` (1/5e-324 is not: the rule declines, never raises)."""
    try:
        with np.errstate(over="ignore"):
            x = float(np.asarray(float(v), dtype))
    except OverflowError:
        return False
    return math.isfinite(x) and Fraction(x) == v


def _one_subtraction(d: SumView, dtype: str) -> bool:
    """``d`` is x - y or x - c (c a float of ``dtype``): one subtraction, exact where x is near y."""
    if len(d.terms) == 2 and d.const == 0:
        return sorted(c for c, _ in d.terms) == [-1, 1]
    return len(d.terms) == 1 and abs(d.terms[0][0]) == 1 and _float_of(d.const, dtype)
