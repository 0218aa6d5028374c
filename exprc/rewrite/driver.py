"""The fixpoint driver: apply a set of rules bottom-up until nothing fires."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exprc.graph import Node, rebuild, toposort
from exprc.rewrite.core import Rule


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
            max_rounds: int = 16, max_per_node: int = 32) -> list[Node]:
    """Rewrite ``outputs`` with ``rules`` to a fixpoint (rounds capped at ``max_rounds``).

    Each round walks the graph once, inputs first; at every node the rules are
    tried until none fires.  Nodes created by a replacement are visited in the
    next round, so rules compose.
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
    outputs = list(outputs)
    for _ in range(max_rounds):
        fired = False
        memo: dict[Node, Node] = {}
        for n in toposort(outputs):
            new = rebuild(n, [memo[i] for i in n.inputs]) if n.inputs else n
            for _ in range(max_per_node):
                for r in by_op.get(new.op, generic):
                    out = r.apply(new)
                    if out is not None and out is not new and _compatible(new, out):
                        trace.append(TraceEntry(pass_name, r.name, new, out))
                        new, fired = out, True
                        break
                else:
                    break
            memo[n] = new
        outputs = [memo[o] for o in outputs]
        if not fired:
            break
    return outputs
