"""Elementwise rows: arithmetic, comparisons, bitwise and transcendental functions, ``where``,
``cast``, ``fill`` and ``stop_gradient`` (the identity with a zero gradient).

Elementwise ops receive operands already cast to their compute dtype (the type rule
:func:`~exprc.ops.table._elemwise` inserts ``cast`` nodes), so neither the reference nor the
native renderers ever see mixed dtypes inside one elementwise op.  The tables below are one line
per op; their order is the registration order of the op table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from exprc.errors import DTypeError
from exprc.ops.table import Op, _elemwise, _errstate, cast, register
from exprc.types import TensorType, broadcast_shapes, promote

if TYPE_CHECKING:
    from exprc.graph import Node


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


def erfcx_series(terms: int) -> tuple[float, ...]:
    """(-1)**k (2k - 1)!! for k = terms - 1 down to 0: the asymptotic series of x sqrt(pi) erfcx(x) in
    v = 1 / (2 x**2), highest power first (Horner's order)."""
    return tuple(float((-1) ** k * math.prod(range(1, 2 * k, 2))) for k in range(terms - 1, -1, -1))


#: erfcx's series to k = 14 (numpy_semantics.h's exprc_erfcx spells the same coefficients).
ERFCX_SERIES = erfcx_series(15)
#: From here up erfcx is its asymptotic series (the 16th term is 2e-19 of the first at x = 10).
ERFCX_FAR = 10.0


def _erfcx(x: np.ndarray) -> np.ndarray:
    """exp(x*x) erfc(x), the algorithm of numpy_semantics.h's exprc_erfcx in float64 (Dekker's
    product where C has fma): exp(h) erfc(x) (1 + l) with h + l = x*x exactly below 10, the
    asymptotic series above; float32 rounds the float64 value."""
    x = np.asarray(x)
    d = x.astype(np.float64)
    with np.errstate(all="ignore"):
        h = d * d
        t = d * 134217729.0
        hi = t - (t - d)
        lo = d - hi
        err = ((hi * hi - h) + hi * lo * 2.0) + lo * lo
        p = np.exp(h) * _erfc(d)
        near = p + p * err
        near = np.where(np.isnan(near), p, near)  # (where p is inf)
        v = 0.5 / h
        s = np.zeros_like(d)
        for c in ERFCX_SERIES:
            s = s * v + c
        far = 0.56418958354775628695 / d * s
        out = np.where(d >= ERFCX_FAR, far, near)
    return out.astype(x.dtype)


def _from_math(fn: Callable[[float], float]) -> Callable:
    ufunc = np.frompyfunc(fn, 1, 1)

    def impl(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return np.asarray(ufunc(x.astype(np.float64)), dtype=np.float64).astype(x.dtype)

    impl.__name__ = fn.__name__
    return impl


_erfc = _from_math(math.erfc)


def _float_floordiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.floor_divide(a, b)


def _sign(x: np.ndarray) -> np.ndarray:
    return np.sign(x)  # sign(-0.0) is +0.0, sign(NaN) NaN: numpy_semantics.h's exprc_sign matches


def _integral_identity(fn: Callable) -> Callable:
    """floor/ceil/round: bools and ints come back unchanged in their own dtype, as the type rule and
    the C expression ``({0})`` say, whatever the NumPy version (np.floor(bool) is float16 before
    NumPy 2.3, np.rint(int32) is float64)."""

    def impl(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return x.copy() if x.dtype.kind in "biu" else fn(x)

    impl.__name__ = fn.__name__
    return impl


def _power(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.power, except integers to negative integer powers: NumPy raises at call time, which a
    native kernel cannot do, so every backend gives C's truncated quotient 1 / a**-b instead (1 for
    a = 1, +-1 for a = -1, else 0; exprc_ipow in numpy_semantics.h).  A negative *constant* exponent
    is refused when the node is built (:func:`_infer_pow`)."""
    a, b = np.asarray(a), np.asarray(b)
    if b.dtype.kind not in "iu" or not (b < 0).any():
        return np.power(a, b)
    a, b = np.broadcast_arrays(a, b)
    pos = np.power(a, np.where(b < 0, 0, b))
    neg = np.where(a == 1, 1, np.where(a == -1, np.where(b % 2 == 1, -1, 1), 0)).astype(a.dtype)
    return np.where(b < 0, neg, pos)


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(x).astype(dtype)


def _two_sum_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = a + b
    bb = s - a
    return (a - (s - bb)) + (b - bb)


def _two_prod_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    p = a * b
    if p.dtype == np.float32:  # (exact in float64: 48 bits of product)
        return (a.astype(np.float64) * b.astype(np.float64) - p.astype(np.float64)).astype(np.float32)
    # Dekker's product of Veltkamp's halves, of the significands: split as they are, a factor beyond
    # 2**996 (or a subnormal one beside a large one) overflows, where C's fma is exact
    (ma, ea), (mb, eb) = np.frexp(a), np.frexp(b)
    q = ma * mb
    ta, tb = ma * 134217729.0, mb * 134217729.0
    ah, bh = ta - (ta - ma), tb - (tb - mb)
    al, bl = ma - ah, mb - bh
    err = np.ldexp(((ah * bh - q) + ah * bl + al * bh) + al * bl, ea + eb)
    # (an overflowing product: fma(a, b, -inf) is -inf, the error's sign opposite the product's)
    return np.where(np.isinf(p) & np.isfinite(a) & np.isfinite(b), -p, err)


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
    ("pow", _power, "numeric", "pow{f}({0}, {1})", "exprc_ipow_{T}({0}, {1})", "**", 12, False),
    ("maximum", np.maximum, "any", "exprc_max{f}({0}, {1})", "(({0}) > ({1}) ? ({0}) : ({1}))", None, 100, True),
    ("minimum", np.minimum, "any", "exprc_min{f}({0}, {1})", "(({0}) < ({1}) ? ({0}) : ({1}))", None, 100, True),
    ("arctan2", np.arctan2, "float", "atan2{f}({0}, {1})", None, None, 100, False),
    ("hypot", np.hypot, "float", "hypot{f}({0}, {1})", None, None, 100, True),
    ("logaddexp", np.logaddexp, "float", "exprc_logaddexp{f}({0}, {1})", None, None, 100, True),
    # two_sum_err(a, b) = (a + b) - fl(a + b), exactly (Knuth's TwoSum; NaN where a + b is not finite).
    # One op, not its six adds, so that a later optimization (the gradient of a stable form is
    # optimized again) cannot simplify the error term to 0 as exact arithmetic would.
    ("two_sum_err", _two_sum_err, "float", "exprc_two_sum_err{f}({0}, {1})", None, None, 100, True),
    # two_prod_err(a, b) = a b - fl(a b), exactly where a b is finite and nothing underflows (Dekker's
    # product; one fma in C with FMA3 and in CUDA).  One op for the same reason.
    ("two_prod_err", _two_prod_err, "float", "exprc_two_prod_err{f}({0}, {1})", None, None, 100, True),
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
    ("floor", _integral_identity(np.floor), "any", "floor{f}({0})", "({0})"),
    ("ceil", _integral_identity(np.ceil), "any", "ceil{f}({0})", "({0})"),
    ("round", _integral_identity(np.rint), "numeric", "nearbyint{f}({0})", "({0})"),
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
    ("tanh", np.tanh, "float", "exprc_tanh{f}({0})", None),
    ("arcsinh", np.arcsinh, "float", "asinh{f}({0})", None),
    ("arccosh", np.arccosh, "float", "acosh{f}({0})", None),
    ("arctanh", np.arctanh, "float", "atanh{f}({0})", None),
    ("sigmoid", _sigmoid, "float", "exprc_sigmoid{f}({0})", None),
    ("softplus", _softplus, "float", "exprc_softplus{f}({0})", None),
    ("log1mexp", _log1mexp, "float", "exprc_log1mexp{f}({0})", None),
    ("erf", _from_math(math.erf), "float", "erf{f}({0})", None),
    ("erfc", _erfc, "float", "erfc{f}({0})", None),
    ("erfcx", _erfcx, "float", "exprc_erfcx{f}({0})", None),
    ("isnan", np.isnan, "float_bool", "(isnan({0}) != 0)", None),
    ("isinf", np.isinf, "float_bool", "(isinf({0}) != 0)", None),
    ("isfinite", np.isfinite, "float_bool", "(isfinite({0}) != 0)", None),
]

def _infer_pow(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    """The elementwise type rule, and integers to negative constant powers refused here: NumPy
    raises at call time, a native kernel cannot (see :func:`_power` for exponents known later)."""
    inputs, typ = _elemwise("pow", "numeric")(inputs, attrs)
    b = inputs[1]
    if typ.dtype in ("int32", "int64") and b.op == "constant" and bool((b.value < 0).any()):
        raise DTypeError(f"pow: {typ.dtype} to a negative integer power ({b.value.min()}) is not an integer "
                         "(NumPy raises ValueError); use a float exponent or cast the base to float64")
    return inputs, typ


for _name, _fn, _rule, _c, _ci, _infix, _prec, _comm in _BINARY:
    register(Op(_name, "elemwise", _errstate(_fn), _infer_pow if _name == "pow" else _elemwise(_name, _rule),
                c=_c, c_int=_ci, infix=_infix, prec=_prec, commutative=_comm))
for _name, _fn, _rule, _c, _ci in _UNARY:
    register(Op(_name, "elemwise", _errstate(_fn), _elemwise(_name, _rule), c=_c, c_int=_ci,
                infix="-" if _name == "neg" else ("~" if _name == "invert" else None),
                prec=11 if _name in ("neg", "invert") else 100))


def _infer_where(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    c, a, b = inputs
    dt = promote(a.dtype, b.dtype)
    inputs = (cast(c, "bool"), cast(a, dt), cast(b, dt))
    return inputs, TensorType(dt, broadcast_shapes([i.type.shape for i in inputs], "where"))


def _infer_cast(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    return inputs, TensorType(attrs["dtype"], x.type.shape)


register(Op("where", "elemwise", _errstate(_where), _infer_where, c="({0} ? {1} : {2})"))
register(Op("cast", "elemwise", _errstate(_cast), _infer_cast, c="(({T}){0})", attr_names=("dtype",)))


def _infer_fill(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    model, value = inputs
    return inputs, TensorType(value.dtype, broadcast_shapes([model.type.shape, value.type.shape], "fill"))


def _fill(model: np.ndarray, value: np.ndarray) -> np.ndarray:
    return np.broadcast_to(value, np.broadcast_shapes(np.shape(model), np.shape(value)))


# fill(model, value): ``value`` broadcast to the shape of ``model`` (whose values are not read), as
# Theano's fill.  Elementwise, so it fuses: gradients use it to broadcast to a shape known at call time.
register(Op("fill", "elemwise", _fill, _infer_fill, c="({1})", c_int="({1})"))


def all_zero_bits(v: Any) -> bool:
    """Every element of ``v`` is a zero with the sign bit clear (+0.0: what fresh pages read as)."""
    v = np.asarray(v)
    return v.dtype.kind in "biuf" and not np.any(v) and not (v.dtype.kind == "f" and np.signbit(v).any())


def zero_fill(x: Any) -> bool:
    """``x`` is ``fill(model, +0)``: zeros of ``model``'s shape (a gradient's scatter target)."""
    return x.op == "fill" and x.inputs[1].op == "constant" and all_zero_bits(x.inputs[1].value)


def plus_zero(g: Any) -> bool:
    """``g`` never holds the -0.0 that 0 + g would turn into +0.0: an integer, or ``h + (+0.0)``."""
    if np.dtype(g.dtype).kind in "iub":
        return True
    return (g.op == "add" and g.inputs[1].op == "constant" and g.inputs[1].ndim == 0
            and all_zero_bits(g.inputs[1].value))


# -- stop_gradient ---------------------------------------------------------------------------
def _infer_identity(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    if len(inputs) != 1:
        raise TypeError(f"stop_gradient takes one operand, got {len(inputs)}")
    return inputs, inputs[0].type


def _identity(x: np.ndarray) -> np.ndarray:
    return np.array(x, copy=True)  # a fresh array, as every other op returns


# stop_gradient(x): the identity on values, with a zero gradient (JAX's stop_gradient, Theano's
# zero_grad / disconnected_grad; :func:`exprc.stop_gradient`).  Its C expression ``({0})`` lets a graph
# that keeps it (no optimizer, or exclude=["stop_gradient_to_identity"]) compile on every backend; the
# canonicalize pass removes it, so after optimization it costs nothing.  Gradients are taken on
# unoptimized graphs, where it is still present (its rule, no gradient, is in exprc.ops.grad).
register(Op("stop_gradient", "elemwise", _identity, _infer_identity, c="({0})", c_int="({0})", nin=(1, 1)))


def _infer_rare(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    if len(inputs) != 1 or inputs[0].dtype != "bool":
        raise TypeError(f"rare takes one bool operand, got {[i.type for i in inputs]}")
    return inputs, inputs[0].type


# rare(c): the identity on a bool condition that says it is almost never true.  Stability rules guard
# their rare branch with it, ``where(rare(|x| > 1e150), slow, fast)``, and the C renderer then runs a
# contiguous chunk's loop without the slow branch when no element of the chunk meets the condition
# (a pre-pass computes only the conditions): the same bits, at the cost of the fast branch.
# rare(c, everywhere=True): the slow branch is right where c fails too (see forms.guard).
register(Op("rare", "elemwise", lambda x, everywhere: _identity(x), _infer_rare, c="({0})", c_int="({0})",
            attr_names=("everywhere",), nin=(1, 1)))


def everywhere_guard(node: Node) -> bool:
    """``node`` is ``where(rare(c, everywhere=True), slow, fast)`` (:func:`exprc.rewrite.forms.guard`):
    its slow branch is right everywhere, and so is its derivative; a lowering may take it alone
    (:func:`exprc.fusion.stable_branches`)."""
    return node.op == "where" and node.inputs[0].op == "rare" and bool(node.inputs[0].arg("everywhere"))
