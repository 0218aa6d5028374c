"""Symbolic differentiation: graph -> graph.

``grad``, ``vjp``, ``jvp``, ``jacobian`` and ``hessian`` return ordinary exprc
expressions: compile them with :func:`exprc.function` (they go through the same
optimizer, so stability rewrites and fusion apply to them) or differentiate them
again for higher orders.

How a gradient is built (reverse mode, as Theano and JAX):

0. An elementwise graph (no max shift, no stop_gradient, no loop, at most
   :data:`STABILIZE_MAX_NODES` nodes) of variables is differentiated in its stable forms: the
   optimizer's canonicalize and stabilize passes run on it first (:func:`_stabilized`), so the
   derivative of ``sin(x)/x - 1`` near 0 is its series branch's.  A contribution made inside a
   branch of ``where(c, a, b)`` is masked again by its condition (:func:`_apply_rule`): a branch's
   NaN derivative where it is not taken does not become ``0 * NaN`` in the gradient.
1. A few compositions whose local derivatives overflow are first replaced by their
   stable equivalents (exact identities): ``log(sigmoid(x)) -> -softplus(-x)``,
   ``log(1 - sigmoid(x))`` and ``log1p(-sigmoid(x)) -> -softplus(x)``,
   ``log(1 + exp(x))`` and ``log1p(exp(x)) -> softplus(x)``,
   ``log(exp(a) / s) -> a - log(s)`` (so ``log(softmax(x))`` is ``log_softmax``),
   ``log(sum(exp(x))) -> logsumexp(x)`` and ``exp(x) / sum(exp(x)) -> softmax(x)`` (the forms
   :func:`exprc.logsumexp` and :func:`exprc.softmax` build, whose max shift has no gradient: right
   at tied maxima to every order), ``sum(u exp(x)) / sum(exp(x))`` (also through one view of both
   sums, ``[:, None]``) -> both sums of that shifted exp.  On the path of step 0 the optimizer has already made these
   stable, in forms that route the gradient through the max and keep a tiny probability's
   derivative to the last bits.  A replacement that would drop a node held constant or
   differentiated with respect to is not made.
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

Steering the sweep (as Theano's ``grad``): no gradient flows from a ``stop_gradient`` node
(:func:`stop_gradient`, alias ``zero_grad``/``disconnected_grad``) or from a node listed in
``consider_constant`` into its operands, and what depends on a variable only through them is not
differentiated at all.  ``known_grads={node: g}`` seeds the sweep at intermediate nodes: each
seed is added to what flows into its node (the nodes are extra outputs of the sweep, with their
seeds as cotangents), so ``cost`` may be None.  The sweep runs on the graph as built, never an
optimized one: ``stop_gradient`` is removed only by the optimizer, after differentiation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from exprc import api
from exprc.errors import DisconnectedInputError, DTypeError, ShapeError
from exprc.graph import Node, constant_node, rebuild, substitute, toposort
from exprc.ops import OPS, cast
from exprc.ops import grad as _rules  # noqa: F401  (attaches the gradient rules to the op rows)
from exprc.ops.elemwise import everywhere_guard
from exprc.ops.gradshape import (
    Extents,
    _extents,
    count,
    fill,
    full,
    model_of,
    shared_extents,
    sum_to,
    sum_to_operand,
    zeros_like,
)
from exprc.ops.shape import getitem_order
from exprc.rewrite.core import C, P, X, match
from exprc.types import float_dtype, is_float, shape_str

_DISCONNECTED = ("raise", "zero", "warn")
#: Theano's spelling of the same modes (``grad(disconnected_inputs=...)``): "ignore" is "zero".
_DISCONNECTED_INPUTS = {"raise": "raise", "warn": "warn", "ignore": "zero"}


#: Ops whose rules accept a gradient that merely broadcasts to the result's shape.
_LAZY_KINDS = ("elemwise", "reduce")
#: Nodes of several results (a loop): their value is a tuple that projection nodes pick from.  A
#: projection's rule gives its operand the dict ``{result: gradient}``; the dicts are merged and
#: the tuple node's rule receives one dict with every result's gradient.
_TUPLES = frozenset({"scan"})
_LAZY_OPS = frozenset({"dimshuffle", "getitem", "broadcast_to", "sum_to"})


def _fit(g: Node, x: Node, node: Node) -> Node:
    """A rule's gradient for operand ``x``: ``x``'s dtype, summed to broadcast to ``x``'s shape."""
    if g.dtype != x.dtype:
        g = cast(g, x.dtype)
    if OPS[node.op].kind == "elemwise":  # (an elementwise rule's g is in node's shape, maybe lazily smaller)
        return sum_to_operand(g, x, node)
    if g.type.shape == x.type.shape and None not in x.type.shape:
        return g
    return sum_to(g, x, ())


