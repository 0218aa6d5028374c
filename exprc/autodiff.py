"""Symbolic differentiation: graph -> graph.

``grad``, ``vjp``, ``jvp``, ``jacobian`` and ``hessian`` return ordinary exprc
expressions: compile them with :func:`exprc.function` (they go through the same
optimizer, so stability rewrites and fusion apply to them) or differentiate them
again for higher orders.

How a gradient is built (reverse mode, as Theano and JAX):

1. A few compositions whose local derivatives overflow are first replaced by their
   stable equivalents (exact identities): ``log(sigmoid(x)) -> -softplus(-x)``,
   ``log(1 - sigmoid(x))`` and ``log1p(-sigmoid(x)) -> -softplus(x)``,
   ``log(1 + exp(x))`` and ``log1p(exp(x)) -> softplus(x)``,
   ``log(exp(a) / s) -> a - log(s)`` (so ``log(softmax(x))`` is ``log_softmax``) and
   ``log(sum(exp(x))) -> logsumexp(x)``.
2. The nodes between the variables and the outputs are visited once, in reverse
   topological order (an explicit list, no recursion: 100,000-node chains work).
   Each op's rule (``Op.grad`` in :mod:`exprc.ops`) maps the gradient of its result
   to one gradient per operand; contributions to a node are summed.  Every rule adds
   O(1) nodes and reuses the forward nodes, so the gradient of an n-node graph has
   O(n) nodes.
3. Broadcasting: a rule's result is summed over the axes its operand was broadcast
   along (:func:`sum_to`).  Where a size is known only at call time and might be a
   broadcast 1, the ``sum_to`` op decides at call time, unless symbolic extents
   (:class:`Extents`) prove the sizes equal.  Gradients are broadcast lazily: one may
   be smaller than its node and broadcast to it (the gradient of a full ``sum`` stays a
   scalar), so no array of the operand's shape is built for nothing; it is made full
   (``fill``) only for the ops that need it and for the results.

Conventions: only float nodes carry gradients; integer and bool variables get
zero gradients (float64 zeros of their shape), and so does everything reached only
through piecewise-constant ops (floor, ceil, round, sign, comparisons, argmax,
floor division).  ``max``/``min`` reductions split the gradient evenly among tied
elements; ``maximum``/``minimum`` (and so ``clip``) give half to each operand at a
tie; ``abs`` has subgradient 0 at 0.  ``jvp`` is the transpose of ``vjp`` (the
"double vjp" trick: the vjp is linear in its cotangent, so differentiating it
with respect to the cotangent gives the jvp); no forward rules are needed.
"""

from __future__ import annotations

import contextvars
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from exprc import api
from exprc.errors import DisconnectedInputError, DTypeError, ShapeError
from exprc.graph import Node, constant_node, rebuild, substitute, toposort
from exprc.ops import OPS, cast
from exprc.rewrite.core import C, P, X, match
from exprc.types import float_dtype, is_float, shape_str

_DISCONNECTED = ("raise", "zero", "warn")


# -- shapes: symbolic extents, cheap models, summing to an operand's shape ------------------------
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
        elif n.op in ("sum_to", "reshape_like", "inc_subtensor", "split_part"):
            out = list(memo[n.inputs[0 if n.op == "inc_subtensor" else 1 + n.arg("which", 0)]])
        else:
            out = [frozenset([(n, k)]) for k in range(n.ndim)]
        return tuple(s if s is not None else e for s, e in zip(n.type.shape, out))


_EXTENTS: contextvars.ContextVar[Extents | None] = contextvars.ContextVar("exprc_extents", default=None)


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


def full(g: Node, x: Node) -> Node:
    """The gradient ``g`` (which broadcasts to ``x``'s shape) given exactly ``x``'s shape."""
    if g.type.shape == x.type.shape and None not in x.type.shape:
        return g
    if g.ndim == x.ndim:
        ext = _extents()
        if all(a == b for a, b in zip(ext(g), ext(x))):
            return g
    return fill(x, g)


#: Ops whose rules accept a gradient that merely broadcasts to the result's shape.
_LAZY_KINDS = ("elemwise", "reduce")
_LAZY_OPS = frozenset({"dimshuffle", "getitem", "broadcast_to", "sum_to"})


def _fit(g: Node, x: Node, node: Node) -> Node:
    """A rule's gradient for operand ``x``: ``x``'s dtype, summed to broadcast to ``x``'s shape."""
    if g.dtype != x.dtype:
        g = cast(g, x.dtype)
    if g.type.shape == x.type.shape and None not in x.type.shape:
        return g
    return sum_to(g, x, None if OPS[node.op].kind == "elemwise" else ())


