"""Shapes for gradients: symbolic extents, and summing or broadcasting a gradient to an operand.

Gradient rules (:mod:`exprc.ops.grad`) and the reverse sweep (:mod:`exprc.autodiff`) both need
these, so they sit below both.  A gradient may be smaller than its node and broadcast to it
(the gradient of a full ``sum`` stays a scalar); :func:`sum_to` reduces one to its operand's
shape, :func:`full` makes one exactly its node's shape, and :class:`Extents` proves sizes known
only at call time equal, so that ``sum_to`` ops are built only where broadcasting may have
happened.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from exprc import api
from exprc.graph import Node, constant_node
from exprc.ops.table import OPS, cast


class Extents:
    """Symbolic sizes: for each node, one entry per axis, an ``int`` when static, else the set
    of the unknown sizes broadcast together there (one token per axis of an input or of an
    op result not modelled here).  Equal sets mean equal sizes at call time, since
    broadcasting is idempotent, commutative and associative; a subset means a size that
    broadcasts to the other."""

    def __init__(self) -> None:
        self._memo: dict[Node, tuple] = {}
        self._rank: dict[Node, int] = {}

    def __call__(self, node: Node) -> tuple:
        memo = self._memo
        if node in memo:
            return memo[node]
        stack: list[tuple[Node, int]] = [(node, 0)]  # iterative post-order, stopping at known nodes
        while stack:
            n, i = stack[-1]
            if i < len(n.inputs):
                stack[-1] = (n, i + 1)
                if n.inputs[i] not in memo:
                    stack.append((n.inputs[i], 0))
            else:
                stack.pop()
                if n not in memo:
                    memo[n] = self._infer(n)
                    self._rank[n] = len(self._rank)
        return memo[node]

    def rank(self, token: tuple[Node, int]) -> tuple[int, int]:
        """A deterministic order of tokens (the order their nodes were first seen)."""
        return self._rank[token[0]], token[1]

    def _infer(self, n: Node) -> tuple:
        memo = self._memo
        out: list = []
        kind = OPS[n.op].kind
        if kind == "elemwise":  # the broadcast of operand sizes: the union of their tokens
            for k in range(n.ndim):
                atoms: frozenset = frozenset()
                for i in n.inputs:
                    d = k - (n.ndim - i.ndim)
                    e = memo[i][d] if d >= 0 else 1
                    if isinstance(e, frozenset):
                        atoms |= e
                out.append(atoms or 1)
        elif kind == "reduce":
            axes, keep = n.arg("axis"), n.arg("keepdims")
            out = [1 if d in axes else e for d, e in enumerate(memo[n.inputs[0]]) if keep or d not in axes]
        elif n.op == "dimshuffle":
            src = memo[n.inputs[0]]
            out = [1 if o == "x" else src[o] for o in n.arg("order")]
        elif n.op in ("sum_to", "reshape_like", "inc_subtensor", "scatter", "split_part"):
            out = list(memo[n.inputs[0 if n.op in ("inc_subtensor", "scatter") else 1 + n.arg("which", 0)]])
        else:
            out = [frozenset([(n, k)]) for k in range(n.ndim)]
        return tuple(s if s is not None else e for s, e in zip(n.type.shape, out))


_EXTENTS: contextvars.ContextVar[Extents | None] = contextvars.ContextVar("exprc_extents", default=None)


@contextlib.contextmanager
def shared_extents() -> Iterator[Extents]:
    """Within the block, every rule and helper shares one :class:`Extents` (a reverse sweep:
    sizes proved equal once stay proved, and each node is modelled once)."""
    token = _EXTENTS.set(Extents())
    try:
        yield _EXTENTS.get()
    finally:
        _EXTENTS.reset(token)


def _extents() -> Extents:
    """The extents of the reverse sweep in progress (shared by its rules), or fresh ones."""
    return _EXTENTS.get() or Extents()


def model_of(x: Node) -> Node:
    """A node of ``x``'s shape that is cheap to read at call time: elementwise operands of the
    same extents are followed down, so a shape reference does not force the C backend to
    store an intermediate result that a fused loop would otherwise keep in registers."""
    if OPS[x.op].kind != "elemwise":
        return x
    ext = _extents()
    target = ext(x)
    while OPS[x.op].kind == "elemwise":
        below = next((i for i in x.inputs if i.ndim == x.ndim and ext(i) == target), None)
        if below is None:
            break
        x = below
    return x


def _covers(small: Any, big: Any) -> bool:
    """Whether an axis of extent ``small`` has the size of, or broadcasts to, one of extent ``big``."""
    return small == 1 or small == big or (isinstance(small, frozenset) and isinstance(big, frozenset)
                                          and small <= big)


def fill(model: Node, value: Node) -> Node:
    """``value`` broadcast to the shape of ``model`` (elementwise, so it fuses)."""
    return OPS["fill"].make((model_of(model), api.as_node(value, model)), {})


def zeros_like(x: Node, dtype: str | None = None) -> Node:
    """Zeros of ``x``'s shape: a broadcast constant when the shape is static, else ``fill``."""
    zero = constant_node(0, dtype or x.dtype)
    if None not in x.type.shape:
        return api.broadcast_to(zero, x.type.shape)
    return fill(x, zero)


