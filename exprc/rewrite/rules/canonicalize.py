"""Canonical forms, so that later patterns match however a formula was written.

Every rule here is exact in IEEE arithmetic (NaN, Inf and the sign of zero
included), so canonicalization never changes a result.  The canonical form:

* **subtraction is addition of a negation**: ``x - y`` becomes ``x + neg(y)``
  (``x - y`` and ``x + (-y)`` round identically); ``x - c`` becomes ``x + (-c)``.
* **``neg`` stays its own op** and is pulled *out* of products and quotients:
  ``(-a) * b`` becomes ``-(a * b)``, ``(-a) * (-b)`` becomes ``a * b``, ``x * -1``
  becomes ``-x``.  Never ``mul(-1, x)``: that is PyTensor's bug, which hid ``neg``
  from every pattern looking for it.  ``neg`` is *not* pushed into sums:
  ``-(a + b)`` and ``(-a) + (-b)`` differ in the sign of a zero result.
* **division stays ``truediv``** (``x / y`` and ``x * (1/y)`` round differently),
  except division by a power of two, which becomes the exact multiplication
  (``x / 2`` is ``x * 0.5``); ``reciprocal(x)`` and ``x ** -1`` become ``1 / x``.
* ``x * x`` is ``square(x)``; a constant operand of ``+`` or ``*`` goes on the
  right; ``abs`` of a result that cannot be negative (``exp``, ``square`` …) is dropped.
* ``stop_gradient(x)`` is ``x`` (it matters only to :func:`exprc.grad`, which differentiates
  the graph before any optimization).
* sums and products are **not** reassociated in the graph (that would change
  rounding); instead :func:`exprc.rewrite.forms.sum_view` flattens ``+``, ``-``,
  ``neg`` and constant factors and gathers the constants, exactly, when a rule
  matches.

The ``specialize`` pass (last) turns ``x + neg(y)`` back into ``x - y`` and
``x + (-c)`` into ``x - c``: one op fewer, and the same bits.
"""

from __future__ import annotations

import math

import numpy as np

from exprc.graph import Node
from exprc.ops import OPS
from exprc.ops.shape import getitem_order
from exprc.rewrite.core import C, P, X, constant_value, rewrite_rule
from exprc.rewrite.forms import const, make
from exprc.types import is_float

_CANON = ("canonicalize",)
_SPEC = ("specialize",)


def _k(node: Node) -> bool:
    return node.op == "constant"


def _node(op: str, inputs: tuple, like: Node) -> Node:
    """``op(*inputs)`` with ``like``'s type, skipping type inference: only for rewrites that keep
    the operands' dtypes and the broadcast shape (the hot rules below)."""
    return Node(op, inputs, (), like.type)


@rewrite_rule("sub_to_add_neg", _CANON, P("sub", X("x"), X("y")))
def sub_to_add_neg(node: Node, x: Node, y: Node) -> Node | None:
    """x - y -> x + neg(y) (exact: both round x - y once)."""
    if _k(x) and _k(y):
        return None  # constant folding's job
    ny = make("neg", y) if _k(y) else _node("neg", (y,), y)
    return _node("add", (x, ny), node)


@rewrite_rule("reciprocal_to_div", _CANON, P("reciprocal", X("x")))
def reciprocal_to_div(node: Node, x: Node) -> Node:
    """reciprocal(x) -> 1 / x (the same C expression)."""
    return make("truediv", const(1.0, node), x)


@rewrite_rule("pow_minus_one_to_div", _CANON, P("pow", X("x"), C(-1)))
def pow_minus_one_to_div(node: Node, x: Node) -> Node | None:
    """x ** -1 -> 1 / x (floats; pow is correctly rounded there, as is the division)."""
    return make("truediv", const(1.0, node), x) if is_float(node.dtype) else None


@rewrite_rule("mul_self_to_square", _CANON, P("mul", X("x"), X("x")))
def mul_self_to_square(node: Node, x: Node) -> Node:
    """x * x -> square(x) (square renders as x * x)."""
    return make("square", x) if node.dtype != "bool" else None


@rewrite_rule("mul_minus_one_to_neg", _CANON, P("mul", X("x"), C(-1)))
def mul_minus_one_to_neg(node: Node, x: Node) -> Node | None:
    """x * -1 -> neg(x) (the canonical negation; never the other way round)."""
    return make("neg", x) if not _k(x) else None


@rewrite_rule("neg_out_of_mul", _CANON, P("mul", P("neg", X("a")), X("b")))
def neg_out_of_mul(node: Node, a: Node, b: Node) -> Node | None:
    """(-a) * b -> -(a * b); (-a) * (-b) -> a * b; (-a) * c -> a * (-c).  Exact: the sign of
    a product is the exclusive or of the operand signs."""
    if b.op == "neg":
        return make("mul", a, b.inputs[0])
    if _k(b):
        return make("mul", a, make("neg", b))
    return make("neg", make("mul", a, b))


@rewrite_rule("neg_out_of_div", _CANON, P("truediv", X("a"), X("b")))
def neg_out_of_div(node: Node, a: Node, b: Node) -> Node | None:
    """(-a) / b -> -(a / b); a / (-b) -> -(a / b); (-a) / (-b) -> a / b (exact)."""
    na, nb = a.op == "neg", b.op == "neg"
    if na and nb:
        return make("truediv", a.inputs[0], b.inputs[0])
    if na:
        if _k(b):
            return make("truediv", a.inputs[0], make("neg", b))
        return make("neg", make("truediv", a.inputs[0], b))
    if nb:
        if _k(a):
            return make("truediv", make("neg", a), b.inputs[0])
        return make("neg", make("truediv", a, b.inputs[0]))
    return None