# -- stable forms ----------------------------------------------------------------------
_SIG = P("sigmoid", X("a"))
_STABLE = [  # (pattern, replacement from captures)
    (P("log", _SIG), lambda a: -api.softplus(-a)),
    (P("log", P("sub", C(1), _SIG)), lambda a: -api.softplus(a)),
    (P("log1p", P("neg", _SIG)), lambda a: -api.softplus(a)),
    (P("log", P("add", C(1), P("exp", X("a")))), lambda a: api.softplus(a)),
    (P("log1p", P("exp", X("a"))), lambda a: api.softplus(a)),
    (P("log", P("truediv", P("exp", X("a")), X("s"))), lambda a, s: a - api.log(s)),
    (P("log", P("sum", P("exp", X("a")), name="r")),
     lambda a, r: api.logsumexp(a, r.arg("axis"), r.arg("keepdims"))),
]


def stable_forms(outputs: Sequence[Node], keep: Iterable[Node] = (), order: list[Node] | None = None) -> list[Node]:
    """``outputs`` with the compositions listed in the module docstring made stable.

    Nodes in ``keep`` (the variables differentiated with respect to) are never
    rewritten away.  ``order`` is ``toposort(outputs)`` when the caller has it.
    """
    order = toposort(outputs) if order is None else order
    if not any(n.op in ("log", "log1p") for n in order):
        return list(outputs)
    keep_ids = {id(k) for k in keep}
    memo: dict[int, Node] = {}
    for n in order:
        new = n
        if n.inputs:
            ins = [memo[id(i)] for i in n.inputs]
            if any(a is not b for a, b in zip(ins, n.inputs)):
                new = rebuild(n, ins)
        if new.op in ("log", "log1p") and id(n) not in keep_ids:
            for pattern, make in _STABLE:
                caps: dict[str, Node] = {}
                if match(pattern, new, caps) and not _touches(new, caps, keep_ids):
                    out = make(**caps)
                    if out.type == new.type:
                        new = out
                        break
        memo[id(n)] = new
    return [memo[id(o)] for o in outputs]


def _touches(root: Node, caps: dict[str, Node], keep_ids: set[int]) -> bool:
    """Whether a node strictly between ``root`` and the captures is one to keep."""
    if not keep_ids:
        return False
    leaves = {id(c) for c in caps.values()}
    stack = list(root.inputs)
    while stack:
        n = stack.pop()
        if id(n) in leaves:
            continue
        if id(n) in keep_ids:
            return True
        stack.extend(n.inputs)
    return False


# -- the reverse sweep --------------------------------------------------------------------
def _backprop(outputs: Sequence[Node], cotangents: Sequence[Node | None], wrt: Sequence[Node],
              order: list[Node] | None = None) -> dict[Node, Node]:
    """Gradients of ``sum(<output, cotangent>)`` for the nodes of ``wrt`` that receive one.

    Nodes are keyed by ``id`` (``order`` keeps them alive): hashing a node calls Python code.
    """
    order = toposort(outputs) if order is None else order
    targets = {id(w) for w in wrt}
    active: set[int] = set()  # float nodes that depend on a target
    depends: set[int] = set()
    for n in order:
        i = id(n)
        if i in targets:
            depends.add(i)
        else:
            for x in n.inputs:
                if id(x) in depends:
                    depends.add(i)
                    break
        if i in depends and n.type.dtype in ("float32", "float64"):
            active.add(i)
    acc: dict[int, Node] = {}
    for o, c in zip(outputs, cotangents):
        if c is not None and id(o) in active:
            acc[id(o)] = acc[id(o)] + c if id(o) in acc else c
    found: dict[Node, Node] = {}
    token = _EXTENTS.set(Extents())
    try:
        for n in reversed(order):
            g = acc.pop(id(n), None)
            if g is None:
                continue
            if id(n) in targets:
                found[n] = full(g, n)
            if any(id(x) in active for x in n.inputs):
                _apply_rule(n, g, active, acc)
    finally:
        _EXTENTS.reset(token)
    return found


def _apply_rule(n: Node, g: Node, active: set[int], acc: dict[int, Node]) -> None:
    """Add the contributions of ``n``'s rule, given the gradient ``g`` of ``n``, to its operands'."""
    op = OPS[n.op]
    if op.grad is None:
        raise NotImplementedError(f"no gradient rule for op {n.op!r}")
    if op.kind not in _LAZY_KINDS and n.op not in _LAZY_OPS or (op.kind != "elemwise" and 0 < g.ndim < n.ndim):
        g = full(g, n)
    grads = op.grad(n, g)
    if len(grads) != len(n.inputs):
        raise RuntimeError(f"gradient rule of {n.op} returned {len(grads)} gradients for {len(n.inputs)} operands")
    for x, gx in zip(n.inputs, grads):
        if gx is None or id(x) not in active:
            continue
        if callable(gx):
            gx = gx()
        gx = _fit(gx, x, n)
        i = id(x)
        acc[i] = acc[i] + gx if i in acc else gx


