"""Indexing beyond static views: symbolic ints and slice bounds, integer arrays (gather), boolean
masks, and writing into an index (``set_subtensor`` / ``inc_subtensor``, ``x.at[idx].set(v)``).

``x[key]`` with only static ints, slices, ``None`` and ``...`` stays the ``getitem`` view
(:func:`exprc.api.getitem`); any other key builds a ``subtensor`` node (see
:mod:`exprc.ops.index` for the encoding and NumPy's rules it follows).  This module imports no
API module (api imports it).
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from exprc.errors import IndexOutOfBounds
from exprc.graph import Node, constant_node
from exprc.ops import OPS
from exprc.ops.index import shift_index


def _label(n: Node) -> str:
    """What an index error calls operand ``n`` (short: saved graphs keep attribute strings short)."""
    if n.op == "input":
        return (n.arg("name") or "input")[:16]
    return "constant" if n.op == "constant" else n.op[:16]


def _int_scalar(p: Any, what: str) -> Node:
    if isinstance(p, Node):
        if p.ndim != 0 or not (p.dtype.startswith("int") or p.dtype.startswith("uint")):
            raise IndexOutOfBounds(f"{what} must be a 0-d integer, got {p.dtype} of shape {p.type.shape}")
        return p
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
        raise IndexOutOfBounds(f"{what} must be an int or a 0-d integer expression, got {type(p).__name__}")
    return constant_node(np.int64(p))


def _array_index(k: Any) -> Node:
    if isinstance(k, Node):
        return k
    a = np.asarray(k)
    if a.size == 0 and a.dtype.kind == "f":  # x[[]]: NumPy reads an empty list as an empty int index
        a = a.astype(np.int64)
    if a.dtype.kind not in "iub":
        raise IndexOutOfBounds(f"arrays used as indices must be of integer (or boolean) type, got {a.dtype}")
    return constant_node(a)


def getitem(x: Node, key: Any) -> Node:
    """``x[key]``: ``x`` itself for a key of full slices, a ``getitem`` view for static ints,
    slices, None and ``...`` (constant arrays and masks too, as constants), else a ``subtensor``."""
    key = key if isinstance(key, tuple) else (key,)
    if builtins.sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    operands: list[Node] = [x]
    items: list[tuple] = []
    parsed: list[Any] = []
    axis: int | None = 0  # the axis the next item indexes (None after an ellipsis)
    for k in key:  # convert arrays first: a mask uses as many axes as it has dimensions
        if isinstance(k, (np.ndarray, list)) and np.asarray(k).dtype == bool and np.ndim(k) > 0:
            m = np.asarray(k)
            dims = x.type.shape[axis:axis + m.ndim] if axis is not None else ()
            if len(dims) == m.ndim and None not in dims:  # A constant mask over static axes is its
                if dims != m.shape:  # nonzero() arrays (as NumPy reads it): a static shape, no stages
                    raise IndexOutOfBounds(f"boolean index of shape {m.shape} does not match axes {axis}.. of "
                                           f"shape {x.type.shape}")
                parsed.extend(constant_node(a.astype(np.int64)) for a in np.nonzero(m))
            else:
                parsed.append(constant_node(m))
        elif isinstance(k, (Node, np.ndarray, list)):
            parsed.append(_array_index(k) if not (isinstance(k, Node) and k.ndim == 0) else k)
        else:
            parsed.append(k)
        if axis is not None and k is not None:
            if isinstance(k, Node):  # (before np.asarray: a node of static shape is iterable)
                axis += k.ndim if k.dtype == "bool" else 1
            else:
                axis = None if k is Ellipsis else axis + (
                    np.ndim(k) if not isinstance(k, (bool, np.bool_)) and np.asarray(k).dtype == bool else 1)
    used = builtins.sum(p.ndim if isinstance(p, Node) and p.dtype == "bool" else
                        (0 if p is None or p is Ellipsis else 1) for p in parsed)
    if used > x.ndim:
        raise IndexOutOfBounds(f"too many indices for an expression of ndim {x.ndim}: {used} were given")

    def operand(n: Node) -> int:
        operands.append(n)
        return len(operands) - 1

    for k in parsed:
        if k is Ellipsis:
            items.extend(("s", None, None, 1) for _ in range(x.ndim - used))
        elif k is None:
            items.append(("n",))
        elif isinstance(k, (bool, np.bool_)):
            raise IndexError("boolean scalar indices are not supported (use exprc.where)")
        elif isinstance(k, (int, np.integer)):
            items.append(("i", int(k)))
        elif isinstance(k, slice):
            if builtins.all(not isinstance(p, Node) for p in (k.start, k.stop, k.step)):
                if k.step == 0:
                    raise ValueError("slice step cannot be zero")
                items.append(("s", *(None if p is None else int(_int_scalar(p, "a slice bound").value)
                                     for p in (k.start, k.stop)), 1 if k.step is None else int(k.step)))
            else:
                if k.step is not None and not isinstance(k.step, Node) and int(k.step) == 0:
                    raise ValueError("slice step cannot be zero")
                items.append(("S", *(None if p is None else operand(_int_scalar(p, "a slice bound"))
                                     for p in (k.start, k.stop, k.step))))
        elif isinstance(k, Node):
            if k.dtype == "bool":
                items.append(("M", operand(k)))
            elif not (k.dtype.startswith("int") or k.dtype.startswith("uint")):
                raise IndexOutOfBounds(f"arrays used as indices must be of integer (or boolean) type, got {k.dtype}")
            elif k.ndim == 0:
                items.append(("I", operand(k)))
            else:
                items.append(("A", operand(k)))
        else:
            raise IndexError(f"only ints, slices, None, ..., integer or boolean arrays and expressions are valid "
                             f"indices, got {type(k).__name__}")
    if len(operands) == 1:  # static: a view
        if builtins.all(i == ("s", None, None, 1) for i in items):
            return x
        return OPS["getitem"].make((x,), {"index": tuple(items)})
    labels = tuple(_label(n) for n in operands)
    return OPS["subtensor"].make(tuple(operands), {"index": tuple(items), "labels": labels})


def _write(part: Node, v: Any, mode: str, what: str) -> Node:
    if not isinstance(part, Node):
        raise TypeError(f"{what}: the first argument must be an indexed expression such as x[idx], "
                        f"got {type(part).__name__}")
    if part.op not in ("getitem", "subtensor"):  # x[:] is x: the whole array
        part = OPS["getitem"].make((part,), {"index": ()})
    x = part.inputs[0]
    v = v if isinstance(v, Node) else constant_node(np.asarray(v, dtype=x.dtype))
    labels = part.arg("labels") or tuple(_label(n) for n in part.inputs)
    labels = (labels[0], "value", *labels[1:])
    index = shift_index(part.arg("index"), 1)
    return OPS["scatter"].make((x, v, *part.inputs[1:]), {"index": index, "mode": mode, "labels": labels})


def set_subtensor(part: Node, v: Any) -> Node:
    """Theano's ``set_subtensor(x[idx], v)``: ``x`` with ``v`` written at ``idx`` (a new value;
    ``x`` is not changed).  ``v`` broadcasts to the indexed part; with repeated indices the last
    write wins, as in NumPy."""
    return _write(part, v, "set", "set_subtensor")


def inc_subtensor(part: Node, v: Any) -> Node:
    """Theano's ``inc_subtensor(x[idx], v)``: ``x`` with ``v`` added at ``idx``; repeated indices
    accumulate (as ``np.add.at``), in a fixed order, so results do not vary between runs."""
    return _write(part, v, "inc", "inc_subtensor")


class _AtIndex:
    def __init__(self, x: Node, key: Any):
        self._part = x[key]

    def get(self) -> Node:
        """``x[idx]``."""
        return self._part

    def set(self, v: Any) -> Node:
        """``x`` with ``v`` written at ``idx`` (:func:`set_subtensor`)."""
        return set_subtensor(self._part, v)

    def add(self, v: Any) -> Node:
        """``x`` with ``v`` added at ``idx``, repeated indices accumulating (:func:`inc_subtensor`)."""
        return inc_subtensor(self._part, v)


class At:
    """JAX's ``x.at[idx].set(v)`` / ``.add(v)`` / ``.get()`` spelling of the functional updates."""

    def __init__(self, x: Node):
        self._x = x

    def __getitem__(self, key: Any) -> _AtIndex:
        return _AtIndex(self._x, key)


__all__ = ["At", "getitem", "inc_subtensor", "set_subtensor"]
