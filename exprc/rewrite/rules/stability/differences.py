"""Stability rules on sums, part 2: differences of two related terms.

Conjugates (``sqrt(a) - sqrt(b)``, ``cbrt``), common denominators, squares (``x*x - y*y``),
trigonometric and hyperbolic differences (``sin(x + e) - sin(x)``, ``exp(u) - exp(-u)``), log
differences and the two-pass variance.  Each finds its pair of terms in the sum view of the node
(:func:`exprc.rewrite.forms.sum_view`), so the other terms of a longer sum are kept as they are.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from exprc.graph import Node
from exprc.rewrite import forms as F
from exprc.rewrite.forms import SumView, build_sum, make, same_up_to_scale, scale
from exprc.rewrite.rules.stability._common import (
    HALF,
    ONE,
    SUM_OPS,
    TWO,
    add,
    diff_view,
    div,
    exact_sqrt,
    f,
    guarded,
    k,
    mul,
    negated,
    sqrt_of,
    stability_rule,
    sub,
    two_sum,
    view_of,
    with_rest,
)


def _pairs(view: SumView, op_a: str, op_b: str | None = None, opposite: bool = True):
    op_b = op_b or op_a
    for i, (ca, ta) in enumerate(view.terms):
        if ta.op != op_a:
            continue
        for j, (cb, tb) in enumerate(view.terms):
            if j == i or tb.op != op_b:
                continue
            if (cb == -ca) if opposite else (cb == ca and j > i):
                yield ca, ta, tb


@stability_rule("sinh_from_exp", SUM_OPS, needs=('exp',))
def sinh_from_exp(node: Node) -> Node | None:
    """exp(u) - exp(-u) -> 2 sinh(u) (no cancellation near 0)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb in _pairs(view, "exp"):
        va, vb = view_of(ta.inputs[0]), view_of(tb.inputs[0])
        if va is not None and vb is not None and negated(va, vb):
            return with_rest(view, [ta, tb], scale(f("sinh", ta.inputs[0]), 2 * c), node)
    return None


@stability_rule("cosh_from_exp", SUM_OPS, needs=('exp',))
def cosh_from_exp(node: Node) -> Node | None:
    """exp(u) + exp(-u) -> 2 cosh(u) (so that cosh(u) - 1 and log(cosh u) are found too)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb in _pairs(view, "exp", opposite=False):
        va, vb = view_of(ta.inputs[0]), view_of(tb.inputs[0])
        if va is not None and vb is not None and negated(va, vb):
            return with_rest(view, [ta, tb], scale(f("cosh", ta.inputs[0]), 2 * c), node)
    return None


@stability_rule("cos_double_angle", SUM_OPS, needs=('square',))
def cos_double_angle(node: Node) -> Node | None:
    """cos(u)**2 - sin(u)**2 -> cos(2u) where 2u is finite (beyond, cos(inf) would be NaN: the formula)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb in _pairs(view, "square"):
        if ta.inputs[0].op == "cos" and tb.inputs[0].op == "sin" and ta.inputs[0].inputs[0] is tb.inputs[0].inputs[0]:
            twice = scale(ta.inputs[0].inputs[0], TWO)
            # (a rare guard: the loop computes the formula only in chunks where 2u overflows)
            rep = F.guard(f("invert", f("isfinite", twice)), F.freeze(sub(scale(ta, c), scale(tb, c))),
                          scale(f("cos", twice), c))
            return with_rest(view, [ta, tb], rep, node)
    return None



