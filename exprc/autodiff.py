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
   Each op's rule (``Op.grad``, from :mod:`exprc.ops.grad`) maps the gradient of its result
   to one gradient per operand; contributions to a node are summed.  Every rule adds
   O(1) nodes and reuses the forward nodes, so the gradient of an n-node graph has
   O(n) nodes.
3. Broadcasting: a rule's result is summed over the axes its operand was broadcast
   along (:func:`~exprc.ops.gradshape.sum_to`).  Where a size is known only at call time and might be a
   broadcast 1, the ``sum_to`` op decides at call time, unless symbolic extents
   (:class:`~exprc.ops.gradshape.Extents`) prove the sizes equal.  Gradients are broadcast lazily: one may
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

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from exprc import api
from exprc.errors import DisconnectedInputError, DTypeError, ShapeError
from exprc.graph import Node, constant_node, rebuild, substitute, toposort
from exprc.ops import OPS, cast
from exprc.ops import grad as _rules  # noqa: F401  (attaches the gradient rules to the op rows)
from exprc.ops.gradshape import Extents, count, fill, full, model_of, shared_extents, sum_to, zeros_like
from exprc.rewrite.core import C, P, X, match
from exprc.types import float_dtype, is_float, shape_str

_DISCONNECTED = ("raise", "zero", "warn")


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
    with shared_extents():
        for n in reversed(order):
            g = acc.pop(id(n), None)
            if g is None:
                continue
            if id(n) in targets:
                found[n] = full(g, n)
            if any(id(x) in active for x in n.inputs):
                _apply_rule(n, g, active, acc)
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
