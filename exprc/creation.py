"""Creation functions: ``arange``, ``zeros``, ``ones``, ``full``, their ``*_like`` forms, ``eye``,
``one_hot``, and Theano's ``alloc`` and ``fill``.

A size is a Python int or a 0-d integer expression (a *symbolic* size, known at call time); a
shape is a size, a sequence of sizes, or a 1-d integer expression of static length such as
``x.shape``.  Everything is built from existing ops where the sizes are static:

* ``zeros``/``ones``/``full``/``alloc`` are a value ``broadcast_to`` the shape (a view: nothing is
  stored, the C backend reads the value with stride 0);
* ``zeros_like``/``ones_like``/``full_like``/``fill`` with a model whose shape is not static are
  the elementwise ``fill`` op, so they fuse and run on every backend;
* ``arange`` and a small ``eye`` are constants; a large ``eye`` and ``one_hot`` compare aranges
  elementwise (``eq(i + k, j)``, ``eq(y[..., None], arange(n))``).

A symbolic size makes an ``alloc`` or ``arange`` node (:mod:`exprc.ops.creation`), whose shape
depends on operand values (a ``value_shape`` row): the NumPy backend and ``.eval()`` run them; on
the native backends they are left to staged execution (:mod:`exprc.backends.staged`).

Dtypes follow NumPy, with ``Config.float_dtype`` (Theano's ``floatX``, float64 by default) in
place of float64 wherever NumPy picks its default float: ``zeros``/``ones``/``eye``/``one_hot``
without ``dtype``, a Python float as a fill value or an ``arange`` bound.  Python ints give
int64 and bools bool; expressions keep their dtype.  A negative static size raises
:class:`~exprc.errors.ShapeError` naming the argument; a negative symbolic size raises it when
the function runs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc import api
from exprc.config import current
from exprc.errors import DTypeError, ShapeError
from exprc.graph import Node, constant_node
from exprc.ops import OPS, cast
from exprc.ops.gradshape import fill as _fill_node
from exprc.types import as_dtype, is_float, is_int, promote, shape_str

__all__ = ["alloc", "arange", "eye", "fill", "full", "full_like", "one_hot", "ones", "ones_like", "zeros",
           "zeros_like"]

#: A size: a Python int or a 0-d integer expression.
Size = int | Node
#: A shape: a size, a sequence of sizes, or a 1-d integer expression of static length.
ShapeLike = int | Node | Sequence[Size]

#: An ``eye`` with more elements than this is built elementwise instead of as a constant (the
#: constant folder's limit: larger constants are not worth keeping in the graph).
_MAX_CONSTANT_EYE = 1 << 16


# -- arguments --------------------------------------------------------------------------------------
def _size(n: Any, what: str) -> int | Node:
    """A size argument: an int (checked >= 0) or a 0-d integer expression (a constant is read now)."""
    if isinstance(n, Node):
        if n.ndim != 0 or not is_int(n.dtype):
            raise DTypeError(f"{what}: a size must be an int or a 0-d integer expression, got {n.type}")
        if n.op != "constant":
            return n
        n = int(n.value)
    elif isinstance(n, (bool, np.bool_)) or not isinstance(n, (numbers.Integral, np.integer)):
        raise TypeError(f"{what}: a size must be an int or a 0-d integer expression, got {type(n).__name__} {n!r}")
    n = int(n)
    if n < 0:
        raise ShapeError(f"{what}: negative size {n}")
    return n


def _shape(shape: Any, what: str) -> list[int | Node]:
    """A shape argument as a list of sizes."""
    if isinstance(shape, Node) and shape.ndim == 1:
        if not is_int(shape.dtype) or shape.type.shape[0] is None:
            raise DTypeError(f"{what}: a shape expression must be a 1-d integer vector of static length (such as "
                             f"x.shape), got {shape.type}")
        if shape.op == "constant":
            return [_size(int(v), f"{what}[{i}]") for i, v in enumerate(shape.value)]
        return [_size(api.getitem(shape, i), f"{what}[{i}]") for i in range(shape.type.shape[0])]
    if isinstance(shape, (Node, numbers.Integral, np.integer)):
        return [_size(shape, what)]
    if isinstance(shape, np.ndarray) and shape.ndim <= 1:
        shape = shape.tolist()
    if isinstance(shape, (list, tuple)):
        return [_size(s, f"{what}[{i}]") for i, s in enumerate(shape)]
    raise TypeError(f"{what}: expected an int, a sequence of sizes or a 1-d integer expression, got "
                    f"{type(shape).__name__}")


def _dtype(dtype: Any) -> str | None:
    return None if dtype is None else as_dtype(dtype)


def _value(value: Any, dtype: str | None) -> Node:
    """A fill value as a node of ``dtype`` (None: the value's own, a Python float in ``Config.float_dtype``)."""
    if isinstance(value, Node):
        return value if dtype is None else cast(value, dtype)
    if dtype is None and isinstance(value, float) and not isinstance(value, np.generic):
        dtype = current().float_dtype
    v = api.as_node(value)
    return v if dtype is None else cast(v, dtype)


def _int_node(n: int | Node) -> Node:
    return n if isinstance(n, Node) else constant_node(n, "int64")


def _broadcast(value: Node, sizes: list[int | Node], what: str) -> Node:
    """``value`` broadcast to ``sizes``: ``broadcast_to`` when all are static, else ``alloc``."""
    if value.ndim > len(sizes):
        raise ShapeError(f"{what}: cannot broadcast a value of shape {shape_str(value.type.shape)} to "
                         f"{len(sizes)} axes")
    if all(isinstance(s, int) for s in sizes):
        shape = tuple(sizes)
        if value.type.shape == shape:
            return value
        try:
            return api.broadcast_to(value, shape)
        except ShapeError:
            raise ShapeError(f"{what}: cannot broadcast a value of shape {shape_str(value.type.shape)} to "
                             f"{shape_str(shape)}") from None
    return OPS["alloc"].make((value, *map(_int_node, sizes)), {})


def _checked_range(n: int | Node) -> Node:
    """``arange(n)`` as int64; a symbolic ``n`` is checked >= 0 at call time (through ``alloc``)."""
    if isinstance(n, int):
        return constant_node(np.arange(n, dtype=np.int64), "int64")
    r = OPS["arange"].make((constant_node(0, "int64"), n, constant_node(1, "int64")), {"dtype": "int64"})
    return OPS["alloc"].make((r, n), {})


# -- shapes filled with one value ----------------------------------------------------------------------
def alloc(value: Any, *shape: Any) -> Node:
    """Theano's ``alloc``: ``value`` broadcast to ``shape`` (sizes as separate arguments, or one
    sequence or shape vector).  The dtype is the value's (a Python float: ``Config.float_dtype``)."""
    one = len(shape) == 1 and (isinstance(shape[0], (list, tuple, np.ndarray))
                               or isinstance(shape[0], Node) and shape[0].ndim == 1)
    v = _value(value, None)
    sizes = _shape(shape[0] if one else list(shape), "alloc: shape")
    return v if not sizes and v.ndim == 0 else _broadcast(v, sizes, "alloc")


def full(shape: ShapeLike, fill_value: Any, dtype: Any = None) -> Node:
    """An array of ``shape`` filled with ``fill_value`` (which may be an expression, broadcast to
    ``shape``).  ``dtype`` None: the value's, as NumPy (a Python float: ``Config.float_dtype``)."""
    return _broadcast(_value(fill_value, _dtype(dtype)), _shape(shape, "full: shape"), "full")


def zeros(shape: ShapeLike, dtype: Any = None) -> Node:
    """An array of zeros (``dtype`` None: ``Config.float_dtype``)."""
    dt = _dtype(dtype) or current().float_dtype
    return _broadcast(constant_node(0, dt), _shape(shape, "zeros: shape"), "zeros")


def ones(shape: ShapeLike, dtype: Any = None) -> Node:
    """An array of ones (``dtype`` None: ``Config.float_dtype``)."""
    dt = _dtype(dtype) or current().float_dtype
    return _broadcast(constant_node(1, dt), _shape(shape, "ones: shape"), "ones")


def full_like(x: Any, fill_value: Any, dtype: Any = None) -> Node:
    """An array of ``x``'s shape filled with ``fill_value`` (broadcast to it), in ``x``'s dtype
    unless ``dtype`` is given (a float value into an integer ``x`` truncates, as NumPy)."""
    x = api.as_node(x)
    v = _value(fill_value, _dtype(dtype) or x.dtype)
    bad = v.ndim > x.ndim or any(s is not None and s != 1 and t is not None and s != t
                                 for s, t in zip(v.type.shape[::-1], x.type.shape[::-1]))
    if bad:
        raise ShapeError(f"full_like: cannot broadcast a value of shape {shape_str(v.type.shape)} to "
                         f"{shape_str(x.type.shape)}")
    if None not in x.type.shape:
        return _broadcast(v, list(x.type.shape), "full_like")
    return _fill_node(x, v)  # the elementwise fill op: runs (and fuses) on every backend


def zeros_like(x: Any, dtype: Any = None) -> Node:
    """Zeros of ``x``'s shape and dtype (or ``dtype``)."""
    return full_like(x, 0, dtype)


def ones_like(x: Any, dtype: Any = None) -> Node:
    """Ones of ``x``'s shape and dtype (or ``dtype``)."""
    return full_like(x, 1, dtype)


def fill(model: Any, value: Any, dtype: Any = None) -> Node:
    """Theano's ``fill``: ``value`` broadcast to the shape of ``model``; here ``full_like(model,
    value, dtype)``, so the dtype is the model's unless ``dtype`` is given (Theano's gives the
    value's: pass ``dtype=`` for that)."""
    return full_like(model, value, dtype)


# -- ranges -----------------------------------------------------------------------------------------
def _bound(v: Any, what: str) -> Node | int | float:
    """An arange bound: a Python number (kept exact) or a 0-d int/float expression."""
    if isinstance(v, Node):
        if v.ndim != 0 or v.dtype == "bool":
            raise DTypeError(f"arange: {what} must be a number or a 0-d integer or float expression, got {v.type}")
        return v
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.integer, np.floating)):
        raise TypeError(f"arange: {what} must be a number or a 0-d integer or float expression, got "
                        f"{type(v).__name__} {v!r}")
    if isinstance(v, np.generic):
        return constant_node(v)  # a NumPy scalar keeps its dtype (a strong operand)
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"arange: {what} must be finite, got {v}")
    return v


