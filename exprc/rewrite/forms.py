"""Algebraic views and builders shared by the canonicalize and stability rules.

Patterns match the *shape* of a graph; the views here match its *meaning*, so a
stability rule written once recognises ``1 + x``, ``x + 1``, ``-(-1 - x)``,
``x - (-1)`` and ``(x + 0.5) + 0.5`` alike:

* :func:`sum_view` reads a tree of ``add``/``sub``/``neg``/``mul by a constant``
  as ``const + sum(coef * term)`` with exact (:class:`~fractions.Fraction`)
  coefficients.  It never distributes a constant over a sum and never looks
  below a term, so building a view is cheap and changes nothing.
* :func:`build_sum` and the small builders (:func:`add`, :func:`mul`, …) make
  canonical nodes (``neg`` stays ``neg``, constants on the right, constants of
  the result's dtype) and fold constant operands at once, because the stability
  pass runs after constant folding.

Rules may also *freeze* a node they emit (``frozen``): e.g. the naive branch of
``where(safe, stable, naive)`` must not be rewritten again.  The frozen set lives
for one :func:`exprc.optimize` call (see :func:`scope`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from exprc.graph import Node, constant_node
from exprc.ops import OPS
from exprc.types import is_float

#: A sum view with more terms than this is not built (keeps rules linear-time on long chains).
MAX_TERMS = 8

# -- per-optimization state ------------------------------------------------------------
_STATE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("exprc_rewrite_state", default=None)
_FALLBACK: dict = {"frozen": set(), "origin": {}, "views": {}}


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Fresh frozen-node, provenance and view tables for one optimization pass, and memos of
    pure functions of (immutable, interned) nodes: product views, constant folds, constant values."""
    token = _STATE.set({"frozen": set(), "origin": {}, "views": {}, "products": {}, "folds": {}, "consts": {}, "extents": {}})
    try:
        yield
    finally:
        _STATE.reset(token)


def _state() -> dict:
    st = _STATE.get()
    return st if st is not None else _FALLBACK


def pass_memo(name: str) -> dict | None:
    """The current pass's memo table ``name`` (see :func:`scope`); ``None`` outside a pass,
    where nothing is memoized (a table that lived forever would keep its nodes alive)."""
    st = _STATE.get()
    return st[name] if st is not None else None


def freeze(node: Node) -> Node:
    """Mark ``node`` as final for the stability rules of this optimization; returns it."""
    _state()["frozen"].add(node)
    return node


def frozen_set() -> set:
    """The frozen nodes of the current pass (the driver reads it once per pass)."""
    return _state()["frozen"]


def is_frozen(node: Node) -> bool:
    return node in _state()["frozen"]


def set_origin(node: Node, info: tuple) -> Node:
    """Remember how a rule built ``node`` (e.g. a compensated ``pow(1 + x, y)``)."""
    _state()["origin"][node] = info
    return node


def origin_map() -> dict:
    """Node -> how a rule built it, for the current pass (the driver carries an entry over to a node
    rebuilt on rewritten operands)."""
    return _state()["origin"]


def origin(node: Node) -> tuple | None:
    return _state()["origin"].get(node)


# -- constants ---------------------------------------------------------------------------
def scalar_const(node: Node) -> float | None:
    """The value of a one-element constant, else ``None``."""
    if node.op != "constant" or node.value.size != 1:
        return None
    return float(node.value.reshape(())) if node.dtype != "bool" else None


def exact(v: float | None) -> Fraction | int | None:
    """``v`` as an exact fraction (an int when it is one; ``None`` for None/NaN/inf)."""
    if v is None or not math.isfinite(v):
        return None
    if v.is_integer() and abs(v) < 2.0**53:
        return int(v)
    return Fraction(v)


def const(v: float | Fraction, like: Node) -> Node:
    """A 0-d constant with ``like``'s dtype."""
    return constant_node(np.asarray(float(v), dtype=like.dtype), like.dtype)


# -- builders ----------------------------------------------------------------------------
_TYPES: dict[tuple, object] = {}  # (op, operand types, attrs) -> result type, when no cast is needed


def make(op: str, *xs: Node, **attrs: object) -> Node:
    """``op(*xs)``, folded to a constant at once when every operand is a constant.  Type
    inference is memoized by operand types (a type rule depends on nothing else)."""
    o = OPS[op]
    key = (op, tuple(x.type for x in xs), tuple(sorted(attrs.items())))
    folded = True
    for x in xs:
        if x.op != "constant":
            folded = False
            break
    if not folded:
        typ = _TYPES.get(key)
        if typ is not None:
            return Node(op, xs, key[2], typ)
    else:  # constant operands: the fold (NumPy, a new constant) is memoized for the pass
        folds = pass_memo("folds")
        if folds is not None:
            fkey = (op, xs, key[2])
            out = folds.get(fkey)
            if out is None:
                folds[fkey] = out = _make(o, op, xs, attrs, key)
            return out
    return _make(o, op, xs, attrs, key)


