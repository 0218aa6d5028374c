"""A CPU stand-in for the CUDA driver, so the CUDA runtime runs without a GPU.

Device memory is host memory (pointers are real addresses).  A kernel launch reads the
argument struct the runtime packed (pointers, then the kernel's slice of ``P``) and either

* ``kernels="c"``: runs the C backend's kernel of the same program with it (fast; checks the
  runtime's plans, argument packing, views, scratch, chunking, NumPy steps and outputs), or
* ``kernels="cuda"``: runs the generated CUDA source itself, compiled by g++ with
  ``cuda_host_shim.h`` (one std::thread per CUDA thread, barriers for ``__syncthreads`` and
  warp shuffles): the kernels' indexing, block reductions and second pass execute for real.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from exprc.backends.c import kernel as ckernel
from exprc.backends.c.kernel import CKernel
from exprc.backends.cuda.render import BLOCK, arg_words


class EmulatedDriver:
    binary_target = "ptx"
    arch = "sm_90"
    name = "emulated"

    def __init__(self, sm_count: int = 2, max_threads_per_sm: int = 512, kernels: str = "c"):
        self.kernels = kernels
        self.sm_count = sm_count
        self.max_threads_per_sm = max_threads_per_sm
        self.memory: dict[int, np.ndarray] = {}
        self.launches: list[tuple[str, int, int]] = []  # (kernel, grid, nchunks)
        self.binaries: list[bytes] = []

    def make_current(self) -> None:
        pass

    def alloc(self, nbytes: int) -> int:
        buf = np.zeros(nbytes, np.uint8)
        self.memory[buf.ctypes.data] = buf
        return buf.ctypes.data

    def free(self, ptr: int) -> None:
        self.memory.pop(ptr)

    def htod(self, ptr: int, host: np.ndarray) -> None:
        ctypes.memmove(ptr, host.ctypes.data, host.nbytes)

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        ctypes.memmove(host.ctypes.data, ptr, host.nbytes)

    def dtod(self, dst: int, src: int, nbytes: int) -> None:
        ctypes.memmove(dst, src, nbytes)

    def synchronize(self, stream: int | None = None) -> None:
        pass

    def load(self, binary: bytes, names: list[str]) -> dict:
        self.binaries.append(binary)
        return {n: [None, n] for n in names}  # [emulation record, name]; see attach()

    def attach(self, kernel) -> None:
        """Build what launches run for ``kernel``: the C backend's library of the same program
        (the same layout), or its CUDA source compiled for the host."""
        from exprc.pipeline import FunctionGraph

        if self.kernels == "cuda":
            lib = host_library(kernel.source, list(kernel._functions))
            for name, handle in kernel._functions.items():
                handle[0] = ("cuda", getattr(lib, f"run_{name}"))
            return

        fg = FunctionGraph(tuple(kernel._inputs), tuple(kernel._outputs))
        ck = CKernel(fg, kernel.cfg, fuse="fusion" not in kernel.cfg.exclude, native_matmul=False, c_passes=False)
        assert [k.name for k in ck.program.kernels] == [k.name for k in kernel.program.kernels]
        assert ck.layout.p_size == kernel.layout.p_size and ck.layout.slots == kernel.layout.slots
        for handle in kernel._functions.values():
            handle[0] = (ck, kernel.layout)

    def launch(self, fn, grid: int, block: int, params: int) -> None:
        assert block == BLOCK and 0 < grid < 2**31
        if fn[0][0] == "cuda":
            self.launches.append((fn[1], grid, 0))
            # Kernels are correct for any multiple of 32 up to EXPRC_BLOCK: 64 CPU threads per block suffice.
            fn[0][1](ctypes.c_void_p(ctypes.c_uint64.from_address(params).value), grid, 64)
            return
        (ck, lay), name = fn
        if name.endswith("_final"):
            return  # pass 1 below ran the whole reduction
        i = [kl.kernel.name for kl in lay.kernels].index(name)
        kl = lay.kernels[i]
        n_ptr, n_par = arg_words(kl)
        struct = ctypes.c_uint64.from_address(params).value
        words = np.ctypeslib.as_array((ctypes.c_int64 * (n_ptr + n_par)).from_address(struct)).copy()
        reduce = kl.kernel.reduce is not None
        nchunks, chunk = (int(words[-2]), int(words[-1])) if reduce else (1, 0)
        if reduce:
            assert nchunks >= 1 and chunk >= 1 and (nchunks == 1 or words[n_ptr - 1] in self.memory)
        self.launches.append((name, grid, nchunks))
        ffi = ckernel._FFI  # (set by the first CKernel: the one being run here exists)
        ptrs = ffi.new(f"char *[{max(len(lay.slots), 1)}]")
        for j, (_, slot, _) in enumerate(kl.accesses):
            ptrs[slot] = ffi.cast("char *", int(words[j]))
        P = np.zeros(max(lay.p_size, 1), np.int64)
        base = n_par - (2 if reduce else 0)
        P[kl.p_flag:kl.p_flag + base] = words[n_ptr:n_ptr + base]
        ck._run(ptrs, ffi.cast("int64_t *", P.ctypes.data), i, i + 1, 1)


_HOST_LIBS: list = []


def host_library(source: str, names: list[str]):
    """``source`` (a generated CUDA module) compiled for the CPU with ``cuda_host_shim.h``; exports
    ``run_<kernel>(const void *args, unsigned grid, unsigned block)`` for every kernel."""
    # <cstdint> already names int64_t & co (as long, not long long) and <cmath> INFINITY/NAN.
    source = re.sub(r"^typedef [a-z ]+ u?int(8|32|64)_t;$", "", source, flags=re.MULTILINE)
    source = re.sub(r"^#define (INT32_MIN|INT32_MAX|INT64_MIN|INT64_MAX|INFINITY|NAN|INT64_C\(v\)) .*$", "",
                    source, flags=re.MULTILINE)
    wrappers = []
    for name in names:
        args = name.removesuffix("_final")
        wrappers.append(f'extern "C" void run_{name}(const void *a, unsigned grid, unsigned block) '
                        f'{{ exprc_emulate(grid, block, [&] {{ {name}(*(const {args}_args *)a); }}); }}')
    folder = Path(tempfile.mkdtemp(prefix="exprc-cuda-host-"))
    (folder / "module.cu").write_text(source + "\n" + "\n".join(wrappers) + "\n")
    shim = Path(__file__).with_name("cuda_host_shim.h")
    cmd = ["g++", "-std=c++20", "-O1", "-w", "-shared", "-fPIC", "-pthread", "-include", str(shim), "-x", "c++",
           str(folder / "module.cu"), "-o", str(folder / "module.so")]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    lib = ctypes.CDLL(str(folder / "module.so"))
    for name in names:
        getattr(lib, f"run_{name}").argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    _HOST_LIBS.append(lib)
    return lib