@stability_rule("difference_of_squares", SUM_OPS, needs=('square',))
def difference_of_squares(node: Node) -> Node | None:
    """x*x - y*y -> (x - y) * (x + y); x*x - 1 -> (x - 1) * (x + 1) (no cancellation, later overflow)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb in _pairs(view, "square"):
        return with_rest(view, [ta, tb], scale(_factor(ta.inputs[0], tb.inputs[0]), c), node)
    if len(view.terms) == 1 and view.const != 0:
        c, t = view.terms[0]
        r = exact_sqrt(-view.const / c) if t.op == "square" else None
        r = r if r is not None and Fraction(float(r)) == r else None
        if r is not None:
            one = k(float(r), node)
            return scale(_factor(t.inputs[0], one), c)
    return None


def _factor(x: Node, y: Node) -> Node:
    """(x - y) * (x + y), with x - y simplified when terms cancel."""
    vx, vy = view_of(x), view_of(y)
    if vx is not None and vy is not None:
        d, s = vx.plus(vy, -ONE), vx.plus(vy)
        return mul(build_sum(d, x), build_sum(s, x))
    return mul(sub(x, y), add(x, y))


@stability_rule("sqrt_conjugate", SUM_OPS, needs=('sqrt', 'hypot'))
def sqrt_conjugate(node: Node) -> Node | None:
    """sqrt(a) - sqrt(b) -> (a - b) / (sqrt a + sqrt b); sqrt(x + 1) - 1 -> x / (sqrt(x + 1) + 1);
    sqrt(b*b - 4ac) - b -> -4ac / (sqrt(b*b - 4ac) + b) where b > 0 (the stable root of the
    quadratic formula; either sign of the root)."""
    view = view_of(node)
    if view is None:
        return None
    for c, t in view.terms:
        A = sqrt_of(t)
        if A is None:
            continue
        rest = view.without(t)
        B = rest.scaled(-1 / c)  # node = c * (sqrt(A) - B)
        one = B.single()
        positive = None
        bb = sqrt_of(one[1]) if one is not None and one[0] == 1 else None
        if bb is not None:  # sqrt(a) - sqrt(b)
            num = A.plus(bb, -ONE)
        elif B.is_const and B.const > 0 and Fraction(float(B.const * B.const)) == B.const * B.const:  # sqrt(a) - c
            num = A.plus(SumView((), B.const * B.const), -ONE)
        else:  # sqrt(m t^2 + r) - s t  with s^2 = m
            num = None
            for m, sq in A.terms:
                if sq.op != "square":
                    continue
                tv = view_of(sq.inputs[0])
                s = same_up_to_scale(B, tv) if tv is not None else None
                if s is not None and s * s == m:
                    num = A.without(sq)
                    positive = build_sum(B, node)
                    break
            if num is None:
                continue
        bnode = build_sum(B, node)
        den = F.freeze(add(t, bnode))  # no cancellation where it is used: do not "fix" it
        top = build_sum(num, node)
        stable = scale(div(top, den), c)
        # Where the quotient is 0/0 (a = b = 0), inf/inf, or c/inf (sqrt(inf**2 + c) - inf is
        # inf - inf, NaN, not the limit 0: fuzzer seed 100110), the original formula is used, and
        # where the numerator, a difference of squares, underflows (hypot(x, y) - x at x = 1e-300,
        # y = 3e-301 was 0 for 4.4e-302; there the operands are tiny and the formula loses little).
        safe = f("isfinite", stable) & f("isfinite", den)
        if top.op != "constant":
            safe = safe & (f("abs", top) >= k(float(np.finfo(node.dtype).tiny), top))
        if positive is not None:
            safe = safe & (positive > k(0.0, positive))
        return guarded(stable, node, safe)
    return None


@stability_rule("cbrt_conjugate", SUM_OPS, needs=('cbrt',))
def cbrt_conjugate(node: Node) -> Node | None:
    """cbrt(a) - cbrt(b) -> (a - b) / (cbrt(a)^2 + cbrt(a) cbrt(b) + cbrt(b)^2)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb in _pairs(view, "cbrt"):
        if len(view.terms) != 2 or view.const != 0:
            return None
        va, vb = view_of(ta.inputs[0]), view_of(tb.inputs[0])
        if va is None or vb is None:
            return None
        den = add(add(f("square", ta), mul(ta, tb)), f("square", tb))
        stable = scale(div(build_sum(va.plus(vb, -ONE), node), den), c)
        return guarded(stable, node, (den > k(0.0, den)) & (den < k(math.inf, den)))
    return None


