"""Stability rules on ``sqrt`` and ``pow``: no overflow in ``sqrt(x*x + y*y)`` (hypot), and a base
whose rounding a large exponent would amplify (``(1 + 1/n)**n``) gets its rounding error back."""

from __future__ import annotations

import math

from exprc.graph import Node
from exprc.rewrite import forms as F
from exprc.rewrite.core import P, X
from exprc.rewrite.forms import make, scale
from exprc.rewrite.rules.stability._common import (
    div,
    exact_sqrt,
    f,
    k,
    mul,
    one_plus,
    small_power,
    stability_rule,
    view_of,
)


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
        r = exact_sqrt(c)
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
    if small_power(y):
        return None
    err = make("two_sum_err", p, q)  # (one op: no rule may "simplify" an error-free transformation)
    kk = mul(y, div(err, s))
    # Only a finite, nonzero power is corrected: where s**y has under- or overflowed, exp(kk) may
    # have overflowed the other way ((1 - 8e-4)**1e20 is 0 and exp(kk) inf), and 0 * inf is NaN
    # where the answer is 0 (or inf * 0 where it is inf); the power alone is right there.
    ok = make("and", f("isfinite", kk), make("and", f("isfinite", node), make("ne", node, k(0.0, node))))
    out = F.where(ok, mul(node, f("exp", kk)), node)
    F.freeze(node)
    return F.set_origin(out, ("pow1p", one_plus(p, q), y))
