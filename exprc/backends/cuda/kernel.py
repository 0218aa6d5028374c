"""The CUDA backend's runtime: lower -> render CUDA -> NVRTC (cached) -> launch with the driver API.

* **Driver.**  :mod:`exprc.backends.cuda.device` wraps the handful of driver calls made (cuda-bindings) on
  the device's *primary* context (the one CuPy and PyTorch use, so their memory is ours to read).
  All work goes to the **legacy default stream**, which orders itself with the default streams
  of CuPy and PyTorch; ``DeviceArray`` advertises it (``stream: 1``) and inputs that name another
  stream are synchronized first.
* **Plans.**  The host planner shared with the C backend (:mod:`exprc.backends.plan`) runs on host
  *shadows* of the inputs (same shape and strides over lazily zeroed memory, never read), so
  sizes, byte strides, view offsets and scratch shapes are exactly the C backend's.  Per input
  signature the plan holds the device scratch buffers, the reduction partials and, per kernel,
  its argument struct (pointers, then its slice of ``P``) and its grid.
* **Calls.**  NumPy inputs are copied to the device; objects with ``__cuda_array_interface__``
  (CuPy, PyTorch, Numba, exprc's own :class:`DeviceArray`) are used in place.  Outputs are fresh
  :class:`DeviceArray` (stream-ordered ``cuMemAllocAsync`` from the device's pool), or NumPy
  arrays with ``Config(return_numpy=True)`` / ``f(..., to_numpy=True)``.
* **Launch configuration** from the device's SM count and threads per SM: elementwise grids
  of at most 4 waves of resident blocks (grid-stride loops do the rest); reductions split the
  reduced axis into chunks so that (kept outputs x chunks) fills one wave, then a second pass
  combines the partials in order (see :mod:`exprc.backends.cuda.render`).
* **NumPy steps** (ops without a CUDA loop: ``matmul``, ``argmax``, ``concatenate``, views of
  intermediates, ``shape``) run between kernels.  ``matmul`` runs on the device through
  ``cupy.matmul`` (cuBLAS) when CuPy is installed; otherwise, and for every other step, the
  operands are copied to the host, NumPy computes the step and the result is copied back: correct
  and simple, slow for big operands.  No custom matmul kernel is generated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc.backends import Kernel
from exprc.backends.cuda import compile as nvrtc
from exprc.backends.cuda.device import (
    DeviceArray,
    Driver,
    _contiguous_strides,
    _extent,
    get_driver,
    probe,
    set_driver,
)
from exprc.backends.cuda.render import BLOCK, CUDARenderer, arg_words, kernel_names
from exprc.backends.outputs import check_count, check_out
from exprc.backends.plan import Planner, PlanPool, Unsupported, describe
from exprc.config import Config
from exprc.errors import InputTypeError
from exprc.fusion import VIEW_OPS, lower, stable_branches
from exprc.fusion import Kernel as Loop
from exprc.graph import Node
from exprc.ops import OPS
from exprc.pipeline import FunctionGraph
from exprc.printing import pprint
from exprc.types import shape_str

#: Waves of resident blocks an elementwise grid may have (grid-stride loops cover the rest).
WAVES = 4


def _shadow(a: DeviceArray) -> np.ndarray:
    """A host array with ``a``'s shape and strides over zeroed memory (for planning only)."""
    if a.size == 0:
        return np.empty(a.shape, a.dtype)
    lo, hi = _extent(a.shape, a.strides, a.itemsize)
    return np.ndarray(a.shape, a.dtype, np.zeros(hi - lo, np.uint8), -lo, a.strides)


# -- the compiled function --------------------------------------------------------------------------------------
class _Launch:
    """One kernel of a plan: its argument struct, grid and (reductions) second pass."""

    def __init__(self, fn: Any, final: Any, slots: list[int], words: np.ndarray, grid: int, grid_final: int):
        self.fn, self.final, self.slots, self.words = fn, final, slots, words
        self.grid, self.grid_final = grid, grid_final
        self.params = np.array([words.ctypes.data], dtype=np.uint64)  # the void*[1] cuLaunchKernel reads
        self.address = self.params.ctypes.data  # (both arrays live as long as the plan)

    def run(self, driver: Any, ptrs: list[int]) -> None:
        if self.grid == 0:
            return
        words = self.words
        for j, s in enumerate(self.slots):
            words[j] = ptrs[s]
        driver.launch(self.fn, self.grid, BLOCK, self.address)
        if self.final is not None:
            driver.launch(self.final, self.grid_final, BLOCK, self.address)