@stability_rule("common_denominator", SUM_OPS, needs=('truediv',))
def common_denominator(node: Node) -> Node | None:
    """1/a - 1/b -> ((b - a) / a) / b and x/(x+1) - 1 -> -1/(x+1) when the numerator simplifies."""
    view = view_of(node)
    if view is None:
        return None
    parts: list[tuple[Fraction, SumView, Node | None]] = []
    for c, t in view.terms:
        if t.op == "truediv":
            nv = view_of(t.inputs[0])
            if nv is None:
                return None
            parts.append((c, nv, t.inputs[1]))
        else:
            return None
    if view.const != 0:
        parts.append((ONE, SumView((), view.const), None))
    if len(parts) != 2 or all(p[2] is None for p in parts):
        return None
    (c1, n1, d1), (c2, n2, d2) = parts
    dv1 = view_of(d1) if d1 is not None else SumView((), ONE)
    dv2 = view_of(d2) if d2 is not None else SumView((), ONE)
    if dv1 is None or dv2 is None:
        return None
    if d2 is not None and not n1.is_const or d1 is not None and not n2.is_const:
        return None  # the numerator would not be linear
    t1 = dv2.scaled(c1 * n1.const) if d2 is not None else n1.scaled(c1)
    t2 = dv1.scaled(c2 * n2.const) if d1 is not None else n2.scaled(c2)
    num = t1.plus(t2)
    if not num.cancelled:
        return None
    stable = build_sum(num, node)
    for d in (d1, d2):
        if d is not None:
            stable = div(stable, d)
    return guarded(stable, node)


def _two_function_terms(view: SumView, op: str):
    for c, ta, tb in _pairs(view, op):
        d = diff_view(ta.inputs[0], tb.inputs[0])
        if d is not None:
            yield c, ta, tb, d


def _at_midpoint(op: str, x: Node, h: Node) -> Node:
    """cos (op "cos") or sin of x + h, x + h never rounded: with s + r = x + h exactly (TwoSum),
    cos(s) - r sin(s) (sin(s) + r cos(s)) to first order, which is exact to 2**-56 while
    |r| < 2**-26 (|s| < 2**26; in float32 2**-13); beyond, where r is not small, the angle-sum
    formula with cos(r) and sin(r), a rare branch (the loop computes it only in chunks that need it)."""
    s, r = two_sum(x, h)
    cs, ss = f("cos", s), f("sin", s)
    small = 2.0**-26 if s.dtype == "float64" else 2.0**-13  # (r**2 / 2 below the dtype's ulp of 1)
    if op == "cos":
        first, full = sub(cs, mul(r, ss)), sub(mul(cs, f("cos", r)), mul(ss, f("sin", r)))
    else:
        first, full = add(ss, mul(r, cs)), add(mul(ss, f("cos", r)), mul(cs, f("sin", r)))
    return F.guard(f("abs", r) >= k(small, r), full, first)


@stability_rule("sin_difference", SUM_OPS, needs=('sin',))
def sin_difference(node: Node) -> Node | None:
    """sin(x + e) - sin(x) -> 2 cos(x + e/2) sin(e/2), x + e/2 never rounded (see _at_midpoint): a
    product, so nothing cancels, also where e is so large that x + e is near x modulo 2 pi (the form
    cos(x) sin(e) - 2 sin(x) sin(e/2)**2 cancelled there); three sines and cosines, not four."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb, d in _two_function_terms(view, "sin"):
        x, h = tb.inputs[0], scale(build_sum(d, node), HALF)
        rep = mul(_at_midpoint("cos", x, h), f("sin", h))
        return with_rest(view, [ta, tb], scale(rep, 2 * c), node)
    return None


@stability_rule("cos_difference", SUM_OPS, needs=('cos',))
def cos_difference(node: Node) -> Node | None:
    """cos(x + e) - cos(x) -> -2 sin(x + e/2) sin(e/2), x + e/2 never rounded (see sin_difference)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb, d in _two_function_terms(view, "cos"):
        x, h = tb.inputs[0], scale(build_sum(d, node), HALF)
        rep = mul(_at_midpoint("sin", x, h), f("sin", h))
        return with_rest(view, [ta, tb], scale(rep, -2 * c), node)
    return None


