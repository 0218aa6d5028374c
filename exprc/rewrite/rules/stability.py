"""Stability rewrites: the textbook formula in, what a numerical analyst would write out.

Every rule is tagged ``stability`` and has its own name (``exclude=`` takes either).
Rules match on meaning, not spelling: a sum is read through
:func:`~exprc.rewrite.forms.sum_view` (so ``1 - x``, ``-x + 1``, ``-(x - 1)`` and
``1 + (-x)`` are one pattern), and they run after canonicalization (``neg`` is
never hidden in ``mul(-1, …)``).

The contract (tests/test_stability.py checks it rule by rule against mpmath):

* never worse: at no sampled point of the valid domain may the rewritten form lose
  more than one bit more than the naive form;
* NaN stays NaN and ±Inf stays ±Inf where the true result is NaN or ±Inf.  Where a
  stable form has a spurious failure of its own (``0/0``, ``inf/inf``), the rule
  emits ``where(safe, stable, naive)`` and freezes the naive branch.

Families: log/exp, sigmoid, log-sum-exp, cancellation (conjugates, common
denominators, trigonometric and hyperbolic differences, squares), overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from exprc.graph import Node
from exprc.rewrite import forms as F
from exprc.rewrite import series as SERIES
from exprc.rewrite.core import P, Rule, X, register_rule
from exprc.rewrite.forms import SumView, build_sum, const, make, same_up_to_scale, scale, sum_view

TAGS = ("stability",)
LN2 = math.log(2.0)
ONE, HALF, TWO = Fraction(1), Fraction(1, 2), Fraction(2)
SUM_OPS = ("add", "sub")
FLOATS = ("float32", "float64")  # the dtypes is_float accepts


def stability_rule(name: str, pattern: P | str | tuple[str, ...], needs: tuple[str, ...] = (),
                   late: bool = False) -> Callable:
    """Register ``fn`` as stability rule ``name``: float nodes only, never a frozen node.
    ``pattern`` is a :class:`P` or just root op name(s): then ``fn(node)`` decides alone.
    ``needs``: ops of which one must be a term of the node's sum view (a cheap pre-check).
    ``late``: run in the pass after the other stability rules (see exprc.pipeline.PASSES)."""
    need = frozenset(needs)
    tags = frozenset(TAGS + (("late",) if late else ()))

    def deco(fn: Callable[..., Node | None]) -> Callable[..., Node | None]:
        def replace(node: Node, **caps: Node) -> Node | None:
            if node.type.dtype not in FLOATS or F.is_frozen(node):  # (is_float, inline: a hot path)
                return None
            return fn(node, **caps)

        doc = (fn.__doc__ or "").strip()
        if isinstance(pattern, P):
            register_rule(Rule(name, tags, pattern, replace, doc, needs=need or None))
        else:
            ops = (pattern,) if isinstance(pattern, str) else tuple(pattern)
            register_rule(Rule(name, tags, None, replace, doc, ops=ops, needs=need or None))
        return fn

    return deco


# -- small builders ---------------------------------------------------------------------
def f(op: str, x: Node) -> Node:
    return make(op, x)


def add(a: Node, b: Node) -> Node:
    return F.add(a, b)


def sub(a: Node, b: Node) -> Node:
    return F.sub(a, b)


def mul(a: Node, b: Node) -> Node:
    return F.mul(a, b)


def div(a: Node, b: Node) -> Node:
    return F.div(a, b)


def k(v: float, like: Node) -> Node:
    return const(v, like)


def nan_where(cond: Node, x: Node) -> Node:
    """NaN where ``cond`` holds, else ``x``."""
    return F.where(cond, k(math.nan, x), x)


def guarded(stable: Node, naive: Node, safe: Node | None = None) -> Node:
    """``stable`` where ``safe`` (default: where ``stable`` is finite), else the frozen ``naive``.
    The result remembers ``naive``, so rules above it still see the formula (:func:`unguard`)."""
    if safe is None:
        safe = f("isfinite", stable)
    return F.set_origin(F.where(safe, stable, F.freeze(naive)), ("guard", naive))


def unguard(node: Node) -> Node | None:
    """The naive formula a guarded node stands for, or ``None``."""
    info = F.origin(node)
    return info[1] if info and info[0] == "guard" else None


def with_rest(view: SumView, drop: list[Node], replacement: Node, like: Node) -> Node | None:
    """``replacement + (view without drop)``, refused if dropping terms changes the shape."""
    rest = view.without(*drop)
    kept = [t for _, t in rest.terms] + [replacement]
    if not F.broadcast_safe(kept, like):
        return None
    if rest.is_const and rest.const == 0:
        return replacement
    return add(replacement, build_sum(rest, like))


def view_of(node: Node) -> SumView | None:
    return sum_view(node)


def negated(a: SumView, b: SumView) -> bool:
    """``a == -b`` exactly."""
    s = same_up_to_scale(a, b)
    return s == -1


def diff_view(u: Node, v: Node) -> SumView | None:
    """``u - v`` as a view when common terms cancel (else ``None``)."""
    a, b = view_of(u), view_of(v)
    if a is None or b is None:
        return None
    d = a.plus(b, -ONE)
    if not d.cancelled or len(d.terms) >= len(a.terms) + len(b.terms):
        return None
    return d


def find_terms(view: SumView, op: str) -> list[tuple[Fraction, Node]]:
    return [(c, t) for c, t in view.terms if t.op == op]


# == sums: cancellation of identical terms, special constants ==============================
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


def _degree(t: Node, u: Node) -> int | None:
    """d when ``t`` is the monomial u**d (u, square(u), u*square(u), u**3 …), else None."""
    if t is u:
        return 1
    if t.op == "square":
        d = _degree(t.inputs[0], u)
        return None if d is None else 2 * d
    if t.op == "mul":
        a, b = _degree(t.inputs[0], u), _degree(t.inputs[1], u)
        return None if a is None or b is None else a + b
    if t.op == "pow" and t.inputs[1].op == "constant":
        p = F.scalar_const(t.inputs[1])
        d = _degree(t.inputs[0], u)
        if p is not None and d is not None and float(p).is_integer() and 0 < p < 64:
            return int(p) * d
    return None


_power = F.power


@stability_rule("taylor_cancellation", SUM_OPS, needs=tuple(SERIES.FUNCTIONS))
def taylor_cancellation(node: Node) -> Node | None:
    """x - sin(x), tan(x) - x, log1p(x) - x, exp(x) - 1 - x …: a function minus the first terms of
    its Taylor series -> the remaining series for |x| < r (chosen per function; the formula beyond)."""
    view = view_of(node)
    if view is None:
        return None
    for c, t in view.terms:
        if t.op not in SERIES.FUNCTIONS:
            continue
        u = t.inputs[0]
        poly: dict[int, Fraction] = {0: -view.const / c}
        for kk, m in view.without(t).terms:
            d = _degree(m, u)
            if d is None:
                break
            poly[d] = poly.get(d, Fraction(0)) - kk / c
        else:
            top = max(d for d, v in poly.items() if v != 0) if any(poly.values()) else 0
            a = SERIES.coefficients(t.op)
            if top < 1 or top >= len(a) or any(poly.get(d, 0) != a[d] for d in range(top + 1)):
                continue
            br = SERIES.branch(t.op, top)
            if br is None:
                continue
            r, n = br
            series = scale(F.horner(u, [0] * (top + 1) + list(a[top + 1:n]), node), c)
            return F.where(f("abs", u) < k(r, u), series, F.freeze(node))
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


@stability_rule("pow1p_minus_one", SUM_OPS, needs=('where',))
def pow1p_minus_one(node: Node) -> Node | None:
    """(1 + x)**y - 1 -> expm1(y * log1p(x)) where |y * log1p(x)| < 1 (else the compensated power - 1)."""
    view = view_of(node)
    if view is None or view.const == 0:
        return None
    for coef, term in view.terms:
        info = F.origin(term)
        if info and info[0] == "pow1p" and view.const == -coef and info[1] is not None:
            x, y = info[1], info[2]
            z = mul(y, f("log1p", x))
            naive = F.freeze(sub(term, k(1.0, term)))
            rep = scale(F.where(f("abs", z) < k(1.0, z), f("expm1", z), naive), coef)
            return with_rest(SumView(view.without(term).terms, Fraction(0)), [], rep, node)
    return None


# == sums of two related terms ============================================================
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
    """cos(u)**2 - sin(u)**2 -> cos(2u)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb in _pairs(view, "square"):
        if ta.inputs[0].op == "cos" and tb.inputs[0].op == "sin" and ta.inputs[0].inputs[0] is tb.inputs[0].inputs[0]:
            return with_rest(view, [ta, tb], scale(f("cos", scale(ta.inputs[0].inputs[0], TWO)), c), node)
    return None


