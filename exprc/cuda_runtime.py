"""The CUDA backend's runtime: lower -> render CUDA -> NVRTC (cached) -> launch with the driver API.

* **Driver.**  :class:`Driver` wraps the handful of driver calls made (cuda-bindings): the
  device's *primary* context (the one CuPy and PyTorch use, so their memory is ours to read),
  module load, launches, and copies.  All work goes to the **legacy default stream**, which
  orders itself with the default streams of CuPy and PyTorch; ``DeviceArray`` advertises it
  (``stream: 1``) and inputs that name another stream are synchronized first.
* **Plans.**  The C backend's planner (:meth:`~exprc.runtime.CKernel._make_plan`) runs on host
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
  combines the partials in order (see :mod:`exprc.codegen.cuda`).
* **NumPy steps** (ops without a CUDA loop: ``matmul``, ``argmax``, ``concatenate``, views of
  intermediates, ``shape``) run between kernels.  ``matmul`` runs on the device through
  ``cupy.matmul`` (cuBLAS) when CuPy is installed; otherwise, and for every other step, the
  operands are copied to the host, NumPy computes the step and the result is copied back: correct
  and simple, slow for big operands.  No custom matmul kernel is generated.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc.codegen.cuda import BLOCK, CUDARenderer, arg_words, kernel_names
from exprc.config import Config
from exprc.errors import CUDAError, InputTypeError
from exprc.fusion import VIEW_OPS, Kernel, lower
from exprc.graph import Node
from exprc.ops import OPS
from exprc.pipeline import FunctionGraph
from exprc.runtime import CKernel, _check_out, _Unsupported
from exprc.types import shape_str

#: Waves of resident blocks an elementwise grid may have (grid-stride loops cover the rest).
WAVES = 4


def _driver_module() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError:
        from cuda import cuda as driver  # type: ignore[no-redef]  # cuda-python < 12.6
    return driver


class Driver:
    """The CUDA driver calls exprc makes, on device ``ordinal``'s primary context."""

    binary_target = "cubin"

    def __init__(self, ordinal: int = 0):
        cu = self.cu = _driver_module()
        self._check(cu.cuInit(0), "cuInit")
        self.device = self._check(cu.cuDeviceGet(ordinal), "cuDeviceGet")
        self.context = self._check(cu.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self._local = threading.local()
        self.make_current()
        a = cu.CUdevice_attribute

        def get(attr: Any) -> int:
            return int(self._check(cu.cuDeviceGetAttribute(attr, self.device), "cuDeviceGetAttribute"))

        self.sm_count = get(a.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        self.max_threads_per_sm = get(a.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)
        major = get(a.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        minor = get(a.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        self.arch = f"sm_{major}{minor}"
        self.stream = cu.CUstream(0)  # the legacy default stream
        self.pooled = bool(get(a.CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED))
        if self.pooled:  # keep freed memory in the pool instead of returning it at every sync
            try:
                pool = self._check(cu.cuDeviceGetDefaultMemPool(self.device), "cuDeviceGetDefaultMemPool")
                cu.cuMemPoolSetAttribute(pool, cu.CUmemPool_attribute.CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                                         cu.cuuint64_t(1 << 62))
            except Exception:  # noqa: BLE001,S110 - an optimization only: the pool works without it
                pass
        self.name = self._check(cu.cuDeviceGetName(256, self.device), "cuDeviceGetName").split(b"\0")[0].decode()

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            try:
                name = self.cu.cuGetErrorName(err)[1].decode()
            except (AttributeError, IndexError, TypeError, UnicodeDecodeError):
                name = str(err)
            raise CUDAError(f"{what} failed: {name}")
        return rest[0] if len(rest) == 1 else None

    def make_current(self) -> None:
        if not getattr(self._local, "current", False):
            self._check(self.cu.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
            self._local.current = True

    def alloc(self, nbytes: int) -> int:
        if self.pooled:
            return int(self._check(self.cu.cuMemAllocAsync(nbytes, self.stream), "cuMemAllocAsync"))
        return int(self._check(self.cu.cuMemAlloc(nbytes), "cuMemAlloc"))

    def free(self, ptr: int) -> None:
        if self.pooled:
            self.cu.cuMemFreeAsync(ptr, self.stream)
        else:
            self.cu.cuMemFree(ptr)

    def htod(self, ptr: int, host: np.ndarray) -> None:
        self._check(self.cu.cuMemcpyHtoD(ptr, host.ctypes.data, host.nbytes), "cuMemcpyHtoD")

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        self._check(self.cu.cuMemcpyDtoH(host.ctypes.data, ptr, host.nbytes), "cuMemcpyDtoH")

    def dtod(self, dst: int, src: int, nbytes: int) -> None:
        self._check(self.cu.cuMemcpyDtoDAsync(dst, src, nbytes, self.stream), "cuMemcpyDtoDAsync")

    def load(self, binary: bytes, names: Sequence[str]) -> dict[str, Any]:
        module = self._check(self.cu.cuModuleLoadData(binary), "cuModuleLoadData")
        self._modules = getattr(self, "_modules", []) + [module]  # never unloaded: functions outlive kernels
        return {n: self._check(self.cu.cuModuleGetFunction(module, n.encode()), f"cuModuleGetFunction({n})")
                for n in names}

    def launch(self, fn: Any, grid: int, block: int, params: int) -> None:
        self._check(self.cu.cuLaunchKernel(fn, grid, 1, 1, block, 1, 1, 0, self.stream, params, 0), "cuLaunchKernel")

    def synchronize(self, stream: int | None = None) -> None:
        s = self.stream if stream is None else self.cu.CUstream(stream)
        self._check(self.cu.cuStreamSynchronize(s), "cuStreamSynchronize")


_DRIVER: list[Any] = []
_DRIVER_LOCK = threading.Lock()
_PROBE: dict[str, str | None] = {}


def get_driver() -> Any:
    """The process's :class:`Driver` (device 0), made on first use."""
    if not _DRIVER:
        with _DRIVER_LOCK:
            if not _DRIVER:
                _DRIVER.append(Driver())
    return _DRIVER[0]


def set_driver(driver: Any) -> None:
    """Use ``driver`` (tests substitute an emulator; None forgets the current one)."""
    with _DRIVER_LOCK:
        _DRIVER[:] = [] if driver is None else [driver]
        _PROBE.clear()


def probe(cfg: Config | None = None) -> str | None:
    """None when ``backend="cuda"`` can run here, else a sentence saying why not."""
    if "why" in _PROBE:
        return _PROBE["why"]
    why = None
    if not _DRIVER:
        try:
            _driver_module()
        except ImportError:
            why = "cuda-bindings is not installed (pip install 'exprc[cuda]')"
    if why is None:
        try:
            get_driver()
        except Exception as exc:  # noqa: BLE001 - whatever stops the driver from starting is the reason
            text = f"{type(exc).__name__}: {exc}"
            if "NotFound" in type(exc).__name__ or "libcuda" in text or "driver library" in text:
                why = f"no NVIDIA driver on this machine (libcuda could not be loaded: {exc})"
            elif "NO_DEVICE" in text:
                why = "the NVIDIA driver reports no CUDA device"
            else:
                why = f"the CUDA driver could not be initialized ({text})"
    if why is None:
        from exprc.compile import nvrtc

        nv = nvrtc.probe()
        why = f"NVRTC is unusable: {nv}" if nv else None
    _PROBE["why"] = why
    return why


# -- device arrays -------------------------------------------------------------------------------------------
def _contiguous_strides(shape: tuple, itemsize: int) -> tuple:
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= max(n, 1)
    return tuple(reversed(out))


def _extent(shape: tuple, strides: tuple, itemsize: int) -> tuple[int, int]:
    """Byte range [lo, hi) around the data pointer that an array's elements occupy."""
    if 0 in shape:
        return 0, 0
    lo = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + itemsize
    return lo, hi


class _Memory:
    """Owns one device allocation; freed when the last array using it goes away."""

    def __init__(self, driver: Any, nbytes: int):
        self.ptr = driver.alloc(nbytes) if nbytes else 0
        if self.ptr:
            weakref.finalize(self, _free, driver, self.ptr)


def _free(driver: Any, ptr: int) -> None:
    try:
        driver.free(ptr)
    except Exception:  # noqa: BLE001,S110 - interpreter shutdown: the driver may be gone already
        pass


class DeviceArray:
    """An array in GPU memory: ``shape``, ``dtype``, ``strides`` (bytes), ``ptr``.

    Exposes ``__cuda_array_interface__`` (CuPy, PyTorch, Numba read it without a copy);
    ``.get()`` / ``numpy.asarray(a)`` copy it to the host."""

    __array_priority__ = 100

    def __init__(self, shape: Sequence[int], dtype: Any, ptr: int, strides: Sequence[int] | None = None,
                 owner: Any = None, driver: Any = None):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ptr = int(ptr)
        self.strides = tuple(int(s) for s in strides) if strides is not None else \
            _contiguous_strides(self.shape, self.dtype.itemsize)
        self._owner = owner
        self._driver = driver

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: Any, driver: Any = None) -> DeviceArray:
        driver = driver or get_driver()
        mem = _Memory(driver, math.prod(shape) * np.dtype(dtype).itemsize)
        return cls(shape, dtype, mem.ptr, None, mem, driver)

    @classmethod
    def from_numpy(cls, array: Any, driver: Any = None) -> DeviceArray:
        host = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        out = cls.empty(host.shape, host.dtype, driver)
        if host.nbytes:
            out._driver.htod(out.ptr, host)
        return out

    @classmethod
    def from_cuda_array(cls, obj: Any, driver: Any = None) -> DeviceArray:
        """A zero-copy view of any object with ``__cuda_array_interface__`` (kept alive)."""
        if isinstance(obj, DeviceArray):
            return obj
        cai = obj.__cuda_array_interface__
        driver = driver or get_driver()
        stream = cai.get("stream")
        if isinstance(stream, int) and stream > 2:  # a producer stream other than the default ones
            driver.synchronize(stream)
        return cls(cai["shape"], np.dtype(cai["typestr"]), cai["data"][0] or 0, cai.get("strides"), obj, driver)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def c_contiguous(self) -> bool:
        return all(n == 1 or s == c for n, s, c in zip(self.shape, self.strides,
                                                        _contiguous_strides(self.shape, self.itemsize)))

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None if self.c_contiguous else self.strides, "stream": 1}

    def get(self) -> np.ndarray:
        """A NumPy copy (waits for the work that produces this array)."""
        if self.c_contiguous:
            host = np.empty(self.shape, self.dtype)
            if host.nbytes:
                self._driver.dtoh(host, self.ptr)
            return host
        lo, hi = _extent(self.shape, self.strides, self.itemsize)
        buf = np.empty(hi - lo, np.uint8)
        self._driver.dtoh(buf, self.ptr + lo)
        return np.ndarray(self.shape, self.dtype, buf, -lo, self.strides).copy()

    def copy(self) -> DeviceArray:
        if not self.c_contiguous:
            return DeviceArray.from_numpy(self.get(), self._driver)
        out = DeviceArray.empty(self.shape, self.dtype, self._driver)
        if self.nbytes:
            self._driver.dtod(out.ptr, self.ptr, self.nbytes)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        host = self.get()
        return host if dtype is None else host.astype(dtype)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={shape_str(self.shape)}, dtype={self.dtype})"


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

    def run(self, driver: Any, ptrs: list[int]) -> None:
        if self.grid == 0:
            return
        words = self.words
        for j, s in enumerate(self.slots):
            words[j] = ptrs[s]
        driver.launch(self.fn, self.grid, BLOCK, self.params.ctypes.data)
        if self.final is not None:
            driver.launch(self.final, self.grid_final, BLOCK, self.params.ctypes.data)


class _Plan:
    def __init__(self) -> None:
        self.static: dict[int, int] = {}  # slot -> device pointer fixed for this signature
        self.keep: list[DeviceArray] = []
        self.scratch: dict[Node, DeviceArray] = {}
        self.out_specs: list[tuple[int, int, tuple, np.dtype]] = []
        self.input_views: list[tuple[int, int, int]] = []
        self.copied_views: list[tuple[int, Node]] = []
        self.launches: list[_Launch] = []


class CUDAKernel(CKernel):
    """A compiled CUDA-backend function: ``__call__(*arrays, out=None, to_numpy=None) -> list``."""

    backend = "cuda"

    def __init__(self, fg: FunctionGraph, cfg: Config, fuse: bool = True, driver: Any = None):
        from exprc.compile import nvrtc
        from exprc.printing import pprint

        self.driver = driver or get_driver()
        self.driver.make_current()
        self.cfg = cfg
        self.program = lower(list(fg.outputs), list(fg.inputs), fuse=fuse)
        summary = pprint(list(fg.outputs), max_inline=10_000)
        renderer = CUDARenderer(precise_math=cfg.precise_math, fast_math=cfg.fast_math)
        self.source, self.layout = renderer.render(self.program, summary[:2000])
        self._slot = {n: i for i, n in enumerate(self.layout.slots)}
        name = self.program.kernels[0].name if self.program.kernels else "k_empty"
        self.binary, self.cache_entry = nvrtc.cached_compile(self.source, name, self.driver.arch,
                                                             self.driver.binary_target, cfg, summary)
        names = kernel_names(self.layout)
        self._functions = self.driver.load(self.binary, names) if names else {}
        self.segments: list[Any] = [(i, i + 1) if isinstance(s, Kernel) else s
                                    for i, s in enumerate(self.program.steps)]  # read by the C planner
        self.kernels = [{"name": kl.kernel.name, "kind": kl.kernel.kind, "ops": kl.kernel.ops,
                         "outputs": len(kl.kernel.outputs)} for kl in self.layout.kernels]
        self._pools: dict[tuple, list[_Plan]] = {}
        self._n_in = len(fg.inputs)
        self._inputs = list(fg.inputs)
        self._outputs = list(fg.outputs)
        self._nkernels = len(self.layout.kernels)
        self._written = {n for s in self.program.steps for n in (s.outputs if isinstance(s, Kernel) else [s.node])}
        self._dispatchers: list[Any] = []
        self._offered: dict[int, set] = {}

    def fast_path(self, single: bool) -> None:
        return None  # no C dispatcher for GPU calls

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
        host = self._make_plan(shadows, None)  # the C planner: raises _Unsupported like the C backend
        plan = _Plan()
        plan.out_specs = host.out_specs
        plan.input_views = host.input_views
        plan.copied_views = host.copied_views
        for n, arr in host.scratch.items():
            plan.scratch[n] = DeviceArray.empty(arr.shape, arr.dtype, drv)
            if n in self._slot:
                plan.static[self._slot[n]] = plan.scratch[n].ptr
        dynamic = {s for s in range(self._n_in)} | {s for _, s, _, _ in plan.out_specs}
        dynamic |= {s for s, _, _ in plan.input_views} | {s for s, _ in plan.copied_views}
        env = dict(zip(self._inputs, shadows))
        for n, slot in self._slot.items():  # constants and views of constants: uploaded once per plan
            if slot not in dynamic and slot not in plan.static and n not in self._written:
                arr = DeviceArray.from_numpy(np.ascontiguousarray(self._value(n, env)), drv)
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
        return plan

    # -- calls -------------------------------------------------------------------------------------------------
    def __call__(self, *arrays: Any, out: Sequence[Any] | None = None, to_numpy: bool | None = None) -> list:
        drv = self.driver
        drv.make_current()
        dev = [self._to_device(a) for a in arrays]
        key = tuple((d.shape, d.strides) for d in dev)
        pool = self._pools.get(key)
        try:
            plan = pool.pop() if pool else None
        except IndexError:
            plan = None
        if plan is None:
            try:
                plan = self._plan(dev)
            except _Unsupported:
                return self._finish(self._host_fallback(dev), out, to_numpy)
            if key not in self._pools and len(self._pools) >= 32:
                self._pools.clear()
            self._pools.setdefault(key, [])
        try:
            results = self._execute_cuda(plan, dev)
        finally:
            self._pools[key].append(plan)
        return self._finish(results, out, to_numpy)

    def _execute_cuda(self, plan: _Plan, dev: list[DeviceArray]) -> list[DeviceArray]:
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
                live.append(DeviceArray.from_numpy(np.ascontiguousarray(self._value(n, host_env)), drv))
                ptrs[slot] = live[-1].ptr
        k = 0
        for s in self.program.steps:
            if isinstance(s, Kernel):
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
                val = self._value(o, self._host_env(plan, dev, results))
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
            val = OPS[node.op].impl(*[self._value(i, env) for i in node.inputs], **dict(node.attrs))
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
        from exprc.codegen.python import NumpyKernel

        if not hasattr(self, "_numpy"):
            self._numpy = NumpyKernel(FunctionGraph(tuple(self._inputs), tuple(self._outputs)))
        return [DeviceArray.from_numpy(r, self.driver) for r in self._numpy(*[d.get() for d in dev])]

    def _finish(self, results: list[DeviceArray], out: Sequence[Any] | None, to_numpy: bool | None) -> list:
        if out is not None:
            if len(out) != len(results):
                raise InputTypeError(f"out: expected {len(results)} arrays, got {len(out)}")
            for j, (dst, res) in enumerate(zip(out, results)):
                if isinstance(dst, np.ndarray):
                    _check_out(j, dst, res.shape, res.dtype.name)
                    np.copyto(dst, res.get())
                    continue
                d = DeviceArray.from_cuda_array(dst, self.driver)
                if d.shape != res.shape or d.dtype != res.dtype or not d.c_contiguous:
                    raise InputTypeError(f"out[{j}]: expected a C-contiguous {res.dtype} array of shape "
                                         f"{shape_str(res.shape)}, got {d.dtype} {shape_str(d.shape)}")
                if res.nbytes:
                    self.driver.dtod(d.ptr, res.ptr, res.nbytes)
            return list(out)
        if to_numpy or (to_numpy is None and self.cfg.return_numpy):
            return [r.get() for r in results]
        return results


def factory(fg: FunctionGraph, cfg: Config) -> CUDAKernel:
    return CUDAKernel(fg, cfg, fuse="fusion" not in cfg.exclude)


__all__ = ["CUDAKernel", "DeviceArray", "Driver", "factory", "get_driver", "probe", "set_driver"]
