"""The C renderer: a lowered :class:`~exprc.fusion.Program` to one C99 file.

Each kernel becomes a function with two paths: a contiguous path (flat loop over ``restrict``
pointers, ``#pragma omp simd``, vector math; not rendered where the planner can never take it)
and a strided path (nested loops over byte strides; covers broadcasting, negative strides, views,
0-d and zero-size arrays).  Sizes and strides are read from the parameter block ``P`` filled by
the runtime, so one binary serves every shape.  ``exprc_run`` calls the kernels in order.  Kernels
hold no OpenMP region: their chunk and row functions run through the prelude's two runners
(``exprc_chunks``, ``exprc_range``), and a mark between kernels lets compile.py build a large
module as several translation units at once.

Nothing the user names reaches the source: arrays are ``ptrs[j]`` (a kernel's own accesses), values
``t<i>``, constants are printed as hex floats, and each kernel's header
comment is the ``pprint`` of what it computes with ``*/`` defused.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from typing import Any

import numpy as np

from exprc._version import __version__
from exprc.backends.c.compile import UNIT
from exprc.backends.layout import KernelLayout, Layout
from exprc.backends.plan import MATMUL_PARAMS
from exprc.backends.templates import prelude, random_helpers, read
from exprc.fusion import EXPENSIVE, Kernel, Program, epilogue_arrays, row_levels, row_reads, single_element
from exprc.graph import Node, rebuild
from exprc.ops import OPS, REDUCTIONS
from exprc.types import C_TYPES

#: Function pointers to cblas_[ds]gemm with 64-bit integers, installed by the runtime: declared in
#: every translation unit (a module may be compiled as several, see compile.py), defined in the
#: one that holds ``exprc_run``.
BLAS_DECLARATIONS = """
/* BLAS (cblas_dgemm/sgemm, ILP64), installed by the runtime through exprc_set_blas. */
typedef void (*exprc_dgemm_t)(int, int, int, int64_t, int64_t, int64_t, double, const double *, int64_t,
                              const double *, int64_t, double, double *, int64_t);