def _exact_sqrt(c: Fraction) -> Fraction | None:
    if c <= 0:
        return None
    r = Fraction(math.sqrt(float(c)))
    return r if r * r == c else None


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
        r = _exact_sqrt(-view.const / c) if t.op == "square" else None
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
        A = _sqrt_of(t)
        if A is None:
            continue
        rest = view.without(t)
        B = rest.scaled(-1 / c)  # node = c * (sqrt(A) - B)
        one = B.single()
        positive = None
        bb = _sqrt_of(one[1]) if one is not None and one[0] == 1 else None
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
        stable = scale(div(build_sum(num, node), den), c)
        safe = f("isfinite", stable)  # 0/0 (a = b = 0) and inf/inf (an infinite a or b): the formula
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


@stability_rule("sin_difference", SUM_OPS, needs=('sin',))
def sin_difference(node: Node) -> Node | None:
    """sin(x + e) - sin(x) -> cos(x) sin(e) - 2 sin(x) sin(e/2)^2 (x + e is never rounded)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb, d in _two_function_terms(view, "sin"):
        x, e = tb.inputs[0], build_sum(d, node)
        s2 = f("square", f("sin", scale(e, HALF)))
        rep = sub(mul(f("cos", x), f("sin", e)), scale(mul(f("sin", x), s2), TWO))
        return with_rest(view, [ta, tb], scale(rep, c), node)
    return None


@stability_rule("cos_difference", SUM_OPS, needs=('cos',))
def cos_difference(node: Node) -> Node | None:
    """cos(x + e) - cos(x) -> -(sin(x) sin(e) + 2 cos(x) sin(e/2)^2) (x + e is never rounded)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb, d in _two_function_terms(view, "cos"):
        x, e = tb.inputs[0], build_sum(d, node)
        s2 = f("square", f("sin", scale(e, HALF)))
        rep = add(mul(f("sin", x), f("sin", e)), scale(mul(f("cos", x), s2), TWO))
        return with_rest(view, [ta, tb], scale(rep, -c), node)
    return None


