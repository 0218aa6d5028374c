"""The user-facing, NumPy-like API: variables, elementwise functions, reductions,
linear algebra and shape operations.  Everything returns graph nodes.

Importing this module installs NumPy-style operators (``x + y``, ``x[1:]``), methods
(``x.sum()``) and the ``.shape``, ``.T`` and ``.eval`` members on :class:`~exprc.graph.Node`:
the node class sits below the op table and this API, so they are attached from here.
"""

from __future__ import annotations

import builtins
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc import indexing
from exprc.config import current
from exprc.errors import ShapeError
from exprc.graph import Node, constant_node, input_node
from exprc.ops import OPS, cast
from exprc.types import as_dtype, normalize_axis, shape_str, weak_scalar_dtype

TensorLike = Any  # Node | numpy array | Python scalar | nested list


# -- variables and constants ------------------------------------------------------
def _shape_arg(ndim: int | None, shape: Sequence[int | None] | None, default_ndim: int, what: str) -> tuple:
    if shape is not None:
        shape = tuple(None if s is None else int(s) for s in shape)
        if builtins.any(s is not None and s < 0 for s in shape):
            raise ShapeError(f"{what}: negative size in shape {shape}")
        if ndim is not None and ndim != len(shape):
            raise ShapeError(f"{what}: ndim={ndim} disagrees with shape={shape}")
        return shape
    return (None,) * (default_ndim if ndim is None else int(ndim))


def tensor(name: str | None = None, dtype: Any = None, ndim: int | None = None,
           shape: Sequence[int | None] | None = None) -> Node:
    """A graph input.  ``shape`` entries are sizes or ``None`` (known at call time).  ``dtype``
    None: ``Config.float_dtype`` (float64 unless configured; Theano's ``floatX``)."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    if ndim is None and shape is None:
        raise TypeError("tensor(): give ndim= or shape=")
    return input_node(name, as_dtype(current().float_dtype if dtype is None else dtype),
                      _shape_arg(ndim, shape, 0, "tensor"))


def scalar(name: str | None = None, dtype: Any = None) -> Node:
    """A 0-d input (``dtype`` None: ``Config.float_dtype``)."""
    return tensor(name, dtype, shape=())


def vector(name: str | None = None, dtype: Any = None, shape: Sequence[int | None] | None = None) -> Node:
    """A 1-d input (``dtype`` None: ``Config.float_dtype``)."""
    return tensor(name, dtype, ndim=1, shape=shape)


def matrix(name: str | None = None, dtype: Any = None, shape: Sequence[int | None] | None = None) -> Node:
    """A 2-d input (``dtype`` None: ``Config.float_dtype``)."""
    return tensor(name, dtype, ndim=2, shape=shape)


def tensor3(name: str | None = None, dtype: Any = None, shape: Sequence[int | None] | None = None) -> Node:
    """A 3-d input (``dtype`` None: ``Config.float_dtype``)."""
    return tensor(name, dtype, ndim=3, shape=shape)


def constant(value: TensorLike, dtype: Any = None) -> Node:
    """A constant node.  NumPy arrays keep their dtype; Python data get NumPy's default."""
    return constant_node(value, None if dtype is None else as_dtype(dtype))


def _is_weak(x: object) -> bool:
    return isinstance(x, (bool, int, float)) and not isinstance(x, np.generic)


def as_node(x: TensorLike, like: Node | None = None) -> Node:
    """Convert ``x`` to a node; a Python scalar next to ``like`` is weakly typed (NEP 50)."""
    if isinstance(x, Node):
        return x
    if _is_weak(x) and like is not None:
        return constant_node(x, weak_scalar_dtype(x, like.dtype))
    if isinstance(x, (numbers.Number, np.generic, np.ndarray, list, tuple)):
        return constant_node(x)
    raise TypeError(f"cannot use {type(x).__name__} as an exprc expression")


def _operands(*xs: TensorLike) -> list[Node]:
    like = next((x for x in xs if isinstance(x, Node)), None)
    if like is None:
        strong = [x for x in xs if not _is_weak(x)]
        like = as_node(strong[0]) if strong else None
    return [as_node(x, like) for x in xs]