class _Plan:
    def __init__(self) -> None:
        self.static: dict[int, int] = {}  # slot -> device pointer fixed for this signature
        self.keep: list[DeviceArray] = []
        self.scratch: dict[Node, DeviceArray] = {}
        self.out_specs: list[tuple[int, int, tuple, np.dtype]] = []
        self.input_views: list[tuple[int, int, int]] = []
        self.copied_views: list[tuple[int, Node]] = []
        self.launches: list[_Launch] = []
        # Kernel launches only (no NumPy step, no copied view, every output a distinct kernel result):
        # the slots' fixed pointers, then (slot, shape, dtype, strides, bytes) of each output in order.
        self.simple = False
        self.ptrs: list[int] = []
        self.fresh: list[tuple[int, tuple, np.dtype, tuple, int]] = []


class CUDAKernel(Kernel):
    """A compiled CUDA-backend function (the :class:`~exprc.backends.Kernel` protocol); its results
    are :class:`DeviceArray` unless ``to_numpy`` (or ``Config(return_numpy=True)``)."""

    device_arrays = True

    def __init__(self, fg: FunctionGraph, cfg: Config, fuse: bool = True, driver: Any = None):
        self.driver = driver or get_driver()
        self.driver.make_current()
        self.cfg = cfg
        fg = FunctionGraph(fg.inputs, tuple(stable_branches(fg.outputs)), fg.trace)  # (no row kernels here)
        self.program = lower(list(fg.outputs), list(fg.inputs), fuse=fuse)
        summary = pprint(list(fg.outputs), max_inline=10_000, max_nodes=200)
        renderer = CUDARenderer(precise_math=cfg.precise_math, fast_math=cfg.fast_math)
        self.source, self.layout = renderer.render(self.program, summary[:2000])
        name = self.program.kernels[0].name if self.program.kernels else "k_empty"
        self.binary, self.cache_entry = nvrtc.cached_compile(self.source, name, self.driver.arch,
                                                             self.driver.binary_target, cfg, summary)
        names = kernel_names(self.layout)
        self._functions = self.driver.load(self.binary, names) if names else {}
        # Device scratch is allocated per step: every NumPy step runs, none becomes a host alias.
        self.planner = Planner(self.program, self.layout, fg.inputs, fg.outputs, resolve_steps=False)
        self.kernels = describe(self.layout)
        self.pool = PlanPool()
        self._inputs = list(fg.inputs)
        self._outputs = list(fg.outputs)
        self._slot = self.planner.slot

    # -- arguments ---------------------------------------------------------------------------------------------
    def device_input(self, value: Any, var: Node, label: str) -> DeviceArray:
        """Check a ``__cuda_array_interface__`` argument against ``var`` (no casts on the device)."""
        arr = DeviceArray.from_cuda_array(value, self.driver)
        if arr.dtype != np.dtype(var.dtype) or arr.ndim != var.ndim:
            raise InputTypeError(f"{label}: expected a {var.dtype} array with ndim {var.ndim}, got a {arr.dtype} "
                                 f"device array with ndim {arr.ndim} (device arrays are not cast; convert it first)")
        return arr

    def _to_device(self, a: Any) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a
        if hasattr(a, "__cuda_array_interface__"):
            return DeviceArray.from_cuda_array(a, self.driver)
        return DeviceArray.from_numpy(a, self.driver)

    # -- plans -------------------------------------------------------------------------------------------------
    def _plan(self, dev: list[DeviceArray]) -> _Plan:
        drv = self.driver
        shadows = [_shadow(d) for d in dev]
        host = self.planner.make_plan(shadows, None)  # raises Unsupported like the C backend
        plan = _Plan()
        plan.out_specs = host.out_specs
        plan.input_views = host.input_views
        plan.copied_views = host.copied_views
        for n, arr in host.scratch.items():
            plan.scratch[n] = DeviceArray.empty(arr.shape, arr.dtype, drv)
            if n in self._slot:
                plan.static[self._slot[n]] = plan.scratch[n].ptr
        dynamic = set(range(len(self._inputs))) | {s for _, s, _, _ in plan.out_specs}
        dynamic |= {s for s, _, _ in plan.input_views} | {s for s, _ in plan.copied_views}
        env = dict(zip(self._inputs, shadows))
        for n, slot in self._slot.items():  # constants and views of constants: uploaded once per plan
            if slot not in dynamic and slot not in plan.static and n not in self.planner.written:
                arr = DeviceArray.from_numpy(np.ascontiguousarray(self.planner.value(n, env)), drv)
                plan.keep.append(arr)
                plan.static[slot] = arr.ptr
        P = host.P
        target = max(1, drv.sm_count * max(1, drv.max_threads_per_sm // BLOCK))
        for kl in self.layout.kernels:
            n_ptr, n_par = arg_words(kl)
            k = kl.kernel
            dims = [int(x) for x in P[kl.p_dims:kl.p_dims + kl.ndim]]
            words = np.zeros(n_ptr + n_par, np.int64)
            base = n_par - (2 if k.reduce is not None else 0)
            words[n_ptr:n_ptr + base] = P[kl.p_flag:kl.p_flag + base]
            slots = [s for _, s, _ in kl.accesses]
            final = None
            if k.reduce is None:
                total = math.prod(dims)
                grid = min(-(-total // BLOCK), target * WAVES)
                grid_final = 0
            else:
                kept, red = math.prod(dims[:kl.nkept]), math.prod(dims[kl.nkept:])
                nchunks = 1
                if kept < target and red > 4 * BLOCK:
                    nchunks = min(-(-2 * target // kept) if kept else 1, -(-red // (4 * BLOCK)))
                chunk = max(1, -(-red // nchunks))
                nchunks = max(1, -(-red // chunk)) if red else 1
                words[n_ptr + n_par - 2:] = (nchunks, chunk)
                grid = min(kept * nchunks, target * WAVES)
                grid_final = min(kept, target * WAVES)
                if nchunks > 1:
                    part = DeviceArray.empty((kept * nchunks,), np.float64, drv)  # 8 bytes per partial
                    plan.keep.append(part)
                    words[n_ptr - 1] = part.ptr
                    final = self._functions[f"{k.name}_final"]
            plan.launches.append(_Launch(self._functions[k.name], final, slots, words, grid, grid_final))
        self._simplify(plan)
        return plan

    def _simplify(self, plan: _Plan) -> None:
        """Mark ``plan`` simple where a call is only launches (see :class:`_Plan`)."""
        specs = {slot: (shape, np.dtype(dt)) for _, slot, shape, dt in plan.out_specs}
        slots = [self._slot[o] for o in self._outputs]
        if (plan.copied_views or not all(isinstance(s, Loop) for s in self.program.steps)
                or len(set(slots)) != len(slots) or set(slots) != set(specs)):
            return
        plan.ptrs = [0] * max(len(self.layout.slots), 1)
        for slot, p in plan.static.items():
            plan.ptrs[slot] = p
        for slot in slots:
            shape, dt = specs[slot]
            shape = tuple(int(n) for n in shape)
            plan.fresh.append((slot, shape, dt, _contiguous_strides(shape, dt.itemsize), math.prod(shape) * dt.itemsize))
        plan.simple = True

    def _run_simple(self, plan: _Plan, dev: Sequence[DeviceArray]) -> list[DeviceArray]:
        drv = self.driver
        ptrs = plan.ptrs.copy()
        for i, d in enumerate(dev):
            ptrs[i] = d.ptr
        outs = []
        for slot, shape, dt, strides, nbytes in plan.fresh:
            r = DeviceArray._fresh(shape, dt, strides, nbytes, drv)
            ptrs[slot] = r.ptr
            outs.append(r)
        for slot, base, off in plan.input_views:
            ptrs[slot] = ptrs[base] + off
        for launch in plan.launches:
            launch.run(drv, ptrs)
        return outs

    def fast_path(self, single: bool) -> Any:
        """The common call in few Python steps (see :class:`_FastCall`); None in profile mode and where
        results go to the host."""
        if self.profile is not None or self.cfg.return_numpy:
            return None
        return _FastCall(self, single)

    # -- calls -------------------------------------------------------------------------------------------------
    def __call__(self, *arrays: Any, out: Sequence[Any] | None = None, to_numpy: bool | None = None) -> list:
        drv = self.driver
        drv.make_current()
        dev = [self._to_device(a) for a in arrays]
        key = tuple((d.shape, d.strides) for d in dev)
        plan = self.pool.take(key)
        if plan is None:
            try:
                plan = self._plan(dev)
            except Unsupported:
                return self._finish(self._host_fallback(dev), out, to_numpy)
            self.pool.made(key)
        try:
            results = self._execute_cuda(plan, dev)
        finally:
            self.pool.give(key, plan)
        return self._finish(results, out, to_numpy)

    def _execute_cuda(self, plan: _Plan, dev: list[DeviceArray]) -> list[DeviceArray]:
        if plan.simple:
            return self._run_simple(plan, dev)
        drv = self.driver
        ptrs = [0] * max(len(self.layout.slots), 1)
        for i, d in enumerate(dev):
            ptrs[i] = d.ptr
        for slot, p in plan.static.items():
            ptrs[slot] = p
        results: dict[int, DeviceArray] = {}
        for _, slot, shape, dt in plan.out_specs:
            results[slot] = DeviceArray.empty(shape, dt, drv)
            ptrs[slot] = results[slot].ptr
        for slot, base, off in plan.input_views:
            ptrs[slot] = ptrs[base] + off
        live = []
        host_env: dict[Node, np.ndarray] | None = None
        if plan.copied_views:
            host_env = self._host_env(plan, dev, results)
            for slot, n in plan.copied_views:
                live.append(DeviceArray.from_numpy(np.ascontiguousarray(self.planner.value(n, host_env)), drv))
                ptrs[slot] = live[-1].ptr
        k = 0
        for s in self.program.steps:
            if isinstance(s, Loop):
                plan.launches[k].run(drv, ptrs)
                k += 1
            else:
                self._run_step(s.node, plan, dev, results)
        outs: list[DeviceArray] = []
        for j, o in enumerate(self._outputs):
            res = results.get(self._slot[o])
            if res is not None and all(o is not p for p in self._outputs[:j]):
                outs.append(res)
            elif res is not None:
                outs.append(res.copy())
            else:  # an input, a constant or a view of one: computed on the host
                val = self.planner.value(o, self._host_env(plan, dev, results))
                outs.append(DeviceArray.from_numpy(np.asarray(val, dtype=o.dtype), drv))
        del live
        return outs

    def _host_env(self, plan: _Plan, dev: list[DeviceArray], results: dict[int, DeviceArray]) -> dict:
        """Host copies of the inputs and of everything computed so far (for NumPy steps)."""
        env: dict[Node, np.ndarray] = {x: d.get() for x, d in zip(self._inputs, dev)}
        env.update({n: a.get() for n, a in plan.scratch.items()})
        env.update({self.layout.slots[s]: a.get() for s, a in results.items()})
        return env

    def _run_step(self, node: Node, plan: _Plan, dev: list[DeviceArray], results: dict[int, DeviceArray]) -> None:
        dest = plan.scratch.get(node)
        if dest is None:
            dest = results[self._slot[node]]
        if node.op == "matmul" and self._cupy_matmul(node, dest, plan, dev, results):
            return
        env = self._host_env(plan, dev, results)
        with np.errstate(all="ignore"):
            val = OPS[node.op].impl(*[self.planner.value(i, env) for i in node.inputs], **dict(node.attrs))
        host = np.empty(dest.shape, dest.dtype)
        np.copyto(host, val, casting="unsafe")
        if host.nbytes:
            self.driver.htod(dest.ptr, host)

    def _cupy_matmul(self, node: Node, dest: DeviceArray, plan: _Plan, dev: list[DeviceArray],
                     results: dict[int, DeviceArray]) -> bool:
        """``matmul`` with cuBLAS through CuPy, when CuPy is installed and the operands are on the device."""
        try:
            import cupy
        except ImportError:
            return False
        try:
            on_device: dict[Node, Any] = {x: cupy.asarray(d) for x, d in zip(self._inputs, dev)}
            on_device.update({n: cupy.asarray(a) for n, a in plan.scratch.items()})
            on_device.update({self.layout.slots[s]: cupy.asarray(a) for s, a in results.items()})
            operands = []
            for x in node.inputs:
                chain = []
                while x not in on_device and x.op in VIEW_OPS:
                    chain.append(x)
                    x = x.inputs[0]
                val = on_device[x]
                for v in reversed(chain):
                    val = OPS[v.op].impl(val, **dict(v.attrs))  # NumPy view functions dispatch to CuPy
                operands.append(val)
            cupy.asarray(dest)[...] = cupy.matmul(*operands)
            return True
        except Exception:  # noqa: BLE001 - anything CuPy cannot do runs on the host instead
            return False

    def _host_fallback(self, dev: list[DeviceArray]) -> list[DeviceArray]:
        results = self.planner.reference().run([d.get() for d in dev])
        return [DeviceArray.from_numpy(r, self.driver) for r in results]

    def _finish(self, results: list[DeviceArray], out: Sequence[Any] | None, to_numpy: bool | None) -> list:
        host = to_numpy or (to_numpy is None and self.cfg.return_numpy)
        if out is None:
            return [r.get() for r in results] if host else results
        check_count(out, len(results))
        outs: list = []
        for j, (dst, res) in enumerate(zip(out, results)):
            if dst is None:  # no array given for this output: a fresh one
                outs.append(res.get() if host else res)
                continue
            outs.append(dst)
            if isinstance(dst, np.ndarray):
                check_out(j, dst, res.shape, res.dtype.name)
                np.copyto(dst, res.get())
                continue
            d = DeviceArray.from_cuda_array(dst, self.driver)
            if d.shape != res.shape or d.dtype != res.dtype or not d.c_contiguous:
                raise InputTypeError(f"out[{j}]: expected a C-contiguous {res.dtype} array of shape "
                                     f"{shape_str(res.shape)}, got {d.dtype} {shape_str(d.shape)}")
            if res.nbytes:
                self.driver.dtod(d.ptr, res.ptr, res.nbytes)
        return outs


class _FastCall:
    """``Function``'s dispatcher for a CUDA kernel (:meth:`CUDAKernel.fast_path`): takes only
    :class:`DeviceArray` arguments of the variables' dtypes and ndims whose shapes and strides already
    have a simple plan, and returns None for anything else, so the checked Python path runs (it
    makes the plan; the dispatcher then takes the next call)."""

    def __init__(self, kernel: CUDAKernel, single: bool):
        self.kernel, self.single = kernel, single
        self.types = [(np.dtype(x.dtype), x.ndim) for x in kernel._inputs]

    def __call__(self, *args: Any) -> Any:
        if len(args) != len(self.types):
            return None
        for a, (dt, nd) in zip(args, self.types):
            if type(a) is not DeviceArray or a.dtype != dt or len(a.shape) != nd:
                return None
        k = self.kernel
        key = tuple((a.shape, a.strides) for a in args)
        plan = k.pool.take(key)
        if plan is None:
            return None
        try:
            if not plan.simple:
                return None
            k.driver.make_current()
            outs = k._run_simple(plan, args)
        finally:
            k.pool.give(key, plan)
        return outs[0] if self.single else outs

    def into(self, args: Sequence[Any], out: Sequence[Any]) -> None:
        return None  # (out= copies into the given arrays: the Python path does it)

    def update(self, args: Sequence[Any], hidden: Any, boxes: Any, locks: Any) -> None:
        return None


__all__ = ["CUDAKernel", "DeviceArray", "Driver", "get_driver", "probe", "set_driver"]
