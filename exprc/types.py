"""Dtypes, tensor types and NumPy 2 (NEP 50) promotion.

A :class:`TensorType` is a dtype plus a static shape in which each entry is a
known size (an ``int``) or ``None`` (known only at call time).  A size of 1 is
what makes a dimension broadcastable.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from exprc.errors import DTypeError, ShapeError

#: The dtypes exprc supports, from narrowest to widest.
DTYPES: tuple[str, ...] = ("bool", "int32", "int64", "float32", "float64")

#: C type used for each dtype by the native backends.
C_TYPES: dict[str, str] = {
    "bool": "uint8_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "float32": "float",
    "float64": "double",
}

Shape = tuple  # tuple[int | None, ...]

_KNOWN: dict = {**{d: d for d in DTYPES}, **{np.dtype(d): d for d in DTYPES}}


def as_dtype(dtype: object, what: str = "dtype") -> str:
    """Normalise anything NumPy accepts as a dtype to one of :data:`DTYPES`."""
    try:  # fast path: np.dtype(...).name is slow and this runs for every node built
        return _KNOWN[dtype]  # type: ignore[index]
    except (KeyError, TypeError):
        pass
    try:
        name = np.dtype(dtype).name  # type: ignore[arg-type]
    except TypeError as exc:
        raise DTypeError(f"{what}: {dtype!r} is not a dtype; expected one of {', '.join(DTYPES)}") from exc
    if name not in DTYPES:
        raise DTypeError(f"{what}: dtype {name} is not supported; expected one of {', '.join(DTYPES)}")
    return name


def is_float(dtype: str) -> bool:
    return dtype in ("float32", "float64")


def is_int(dtype: str) -> bool:
    return dtype in ("int32", "int64")


def promote(*dtypes: str) -> str:
    """NumPy 2 promotion of strongly typed dtypes."""
    return _promote(dtypes)


@functools.lru_cache(maxsize=1024)
def _promote(dtypes: tuple[str, ...]) -> str:
    return as_dtype(np.result_type(*[np.dtype(d) for d in dtypes]))


def weak_scalar_dtype(value: object, other: str) -> str:
    """The dtype a Python scalar takes next to a tensor of dtype ``other`` (NEP 50).

    Python scalars are "weak": ``float32 * 2.0`` stays float32, ``int32 + 2.5``
    becomes float64 and ``int32 + 3`` stays int32.
    """
    return as_dtype(np.result_type(np.dtype(other), value))


def float_dtype(dtype: str) -> str:
    """The float dtype a transcendental function computes in for ``dtype``."""
    return dtype if is_float(dtype) else "float64"


@dataclass(frozen=True)
class TensorType:
    """The static type of a graph node: dtype and (partially) known shape."""

    dtype: str
    shape: Shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def broadcastable(self) -> tuple[bool, ...]:
        return tuple(s == 1 for s in self.shape)

    def __str__(self) -> str:
        dims = ", ".join("?" if s is None else str(s) for s in self.shape)
        return f"{self.dtype}[{dims}]"


def shape_str(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def broadcast_shapes(shapes: Iterable[Shape], op: str) -> Shape:
    """Broadcast static shapes; raise :class:`ShapeError` when known sizes clash."""
    shapes = list(shapes)
    ndim = max((len(s) for s in shapes), default=0)
    out: list[int | None] = []
    for axis in range(ndim):
        known: int | None = 1
        unknown = False
        for s in shapes:
            i = axis - (ndim - len(s))
            if i < 0:
                continue
            d = s[i]
            if d is None:
                unknown = True
            elif d != 1:
                if known != 1 and known != d:
                    raise ShapeError(
                        f"{op}: shapes {' and '.join(shape_str(x) for x in shapes)} cannot be broadcast together"
                    )
                known = d
        out.append(None if (unknown and known == 1) else known)
    return tuple(out)


def normalize_axis(axis: object, ndim: int, op: str) -> tuple[int, ...]:
    """``None|int|tuple`` to a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)  # type: ignore[arg-type]
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)):
            raise TypeError(f"{op}: axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ShapeError(f"{op}: axis {a} is out of bounds for an array of ndim {ndim}")
        out.append(int(a) % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {axis!r}")
    return tuple(sorted(out))