@stability_rule("tan_difference", SUM_OPS, needs=('tan',))
def tan_difference(node: Node) -> Node | None:
    """tan(x + e) - tan(x) -> sin(e) / (cos(x + e) cos(x))."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb, d in _two_function_terms(view, "tan"):
        e = build_sum(d, node)
        rep = div(f("sin", e), mul(f("cos", ta.inputs[0]), f("cos", tb.inputs[0])))
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
    """exp(x + e) - exp(x) -> exp(x) * expm1(e)."""
    view = view_of(node)
    if view is None:
        return None
    for c, ta, tb, d in _two_function_terms(view, "exp"):
        rep = scale(mul(tb, f("expm1", build_sum(d, node))), c)
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
    view = view_of(node)
    if view is None:
        return None
    for c, t in view.terms:
        if t.op != "softplus":
            continue
        u = view_of(t.inputs[0])
        rest = view.without(t)
        if u is not None and same_up_to_scale(rest, u) == -c:
            return scale(f("softplus", F.neg(t.inputs[0])), c)
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


# == quotients =============================================================================
def _single(node: Node) -> tuple[Fraction, Node] | None:
    v = view_of(node)
    return v.single() if v is not None else None


def _one_plus_exp(node: Node) -> tuple[Node, Fraction] | None:
    """``(a, c)`` when ``node`` is c * (1 + exp(a))."""
    v = view_of(node)
    if v is None or v.const == 0 or len(v.terms) != 1 or v.terms[0][0] != v.const or v.terms[0][1].op != "exp":
        return None
    return v.terms[0][1].inputs[0], v.const


def _product(coef: Fraction | int, factors: list[tuple[Node, int]], like: Node) -> Node:
    num = [_power(t, e) for t, e in factors if e > 0]
    den = [_power(t, -e) for t, e in factors if e < 0]
    top = None
    for t in num:
        top = t if top is None else mul(top, t)
    bottom = None
    for t in den:
        bottom = t if bottom is None else mul(bottom, t)
    if top is None:
        return div(k(float(coef), like), bottom) if bottom is not None else k(float(coef), like)
    return scale(top if bottom is None else div(top, bottom), coef)


@stability_rule("sigmoid_from_exp", ("mul", "truediv", "pow"))
def sigmoid_from_exp(node: Node) -> Node | None:
    """1/(1 + exp(-x)) -> sigmoid(x); exp(x)/(1 + exp(x)) -> sigmoid(x); c/(1 + exp(x)) -> c sigmoid(-x);
    expm1(x)/(1 + exp(x)) -> tanh(x/2); also inside a product (x/(1 + exp(-x)) -> x sigmoid(x)); and
    powers: exp(x)**p/(1 + exp(x))**n -> sigmoid(x)**p sigmoid(-x)**(n-p) for p <= n <= 4 (the logistic
    density exp(-x)/(1 + exp(-x))**2 -> sigmoid(x) sigmoid(-x), no inf/inf for x < -710)."""
    if node.op == "mul" and not {"truediv", "sigmoid", "mul", "pow", "square"} & {node.inputs[0].op, node.inputs[1].op}:
        return None
    if node.op == "pow" and (node.inputs[1].op != "constant" or node.inputs[0].op not in ("add", "mul")):
        return None
    pv = F.product_view(node)
    if pv is None:
        return None
    coef, factors, _, guards = pv
    for sg, e in factors:  # sigmoid(b)**m * exp(-b)**p -> sigmoid(b)**(m-p) sigmoid(-b)**p (p <= m)
        if sg.op != "sigmoid" or not (int(e) == e and 1 <= e <= 4):
            continue
        vb = view_of(sg.inputs[0])
        for t, p in factors:
            sc = same_up_to_scale(view_of(t.inputs[0]) or SumView((), ONE), vb) \
                if t.op == "exp" and vb is not None else None
            q = -sc * p if sc is not None else 0
            if int(q) == q and 1 <= q <= e:  # exp(-2b) = exp(-b)**2
                rest = [(u, r) for u, r in factors if u is not sg and u is not t]
                parts = [(sg, int(e - q)), (f("sigmoid", F.neg(sg.inputs[0])), int(q))]
                rep = _product(1, [(u, r) for u, r in parts if r], node)
                if not F.broadcast_safe([u for u, _ in rest] + [rep], node):
                    return None
                return _guard_nan(scale(rep if not rest else mul(_product(1, rest, node), rep), coef), guards)
    for d, e in factors:
        if d.op == "pow" and d.inputs[1].op == "constant":  # (1 + exp(a)) ** 3.0: the view keeps pow
            k3 = F.scalar_const(d.inputs[1])
            if k3 is not None and float(k3).is_integer() and 0 < abs(k3) <= 4:
                d, e = d.inputs[0], e * int(k3)
        n = -int(e) if e < 0 and int(e) == e else 0  # d**-n, d = c (1 + exp(a))
        ac = _one_plus_exp(d) if 1 <= n <= 4 else None
        if ac is None:
            continue
        a, c = ac
        rest = [(t, p) for t, p in factors if t is not d and not (t.op == "pow" and t.inputs[0] is d)]
        va = view_of(a)
        up, rep = 0, None  # exp(a)**up / (1 + exp(a))**n = sigmoid(a)**up sigmoid(-a)**(n - up)
        for t, p in rest:
            if t.op not in ("exp", "expm1"):
                continue
            sc = 1 if t.inputs[0] is a else (same_up_to_scale(view_of(t.inputs[0]) or SumView((), ONE), va)
                                              if va is not None else None)
            if sc is None:
                continue
            if t.op == "exp" and int(sc * p) == sc * p and 1 <= sc * p <= n:  # exp(2x) = exp(x)**2
                up = int(sc * p)
            elif t.op == "expm1" and sc == 1 and p == 1 and n == 1:
                rep = f("tanh", scale(a, HALF))
            else:
                continue
            rest = [(u, q) for u, q in rest if u is not t]
            break
        if rep is None:
            parts = [(f("sigmoid", a), up), (f("sigmoid", F.neg(a)), n - up)]
            rep = _product(1, [(t, q) for t, q in parts if q], node)
        if not F.broadcast_safe([t for t, _ in rest] + [rep], node):
            return None
        out = rep if not rest else mul(_product(1, rest, node), rep)
        return _guard_nan(scale(out, Fraction(coef) / c ** n), guards)
    return None


@stability_rule("sqrt_product", P("sqrt", X("m")))
def sqrt_product(node: Node, m: Node) -> Node | None:
    """sqrt(x*y) -> sqrt|x| sqrt|y|, NaN where x and y have opposite signs: the product overflows or
    underflows where its root is representable (the geometric mean of 1e200 and 1e300)."""
    if m.op != "mul" or F.is_frozen(m):
        return None
    x, y = m.inputs
    if x is y or x.op == "constant" or y.op == "constant" or not F.broadcast_safe([x, y], node):
        return None  # x*x is sqrt_square's; c*x has nothing to gain
    if x.op in SUM_OPS or y.op in SUM_OPS:
        return None  # (x - 1)(x + 1) is x*x - 1 factored: sqrt_conjugate's, and no overflow to avoid
    zero = k(0.0, node)
    opposite = make("and", make("ne", make("lt", x, zero), make("lt", y, zero)),
                    make("and", make("ne", x, zero), make("ne", y, zero)))
    return nan_where(opposite, mul(f("sqrt", f("abs", x)), f("sqrt", f("abs", y))))


#: Below this magnitude exp(u) is a normal, finite float64 (exp(709.78) overflows, exp(-708.4) is
#: subnormal): the naive forms of the exp rules below are exact enough there, so they keep them.
EXP_SAFE = 700.0


def _exp_safe(*args: Node) -> Node:
    safe = None
    for a in args:
        c = f("abs", a) < k(EXP_SAFE, a)
        safe = c if safe is None else make("and", safe, c)
    return safe


@stability_rule("exp_product", ("mul", "truediv"))
def exp_product(node: Node) -> Node | None:
    """exp(a) exp(b) -> exp(a + b), exp(a)/exp(b) -> exp(a - b) where an exp over- or underflows
    (|a| or |b| > 700: inf/inf, 0*inf); the naive form elsewhere, which does not round a + b."""
    if node.op == "mul" and "exp" not in (node.inputs[0].op, node.inputs[1].op):
        return None
    pv = F.product_view(node)
    if pv is None:
        return None
    coef, factors, _, guards = pv
    exps = [(t, p) for t, p in factors if t.op == "exp" and p in (1, -1)]
    if len(exps) != 2 or guards:
        return None
    (ta, pa), (tb, pb) = exps
    a, b = ta.inputs[0], tb.inputs[0]
    arg = add(a, b) if pa == pb else (sub(a, b) if pa == 1 else sub(b, a))
    joined = f("exp", arg if pa == 1 or pa != pb else F.neg(arg))
    rest = [(t, p) for t, p in factors if t is not ta and t is not tb]
    if not F.broadcast_safe([t for t, _ in rest] + [joined], node):
        return None
    stable = joined if not rest else mul(_product(1, rest, node), joined)
    return F.where(_exp_safe(a, b), F.freeze(node), scale(stable, coef))


@stability_rule("softmax_pair", ("mul", "truediv"))
def softmax_pair(node: Node) -> Node | None:
    """exp(a)/(exp(a) + exp(b)) -> sigmoid(a - b) where an exp over- or underflows (|a| or |b| > 700:
    inf/inf, 0/0); the naive form elsewhere, which does not round a - b."""
    pv = F.product_view(node)
    if pv is None:
        return None
    coef, factors, _, guards = pv
    for d, e in factors:
        v = view_of(d) if e == -1 else None
        if v is None or v.const != 0 or len(v.terms) != 2 or guards:
            continue
        (ca, ta), (cb, tb) = v.terms
        if ca != cb or ta.op != "exp" or tb.op != "exp":
            continue
        for top, other in ((ta, tb), (tb, ta)):
            num = [(t, p) for t, p in factors if t is top and p == 1]
            if not num:
                continue
            rest = [(t, p) for t, p in factors if t is not d and t is not top]
            a, b = top.inputs[0], other.inputs[0]
            rep = f("sigmoid", sub(a, b))
            if not F.broadcast_safe([t for t, _ in rest] + [rep], node):
                return None
            stable = rep if not rest else mul(_product(1, rest, node), rep)
            return F.where(_exp_safe(a, b), F.freeze(node), scale(stable, Fraction(coef) / ca))
    return None


def _power_of_two(c: Fraction) -> bool:
    n, d = abs(c.numerator), c.denominator
    return n > 0 and n & (n - 1) == 0 and d & (d - 1) == 0


def _square_error(u: Node, hi: Node) -> Node:
    """``u*u - hi`` exactly, for ``hi`` = fl(u*u) (Dekker's product, Veltkamp's split).  Every node is
    frozen: the sum views would otherwise simplify ``t - (t - u)`` back to ``u``."""
    split = k(134217729.0 if u.dtype == "float64" else 4097.0, u)  # 2**27 + 1, 2**12 + 1

    def fz(op: str, *xs: Node) -> Node:
        return F.freeze(make(op, *xs))

    t = fz("mul", u, split)
    uh = fz("sub", t, fz("sub", t, u))
    ul = fz("sub", u, uh)
    hh = fz("mul", uh, uh)
    cross = fz("mul", fz("mul", uh, ul), k(2.0, u))
    return fz("add", fz("add", fz("sub", hh, hi), cross), fz("mul", ul, ul))


@stability_rule("exp_exact_square", P("exp", X("a")), late=True)  # after log(exp(...)), logsumexp ...
def exp_exact_square(node: Node, a: Node) -> Node | None:
    """exp(c u**2) -> exp(c hi) (1 + c lo) with u**2 = hi + lo exactly (c a power of two, so c hi is exact):
    the rounding of u**2 alone costs c u**2 ulps of the result (9 bits for the Gaussian exp(-x**2/2) at
    x = 38).  For |u| < 1e150 (the split overflows beyond, where the result is 0 or inf anyway)."""
    v = view_of(a)
    if v is None or v.const != 0 or len(v.terms) != 1:
        return None
    c, sq = v.terms[0]
    if sq.op != "square" or sq.dtype not in FLOATS or sq.dtype != node.dtype or not _power_of_two(Fraction(c)):
        return None
    u = sq.inputs[0]
    lo = _square_error(u, sq)
    fixed = mul(F.freeze(node), add(k(1.0, node), scale(lo, c)))
    return F.where(f("abs", u) < k(1e150 if u.dtype == "float64" else 1e18, u), fixed, F.freeze(node))


@stability_rule("tanh_from_sinh_cosh", P("truediv", X("n"), X("d")))
def tanh_from_sinh_cosh(node: Node, n: Node, d: Node) -> Node | None:
    """sinh(x)/cosh(x) -> tanh(x) (no inf/inf for |x| > 710)."""
    sn, sd = _single(n), _single(d)
    if sn and sd and sn[1].op == "sinh" and sd[1].op == "cosh" and sn[1].inputs[0] is sd[1].inputs[0]:
        return scale(f("tanh", sn[1].inputs[0]), sn[0] / sd[0])
    return None


@stability_rule("exp_over_expm1", P("truediv", X("n"), X("d")))
def exp_over_expm1(node: Node, n: Node, d: Node) -> Node | None:
    """exp(x)/expm1(x) -> -1/expm1(-x) for x > 0 (no inf/inf for large x)."""
    sn, sd = _single(n), _single(d)
    if sn and sd and sn[1].op == "exp" and sd[1].op == "expm1" and sn[1].inputs[0] is sd[1].inputs[0]:
        x = sn[1].inputs[0]
        stable = scale(div(k(1.0, node), f("expm1", F.neg(x))), -sn[0] / sd[0])
        return F.where(x > k(0.0, x), stable, F.freeze(node))
    return None


def _max_shifted(x: Node) -> bool:
    """``x`` already has a max subtracted (x - max(x), as softmax and logsumexp build it)."""
    v = view_of(x)
    if v is None:
        return False
    for c, t in v.terms:
        while t.op in ("dimshuffle", "where", "cast"):
            t = t.inputs[1] if t.op == "where" else t.inputs[0]
        if c < 0 and t.op == "max":
            return True
    return False


def _sum_of_exp(s: Node) -> tuple[Node, tuple, bool] | None:
    """(x, axes, keepdims) when ``s`` is sum(exp(x)) (possibly with axes re-inserted)."""
    while s.op == "dimshuffle" or s.op == "reshape":
        s = s.inputs[0]
    if s.op == "sum" and s.inputs[0].op == "exp":
        return s.inputs[0].inputs[0], s.arg("axis"), s.arg("keepdims")
    return None


@stability_rule("softmax_from_exp", P("truediv", P("exp", X("x")), X("s")))
def softmax_from_exp(node: Node, x: Node, s: Node) -> Node | None:
    """exp(x) / sum(exp(x)) -> exp(x - max x) / sum(exp(x - max x)) (no overflow; the rounding of
    x - max x is compensated, so tiny probabilities keep their relative accuracy)."""
    se = _sum_of_exp(s)
    if se is None or se[0] is not x or _max_shifted(x):
        return None
    axes = se[1]
    m = make("max", x, axis=axes, keepdims=True)
    fz = F.freeze  # TwoSum: x - m = d + err exactly, and exp(x - m) = exp(d) (1 + err) to first order
    d = fz(sub(x, m))
    bb = fz(sub(d, x))
    err = fz(add(fz(sub(x, fz(sub(d, bb)))), fz(sub(F.neg(m), bb))))
    ed = f("exp", d)
    e = add(ed, mul(ed, F.where(f("isfinite", err), err, k(0.0, err))))  # (-inf entries: err is NaN)
    out = div(e, make("sum", e, axis=axes, keepdims=True))
    return F.set_origin(out, ("guard", node))  # log(softmax) rules still see exp(x) / sum(exp(x))


@stability_rule("product_cancel", ("mul", "truediv"))
def product_cancel(node: Node) -> Node | None:
    """(1/u) * u * v -> v + 0*u; (a*c)/(2a) -> c/2 + 0*a: a factor of the numerator that meets
    itself in the denominator is cancelled.  NaN or infinite u still gives NaN; u = 0 gives NaN too
    unless u is nonzero in exact arithmetic (exp, sigmoid, ...), where its float value is 0 only by
    underflow: a gradient's 1/sigmoid(x) * sigmoid(x) * ... then stays finite."""
    if node.op == "mul" and node.inputs[0].op not in ("mul", "truediv") and node.inputs[1].op not in ("mul", "truediv"):
        return None  # two plain factors: nothing to cancel
    pv = F.product_view(node)
    if pv is None or not pv[2]:
        return None
    coef, factors, _, vanished = pv
    out = _product(coef, factors, node)
    for u in dict.fromkeys(vanished):
        if not _never_zero(u):  # (x*y)/y is NaN at y = 0 in IEEE arithmetic (and NumPy): keep that
            out = nan_where(make("eq", u, k(0.0, u)), out)
    return _guard_nan(out, vanished)