# -- stable forms ----------------------------------------------------------------------
_SIG = P("sigmoid", X("a"))
#: log(S / c), log(c * S), log(S / T) of sums of exps S, T (also replaced before the optimizer runs:
#: see _stabilized).
_LOG_OF_SUMS = [(P("log", P("truediv", X("a"), X("b"))), lambda a, b: _log_of_sums(a, b, -1)),
                (P("log", P("mul", X("a"), X("b"))), lambda a, b: _log_of_sums(a, b, 1))]
_STABLE = [  # (pattern, replacement from captures)
    (P("log", _SIG), lambda a: -api.softplus(-a)),
    (P("log", P("sub", C(1), _SIG)), lambda a: -api.softplus(a)),
    (P("log1p", P("neg", _SIG)), lambda a: -api.softplus(a)),
    (P("log", P("add", C(1), P("exp", X("a")))), lambda a: api.softplus(a)),
    (P("log1p", P("exp", X("a"))), lambda a: api.softplus(a)),
    (P("log", P("truediv", P("exp", X("a")), X("s"))), lambda a, s: a - _log_of(s)),
    (P("log", P(("sum", "mean"), P("exp", X("a")), name="r")), lambda a, r: _log_of(r, None)),
    *_LOG_OF_SUMS,
    (P("truediv", P("exp", X("a")), X("s")), lambda a, s: _softmax(a, s)),
    (P("truediv", P("mul", X("a"), X("b")), X("s")), lambda a, b, s: _times_softmax(a, b, s)),
    (P("truediv", P(("sum", "mean"), P("mul", X("a"), X("b")), name="n"), P(("sum", "mean"), X("e"), name="d")),
     lambda a, b, n, e, d: _weighted(a, b, n, e, d)),
    (P("truediv", X("vn"), X("vd")), lambda vn, vd: _weighted_views(vn, vd)),
]
#: The ops whose nodes :data:`_STABLE` may replace (a graph without them is left as it is).
_STABLE_ROOTS = ("log", "log1p", "truediv")


def _shifted(a: Node) -> bool:
    """``a`` is ``x - stop_gradient(m)``, m the maximum of x or ``where(isfinite(max), max, 0)``:
    already shifted (exprc.softmax, exprc.logsumexp, this module's forms)."""
    if a.op != "sub" or a.inputs[1].op != "stop_gradient":
        return False
    x, m = a.inputs[0], a.inputs[1].inputs[0]
    if m.op == "where" and m.inputs[0].op == "isfinite":
        m = m.inputs[1]
    return m.op == "max" and m.inputs[0] is x


def _log_of(s: Node, otherwise: Any = api.log) -> Node | None:
    """log(s), as logsumexp where s is a sum (or mean) of exps (log(softmax)'s denominator): its
    gradient is then the shifted softmax, not exp(a) / s, which overflows; ``otherwise(s)`` else."""
    lp = _log_positive(s)
    return lp[0] if lp is not None and lp[1] else otherwise(s) if otherwise else None


def _exp_shifted(x: Node, axes: tuple) -> Node:
    """exp(x - stop_gradient(m)), m the maximum of x over ``axes`` (0 where it is not finite, as
    exprc.logsumexp: a +inf logit is NaN, the others 0)."""
    return api.exp(x - api._shift(x, axes))


def _softmax(a: Node, s: Node) -> Node | None:
    """exp(a) / sum(exp(a)) -> softmax shifted by a stop_gradient max (the form ``exprc.softmax``
    builds), or None (another quotient)."""
    from exprc.rewrite.rules.stability._common import sum_of_exp

    se = sum_of_exp(s)
    if se is None or se[0] is not a or not se[1] or a.dtype not in ("float32", "float64") or _shifted(a):
        return None
    axes = tuple(se[1])
    e = _exp_shifted(a, axes)
    return e / api.sum(e, axes, keepdims=True)


def _log_positive(t: Node) -> tuple[Node, bool] | None:
    """(log t, whether t is a sum or mean of exps) for such a sum (as logsumexp) or a positive
    finite 0-d constant; None else."""
    if t.op in ("sum", "mean") and t.inputs[0].op == "exp" and not _shifted(t.inputs[0].inputs[0]):
        x, axes = t.inputs[0].inputs[0], tuple(t.arg("axis"))
        out = api.logsumexp(x, axes, t.arg("keepdims"))
        return (out - api.log(api._count(x, axes).astype(x.dtype)) if t.op == "mean" else out), True
    if t.op == "constant" and t.value.shape == () and 0 < float(t.value) < math.inf:
        return api.log(t), False
    return None


