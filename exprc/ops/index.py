"""Index rows: ``subtensor`` (indexing with symbolic ints, symbolic slice bounds, integer arrays and
boolean masks) and ``scatter`` (``set_subtensor`` / ``inc_subtensor`` into such an index).

Static basic indexing stays the ``getitem`` view (:mod:`exprc.ops.shape`); everything else is a
``subtensor`` node whose extra operands are the index values.  Both rows share one index
encoding, a superset of ``getitem``'s, so that a node is canonical and interns:

* ``("n",)`` a new axis; ``("i", k)`` a static int; ``("s", start, stop, step)`` a static slice;
* ``("I", j)`` the 0-d integer operand ``j`` (``node.inputs[j]``) as an int index;
* ``("S", ja, jb, jc)`` a slice whose start, stop and step are operands ``ja``, ``jb``, ``jc``
  (None: absent) — 0-d integers, constants for the static parts;
* ``("A", j)`` an integer array (gather: NumPy's advanced indexing, broadcast with the other
  array indices); ``("M", j)`` a boolean mask.

The result shape follows NumPy: advanced indices (arrays, and ints mixed with them) broadcast;
their axes replace the indexed ones when they are adjacent and go first otherwise.  A symbolic
slice bound or a mask makes the shape depend on values (``value_shape``): native backends then run
the graph in stages (:mod:`exprc.backends.staged`).  Out-of-range ints and array entries raise
:class:`~exprc.errors.IndexOutOfBounds` at call time naming the index operand, the axis and its
size: the rows run as NumPy steps (never a C read out of bounds).

``scatter(x, v, *index operands, index, mode)`` is x with ``v`` written (``mode="set"``) or added
(``"inc"``: repeated indices accumulate, as ``np.add.at``, deterministically) at the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc.errors import DTypeError, IndexOutOfBounds, ShapeError
from exprc.graph import Node
from exprc.ops.table import Op, cast, register
from exprc.types import TensorType, broadcast_shapes, shape_str

#: Item kinds that read an operand (positions after the kind tag).
_OPERAND_KINDS = {"I": 1, "S": 3, "A": 1, "M": 1}


def index_operands(index: tuple) -> list[int]:
    """The operand positions an index reads, in item order."""
    return [j for item in index for j in item[1:] if item[0] in _OPERAND_KINDS and j is not None]


def _const_int(n: Node) -> int | None:
    return int(n.value) if n.op == "constant" and n.ndim == 0 else None


def _advanced(item: tuple) -> bool:
    return item[0] in ("A", "M")


def index_shape(x_shape: tuple, index: tuple, operand_shapes: dict[int, tuple],
                const: dict[int, int | None], mask_sizes: dict[int, int | None] | None = None) -> tuple:
    """The shape of ``x[index]`` for an operand of shape ``x_shape`` (entries may be None).
    ``operand_shapes``: shape of each index operand; ``const``: its value when known (0-d ints);
    ``mask_sizes``: number of True entries of each mask operand when known."""
    has_adv = any(_advanced(it) for it in index)
    # NumPy: with arrays present, ints are advanced indices too (for the adjacency rule).
    adv_pos = [p for p, it in enumerate(index) if _advanced(it) or (has_adv and it[0] in ("i", "I"))]
    adjacent = not adv_pos or adv_pos == list(range(adv_pos[0], adv_pos[-1] + 1))
    adv_shapes = []
    parts: list[tuple] = []  # (position, dims) for basic items
    d = 0
    for p, it in enumerate(index):
        kind = it[0]
        if kind == "n":
            parts.append((p, (1,)))
            continue
        if kind == "M":
            mshape = operand_shapes[it[1]]
            for k, m in enumerate(mshape):
                n = x_shape[d + k] if d + k < len(x_shape) else None
                if m is not None and n is not None and m != n:
                    raise IndexOutOfBounds(f"boolean index did not match indexed array along axis {d + k}; "
                                           f"size of axis is {n} but size of the mask is {m}")
            adv_shapes.append(((mask_sizes or {}).get(it[1]),))
            d += len(mshape)
            continue
        n = x_shape[d] if d < len(x_shape) else None
        if kind in ("i", "I"):
            k = it[1] if kind == "i" else const.get(it[1])
            if k is not None and n is not None and not -n <= k < n:
                raise IndexOutOfBounds(f"index {k} is out of bounds for axis {d} with size {n}")
            if has_adv:
                adv_shapes.append(())
        elif kind == "A":
            adv_shapes.append(operand_shapes[it[1]])
        elif kind == "s":
            parts.append((p, (None if n is None else len(range(*slice(*it[1:]).indices(n))),)))
        else:  # "S"
            b = [None if j is None else const.get(j, None) for j in it[1:]]
            dynamic = any(j is not None and const.get(j) is None for j in it[1:])
            if b[2] == 0:
                raise ValueError("slice step cannot be zero")
            parts.append((p, (None if n is None or dynamic else len(range(*slice(*b).indices(n))),)))
        d += 1
    if d > len(x_shape):
        raise IndexOutOfBounds(f"too many indices for an expression of ndim {len(x_shape)}: {d} were given")
    rest = tuple(x_shape[d:])
    if not has_adv:
        return tuple(s for _, dims in parts for s in dims) + rest
    bshape = broadcast_shapes(adv_shapes, "advanced index") if adv_shapes else ()
    if adjacent:
        before = tuple(s for p, dims in parts if p < adv_pos[0] for s in dims)
        after = tuple(s for p, dims in parts if p > adv_pos[0] for s in dims)
        return before + tuple(bshape) + after + rest
    return tuple(bshape) + tuple(s for _, dims in parts for s in dims) + rest


def _check_operands(op: str, inputs: tuple, index: tuple, first: int) -> tuple:
    """Operand dtype/ndim checks; int operands made int64 (one C/NumPy type for index values)."""
    out = list(inputs)
    for it in index:
        for j in it[1:] if it[0] in _OPERAND_KINDS else ():
            if j is None:
                continue
            if not first <= j < len(inputs):
                raise ValueError(f"{op}: index operand {j} out of range")
            v = inputs[j]
            if it[0] == "M":
                if v.dtype != "bool":
                    raise DTypeError(f"{op}: a mask index must be bool, got {v.dtype}")
                continue
            if not (v.dtype.startswith("int") or v.dtype.startswith("uint")):
                raise DTypeError(f"{op}: index operand {j} must be an integer, got {v.dtype}")
            if it[0] in ("I", "S") and v.ndim != 0:
                raise ShapeError(f"{op}: a scalar index must be 0-d, got shape {shape_str(v.type.shape)}")
            if it[0] != "A":
                out[j] = cast(v, "int64")
    return tuple(out)


def _static(inputs: tuple) -> tuple[dict, dict]:
    shapes = {j: n.type.shape for j, n in enumerate(inputs)}
    const = {j: _const_int(n) for j, n in enumerate(inputs)}
    return shapes, const


def _infer_subtensor(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    index = attrs["index"]
    inputs = _check_operands("subtensor", inputs, index, 1)
    shapes, const = _static(inputs)
    return inputs, TensorType(inputs[0].dtype, index_shape(inputs[0].type.shape, index, shapes, const))


def _infer_scatter(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    index, mode = attrs["index"], attrs["mode"]
    if mode not in ("set", "inc"):
        raise ValueError(f"scatter: mode must be 'set' or 'inc', got {mode!r}")
    inputs = _check_operands("scatter", inputs, index, 2)
    x, v = inputs[0], inputs[1]
    shapes, const = _static(inputs)
    part = index_shape(x.type.shape, index, shapes, const)
    if v.ndim > len(part):
        raise ShapeError(f"{mode}_subtensor: cannot put shape {shape_str(v.type.shape)} into a part of shape "
                         f"{shape_str(part)}")
    for a, b in zip(reversed(v.type.shape), reversed(part)):
        if a is not None and b is not None and a != 1 and a != b:
            raise ShapeError(f"{mode}_subtensor: cannot put shape {shape_str(v.type.shape)} into a part of shape "
                             f"{shape_str(part)}")
    return (x, cast(v, x.dtype), *inputs[2:]), x.type


# -- NumPy implementations -------------------------------------------------------------------------
def index_key(index: tuple, operands: Sequence[Any], shape: tuple, labels: Sequence[str] = ()) -> tuple:
    """The NumPy key of ``index`` with operand values ``operands`` (``operands[j]`` for item
    operand j), checking ints and arrays against ``shape`` so errors name the index operand."""
    key: list = []
    d = 0

    def label(j: int) -> str:
        return labels[j] if j < len(labels) and labels[j] else f"index operand {j}"

    for it in index:
        kind = it[0]
        if kind == "n":
            key.append(None)
            continue
        if kind == "i":
            key.append(it[1])
        elif kind == "s":
            key.append(slice(*it[1:]))
        elif kind == "I":
            k = int(operands[it[1]])
            if d < len(shape) and not -shape[d] <= k < shape[d]:
                raise IndexOutOfBounds(f"{label(it[1])} = {k} is out of bounds for axis {d} with size {shape[d]}")
            key.append(k)
        elif kind == "S":
            b = [None if j is None else int(operands[j]) for j in it[1:]]
            if b[2] == 0:
                raise ValueError(f"slice step cannot be zero ({label(it[3])})")
            key.append(slice(*b))
        elif kind == "A":
            a = np.asarray(operands[it[1]])
            n = shape[d] if d < len(shape) else 0
            if a.size and (a.min() < -n or a.max() >= n):
                bad = a[(a < -n) | (a >= n)].flat[0]
                raise IndexOutOfBounds(f"{label(it[1])}: index {int(bad)} is out of bounds for axis {d} "
                                       f"with size {n}")
            key.append(a)
        else:  # "M"
            m = np.asarray(operands[it[1]])
            if m.shape != tuple(shape[d:d + m.ndim]):
                raise IndexOutOfBounds(f"{label(it[1])}: a mask of shape {shape_str(m.shape)} does not match "
                                       f"axes {d}..{d + m.ndim - 1} of shape {shape_str(shape)}")
            key.append(m)
            d += m.ndim
            continue
        d += 1
    return tuple(key)


def _subtensor(x: np.ndarray, *operands: Any, index: tuple, labels: tuple = ()) -> np.ndarray:
    x = np.asarray(x)
    return x[index_key(index, (None, *operands), x.shape, labels)]


def _subtensor_into(out: np.ndarray, x: np.ndarray, *operands: Any, index: tuple, labels: tuple = ()) -> None:
    x = np.asarray(x)
    key = index_key(index, (None, *operands), x.shape, labels)
    if len(key) == 1 and isinstance(key[0], np.ndarray) and key[0].dtype.kind in "iu" and out.flags.c_contiguous:
        np.take(x, key[0], axis=0, out=out, mode="wrap")  # bounds checked above: wrap only maps -k
    else:
        out[...] = x[key]


def _scatter_into(out: np.ndarray, x: np.ndarray, v: np.ndarray, *operands: Any, index: tuple, mode: str,
                  labels: tuple = ()) -> None:
    x = np.asarray(x)
    key = index_key(index, (None, None, *operands), x.shape, labels)
    v = np.asarray(v)
    _check_value(mode, x.shape, index, (None, v, *operands), v.shape)
    if np.may_share_memory(out, v) or any(isinstance(k, np.ndarray) and np.may_share_memory(out, k) for k in key):
        v, key = v.copy(), tuple(k.copy() if isinstance(k, np.ndarray) else k for k in key)  # out= over an operand
    if not same_buffer(out, x):  # (in place when the planner handed x's own buffer)
        np.copyto(out, x)
    if mode == "set":
        out[key] = v
        return
    if not any(isinstance(k, np.ndarray) for k in key):  # basic indexing: each element once
        out[key] += v
        return
    np.add.at(out, key, v)  # repeats accumulate in index order: what the C row loop does, bit for bit


def check_index(node: Node, x: np.ndarray, *operands: Any) -> None:
    """The errors ``subtensor`` ``node`` would raise for these operands, without gathering (the
    planner skips a gather whose value nothing reads, only its shape)."""
    index_key(node.arg("index"), (None, *operands), np.shape(x), node.arg("labels") or ())


def same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same memory seen the same way (an in-place step)."""
    return a is b or (a.shape == b.shape and a.strides == b.strides
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _scatter(x: np.ndarray, v: np.ndarray, *operands: Any, index: tuple, mode: str, labels: tuple = ()) -> np.ndarray:
    x = np.asarray(x)
    out = np.array(x, copy=True)
    _scatter_into(out, out, v, *operands, index=index, mode=mode, labels=labels)
    return out


def _subtensor_value_shaped(node: Node) -> bool:
    """A slice bound that is not a constant, or a mask: the shape depends on values."""
    for it in node.arg("index"):
        if it[0] == "M":
            return True
        if it[0] == "S" and any(j is not None and node.inputs[j].op != "constant" for j in it[1:]):
            return True
    return False


def _known(values: dict[int, Any]) -> tuple[dict, dict]:
    """From operand values known on the host: the 0-d ints, and each mask's count of True."""
    const = {j: int(v) for j, v in values.items() if np.ndim(v) == 0}
    masks = {j: int(np.count_nonzero(v)) for j, v in values.items() if np.ndim(v) and np.asarray(v).dtype == bool}
    return const, masks


def shift_index(index: tuple, by: int) -> tuple:
    """``index`` with its operand positions moved by ``by`` (scatter's value sits before them)."""
    return tuple(it if it[0] not in _OPERAND_KINDS else (it[0], *(None if j is None else j + by for j in it[1:]))
                 for it in index)


def _check_value(mode: str, x_shape: tuple, index: tuple, operands: Sequence[Any], v: tuple) -> None:
    """A value must broadcast to the indexed part (ShapeError naming both shapes, on every backend)."""
    vals = {j: o for j, o in enumerate(operands) if j >= 2}
    part = index_shape(tuple(x_shape), index, {j: np.shape(o) for j, o in vals.items()}, *_known(vals))
    if None not in part and (len(v) > len(part) or any(a not in (1, b) for a, b in zip(reversed(v), reversed(part)))):
        raise ShapeError(f"{mode}_subtensor: cannot put a value of shape {shape_str(v)} into a part of "
                         f"shape {shape_str(part)}")


def subtensor_step_shape(node: Node, shapes: Sequence[tuple], values: dict[int, Any]) -> tuple:
    """The shape of a subtensor/scatter step from its operands' shapes (and the values of 0-d
    operands when known): the planner's rule, so that it never runs a step on placeholder zeros."""
    if node.op == "subtensor":
        return index_shape(tuple(shapes[0]), node.arg("index"), dict(enumerate(shapes)), *_known(values))
    return tuple(shapes[0])


register(Op("subtensor", "shape", _subtensor, _infer_subtensor, attr_names=("index", "labels"), nin=(2, None),
            value_shape=_subtensor_value_shaped, into=_subtensor_into, step_shape=subtensor_step_shape))
register(Op("scatter", "shape", _scatter, _infer_scatter, attr_names=("index", "mode", "labels"), nin=(2, None),
            into=_scatter_into, step_shape=subtensor_step_shape, in_place=True))
