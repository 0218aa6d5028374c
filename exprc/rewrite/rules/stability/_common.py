"""What every stability rule shares: the registering decorator, small builders, guards, views.

:func:`stability_rule` registers a rule of this package (through
:func:`exprc.rewrite.core.rewrite_rule`, as every rule): the rule fires on float nodes only and
never on a frozen node (a subexpression an earlier rule built with care, such as an error-free
transformation).  :func:`guarded` is the contract's safety net: the stable form where it is
finite (or where ``safe`` holds), else the naive formula, frozen.  The helpers at the end read a
node as a sum of terms (:func:`view_of`) and are used by more than one family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

from exprc.graph import Node
from exprc.rewrite import forms as F
from exprc.rewrite.core import P, rewrite_rule
from exprc.rewrite.forms import SumView, build_sum, const, make, same_up_to_scale, sum_view

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
    tags = TAGS + (("late",) if late else ())

    def deco(fn: Callable[..., Node | None]) -> Callable[..., Node | None]:
        def replace(node: Node, **caps: Node) -> Node | None:
            if node.type.dtype not in FLOATS or F.is_frozen(node):  # (is_float, inline: a hot path)
                return None
            return fn(node, **caps)

        replace.__doc__ = fn.__doc__
        replace.__module__ = fn.__module__  # (where the rule comes from: core.register_rule reads it)
        if isinstance(pattern, P):
            rewrite_rule(name, tags, pattern, needs=needs)(replace)
        else:
            rewrite_rule(name, tags, ops=(pattern,) if isinstance(pattern, str) else pattern, needs=needs)(replace)
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


def nan_where(cond: Node | None, x: Node) -> Node:
    """NaN where ``cond`` holds, else ``x`` (``None``: never)."""
    return x if cond is None else F.where(cond, k(math.nan, x), x)


def _and(a: Node | None, b: Node | None) -> Node | None:
    return None if a is None or b is None else make("and", a, b)


def _or(a: Node | None, b: Node | None) -> Node | None:
    return b if a is None else (a if b is None else make("or", a, b))


#: Ops that are > 0 in exact arithmetic for every argument but -inf (exp(-inf) = 0 is a limit):
#: their float value may still be 0 or inf by under- or overflow, so comparing it with 0 misreads
#: the sign (-2 * exp(-800) is -0.0 in floats but negative, and log of it is NaN, not -inf).
POSITIVE_OPS = ("exp", "exp2", "sigmoid", "softplus")


def exact_sign(t: Node, depth: int = 3) -> tuple[Node | None, Node | None]:
    """``(t > 0, t < 0)`` in exact arithmetic as boolean nodes (``None``: never), read through
    chains of neg, square and abs (a loop: they can be thousands deep), exp-like factors and (up
    to ``depth`` levels, so the guard stays small) products; a plain float comparison elsewhere.
    NaN is neither (comparisons are false).  square(exp(-400)) is 0 in floats but > 0."""
    outer = []
    while t.op in ("neg", "square", "abs"):
        outer.append(t.op)
        t = t.inputs[0]
    if t.op in POSITIVE_OPS:
        a = t.inputs[0]
        pos, neg = a > k(-math.inf, a), None
    elif t.op == "mul" and depth > 0:
        (pa, na), (pb, nb) = exact_sign(t.inputs[0], depth - 1), exact_sign(t.inputs[1], depth - 1)
        pos, neg = _or(_and(pa, pb), _and(na, nb)), _or(_and(pa, nb), _and(na, pb))
    else:
        pos, neg = t > k(0.0, t), t < k(0.0, t)
    for op in reversed(outer):  # innermost first
        pos, neg = (neg, pos) if op == "neg" else (_or(pos, neg), None)  # square, abs: > 0 where nonzero
    return pos, neg


def exact_finite(t: Node) -> Node:
    """``t`` is finite in exact arithmetic (exp(800) is, though it overflows to inf)."""
    while t.op in ("neg", "abs", "square"):  # (a loop: such chains can be deep)
        t = t.inputs[0]
    if t.op in POSITIVE_OPS:
        a = t.inputs[0]
        return a < k(math.inf, a)
    return f("isfinite", t)


def negative_product(x: Node, y: Node, quotient: bool = False) -> Node | None:
    """Where ``x*y`` (``x/y``) is < 0 in exact arithmetic, however it rounds (-0.0, -inf): log and
    sqrt of it are NaN there, whatever log|x| + log|y| says.  A quotient by an infinite ``y`` is a
    limit, 0 (log gives -inf, as NumPy's log(-0.0)), so it counts only where ``y`` is finite.
    ``None``: never (``x`` and ``y`` cannot have opposite signs)."""
    (px, nx), (py, ny) = exact_sign(x), exact_sign(y)
    out = _or(_and(px, ny), _and(nx, py))
    return _and(out, exact_finite(y)) if quotient else out


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


def two_sum(a: Node, b: Node) -> tuple[Node, Node]:
    """(s, e) with s = fl(a + b) and a + b = s + e exactly (Knuth's TwoSum; finite s).  e is one op,
    ``two_sum_err``, which no rule sees through: the sum views would simplify its six adds back to
    0, and did when the gradient of a stable form was optimized again.  s is frozen for this pass."""
    return F.freeze(make("add", a, b)), make("two_sum_err", a, b)


def small_power(y: Node) -> bool:
    """``y`` is a constant of at most 4 in magnitude: (p + q)**y amplifies the base's rounding little."""
    yv = F.scalar_const(y) if y.op == "constant" else None
    return yv is not None and abs(yv) <= 4


def one_plus(p: Node, q: Node) -> Node | None:
    """``x`` where p + q is 1 + x or x + 1, else None."""
    return p if F.scalar_const(q) == 1.0 else (q if F.scalar_const(p) == 1.0 else None)


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


def exact_sqrt(c: Fraction) -> Fraction | None:
    if c <= 0:
        return None
    r = Fraction(math.sqrt(float(c)))
    return r if r * r == c else None


def single(node: Node) -> tuple[Fraction, Node] | None:
    v = view_of(node)
    return v.single() if v is not None else None


def sqrt_of(r: Node) -> SumView | None:
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
        if x is y:  # (one term: a view holds each term once, and x - hypot(x, x) came out -0.0)
            return SumView(((TWO, f("square", x)),), Fraction(0))
        return SumView(((ONE, f("square", x)), (ONE, f("square", y))), Fraction(0))
    return None


def finite_max(x: Node, axes: tuple) -> Node:
    """x's maximum over ``axes`` (kept), 0 where it is not finite: the shift of the stable
    logsumexp and softmax-weighted sums (inf - inf would be NaN; shifted by 0 the formula is the
    one as written, NaN or inf as it gives them)."""
    m = make("max", x, axis=axes, keepdims=True, identity=True)  # (-inf over an empty axis: ops/reduce.py)
    return F.where(f("isfinite", m), m, k(0.0, x))


def max_shifted(x: Node) -> bool:
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


def by_rows(x: Node, axes: tuple) -> bool:
    """Whether a reduction of ``x`` over ``axes`` is one a C row kernel computes (over the last axis
    of a float matrix), where a guard whose rare condition holds one value per row runs only its
    fast branch on the rows where the condition fails (render.py, ``render_rows``).  Elsewhere an
    everywhere-guard is lowered to its slow branch (``fusion.stable_branches``), so a rule adds one
    only where a row kernel can take it."""
    return (x.ndim == 2 and tuple(axes) == (1,) and x.dtype in ("float32", "float64")
            and x.type.shape[1] != 1)


def sum_of_exp(s: Node) -> tuple[Node, tuple, bool] | None:
    """(x, axes, keepdims) when ``s`` is sum(exp(x)) over ``axes``, possibly with the reduced axes
    re-inserted (a dimshuffle, a reshape) or left out where broadcasting puts them back: ``s``
    broadcasts against ``x`` as ``sum(exp(x), axes, keepdims=True)`` does, so ``exp(x) / s`` is a
    softmax.  (Not ``sum(exp(x), axis=1)[None, :]``, which divides column j by row j's sum.)"""
    chain = []
    while s.op == "dimshuffle" or s.op == "reshape":
        chain.append(s)
        s = s.inputs[0]
    if s.op != "sum" or s.inputs[0].op != "exp":
        return None
    x, axes = s.inputs[0].inputs[0], tuple(s.arg("axis"))
    # Which axis of x each axis of the chain's result stands for; "1" a size-1 axis (reduced or inserted).
    layout: list = ["1" if i in axes else i for i in range(x.ndim)] if s.arg("keepdims") else \
        [i for i in range(x.ndim) if i not in axes]
    for t in reversed(chain):
        layout = _layout_after(t, layout)
        if layout is None:
            return None
    if len(layout) > x.ndim:
        return None
    layout = ["1"] * (x.ndim - len(layout)) + layout  # (broadcasting pads on the left)
    if any(e != ("1" if i in axes else i) for i, e in enumerate(layout)):
        return None
    return x, s.arg("axis"), s.arg("keepdims")


def _layout_after(t: Node, layout: list) -> list | None:
    """The layout (see sum_of_exp) of the dimshuffle or reshape ``t`` of an operand laid out so, or
    None where ``t`` does more than insert or drop size-1 axes."""
    if t.op == "dimshuffle":
        order = t.arg("order")
        kept = [o for o in order if o != "x"]
        if any(layout[i] != "1" for i in range(len(layout)) if i not in kept):
            return None
        return ["1" if o == "x" else layout[o] for o in order]
    shape = t.arg("shape")
    real = [(e, n) for e, n in zip(layout, t.inputs[0].type.shape) if e != "1"]
    sizes = [n for n in shape if n != 1]
    if len(sizes) != len(real) or any(n != -1 and m is not None and n != m for n, (_, m) in zip(sizes, real)) \
            or any(m == 1 for _, m in real):
        return None
    it = iter(e for e, _ in real)
    return ["1" if n == 1 else next(it) for n in shape]