def _make(o: object, op: str, xs: tuple, attrs: dict, key: tuple) -> Node:
    node = o.make(tuple(xs), attrs)
    if node.inputs == xs:
        _TYPES[key] = node.type
    if xs and o.kind == "elemwise" and all(x.op == "constant" for x in node.inputs) and o.impl is not None:
        with np.errstate(all="ignore"):
            val = np.asarray(o.impl(*[x.value for x in node.inputs], **dict(node.attrs)))
        return constant_node(val.astype(node.dtype, copy=False), node.dtype)
    return node


def neg(x: Node) -> Node:
    if x.op == "neg":
        return x.inputs[0]
    return make("neg", x)


def add(a: Node, b: Node) -> Node:
    if a.op == "constant" and b.op != "constant":
        a, b = b, a
    return make("add", a, b)


def sub(a: Node, b: Node) -> Node:
    return add(a, neg(b))


def mul(a: Node, b: Node) -> Node:
    if a.op == "constant" and b.op != "constant":
        a, b = b, a
    return make("mul", a, b)


def div(a: Node, b: Node) -> Node:
    return make("truediv", a, b)


def power(u: Node, n: int) -> Node:
    """``u**n`` for an integer ``n >= 1`` as squarings and products (exact steps, no ``pow``)."""
    out, base = None, u
    while n:
        if n & 1:
            out = base if out is None else mul(out, base)
        n >>= 1
        if n:
            base = make("square", base)
    assert out is not None
    return out


def horner(u: Node, coeffs: Sequence[float | Fraction], like: Node) -> Node:
    """``sum(coeffs[i] * u**i)`` in Horner form, from the highest nonzero term down to the lowest
    (``u**lo`` factored out, zero terms skipped); constants in ``like``'s dtype."""
    nonzero = [i for i, c in enumerate(coeffs) if c]
    if not nonzero:
        return mul(u, const(0.0, like))
    lo, top = nonzero[0], nonzero[-1]
    acc = const(float(coeffs[top]), like)
    for i in range(top - 1, lo - 1, -1):
        acc = mul(acc, u)
        if coeffs[i]:
            acc = add(acc, const(float(coeffs[i]), like))
    return mul(acc, power(u, lo)) if lo else acc


def scale(x: Node, k: float | Fraction) -> Node:
    """``k * x`` with nested constant factors merged (``(2*y) * 0.5`` is ``y``)."""
    k = Fraction(k)
    while True:
        if x.op == "neg":
            x, k = x.inputs[0], -k
            continue
        if x.op == "mul":
            c = exact(scalar_const(x.inputs[1]))
            if c is not None and c != 0:
                x, k = x.inputs[0], k * c
                continue
        break
    if k == 1:
        return x
    if k == -1:
        return neg(x)
    if k < 0:
        return neg(mul(x, const(-k, x)))
    return mul(x, const(k, x))


def where(c: Node, a: Node, b: Node) -> Node:
    return make("where", c, a, b)


def guard(rare_cond: Node, slow: Node, fast: Node, everywhere: bool = False) -> Node:
    """``where(rare_cond, slow, fast)`` for a condition almost never true (an overflow or underflow
    range): marked ``rare`` so that loops skip ``slow`` in chunks where it does not hold.
    ``everywhere``: ``slow`` is as right where the condition fails (a stable form, ``fast`` the formula
    as written where it is as accurate), so a lowering that cannot skip it may compute ``slow`` alone
    (:func:`exprc.fusion.stable_branches`)."""
    return make("where", make("rare", rare_cond, everywhere=everywhere), slow, fast)


def fn(op: str, x: Node) -> Node:
    return make(op, x)


# -- the sum view --------------------------------------------------------------------------
_ZERO = Fraction(0)

