"""Lowering: group the optimized graph into kernels (the ``fusion`` pass).

* Elementwise ops form maximal convex groups: a node joins its consumers'
  group only when *all* of its consumers are in that one group, so no path
  leaves a group and re-enters it.  A group is one loop with no temporaries.
* A reduction absorbs the elementwise group that produces its operand when
  nothing else uses that group, so ``sum(exp(x - max(x)))`` is two loops
  (max, then the fused exp-sub-sum) that read ``x`` twice and allocate nothing.
* Independent groups over the same static shape merge into one multi-output
  kernel.
* Views (dimshuffle, getitem, broadcast_to, reshape) cost nothing: the host
  planner turns them into strides.
* With ``native_matmul`` (the C backend, when NumPy's OpenBLAS is found) a 1-d/2-d
  float ``matmul`` is a kernel of its own that calls BLAS from the generated code.
  Ops no renderer has a loop for (batched or integer matmul, argmax, concatenate,
  shape, sum_to …) run as NumPy steps between native segments.

The step graph is scheduled by a lexicographic topological sort (lowest step first).

Excluding the tag ``fusion`` gives every elementwise node its own kernel.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from exprc.graph import Node, toposort
from exprc.ops import OPS, REDUCTIONS

VIEW_OPS = frozenset({"dimshuffle", "getitem", "broadcast_to", "reshape"})
#: Reductions a native kernel computes: those whose identity, accumulator and combine are declared.
NATIVE_REDUCE = frozenset(REDUCTIONS)


@dataclass
class Kernel:
    """One native loop nest.  ``body`` is in evaluation order; ``outputs`` are the
    nodes it stores; ``operands`` the arrays it reads; ``reduce`` the reduction
    node of a reduction kernel (its fused producers precede it in ``body``)."""

    index: int
    outputs: list[Node]
    body: list[Node]
    operands: list[Node] = field(default_factory=list)
    reduce: Node | None = None
    matmul: Node | None = None  # BLAS calls (float operands: 1-d/2-d, or a batch of 2-d; see lower)

    @property
    def kind(self) -> str:
        if self.matmul is not None:
            return "matmul"
        return "reduce" if self.reduce is not None else "elemwise"

    @property
    def name(self) -> str:
        ops = []
        for n in self.body:  # (the first four: a body can be 10,000 nodes long)
            if n.op != "cast":
                ops.append(re.sub(r"[^A-Za-z0-9]", "", n.op))
                if len(ops) == 4:
                    break
        return f"k{self.index}_" + "_".join(ops or ["copy"])

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.body]


@dataclass
class Step:
    """A NumPy step: one node evaluated by its reference implementation."""

    node: Node


@dataclass
class Program:
    """The lowered function: steps in execution order plus what must be stored."""

    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    steps: list[Kernel | Step]
    materialized: list[Node]  # every node that owns a buffer (kernel outputs and NumPy-step results)

    @property
    def kernels(self) -> list[Kernel]:
        return [s for s in self.steps if isinstance(s, Kernel)]


def _is_scalar_constant(n: Node) -> bool:
    return n.op == "constant" and n.value.size == 1


def _same_space(producer: Node, consumer: Node) -> bool:
    """Fusing never changes results (broadcasting commutes with elementwise ops) but
    recomputes a producer that is broadcast; only fuse when no known broadcast occurs."""
    if producer.ndim != consumer.ndim:
        return False
    return all(not (p == 1 and c != 1) for p, c in zip(producer.type.shape, consumer.type.shape))


def _blas_matmul(n: Node) -> bool:
    """A float product the C backend's matmul kernel computes: 1-d/2-d operands, or a 3-d one
    with a 2-d or 3-d other (a batch of 2-d products)."""
    nd = tuple(i.ndim for i in n.inputs)
    return n.dtype in ("float32", "float64") and (max(nd) <= 2 or nd in ((3, 2), (2, 3), (3, 3)))


def lower(outputs: Sequence[Node], inputs: Sequence[Node], fuse: bool = True,
          native_matmul: bool = False) -> Program:
    """Partition the graph reachable from ``outputs`` into kernels and NumPy steps.

    ``native_matmul``: matrix products of 1-d/2-d float operands, and batches of 2-d ones
    (3-d operands), become kernels that call BLAS from the generated code (the backend found a
    BLAS to call).  ``sum(a @ b, axis=0)`` over a batch (the gradient of ``x @ W`` for a 3-d
    ``x``) is one such kernel, the batch added up by the BLAS calls (``batch_sums``)."""
    order = toposort(outputs)
    consumers: dict[Node, list[Node]] = {n: [] for n in order}
    for n in order:
        for i in dict.fromkeys(n.inputs):
            consumers[i].append(n)
    is_output = set(outputs)

    def elemwise(n: Node) -> bool:
        op = OPS[n.op]
        return op.kind == "elemwise" and (op.c is not None or op.c_int is not None or op.c_call is not None)

    # 1. Elementwise groups, built from the outputs backwards.
    group: dict[Node, int] = {}
    next_group = 0
    for n in reversed(order):
        if not elemwise(n):
            continue
        cons = consumers[n]
        target = None
        if fuse and cons:
            gs = {group.get(c) for c in cons}
            if len(gs) == 1 and None not in gs and all(_same_space(n, c) for c in cons):
                target = gs.pop()
        if target is None:
            target = next_group
            next_group += 1
        group[n] = target

    # 2. Reductions absorb a producer group used by nothing else.
    members: dict[int, list[Node]] = {}
    for n in order:
        if n in group:
            members.setdefault(group[n], []).append(n)
    absorbed: dict[Node, int] = {}
    for n in order:
        if n.op in NATIVE_REDUCE and fuse:
            src = n.inputs[0]
            g = group.get(src)
            if g is None or src in is_output:
                continue
            nodes = members[g]
            outs = [m for m in nodes if m in is_output or any(group.get(c) != g for c in consumers[m])]
            if outs == [src] and consumers[src] == [n] and g not in absorbed.values():
                absorbed[n] = g

    # 2b. A float64 batch of products summed over the batch, when nothing else reads the products.
    # (float32: a sum keeps a float64 running value, which adding through sgemm would not.)
    batch_sums: dict[Node, Node] = {}
    if native_matmul:
        for n in order:
            if (n.op == "sum" and n.arg("axis") == (0,) and not n.arg("keepdims") and n.dtype == "float64"
                    and n.inputs[0].op == "matmul" and n.inputs[0].ndim == 3):
                m = n.inputs[0]
                if m.dtype == "float64" and _blas_matmul(m) and consumers[m] == [n] and m not in is_output:
                    batch_sums[m] = n
    summed = {n: m for m, n in batch_sums.items()}

    # 3. Build kernels and steps in topological order of their outputs.
    steps: list[Kernel | Step] = []
    materialized: list[Node] = []
    emitted: set[int] = set()
    absorbed_groups = set(absorbed.values())
    kernels_by_group: dict[int, Kernel] = {}

    def view_of_leaves(n: Node) -> bool:
        """A view chain ending at inputs/constants: the runtime resolves it to strides."""
        while n.op in VIEW_OPS:
            n = n.inputs[0]
        return n.op in ("input", "constant")

    for n in order:
        if n.op in ("input", "constant") or (n.op in VIEW_OPS and view_of_leaves(n)):
            continue
        if n in group:
            g = group[n]
            if g in absorbed_groups or g in emitted:
                continue
            nodes = members[g]
            outs = [m for m in nodes if m in is_output or any(group.get(c) != g for c in consumers[m])]
            k = Kernel(len(steps), outs, nodes)
            kernels_by_group[g] = k
            steps.append(k)
            materialized.extend(outs)
            emitted.add(g)
        elif n in batch_sums:
            continue  # (computed by its sum's kernel)
        elif n in summed:
            steps.append(Kernel(len(steps), [n], [summed[n], n], matmul=summed[n]))
            materialized.append(n)
        elif n.op in NATIVE_REDUCE:
            body = list(members[absorbed[n]]) if n in absorbed else []
            k = Kernel(len(steps), [n], body + [n], reduce=n)
            steps.append(k)
            materialized.append(n)
        elif native_matmul and n.op == "matmul" and _blas_matmul(n):
            steps.append(Kernel(len(steps), [n], [n], matmul=n))
            materialized.append(n)
        else:
            steps.append(Step(n))
            materialized.append(n)

    steps = _merge_siblings(_schedule(steps))
    for i, s in enumerate(steps):
        if isinstance(s, Kernel):
            s.index = i
            inside = set(s.body)
            ops: dict[Node, None] = {}
            for m in s.body:
                for x in m.inputs:
                    if x not in inside and not _is_scalar_constant(x):
                        ops[x] = None
            s.operands = list(s.matmul.inputs) if s.matmul is not None else list(ops)
    return Program(tuple(inputs), tuple(outputs), steps, materialized)


def _edges(steps: list[Kernel | Step]) -> set[tuple[int, int]]:
    """Pairs (j, i) when step i reads what step j produces (seen through view chains)."""
    produced = {}
    for i, s in enumerate(steps):
        for o in (s.outputs if isinstance(s, Kernel) else [s.node]):
            produced[o] = i
    edges: set[tuple[int, int]] = set()
    for i, s in enumerate(steps):
        body = s.body if isinstance(s, Kernel) else [s.node]
        inside = set(body)
        seen: set[Node] = set()
        for m in body:
            stack = [x for x in m.inputs if x not in inside]
            while stack:
                x = stack.pop()
                if x in seen:
                    continue
                seen.add(x)
                j = produced.get(x)
                if j is not None and j != i:
                    edges.add((j, i))
                elif x.op in VIEW_OPS:
                    stack.extend(x.inputs)
    return edges


def _schedule(steps: list[Kernel | Step]) -> list[Kernel | Step]:
    """Order steps so each runs after what it reads (groups are convex, so this is a DAG): Kahn's
    algorithm taking the lowest-numbered ready step first (networkx's lexicographical topological
    sort, which this replaces: importing networkx cost a fresh process 0.4 s of its first compile)."""
    import heapq

    succ: list[list[int]] = [[] for _ in steps]
    indeg = [0] * len(steps)
    for j, i in _edges(steps):
        succ[j].append(i)
        indeg[i] += 1
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        j = heapq.heappop(ready)
        order.append(steps[j])
        for i in succ[j]:
            indeg[i] -= 1
            if indeg[i] == 0:
                heapq.heappush(ready, i)
    if len(order) != len(steps):
        raise RuntimeError("fusion: the step graph has a cycle")
    return order


def _merge_siblings(steps: list[Kernel | Step]) -> list[Kernel | Step]:
    """Merge independent elementwise kernels of one static shape into one loop.

    Each elementwise kernel ``i``, in order, joins the first earlier kernel ``j`` (not itself
    merged away) whose outputs all have the shape of ``i``'s, that no path joins to ``i`` either
    way, with nothing between ``j`` and ``i`` feeding ``i`` (``i`` moves up to ``j``) and, when a
    size is known only at run time, that reads the same arrays.

    ``steps`` are in topological order and stay so after each merge: all ``i`` depends on precedes
    ``j``, all that depends on ``i`` follows ``i``.  So the last step ``i`` depends on is one it
    reads directly (``h``, seen through earlier merges), and the two path conditions together say
    ``j > h``.  Candidates are kept per (shape, arrays read) in index order: finding ``j`` is a
    bisection, and the pass is near-linear in the steps.  (It asked networkx for paths between
    every pair and contracted the graph at each merge: cubic, 61 s of an 800-deep gradient's
    146 s compile.)"""
    from bisect import bisect_right, insort

    preds: list[list[int]] = [[] for _ in steps]
    for j, i in _edges(steps):
        preds[i].append(j)
    merged_into: dict[int, int] = {}
    inside: dict[int, set[Node]] = {}  # a kernel that took others in -> its body, as a set
    buckets: dict[tuple, list[int]] = {}  # (shape, arrays read or None) -> live candidates, ascending

    def key_of(k: Kernel, shape: tuple) -> tuple:
        return (shape, frozenset(_external(k)) if None in shape else None)

    for i, s in enumerate(steps):
        if not isinstance(s, Kernel) or s.kind != "elemwise":
            continue
        shape = s.outputs[0].type.shape
        if any(m.type.shape != shape for m in s.outputs):
            continue  # no kernel's outputs all have the shapes of these
        key = key_of(s, shape)
        bucket = buckets.setdefault(key, [])
        h = max((merged_into.get(p, p) for p in preds[i]), default=-1)
        pos = bisect_right(bucket, h)
        if pos == len(bucket):
            bucket.append(i)  # i is the largest index yet
            continue
        j = bucket[pos]
        t = steps[j]
        t.outputs += s.outputs
        seen = inside.get(j)
        if seen is None:
            seen = inside[j] = set(t.body)
        new = [m for m in s.body if m not in seen]
        t.body += new
        seen.update(new)
        merged_into[i] = j
        if None in shape:  # what t reads changed: move it to its new bucket
            del bucket[pos]
            insort(buckets.setdefault(key_of(t, shape), []), j)
    return [s for i, s in enumerate(steps) if i not in merged_into]


def _external(k: Kernel) -> set[Node]:
    """The non-scalar arrays a kernel reads (its iteration shape is their broadcast)."""
    inside = set(k.body)
    return {x for m in k.body for x in m.inputs if x not in inside and not _is_scalar_constant(x)}
