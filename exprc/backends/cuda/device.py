"""The CUDA driver layer: :class:`Driver` (the few driver-API calls exprc makes, through
cuda-bindings), :func:`probe` (can ``backend="cuda"`` run here?) and :class:`DeviceArray` (GPU memory
with ``__cuda_array_interface__``).  cuda-bindings is imported on first use only.

All work goes to the **legacy default stream** of the device's **primary context**, the context CuPy
and PyTorch use, so their memory can be read in place and their default streams order themselves
with ours.  Allocations are stream-ordered (``cuMemAllocAsync`` from the device's pool, kept in the
pool between calls) and freed when the last array using them goes away.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc.config import Config
from exprc.errors import CUDAError
from exprc.types import shape_str


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
        self._c = _entry_points() if os.environ.get("EXPRC_CUDA_CTYPES", "1") != "0" else None

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

    def _failed(self, err: int, what: str) -> None:
        self._check((self.cu.CUresult(err),), what)

    def alloc(self, nbytes: int) -> int:
        if self.pooled:
            if self._c is not None:
                out = ctypes.c_uint64()
                err = self._c.alloc(ctypes.byref(out), nbytes, None)
                if err:
                    self._failed(err, "cuMemAllocAsync")
                return out.value
            return int(self._check(self.cu.cuMemAllocAsync(nbytes, self.stream), "cuMemAllocAsync"))
        return int(self._check(self.cu.cuMemAlloc(nbytes), "cuMemAlloc"))

    def free(self, ptr: int) -> None:
        if self.pooled:
            if self._c is not None:
                self._c.free(ptr, None)
            else:
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
        """The named kernels of a module (handles ``launch`` takes)."""
        module = self._check(self.cu.cuModuleLoadData(binary), "cuModuleLoadData")
        self._modules = getattr(self, "_modules", []) + [module]  # never unloaded: functions outlive kernels
        fns = {n: self._check(self.cu.cuModuleGetFunction(module, n.encode()), f"cuModuleGetFunction({n})")
               for n in names}
        if self._c is not None:  # the raw CUfunction pointers, as ctypes passes them
            fns = {n: int(f) for n, f in fns.items()}
        return fns

    def launch(self, fn: Any, grid: int, block: int, params: int) -> None:
        """Launch ``fn`` (from :meth:`load`) on ``grid`` blocks; ``params`` is the address of its ``void*[]``."""
        if self._c is not None:
            err = self._c.launch(fn, grid, 1, 1, block, 1, 1, 0, None, params, None)
            if err:
                self._failed(err, "cuLaunchKernel")
            return
        self._check(self.cu.cuLaunchKernel(fn, grid, 1, 1, block, 1, 1, 0, self.stream, params, 0), "cuLaunchKernel")

    def synchronize(self, stream: int | None = None) -> None:
        s = self.stream if stream is None else self.cu.CUstream(stream)
        self._check(self.cu.cuStreamSynchronize(s), "cuStreamSynchronize")


class _EntryPoints:
    """libcuda's launch and stream-ordered allocation, called through ctypes: cuda-bindings spends
    several microseconds per call converting arguments, which is most of a small call's time."""

    def __init__(self, lib: Any):
        p, u, i = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
        self.launch = lib.cuLaunchKernel
        self.launch.argtypes = [p, u, u, u, u, u, u, u, p, p, p]
        self.alloc = lib.cuMemAllocAsync
        self.alloc.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, p]
        self.free = lib.cuMemFreeAsync
        self.free.argtypes = [ctypes.c_uint64, p]
        for f in (self.launch, self.alloc, self.free):
            f.restype = i


def _entry_points() -> _EntryPoints | None:
    """The ctypes entry points, or None (no loadable libcuda.so.1: cuda-bindings does the calls)."""
    try:
        return _EntryPoints(ctypes.CDLL("libcuda.so.1"))
    except (OSError, AttributeError):
        return None


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
        from exprc.backends.cuda import compile as nvrtc

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

    __slots__ = ("driver", "ptr")

    def __init__(self, driver: Any, nbytes: int):
        self.ptr = 0
        self.driver = driver
        self.ptr = driver.alloc(nbytes) if nbytes else 0

    def __del__(self) -> None:  # (cheaper than weakref.finalize, which a small call would pay for)
        if self.ptr:
            try:
                self.driver.free(self.ptr)
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
    def _fresh(cls, shape: tuple, dtype: np.dtype, strides: tuple, nbytes: int, driver: Any) -> DeviceArray:
        """``empty`` with the shape, dtype and strides already normalized (the fast call path)."""
        out = cls.__new__(cls)
        mem = _Memory(driver, nbytes)
        out.shape, out.dtype, out.ptr, out.strides, out._owner, out._driver = shape, dtype, mem.ptr, strides, mem, driver
        return out

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


__all__ = ["DeviceArray", "Driver", "get_driver", "probe", "set_driver"]
