"""Stability rules on sums, part 1: cancellation against constants and against identical terms.

``(x + y) - x`` and ``(x + 1e16) - 1e16`` combine equal terms before rounding does it badly; a
function minus the head of its Taylor series (``x - sin x``, ``exp(x) - 1 - x``) becomes the rest
of the series near 0, and so does a sum of functions of one argument whose leading Taylor terms
cancel (``tan x - sin x``); ``f(u) + c`` with a special constant becomes a function that has no
cancellation there (``exp(u) - 1 -> expm1(u)``, ``1 - erf -> erfc``; the table
:data:`SPECIAL_CONSTANTS` holds them, one rule each); ``log1p(x) - x/(1 + x)`` times any factors
becomes its series, the total derivative of a power whose base and exponent both vary included.
A gradient's paths to one variable, each reduced to its shape (``sum_to``), are summed before
the reduction where their shapes agree, so that these rules see the terms together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

from exprc.graph import Node
from exprc.ops.gradshape import Extents
from exprc.rewrite import forms as F
from exprc.rewrite import series as SERIES
from exprc.rewrite.forms import SumView, build_sum, make, scale
from exprc.rewrite.rules.stability._common import (
    HALF,
    ONE,
    SUM_OPS,
    TWO,
    add,
    div,
    f,
    k,
    mul,
    one_plus,
    small_power,
    stability_rule,
    sub,
    view_of,
    with_rest,
)


@stability_rule("sum_cancel", SUM_OPS)
def sum_cancel(node: Node) -> Node | None:
    """(x + y) - x -> y + 0*x; (x + 1e16) - 1e16 -> x: equal terms are combined (a term that
    cancels leaves 0*x behind, so a NaN or infinite x still gives NaN) and constants that partly
    cancel are gathered exactly, before rounding does it badly."""
    view = view_of(node)
    if view is None or not (view.vanished or view.nconst >= 2 and abs(view.const) < view.max_const):
        return None  # (x - 2x is exact already: merging terms alone gains nothing)
    out = build_sum(SumView(view.terms, view.const), node)
    for t in view.vanished:
        out = add(out, mul(t, k(0.0, t)))
    return out


def _sum_to_of(t: Node) -> tuple[Node, Node, bool] | None:
    """(g, model, negated) when ``t`` is sum_to(g, model) or its negation."""
    neg = t.op == "neg"
    if neg:
        t = t.inputs[0]
    return (t.inputs[0], t.inputs[1], neg) if t.op == "sum_to" else None


@stability_rule("sum_to_terms", ("add",))
def sum_to_terms(node: Node) -> Node | None:
    """sum_to(a, m) + sum_to(b, m) -> sum_to(a + b, m) where a and b have the same shape at call time
    (equal symbolic extents): the gradients of one variable along two paths, each reduced to its
    shape, are summed before the reduction, where the rules for a sum see both (d/dn (1 + r/n)**n:
    log1p(u) - u/(1 + u), 53 bits lost when the reductions kept the terms apart).  One reduction
    where there were two; its rounding is that of the summed terms, which cancel first."""
    a, b = (_sum_to_of(t) for t in node.inputs)
    if a is None or b is None or a[1] is not b[1] or a[0].type != b[0].type:
        return None
    memo = F.pass_memo("extents")
    ext = memo.setdefault("ext", Extents()) if memo is not None else Extents()
    if ext(a[0]) != ext(b[0]):
        return None
    ga = F.neg(a[0]) if a[2] else a[0]
    gb = F.neg(b[0]) if b[2] else b[0]
    return make("sum_to", add(ga, gb), a[1])


def _degree(t: Node, u: Node) -> int | None:
    """d when ``t`` is the monomial u**d (u, square(u), u*square(u), u**3 …), else None.
    Iterative (post-order with an explicit stack, each node computed once): a monomial can be a
    chain thousands of nodes deep."""
    memo: dict[int, int] = {}
    stack = [t]
    while stack:
        n = stack[-1]
        if id(n) in memo:
            stack.pop()
            continue
        if n is u:
            memo[id(n)] = 1
            stack.pop()
            continue
        if n.op in ("square", "mul"):
            kids = n.inputs
        elif n.op == "pow" and n.inputs[1].op == "constant":
            p = F.scalar_const(n.inputs[1])
            if p is None or not float(p).is_integer() or not 0 < p < 64:
                return None
            kids = n.inputs[:1]
        else:
            return None  # one factor that is not a power of u: t is no monomial in u
        todo = [c for c in kids if id(c) not in memo]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        if n.op == "square":
            memo[id(n)] = 2 * memo[id(n.inputs[0])]
        elif n.op == "mul":
            memo[id(n)] = memo[id(n.inputs[0])] + memo[id(n.inputs[1])]
        else:
            memo[id(n)] = int(F.scalar_const(n.inputs[1])) * memo[id(n.inputs[0])]
    return memo[id(t)]


def _series_term(t: Node) -> tuple[str, Node, int, Fraction, Fraction] | None:
    """(f, u, k, a, b) when term ``t`` is a * f(u) / u**k + b with f one of SERIES.FUNCTIONS: f(u)
    itself, f(u) / u**k, or sin(u/2)**2 = (1 - cos(u)) / 2 (what cos_minus_one left of a cos(u) - 1
    inside a longer sum, cos(x) - 1 + x**2/2)."""
    if t.op in SERIES.FUNCTIONS:
        return t.op, t.inputs[0], 0, ONE, Fraction(0)
    if t.op == "truediv" and t.inputs[0].op in SERIES.FUNCTIONS:
        fn, u = t.inputs[0], t.inputs[0].inputs[0]
        k = _degree(t.inputs[1], u)
        if k is not None and k >= 1:
            return fn.op, u, k, ONE, Fraction(0)
    u = _sin_half_squared(t)
    if u is not None:
        return "cos", u, 0, -HALF, HALF
    return None


def _sin_half_squared(t: Node) -> Node | None:
    """u when ``t`` is sin(u/2)**2 = (1 - cos u)/2 (what cos_minus_one makes of 1 - cos u)."""
    if t.op == "square" and t.inputs[0].op == "sin":
        half = t.inputs[0].inputs[0]
        if half.op == "mul" and F.scalar_const(half.inputs[1]) == 0.5:
            return half.inputs[0]
    return None


def _poly_degree(m: Node, u: Node) -> tuple[int, int] | None:
    """(d, sign) when ``m`` is sign * u**d: a monomial in u, or in x where u = -x."""
    d = _degree(m, u)
    if d is not None:
        return d, 1
    if u.op == "neg":
        d = _degree(m, u.inputs[0])
        if d is not None:
            return d, (-1) ** d
    return None


@stability_rule("taylor_cancellation", SUM_OPS, needs=(*SERIES.FUNCTIONS, "truediv", "square"))
def taylor_cancellation(node: Node) -> Node | None:
    """x - sin(x), tan(x) - x, log1p(x) - x, exp(x) - 1 - x …: a function minus the first terms of
    its Taylor series -> the remaining series for |x| < r (chosen per function; the formula beyond).
    Also a function over a power of its argument minus a polynomial (sin(x)/x - 1, expm1(x)/x - 1:
    the series of f(u) - T(u), divided), and a polynomial in x against f(-x) (exp(-x) - 1 + x)."""
    found = _taylor_series(view_of(node))
    if found is None:
        return None
    u, coeffs, c, r, shift = found
    near = f("abs", u) < k(r, u)
    if shift:  # (u = 0 keeps the formula's 0/0: the series would fill the hole)
        near = make("and", near, make("ne", u, k(0.0, u)))
    return F.where(near, scale(_odd_even_horner(u, coeffs, node), c), F.freeze(node))


def _taylor_series(view: SumView | None) -> tuple[Node, list[Fraction], Fraction, float, int] | None:
    """(u, a, c, r, k) when ``view`` is taylor_cancellation's form: it equals ``c * sum(a_i u**i)`` for
    |u| < r (k: the power of u the function was divided by)."""
    if view is None:
        return None
    for c, t in view.terms:
        found = _series_term(t)
        if found is None:
            continue
        op, u, shift, a_t, b_t = found
        # c*f(u)/u**k + sum(kk * m) + const = c/u**k * (f(u) - T(u)), T's coefficient of u**(d+k)
        # being -kk/c for each monomial m = sign * u**d (c, const: the term's a and b taken in).
        const, c = view.const + c * b_t, c * a_t
        poly: dict[int, Fraction] = {shift: -const / c}
        for kk, m in view.without(t).terms:
            dm = _poly_degree(m, u)
            if dm is None:
                break
            d = dm[0] + shift
            poly[d] = poly.get(d, Fraction(0)) - kk * dm[1] / c
        else:
            top = max(d for d, v in poly.items() if v != 0) if any(poly.values()) else 0
            if top < 1 or top >= SERIES.MAX_TERMS + 8:  # (the length of the full list below)
                continue
            # (the first terms only: tanh's 72 exact terms cost 15 ms, which a warm start paid for
            # every gradient with a tanh in it though the rule almost never fires)
            head = SERIES.coefficients(op, top + 1)
            if any(poly.get(d, 0) != head[d] for d in range(top + 1)):
                continue
            br = SERIES.branch(op, top)
            if br is None:
                continue
            r, n = br
            a = SERIES.coefficients(op, n)
            # (sum_{i > top} a_i u**(i - k): the u**k it was divided by taken off each power)
            series = SERIES.economize(tuple([Fraction(0)] * (top + 1 - shift) + list(a[top + 1:n])), r)
            return u, list(series), c, r, shift
    return None


def _odd_even_horner(u: Node, coeffs: tuple[Fraction, ...], like: Node) -> Node:
    """``sum(coeffs[i] * u**i)``: ``u**lo * P(u*u)`` when the nonzero terms are all odd or all even
    (half the multiplications and roundings: tan(u) - sin(u) is u**3 * P(u**2)), else plain Horner."""
    nonzero = [i for i, c in enumerate(coeffs) if c]
    lo = nonzero[0]
    if len(nonzero) < 2 or any((i - lo) % 2 for i in nonzero):
        return F.horner(u, coeffs, like)
    inner = F.horner(f("square", u), [coeffs[i] for i in range(lo, len(coeffs), 2)], like)
    return mul(inner, F.power(u, lo)) if lo else inner


@stability_rule("series_difference", SUM_OPS, needs=(*SERIES.FUNCTIONS, "truediv", "mul"))
def series_difference(node: Node) -> Node | None:
    """tan(x) - sin(x), sinh(x) - sin(x), exp(x) - cos(x), cosh(x) + cos(x) - 2 …: two or more
    functions of one argument (with constants or powers of it) whose leading Taylor terms cancel ->
    the combined series for |x| < r (the radius from the terms' values and the series' convergence,
    see exprc.rewrite.series.sum_branch; the formula beyond, so NaN and inf stay as written)."""
    found = _difference_series(view_of(node))
    if found is None:
        return None
    u, coeffs, r, divided = found
    near = f("abs", u) < k(r, u)
    if divided:  # (u = 0 keeps the formula's 0/0)
        near = make("and", near, make("ne", u, k(0.0, u)))
    return F.where(near, _odd_even_horner(u, coeffs, node), _far_form(view_of(node), node))


def _far_form(view: SumView, node: Node) -> Node:
    """The formula beyond the series' radius: as written, except c (tan u - sin u), which becomes
    c tan(u) 2 sin(u/2)^2.  tan and sin cancel again wherever u is near a multiple of 2 pi, not only
    near 0: at u = -1.37e239 the difference lost 9 bits (the vector tan/sin's few ulps, amplified),
    the product keeps every factor's own error (u/2 is exact)."""
    if view.const == 0 and len(view.terms) == 2:
        (c1, t1), (c2, t2) = sorted(view.terms, key=lambda ct: ct[1].op != "tan")
        if (t1.op, t2.op) == ("tan", "sin") and t1.inputs[0] is t2.inputs[0] and c1 == -c2:
            s = f("sin", scale(t1.inputs[0], HALF))
            return scale(mul(t1, scale(mul(s, s), TWO)), c1)
    return F.freeze(node)


def _difference_series(view: SumView | None) -> tuple[Node, tuple[Fraction, ...], float, bool] | None:
    """(u, a, r, divided) when ``view`` is series_difference's form: it equals ``sum(a_i u**i)`` for
    |u| < r (``divided``: some term was divided by a power of u, so u = 0 keeps the formula's 0/0)."""
    if view is None or len(view.terms) < 2:
        return None
    fns: list[tuple[Fraction, str, int]] = []
    others: list[tuple[Fraction, Node]] = []
    poly: dict[int, Fraction] = {0: view.const} if view.const else {}
    u = None
    for c, t in view.terms:
        found = _shifted_function(t)
        if found is None:
            others.append((c, t))
        elif u is None or found[1] is u:
            u = found[1]
            fns.append((c * found[3], found[0], found[2]))
            if found[4]:
                poly[-found[2]] = poly.get(-found[2], Fraction(0)) + c * found[4]
        else:
            return None  # (functions of two arguments)
    if len(fns) < 2:
        return None  # (one function against a polynomial: taylor_cancellation's)
    for c, t in others:
        dm = _poly_degree(t, u) or _inverse_degree(t, u)
        if dm is None:
            return None
        poly[dm[0]] = poly.get(dm[0], Fraction(0)) + c * dm[1]
    br = SERIES.sum_branch(tuple(sorted((op, c, k) if k else (op, c) for c, op, k in fns)),
                           tuple(sorted((d, p) for d, p in poly.items() if p)))
    if br is None:
        return None
    r, coeffs = br
    divided = any(k for _, _, k in fns) or any(d < 0 for d in poly)
    return u, coeffs, r, divided


def _shifted_function(t: Node, depth: int = 0) -> tuple[str, Node, int, Fraction, Fraction] | None:
    """(f, u, k, s, b) when ``t`` is (s * f(u) + b) / u**k (k >= 0) with f one of the series
    functions: ``f(u)``, ``f(u) / x / x``, ``(1 / x) * f(u)`` (what the gradient of a quotient looks
    like), sin(u/2)**2 = (1 - cos u)/2 (what cos_minus_one made of 1 - cos u), read through the fast
    branch of a rare guard (the same function: the series applies only near 0 anyway).  At most 64
    quotients and products deep (a chain thousands deep is no such term, and no recursion)."""
    if t.op in SERIES.FUNCTIONS:
        return t.op, t.inputs[0], 0, ONE, Fraction(0)
    u = _sin_half_squared(t)
    if u is not None:
        return "cos", u, 0, -HALF, HALF
    if depth > 64:
        return None
    if t.op == "where" and t.inputs[0].op == "rare":
        return _shifted_function(t.inputs[2], depth + 1)
    if t.op == "truediv":
        inner = _shifted_function(t.inputs[0], depth + 1)
        if inner is not None:
            d = _degree(t.inputs[1], inner[1])
            if d is not None:
                return inner[0], inner[1], inner[2] + d, inner[3], inner[4]
        return None
    if t.op == "mul":
        for a, b in (t.inputs, t.inputs[::-1]):
            inner = _shifted_function(a, depth + 1)
            if inner is None:
                continue
            dm = _inverse_degree(b, inner[1])
            if dm is not None and dm[0] <= 0:
                return inner[0], inner[1], inner[2] - dm[0], inner[3] * dm[1], inner[4] * dm[1]
            c = F.scalar_const(b)
            if c is not None and c != 0 and math.isfinite(c):
                return inner[0], inner[1], inner[2], inner[3] * Fraction(c), inner[4] * Fraction(c)
    return None


def _inverse_degree(t: Node, u: Node) -> tuple[int, Fraction] | None:
    """(-d, c) when ``t`` is c / u**d (c a constant)."""
    if t.op != "truediv":
        return None
    c = F.scalar_const(t.inputs[0])
    d = _degree(t.inputs[1], u)
    if c is None or d is None or not math.isfinite(c):
        return None
    return -d, Fraction(c)


def _times(view: SumView, d: Node, like: Node) -> list[Node]:
    """The terms of ``view * d``, a term ``a / b`` giving ``d / b`` when ``a`` is 1 (``tan(x) / x``: the
    form taylor_cancellation reads)."""
    out = [scale(d, view.const)] if view.const else []
    for c, t in view.terms:
        if t.op == "truediv" and F.scalar_const(t.inputs[0]) == 1:
            out.append(scale(F.div(d, t.inputs[1]), c))
        else:
            out.append(scale(mul(t, d), c))
    return out


@stability_rule("series_quotient", SUM_OPS, needs=("truediv",))
def series_quotient(node: Node) -> Node | None:
    """1 - x/sin(x), 1/x - 1/tan(x), x/tanh(x) - 1 …: a sum with a quotient ``n / f(u)`` (f one of the
    series functions) whose numerator over the common denominator ``f(u)`` is a Taylor cancellation
    (``sin(x) - x``, ``tan(x)/x - 1``) -> that series over ``f(u)`` where the series applies, the formula
    beyond (it loses no more there than the numerator's formula: multiplying every term by ``f(u)``
    keeps the ratio of the terms' size to the sum's).  Near 0 the series is divided by ``u**j`` and
    ``f(u)`` by ``u**j`` as well (j: the lowest power of f's series), so that neither underflows
    (``(sin(x) - x) / sin(x)`` at x = 1e-120 is ``-x**2/6 * (x / sin(x))``)."""
    view = view_of(node)
    if view is None or len(view.terms) + bool(view.const) < 2:
        return None
    for c, t in view.terms:
        d = t.inputs[1] if t.op == "truediv" else None
        if d is None or d.op not in SERIES.FUNCTIONS:
            continue
        parts = _times(view.without(t), d, node) + [scale(t.inputs[0], c)]
        num = parts[0]
        for p in parts[1:]:
            num = add(num, p)
        nv = view_of(num)
        found = _taylor_series(nv)
        if found is not None:
            u, coeffs, cc, r, _ = found
        else:
            found = _difference_series(nv)
            if found is None:
                continue
            (u, coeffs, r, _), cc = found, ONE
        if d.inputs[0] is not u:
            continue
        lo = next((i for i, a in enumerate(coeffs) if a), None)
        if lo is None:
            continue
        j = min(lo, next(i for i, a in enumerate(SERIES.coefficients(d.op, 4)) if a))
        top = scale(_odd_even_horner(u, list(coeffs[j:]), node), cc)
        near = make("and", f("abs", u) < k(r, u), make("ne", u, k(0.0, u)))  # (0/0 at u = 0: the formula's)
        return F.where(near, mul(top, F.div(F.power(u, j), d)) if j else F.div(top, d), F.freeze(node))
    return None


#: f(u) + c  ->  g(u): (op of f, c, rule name, g)
SPECIAL_CONSTANTS: list[tuple[str, Fraction, str, Callable[[Node], Node]]] = [
    ("exp", -ONE, "expm1_from_exp", lambda u: f("expm1", u)),
    ("cos", -ONE, "cos_minus_one", lambda u: F.neg(scale(f("square", f("sin", scale(u, HALF))), TWO))),
    ("cos", ONE, "one_plus_cos", lambda u: scale(f("square", f("cos", scale(u, HALF))), TWO)),
    ("cosh", -ONE, "cosh_minus_one", lambda u: scale(f("square", f("sinh", scale(u, HALF))), TWO)),
    ("sigmoid", -ONE, "sigmoid_complement", lambda u: F.neg(f("sigmoid", F.neg(u)))),
    ("sigmoid", -HALF, "tanh_from_sigmoid", lambda u: scale(f("tanh", scale(u, HALF)), HALF)),
    ("tanh", ONE, "tanh_plus_one", lambda u: scale(f("sigmoid", scale(u, TWO)), TWO)),
    ("tanh", -ONE, "tanh_minus_one", lambda u: F.neg(scale(f("sigmoid", scale(u, -TWO)), TWO))),
    ("erf", -ONE, "erfc_from_erf", lambda u: F.neg(f("erfc", u))),
    ("erf", ONE, "erfc_from_one_plus_erf", lambda u: f("erfc", F.neg(u))),
    ("erfc", -ONE, "erf_from_erfc", lambda u: F.neg(f("erf", u))),
]


def _register_special(op: str, c: Fraction, name: str, build: Callable[[Node], Node]) -> None:
    def fire(node: Node) -> Node | None:
        view = view_of(node)
        if view is None or view.const == 0:
            return None
        for coef, term in view.terms:
            if term.op == op and view.const == coef * c:
                rep = scale(build(term.inputs[0]), coef)
                rest = SumView(view.without(term).terms, Fraction(0))
                return with_rest(rest, [], rep, node)
        return None

    fire.__doc__ = f"{op}(u) {'+' if c > 0 else '-'} {abs(c)} -> {name.replace('_', ' ')} (see SPECIAL_CONSTANTS)"
    stability_rule(name, SUM_OPS, needs=(op,))(fire)


for _op, _c, _name, _build in SPECIAL_CONSTANTS:
    _register_special(_op, _c, _name, _build)


def _pow1p(term: Node) -> tuple[Node, Node] | None:
    """(x, y) where ``term`` is (1 + x)**y as pow_compensated_base made it, or as written (a gradient's
    stable forms leave the power uncompensated: see autodiff.VALUE_ONLY_RULES)."""
    info = F.origin(term)
    if info and info[0] == "pow1p":
        return (info[1], info[2]) if info[1] is not None else None
    if term.op != "pow" or term.inputs[0].op != "add" or small_power(term.inputs[1]):
        return None  # (as pow_compensated_base: a small power rounds little)
    x = one_plus(*term.inputs[0].inputs)
    return (x, term.inputs[1]) if x is not None else None


@stability_rule("pow1p_minus_one", SUM_OPS, needs=("where", "pow"))
def pow1p_minus_one(node: Node) -> Node | None:
    """(1 + x)**y - 1 -> expm1(y * log1p(x)) where |y * log1p(x)| < 1 (else the compensated power - 1)."""
    view = view_of(node)
    if view is None or view.const == 0:
        return None
    for coef, term in view.terms:
        found = _pow1p(term) if view.const == -coef else None
        if found is not None:
            x, y = found
            z = mul(y, f("log1p", x))
            naive = F.freeze(sub(term, k(1.0, term)))
            rep = scale(F.where(f("abs", z) < k(1.0, z), f("expm1", z), naive), coef)
            return with_rest(SumView(view.without(term).terms, Fraction(0)), [], rep, node)
    return None


def _zero_where(t: Node) -> tuple[Node, Node] | None:
    """(v, value) when ``t`` is where(v == 0, 0, value)."""
    if t.op != "where":
        return None
    c, zero, value = t.inputs
    if F.scalar_const(zero) != 0 or c.op != "eq" or F.scalar_const(c.inputs[1]) != 0:
        return None
    return c.inputs[0], value


def _log1p_factor(t: Node) -> tuple[Node, Node | None] | None:
    """(x, s) when ``t`` is log1p(x), or where(s == 0, 0, log1p(x)) with s = 1 + x: what pow's
    gradient log(where(s == 0, 1, s)) becomes (log_into_where, log1p_from_log); s is None for the
    first.  Where s == 0 the second is 0, which only a guard on s != 0 may assume away."""
    s = None
    if t.op == "where":
        found = _zero_where(t)
        if found is None or found[0].op != "add":
            return None
        s, t = found
    if t.op != "log1p" or s is not None and one_plus(*s.inputs) is not t.inputs[0]:
        return None
    return t.inputs[0], s


def _pow_ratio(t: Node, x: Node, powers: dict) -> tuple[list[tuple[Node, int]], Node | None] | None:
    """Factors for ``t`` when it is (1 + x)**(y - 1), or where(y == 0, 0, y (1 + x)**(y - 1)), and
    ``powers`` (the pow1p factors of the other term, by exponent) holds P = (1 + x)**y: [(P, 1),
    (y, 1)] and the base to divide by is found by the caller (P / (1 + x) is (1 + x)**(y - 1)).
    Also the y a where-form needs nonzero (its 0 where y * inf would be NaN), else None."""
    nonzero = None
    if t.op == "where":
        found = _zero_where(t)
        if found is None or found[1].op != "mul":
            return None
        y, prod = found
        q = prod.inputs[1] if prod.inputs[0] is y else prod.inputs[0] if prod.inputs[1] is y else None
        if q is None:
            return None
        t, nonzero = q, y
    found = _pow1p(t)
    if found is None or found[0] is not x:
        return None
    yq = view_of(found[1])
    for y, p in powers.items():
        vy = view_of(y)
        d = yq.plus(vy, -ONE) if yq is not None and vy is not None else None
        if d is None or not d.is_const or d.const != -1:
            continue
        if nonzero is None:
            return [(p, 1)], None
        if nonzero is y:  # (the multiplier is P's exponent: y P / (1 + x), not z P / (1 + x))
            return [(p, 1), (y, 1)], y
    return None


@stability_rule("log1p_minus_quotient", SUM_OPS, needs=("log1p", "mul", "truediv", "where"))
def log1p_minus_quotient(node: Node) -> Node | None:
    """A (log1p(x) - x/(1 + x)) in any arrangement of the factors A -> A sum_{i>=2} v**i / i with
    v = x/(1 + x), for |v| < r (the series of -log(1 - v) - v; r as taylor_cancellation's for
    log1p(w) - w), the formula beyond.  Both terms are ~x near 0 and the result x**2/2: the Bennett
    function (1 + x) log1p(x) - x, the derivative of log1p(x)/x, and the total derivative of a power
    whose base and exponent both vary: d/dn (1 + r/n)**n is P log1p(u) - n (1 + u)**(n-1) u / n with
    u = r/n and P = (1 + u)**n; there (1 + u)**(n - 1) is read as P / (1 + u), so the two terms share
    P (the form that lost all 53 bits for n > 1e12).  Where the formula is not finite it is kept (a
    factor that cancels between the terms is 0 or infinite there)."""
    view = view_of(node)
    if view is None or len(view.terms) < 2:
        return None
    for c1, t1 in view.terms:
        pv1 = F.product_view(t1)
        if pv1 is None or pv1[2]:
            continue
        for lg, e in pv1[1]:
            found = _log1p_factor(lg) if e == 1 else None
            if found is None:
                continue
            x, s_log = found
            rest1 = {t: p for t, p in pv1[1] if t is not lg}
            powers = {}
            for t, p in rest1.items():
                pw = _pow1p(t) if p == 1 else None
                if pw is not None and pw[0] is x:
                    powers[pw[1]] = t
            rep = _log1p_quotient_pair(view, c1, t1, lg, pv1[0], rest1, x, s_log, powers, node)
            if rep is not None:
                return rep
    return None


def _log1p_quotient_pair(view: SumView, c1: Fraction, t1: Node, lg: Node, k1: Fraction, rest1: dict, x: Node,
                         s_log: Node | None, powers: dict, node: Node) -> Node | None:
    """The replacement when another term of ``view`` is -c1 k1 A x / (1 + x), A = ``rest1``'s factors."""
    px = F.product_view(x)
    if px is None:
        return None
    base = object()  # (stands for 1 + x, however many nodes spell it)
    for c2, t2 in view.terms:
        if t2 is t1:
            continue
        pv2 = F.product_view(t2)
        if pv2 is None:
            continue
        ratio: dict = {}
        nonzero, spelled = [], [s_log] if s_log is not None else []
        for t, p in pv2[1]:
            expanded = _pow_ratio(t, x, powers) if p == 1 and powers else None
            if expanded is not None:
                for tt, pp in expanded[0]:
                    ratio[tt] = ratio.get(tt, 0) + pp
                ratio[base] = ratio.get(base, 0) - 1
                if expanded[1] is not None:
                    nonzero.append(expanded[1])
            elif t.op == "add" and one_plus(*t.inputs) is x:
                ratio[base] = ratio.get(base, 0) + p
                spelled.append(t)
            else:
                ratio[t] = ratio.get(t, 0) + p
        for t, p in [*rest1.items(), *px[1]]:
            key = base if t.op == "add" and one_plus(*t.inputs) is x else t
            ratio[key] = ratio.get(key, 0) - p
        left = [(t, p) for t, p in ratio.items() if p != 0]
        if left != [(base, -1)] or c2 * pv2[0] != -c1 * k1 * px[0]:
            continue
        s = spelled[0] if spelled else add(x, k(1.0, x))
        naive = F.freeze(add(scale(t1, c1), scale(t2, c2)))
        return _log1p_quotient_form(view, c1, t1, lg, x, s, nonzero, naive, [t1, t2], node)
    return None


def _log1p_quotient_form(view: SumView, c: Fraction, t1: Node, lg: Node, x: Node, s: Node, nonzero: list[Node],
                         naive: Node, drop: list[Node], node: Node) -> Node | None:
    r, n = SERIES.branch("log1p", 1)
    # -log(1 - v) - v = sum_{i >= 2} v**i / i: log1p(w) - w's series at w = -v, negated
    coeffs = SERIES.economize(tuple([Fraction(0)] * 2 + [Fraction(1, i) for i in range(2, n)]), r)
    v = div(x, s)
    # t1 with its log1p(x) replaced by the series: its other factors multiplied as written (reassociated,
    # a * (b / c) as a * b / c, they underflowed where the formula did not)
    stable = _substitute(t1, lg, F.horner(v, coeffs, node))
    if stable is None:
        return None
    stable = scale(stable, c)
    ok = make("and", f("abs", v) < k(r, v), make("and", f("isfinite", naive), f("isfinite", stable)))
    for y in dict.fromkeys(nonzero):
        ok = make("and", ok, make("ne", y, k(0.0, y)))
    return with_rest(view, drop, F.where(ok, stable, naive), node)


def _substitute(t: Node, old: Node, new: Node, depth: int = 0) -> Node | None:
    """``t`` with ``old`` replaced by ``new`` where the product view of ``t`` reads it (through mul,
    truediv, neg, square and NaN guards), or None where it is not found there (or deeper than 64:
    a product view holds at most 64 factors)."""
    if t is old:
        return new
    if depth <= 64 and (t.op in ("mul", "truediv", "neg", "square") or t.op == "add" and F.is_nan_guard(t.inputs[1])):
        for i, a in enumerate(t.inputs[:1] if t.op == "add" else t.inputs):
            b = _substitute(a, old, new, depth + 1)
            if b is not None:
                return make(t.op, *t.inputs[:i], b, *t.inputs[i + 1:])
    return None
