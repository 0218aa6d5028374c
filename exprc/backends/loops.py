"""Running control nodes (:mod:`exprc.ops.control`) over a backend's compiled bodies.

:class:`LoopRunner` runs a ``scan``: it checks ``n_steps`` and the sequences, preallocates one
buffer per result (the stacked rows of every step, or a ring of ``depth + 1`` rows when only the
last value is kept) with the initial values in its first rows, and calls the body's kernel once
per step on views of those buffers: step ``t`` reads its sequence rows and the rows its taps
name and writes row ``t + depth`` in place, so a step allocates nothing and the state needs no
copy between steps.  A backend may hand over a *native* stepper (the C backend runs every step of
a simple body in one C call: :mod:`exprc.backends.c.looplib`); this module's Python loop is the
path for everything else, and the reference.

:func:`make_runner` gives the runner of any control node for the backend whose ``compile``
builds body kernels; :class:`~exprc.backends.staged.StagedKernel` calls it for every control node
it meets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from exprc.errors import ControlFlowError, ExprcError, ShapeError
from exprc.graph import Node
from exprc.ops.control import Branches, Loop, check_condition, run_branch, steps_of
from exprc.types import shape_str

#: Rows a loop that ``until`` ends allocates first (then doubling).
GROW_FROM = 1024
#: ``native(runner) -> stepper | None``: backends register how to run a loop's steps natively.
NATIVE: dict[str, Callable[..., Any]] = {}
#: ``whole(loop, config) -> callable(runner, state) -> steps done | None``, or None: backends
#: register how to run a whole loop in one call (the C backend: elementwise bodies, loop inside).
WHOLE: dict[str, Callable[..., Any]] = {}


class LoopRunner:
    """Runs one loop over its body's compiled kernel (see the module docstring)."""

    def __init__(self, loop: Loop, kernel: Any):
        self.loop = loop
        self.kernel = kernel
        self.writes_out = bool(getattr(kernel, "writes_out", False))
        #: The backend's stepper: (runner, state, start, end) -> steps done in all, or None.
        self.native: Any = None
        #: The backend's whole-loop run: (runner, state) -> steps done, or None (it declined).
        self.whole: Any = None
        self.dtypes = [np.dtype(o.dtype) for o in loop.outputs]
        #: The shapes of a step's results per shapes of its operands, from an earlier call: a call
        #: with operands of known shapes sizes its buffers from them and runs every step natively
        #: (step 0 through Python costs a native step's time again, and more).
        self._result_shapes: dict[tuple, list[tuple]] = {}

    def label(self, k: int) -> str:
        loop = self.loop
        return loop.labels[k] if k < len(loop.labels) else f"output {k}"

    # -- one call -------------------------------------------------------------------------
    def __call__(self, n_arg: Any, *rest: Any) -> tuple:
        loop = self.loop
        ns, nr = loop.n_seqs, len(loop.recurrent)
        seqs = [np.asarray(s) for s in rest[:ns]]
        if loop.go_backwards:
            seqs = [s[::-1] for s in seqs]
        inits = [np.asarray(x) for x in rest[ns:ns + nr]]
        invariants = [np.asarray(x) for x in rest[ns + nr:]]
        n = steps_of(loop, n_arg, seqs)
        state = _State(self, n, seqs, inits, invariants)
        done = 0
        if n > 0 and self.whole is not None:
            whole = self.whole(self, state)
            if whole is not None:
                return state.results(whole)
        if n > 1 and self.native is not None and not loop.until:
            sig = tuple((a.shape, a.dtype.num) for a in [*(s[0] for s in seqs), *inits, *invariants])
            shapes = self._result_shapes.get(sig)
            if shapes is not None:
                state.allocate(shapes)
                return state.results(self._run_from(state, 0))
            state.first_shapes = sig
        if n > 0:
            done = 1  # after step 0 (which an until may end)
            if not self._first_step(state) and n > 1:
                done = self._run_from(state, 1)
        return state.results(done)

    def _inputs(self, st: _State, t: int) -> list[np.ndarray]:
        loop = self.loop
        ins: list[np.ndarray] = []
        for j, s in enumerate(st.seqs):
            lo = loop.seq_taps[j][0]
            ins.extend(s[t + tap - lo, ...] for tap in loop.seq_taps[j])
        for k in loop.recurrent:
            buf, m, r = st.bufs[k]
            ins.extend(buf[(t + m + tap) % r, ...] for tap in loop.state_taps[k])
        return ins + st.invariants

    def _first_step(self, st: _State) -> bool:
        """Step 0, without ``out=``: its results' shapes size the buffers of the results that
        are not fed back, and are checked against the initial values.  Returns whether ``until``
        stopped the loop."""
        outs = self._call(self._inputs(st, 0), None)
        st.allocate([np.shape(o) for o in outs])
        if st.first_shapes is not None and len(self._result_shapes) < 16:
            self._result_shapes[st.first_shapes] = [np.shape(o) for o in outs[:self.loop.n_results]]
        for k, o in enumerate(outs[:self.loop.n_results]):
            st.dest(k, 0)[...] = o
        return self.loop.until and check_condition(outs[-1], f"{self.loop.name}: until")

    def _run_from(self, st: _State, start: int) -> int:
        """Steps ``start``..n-1, natively when the backend can, in chunks of the buffers'
        capacity (a loop ended by ``until`` grows them); returns the number of steps done."""
        while self.native is not None:
            end = min(st.capacity, st.n)
            done = self.native(self, st, start, end)
            if done is None:  # (the native stepper declined this call)
                break
            if done < end or end >= st.n or (self.loop.until and bool(st.cond)):  # (until ended it at end - 1)
                return done
            st.grow()
            start = end
        return self._steps(st, start)

    def _steps(self, st: _State, start: int) -> int:
        """Steps ``start``..n-1 (the Python loop); returns the number of steps done in all."""
        loop, n = self.loop, st.n
        for t in range(start, n):
            if t >= st.capacity:
                st.grow()
            ins = self._inputs(st, t)
            dests = [st.dest(k, t) for k in range(loop.n_results)]
            if loop.until:
                dests.append(st.cond)
            if self.writes_out:
                try:
                    self.kernel(*ins, out=dests, to_numpy=True)
                except ShapeError:  # a result's shape changed (the body's shapes depend on values)
                    self._check_rows(self._call(ins, t), dests, t)
                    raise
                except ExprcError as e:  # (an index out of bounds stays one, naming the step)
                    raise type(e)(f"{loop.name}: step {t}: {e}") from e
            else:
                outs = self._call(ins, t)
                self._check_rows(outs, dests, t)
                for d, o in zip(dests, outs):
                    d[...] = o
            if loop.until and check_condition(st.cond, f"{loop.name}: until"):
                return t + 1
        return n

    def _check_rows(self, outs: list[np.ndarray], dests: list[np.ndarray], t: int) -> None:
        """Every result of step ``t`` has the shape of its row (no broadcasting into it)."""
        for k, (o, d) in enumerate(zip(outs[:self.loop.n_results], dests)):
            if o.shape != d.shape:
                raise ShapeError(f"{self.loop.name}: step {t}: the body's result {self.label(k)} has shape "
                                 f"{shape_str(o.shape)} but {shape_str(d.shape)} at the steps before")

    def _call(self, ins: list, t: int | None) -> list[np.ndarray]:
        loop = self.loop
        try:
            outs = [np.asarray(o) for o in self.kernel(*ins, to_numpy=True)]
        except ExprcError as e:
            raise type(e)(f"{loop.name}: step {t or 0}: {e}") from e
        for k in loop.recurrent:
            want = ins[self._state_position(k)].shape
            if outs[k].shape != want:
                raise ShapeError(f"{loop.name}: the body's result {self.label(k)} has shape {shape_str(outs[k].shape)} "
                                 f"but its initial value gives {shape_str(want)}"
                                 + (f" (step {t})" if t else ""))
        return outs

    def _state_position(self, k: int) -> int:
        """Where the first tap of recurrent result ``k`` sits among the body's inputs."""
        loop = self.loop
        pos = sum(len(t) for t in loop.seq_taps)
        for q in loop.recurrent:
            if q == k:
                return pos
            pos += len(loop.state_taps[q])
        raise KeyError(k)


