"""The op table: everything about an op declared in one place.

Each :class:`Op` row holds the NumPy reference (used by the reference backend
and by constant folding), the type rule, the C expression (``{0}``, ``{1}`` …
are operands, ``{f}`` is ``f`` for float32 and empty for float64, ``{T}`` the C
type), an optional CUDA expression where it differs, the gradient rule slot and
how the op prints.

Elementwise ops receive operands already cast to their compute dtype (the
``make`` step inserts ``cast`` nodes), so neither the reference nor the native
renderers ever see mixed dtypes inside one elementwise op.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exprc.errors import DTypeError, ShapeError
from exprc.graph import Node
from exprc.types import TensorType, broadcast_shapes, float_dtype, promote, shape_str

#: ``grad(node, g) -> one entry per operand``: its gradient, None (zero), or a function of no
#: arguments building it (called only for operands that need a gradient, so the gradient of
#: ``X @ w`` with respect to the data ``X`` is never built).
GradRule = Callable[[Node, Node], Sequence["Node | Callable[[], Node] | None"]]


@dataclass(frozen=True)
class Op:
    """One row of the op table."""

    name: str
    kind: str  # leaf | elemwise | reduce | shape | linalg
    impl: Callable[..., Any] | None
    infer: Callable[[tuple, dict], tuple[tuple, TensorType]] | None = None
    c: str | None = None
    c_int: str | None = None  # C expression for integer/bool operands, where it differs
    cuda: str | None = None
    infix: str | None = None
    prec: int = 100
    commutative: bool = False
    grad: GradRule | None = field(default=None, compare=False)

    def make(self, inputs: tuple, attrs: dict) -> Node:
        """Build the node: coerce operands, infer the output type, intern."""
        if self.infer is None:
            raise TypeError(f"op {self.name} cannot be rebuilt")
        inputs, typ = self.infer(tuple(inputs), attrs)
        return Node(self.name, inputs, attrs, typ)


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    """Add ``op`` to the table (custom ops use :func:`exprc.custom_op`)."""
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} is already registered")
    OPS[op.name] = op
    return op


# -- helpers for type rules ----------------------------------------------------
def cast(x: Node, dtype: str) -> Node:
    if x.dtype == dtype:
        return x
    if x.op == "constant":
        from exprc.graph import constant_node

        return constant_node(x.value.astype(dtype), dtype)
    return OPS["cast"].make((x,), {"dtype": dtype})


def _elemwise(name: str, dtype_rule: str) -> Callable:
    """Type rule for an elementwise op: broadcast shapes, pick compute/output dtypes."""

    def infer(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
        dts = [i.dtype for i in inputs]
        compute = promote(*dts)
        if dtype_rule in ("float", "float_bool"):
            compute = float_dtype(compute)
        elif dtype_rule == "numeric" and compute == "bool":
            raise DTypeError(f"{name}: not defined for bool operands; use .astype('int64') first")
        elif dtype_rule == "integral" and compute.startswith("float"):
            raise DTypeError(f"{name}: expected bool or integer operands, got {', '.join(dts)}")
        inputs = tuple(cast(i, compute) for i in inputs)
        shape = broadcast_shapes([i.type.shape for i in inputs], name)
        out = "bool" if dtype_rule in ("bool", "float_bool") else compute
        return inputs, TensorType(out, shape)

    return infer


def _errstate(fn: Callable) -> Callable:
    def wrapped(*args: Any, **kw: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kw)

    wrapped.__name__ = getattr(fn, "__name__", "op")
    return wrapped


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.zeros((), np.asarray(x).dtype), x)


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - exp(x)) without cancellation (Maechler 2012): NaN for x > 0, -inf at 0."""
    x = np.asarray(x)
    return np.where(x > -math.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x))).astype(x.dtype)