def _structure(wrt: Any, what: str) -> tuple[list[Node], Any]:
    """``wrt`` as a list of nodes and a function giving results back in ``wrt``'s structure."""
    if isinstance(wrt, Node):
        return [wrt], lambda rs: rs[0]
    if isinstance(wrt, (list, tuple)):
        for i, w in enumerate(wrt):
            if not isinstance(w, Node):
                raise TypeError(f"{what}[{i}]: expected an exprc expression, got {type(w).__name__}")
        kind = type(wrt)
        return list(wrt), lambda rs: kind(rs)
    raise TypeError(f"{what}: expected an exprc expression or a list of them, got {type(wrt).__name__}")


def _zero_gradient(w: Node) -> Node:
    return zeros_like(w, float_dtype(w.dtype))


def _vjp(outputs: list[Node], cotangents: list[Node | None], wrt: list[Node], disconnected: str,
         what: str) -> list[Node]:
    if disconnected not in _DISCONNECTED:
        raise ValueError(f"{what}: disconnected must be one of {', '.join(map(repr, _DISCONNECTED))}, "
                         f"got {disconnected!r}")
    order = toposort(outputs)
    reached = {id(n) for n in order}
    missing = [w for w in wrt if id(w) not in reached]
    if missing and disconnected != "zero":
        names = ", ".join(f"{w.arg('name') or repr(w)} ({w.type})" for w in missing)
        msg = (f"{what}: the output does not depend on {names}; pass disconnected='zero' (or 'warn') to get "
               "zero gradients")
        if disconnected == "raise":
            raise DisconnectedInputError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    stable = stable_forms(outputs, keep=wrt, order=order)
    found = _backprop(stable, cotangents, wrt, order if all(a is b for a, b in zip(stable, outputs)) else None)
    return [found[w] if w in found else _zero_gradient(w) for w in wrt]


def _as_outputs(outputs: Any, what: str) -> tuple[list[Node], Any]:
    if isinstance(outputs, (list, tuple)):
        return [api.as_node(o) for o in outputs], type(outputs)
    return [api.as_node(outputs)], None


def _cotangent(c: Any, o: Node, what: str) -> Node | None:
    if c is None:
        return None
    c = api.as_node(c, o)
    if c.ndim > o.ndim or any(s is not None and t is not None and s != t and s != 1
                              for s, t in zip(c.type.shape[::-1], o.type.shape[::-1])):
        raise ShapeError(f"{what}: a cotangent of shape {shape_str(c.type.shape)} for an output of shape "
                         f"{shape_str(o.type.shape)}")
    if not is_float(o.dtype):
        return None
    c = cast(c, o.dtype)
    if c.type.shape != o.type.shape:
        c = fill(o, c)
    return c


# -- public API ------------------------------------------------------------------------
def grad(cost: Any, wrt: Any, disconnected: str = "raise") -> Any:
    """The gradient of the scalar ``cost`` with respect to ``wrt`` (a variable or a list of them;
    the result has the same structure, each gradient of its variable's shape).

    ``wrt`` may be any node of the graph (an input or an intermediate result).  A ``wrt`` the
    cost does not depend on raises :class:`~exprc.errors.DisconnectedInputError` unless
    ``disconnected`` is ``"zero"`` or ``"warn"`` (zeros, with a warning for ``"warn"``).
    Integer and bool variables get float64 zeros.
    """
    cost = api.as_node(cost)
    if cost.ndim != 0:
        raise ShapeError(f"grad: the cost must be a scalar, got an expression of shape {shape_str(cost.type.shape)}; "
                         "reduce it (exprc.sum, exprc.mean) or use exprc.vjp / exprc.jacobian")
    if not is_float(cost.dtype):
        raise DTypeError(f"grad: the cost must be a float expression, got {cost.dtype}")
    ws, back = _structure(wrt, "grad: wrt")
    return back(_vjp([cost], [constant_node(1, cost.dtype)], ws, disconnected, "grad"))


