"""The fixpoint driver: apply a set of rules bottom-up until nothing fires."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exprc.graph import Node, rebuild
from exprc.rewrite.core import Rule
from exprc.rewrite.forms import frozen_set, term_ops


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
    if new.type.dtype != old.type.dtype or new.ndim != old.ndim:
        return False
    return all(a is None or a == b for a, b in zip(old.type.shape, new.type.shape)) and all(
        b is None or a == b or a is None for a, b in zip(old.type.shape, new.type.shape))


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
    by_op: dict[str, list[Rule]] = {}
    generic: list[Rule] = []
    for r in rules:
        if r.root_ops is None:
            generic.append(r)
        else:
            for op in r.root_ops:
                by_op.setdefault(op, []).append(r)
    for specific in by_op.values():  # rules without a root op (constant folding) apply everywhere
        specific.extend(generic)
    skip = set(settled_rules)
    by_op_settled = {op: [r for r in rs if r not in skip] for op, rs in by_op.items()}
    generic_settled = [r for r in generic if r not in skip]
    settled = settled if settled is not None else set()
    cap = max(1, max_per_node * max(1, max_rounds))
    frozen = frozen_set()
    done: dict[Node, Node] = {}  # node -> its rewritten form (a fixpoint)
    redirect: dict[Node, Node] = {}  # node -> the replacement being rewritten for it
    active: set[Node] = set()  # nodes whose replacement is being rewritten right now
    fired: dict[Node, int] = {}
    for root in outputs:
        stack = [root]
        while stack:
            n = stack[-1]
            target = redirect.get(n)
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
            pending = [i for i in ins if i not in done]
            if pending:
                stack.extend(reversed(pending))
                continue
            new = rebuild(n, [done[i] for i in ins])
            if n in frozen:
                frozen.add(new)
                done[n] = done[new] = new
                stack.pop()
                continue
            if new is not n:
                if new in done:
                    done[n] = done[new]
                    stack.pop()
                else:
                    redirect[n] = new
                continue
            out = None
            if fired.get(n, 0) < cap:
                table, default = (by_op_settled, generic_settled) if n in settled else (by_op, generic)
                terms = None
                for r in table.get(n.op, default):
                    if r.needs is not None:
                        if terms is None:
                            terms = term_ops(n)
                        if not (r.needs & terms):
                            continue
                    out = r.apply(n)
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
            fired[out] = fired.get(n, 0) + 1
            if n in frozen:  # the rule kept n inside its replacement (a guard's naive branch)
                done[n] = n
            redirect[n] = out
    return [done[o] for o in outputs]