def _sqrt1p_minus_one(t: Node) -> Node | None:
    """u when ``t`` is sqrt_conjugate's sqrt(1 + u) - 1: u / (sqrt(u + 1) + 1), or that under its guard
    where(isfinite(...), u / (sqrt(u + 1) + 1), sqrt(u + 1) - 1)."""
    q = t.inputs[1] if t.op == "where" else t
    if not (q.op == "truediv" and q.inputs[1].op == "add" and q.inputs[1].inputs[0].op == "sqrt"
            and F.scalar_const(q.inputs[1].inputs[1]) == 1.0):
        return None
    u = q.inputs[0]
    inner = view_of(q.inputs[1].inputs[0].inputs[0])
    return u if inner is not None and inner.const == 1 and inner.terms == ((ONE, u),) else None


@stability_rule("sqrt_taylor_remainder", SUM_OPS, needs=('where', 'truediv'))
def sqrt_taylor_remainder(node: Node) -> Node | None:
    """sqrt(1 + u) - 1 - u/2 -> -(sqrt(1 + u) - 1)**2 / 2, sqrt(1 + u) - 1 as sqrt_conjugate leaves it:
    with s = sqrt(1 + u), s - 1 - (s*s - 1)/2 = -(s - 1)**2 / 2 exactly, so nothing cancels (the
    formula loses everything below |u| = 1e-8: sqrt(1 + u) - 1 rounds to u/2)."""
    view = view_of(node)
    if view is None:
        return None
    for c, t in view.terms:
        u = _sqrt1p_minus_one(t)
        if u is None:
            continue
        for kk, m in view.terms:
            if m is u and kk == -c / 2:  # (u = +-inf: the formula's NaN, as written)
                # (t/2 * t, not t*t/2: t*t overflows at u = 1.8e308, where the result does not)
                rep = F.where(f("isfinite", u), F.freeze(mul(scale(t, -c / 2), t)), F.freeze(add(t, scale(u, -c / 2))))
                return with_rest(view, [t, u], rep, node)
    return None


@stability_rule("tan_difference", SUM_OPS, needs=('tan',))
def tan_difference(node: Node) -> Node | None:
    """tan(x + e) - tan(x) -> sin(e) / (cos(x + e) cos(x)), x + e never rounded: with s + r = x + e exactly
    (TwoSum), cos(x + e) = cos(s) - sin(s) r while |r| < 2**-30, else cos(x) cos(e) - sin(x) sin(e).
    (cos of the rounded sum disagrees with sin(e) once |x + e| is so large that its rounding moves the
    angle: 63 bits lost at 3e149.  The products alone cancel near a pole of tan(x + e): 4 bits at
    x + e = 1.53.)"""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb, d in _two_function_terms(view, "tan"):
        x, e = tb.inputs[0], build_sum(d, node)
        sin_e, cos_x = f("sin", e), f("cos", x)
        s, r = two_sum(x, e)
        # (the products only where r is not small, or NaN where x + e overflows: a rare branch, so
        # the common loop makes four sine/cosine calls, not six)
        far = f("invert", f("abs", r) < k(2.0**-30 if r.dtype == "float64" else 2.0**-15, r))
        cos_xe = F.guard(far, sub(mul(cos_x, f("cos", e)), mul(f("sin", x), sin_e)), sub(f("cos", s), mul(f("sin", s), r)))
        rep = div(sin_e, mul(cos_xe, cos_x))
        return with_rest(view, [ta, tb], scale(rep, c), node)
    return None


