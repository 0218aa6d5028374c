"""The optimizer: an ordered list of named passes, each run to a fixpoint.

Read :func:`optimize` top to bottom to know what happens to a graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exprc.config import Config, current
from exprc.graph import Node, substitute, toposort
from exprc.ops.reduce import IDENTITY_MADE
from exprc.rewrite import TraceEntry, rewrite, select
from exprc.rewrite.core import check_exclude
from exprc.rewrite.forms import scope
from exprc.rewrite.loops import merge_loops

if TYPE_CHECKING:
    import networkx as nx

#: (pass name, rule tag, tags of helper rules that also run in the pass, tags of rules the pass
#: leaves to a later one).  Fusion happens later, in lowering (see exprc.fusion).  The stabilize
#: pass keeps the canonical rules on, so the nodes a stability rule builds are canonical before
#: the next rule looks at them.  Stability rules tagged ``late`` run after all the others: they
#: wrap a node (``exp`` of a square) that other rules must still see bare (``log(exp(...))``).
PASSES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("canonicalize", "canonicalize", (), ()),
    ("stabilize", "stability", ("canonicalize",), ("late",)),
    ("stabilize_late", "late", (), ()),
    ("specialize", "specialize", (), ()),
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
        """The graph as a networkx ``MultiDiGraph`` (see :func:`exprc.nxbridge.to_networkx`)."""
        # networkx costs ~0.2 s to import: only a caller who asks for it pays.
        from exprc.nxbridge import to_networkx

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
    ex = check_exclude(tuple(exclude) + tuple(cfg.exclude), extra=[p[0] for p in PASSES] + ["merge_loops"])
    trace: list[TraceEntry] = []
    outputs = list(fg.outputs)
    if "merge_loops" not in ex:  # (two loops over the same steps: one runs; exprc.rewrite.loops)
        outputs = merge_loops(outputs, trace)
    fixpoints: dict[str, set[Node]] = {}  # tag -> nodes where no rule of that tag fires
    for pass_name, tag, helpers, later in PASSES:
        if pass_name in ex:
            continue
        main = select(tag, ex + later)
        if main:
            in_main = set(map(id, main))  # (rule names are unique: identity is equality, and cheaper)
            extra = [r for r in select_any(helpers, ex) if id(r) not in in_main]
            known = set().union(*[fixpoints.get(h, set()) for h in helpers]) if len(helpers) == 1 else set()
            found: set[Node] = set()
            with scope():  # a rule may freeze nodes for the rest of its pass
                outputs = rewrite(outputs, extra + main, pass_name, trace, max_rounds=cfg.max_rewrite_rounds,
                                  settled=known, settled_rules=extra, fixpoints=found)
            if not extra:
                fixpoints[tag] = found
    return FunctionGraph(fg.inputs, tuple(share_maxima(outputs)), tuple(trace))


def share_maxima(outputs: list[Node]) -> list[Node]:
    """A stable form's shift, max(x, A, keepdims=True, identity=True) (-inf over an empty axis),
    replaced by the user's own max(x, A, keepdims=True) where the graph holds it: one reduction, not
    two (interning cannot merge them: they differ over an empty axis, where the user's raises
    anyway).  Until nothing changes: a user's max of a stable form (max(softmax(x))) reads a shift
    of its own, replaced in the round after the one that rebuilt its operand.  (Not the user's max
    without keepdims: put back as dimshuffle(max(x, A), ...), it kept a row logsumexp - max out of
    one row kernel, 3 kernels for 2 and 10% slower.)"""
    if not IDENTITY_MADE[0]:
        return outputs
    while True:
        order = toposort(outputs)
        plain = {(n.op, n.inputs[0], n.arg("axis"), n.arg("keepdims")): n for n in order
                 if n.op in ("max", "min") and not n.arg("identity")}
        mapping = {n: plain[key] for n in order if n.op in ("max", "min") and n.arg("identity")
                   and (key := (n.op, n.inputs[0], n.arg("axis"), n.arg("keepdims"))) in plain}
        if not mapping:
            return outputs
        outputs = substitute(outputs, mapping)


def select_any(tags: Iterable[str], exclude: Iterable[str]) -> list:
    """Rules carrying any of ``tags`` (minus ``exclude``), in registration order, no duplicates."""
    out: list = []
    seen: set[int] = set()
    for t in tags:
        for r in select(t, exclude):
            if id(r) not in seen:
                seen.add(id(r))
                out.append(r)
    return out
