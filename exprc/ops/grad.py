"""Gradient rules: ``grad(node, g) -> one gradient per operand`` for every built-in op.

A rule maps the gradient ``g`` of a node's result to one entry per operand: its gradient, None
(zero), or a function of no arguments building it (called only for operands that need one).
:mod:`exprc.autodiff` applies the rules in reverse topological order; for elementwise ops it
also sums each result over the axes its operand was broadcast along and casts it to the
operand's dtype.

Rules build graphs with the user API (:mod:`exprc.api`), which itself sits on the op rows, so
the rules live here, above both, and are attached to the rows (:func:`~exprc.ops.table.grad_rule`)
when :mod:`exprc.autodiff` imports this module: the rows never import the API.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from exprc import api as A
from exprc.graph import Node
from exprc.ops.elemwise import erfcx_series, everywhere_guard
from exprc.ops.gradshape import count, sum_to, sum_to_operand, zeros_like
from exprc.ops.index import shift_index
from exprc.ops.table import OPS, GradRule, cast, grad_rule


# -- elementwise -------------------------------------------------------------------------------
def _unary_rule(deriv: Callable[[Node, Node], Node]) -> GradRule:
    """The rule ``g * f'(x)`` of a unary op; ``deriv(x, y)`` gets the operand and the result."""
    return lambda node, g: (g * deriv(node.inputs[0], node),)


_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)
_DERIVATIVES: dict[str, Callable[[Node, Node], Node]] = {  # f'(x), given x and y = f(x)
    "abs": lambda x, y: A.sign(x),  # subgradient 0 at 0
    "square": lambda x, y: 2.0 * x,
    "reciprocal": lambda x, y: -A.square(y),
    "exp": lambda x, y: y,
    "exp2": lambda x, y: y * math.log(2),
    "expm1": lambda x, y: A.exp(x),  # (not y + 1: that is 0 for x < -37 and loses bits from x < -1)
    "log": lambda x, y: 1.0 / x,
    "log2": lambda x, y: 1.0 / (x * math.log(2)),
    "log10": lambda x, y: 1.0 / (x * math.log(10)),
    "log1p": lambda x, y: 1.0 / (x + 1.0),
    "sqrt": lambda x, y: 0.5 / y,
    "cbrt": lambda x, y: 1.0 / (3.0 * A.square(y)),
    "sin": lambda x, y: A.cos(x),
    "cos": lambda x, y: -A.sin(x),
    "tan": lambda x, y: 1.0 + A.square(y),
    "arcsin": lambda x, y: 1.0 / A.sqrt((1.0 - x) * (1.0 + x)),
    "arccos": lambda x, y: -1.0 / A.sqrt((1.0 - x) * (1.0 + x)),
    "arctan": lambda x, y: 1.0 / (1.0 + A.square(x)),
    "sinh": lambda x, y: A.cosh(x),
    "cosh": lambda x, y: A.sinh(x),
    "tanh": lambda x, y: 1.0 - A.square(y),
    "arcsinh": lambda x, y: 1.0 / A.hypot(x, 1.0),
    "arccosh": lambda x, y: 1.0 / A.sqrt((x - 1.0) * (x + 1.0)),
    "arctanh": lambda x, y: 1.0 / ((1.0 - x) * (1.0 + x)),
    "sigmoid": lambda x, y: y * A.sigmoid(-x),  # (not y * (1 - y): 1 - y is 0 for x > 37 and loses bits from x > 1)
    "softplus": lambda x, y: A.sigmoid(x),  # exactly 1 and 0 far out, no overflow
    "erf": lambda x, y: _TWO_OVER_SQRT_PI * A.exp(-A.square(x)),
    "erfc": lambda x, y: -_TWO_OVER_SQRT_PI * A.exp(-A.square(x)),
}
if "log1mexp" in OPS:  # log(1 - exp(x)): d/dx = -1 / expm1(-x), no cancellation near 0
    _DERIVATIVES["log1mexp"] = lambda x, y: -1.0 / A.expm1(-x)


def _erfcx_derivative(x: Node, y: Node) -> Node:
    """erfcx'(x) = 2x erfcx(x) - 2/sqrt(pi), which cancels for large x (to -1/(sqrt(pi) x**2)): from
    x = 7 up it is 2/sqrt(pi) (S(v) - 1), S the asymptotic series of x sqrt(pi) erfcx(x) in
    v = 1/(2x**2) with its 1 left out (30 terms: the 31st is 1e-17 of v at x = 7).  Below 7 the
    formula loses up to log2(2x**2) bits, 6.6 at x = 7, to the cancellation of erfcx's own rounding."""
    v = 0.5 / x / x  # (not 0.5 / x**2: x**2 overflows from 1.3e154, v only underflows)
    s = v * _ERFCX_SLOPE[0] + _ERFCX_SLOPE[1]
    for c in _ERFCX_SLOPE[2:]:
        s = s * v + c
    return A.where(x >= 7.0, _TWO_OVER_SQRT_PI * (s * v), 2.0 * x * y - _TWO_OVER_SQRT_PI)


