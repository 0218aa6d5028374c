"""The optimizer: an ordered list of named passes, each run to a fixpoint.

Read :func:`optimize` top to bottom to know what happens to a graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import networkx as nx

from exprc.config import Config, current
from exprc.graph import Node, to_networkx, toposort
from exprc.rewrite import TraceEntry, rewrite, select
from exprc.rewrite.core import check_exclude

#: (pass name, rule tag).  Fusion happens later, in lowering (see exprc.fusion).
PASSES: tuple[tuple[str, str], ...] = (
    ("canonicalize", "canonicalize"),
    ("stabilize", "stability"),
    ("specialize", "specialize"),
)


@dataclass(frozen=True)
class FunctionGraph:
    """Inputs and outputs of a computation; the nodes are whatever the outputs reach."""

    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    trace: tuple[TraceEntry, ...] = field(default=(), compare=False)

    @property
    def nodes(self) -> list[Node]:
        """Every node, inputs before their users."""
        return toposort(self.outputs)

    def to_networkx(self) -> nx.MultiDiGraph:
        return to_networkx(list(self.outputs))

    @property
    def rewrites(self) -> list[str]:
        """Names of the rules that fired, in order."""
        return [t.rule for t in self.trace]


def optimize(graph: FunctionGraph | Node | Sequence[Node], config: Config | None = None,
             exclude: Iterable[str] = ()) -> FunctionGraph:
    """Run every pass of :data:`PASSES` (minus ``exclude``d rules or tags) and
    return the optimized graph with the trace of which rules fired.

    CSE needs no pass: nodes are interned, so equal subexpressions are one node
    before and after every rewrite.  Dead code needs none either: a graph is
    what its outputs reach.
    """
    cfg = config or current()
    if isinstance(graph, Node):
        graph = [graph]
    fg = graph if isinstance(graph, FunctionGraph) else FunctionGraph((), tuple(graph))
    ex = check_exclude(tuple(exclude) + tuple(cfg.exclude), extra=[name for p in PASSES for name in p])
    trace: list[TraceEntry] = []
    outputs = list(fg.outputs)
    for pass_name, tag in PASSES:
        if pass_name in ex:
            continue
        rules = select(tag, ex)
        if rules:
            outputs = rewrite(outputs, rules, pass_name, trace, max_rounds=cfg.max_rewrite_rounds)
    return FunctionGraph(fg.inputs, tuple(outputs), tuple(trace))
