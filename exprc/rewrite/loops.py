"""Whole-graph rewrites of loops: ``merge_loops`` runs one loop where two compute the same steps.

Rules see one node at a time; merging two loops needs both, so this is a pass of its own that
:func:`exprc.pipeline.optimize` runs before the rule passes.
"""

from __future__ import annotations

from exprc.graph import Node, substitute, toposort
from exprc.ops import OPS
from exprc.ops.control import Loop
from exprc.rewrite.driver import TraceEntry


def _extends(big: Loop, small: Loop) -> bool:
    """``big`` computes every result of ``small`` (the same body, its results first, over
    placeholders of the same types) and maybe more.  Bodies are compared through their nodes,
    which are interned: ``small``'s over ``big``'s placeholders is ``big``'s if they are the same
    expressions (a loop read back from a file has placeholders of its own)."""
    n = small.n_results
    if (big is small or big.until or small.until or len(big.inputs) != len(small.inputs)
            or big.state_taps[:n] != small.state_taps or big.keep[:n] != small.keep
            or big.seq_taps != small.seq_taps or big.n_invariants != small.n_invariants
            or big.go_backwards != small.go_backwards or big.from_sequences != small.from_sequences
            or any(t is not None for t in big.state_taps[n:])  # (added results feed nothing back)
            or any(a.type != b.type for a, b in zip(big.inputs, small.inputs))):
        return False
    outs = list(small.outputs[:n])
    if big.inputs != small.inputs:
        outs = substitute(outs, dict(zip(small.inputs, big.inputs)))
    return all(a is b for a, b in zip(outs, big.outputs[:n]))


def merge_loops(outputs: list[Node], trace: list[TraceEntry] | None = None) -> list[Node]:
    """Read every result of a loop from a loop over the same operands that extends it (the
    forward loop and the one the gradient builds with the products it saves, see
    ``exprc.control._scan_grad``): one loop runs instead of two.  The graph is unchanged when
    there is no such pair."""
    order = toposort(outputs)
    loops = [n for n in order if n.op == "scan"]
    if len(loops) < 2:
        return outputs
    # Each loop goes to the widest loop extending it, the first in graph order among equals (two
    # equal loops are one: loops' bodies are not interned as nodes are).  The rank only grows
    # along a mapping, so there is no cycle.
    rank = {n: (n.arg("loop").n_results, -i) for i, n in enumerate(loops)}
    target: dict[Node, Node] = {}
    for a in loops:
        best = a
        for b in loops:
            if rank[b] > rank[best] and b.inputs == a.inputs and _extends(b.arg("loop"), a.arg("loop")):
                best = b
        if best is not a:
            target[a] = best
    mapping = {}
    for n in order:
        if n.op == "scan_output" and n.inputs[0] in target:
            mapping[n] = OPS["scan_output"].make((target[n.inputs[0]],), dict(n.attrs))
            if trace is not None:
                trace.append(TraceEntry("merge_loops", "merge_loops", n, mapping[n]))
    return substitute(outputs, mapping) if mapping else outputs


__all__ = ["merge_loops"]