#: The asymptotic series of x sqrt(pi) erfcx(x) - 1 over v: k = 30 down to 1 (its 1 left out).
_ERFCX_SLOPE = erfcx_series(31)[:-1]
_DERIVATIVES["erfcx"] = _erfcx_derivative
for _name, _deriv in _DERIVATIVES.items():
    grad_rule(_name)(_unary_rule(_deriv))
# Piecewise constant, or bool/integer results: zero gradient.
grad_rule("sign", "floor", "ceil", "round", "isnan", "isinf", "isfinite", "invert")(lambda node, g: (None,))
grad_rule("floordiv", "lt", "le", "gt", "ge", "eq", "ne", "and", "or", "xor")(lambda node, g: (None, None))
grad_rule("neg")(lambda node, g: (-g,))
grad_rule("add")(lambda node, g: (g, g))
grad_rule("sub")(lambda node, g: (g, lambda: -g))
grad_rule("mul")(lambda node, g: (lambda: g * node.inputs[1], lambda: g * node.inputs[0]))
grad_rule("truediv")(lambda node, g: (lambda: g / node.inputs[1], lambda: -(g * node) / node.inputs[1]))
grad_rule("mod")(lambda node, g: (g, lambda: -(g * A.floor_divide(*node.inputs))))
grad_rule("hypot")(lambda node, g: (lambda: g * (node.inputs[0] / node), lambda: g * (node.inputs[1] / node)))
grad_rule("logaddexp")(lambda node, g: (lambda: g * A.exp(node.inputs[0] - node),
                                        lambda: g * A.exp(node.inputs[1] - node)))


@grad_rule("pow")
def _grad_pow(node: Node, g: Node) -> tuple:
    """d/dx = y x**(y-1) (0 where y == 0); d/dy = log(x) x**y (0 where x == 0, as JAX)."""
    x, y = node.inputs
    return (lambda: g * _pow_derivative(node, x, y),
            lambda: g * (node * A.log(A.where(A.equal(x, 0), 1.0, x))))


def _pow_derivative(node: Node, x: Node, y: Node) -> Node:
    """y x**(y-1), 0 where y == 0.  For a constant exponent whose y - 1 rounds (0.2 - 1 needs 55
    bits), y * (x**y / x) where x**y is a finite normal number: the rounding of y - 1 would cost
    |log x| ulps (8 bits at x = 1e-296)."""
    p = y.value.reshape(()) if y.op == "constant" and y.value.size == 1 and y.dtype in ("float32", "float64") else None
    plain = A.where(A.equal(y, 0), 0.0, y * x ** (y - 1.0))
    if p is None or not np.isfinite(p) or Fraction(float(p)) - 1 == Fraction(float(p - p.dtype.type(1))):
        return plain  # (y - 1 is exact in y's dtype: 2, 0.5, -1.5 …)
    tiny = float(np.finfo(node.dtype).tiny)
    ok = A.isfinite(node) & (A.abs(node) >= tiny) & A.not_equal(x, 0)
    return A.where(ok, y * (node / x), plain)


@grad_rule("arctan2")
def _grad_arctan2(node: Node, g: Node) -> tuple:
    """arctan2(y, x): d/dy = x / r**2, d/dx = -y / r**2 with r = hypot(x, y) (no overflow)."""
    y, x = node.inputs
    return lambda: g * (x / A.hypot(x, y) / A.hypot(x, y)), lambda: g * (-y / A.hypot(x, y) / A.hypot(x, y))


@grad_rule("maximum", "minimum")
def _grad_extremum(node: Node, g: Node) -> tuple:
    """The selected operand gets the gradient; at a tie each operand gets half (as JAX)."""
    a, b = node.inputs
    wins = A.greater(a, b) if node.op == "maximum" else A.less(a, b)
    loses = A.less(a, b) if node.op == "maximum" else A.greater(a, b)
    return (lambda: A.where(wins, g, A.where(A.equal(a, b), g * 0.5, 0.0)),
            lambda: A.where(loses, g, A.where(A.equal(a, b), g * 0.5, 0.0)))


