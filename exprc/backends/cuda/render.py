"""The CUDA renderer: a lowered :class:`~exprc.fusion.Program` to one CUDA C++ file for NVRTC.

:class:`CUDARenderer` subclasses :class:`~exprc.backends.c.render.CRenderer` and keeps its op table
(``expr``), its statement emitter (``body``), its loads and its :class:`~exprc.backends.layout.Layout`
(the same parameter block ``P`` of sizes and byte strides, filled by the same planner).  What it
overrides is what differs on a GPU:

* **Arguments.**  Each kernel takes one struct *by value*: ``ptr[]``, the start of every array it
  reads and writes (in the order of its layout accesses), then ``P[]``, its own slice of the
  parameter block.  Kernel parameters live in the constant bank, so sizes and strides cost no
  global-memory load and nothing is copied to the device per call; only the pointers change
  between calls.  (The struct is 8 bytes per word; CUDA >= 12.1 allows 32 KiB of parameters.)
* **Thread indexing.**  ``extern "C" __global__`` kernels with ``__launch_bounds__(EXPRC_BLOCK)``
  and grid-stride loops over ``int64_t`` indices, so any size works with a grid chosen from the
  device's properties.  Pointers are ``__restrict__``; there is no OpenMP.
* **Elementwise kernels** keep the C backend's two paths: a contiguous path (flat index, typed
  ``__restrict__`` pointers, coalesced) when ``P[flag]`` is set, and a strided path that turns
  the flat index into N-d coordinates with the sizes in ``P`` (broadcasting as stride 0, negative
  strides, views, 0-d and zero-size arrays).
* **Reductions** are deterministic and two-pass, with no atomics.  Pass 1 (``k<i>_<ops>``) gives
  each (kept index, chunk) pair to one block: its threads walk the chunk with a block-stride loop
  and evaluate the fused producer on the fly (``sum(exp(x - max(x)))`` reads ``x`` and the 0-d
  max, nothing else), then combine with a warp-shuffle tree and a per-warp shared-memory stage
  (``exprc_block_reduce``).  With one chunk per kept index (many outputs, or a short reduction)
  pass 1 writes the result directly; otherwise it writes one partial per chunk and pass 2
  (``k<i>_<ops>_final``) combines the partials of each kept index in chunk order with the same
  block reduction.  Atomics were rejected because floating-point atomic adds make ``sum`` depend
  on scheduling (results would change from run to run, breaking the NumPy-equality tests and
  reproducibility) and there is no native atomic max for doubles; the second pass costs one
  extra launch (a few microseconds) on partials that fit in L2.  The chunking is chosen by the
  runtime from the device's SM count, so results are reproducible for a given device and shape.
  Accumulators are those of the C backend (double for float sums and products, int64 for
  integer ones) and max/min propagate NaN as NumPy does.
* **Float math.**  The C op table's expressions are valid CUDA (``expf``, ``log1p``,
  ``nearbyint``, ``isnan`` are CUDA device functions).  By default NVRTC compiles with
  ``--fmad=false`` (gcc does not contract ``a*b+c`` either, so results match the C and NumPy
  backends); with ``Config(fast_math=True)`` float32 ops use the hardware intrinsics
  (``__expf``, ``__logf``, ``__sinf``, ``__cosf``, ``__fdividef``, ``__powf``) and NVRTC gets
  ``--use_fast_math``.  An op row's ``cuda`` column, when set, replaces its C expression.

The prelude (``templates/cuda_prelude.cuh``) defines ``EXPRC_INLINE`` as ``__device__`` and
splices in the NumPy-semantics helpers shared with C (``backends/c/templates/numpy_semantics.h``);
``templates/cuda_module.cu`` is the file skeleton.
"""

from __future__ import annotations

import os
import string

import numpy as np

from exprc._version import __version__
from exprc.backends.c.render import (
    CRenderer,
    KernelLayout,
    Layout,
    c_literal,
    comment,
    kernel_title,
    uses_draws,
)
from exprc.backends.templates import prelude, random_helpers, read
from exprc.fusion import Kernel, Program
from exprc.graph import Node
from exprc.ops import OPS, REDUCTIONS
from exprc.types import C_TYPES

#: Threads per block (compiled into ``__launch_bounds__``; a multiple of the warp size).
BLOCK = 256

#: Unroll factor of contiguous reductions over <= 4-byte elements (EXPRC_CUDA_UNROLL; 1 turns it off).
UNROLL = int(os.environ.get("EXPRC_CUDA_UNROLL", "4") or 4)