@stability_rule("arctan_difference", SUM_OPS, needs=('arctan',))
def arctan_difference(node: Node) -> Node | None:
    """arctan(x + e) - arctan(x) -> arctan(e / (1 + (x + e) x)) where (x + e) x > -1."""
    view = view_of(node)
    if view is None or len(view.terms) != 2 or view.const != 0:
        return None
    for c, ta, tb, d in _two_function_terms(view, "arctan"):
        u, v = ta.inputs[0], tb.inputs[0]
        uv = mul(u, v)
        stable = scale(f("arctan", div(build_sum(d, node), add(uv, k(1.0, uv)))), c)
        return guarded(stable, node, uv > k(-1.0, uv))
    return None


@stability_rule("exp_difference", SUM_OPS, needs=('exp',))
def exp_difference(node: Node) -> Node | None:
    """exp(x + e) - exp(x) -> exp(x) * expm1(e) (the formula where that is 0 * inf)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb, d in _two_function_terms(view, "exp"):
        stable = scale(mul(tb, f("expm1", build_sum(d, node))), c)
        # (0 * inf where exp(x) underflows and expm1(e) overflows: the formula there, 0 - 0)
        rep = guarded(stable, F.freeze(sub(scale(ta, c), scale(tb, c))), ~f("isnan", stable))
        return with_rest(view, [ta, tb], rep, node)
    return None


def _power_of(t: Node, nested: bool = False) -> tuple[Node, Fraction, Fraction] | None:
    """(a, p, s) when ``t`` is ``s * a**p`` for constants p and s: ``pow(a, p)``, ``sqrt(a)``, ``cbrt(a)``
    or a constant over one of them (``0.5 / sqrt(x + 1)``, the gradient of sqrt; one quotient deep)."""
    if t.op == "truediv":
        s = F.scalar_const(t.inputs[0])
        ok = not nested and s is not None and s != 0 and math.isfinite(s)
        inner = _power_of(t.inputs[1], nested=True) if ok else None
        return (inner[0], -inner[1], Fraction(s) / inner[2]) if inner is not None else None
    if t.op == "sqrt":
        return t.inputs[0], HALF, ONE
    if t.op == "cbrt":
        return t.inputs[0], Fraction(1, 3), ONE
    if t.op == "pow":
        p = F.scalar_const(t.inputs[1])
        if p is not None and math.isfinite(p):
            return t.inputs[0], Fraction(p), ONE
    return None


@stability_rule("power_difference", SUM_OPS, needs=("pow", "truediv", "sqrt", "cbrt"))
def power_difference(node: Node) -> Node | None:
    """(x + 1)**p - x**p, 1/sqrt(x) - 1/sqrt(x + 1), x**-0.5 - (x + e)**-0.5 …: a**p - b**p where b - a
    simplifies (d, terms cancel) -> -a**p * expm1(z), z = p * log1p(d / a) (p * log(b / a) for b/a far from 1),
    where a, b > 0, |z| < 0.7 and that is finite (no cancellation left: log1p and expm1 are accurate near 0),
    the formula elsewhere (there it cancels at most a bit; a negative base: the power is not real; a**p
    overflows: the formula's inf or NaN).  Also a**p - 1 with a = 1 + d (``0.5 / sqrt(x + 1) - 0.5``, the
    gradient of sqrt(1 + x) - x/2) -> expm1(p * log1p(d)).  Pairs of square roots, of cube roots and of
    reciprocals, and sqrt(a) - 1, are sqrt_conjugate's, cbrt_conjugate's and common_denominator's."""
    view = view_of(node)
    if view is None or len(view.terms) + bool(view.const) < 2:
        return None
    for ca, ta in view.terms:
        pa = _power_of(ta)
        if pa is None or pa[1] in (0, 1):
            continue
        for cb, tb in view.terms:
            pb = _power_of(tb) if tb is not ta else None
            if pb is None or pb[1] != pa[1] or cb * pb[2] != -ca * pa[2]:
                continue
            if (ta.op, tb.op) in (("sqrt", "sqrt"), ("cbrt", "cbrt")) or pa[1] == -1:
                continue
            d = diff_view(pb[0], pa[0])
            if d is None:
                continue
            a, b, e = pa[0], pb[0], build_sum(d, node)
            r = div(e, a)
            # (log1p(d/a) where b/a is near 1; log(b/a) where it is not: there 1 + d/a would round away
            # what is left of b when b << a, and b/a is as accurate as d/a)
            z = scale(F.where(f("abs", r) < k(0.5, r), f("log1p", r), f("log", div(b, a))), pa[1])
            stable = scale(mul(ta, f("expm1", z)), -ca)
            # (where (b/a)**p = exp(z) is below 1/2 or above 2 the formula cancels at most 1 bit, and its
            # gradient is the plain one: the stable form's would carry exp(z) with z's rounding amplified)
            safe = (a > k(0.0, a)) & (b > k(0.0, b)) & (f("abs", z) < k(0.7, z)) & f("isfinite", stable)
            rep = guarded(stable, F.freeze(sub(scale(ta, ca), scale(tb, -cb))), safe)
            return with_rest(view, [ta, tb], rep, node)
        av = view_of(pa[0])
        if view.const == -ca * pa[2] and ta.op not in ("sqrt", "cbrt") and av is not None and av.const == 1 \
                and av.terms:
            e = build_sum(SumView(av.terms, Fraction(0)), node)
            z = scale(f("log1p", e), pa[1])
            stable = scale(f("expm1", z), ca * pa[2])
            safe = (pa[0] > k(0.0, e)) & (f("abs", z) < k(0.7, z)) & f("isfinite", stable)
            naive = F.freeze(add(scale(ta, ca), k(float(view.const), node)))
            rest = SumView(view.without(ta).terms, Fraction(0))
            return with_rest(rest, [], guarded(stable, naive, safe), node)
    return None