# -- where, cast, fill -------------------------------------------------------------------------
# (an everywhere-guard differentiates through its slow branch alone: the stable form's gradient, as
# without the guard, and no masked copy of the fast branch's for a kernel to compute)
grad_rule("where")(lambda node, g: (None, g, None) if everywhere_guard(node) else
                   (None, lambda: A.where(node.inputs[0], g, 0.0), lambda: A.where(node.inputs[0], 0.0, g)))
grad_rule("cast")(lambda node, g: (g if node.inputs[0].dtype in ("float32", "float64") else None,))
grad_rule("fill")(lambda node, g: (None, g))


# -- reductions --------------------------------------------------------------------------------
def _keep(node: Node, v: Node) -> Node:
    """``v`` (broadcasting to the result of the reduction ``node``) made to broadcast to its
    operand: the reduced axes kept as size 1 (a 0-d ``v`` broadcasts to anything already)."""
    return v if node.arg("keepdims") or v.ndim == 0 else A.expand_dims(v, node.arg("axis"))


@grad_rule("sum", "mean")
def _grad_sum(node: Node, g: Node) -> tuple:
    """The gradient broadcast back over the reduced axes (kept 0-d when it can: autodiff
    broadcasts gradients lazily, so no array of the operand's shape is built for it)."""
    if node.op == "mean":
        g = g / cast(count(node.inputs[0], node.arg("axis")), g.dtype)
    return (_keep(node, g),)


@grad_rule("max", "min")
def _grad_max(node: Node, g: Node) -> tuple:
    """Subgradient: the gradient is split evenly among the elements equal to the extremum (as JAX)."""
    x, axes = node.inputs[0], node.arg("axis")
    mask = cast(A.equal(x, _keep(node, node)), x.dtype)
    return (_keep(node, g) * (mask / A.sum(mask, axes, keepdims=True)),)


@grad_rule("prod")
def _grad_prod(node: Node, g: Node) -> tuple:
    """prod(x)/x_i without dividing by zero: exact with one zero (the product of the others), 0 with more."""
    x, axes = node.inputs[0], node.arg("axis")
    zero = A.equal(x, 0)
    nzeros = A.sum(zero, axes, keepdims=True)
    others = A.prod(A.where(zero, 1.0, x), axes, keepdims=True)
    d = A.where(zero, A.where(A.equal(nzeros, 1), others, 0.0), A.where(A.equal(nzeros, 0), _keep(node, node) / x, 0.0))
    return (_keep(node, g) * d,)


grad_rule("all", "any", "argmax", "argmin")(lambda node, g: (None,))


# -- shape ops ---------------------------------------------------------------------------------
@grad_rule("dimshuffle")
def _grad_dimshuffle(node: Node, g: Node) -> tuple:
    """The inverse dimshuffle: inserted axes dropped, permuted axes put back, dropped axes re-inserted."""
    if g.ndim == 0:
        return (g,)
    where_ = {o: j for j, o in enumerate(node.arg("order")) if o != "x"}
    return (A.dimshuffle(g, [where_.get(d, "x") for d in range(node.inputs[0].ndim)]),)


@grad_rule("reshape", "reshape_like")
def _grad_reshape(node: Node, g: Node) -> tuple:
    x = node.inputs[0]
    if x.type.shape.count(None) <= 1:
        return (A.reshape(g, [-1 if s is None else s for s in x.type.shape]),) + (None,) * (len(node.inputs) - 1)
    return (OPS["reshape_like"].make((g, x), {}),) + (None,) * (len(node.inputs) - 1)


@grad_rule("broadcast_to")
def _grad_broadcast_to(node: Node, g: Node) -> tuple:
    return (sum_to_operand(g, node.inputs[0], node),)


# g, of the model's shape, broadcasts to the operand's where sum_to reduced; where the operand was smaller than
# the model (a size 1 at call time: sum_to leaves it, and it broadcasts as the model), g is summed to it
grad_rule("sum_to")(lambda node, g: (sum_to(g, node.inputs[0]), None))


@grad_rule("concatenate", "split_part")
def _grad_concatenate(node: Node, g: Node) -> tuple:
    """Slices of the gradient (views when sizes are static; split_part otherwise).  The gradient of
    split_part is its part placed among zeros."""
    axis = node.arg("axis")
    if node.op == "split_part":
        parts, which = list(node.inputs[1:]), node.arg("which")
        pieces = [g if j == which else zeros_like(p, g.dtype) for j, p in enumerate(parts)]
        return (A.concatenate(pieces, axis),) + (None,) * len(parts)
    sizes = [i.type.shape[axis] for i in node.inputs]
    if None in sizes:
        return tuple((lambda j=j: OPS["split_part"].make((g, *node.inputs), {"axis": axis, "which": j}))
                     for j in range(len(sizes)))
    ends = np.cumsum(sizes).tolist()
    return tuple((lambda n=n, e=e: A.getitem(g, (slice(None),) * axis + (slice(e - n, e),)))
                 for n, e in zip(sizes, ends))