@dataclass(frozen=True)
class SumView:
    """``const + sum(coef * term)``; ``terms`` keeps first-seen order, no zero coefficients."""

    terms: tuple[tuple[Fraction, Node], ...]
    const: Fraction
    cancelled: bool = False  #: some term appeared more than once and was combined
    nconst: int = 0  #: how many constants were gathered
    max_const: Fraction = Fraction(0)  #: the largest magnitude among them
    vanished: tuple[Node, ...] = ()  #: terms that cancelled out completely

    @property
    def ops(self) -> frozenset[str]:
        """The ops of the terms (``where`` included when a term was built by a rule)."""
        ops = getattr(self, "_ops", None)
        if ops is None:
            ops = frozenset(t.op for _, t in self.terms)
            object.__setattr__(self, "_ops", ops)
        return ops

    def coef(self, term: Node) -> Fraction:
        for k, t in self.terms:
            if t is term:
                return k
        return Fraction(0)

    def without(self, *drop: Node) -> SumView:
        return SumView(tuple((k, t) for k, t in self.terms if t not in drop), self.const)

    def scaled(self, k: Fraction) -> SumView:
        return SumView(tuple((c * k, t) for c, t in self.terms), self.const * k)

    def plus(self, other: SumView, k: Fraction = Fraction(1)) -> SumView:
        """``self + k * other``, combining equal terms; ``cancelled`` when a term or the
        constant partly or wholly cancels (the rewrite has removed a cancellation)."""
        acc: dict[Node, Fraction] = {}
        big: dict[Node, Fraction] = {}  # the largest |coefficient| of a term met more than once
        order: list[Node] = []
        for c, t in list(self.terms) + [(c * k, t) for c, t in other.terms]:
            if t not in acc:
                order.append(t)
                # Fraction(0) + c, without the Fraction arithmetic where its result is plain
                tc = type(c)
                acc[t] = c if tc is Fraction else Fraction(c) if tc is int else _ZERO + c
            else:
                if t not in big:
                    big[t] = max(_ZERO, abs(acc[t]))
                acc[t] += c
                big[t] = max(big[t], abs(c))
        terms = tuple((acc[t], t) for t in order if acc[t] != 0)
        const = self.const + k * other.const
        # (a term met once keeps its coefficient: only those met again can shrink)
        shrank = any(abs(acc[t]) < b for t, b in big.items()) or (
            self.const != 0 and other.const != 0 and abs(const) < max(abs(self.const), abs(k * other.const)))
        return SumView(terms, const, cancelled=shrank)

    @property
    def is_const(self) -> bool:
        return not self.terms

    def single(self) -> tuple[Fraction, Node] | None:
        """``(k, t)`` when the view is exactly ``k * t``."""
        if len(self.terms) == 1 and self.const == 0:
            return self.terms[0]
        return None


def sum_view(node: Node, max_terms: int = MAX_TERMS) -> SumView | None:
    """Read ``node`` as a sum of scaled terms (float dtypes only; ``None`` when too long).
    Views are memoized for the current pass (nodes are immutable)."""
    if not is_float(node.dtype):
        return None
    if max_terms != MAX_TERMS:
        return _sum_view(node, max_terms)
    views = _state()["views"]
    v = views.get(node, views)
    if v is views:
        views[node] = v = _sum_view(node, max_terms)
    return v


def _sum_view(node: Node, max_terms: int) -> SumView | None:
    acc: dict[Node, Fraction] = {}
    order: list[Node] = []
    seen = 0
    const: Fraction | int = 0  # ints where possible: Fraction arithmetic is slow
    nconst = 0
    max_const: Fraction | int = 0
    stack: list[tuple[Fraction | int, Node]] = [(1, node)]
    while stack:
        k, n = stack.pop()
        op = n.op
        if op == "add":
            stack.append((k, n.inputs[1]))
            stack.append((k, n.inputs[0]))
            continue
        if op == "sub":
            stack.append((-k, n.inputs[1]))
            stack.append((k, n.inputs[0]))
            continue
        if op == "neg":
            stack.append((-k, n.inputs[0]))
            continue
        if op == "constant":
            c = exact(scalar_const(n))
            if c is None:
                return None
            const += k * c
            nconst += 1
            max_const = max(max_const, abs(k * c))
            continue
        if op == "mul":
            c = exact(scalar_const(n.inputs[1])) if n.inputs[1].op == "constant" else None
            other = n.inputs[0]
            if c is None and n.inputs[0].op == "constant":
                c, other = exact(scalar_const(n.inputs[0])), n.inputs[1]
            if c is not None and c != 0 and other.op not in ("add", "sub"):
                stack.append((k * c, other))
                continue
        if op == "truediv" and n.inputs[1].op == "constant":
            c = exact(scalar_const(n.inputs[1]))
            if c is not None and c != 0 and n.inputs[0].op not in ("add", "sub"):
                stack.append((k / c, n.inputs[0]))
                continue
        seen += 1
        if n not in acc:
            if len(order) >= max_terms:
                return None
            order.append(n)
            acc[n] = 0
        acc[n] += k
    terms = tuple((acc[t], t) for t in order if acc[t] != 0)
    return SumView(terms, const, cancelled=seen > len(order) or len(terms) < len(order), nconst=nconst,
                   max_const=max_const, vanished=tuple(t for t in order if acc[t] == 0))


def product_view(node: Node, max_factors: int = MAX_TERMS) -> tuple | None:
    """See :func:`_product_view` (memoized for the current pass: callers must not change the lists)."""
    if max_factors != MAX_TERMS:
        return _product_view(node, max_factors)
    memo = pass_memo("products")
    if memo is None:
        return _product_view(node, max_factors)
    v = memo.get(node, memo)
    if v is memo:
        memo[node] = v = _product_view(node, max_factors)
    return v