def _apply(op: str, *xs: TensorLike, **attrs: Any) -> Node:
    return OPS[op].make(tuple(_operands(*xs)), attrs)


# -- elementwise ------------------------------------------------------------------
def _unary(op: str, doc: str):
    def fn(x: TensorLike) -> Node:
        return _apply(op, x)

    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = doc
    return fn


def _binary(op: str, doc: str):
    def fn(x: TensorLike, y: TensorLike) -> Node:
        return _apply(op, x, y)

    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = doc
    return fn


add = _binary("add", "x + y")
sub = subtract = _binary("sub", "x - y")
mul = multiply = _binary("mul", "x * y")
true_divide = divide = _binary("truediv", "x / y (integers divide to float64)")
floor_divide = _binary("floordiv", "x // y with NumPy's floor semantics")
mod = remainder = _binary("mod", "x % y with the sign of the divisor, as NumPy")
power = _binary("pow", "x ** y")
maximum = _binary("maximum", "Elementwise maximum; NaN propagates")
minimum = _binary("minimum", "Elementwise minimum; NaN propagates")
arctan2 = _binary("arctan2", "Elementwise arctan(y/x) with the quadrant")
hypot = _binary("hypot", "sqrt(x*x + y*y) without overflow")
logaddexp = _binary("logaddexp", "log(exp(x) + exp(y)) without overflow")
less = _binary("lt", "x < y")
less_equal = _binary("le", "x <= y")
greater = _binary("gt", "x > y")
greater_equal = _binary("ge", "x >= y")
equal = _binary("eq", "Elementwise x == y (``==`` on nodes is identity)")
not_equal = _binary("ne", "Elementwise x != y")
logical_and = bitwise_and = _binary("and", "x & y")
logical_or = bitwise_or = _binary("or", "x | y")
logical_xor = bitwise_xor = _binary("xor", "x ^ y")

negative = _unary("neg", "-x")
abs = absolute = _unary("abs", "|x|")
invert = logical_not = _unary("invert", "~x (logical not for bools)")
square = _unary("square", "x * x")
sign = _unary("sign", "-1, 0 or 1 (NaN stays NaN)")
floor = _unary("floor", "Largest integer <= x")
ceil = _unary("ceil", "Smallest integer >= x")
round = rint = _unary("round", "Round half to even, as numpy.round")
reciprocal = _unary("reciprocal", "1 / x (integers give float64, unlike NumPy)")
exp = _unary("exp", "e ** x")
exp2 = _unary("exp2", "2 ** x")
expm1 = _unary("expm1", "exp(x) - 1, accurate near 0")
log = _unary("log", "Natural logarithm")
log2 = _unary("log2", "Base-2 logarithm")
log10 = _unary("log10", "Base-10 logarithm")
log1p = _unary("log1p", "log(1 + x), accurate near 0")
sqrt = _unary("sqrt", "Square root")
cbrt = _unary("cbrt", "Cube root")
sin = _unary("sin", "Sine")
cos = _unary("cos", "Cosine")
tan = _unary("tan", "Tangent")
arcsin = _unary("arcsin", "Inverse sine")
arccos = _unary("arccos", "Inverse cosine")
arctan = _unary("arctan", "Inverse tangent")
sinh = _unary("sinh", "Hyperbolic sine")
cosh = _unary("cosh", "Hyperbolic cosine")
tanh = _unary("tanh", "Hyperbolic tangent")
arcsinh = _unary("arcsinh", "Inverse hyperbolic sine")
arccosh = _unary("arccosh", "Inverse hyperbolic cosine")
arctanh = _unary("arctanh", "Inverse hyperbolic tangent")
sigmoid = _unary("sigmoid", "1 / (1 + exp(-x)), computed without overflow")
softplus = _unary("softplus", "log(1 + exp(x)), computed without overflow")
log1mexp = _unary("log1mexp", "log(1 - exp(x)) for x <= 0, accurate near 0 and for large -x")
erf = _unary("erf", "The error function")
erfc = _unary("erfc", "1 - erf(x), accurate for large x")
erfcx = _unary("erfcx", "exp(x*x) * erfc(x), the scaled complementary error function: finite and accurate "
                        "where erfc underflows (x > 26.5), ~1/(x sqrt(pi)) for large x")