def _log_of_sums(a: Node, b: Node, sign: int) -> Node | None:
    """log(S / c), log(c * S), log(1 / S), log(S / T) with S, T sums of exps (a log-mean-exp written
    log(sum(exp(x)) / n)) -> logsumexp(x) -+ log(c): the gradient is the shifted softmax, not
    exp(x) / S, which is 0 * inf where the sum overflows."""
    la, lb = _log_positive(a), _log_positive(b)
    if la is None or lb is None or not (la[1] or lb[1]):
        return None
    return la[0] + lb[0] if sign > 0 else la[0] - lb[0]


def _times_softmax(a: Node, b: Node, s: Node) -> Node | None:
    """u exp(x) / sum(exp(x)) -> u softmax(x) (see _softmax)."""
    for e, u in ((a, b), (b, a)):
        if e.op == "exp" and (soft := _softmax(e.inputs[0], s)) is not None:
            return u * soft
    return None


def _weighted(a: Node, b: Node, n: Node, e: Node, d: Node) -> Node | None:
    """sum(u exp(x)) / sum(exp(x)) (or mean / mean) over the same axes -> both sums of
    exp(x - stop_gradient(m)), m x's maximum there (the optimizer's softmax_weighted_sum)."""
    axes, keep = tuple(d.arg("axis")), d.arg("keepdims")
    if (e.op != "exp" or n.op != d.op or tuple(n.arg("axis")) != axes or n.arg("keepdims") != keep
            or (a is e) == (b is e) or n.inputs[0].ndim != e.ndim or _shifted(e.inputs[0])):
        return None
    x, u = e.inputs[0], b if a is e else a
    if x.dtype not in ("float32", "float64"):
        return None
    es = _exp_shifted(x, axes)
    reduce = api.sum if d.op == "sum" else api.mean
    return reduce(u * es, axes, keep) / reduce(es, axes, keep)


def _view_order(v: Node) -> tuple[Node, tuple] | None:
    """(x, order) when ``v`` is dimshuffle(x, order) or x[:, None]-like (the optimizer's
    getitem_to_dimshuffle reads it as that dimshuffle)."""
    if v.op == "dimshuffle":
        return v.inputs[0], tuple(v.arg("order"))
    order = getitem_order(v) if v.op == "getitem" and len(v.inputs) == 1 else None
    return None if order is None else (v.inputs[0], order)


def _weighted_views(vn: Node, vd: Node) -> Node | None:
    """v(sum(u exp(x))) / v(sum(exp(x))), v one view of both (sum(u e, 1)[:, None] / sum(e, 1)[:, None])
    -> v(_weighted's form) (the optimizer's softmax_weighted_sum_of_views)."""
    a, b = _view_order(vn), _view_order(vd)
    if (a is None or b is None or a[1] != b[1] or a[0].op not in ("sum", "mean") or a[0].inputs[0].op != "mul"
            or b[0].op not in ("sum", "mean") or b[0].inputs[0].op != "exp"):
        return None  # (any other quotient of two views: a normalization by a vector, ...)
    n, d = a[0], b[0]
    w = _weighted(*n.inputs[0].inputs, n, d.inputs[0], d)
    return None if w is None else OPS["dimshuffle"].make((w,), {"order": a[1]})


def stable_forms(outputs: Sequence[Node], keep: Iterable[Node] = (), order: list[Node] | None = None) -> list[Node]:
    """``outputs`` with the compositions listed in the module docstring made stable.

    Nodes in ``keep`` (the variables differentiated with respect to) are never
    rewritten away.  ``order`` is ``toposort(outputs)`` when the caller has it.
    """
    return _stable(outputs, keep, order)[0]


def _stable(outputs: Sequence[Node], keep: Iterable[Node] = (), order: list[Node] | None = None,
            patterns: list = _STABLE) -> tuple[list[Node], dict[int, Node]]:
    """:func:`stable_forms`, and what became of each node of ``order`` (by ``id``; empty when
    the graph has no op of :data:`_STABLE_ROOTS`, so nothing can change).  A kept node is never rewritten away, but it is rebuilt when something
    below it was: callers find it (a ``wrt``, a constant, a seed) in the new graph through this map."""
    order = toposort(outputs) if order is None else order
    if not any(n.op in _STABLE_ROOTS for n in order):
        return list(outputs), {}
    keep_ids = {id(k) for k in keep}
    kept = set(keep_ids)  # (and the rebuilt kept nodes, as they are made)
    # Kept nodes that a replacement could drop (inputs and constants are never dropped: every
    # replacement reads the variables of what it replaces).
    inner = {id(k) for k in keep if k.op not in ("input", "constant")}
    memo: dict[int, Node] = {}
    for n in order:
        new = n
        if n.inputs:
            ins = [memo[id(i)] for i in n.inputs]
            if any(a is not b for a, b in zip(ins, n.inputs)):
                new = rebuild(n, ins)
        if new.op in _STABLE_ROOTS and id(n) not in keep_ids:
            for pattern, make in patterns:
                caps: dict[str, Node] = {}
                if match(pattern, new, caps) and not _touches(new, caps, kept):
                    out = make(**caps)
                    if out is not None and out.type == new.type and not (inner and _drops(new, out, kept)):
                        new = out
                        break
        memo[id(n)] = new
        if id(n) in keep_ids:
            kept.add(id(new))
    return [memo[id(o)] for o in outputs], memo


