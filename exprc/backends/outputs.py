"""``out=`` arrays: the checks and copies every backend shares.

A backend whose kernels write straight into the caller's arrays checks each one with
:func:`check_out` before the call; one that computes fresh arrays copies them with
:func:`copy_into`.  Both name the output (``out[j]``) and say what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc.errors import InputTypeError
from exprc.types import shape_str


def check_out(j: int, dst: Any, shape: tuple, dtype: Any) -> None:
    """Raise unless ``dst`` can receive output ``j`` (an ndarray of that dtype and shape, writeable)."""
    if not isinstance(dst, np.ndarray) or dst.dtype != np.dtype(dtype) or dst.shape != tuple(shape):
        got = f"{dst.dtype} array of shape {shape_str(dst.shape)}" if isinstance(dst, np.ndarray) else \
            type(dst).__name__
        raise InputTypeError(f"out[{j}]: expected a {np.dtype(dtype)} array of shape {shape_str(shape)}, got {got}")
    if not dst.flags.writeable:
        raise InputTypeError(f"out[{j}]: the array is read-only")


def check_count(out: Sequence[Any], n: int) -> None:
    """Raise unless ``out`` lists one entry per output."""
    if len(out) != n:
        raise InputTypeError(f"out: expected {n} arrays, got {len(out)}")


def copy_into(out: Sequence[Any], results: list) -> list:
    """Copy computed ``results`` into the caller's ``out=`` arrays, checking each one; a ``None``
    in ``out`` keeps the computed array.  Returns what the call returns."""
    outs = []
    for j, (dst, src) in enumerate(zip(out, results)):
        if dst is None:
            outs.append(src)
            continue
        src = np.asarray(src)
        check_out(j, dst, src.shape, src.dtype)
        np.copyto(dst, src)
        outs.append(dst)
    return outs


def overlapping(out: Sequence[Any], arrays: Sequence[Any]) -> bool:
    """Whether an ``out=`` array may share memory with an argument (then the kernels could read what
    they already wrote: compute into fresh arrays and copy, as NumPy does for overlapping operands)."""
    return any(isinstance(o, np.ndarray) and any(np.may_share_memory(o, a) for a in arrays) for o in out)


__all__ = ["check_count", "check_out", "copy_into", "overlapping"]
