"""The C backend's kernel: lower -> render -> compile (cached) -> one native call.

Per distinct input signature (shapes and strides) the host planner
(:mod:`exprc.backends.plan`) works out, once, the sizes and byte strides of every
kernel access in one int64 block ``P`` and the scratch buffers for intermediates
(reused across calls); this module turns that plan into a cffi pointer table.  A call
then only fills the pointers of its inputs and fresh outputs and enters ``exprc_run``
— once when the program has no NumPy steps.  Plans are taken from a per-signature
pool, so concurrent calls from several threads never share scratch buffers.  cffi
releases the GIL during the call.  From a function's second call on, the C dispatcher
(:mod:`exprc.backends.c.dispatch`) takes over the common call path.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from exprc import cache
from exprc.backends import Kernel, builds
from exprc.backends.c import compile as cc
from exprc.backends.c import dispatch, ffi
from exprc.backends.c.blas import blas_pointers
from exprc.backends.c.indexlib import direct_gather, make_into
from exprc.backends.layout import Layout
from exprc.backends.outputs import check_count, check_out, copy_into, overlapping
from exprc.backends.plan import HostPlan, Planner, PlanPool, Unsupported, describe, in_place_outputs
from exprc.config import Config
from exprc.fusion import Program, Step, lower, stable_branches
from exprc.ops import OPS
from exprc.ops.index import check_index
from exprc.pipeline import FunctionGraph
from exprc.printing import pprint

if TYPE_CHECKING:
    from exprc.profile import Profile


def _profile() -> Profile:
    from exprc.profile import Profile  # (only in profile mode: a warm start does not import it)

    return Profile()


# The FFI (backends/c/ffi.py) and what the hot paths take from it, set by the first CKernel (loading
# them reads the cache: not at import).
_FFI: Any = None
_CHAR_ARRAY: Any = None
_backend_fb: Any = None  # from_buffer without cffi's Python-level wrapper


def _init_ffi(cfg: Config) -> None:
    global _FFI, _CHAR_ARRAY, _backend_fb
    if _FFI is None:
        f = ffi.get(cfg)
        _CHAR_ARRAY, _backend_fb = f.typeof("char[]"), ffi.from_buffer(f)
        _FFI = f


def _fb(a: Any) -> Any:
    return _backend_fb(_CHAR_ARRAY, a, False)


_LOAD_LOCK = threading.Lock()
_RESOLVE_LOCK = threading.Lock()  # (not _LOAD_LOCK: the build being waited for takes that one)

# libgomp hangs in a forked child that starts a parallel region after the parent
# used one (multiprocessing forks on Linux): children run kernels on one thread.
_SERIAL = [False]
#: Plans (each with its scratch buffers) kept per function before old ones are dropped.
MAX_SIGNATURES = 32


def _after_fork_in_child() -> None:
    _SERIAL[0] = True
    for module in dispatch._MODULE.values():
        if module is not None:
            module.set_serial()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _pointer(a: np.ndarray) -> Any:
    try:
        return _fb(a)  # C-contiguous arrays: the cheapest way to a pointer
    except (ValueError, TypeError, BufferError):
        return _FFI.cast("char *", a.__array_interface__["data"][0])


class Plan(HostPlan):
    """A host plan with its cffi pointer table (``ptrs``) and the address of ``P``."""

    def __init__(self, nslots: int, p_size: int):
        super().__init__(p_size)
        self.P_ptr = _FFI.cast("int64_t *", _fb(self.P))
        self.ptrs = _FFI.new(f"char *[{max(nslots, 1)}]")
        self.keep: list[Any] = []  # arrays whose pointers sit in ``ptrs``


class CKernel(Kernel):
    """A compiled C-backend function (the :class:`~exprc.backends.Kernel` protocol)."""

    writes_out = True
    program: Program
    layout: Layout

    def __init__(self, fg: FunctionGraph, cfg: Config, fuse: bool = True, native_matmul: bool = True,
                 c_passes: bool = True, restored: tuple | None = None):
        # c_passes: the lowering passes only this backend's planner and renderer run (reduction
        # epilogues, shape scalars, row kernels); off, the program is the CUDA backend's (the CUDA
        # emulator in tests/ runs a CUDA program's kernels through this backend's library).
        # restored: (program, layout, entry key, built) from the graph index (:meth:`restore`).
        if not (c_passes and cfg.row_fusion is not False):  # (no row kernels: see fusion.stable_branches)
            fg = FunctionGraph(fg.inputs, tuple(stable_branches(fg.outputs)), fg.trace)
        self.cfg = cfg
        _init_ffi(cfg)
        blas = blas_pointers(_FFI) if native_matmul else None
        #: Profile mode (Config.profile): every kernel timed as its own call (exprc.profile).
        self.profile = _profile() if cfg.profile else None
        self._fg = fg
        self._rowless: CKernel | None = None  # (see _fallback)
        self._unsupported: set[tuple] = set()  # signatures the planner could not run
        self._found_blas = blas is not None
        #: What the graph index may keep of this kernel (:meth:`index_state`): only the default lowering.
        self._indexable = fuse == ("fusion" not in cfg.exclude) and native_matmul and c_passes
        if restored is not None:
            self.program, self.layout, self.entry_key, self._built = restored
        else:
            self._lower_and_render(fg, cfg, fuse, blas is not None, c_passes)
        self._blas = blas if any(k.matmul is not None for k in self.program.kernels) else None
        self.nthreads = cfg.threads()
        self.planner = Planner(self.program, self.layout, fg.inputs, fg.outputs, resolve_steps=True)
        self.kernels = describe(self.layout)
        self.pool = PlanPool(MAX_SIGNATURES)
        self._inputs = list(fg.inputs)
        self._outputs = list(fg.outputs)
        self._slot = self.planner.slot
        self._nkernels = len(self.layout.kernels)
        self._dispatchers: list[Any] = []
        self._offered: dict[int, set] = {}
        index_steps = any(isinstance(s, Step) and s.node.op in ("subtensor", "scatter") for s in self.program.steps)
        self._into = make_into(cfg) if index_steps else {}
        #: {output: input} pairs a caller may compute in place (``__call__``'s ``in_place``).
        self.in_place = in_place_outputs(self.program, self._inputs, self._outputs) if index_steps else {}
        # A program that is only x[idx] of its two arguments skips the planner (embedding lookups).
        steps = self.program.steps
        self._direct = None
        if (index_steps and len(steps) == 1 and isinstance(steps[0], Step) and self._outputs == [steps[0].node]
                and list(steps[0].node.inputs) == self._inputs):
            self._direct = direct_gather(cfg, steps[0].node, self._inputs)

    def _lower_and_render(self, fg: FunctionGraph, cfg: Config, fuse: bool, native_matmul: bool,
                          c_passes: bool) -> None:
        """Lower ``fg`` (fusion), render the source it is cached by, and start loading (or building) its
        library (``self._built``)."""
        from exprc.backends.c.render import CRenderer

        t0 = time.perf_counter()
        rows = ("math" if cfg.row_fusion is None else cfg.row_fusion) if c_passes else False
        self.program = lower(list(fg.outputs), list(fg.inputs), fuse=fuse, native_matmul=native_matmul,
                             rows=rows, epilogues=c_passes, host_scalars=c_passes)
        t1 = time.perf_counter()
        # The cache key hashes the source without its comments (kernel titles, the summary: pprint
        # work that was a fifth of a warm LSTM's function()); the library is built from the source
        # with them, which is what the entry keeps and what .source shows.
        keyed, self.layout = CRenderer(precise_math=cfg.precise_math, titles=False).render(self.program)
        if self.profile is not None:
            self.profile.compile.update(lower=t1 - t0, render=time.perf_counter() - t1)
        name = self.program.kernels[0].name if self.program.kernels else "k_empty"
        parts = cc.key_parts(cfg)
        meta = {"backend": "c"}
        self.entry_key = cache.entry_key(name, keyed, parts)

        def build(d: Any) -> Any:
            meta["summary"] = self._summary()[:500]  # (cache.load writes meta after the build)
            t = time.perf_counter()
            try:
                return cc.compile_library(self.source, d, name, cfg)
            finally:
                if self.profile is not None:
                    self.profile.compile["compile"] = time.perf_counter() - t

        def load(path: Any) -> Any:
            t = time.perf_counter()
            lib = _dlopen(path)
            if self.profile is not None:
                self.profile.compile["load"] = time.perf_counter() - t
            return lib

        # (a build may overlap with the function's other kernels': see backends/builds.py)
        self._built = builds.submit(lambda: cache.load(name, keyed, parts, build, load, cfg, meta))

    # -- the graph index (exprc/graph_index.py) ----------------------------------------
    def index_state(self) -> tuple | None:
        """What the graph index keeps to rebuild this kernel without lowering or rendering: the
        program, its layout, the library's cache entry, and whether BLAS was found."""
        if not self._indexable:
            return None
        return self.program, self.layout, self.entry_key, self._found_blas

    @classmethod
    def restore(cls, fg: FunctionGraph, state: tuple, cfg: Config) -> CKernel | None:
        """The kernel :meth:`index_state` described, its library loaded from the cache; None when the
        entry is gone or corrupt, or BLAS is (not) found where it was (the lowering depends on it)."""
        program, layout, key, with_blas = state
        _init_ffi(cfg)
        if (blas_pointers(_FFI) is not None) != with_blas:
            return None
        found = cache.load_entry(cfg, key, _dlopen)
        if found is None:
            return None
        return cls(fg, cfg, restored=(program, layout, key, builds.done(found)))

    def __getattr__(self, name: str) -> Any:
        # The library and what comes from it exist once its build is done: the first access waits
        # for it and stores them as plain attributes (later accesses never come here).
        if name in ("lib", "_entry", "_run") and "_built" in self.__dict__:
            with _RESOLVE_LOCK:  # (two threads' first calls: one resolves, the other finds it done)
                built = self.__dict__.get("_built")
                if built is not None:
                    lib, entry = built.result()
                    if self._blas is not None:
                        lib.exprc_set_blas(*self._blas)
                    self.lib, self._entry, self._run = lib, entry, lib.exprc_run
                    del self.__dict__["_built"]
            return self.__dict__[name]
        raise AttributeError(name)

    def _summary(self) -> str:
        return pprint(list(self._fg.outputs), max_inline=10_000, max_nodes=200)

    @functools.cached_property
    def source(self) -> str:
        """The generated C, comments included (rendered on first use: a warm start needs none of it)."""
        from exprc.backends.c.render import CRenderer

        return CRenderer(precise_math=self.cfg.precise_math).render(self.program, self._summary()[:2000])[0]

    @property
    def cache_entry(self) -> Any:  # type: ignore[override]
        return self._entry

    def _make_plan(self, arrays: Sequence[np.ndarray], out: Sequence[np.ndarray] | None) -> Plan:
        plan = Plan(len(self.layout.slots), self.layout.p_size)
        self.planner.make_plan(arrays, out, plan)
        for slot, arr in plan.fixed.items():
            plan.ptrs[slot] = _pointer(arr)
            plan.keep.append(arr)
        return plan

    # -- calls --------------------------------------------------------------------
    def __call__(self, *arrays: np.ndarray, out: Sequence[np.ndarray] | None = None,
                 to_numpy: bool | None = None, in_place: Sequence[tuple[int, int]] = ()) -> list[np.ndarray]:
        if self._direct is not None and out is None and self.profile is None:
            res = self._direct(*arrays)
            if res is not None:
                return [res]
        key = tuple([a.shape for a in arrays] + [a.strides for a in arrays])
        if out is not None:
            check_count(out, len(self._outputs))
            if in_place and self._in_place_ok(in_place, arrays, out):
                # out[j] *is* arrays[i] for each pair: the scatter updates it where it lies
                others = [o for j, o in enumerate(out) if all(j != p for p, _ in in_place)]
                if overlapping(others, arrays):
                    return copy_into(out, self(*arrays))
            elif overlapping(out, arrays):
                return copy_into(out, self(*arrays))
            key += ("out",) + tuple((getattr(o, "shape", None), getattr(o, "strides", None)) for o in out)
        plan = self.pool.take(key)
        if plan is None:
            if key in self._unsupported:  # (a failed plan is most of a call's time: remember it)
                return self._fallback(arrays, out)
            try:
                plan = self._make_plan(arrays, out)
            except Unsupported:
                if len(self._unsupported) >= MAX_SIGNATURES:
                    self._unsupported.clear()
                self._unsupported.add(key)
                return self._fallback(arrays, out)
            self.pool.made(key)
        try:
            if plan.simple and out is None and self.profile is None:
                try:
                    return self._execute_simple(plan, arrays)
                except ValueError:  # a non-contiguous input: from_buffer refuses it
                    pass
            return self._execute(plan, arrays, out)
        finally:
            # A dispatcher without a plan for these shapes takes this one over (the
            # Python path makes itself another plan when it needs one).
            if not (plan.simple and self._dispatchers and _contiguous_outs(out) and self._offer(plan, arrays)):
                self.pool.give(key, plan)

    def _in_place_ok(self, pairs: Sequence[tuple[int, int]], arrays: Sequence[np.ndarray],
                     out: Sequence[Any]) -> bool:
        """Each (output j, input i) pair is one of ``self.in_place``, ``out[j]`` is ``arrays[i]``
        itself, and that array shares no memory with any other argument."""
        for j, i in pairs:
            a = arrays[i]
            if (self.in_place.get(j) != i or out[j] is not a or not a.flags.writeable
                    or any(b is not a and np.may_share_memory(a, b) for b in arrays)):
                return False
        return True

    # -- the C dispatcher -----------------------------------------------------------
    def fast_path(self, single: bool) -> Any:
        """A C callable running the common call path, or None (no dispatcher here).

        It returns None for anything it does not handle, and then the Python path runs."""
        if self.profile is not None:
            return None  # (every call through _execute, kernel by kernel)
        if self._direct is not None:
            return self._direct.fast_path(single)
        for flag, d in self._dispatchers:
            if flag == single:
                return d  # shared by every Function over this kernel (calls are thread-safe)
        module = dispatch.load(self.cfg)
        if module is None or len(self._inputs) > 64 or len(self.layout.slots) > 256:
            return None
        fn = int(_FFI.cast("uintptr_t", self._run))
        types = tuple((np.dtype(x.dtype).num, x.ndim) for x in self._inputs)
        d = module.Dispatcher(fn, types, max(len(self.layout.slots), 1), self._nkernels, self.nthreads, single)
        self._dispatchers.append((single, d))
        return d

    def _offer(self, plan: Plan, arrays: Sequence[np.ndarray]) -> bool:
        """Give a simple plan to a dispatcher that has no plan for these shapes yet."""
        shapes = tuple(tuple(a.shape) for a in arrays)
        if not all(a.flags.c_contiguous for a in arrays):
            return False
        specs = tuple((slot, tuple(shape), np.dtype(dt).num) for _, slot, shape, dt in plan.out_specs)
        views = tuple(tuple(int(x) for x in v) for v in plan.input_views)
        P = int(_FFI.cast("uintptr_t", plan.P_ptr))
        ptrs = int(_FFI.cast("uintptr_t", plan.ptrs))
        for _, d in self._dispatchers:
            if shapes not in self._offered.setdefault(id(d), set()) and d.add_plan(shapes, P, ptrs, specs, views,
                                                                                   plan):
                self._offered[id(d)].add(shapes)
                return True
        return False

    def _execute_simple(self, plan: Plan, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The common case (no NumPy steps, contiguous inputs): fill pointers, one call."""
        ptrs = plan.ptrs
        fb, char_array = _backend_fb, _CHAR_ARRAY
        for i, a in enumerate(arrays):
            ptrs[i] = fb(char_array, a, False)
        outs = []
        for _, slot, shape, dt in plan.out_specs:
            res = dispatch.empty(shape, dt)  # (a large one: from the dispatcher's pool)
            ptrs[slot] = fb(char_array, res, False)
            outs.append(res)
        for slot, base, off in plan.input_views:
            ptrs[slot] = ptrs[base] + off
        self._run(ptrs, plan.P_ptr, 0, self._nkernels, 1 if _SERIAL[0] else self.nthreads)
        return outs

    def _execute(self, plan: Plan, arrays: Sequence[np.ndarray], out: Sequence[np.ndarray] | None) -> list:
        ptrs = plan.ptrs
        for i, a in enumerate(arrays):
            ptrs[i] = _pointer(a)
        results: dict[int, np.ndarray] = {}
        zeroed = plan.zeroed
        for j, slot, shape, dt in plan.out_specs:
            if out is not None and out[j] is not None:
                res = out[j]
            elif j in zeroed:  # a scatter into zeros writes here and their fill kernel is skipped:
                res = np.zeros(shape, dt)  # (a large block is fresh pages that read as zeros, unfilled)
            else:
                res = dispatch.empty(shape, dt)  # (a large one: from the dispatcher's pool)
            results[slot] = res
            ptrs[slot] = _pointer(res)
        for slot, base, off in plan.input_views:
            ptrs[slot] = ptrs[base] + off
        live = []
        for slot, n in plan.copied_views:
            arr = np.ascontiguousarray(self.planner.value(n, dict(zip(self._inputs, arrays))))
            live.append(arr)
            ptrs[slot] = _pointer(arr)
        env = None
        prof = self.profile
        for seg in plan.segments:
            if isinstance(seg, tuple):
                if prof is None:
                    self._run(ptrs, plan.P_ptr, seg[0], seg[1], 1 if _SERIAL[0] else self.nthreads)
                else:
                    self._run_timed(ptrs, plan, seg, prof)
            elif prof is None:
                env = self._step(plan, seg.node, arrays, results, env)
            else:
                t = time.perf_counter()
                env = self._step(plan, seg.node, arrays, results, env)
                prof.record(f"step {seg.node.op}", "numpy", time.perf_counter() - t)
        outs = []
        for j, o in enumerate(self._outputs):
            slot = self._slot[o]
            res = results.get(slot)
            if res is not None and all(o is not p for p in self._outputs[:j]):
                outs.append(res)
                continue
            if env is None:
                env = self.planner.host_env(plan, arrays, results)
            val = self.planner.value(o, env) if res is None else res
            if out is not None and out[j] is not None:
                check_out(j, out[j], np.shape(val), o.dtype)
                np.copyto(out[j], val, casting="unsafe")
                outs.append(out[j])
            else:
                outs.append(np.array(val, dtype=o.dtype, copy=True))
        return outs

    def _step(self, plan: Plan, node: Any, arrays: Sequence[np.ndarray], results: dict, env: dict | None) -> dict:
        """Run NumPy step ``node`` into its buffer (``env``: the host arrays, made on first need)."""
        if env is None:
            env = self.planner.host_env(plan, arrays, results)
        if node in plan.models:  # only its shape is read: its index checks, no gather
            check_index(node, *[self.planner.value(i, env) for i in node.inputs])
            return env
        op, dest = OPS[node.op], env[node]
        fast = self._into.get(node.op)
        if fast is not None:  # row gathers/scatters in C (backends/c/indexlib.py)
            fast(node, dest, *[self.planner.value(i, env) for i in node.inputs])
            return env
        with np.errstate(all="ignore"):
            if op.into is not None:  # (index steps write their buffer: no temporary)
                op.into(dest, *[self.planner.value(i, env) for i in node.inputs], **dict(node.attrs))
                return env
            val = op.impl(*[self.planner.value(i, env) for i in node.inputs], **dict(node.attrs))
        np.copyto(dest, val, casting="unsafe")
        return env

    def _run_timed(self, ptrs: Any, plan: Plan, seg: tuple[int, int], prof: Profile) -> None:
        """Profile mode: kernels ``seg`` one native call each, timed, with their elements and the
        bytes they touch (each element of each array once: a broadcast operand counts once)."""
        P = plan.P
        for k in range(seg[0], seg[1]):
            kl = self.layout.kernels[k]
            t = time.perf_counter()
            self._run(ptrs, plan.P_ptr, k, k + 1, 1 if _SERIAL[0] else self.nthreads)
            dt = time.perf_counter() - t
            nbytes = 0
            if kl.kernel.matmul is not None:
                m, n, kk = (int(x) for x in P[kl.p_flag + 1:kl.p_flag + 4])
                nb = int(P[kl.p_flag + 9])  # (a batch of products: see plan.matmul_params)
                elements = m * n * nb
                nbytes = (m * kk + kk * n + m * n) * nb * np.dtype(kl.kernel.matmul.dtype).itemsize
            else:
                loop = [int(x) for x in P[kl.p_dims:kl.p_dims + kl.ndim]]
                elements = math.prod(loop)
                for j, (node, _, pi) in enumerate(kl.accesses):
                    if j not in kl.models:
                        touched = math.prod(n for d, n in enumerate(loop) if P[pi + d] != 0 or n == 1)
                        nbytes += touched * np.dtype(node.dtype).itemsize
            prof.record(kl.kernel.name, kl.kernel.kind, dt, elements, nbytes)

    def _fallback(self, arrays: Sequence[np.ndarray], out: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        if any(k.kind == "rows" for k in self.program.kernels):
            # A signature a row kernel cannot run (a (None, None) operand that is (n, 1) in this call, so
            # a value the kernel takes for a whole row is one per row): the same graph compiled without
            # row kernels, built on the first such call, instead of NumPy op by op.
            if self._rowless is None:
                self._rowless = CKernel(self._fg, self.cfg.replace(row_fusion=False))
            return self._rowless(*arrays, out=out)
        res = self.planner.reference().run(arrays)
        return res if out is None else copy_into(out, res)


def _contiguous_outs(out: Sequence[Any] | None) -> bool:
    """Whether a plan made for these ``out=`` arrays also serves fresh C-contiguous outputs."""
    return out is None or all(o is None or (isinstance(o, np.ndarray) and o.flags.c_contiguous) for o in out)


def _dlopen(path: Any) -> Any:
    with _LOAD_LOCK:
        return ffi.dlopen(_FFI, path)


__all__ = ["CKernel", "Plan"]