def _drops(old: Node, new: Node, kept: set[int]) -> bool:
    """Whether a kept node below ``old`` is not below ``new`` (a sum of exps held constant, or
    differentiated with respect to, that the replacement ``logsumexp`` computes anew)."""
    def below(root: Node) -> set[int]:
        seen: set[int] = set()
        stack = [root]
        while stack:
            x = stack.pop()
            if id(x) not in seen:
                seen.add(id(x))
                stack.extend(x.inputs)
        return seen & kept

    return not below(old) <= below(new)


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
              order: list[Node] | None = None, cut: set[int] | frozenset[int] = frozenset()) -> dict[Node, Node]:
    """Gradients of ``sum(<output, cotangent>)`` for the nodes of ``wrt`` that receive one.

    No gradient flows from a node of ``cut`` (ids: ``consider_constant``) or a ``stop_gradient``
    node into its operands; what depends on a target only through them is not differentiated.
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
        elif i not in cut and n.op != "stop_gradient":
            for x in n.inputs:
                if id(x) in depends:
                    depends.add(i)
                    break
        if i in depends and (n.type.dtype in ("float32", "float64") or n.op in _TUPLES):
            active.add(i)
    acc: dict[int, Node] = {}
    for o, c in zip(outputs, cotangents):
        if c is not None and id(o) in active:
            acc[id(o)] = acc[id(o)] + c if id(o) in acc else c
    found: dict[Node, Node] = {}
    masks: dict[int, Node | None] = {}  # see _apply_rule
    with shared_extents():
        for n in reversed(order):
            g = acc.pop(id(n), None)
            mask = masks.pop(id(n), None)
            if g is None:
                continue
            if id(n) in targets:
                found[n] = full(g, n)
            if n.op != "stop_gradient" and id(n) not in cut and any(id(x) in active for x in n.inputs):
                _apply_rule(n, g, active, acc, masks, mask)
    return found


_NO_MASK = object()  # (a contribution with no mask: the operand's gradient is not masked)


def _apply_rule(n: Node, g: Node | dict[int, Node], active: set[int], acc: dict[int, Node],
                masks: dict[int, Any] | None = None, mask: Node | None = None) -> None:
    """Add the contributions of ``n``'s rule, given the gradient ``g`` of ``n``, to its operands'
    (for a node of several results, a dict of their gradients by result).

    Masks: the gradient of a branch of ``where(c, a, b)`` is zero where the other branch is taken,
    but the branch's own local derivatives may be NaN or infinite there (a stable form's rare
    branch: ``log(-x)`` for x > 0), and 0 * NaN is NaN: the chain rule would leak it into the
    gradient of what both branches read.  So each contribution made inside a branch is masked
    again, ``where(c, contribution, 0)``: ``masks[id(x)]`` is the condition under which every
    contribution to ``x`` so far can be nonzero (None once one is not masked, or by another
    condition), and ``mask`` is ``n``'s."""
    op = OPS[n.op]
    if op.grad is None:
        raise NotImplementedError(f"no gradient rule for op {n.op!r}")
    if isinstance(g, dict):
        pass
    elif op.kind not in _LAZY_KINDS and n.op not in _LAZY_OPS or (op.kind != "elemwise" and 0 < g.ndim < n.ndim):
        g = full(g, n)
    grads = op.grad(n, g)
    if len(grads) != len(n.inputs):
        raise RuntimeError(f"gradient rule of {n.op} returned {len(grads)} gradients for {len(n.inputs)} operands")
    ext = _extents()
    for j, (x, gx) in enumerate(zip(n.inputs, grads)):
        if gx is None or id(x) not in active:
            continue
        if callable(gx):
            gx = gx()
        i = id(x)
        if isinstance(gx, dict):  # gradients of some results of a node of several (a loop)
            box = acc.setdefault(i, {})
            for k, part in gx.items():
                box[k] = box[k] + part if k in box else part
            if masks is not None:
                masks[i] = None
            continue
        cond = mask
        # (the branch taken where c is / is not; an everywhere-guard's slow branch: everywhere)
        if n.op == "where" and j > 0 and not isinstance(g, dict) and not everywhere_guard(n):
            c = n.inputs[0] if j == 1 else api.logical_not(n.inputs[0])
            cond = c if cond is None else api.logical_and(cond, c)
        if cond is not None and gx.ndim == n.ndim and cond.ndim <= gx.ndim and ext(gx) == ext(n) and all(
                a == 1 or a == b for a, b in zip(ext(cond)[::-1], ext(gx)[::-1])):
            gx = _fit(api.where(cond, gx, 0.0), x, n)
            if ext(gx) != ext(n):
                # Summed to an operand that may have been broadcast (two vectors of unknown lengths):
                # its contribution can be nonzero only where some element summed into it was selected,
                # and that is the mask carried on (else exp(a)'s rule multiplies the masked 0 by
                # exp(a) = inf in the other branch of where(|a| < 700, exp(a) / exp(b), exp(a - b))).
                cond = api.greater(_fit(api.where(cond, 1.0, 0.0), x, n), 0.0)
        else:
            gx, cond = _fit(gx, x, n), None
        acc[i] = acc[i] + gx if i in acc else gx
        if masks is not None:
            old = masks.get(i, _NO_MASK if i not in masks else None)
            masks[i] = cond if old is _NO_MASK or old is cond else None


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


