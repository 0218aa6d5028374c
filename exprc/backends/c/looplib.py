"""The C backend's loop stepper: every step of a loop in one C call (``templates/loop_steps.c``).

A loop body compiled by the C backend is one native entry point (``exprc_run``) over a pointer
table and a parameter block ``P`` that the host planner fills once per signature.  Between steps
only *where* the body reads and writes changes: sequence rows, state rows and result rows all sit
at ``base + row * stride`` with ``row`` linear in the step (modulo the ring size for states
that keep only their last value).  So the stepper plans the body once for the step's shapes
(:meth:`~exprc.backends.c.kernel.CKernel._make_plan` with the result rows as ``out=``), lists the
moving pointers as (slot, base, stride, offset, ring), and the C loop sets them, re-derives the
views the plan made of them, and calls the body, for steps 1..n-1 (step 0 ran through Python:
it sized and checked the buffers).  No Python runs per step and nothing is allocated.

It declines (returns None: :class:`~exprc.backends.loops.LoopRunner` runs its Python loop) when
the body is not one native call for these shapes: NumPy steps in the body, views it must copy,
an output that is an input or a constant, empty arrays.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from exprc.backends.plan import Unsupported

_FFI: Any = None  # the shared FFI (backends/c/ffi.py), set by the first _load


def _load(cfg: Any) -> Any:
    """The helper library (built on first use); None when it cannot be built."""
    global _FFI
    from exprc.backends.c import ffi
    from exprc.backends.c.compile import helper_library

    f = _FFI = ffi.get(cfg)
    return helper_library("exprc_loop_steps", "loop_steps.c", lambda p: ffi.dlopen(f, p), cfg, "loop stepper")


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class CStepper:
    """Runs steps 1..n-1 of a :class:`~exprc.backends.loops.LoopRunner` whose body is a CKernel."""

    def __init__(self, kernel: Any):
        self.kernel = kernel
        self.lib = _load(kernel.cfg)
        from exprc.backends.c import kernel as kmod

        self.kmod = kmod  # (its cffi instance owns the kernel's pointer table: addresses cross over)
        self.run: Any = None  # the body's entry point, once its library is built (first call)
        self._plans: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, runner: Any, st: Any, start: int, end: int) -> int | None:
        """Steps ``start``..``end``-1 (``end`` <= n: the buffers' capacity); the steps done in
        all, or None when this call is not one it takes."""
        if self.lib is None:
            return None
        if self.run is None:
            self.run = _FFI.cast("void *", int(self.kmod._FFI.cast("uintptr_t", self.kernel._run)))
        loop = runner.loop
        ins = runner._inputs(st, 1)
        dests = [st.dest(k, 1) for k in range(loop.n_results)] + ([st.cond] if loop.until else [])
        key = tuple((a.shape, a.strides, a.dtype.num) for a in ins + dests)
        mine = self._lock.acquire(blocking=False)  # another thread in this loop: a plan of its own
        try:
            plan = self._plans.get(key) if mine else None
            if plan is None:
                try:
                    plan = self.kernel._make_plan(ins, dests)
                except Unsupported:
                    return None
                if not self._native(plan, len(ins), len(dests)):
                    plan = False
                if mine and len(self._plans) < 16:
                    self._plans[key] = plan
            if plan is False:
                return None
            return self._steps(runner, st, plan, start, end)
        finally:
            if mine:
                self._lock.release()

    @staticmethod
    def _native(plan: Any, n_in: int, n_out: int) -> bool:
        slots = [slot for _, slot, _, _ in plan.out_specs]
        return (plan.simple and len(slots) == n_out and len(set(slots)) == n_out
                and all(s >= n_in for s in slots))

    def _steps(self, runner: Any, st: Any, plan: Any, start: int, end: int) -> int | None:
        loop = runner.loop
        moves: list[tuple[int, int, int, int, int]] = []  # slot, base address, stride, offset, ring
        p = 0
        for j, s in enumerate(st.seqs):
            lo = loop.seq_taps[j][0]
            for tap in loop.seq_taps[j]:
                moves.append((p, _addr(s), s.strides[0], tap - lo, 0))
                p += 1
        for k in loop.recurrent:
            buf, m, r = st.bufs[k]
            for tap in loop.state_taps[k]:
                moves.append((p, _addr(buf), buf.strides[0], m + tap, r))
                p += 1
        ptrs, kffi = plan.ptrs, self.kmod._FFI
        for a in st.invariants:
            ptrs[p] = kffi.cast("char *", _addr(a))
            p += 1
        for j, slot, _, _ in plan.out_specs:
            if j < loop.n_results and j in st.bufs:
                buf, m, r = st.bufs[j]
                moves.append((slot, _addr(buf), buf.strides[0], m, r))
            elif j < loop.n_results:
                stack = st.stacks[j]
                moves.append((slot, _addr(stack), stack.strides[0] if loop.keep[j] == "all" else 0, 0, 0))
            else:
                ptrs[slot] = kffi.cast("char *", _addr(st.cond))
        n = len(moves)
        slot_a = _FFI.new("int64_t[]", [m[0] for m in moves])
        base_a = _FFI.new("char *[]", [_FFI.cast("char *", m[1]) for m in moves])
        stride_a = _FFI.new("int64_t[]", [m[2] for m in moves])
        off_a = _FFI.new("int64_t[]", [m[3] for m in moves])
        mod_a = _FFI.new("int64_t[]", [m[4] for m in moves])
        views = plan.input_views
        vslot = _FFI.new("int64_t[]", [v[0] for v in views])
        vbase = _FFI.new("int64_t[]", [v[1] for v in views])
        voff = _FFI.new("int64_t[]", [v[2] for v in views])
        cond = _FFI.cast("char *", _addr(st.cond)) if loop.until else _FFI.NULL
        kernel = self.kernel
        nthreads = 1 if self.kmod._SERIAL[0] else kernel.nthreads
        ptrs_c = _FFI.cast("char **", int(kffi.cast("uintptr_t", ptrs)))
        p_c = _FFI.cast("int64_t *", int(kffi.cast("uintptr_t", plan.P_ptr)))
        done = int(self.lib.exprc_loop_steps(self.run, ptrs_c, p_c, kernel._nkernels, nthreads, start, end,
                                              n, slot_a, base_a, stride_a, off_a, mod_a,
                                              len(views), vslot, vbase, voff, cond))
        return None if done < 0 else done


def stepper(runner: Any) -> Any:
    """The native stepper of ``runner`` (registered for the C backend), or None."""
    from exprc.backends.c.kernel import CKernel

    kernel = runner.kernel
    if type(kernel) is not CKernel:
        return None
    return CStepper(kernel)


__all__ = ["CStepper", "stepper"]