def _never_zero(u: Node) -> bool:
    """True when ``u`` is nonzero in exact arithmetic (its float value may still underflow to 0,
    which is exactly when cancelling it helps: 1/sigmoid(x) * sigmoid(x) at x = -800)."""
    if u.op == "constant":
        return bool(np.all(u.value != 0))
    if u.op in ("exp", "exp2", "sigmoid", "cosh", "softplus"):
        return True
    if u.op in ("square", "abs", "neg", "sqrt"):
        return _never_zero(u.inputs[0])
    if u.op in ("mul", "truediv"):
        return all(_never_zero(i) for i in u.inputs)
    return False


def _guard_nan(out: Node, vanished: list[Node]) -> Node:
    """``out + 0*u`` for each cancelled u: NaN or infinite u still gives NaN (as u/u does), u = 0
    gives the limit; product views read through these guards (see forms.product_view)."""
    for t in dict.fromkeys(vanished):
        out = add(out, mul(t, k(0.0, t)))
    return out


@stability_rule("constant_factors", ("mul", "truediv"))
def constant_factors(node: Node) -> Node | None:
    """(2 * x) * 0.5 -> x; (x / 3) * 6 -> x * 2: nested constant factors are merged."""
    a, b = node.inputs
    if node.op == "mul":
        c = F.exact(F.scalar_const(b)) if b.op == "constant" else None
        other = a
        if c is None and a.op == "constant":
            c, other = F.exact(F.scalar_const(a)), b
    else:
        c = F.exact(F.scalar_const(b)) if b.op == "constant" else None
        c = 1 / c if c else None
        other = a
    if not c or other.op not in ("mul", "neg", "truediv"):
        return None
    inner = other
    kk = Fraction(1)
    while True:
        if inner.op == "neg":
            inner, kk = inner.inputs[0], -kk
        elif inner.op == "mul" and inner.inputs[1].op == "constant" and F.exact(F.scalar_const(inner.inputs[1])):
            inner, kk = inner.inputs[0], kk * F.exact(F.scalar_const(inner.inputs[1]))
        elif inner.op == "truediv" and inner.inputs[1].op == "constant" and F.exact(F.scalar_const(inner.inputs[1])):
            inner, kk = inner.inputs[0], kk / F.exact(F.scalar_const(inner.inputs[1]))
        else:
            break
    if kk == 1 or (kk == -1 and other.op == "neg" and other.inputs[0] is inner):
        return None
    total = kk * c
    info = np.finfo(node.dtype)
    if total != 0 and not (float(info.tiny) <= abs(float(total)) <= float(info.max)):
        return None
    return scale(inner, total)


