"""Lowering: group the optimized graph into kernels (the ``fusion`` pass).

* Elementwise ops form maximal convex groups: a node joins its consumers'
  group only when *all* of its consumers are in that one group, so no path
  leaves a group and re-enters it.  A group is one loop with no temporaries.
* A reduction absorbs the elementwise group that produces its operand when
  nothing else uses that group, so ``sum(exp(x - max(x)))`` is two loops
  (max, then the fused exp-sub-sum) that read ``x`` twice and allocate nothing.
* Independent groups over the same static shape merge into one multi-output
  kernel.
* A group longer than ``MAX_BODY`` nodes is cut into several kernels where the
  fewest values cross (gcc's time on one loop body grows faster than its length).
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
from itertools import pairwise

from exprc.graph import Node, rebuild, toposort
from exprc.ops import OPS, REDUCTIONS
from exprc.ops.elemwise import everywhere_guard

VIEW_OPS = frozenset({"dimshuffle", "getitem", "broadcast_to", "reshape"})
#: Reductions a native kernel computes: those whose identity, accumulator and combine are declared.
NATIVE_REDUCE = frozenset(REDUCTIONS)
#: Elementwise ops a group recomputes rather than reads from another group's temporary (see
#: ``lower``, step 1): cheap, and exact in IEEE arithmetic, so each copy gives the same bits.
RECOMPUTED = frozenset({"add", "sub", "mul", "neg", "abs", "eq", "ne", "lt", "le", "gt", "ge", "where",
                        "cast", "isfinite", "isnan", "isinf", "and", "or", "invert", "xor"})
#: The most groups one node is recomputed in (each copy is work; a bound keeps it linear).
MAX_COPIES = 3
#: The most nodes in one elementwise loop: gcc's time on one loop body grows faster than its length
#: (a chain of 1000 two_sum_err + add links: 24 s, 3000: 4 minutes), so a longer group becomes
#: several kernels, each storing the few values the next reads (see _split_group).
MAX_BODY = 1000
#: The most reduction levels in one row kernel (softmax: 2, a layer norm with its gradient: 4).  Each
#: pass recomputes the cheap whole-row values it reads from the row's operands, so a chain of row
#: reductions in one kernel renders in time quadratic in its length (280 layers of
#: tanh(e - mean(e)): a 9.7 MB source, 204 s of gcc).
MAX_ROW_PASSES = 4


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
    #: A row kernel (see ``_row_kernels``): reductions over the last axis of a matrix and the
    #: elementwise nodes around them, one pass over each row per reduction level.
    rows: bool = False
    #: A reduction kernel's elementwise nodes over its result (``b - lr * sum(g, axis=0)``), computed
    #: where each result element is stored (see ``_reduce_epilogues``).
    epilogue: list[Node] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.matmul is not None:
            return "matmul"
        if self.rows:
            return "rows"
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


def stable_branches(outputs: Sequence[Node]) -> list[Node]:
    """``outputs`` with each guard whose slow branch is right everywhere (``rare(c, everywhere=True)``:
    the row-wise softmax, see :func:`exprc.rewrite.forms.guard`) replaced by that branch, for a
    lowering without row kernels: only a row kernel runs a row's fast branch alone (render.py,
    ``render_rows``), and elsewhere the guard would compute both (an exp, a sum and a division more
    for every element)."""
    memo: dict[Node, Node] = {}
    for n in toposort(outputs):
        if everywhere_guard(n):
            memo[n] = memo[n.inputs[1]]
        else:
            memo[n] = rebuild(n, [memo[i] for i in n.inputs])
    return [memo[o] for o in outputs]


def lower(outputs: Sequence[Node], inputs: Sequence[Node], fuse: bool = True,
          native_matmul: bool = False, rows: bool | str = False, epilogues: bool = False,
          host_scalars: bool = False) -> Program:
    """Partition the graph reachable from ``outputs`` into kernels and NumPy steps.

    ``native_matmul``: matrix products of 1-d/2-d float operands, and batches of 2-d ones
    (3-d operands), become kernels that call BLAS from the generated code (the backend found a
    BLAS to call).  ``sum(a @ b, axis=0)`` over a batch (the gradient of ``x @ W`` for a 3-d
    ``x``) is one such kernel, the batch added up by the BLAS calls (``batch_sums``).

    ``rows``: the renderer has row kernels, so reductions over a matrix's last axis merge with the
    elementwise kernels around them (:func:`_row_kernels`); ``"math"``: only into row kernels that
    call vector math (:data:`EXPENSIVE`: softmax, logsumexp, a cross-entropy; not a variance).
    ``epilogues``: a reduction kernel computes the elementwise kernel over its result where it
    stores it (:func:`_reduce_epilogues`).

    ``host_scalars``: the planner computes NumPy steps that depend on shapes alone once per input
    signature, so a 0-d elementwise kernel over such values (a mean's ``1 / n``) becomes NumPy steps
    it computes there, not a kernel run on every call."""
    order = toposort(outputs)
    # (no reduction a row kernel could take: the graph lowers as without them, cheap copies included)
    if rows and not (any(_row_reduction(n) for n in order) and (rows != "math" or any(n.op in EXPENSIVE for n in order))):
        rows = False
    consumers: dict[Node, list[Node]] = {n: [] for n in order}
    for n in order:
        for i in dict.fromkeys(n.inputs):
            consumers[i].append(n)
    is_output = set(outputs)

    def elemwise(n: Node) -> bool:
        op = OPS[n.op]
        return op.kind == "elemwise" and (op.c is not None or op.c_int is not None or op.c_call is not None)

    # 1. Elementwise groups, built from the outputs backwards.  A cheap exact node (``x - max(x)``,
    # ``y == 0``) whose consumers lie in a few different groups joins all of them: each recomputes
    # it from what it reads, where a group of its own would write a temporary the size of the
    # input that the others read back (logsumexp's shifted row and its mask: 6 kernels -> 4).
    # Only ops that IEEE rounds exactly, so every copy has the same bits.
    group: dict[Node, int] = {}
    gsets: dict[Node, frozenset[int]] = {}
    copied: set[Node] = set()
    next_group = 0
    for n in reversed(order):
        if not elemwise(n):
            continue
        cons = consumers[n]
        target = None
        if fuse and cons and all(c in gsets for c in cons) and all(_same_space(n, c) for c in cons):
            gs = frozenset().union(*(gsets[c] for c in cons))
            if len(gs) == 1:
                target = gs
            elif ((not rows or n.ndim != 2) and n.op in RECOMPUTED and n not in is_output  # (a row kernel
                  and len(gs) <= MAX_COPIES and n.ndim > 0):  # shares its 2-d nodes between passes itself)
                target = gs
                copied.add(n)
        if target is None:
            target = frozenset((next_group,))
            next_group += 1
        gsets[n] = target
        if n not in copied:
            (group[n],) = target

    # 2. Reductions absorb a producer group used by nothing else.
    members: dict[int, list[Node]] = {}
    for n in order:
        for g in sorted(gsets.get(n, ())):
            members.setdefault(g, []).append(n)

    def group_outputs(g: int) -> list[Node]:
        """What group ``g`` must store: its nodes read outside it (a copied node never is)."""
        return [m for m in members[g] if m not in copied
                and (m in is_output or any(g not in gsets.get(c, ()) for c in consumers[m]))]

    absorbed: dict[Node, int] = {}
    for n in order:
        if n.op in NATIVE_REDUCE and fuse:
            src = n.inputs[0]
            g = group.get(src)
            if g is None or src in is_output:
                continue
            outs = group_outputs(g)
            if outs == [src] and consumers[src] == [n] and g not in absorbed.values() and len(members[g]) <= MAX_BODY:
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
    stored_copies: set[Node] = set()  # recomputed nodes a cut group stores for its later slices

    def view_of_leaves(n: Node) -> bool:
        """A view chain ending at inputs/constants: the runtime resolves it to strides."""
        while n.op in VIEW_OPS:
            n = n.inputs[0]
        return n.op in ("input", "constant")

    for n in order:
        if n.op in ("input", "constant") or (n.op in VIEW_OPS and view_of_leaves(n)):
            continue
        if n in copied:
            continue  # (computed inside each group that reads it)
        if n in group:
            g = group[n]
            if g in absorbed_groups or g in emitted:
                continue
            nodes = members[g]
            if len(nodes) <= MAX_BODY:
                parts = [(nodes, group_outputs(g))]
            else:
                parts = _split_group(nodes, consumers, is_output, copied, stored_copies)
            for body, outs in parts:
                steps.append(Kernel(len(steps), outs, body))
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

    if host_scalars:
        steps = _shape_scalars(steps, order, is_output, materialized)
    if rows and fuse:
        steps = _row_kernels(steps, order, is_output, math_only=rows == "math")
    if epilogues and fuse:
        steps = _reduce_epilogues(steps, is_output)
    if (rows or epilogues) and fuse:  # (what a merged kernel keeps in registers has no buffer)
        stored = {o for s in steps for o in (s.outputs if isinstance(s, Kernel) else [s.node])}
        materialized = [n for n in materialized if n in stored]
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


def _split_group(nodes: list[Node], consumers: dict[Node, list[Node]], is_output: set[Node],
                 copied: set[Node], stored: set[Node]) -> list[tuple[list[Node], list[Node]]]:
    """A group of more than MAX_BODY nodes as consecutive slices of its evaluation order, each a
    kernel that stores what later slices (or anything outside) read: (body, outputs) per slice.
    Every slice reads only earlier ones, so the kernels run in order.  Each cut is where the fewest
    values cross it, among the last half of the slice's allowed length: between the links of a
    chain, not inside a guard's slow branch (which would then be stored, not skipped).  A node
    other groups recompute (``copied``) is stored only for this group's later slices, and by one
    kernel at most (``stored``, shared by every cut group): the others compute their own copy."""
    index = {m: i for i, m in enumerate(nodes)}
    live = [0] * (len(nodes) + 1)  # live[i]: values made at or before i and read after i, inside
    for i, m in enumerate(nodes):
        last = max((index[c] for c in consumers[m] if c in index), default=i)
        if last > i:
            live[i] += 1
            live[last] -= 1
    for i in range(1, len(live)):
        live[i] += live[i - 1]
    parts, lo = [], 0
    while lo < len(nodes):
        if len(nodes) - lo <= MAX_BODY:
            hi = len(nodes)
        else:  # (the latest position with the fewest crossing values)
            hi = 1 + min(range(lo + MAX_BODY // 2, lo + MAX_BODY), key=lambda i: (live[i], -i))
        body = nodes[lo:hi]
        inside = set(body)
        outs = []
        for m in body:
            if m in copied:
                if m not in stored and any(c in index and c not in inside for c in consumers[m]):
                    stored.add(m)
                    outs.append(m)
            elif m in is_output or any(c not in inside for c in consumers[m]):
                outs.append(m)
        parts.append((body, outs))
        lo = hi
    return parts


def _shape_scalars(steps: list[Kernel | Step], order: list[Node], is_output: set[Node],
                   materialized: list[Node]) -> list[Kernel | Step]:
    """0-d elementwise kernels whose values depend on input shapes alone, as one NumPy step per node
    (which the planner computes once per signature); ``materialized`` gains their nodes."""
    shape_only: dict[Node, bool] = {}
    for n in order:
        if n.op in ("shape", "constant"):
            shape_only[n] = True
        elif n.op == "input" or not n.inputs or OPS[n.op].impure:
            shape_only[n] = False
        else:
            shape_only[n] = all(shape_only[i] for i in n.inputs)
    out: list[Kernel | Step] = []
    for s in steps:
        if (isinstance(s, Kernel) and s.kind == "elemwise" and all(n.ndim == 0 for n in s.body)
                and all(shape_only[n] for n in s.body) and not any(n in is_output for n in s.body)):
            for n in s.body:
                out.append(Step(n))
                if n not in s.outputs:
                    materialized.append(n)
        else:
            out.append(s)
    return out


#: Ops an epilogue computes: arithmetic, no vector math (where each result is stored, the loop is
#: scalar, and glibc's scalar exp/cosh/... differ from the vector ones an elementwise kernel uses).
EPILOGUE_OPS = frozenset({"add", "sub", "mul", "truediv", "neg", "cast", "where", "maximum", "minimum", "abs",
                          "sqrt", "square", "reciprocal", "eq", "ne", "lt", "le", "gt", "ge", "fill", "sign",
                          "and", "or", "xor", "invert", "isnan", "isinf", "isfinite"})


def _reduce_epilogues(steps: list[Kernel | Step], is_output: set[Node]) -> list[Kernel | Step]:
    """A reduction kernel takes in the elementwise kernel that reads its result when that kernel is
    over the result's shape (its other arrays too, or 0-d) and nothing else reads the result: the
    kernel computes it where each result is stored (a bias update ``b - lr * sum(g, axis=0)``, a
    loss's ``-mean(...)``), one kernel and no temporary instead of two.  Not made when a path from
    the reduction reaches the elementwise kernel through another step (the step graph stays
    acyclic)."""
    succ: list[set[int]] = [set() for _ in steps]
    for j, i in _edges(steps):
        succ[j].add(i)
    producer = {o: i for i, s in enumerate(steps) if isinstance(s, Kernel) for o in s.outputs}
    stepped = {s.node: i for i, s in enumerate(steps)
               if isinstance(s, Step) and s.node.op == "sum_to" and _maybe_identity(s.node)}
    readers: dict[Node, set[int]] = {}
    for i, s in enumerate(steps):
        for n in (s.body if isinstance(s, Kernel) else [s.node]):
            for x in n.inputs:
                readers.setdefault(x, set()).add(i)
    merged: dict[int, int] = {}  # elementwise kernel -> the reduction kernel that took it in
    for i, e in enumerate(steps):
        if not isinstance(e, Kernel) or e.kind != "elemwise" or any(OPS[n.op].c_call is not None for n in e.body):
            continue
        inside = set(e.body)
        ext = {x for n in e.body for x in n.inputs if x not in inside and not _is_scalar_constant(x)}
        # (through a gradient's sum_to(r, model), the identity unless the call's shapes broadcast)
        via = {x.inputs[0]: x for x in ext if x in stepped and readers[x] <= {i}}
        found = [producer[x] for x in [*ext, *via] if x in producer and steps[producer[x]].kind == "reduce"]
        if len(found) != 1 or found[0] in merged.values():
            continue
        j = found[0]
        red = steps[j]
        r = red.reduce
        head = [via[r]] if r in via else []
        if red.epilogue or readers[r] - {j, i, *(stepped[x] for x in head)} or red.outputs != [r]:
            continue
        if head:
            ext = (ext - {head[0]}) | {r}
        elif r not in ext:
            continue
        early = {x for n in red.body for x in n.inputs}  # (an array read by both would need two layouts)
        if (inside & set(red.body) or any(x.ndim and x in early for x in ext - {r})
                or any(n.op not in EPILOGUE_OPS for n in e.body)
                or any(n.type.shape != r.type.shape for n in [*head, *e.body])) or any(
                x.ndim and (x.ndim != r.ndim or any(a is not None and b is not None and a != b
                                                    for a, b in zip(x.type.shape, r.type.shape)))
                for x in ext):
            continue
        down, seen = [m for m in succ[j] if m != i and all(m != stepped[x] for x in head)], set()
        while down:  # another path from the reduction to e: merging would make a cycle
            m = down.pop()
            if m not in seen:
                seen.add(m)
                down.extend(succ[m])
        if i in seen:
            continue
        red.outputs = ([r] if r in is_output else []) + list(e.outputs)
        red.body = red.body + head + list(e.body)
        red.epilogue = head + list(e.body)
        merged[i] = j
        for x in head:
            merged[stepped[x]] = j
    return [s for i, s in enumerate(steps) if i not in merged]


#: Reductions a row kernel computes (an accumulator per row; argmax/argmin are NumPy steps).
ROW_REDUCTIONS = frozenset({"sum", "mean", "max", "min", "prod"})
#: Ops that call vector math (libm's, libmvec's): what makes a loop's work more than its memory
#: traffic.  By default (``Config.row_fusion`` None) a row kernel is formed only around them.
EXPENSIVE = frozenset({"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan", "arcsin",
                       "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "arcsinh", "arccosh", "arctanh",
                       "sigmoid", "softplus", "erf", "erfc", "pow", "hypot", "logaddexp", "cbrt", "log1mexp",
                       "erfcx"})


def _row_kernels(steps: list[Kernel | Step], order: list[Node], is_output: set[Node],
                 math_only: bool = False) -> list[Kernel | Step]:
    """Row-wise fusion: merge each reduction over the last axis of a matrix with the elementwise
    kernels it reads and that read it into one *row kernel*, which runs every row to the end before
    the next (Inductor's persistent reductions): ``softmax``, ``log_softmax``, ``logsumexp``,
    standardization and their gradients become one loop nest per row whose passes re-read a row
    that is still in cache, instead of a kernel and a full-size temporary per step.

    The members: reduction kernels over axis 1 of a 2-d source (sum, mean, max, min, prod), and
    elementwise kernels whose outputs are all 2-d, without random draws.  Two members merge when
    one reads the other's output directly (a reduction merged with what reads it must keep its
    axis, so that it broadcasts along the row), or when both read the same matrix.  A merge that
    would make a path leave the group and come back (through a matmul, a NumPy step, another
    kernel) is not made, so the step graph stays acyclic.  The static shapes must agree; the planner checks the shapes of each call and
    falls back to the reference for a broadcast the kernel cannot run."""
    position = {n: i for i, n in enumerate(order)}
    # A gradient's sum_to(g, model) between two matrices is the identity when no axis was broadcast,
    # which only the call's shapes tell: it may join a row kernel as an alias, the planner checking
    # the shapes (a call where it really sums goes to the reference).
    original, steps = steps, list(steps)
    as_steps: dict[int, Step] = {}
    for i, s in enumerate(steps):
        if isinstance(s, Step) and s.node.op == "sum_to" and _row_identity(s.node):
            as_steps[i] = s
            steps[i] = Kernel(i, [s.node], [s.node])

    def member(s: Kernel | Step) -> bool:
        if not isinstance(s, Kernel) or s.matmul is not None or s.rows:
            return False
        if any(OPS[n.op].c_call is not None for n in s.body):
            return False
        if s.reduce is not None:
            return _row_reduction(s.reduce)
        return all(o.ndim == 2 for o in s.outputs) and all(n.ndim == 2 for n in s.body)

    live = [i for i, s in enumerate(steps) if member(s)]
    if not any(steps[i].reduce is not None for i in live):
        return original
    producer = {}
    for i, s in enumerate(steps):
        for o in (s.outputs if isinstance(s, Kernel) else [s.node]):
            producer[o] = i
    succ: list[set[int]] = [set() for _ in steps]
    for j, i in _edges(steps):
        succ[j].add(i)
    pred: list[set[int]] = [set() for _ in steps]
    for j, outs in enumerate(succ):
        for i in outs:
            pred[i].add(j)
    # Candidate merges: a member reading another's output directly.
    pairs = []
    for i in live:
        inside = set(steps[i].body)
        for n in steps[i].body:
            for x in n.inputs:
                j = producer.get(x)
                if j is None or j == i or x in inside or not member(steps[j]):
                    continue
                r = steps[j].reduce
                if r is not None and x is r and not r.arg("keepdims"):
                    continue  # (a 1-d row result does not broadcast along the row)
                pairs.append((j, i))
    # Siblings: members reading the same array (the max, min and sum of one row read it in one pass).
    readers: dict[Node, list[int]] = {}
    for i in live:
        inside = set(steps[i].body)
        for x in dict.fromkeys(x for n in steps[i].body for x in n.inputs):
            if x not in inside and x.ndim == 2 and x.type.shape[1] != 1:
                readers.setdefault(x, []).append(i)
    for same in readers.values():
        pairs += list(pairwise(same))
    group = {i: {i} for i in live}

    def reach(start: set[int], nbrs: list[set[int]]) -> set[int]:
        seen: set[int] = set()
        stack = [m for s in start for m in nbrs[s] if m not in start]
        while stack:
            m = stack.pop()
            if m in seen or m in start:
                continue
            seen.add(m)
            stack.extend(nbrs[m])
        return seen

    def shapes_agree(members: set[int]) -> bool:
        rows_, cols = set(), set()
        for m in members:
            for n in steps[m].body:
                shape = n.inputs[0].type.shape if n is steps[m].reduce else n.type.shape
                if shape[0] is not None:
                    rows_.add(shape[0])
                if shape[1] is not None and shape[1] != 1:
                    cols.add(shape[1])
        return len(rows_) <= 1 and len(cols) <= 1

    def row_depth(members: set[int]) -> int:
        """The reduction levels a row kernel of these members would have."""
        body = sorted({n for m in members for n in steps[m].body}, key=position.__getitem__)
        return max((v for n, v in _levels(body).items() if OPS[n.op].kind == "reduce"), default=0)

    def columns_read_rows(members: set[int]) -> bool:
        """A matrix node reads a 1-d value computed in the group (a row sum without keepdims, or
        something of it): broadcasting pairs that vector with the columns, and a row kernel would
        pair it with the rows (exp(M) / sum(exp(M), axis=1) divides column j by row j's sum)."""
        inside = {n for m in members for n in steps[m].body}
        return any(n.ndim == 2 and x.ndim == 1 and x in inside
                   for m in members for n in steps[m].body for x in row_reads(n))

    for j, i in sorted(set(pairs)):
        a, b = group[j], group[i]
        if a is b:
            continue
        merged = a | b
        if reach(merged, succ) & reach(merged, pred) or not shapes_agree(merged) or columns_read_rows(merged):
            continue  # a path would leave the group and come back; shapes; see columns_read_rows
        if sum(len(steps[m].body) for m in merged) > MAX_BODY or row_depth(merged) > MAX_ROW_PASSES:
            continue  # (a long group was cut for gcc's sake: see MAX_BODY, MAX_ROW_PASSES)
        for m in merged:
            group[m] = merged
    out: list[Kernel | Step] = []
    done: set[int] = set()
    for i, s in enumerate(steps):
        g = group.get(i)
        if (g is None or len(g) == 1 or not any(steps[m].reduce is not None for m in g)
                or math_only and not any(n.op in EXPENSIVE for m in g for n in steps[m].body)):
            out.append(as_steps.get(i, s))
            continue
        if i in done:
            continue
        done |= g
        body = sorted({n for m in g for n in steps[m].body}, key=position.__getitem__)
        readers = {x for t, st in enumerate(steps) if t not in g
                   for n in (st.body if isinstance(st, Kernel) else [st.node]) for x in n.inputs}
        outs = [n for n in body if n in is_output or n in readers]
        out.append(Kernel(s.index, outs, body, rows=True))
    return out


def epilogue_arrays(k: Kernel) -> set[Node]:
    """The nodes of reduction kernel ``k`` addressed per result element: its epilogue's nodes and
    the operands only the epilogue reads."""
    if not k.epilogue:
        return set()
    after = set(k.epilogue)
    early = {x for n in k.body if n not in after for x in n.inputs}
    return after | {x for x in k.operands if x not in early}


def _row_identity(n: Node) -> bool:
    """``sum_to(g, model)`` of two matrices whose static shapes do not show a broadcast axis."""
    return n.inputs[0].ndim == 2 and _maybe_identity(n)


def _maybe_identity(n: Node) -> bool:
    """``sum_to(g, model)`` of arrays of one ndim whose static shapes do not show a broadcast axis."""
    g, model = n.inputs
    return g.ndim == model.ndim and all(
        a == b or (a is None and b != 1) or (b is None and a != 1) for a, b in zip(g.type.shape, model.type.shape))


def single_element(n: Node) -> bool:
    """Whether ``n`` is an array of one element by its static shape ((1,), (1, 1): a keepdims
    reduction of everything).  A kernel's contiguous loops read it as a scalar, so broadcasting it
    keeps them (the stable logsumexp of a vector shifts by such a max)."""
    return n.ndim > 0 and all(d == 1 for d in n.type.shape)


def row_reads(n: Node) -> tuple[Node, ...]:
    """The inputs whose values a row kernel's node ``n`` reads (a ``sum_to`` alias: not its model)."""
    return n.inputs[:1] if n.op == "sum_to" else n.inputs


def row_levels(k: Kernel) -> tuple[dict[Node, bool], dict[Node, int]]:
    """(row, level) of a row kernel's operands and body nodes.  ``row[n]``: ``n`` holds one value
    per row (a reduction; elementwise over row values and scalars only; an operand of shape (n, 1)
    or 0-d); else it has the row's length.  ``level[n]``: a whole-row node's pass (the first in
    which everything it reads is ready), a row node's readiness (a reduction: one more than its
    operand's pass)."""
    inside = set(k.body)
    ops = set(k.operands)
    row: dict[Node, bool] = {x: x.ndim == 0 or (x.ndim == 2 and x.type.shape[1] == 1) for x in k.operands}
    for n in k.body:
        row[n] = _is_reduction(n) or all(row[x] for x in row_reads(n) if x in inside or x in ops)
    return row, _levels(k.body)


def _is_reduction(n: Node) -> bool:
    return n.op in ROW_REDUCTIONS and OPS[n.op].kind == "reduce"


def _row_reduction(r: Node) -> bool:
    """Whether reduction ``r`` is one a row kernel computes: over axis 1 of a matrix, not of a (n, 1)
    value (the passes would fold its one value as a whole row)."""
    return (_is_reduction(r) and r.inputs[0].ndim == 2 and r.arg("axis") == (1,)
            and r.inputs[0].type.shape[1] != 1)


def _levels(body: list[Node]) -> dict[Node, int]:
    """Each node's level in a row kernel of ``body`` (in order): a reduction one more than its
    operand's, anything else the highest of what it reads (see row_levels)."""
    level: dict[Node, int] = {}
    for n in body:
        level[n] = (level.get(n.inputs[0], 0) + 1 if _is_reduction(n)
                    else max((level.get(x, 0) for x in row_reads(n)), default=0))
    return level


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
        if len(t.body) + len(s.body) > MAX_BODY:  # (no loop past MAX_BODY: gcc's time, see there)
            bucket.append(i)
            continue
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
