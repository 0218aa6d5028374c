"""The fixpoint driver: apply a set of rules bottom-up until nothing fires."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exprc.graph import Node, rebuild
from exprc.rewrite.core import Rule
from exprc.rewrite.forms import frozen_set, origin_map, term_ops


@dataclass(frozen=True)
class TraceEntry:
    """One rule firing: in which pass, which rule, the node before and after."""

    pass_name: str
    rule: str
    before: Node
    after: Node

    def __str__(self) -> str:
        from exprc.printing import pprint

        return f"[{self.pass_name}] {self.rule}: {pprint(self.before)}  ->  {pprint(self.after)}"


def _compatible(old: Node, new: Node) -> bool:
    """A replacement must keep dtype, ndim and every statically known size."""
    ot, nt = old.type, new.type
    if ot.dtype != nt.dtype:
        return False
    if ot.shape == nt.shape:  # the usual case, cheaply
        return True
    if len(ot.shape) != len(nt.shape):
        return False
    return all(a is None or a == b for a, b in zip(ot.shape, nt.shape)) and all(
        b is None or a == b or a is None for a, b in zip(ot.shape, nt.shape))


#: rules at one op, as the driver walks them: ((rule, rule.fire, rule.needs), ...)
_Table = tuple[tuple[Rule, Callable, frozenset | None], ...]


def _tables(rules: Sequence[Rule], skip: set[Rule]) -> tuple[dict[str, _Table], _Table]:
    """The rules (minus ``skip``) by root op, in order; rules without a root op (constant
    folding) apply at every op, after that op's own rules, and alone at other ops."""
    by_op: dict[str, list[Rule]] = {}
    generic: list[Rule] = []
    for r in rules:
        if r.root_ops is None:
            generic.append(r)
        else:
            for op in r.root_ops:
                by_op.setdefault(op, []).append(r)

    def table(rs: list[Rule]) -> _Table:
        return tuple((r, r.fire, r.needs) for r in rs if r not in skip)

    return {op: table(rs + generic) for op, rs in by_op.items()}, table(generic)


_PLANS: dict[tuple, tuple] = {}


def _plan(rules: tuple[Rule, ...], settled_rules: tuple[Rule, ...]) -> tuple:
    """The driver's tables for one rule set, kept between calls (optimize runs the same few
    rule sets again and again): by op and generic, for all rules and without ``settled_rules``;
    the ops where some rule has ``needs``; and the memo of per-node-shape rule lists the driver
    fills in (see ``filtered`` there)."""
    # Keyed by identity (rules compare by name, not by replacement function); the plan holds
    # the rules, so their ids are not reused while it is cached.
    key = (tuple(map(id, rules)), tuple(map(id, settled_rules)))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 64:  # rule sets made on the fly (tests, exclude=...): keep a few
            _PLANS.clear()
        by_op, generic = _tables(rules, set())
        skip = set(settled_rules)
        by_op_settled, generic_settled = _tables(rules, skip) if skip else (by_op, generic)
        needs_at = {op for r in rules if r.needs is not None for op in (r.root_ops or ())}
        needs_everywhere = any(r.needs is not None and r.root_ops is None for r in rules)
        _PLANS[key] = plan = (by_op, generic, by_op_settled, generic_settled, needs_at, needs_everywhere, {},
                              (rules, settled_rules))
    return plan[:7]