def _mode(disconnected: str, what: str) -> str:
    if not isinstance(disconnected, str) or disconnected not in _DISCONNECTED:
        raise ValueError(f"{what}: disconnected must be one of {', '.join(map(repr, _DISCONNECTED))}, "
                         f"got {disconnected!r}")
    return disconnected


def _describe(n: Node) -> str:
    """A short name for a node in messages: an input's name, else the start of its formula."""
    if n.op == "input" and n.arg("name"):
        return f"{n.arg('name')!r} ({n.type})"
    from exprc.printing import pprint  # (printing sits above autodiff's imports)

    text = pprint(n, max_nodes=12)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({n.type})"


def _nodes(xs: Any, what: str) -> list[Node]:
    """``consider_constant``: None, a node or an iterable of nodes."""
    if xs is None:
        return []
    if isinstance(xs, Node):
        return [xs]
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Iterable):
        raise TypeError(f"{what}: expected an exprc expression or a list of them, got {type(xs).__name__}")
    out = list(xs)
    for i, x in enumerate(out):
        if not isinstance(x, Node):
            raise TypeError(f"{what}[{i}]: expected an exprc expression, got {type(x).__name__}")
    return out


def _reached(outputs: Sequence[Node], order: list[Node], cut: set[int]) -> set[int]:
    """Ids of the nodes of ``order`` the outputs reach without passing through a node of ``cut``."""
    seen = {id(o) for o in outputs}
    for n in reversed(order):  # users before their operands
        i = id(n)
        if i in seen and i not in cut:
            seen.update(id(x) for x in n.inputs)
    return seen


#: Stability rules whose forms are accurate values but not good functions to differentiate: an
#: error-free split of x*x (the derivative of Dekker's split cancels).  The gradient is taken of the
#: formula as written there (accuracy bench: each made a case's gradient worse).  (log_div and
#: log_difference were here too while a branch mask was lost in a sum to an operand of unknown length:
#: the branch not taken leaked NaN; with the mask carried their gradients are the accurate ones.)
#: sigmoid_pair_product's e/(1 + e)**2 is a cheaper value, not a better function to differentiate:
#: the logistic density's gradient through it lost 4.3 bits (bench/accuracy.py), through the two sigmoids 1.6.
#: exp_subnormal_product: the derivative's own products are scaled when the gradient is optimized.
#: pow_compensated_base: pow(s, y) exp(y err / s) differentiated gives y pow(s, y - 1) exp(y err / s), whose
#: pow(s, y - 1) the gradient's optimization compensates again (d/dr (1 + r/n)**n came out e**(2r), 48 bits
#: off); the power as written is compensated once there.
VALUE_ONLY_RULES = ("exp_exact_square", "erfc_exact_argument", "exp_exact_argument", "log_erfc",
                    "sigmoid_pair_product", "exp_subnormal_product", "pow_compensated_base")
#: Graphs with these ops are differentiated as written: softmax and logsumexp stop the gradient
#: at their max shift (stop_gradient, which optimizing removes), and the stable forms of
#: log(softmax) shift by a max of their own whose gradient would route through it.
AS_WRITTEN_OPS = frozenset({"max", "min", "argmax", "argmin", "stop_gradient"})
#: Graphs up to this many nodes are differentiated in their stable forms (_stabilized); a bigger one
#: as written (its optimization would cost seconds, which the function's own optimize pays again).
STABILIZE_MAX_NODES = 20_000