# == log ====================================================================================
def _log_rule(name: str) -> Callable:
    """A rule on log(a); it also tries the formula behind a guarded ``a`` (log(x + sqrt(x*x + 1))
    is still arcsinh after sqrt_conjugate guarded the sum)."""

    def deco(fn: Callable[..., Node | None]) -> Callable[..., Node | None]:
        def both(node: Node, a: Node) -> Node | None:
            naive = unguard(a)
            out = fn(node, naive) if naive is not None else None
            return out if out is not None else fn(node, a)

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


def _lse_parts(x: Node, axes: tuple) -> tuple[Node, Node, Node]:
    """(m, x - m, log1p(T)) of _lse: log_softmax is (x - m) - log1p(T), exact at the maximum."""
    m = make("max", x, axis=axes, keepdims=True)
    shift = F.where(f("isfinite", m), m, k(0.0, x))
    y = sub(x, shift)
    top = make("eq", y, k(0.0, y))
    others = make("sum", F.where(top, k(0.0, y), f("exp", y)), axis=axes, keepdims=True)
    count = make("sum", make("cast", top, dtype=x.dtype), axis=axes, keepdims=True)
    return shift, y, f("log1p", add(others, sub(count, k(1.0, x))))


@stability_rule("logsumexp_from_log", P("log", P(("sum", "mean"), P("exp", X("x")), name="s")))
def logsumexp_from_log(node: Node, s: Node, x: Node) -> Node | None:
    """log(sum(exp(x))) -> logsumexp(x) (max-shifted, exact for ±inf); log(mean(exp x)) likewise."""
    if _max_shifted(x):
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
    se = _sum_of_exp(s)
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