def rewrite(outputs: Sequence[Node], rules: Sequence[Rule], pass_name: str, trace: list[TraceEntry],
            max_rounds: int = 16, max_per_node: int = 32, settled: set[Node] | None = None,
            settled_rules: Sequence[Rule] = (), fixpoints: set[Node] | None = None) -> list[Node]:
    """Rewrite ``outputs`` with ``rules`` to a fixpoint, in one walk.

    The walk is bottom-up (inputs first).  At every node the rules are tried in
    order; when one fires, the nodes its replacement created are rewritten first
    (inputs first again), then the rules are tried on the replacement, and so on:
    every node of the result is a fixpoint, so no second walk is needed.  A node
    is rewritten at most ``max_per_node * max_rounds`` times (a cap against rules
    that undo each other).  A node a rule *froze* (see
    :func:`exprc.rewrite.forms.freeze`) is left as it is, and stays frozen when
    its operands are rewritten.

    ``settled``: nodes already known to be fixpoints of ``settled_rules`` (a previous
    pass), where those rules are not tried again.  ``fixpoints`` collects the nodes of
    the result where no rule fires.
    """
    by_op, generic, by_op_settled, generic_settled, needs_at, needs_everywhere, filtered = _plan(
        tuple(rules), tuple(settled_rules))
    settled = settled if settled is not None else set()
    cap = max(1, max_per_node * max(1, max_rounds))
    frozen = frozen_set()
    origins = origin_map()
    done: dict[Node, Node] = {}  # node -> its rewritten form (a fixpoint)
    redirect: dict[Node, Node] = {}  # node -> the replacement being rewritten for it
    active: set[Node] = set()  # nodes whose replacement is being rewritten right now
    fired: dict[Node, int] = {}
    done_get, redirect_get, fired_get = done.get, redirect.get, fired.get
    for root in outputs:
        stack = [root]
        while stack:
            n = stack[-1]
            target = redirect_get(n)
            if target is not None:
                if target in done:
                    done[n] = done[target]
                    del redirect[n]
                    active.discard(n)
                    stack.pop()
                elif n in active:  # reached again from inside its replacement: a cycle, keep n
                    done[n] = n
                    del redirect[n]
                    active.discard(n)
                    stack.pop()
                else:
                    active.add(n)
                    stack.append(target)
                continue
            if n in done:
                stack.pop()
                continue
            ins = n.inputs
            if not ins:  # inputs and constants: no rule rewrites a leaf
                done[n] = n
                stack.pop()
                continue
            # The rewritten operands (a missing one goes on the stack first) and n rebuilt on them:
            # rebuild(n, operands), with its common case inline (operands of the very same type
            # objects give a node of the same type).  Unary and binary nodes, nearly all of them,
            # are spelled out: this is the inner loop of every pass.
            if len(ins) == 2:
                a, b = ins
                da, db = done_get(a), done_get(b)
                if da is None or db is None:
                    if db is None:
                        stack.append(b)
                    if da is None:
                        stack.append(a)
                    continue
                if da is a and db is b:
                    new = n
                elif da.type is a.type and db.type is b.type:
                    new = Node(n.op, (da, db), n.attrs, n.type)
                else:
                    new = rebuild(n, (da, db))
            elif len(ins) == 1:
                a = ins[0]
                da = done_get(a)
                if da is None:
                    stack.append(a)
                    continue
                if da is a:
                    new = n
                elif da.type is a.type:
                    new = Node(n.op, (da,), n.attrs, n.type)
                else:
                    new = rebuild(n, (da,))
            else:
                pending = [i for i in ins if i not in done]
                if pending:
                    stack.extend(reversed(pending))
                    continue
                new_ins = [done[i] for i in ins]
                new = n
                for x, y in zip(new_ins, ins):
                    if x is not y:
                        if all(x2.type is y2.type for x2, y2 in zip(new_ins, ins)):
                            new = Node(n.op, tuple(new_ins), n.attrs, n.type)
                        else:
                            new = rebuild(n, new_ins)
                        break
            if n in frozen:
                frozen.add(new)
                done[n] = done[new] = new
                stack.pop()
                continue
            if new is not n:
                if n in origins and new not in origins:
                    origins[new] = origins[n]  # (rebuilt on rewritten operands, it stands for the same formula)
                if new in done:
                    done[n] = done[new]
                    stack.pop()
                    continue
                # rewrite the rebuilt node for n (what the redirect branch above does) ...
                redirect[n] = new
                active.add(n)
                stack.append(new)
                if new in redirect or new in frozen:
                    continue
                # ... and try the rules on it now: its operands are rewritten already (every value
                # in ``done`` maps to itself), so visiting it would only find that out again
                n, ins = new, new.inputs
            out = None
            count = fired_get(n, 0)
            if count < cap:
                is_settled = n in settled
                # The rules worth calling depend only on the node's op, the ops of its operands
                # (the first checks of a pattern) and, for rules with ``needs``, the ops of its
                # terms: the list is filtered once per such key (a few dozen keys per pass).
                terms = term_ops(n) if needs_everywhere or n.op in needs_at else None
                if len(ins) == 1:
                    key = (n.op, is_settled, terms, ins[0].op)
                elif len(ins) == 2:
                    key = (n.op, is_settled, terms, ins[0].op, ins[1].op)
                else:
                    key = (n.op, is_settled, terms, *[i.op for i in ins])
                todo = filtered.get(key)
                if todo is None:
                    if is_settled:
                        rs = by_op_settled.get(n.op, generic_settled)
                    else:
                        rs = by_op.get(n.op, generic)
                    filtered[key] = todo = tuple(t for t in rs if (t[2] is None or t[2] & terms)
                                                 and t[0].may_match(n.op, key[3:]))
                for r, fire, _ in todo:
                    out = fire(n)
                    if out is not None and out is not n and out not in redirect and _compatible(n, out):
                        break
                    out = None
            if out is None:
                done[n] = n
                if fixpoints is not None:
                    fixpoints.add(n)
                stack.pop()
                continue
            trace.append(TraceEntry(pass_name, r.name, n, out))
            fired[out] = count + 1
            if n in frozen:  # the rule kept n inside its replacement (a guard's naive branch)
                done[n] = n
            redirect[n] = out
    return [done[o] for o in outputs]