@grad_rule("getitem")
def _grad_getitem(node: Node, g: Node) -> tuple:
    """Scatter-add into zeros of the operand's shape."""
    return (OPS["inc_subtensor"].make((zeros_like(node.inputs[0]), g), dict(node.attrs)),)


@grad_rule("inc_subtensor")
def _grad_inc_subtensor(node: Node, g: Node) -> tuple:
    return g, lambda: sum_to(OPS["getitem"].make((g,), dict(node.attrs)), node.inputs[1])


grad_rule("shape")(lambda node, g: (None,))


@grad_rule("subtensor")
def _grad_subtensor(node: Node, g: Node) -> tuple:
    """Scatter-add into zeros of the operand's shape (repeated indices accumulate); none for indices."""
    x, ops = node.inputs[0], node.inputs[1:]
    labels = node.arg("labels")
    attrs = {"index": shift_index(node.arg("index"), 1), "mode": "inc",
             "labels": (labels[0], "gradient", *labels[1:]) if labels else ()}
    return (lambda: OPS["scatter"].make((zeros_like(x), g, *ops), attrs), *([None] * len(ops)))


def _may_repeat(node: Node) -> bool:
    """Whether a scatter's index may name a position twice: an integer array that is not a constant
    (with others: constants whose broadcast tuples are not distinct) of entries all of one sign
    (-1 and n - 1 are one position)."""
    items = node.arg("index")
    arrays = [node.inputs[it[1]] for it in items if it[0] == "A"]
    if not arrays:
        return False
    if any(a.op != "constant" for a in arrays) or any(it[0] == "M" for it in items):
        return True
    vals = [np.asarray(a.value) for a in arrays]
    if any((v < 0).any() and (v >= 0).any() for v in vals):
        return True
    rows = np.stack([v.reshape(-1) for v in np.broadcast_arrays(*vals)], axis=1)
    return len(np.unique(rows, axis=0)) != len(rows)


def _ordinals(x: Node) -> Node:
    """Each element's position in row-major order, in ``x``'s shape (int64; sizes known at call time)."""
    from exprc.creation import arange

    shp, k = A.shape(x), x.ndim
    ordinal, stride = None, None
    for ax in reversed(range(k)):
        size = A.getitem(shp, ax)
        r = A.dimshuffle(arange(size), ["x"] * ax + [0] + ["x"] * (k - ax - 1))
        r = r if stride is None else r * stride
        ordinal = r if ordinal is None else ordinal + r
        stride = size if stride is None else stride * size
    return A.as_node(np.int64(0)) if ordinal is None else ordinal


def _last_writes(node: Node, part_attrs: dict, part: Node) -> Node:
    """Where ``set`` at a repeated index kept the write (NumPy's: the last): ordinals written as the
    values were, read back; an element kept its write where the ordinal read there is its own.  With
    one index array, over the indexed axis alone (its length plus the index's, not x's size: a
    gradient of 100 rows set into a 4000 x 500 array filled 2e6 ordinals per call), the result
    placed on the part's axes where the array's go."""
    from exprc.creation import arange, full_like

    x, ops, items = node.inputs[0], node.inputs[2:], node.arg("index")
    arrays = [i for i, it in enumerate(items) if it[0] in ("A", "M")]
    if len(arrays) == 1 and items[arrays[0]][0] == "A":
        at = arrays[0]
        idx = node.inputs[items[at][1]]
        axis = sum(1 for it in items[:at] if it[0] != "n")  # (the axes of x the items before it index)
        # (NumPy's placement: ints beside the array are advanced indices too; together they put the
        # array's axes where the first of them is, apart before every other axis)
        adv = [i for i, it in enumerate(items) if it[0] in ("A", "i", "I")]
        apart = adv != list(range(adv[0], adv[-1] + 1))
        before = 0 if apart else sum(1 for it in items[:adv[0]] if it[0] in ("n", "s", "S"))
        order = ["x"] * before + list(range(idx.ndim)) + ["x"] * (part.ndim - before - idx.ndim)
        ordinal = _ordinals(idx)
        slots = arange(A.getitem(A.shape(x), axis)) * 0 - 1
        attrs = {"index": (("A", 2),), "mode": "set", "labels": ()}
        winner = OPS["scatter"].make((slots, ordinal, idx), attrs)
        kept = A.equal(OPS["subtensor"].make((winner, idx), {"index": (("A", 1),), "labels": ()}), ordinal)
        return A.dimshuffle(kept, order)
    ordinal = _ordinals(part)
    winner = OPS["scatter"].make((full_like(x, -1, "int64"), ordinal, *ops), dict(node.attrs))
    return A.equal(OPS["subtensor"].make((winner, *ops), part_attrs), ordinal)