def _stabilized(outputs: list[Node], wrt: Sequence[Node], consider_constant: Sequence[Node]) -> list[Node]:
    """``outputs`` with the optimizer's stability rules applied (canonicalize and stabilize, not
    specialize), when every ``wrt`` is a variable or constant (which rewriting never touches) and
    nothing is held constant: the gradient is then that of the stable forms (``log1p``, the
    series branch of ``sin(x)/x - 1``, ``x * sigmoid(x)``), accurate where the naive formula's
    derivative cancels or overflows as its value does.  (The rare branches those forms add are
    masked in the reverse sweep: see _apply_rule.)"""
    if consider_constant or any(w.op not in ("input", "constant") for w in wrt):
        return outputs
    order = toposort(outputs)
    if len(order) > STABILIZE_MAX_NODES or any(OPS[n.op].kind == "control" or n.op in AS_WRITTEN_OPS
                                               for n in order):
        return outputs
    from exprc.pipeline import optimize  # (the optimizer imports the op tables this module extends)

    # log(sum(exp(x)) / n) and the like as logsumexp first: the optimizer's log_div takes the quotient
    # apart into branches whose masked gradients still meet exp(x) = inf below (0 * inf)
    outputs = _stable(outputs, wrt, order, _LOG_OF_SUMS)[0]
    return list(optimize(list(outputs), exclude=("specialize", *VALUE_ONLY_RULES)).outputs)


def _vjp(outputs: list[Node], cotangents: list[Node | None], wrt: list[Node], disconnected: str,
         what: str, consider_constant: Sequence[Node] = ()) -> list[Node]:
    disconnected = _mode(disconnected, what)
    outputs = _stabilized(outputs, wrt, consider_constant)
    order = toposort(outputs)
    cut = {id(n) for n in consider_constant}
    reached = _reached(outputs, order, cut) if cut else {id(n) for n in order}
    missing = [w for w in wrt if id(w) not in reached]
    if missing and disconnected != "zero":
        names = ", ".join(f"{w.arg('name') or repr(w)} ({w.type})" for w in missing)
        through = " (other than through consider_constant)" if cut else ""
        msg = (f"{what}: the output does not depend on {names}{through}; pass disconnected='zero' (or 'warn') "
               "to get zero gradients")
        if disconnected == "raise":
            raise DisconnectedInputError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    stable, memo = _stable(outputs, keep=[*wrt, *consider_constant], order=order)
    # The stable forms may rebuild a kept node (something below it changed): use its new self.
    targets = [memo.get(id(w), w) for w in wrt]
    cut = {id(memo.get(id(n), n)) for n in consider_constant}
    found = _backprop(stable, cotangents, targets, order if all(a is b for a, b in zip(stable, outputs)) else None, cut)
    return [found[t] if t in found else _zero_gradient(w) for w, t in zip(wrt, targets)]


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
def stop_gradient(x: Any) -> Node:
    """``x`` unchanged, through which no gradient flows: :func:`grad` and its relatives treat it
    as a constant (JAX's ``stop_gradient``; Theano's ``zero_grad``, also exported under that name
    and as ``disconnected_grad``).  A variable the cost reaches only through it gets a zero
    gradient, not a :class:`~exprc.errors.DisconnectedInputError` (as JAX and Theano's
    ``zero_grad``; Theano's ``disconnected_grad`` would raise).  The optimizer removes the node
    (rule ``stop_gradient_to_identity``), so compiled code does not pay for it."""
    return OPS["stop_gradient"].make((api.as_node(x),), {})


#: Theano's names for :func:`stop_gradient` (``theano.gradient.zero_grad`` / ``disconnected_grad``).
zero_grad = stop_gradient
disconnected_grad = stop_gradient


def _known_grad(var: Any, g: Any) -> Node:
    """The seed ``g`` of ``known_grads[var]``, checked, cast and given ``var``'s shape."""
    if not isinstance(var, Node):
        raise TypeError(f"grad: known_grads: the keys must be exprc expressions, got {type(var).__name__}")
    if not is_float(var.dtype):
        raise DTypeError(f"grad: known_grads for {_describe(var)}: only float nodes carry gradients")
    try:
        g = api.as_node(g, var)
    except TypeError as e:
        raise TypeError(f"grad: known_grads for {_describe(var)}: {e}") from None
    if g.dtype == "bool":
        raise DTypeError(f"grad: known_grads for {_describe(var)}: the gradient is bool; give a float expression")
    gs, vs = g.type.shape, var.type.shape
    if any(a is not None and b is not None and a != b and a != 1 and b != 1 for a, b in zip(gs[::-1], vs[::-1])):
        raise ShapeError(f"grad: known_grads for {_describe(var)}: a gradient of shape {shape_str(gs)} does not match "
                         f"the variable's shape {shape_str(vs)} (nor broadcast with it)")
    g = cast(g, var.dtype)
    if gs != vs:
        g = sum_to(g, var)  # axes the variable was broadcast along (size 1, or leading) are summed
        if g.type.shape != vs:
            g = fill(var, g)
    return g