typedef void (*exprc_sgemm_t)(int, int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                              const float *, int64_t, float, float *, int64_t);
extern EXPRC_HIDDEN exprc_dgemm_t exprc_dgemm;
extern EXPRC_HIDDEN exprc_sgemm_t exprc_sgemm;
"""
BLAS_DEFINITIONS = """
EXPRC_HIDDEN exprc_dgemm_t exprc_dgemm = 0;
EXPRC_HIDDEN exprc_sgemm_t exprc_sgemm = 0;
void exprc_set_blas(void *dgemm, void *sgemm)
{
    exprc_dgemm = (exprc_dgemm_t)dgemm;
    exprc_sgemm = (exprc_sgemm_t)sgemm;
}
"""
#: A call into vector math (libmvec) in a rendered loop: its lanes and the scalar libm may differ by an
#: ulp, so a kernel with one runs every element through one vector loop (``_uniform_span``).
_VECTOR_MATH = re.compile(r"\b(?:exp|log|sin|cos|tan|log1p|expm1|tanh|sinh|cosh|asin|acos|atan|asinh|acosh|"
                          r"atanh|exp2|log2|log10|cbrt|erf|erfc|pow|atan2|hypot)f?\s*\(|"
                          r"\bexprc_(?:sigmoid|softplus|logaddexp|log1mexp|erfcx|tanh)")
#: Between two kernels of a module: where compile.py may cut it into translation units.
#: A kernel's entry point (called by ``exprc_run``, possibly from another translation unit).
KERNEL_SIGNATURE = "EXPRC_HIDDEN void {}(char **restrict ptrs, const int64_t *restrict P, int nthreads)"


#: A loop runs on several threads when (elements x estimated cost per element) exceeds this:
#: waking threads costs microseconds on an idle machine and a scheduler slice on a busy one,
#: so a cheap `a*b + c` stays serial up to ~1e5 elements while an exp/sin kernel splits at ~1e4.
PARALLEL_WORK = 1 << 20
#: Cost units per element: transcendental calls are ~20 adds, divisions and roots ~4.


def parallel_threshold(k: Kernel) -> int:
    """Elements above which kernel ``k`` is worth splitting between threads."""
    cost = 2 * (len(k.operands) + len(k.outputs))
    for n in k.body:
        cost += 20 if n.op in EXPENSIVE or OPS[n.op].c_call is not None else (
            4 if n.op in ("truediv", "sqrt", "reciprocal") else 1)
    return max(1 << 12, min(1 << 18, PARALLEL_WORK // max(cost, 1)))




def _closure(roots: list[Node], inputs_of: Any, within: Any) -> set[Node]:
    """The nodes for which ``within`` holds that ``roots`` reach through ``inputs_of`` (iterative: a
    kernel body can be thousands of nodes deep)."""
    seen: set[Node] = set()
    stack = [r for r in roots if within(r)]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack += [x for x in inputs_of(n) if within(x) and x not in seen]
    return seen


def _counted(r: Node) -> Node | None:
    """The flag a sum or mean counts (``sum(flag.astype(float))``, ``sum(where(flag, 1.0, 0.0))``), else
    None."""
    src = r.inputs[0]
    if REDUCTIONS[r.op].combine != "add" or src.dtype not in ("float32", "float64"):
        return None
    if src.op == "cast" and src.inputs[0].dtype == "bool":
        return src.inputs[0]
    if src.op == "where" and src.inputs[0].dtype == "bool" and all(
            c.op == "constant" and c.value.size == 1 and float(c.value.reshape(-1)[0]) == want
            for c, want in zip(src.inputs[1:], (1.0, 0.0))):
        return src.inputs[0]
    return None


def model_operands(k: Kernel) -> set[Node]:
    """The operands of ``k`` it reads only as the shape model of ``c_call`` ops (random draws)."""
    models = {n.inputs[0] for n in k.body if OPS[n.op].c_call is not None}
    if not models:
        return models
    for n in k.body:
        for j, x in enumerate(n.inputs):
            if x in models and not (j == 0 and OPS[n.op].c_call is not None):
                models.discard(x)
    return models & set(k.operands) - set(k.outputs)


def uses_draws(program: Program) -> bool:
    """Whether a kernel of ``program`` has an op rendered by ``c_call`` (so needs random.h)."""
    return any(OPS[n.op].c_call is not None for k in program.kernels for n in k.body)


def c_literal(value: object, dtype: str) -> str:
    """An exact C literal: hex floats round-trip, NaN/Inf and integer extremes handled."""
    if dtype in ("float32", "float64"):
        v = float(value)  # type: ignore[arg-type]
        cast = "(float)" if dtype == "float32" else ""
        if math.isnan(v):
            return f"{cast}NAN"
        if math.isinf(v):
            return f"{cast}INFINITY" if v > 0 else f"(-{cast}INFINITY)"
        text = float(np.float32(v)).hex() if dtype == "float32" else v.hex()
        return f"({text}{'f' if dtype == 'float32' else ''})"
    if dtype == "bool":
        return "1" if value else "0"
    v = int(value)  # type: ignore[call-overload]
    bits = 64 if dtype == "int64" else 32
    if v == -(1 << (bits - 1)):
        return f"(INT{bits}_MIN)"
    return f"INT{bits}_C({v})" if bits == 64 else f"({v})"


_NOT_PRINTABLE = re.compile(r"[^ -~]")


#: A kernel's header comment is a summary of at most this many characters: printed in full, the
#: trees of a 10-step unrolled LSTM's gradient made 6.9 MB of a 7.5 MB source.
TITLE_CHARS = 400


def kernel_title(k: Kernel) -> str:
    """The header comment text of kernel ``k``: what it computes, bounded in size and in work."""
    from exprc.printing import pprint

    text = pprint(k.outputs if k.reduce is None else [k.reduce], max_inline=10_000, max_nodes=16)
    text = text.replace("\n", "; ")
    if len(text) > TITLE_CHARS:
        text = text[:TITLE_CHARS - 4] + " ..."
    return comment(text)


def comment(text: str) -> str:
    """Text safe inside a C block comment."""
    text = _NOT_PRINTABLE.sub(" ", text)  # printable ASCII only (one regex pass: titles are long)
    return text.replace("*/", "* /").replace("/*", "/ *").replace("\\", "/")



def _lanes(acc_t: str, init: str) -> str:
    """The 8 partial sums of a row sum (see CRenderer._eight_lanes), declared."""
    return f"{acc_t} " + ", ".join(f"s{q} = {init}" for q in range(8)) + ";"


def _lanes_add(value: str) -> list[str]:
    """Lines adding ``value`` (``{q}`` for the lane) into lane q, for q = 0..7."""
    adds = [f"s{q} += {value.format(q=q)};" for q in range(8)]
    return [" ".join(adds[:4]), " ".join(adds[4:])]


#: The 8 partial sums, added pairwise into the accumulator.
LANES_SUM = "acc += ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));"


class CRenderer:
    """Renders programs to C.  Subclasses (CUDA) override the loop skeletons only."""

    target = "c"
    restrict = "restrict"
    #: The lane count the padded blocks of a kernel with vector math round to (set per kernel by
    #: render_elemwise: EXPRC_VBLOCK_BYTE where a bool array makes gcc's loop 64 lanes wide).
    vblock = "EXPRC_VBLOCK"

    def __init__(self, precise_math: bool = False, titles: bool = True):
        self.precise_math = precise_math
        #: Kernel header comments say what each kernel computes (``pprint``); without, only its name:
        #: the text a cache key hashes, which comments do not change (see CKernel).
        self.titles = titles
        #: The C expression of the current element's flat (C-order) index, for ops with ``c_call``.
        self.index = "i"
        #: Draws whose bits a batched loop computed (see ``_flat_loop``): the C expression reading them,
        #: with ``{}`` for the batch member (x, w or z).
        self.bits: dict[Node, str] = {}

    # -- expressions ---------------------------------------------------------
    def expr(self, node: Node, args: list[str]) -> str:
        """The C expression computing elementwise ``node`` from operand expressions."""
        op = OPS[node.op]
        if op.c_call is not None:
            return op.c_call(node, args, self.index, self.bits.get(node))
        operand_dtype = node.inputs[0].dtype if node.op != "where" else node.inputs[1].dtype
        if node.op == "cast":
            if node.dtype == "bool":
                return f"({args[0]} != 0)"
            if operand_dtype == "bool" and node.dtype in ("float32", "float64"):
                # a select, not a conversion: gcc does not vectorize uint8 -> double conversions
                one, zero = ("1.0f", "0.0f") if node.dtype == "float32" else ("1.0", "0.0")
                return f"({args[0]} ? {one} : {zero})"
            return f"(({C_TYPES[node.dtype]}){args[0]})"
        if operand_dtype == "bool":
            special = {"add": "({0} | {1})", "mul": "({0} & {1})", "maximum": "({0} | {1})",
                       "minimum": "({0} & {1})", "abs": "({0})"}
            tmpl = special.get(node.op) or op.c_int or op.c
        elif operand_dtype in ("int32", "int64"):
            tmpl = op.c_int or op.c
        else:
            tmpl = op.c
        if tmpl is None:
            raise NotImplementedError(f"no C expression for {node.op} on {operand_dtype}")
        return tmpl.format(*args, f="f" if operand_dtype == "float32" else "", T=C_TYPES[operand_dtype])

    # -- layout ---------------------------------------------------------------
    def layout(self, program: Program) -> Layout:
        slots: list[Node] = []
        slot_of: dict[Node, int] = {}

        def slot(n: Node) -> int:
            if n not in slot_of:
                slot_of[n] = len(slots)
                slots.append(n)
            return slot_of[n]

        for x in program.inputs:
            slot(x)
        for o in program.outputs:
            slot(o)
        p = 0
        kls = []
        for k in program.kernels:
            if k.matmul is not None:
                # P: flag, MATMUL_PARAMS entries (plan.matmul_params), 3 byte strides per matrix.
                kl = KernelLayout(k, p, 2, 2, (0, 1))
                p += 1 + MATMUL_PARAMS
                for n in [*k.operands, *k.outputs]:
                    kl.accesses.append((n, slot(n), p))
                    p += 3
                kls.append(kl)
                continue
            if k.reduce is not None:
                src = k.reduce.inputs[0]
                axes = k.reduce.arg("axis")
                nd = src.ndim
                kept = tuple(d for d in range(nd) if d not in axes)
                perm = kept + tuple(axes)
                nkept = len(kept)
            elif k.rows:
                nd, perm, nkept = 2, (0, 1), 2
            else:
                nd = k.outputs[0].ndim
                perm = tuple(range(nd))
                nkept = nd
            kl = KernelLayout(k, p, nd, nkept, perm)
            p += 1 + nd
            for n in k.operands:
                kl.accesses.append((n, slot(n), p))
                p += nd
            for n in k.outputs:
                kl.accesses.append((n, slot(n), p))
                p += nd
            models = model_operands(k)
            kl.models = frozenset(j for j, (n, _, _) in enumerate(kl.accesses[:len(k.operands)]) if n in models)
            kl.draws = tuple(n for n in k.body if OPS[n.op].c_call is not None)
            kls.append(kl)
        return Layout(slots, kls, p)

    # -- kernels ----------------------------------------------------------------
    def body(self, k: Kernel, names: dict[Node, str], indent: str) -> list[str]:
        """Statements computing every elementwise node of the kernel into locals."""
        after = set(k.epilogue)
        return self.statements([n for n in k.body if n is not k.reduce and n not in after], names, indent)

    def statements(self, nodes: list[Node], names: dict[Node, str], indent: str) -> list[str]:
        """Statements computing elementwise ``nodes`` (in order) into locals named in ``names``."""
        lines = []
        for n in nodes:
            if n.op == "sum_to":  # (in a row kernel or an epilogue: the identity the planner checked)
                g = n.inputs[0]
                names[n] = names[g] if g in names else c_literal(g.value.reshape(-1)[0], g.dtype)
                continue
            args = [("0" if j == 0 and OPS[n.op].c_call is not None  # a draw's shape model: never read
                     else names[i] if i in names else c_literal(i.value.reshape(-1)[0], i.dtype))
                    for j, i in enumerate(n.inputs)]
            names[n] = f"t{len(names)}"
            lines.append(f"{indent}const {C_TYPES[n.dtype]} {names[n]} = {self.expr(n, args)};")
        return lines

    def render_kernel(self, kl: KernelLayout) -> str:
        k = kl.kernel
        head = [f"/* {k.name}: {kernel_title(k)} */" if self.titles else f"/* {k.name} */"]
        if k.matmul is not None:
            flat, main = [], self.render_matmul(kl)
        elif k.rows:
            flat, main = self.render_rows(kl)
        else:
            if any(n.op == "sum_to" and n not in k.epilogue for n in k.body):  # (statements(): the identity)
                raise AssertionError(f"{k.name}: a sum_to outside a row kernel or an epilogue")
            flat, main = self.render_reduce(kl) if k.reduce is not None else self.render_elemwise(kl)
        return "\n".join([*head, *flat, KERNEL_SIGNATURE.format(k.name), "{", *main, "}"])

    def _batchable(self, kl: KernelLayout, names: dict[Node, str]) -> list:
        """(draw, (seed, ctr) C expressions, batch kind) of the kernel's draws that a loop can fill in
        batches: those whose key is loaded before the loop (``names``) or constant."""
        from exprc.ops.random import batch_kind

        out = []
        for n in kl.draws:
            key = [names.get(x) or (c_literal(x.value.reshape(-1)[0], x.dtype) if x.op == "constant" else None)
                   for x in n.inputs[1:3]]
            if batch_kind(n) is not None and None not in key:
                out.append((n, key, batch_kind(n)[0]))
        return out

    def _may_batch(self, kl: KernelLayout) -> bool:
        """Whether a strided loop can fill a draw in batches: its key is among the kernel's operands
        (0-d: loaded once, before the batches) or constant."""
        return bool(self._batchable(kl, dict.fromkeys(kl.kernel.operands, "key")))

    def _flat_loop(self, kl: KernelLayout, names: dict[Node, str], clause: str) -> tuple[list[str], list[str]]:
        """The opening and closing lines of a contiguous path's element loop ``i`` in [lo, hi).

        A kernel that draws random numbers (with its key loaded before the loop) runs it in
        batches: before each EXPRC_RBATCH elements, ``exprc_rfill`` computes every draw's bits in a
        loop of its own (hand-vectorized Philox), and the element loop reads them (``self.bits``)."""
        batched = self._batchable(kl, names)
        if not batched:
            return [f"    #pragma omp simd{clause}", "    for (int64_t i = lo; i < hi; i++) {"], ["    }"]
        head = [f"    exprc_rbatch {', '.join(f'rb{j}' for j in range(len(batched)))};",
                "    for (int64_t b0 = lo; b0 < hi; b0 += EXPRC_RBATCH) {",
                "        const int64_t b1 = b0 + EXPRC_RBATCH < hi ? b0 + EXPRC_RBATCH : hi;"]
        self.bits = {}
        for j, (n, (seed, ctr), kind) in enumerate(batched):
            head.append(f"        exprc_rfill(&rb{j}, {seed}, {ctr}, b0, b1 - b0, {n.arg('draw')}u, {kind});")
            self.bits[n] = f"rb{j}.u.{{}}[rb{j}.off + (i - b0)]"
        head += [f"    #pragma omp simd{clause}", "    for (int64_t i = b0; i < b1; i++) {"]
        return head, ["    }", "    }"]

    def _index_line(self, kl: KernelLayout, indent: str) -> list[str]:
        """In a loop nest over ``i<d>``: the element's flat C-order index as ``ridx``, for kernels
        with ops that read it (nothing otherwise)."""
        if not kl.draws:
            return []
        pos = [kl.perm.index(d) for d in range(kl.ndim)]
        expr = "0"
        for d, p in enumerate(pos):
            expr = f"i{p}" if d == 0 else f"({expr}) * n{p} + i{p}"
        self.index = "ridx"
        return [f"{indent}const int64_t ridx = {expr};"]

    # -- where arrays and parameters live (the CUDA renderer passes them differently) --
    def ptr(self, kl: KernelLayout, j: int) -> str:
        """The expression for the start of access ``j``'s array (a ``char *``)."""
        return f"ptrs[{j}]"

    def param(self, kl: KernelLayout, i: int) -> str:
        """The expression for entry ``i`` of the parameter block ``P``."""
        return f"P[{i - kl.p_flag}]"

    def _dims(self, kl: KernelLayout) -> list[str]:
        return [f"    const int64_t n{d} = {self.param(kl, kl.p_dims + d)};" for d in range(kl.ndim)]

    def _nest(self, kl: KernelLayout, levels: range, indent: str, parallel: str | None,
              addr: dict[int, str], ranged: bool = False) -> tuple[list[str], str]:
        """Open one loop per iteration dim in ``levels``; ``addr[j]`` tracks the byte
        address of access ``j`` (``q<j>_<d>`` = previous address + i<d> * stride).  ``ranged``: the
        outer loop runs over [lo, hi) (in a range function, see :meth:`_rows`)."""
        lines = []
        for d in levels:
            if parallel and d == levels[0]:
                lines.append(f"{indent}#pragma omp parallel for if({parallel} > {parallel_threshold(kl.kernel)}) "
                             "num_threads(nthreads) schedule(static)")
            lo, hi = ("lo", "hi") if ranged and d == levels[0] else ("0", f"n{d}")
            lines.append(f"{indent}for (int64_t i{d} = {lo}; i{d} < {hi}; i{d}++) {{")
            indent += "    "
            lines += self._advance(kl, d, indent, addr)
        return lines, indent

    def _advance(self, kl: KernelLayout, d: int, indent: str, addr: dict[int, str]) -> list[str]:
        """Inside the loop over ``i<d>``: each tracked address moved to the loop's element."""
        lines = []
        for j, (_, _, pi) in enumerate(kl.accesses):
            if j in addr:
                lines.append(f"{indent}char *q{j}_{d} = {addr[j]} + i{d} * {self.param(kl, pi + d)};")
                addr[j] = f"q{j}_{d}"
        return lines

    def _close(self, levels: range, indent: str) -> tuple[list[str], str]:
        lines = []
        for _ in levels:
            indent = indent[:-4]
            lines.append(f"{indent}}}")
        return lines, indent

    def _load(self, kl: KernelLayout, j: int, where: str, indent: str, names: dict[Node, str]) -> str:
        node = kl.accesses[j][0]
        ct = C_TYPES[node.dtype]
        if j in kl.models:
            names[node] = "0"
            return f"{indent}/* a{j}: read for its shape only */"
        names[node] = f"a{j}"
        if where == "flat" and node.ndim and not single_element(node):
            return f"{indent}const {ct} a{j} = p{j}[i];"
        src = self.ptr(kl, j) if (node.ndim == 0 or where == "flat") else where
        return f"{indent}const {ct} a{j} = *(const {ct} *)({src});"

    def _flat_pointers(self, kl: KernelLayout, n_in: int) -> list[str]:
        """Typed restrict pointers for the contiguous path, hoisted out of the loop."""
        lines = []
        for j, (node, _, _) in enumerate(kl.accesses):
            ct = C_TYPES[node.dtype]
            if j in kl.models:
                continue
            if j < n_in and node.ndim:
                lines.append(f"    const {ct} *{self.restrict} p{j} = (const {ct} *){self.ptr(kl, j)};")
            elif j >= n_in:
                lines.append(f"    {ct} *{self.restrict} p{j} = ({ct} *){self.ptr(kl, j)};")
        return lines

    def _chunks(self, kl: KernelLayout, total: str, call: str, part: str = "0, 0") -> tuple[list[str], list[str]]:
        """(the chunk function running ``call`` on chunk ``c`` = [lo, hi), the line running it on every
        fixed chunk of [0, total)).  The chunks depend on ``total`` alone (c_prelude.h), so which
        elements share a SIMD loop, and the order a reduction's partials are combined in, do not
        depend on the thread count: results are the same bits with 1 or 16 threads."""
        name = f"{kl.kernel.name}_chunk"
        fn = [f"EXPRC_CHUNK({name})", "{", "    (void)P; (void)c; (void)part; (void)pnan;", f"    {call}", "}"]
        run = f"exprc_chunks({name}, ptrs, P, {total}, {parallel_threshold(kl.kernel)}, nthreads, {part});"
        return fn, [run]

    def _rows(self, kl: KernelLayout, lines: list[str], total: str, head: list[str],
              count: str = "n0", name: str | None = None) -> tuple[list[str], list[str]]:
        """(a range function running the loop nest ``lines``, whose outer loop is over [lo, hi), the
        line running it over [0, count) (the outer dimension), split between threads when ``total``
        exceeds the kernel's threshold).  ``head`` declares what the nest reads besides the sizes."""
        name = name or f"{kl.kernel.name}_rows"
        fn = [f"EXPRC_RANGE({name})", "{", *self._dims(kl), *head, *lines, "}"]
        return fn, [f"    exprc_range({name}, ptrs, P, {count}, {total} > {parallel_threshold(kl.kernel)}, nthreads);"]

    def render_elemwise(self, kl: KernelLayout) -> tuple[list[str], list[str]]:
        k = kl.kernel
        nd, n_in = kl.ndim, len(k.operands)
        # Contiguous path: a flat loop over restrict pointers that gcc vectorizes
        # (libmvec for transcendentals); 0-d operands are loaded once.
        main = self._dims(kl)
        main.append(f"    const int64_t total = {' * '.join(f'n{d}' for d in range(nd)) or '1'};")
        flat: list[str] = []
        whole = self._flat_possible(kl)
        # (a kernel with vector math and no draws gets them even without a contiguous path: its strided
        # path runs through them, see _uniform_span)
        mvec = bool(nd) and not kl.draws and not self.precise_math
        uniform = False
        flat_call = ""
        # (a 1-byte array, a bool, makes gcc run the flat loop 64 lanes at a time on AVX-512: blocks of 32
        # would send half of each to the scalar epilogue, whose bits differ by an ulp now and then)
        bytewide = any(np.dtype(node.dtype).itemsize == 1 for node, _, _ in kl.accesses if node.ndim)
        self.vblock = "EXPRC_VBLOCK_BYTE" if bytewide else "EXPRC_VBLOCK"
        if whole or mvec:
            functions, call = self._flat_functions(kl)
            flat_call = call
            uniform = mvec and _VECTOR_MATH.search("\n".join(functions)) is not None
            flat, call = self._uniform_span(kl, functions, call) if uniform else (functions if whole else [], call)
        # Rows of a matrix loop that are contiguous (flag 2: row slices; a row broadcast along the rows,
        # x @ W + b under a tanh) run the flat loop once per row.  Only where the flat loop exists anyway
        # (rendering one just for rows cost a softmax step's cold compile 0.2 s): a contiguous path, or
        # vector math (whose flat loop the strided path runs too); for the latter only rows of 64 and
        # more, shorter ones go to the strided path, which packs several rows into one block.
        kl.rowflat = nd == 2 and not kl.draws and (whole or uniform)
        if whole or kl.rowflat:
            chunk, run = self._chunks(kl, "total", call)
            flat = flat + chunk
        if kl.rowflat:
            long_rows = "" if whole else " && n1 >= 2 * EXPRC_VBLOCK"
            main += [f"    if ({self.param(kl, kl.p_flag)} == 2{long_rows}) {{",
                     (f"        exprc_rowflat({k.name}_chunk, ptrs, P, {len(kl.accesses)}, n0, n1, "
                      f"total > {parallel_threshold(k)}, nthreads);"), "        return;", "    }"]
        if whole:
            main += [f"    if ({self.param(kl, kl.p_flag)}) {{", *["        " + x for x in run], "        return;",
                     "    }"]
        # Strided path: broadcasting, views, negative strides, 0-d.
        names = {}
        addr = {j: self.ptr(kl, j) for j, (node, s, _) in enumerate(kl.accesses) if node.ndim or j >= n_in}
        if nd and self._may_batch(kl):
            main += self._strided_batched(kl, addr)
            return flat, main
        if uniform:
            lines = (self._short_rows(kl, flat_call) if nd == 2 else []) + self._strided_blocks(kl, addr)
            rows, run = self._rows(kl, lines, "total", [])
            return flat + rows, main + run
        nest, indent = self._nest(kl, range(nd), "    ", None, addr, ranged=True)
        nest += [self._load(kl, j, addr.get(j, ""), indent, names) for j in range(n_in)]
        nest += self._index_line(kl, indent)
        nest += self.body(k, names, indent)
        for j, (node, s, _) in enumerate(kl.accesses[n_in:], start=n_in):
            nest.append(f"{indent}*({C_TYPES[node.dtype]} *)({addr[j]}) = {names[node]};")
        nest += self._close(range(nd), indent)[0]
        if not nd:
            return flat, main + nest
        rows, run = self._rows(kl, nest, "total", [])
        return flat + rows, main + run

    def _uniform_span(self, kl: KernelLayout, functions: list[str], call: str) -> tuple[list[str], str]:
        """(the functions, the call running [lo, hi)) of a kernel whose body calls vector math, so
        that every element goes through the same machine code wherever it lies.

        gcc vectorizes the flat loop with libmvec calls but finishes a count that is not a multiple
        of the vector width with scalar libm calls, and the two differ by an ulp now and then: an
        element's bits would depend on its position (a Dask chunk boundary, ``f(a)[:n]`` against
        ``f(a[:n])``, a strided view against a copy).  So the flat functions are not inlined (one
        copy of their code), run only on counts that are multiples of EXPRC_VBLOCK (a multiple of
        every vector width), and the rest goes through them on a padded block (``_block``), as does
        the strided path, a block of the innermost axis at a time."""
        k = kl.kernel
        functions = [x.replace("static inline ", "static __attribute__((noinline)) ", 1)
                     if x.startswith("static inline ") else x for x in functions]
        n_acc = len(kl.accesses)
        n_in = len(k.operands)
        # (a single element operand is read as a scalar, like a 0-d one: never copied nor offset)
        arrays = [j for j, (node, _, _) in enumerate(kl.accesses)
                  if node.ndim and j not in kl.models and not (j < n_in and single_element(node))]
        block = [f"static void {k.name}_block(char **restrict base, const int64_t *restrict st, int64_t m)", "{"]
        for j in arrays:
            block.append(f"    {C_TYPES[kl.accesses[j][0].dtype]} b{j}[{self.vblock}] __attribute__((aligned(64)));")
        q = ", ".join(f"(char *)b{j}" if j in arrays else f"base[{j}]" for j in range(n_acc))
        block += [f"    char *q[{n_acc}] = {{{q}}};", "    (void)st;"]
        for j in arrays:
            if j < n_in:
                ct = C_TYPES[kl.accesses[j][0].dtype]
                # (the padding repeats the first element: values the kernel computes anyway)
                block.append(f"    for (int64_t i = 0; i < {self.vblock}; i++) b{j}[i] = "
                             f"*(const {ct} *)(base[{j}] + (i < m ? i : 0) * st[{j}]);")
        block.append("    " + call.replace("(ptrs, lo, hi)", f"(q, 0, {self.vblock})"))
        for j in arrays:
            if j >= n_in:
                ct = C_TYPES[kl.accesses[j][0].dtype]
                block.append(f"    for (int64_t i = 0; i < m; i++) *({ct} *)(base[{j}] + i * st[{j}]) = b{j}[i];")
        block.append("}")
        sizes = [np.dtype(node.dtype).itemsize if j in arrays else 0 for j, (node, _, _) in enumerate(kl.accesses)]
        span = [f"__attribute__((unused)) static void {k.name}_span(char **restrict ptrs, int64_t lo, int64_t hi)", "{",
                f"    const int64_t mid = hi - (hi - lo) % {self.vblock};",
                "    if (mid > lo)", "        " + call.replace("(ptrs, lo, hi)", "(ptrs, lo, mid)"),
                "    if (mid < hi) {",
                "        char *base[{}] = {{{}}};".format(
                    n_acc, ", ".join(f"ptrs[{j}] + mid * {sizes[j]}" if sizes[j] else f"ptrs[{j}]"
                                     for j in range(n_acc))),
                f"        const int64_t st[{n_acc}] = {{{', '.join(map(str, sizes))}}};",
                f"        {k.name}_block(base, st, hi - mid);", "    }", "}"]
        return functions + block + span, f"{k.name}_span(ptrs, lo, hi);"

    def _short_rows(self, kl: KernelLayout, call: str) -> list[str]:
        """The strided path of a matrix kernel with vector math, for rows of up to EXPRC_RCHUNK / 2
        (``exp(z - max(z, axis=1))`` over a classifier's 10 logits): several rows are copied into one
        block of buffers for one call of the flat function, padded to a multiple of EXPRC_VBLOCK, where a
        block a row padded each row to EXPRC_VBLOCK lanes (3.2 times the work for rows of 10).  Every
        element still goes through the flat loop's vector body (see :meth:`_uniform_span`)."""
        k = kl.kernel
        n_acc, n_in = len(kl.accesses), len(k.operands)
        arrays = [j for j, (node, _, _) in enumerate(kl.accesses) if node.ndim and j not in kl.models]
        ins, outs = [j for j in arrays if j < n_in], [j for j in arrays if j >= n_in]
        ct = {j: C_TYPES[kl.accesses[j][0].dtype] for j in arrays}

        def each(indent: str, which: list[int], stmt: str) -> list[str]:
            out = ["for (int64_t i0 = r0; i0 < r0 + rn; i0++) {"]
            out += self._advance(kl, 0, "    ", {j: self.ptr(kl, j) for j in which})
            out += ["    for (int64_t i1 = 0; i1 < n1; i1++, b++) {"]
            out += self._advance(kl, 1, "        ", {j: f"q{j}_0" for j in which})
            out += [f"        {stmt.format(j=j, t=ct[j])}" for j in which] + ["    }", "}"]
            return [indent + x for x in out]

        q = ", ".join(f"(char *)b{j}" if j in arrays else self.ptr(kl, j) for j in range(n_acc))
        return ["    if (n1 > 0 && n1 <= EXPRC_RCHUNK / 2) {",
                *[f"        {ct[j]} b{j}[EXPRC_RCHUNK] __attribute__((aligned(64)));" for j in arrays],
                f"        char *q[{n_acc}] = {{{q}}};",
                "        const int64_t R = EXPRC_RCHUNK / n1;",
                "        for (int64_t r0 = lo; r0 < hi; r0 += R) {",
                "            const int64_t rn = hi - r0 < R ? hi - r0 : R;",
                "            int64_t b = 0;",
                *each("            ", ins, "b{j}[b] = *(const {t} *)(q{j}_1);"),
                f"            const int64_t w = (b + {self.vblock} - 1) / {self.vblock} * {self.vblock};",
                "            for (int64_t p = b; p < w; p++) {",  # (the padding repeats the first element)
                *[f"                b{j}[p] = b{j}[0];" for j in ins], "            }",
                "            " + call.replace("(ptrs, lo, hi)", "(q, 0, w)"),
                "            b = 0;",
                *each("            ", outs, "*({t} *)(q{j}_1) = b{j}[b];"),
                "        }", "        return;", "    }"]

    def _strided_blocks(self, kl: KernelLayout, addr: dict[int, str]) -> list[str]:
        """The strided path of a kernel with vector math (see :meth:`_uniform_span`): the loop nest
        over every axis but the last, and along the last, blocks of EXPRC_VBLOCK elements gathered
        into ``_block``'s buffers."""
        k = kl.kernel
        nd, last, n_acc = kl.ndim, kl.ndim - 1, len(kl.accesses)
        lines, indent = self._nest(kl, range(last), "    ", None, addr, ranged=True)
        lo, hi = ("lo", "hi") if nd == 1 else ("0", f"n{last}")
        base = ", ".join(f"{addr[j]} + c * {self.param(kl, kl.accesses[j][2] + last)}"
                         if j in addr and kl.accesses[j][0].ndim else self.ptr(kl, j) for j in range(n_acc))
        st = ", ".join(self.param(kl, kl.accesses[j][2] + last) if j in addr and kl.accesses[j][0].ndim else "0"
                       for j in range(n_acc))
        lines += [f"{indent}for (int64_t c = {lo}; c < {hi}; c += {self.vblock}) {{",
                  f"{indent}    char *base[{n_acc}] = {{{base}}};",
                  f"{indent}    const int64_t st[{n_acc}] = {{{st}}};",
                  f"{indent}    {k.name}_block(base, st, ({hi} - c) < {self.vblock} ? ({hi} - c) : {self.vblock});",
                  f"{indent}}}"]
        lines += self._close(range(last), indent)[0]
        return lines

    def _flat_possible(self, kl: KernelLayout) -> bool:
        """Whether kernel ``kl`` gets a contiguous path: the planner sets its flag only for a
        reduction that keeps no axis and for an elementwise loop whose every array operand has the
        loop's shape.  An operand of lower ndim never has it; one with a static size of 1 where the
        loop's size is not known to be 1 (a keepdims row statistic: ``z - max(z, axis=1)``) has it
        only in the degenerate case of a loop of that size 1, which the strided path also computes.
        A path that is dead or nearly so is not rendered: it was a third of gcc's time on a
        softmax training step.  A single element (static shape all 1s: a vector's keepdims max) is
        read as a scalar and keeps the path, as the planner keeps its flag (without it
        exp(v - max(v, keepdims=True)) ran 32-element copies through a strided loop: 2.8x slower)."""
        k = kl.kernel
        if k.reduce is not None:
            return kl.nkept == 0
        shape = k.outputs[0].type.shape
        for j, (node, _, _) in enumerate(kl.accesses[:len(k.operands)]):
            if node.ndim == 0 or j in kl.models or single_element(node):  # (read as a scalar there)
                continue
            if node.ndim != len(shape) or any(a == 1 and b != 1 for a, b in zip(node.type.shape, shape)):
                return False
        return True

    def _flat_functions(self, kl: KernelLayout) -> tuple[list[str], str]:
        """(the contiguous path's functions, the call running them on [lo, hi)) of an elementwise
        kernel: a flat loop over restrict pointers that gcc vectorizes (libmvec for
        transcendentals); 0-d operands are loaded once."""
        k = kl.kernel
        n_in = len(k.operands)
        names: dict[Node, str] = {}
        flat = [f"static inline void {k.name}_flat(char **restrict ptrs, int64_t lo, int64_t hi)", "{"]
        flat += self._flat_pointers(kl, n_in)
        flat += [self._load(kl, j, "", "    ", names) for j in range(n_in) if kl.accesses[j][0].ndim == 0]
        head, tail = self._flat_loop(kl, names, "")
        flat += head
        flat += [self._load(kl, j, "flat", "        ", names) for j in range(n_in) if kl.accesses[j][0].ndim]
        self.index = "i"
        flat += self.body(k, names, "        ")
        for j, (node, _, _) in enumerate(kl.accesses[n_in:], start=n_in):
            flat.append(f"        p{j}[i] = {names[node]};")
        self.bits = {}
        flat += [*tail, "}"]
        call = f"{k.name}_flat(ptrs, lo, hi);"
        guards = [n for n in k.body if n.op == "where" and n.inputs[0].op == "rare"] if not kl.draws else []
        if guards:
            flat += self._guarded_flat(kl, guards)
            # Block by block, not a scan of the whole chunk first: the fast loop then reads the block the
            # scan brought into L1 (a chunk of 8192 doubles is twice L1: swish's guarded loop took 14% more
            # than the formula alone after a scan of its chunk, 7% block by block).
            flat += [f"static inline void {k.name}_flat_guarded(char **restrict ptrs, int64_t lo, int64_t hi)", "{",
                     "    for (int64_t gs = lo; gs < hi; gs += EXPRC_GBLOCK) {",
                     "        const int64_t ge = hi - gs > EXPRC_GBLOCK ? gs + EXPRC_GBLOCK : hi;",
                     f"        if ({k.name}_flat_rare(ptrs, gs, ge))",
                     f"            {k.name}_flat(ptrs, gs, ge);",
                     "        else",
                     f"            {k.name}_flat_fast(ptrs, gs, ge);",
                     "    }", "}"]
            call = f"{k.name}_flat_guarded(ptrs, lo, hi);"
        return flat, call

    def _guarded_flat(self, kl: KernelLayout, guards: list[Node]) -> list[str]:
        """Two more contiguous loops for a kernel with guards ``where(rare(c), slow, fast)``:
        ``_flat_rare`` computes only the rare conditions and tells whether any holds in [lo, hi);
        ``_flat_fast`` computes the kernel with every guard replaced by its fast branch.  Each block of
        EXPRC_GBLOCK elements runs the fast loop when no condition holds in it and the full loop
        otherwise (``_flat_guarded``): the same values as the full loop everywhere (a guard whose
        condition is false selects its fast branch), without the slow branches' cost in the common
        case.  (A scan of the whole chunk first, then the fast loop over it, read the chunk twice from
        L2: swish 5% slower; E2 the same either way.)"""
        k = kl.kernel
        n_in = len(k.operands)
        inside = set(k.body)

        def needed(roots: list[Node], bypass: bool) -> set[Node]:
            return _closure(roots, lambda n: (n.inputs[2],) if bypass and n in guard_set else n.inputs,
                            inside.__contains__)

        guard_set = set(guards)
        conds = [g.inputs[0] for g in guards]
        out: list[str] = []
        for suffix, keep, alias in (("rare", needed(conds, False), {}),
                                    ("fast", needed(list(k.outputs), True), {g: g.inputs[2] for g in guards})):
            names: dict[Node, str] = {}
            ret = "int" if suffix == "rare" else "void"
            lines = [f"static inline {ret} {k.name}_flat_{suffix}(char **restrict ptrs, int64_t lo, int64_t hi)", "{"]
            lines += self._flat_pointers(kl, n_in) if suffix == "fast" else self._flat_pointers(kl, n_in)[:n_in]
            lines += [self._load(kl, j, "", "    ", names) for j in range(n_in) if kl.accesses[j][0].ndim == 0]
            if suffix == "rare":
                lines += ["    int any = 0;", "    #pragma omp simd reduction(|:any)"]
            else:
                lines.append("    #pragma omp simd")
            lines.append("    for (int64_t i = lo; i < hi; i++) {")
            lines += [self._load(kl, j, "flat", "        ", names) for j in range(n_in) if kl.accesses[j][0].ndim]
            self.index = "i"
            for n in k.body:
                if n not in keep:
                    continue
                if n in alias:
                    names[n] = names[alias[n]] if alias[n] in names else c_literal(
                        alias[n].value.reshape(-1)[0], alias[n].dtype)
                    continue
                lines += self.statements([n], names, "        ")
            if suffix == "rare":
                lines += [f"        any |= {names[c]};" for c in dict.fromkeys(conds)]
                lines += ["    }", "    return any;", "}"]
            else:
                lines += [f"        p{j}[i] = {names[node]};" for j, (node, _, _) in
                          enumerate(kl.accesses[n_in:], start=n_in)]
                lines += ["    }", "}"]
            out += lines
        return out

    def _strided_batched(self, kl: KernelLayout, addr: dict[int, str]) -> list[str]:
        """The strided path of an elementwise kernel that draws: the innermost axis (the last, whose
        elements have consecutive flat indices) runs in batches of EXPRC_RBATCH, each draw's bits
        filled by ``exprc_rfill`` before the batch, as on the contiguous path (a dense layer's
        ``relu(x @ W + b) * mask`` reads ``b`` broadcast, so it takes this path)."""
        k = kl.kernel
        nd, n_in, last = kl.ndim, len(k.operands), kl.ndim - 1
        names: dict[Node, str] = {}
        nest, indent = self._nest(kl, range(last), "    ", "total", addr)
        lines = list(nest)
        lines += [self._load(kl, j, "", indent, names) for j in range(n_in) if kl.accesses[j][0].ndim == 0]
        batched = self._batchable(kl, names)
        row = "0"
        for d in range(last):
            row = f"i{d}" if d == 0 else f"({row}) * n{d} + i{d}"
        if nd == 1:
            lines.append(f"{indent}#pragma omp parallel for if(total > {parallel_threshold(k)}) num_threads(nthreads) "
                         "schedule(static)")
        lines += [f"{indent}for (int64_t c{last} = 0; c{last} < n{last}; c{last} += EXPRC_RBATCH) {{",
                  f"{indent}    const int64_t e{last} = c{last} + EXPRC_RBATCH < n{last} ? c{last} + EXPRC_RBATCH : n{last};",
                  f"{indent}    const int64_t rrow = ({row}) * n{last} + c{last};",
                  f"{indent}    exprc_rbatch {', '.join(f'rb{j}' for j in range(len(batched)))};"]
        self.bits = {}
        for j, (n, (seed, ctr), kind) in enumerate(batched):
            lines.append(f"{indent}    exprc_rfill(&rb{j}, {seed}, {ctr}, rrow, e{last} - c{last}, {n.arg('draw')}u, {kind});")
            self.bits[n] = f"rb{j}.u.{{}}[rb{j}.off + (i{last} - c{last})]"
        indent += "    "
        lines.append(f"{indent}for (int64_t i{last} = c{last}; i{last} < e{last}; i{last}++) {{")
        indent += "    "
        lines += self._advance(kl, last, indent, addr)
        lines += [self._load(kl, j, addr[j], indent, names) for j in range(n_in) if kl.accesses[j][0].ndim]
        lines += self._index_line(kl, indent)
        lines += self.body(k, names, indent)
        for j, (node, s, _) in enumerate(kl.accesses[n_in:], start=n_in):
            lines.append(f"{indent}*({C_TYPES[node.dtype]} *)({addr[j]}) = {names[node]};")
        self.bits = {}
        lines += [f"{indent[:-4]}}}", f"{indent[:-8]}}}"]
        lines += self._close(range(last), indent[:-8])[0]
        return lines

    def _accumulator(self, r: Node) -> tuple[str, str, str, str, str]:
        """(acc C type, init, combine statement on ``v``, OpenMP reduction clause, finalize expr),
        spelled from the reduction's facts in :data:`exprc.ops.REDUCTIONS`."""
        red, src = REDUCTIONS[r.op], r.inputs[0].dtype
        acc_t = "int" if red.accumulate == "flag" else C_TYPES[red.accumulator(src)]
        init = red.c_identity(src)
        if red.selects:
            step = f"acc = v {red.c_operator} acc ? v : acc;"
            if red.tracks_nan(src):  # a comparison drops NaN: carry a flag, NaN wins as in NumPy
                return (acc_t, init, step + " nanf |= (v != v);", f"reduction({red.omp}:acc) reduction(|:nanf)",
                        "(nanf ? NAN : acc)")
            return acc_t, init, step, f"reduction({red.omp}:acc)", "acc"
        fin = "acc / (double)red_total" if red.mean else "acc"
        if _counted(r) is not None:
            # A count (the stable logsumexp's count of maxima): v is 0 or 1, so an integer counter gives
            # the same bits in any order, and the loop adds the comparison's flag itself (render_reduce's
            # value), not the 1.0-or-0.0 select that gcc compiled into two branches per element there.
            return "int64_t", "0", "acc += (v != 0);", "reduction(+:acc)", f"(double){fin}"
        v = "(v != 0)" if red.accumulate == "flag" else "v"
        return acc_t, init, f"acc {red.c_operator}= {v};", f"reduction({red.omp}:acc)", fin

    def render_reduce(self, kl: KernelLayout) -> tuple[list[str], list[str]]:
        k, r = kl.kernel, kl.kernel.reduce
        nd, nk, n_in = kl.ndim, kl.nkept, len(k.operands)
        acc_t, init, combine, clause, fin = self._accumulator(r)
        out_t = C_TYPES[r.dtype]
        src = r.inputs[0]
        outs = list(range(n_in, len(kl.accesses)))
        late = self._epilogue_operands(kl)  # (read only where a result is stored)
        loaded = [j for j in range(n_in) if j not in late]

        counted = _counted(r)

        def value(names: dict[Node, str], indent: str) -> list[str]:
            body = self.body(k, names, indent)
            if counted is not None and counted in names:  # (the flag, not its cast: see _accumulator)
                return body + [f"{indent}const uint8_t v = {names[counted]};", f"{indent}{combine}"]
            v = names[src] if src in names else c_literal(src.value.reshape(-1)[0], src.dtype)
            return body + [f"{indent}const {C_TYPES[src.dtype]} v = {v};", f"{indent}{combine}"]

        main = self._dims(kl)
        main.append(f"    const int64_t kept_total = {' * '.join(f'n{d}' for d in range(nk)) or '1'};")
        main.append(f"    const int64_t red_total = {' * '.join(f'n{d}' for d in range(nk, nd)) or '1'};")  # (also in _rows)
        main.append("    (void)kept_total;")
        flat: list[str] = []
        if self._flat_possible(kl):
            # Contiguous full reduction: one SIMD partial per fixed chunk, combined in chunk order.
            names: dict[Node, str] = {}
            signature = f"static inline {acc_t} {k.name}_flat(char **restrict ptrs, int64_t lo, int64_t hi, int *nan_out)"
            flat = [signature, "{"]
            flat += self._flat_pointers(kl, n_in)[: n_in]
            flat += [self._load(kl, j, "", "    ", names) for j in loaded if kl.accesses[j][0].ndim == 0]
            flat += [f"    {acc_t} acc = {init};", "    int nanf = 0;"]
            head, tail = self._flat_loop(kl, names, " " + clause)
            flat += head
            flat += [self._load(kl, j, "flat", "        ", names) for j in range(n_in) if kl.accesses[j][0].ndim]
            self.index = "i"
            flat += value(names, "        ")
            self.bits = {}
            flat += [*tail, "    *nan_out |= nanf;", "    return acc;", "}"]
            chunk, run = self._chunks(kl, "red_total", f"pnan[c] = 0; (({acc_t} *)part)[c] = "
                                      f"{k.name}_flat(ptrs, lo, hi, &pnan[c]);", "part, pnan")
            flat += chunk
            main += [f"    if ({self.param(kl, kl.p_flag)}) {{",
                     f"        {acc_t} part[EXPRC_MAX_CHUNKS]; int pnan[EXPRC_MAX_CHUNKS];",
                     "        const int64_t nchunks = exprc_chunk_count(red_total, exprc_chunk_size(red_total));",
                     *["        " + x for x in run]]
            main += [f"        {acc_t} acc = {init}; int nanf = 0;",
                     "        for (int64_t c = 0; c < nchunks; c++) {",
                     f"            const {acc_t} v = part[c];",
                     f"            {'acc += v;' if counted is not None else combine}",  # (partial counts)
                     "            nanf |= pnan[c];",
                     "        }",
                     "        (void)nanf;",
                     *self._reduce_store(kl, fin, {j: self.ptr(kl, j) for j in outs + late}, "        "),
                     "        return;", "    }"]
        red_total = " * ".join(f"n{d}" for d in range(nk, nd)) or "1"
        red_head = [f"    const int64_t red_total = {red_total};", "    (void)red_total;"]
        names = {}
        addr = {j: self.ptr(kl, j) for j, (node, s, _) in enumerate(kl.accesses) if node.ndim or j >= n_in}
        if nk and nd > nk and kl.perm[nk - 1] == nd - 1 and not kl.draws:
            lines = self._column_nest(kl, addr, value, (acc_t, init, fin, out_t))
            count = "(n0 + EXPRC_CBLOCK - 1) / EXPRC_CBLOCK" if nk == 1 else "n0"
            rows, run = self._rows(kl, lines, "kept_total", red_head, count)
            return flat + rows, main + run
        if nk == 1 and nd == 2 and not kl.draws and not self.precise_math and any(
                n.op in EXPENSIVE for n in k.body if n is not r and n not in k.epilogue):
            rows, run = self._rows(kl, self._buffered_rows(kl, loaded, outs + late, (acc_t, init, combine, fin)),
                                   "kept_total", red_head)
            return flat + rows, main + run
        if not nk and not kl.draws and not self.precise_math and any(
                n.op in EXPENSIVE for n in k.body if n is not r and n not in k.epilogue):
            return flat, main + self._buffered_full(kl, loaded, outs + late, (acc_t, init, combine, fin))
        # General path: kept dims outside (parallel), reduced dims inside.
        lines, indent = self._nest(kl, range(nk), "    ", None, addr, ranged=True)
        lines.append(f"{indent}{acc_t} acc = {init}; int nanf = 0; (void)nanf;")
        where = {j: addr.get(j, self.ptr(kl, j)) for j in outs + late}
        red_addr = {j: a for j, a in addr.items() if j in loaded}
        nest, indent = self._nest(kl, range(nk, nd), indent, None, red_addr)
        one = nest[1:] if nd - nk == 1 else []
        one += [self._load(kl, j, red_addr.get(j, ""), indent, names) for j in loaded]
        one += self._index_line(kl, indent)
        one += value(names, indent)
        if nd - nk == 1 and combine == "acc += v;" and acc_t in ("double", "float") and not kl.draws:
            lines += self._eight_lanes(nd - 1, nest[0], one, acc_t, init, indent)
        else:
            lines += nest[:1] + one if nd - nk == 1 else nest + one
        close, indent = self._close(range(nk, nd), indent)
        lines += close
        lines += self._reduce_store(kl, fin, where, indent)
        lines += self._close(range(nk), indent)[0]
        if not nk:
            return flat, main + lines
        rows, run = self._rows(kl, lines, "kept_total", red_head)
        return flat + rows, main + run

    @staticmethod
    def _eight_lanes(d: int, head: str, one: list[str], acc_t: str, init: str, indent: str) -> list[str]:
        """A sum over the innermost dim ``d`` (the loop ``head`` running ``one``, the lines of an element
        ending in ``const T v = ...; acc += v;``) folded into 8 partial sums, lane q taking elements q,
        q + 8, ..., combined pairwise into acc, and the last n % 8 in order: one chain of dependent adds
        took 4 cycles an element (a row sum over rows of 1000: 0.78 ms on one thread, NumPy's 0.17).
        The order depends on the length alone (not on threads, nor on the rows around).  The body is
        written twice (8 values to w, then the rest), not once per lane.  The loop over the rest opens
        as ``head`` did, with the lanes' i<d> counting on."""
        outer = indent[:-4]
        vt = one[-2].split()[1]  # (the value's C type: "const <type> v = ...;")
        lanes = [f"{outer}int64_t i{d}_ = 0;", f"{outer}if (n{d} >= 16) {{",
                 f"{outer}    {_lanes(acc_t, init)}",
                 f"{outer}    for (; i{d}_ + 8 <= n{d}; i{d}_ += 8) {{",
                 f"{outer}        {vt} w[8];",
                 f"{outer}        #pragma GCC unroll 8",
                 f"{outer}        for (int64_t q = 0; q < 8; q++) {{",
                 f"{outer}            const int64_t i{d} = i{d}_ + q;",
                 *["        " + x for x in one[:-1]], f"{outer}            w[q] = v;", f"{outer}        }}",
                 *[f"{outer}        {x}" for x in _lanes_add("w[{q}]")],
                 f"{outer}    }}", f"{outer}    {LANES_SUM}",
                 f"{outer}}}"]
        assert head.lstrip().startswith(f"for (int64_t i{d} = 0;") and one[-1].strip() == "acc += v;"
        assert one[-2].lstrip().startswith("const ") and " v = " in one[-2]
        return [*lanes, head.replace(f"for (int64_t i{d} = 0;", f"for (int64_t i{d} = i{d}_;"), *one]

    def _value_buffers(self, kl: KernelLayout, loaded: list[int]) -> tuple[list[int], list[str], Any]:
        """For the buffered reductions (_buffered_full, _buffered_rows): (the operand accesses copied to
        buffers ob<j>, the declarations (0-d operands loaded), ``compute(indent)``: the lines that pad
        lanes [b, w) with lane 0 and compute the values of lanes [0, w) into vb in one SIMD loop).  A bool
        operand is buffered as wide as the values: uint8 data would make gcc run 64 lanes at a time,
        past EXPRC_VBLOCK, and send a 32-lane block through the scalar epilogue."""
        k, src = kl.kernel, kl.kernel.reduce.inputs[0]
        vt = C_TYPES[src.dtype]
        arrays = [j for j in loaded if kl.accesses[j][0].ndim and j not in kl.models]
        wide = "int64_t" if vt == "double" else "int32_t"
        btype = {j: wide if kl.accesses[j][0].dtype == "bool" else C_TYPES[kl.accesses[j][0].dtype] for j in arrays}
        names: dict[Node, str] = {}
        lines = [self._load(kl, j, "", "    ", names) for j in loaded if j not in arrays]
        lines += [f"    {btype[j]} ob{j}[EXPRC_RCHUNK] __attribute__((aligned(64)));" for j in arrays]
        lines.append(f"    {vt} vb[EXPRC_RCHUNK] __attribute__((aligned(64)));")

        def compute(indent: str) -> list[str]:
            out = [f"{indent}const int64_t w = (b + EXPRC_VBLOCK - 1) / EXPRC_VBLOCK * EXPRC_VBLOCK;",
                   f"{indent}for (int64_t p = b; p < w; p++) {{",
                   *[f"{indent}    ob{j}[p] = ob{j}[0];" for j in arrays], f"{indent}}}",
                   f"{indent}#pragma omp simd", f"{indent}for (int64_t p = 0; p < w; p++) {{"]
            lanes = dict(names)
            for j in arrays:
                lanes[kl.accesses[j][0]] = f"a{j}"
                out.append(f"{indent}    const {btype[j]} a{j} = ob{j}[p];")
            out += self.body(k, lanes, indent + "    ")
            v = lanes[src] if src in lanes else c_literal(src.value.reshape(-1)[0], src.dtype)
            return [*out, f"{indent}    vb[p] = {v};", f"{indent}}}"]

        return arrays, lines, compute

    def _buffered_full(self, kl: KernelLayout, loaded: list[int], stored: list[int], acc: tuple[str, ...]) -> list[str]:
        """A full reduction whose operand calls vector math, on arrays the contiguous path does not take
        (a strided view, or a broadcast operand: the stable logsumexp of a vector reads its shift as a
        (1,) array): the loop nest copies the operands into aligned buffers, EXPRC_RCHUNK elements at a
        time, one SIMD loop computes their values, and they fold in order into ``acc`` (the order of the
        one-element-at-a-time loop it replaces, which called scalar libm: 4 ns an element, NumPy's speed).
        As in _buffered_rows, the SIMD loop runs a multiple of EXPRC_VBLOCK lanes."""
        acc_t, init, combine, fin = acc
        vt = C_TYPES[kl.kernel.reduce.inputs[0].dtype]
        arrays, lines, compute = self._value_buffers(kl, loaded)
        lines += [f"    {acc_t} acc = {init}; int nanf = 0; (void)nanf;", "    int64_t b = 0, left = red_total;"]
        addr = {j: self.ptr(kl, j) for j in arrays}
        nest, indent = self._nest(kl, range(kl.ndim), "    ", None, addr)
        lines += nest
        lines += [f"{indent}ob{j}[b] = *(const {C_TYPES[kl.accesses[j][0].dtype]} *)({addr[j]});" for j in arrays]
        # (a full buffer, or the last element: the values of lanes [0, b), folded in order)
        lines += [f"{indent}left--;", f"{indent}if (++b == EXPRC_RCHUNK || left == 0) {{", *compute(indent + "    "),
                  f"{indent}    for (int64_t p = 0; p < b; p++) {{", f"{indent}        const {vt} v = vb[p];",
                  f"{indent}        {combine}", f"{indent}    }}", f"{indent}    b = 0;", f"{indent}}}"]
        lines += self._close(range(kl.ndim), indent)[0]
        return lines + self._reduce_store(kl, fin, {j: self.ptr(kl, j) for j in stored}, "    ")

    def _buffered_rows(self, kl: KernelLayout, loaded: list[int], stored: list[int], acc: tuple[str, ...]) -> list[str]:
        """Rows [lo, hi) of a matrix reduction over its last axis whose operand calls vector math
        (softmax's exp, logsumexp), in blocks of up to EXPRC_RCHUNK elements: the operands are copied
        into aligned buffers, one SIMD loop over them computes the values into another, and each row
        folds its values in order into ``acc`` (the order, so the sum, of one element at a time).  Short
        rows (up to EXPRC_RCHUNK / 2: a classifier's 10 logits) share a block, several rows to one SIMD
        loop; a long row is cut into blocks.  The per-element loop it replaces called scalar libm: a
        row of 10 cost one 4-5 ns exp per element.

        As in elementwise kernels (_strided_blocks, _uniform_span), the SIMD loop reads contiguous
        buffers (a strided or broadcast operand in place defeats gcc's vectorizer now and then) and runs
        a multiple of EXPRC_VBLOCK lanes (the ones past the block copy its first element), so that every
        value comes from the main vector loop, whatever the row length or the rows sharing its block
        (_value_buffers)."""
        acc_t, init, combine, fin = acc
        vt = C_TYPES[kl.kernel.reduce.inputs[0].dtype]
        arrays, lines, compute = self._value_buffers(kl, loaded)

        def gather(indent: str, first: str, count: str) -> list[str]:
            """Copy elements [first, first + count) of row i0 to ob<j>[b], b counting on."""
            out = [f"{indent}for (int64_t i1 = {first}; i1 < {first} + {count}; i1++, b++) {{"]
            out += self._advance(kl, 1, indent + "    ", {j: f"q{j}_0" for j in arrays})
            out += [f"{indent}    ob{j}[b] = *(const {C_TYPES[kl.accesses[j][0].dtype]} *)(q{j}_1);" for j in arrays]
            return [*out, f"{indent}}}"]

        lanes = combine == "acc += v;" and acc_t in ("double", "float")

        def fold(indent: str, first: str, count: str) -> list[str]:
            seq = [f"{indent}for (; p < {first} + {count}; p++) {{",
                   f"{indent}    const {vt} v = vb[p];", f"{indent}    {combine}", f"{indent}}}"]
            if not lanes:
                return [f"{indent}{{", f"{indent}    int64_t p = {first};", *["    " + x for x in seq], f"{indent}}}"]
            # A sum folds in the order of _eight_lanes (8 partial sums, then the last count % 8 in order):
            # sum(exp(x), axis=1) on one thread over rows of 100: 1.62 -> 1.23 ms, of 1000: 1.76 -> 1.09.
            return [f"{indent}{{", f"{indent}    int64_t p = {first};",
                    f"{indent}    if ({count} >= 16) {{",
                    f"{indent}        {_lanes(acc_t, init)}",
                    f"{indent}        for (; p + 8 <= {first} + {count}; p += 8) {{",
                    *[f"{indent}            {x}" for x in _lanes_add("vb[p + {q}]")],
                    f"{indent}        }}",
                    f"{indent}        {LANES_SUM}",
                    f"{indent}    }}", *["    " + x for x in seq], f"{indent}}}"]

        def row_start(indent: str, which: list[int]) -> list[str]:
            return self._advance(kl, 0, indent, {j: self.ptr(kl, j) for j in which})

        where = {j: f"q{j}_0" for j in stored}
        # several short rows to a block
        lines += ["    if (n1 > 0 && n1 <= EXPRC_RCHUNK / 2) {",
                  "        const int64_t R = EXPRC_RCHUNK / n1;",
                  "        for (int64_t r0 = lo; r0 < hi; r0 += R) {",
                  "            const int64_t rn = hi - r0 < R ? hi - r0 : R;",
                  "            int64_t b = 0;",
                  "            for (int64_t i0 = r0; i0 < r0 + rn; i0++) {",
                  *row_start("                ", arrays), *gather("                ", "0", "n1"),
                  "            }", *compute("            "),
                  "            for (int64_t i0 = r0; i0 < r0 + rn; i0++) {",
                  *row_start("                ", stored),
                  f"                {acc_t} acc = {init}; int nanf = 0; (void)nanf;",
                  *fold("                ", "(i0 - r0) * n1", "n1"),
                  *self._reduce_store(kl, fin, where, "                "),
                  "            }", "        }", "        return;", "    }"]
        # one row at a time, in blocks
        lines += ["    for (int64_t i0 = lo; i0 < hi; i0++) {",
                  *row_start("        ", sorted(set(arrays) | set(stored))),
                  f"        {acc_t} acc = {init}; int nanf = 0; (void)nanf;"]
        if not lanes:
            lines += ["        for (int64_t c1 = 0; c1 < n1; c1 += EXPRC_RCHUNK) {",
                      "            const int64_t m1 = n1 - c1 < EXPRC_RCHUNK ? n1 - c1 : EXPRC_RCHUNK;",
                      "            int64_t b = 0;", *gather("            ", "c1", "m1"), *compute("            "),
                      *fold("            ", "0", "m1"), "        }"]
        else:  # the 8 lanes run on across the blocks (EXPRC_RCHUNK is a multiple of 8): the order of
            # _eight_lanes over the whole row, as the reduce nest adds a row read from memory
            lines += [f"        {_lanes(acc_t, init)}",
                      "        for (int64_t c1 = 0; c1 < n1; c1 += EXPRC_RCHUNK) {",
                      "            const int64_t m1 = n1 - c1 < EXPRC_RCHUNK ? n1 - c1 : EXPRC_RCHUNK;",
                      "            int64_t b = 0;", *gather("            ", "c1", "m1"), *compute("            "),
                      "            int64_t p = 0;",
                      "            for (; p + 8 <= m1; p += 8) {",
                      *[f"                {x}" for x in _lanes_add("vb[p + {q}]")],
                      "            }",
                      f"            if (c1 + m1 == n1) {LANES_SUM}",
                      f"            for (; p < m1; p++) {{ const {vt} v = vb[p]; {combine} }}",
                      "        }"]
        lines += [*self._reduce_store(kl, fin, where, "        "), "    }"]
        return lines

    def render_rows(self, kl: KernelLayout) -> tuple[list[str], list[str]]:
        """A row kernel (``fusion._row_kernels``), see :meth:`_row_lines`; with guards whose rare
        condition holds one value per row, the rows run their fast branches first (see
        :meth:`_row_guard_views`)."""
        k = kl.kernel
        main = self._dims(kl) + ["    const int64_t total = n0 * n1;"]
        views = self._row_guard_views(kl)
        if views is None or len(views) == 1:  # (no split: the kernel as it is, or its slow branches alone)
            whole = kl if views is None else views[0]
            fn, run = self._rows(whole, self._row_lines(whole), "total", [], name=f"{k.name}_rows")
            return fn, main + run
        fast, flags, slow = views
        name = k.name
        # The fast branches row by row, each row's conditions or-ed into fl[row - lo] (the function
        # returns whether one held: a scan of the bytes cost 4% of a guarded kernel over rows of 8); then
        # the rows where one holds (a run of them at once) again, through the slow branches, storing the
        # outputs that read a guard over what the fast pass stored.  Both passes write only the
        # kernel's outputs, which no operand shares (the planner gives an output that overlaps an
        # input a fresh array), so the slow pass reads the rows' operands as the fast pass did.
        fn_slow, _ = self._rows(slow, self._row_lines(slow), "total", [], name=f"{name}_slow")
        fast_fn = [(f"static int {name}_fast(char **restrict ptrs, const int64_t *restrict P, int64_t lo, "
                    "int64_t hi, uint8_t *restrict fl)"), "{", *self._dims(fast),
                   *self._row_lines(fast, flags), "}"]
        driver = ["    (void)n0; (void)n1;", "    uint8_t fl[EXPRC_GUARD_ROWS];",
                  "    for (int64_t s = lo; s < hi; s += EXPRC_GUARD_ROWS) {",
                  "        const int64_t e = hi - s < EXPRC_GUARD_ROWS ? hi : s + EXPRC_GUARD_ROWS;",
                  "        __builtin_memset(fl, 0, (size_t)(e - s));",
                  f"        if (!{name}_fast(ptrs, P, s, e, fl)) continue;  /* (no row flagged: nothing to scan) */",
                  "        for (int64_t i = s; i < e;) {",
                  "            uint64_t w = 1;",
                  "            if (e - i >= 8) __builtin_memcpy(&w, fl + (i - s), 8);",
                  "            if (!w) { i += 8; continue; }  /* (8 rows unflagged) */",
                  "            if (!fl[i - s]) { i++; continue; }",
                  "            int64_t j = i + 1;",
                  "            while (j < e && fl[j - s]) j++;",
                  f"            {name}_slow(ptrs, P, i, j);",
                  "            i = j;",
                  "        }",
                  "    }"]
        fn, run = self._rows(kl, driver, "total", [])
        return [*fn_slow, *fast_fn, *fn], main + run

    def _row_guard_views(self, kl: KernelLayout) -> tuple | None:
        """(fast, conditions, slow) for a row kernel with guards ``where(rare(c), slow, fast)`` of one
        condition ``c`` holding one value per row (a row-wise softmax): ``fast`` is the kernel with
        each guard replaced by its fast branch, computing the condition too; ``slow`` with each
        replaced by its slow branch, storing only the outputs that read a guard, so that an output
        that does not keeps the fast pass's bits on every row (a long row's vectorized sum has other
        bits in a loop of other contents).  A row whose condition fails is the fast kernel's (the
        same bits as the where: its value is the fast branch's); the others' guarded outputs are the
        slow kernel's.  Guards of several conditions are not split: flagging a row for one would
        change the bits of another's output on it (a subagent review: softmax(x) beside softmax(y)
        changed with y): if all are ``everywhere``, a 1-tuple, the kernel with every guard replaced by
        its slow branch (what a lowering without row kernels computes); else None.  None too when
        there are no such guards, or when a branch would change a type (a gradient's mask
        ``where(rare(c), g, 0)``) or make two outputs one node (the kernel then runs as it is, every
        branch computed)."""
        k = kl.kernel
        row, _ = row_levels(k)
        guards = [n for n in k.body if n.op == "where" and n.inputs[0].op == "rare" and row[n.inputs[0]]
                  and n.inputs[0].ndim == 2]  # (a 0-d condition: the flat guards' business)
        if not guards:
            return None
        conds = list(dict.fromkeys(g.inputs[0] for g in guards))
        inside = set(k.body)
        reads = _closure(list(k.outputs), lambda n: n.inputs, inside.__contains__)
        marked = set(guards)
        guarded = [o for o in k.outputs if _closure([o], lambda n: n.inputs, reads.__contains__) & marked]
        if not guarded:  # (a guard read only by another's condition)
            return None

        def view(pick: int, extra: list[Node], only: list[Node] | None) -> tuple | None:
            new: dict[Node, Node] = {}
            for n in k.body:
                if n in guards:
                    b = n.inputs[pick]
                    new[n] = new.get(b, b)
                    if new[n].type != n.type:  # (a mask's 0: what reads it would read a scalar, sum(0.0))
                        return None
                else:
                    new[n] = rebuild(n, [new.get(i, i) for i in n.inputs])
            outs = [new.get(o, o) for o in k.outputs]
            if (len(set(outs)) < len(outs) or set(outs) & set(k.operands)
                    or any(a.type != b.type for a, b in zip(outs, k.outputs))):
                return None
            kept = [new.get(o, o) for o in only] if only is not None else outs
            flags = [new.get(c, c) for c in extra]
            # (a branch may be an operand or a constant: not body nodes)
            made = {v for v in new.values() if v not in k.operands and v.op not in ("constant", "input")}
            seen = _closure([*kept, *flags], lambda n: n.inputs, made.__contains__)
            body = [n for n in dict.fromkeys(new[n] for n in k.body) if n in seen]
            vk = Kernel(k.index, kept, body, list(k.operands), rows=True)
            accesses = [(new.get(n, n), slot, pi) for n, slot, pi in kl.accesses]
            return dataclasses.replace(kl, kernel=vk, accesses=accesses), flags

        if len(conds) > 1:
            stable = view(1, [], None) if all(c.arg("everywhere") for c in conds) else None
            return None if stable is None else (stable[0],)
        fast, slow = view(2, conds, None), view(1, [], guarded)
        if fast is None or slow is None:
            return None
        return fast[0], fast[1], slow[0]

    def _row_lines(self, kl: KernelLayout, flags: list[Node] = ()) -> list[str]:
        """A row kernel (``fusion._row_kernels``): for each row, the passes over its elements that its
        reductions need, one after the other, while the row is in cache.

        Each node has a pass: a reduction's result is ready after the pass that computes its operand,
        and an elementwise node over the whole row runs in the first pass where everything it reads
        is ready (recomputed in a later pass that needs it again: it is cheaper than a temporary).  A
        *row* node (a reduction, or elementwise over row values and scalars only) is computed once per
        row, between passes.  Each pass is a SIMD loop over the row's contiguous elements (flag 1,
        every access contiguous along the row) or a strided loop, the same statements in both.

        ``flags``: row values (bool) or-ed into ``fl[row - lo]`` (a parameter of the function these
        lines go in) as soon as each is computed, the lines then returning whether any held (see
        :meth:`render_rows`)."""
        k = kl.kernel
        n_in = len(k.operands)
        inside = set(k.body)
        reds = [n for n in k.body if OPS[n.op].kind == "reduce"]
        index = {n: j for j, (n, _, _) in enumerate(kl.accesses[:n_in])}
        # (a guard's slow view stores only the outputs that read a guard: see _row_guard_views)
        live = set(k.outputs)
        out_index = {n: j for j, (n, _, _) in enumerate(kl.accesses) if j >= n_in and n in live}
        row, level = row_levels(k)
        full_outs = [n for n in out_index if not row[n]]
        npass = max([level[r] for r in reds] + [level[n] + 1 for n in full_outs])

        def needed(roots: list[Node], leaves: frozenset = frozenset()) -> list[Node]:
            seen = _closure(roots, lambda n: () if n in leaves else row_reads(n),
                            lambda x: x in inside and not row[x])
            return [n for n in k.body if n in seen]

        def roots(t: int) -> list[Node]:
            return [r.inputs[0] for r in reds if level[r] == t + 1] + [n for n in full_outs if level[n] == t]

        # An expensive value a later pass needs again (softmax's exp(x - max)) is kept in the buffer of
        # the output that pass stores, element for element, instead of being computed twice.
        uses: dict[Node, list[int]] = {}
        for t in range(npass):
            for n in needed(roots(t)):
                uses.setdefault(n, []).append(t)
        carry: dict[Node, tuple[int, Node]] = {}  # value -> (pass storing it, output holding it)
        taken: set[Node] = set()
        for n, ts in uses.items():
            if n.op in EXPENSIVE and len(ts) > 1 and n not in out_index:
                holder = next((o for o in full_outs if level[o] == ts[-1] and o.dtype == n.dtype
                               and o not in taken), None)
                if holder is not None:
                    taken.add(holder)
                    carry[n] = (ts[0], holder)

        lines = ["    const int64_t red_total = n1;", "    (void)red_total;"]
        names: dict[Node, str] = {}
        for x, j in index.items():
            if x.ndim == 0:
                names[x] = f"a{j}"
                lines.append(f"    const {C_TYPES[x.dtype]} a{j} = *(const {C_TYPES[x.dtype]} *)({self.ptr(kl, j)});")
        lines.append("    for (int64_t i0 = lo; i0 < hi; i0++) {")
        for j, (node, _, pi) in enumerate(kl.accesses):
            if node.ndim and (j < n_in or node in out_index):
                lines.append(f"        char *q{j} = {self.ptr(kl, j)} + i0 * {self.param(kl, pi)};")
        for x, j in index.items():
            if x.ndim and row[x]:
                names[x] = f"a{j}"
                lines.append(f"        const {C_TYPES[x.dtype]} a{j} = *(const {C_TYPES[x.dtype]} *)(q{j});")
        ind = "        "

        def row_nodes(t: int) -> list[str]:
            out = []
            for n in k.body:
                if row[n] and n not in reds and level[n] == t:
                    out += self.statements([n], names, ind)
            for n, j in out_index.items():
                if row[n] and level[n] == t:
                    out.append(f"{ind}*({C_TYPES[n.dtype]} *)(q{j}) = {names[n]};")
            out += [f"{ind}if ({names[c]}) {{ fl[i0 - lo] = 1; flagged = 1; }}" for c in flags if level.get(c, 0) == t]
            return out

        ctype = {j: C_TYPES[kl.accesses[j][0].dtype] for j in range(len(kl.accesses))}
        plans: list[tuple] = []  # per pass: (reductions, stores, kept, keep, nodes, reads)
        for t in range(npass + 1):
            lines += row_nodes(t)
            if t == npass:
                break
            mine = [r for r in reds if level[r] == t + 1]
            stores = [n for n in full_outs if level[n] == t]
            kept = {n: o for n, (t0, o) in carry.items() if t0 < t}  # (read back from the output's buffer)
            keep = {n: o for n, (t0, o) in carry.items() if t0 == t}  # (stored there in this pass)
            nodes = needed(roots(t), frozenset(kept))
            kept = {n: o for n, o in kept.items() if n in nodes}
            nodes = [n for n in nodes if n not in kept]
            keep = {n: o for n, o in keep.items() if n in nodes}
            outs_here = stores + [o for o in [*keep.values(), *kept.values()] if o not in stores]
            reads = sorted({index[x] for n in nodes for x in row_reads(n) if x in index and not row[x]}
                           | {index[r.inputs[0]] for r in mine if r.inputs[0] in index})
            plans.append((mine, stores, kept, keep, nodes, reads, roots(t)))
            accs, clauses = [], []
            for i, r in enumerate(mine):
                acc_t, init, combine, clause, fin = self._accumulator(r)
                a = f"acc{len(names)}_{i}"
                accs.append((r, a, combine, fin))
                lines.append(f"{ind}{acc_t} {a} = {init}; int nan{a} = 0; (void)nan{a};")
                clauses.append(re.sub(r"\bnanf\b", f"nan{a}", re.sub(r"\bacc\b", a, clause)))
            def pass_body(load: Any, store: Any, reads: list = reads, kept: dict = kept, nodes: list = nodes,
                          accs: list = accs, stores: list = stores, keep: dict = keep) -> list[str]:
                """One element of this pass: ``load(j)``/``store(j)`` address access j's element."""
                local = dict(names)
                body = []
                for j in reads:
                    ct = C_TYPES[kl.accesses[j][0].dtype]
                    local[kl.accesses[j][0]] = f"a{j}"
                    body.append(f"{ind}        const {ct} a{j} = {load(j)};")
                for n, o in kept.items():
                    j, ct = out_index[o], C_TYPES[n.dtype]
                    local[n] = f"c{j}"
                    body.append(f"{ind}        const {ct} c{j} = {load(j)};")
                body += self.statements(nodes, local, ind + "        ")
                for r, a, combine, _ in accs:
                    src = r.inputs[0]
                    v = local[src] if src in local else c_literal(src.value.reshape(-1)[0], src.dtype)
                    step = re.sub(r"\bv\b", v, re.sub(r"\bnanf\b", f"nan{a}", re.sub(r"\bacc\b", a, combine)))
                    body.append(f"{ind}        {step}")
                for n, o in [*((n, n) for n in stores), *keep.items()]:
                    body.append(f"{ind}        {store(out_index[o])} = {local[n]};")
                return body

            def stride(j: int) -> str:
                return self.param(kl, kl.accesses[j][2] + 1)

            flat = pass_body(lambda j: f"p{j}[i1]", lambda j: f"p{j}[i1]")
            ptrs = [f"{ind}    const {ctype[j]} *restrict p{j} = (const {ctype[j]} *)(q{j});" for j in reads]
            ptrs += [f"{ind}    {ctype[out_index[n]]} *restrict p{out_index[n]} = ({ctype[out_index[n]]} *)"
                     f"(q{out_index[n]});" for n in outs_here]
            simd = f"{ind}    #pragma omp simd{''.join(' ' + c for c in clauses)}"
            lines += [f"{ind}if ({self.param(kl, kl.p_flag)}) {{", *ptrs]
            lines += [simd, f"{ind}    for (int64_t i1 = 0; i1 < n1; i1++) {{", *flat, f"{ind}    }}"]
            # Strided rows are copied into contiguous scratch and run the same SIMD loop, so a row's bits do
            # not depend on its layout (a scalar loop here gave 14451 of 20000 softmax values of rows of 40
            # other bits in Fortran order than in C order); the scalar loop only where malloc failed.
            gathered = sorted({*reads, *(out_index[o] for o in kept.values())})
            lines += [f"{ind}}} else if (scratch) {{",
                      *[f"{ind}    for (int64_t i1 = 0; i1 < n1; i1++) (({ctype[j]} *)rb{j})[i1] = "
                        f"*(const {ctype[j]} *)(q{j} + i1 * {stride(j)});" for j in gathered],
                      *[x.replace(f"(q{j})", f"(rb{j})") for x, j in zip(ptrs, [*reads, *(out_index[n] for n in outs_here)])],
                      simd, f"{ind}    for (int64_t i1 = 0; i1 < n1; i1++) {{", *flat, f"{ind}    }}",
                      *[f"{ind}    for (int64_t i1 = 0; i1 < n1; i1++) *({ctype[out_index[n]]} *)(q{out_index[n]} + i1 * "
                        f"{stride(out_index[n])}) = (({ctype[out_index[n]]} *)rb{out_index[n]})[i1];" for n in outs_here]]
            strided = pass_body(lambda j: f"*(const {ctype[j]} *)(q{j} + i1 * {stride(j)})",
                                lambda j: f"*({ctype[j]} *)(q{j} + i1 * {stride(j)})")
            lines += [f"{ind}}} else {{", f"{ind}    for (int64_t i1 = 0; i1 < n1; i1++) {{", *strided,
                      f"{ind}    }}", f"{ind}}}"]
            for r, a, _, fin in accs:
                names[r] = f"r{a}"
                fin = re.sub(r"\bnanf\b", f"nan{a}", re.sub(r"\bacc\b", a, fin))
                lines.append(f"{ind}const {C_TYPES[r.dtype]} r{a} = ({C_TYPES[r.dtype]})({fin});")
        lines.append("    }")
        loop_at = lines.index("    for (int64_t i0 = lo; i0 < hi; i0++) {")
        whole = [j for j, (node, _, _) in enumerate(kl.accesses)
                 if node.ndim and (j < n_in or node in out_index) and not row[node]]
        # (each array's slice rounded up to 64 bytes: a double slice after a float one stays aligned)
        span = {j: f"(((size_t)n1 * sizeof({ctype[j]}) + 63) & ~(size_t)63)" for j in whole}
        scratch = [(f"    char *scratch = {self.param(kl, kl.p_flag)} || n1 <= 0 ? NULL : "
                    f"(char *)__builtin_malloc({' + '.join(span.values()) or '0'});")]
        offset = "0"
        for j in whole:
            scratch.append(f"    char *rb{j} = scratch ? scratch + {offset} : NULL; (void)rb{j};")
            offset = span[j] if offset == "0" else f"{offset} + {span[j]}"
        lines[loop_at:loop_at] = self._short_rows_batched(kl, plans, row, level, index, out_index, reds,
                                                          needed, flags) + scratch
        lines.append("    __builtin_free(scratch);")
        if flags:
            lines = ["    int flagged = 0;", *lines, "    return flagged;"]
        return lines

    def _short_rows_batched(self, kl: KernelLayout, plans: list[tuple], row: dict[Node, bool],
                            level: dict[Node, int], index: dict[Node, int], out_index: dict[Node, int],
                            reds: list[Node], needed: Any, flags: list[Node] = ()) -> list[str]:
        """Rows of up to EXPRC_RCHUNK / 8 elements (a classifier's 10 logits) in blocks of several rows,
        for a row kernel (render_rows): the block's elements are copied into aligned buffers column by
        column (element i1 of row r at i1 * R + r), each pass is one SIMD loop over the block's rows per
        column, and each row folds its values in order in that loop, one SIMD lane per row; the row values
        between passes (a max, a sum, the log of a sum) are computed in one SIMD loop over the block's
        rows too.  One row at a time, a row of 10 paid each pass's SIMD set-up and a scalar libm call per
        row value, several times its elements' work (a softmax over 8 columns ran at a fifth of the
        separate kernels' speed); row after row in one buffer, each fold and each use of a row value was
        a gather (a stable softmax over rows of 8: 3.1 ms for 1e6 elements on one thread, 2.3 column by
        column).  Every SIMD loop runs a multiple of EXPRC_VBLOCK lanes (past the block, copies of its
        first row), as in _buffered_rows: every value comes from the vector loop, whichever rows share
        a block.  Returns no lines (no batched path) when the buffers of rows of 8 would take more than
        128 KB of the stack, and takes rows up to the length whose buffers fit; or when the rows call no
        vector math (a variance over rows of 10 ran 1.5x slower batched than one row at a time).  The
        operand of a reduction folded in an earlier pass is in its buffer element for element, and a
        later pass reads it there instead of computing it again (softmax's numerator exp(x - m) (1 + err)
        over the sum: its TwoSum and correction once, not twice; 25% of a softmax over rows of 8).
        ``needed(roots, leaves)``: the nodes a pass computes for ``roots`` when ``leaves`` are known
        (render_rows's); ``flags``: _row_lines's."""
        k = kl.kernel
        floats = {n.dtype for n in k.body if n.dtype in ("float32", "float64")}
        wide = "int32_t" if floats == {"float32"} else "int64_t"

        def ctype(n: Node) -> str:
            return wide if n.dtype == "bool" else C_TYPES[n.dtype]

        full_reads = sorted({j for plan in plans for j in plan[5]})
        row_ops = [(x, j) for x, j in index.items() if x.ndim and row[x]]
        row_nodes = [n for n in k.body if row[n]]
        readers: dict[Node, list[Node]] = {}
        for m in k.body:
            for i in row_reads(m):
                readers.setdefault(i, []).append(m)

        def kept(n: Node) -> bool:
            """Whether row value ``n`` is stored for the block's rows: what only row values of its own
            level read stays a local of their loop (a guard's comparisons and their and: a store a row
            each, to arrays no loop read)."""
            return (n in reds or n in out_index or n in flags
                    or any(not row[m] or m in reds or level[m] != level[n] for m in readers.get(n, ())))

        arr = {x: f"ya{j}" for x, j in row_ops} | {n: f"y{i}" for i, n in enumerate(row_nodes) if kept(n)}
        scalars = {x: f"a{j}" for x, j in index.items() if x.ndim == 0}
        carried = sorted({n for plan in plans for n in plan[3]}, key=k.body.index)
        kb = {n: f"kb{i}" for i, n in enumerate(carried)}
        # A reduction of an operand itself (the max of the logits) folds straight from its buffer.
        direct = {r: index[r.inputs[0]] for r in reds if r.inputs[0] in index and not row[r.inputs[0]]}
        # Per pass: what it computes, the reduction operands it reads from earlier passes' buffers instead,
        # and the carried values (kb) a later pass still reads.
        buffered: dict[Node, str] = {}
        batched_nodes, from_buffer, reread = [], [], set()
        for plan in plans:
            kept, nodes, roots = plan[2], plan[4], plan[6]
            if buffered:
                leaves = frozenset(kept) | frozenset(buffered)
                closure = needed(roots, leaves)
                reread |= {n for n in closure if n in kept and n not in buffered}
                nodes = [n for n in closure if n not in leaves]
            else:
                reread |= set(kept)
            batched_nodes.append(nodes)
            from_buffer.append(dict(buffered))
            for r in plan[0]:
                src = r.inputs[0]
                if r not in direct and src.dtype in ("float32", "float64") and src not in buffered and not row[src]:
                    buffered[src] = f"vb{reds.index(r)}"
        carried = [n for n in carried if n in reread]
        kb = {n: kb[n] for n in carried}
        stored = sorted({out_index[n] for plan in plans for n in plan[1]})

        def reads_later(src: Node, t: int) -> bool:
            """Whether a pass after ``t`` reads ``src`` from its buffer (the softmax's division): as an
            operand of what it computes or folds, or as a value it stores or keeps."""
            return any(src in from_buffer[u] and (any(src in n.inputs for n in batched_nodes[u])
                                                  or any(r.inputs[0] is src for r in plans[u][0])
                                                  or src in plans[u][1] or src in plans[u][2] or src in plans[u][3])
                       for u in range(t + 1, len(plans)))

        # (a reduction's operand no later pass reads is folded where it is computed: no buffer)
        kept_vb = {reds.index(r) for t, plan in enumerate(plans) for r in plan[0]
                   if r not in direct and reads_later(r.inputs[0], t)}
        elements = ([(f"ob{j}", ctype(kl.accesses[j][0])) for j in full_reads]
                    + [(f"vb{i}", ctype(r.inputs[0])) for i, r in enumerate(reds) if i in kept_vb]
                    + [(f"sb{j}", ctype(kl.accesses[j][0])) for j in stored] + [(kb[n], ctype(n)) for n in carried])
        rows_of = [(arr[x], ctype(x)) for x in arr]
        # Stack: a block holds EXPRC_VBLOCK rows of up to `longest` elements (8 bytes each at most) per
        # element buffer, 2 KB per row array, an accumulator and NaN flag (3 KB) per reduction: the longest
        # row that keeps it within 128 KB (glibc's threads have megabytes, and libmvec is glibc's).
        stack_kb = 128 - 2 * len(rows_of) - 3 * len(reds)
        longest = min(32, stack_kb * 4 // max(len(elements), 1))  # (32: EXPRC_RCHUNK / 8)
        if longest < 8 or not any(n.op in EXPENSIVE for n in k.body):
            return []  # (without vector math, one row at a time is as fast: a variance over rows of 10, 1.5x)

        def stride(j: int, d: int) -> str:
            return self.param(kl, kl.accesses[j][2] + d)

        def at_row(j: int) -> str:
            return f"{self.ptr(kl, j)} + (r0 + r) * {stride(j, 0)}"

        ind = "            "
        # A block is R rows (a multiple of EXPRC_VBLOCK) stored column after column: element i1 of row r
        # at p = i1 * R + r.  Every SIMD loop runs over the block's rows (padded to wr lanes with copies
        # of row 0), so a row's value between passes (its max, its sum) is one contiguous load, and a
        # fold reads its elements contiguously too (rows of 8 one after the other, a softmax spent 40%
        # of its time in gathers: the strided folds and y[p / n1]).
        lines = [f"    if (n1 > 0 && n1 <= {longest}) {{",
                 ("        const int64_t R0 = EXPRC_RCHUNK / n1 / EXPRC_VBLOCK * EXPRC_VBLOCK, "
                  "R = R0 > 0 ? R0 : EXPRC_VBLOCK;"),
                 *[f"        {t} {b}[EXPRC_VBLOCK * {longest}] __attribute__((aligned(64)));" for b, t in elements],
                 *[f"        {t} {b}[EXPRC_RCHUNK] __attribute__((aligned(64)));" for b, t in rows_of],
                 "        for (int64_t r0 = lo; r0 < hi; r0 += R) {",
                 "            const int64_t rn = hi - r0 < R ? hi - r0 : R;",
                 "            const int64_t wr = (rn + EXPRC_VBLOCK - 1) / EXPRC_VBLOCK * EXPRC_VBLOCK;"]
        # gather the block, each row's row operands; then pad
        # (column by column: the stores to the buffer one after the other, the loads at the row stride
        # from lines the block keeps in cache; row by row, the stores at stride R took 6% of a logsumexp
        # over rows of 8)
        for j in full_reads:
            ct = C_TYPES[kl.accesses[j][0].dtype]
            lines += [f"{ind}for (int64_t i1 = 0; i1 < n1; i1++) {{",
                      f"{ind}    const char *g{j} = {self.ptr(kl, j)} + r0 * {stride(j, 0)} + i1 * {stride(j, 1)};",
                      f"{ind}    #pragma omp simd", f"{ind}    for (int64_t r = 0; r < rn; r++)",
                      f"{ind}        ob{j}[i1 * R + r] = *(const {ct} *)(g{j} + r * {stride(j, 0)});", f"{ind}}}",
                      f"{ind}for (int64_t i1 = 0; i1 < n1; i1++)",
                      f"{ind}    for (int64_t r = rn; r < wr; r++) ob{j}[i1 * R + r] = ob{j}[i1 * R];"]
        for x, j in row_ops:
            lines += [f"{ind}for (int64_t r = 0; r < rn; r++) ya{j}[r] = *(const {C_TYPES[x.dtype]} *)({at_row(j)});",
                      f"{ind}for (int64_t r = rn; r < wr; r++) ya{j}[r] = ya{j}[0];"]

        def row_pass(t: int) -> list[str]:
            """The row values of level ``t`` over the block's rows, and the row outputs among them."""
            mine = [n for n in row_nodes if n not in reds and level[n] == t]
            out = []
            if mine:
                local = scalars | {x: f"{arr[x]}[r]" for x in arr if x not in mine}
                body = self.statements(mine, local, ind + "    ")
                body += [f"{ind}    {arr[n]}[r] = {local[n]};" for n in mine if n in arr]
                out += [f"{ind}#pragma omp simd", f"{ind}for (int64_t r = 0; r < wr; r++) {{", *body, f"{ind}}}"]
            for n, j in out_index.items():
                if row[n] and level[n] == t:
                    out.append(f"{ind}for (int64_t r = 0; r < rn; r++) "
                               f"*({C_TYPES[n.dtype]} *)({at_row(j)}) = ({C_TYPES[n.dtype]}){arr[n]}[r];")
            for c in flags:
                if level.get(c, 0) == t:  # (a flag is rare: the rows' bytes only when one holds)
                    out += [f"{ind}{{", f"{ind}    int64_t any = 0;", f"{ind}    #pragma omp simd reduction(|:any)",
                            f"{ind}    for (int64_t r = 0; r < rn; r++) any |= ({arr[c]}[r] != 0);",
                            f"{ind}    if (any) {{",
                            f"{ind}        flagged = 1;",
                            f"{ind}        for (int64_t r = 0; r < rn; r++) fl[r0 + r - lo] |= (uint8_t)({arr[c]}[r] != 0);",
                            f"{ind}    }}", f"{ind}}}"]
            return out

        for t, (mine, stores, kept, keep, _, reads, _) in enumerate(plans):
            lines += row_pass(t)
            local = dict(scalars)
            body = []
            nodes = batched_nodes[t]
            for j in reads:
                local[kl.accesses[j][0]] = f"a{j}"
                body.append(f"{ind}    const {ctype(kl.accesses[j][0])} a{j} = ob{j}[p];")
            for x in arr:
                local[x] = f"{arr[x]}[r]"
            for n in kept:
                if n in kb:
                    local[n] = f"{kb[n]}[p]"
            for n, buf in from_buffer[t].items():
                local[n] = f"{buf}[p]"
            keep = {n: o for n, o in keep.items() if n in reread}  # (a later pass reads it from kb, not vb)
            body += self.statements(nodes, local, ind + "    ")
            # Each row's values fold in order (the sum of one element at a time) in the pass's own loop, all
            # the block's rows at once: one SIMD lane per row, element i1 of every row before element i1 + 1,
            # so each row adds in the order of its elements as one row alone would.  (Row after row, a sum
            # of 8 waited on each addition's latency: half of a logsumexp's time; a separate fold loop over
            # the stored values: a logsumexp over rows of 8 took 2.0 ms on one thread, 1.7 in the loop.)
            # The lanes past the block's rows fold copies of its first row, never stored.
            # A value a later pass reads again (the softmax's numerator, for its division) is stored and
            # folded from its buffer after the loop: in the loop, with the store, it measured 3% slower.
            inits, fins, folds = [], [], []
            for r in mine:
                i, src = reds.index(r), r.inputs[0]
                acc_t, init, combine, _, fin = self._accumulator(r)
                v = local[src] if src in local else c_literal(src.value.reshape(-1)[0], src.dtype)
                stored_v = i in kept_vb
                if stored_v:
                    body.append(f"{ind}    vb{i}[p] = {v};")
                    v = f"vb{i}[i1 * R + r]"
                lines.append(f"{ind}{acc_t} acc{i}[EXPRC_RCHUNK] __attribute__((aligned(64))); "
                             f"int nan{i}[EXPRC_RCHUNK] __attribute__((aligned(64))); (void)nan{i};")
                inits.append(f"{ind}    acc{i}[r] = {init}; nan{i}[r] = 0;")
                step = re.sub(r"\bv\b", v, re.sub(r"\bnanf\b", f"nan{i}[r]", re.sub(r"\bacc\b", f"acc{i}[r]", combine)))
                (folds if stored_v else body).append(f"{ind}    {step}")
                fin = re.sub(r"\bnanf\b", f"nan{i}[r]", re.sub(r"\bacc\b", f"acc{i}[r]", fin))
                fins.append(f"{ind}    {arr[r]}[r] = ({C_TYPES[r.dtype]})({fin});")
            body += [f"{ind}    sb{out_index[n]}[p] = {local[n]};" for n in stores]
            body += [f"{ind}    {kb[n]}[p] = {local[n]};" for n in keep]
            if inits:
                lines += [f"{ind}for (int64_t r = 0; r < wr; r++) {{", *inits, f"{ind}}}"]
            if any(not x.lstrip().startswith("const ") for x in body):  # (something is stored or folded)
                lines += [f"{ind}for (int64_t i1 = 0; i1 < n1; i1++) {{", f"{ind}    #pragma omp simd",
                          f"{ind}    for (int64_t r = 0; r < wr; r++) {{", f"{ind}        const int64_t p = i1 * R + r;",
                          *["    " + x for x in body], f"{ind}    }}", f"{ind}}}"]
            if folds:
                lines += [f"{ind}for (int64_t i1 = 0; i1 < n1; i1++) {{", f"{ind}    #pragma omp simd",
                          f"{ind}    for (int64_t r = 0; r < wr; r++) {{", *["    " + x for x in folds], f"{ind}    }}",
                          f"{ind}}}"]
            if mine:
                lines += [f"{ind}for (int64_t r = 0; r < rn; r++) {{", *fins, f"{ind}}}"]
                lines += [f"{ind}for (int64_t r = rn; r < wr; r++) {arr[r]}[r] = {arr[r]}[0];" for r in mine]
            for n in stores:
                j, ct = out_index[n], C_TYPES[n.dtype]
                lines += [f"{ind}for (int64_t r = 0; r < rn; r++) {{", f"{ind}    char *s{j} = {at_row(j)};",
                          f"{ind}    for (int64_t i1 = 0; i1 < n1; i1++)",
                          f"{ind}        *({ct} *)(s{j} + i1 * {stride(j, 1)}) = ({ct})sb{j}[i1 * R + r];", f"{ind}}}"]
        lines += row_pass(len(plans))
        return [*lines, "        }", "        return flagged;" if flags else "        return;", "    }"]

    def _epilogue_operands(self, kl: KernelLayout) -> list[int]:
        """The operand accesses of a reduction kernel that only its epilogue reads."""
        late = epilogue_arrays(kl.kernel)
        return [j for j, (node, _, _) in enumerate(kl.accesses[:len(kl.kernel.operands)]) if node in late]

    def _reduce_store(self, kl: KernelLayout, fin: str, where: dict[int, str], indent: str) -> list[str]:
        """Store a reduction's result ``fin`` (its outputs' and epilogue operands' element addresses in
        ``where``), through the kernel's epilogue when it has one."""
        k, r = kl.kernel, kl.kernel.reduce
        out_t = C_TYPES[r.dtype]
        n_in = len(k.operands)
        if not k.epilogue:
            return [f"{indent}*({out_t} *)({where[n_in]}) = ({out_t})({fin});"]
        names: dict[Node, str] = {r: "rv"}
        lines = [f"{indent}const {out_t} rv = ({out_t})({fin});"]
        # The operands only the epilogue reads, and a 0-d one the reduced values read too (x0 in
        # sum(where(x1 < x0, ...)) + 2 x0): loaded again here, out of the scope of the loops that loaded it
        # (it was read as a constant, and failed to render).
        late = set(self._epilogue_operands(kl))
        read = {x for n in k.epilogue for x in n.inputs}
        for j, (node, _, _) in enumerate(kl.accesses[:n_in]):
            if j in late or node in read and node.ndim == 0:
                ct = C_TYPES[node.dtype]
                names[node] = f"e{j}"
                lines.append(f"{indent}const {ct} e{j} = *(const {ct} *)({where.get(j, self.ptr(kl, j))});")
        lines += self.statements(k.epilogue, names, indent)
        for j, (node, _, _) in enumerate(kl.accesses[n_in:], start=n_in):
            lines.append(f"{indent}*({C_TYPES[node.dtype]} *)({where[j]}) = {names[node]};")
        return lines

    def _column_nest(self, kl: KernelLayout, addr: dict[int, str], value: Any, acc: tuple[str, ...]) -> list[str]:
        """The strided path of a reduction that keeps the source's last axis (``sum(x, axis=0)`` of a
        matrix: a bias gradient): that axis innermost, in blocks of EXPRC_CBLOCK elements with an
        accumulator each, so a C-contiguous operand is read row after row, not column after column
        (a stride of a whole row per element).  Each output element still combines its elements in
        the same order: the same bits as the kept-outside nest.  The range is over the first kept
        dimension, or over the blocks when that is the only one."""
        acc_t, init, fin, _ = acc
        nk, nd, n_in, last = kl.nkept, kl.ndim, len(kl.kernel.operands), kl.nkept - 1
        late = [*self._epilogue_operands(kl), *range(n_in, len(kl.accesses))]
        names: dict[Node, str] = {}
        lines, indent = self._nest(kl, range(last), "    ", None, addr, ranged=True)
        lo, hi = ("lo", "hi") if last == 0 else ("0", f"(n{last} + EXPRC_CBLOCK - 1) / EXPRC_CBLOCK")
        block = f"const int64_t jb = cb * EXPRC_CBLOCK, jn = n{last} - jb < EXPRC_CBLOCK ? n{last} - jb : EXPRC_CBLOCK;"
        lines += [f"{indent}for (int64_t cb = {lo}; cb < {hi}; cb++) {{", f"{indent}    {block}",
                  f"{indent}    {acc_t} accv[EXPRC_CBLOCK]; int nanv[EXPRC_CBLOCK];",
                  f"{indent}    for (int64_t jj = 0; jj < jn; jj++) {{ accv[jj] = {init}; nanv[jj] = 0; }}"]
        indent += "    "
        red_addr = {j: a for j, a in addr.items() if j not in late}
        nest, red_indent = self._nest(kl, range(nk, nd), indent, None, red_addr)
        inner = red_indent + "    "
        lines += [*nest, f"{red_indent}for (int64_t jj = 0; jj < jn; jj++) {{", f"{inner}const int64_t i{last} = jb + jj;"]
        lines += self._advance(kl, last, inner, red_addr)
        lines.append(f"{inner}{acc_t} acc = accv[jj]; int nanf = nanv[jj]; (void)nanf;")
        lines += [self._load(kl, j, red_addr.get(j, ""), inner, names) for j in range(n_in) if j not in late]
        lines += [*value(names, inner), f"{inner}accv[jj] = acc; nanv[jj] = nanf;", f"{red_indent}}}"]
        lines += self._close(range(nk, nd), red_indent)[0]
        out_addr = {j: addr[j] for j in late if j in addr}
        lines += [f"{indent}for (int64_t jj = 0; jj < jn; jj++) {{", f"{indent}    const int64_t i{last} = jb + jj;"]
        lines += self._advance(kl, last, indent + "    ", out_addr)
        lines += [f"{indent}    const {acc_t} acc = accv[jj]; const int nanf = nanv[jj]; (void)nanf;",
                  *self._reduce_store(kl, fin, out_addr, indent + "    "), f"{indent}}}"]
        lines.append(f"{indent[:-4]}}}")
        return lines + self._close(range(last), indent[:-4])[0]

    def render_matmul(self, kl: KernelLayout) -> list[str]:
        """C = A @ B through the BLAS the runtime installed (``exprc_set_blas``); a plain
        loop nest when the plan found no BLAS-compatible layout (or no BLAS)."""
        t = C_TYPES[kl.kernel.matmul.dtype]
        gemm = "exprc_sgemm" if t == "float" else "exprc_dgemm"
        P = [self.param(kl, kl.p_flag + i) for i in range(1 + MATMUL_PARAMS)]
        pa, pb, pc = (pi for _, _, pi in kl.accesses)
        A, B, C = self.ptr(kl, 0), self.ptr(kl, 1), self.ptr(kl, 2)
        beta = "(sum && b > 0) ? 1 : 0"
        call = (f"{gemm}(101, (int){P[4]}, (int){P[6]}, M, N, K, 1, (const {t} *)({A} + b * asb), {P[5]}, "
                f"(const {t} *)({B} + b * bsb), {P[7]}, {beta}, ({t} *)({C} + b * csb), {P[8]});")
        st = [self.param(kl, i) for i in (pa, pa + 1, pa + 2, pb, pb + 1, pb + 2, pc, pc + 1, pc + 2)]
        return [
            f"    const int64_t M = {P[1]}, N = {P[2]}, K = {P[3]}, NB = {P[9]}, sum = {P[10]};",
            (f"    const int64_t as0 = {st[0]}, as1 = {st[1]}, asb = {st[2]}, bs0 = {st[3]}, bs1 = {st[4]}, "
            f"bsb = {st[5]};"),
            f"    const int64_t cs0 = {st[6]}, cs1 = {st[7]}, csb = {st[8]};",
            "    (void)nthreads;",
            f"    if ({P[0]} && {gemm}) {{",
            "        for (int64_t b = 0; b < NB; b++)",
            f"            {call}",
            "        return;",
            "    }",
            "    if (sum && NB == 0)  /* an empty batch sums to zeros */",
            "        for (int64_t i = 0; i < M; i++)",
            "            for (int64_t j = 0; j < N; j++)",
            f"                *({t} *)({C} + i * cs0 + j * cs1) = 0;",
            "    for (int64_t b = 0; b < NB; b++)",
            "        for (int64_t i = 0; i < M; i++)",
            "            for (int64_t j = 0; j < N; j++) {",
            f"                {t} acc = 0;",
            "                for (int64_t k = 0; k < K; k++)",
            (f"                    acc += *(const {t} *)({A} + b * asb + i * as0 + k * as1) * "
            f"*(const {t} *)({B} + b * bsb + k * bs0 + j * bs1);"),
            f"                {t} *c = ({t} *)({C} + b * csb + i * cs0 + j * cs1);",
            "                *c = (sum && b > 0) ? *c + acc : acc;",
            "            }",
        ]

    # -- module -----------------------------------------------------------------
    def render(self, program: Program, summary: str = "") -> tuple[str, Layout]:

        lay = self.layout(program)
        # A kernel reads its arrays as ptrs[j] (its own accesses, in order) and its sizes and strides
        # as P[i] (its own slice of the block), so kernels that compute the same thing on other
        # arrays render to the same text: each is written once (an unrolled loop's steps, the
        # matching kernels of a gradient) and called with its own pointers and slice.
        texts, functions, calls = [], {}, []
        for i, kl in enumerate(lay.kernels):
            name = kl.kernel.name
            text = self.render_kernel(kl)
            key = text[text.index("\n") + 1:].replace(name, "@")  # (the first line is the header comment)
            fn = functions.setdefault(key, name)
            if fn == name:
                texts.append(text)
            accesses = ", ".join(f"ptrs[{slot}]" for _, slot, _ in kl.accesses)
            same = "" if fn == name else f" /* {name} */"
            calls.append(f"    if (first <= {i} && {i} < last) {{ char *a[] = {{{accesses}}}; "
                         f"{fn}(a, P + {kl.p_flag}, nthreads); }}{same}")
        kernels = f"\n\n{UNIT}\n".join(texts)
        calls = "\n".join(calls) or "    (void)ptrs; (void)P; (void)nthreads;"
        declarations = "".join(f"{KERNEL_SIGNATURE.format(fn)};\n" for fn in functions.values())
        prelude_text = prelude("c", "c_prelude.h")
        if uses_draws(program):
            prelude_text += random_helpers()
        if any(k.matmul is not None for k in program.kernels):
            prelude_text += BLAS_DECLARATIONS
            declarations += BLAS_DEFINITIONS
        if self.precise_math:
            prelude_text = "#define EXPRC_PRECISE_MATH 1\n" + prelude_text
        src = string.Template(read("c", "c_module.c")).substitute(
            version=__version__, summary=comment(summary).replace("\n", "; "), prelude=prelude_text,
            kernels=f"{UNIT}\n{kernels}", unit=UNIT, declarations=declarations, dispatch=calls)
        return src, lay