class _State:
    """The buffers of one call of a loop."""

    def __init__(self, runner: LoopRunner, n: int, seqs: list, inits: list, invariants: list):
        loop = runner.loop
        self.runner, self.loop, self.n = runner, loop, n
        self.seqs, self.invariants = seqs, invariants
        #: Rows allocated for stacked results: every step, except for a loop that ``until`` may end
        #: early, whose rows grow (doubling) as it runs (n_steps may be 2**62 there).
        self.capacity = min(n, GROW_FROM) if loop.until else n
        self.bufs: dict[int, tuple[np.ndarray, int, int]] = {}  # k -> (rows, depth, ring size)
        for init, k in zip(inits, loop.recurrent):
            m, taps = loop.depth(k), loop.state_taps[k]
            if taps == (-1,):
                rows = init[None]
            elif init.ndim == 0 or init.shape[0] < m:
                raise ControlFlowError(f"{loop.name}: {runner.label(k)} has taps {list(taps)}: its initial value needs "
                                       f"at least {m} rows along axis 0, got shape {shape_str(init.shape)}")
            else:
                rows = init[init.shape[0] - m:]
            r = m + self.capacity if loop.keep[k] == "all" else m + 1
            buf = np.empty((r, *rows.shape[1:]), dtype=runner.dtypes[k])
            buf[:m] = rows
            self.bufs[k] = (buf, m, r)
        self.stacks: dict[int, np.ndarray] = {}  # results that are not fed back
        self.cond = np.zeros((), dtype=bool)
        self.first_shapes: tuple | None = None  # (the operands' shapes, when step 0 runs through Python)

    def allocate(self, shapes: list[Any]) -> None:
        """Buffers of the results that are not fed back, given the shapes of one step's results."""
        loop = self.loop
        for k in range(loop.n_results):
            if k not in self.bufs:
                rows = self.capacity if loop.keep[k] == "all" else 1
                self.stacks[k] = np.empty((rows, *shapes[k]), dtype=self.runner.dtypes[k])

    def grow(self) -> None:
        """Double the rows of the stacked results (a loop that until ends), keeping what is there."""
        new = min(self.n, 2 * self.capacity)
        for k, (buf, m, r) in list(self.bufs.items()):
            if self.loop.keep[k] == "all":
                bigger = np.empty((m + new, *buf.shape[1:]), buf.dtype)
                bigger[:r] = buf
                self.bufs[k] = (bigger, m, m + new)
        for k, stack in list(self.stacks.items()):
            if self.loop.keep[k] == "all":
                bigger = np.empty((new, *stack.shape[1:]), stack.dtype)
                bigger[:len(stack)] = stack
                self.stacks[k] = bigger
        self.capacity = new

    def dest(self, k: int, t: int) -> np.ndarray:
        if k in self.bufs:
            buf, m, r = self.bufs[k]
            return buf[(t + m) % r, ...]  # (a view even for 0-d rows)
        stack = self.stacks[k]
        return stack[t, ...] if self.loop.keep[k] == "all" else stack[0, ...]

    def results(self, done: int) -> tuple:
        loop, out = self.loop, []
        if done == 0 and self.stacks == {} and any(k not in self.bufs for k in range(loop.n_results)):
            self._shapes_without_steps()
        for k in range(loop.n_results):
            if k in self.bufs:
                buf, m, r = self.bufs[k]
                out.append(buf[m:m + done] if loop.keep[k] == "all" else buf[(done - 1 + m) % r, ...])
            else:
                stack = self.stacks[k]
                out.append(stack[:done] if loop.keep[k] == "all" else stack[0, ...])
        return tuple(out)

    def _shapes_without_steps(self) -> None:
        """Zero steps: the results that are not fed back still need a shape (0, ...): the static
        one when the graph fixes it, else the body's, run once on zeros of its inputs' shapes (it
        has no side effects; an error there means the shape depends on values no step computed)."""
        loop, runner = self.loop, self.runner
        self.n = self.capacity = 0
        static = [o.type.shape for o in loop.outputs]
        if all(None not in static[k] for k in range(loop.n_results) if k not in self.bufs):
            self.allocate([s if None not in s else None for s in static])
        else:
            ins = [np.zeros(s.shape[1:], s.dtype) for j, s in enumerate(self.seqs) for _ in loop.seq_taps[j]]
            for k in loop.recurrent:
                buf = self.bufs[k][0]
                ins.extend(np.zeros(buf.shape[1:], buf.dtype) for _ in loop.state_taps[k])
            try:
                with np.errstate(all="ignore"):
                    outs = [np.asarray(o) for o in runner.kernel(*(ins + self.invariants), to_numpy=True)]
            except ExprcError as e:
                raise ShapeError(f"{loop.name}: zero steps, and the shape of a result depends on values no step "
                                 f"computed ({e})") from e
            self.allocate([np.shape(o) for o in outs])
        for k in self.stacks:
            if loop.keep[k] == "last":
                self.stacks[k][...] = 0


def make_runner(node: Node, compile: Callable[[tuple, tuple], Any], backend: str, cfg: Any) -> Callable[..., Any]:
    """The callable evaluating control node ``node`` from its operands' values on ``backend``,
    whose ``compile(inputs, outputs)`` builds (optimizes, compiles) a body's kernel."""
    if node.op == "scan":
        loop: Loop = node.arg("loop")
        runner = LoopRunner(loop, compile(loop.inputs, loop.outputs))
        native = NATIVE.get(backend)
        if native is not None:
            runner.native = native(runner)
        whole = WHOLE.get(backend)
        if whole is not None:
            runner.whole = whole(loop, cfg)
        return runner
    if node.op == "ifelse":
        b: Branches = node.arg("branches")
        kernels = (compile(b.inputs, (b.then,)), compile(b.inputs, (b.orelse,)))

        def branch(cond: Any, *captured: Any) -> Any:
            return np.asarray(run_branch(b, kernels, cond, list(captured)))

        branch.kernels = kernels  # type: ignore[attr-defined]
        return branch
    if node.op == "scan_output":
        k = node.arg("k")
        return lambda packed: packed[k]
    raise KeyError(node.op)


__all__ = ["NATIVE", "WHOLE", "LoopRunner", "make_runner"]
