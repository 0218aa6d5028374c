"""Rewrite rules: declarative patterns, named and tagged, in one registry.

A rule is ``pattern -> replacement``.  A pattern is a tree of :class:`P`
(``P("log", P("add", C(1), X("x")))``); matching binds the named captures and
the replacement function receives them as keyword arguments (plus ``node``,
the matched root) and returns a node or ``None`` to decline.  Commutative ops
are matched in both operand orders, so ``1 + x`` and ``x + 1`` hit the same rule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exprc.errors import UnknownRewriteError
from exprc.graph import Node
from exprc.ops import OPS
from exprc.rewrite.forms import pass_memo


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
    """The single value of a constant whose elements are all equal, else ``None``
    (memoized for the current pass: patterns ask it of the same constants again and again)."""
    if node.op != "constant":
        return None
    memo = pass_memo("consts")
    if memo is None:
        return _constant_value(node)
    v = memo.get(node, memo)
    if v is memo:
        memo[node] = v = _constant_value(node)
    return v


def _constant_value(node: Node) -> float | None:
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


def _plausible_op(pat: Any, op: str) -> bool:
    """``_plausible`` for a node of op ``op``."""
    if isinstance(pat, P):
        return op in pat.ops
    if isinstance(pat, C):
        return op == "constant"
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


# -- compiled matchers ----------------------------------------------------------------------
# ``match`` interprets a pattern tree; the driver tries thousands of rules per optimization, so a
# rule compiles its pattern once into nested closures that do the same checks without the
# isinstance dispatch.  A sub-match that fails undoes its captures by popping the keys it added
# (captures are only ever added, never changed, so the dict's insertion order is an undo log).
Matcher = Callable[[Node, dict], bool]


def _names(pat: Any) -> list[str]:
    """The capture names of ``P`` and ``C`` nodes in ``pat`` (these overwrite, unlike ``X``)."""
    if isinstance(pat, X):
        return []
    out = [pat.name] if pat.name else []
    for p in getattr(pat, "inputs", ()):
        out.extend(_names(p))
    return out


def _x_names(pat: Any) -> list[str]:
    if isinstance(pat, X):
        return [pat.name]
    return [n for p in getattr(pat, "inputs", ()) for n in _x_names(p)]


def compile_pattern(pat: Any) -> Matcher:
    """A function ``m(node, caps) -> bool`` equivalent to ``match(pat, node, caps)`` from empty
    ``caps`` (as :attr:`Rule.fire` calls it).  Patterns where a ``P``/``C`` capture name repeats
    (an overwrite the undo log cannot undo) keep the interpreter."""
    named = _names(pat)
    if len(set(named)) != len(named) or set(named) & set(_x_names(pat)):
        return lambda node, caps: match(pat, node, caps)
    return _compile(pat)


def _compile(pat: Any) -> Matcher:
    if isinstance(pat, X):
        name, pred = pat.name, pat.pred

        def match_x(node: Node, caps: dict) -> bool:
            bound = caps.get(name)  # captures are nodes, never None
            if bound is not None:
                return bound is node
            if pred is not None and not pred(node):
                return False
            caps[name] = node
            return True

        return match_x
    if isinstance(pat, C):
        value, cname, signbit = pat.value, pat.name, pat.signbit

        def match_c(node: Node, caps: dict) -> bool:
            if node.op != "constant":
                return False
            v = constant_value(node)
            if v is None or (value is not None and v != value):
                return False
            if signbit is not None and bool(np.signbit(v)) != signbit:
                return False
            if cname:
                caps[cname] = node
            return True

        return match_c
    ops, pname, nin = pat.ops, pat.name, len(pat.inputs)
    kids = tuple(_compile(p) for p in pat.inputs)
    # the cheap rejection of match(): the op an operand must have (None: anything)
    need = tuple(p.ops if isinstance(p, P) else ("constant",) if isinstance(p, C) else None for p in pat.inputs)

    if nin == 1:  # unary ops: one order, one operand
        (k0,), (need0,) = kids, need

        def match_p1(node: Node, caps: dict) -> bool:
            if node.op not in ops:
                return False
            inputs = node.inputs
            if len(inputs) != 1:
                return False
            a = inputs[0]
            if need0 is not None and a.op not in need0:
                return False
            if not k0(a, caps):
                return False
            if pname:
                caps[pname] = node
            return True

        return match_p1
    if nin == 2:  # binary ops: the operand order as given, then swapped for a commutative op
        k0, k1 = kids
        need0, need1 = need

        def match_p2(node: Node, caps: dict) -> bool:
            if node.op not in ops:
                return False
            inputs = node.inputs
            if len(inputs) != 2:
                return False
            a, b = inputs
            for x, y in ((a, b), (b, a)):
                if (need0 is None or x.op in need0) and (need1 is None or y.op in need1):
                    mark = len(caps)
                    if k0(x, caps) and k1(y, caps):
                        if pname:
                            caps[pname] = node
                        return True
                    while len(caps) > mark:
                        caps.popitem()
                if not OPS[node.op].commutative:
                    return False
            return False

        return match_p2

    def match_p(node: Node, caps: dict) -> bool:
        if node.op not in ops:
            return False
        inputs = node.inputs
        if len(inputs) != nin:
            return False
        orders = (inputs, inputs[::-1]) if nin == 2 and OPS[node.op].commutative else (inputs,)
        mark = len(caps)
        for ins in orders:
            for want, i in zip(need, ins):
                if want is not None and i.op not in want:
                    break
            else:
                for m, i in zip(kids, ins):
                    if not m(i, caps):
                        while len(caps) > mark:
                            caps.popitem()
                        break
                else:
                    if pname:
                        caps[pname] = node
                    return True
        return False

    return match_p


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
    #: every operand of a node the rule can fire on has one of these ops (None: any); the
    #: driver checks it without calling the rule
    operands: frozenset[str] | None = None
    #: ``apply`` as one closure, the pattern compiled (see compile_pattern); the driver calls it
    fire: Callable[[Node], Node | None] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        replace = self.replace
        if self.pattern is None:
            def fire(node: Node) -> Node | None:
                return replace(node=node)
        else:
            m = compile_pattern(self.pattern)

            def fire(node: Node) -> Node | None:
                caps: dict[str, Node] = {}
                if not m(node, caps):
                    return None
                return replace(node=node, **caps)
        object.__setattr__(self, "fire", fire)

    @property
    def root_ops(self) -> tuple[str, ...] | None:
        return self.pattern.ops if self.pattern is not None else self.ops

    def apply(self, node: Node) -> Node | None:
        return self.fire(node)

    def may_match(self, op: str, operand_ops: tuple[str, ...]) -> bool:
        """False when the pattern cannot match a node of ``op`` whose operands have
        ``operand_ops`` (the first checks of :func:`match`, in either operand order for a
        commutative op); the driver asks once per such shape, not once per node."""
        if self.operands is not None and any(o not in self.operands for o in operand_ops):
            return False
        pat = self.pattern
        if pat is None:
            return self.ops is None or op in self.ops
        if op not in pat.ops or len(operand_ops) != len(pat.inputs):
            return False
        orders = [operand_ops]
        if len(operand_ops) == 2 and OPS[op].commutative:
            orders.append(operand_ops[::-1])
        return any(all(_plausible_op(p, o) for p, o in zip(pat.inputs, ops)) for ops in orders)


REGISTRY: dict[str, Rule] = {}


def rewrite_rule(name: str, tags: Iterable[str], pattern: P | None = None, *,
                 operands: Iterable[str] | None = None, ops: Iterable[str] | None = None,
                 needs: Iterable[str] | None = None) -> Callable:
    """Register the decorated function as the replacement of a new rewrite rule: the one public
    way to add a rule (``exprc.rewrite_rule``; the built-in rules use it too)::

        from exprc.rewrite import C, P, X

        @exprc.rewrite_rule("swish_of_zero", tags=["canonicalize", "mylib"], pattern=P("swish", C(0.0)))
        def _(node, **captures):
            return exprc.constant(0.0, node.dtype)

    The replacement receives ``node`` (the matched root) and the captures as keyword arguments and
    returns a node of the same type, or None to decline.  A rule runs in the optimizer pass whose
    tag it carries (``"canonicalize"``, ``"stability"``, ``"specialize"``; see
    :data:`exprc.pipeline.PASSES`); any further tags (``"mylib"``) let users switch it off with
    ``exclude=``, by name or by tag.  Names are unique; at a node, rules are tried in registration
    order.  Without a ``pattern`` the function decides alone, on every node or on nodes whose op is
    in ``ops``.  ``operands`` and ``needs`` are cheap pre-checks the driver makes without calling
    the rule (see :class:`Rule`).  The function's docstring is the rule's ``doc``.

    Older spellings are aliases: ``exprc.rewrite.rule`` is this function, and
    ``exprc.register_rewrite(name, tags, fn, pattern)`` its call form.
    """

    def deco(fn: Callable[..., Node | None]) -> Callable[..., Node | None]:
        register_rule(Rule(name, frozenset(tags), pattern, fn, (fn.__doc__ or "").strip(),
                           ops=None if ops is None else tuple(ops),
                           needs=frozenset(needs) if needs else None,
                           operands=None if operands is None else frozenset(operands)))
        return fn

    return deco


#: The former name of :func:`rewrite_rule` (the same function).
rule = rewrite_rule


def register_rule(r: Rule) -> Rule:
    """Add a built :class:`Rule` to the registry (names are unique): what :func:`rewrite_rule`
    does underneath; use that to add a rule."""
    load_rules()  # (a user's rule after the built-in ones, whose names it must not take)
    if r.name in REGISTRY:
        raise ValueError(f"a rewrite named {r.name!r} is already registered")
    REGISTRY[r.name] = r
    # (the built-in rules are what every optimize loads first: not a change, also when one of their
    # modules is imported directly)
    if not _LOADED[1] and not getattr(r.replace, "__module__", "").startswith("exprc.rewrite.rules."):
        GENERATION[0] += 1
    return r


#: Bumped by every registration outside the built-in rules' import: part of the in-process compile
#: memo's key, so a rule added after a function was compiled applies to the next ``exprc.function``
#: call; the graph index (which knows exprc's code, not the user's) is off once it is not 0.
GENERATION = [0]

_LOADED = [False, False]  # (loaded, being loaded by the thread that holds _RULES_LOCK)
_RULES_LOCK = threading.RLock()


def load_rules() -> None:
    """Import the built-in rules, which register themselves, once.  Everything that reads the
    registry calls this first, so ``import exprc`` does not pay for some 30 rule modules.  Another
    thread waits until the import has finished (it must not see half a registry); the registrations
    the import makes come back here and return at once."""
    if _LOADED[0]:
        return
    with _RULES_LOCK:
        if _LOADED[0] or _LOADED[1]:
            return
        _LOADED[1] = True
        try:
            import exprc.rewrite.rules  # noqa: F401
        finally:
            _LOADED[1] = False
        _LOADED[0] = True


def select(tag: str, exclude: Iterable[str] = ()) -> list[Rule]:
    """Rules carrying ``tag``, minus those excluded by name or tag, in registration order."""
    load_rules()
    ex = set(exclude)
    return [r for r in REGISTRY.values() if tag in r.tags and r.name not in ex and not (r.tags & ex)]


def check_exclude(exclude: Iterable[str], extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Validate ``exclude=`` entries: each must be a rule name, a tag or one of ``extra`` (pass names)."""
    load_rules()
    known = set(REGISTRY) | {t for r in REGISTRY.values() for t in r.tags} | {"fusion"} | set(extra)
    ex = tuple(sorted(set(exclude)))
    for e in ex:
        if e not in known:
            raise UnknownRewriteError(f"exclude: {e!r} is neither a rewrite name nor a tag; known tags: "
                                      f"{', '.join(sorted({t for r in REGISTRY.values() for t in r.tags}))}")
    return ex