def _sqrt_of(r: Node) -> SumView | None:
    """The view of r**2 when r is sqrt(A), hypot(t, c) or sqrt((t - a) * (t + a)) (which
    difference_of_squares makes of sqrt(t*t - a*a))."""
    if r.op == "sqrt":
        inner = r.inputs[0]
        if inner.op == "mul":
            p, q = view_of(inner.inputs[0]), view_of(inner.inputs[1])
            if p is not None and q is not None and len(p.terms) == 1 and p.terms == q.terms \
                    and p.terms[0][0] == 1 and p.const == -q.const:
                return SumView(((ONE, f("square", p.terms[0][1])),), -(p.const * p.const))
        return view_of(inner)
    if r.op == "hypot":
        x, y = r.inputs
        for p, q in ((x, y), (y, x)):
            c = F.exact(F.scalar_const(q)) if q.op == "constant" else None
            if c is not None:
                return SumView(((ONE, f("square", p)),), c * c)
        return SumView(((ONE, f("square", x)), (ONE, f("square", y))), Fraction(0))
    return None


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
        if c1 == 1 and c2 == 1 and _is_square_of(_sqrt_of(r), t, ONE):
            return f("arcsinh", t)
    return None


@_log_rule("arccosh_from_log")
def arccosh_from_log(node: Node, a: Node) -> Node | None:
    """log(x + sqrt(x*x - 1)) -> arccosh(x) (also sqrt((x - 1) * (x + 1)))."""
    v = view_of(a)
    if v is None or len(v.terms) != 2 or v.const != 0:
        return None
    for (c1, t), (c2, r) in (v.terms, v.terms[::-1]):
        if c1 == 1 and c2 == 1 and r.op == "sqrt" and _is_square_of(_sqrt_of(r), t, -ONE):
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
    one = _single(a)
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
    out = add(x, f("log1mexp", sub(y, x)))
    out = out if c1 == 1 else add(out, k(math.log(float(c1)), node))
    same = make("eq", x, y)  # log(0) = -inf, also for x = y = -inf (inf - inf would be NaN)
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
    one = _single(a)
    if not one or one[0] <= 0 or one[1].op != "square":
        return None
    c, x = one[0], one[1].inputs[0]
    tail = F.freeze(f("log1p", scale(f("square", div(k(1.0, x), x)), Fraction(1) / Fraction(c))))  # not again
    big = scale(f("log", f("abs", x)), TWO)
    big = add(add(big, k(math.log(c), node)), tail) if c != 1 else add(big, tail)
    return F.where(f("abs", x) > k(1e150, x), big, F.freeze(node))


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