def _product_view(node: Node, max_factors: int) -> tuple | None:
    """Read ``node`` as ``coef * prod(factor ** power)`` through mul, truediv, neg, square and
    constant factors: ``(coef, [(factor, power)], cancelled, vanished)``; ``cancelled`` when a
    factor of the numerator meets the same factor in the denominator (``vanished``: those whose
    power dropped to 0, and those of NaN guards ``t + 0*u`` met on the way, read as ``t``).  Float dtypes only; ``None`` when too long or a constant is 0/inf/NaN."""
    if not is_float(node.dtype):
        return None
    coef: Fraction | int = 1
    guards: list[Node] = []
    acc: dict[Node, int] = {}
    pos: dict[Node, bool] = {}
    neg_: dict[Node, bool] = {}
    stack: list[tuple[int, Node]] = [(1, node)]
    while stack:
        p, n = stack.pop()
        op = n.op
        if op == "mul":
            stack.append((p, n.inputs[1]))
            stack.append((p, n.inputs[0]))
        elif op == "truediv":
            stack.append((-p, n.inputs[1]))
            stack.append((p, n.inputs[0]))
        elif op == "neg":
            if p % 2:  # ((-u)**2 is u**2: square(-u) keeps the sign)
                coef = -coef
            stack.append((p, n.inputs[0]))
        elif op == "square":
            stack.append((2 * p, n.inputs[0]))
        elif op == "add" and is_nan_guard(n.inputs[1]):  # t + 0*u: a cancelled factor's NaN guard
            guards.append(n.inputs[1].inputs[0])
            stack.append((p, n.inputs[0]))
        elif op == "constant":
            c = exact(scalar_const(n))
            if not c:
                return None
            coef = coef * c if p > 0 else coef / c
            if p not in (1, -1):
                coef = coef * c ** (p - (1 if p > 0 else -1)) if p > 0 else coef / c ** (-p - 1)
        else:
            if n not in acc:
                if len(acc) >= max_factors:
                    return None
                acc[n] = 0
            acc[n] += p
            if p > 0:
                pos[n] = True
            else:
                neg_[n] = True
    cancelled = any(n in pos and n in neg_ for n in acc)
    return coef, [(n, e) for n, e in acc.items() if e != 0], cancelled, [n for n, e in acc.items() if e == 0] + guards


def is_nan_guard(n: Node) -> bool:
    """``n`` is ``u * 0``: what a cancelled factor leaves behind so that NaN/inf u still gives NaN."""
    return n.op == "mul" and n.inputs[1].op == "constant" and scalar_const(n.inputs[1]) == 0


_NO_OPS: frozenset[str] = frozenset()


def term_ops(node: Node) -> frozenset[str]:
    """The ops of the terms of ``node``'s sum view (empty when it has none)."""
    v = sum_view(node)
    return v.ops if v is not None else _NO_OPS


def build_sum(view: SumView, like: Node) -> Node:
    """A node computing ``view`` in ``like``'s dtype: positive terms first, the constant last."""
    terms = sorted(view.terms, key=lambda kt: kt[0] < 0)  # stable: keeps order within each sign
    acc: Node | None = None
    for k, t in terms:
        if acc is None:
            acc = scale(t, k)
        elif k < 0:
            acc = add(acc, neg(scale(t, -k)))
        else:
            acc = add(acc, scale(t, k))
    if acc is None:
        return const(view.const, like)
    if view.const != 0:
        c = float(view.const)
        acc = add(acc, neg(const(-c, like))) if c < 0 else add(acc, const(c, like))
    return acc


def same_up_to_scale(a: SumView, b: SumView) -> Fraction | None:
    """``s`` with ``a == s * b`` (exactly, term by term), else ``None``."""
    if len(a.terms) != len(b.terms) or not b.terms:
        return None
    s = a.terms[0][0] / b.coef(a.terms[0][1]) if b.coef(a.terms[0][1]) else None
    if s is None or a.const != s * b.const:
        return None
    for k, t in a.terms:
        if b.coef(t) * s != k:
            return None
    return s


def broadcast_safe(kept: list[Node], like: Node) -> bool:
    """The operands ``kept`` (what remains of an elementwise combination after some
    terms cancelled) still broadcast to ``like``'s shape.  An unknown size is taken
    to match an unknown size of a kept operand in the same position."""
    if not kept:
        return like.ndim == 0
    nd = max(k.ndim for k in kept)
    if nd != like.ndim:
        return False
    for ax in range(1, nd + 1):
        target = like.type.shape[-ax]
        ks = [k.type.shape[-ax] for k in kept if k.ndim >= ax]
        if target == 1:
            continue
        if target is not None and target not in ks:
            return False
        if target is None and all(s == 1 for s in ks):
            return False
    return True
