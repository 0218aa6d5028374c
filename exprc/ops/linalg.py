"""Linear-algebra rows: ``matmul`` (NumPy's semantics: 1-d operands are promoted to matrices and
the added axis dropped from the result; batch axes broadcast).

The C backend computes matmul through a BLAS where the layout allows (see the renderer); the
row holds the NumPy reference and the type rule.
"""

from __future__ import annotations

import numpy as np

from exprc.errors import DTypeError, ShapeError
from exprc.ops.table import Op, _errstate, cast, register
from exprc.types import TensorType, broadcast_shapes, promote, shape_str


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


register(Op("matmul", "linalg", _errstate(np.matmul), _infer_matmul, infix="@", prec=10, nin=(2, 2)))
