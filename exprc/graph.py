"""The graph IR: one immutable, interned node type and iterative traversals.

A :class:`Node` is ``(op, inputs, attrs, type)``.  Nodes are interned: building
the same expression twice returns the same object, so structural equality is
identity and common-subexpression elimination comes for free.  ``==`` is
therefore identity (nodes are dict keys); use :func:`exprc.equal` for the
elementwise comparison.

All traversals use explicit stacks: a chain of 100,000 nodes must build,
print, optimize and evaluate without touching Python's recursion limit.

This module is the bottom of the package: it imports nothing above :mod:`exprc.types`.  What
needs the layers above is installed from there: operators, ``.shape``, ``.T`` and ``.eval`` by
:mod:`exprc.api`, ``repr`` by :mod:`exprc.printing`, and the type rules :func:`rebuild` uses by
the op table (:func:`install_type_rules`).  networkx conversion lives in :mod:`exprc.nxbridge`.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from _weakref import _remove_dead_weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from exprc.types import _KNOWN, TensorType, as_dtype

# The intern table: key -> weak reference to the node.  A plain dict of references whose callback
# drops the entry (what a WeakValueDictionary does, without its Python-level methods: building
# nodes is the inner loop of every rewrite pass).
_TABLE: dict[tuple, _Ref] = {}
_TABLE_LOCK = threading.Lock()


class _Ref(weakref.ref):
    __slots__ = ("key",)


def _forget(ref: _Ref) -> None:
    # Runs when a node dies, possibly while some thread holds _TABLE_LOCK, so it takes no lock;
    # it removes the entry only if that still holds a dead reference (not a node interned since).
    _remove_dead_weakref(_TABLE, ref.key)


_UIDS = itertools.count()


class ConstValue:
    """A hashable, read-only wrapper of a constant's array (compared by bytes)."""

    __slots__ = ("_hash", "_key", "array")

    def __init__(self, array: np.ndarray):
        array = np.array(array, copy=True)
        array.setflags(write=False)
        self.array = array
        self._key = (array.dtype.str, array.shape, array.tobytes())
        self._hash = hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConstValue) and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return np.array2string(self.array, threshold=6) if self.array.ndim else repr(self.array.item())

    def __reduce__(self) -> tuple:
        # (rebuilt from the array: the hash of the bytes differs between processes, so a pickled
        # _hash would make an equal constant a different node)
        return ConstValue, (self.array,)


class Node:
    """One immutable, interned expression node.

    Attributes: ``op`` (the op's name in :mod:`exprc.ops`), ``inputs`` (an
    ordered tuple of nodes), ``attrs`` (a sorted tuple of ``(name, value)``
    pairs) and ``type`` (a :class:`~exprc.types.TensorType`).
    """

    __slots__ = ("__weakref__", "attrs", "inputs", "op", "type")

    op: str
    inputs: tuple[Node, ...]
    attrs: tuple[tuple[str, Any], ...]
    type: TensorType

    def __new__(cls, op: str, inputs: Sequence[Node], attrs: dict | tuple, type: TensorType) -> Node:  # noqa: PYI034
        attrs_t = tuple(sorted(attrs.items())) if isinstance(attrs, dict) else tuple(attrs)
        inputs = tuple(inputs)
        # the type's fields, not the type: equal keys all the same, and hashing a tuple of str and
        # ints is cheaper than a dataclass's Python-level __hash__
        key = (op, inputs, attrs_t, type.dtype, type.shape)
        with _TABLE_LOCK:
            ref = _TABLE.get(key)
            node = ref() if ref is not None else None
            if node is None:
                node = object.__new__(cls)
                object.__setattr__(node, "op", op)
                object.__setattr__(node, "inputs", inputs)
                object.__setattr__(node, "attrs", attrs_t)
                object.__setattr__(node, "type", type)
                ref = _Ref(node, _forget)
                ref.key = key
                _TABLE[key] = ref
        return node

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("exprc nodes are immutable")

    # -- attributes ----------------------------------------------------------
    def arg(self, name: str, default: Any = None) -> Any:
        """The value of attribute ``name``."""
        for k, v in self.attrs:
            if k == name:
                return v
        return default

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return self.type.ndim

    @property
    def name(self) -> str | None:
        return self.arg("name") if self.op == "input" else None

    @property
    def is_input(self) -> bool:
        return self.op == "input"

    @property
    def is_constant(self) -> bool:
        return self.op == "constant"

    @property
    def value(self) -> np.ndarray:
        """The array of a constant node."""
        if self.op != "constant":
            raise AttributeError(f"{self.op} node has no constant value")
        return self.arg("value").array

    # Identity semantics (nodes are interned), with object's C implementations: hashing nodes
    # is the inner loop of every rewrite pass.
    __hash__ = object.__hash__
    __eq__ = object.__eq__
    __ne__ = object.__ne__

    def __bool__(self) -> bool:
        raise TypeError("the truth value of a symbolic exprc expression is unknown; use exprc.where or .eval()")

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d expression")
        n = self.type.shape[0]
        if n is None:
            raise TypeError("len() of an expression whose first dimension is known only at call time")
        return n

    def __iter__(self):
        raise TypeError("exprc expressions are not iterable; index them explicitly")

    def __reduce__(self) -> tuple:
        """Pickle flat: a deep expression must pickle without recursion (pickle's default walk
        of ``inputs`` recursed once per level and failed near depth 1,000).

        An input pickles as a fresh input of the same name and type (as a pickled function's
        inputs do); a constant as its array.  Any other node pickles as its whole subgraph:
        the leaves (pickled as objects, so pickle's memo keeps one new input, or one shared
        variable, per original within one pickle) and one row per inner node, operands first,
        rebuilt by :func:`_unpickle_graph` in one loop.
        """
        if self.op == "input":
            return _unpickle_input, (self.arg("name"), self.dtype, self.type.shape)
        if self.op == "constant":
            return constant_node, (self.value, self.dtype)
        if not self.inputs:
            return _unpickle_graph, ((), ((self.op, (), self.attrs, self.dtype, self.type.shape),))
        order = toposort([self])
        index: dict[Node, int] = {}
        leaves = []
        for n in order:
            if not n.inputs:
                index[n] = len(leaves)
                leaves.append(n)
        rows = []
        for n in order:
            if n.inputs:
                index[n] = len(leaves) + len(rows)
                rows.append((n.op, tuple(index[i] for i in n.inputs), n.attrs, n.dtype, n.type.shape))
        return _unpickle_graph, (tuple(leaves), tuple(rows))