def _from_math(fn: Callable[[float], float]) -> Callable:
    ufunc = np.frompyfunc(fn, 1, 1)

    def impl(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return np.asarray(ufunc(x.astype(np.float64)), dtype=np.float64).astype(x.dtype)

    impl.__name__ = fn.__name__
    return impl


def _float_floordiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.floor_divide(a, b)


def _sign(x: np.ndarray) -> np.ndarray:
    return np.sign(x)


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(x).astype(dtype)


def _where(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(c, a, b)


# -- elementwise rows ----------------------------------------------------------
_BINARY = [
    # name, numpy, dtype rule, C, C for ints, infix, prec, commutative
    ("add", np.add, "any", "({0} + {1})", "({0} + {1})", "+", 9, True),
    ("sub", np.subtract, "numeric", "({0} - {1})", None, "-", 9, False),
    ("mul", np.multiply, "any", "({0} * {1})", "({0} * {1})", "*", 10, True),
    ("truediv", np.true_divide, "float", "({0} / {1})", None, "/", 10, False),
    ("floordiv", np.floor_divide, "numeric", "exprc_floordiv{f}({0}, {1})", "exprc_ifloordiv_{T}({0}, {1})", "//", 10, False),
    ("mod", np.remainder, "numeric", "exprc_mod{f}({0}, {1})", "exprc_imod_{T}({0}, {1})", "%", 10, False),
    ("pow", np.power, "numeric", "pow{f}({0}, {1})", "exprc_ipow_{T}({0}, {1})", "**", 12, False),
    ("maximum", np.maximum, "any", "exprc_max{f}({0}, {1})", "(({0}) > ({1}) ? ({0}) : ({1}))", None, 100, True),
    ("minimum", np.minimum, "any", "exprc_min{f}({0}, {1})", "(({0}) < ({1}) ? ({0}) : ({1}))", None, 100, True),
    ("arctan2", np.arctan2, "float", "atan2{f}({0}, {1})", None, None, 100, False),
    ("hypot", np.hypot, "float", "hypot{f}({0}, {1})", None, None, 100, True),
    ("logaddexp", np.logaddexp, "float", "exprc_logaddexp{f}({0}, {1})", None, None, 100, True),
    ("lt", np.less, "bool", "({0} < {1})", None, "<", 4, False),
    ("le", np.less_equal, "bool", "({0} <= {1})", None, "<=", 4, False),
    ("gt", np.greater, "bool", "({0} > {1})", None, ">", 4, False),
    ("ge", np.greater_equal, "bool", "({0} >= {1})", None, ">=", 4, False),
    ("eq", np.equal, "bool", "({0} == {1})", None, "==", 4, True),
    ("ne", np.not_equal, "bool", "({0} != {1})", None, "!=", 4, True),
    ("and", np.bitwise_and, "integral", None, "({0} & {1})", "&", 7, True),
    ("or", np.bitwise_or, "integral", None, "({0} | {1})", "|", 5, True),
    ("xor", np.bitwise_xor, "integral", None, "({0} ^ {1})", "^", 6, True),
]

_UNARY = [
    # name, numpy, dtype rule, C (float), C for ints
    ("neg", np.negative, "numeric", "(-{0})", "(-{0})"),
    ("abs", np.abs, "any", "fabs{f}({0})", "exprc_iabs_{T}({0})"),
    ("invert", np.invert, "integral", None, "exprc_invert_{T}({0})"),
    ("square", np.square, "numeric", "({0} * {0})", "({0} * {0})"),
    ("sign", _sign, "numeric", "exprc_sign{f}({0})", "(({0} > 0) - ({0} < 0))"),
    ("floor", np.floor, "any", "floor{f}({0})", "({0})"),
    ("ceil", np.ceil, "any", "ceil{f}({0})", "({0})"),
    ("round", np.rint, "numeric", "nearbyint{f}({0})", "({0})"),
    ("reciprocal", np.reciprocal, "float", "(1 / {0})", None),
    ("exp", np.exp, "float", "exp{f}({0})", None),
    ("exp2", np.exp2, "float", "exp2{f}({0})", None),
    ("expm1", np.expm1, "float", "expm1{f}({0})", None),
    ("log", np.log, "float", "log{f}({0})", None),
    ("log2", np.log2, "float", "log2{f}({0})", None),
    ("log10", np.log10, "float", "log10{f}({0})", None),
    ("log1p", np.log1p, "float", "log1p{f}({0})", None),
    ("sqrt", np.sqrt, "float", "sqrt{f}({0})", None),
    ("cbrt", np.cbrt, "float", "cbrt{f}({0})", None),
    ("sin", np.sin, "float", "sin{f}({0})", None),
    ("cos", np.cos, "float", "cos{f}({0})", None),
    ("tan", np.tan, "float", "tan{f}({0})", None),
    ("arcsin", np.arcsin, "float", "asin{f}({0})", None),
    ("arccos", np.arccos, "float", "acos{f}({0})", None),
    ("arctan", np.arctan, "float", "atan{f}({0})", None),
    ("sinh", np.sinh, "float", "sinh{f}({0})", None),
    ("cosh", np.cosh, "float", "cosh{f}({0})", None),
    ("tanh", np.tanh, "float", "tanh{f}({0})", None),
    ("arcsinh", np.arcsinh, "float", "asinh{f}({0})", None),
    ("arccosh", np.arccosh, "float", "acosh{f}({0})", None),
    ("arctanh", np.arctanh, "float", "atanh{f}({0})", None),
    ("sigmoid", _sigmoid, "float", "exprc_sigmoid{f}({0})", None),
    ("softplus", _softplus, "float", "exprc_softplus{f}({0})", None),
    ("log1mexp", _log1mexp, "float", "exprc_log1mexp{f}({0})", None),
    ("erf", _from_math(math.erf), "float", "erf{f}({0})", None),
    ("erfc", _from_math(math.erfc), "float", "erfc{f}({0})", None),
    ("isnan", np.isnan, "float_bool", "(isnan({0}) != 0)", None),
    ("isinf", np.isinf, "float_bool", "(isinf({0}) != 0)", None),
    ("isfinite", np.isfinite, "float_bool", "(isfinite({0}) != 0)", None),
]

for _name, _fn, _rule, _c, _ci, _infix, _prec, _comm in _BINARY:
    register(Op(_name, "elemwise", _errstate(_fn), _elemwise(_name, _rule), c=_c, c_int=_ci,
                infix=_infix, prec=_prec, commutative=_comm))
for _name, _fn, _rule, _c, _ci in _UNARY:
    register(Op(_name, "elemwise", _errstate(_fn), _elemwise(_name, _rule), c=_c, c_int=_ci,
                infix="-" if _name == "neg" else ("~" if _name == "invert" else None),
                prec=11 if _name in ("neg", "invert") else 100))


# -- gradient rules ----------------------------------------------------------------
# A rule ``grad(node, g) -> one gradient per input (None: zero)`` builds graph nodes with
# exprc.api (bound as ``A`` at the bottom of this module: api imports this one).  exprc.autodiff
# applies the rules in reverse topological order; for elementwise ops it also sums each result
# over the dimensions its operand was broadcast along and casts it to the operand's dtype.
def grad_rule(*names: str) -> Callable[[GradRule], GradRule]:
    """Decorator: make ``fn`` the gradient rule of the ops ``names`` (Op rows are frozen: replace them)."""

    def deco(fn: GradRule) -> GradRule:
        for name in names:
            OPS[name] = dataclasses.replace(OPS[name], grad=fn)
        return fn

    return deco


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
    "expm1": lambda x, y: y + 1.0,
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
    "sigmoid": lambda x, y: y * (1.0 - y),
    "softplus": lambda x, y: A.sigmoid(x),  # exactly 1 and 0 far out, no overflow
    "erf": lambda x, y: _TWO_OVER_SQRT_PI * A.exp(-A.square(x)),
    "erfc": lambda x, y: -_TWO_OVER_SQRT_PI * A.exp(-A.square(x)),
}
if "log1mexp" in OPS:  # log(1 - exp(x)): d/dx = -1 / expm1(-x), no cancellation near 0
    _DERIVATIVES["log1mexp"] = lambda x, y: -1.0 / A.expm1(-x)
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
    return (lambda: g * A.where(A.equal(y, 0), 0.0, y * x ** (y - 1.0)),
            lambda: g * (node * A.log(A.where(A.equal(x, 0), 1.0, x))))


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


def _infer_where(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    c, a, b = inputs
    dt = promote(a.dtype, b.dtype)
    inputs = (cast(c, "bool"), cast(a, dt), cast(b, dt))
    return inputs, TensorType(dt, broadcast_shapes([i.type.shape for i in inputs], "where"))


def _infer_cast(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    return inputs, TensorType(attrs["dtype"], x.type.shape)


register(Op("where", "elemwise", _errstate(_where), _infer_where, c="({0} ? {1} : {2})"))
register(Op("cast", "elemwise", _errstate(_cast), _infer_cast, c="(({T}){0})"))


def _infer_fill(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    model, value = inputs
    return inputs, TensorType(value.dtype, broadcast_shapes([model.type.shape, value.type.shape], "fill"))


def _fill(model: np.ndarray, value: np.ndarray) -> np.ndarray:
    return np.broadcast_to(value, np.broadcast_shapes(np.shape(model), np.shape(value)))


# fill(model, value): ``value`` broadcast to the shape of ``model`` (whose values are not read), as
# Theano's fill.  Elementwise, so it fuses: gradients use it to broadcast to a shape known at call time.
register(Op("fill", "elemwise", _fill, _infer_fill, c="({1})", c_int="({1})"))
grad_rule("where")(lambda node, g: (None, lambda: A.where(node.inputs[0], g, 0.0),
                                    lambda: A.where(node.inputs[0], 0.0, g)))
grad_rule("cast")(lambda node, g: (g if node.inputs[0].dtype in ("float32", "float64") else None,))
grad_rule("fill")(lambda node, g: (None, g))


# -- leaves ----------------------------------------------------------------------
register(Op("input", "leaf", None))
register(Op("constant", "leaf", None))


# -- reductions ------------------------------------------------------------------
def _reduced_shape(x: Node, axes: tuple[int, ...], keepdims: bool) -> tuple:
    return tuple((1 if keepdims else None) if i in axes else s for i, s in enumerate(x.type.shape)
                 if keepdims or i not in axes)


def _reduce_infer(name: str, rule: str) -> Callable:
    def infer(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
        (x,) = inputs
        axes, keep = attrs["axis"], attrs["keepdims"]
        dt = x.dtype
        if rule == "accumulate":  # sum/prod: NumPy widens bool and int32 to int64
            dt = "int64" if dt in ("bool", "int32") else dt
        elif rule == "float":
            dt = float_dtype(dt)
        elif rule == "bool":
            x, dt = cast(x, "bool"), "bool"
        elif rule == "index":
            dt = "int64"
        shape = _reduced_shape(x, axes, keep)
        if rule == "same" and x.type.shape and any(x.type.shape[a] == 0 for a in axes):
            raise ShapeError(f"{name}: zero-size reduction over axis {axes} of shape {shape_str(x.type.shape)} "
                             "has no identity")
        return (x,), TensorType(dt, shape)

    return infer


def _np_reduce(fn: Callable, dtype: str | None = None) -> Callable:
    def impl(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
        kw = {"dtype": dtype} if dtype else {}
        return fn(x, axis=axis, keepdims=keepdims, **kw)

    impl.__name__ = fn.__name__
    return _errstate(impl)


def _np_sum(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
    dt = np.int64 if x.dtype in (np.bool_, np.int32) else x.dtype
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=dt)


def _np_prod(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
    dt = np.int64 if x.dtype in (np.bool_, np.int32) else x.dtype
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=dt)


def _np_mean(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
    dt = x.dtype if x.dtype.kind == "f" else np.float64
    return np.mean(x, axis=axis, keepdims=keepdims, dtype=dt)


def _np_arg(fn: Callable) -> Callable:
    def impl(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
        if len(axis) == x.ndim and x.ndim != 1:
            r = fn(x.reshape(-1), axis=0)
            return np.reshape(r, (1,) * x.ndim) if keepdims else r
        return fn(x, axis=axis[0], keepdims=keepdims)

    impl.__name__ = fn.__name__
    return impl


_REDUCE = [
    # name, numpy, type rule, C identity, C combine ({acc}, {x})
    ("sum", _errstate(_np_sum), "accumulate"),
    ("prod", _errstate(_np_prod), "accumulate"),
    ("mean", _errstate(_np_mean), "float"),
    ("max", _np_reduce(np.max), "same"),
    ("min", _np_reduce(np.min), "same"),
    ("all", _np_reduce(np.all), "bool"),
    ("any", _np_reduce(np.any), "bool"),
    ("argmax", _errstate(_np_arg(np.argmax)), "index"),
    ("argmin", _errstate(_np_arg(np.argmin)), "index"),
]
for _name, _fn, _rule in _REDUCE:
    register(Op(_name, "reduce", _fn, _reduce_infer(_name, _rule)))



def _keep(node: Node, v: Node) -> Node:
    """``v`` (broadcasting to the result of the reduction ``node``) made to broadcast to its
    operand: the reduced axes kept as size 1 (a 0-d ``v`` broadcasts to anything already)."""
    return v if node.arg("keepdims") or v.ndim == 0 else A.expand_dims(v, node.arg("axis"))


@grad_rule("sum", "mean")
def _grad_sum(node: Node, g: Node) -> tuple:
    """The gradient broadcast back over the reduced axes (kept 0-d when it can: autodiff
    broadcasts gradients lazily, so no array of the operand's shape is built for it)."""
    if node.op == "mean":
        from exprc.autodiff import count

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


# -- shape ops ---------------------------------------------------------------------
def _infer_dimshuffle(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    order = attrs["order"]
    kept = [o for o in order if o != "x"]
    for d in range(x.ndim):
        if d not in kept and x.type.shape[d] not in (1, None):  # None: checked at call time
            raise ShapeError(f"dimshuffle: cannot drop axis {d} of shape {shape_str(x.type.shape)}: "
                             "its size is not 1")
    shape = tuple(1 if o == "x" else x.type.shape[o] for o in order)
    return inputs, TensorType(x.dtype, shape)


def _np_dimshuffle(x: np.ndarray, order: tuple) -> np.ndarray:
    x = np.asarray(x)
    kept = [o for o in order if o != "x"]
    dropped = tuple(d for d in range(x.ndim) if d not in kept)
    if any(x.shape[d] != 1 for d in dropped):
        raise ShapeError(f"dimshuffle: cannot drop axes {dropped} of shape {shape_str(x.shape)}: size is not 1")
    y = x.reshape([s for d, s in enumerate(x.shape) if d not in dropped]) if dropped else x
    rank = {d: i for i, d in enumerate(sorted(kept))}
    y = y.transpose([rank[o] for o in kept])
    return y.reshape(tuple(1 if o == "x" else x.shape[o] for o in order))


def _infer_reshape(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    shape = attrs["shape"]
    size = math.prod(x.type.shape) if None not in x.type.shape else None
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: can only specify one unknown dimension, got {shape}")
    known = math.prod(s for s in shape if s != -1)
    if size is not None:
        if -1 in shape:
            if known == 0 or size % known:
                raise ShapeError(f"reshape: cannot reshape {shape_str(x.type.shape)} into {shape}")
            shape = tuple(size // known if s == -1 else s for s in shape)
        elif size != known:
            raise ShapeError(f"reshape: cannot reshape {shape_str(x.type.shape)} into {shape}")
    out = tuple(None if s == -1 else s for s in shape)
    return inputs, TensorType(x.dtype, out)


def _infer_broadcast_to(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    shape = attrs["shape"]
    if len(shape) < x.ndim:
        raise ShapeError(f"broadcast_to: cannot broadcast {shape_str(x.type.shape)} to {shape_str(shape)}")
    for s, t in zip(reversed(x.type.shape), reversed(shape)):
        if s is not None and s != 1 and s != t:
            raise ShapeError(f"broadcast_to: cannot broadcast {shape_str(x.type.shape)} to {shape_str(shape)}")
    return inputs, TensorType(x.dtype, tuple(shape))


def _infer_concatenate(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    axis = attrs["axis"]
    dt = promote(*[i.dtype for i in inputs])
    inputs = tuple(cast(i, dt) for i in inputs)
    nd = inputs[0].ndim
    shape: list = list(inputs[0].type.shape)
    for i in inputs[1:]:
        if i.ndim != nd:
            raise ShapeError(f"concatenate: all inputs need the same ndim, got {shape_str(inputs[0].type.shape)} "
                             f"and {shape_str(i.type.shape)}")
        for d in range(nd):
            a, b = shape[d], i.type.shape[d]
            if d == axis:
                shape[d] = None if a is None or b is None else a + b
            elif a is not None and b is not None and a != b:
                raise ShapeError(f"concatenate: shapes {shape_str(inputs[0].type.shape)} and "
                                 f"{shape_str(i.type.shape)} differ outside axis {axis}")
            elif a is None:
                shape[d] = b
    return inputs, TensorType(dt, tuple(shape))


def _slice_len(n: int | None, start: int | None, stop: int | None, step: int) -> int | None:
    if n is None:
        return None
    return len(range(*slice(start, stop, step).indices(n)))


def _infer_getitem(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    shape: list = []
    d = 0
    for item in attrs["index"]:
        kind = item[0]
        if kind == "n":
            shape.append(1)
            continue
        n = x.type.shape[d]
        if kind == "i":
            k = item[1]
            if n is not None and not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for axis {d} with size {n}")
        else:
            shape.append(_slice_len(n, item[1], item[2], item[3]))
        d += 1
    shape.extend(x.type.shape[d:])
    return inputs, TensorType(x.dtype, tuple(shape))


def _np_getitem(x: np.ndarray, index: tuple) -> np.ndarray:
    key = tuple(item[1] if item[0] == "i" else (None if item[0] == "n" else slice(*item[1:]))
                for item in index)
    return np.asarray(x)[key]


def _infer_shape(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    return inputs, TensorType("int64", (x.ndim,))


register(Op("dimshuffle", "shape", _np_dimshuffle, _infer_dimshuffle))
register(Op("reshape", "shape", lambda x, shape: np.reshape(x, shape), _infer_reshape))
register(Op("broadcast_to", "shape", lambda x, shape: np.broadcast_to(x, shape), _infer_broadcast_to))
register(Op("concatenate", "shape", lambda *xs, axis: np.concatenate(xs, axis=axis), _infer_concatenate))
register(Op("getitem", "shape", _np_getitem, _infer_getitem))
register(Op("shape", "shape", lambda x: np.array(np.shape(x), dtype=np.int64), _infer_shape))



# -- ops that gradients need (run as NumPy steps by the C backend) ---------------------------
def _index_key(index: tuple) -> tuple:
    return tuple(item[1] if item[0] == "i" else (None if item[0] == "n" else slice(*item[1:])) for item in index)


def _infer_inc_subtensor(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    x, y = inputs
    part = _infer_getitem((x,), attrs)[1].shape
    if y.ndim > len(part) or broadcast_shapes([part, y.type.shape], "inc_subtensor") != part:
        raise ShapeError(f"inc_subtensor: cannot add shape {shape_str(y.type.shape)} into a part of shape "
                         f"{shape_str(part)}")
    return (x, cast(y, x.dtype)), x.type


def _inc_subtensor(x: np.ndarray, y: np.ndarray, index: tuple) -> np.ndarray:
    out = np.array(x, copy=True)
    out[_index_key(index)] += y
    return out


def _infer_like(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    x, model = inputs
    return inputs, TensorType(x.dtype, model.type.shape)


def _sum_to(x: np.ndarray, model: np.ndarray) -> np.ndarray:
    shape, x = np.shape(model), np.asarray(x)
    if x.ndim > len(shape):
        x = np.sum(x, axis=tuple(range(x.ndim - len(shape))))
    x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
    axes = tuple(d for d, s in enumerate(shape) if s == 1 and x.shape[d] != 1)
    return np.broadcast_to(np.sum(x, axis=axes, keepdims=True) if axes else x, shape)


def _infer_split_part(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    return inputs, TensorType(inputs[0].dtype, inputs[1 + attrs["which"]].type.shape)


def _split_part(x: np.ndarray, *models: np.ndarray, axis: int, which: int) -> np.ndarray:
    start = sum(np.shape(m)[axis] for m in models[:which])
    key = (slice(None),) * axis + (slice(start, start + np.shape(models[which])[axis]),)
    return np.asarray(x)[key]


# inc_subtensor(x, y, index): x with y added into x[index] (the gradient of getitem scatters into zeros).
register(Op("inc_subtensor", "shape", _inc_subtensor, _infer_inc_subtensor))
# sum_to(x, model): x summed over the axes along which ``model`` was broadcast to x's shape (and
# broadcast over those where x is smaller: gradients may be): the result has ``model``'s shape.
register(Op("sum_to", "shape", _errstate(_sum_to), _infer_like))
# reshape_like(x, model): x reshaped to the shape of ``model`` (sizes known at call time).
register(Op("reshape_like", "shape", lambda x, model: np.reshape(x, np.shape(model)), _infer_like))
# split_part(x, *models, axis, which): the part of x that concatenate(models, axis) took from models[which].
register(Op("split_part", "shape", _split_part, _infer_split_part))


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
    from exprc.autodiff import sum_to

    return (sum_to(g, node.inputs[0]),)


grad_rule("sum_to")(lambda node, g: (g, None))  # g, of the model's shape, broadcasts to the operand's


@grad_rule("concatenate", "split_part")
def _grad_concatenate(node: Node, g: Node) -> tuple:
    """Slices of the gradient (views when sizes are static; split_part otherwise).  The gradient of
    split_part is its part placed among zeros."""
    from exprc.autodiff import zeros_like

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
    from exprc.autodiff import zeros_like

    return (OPS["inc_subtensor"].make((zeros_like(node.inputs[0]), g), dict(node.attrs)),)


@grad_rule("inc_subtensor")
def _grad_inc_subtensor(node: Node, g: Node) -> tuple:
    from exprc.autodiff import sum_to

    return g, lambda: sum_to(OPS["getitem"].make((g,), dict(node.attrs)), node.inputs[1])


grad_rule("shape")(lambda node, g: (None,))


# -- linear algebra ----------------------------------------------------------------
def _infer_matmul(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    a, b = inputs
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: operands must be at least 1-d, got shapes {shape_str(a.type.shape)} "
                         f"and {shape_str(b.type.shape)}")
    dt = promote(a.dtype, b.dtype)
    if dt == "bool":
        raise DTypeError("matmul: not defined for bool operands")
    a, b = cast(a, dt), cast(b, dt)
    sa = a.type.shape if a.ndim > 1 else (1,) + a.type.shape
    sb = b.type.shape if b.ndim > 1 else b.type.shape + (1,)
    k1, k2 = sa[-1], sb[-2]
    if k1 is not None and k2 is not None and k1 != k2:
        raise ShapeError(f"matmul: shapes {shape_str(a.type.shape)} and {shape_str(b.type.shape)} are not "
                         f"aligned: {k1} (last axis of the first) != {k2} (axis -2 of the second)")
    batch = broadcast_shapes([sa[:-2], sb[:-2]], "matmul")
    shape = batch + ((sa[-2],) if a.ndim > 1 else ()) + ((sb[-1],) if b.ndim > 1 else ())
    return (a, b), TensorType(dt, shape)


register(Op("matmul", "linalg", _errstate(np.matmul), _infer_matmul, infix="@", prec=10))



@grad_rule("matmul")
def _grad_matmul(node: Node, g: Node) -> tuple:
    """G @ B^T and A^T @ G on the operands promoted to matrices, summed over broadcast batch axes."""
    from exprc.autodiff import sum_to

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


# The gradient rules above build graphs with the user API, which imports this module.
from exprc import api as A