@stability_rule("xlogx_difference", SUM_OPS, needs=("mul",))
def xlogx_difference(node: Node) -> Node | None:
    """(x + 1) log(x + 1) - x log(x) - 1 for huge x (entropy, Stirling): a log(a) - b log(b) where
    a - b simplifies (d) -> d log(a) + b log1p(d / b) where |d| < b (the formula elsewhere: nothing
    cancels where b is small against d, and for b <= 0 it is NaN or 0 * log(0) = NaN as written)."""
    view = view_of(node)
    if view is None or len(view.terms) < 2:
        return None

    def xlogx(t: Node) -> Node | None:
        """x when t is x * log(x), or x * log1p(y) with x = y + 1 (log1p_from_log's)."""
        if t.op != "mul":
            return None
        for x, lg in (t.inputs, t.inputs[::-1]):
            if lg.op == "log" and lg.inputs[0] is x:
                return x
            if lg.op == "log1p":
                one = diff_view(x, lg.inputs[0])
                if one is not None and one.is_const and one.const == 1:
                    return x
        return None

    for ca, ta in view.terms:
        a = xlogx(ta)
        if a is None:
            continue
        for cb, tb in view.terms:
            b = xlogx(tb) if tb is not ta and cb == -ca else None
            if b is None:
                continue
            d = diff_view(a, b)
            if d is None:
                continue
            e = build_sum(d, node)
            stable = scale(add(mul(e, f("log", a)), mul(b, f("log1p", div(e, b)))), ca)
            rep = guarded(stable, F.freeze(sub(scale(ta, ca), scale(tb, ca))), f("abs", e) < b)
            return with_rest(view, [ta, tb], rep, node)
    return None


