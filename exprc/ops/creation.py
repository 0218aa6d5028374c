"""Creation rows whose output shape depends on operand *values*: ``alloc`` and ``arange``.

The public creation functions (:mod:`exprc.creation`) build from existing ops where every size is
static (a broadcast constant, a constant ``eye``, a constant ``arange``); these two rows exist
for sizes that are 0-d integer expressions known only at call time.  Both are ``value_shape``
rows: their inferred shape has ``None`` where an operand that is not a constant decides it (a
constant operand gives a static size), and the native backends run them as stages
(:mod:`exprc.backends.staged`).  Neither has a C expression.

* ``alloc(value, *sizes)``: ``value`` broadcast to the shape ``sizes`` (each a 0-d integer
  operand), a fresh array (Theano's ``Alloc``).  A negative size raises :class:`ShapeError`.
* ``arange(start, stop, step, dtype=)``: ``numpy.arange`` of the three 0-d operands' values in
  ``dtype``.  The operands keep the dtypes they were given (the length is computed from their
  values, as NumPy does, not from values rounded to ``dtype``).  A zero step raises
  :class:`ShapeError`.
"""

from __future__ import annotations

import math

import numpy as np

from exprc.errors import DTypeError, ShapeError
from exprc.ops.table import Op, register
from exprc.types import DTYPES, TensorType, is_int, shape_str


def _static_size(n, what: str) -> int | None:
    """The value of a 0-d size operand when it is a constant (checked), else None."""
    if n.op != "constant":
        return None
    size = int(n.value)
    if size < 0:
        raise ShapeError(f"{what} is {size}: sizes must be >= 0")
    return size


def _infer_alloc(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    value, *sizes = inputs
    if not sizes:
        raise ShapeError("alloc: needs at least one size")
    for d, n in enumerate(sizes):
        if n.ndim != 0 or not is_int(n.dtype):
            raise DTypeError(f"alloc: size {d} must be a 0-d integer expression, got {n.type}")
    if value.ndim > len(sizes):
        raise ShapeError(f"alloc: cannot broadcast a value of shape {shape_str(value.type.shape)} to "
                         f"{len(sizes)} axes")
    shape: list[int | None] = [_static_size(n, f"alloc: size {d}") for d, n in enumerate(sizes)]
    lead = len(sizes) - value.ndim
    for j, s in enumerate(value.type.shape):
        t = shape[lead + j]
        if s is None or s == 1:
            continue
        if t is None:
            shape[lead + j] = s  # the size must be s at call time (else broadcasting fails there)
        elif t != s:
            raise ShapeError(f"alloc: cannot broadcast a value of shape {shape_str(value.type.shape)} to "
                             f"{shape_str(shape)}")
    return inputs, TensorType(value.dtype, tuple(shape))


def _alloc(value: np.ndarray, *sizes: np.ndarray) -> np.ndarray:
    shape = tuple(int(n) for n in sizes)
    for d, n in enumerate(shape):
        if n < 0:
            raise ShapeError(f"alloc: size {d} is {n}: sizes must be >= 0")
    value = np.asarray(value)
    try:
        b = np.broadcast_to(value, shape)
    except ValueError:
        raise ShapeError(f"alloc: cannot broadcast a value of shape {shape_str(value.shape)} to "
                         f"{shape_str(shape)}") from None
    return np.array(b, copy=True)  # a fresh, writeable array, as numpy.full gives


def arange_len(start: float, stop: float, step: float) -> int:
    """The length of ``numpy.arange(start, stop, step)`` (ceil of the span over the step, at least 0)."""
    if step == 0:
        raise ShapeError("arange: step is 0")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return len(range(start, stop, step))
    n = (stop - start) / step
    if math.isnan(n) or math.isinf(n):
        raise ShapeError(f"arange: cannot compute the length of arange({start}, {stop}, {step})")
    return max(math.ceil(n), 0)


def _infer_arange(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    dtype = attrs["dtype"]
    if dtype not in DTYPES or dtype == "bool":
        raise DTypeError(f"arange: dtype must be one of {', '.join(DTYPES[1:])}, got {dtype!r}")
    for name, x in zip(("start", "stop", "step"), inputs):
        if x.ndim != 0 or x.dtype == "bool":
            raise DTypeError(f"arange: {name} must be a 0-d integer or float expression, got {x.type}")
    size = None
    if inputs[2].op == "constant" and inputs[2].value.item() == 0:
        raise ShapeError("arange: step is 0")
    if all(x.op == "constant" for x in inputs):
        size = arange_len(*(x.value.item() for x in inputs))
    return inputs, TensorType(dtype, (size,))


def _arange(start: np.ndarray, stop: np.ndarray, step: np.ndarray, dtype: str) -> np.ndarray:
    a, b, c = (np.asarray(v).item() for v in (start, stop, step))
    if c == 0:
        raise ShapeError("arange: step is 0")
    return np.arange(a, b, c, dtype=dtype)


register(Op("alloc", "shape", _alloc, _infer_alloc, nin=(2, 33), value_shape=True))
register(Op("arange", "shape", _arange, _infer_arange, attr_names=("dtype",), nin=(3, 3), value_shape=True))