def count(x: Node, axes: Sequence[int]) -> Node:
    """The number of elements of ``x`` over ``axes`` as a float64 scalar, read from the shapes of
    inputs and stored results (the extents), never from an intermediate fused away."""
    ext = _extents()
    n: Node | None = None
    static = 1
    for a in axes:
        e = ext(x)[a]
        if isinstance(e, int):
            static *= e
            continue
        sizes = [api.shape(src)[k] for src, k in sorted(e, key=ext.rank)]
        size = sizes[0]
        for other in sizes[1:]:
            size = api.maximum(size, other)  # sizes broadcast together are 1 or the same n
        n = size if n is None else n * size
    if n is None:
        return constant_node(float(static), "float64")
    return cast(n * static if static != 1 else n, "float64")


def sum_to(g: Node, x: Node, dynamic_axes: Iterable[int] | None = None) -> Node:
    """``g`` reduced to a gradient for ``x``, an operand broadcast in the computation of ``g``.

    The result broadcasts to ``x``'s shape (a gradient may stay smaller: a scalar for a whole
    array).  Leading axes and axes where ``x`` has static size 1 are summed in the graph.  An
    axis where ``x``'s size is known only at call time may have been broadcast from 1: unless
    the extents prove it was not, the ``sum_to`` op (among ``dynamic_axes``, default all)
    decides at call time.
    """
    lead = g.ndim - x.ndim
    if lead > 0:
        g = api.sum(g, tuple(range(lead)))
    off = max(0, -lead)  # g's axis j is x's axis j + off
    static = tuple(j for j in range(g.ndim) if x.type.shape[j + off] == 1 and g.type.shape[j] != 1)
    if static:
        g = api.sum(g, static, keepdims=True)
    candidates = range(x.ndim) if dynamic_axes is None else dynamic_axes
    unsure = [d for d in candidates if d >= off and x.type.shape[d] is None and g.type.shape[d - off] != 1]
    if unsure:
        ext = _extents()
        ex, eg = ext(x), ext(g)
        if any(not _covers(eg[d - off], ex[d]) for d in unsure):
            g = OPS["sum_to"].make((g, model_of(x)), {})
    return g


def _lazy_along_broadcast(g: Node, x: Node, node: Node) -> bool:
    """Whether ``g``, the gradient of ``node`` (possibly smaller than ``node``: the gradient of a full sum
    is a scalar standing for the summed array; ``g * w`` has ``w``'s size), and ``node``'s operand ``x``
    may both be smaller than ``node`` along one axis.  Summing ``g`` to ``x``'s shape must then count
    the elements ``g`` stands for there: it is made full first (d/ds sum(v + s) is len(v), not 1).
    Along an axis of unknown size, both are smaller at call time only if some size broadcast into the
    node's is in neither: the node's size is the largest of its sizes there (d/dw sum(w (v + w)) with
    len(w) = 1: v's)."""
    ext = _extents()
    en, eg, ex = ext(node), ext(g), ext(x)
    for a in range(1, node.ndim + 1):
        n_a = en[-a]
        if n_a == 1:
            continue
        g_a = eg[-a] if a <= g.ndim else 1
        x_a = ex[-a] if a <= x.ndim else 1
        if isinstance(n_a, frozenset):
            if n_a - (_tokens(g_a) | _tokens(x_a)):
                return True
        elif g_a != n_a and x_a != n_a:  # (a static size: each is it, 1, or unknown and maybe 1)
            return True
    return False


def sum_to_operand(g: Node, x: Node, node: Node) -> Node:
    """``g``, the gradient of ``node`` (possibly smaller than it), summed to broadcast to its operand
    ``x``: made full first where both are smaller than ``node`` (see :func:`_lazy_along_broadcast`)."""
    if _lazy_along_broadcast(g, x, node):
        g = full(g, node)
    return sum_to(g, x)


def _tokens(e: Any) -> frozenset:
    """The unknown sizes broadcast together along an axis of extent ``e`` (none for a static size)."""
    return e if isinstance(e, frozenset) else frozenset()


def full(g: Node, x: Node) -> Node:
    """The gradient ``g`` (which broadcasts to ``x``'s shape) given exactly ``x``'s shape."""
    if g.type.shape == x.type.shape and None not in x.type.shape:
        return g
    if g.ndim == x.ndim:
        ext = _extents()
        if all(a == b for a, b in zip(ext(g), ext(x))):
            return g
    return fill(x, g)