def arange(start: Any, stop: Any = None, step: Any = None, dtype: Any = None) -> Node:
    """``numpy.arange``: ``arange(stop)``, ``arange(start, stop[, step])``; bounds are numbers or 0-d
    expressions (then the length is known at call time).  Floats and negative steps work as in
    NumPy (the length is ``ceil((stop - start) / step)``, at least 0); a zero step raises
    :class:`~exprc.errors.ShapeError`.

    ``dtype`` None: int64 when every bound is an integer; else the promoted dtype of the float
    expressions among the bounds, or ``Config.float_dtype`` when the floats are Python floats
    (NumPy gives float64 for float32 scalars; exprc keeps a float32 bound's float32)."""
    if stop is None:
        start, stop = 0, start
    bounds = [_bound(start, "start"), _bound(stop, "stop"), _bound(1 if step is None else step, "step")]
    dt = _dtype(dtype)
    if dt == "bool":
        raise DTypeError("arange: dtype bool is not supported")
    if dt is None:
        strong = [b.dtype for b in bounds if isinstance(b, Node) and is_float(b.dtype)]
        if strong:
            dt = promote(*strong)
        elif any(isinstance(b, float) for b in bounds):
            dt = current().float_dtype
        else:
            dt = "int64"
    static = [b.value.item() if isinstance(b, Node) and b.op == "constant" else b for b in bounds]
    if not any(isinstance(b, Node) for b in static):
        if static[2] == 0:
            raise ShapeError("arange: step must not be 0")
        return constant_node(np.arange(*static, dtype=dt), dt)
    nodes = [b if isinstance(b, Node) else constant_node(b, "int64" if isinstance(b, int) else "float64")
             for b in bounds]
    return OPS["arange"].make(tuple(nodes), {"dtype": dt})