def _log_product(node: Node, a: Node, quotient: bool) -> Node | None:
    x, y = a.inputs
    info = np.finfo(node.dtype)
    la, lb = f("log", f("abs", x)), f("log", f("abs", y))
    wide = sub(la, lb) if quotient else add(la, lb)
    nonzero = make("ne", x, k(0.0, x)) & make("ne", y, k(0.0, y)) & f("isfinite", x) & f("isfinite", y)
    negative = make("ne", x < k(0.0, x), y < k(0.0, y)) & nonzero  # x*y < 0 however small: log is NaN
    fallback = nan_where(negative, wide)
    safe = (a >= k(float(info.tiny), a)) & (a <= k(float(info.max), a))
    return F.where(safe, F.freeze(node), fallback)


@_log_rule("log_mul")
def log_mul(node: Node, a: Node) -> Node | None:
    """log(x*y) -> log|x| + log|y| where x*y over- or underflows (log(x*y) elsewhere)."""
    if a.op != "mul":
        return None
    return _log_product(node, a, quotient=False)


@_log_rule("log_div")
def log_div(node: Node, a: Node) -> Node | None:
    """log(x/y) -> log1p((x - y)/y) where 1/2 < x/y < 2, with x - y taken from the sum views
    (log(p/(1 - p)) -> log1p((2p - 1)/(1 - p)); log((x + 1)/x) -> log1p(1/x)): log near 1 turns the
    quotient's rounding into all of its error, and x - y is exact there (Sterbenz);
    log|x| - log|y| where x/y over- or underflows; log(x/y) elsewhere."""
    if a.op != "truediv":
        return None
    out = _log_product(node, a, quotient=True)
    x, y = a.inputs
    vx, vy = view_of(x), view_of(y)
    num = build_sum(vx.plus(vy, -ONE), node) if vx is not None and vy is not None else sub(x, y)
    near_one = (a > k(0.5, a)) & (a < k(2.0, a))
    return F.where(near_one, f("log1p", div(num, y)), out)