#: float32 hardware intrinsics used with ``fast_math`` (precise library calls otherwise).
FAST_FLOAT32 = {
    "exp": "__expf({0})", "log": "__logf({0})", "sin": "__sinf({0})", "cos": "__cosf({0})",
    "tan": "__tanf({0})", "log2": "__log2f({0})", "log10": "__log10f({0})", "exp2": "exp2f({0})",
    "truediv": "__fdividef({0}, {1})", "pow": "__powf({0}, {1})",
}


def arg_words(kl: KernelLayout) -> tuple[int, int]:
    """(pointers, parameter words) in a kernel's argument struct.

    Pointers: one per layout access, plus the partials buffer of a reduction.  Parameters:
    ``P[p_flag : p_flag + 1 + ndim * (1 + accesses)]``, plus ``nchunks`` and ``chunk`` of a
    reduction."""
    n_ptr = len(kl.accesses)
    n_par = 1 + kl.ndim * (1 + len(kl.accesses))
    if kl.kernel.reduce is not None:
        return n_ptr + 1, n_par + 2
    return n_ptr, n_par


class CUDARenderer(CRenderer):
    """Renders programs to CUDA C++ for NVRTC (see the module docstring)."""

    target = "cuda"
    restrict = "__restrict__"

    def __init__(self, precise_math: bool = False, fast_math: bool = False, block: int = BLOCK,
                 unroll: int = UNROLL):
        super().__init__(precise_math=precise_math)
        self.fast_math = fast_math
        self.block = block
        self.unroll = unroll

    # -- what differs from C: where arrays and parameters live, a few expressions -----------
    def ptr(self, kl: KernelLayout, j: int) -> str:
        return f"a.ptr[{j}]"

    def param(self, kl: KernelLayout, i: int) -> str:
        return f"a.P[{i - kl.p_flag}]"

    def expr(self, node: Node, args: list[str]) -> str:
        op = OPS[node.op]
        dt = node.inputs[0].dtype if node.inputs and node.op not in ("where", "cast") else node.dtype
        if dt in ("float32", "float64") and node.op != "cast":
            tmpl = FAST_FLOAT32.get(node.op) if (self.fast_math and dt == "float32") else None
            tmpl = tmpl or op.cuda
            if tmpl is not None:
                return tmpl.format(*args, f="f" if dt == "float32" else "", T=C_TYPES[dt])
        return super().expr(node, args)

    # -- guards: the rare branch as a real branch --------------------------------------------
    def body(self, k: Kernel, names: dict[Node, str], indent: str) -> list[str]:
        """The C backend's statements, except that the nodes only the slow arm of a guard
        ``where(rare(c), slow, fast)`` needs are computed inside ``if (c)``.

        The C backend runs a fast copy of the loop where no element of a chunk is rare; on a GPU
        a branch costs nothing while a warp agrees, so the slow arm (``log1p(x*x)`` for huge
        ``x``: a log, a division and a second log1p) is skipped per element instead.  A kernel
        that draws random bits keeps straight-line code (its draws count positions)."""
        self._lazy = {} if any(OPS[n.op].c_call is not None for n in k.body) else _slow_arms(k)
        try:
            return super().body(k, names, indent)
        finally:
            self._lazy = {}

    def statements(self, nodes: list[Node], names: dict[Node, str], indent: str) -> list[str]:
        lazy: dict[Node, list[Node]] = getattr(self, "_lazy", {})
        guards = [n for n in nodes if n in lazy]
        if not guards:
            return super().statements(nodes, names, indent)
        inner = {m for g in guards for m in lazy[g]}  # (a nested guard's arm: emitted in its own block)
        lines: list[str] = []
        for n in nodes:
            if n in inner:
                continue
            if n not in lazy:
                lines += super().statements([n], names, indent)
                continue
            cond, fast = self._value(n.inputs[0], names), self._value(n.inputs[2], names)
            names[n] = name = f"t{len(names)}"
            lines += [f"{indent}{C_TYPES[n.dtype]} {name};", f"{indent}if ({cond}) {{"]
            lines += self.statements(lazy[n], names, indent + "    ")
            lines += [f"{indent}    {name} = {self._value(n.inputs[1], names)};", f"{indent}}} else {{",
                      f"{indent}    {name} = {fast};", f"{indent}}}"]
        return lines

    @staticmethod
    def _value(x: Node, names: dict[Node, str]) -> str:
        return names[x] if x in names else c_literal(x.value.reshape(-1)[0], x.dtype)

    def _unroll(self, kl: KernelLayout, indent: str) -> list[str]:
        """The unroll pragma of a contiguous reduction loop over arrays of at most 4-byte elements:
        iterations' loads issued together keep more bytes in flight per thread.  The order of
        operations, and so every result, is that of the loop as written.

        Measured on an H200 (bench/gpu_bench.py, one run each way): sum(exp(a - max(a))) over 1e8
        float32 took 221 us unrolled by 4 and 348 us not; over float64 unrolling made it slower
        (609 against 497 us), as it did elementwise loops (E2 in float32, 514 against 451 us), so
        those are not unrolled."""
        widest = max((np.dtype(node.dtype).itemsize for node, _, _ in kl.accesses[:len(kl.kernel.operands)]
                      if node.ndim), default=8)
        return [f"{indent}#pragma unroll {self.unroll}"] if self.unroll > 1 and widest <= 4 else []

    # -- kernels ----------------------------------------------------------------------------
    def render_kernel(self, kl: KernelLayout) -> str:
        k = kl.kernel
        title = kernel_title(k)
        n_ptr, n_par = arg_words(kl)
        head = [f"/* {k.name}: {title.replace(chr(10), '; ')} */",
                f"struct {k.name}_args {{ char *ptr[{n_ptr}]; int64_t P[{n_par}]; }};"]
        body = self.render_reduce(kl) if k.reduce is not None else self.render_elemwise(kl)
        return "\n".join(head + body)

    def _signature(self, name: str, args: str) -> str:
        return f'extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) {name}(const {args} a)'

    @staticmethod
    def _unravel(index: str, dims: range, indent: str, var: str = "r") -> list[str]:
        """Coordinates ``i<d>`` (d in ``dims``, the last fastest) of flat ``index``."""
        if not dims:
            return []
        lines = [f"{indent}int64_t {var} = {index};"]
        for d in reversed(dims):
            if d == dims[0]:
                lines.append(f"{indent}const int64_t i{d} = {var};")
            else:
                lines.append(f"{indent}const int64_t i{d} = {var} % n{d}; {var} /= n{d};")
        return lines

    def _address(self, kl: KernelLayout, j: int, dims: range, base: str | None = None) -> str:
        """Byte address of access ``j`` at coordinates ``i<d>``, d in ``dims``."""
        pi = kl.accesses[j][2]
        terms = [base or self.ptr(kl, j)] + [f"i{d} * {self.param(kl, pi + d)}" for d in dims]
        return " + ".join(terms)

    def render_elemwise(self, kl: KernelLayout) -> list[str]:
        k = kl.kernel
        nd, n_in = kl.ndim, len(k.operands)
        outs = range(n_in, len(kl.accesses))
        lines = [self._signature(k.name, f"{k.name}_args"), "{"]
        lines += self._dims(kl)
        lines += [f"    const int64_t total = {' * '.join(f'n{d}' for d in range(nd)) or '1'};",
                  "    const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;",
                  "    const int64_t step = (int64_t)gridDim.x * blockDim.x;",
                  f"    if ({self.param(kl, kl.p_flag)}) {{"]
        # Contiguous path: one flat index for every array.
        names: dict[Node, str] = {}
        lines += ["    " + x for x in self._flat_pointers(kl, n_in)]
        lines += [self._load(kl, j, "", "        ", names) for j in range(n_in) if kl.accesses[j][0].ndim == 0]
        lines.append("        for (int64_t i = first; i < total; i += step) {")
        lines += [self._load(kl, j, "flat", "            ", names) for j in range(n_in) if kl.accesses[j][0].ndim]
        self.index = "i"
        lines += self.body(k, names, "            ")
        lines += [f"            p{j}[i] = {names[kl.accesses[j][0]]};" for j in outs]
        lines += ["        }", "        return;", "    }"]
        # Strided path: the flat index as N-d coordinates, byte strides from P.
        names = {}
        lines += [self._load(kl, j, "", "    ", names) for j in range(n_in) if kl.accesses[j][0].ndim == 0]
        lines.append("    for (int64_t i = first; i < total; i += step) {")
        lines += self._unravel("i", range(nd), "        ")
        lines += [self._load(kl, j, self._address(kl, j, range(nd)), "        ", names)
                  for j in range(n_in) if kl.accesses[j][0].ndim]
        lines += self._index_line(kl, "        ")
        lines += self.body(k, names, "        ")
        for j in outs:
            node = kl.accesses[j][0]
            lines.append(f"        *({C_TYPES[node.dtype]} *)({self._address(kl, j, range(nd))}) = {names[node]};")
        lines += ["    }", "}"]
        return lines

    @staticmethod
    def reduction(r: Node) -> tuple[str, str, str, str]:
        """(acc type, identity, combine expression of ``acc`` and ``v``, finalize expression), spelled
        from the reduction's facts in :data:`exprc.ops.REDUCTIONS` (the C renderer reads the same)."""
        red, src = REDUCTIONS[r.op], r.inputs[0].dtype
        acc = red.accumulator(src)
        acc_t = "int" if acc == "bool" else C_TYPES[acc]
        init = red.c_identity(src)
        init = f"({init})" if init.startswith("-") else init  # it is pasted into expressions
        if red.selects:
            nan = "v != v || " if red.tracks_nan(src) else ""  # NaN wins, as in NumPy
            return acc_t, init, f"({nan}v {red.c_operator} acc) ? v : acc", "acc"
        v = "(v != 0)" if red.accumulate == "flag" else "v"
        return acc_t, init, f"acc {red.c_operator} {v}", "acc / (double)red_total" if red.mean else "acc"

    def _store_result(self, kl: KernelLayout, out_t: str, fin: str, indent: str) -> list[str]:
        """Write ``fin`` to the output element of kept index ``kk``."""
        nk = kl.nkept
        out_j = len(kl.accesses) - 1
        lines = [f"{indent}char *o = {self.ptr(kl, out_j)};"]
        if nk:
            pi = kl.accesses[out_j][2]
            lines.append(f"{indent}int64_t rk = kk;")
            for d in reversed(range(nk)):
                lines.append(f"{indent}o += (rk % n{d}) * {self.param(kl, pi + d)}; rk /= n{d};")
        lines.append(f"{indent}*({out_t} *)o = ({out_t})({fin});")
        return lines

    def render_reduce(self, kl: KernelLayout) -> list[str]:
        k, r = kl.kernel, kl.kernel.reduce
        assert r is not None
        nd, nk, n_in = kl.ndim, kl.nkept, len(k.operands)
        acc_t, init, combine, fin = self.reduction(r)
        out_t = C_TYPES[r.dtype]
        src = r.inputs[0]
        n_ptr, n_par = arg_words(kl)
        part = f"a.ptr[{n_ptr - 1}]"

        def value(names: dict[Node, str], indent: str) -> list[str]:
            body = self.body(k, names, indent)
            v = names[src] if src in names else c_literal(src.value.reshape(-1)[0], src.dtype)
            return body + [f"{indent}const {C_TYPES[src.dtype]} v = {v};", f"{indent}acc = op(acc, v);"]

        common = [f"    __shared__ {acc_t} shared[EXPRC_BLOCK / 32];", f"    const {k.name}_op op;"]
        common += self._dims(kl)
        common += [f"    const int64_t kept_total = {' * '.join(f'n{d}' for d in range(nk)) or '1'};",
                   f"    const int64_t red_total = {' * '.join(f'n{d}' for d in range(nk, nd)) or '1'};",
                   f"    const int64_t nchunks = a.P[{n_par - 2}], chunk = a.P[{n_par - 1}];",
                   "    (void)red_total; (void)chunk;"]
        lines = [f"struct {k.name}_op {{",
                 (f"    __device__ __forceinline__ {acc_t} operator()({acc_t} acc, {acc_t} v) const "
                  f"{{ return {combine}; }}"),
                 "};",
                 self._signature(k.name, f"{k.name}_args"), "{", *common,
                 "    for (int64_t blk = blockIdx.x; blk < kept_total * nchunks; blk += gridDim.x) {",
                 "        const int64_t kk = blk / nchunks;",
                 "        const int64_t lo = (blk - kk * nchunks) * chunk;",
                 "        const int64_t hi = exprc_imin(lo + chunk, red_total);",
                 f"        {acc_t} acc = {init};",
                 f"        if ({self.param(kl, kl.p_flag)}) {{"]
        # Contiguous full reduction: flat indices.
        names: dict[Node, str] = {}
        n_flat = sum(1 for j in range(n_in) if kl.accesses[j][0].ndim)
        lines += ["        " + x for x in self._flat_pointers(kl, n_in)[:n_flat]]
        lines += [self._load(kl, j, "", "            ", names) for j in range(n_in) if kl.accesses[j][0].ndim == 0]
        lines += self._unroll(kl, "            ")
        lines.append("            for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {")
        lines += [self._load(kl, j, "flat", "                ", names) for j in range(n_in) if kl.accesses[j][0].ndim]
        self.index = "i"
        lines += value(names, "                ")
        lines += ["            }", "        } else {"]
        # General path: kept coordinates from kk (once per block), reduced ones from i.
        names = {}
        lines += self._unravel("kk", range(nk), "            ", "rk")
        strided = [j for j in range(n_in) if kl.accesses[j][0].ndim and j not in kl.models]
        lines += [f"            const char *b{j} = {self._address(kl, j, range(nk))};" for j in strided]
        lines += [self._load(kl, j, "", "            ", names) for j in range(n_in) if kl.accesses[j][0].ndim == 0]
        lines.append("            for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {")
        lines += self._unravel("i", range(nk, nd), "                ")
        lines += [self._load(kl, j, self._address(kl, j, range(nk, nd), f"b{j}"), "                ", names)
                  for j in strided]
        lines += self._index_line(kl, "                ")
        lines += value(names, "                ")
        lines += ["            }", "        }",
                  f"        acc = exprc_block_reduce<{acc_t}>(acc, {init}, shared, op);",
                  "        if (threadIdx.x == 0) {",
                  "            if (nchunks == 1) {"]
        lines += self._store_result(kl, out_t, fin, "                ")
        lines += ["            } else {",
                  f"                (({acc_t} *){part})[blk] = acc;",
                  "            }", "        }", "    }", "}"]
        # Pass 2: combine each kept index's partials in chunk order.
        lines += [self._signature(f"{k.name}_final", f"{k.name}_args"), "{", *common,
                  f"    const {acc_t} *{self.restrict} part = (const {acc_t} *){part};",
                  "    for (int64_t kk = blockIdx.x; kk < kept_total; kk += gridDim.x) {",
                  f"        {acc_t} acc = {init};",
                  "        for (int64_t c = threadIdx.x; c < nchunks; c += blockDim.x) {",
                  f"            const {acc_t} v = part[kk * nchunks + c];",
                  "            acc = op(acc, v);",
                  "        }",
                  f"        acc = exprc_block_reduce<{acc_t}>(acc, {init}, shared, op);",
                  "        if (threadIdx.x == 0) {"]
        lines += self._store_result(kl, out_t, fin, "            ")
        lines += ["        }", "    }", "}"]
        return lines

    # -- module ---------------------------------------------------------------------------------
    def render(self, program: Program, summary: str = "") -> tuple[str, Layout]:

        lay = self.layout(program)
        kernels = "\n\n".join(self.render_kernel(kl) for kl in lay.kernels)
        src = string.Template(read("cuda", "cuda_module.cu")).substitute(
            version=__version__, summary=comment(summary).replace("\n", "; "), block=self.block,
            prelude=prelude("cuda", "cuda_prelude.cuh") + (random_helpers() if uses_draws(program) else ""),
            kernels=kernels)
        return src, lay