isnan = _unary("isnan", "True where x is NaN")
isinf = _unary("isinf", "True where x is +-inf")
isfinite = _unary("isfinite", "True where x is neither NaN nor infinite")


def where(condition: TensorLike, x: TensorLike, y: TensorLike) -> Node:
    """``x`` where ``condition`` holds, else ``y`` (broadcast together)."""
    c = as_node(condition)
    a, b = _operands(x, y)
    return OPS["where"].make((c, a, b), {})


def clip(x: TensorLike, lo: TensorLike | None, hi: TensorLike | None) -> Node:
    """``minimum(maximum(x, lo), hi)``; NaN propagates as in NumPy."""
    x = as_node(x)
    if lo is not None:
        x = maximum(x, lo)
    if hi is not None:
        x = minimum(x, hi)
    return x


def astype(x: TensorLike, dtype: Any) -> Node:
    """``x`` converted to ``dtype`` (C conversion rules; float->int truncates)."""
    return cast(as_node(x), as_dtype(dtype))


# -- reductions ---------------------------------------------------------------------
def _reduce(op: str, x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    x = as_node(x)
    axes = normalize_axis(axis, x.ndim, op)
    return OPS[op].make((x,), {"axis": axes, "keepdims": bool(keepdims)})


def sum(x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    """Sum over ``axis`` (None = all); bool/int32 accumulate in int64 as in NumPy."""
    return _reduce("sum", x, axis, keepdims)


def prod(x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    """Product over ``axis``."""
    return _reduce("prod", x, axis, keepdims)


def mean(x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    """Arithmetic mean over ``axis``; integers give float64."""
    return _reduce("mean", x, axis, keepdims)


def max(x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    """Maximum over ``axis``; NaN propagates."""
    return _reduce("max", x, axis, keepdims)


def min(x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    """Minimum over ``axis``; NaN propagates."""
    return _reduce("min", x, axis, keepdims)


def _shift(x: Node, axes: tuple) -> Node:
    """The shift of logsumexp's and softmax's exps (autodiff's stable forms too): x's maximum over
    ``axes`` (kept), 0 where it is not finite, with no gradient.  A non-finite max (all -inf, +inf)
    would give inf - inf = NaN; shifted by 0 the formula is the one as written there (a row holding
    +inf: 0 for its finite entries).  The max is -inf over an empty axis, where the formula is defined
    (ops/reduce.py, ``identity``).  No gradient flows through the shift (as in JAX): its terms cancel
    exactly in the derivative, and computed they add rounding noise and a route through the max (an
    argmax mask) to every step."""
    m = OPS["max"].make((x,), {"axis": axes, "keepdims": True, "identity": True})
    return _stop_gradient(where(isfinite(m), m, 0))


def all(x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    """True where every element over ``axis`` is nonzero."""
    return _reduce("all", x, axis, keepdims)


def any(x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    """True where some element over ``axis`` is nonzero."""
    return _reduce("any", x, axis, keepdims)


def _arg(op: str, x: TensorLike, axis: int | None, keepdims: bool) -> Node:
    x = as_node(x)
    if axis is not None and not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be None or an int, got {axis!r}")
    if x.ndim == 0:
        raise ShapeError(f"{op}: needs at least a 1-d array")
    axes = normalize_axis(axis, x.ndim, op)
    return OPS[op].make((x,), {"axis": axes, "keepdims": bool(keepdims)})


def argmax(x: TensorLike, axis: int | None = None, keepdims: bool = False) -> Node:
    """Index of the first maximum (over the flattened array when ``axis`` is None)."""
    return _arg("argmax", x, axis, keepdims)


def argmin(x: TensorLike, axis: int | None = None, keepdims: bool = False) -> Node:
    """Index of the first minimum (over the flattened array when ``axis`` is None)."""
    return _arg("argmin", x, axis, keepdims)


def _count(x: Node, axes: tuple[int, ...]) -> Node:
    """The number of elements reduced over ``axes`` (a constant when static)."""
    sizes = [x.type.shape[a] for a in axes]
    if None not in sizes:
        return constant_node(float(math.prod(sizes)), "float64")
    shp = shape(x)
    n: Node = constant_node(1, "int64")
    for a in axes:
        n = n * shp[a]
    return cast(n, "float64")


def var(x: TensorLike, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Node:
    """Variance (two-pass, as NumPy) with ``ddof`` degrees of freedom removed."""
    x = as_node(x)
    axes = normalize_axis(axis, x.ndim, "var")
    centered = x - mean(x, axes, keepdims=True)
    sq = square(centered)
    if ddof == 0:
        return mean(sq, axes, keepdims)
    # NumPy divides by max(n - ddof, 0): ddof >= n gives NaN (0/0) or inf, never -0.0 or a
    # negative variance (constant-folded when n is static).
    dof = maximum(_count(x, axes) - ddof, 0.0)
    return sum(sq, axes, keepdims) / cast(dof, sq.dtype)


def std(x: TensorLike, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Node:
    """Standard deviation: ``sqrt(var(...))``."""
    return sqrt(var(x, axis, keepdims, ddof))


def _stop_gradient(x: Node) -> Node:
    """``x`` with no gradient flowing through it (exprc.stop_gradient; autodiff imports this module)."""
    return OPS["stop_gradient"].make((x,), {})


def logsumexp(x: TensorLike, axis: Any = None, keepdims: bool = False) -> Node:
    """``log(sum(exp(x)))`` shifted by the maximum: no overflow, exact for +-inf."""
    x = as_node(x)
    if x.dtype not in ("float32", "float64"):
        x = cast(x, "float64")
    axes = normalize_axis(axis, x.ndim, "logsumexp")
    shift = _shift(x, axes)
    out = log(sum(exp(x - shift), axes, keepdims=True)) + shift
    return out if keepdims else squeeze(out, axes) if axes else out


def softmax(x: TensorLike, axis: int = -1) -> Node:
    """``exp(x) / sum(exp(x))`` along ``axis``, shifted by the maximum."""
    x = as_node(x)
    if x.dtype not in ("float32", "float64"):
        x = cast(x, "float64")
    e = exp(x - _shift(x, normalize_axis(axis, x.ndim, "softmax")))
    return e / sum(e, axis, keepdims=True)


def log_softmax(x: TensorLike, axis: int = -1) -> Node:
    """``x - logsumexp(x)`` along ``axis``."""
    x = as_node(x)
    return x - logsumexp(x, axis, keepdims=True)


# -- linear algebra -------------------------------------------------------------------
def matmul(a: TensorLike, b: TensorLike) -> Node:
    """Matrix product with NumPy's ``@`` semantics (batched, 1-d promotion)."""
    return OPS["matmul"].make(tuple(_operands(a, b)), {})


def dot(a: TensorLike, b: TensorLike) -> Node:
    """``numpy.dot`` for every ndim: a product with a 0-d operand; else the sum over the last axis
    of ``a`` and the only axis of a 1-d ``b`` or the second-to-last of ``b``, the result's shape
    ``a.shape[:-1] + b.shape[:-2] + b.shape[-1:]`` (unlike :func:`matmul`, batch axes do not pair up)."""
    a, b = _operands(a, b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    ka, kb = a.type.shape[-1], b.type.shape[-1 if b.ndim == 1 else -2]
    if ka is not None and kb is not None and ka != kb:
        which = "only axis" if b.ndim == 1 else "axis -2"
        raise ShapeError(f"dot: shapes {shape_str(a.type.shape)} and {shape_str(b.type.shape)} are not aligned: "
                         f"{ka} (last axis of the first) != {kb} ({which} of the second)")
    if a.ndim <= 2 or b.ndim <= 2:
        # matmul's broadcasting gives np.dot here: a 1-d or 2-d b pairs with every row of a, and
        # a 1-d a drops its axis; a 2-d a is one matrix against each of b's stacked matrices.
        out = matmul(a, b)
        if a.ndim == 2 and b.ndim > 2:  # (B..., n, m) -> (n, B..., m)
            nb = b.ndim - 2
            out = dimshuffle(out, [nb] + list(range(nb)) + [nb + 1])
        return out
    # a (A..., n, k) and b (B..., k, m): a's leading axes go in front of b's stack axes, its last
    # row axis stays a matrix axis, so each product is (n, k) @ (k, m): (A..., B..., n, m), then
    # n moves after A.
    na, nb = a.ndim - 2, b.ndim - 2
    a4 = dimshuffle(a, list(range(na)) + ["x"] * nb + [na, na + 1])
    out = matmul(a4, b)
    return dimshuffle(out, list(range(na)) + [na + nb] + list(range(na, na + nb)) + [na + nb + 1])


# -- shape operations ---------------------------------------------------------------------
def shape(x: TensorLike) -> Node:
    """The shape of ``x`` as an int64 vector (a constant when every size is static)."""
    x = as_node(x)
    if None not in x.type.shape:
        return constant_node(np.array(x.type.shape, dtype=np.int64))
    return OPS["shape"].make((x,), {})


def dimshuffle(x: TensorLike, order: Sequence[int | str]) -> Node:
    """Theano's dimshuffle: permute axes, ``'x'`` inserts a broadcastable axis,
    an omitted axis (of size 1; an unknown size is checked at call time) is dropped."""
    x = as_node(x)
    order = tuple(o if o == "x" else int(o) for o in order)
    if order == tuple(range(x.ndim)):
        return x
    return OPS["dimshuffle"].make((x,), {"order": order})


def transpose(x: TensorLike, axes: Sequence[int] | None = None) -> Node:
    """Permute axes (reverse them when ``axes`` is None)."""
    x = as_node(x)
    if axes is None:
        axes = tuple(reversed(range(x.ndim)))
    axes = tuple(int(a) % x.ndim if x.ndim else a for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ShapeError(f"transpose: axes {tuple(axes)} are not a permutation of {x.ndim} axes")
    return dimshuffle(x, axes)


def expand_dims(x: TensorLike, axis: int | Sequence[int]) -> Node:
    """Insert size-1 axes at ``axis`` (positions in the result)."""
    x = as_node(x)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    nd = x.ndim + len(axes)
    axes = normalize_axis(axes, nd, "expand_dims")
    src = iter(range(x.ndim))
    return dimshuffle(x, ["x" if d in axes else next(src) for d in range(nd)])


def squeeze(x: TensorLike, axis: int | Sequence[int] | None = None) -> Node:
    """Remove size-1 axes (all statically known ones when ``axis`` is None)."""
    x = as_node(x)
    if axis is None:
        axes = tuple(d for d, s in enumerate(x.type.shape) if s == 1)
    else:
        axes = normalize_axis(axis, x.ndim, "squeeze")
        for a in axes:
            if x.type.shape[a] not in (1, None):
                raise ShapeError(f"squeeze: axis {a} of shape {shape_str(x.type.shape)} does not have size 1")
        # A size known only at call time is checked then, by dimshuffle.
    return dimshuffle(x, [d for d in range(x.ndim) if d not in axes])


def _dims(x: Node) -> list[int]:
    return [-1 if s is None else s for s in x.type.shape]


def reshape(x: TensorLike, newshape: int | Sequence[int]) -> Node:
    """Reshape (row-major); one entry may be -1."""
    x = as_node(x)
    shp = (newshape,) if isinstance(newshape, (int, np.integer)) else tuple(newshape)
    if builtins.any(not isinstance(s, (int, np.integer)) for s in shp):
        raise TypeError(f"reshape: shape entries must be ints, got {newshape!r}")
    shp = tuple(int(s) for s in shp)
    if shp.count(-1) > 1:
        raise ShapeError(f"reshape: can only specify one unknown dimension, got {shp}")
    if shp == x.type.shape:
        return x
    return OPS["reshape"].make((x,), {"shape": shp})


def flatten(x: TensorLike) -> Node:
    """A 1-d copy in row-major order."""
    return reshape(x, -1)


def broadcast_to(x: TensorLike, newshape: Sequence[int]) -> Node:
    """Broadcast ``x`` to a static shape."""
    x = as_node(x)
    newshape = tuple(int(s) for s in newshape)
    if newshape == x.type.shape:
        return x
    return OPS["broadcast_to"].make((x,), {"shape": newshape})


def concatenate(xs: Sequence[TensorLike], axis: int = 0) -> Node:
    """Join along an existing axis."""
    nodes = _operands(*xs)
    if not nodes:
        raise ValueError("concatenate: need at least one array")
    if nodes[0].ndim == 0:
        raise ShapeError("concatenate: zero-dimensional arrays cannot be concatenated")
    (ax,) = normalize_axis(axis, nodes[0].ndim, "concatenate")
    if len(nodes) == 1:
        return nodes[0]
    return OPS["concatenate"].make(tuple(nodes), {"axis": ax})


def stack(xs: Sequence[TensorLike], axis: int = 0) -> Node:
    """Join along a new axis."""
    nodes = _operands(*xs)
    if not nodes:
        raise ValueError("stack: need at least one array")
    ax = normalize_axis(axis, nodes[0].ndim + 1, "stack")[0]
    return concatenate([expand_dims(n, ax) for n in nodes], axis=ax)


def getitem(x: TensorLike, key: Any) -> Node:
    """NumPy indexing.  Static ints, slices, ``None`` and ``...`` give a view (``getitem``); int
    expressions, symbolic slice bounds, integer arrays (gather) and boolean masks give a
    ``subtensor`` (:mod:`exprc.indexing`)."""
    return indexing.getitem(as_node(x), key)


# -- operators on nodes ------------------------------------------------------------------
def install_operators(cls: type) -> None:
    """Attach NumPy-style operators and methods to the node class."""

    def binop(fn):
        return (lambda self, other: fn(self, other)), (lambda self, other: fn(other, self))

    for name, fn in [("add", add), ("sub", sub), ("mul", mul), ("truediv", true_divide),
                     ("floordiv", floor_divide), ("mod", mod), ("pow", power), ("matmul", matmul),
                     ("and", logical_and), ("or", logical_or), ("xor", logical_xor)]:
        fwd, rev = binop(fn)
        setattr(cls, f"__{name}__", fwd)
        setattr(cls, f"__r{name}__", rev)
    cls.__lt__ = lambda self, other: less(self, other)
    cls.__le__ = lambda self, other: less_equal(self, other)
    cls.__gt__ = lambda self, other: greater(self, other)
    cls.__ge__ = lambda self, other: greater_equal(self, other)
    cls.__neg__ = lambda self: negative(self)
    cls.__pos__ = lambda self: self
    cls.__abs__ = lambda self: abs(self)
    cls.__invert__ = lambda self: invert(self)
    cls.__getitem__ = getitem
    cls.at = property(lambda self: indexing.At(self), doc="JAX-style updates: ``x.at[idx].set(v)`` / ``.add(v)``")
    cls.__array_ufunc__ = None  # ndarray (op) node defers to the node's reflected operator
    for name, fn in [("sum", sum), ("prod", prod), ("mean", mean), ("max", max), ("min", min),
                     ("all", all), ("any", any), ("var", var), ("std", std), ("argmax", argmax),
                     ("argmin", argmin)]:
        setattr(cls, name, fn)
    cls.reshape = lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 else shape)
    cls.transpose = lambda self, *axes: transpose(self, (axes[0] if len(axes) == 1 and not isinstance(
        axes[0], (int, np.integer)) else axes) or None)
    cls.astype = astype
    cls.dot = dot
    cls.dimshuffle = lambda self, *order: dimshuffle(self, order[0] if len(order) == 1 and isinstance(
        order[0], (list, tuple)) else order)
    cls.squeeze = squeeze
    cls.flatten = flatten
    cls.print = lambda self, message="", summary=False: _printing().Print(self, message, summary)
    cls.clip = clip
    # Properties and methods that need this API (graph.py sits below it and cannot import it).
    cls.shape = property(shape, doc="The symbolic shape: an int64 vector node (folded when sizes are static).")
    cls.T = property(lambda self: transpose(self), doc="The transpose (axes reversed).")
    cls.eval = _eval


def _printing() -> Any:
    from exprc import printing  # (on first use, as printing imports this module: no import cycle)

    return printing


def _eval(self: Node, inputs: dict | None = None, **kwargs: Any) -> np.ndarray:
    """Evaluate through the NumPy reference backend: ``expr.eval({x: array})``."""
    # exprc.function compiles (it sits above the whole front end): loaded on the first eval.
    from exprc.function import evaluate

    return evaluate(self, inputs or {}, **kwargs)


install_operators(Node)
