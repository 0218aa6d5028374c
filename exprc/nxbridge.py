"""networkx conversion: a graph of :class:`~exprc.graph.Node` to a ``MultiDiGraph`` and back.

The interned nodes are exprc's graph; networkx is the mutable container a user (or a pass)
edits, converted at the boundary.  A ``MultiDiGraph`` with the operand position on each edge
keeps what a plain ``DiGraph`` would lose: the two edges of ``x*x`` and the order of ``x-y``.
networkx is imported when a conversion runs, never by ``import exprc`` (it costs ~0.2 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from exprc.graph import Node, rebuild, toposort

if TYPE_CHECKING:
    import networkx as nx


def to_networkx(outputs: Sequence[Node]) -> nx.MultiDiGraph:
    """A ``MultiDiGraph`` with integer node ids in topological order.

    Each graph node carries ``node`` (the :class:`Node`); each edge carries
    ``pos``, the operand position, so ``x*x`` keeps two edges and ``x-y`` keeps
    its order.  ``graph.graph['outputs']`` lists the ids of the outputs.
    """
    import networkx as nx

    order = toposort(outputs)
    ids = {n: i for i, n in enumerate(order)}
    g = nx.MultiDiGraph()
    for n, i in ids.items():
        g.add_node(i, node=n, op=n.op)
    for n, i in ids.items():
        for pos, src in enumerate(n.inputs):
            g.add_edge(ids[src], i, key=pos, pos=pos)
    g.graph["outputs"] = [ids[o] for o in outputs]
    return g


def from_networkx(g: nx.MultiDiGraph) -> list[Node]:
    """Rebuild the outputs of a graph made by :func:`to_networkx` (possibly edited).

    Operands come from the in-edges ordered by ``pos``; a graph node's own
    ``node`` attribute supplies op, attributes and (for leaves) identity.
    """
    import networkx as nx

    built: dict[int, Node] = {}
    for i in nx.lexicographical_topological_sort(g):
        proto: Node = g.nodes[i]["node"]
        edges = sorted(g.in_edges(i, data="pos"), key=lambda e: e[2])
        if not edges:
            built[i] = proto
        else:
            built[i] = rebuild(proto, [built[src] for src, _, _ in edges])
    return [built[i] for i in g.graph["outputs"]]