@grad_rule("scatter")
def _grad_scatter(node: Node, g: Node) -> tuple:
    """inc: g flows to x unchanged; set: to x except at the index (overwritten).  The value gets
    g at the index, summed over what it was broadcast along; with a position written twice ("set"
    keeps the last write, as NumPy), only at the writes kept (_last_writes: Theano's and JAX's count
    every write, whose gradient is not the function's)."""
    v, ops = node.inputs[1], node.inputs[2:]
    labels = node.arg("labels")
    part_attrs = {"index": shift_index(node.arg("index"), -1),
                  "labels": (labels[0], *labels[2:]) if labels else ()}

    def for_x() -> Node:
        if node.arg("mode") == "inc":
            return g
        return OPS["scatter"].make((g, zeros_like(v), *ops), dict(node.attrs))

    def for_v() -> Node:
        index = part_attrs["index"]
        part = OPS["subtensor"].make((g, *ops), part_attrs) if ops else OPS["getitem"].make((g,), {"index": index})
        if node.arg("mode") == "set" and _may_repeat(node):
            part = A.where(_last_writes(node, part_attrs, part), part, zeros_like(part))
        return sum_to(part, v)

    return (for_x, for_v, *([None] * len(ops)))


# -- linear algebra ----------------------------------------------------------------------------
@grad_rule("matmul")
def _grad_matmul(node: Node, g: Node) -> tuple:
    """G @ B^T and A^T @ G on the operands promoted to matrices, summed over broadcast batch axes."""
    a, b = node.inputs
    if a.ndim == 1 and b.ndim == 1:
        return (lambda: g * b), (lambda: g * a)
    a2 = a if a.ndim > 1 else A.expand_dims(a, 0)
    b2 = b if b.ndim > 1 else A.expand_dims(b, -1)
    g2 = g if a.ndim > 1 else A.expand_dims(g, g.ndim - (1 if b.ndim > 1 else 0))
    g2 = g2 if b.ndim > 1 else A.expand_dims(g2, g2.ndim)

    def swap(t: Node) -> Node:
        return A.dimshuffle(t, list(range(t.ndim - 2)) + [t.ndim - 1, t.ndim - 2])

    def ga() -> Node:
        r = sum_to(A.matmul(g2, swap(b2)), a2, dynamic_axes=range(a2.ndim - 2))
        return r if a.ndim > 1 else A.squeeze(r, 0)

    def gb() -> Node:
        r = sum_to(A.matmul(swap(a2), g2), b2, dynamic_axes=range(b2.ndim - 2))
        return r if b.ndim > 1 else A.squeeze(r, -1)

    return ga, gb


# -- stop_gradient (issue 14) ------------------------------------------------------------------
# The identity with a zero gradient.  exprc.autodiff already stops its sweep at these nodes (what
# lies only below one is not differentiated at all); the rule is for anyone applying rules directly.
grad_rule("stop_gradient")(lambda node, g: (None,))
grad_rule("print")(lambda node, g: (g,))  # (the identity: what it prints is no part of the gradient)
grad_rule("rare")(lambda node, g: (None,))  # a bool condition: no gradient
# (a + b) - fl(a + b) is flat between roundings: a rounding error carried to first order has no gradient
grad_rule("two_sum_err")(lambda node, g: (None, None))
grad_rule("two_prod_err")(lambda node, g: (None, None))


# -- creation ops: alloc, arange (issue 14 item 4) --------------------------------------------
# Sizes get no gradient.  alloc broadcasts its value: the value's gradient is g summed back to it.
grad_rule("alloc")(lambda node, g: (lambda: sum_to(g, node.inputs[0]),) + (None,) * (len(node.inputs) - 1))


@grad_rule("arange")
def _grad_arange(node: Node, g: Node) -> tuple:
    """A float arange is ``start + i * step``: ``sum(g)`` for start, ``sum(g * i)`` for step, none
    for stop (it only decides the length), as Theano's; an integer one has no gradient."""
    if node.dtype not in ("float32", "float64"):
        return None, None, None

    def for_step() -> Node:
        i = OPS["arange"].make((A.constant(0, "int64"), A.shape(node)[0], A.constant(1, "int64")), {"dtype": node.dtype})
        return A.sum(g * i)

    return (lambda: A.sum(g)), None, for_step