def vjp(outputs: Any, wrt: Any, cotangents: Any, disconnected: str = "raise") -> Any:
    """Vector-Jacobian product: the gradient of ``sum(output * cotangent)`` (summed over the
    outputs) with respect to ``wrt``.  ``outputs`` and ``cotangents`` are an expression or
    lists of the same length; a cotangent broadcasts to its output's shape (None: zero)."""
    outs, kind = _as_outputs(outputs, "vjp")
    cts = list(cotangents) if kind is not None else [cotangents]
    if len(cts) != len(outs):
        raise ValueError(f"vjp: {len(outs)} outputs but {len(cts)} cotangents")
    ws, back = _structure(wrt, "vjp: wrt")
    cts = [_cotangent(c, o, "vjp") for c, o in zip(cts, outs)]
    return back(_vjp(outs, cts, ws, disconnected, "vjp"))


def jvp(outputs: Any, wrt: Any, tangents: Any, disconnected: str = "raise") -> Any:
    """Jacobian-vector product: the directional derivative of ``outputs`` (an expression or a
    list) when ``wrt`` moves along ``tangents`` (same structure as ``wrt``).

    Built as the transpose of :func:`vjp`: with a placeholder cotangent ``u``, ``vjp(u)`` is
    linear in ``u``, and the vjp of ``vjp(u)`` along ``tangents`` is the jvp (whose values do
    not depend on ``u``; what remains of ``u``, a shape, is taken from the output).
    """
    outs, kind = _as_outputs(outputs, "jvp")
    ws, _ = _structure(wrt, "jvp: wrt")
    ts = list(tangents) if isinstance(wrt, (list, tuple)) else [tangents]
    if len(ts) != len(ws):
        raise ValueError(f"jvp: {len(ws)} variables but {len(ts)} tangents")
    ts = [_cotangent(t, w, "jvp") for t, w in zip(ts, ws)]
    us = [api.tensor("jvp_u", o.dtype, shape=o.type.shape) if is_float(o.dtype) else None for o in outs]
    pulled = _vjp(outs, us, ws, disconnected, "jvp")
    float_ws = [(p, t) for p, t, w in zip(pulled, ts, ws) if t is not None and is_float(w.dtype)]
    results = []
    forward = _backprop([p for p, _ in float_ws], [t for _, t in float_ws], [u for u in us if u is not None])
    for o, u in zip(outs, us):
        r = forward.get(u) if u is not None else None
        results.append(r if r is not None else _zero_gradient(o))
    # The result is linear in u, so u survives only as a shape (the model of a fill or sum_to):
    # zeros of the output's shape stand in for it.
    results = substitute(results, {u: zeros_like(o) for o, u in zip(outs, us) if u is not None})
    return kind(results) if kind is not None else results[0]


def jacobian(expr: Any, wrt: Any, disconnected: str = "raise") -> Any:
    """The Jacobian of ``expr``: for each variable, an expression of shape
    ``expr.shape + variable.shape``.  ``expr`` needs a static size (one reverse sweep per
    element, sharing the forward graph)."""
    expr = api.as_node(expr)
    ws, back = _structure(wrt, "jacobian: wrt")
    if expr.ndim == 0:
        return back(_vjp([expr], [constant_node(1, expr.dtype)], ws, disconnected, "jacobian"))
    if None in expr.type.shape:
        raise ShapeError(f"jacobian: the expression's shape {shape_str(expr.type.shape)} must be static")
    if not is_float(expr.dtype):
        raise DTypeError(f"jacobian: expected a float expression, got {expr.dtype}")
    size = math.prod(expr.type.shape)
    rows: list[list[Node]] = []
    for k in range(size):
        onehot = np.zeros(size, dtype=expr.dtype)
        onehot[k] = 1
        ct = constant_node(onehot.reshape(expr.type.shape), expr.dtype)
        rows.append(_vjp([expr], [ct], ws, disconnected if k == 0 else "zero", "jacobian"))
    out = []
    for j in range(len(ws)):
        blocks = [r[j] for r in rows]
        for n in reversed(expr.type.shape):  # stack the innermost axis first
            blocks = [api.stack(blocks[i:i + n]) for i in range(0, len(blocks), n)]
        out.append(blocks[0])
    return back(out)


def hessian(cost: Any, wrt: Any, disconnected: str = "raise") -> Any:
    """The Hessian of the scalar ``cost`` with respect to each variable of ``wrt`` (shape
    ``variable.shape * 2``); for a list, the list of the diagonal blocks (as Theano)."""
    ws, back = _structure(wrt, "hessian: wrt")
    out = []
    for w in ws:
        if None in w.type.shape:
            raise ShapeError(f"hessian: the variable's shape {shape_str(w.type.shape)} must be static")
        out.append(jacobian(grad(cost, w, disconnected), w, "zero"))
    return back(out)


__all__ = ["Extents", "count", "fill", "full", "grad", "hessian", "jacobian", "jvp", "model_of", "stable_forms", "sum_to",
           "vjp", "zeros_like"]