def input_node(name: str | None, dtype: str, shape: tuple) -> Node:
    """A fresh graph input (never interned with another input)."""
    return Node("input", (), {"name": name, "uid": next(_UIDS)}, TensorType(as_dtype(dtype), tuple(shape)))


def constant_node(value: object, dtype: str | None = None) -> Node:
    """A constant node holding ``value`` (interned by dtype, shape and bytes)."""
    arr = np.asarray(value, dtype=None if dtype is None else np.dtype(dtype))
    name = _KNOWN.get(arr.dtype)
    if name is None:
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float64)
        name = as_dtype(arr.dtype, "constant")
    return Node("constant", (), {"value": ConstValue(arr)}, TensorType(name, arr.shape))


def _unpickle_input(name: str | None, dtype: str, shape: tuple) -> Node:
    return input_node(name, dtype, shape)


def _unpickle_graph(leaves: tuple, rows: tuple) -> Node:
    """Rebuild what :meth:`Node.__reduce__` wrote: rows in order, operands before users."""
    built = list(leaves)
    for op, refs, attrs, dtype, shape in rows:
        built.append(Node(op, tuple(built[i] for i in refs), attrs, TensorType(dtype, tuple(shape))))
        if op in ("max", "min") and ("identity", True) in tuple(attrs):  # (no type rule ran: say so here)
            from exprc.ops.reduce import IDENTITY_MADE

            IDENTITY_MADE[0] = True
    return built[-1]


# -- traversal ----------------------------------------------------------------
def toposort(outputs: Iterable[Node]) -> list[Node]:
    """All nodes reachable from ``outputs``, inputs before users, deterministically ordered."""
    order: list[Node] = []
    seen: set[int] = set()
    for root in outputs:
        if id(root) in seen:
            continue
        stack: list[tuple[Node, int]] = [(root, 0)]
        seen.add(id(root))
        while stack:
            node, i = stack[-1]
            if i < len(node.inputs):
                stack[-1] = (node, i + 1)
                child = node.inputs[i]
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, 0))
            else:
                stack.pop()
                order.append(node)
    return order


def graph_inputs(outputs: Iterable[Node]) -> list[Node]:
    """The ``input`` nodes the outputs depend on, in traversal order."""
    return [n for n in toposort(outputs) if n.op == "input"]


def clients(order: Sequence[Node]) -> dict[Node, int]:
    """How many times each node is used as an operand within ``order``."""
    count: dict[Node, int] = {}
    for n in order:
        for i in n.inputs:
            count[i] = count.get(i, 0) + 1
    return count


# The op table's node builder, ``make(op, inputs, attrs) -> Node`` (type rule included), installed
# by exprc.ops.table when it loads: the table sits above this module.
_make: Callable[[str, tuple, dict], Node] | None = None


def install_type_rules(make: Callable[[str, tuple, dict], Node]) -> None:
    """Let :func:`rebuild` re-derive node types with ``make(op, inputs, attrs)`` (the op table's)."""
    global _make
    _make = make


#: Ops whose type depends on more than their operands' types (a loop's result: on the loop's
#: operands), which :func:`rebuild` always re-derives.  Rows register here (ops.control).
RETYPE_ALWAYS: set[str] = set()


def rebuild(node: Node, inputs: Sequence[Node]) -> Node:
    """``node`` with new operands, re-deriving its type through the op table."""
    inputs = tuple(inputs)
    if inputs == node.inputs:
        return node
    if node.op not in RETYPE_ALWAYS and all(a.type == b.type for a, b in zip(inputs, node.inputs)):
        # A type rule depends only on operand types and attributes: same types, same node type.
        return Node(node.op, inputs, node.attrs, node.type)
    if _make is None:
        raise RuntimeError(f"cannot rebuild a {node.op} node: no op table is loaded (import exprc)")
    return _make(node.op, inputs, dict(node.attrs))


def substitute(outputs: Sequence[Node], mapping: dict[Node, Node]) -> list[Node]:
    """Replace nodes (``givens``) throughout ``outputs``, iteratively."""
    memo: dict[Node, Node] = {}
    for n in toposort(outputs):
        if n in mapping:
            memo[n] = mapping[n]
        else:
            memo[n] = rebuild(n, [memo[i] for i in n.inputs])
    return [memo[o] for o in outputs]


def iter_nodes(outputs: Sequence[Node]) -> Iterator[Node]:
    return iter(toposort(outputs))

