"""Stability rules on ``log1p``, ``exp`` and ``expm1`` of each other: inverse pairs and their
complements (``log1p(exp x) -> softplus``, ``expm1(log1p x) -> x`` keeping the domain's NaN); and
the other inverse pairs whose composition amplifies the inner function's rounding (``tan(arctan x)``
near pi/2, ``sinh(arcsinh x)`` and ``cosh(arccosh x)`` for large x)."""

from __future__ import annotations

from exprc.graph import Node
from exprc.rewrite import forms as F
from exprc.rewrite.core import P, X
from exprc.rewrite.rules.stability._common import (
    f,
    k,
    nan_where,
    single,
    stability_rule,
)


@stability_rule("softplus_from_log1p_exp", P("log1p", P("exp", X("x"))))
def softplus_from_log1p_exp(node: Node, x: Node) -> Node:
    """log1p(exp(x)) -> softplus(x) (i.e. log(1 + exp(x)))."""
    return f("softplus", x)


@stability_rule("log1mexp_from_log1p", P("log1p", X("a")))
def log1mexp_from_log1p(node: Node, a: Node) -> Node | None:
    """log1p(-exp(x)) -> log1mexp(x)."""
    one = single(a)
    if one and one[0] == -1 and one[1].op == "exp":
        return f("log1mexp", one[1].inputs[0])
    return None


@stability_rule("log1p_neg_sigmoid", P("log1p", X("a")))
def log1p_neg_sigmoid(node: Node, a: Node) -> Node | None:
    """log1p(-sigmoid(x)) -> -softplus(x) (i.e. log(1 - sigmoid(x)))."""
    one = single(a)
    if one and one[0] == -1 and one[1].op == "sigmoid":
        return F.neg(f("softplus", one[1].inputs[0]))
    return None


def _inverse_pair(name: str, outer: str, inner: str, low: float | None, doc: str, high: float | None = None) -> None:
    """Register ``outer(inner(x)) -> x``, NaN for ``x < low`` or ``x > high`` (inner's domain kept;
    None: unbounded)."""

    def rule(node: Node, x: Node) -> Node:
        out = x if low is None else nan_where(x < k(low, x), x)
        return out if high is None else nan_where(x > k(high, x), out)

    rule.__doc__ = doc
    stability_rule(name, P(outer, P(inner, X("x"))))(rule)


_inverse_pair("log1p_expm1", "log1p", "expm1", None, "log1p(expm1(x)) -> x.")
_inverse_pair("exp_log", "exp", "log", 0.0, "exp(log(x)) -> x, NaN for x < 0 (the domain of log is kept).")
_inverse_pair("expm1_log1p", "expm1", "log1p", -1.0, "expm1(log1p(x)) -> x, NaN for x < -1.")
_inverse_pair("tan_arctan", "tan", "arctan", None,
              "tan(arctan(x)) -> x (for large x, arctan(x) rounds to a neighbour of pi/2, where tan is off by up "
              "to 62 bits; +-inf stays +-inf, the limit).")
_inverse_pair("sinh_arcsinh", "sinh", "arcsinh", None,
              "sinh(arcsinh(x)) -> x (the rounding of arcsinh(x) ~ log(2x) is worth 9 bits of the result at 1e300).")
_inverse_pair("cosh_arccosh", "cosh", "arccosh", 1.0,
              "cosh(arccosh(x)) -> x, NaN for x < 1 (the domain of arccosh is kept; 9 bits at 1e300).")
_inverse_pair("cos_arccos", "cos", "arccos", -1.0,
              "cos(arccos(x)) -> x, NaN for |x| > 1 (arccos(x) rounds near pi/2, and cos there is that rounding: "
              "6e-17 for x = 1e-20).", high=1.0)


@stability_rule("exp_log1p", P("exp", P("log1p", X("x"))), late=True)  # after c exp(log1p(x)) - c -> c x
def exp_log1p(node: Node, x: Node) -> Node:
    """exp(log1p(x)) -> 1 + x, NaN for x < -1 (the rounding of log1p(x) ~ log(x) is worth 9 bits of the
    result at 1e300; 0 at x = -1, as exp(-inf)).  Late: expm1_from_exp and expm1_log1p make
    2 exp(log1p(x)) - 2 exactly 2x first, which (1 + x) * 2 - 2 would not be."""
    return F.add(nan_where(x < k(-1.0, x), x), k(1.0, x))