def eye(N: Size, M: Size | None = None, k: int | Node = 0, dtype: Any = None) -> Node:
    """``numpy.eye``: an ``N`` by ``M`` (default ``N``) array with ones on diagonal ``k`` (above the
    main one when positive).  ``N``, ``M`` and ``k`` may be 0-d integer expressions; ``dtype``
    None: ``Config.float_dtype``."""
    n = _size(N, "eye: N")
    m = n if M is None else _size(M, "eye: M")
    if isinstance(k, Node):
        if k.ndim != 0 or not is_int(k.dtype):
            raise DTypeError(f"eye: k must be an int or a 0-d integer expression, got {k.type}")
        if k.op == "constant":
            k = int(k.value)
    elif isinstance(k, (bool, np.bool_)) or not isinstance(k, (numbers.Integral, np.integer)):
        raise TypeError(f"eye: k must be an int or a 0-d integer expression, got {type(k).__name__} {k!r}")
    else:
        k = int(k)
    dt = _dtype(dtype) or current().float_dtype
    if isinstance(n, int) and isinstance(m, int) and isinstance(k, int) and n * m <= _MAX_CONSTANT_EYE:
        return constant_node(np.eye(n, m, k, dtype=dt), dt)
    rows = api.expand_dims(_checked_range(n), 1)
    cols = _checked_range(m)
    return cast(api.equal(rows if isinstance(k, int) and k == 0 else rows + k, cols), dt)


def one_hot(y: Any, n: Size, dtype: Any = None) -> Node:
    """One-hot encoding (Theano's ``to_one_hot``): ``out[..., c]`` is 1 where ``y == c``, for
    integer labels ``y`` of any shape and ``n`` classes (an int or a 0-d integer expression); the
    result has shape ``y.shape + (n,)``.  A label outside ``[0, n)`` gives a row of zeros.
    ``dtype`` None: ``Config.float_dtype``."""
    y = api.as_node(y)
    if not is_int(y.dtype):
        raise DTypeError(f"one_hot: the labels must be integers, got {y.dtype}")
    classes = _checked_range(_size(n, "one_hot: n"))
    dt = _dtype(dtype) or current().float_dtype
    return cast(api.equal(api.expand_dims(y, -1), classes), dt)