def grad(cost: Any, wrt: Any, disconnected: str | None = None, *, consider_constant: Any = None,
         known_grads: Any = None, disconnected_inputs: str | None = None) -> Any:
    """The gradient of the scalar ``cost`` with respect to ``wrt`` (a variable or a list of them;
    the result has the same structure, each gradient of its variable's shape).

    ``wrt`` may be any node of the graph (an input or an intermediate result).  A ``wrt`` the
    cost does not depend on raises :class:`~exprc.errors.DisconnectedInputError` unless
    ``disconnected`` is ``"zero"`` or ``"warn"`` (zeros, with a warning for ``"warn"``).
    ``disconnected_inputs`` is Theano's spelling of the same option: ``"raise"``, ``"warn"`` or
    ``"ignore"`` (= ``"zero"``); give one or the other.  Integer and bool variables get float64 zeros.

    As Theano's ``grad``:

    * ``consider_constant``: nodes (a node or a list) treated as constants: no gradient flows
      through them into their operands (a ``wrt`` reached only through them is disconnected).
      Nodes are interned, so an expression equal to a listed one is the same node.
    * ``known_grads``: a mapping ``{node: gradient}`` of gradients known at intermediate nodes
      (or inputs).  Each is added to whatever flows into its node from ``cost``, and the backward
      sweep starts from those nodes too; ``cost`` may then be None.  A known gradient has its
      node's shape, or broadcasts with it (axes along which the node is of size 1 are summed);
      it is cast to the node's dtype.
    """
    if disconnected_inputs is not None:
        if not isinstance(disconnected_inputs, str) or disconnected_inputs not in _DISCONNECTED_INPUTS:
            raise ValueError(f"grad: disconnected_inputs must be one of {', '.join(map(repr, _DISCONNECTED_INPUTS))}, "
                             f"got {disconnected_inputs!r}")
        mode = _DISCONNECTED_INPUTS[disconnected_inputs]
        if disconnected is not None and _mode(disconnected, "grad") != mode:
            raise ValueError(f"grad: disconnected={disconnected!r} and disconnected_inputs={disconnected_inputs!r} "
                             "disagree; pass one of them")
        disconnected = mode
    disconnected = "raise" if disconnected is None else disconnected
    outs: list[Node] = []
    seeds: list[Node | None] = []
    if cost is not None:
        cost = api.as_node(cost)
        if cost.ndim != 0:
            raise ShapeError(f"grad: the cost must be a scalar, got an expression of shape "
                             f"{shape_str(cost.type.shape)}; reduce it (exprc.sum, exprc.mean) or use exprc.vjp / "
                             "exprc.jacobian")
        if not is_float(cost.dtype):
            raise DTypeError(f"grad: the cost must be a float expression, got {cost.dtype}")
        outs.append(cost)
        seeds.append(constant_node(1, cost.dtype))
    if known_grads is not None:
        if not isinstance(known_grads, Mapping):
            raise TypeError(f"grad: known_grads must be a mapping {{node: gradient}}, got {type(known_grads).__name__}")
        for var, g in known_grads.items():
            seeds.append(_known_grad(var, g))
            outs.append(var)
    if not outs:
        raise ValueError("grad: cost is None and there are no known_grads: nothing to differentiate")
    ws, back = _structure(wrt, "grad: wrt")
    cc = _nodes(consider_constant, "grad: consider_constant")
    return back(_vjp(outs, seeds, ws, disconnected, "grad", cc))


def vjp(outputs: Any, wrt: Any, cotangents: Any, disconnected: str = "raise", *,
        consider_constant: Any = None) -> Any:
    """Vector-Jacobian product: the gradient of ``sum(output * cotangent)`` (summed over the
    outputs) with respect to ``wrt``.  ``outputs`` and ``cotangents`` are an expression or
    lists of the same length; a cotangent broadcasts to its output's shape (None: zero).
    ``disconnected`` and ``consider_constant`` are as for :func:`grad` (outputs may be
    intermediate nodes of each other: that is what ``grad``'s ``known_grads`` does)."""
    outs, kind = _as_outputs(outputs, "vjp")
    cts = list(cotangents) if kind is not None else [cotangents]
    if len(cts) != len(outs):
        raise ValueError(f"vjp: {len(outs)} outputs but {len(cts)} cotangents")
    ws, back = _structure(wrt, "vjp: wrt")
    cts = [_cotangent(c, o, "vjp") for c, o in zip(cts, outs)]
    return back(_vjp(outs, cts, ws, disconnected, "vjp", _nodes(consider_constant, "vjp: consider_constant")))


