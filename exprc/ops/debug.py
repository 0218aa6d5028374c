"""Debugging rows: ``print`` (Theano's ``Print``), the identity on values that prints them.

``print(x, message, summary)`` is ``x``; every evaluation writes ``message`` and the value (or,
with ``summary``, its shape, dtype, min, max, mean and NaN/inf counts) to standard output.  It is
a NumPy step on the native backends, between the fused kernels that make ``x`` and those that read
it (the rest of the graph fuses as before), and ``impure``: never folded, never run once per plan.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from exprc.ops.table import Op, register
from exprc.types import TensorType, shape_str


def _infer_print(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    if len(inputs) != 1:
        raise TypeError(f"print takes one operand, got {len(inputs)}")
    if not isinstance(attrs.get("message"), str):
        raise TypeError(f"print: message must be a string, got {type(attrs.get('message')).__name__}")
    return inputs, inputs[0].type


def describe(value: Any) -> str:
    """The summary ``print(..., summary=True)`` writes: shape, dtype, and over the finite values
    min, max and mean, with the counts of NaN and infinite values."""
    v = np.asarray(value)
    text = f"shape={shape_str(v.shape)} dtype={v.dtype}"
    if v.size == 0 or v.dtype.kind not in "biuf":
        return text
    finite = v[np.isfinite(v)] if v.dtype.kind == "f" else v
    if finite.size:
        with np.errstate(all="ignore"):
            text += (f" min={finite.min().item()!r} max={finite.max().item()!r}"
                     f" mean={finite.mean(dtype=np.float64).item()!r}")
    if v.dtype.kind == "f":
        text += f" nan={int(np.isnan(v).sum())} inf={int(np.isinf(v).sum())}"
    return text


def _print(x: Any, message: str, summary: bool) -> np.ndarray:
    v = np.asarray(x)
    body = describe(v) if summary else np.array2string(v, threshold=1000)
    sys.stdout.write(f"{message} {body}\n" if message else f"{body}\n")
    sys.stdout.flush()
    return v


def _print_shape(node: Any, shapes: list, known: dict) -> tuple:
    return tuple(shapes[0])  # (the planner must not run it on placeholder zeros: it would print them)


register(Op("print", "debug", _print, _infer_print, attr_names=("message", "summary"), nin=(1, 1),
            step_shape=_print_shape, impure=True))