@stability_rule("arctanh_from_log1p", SUM_OPS, needs=('log1p',))
def arctanh_from_log1p(node: Node) -> Node | None:
    """log1p(x) - log1p(-x) -> 2 arctanh(x)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb in _pairs(view, "log1p"):
        va, vb = view_of(ta.inputs[0]), view_of(tb.inputs[0])
        if va is not None and vb is not None and negated(va, vb):
            return with_rest(view, [ta, tb], scale(f("arctanh", ta.inputs[0]), 2 * c), node)
    return None


def _log_argument(t: Node) -> SumView | None:
    """The view of ``u`` for log(u), of ``1 + u`` for log1p(u)."""
    v = view_of(t.inputs[0]) if t.op in ("log", "log1p") else None
    if v is not None and t.op == "log1p":
        v = v.plus(SumView((), ONE))
    return v


@stability_rule("log_difference", SUM_OPS, needs=('log', 'log1p'))
def log_difference(node: Node) -> Node | None:
    """log(x + e) - log(x) -> log1p(e / x) (for x > 0; log1p(x) counts as log(1 + x)); any other
    log(u) - log(v) -> log1p((u - v)/v) where 1/2 < u/v < 2 (u - v from the sum views)."""
    view = view_of(node)
    if view is None or len(view.terms) != 2 or view.const != 0:
        return None
    (c1, t1), (c2, t2) = view.terms
    if c1 != -c2:
        return None
    if c1 < 0:
        (c1, t1), (c2, t2) = (c2, t2), (c1, t1)
    a, b = _log_argument(t1), _log_argument(t2)
    if a is None or b is None:
        return None
    d = a.plus(b, -ONE)
    v = build_sum(b, node) if t2.op == "log1p" else t2.inputs[0]
    stable = scale(f("log1p", div(build_sum(d, node), v)), c1)
    if not d.cancelled or len(d.terms) >= len(a.terms) + len(b.terms):
        # Nothing cancels symbolically, but log(u) - log(v) still cancels where u is near v
        # (log p - log(1 - p) near p = 1/2): there u - v is exact (Sterbenz), so use it.
        u = build_sum(a, node) if t1.op == "log1p" else t1.inputs[0]
        r = div(u, v)
        near = (r > k(0.5, r)) & (r < k(2.0, r)) & (v > k(0.0, v))
        return F.where(near, stable, F.freeze(node))
    return guarded(stable, node, (v > k(0.0, v)) & f("isfinite", stable))


@stability_rule("softplus_minus_identity", SUM_OPS, needs=('softplus',))
def softplus_minus_identity(node: Node) -> Node | None:
    """softplus(x) - x -> softplus(-x)."""
    for view, c, t in _terms(node, "softplus"):
        u = view_of(t.inputs[0])
        rest = view.without(t)
        if u is not None and same_up_to_scale(rest, u) == -c:
            return scale(f("softplus", F.neg(t.inputs[0])), c)
    return None


def _terms(node: Node, op: str):
    """(view, c, t) for each term c*t of ``node``'s sum view whose op is ``op``."""
    view = view_of(node)
    if view is not None:
        for c, t in view.terms:
            if t.op == op:
                yield view, c, t


def _grows_with(t: Node, u: Node) -> bool:
    """``t`` is ``u`` or a product with ``u`` as a factor (``u*y``): it grows with ``u``."""
    return t is u or (t.op == "mul" and u in t.inputs)