def jvp(outputs: Any, wrt: Any, tangents: Any, disconnected: str = "raise", *,
        consider_constant: Any = None) -> Any:
    """Jacobian-vector product: the directional derivative of ``outputs`` (an expression or a
    list) when ``wrt`` moves along ``tangents`` (same structure as ``wrt``).

    Built as the transpose of :func:`vjp`: with a placeholder cotangent ``u``, ``vjp(u)`` is
    linear in ``u``, and the vjp of ``vjp(u)`` along ``tangents`` is the jvp (whose values do
    not depend on ``u``; what remains of ``u``, a shape, is taken from the output).
    ``disconnected`` and ``consider_constant`` are as for :func:`grad`.
    """
    outs, kind = _as_outputs(outputs, "jvp")
    ws, _ = _structure(wrt, "jvp: wrt")
    ts = list(tangents) if isinstance(wrt, (list, tuple)) else [tangents]
    if len(ts) != len(ws):
        raise ValueError(f"jvp: {len(ws)} variables but {len(ts)} tangents")
    ts = [_cotangent(t, w, "jvp") for t, w in zip(ts, ws)]
    us = [api.tensor("jvp_u", o.dtype, shape=o.type.shape) if is_float(o.dtype) else None for o in outs]
    pulled = _vjp(outs, us, ws, disconnected, "jvp", _nodes(consider_constant, "jvp: consider_constant"))
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


def jacobian(expr: Any, wrt: Any, disconnected: str = "raise", *, consider_constant: Any = None) -> Any:
    """The Jacobian of ``expr``: for each variable, an expression of shape
    ``expr.shape + variable.shape``.  A static size gives one reverse sweep per element (sharing
    the forward graph); a size known only at call time gives a loop over the elements
    (:func:`exprc.scan`).  ``disconnected`` and ``consider_constant`` are as for
    :func:`grad`."""
    expr = api.as_node(expr)
    ws, back = _structure(wrt, "jacobian: wrt")
    cc = _nodes(consider_constant, "jacobian: consider_constant")
    if expr.ndim == 0:
        return back(_vjp([expr], [constant_node(1, expr.dtype)], ws, disconnected, "jacobian", cc))
    if not is_float(expr.dtype):
        raise DTypeError(f"jacobian: expected a float expression, got {expr.dtype}")
    if None in expr.type.shape:
        _vjp([api.sum(expr)], [constant_node(1, expr.dtype)], ws, disconnected, "jacobian", cc)  # (the checks)
        return back(_jacobian_loop(expr, ws, cc))
    size = math.prod(expr.type.shape)
    rows: list[list[Node]] = []
    for k in range(size):
        onehot = np.zeros(size, dtype=expr.dtype)
        onehot[k] = 1
        ct = constant_node(onehot.reshape(expr.type.shape), expr.dtype)
        rows.append(_vjp([expr], [ct], ws, disconnected if k == 0 else "zero", "jacobian", cc))
    out = []
    for j in range(len(ws)):
        blocks = [r[j] for r in rows]
        for n in reversed(expr.type.shape):  # stack the innermost axis first
            blocks = [api.stack(blocks[i:i + n]) for i in range(0, len(blocks), n)]
        out.append(blocks[0])
    return back(out)


def _jacobian_loop(expr: Node, ws: list[Node], cc: list[Node]) -> list[Node]:
    """The Jacobian of an expression whose size is known at call time, as Theano builds it: a loop
    over the first axis whose step is the Jacobian of one row (down to a scalar's gradient).  The
    forward expression does not depend on the step: the loop computes it once (hoisted)."""
    if expr.ndim == 0:
        return _vjp([expr], [constant_node(1, expr.dtype)], ws, "zero", "jacobian", cc)
    from exprc.control import scan
    from exprc.creation import arange

    rows, _ = scan(lambda i: _jacobian_loop(expr[i], ws, cc), sequences=[arange(api.shape(expr)[0])],
                   name="jacobian", return_list=True)
    return rows


def hessian(cost: Any, wrt: Any, disconnected: str = "raise", *, consider_constant: Any = None) -> Any:
    """The Hessian of the scalar ``cost`` with respect to each variable of ``wrt`` (shape
    ``variable.shape * 2``); for a list, the list of the diagonal blocks (as Theano).
    ``consider_constant`` holds for both differentiations."""
    ws, back = _structure(wrt, "hessian: wrt")
    cc = _nodes(consider_constant, "hessian: consider_constant")
    out = []
    for w in ws:
        out.append(jacobian(grad(cost, w, disconnected, consider_constant=cc), w, "zero", consider_constant=cc))
    return back(out)


__all__ = ["Extents", "count", "disconnected_grad", "fill", "full", "grad", "hessian", "jacobian", "jvp", "model_of",
           "stable_forms", "stop_gradient", "sum_to", "vjp", "zero_grad", "zeros_like"]
