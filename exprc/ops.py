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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exprc.errors import DTypeError, ShapeError
from exprc.graph import Node
from exprc.types import TensorType, broadcast_shapes, float_dtype, promote, shape_str

GradRule = Callable[[Node, Node], Sequence["Node | None"]]


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
