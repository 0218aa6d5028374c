"""Reduction rows, and next to them what every renderer needs to compute a reduction.

A row gives the NumPy reference and the type rule of the result.  A :class:`Reduction` in
:data:`REDUCTIONS` gives the facts a native renderer needs (C and CUDA read the same ones, so a
reduction cannot start from ``-inf`` on one target and from ``-DBL_MAX`` on another):

* ``combine``: the binary elementwise op (a row name) that folds an element into the running
  value and merges two partial results (threads, blocks, chunks).  ``c_operator`` spells it in
  C: the infix operator, or for the selecting combines (max/min) the comparison by which an
  element replaces the running value; ``omp`` is its OpenMP ``reduction(...)`` identifier.
* ``identity(dtype)``: the value a reduction of nothing starts from, per operand dtype (max of
  float64 starts from -inf, of int32 from the dtype's minimum, of bool from False);
  ``c_identity(dtype)`` spells it with ``<math.h>``/``<stdint.h>`` names.
* ``accumulator(dtype)``: the dtype the running value is kept in: sums and products of floats
  in float64 (a float32 sum accumulates in double), of integers and bools in int64 (NumPy's
  widening); a mean in float64 for every dtype (NumPy's ``mean`` of ints sums in float64: an
  int64 accumulator would wrap, ``mean([2**62] * 4)`` negative); max/min in the operand's dtype;
  all/any as a truth flag (``"bool"``; renderers pick the C type of a flag: ``accumulate == "flag"``).
* ``mean``: the result is the accumulated sum divided by the element count;
  ``tracks_nan(dtype)``: a comparison drops NaN, so a selecting combine over floats must carry
  a NaN flag (or let NaN win the comparison) to return NaN as NumPy does.

``argmax``/``argmin`` have rows but no :class:`Reduction`: they run as NumPy steps (the keys of
:data:`REDUCTIONS` are the reductions a native kernel computes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from exprc.errors import ShapeError
from exprc.graph import Node
from exprc.ops.table import Op, _errstate, cast, register
from exprc.types import TensorType, float_dtype, is_float, shape_str


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
        # (a static size of 0; None is checked per call)
        identity = bool(attrs.get("identity", False))
        check_identity(name, x.type.shape, axes, identity)
        if identity:
            IDENTITY_MADE[0] = True
        return (x,), TensorType(dt, shape)

    return infer


#: The reductions without an identity: over a zero-size axis they raise (NumPy raises ValueError).
#: A max or min node with the attribute ``identity=True`` gives its combine's identity there instead
#: (-inf for a float max, as NumPy's ``max(x, initial=-inf)``): the shift of the stable forms the
#: rewrite rules, exprc.logsumexp and exprc.softmax build, whose formulas are defined over an empty
#: axis (a log-sum-exp of nothing is -inf, a softmax of nothing is empty) though the user wrote no max.
NO_IDENTITY = frozenset({"max", "min", "argmax", "argmin"})
#: Whether this process has made a node with ``identity=True``, by a type rule or by unpickling
#: (graph._unpickle_graph): pipeline.share_maxima looks for them only then (a walk over the whole
#: graph, 4% of a 30,000-node graph's optimize).
IDENTITY_MADE = [False]


def check_identity(name: str, shape: tuple, axis: tuple, identity: bool = False) -> None:
    """A reduction of :data:`NO_IDENTITY` over a zero-size axis of ``shape``: exprc's ShapeError, on
    every backend (the C planner, the NumPy backend, argmax's NumPy step), not NumPy's ValueError;
    nothing with ``identity`` (the node's attribute, see above)."""
    if not identity and name in NO_IDENTITY and any(shape[a] == 0 for a in axis):
        raise ShapeError(f"{name}: zero-size reduction over axis {tuple(axis)} of shape {shape_str(shape)}")


def _np_reduce(fn: Callable, dtype: str | None = None, name: str | None = None) -> Callable:
    def impl(x: np.ndarray, axis: tuple, keepdims: bool, identity: bool = False) -> np.ndarray:
        kw: dict = {"dtype": dtype} if dtype else {}
        if name is not None:
            check_identity(name, x.shape, axis, identity)
            if identity:
                kw["initial"] = REDUCTIONS[name].identity(x.dtype.name)
        return fn(x, axis=axis, keepdims=keepdims, **kw)

    impl.__name__ = fn.__name__
    return _errstate(impl)


# The references keep the running value in the accumulator REDUCTIONS declares, as the native
# kernels do: a float32 sum/prod/mean runs in float64 and is rounded once (NumPy keeps float32; a
# deliberate deviation, README "Deviations from NumPy"), ints and bools widen to int64 (mean: float64).
def _np_sum(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
    acc = np.float64 if x.dtype.kind == "f" else np.int64
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=acc).astype(x.dtype if acc is np.float64 else acc, copy=False)


def _np_prod(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
    acc = np.float64 if x.dtype.kind == "f" else np.int64
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=acc).astype(x.dtype if acc is np.float64 else acc, copy=False)


def _np_mean(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
    # np.mean's own steps (its sum, then a division by the count: the same bits), without its
    # "Mean of empty slice" warning: over an empty axis 0 / 0 is NaN under _errstate, silently, as
    # every other NaN the backends compute (the C kernels warn of nothing)
    dt = x.dtype if x.dtype.kind == "f" else np.float64
    count = math.prod(x.shape[a] for a in axis)
    return (np.sum(x, axis=axis, keepdims=keepdims, dtype=np.float64) / count).astype(dt, copy=False)


def _np_arg(fn: Callable, name: str) -> Callable:
    def impl(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
        check_identity(name, x.shape, axis)
        if len(axis) == x.ndim and x.ndim != 1:
            r = fn(x.reshape(-1), axis=0)
            return np.reshape(r, (1,) * x.ndim) if keepdims else r
        return fn(x, axis=axis[0], keepdims=keepdims)

    impl.__name__ = fn.__name__
    return impl


_REDUCE = [
    # name, NumPy reference, type rule
    ("sum", _errstate(_np_sum), "accumulate"),
    ("prod", _errstate(_np_prod), "accumulate"),
    ("mean", _errstate(_np_mean), "float"),
    ("max", _np_reduce(np.max, name="max"), "same"),
    ("min", _np_reduce(np.min, name="min"), "same"),
    ("all", _np_reduce(np.all), "bool"),
    ("any", _np_reduce(np.any), "bool"),
    ("argmax", _errstate(_np_arg(np.argmax, "argmax")), "index"),
    ("argmin", _errstate(_np_arg(np.argmin, "argmin")), "index"),
]
for _name, _fn, _rule in _REDUCE:
    register(Op(_name, "reduce", _fn, _reduce_infer(_name, _rule), attr_names=("axis", "keepdims"),
                optional_attrs=("identity",) if _name in ("max", "min") else ()))


# -- what renderers need: identity, accumulator, combine ------------------------------------------
@dataclass(frozen=True)
class Reduction:
    """How a native kernel computes one reduction (see the module docstring)."""

    op: str
    combine: str  #: binary elementwise row merging two partial results
    c_operator: str  #: C infix operator of the combine; for max/min the comparison selecting v over acc
    omp: str  #: OpenMP reduction identifier of the combine
    #: "wide" (float64 / int64), "float" (float64), "same" (the operand's dtype) or "flag" (a truth value)
    accumulate: str
    initial: bool | int | str  #: the identity: a value, or "lowest" / "highest" of the operand's dtype
    mean: bool = False  #: divide the accumulated sum by the element count

    @property
    def selects(self) -> bool:
        """The combine picks one of its operands (max/min) rather than computing a new value."""
        return self.combine in ("maximum", "minimum")

    def accumulator(self, dtype: str) -> str:
        """The dtype the running value is kept in, for an operand of ``dtype``."""
        if self.accumulate == "wide":
            return "float64" if is_float(dtype) else "int64"
        if self.accumulate == "float":
            return "float64"
        return "bool" if self.accumulate == "flag" else dtype

    def identity(self, dtype: str) -> bool | int | float:
        """The start value for an operand of ``dtype`` (a Python value of the accumulator's kind)."""
        acc = self.accumulator(dtype)
        if isinstance(self.initial, str):  # the extremes of the dtype
            lowest = self.initial == "lowest"
            if is_float(acc):
                return -math.inf if lowest else math.inf
            if acc == "bool":
                return not lowest
            info = np.iinfo(acc)
            return int(info.min if lowest else info.max)
        if acc == "bool":
            return bool(self.initial)
        return float(self.initial) if is_float(acc) else int(self.initial)

    def c_identity(self, dtype: str) -> str:
        """The identity as C source: ``INFINITY``/``-INFINITY``, ``INT64_MIN``-style names for the
        integer extremes, else the plain number (``0``, ``1``)."""
        v = self.identity(dtype)
        if isinstance(v, float) and math.isinf(v):
            return "INFINITY" if v > 0 else "-INFINITY"
        acc = self.accumulator(dtype)
        if acc in ("int32", "int64") and isinstance(self.initial, str):
            return f"INT{acc[3:]}_{'MIN' if self.initial == 'lowest' else 'MAX'}"
        return str(int(v))

    def tracks_nan(self, dtype: str) -> bool:
        """Whether the kernel must carry NaN explicitly: a comparison drops it, arithmetic does not."""
        return self.selects and is_float(dtype)


#: The reductions native kernels compute, by row name.
REDUCTIONS: dict[str, Reduction] = {r.op: r for r in (
    Reduction("sum", "add", "+", "+", "wide", 0),
    Reduction("prod", "mul", "*", "*", "wide", 1),
    Reduction("mean", "add", "+", "+", "float", 0, mean=True),
    Reduction("max", "maximum", ">", "max", "same", "lowest"),
    Reduction("min", "minimum", "<", "min", "same", "highest"),
    Reduction("all", "and", "&", "&", "flag", True),
    Reduction("any", "or", "|", "|", "flag", False),
)}