# == log1p, exp, expm1 =======================================================================
@stability_rule("softplus_from_log1p_exp", P("log1p", P("exp", X("x"))))
def softplus_from_log1p_exp(node: Node, x: Node) -> Node:
    """log1p(exp(x)) -> softplus(x) (i.e. log(1 + exp(x)))."""
    return f("softplus", x)


@stability_rule("log1mexp_from_log1p", P("log1p", X("a")))
def log1mexp_from_log1p(node: Node, a: Node) -> Node | None:
    """log1p(-exp(x)) -> log1mexp(x)."""
    one = _single(a)
    if one and one[0] == -1 and one[1].op == "exp":
        return f("log1mexp", one[1].inputs[0])
    return None


@stability_rule("log1p_neg_sigmoid", P("log1p", X("a")))
def log1p_neg_sigmoid(node: Node, a: Node) -> Node | None:
    """log1p(-sigmoid(x)) -> -softplus(x) (i.e. log(1 - sigmoid(x)))."""
    one = _single(a)
    if one and one[0] == -1 and one[1].op == "sigmoid":
        return F.neg(f("softplus", one[1].inputs[0]))
    return None


@stability_rule("log1p_expm1", P("log1p", P("expm1", X("x"))))
def log1p_expm1(node: Node, x: Node) -> Node:
    """log1p(expm1(x)) -> x."""
    return x


@stability_rule("exp_log", P("exp", P("log", X("x"))))
def exp_log(node: Node, x: Node) -> Node:
    """exp(log(x)) -> x, NaN for x < 0 (the domain of log is kept)."""
    return nan_where(x < k(0.0, x), x)


@stability_rule("expm1_log1p", P("expm1", P("log1p", X("x"))))
def expm1_log1p(node: Node, x: Node) -> Node:
    """expm1(log1p(x)) -> x, NaN for x < -1."""
    return nan_where(x < k(-1.0, x), x)


# == sqrt, pow ===============================================================================
@stability_rule("sqrt_square", P("sqrt", P("square", X("x"))))
def sqrt_square(node: Node, x: Node) -> Node:
    """sqrt(x*x) -> |x| (no overflow or underflow)."""
    return f("abs", x)


@stability_rule("hypot_from_sqrt", P("sqrt", X("a")))
def hypot_from_sqrt(node: Node, a: Node) -> Node | None:
    """sqrt(x*x + y*y) -> hypot(x, y); sqrt(x*x + c) -> hypot(x, sqrt c) (no overflow/underflow)."""
    v = view_of(a)
    if v is None or v.const < 0:
        return None
    parts = []
    for c, t in v.terms:
        r = _exact_sqrt(c)
        if t.op != "square" or r is None:
            return None
        parts.append(scale(t.inputs[0], r))
    if v.const > 0:
        parts.append(k(math.sqrt(float(v.const)), node))
    if len(parts) < 2:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = make("hypot", out, p)
    return out


@stability_rule("pow_compensated_base", P("pow", P("add", X("p"), X("q"), name="s"), X("y")))
def pow_compensated_base(node: Node, s: Node, p: Node, q: Node, y: Node) -> Node | None:
    """(p + q)**y -> pow(s, y) * exp(y * err / s), s = fl(p + q), err its exact rounding error
    (TwoSum): the rounding of the base is not amplified by a large y ((1 + 1/n)**n)."""
    yv = F.scalar_const(y) if y.op == "constant" else None
    if yv is not None and abs(yv) <= 4:
        return None
    fz = F.freeze  # an error-free transformation: no rule may "simplify" it
    bb = fz(sub(s, p))
    err = fz(add(fz(sub(p, fz(sub(s, bb)))), fz(sub(q, bb))))
    kk = mul(y, div(err, s))
    out = F.where(f("isfinite", kk), mul(node, f("exp", kk)), node)
    F.freeze(node)
    vq, vp = F.scalar_const(q) if q.op == "constant" else None, F.scalar_const(p) if p.op == "constant" else None
    x = p if vq == 1.0 else (q if vp == 1.0 else None)
    return F.set_origin(out, ("pow1p", x, y))
