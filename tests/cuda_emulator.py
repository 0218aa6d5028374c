"""A CPU stand-in for the CUDA driver, so the CUDA runtime's Python side runs without a GPU.

Device memory is host memory (pointers are real addresses); a kernel launch reads the
argument struct the runtime packed (pointers, then the kernel's slice of ``P``) and runs the
C backend's kernel of the same program with it.  This checks everything the runtime does
(plans, argument packing, views, scratch, reduction chunking, NumPy steps, outputs) except
the CUDA kernels themselves, which NVRTC compiles but nothing here executes.
"""

from __future__ import annotations

import ctypes

import numpy as np

from exprc.codegen.cuda import BLOCK, arg_words
from exprc.runtime import _FFI, CKernel


class EmulatedDriver:
    binary_target = "ptx"
    arch = "sm_90"
    name = "emulated"

    def __init__(self, sm_count: int = 2, max_threads_per_sm: int = 512):
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
        """Build the C backend's library for ``kernel``'s program (the same layout)."""
        from exprc.pipeline import FunctionGraph

        fg = FunctionGraph(tuple(kernel._inputs), tuple(kernel._outputs))
        ck = CKernel(fg, kernel.cfg, fuse="fusion" not in kernel.cfg.exclude)
        assert [k.name for k in ck.program.kernels] == [k.name for k in kernel.program.kernels]
        assert ck.layout.p_size == kernel.layout.p_size and ck.layout.slots == kernel.layout.slots
        for handle in kernel._functions.values():
            handle[0] = (ck, kernel.layout)

    def launch(self, fn, grid: int, block: int, params: int) -> None:
        (ck, lay), name = fn
        assert block == BLOCK and 0 < grid < 2**31
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
        ptrs = _FFI.new(f"char *[{max(len(lay.slots), 1)}]")
        for j, (_, slot, _) in enumerate(kl.accesses):
            ptrs[slot] = _FFI.cast("char *", int(words[j]))
        P = np.zeros(max(lay.p_size, 1), np.int64)
        base = n_par - (2 if reduce else 0)
        P[kl.p_flag:kl.p_flag + base] = words[n_ptr:n_ptr + base]
        ck._run(ptrs, _FFI.cast("int64_t *", P.ctypes.data), i, i + 1, 1)