#: The deepest a guard's if-block nests in other guards' blocks (deeper guards stay selects).
MAX_NESTING = 16


def _slow_arms(k: Kernel) -> dict[Node, list[Node]]:
    """For each guard ``where(rare(c), slow, fast)`` of ``k`` computed lazily, the body nodes (in body
    order) that only its slow arm needs: none is a kernel output or read by anything else.  A node's
    owner is the guard whose slow arm is its one reader, or the owner all its readers share; one pass
    over the body backwards (readers come after what they read), so a kernel thousands of nodes deep
    renders in linear time.  A guard owned by another is an arm node of it: its block nests in the
    other's, at most MAX_NESTING deep."""
    body = [n for n in k.body if n is not k.reduce]
    users: dict[Node, list[tuple[Node, int]]] = {}
    for n in k.body:
        for pos, x in enumerate(n.inputs):
            users.setdefault(x, []).append((n, pos))
    pinned = set(k.outputs) | set(k.epilogue)
    owner: dict[Node, Node] = {}
    depth: dict[Node, int] = {}  # the lazy guards: how deep each one's block nests
    for n in reversed(body):
        if n not in pinned:
            got = {u if pos == 1 and u in depth else owner.get(u) for u, pos in users.get(n, ())}
            if len(got) == 1 and None not in got:
                owner[n] = got.pop()
        if n.op == "where" and n.inputs[0].op == "rare":
            d = depth[owner[n]] + 1 if n in owner else 1
            if d <= MAX_NESTING:
                depth[n] = d
    out: dict[Node, list[Node]] = {}
    for n in body:
        if n in owner:
            out.setdefault(owner[n], []).append(n)
    return out


def kernel_names(lay: Layout) -> list[str]:
    """Every ``__global__`` function of a rendered module, in launch order."""
    out = []
    for kl in lay.kernels:
        out.append(kl.kernel.name)
        if kl.kernel.reduce is not None:
            out.append(f"{kl.kernel.name}_final")
    return out


__all__ = ["BLOCK", "CUDARenderer", "arg_words", "kernel_names"]
