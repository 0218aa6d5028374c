"""Rewrite rules: declarative patterns, named and tagged, in one registry.

A rule is ``pattern -> replacement``.  A pattern is a tree of :class:`P`
(``P("log", P("add", C(1), X("x")))``); matching binds the named captures and
the replacement function receives them as keyword arguments (plus ``node``,
the matched root) and returns a node or ``None`` to decline.  Commutative ops
are matched in both operand orders, so ``1 + x`` and ``x + 1`` hit the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exprc.errors import UnknownRewriteError
from exprc.graph import Node
from exprc.ops import OPS


class X:
    """Matches any node and captures it under ``name`` (the same name twice must bind
    the same node, so ``P("sub", X("a"), X("a"))`` matches ``y - y`` only)."""

    def __init__(self, name: str, pred: Callable[[Node], bool] | None = None):
        self.name, self.pred = name, pred


class C:
    """Matches a constant whose every element equals ``value`` (``None``: any constant)."""

    def __init__(self, value: float | None = None, name: str | None = None, signbit: bool | None = None):
        self.value, self.name, self.signbit = value, name, signbit


class P:
    """Matches a node of op ``op`` (a name or a tuple of names) with operand patterns."""

    def __init__(self, op: str | tuple[str, ...], *inputs: Any, name: str | None = None):
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.inputs, self.name = inputs, name


def constant_value(node: Node) -> float | None:
    """The single value of a constant whose elements are all equal, else ``None``."""
    if node.op != "constant":
        return None
    arr = node.value
    if arr.size == 0:
        return None
    first = arr.flat[0]
    if arr.size > 1 and not (np.all(arr == first) and np.all(np.signbit(arr) == np.signbit(first))):
        return None
    return first.item()


def _plausible(pat: Any, node: Node) -> bool:
    """A necessary condition for ``match(pat, node)``, checked without recursion."""
    if isinstance(pat, P):
        return node.op in pat.ops
    if isinstance(pat, C):
        return node.op == "constant"
    return True


def match(pat: Any, node: Node, caps: dict[str, Node]) -> bool:
    if isinstance(pat, X):
        if pat.name in caps:
            return caps[pat.name] is node
        if pat.pred is not None and not pat.pred(node):
            return False
        caps[pat.name] = node
        return True
    if isinstance(pat, C):
        v = constant_value(node)
        if v is None or (pat.value is not None and v != pat.value):
            return False
        if pat.signbit is not None and bool(np.signbit(v)) != pat.signbit:
            return False
        if pat.name:
            caps[pat.name] = node
        return True
    inputs = node.inputs
    if node.op not in pat.ops or len(inputs) != len(pat.inputs):
        return False
    orders = (inputs, inputs[::-1]) if len(inputs) == 2 and OPS[node.op].commutative else (inputs,)
    for ins in orders:
        for p, i in zip(pat.inputs, ins):  # cheap rejection before copying the captures
            if not _plausible(p, i):
                break
        else:
            trial = dict(caps)
            for p, i in zip(pat.inputs, ins):
                if not match(p, i, trial):
                    break
            else:
                if pat.name:
                    trial[pat.name] = node
                caps.clear()
                caps.update(trial)
                return True
    return False


@dataclass(frozen=True)
class Rule:
    """A named, tagged rewrite: ``pattern`` matched at a node, ``replace(**captures)``."""

    name: str
    tags: frozenset[str]
    pattern: P | None  # None: ``replace(node=...)`` decides, on any node or on nodes of ``ops``
    replace: Callable[..., Node | None] = field(compare=False)
    doc: str = ""
    ops: tuple[str, ...] | None = None  # root ops of a pattern-less rule (None: every op)
    #: the rule can only fire when one of these ops is a term of the node's sum view (see
    #: exprc.rewrite.forms.term_ops); the driver checks it without calling the rule
    needs: frozenset[str] | None = None

    @property
    def root_ops(self) -> tuple[str, ...] | None:
        return self.pattern.ops if self.pattern is not None else self.ops

    def apply(self, node: Node) -> Node | None:
        if self.pattern is None:
            return self.replace(node=node)
        caps: dict[str, Node] = {}
        if not match(self.pattern, node, caps):
            return None
        return self.replace(node=node, **caps)


REGISTRY: dict[str, Rule] = {}


def rule(name: str, tags: Iterable[str], pattern: P | None = None) -> Callable:
    """Decorator registering ``fn`` as the replacement of a new rule."""

    def deco(fn: Callable[..., Node | None]) -> Callable[..., Node | None]:
        register_rule(Rule(name, frozenset(tags), pattern, fn, (fn.__doc__ or "").strip()))
        return fn

    return deco


def register_rule(r: Rule) -> Rule:
    """Add a rule to the registry (names are unique)."""
    if r.name in REGISTRY:
        raise ValueError(f"a rewrite named {r.name!r} is already registered")
    REGISTRY[r.name] = r
    GENERATION[0] += 1
    return r


#: Bumped by every registration: part of the in-process compile memo's key, so a rule
#: added after a function was compiled applies to the next ``exprc.function`` call.
GENERATION = [0]


def select(tag: str, exclude: Iterable[str] = ()) -> list[Rule]:
    """Rules carrying ``tag``, minus those excluded by name or tag, in registration order."""
    ex = set(exclude)
    return [r for r in REGISTRY.values() if tag in r.tags and r.name not in ex and not (r.tags & ex)]


def check_exclude(exclude: Iterable[str], extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Validate ``exclude=`` entries: each must be a rule name, a tag or one of ``extra`` (pass names)."""
    known = set(REGISTRY) | {t for r in REGISTRY.values() for t in r.tags} | {"fusion"} | set(extra)
    ex = tuple(sorted(set(exclude)))
    for e in ex:
        if e not in known:
            raise UnknownRewriteError(f"exclude: {e!r} is neither a rewrite name nor a tag; known tags: "
                                      f"{', '.join(sorted({t for r in REGISTRY.values() for t in r.tags}))}")
    return ex
