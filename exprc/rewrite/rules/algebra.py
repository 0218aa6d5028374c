"""Algebraic identities that are exact in IEEE arithmetic (NaN, Inf and the sign
of zero included).  ``x + 0.0`` is *not* simplified for floats: ``-0.0 + 0.0``
is ``+0.0``; only ``x + (-0.0)`` is exact."""

from __future__ import annotations

import numpy as np

from exprc.graph import Node, constant_node
from exprc.ops import OPS, cast
from exprc.rewrite.core import C, P, X, constant_value, rewrite_rule
from exprc.types import is_float

_CANON = ("canonicalize", "algebra")


@rewrite_rule("neg_neg", _CANON, P("neg", P("neg", X("x"))))
def neg_neg(node: Node, x: Node) -> Node:
    """--x -> x"""
    return x


@rewrite_rule("mul_one", _CANON, P("mul", X("x"), C(1)))
def mul_one(node: Node, x: Node) -> Node:
    """x * 1 -> x"""
    return x


@rewrite_rule("add_zero", _CANON, P("add", X("x"), C(0, name="zero")))
def add_zero(node: Node, x: Node, zero: Node) -> Node | None:
    """x + (-0.0) -> x for floats; x + 0 -> x for integers."""
    if is_float(node.dtype) and not np.signbit(constant_value(zero)):
        return None
    return x


@rewrite_rule("sub_zero", _CANON, P("sub", X("x"), C(0, signbit=False)))
def sub_zero(node: Node, x: Node) -> Node:
    """x - (+0) -> x"""
    return x


@rewrite_rule("div_one", _CANON, P("truediv", X("x"), C(1)))
def div_one(node: Node, x: Node) -> Node:
    """x / 1 -> x"""
    return x


@rewrite_rule("pow_one", _CANON, P("pow", X("x"), C(1)))
def pow_one(node: Node, x: Node) -> Node:
    """x ** 1 -> x"""
    return x


@rewrite_rule("pow_two", _CANON, P("pow", X("x"), C(2)))
def pow_two(node: Node, x: Node) -> Node:
    """x ** 2 -> square(x) (correctly rounded, and cheaper)"""
    return OPS["square"].make((x,), {})


@rewrite_rule("reduce_no_axes", _CANON, P(("sum", "prod", "mean", "max", "min", "all", "any"), X("x")))
def reduce_no_axes(node: Node, x: Node) -> Node | None:
    """A reduction over no axis is a cast; a float sum or mean also adds its identity 0.0, as NumPy's
    does, which turns -0.0 into +0.0 (``x + 0.0`` is never simplified for floats)."""
    if node.arg("axis") != ():
        return None
    y = cast(x, node.dtype)
    if node.op in ("sum", "mean") and is_float(node.dtype):
        return OPS["add"].make((y, constant_node(np.zeros((), node.dtype))), {})
    return y


@rewrite_rule("dimshuffle_compose", _CANON, P("dimshuffle", P("dimshuffle", X("x"), name="inner")))
def dimshuffle_compose(node: Node, inner: Node, x: Node) -> Node:
    """dimshuffle(dimshuffle(x, a), b) -> dimshuffle(x, a∘b), or x when that is the identity."""
    a, b = inner.arg("order"), node.arg("order")
    order = tuple("x" if o == "x" else a[o] for o in b)
    if order == tuple(range(x.ndim)):
        return x
    return OPS["dimshuffle"].make((x,), {"order": order})


@rewrite_rule("where_constant_condition", _CANON, P("where", C(name="c"), X("a"), X("b")))
def where_constant_condition(node: Node, c: Node, a: Node, b: Node) -> Node:
    """where(True, a, b) -> a; where(False, a, b) -> b (the other branch is dead code)."""
    return a if constant_value(c) else b


@rewrite_rule("cast_cast_widen", _CANON, P("cast", P("cast", X("x"), name="inner")))
def cast_cast_widen(node: Node, inner: Node, x: Node) -> Node | None:
    """cast(cast(x, wider), t) -> cast(x, t) when the inner cast loses nothing."""
    lossless = {("bool", "int32"), ("bool", "int64"), ("bool", "float32"), ("bool", "float64"),
                ("int32", "int64"), ("int32", "float64"), ("float32", "float64")}
    if (x.dtype, inner.dtype) in lossless:
        return cast(x, node.dtype)
    return None
