"""Staged execution of graphs whose shapes depend on values (``Op.value_shape``).

A native program is planned per input signature: every shape follows from the argument shapes.
``x[i*bs:(i+1)*bs]`` breaks that (its length depends on ``i``), as do boolean masks and sizes
given by expressions.  Such a graph runs in stages, each an ordinary kernel of the chosen
backend:

1. a kernel computes the operands of the first value-shaped nodes (``i*bs``, the array sliced);
2. those nodes run on the host as NumPy steps (a slice is a view: no copy);
3. the rest of the graph is a kernel whose inputs include their results; repeat while value-shaped
   nodes remain.

Each stage is planned per signature as usual (a last, shorter minibatch is one more signature).
A stage boundary costs one more kernel call (a few microseconds) and, on CUDA, a round trip of the
boundary values through the host.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from exprc.backends import Kernel
from exprc.graph import Node, input_node, substitute, toposort
from exprc.ops import OPS
from exprc.profile import Profile

#: Intermediate stages of at most this many ops run on NumPy (see StagedKernel).
SMALL_STAGE = 2


def value_shaped(node: Node) -> bool:
    return node.op in OPS and OPS[node.op].value_shaped(node)


def needs_stages(outputs: Sequence[Node], control_only: bool = False) -> bool:
    """Whether a graph has a node whose shape depends on operand values (``control_only``: a
    control node, a loop or a condition, which every backend runs in stages)."""
    if control_only:
        return any(n.op in OPS and OPS[n.op].kind == "control" for n in toposort(list(outputs)))
    return any(value_shaped(n) for n in toposort(list(outputs)))


def _reached(outputs: list[Node], known: dict[Node, None]) -> set[Node]:
    """The nodes ``outputs`` reach without passing through a node of ``known`` (which they may
    reach: those are the stage's inputs; what lies behind them, such as the loop node behind a
    loop's result, is not)."""
    seen: set[Node] = set()
    todo = list(outputs)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n not in known:
            todo.extend(n.inputs)
    return seen


#: Ops whose result a stage keeps for the later stages that read it rather than have them compute
#: it again: a matmul, a reduction, a gather or scatter cost far more than reading their result,
#: and an impure op (``print``) must run once.  (Elementwise nodes fuse into their readers: those
#: are recomputed, as views are.)
_KEEP_KINDS = ("linalg", "reduce")
_KEEP_OPS = ("subtensor", "scatter", "concatenate", "inc_subtensor", "sum_to")


def _shared_with_later(reach: set[Node], interior: set[Node]) -> list[Node]:
    """The costly nodes an earlier stage computes (``interior``) that a later one reaches."""
    out = []
    for n in reach & interior:
        row = OPS.get(n.op)
        if row is not None and (row.kind in _KEEP_KINDS or n.op in _KEEP_OPS or row.impure):
            out.append(n)
    return out


class _Stage:
    def __init__(self, kernel: Kernel | None, inputs: list[Node], outputs: list[Node], cuts: list[Node]):
        self.kernel, self.inputs, self.outputs, self.cuts = kernel, inputs, outputs, cuts


class StagedKernel(Kernel):
    """The kernel protocol over a sequence of stage kernels and host steps (module docstring)."""

    def __init__(self, fg: Any, make: Callable[[Any], Kernel], body: Callable[[tuple, tuple], Kernel],
                 backend: str, cfg: Any):
        self.cfg = cfg
        self.inputs = list(fg.inputs)
        self.outputs = list(fg.outputs)
        known: dict[Node, None] = dict.fromkeys(self.inputs)
        self.stages: list[_Stage] = []
        #: Control nodes (loops, conditions) run by the backend's runner (exprc.backends.loops);
        #: ``body(inputs, outputs)`` compiles one of their bodies.
        self.runners: dict[Node, Callable[..., Any]] = {}
        from exprc.backends.builds import overlapped

        with overlapped():  # the stages' and bodies' libraries compile at the same time
            self._make_stages(make, body, backend, known)
        self.kernels = [d for s in self.stages if s.kernel is not None for d in s.kernel.kernels]
        #: Profile mode: the time of each cut (a loop or condition as a whole, a host step).
        self._cuts_profile = Profile() if getattr(cfg, "profile", False) else None

    def own_profile(self) -> Profile | None:
        """The profile this kernel records into itself (the cuts; a caller adds compile stages)."""
        return self._cuts_profile

    @property
    def profile(self) -> Profile | None:  # type: ignore[override]
        """Profile mode: the stages' kernels and the cuts between them, as one profile."""
        if self._cuts_profile is None:
            return None
        total = Profile()
        for s in self.stages:
            if s.kernel is not None and getattr(s.kernel, "profile", None) is not None:
                total.merge(s.kernel.profile)
        total.merge(self._cuts_profile)
        return total

    @functools.cached_property
    def source(self) -> str:  # type: ignore[override]
        """Every stage's generated code, rendered when first asked (a warm start needs none of it:
        the C stages' commented sources cost a fifth of a warm LSTM's function() and first call)."""
        return "\n\n".join(f"/* stage {k} */\n{s.kernel.source}" for k, s in enumerate(self.stages)
                           if s.kernel is not None)

    @property
    def cache_entry(self) -> Any:  # (read when asked: a nested stage kernel's build may still run)
        last = next((s.kernel for s in reversed(self.stages) if s.kernel is not None), None)
        return last.cache_entry if last is not None else None

    def _make_stages(self, make: Callable[[Any], Kernel], body: Callable[[tuple, tuple], Kernel],
                     backend: str, known: dict[Node, None]) -> None:
        from exprc.backends.reference import NumpyKernel
        from exprc.pipeline import FunctionGraph

        # First the stages' extents (what each computes, from which inputs), then their kernels:
        # a later stage that would recompute a costly node of an earlier one (a matmul the loop's
        # gradient needs again) makes it an output of that stage instead (_shared_with_later).
        plans: list[tuple[list[Node], list[Node], set[Node]]] = []  # (compute, cuts, interior)
        while True:
            order = toposort(self.outputs)
            tainted: set[Node] = set()  # depends on a value-shaped node not yet computed
            cuts: list[Node] = []
            for n in order:
                if n in known or n.op == "constant":
                    continue
                if any(i in tainted for i in n.inputs):
                    tainted.add(n)
                elif value_shaped(n):
                    cuts.append(n)
                    tainted.add(n)
            wanted = cuts if cuts else self.outputs
            targets = list(dict.fromkeys(i for c in cuts for i in c.inputs)) if cuts else list(self.outputs)
            compute = [t for t in targets if t not in known and t.op != "constant"]
            if compute:
                reach = _reached(compute, known)
                position = {n: i for i, n in enumerate(order)} if plans else {}
                for earlier, _, interior in plans:
                    again = sorted(_shared_with_later(reach, interior), key=position.__getitem__)
                    earlier.extend(again)
                    known.update(dict.fromkeys(again))
                    if again:  # (what lies behind them is no longer this stage's work)
                        reach = _reached(compute, known)
                plans.append((compute, cuts, {n for n in reach if n not in known and n.op != "constant"}))
            else:
                plans.append((compute, cuts, set()))
            known.update(dict.fromkeys(compute))
            if not cuts:
                break
            known.update(dict.fromkeys(wanted))
        known = dict.fromkeys(self.inputs)
        for k, (compute, cuts, _) in enumerate(plans):
            kernel, ins = None, []
            if compute:
                reach = _reached(compute, known)
                ins = [n for n in known if n in reach]
                fresh = {n: input_node(f"stage{k}_in{j}", n.dtype, n.type.shape)
                         for j, n in enumerate(ins) if n not in self.inputs}
                outs = substitute(compute, fresh) if fresh else compute
                graph_ins = [fresh.get(n, n) for n in ins]
                stage_fg = FunctionGraph(tuple(graph_ins), tuple(outs))
                # Index arithmetic (i*bs, (i+1)*bs) is a few scalars, and a stage of one or two ops
                # between value-shaped nodes fuses nothing: NumPy runs them at its own speed where
                # a compiled stage would cost a compile (a chain of 150 dynamic slices: 150).
                ops = sum(1 for m in toposort(outs) if m.op not in ("input", "constant"))
                small = all(o.ndim == 0 for o in outs) or ops <= SMALL_STAGE
                kernel = NumpyKernel(stage_fg) if cuts and small else make(stage_fg)
            for c in cuts:
                if OPS[c.op].kind == "control":
                    from exprc.backends.loops import make_runner

                    self.runners[c] = make_runner(c, body, backend, self.cfg)
            self.stages.append(_Stage(kernel, ins, compute, cuts))
            known.update(dict.fromkeys(compute))
            known.update(dict.fromkeys(cuts))

    def __call__(self, *arrays: Any, out: list | None = None, to_numpy: bool | None = None) -> list:
        env: dict[Node, Any] = dict(zip(self.inputs, arrays))
        for k, s in enumerate(self.stages):
            final = k == len(self.stages) - 1
            if s.kernel is not None:
                args = [env[n] for n in s.inputs]
                res = s.kernel(*args, to_numpy=True) if not final else None
                if final:
                    want = [None if out is None else out[self.outputs.index(o)] for o in s.outputs]
                    res = s.kernel(*args, out=want if out is not None else None, to_numpy=to_numpy)
                env.update(zip(s.outputs, res))
            for c in s.cuts:
                vals = [c.inputs[j].value if c.inputs[j].op == "constant" else env[c.inputs[j]]
                        for j in range(len(c.inputs))]
                runner = self.runners.get(c)
                t = time.perf_counter() if self._cuts_profile is not None else 0.0
                if runner is not None:
                    env[c] = runner(*vals)
                else:
                    with np.errstate(all="ignore"):
                        env[c] = np.asarray(OPS[c.op].impl(*vals, **dict(c.attrs)))
                if self._cuts_profile is not None:
                    label = getattr(c.arg("loop"), "name", None) if c.op == "scan" else None
                    self._cuts_profile.record(f"{c.op} {label}" if label else c.op,
                                              "loop" if c.op in ("scan", "ifelse") else "step", time.perf_counter() - t)
        results = []
        for j, o in enumerate(self.outputs):
            val = o.value if o.op == "constant" else env[o]
            if out is not None and out[j] is not None and val is not out[j]:
                from exprc.backends.outputs import check_out

                check_out(j, out[j], np.shape(val), o.dtype)
                np.copyto(out[j], val, casting="unsafe")
                val = out[j]
            elif o in env and (o in self.inputs or any(o in s.cuts for s in self.stages)):
                val = np.array(val, copy=True)  # never hand back an argument or a view of one
            results.append(val)
        return results


__all__ = ["StagedKernel", "needs_stages", "value_shaped"]