@rewrite_rule("div_pow2_to_mul", _CANON, P("truediv", X("x"), C(name="c")))
def div_pow2_to_mul(node: Node, x: Node, c: Node) -> Node | None:
    """x / 2**k -> x * 2**-k when both constants are normal numbers (exact)."""
    v = constant_value(c)
    if not is_float(node.dtype) or _k(x) or v is None or v == 0 or not math.isfinite(v):
        return None
    m, _ = math.frexp(abs(v))
    inv = 1.0 / v
    info = np.finfo(node.dtype)
    if m != 0.5 or not (float(info.tiny) <= abs(inv) <= float(info.max)) or abs(v) < float(info.tiny):
        return None
    return make("mul", x, const(inv, node))


@rewrite_rule("constant_to_right", _CANON, P(("add", "mul"), C(name="c"), X("x")))
def constant_to_right(node: Node, c: Node, x: Node) -> Node | None:
    """c + x -> x + c, c * x -> x * c (one canonical operand order)."""
    if node.inputs[0] is not c or _k(x):
        return None
    return _node(node.op, (x, c), node)


_NONNEGATIVE = ("exp", "exp2", "cosh", "square", "sigmoid", "softplus", "abs")


@rewrite_rule("abs_of_nonnegative", _CANON, P("abs", X("x")))
def abs_of_nonnegative(node: Node, x: Node) -> Node | None:
    """abs(x) -> x where x cannot be negative (exp, square, …); abs(-x) -> abs(x)."""
    if x.op in _NONNEGATIVE and is_float(node.dtype):
        return x
    if x.op == "neg":
        return make("abs", x.inputs[0])
    return None


@rewrite_rule("log_into_where", _CANON, P("log", P("where", X("c"), X("a"), X("b"))))
def log_into_where(node: Node, c: Node, a: Node, b: Node) -> Node | None:
    """log(where(c, 1, b)) -> where(c, 0, log(b)) (either branch 1; exact): the log of a pow's gradient,
    log(where(x == 0, 1, x)), is then log(x), which stability rules read (log(1 + u) -> log1p(u))."""
    if not is_float(node.dtype):
        return None
    for one, other, first in ((a, b, True), (b, a, False)):
        # (a 0-d 1 of the result's dtype: the where broadcasts 0 and log(other) to the same shape)
        if one.op == "constant" and one.value.shape == () and one.dtype == node.dtype and float(one.value) == 1.0:
            zero, logged = const(0.0, one), make("log", other)
            return make("where", c, zero, logged) if first else make("where", c, logged, zero)
    return None


@rewrite_rule("getitem_to_dimshuffle", _CANON, P("getitem", X("x")))
def getitem_to_dimshuffle(node: Node, x: Node) -> Node | None:
    """x[:, None] (full slices and new axes only) -> dimshuffle(x, (0, 'x')): the same view, in the
    spelling rules read (softmax_from_exp's denominator sum(exp(z), axis=1)[:, None])."""
    order = getitem_order(node)
    if order is None or "x" not in order:
        return None  # (x[:, :] is x's own view; the shape rules take it)
    out = make("dimshuffle", x, order=order)
    return out if out.type == node.type else None


@rewrite_rule("stop_gradient_to_identity", _CANON, P("stop_gradient", X("x")))
def stop_gradient_to_identity(node: Node, x: Node) -> Node:
    """stop_gradient(x) -> x: the identity on values (it only steers exprc.grad, which runs on
    unoptimized graphs), so compiled code never pays for it."""
    return x


def _operand_of(b: Node, a: Node, depth: int = 8) -> bool:
    """``b`` is ``a`` or (within ``depth`` levels) an operand of elementwise ``a``: its shape
    broadcasts to ``a``'s."""
    level = [a]
    for _ in range(depth + 1):
        if any(n is b for n in level):
            return True
        level = [i for n in level if OPS[n.op].kind == "elemwise" for i in n.inputs]
        if not level:
            return False
    return False


@rewrite_rule("sum_to_twice", _CANON, P("sum_to", P("sum_to", X("g"), X("a")), X("b")))
def sum_to_twice(node: Node, g: Node, a: Node, b: Node) -> Node | None:
    """sum_to(sum_to(g, a), b) -> sum_to(g, b) when b broadcasts to a (the gradient of an operand
    of an operand): the axes a was broadcast along are among b's, so one reduction does both.  A
    gradient step then has one call-time decision instead of two in a row, which the C planner
    can turn into an alias (nested, the outer one ran as a NumPy step on every call)."""
    return make("sum_to", g, b) if _operand_of(b, a) else None


# -- specialize: back to the cheapest equivalent form -------------------------------------
@rewrite_rule("add_neg_to_sub", _SPEC, P("add", X("x"), P("neg", X("y"))))
def add_neg_to_sub(node: Node, x: Node, y: Node) -> Node:
    """x + neg(y) -> x - y (the same bits, one op fewer)."""
    return _node("sub", (x, y), node)


@rewrite_rule("add_negative_constant_to_sub", _SPEC, P("add", X("x"), C(name="c", signbit=True)))
def add_negative_constant_to_sub(node: Node, x: Node, c: Node) -> Node | None:
    """x + (-c) -> x - c for a constant c > 0 (exact; reads as written)."""
    v = constant_value(c)
    if _k(x) or v is None or v == 0 or math.isnan(v) or not is_float(node.dtype) and v == np.iinfo(node.dtype).min:
        return None
    return _node("sub", (x, make("neg", c)), node)
