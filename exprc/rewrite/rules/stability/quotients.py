"""Stability rules on products and quotients: sigmoid, softmax, exp products, overflow.

``1/(1 + exp(-x))`` becomes ``sigmoid(x)`` (also inside a product and in powers of it), exps
that overflow in a product or a quotient are joined, ``exp(x)/sum(exp(x))`` is max-shifted,
factors that meet themselves in the denominator cancel.  Products are read through
:func:`exprc.rewrite.forms.product_view` (coefficient, factors with exponents).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from exprc.graph import Node
from exprc.rewrite import forms as F
from exprc.rewrite.core import P, X
from exprc.rewrite.forms import SumView, make, same_up_to_scale, scale
from exprc.rewrite.rules.stability._common import (
    FLOATS,
    HALF,
    ONE,
    POSITIVE_OPS,
    SUM_OPS,
    TWO,
    add,
    by_rows,
    div,
    f,
    finite_max,
    k,
    max_shifted,
    mul,
    nan_where,
    negative_product,
    single,
    stability_rule,
    sub,
    sum_of_exp,
    two_sum,
    view_of,
)


def _one_plus_exp(node: Node) -> tuple[Node, Fraction] | None:
    """``(a, c)`` when ``node`` is c * (1 + exp(a))."""
    v = view_of(node)
    if v is None or v.const == 0 or len(v.terms) != 1 or v.terms[0][0] != v.const or v.terms[0][1].op != "exp":
        return None
    return v.terms[0][1].inputs[0], v.const


def _product(coef: Fraction | int, factors: list[tuple[Node, int]], like: Node) -> Node:
    num = [F.power(t, e) for t, e in factors if e > 0]
    den = [F.power(t, -e) for t, e in factors if e < 0]
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
    if node.op == "mul" and not {"truediv", "sigmoid", "mul", "pow", "square"} & {node.inputs[0].op, node.inputs[1].op} \
            and not any(i.op == "add" and F.is_nan_guard(i.inputs[1]) for i in node.inputs):
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
    return nan_where(negative_product(x, y), mul(f("sqrt", f("abs", x)), f("sqrt", f("abs", y))))


#: Below this |e|, _carried applies TwoSum's error e: every e of an s where exp(s) is a finite nonzero
#: number (|s| < 746: e <= 2**-44 in float64; |s| < 104: e <= 2**-17 in float32), none of the
#: large ones past |s| = 2**53 (2**24), where e is no correction (exp(s) is 0 or inf there anyway).
_CARRIED_BELOW = {"float64": 2.0**-20, "float32": 2.0**-9}


_COEF_RANGE = (Fraction(1, 2**1000), Fraction(2**1000))


def _normal_coef(c: Fraction | int) -> bool:
    """A coefficient a stable form can carry as one float constant (1e-600 would be 0, 1e400 inf)."""
    return _COEF_RANGE[0] < abs(Fraction(c)) < _COEF_RANGE[1]


def _carried(s: Node, e: Node, slope: Node | None = None) -> Node:
    """1 + e * slope (slope 1 when None): the first-order factor that carries TwoSum's rounding error
    e of s into f(s) (f'/f = slope).  1 where |e| is not small (_CARRIED_BELOW) or NaN (s not finite)."""
    one = k(1.0, s)
    small = f("abs", e) < k(_CARRIED_BELOW.get(s.dtype, 2.0**-20), e)
    return F.where(small, add(one, e if slope is None else mul(e, slope)), one)


@stability_rule("exp_product", ("mul", "truediv"))
def exp_product(node: Node) -> Node | None:
    """exp(a) exp(b) -> exp(s)(1 + e), exp(a)/exp(b) likewise with s + e = a - b exactly (TwoSum):
    no inf/inf or 0*inf where an exp over- or underflows, and no rounding of a - b (whose last bit
    is worth 9 bits of exp(a - b) at |a - b| = 700).  Its gradient cannot overflow either, as the
    quotient's does (exp(a)/exp(b)/exp(b) at b = -695); and one exp costs less than two."""
    if node.op == "mul" and "exp" not in (node.inputs[0].op, node.inputs[1].op):
        return None
    pv = F.product_view(node)
    if pv is None:
        return None
    coef, factors, _, guards = pv
    exps = [(t, p) for t, p in factors if t.op == "exp" and p in (1, -1)]
    if len(exps) != 2 or guards or not _normal_coef(coef):
        return None
    (ta, pa), (tb, pb) = exps
    a, b = ta.inputs[0], tb.inputs[0]
    x, y = (a, b) if pa == 1 else (F.neg(a), F.neg(b))  # exp(x + y): x = +-a, y = +-b
    y = y if pa == pb else F.neg(y)
    s, e = two_sum(x, y)
    return _with_factors(factors, (ta, tb), mul(f("exp", s), _carried(s, e)), coef, node)


def _with_factors(factors: list[tuple[Node, int]], drop: tuple[Node, ...], joined: Node, coef: Fraction | int,
                  node: Node) -> Node | None:
    """coef * joined * (the product of ``factors`` without ``drop``): a product view with some factors
    replaced by ``joined``; None where dropping them would change the shape."""
    rest = [(t, p) for t, p in factors if all(t is not d for d in drop)]
    if not F.broadcast_safe([t for t, _ in rest] + [joined], node):
        return None
    return scale(joined if not rest else mul(_product(1, rest, node), joined), coef)


def _factor_pair(node: Node, first: str, second: str, partner: Any) -> tuple | None:
    """(coef, factors, (a, b)) when product ``node`` has factors a = first(u) and b = second(partner(u))
    to the first power (no guards, a coefficient one float carries); None otherwise."""
    if node.op == "mul" and not {node.inputs[0].op, node.inputs[1].op} & {first, second, "mul", "truediv"}:
        return None
    pv = F.product_view(node)
    if pv is None:
        return None
    coef, factors, _, guards = pv
    if guards or not _normal_coef(coef):
        return None
    seconds = {t.inputs[0]: t for t, p in factors if t.op == second and p == 1}
    for t, p in factors:
        other = partner(t.inputs[0]) if t.op == first and p == 1 else None
        if other is not None and other in seconds and seconds[other] is not t:
            return coef, factors, (t, seconds[other])
    return None


@stability_rule("sin_cos_product", ("mul", "truediv"))
def sin_cos_product(node: Node) -> Node | None:
    """sin(u) cos(u) -> sin(2u)/2 inside a product (2u is exact): one rounding where the product has
    three, one sine instead of two calls, and a form the series rules read -- the gradient of 2
    sin(x/2)**2 / x**2 (which (1 - cos x)/x**2 becomes) is sin(x)/x**2 - 4 sin(x/2)**2/x**3 then,
    whose cancellation near 0 series_difference takes away.  Where 2u would overflow (|u| > max/2,
    about 2**1023) the product as written, in a rare branch."""
    found = _factor_pair(node, "sin", "cos", lambda u: u)
    if found is None:
        return None
    coef, factors, pair = found
    u = pair[0].inputs[0]
    stable = _with_factors(factors, pair, scale(f("sin", scale(u, 2)), Fraction(1, 2)), coef, node)
    if stable is None:
        return None
    big = f("abs", u) > k(float(np.finfo(node.dtype).max) / 2, u)
    return F.guard(big, F.freeze(node), stable)


@stability_rule("sigmoid_pair_product", ("mul", "truediv"))
def sigmoid_pair_product(node: Node) -> Node | None:
    """sigmoid(z) sigmoid(-z) -> e/(1 + e)**2 with e = exp(-|z|) inside a product: the derivative of
    sigmoid, and of tanh (1 - tanh(u)**2 is 4 sigmoid(2u) sigmoid(-2u) by tanh_plus_one and
    tanh_minus_one), with one exp and one division where the two sigmoids took two of each (an MLP's
    tanh gradient over 16384 elements: 22.2 -> 18.9 us).  The same roundings as each sigmoid's own
    (1 + e, its inverse), so no less accurate; 0 at z = +-inf as the product, NaN at NaN."""
    found = _factor_pair(node, "sigmoid", "sigmoid", lambda z: F.neg(z) if z.op != "neg" else None)
    if found is None:
        return None
    coef, factors, pair = found
    z = pair[0].inputs[0]
    e = f("exp", F.neg(f("abs", z)))
    d = add(k(1.0, z), e)
    return _with_factors(factors, pair, div(e, mul(d, d)), coef, node)


@stability_rule("softmax_pair", ("mul", "truediv"))
def softmax_pair(node: Node) -> Node | None:
    """exp(a)/(exp(a) + exp(b)) -> sigmoid(s)(1 + e sigmoid(-s)) with s + e = a - b exactly (TwoSum):
    no inf/inf or 0/0 where an exp over- or underflows, and no rounding of a - b.  The gradient is
    then sigmoid's, sigmoid(s) sigmoid(-s) to first order in e; the quotient's cancels
    (1/S - exp(a)/S**2, all of it lost once a - b > 40)."""
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
            if not _normal_coef(Fraction(coef) / ca):
                return None
            a, b = top.inputs[0], other.inputs[0]
            s, e = two_sum(a, F.neg(b))
            sg = f("sigmoid", s)
            # (1 - sigmoid(s), frozen: the rules would make it sigmoid(-s), a second exp, where
            # a correction to first order needs no accuracy)
            rep = mul(sg, _carried(s, e, F.freeze(sub(k(1.0, sg), sg))))
            if not F.broadcast_safe([t for t, _ in rest] + [rep], node):
                return None
            stable = rep if not rest else mul(_product(1, rest, node), rep)
            return scale(stable, Fraction(coef) / ca)
    return None


@stability_rule("erfc_exp_ratio", ("mul", "truediv"))
def erfc_exp_ratio(node: Node) -> Node | None:
    """exp(-t*t) / erfc(t) -> 1 / erfcx(t) for t > -26.6, also inside a product: 0/0 from t = 26.5 (the
    gradient of log(erfc(t)) and of the log of the normal CDF, the Mills ratio)."""
    if node.op == "mul" and not {"truediv", "exp", "reciprocal"} & {node.inputs[0].op, node.inputs[1].op}:
        return None
    pv = F.product_view(node)
    if pv is None:
        return None
    coef, factors, _, guards = pv
    for d, e in factors:
        if d.op != "erfc" or e != -1:
            continue
        t = d.inputs[0]
        tv = F.product_view(t)
        if tv is None or tv[3]:
            continue
        minus_t2 = (-tv[0] ** 2, {u: 2 * q for u, q in tv[1]})
        for x, p in factors:
            arg = F.product_view(x.inputs[0]) if x.op == "exp" and p == 1 else None
            if arg is None or arg[3] or (arg[0], dict(arg[1])) != minus_t2:
                continue  # (not exp(-t*t), read through negations and constant factors: t = -x/sqrt 2)
            rest = [(u, q) for u, q in factors if u is not d and u is not x]
            rep = div(k(1.0, node), f("erfcx", t))
            if not F.broadcast_safe([u for u, _ in rest] + [rep], node):
                return None
            out = rep if not rest else mul(_product(1, rest, node), rep)
            # (erfcx(t) overflows from t = -26.64, where the quotient is subnormal: the quotient there)
            return F.where(t > k(-26.6, t), _guard_nan(scale(out, coef), guards), F.freeze(node))
    return None


def _power_of_two(c: Fraction) -> bool:
    n, d = abs(c.numerator), c.denominator
    return n > 0 and n & (n - 1) == 0 and d & (d - 1) == 0


def _fz(op: str, *xs: Node) -> Node:
    """A frozen node: the sum views would otherwise simplify an error-free transformation's
    ``t - (t - u)`` back to ``u``."""
    return F.freeze(make(op, *xs))


def _product_error(u: Node, c: Node | float) -> Node:
    """``u*c - fl(u*c)`` exactly (``c`` a node or a float64 constant): one op, Dekker's product (one fma
    where the target has one), which no rule sees through: the sum views would simplify its parts'
    ``t - (t - u)`` back to ``u``."""
    return make("two_prod_err", u, c if isinstance(c, Node) else k(c, u))


def _argument_residual(b: Node) -> tuple[Node, Node] | None:
    """(x, d) when ``b`` is x / c or x * c (c a float64 constant, not a power of two) in float64:
    d = x/c - b (or x*c - b) exactly, the rounding of the argument (Dekker's product; for the quotient,
    x - fl(b c) is exact by Sterbenz, less the product's rounding)."""
    if b.op not in ("truediv", "mul") or len(b.inputs) != 2 or b.inputs[1].op != "constant":
        return None
    x, c = b.inputs[0], F.scalar_const(b.inputs[1])
    if x.dtype != "float64" or c is None or not math.isfinite(c) or c == 0 or _power_of_two(Fraction(c)):
        return None
    if b.op == "mul":
        return x, _product_error(x, c)
    p = F.freeze(make("mul", b, k(c, b)))
    r = F.freeze(make("sub", F.freeze(make("sub", x, p)), _product_error(b, c)))
    return x, F.freeze(make("truediv", r, k(c, b)))


@stability_rule("erfc_exact_argument", P(("erfc", "erfcx"), X("a")), late=True)  # after log_erfc
def erfc_exact_argument(node: Node, a: Node) -> Node | None:
    """erfc(x / c) or erfc(x * c) (c a constant, not a power of two: the normal CDF's x / sqrt(2)) ->
    erfc(t) - 2/sqrt(pi) exp(-t**2) d, with t the rounded argument and d = x/c - t exactly (or x*c - t):
    erfc(t) falls as exp(-t**2), so the argument's half-ulp rounding costs 2 t**2 ulps of the result
    (10 bits at t = 26, the normal CDF at x = -37).  float64, |x| < 1e290 (the split overflows
    beyond, where erfc is 0 or 2 anyway).  erfcx(t) likewise, + (2t erfcx(t) - 2/sqrt(pi)) d: it grows
    as exp(t**2) for t < 0 (the log normal CDF's gradient at x = 34: 9.5 bits)."""
    if node.dtype != "float64":
        return None
    sign, b = (-1.0, a.inputs[0]) if a.op == "neg" else (1.0, a)
    found = _argument_residual(b)
    if found is None:
        return None
    x, d = found
    # (the correction is ulps of the result: its exp needs no exact square)
    if node.op == "erfcx":  # (erfcx(t) (2t d) - 2/sqrt(pi) d: 2t erfcx(t) d would overflow first)
        corr = sub(mul(F.freeze(node), scale(mul(a, d), TWO)), scale(d, Fraction(2.0 / math.sqrt(math.pi))))
        corr = F.neg(corr) if sign < 0 else corr
    else:
        slope = scale(F.freeze(f("exp", F.neg(f("square", a)))), Fraction(-2.0 / math.sqrt(math.pi)) * Fraction(sign))
        corr = mul(slope, d)
    fixed = add(F.freeze(node), corr)
    ok = f("abs", x) < k(1e290, x)
    if node.op == "erfcx":  # (for t > 0 erfcx(t) ~ 1/(t sqrt(pi)) moves no faster than t, and there the
        # slope cancels, 2t erfcx(t) ~ 2/sqrt(pi); below -26.64 erfcx(t) overflows: inf - inf)
        ok = make("and", ok, (a < k(0.0, a)) & (a > k(-26.6, a)))
    return F.where(ok, fixed, F.freeze(node))


#: Below these arguments exp(p) is subnormal (float64's smallest normal number is exp(-708.4)).
_SUBNORMAL_EXP = {"float64": -708.0, "float32": -87.0}


#: The ops of an arithmetic tree (_rounding reads their rounding; _polynomial, over inputs and constants).
_ARITHMETIC_OPS = frozenset({"add", "sub", "neg", "abs", "mul", "square"})
_ARITHMETIC = _ARITHMETIC_OPS | {"input", "constant"}


def _variables(t: Node, only: frozenset | None = None, limit: int = 256) -> set[Node] | None:
    """The inputs ``t`` reads; None past ``limit`` nodes, or where a node's op is not in ``only``."""
    seen, out, stack = set(), set(), [t]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if len(seen) > limit or (only is not None and n.op not in only):
            return None
        if n.op == "input":
            out.add(n)
        stack.extend(n.inputs)
    return out


def _polynomial(t: Node) -> set[Node]:
    """The variables of ``t`` when it is a polynomial in them (arithmetic of inputs and constants)."""
    return _variables(t, _ARITHMETIC, 64) or set()


def _exp_of(t: Node) -> tuple[Node, Node | None, Node | None] | None:
    """(the exp or sigmoid ``t`` is, or that a late rule compensated into ``t`` this pass; that rule's
    correction factor 1 + lo and where it applies)."""
    if t.op in ("exp", "sigmoid"):
        return t, None, None
    info = F.origin(t)
    return info[1:] if info is not None and info[0] == "exp" else None


@stability_rule("exp_subnormal_product", ("mul", "truediv"), late=True)  # after the exps' own corrections
def exp_subnormal_product(node: Node) -> Node | None:
    """c x exp(p) -> ((c x) h) h with h = exp(p/2), where p < -708 (a rare branch): there exp(p) is
    subnormal, with few significant bits, and a factor x larger than 1 scales its rounding error up
    (the Gaussian density's derivative -x exp(-x**2/2) / sqrt(2 pi): 4.5 bits at x = 38; GELU's: 10 bits
    at x = -21, where its factor is 1744).  exp(p/2) is a normal number down to p = -1416, so the
    products round in the normal range and only the last one into the subnormals; a correction 1 + lo a
    late rule computed for exp(p) (exp_exact_square, exp_exact_argument) multiplies the result, and h is
    not corrected again.  sigmoid(p) is exp(p) there.  Only where a polynomial in p's variables is a
    factor: exp(-a*a) sin(b) keeps its one product."""
    bound = _SUBNORMAL_EXP.get(node.dtype)
    pv = F.product_view(node)
    if bound is None or pv is None or pv[2] or pv[3]:
        return None
    coef, factors, _, _ = pv
    # A factor this rule made of a product inside this one (the rules run bottom-up) is read as that
    # product: the whole product is scaled, or the factors multiplied after it scale its rounding up.
    inner = {t: F.origin(t)[1] for t, e in factors if e == 1 and (F.origin(t) or ("",))[0] == "exp_scaled"}
    if inner:
        powers: dict[Node, int] = {}
        for t, e in factors:
            if t in inner:
                view = F.product_view(inner[t])
                if view is None:  # (read when the rule fired there: memoized for the pass, but not for sure)
                    return None
                coef_i, factors_i = view[:2]
                coef = coef * coef_i
                for u, d in factors_i:
                    powers[u] = powers.get(u, 0) + d
            else:
                powers[t] = powers.get(t, 0) + e
        if not all(powers.values()):
            return None
        factors = list(powers.items())  # (the fast branch keeps the inner guard: same condition, never taken)
    exps = [(t, e, found) for t, e in factors if (found := _exp_of(t)) is not None]
    if len(exps) != 1 or exps[0][1] != 1 or F.is_frozen(exps[0][0]) or not _normal_coef(coef):
        return None  # (a frozen exp: a rule's own product, exp(p) (1 + lo) of a correction)
    t, _, (base, corr, applies) = exps[0]
    p = base.inputs[0]
    others = [(u, e) for u, e in factors if u is not t]
    # Only a factor that grows where p falls matters: a polynomial in p's own variables (a derivative's
    # p'(x) in p'(x) exp(p(x)); GELU's x sigmoid(p(x)), 4.2 bits lost at x = -21.5 without the guard).
    # Elsewhere (hypot(a, b) sigmoid(c)) the tail is as rare as p < -708 is and the guard would cost
    # every call its scan (5-8% of that expression's time at 1e6); a correction factor 1 + lo
    # (softmax_pair, exp_ratio) scales nothing up.
    near = _variables(p)
    if near is None or not any(e > 0 and _polynomial(u) & near for u, e in others):
        return None
    if not F.broadcast_safe([u for u, _ in factors], node):
        return None
    h = f("exp", scale(p, HALF))
    # (frozen: rest * h is such a product, which the rule would scale again)
    slow = F.freeze(mul(F.freeze(mul(_product(coef, others, node), h)), h))
    if corr is not None:  # exp(p) = h h (1 + lo): the correction the rule computed for exp(p), not h's own
        F.freeze(h)
        slow = F.where(applies, F.freeze(mul(slow, corr)), slow)
    # The other factors' product alone may overflow (x y exp(x) at x = -710, y = 1e307: -31.8, not -inf;
    # x exp(-x) x at x = 1e155: 0, not inf * 0): h h is at most exp(-708), so the product is finite
    # wherever they are, and the formula as written decides (its NaN and inf too) where it is not.
    slow = F.where(f("isfinite", slow), slow, F.freeze(node))
    fast = F.freeze(node)
    if t.op == "sigmoid" and len(others) == 1 and others[0][1] == 1 and coef in (1, -1):
        # Where the guard does not hold, p >= -708 and exp(-p) <= exp(708) is finite: the product is the
        # quotient x / (1 + exp(-p)), as written (swish: x / (1 + exp(-x))), with no select of the
        # stable sigmoid's two forms (15% of swish's time) and one rounding less.  Only of one factor,
        # whose size the quotient never exceeds: x y / (1 + exp(-x)) overflows in x y = -6e309 where
        # x sigmoid(x) y is -1.6e49 (x = -600, y = 1e307), and so does 1e306 x.
        u = others[0][0] if coef == 1 else F.neg(others[0][0])
        fast = F.freeze(div(u, F.freeze(add(k(1.0, p), f("exp", F.neg(p))))))
    return F.set_origin(F.guard(p < k(bound, p), slow, fast), ("exp_scaled", node))


@stability_rule("exp_exact_square", P("exp", X("a")), late=True)  # after log(exp(...)), logsumexp ...
def exp_exact_square(node: Node, a: Node) -> Node | None:
    """exp(c u**2) -> exp(c hi) (1 + c lo) with u**2 = hi + lo exactly (c a power of two, so c hi is exact):
    the rounding of u**2 alone costs c u**2 ulps of the result (9 bits for the Gaussian exp(-x**2/2) at
    x = 38).  Where u is x / k or x * k (k a constant, not a power of two: x / sqrt(2)), lo takes in u's own
    rounding too.  Where |c u**2| < 1500 (float32: 210): beyond, the result is 0 or inf anyway."""
    v = view_of(a)
    if v is None or v.const != 0 or len(v.terms) != 1:
        return None
    c, sq = v.terms[0]
    # (x * 0.25) * x: the one rounding is x * x's, scaled by a power of two.  float32 only: float64 has
    # exp_exact_argument's rare guard for it (5 ulps, cost only where 8 < |p| < 746); float32 has no
    # other rule (exp(0.25*x*x) lost 60 ulps at x = 16.9)
    scaled = _scaled_square(sq) if node.dtype == "float32" else None
    if scaled is not None:
        u, k2 = scaled
        c = Fraction(c) * k2
    elif sq.op == "square":
        u = sq.inputs[0]
    else:
        return None
    if sq.dtype not in FLOATS or sq.dtype != node.dtype or not _power_of_two(Fraction(c)):
        return None
    lo = _product_error(u, u)
    # Where |c u**2| < 1500 (float32: 210) |c lo| < 2e-13: a correction.  Beyond, lo (an ulp of u**2) can
    # be large enough to turn 1 + c lo negative (exp(-x*x/2) was -0.0 at x = 1e100, exp(x*x) -inf at
    # x = 1e120 under the bound 1e150 alone), and exp(c hi) is 0 or inf anyway; between 746 and 1500
    # exp_subnormal_product's slow branch (exp(p/2) squared, normal down to p = -1416) still multiplies
    # this correction in (x y exp(-x*x/2) at x = 51.8, y = 1e300: 995 ulps without).  The split itself
    # overflows beyond 1e150 (float32: 1e18), which bounds a tiny c (2**-1020).
    bound = math.sqrt((1500.0 if u.dtype == "float64" else 210.0) / abs(float(c)))
    near = f("abs", u) < k(min(bound, 1e150 if u.dtype == "float64" else 1e18), u)
    b = u.inputs[0] if u.op == "neg" else u
    found = _argument_residual(b)
    if found is not None:
        # u itself rounded (x / sqrt(2): the normal density, erf's derivative): u**2 exactly is
        # hi + lo + 2 b d, d the argument's rounding, worth 2 u**2 ulps more (10 bits at u = 26)
        x, d = found
        lo = add(lo, scale(F.freeze(make("mul", b, d)), TWO))
        near = make("and", near, f("abs", x) < k(1e290, x))
    corr = add(k(1.0, node), scale(lo, c))
    return F.set_origin(F.where(near, mul(F.freeze(node), corr), F.freeze(node)), ("exp", node, corr, near))


def _scaled_square(t: Node) -> tuple[Node, Fraction] | None:
    """(u, k) when ``t`` is (u * k) * u or u * (u * k) with k a power of two (float32's 0.25*x*x, which
    parses as (0.25 * x) * x): u * u scaled exactly, so its rounding is u * u's alone."""
    if t.op != "mul":
        return None
    a, b = t.inputs
    for m, u in ((a, b), (b, a)):
        if m.op == "mul" and u in m.inputs:
            kn = m.inputs[1] if m.inputs[0] is u else m.inputs[0]
            kv = F.exact(F.scalar_const(kn)) if kn.op == "constant" else None
            if kv is not None and kv != 0 and _power_of_two(Fraction(kv)):
                return u, Fraction(kv)
    return None


def _rounding(a: Node, depth: int = 0) -> tuple[Node | None, int]:
    """(lo, n): ``a`` (an arithmetic tree over exact leaves) is a + lo to first order, lo the error of
    its roundings (error-free transformations: TwoSum, Dekker's products); n the products of two
    non-constant operands in it, negative where a leaf is neither an input nor a constant.  None where
    nothing rounds (a leaf)."""
    def plus(*xs: Node | None) -> Node | None:
        out = None
        for x in xs:
            if x is not None:
                out = x if out is None else _fz("add", out, x)
        return out

    if depth > 12 or a.op not in _ARITHMETIC_OPS:
        # (a leaf: exact if an input or a constant; a computed leaf, log1p(x) in exp(y * log1p(x)), has
        # a rounding of its own that the correction would not see: -1 makes the rule decline)
        return None, 0 if a.op in ("input", "constant") else -(1 << 20)
    if a.op == "neg":
        lo, n = _rounding(a.inputs[0], depth + 1)
        return (_fz("neg", lo) if lo is not None else None), n
    if a.op == "abs":  # |u| rounds as u does, with u's sign (sigmoid(z) sigmoid(-z)'s exp(-|z|))
        lo, n = _rounding(a.inputs[0], depth + 1)
        # (a select, not lo * sign(u): gcc 12 vectorizes no loop with exprc_sign's nested conditions,
        # and a full loop that runs scalar libm where its fast loop runs libmvec gives other bits)
        return (F.where(a.inputs[0] < k(0.0, a), _fz("neg", lo), lo) if lo is not None else None), n
    if a.op == "square":
        u = a.inputs[0]
        lo, n = _rounding(u, depth + 1)
        return plus(_product_error(u, u), _fz("mul", _fz("mul", u, lo), k(2.0, u)) if lo is not None else None), n + 1
    b, c = a.inputs
    lb, nb = _rounding(b, depth + 1)
    lc, nc = _rounding(c, depth + 1)
    if a.op in ("add", "sub"):  # Knuth's TwoSum on the node itself
        err = make("two_sum_err", b, c if a.op == "add" else _fz("neg", c))
        return plus(err, lb, lc if a.op == "add" or lc is None else _fz("neg", lc)), nb + nc
    kb, kc = F.scalar_const(b), F.scalar_const(c)
    if kc is not None or kb is not None:  # a product by a constant
        x, kv, lx = (b, kc, lb) if kc is not None else (c, kb, lc)
        if not math.isfinite(kv):
            return None, 0
        err = None if _power_of_two(Fraction(kv)) or kv == 0 else _product_error(x, kv)
        return plus(err, _fz("mul", lx, k(kv, a)) if lx is not None else None), nb + nc
    err = _product_error(b, c)  # (a product of two variables)
    return plus(err, _fz("mul", b, lc) if lc is not None else None,
                _fz("mul", lb, c) if lb is not None else None), nb + nc + 1


@stability_rule("exp_exact_argument", ("exp", "sigmoid"), late=True)
def exp_exact_argument(node: Node) -> Node | None:
    """exp(p(x)), sigmoid(p(x)) for an arithmetic argument with products of variables (GELU's tanh form
    sigmoid(c (x + 0.044715 x**3)), exp(-x*y/s)): where 8 < |p| < 746 (sigmoid: -746 < p < -8) the
    roundings of p cost up to |p| ulps of the result each (11 bits for GELU at x = -20); there the argument's rounding
    error lo is recovered by error-free transformations and exp(p) (1 + lo) (sigmoid(p) (1 + lo sigmoid(-p)))
    is returned.  A rare branch (the loop computes it only in chunks where it holds); float64; the formula
    where the correction is not finite (a split overflows beyond 1e300)."""
    a = node.inputs[0]
    if node.dtype != "float64" or a.dtype != "float64":
        return None
    v = view_of(a)
    if v is not None and len(v.terms) == 1 and v.const == 0 and v.terms[0][1].op == "square" \
            and _power_of_two(Fraction(v.terms[0][0])):
        return None  # (exp_exact_square's)
    lo, products = _rounding(a)
    if lo is None or products <= 0:
        return None
    # (beyond |p| = 746 exp(p) is 0 or inf whatever lo is, and lo, an ulp of p or more, would no longer be
    # a small correction: exp(p) (1 + lo) with lo < -1 is -inf where the answer is inf)
    if node.op == "exp":
        corr = add(k(1.0, node), lo)
        rare = (f("abs", a) > k(8.0, a)) & (f("abs", a) < k(746.0, a))
    else:
        corr = add(k(1.0, node), mul(lo, F.freeze(f("sigmoid", F.neg(a)))))
        rare = (a < k(-8.0, a)) & (a > k(-746.0, a))
    fixed = mul(F.freeze(node), corr)
    return F.set_origin(F.guard(rare, F.where(f("isfinite", lo), fixed, F.freeze(node)), F.freeze(node)),
                        ("exp", node, corr, make("and", rare, f("isfinite", lo))))


@stability_rule("tanh_from_sinh_cosh", P("truediv", X("n"), X("d")))
def tanh_from_sinh_cosh(node: Node, n: Node, d: Node) -> Node | None:
    """sinh(x)/cosh(x) -> tanh(x) (no inf/inf for |x| > 710)."""
    sn, sd = single(n), single(d)
    if sn and sd and sn[1].op == "sinh" and sd[1].op == "cosh" and sn[1].inputs[0] is sd[1].inputs[0]:
        return scale(f("tanh", sn[1].inputs[0]), sn[0] / sd[0])
    return None


@stability_rule("exp_over_expm1", P("truediv", X("n"), X("d")))
def exp_over_expm1(node: Node, n: Node, d: Node) -> Node | None:
    """exp(x)/expm1(x) -> -1/expm1(-x): no inf/inf for large x, and one exp-like call where the
    quotient made two; the quotient itself below x = -20 (a rare branch): there expm1(-x)**2 in the
    form's derivative overflows from x = -355 (0 where the derivative is -exp(x)), and expm1(-x)
    itself from -710, where the result is still a (subnormal) number.  (Signs at 0 as the quotient:
    +inf at +0, -inf at -0; 1 at +inf, the limit, where the quotient is NaN.)"""
    sn, sd = single(n), single(d)
    if sn and sd and sn[1].op == "exp" and sd[1].op == "expm1" and sn[1].inputs[0] is sd[1].inputs[0]:
        x = sn[1].inputs[0]
        stable = scale(div(k(1.0, node), f("expm1", F.neg(x))), -sn[0] / sd[0])
        return F.guard(x < k(-20.0, x), F.freeze(node), stable)
    return None




@stability_rule("softmax_from_exp", P("truediv", P("exp", X("x")), X("s")))
def softmax_from_exp(node: Node, x: Node, s: Node) -> Node | None:
    """exp(x) / sum(exp(x)) -> exp(x - max x) / sum(exp(x - max x)) (no overflow; the rounding of
    x - max x is compensated, so tiny probabilities keep their relative accuracy)."""
    se = sum_of_exp(s)
    if se is None or se[0] is not x or max_shifted(x):
        return None
    axes = se[1]
    # (finite_max: a row with +inf shifts by 0, so it is the quotient as written there, 0 for its finite
    # entries, where x - inf made every entry NaN)
    e = _exp_shifted(x, finite_max(x, axes))
    out = div(e, make("sum", e, axis=axes, keepdims=True))
    if by_rows(x, axes) and s.ndim == 2:
        # Over the rows of a matrix, the quotient as written where its sum S is finite and, with every
        # exp(x) normal (no x < low) or S >= 1/2 (a subnormal exp(x)'s error, at most half its spacing,
        # over S, is then at most one unit of the result's spacing): about as accurate there (no
        # x - max x to round; test_row_softmax_...'s rows: within 3.5 ulps of mpmath, median 0.61,
        # the shifted form 3.1 and 0.59; float32 3.6 and 3.0), and the row kernel then skips the max
        # pass and the TwoSum.  The shifted form for the other rows (and NaN rows: no comparison
        # holds).  (Not logsumexp: log(S) is as accurate as m + log1p(T), but x - log(S) is not
        # x - m - log1p(T), the log-probability of a confident prediction, and it may exceed 0.)
        low = -708.0 if x.dtype == "float64" else -87.0  # (exp(low) is normal)
        # (a count of the x below low, not their min with its NaN flag: rows of 8 and of 1000, C-level,
        # one thread, 1.06-1.20x the no-stability kernel where the min took 1.10-1.31x)
        below = make("sum", make("lt", x, k(low, x)), axis=axes, keepdims=True)
        fine = make("and", make("le", s, k(float(np.finfo(x.dtype).max), s)),
                    make("or", make("ge", s, k(0.5, s)), make("eq", below, k(0, below))))
        out = F.guard(make("invert", fine), out, F.freeze(node), everywhere=True)
    return F.set_origin(out, ("guard", node))  # log(softmax) rules still see exp(x) / sum(exp(x))


def _exp_shifted(x: Node, m: Node) -> Node:
    """exp(x - m), the rounding of x - m compensated: TwoSum gives x - m = d + err exactly, and
    exp(x - m) = exp(d) (1 + err) to first order, so an entry far below m keeps its relative accuracy
    (exp(-500.4 + err) without err: 107 ulps off)."""
    d = F.freeze(sub(x, m))
    # (as -TwoSum(-x, m), the same bits: m itself is the broadcast operand, not a kernel's -m)
    err = F.neg(make("two_sum_err", F.neg(x), m))
    ed = f("exp", d)
    # (-inf entries: err is NaN, and ed 0.  An infinite ed, from a row holding +inf, which finite_max
    # does not shift, is kept as it is: ed * err would be inf * 0, NaN, and with it the whole row's
    # sum, where the quotient as written is 0 for the row's finite entries)
    e = add(ed, mul(ed, F.where(f("isfinite", err), err, k(0.0, err))))
    return F.where(f("isinf", ed), ed, e)


def _once(factors: list[tuple[Node, int]], e: Node) -> bool:
    """``e`` is among a product view's ``factors`` once, to the power 1."""
    return (e, 1) in factors and [t for t, _ in factors].count(e) == 1


def _times_exp(p: Node, e: Node) -> Node | None:
    """u where the product ``p`` is u * e (``e`` a factor to the power 1, and not in u); None else,
    and where a cancelled factor left a NaN guard (u w / w is NaN at w = inf)."""
    pv = F.product_view(p)
    if pv is None or pv[2] or pv[3] or not _once(pv[1], e):
        return None
    others = [(t, q) for t, q in pv[1] if t is not e]
    if not others and pv[0] == 1:
        return None  # (e alone)
    return _product(pv[0], others, p)


@stability_rule("softmax_of_product", ("mul", "truediv"))
def softmax_of_product(node: Node) -> Node | None:
    """u exp(x) / sum(exp(x)) -> u (exp(x) / sum(exp(x))), also spelled exp(x) * (1 / sum(exp(x))),
    2 exp(x) / (2 sum(exp(x))): the softmax as a quotient of its own, which softmax_from_exp
    max-shifts (as written, exp(x) overflows and u exp(x) / inf is NaN at x = 710)."""
    pv = F.product_view(node)
    if pv is None or pv[2] or pv[3]:  # (pv[3]: NaN guards of cancelled factors, which u w / w needs)
        return None
    coef, factors = pv[0], pv[1]
    for s, q in factors:
        se = sum_of_exp(s) if q == -1 else None
        if se is None:
            continue
        e = f("exp", se[0])
        if not _once(factors, e):
            continue
        soft = div(e, s)
        if node is soft or soft in node.inputs:
            return None  # (already the softmax times the rest)
        others = [(t, p) for t, p in factors if t is not e and t is not s]
        if not F.broadcast_safe([t for t, _ in factors], node):
            return None
        return mul(_product(coef, others, node), soft) if others or coef != 1 else soft
    return None


@stability_rule("softmax_weighted_sum",
                P("truediv", P(("sum", "mean"), X("p"), name="n"), P(("sum", "mean"), P("exp", X("x")), name="d")))
def softmax_weighted_sum(node: Node, n: Node, p: Node, d: Node, x: Node) -> Node | None:
    """sum(u exp(x)) / sum(exp(x)) -> sum(u exp(x - m)) / sum(exp(x - m)), m the maximum of x over the
    summed axes (a softmax-weighted sum: self-normalized importance sampling with log-weights x, an
    attention readout); mean / mean likewise.  As written both sums overflow (x = 710) or underflow
    (log-likelihoods of -1000) and the quotient is NaN; shifted, the largest weight is 1.  (A
    non-finite maximum shifts by 0: the quotient as written.)"""
    axes, keep = tuple(d.arg("axis")), d.arg("keepdims")
    if n.op != d.op or tuple(n.arg("axis")) != axes or n.arg("keepdims") != keep or max_shifted(x) \
            or p.ndim != x.ndim or x.dtype not in FLOATS:
        return None  # (same ndim: the summed axes of u exp(x) are x's)
    u = _times_exp(p, d.inputs[0])
    if u is None:
        return None
    es = _exp_shifted(x, finite_max(x, axes))
    return div(make(n.op, mul(u, es), axis=axes, keepdims=keep), make(d.op, es, axis=axes, keepdims=keep))


@stability_rule("softmax_weighted_sum_of_views",
                P("truediv", P("dimshuffle", P(("sum", "mean"), X("p"), name="n"), name="vn"),
                  P("dimshuffle", P(("sum", "mean"), P("exp", X("x")), name="d"), name="vd")))
def softmax_weighted_sum_of_views(node: Node, vn: Node, n: Node, p: Node, vd: Node, d: Node, x: Node) -> Node | None:
    """v(sum(u exp(x))) / v(sum(exp(x))) -> v(softmax_weighted_sum's form), v one dimshuffle of both sums
    (``sum(u * e, 1)[:, None] / sum(e, 1)[:, None]``, the spelling that broadcasts the readout back
    over the rows: NaN as written at logits of 800)."""
    if vn.arg("order") != vd.arg("order"):
        return None
    inner = softmax_weighted_sum(div(n, d), n, p, d, x)
    return None if inner is None else make("dimshuffle", inner, order=vn.arg("order"))


@stability_rule("quotient_into_branches", P("truediv", P("where", X("c"), X("x"), X("y")), X("d")))
def quotient_into_branches(node: Node, c: Node, x: Node, y: Node, d: Node) -> Node | None:
    """where(c, x, y) / d -> where(c, p, y) / where(c, q, d) when a factor of d cancels in x / d = p / q:
    the quadratic formula's stable branch -(4ac / t) / (2a) is -2c / t, whose derivative in a has
    nothing to cancel (the quotient's lost every bit).  One division still, selected operands.  As
    product_cancel: NaN where the cancelled factor is 0 (0/0 as written) or not finite."""
    if not F.broadcast_safe([x, y, d], node) or x.op not in ("mul", "truediv", "neg"):
        return None
    px, pv = F.product_view(x), F.product_view(div(x, d))
    if px is None or px[2] or pv is None or not pv[2]:
        return None  # (no factor of d met one of x; x's own cancellations are product_cancel's)
    coef, factors, _, vanished = pv
    if not _normal_coef(coef):
        return None
    top = _product(1, [(t, e) for t, e in factors if e > 0], node)
    below = [(t, -e) for t, e in factors if e < 0]
    bottom = _product(1, below, node) if below else k(1.0, node)
    if coef != 1 and _power_of_two(abs(Fraction(coef))):
        # A power of two goes where it shrinks its operand: -2c on top overflows for c = -1.8e308
        # where c / (t / -2) does not, t / 0.5 below would overflow.  Exact unless the shrunk operand
        # is subnormal, where it loses its last bits (t = 1.5e-323: 25% off; the quotient as written
        # is exact there).  Choosing per element, or multiplying the quotient by a selected constant,
        # cost 27% of the quadratic formula's time.
        if abs(coef) >= 1:
            bottom = scale(bottom, 1 / Fraction(coef))
        else:
            top = scale(top, coef)
        coef = 1
    for u in dict.fromkeys(vanished):
        if _zero_only_at_minus_inf(u) is None:  # (u = 0 is 0/0 as written)
            top = nan_where(make("and", c, make("eq", u, k(0.0, u))), top)
    out = div(F.where(c, _guard_nan(top, vanished), y), F.where(c, bottom, d))
    return out if coef == 1 else mul(out, F.where(c, k(float(coef), node), k(1.0, node)))


@stability_rule("product_cancel", ("mul", "truediv"))
def product_cancel(node: Node) -> Node | None:
    """(1/u) * u * v -> v + 0*u; (a*c)/(2a) -> c/2 + 0*a: a factor of the numerator that meets
    itself in the denominator is cancelled.  NaN or infinite u still gives NaN; u = 0 gives NaN too
    unless u is nonzero in exact arithmetic (exp, sigmoid, ...), where its float value is 0 only by
    underflow: a gradient's 1/sigmoid(x) * sigmoid(x) * ... then stays finite."""
    if node.op == "mul" and node.inputs[0].op not in ("mul", "truediv") and node.inputs[1].op not in ("mul", "truediv"):
        return None  # two plain factors: nothing to cancel
    pv = F.product_view(node)
    if pv is None or not pv[2] or not _normal_coef(pv[0]):
        return None  # (a coefficient of 1e-600 or 1e400 is no float constant: the product as written)
    coef, factors, _, vanished = pv
    out = _product(coef, factors, node)
    guards = list(vanished)
    for u in dict.fromkeys(vanished):
        limits = _zero_only_at_minus_inf(u)
        if limits is None:  # (x*y)/y is NaN at y = 0 in IEEE arithmetic (and NumPy): keep that
            out = nan_where(make("eq", u, k(0.0, u)), out)
        else:  # exp(v)/exp(v) is 0/0 at v = -inf in exact arithmetic too: NaN there, 1 at v = -800.
            # Guarded as a NaN-guard term (0 * (NaN where v = -inf, else 0)), which product views
            # read through, so later rules still see the cancelled product.
            guards += [nan_where(make("eq", v, k(-math.inf, v)), k(0.0, v)) for v in limits]
    return _guard_nan(out, guards)


def _never_zero(u: Node) -> bool:
    """True when ``u`` is nonzero in exact arithmetic for finite arguments (see
    :func:`_zero_only_at_minus_inf`)."""
    return _zero_only_at_minus_inf(u) is not None


def _zero_only_at_minus_inf(u: Node) -> list[Node] | None:
    """The arguments v of the exp-like ops in ``u`` when ``u`` is nonzero in exact arithmetic except
    where such a v is -inf (exp(-inf) = 0 exactly); None when ``u`` may be zero otherwise.  Its float
    value may still underflow to 0, which is exactly when cancelling it helps: 1/sigmoid(x) *
    sigmoid(x) at x = -800.  Iterative (an explicit stack over the DAG, each node once): factors can
    be chains thousands of nodes deep."""
    stack, seen, limits = [u], set(), {}
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.op == "constant":
            if not np.all(n.value != 0):
                return None
        elif n.op in POSITIVE_OPS:
            limits[n.inputs[0]] = None
        elif n.op == "cosh":
            continue
        elif n.op in ("square", "abs", "neg", "sqrt"):
            stack.append(n.inputs[0])
        elif n.op in ("mul", "truediv"):
            stack.extend(n.inputs)
        else:
            return None
    return list(limits)  # traversal order: deterministic


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
    # (compared as fractions: float(total) overflows for a huge total, e.g. 2**2500 from a deep chain)
    if total != 0 and not (Fraction(float(info.tiny)) <= abs(total) <= Fraction(float(info.max))):
        return None
    return scale(inner, total)