@stability_rule("softplus_linear", SUM_OPS, needs=('softplus',))
def softplus_linear(node: Node) -> Node | None:
    """softplus(u) - u*y -> u*([u > 0] - y) + softplus(-|u|) (logistic regression's loss written
    out; any other terms kept): for large |u| softplus(u) is max(u, 0) plus a part too small to
    survive the difference with the terms growing with u (u, or u times a cofactor).  Split, u is
    factored out of the large parts, which then meet in one rounding (1 - y is exact near y = 1),
    and the small part is added last; other growing terms are summed with max(u, 0) first.
    (softplus(u) - u alone is softplus_minus_identity's.)"""
    for view, c, t in _terms(node, "softplus"):
        u = t.inputs[0]
        rest = view.without(t)
        u_view = view_of(u)
        growing = [(d, r) for d, r in rest.terms if _grows_with(r, u)]
        if not growing or (u_view is not None and same_up_to_scale(rest, u_view) == -c):
            continue
        if all(r is u or len(r.inputs) == 2 for _, r in growing):  # u times (c [u > 0] + the cofactors)
            step = F.where(u > k(0.0, u), k(1.0, u), k(0.0, u))
            cofactors = [(d, r.inputs[1] if r.inputs[0] is u else r.inputs[0]) for d, r in growing if r is not u]
            # c [u > 0] and the constants first (exact for the usual small constants), then the cofactors
            factor = build_sum(SumView(((c, step),), sum((d for d, r in growing if r is u), Fraction(0))), node)
            if cofactors:
                factor = add(factor, build_sum(SumView(tuple(cofactors), Fraction(0)), node))
            others = rest.without(*[r for _, r in growing])
            large = SumView(((ONE, mul(u, factor)), *others.terms), others.const)
        else:
            large = SumView(((c, make("maximum", u, k(0.0, u))), *rest.terms), rest.const)
        if not F.broadcast_safe([x for _, x in large.terms], node):
            continue
        return add(build_sum(large, node), scale(f("softplus", F.neg(f("abs", u))), c))
    return None


@stability_rule("logaddexp_minus_argument", SUM_OPS, needs=('logaddexp',))
def logaddexp_minus_argument(node: Node) -> Node | None:
    """x - logaddexp(x, y) -> -softplus(y - x) (either argument, any other terms kept): for large
    x and y the logaddexp is x plus a part the difference would cancel; c*logaddexp(p, q) is
    c*p + c*softplus(q - p) exactly, and c*p cancels symbolically against the other terms.  The
    rounding of q - p is carried (TwoSum, first order: softplus' = sigmoid): where softplus(q - p) is
    e**-600 the argument's last bit is worth 9 bits of the result."""
    for view, c, t in _terms(node, "logaddexp"):
        rest = view.without(t)
        for p, q in (t.inputs, t.inputs[::-1]):
            pv = view_of(p)
            if pv is None or not pv.terms or any(rest.coef(term) != -c * kp for kp, term in pv.terms):
                continue
            left = rest.plus(pv, c)
            s, e = two_sum(q, F.neg(p))  # q - p, its rounding carried
            carried = F.where(f("isfinite", e), mul(e, f("sigmoid", s)), k(0.0, s))
            small = scale(add(f("softplus", s), carried), c)
            if not F.broadcast_safe([small, *[r for _, r in left.terms]], node):
                continue
            return small if left.is_const and left.const == 0 else add(build_sum(left, node), small)
    return None


@stability_rule("variance_two_pass", SUM_OPS, needs=('mean',))
def variance_two_pass(node: Node) -> Node | None:
    """mean(x**2) - mean(x)**2 -> mean((x - mean(x))**2) (no cancellation, never negative)."""
    view = view_of(node)
    if view is None or len(view.terms) != 2 or view.const != 0:
        return None
    for c, ta, tb in _pairs(view, "mean", "square"):
        if ta.inputs[0].op != "square" or tb.inputs[0].op != "mean":
            continue
        x = ta.inputs[0].inputs[0]
        m = tb.inputs[0]
        if m.inputs[0] is not x or m.attrs != ta.attrs:
            continue
        axes = ta.arg("axis")
        centered = sub(x, make("mean", x, axis=axes, keepdims=True))
        return scale(make("mean", f("square", centered), axis=axes, keepdims=ta.arg("keepdims")), c)
    return None
