"""The C backend's runtime: lower -> render -> compile (cached) -> one native call.

Per distinct input signature (shapes and strides) a :class:`Plan` is built
once: the sizes and byte strides of every kernel access in one int64 block
``P``, the scratch buffers for intermediates (reused across calls) and the
pointer table.  A call then only fills the pointers of its inputs and fresh
outputs and enters ``exprc_run`` — once when the program has no NumPy steps.
Plans are taken from a per-signature pool, so concurrent calls from several
threads never share scratch buffers.  cffi releases the GIL during the call.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import cffi
import numpy as np

from exprc import cache
from exprc.codegen.c import CRenderer, Layout
from exprc.compile import cc
from exprc.config import Config
from exprc.errors import InputTypeError, ShapeError
from exprc.function import check_out as _check_out
from exprc.function import copy_into as _copy_out
from exprc.fusion import VIEW_OPS, Kernel, Program, Step, lower
from exprc.graph import Node
from exprc.ops import OPS
from exprc.pipeline import FunctionGraph
from exprc.types import shape_str

_FFI = cffi.FFI()
_FFI.cdef("void exprc_run(char **ptrs, const int64_t *P, int64_t first, int64_t last, int nthreads);"
          "void exprc_set_blas(void *dgemm, void *sgemm);")
_CHAR_ARRAY = _FFI.typeof("char[]")
_backend_fb = _FFI._backend.from_buffer  # skips cffi's Python-level wrapper (~1 us per array)


def _fb(a: Any) -> Any:
    return _backend_fb(_CHAR_ARRAY, a, False)

_LOAD_LOCK = threading.Lock()

# libgomp hangs in a forked child that starts a parallel region after the parent
# used one (multiprocessing forks on Linux): children run kernels on one thread.
_SERIAL = [False]
#: Plans (each with its scratch buffers) kept per function before old ones are dropped.
_MAX_SIGNATURES = 32
#: NumPy steps that may turn out to be views of their first operand (decided per plan, by
#: whether NumPy returns a view for that signature): ``sum_to`` where nothing was broadcast,
#: transposes and reshapes of computed buffers.  They then cost nothing per call and do not
#: split the native call.
_ALIAS_OPS = VIEW_OPS | {"sum_to", "reshape_like", "split_part"}


def _after_fork_in_child() -> None:
    _SERIAL[0] = True
    from exprc.compile import dispatch

    for module in dispatch._MODULE.values():
        if module is not None:
            module.set_serial()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _pointer(a: np.ndarray) -> Any:
    try:
        return _fb(a)  # C-contiguous arrays: the cheapest way to a pointer
    except (ValueError, TypeError, BufferError):
        return _FFI.cast("char *", a.__array_interface__["data"][0])


def _broadcast(shapes: Sequence[tuple], what: str) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"{what}: shapes {' and '.join(shape_str(s) for s in shapes)} cannot be broadcast "
                         "together") from None


def _strides(arr_shape: tuple, arr_strides: tuple, space: tuple) -> list[int]:
    """Byte strides of an array read in iteration ``space`` (0 where broadcast)."""
    pad = len(space) - len(arr_shape)
    out = [0] * pad
    for n, s, full in zip(arr_shape, arr_strides, space[pad:]):
        out.append(0 if (n == 1 and full != 1) else s)
    return out


def _contiguous(shape: tuple, strides: Sequence[int], itemsize: int) -> bool:
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(list(strides))):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


class Plan:
    """Everything one input signature needs: P, pointer table, scratch buffers."""

    def __init__(self, nslots: int, p_size: int):
        self.P = np.zeros(max(p_size, 1), dtype=np.int64)
        self.P_ptr = _FFI.cast("int64_t *", _fb(self.P))
        self.ptrs = _FFI.new(f"char *[{max(nslots, 1)}]")
        self.keep: list[Any] = []  # arrays whose pointers sit in ``ptrs``
        self.out_specs: list[tuple[int, tuple, np.dtype]] = []  # (slot, shape, dtype) of fresh outputs
        self.input_views: list[tuple[int, int, int]] = []  # (slot, base slot, byte offset)
        self.copied_views: list[tuple[int, Node]] = []  # views NumPy must copy on every call
        self.scratch: dict[Node, np.ndarray] = {}
        #: NumPy steps that are views of another buffer for this signature, in program order:
        #: (node, the node it views); they run no code per call.
        self.aliases: list[tuple[Node, Node]] = []
        #: (buffer, output, buffer shape): a kernel writes the buffer straight into the output
        #: that is its identity (or a reshape of it).
        self.redirects: list[tuple[Node, Node, tuple]] = []
        #: What a call runs: (first, last) ranges of native kernels and the NumPy steps between.
        self.segments: list[tuple[int, int] | Step] = []
        self.simple = False  # set when the fast call path applies


class CKernel:
    """A compiled C-backend function (``__call__(*arrays, out=None) -> list``)."""

    backend = "c"
    #: Whether plans may turn NumPy view steps into aliases (the CUDA planner reuses
    #: :meth:`_make_plan` with its own segments and keeps every step).
    _alias_steps = True
    #: Steps run once per plan (set in __init__; subclasses with their own __init__ run none).
    _plan_time: list[Step] = []  # noqa: RUF012 - replaced per instance, never mutated

    def __init__(self, fg: FunctionGraph, cfg: Config, fuse: bool = True, native_matmul: bool = True):
        from exprc.printing import pprint

        self.cfg = cfg
        blas = _blas() if native_matmul else None
        self.program: Program = lower(list(fg.outputs), list(fg.inputs), fuse=fuse, native_matmul=blas is not None)
        summary = pprint(list(fg.outputs), max_inline=10_000)
        renderer = CRenderer(precise_math=cfg.precise_math)
        self.source, self.layout = renderer.render(self.program, summary[:2000])
        self.layout: Layout
        self._slot = {n: i for i, n in enumerate(self.layout.slots)}
        name = self.program.kernels[0].name if self.program.kernels else "k_empty"
        parts = {"compiler": cc.compiler(cfg), "compiler_version": cc.version(cfg),
                 "flags": " ".join(cc.flags(cfg)), "templates": renderer_hash(), "cpu": cc.cpu_features()}
        self.lib, self.cache_entry = cache.load(
            name, self.source, parts, lambda d: cc.compile_library(self.source, d, name, cfg), _dlopen, cfg,
            {"backend": "c", "summary": summary[:500]})
        self._run = self.lib.exprc_run
        if any(k.matmul is not None for k in self.program.kernels):
            self.lib.exprc_set_blas(*blas)
        self.nthreads = cfg.num_threads or os.cpu_count() or 1
        # NumPy steps that depend on nothing but shapes (``x.shape[0]``, element counts) run
        # once per plan, when it is made: their values are fixed for one input signature.
        self._plan_time = _shape_only_steps(self.program, set(fg.outputs))
        # Segments: consecutive kernels run in one native call; NumPy steps in between (a plan
        # may drop more steps: see _find_aliases).
        self.segments = _segments(self.program, {s.node for s in self._plan_time})
        self._bind(fg)

    def _bind(self, fg: FunctionGraph) -> None:
        """State shared by every backend that runs a lowered program through plans."""
        self.kernels = [{"name": kl.kernel.name, "kind": kl.kernel.kind, "ops": kl.kernel.ops,
                         "outputs": len(kl.kernel.outputs)} for kl in self.layout.kernels]
        self._pools: dict[tuple, list[Plan]] = {}
        self._n_in = len(fg.inputs)
        self._outputs = list(fg.outputs)
        self._inputs = list(fg.inputs)
        self._nkernels = len(self.layout.kernels)
        self._dispatchers: list[Any] = []
        self._offered: dict[int, set] = {}
        self._written = {n for s in self.program.steps for n in (s.outputs if isinstance(s, Kernel) else [s.node])}

    # -- plans ------------------------------------------------------------------
    def _value(self, node: Node, env: dict[Node, np.ndarray]) -> np.ndarray:
        """The array of ``node`` in ``env``, resolving view chains with NumPy."""
        chain = []
        while node not in env:
            if node.op == "constant":
                env[node] = node.value
                break
            chain.append(node)
            node = node.inputs[0]
            if node.op not in VIEW_OPS and node not in env and node.op != "constant":
                raise KeyError(node)
        for n in reversed(chain):
            env[n] = np.asarray(OPS[n.op].impl(env[n.inputs[0]], **dict(n.attrs)))
        return env[chain[0]] if chain else env[node]

    def _shape(self, node: Node, env: dict, shapes: dict[Node, tuple]) -> tuple:
        if node in shapes:
            return shapes[node]
        if node in env or node.op == "constant" or node.op in VIEW_OPS and node not in self._written:
            shp = self._value(node, env).shape
        elif OPS[node.op].kind == "elemwise":
            shp = _broadcast([self._shape(i, env, shapes) for i in node.inputs], node.op)
        elif OPS[node.op].kind == "reduce":
            src = self._shape(node.inputs[0], env, shapes)
            axes, keep = node.arg("axis"), node.arg("keepdims")
            if node.op in ("max", "min", "argmax", "argmin") and any(src[a] == 0 for a in axes):
                raise ShapeError(f"{node.op}: zero-size reduction over axis {axes} of shape {shape_str(src)}")
            shp = tuple(1 if d in axes else n for d, n in enumerate(src) if keep or d not in axes)
        elif node.op == "matmul":
            a, b = (self._shape(i, env, shapes) for i in node.inputs)
            ka, kb = a[-1], (b[0] if len(b) == 1 else b[-2])
            if ka != kb:
                raise ShapeError(f"matmul: shapes {shape_str(a)} and {shape_str(b)} are not aligned: "
                                 f"{ka} (last axis of the first) != {kb}")
            shp = a[:-1] + (b[-1:] if len(b) == 2 else ())
        else:
            raise LookupError(node.op)  # NumPy steps: shape found by running them
        shapes[node] = shp
        return shp

    def _make_plan(self, arrays: Sequence[np.ndarray], out: Sequence[np.ndarray] | None) -> Plan:
        lay = self.layout
        plan = Plan(len(lay.slots), lay.p_size)
        env: dict[Node, np.ndarray] = dict(zip(self._inputs, arrays))
        shapes: dict[Node, tuple] = {}
        outputs = set(self._outputs)
        # Shapes of everything the kernels and steps produce, in program order.
        for s in self.program.steps:
            if isinstance(s, Step):
                ins = [self._step_input(i, env, shapes) for i in s.node.inputs]
                with np.errstate(all="ignore"):
                    shapes[s.node] = np.shape(OPS[s.node.op].impl(*ins, **dict(s.node.attrs)))
                env[s.node] = np.zeros(shapes[s.node], s.node.dtype)
                continue
            for o in s.outputs:
                self._shape(o, env, shapes)
                env[o] = np.zeros(shapes[o], o.dtype)
        # Scratch buffers for intermediates; fresh arrays (or the caller's out=) for outputs.
        for j, o in enumerate(self._outputs):
            if o in self._written and all(o is not p for p in self._outputs[:j]):
                plan.out_specs.append((j, self._slot[o], shapes[o], np.dtype(o.dtype)))
                if out is not None and out[j] is not None:  # None: a fresh array
                    _check_out(j, out[j], shapes[o], o.dtype)
                    env[o] = out[j]
        for n in self.program.materialized:
            if n not in outputs:
                plan.scratch[n] = np.empty(shapes[n], n.dtype)
                env[n] = plan.scratch[n]
        if self._alias_steps:
            self._find_aliases(plan, env, outputs)
        for n, arr in plan.scratch.items():
            if n in self._slot:
                plan.ptrs[self._slot[n]] = _pointer(arr)
                plan.keep.append(arr)
        for step in self._plan_time:
            node = step.node
            with np.errstate(all="ignore"):
                value = OPS[node.op].impl(*[self._value(i, env) for i in node.inputs], **dict(node.attrs))
            np.copyto(env[node], value, casting="unsafe")
        # Views of inputs and constants: an offset from their base, or a copy per call.
        for n, slot in self._slot.items():
            if n.op == "constant":
                arr = np.ascontiguousarray(n.value)
                plan.keep.append(arr)
                plan.ptrs[slot] = _pointer(arr)
                env[n] = arr
            elif n.op in VIEW_OPS and n not in self._written:
                view = self._value(n, env)
                base = n
                while base.op in VIEW_OPS:
                    base = base.inputs[0]
                root = self._value(base, env)
                lo = root.__array_interface__["data"][0]
                off = view.__array_interface__["data"][0] - lo
                aliases = view.size > 0 and root.size > 0 and np.shares_memory(view, root)
                if base in self._slot and base.op != "constant" and aliases:
                    plan.input_views.append((slot, self._slot[base], off))
                elif base.op == "constant" or view.size == 0:
                    arr = np.ascontiguousarray(view)
                    plan.keep.append(arr)
                    plan.ptrs[slot] = _pointer(arr)
                    env[n] = arr
                else:
                    plan.copied_views.append((slot, n))
                    env[n] = np.ascontiguousarray(view)
        # Sizes, strides and fast-path flags of every kernel access.
        P = plan.P
        for kl in lay.kernels:
            k = kl.kernel
            if k.matmul is not None:
                for o in k.outputs:
                    self._shape(o, env, shapes)
                _matmul_params(kl, [env[n] for n, _, _ in kl.accesses], P)
                continue
            if k.reduce is not None:
                src = k.reduce.inputs[0]
                space = self._shape(src, env, shapes)
            else:
                space = shapes[k.outputs[0]]
                for o in k.outputs:
                    if shapes[o] != space:
                        raise _Unsupported("outputs of one fused loop differ in shape at run time")
            loop = tuple(space[d] for d in kl.perm)
            P[kl.p_dims:kl.p_dims + kl.ndim] = loop
            fast = k.reduce is None or kl.nkept == 0
            for j, (node, slot, pi) in enumerate(kl.accesses):
                arr = env[node]
                if k.reduce is not None and node is k.reduce:
                    st = self._reduce_out_strides(k.reduce, arr, len(space))
                else:
                    st = _strides(arr.shape, arr.strides, space)
                    if node.ndim and not (arr.shape == tuple(space) and _contiguous(arr.shape, arr.strides,
                                                                                      arr.itemsize)):
                        fast = False
                P[pi:pi + kl.ndim] = [st[d] for d in kl.perm]
            P[kl.p_flag] = 1 if fast else 0
        plan.segments = (_segments(self.program, {s.node for s in self._plan_time} | {n for n, _ in plan.aliases})
                         if plan.aliases else self.segments)
        plan.simple = (len(plan.segments) <= 1 and all(isinstance(g, tuple) for g in plan.segments)
                       and not plan.copied_views
                       and len(plan.out_specs) == len(self._outputs)
                       and all(a.size for a in arrays) and all(math.prod(shapes[o]) for o in self._outputs))
        return plan

    def _find_aliases(self, plan: Plan, env: dict[Node, np.ndarray], outputs: set[Node]) -> None:
        """Turn the NumPy steps that are views of another buffer, for this signature, into
        aliases: no buffer of their own, no work per call, their slot points into the other one.

        * An output that is the identity of a scratch buffer (``sum_to`` where nothing was
          broadcast, a reshape): the kernel writing that buffer writes into the output array.
        * Any other view of a scratch buffer: a fixed pointer into it.
        * A view of an argument or an output (a new array each call): a fixed byte offset
          from its pointer (the plan's shapes and strides fix it), in ``input_views``.
        """
        plan_time = {s.node for s in self._plan_time}
        steps = [s.node for s in self.program.steps
                 if isinstance(s, Step) and s.node.op in _ALIAS_OPS and s.node not in plan_time]
        if not steps:
            return
        slot = self._slot
        dynamic = {n for n in self._inputs if n in slot} | {self.layout.slots[s] for _, s, _, _ in plan.out_specs}

        def view_of(node: Node) -> np.ndarray | None:
            src = env[node.inputs[0]]
            view = OPS[node.op].impl(src, *[env[i] for i in node.inputs[1:]], **dict(node.attrs))
            ok = (isinstance(view, np.ndarray) and view.dtype == np.dtype(node.dtype)
                  and view.shape == env[node].shape and view.size > 0 and np.shares_memory(view, src))
            return view if ok else None

        def address(a: np.ndarray) -> int:
            return a.__array_interface__["data"][0]

        for node in steps:  # outputs first: they decide which scratch buffers become dynamic
            base = node.inputs[0]
            # (not a value computed once per plan: nothing would write it into each call's output)
            if (node not in dynamic or base not in plan.scratch or base in outputs or base not in slot
                    or base in plan_time):
                continue
            view, out, buf = view_of(node), env[node], env[base]
            # The output must hold the buffer's elements at the same places: then the buffer can
            # be the output's memory, reshaped (e.g. a dropped axis of length 1).
            if (view is None or view.strides != out.strides or address(view) != address(buf)
                    or buf.size != out.size or not (buf.flags.c_contiguous and out.flags.c_contiguous)):
                continue
            del plan.scratch[base]
            env[base] = out.reshape(buf.shape)
            dynamic.add(base)
            plan.input_views.append((slot[base], slot[node], 0))
            plan.redirects.append((base, node, buf.shape))
            plan.aliases.append((node, base))
        root: dict[Node, Node] = {}  # a dynamic alias -> the buffer with a slot that it views
        for node in steps:
            base = node.inputs[0]
            if node in outputs or node in dynamic or not (base in plan.scratch or base in dynamic):
                continue
            view = view_of(node)
            if view is None:
                continue
            plan.scratch.pop(node, None)
            env[node] = view
            plan.aliases.append((node, base))
            if base in dynamic:
                dynamic.add(node)
                r = root[node] = root.get(base, base)  # base may be an alias without a slot
                if node in slot:
                    plan.input_views.append((slot[node], slot[r], address(view) - address(env[r])))
            elif node in slot:
                plan.ptrs[slot[node]] = _pointer(view)
                plan.keep.append(view)

    def _step_input(self, node: Node, env: dict, shapes: dict) -> np.ndarray:
        try:
            return self._value(node, env)
        except KeyError:
            return np.zeros(self._shape(node, env, shapes), node.dtype)

    @staticmethod
    def _reduce_out_strides(r: Node, arr: np.ndarray, nd: int) -> list[int]:
        axes, keep = r.arg("axis"), r.arg("keepdims")
        out, j = [], 0
        for d in range(nd):
            if d in axes:
                out.append(0)
                j += 1 if keep else 0
            else:
                out.append(arr.strides[j])
                j += 1
        return out

    # -- calls --------------------------------------------------------------------
    def __call__(self, *arrays: np.ndarray, out: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        key = tuple([a.shape for a in arrays] + [a.strides for a in arrays])
        if out is not None:
            if len(out) != len(self._outputs):
                raise InputTypeError(f"out: expected {len(self._outputs)} arrays, got {len(out)}")
            if _overlapping(out, arrays):
                return _copy_out(out, self(*arrays))
            key += ("out",) + tuple((getattr(o, "shape", None), getattr(o, "strides", None)) for o in out)
        plan = self._take_plan(key)
        if plan is None:
            try:
                plan = self._make_plan(arrays, out)
            except _Unsupported:
                return self._fallback(arrays, out)
            if key not in self._pools and len(self._pools) >= _MAX_SIGNATURES:
                self._pools.clear()  # many shapes seen: drop old plans and their scratch buffers
            self._pools.setdefault(key, [])
        try:
            if plan.simple and out is None:
                try:
                    return self._execute_simple(plan, arrays)
                except ValueError:  # a non-contiguous input: from_buffer refuses it
                    pass
            return self._execute(plan, arrays, out)
        finally:
            # A dispatcher without a plan for these shapes takes this one over (the
            # Python path makes itself another plan when it needs one).
            if not (plan.simple and self._dispatchers and _contiguous_outs(out) and self._offer(plan, arrays)):
                self._pools.setdefault(key, []).append(plan)

    def _take_plan(self, key: tuple) -> Any:
        """A free plan for this signature, or None (plans are never shared by concurrent calls)."""
        pool = self._pools.get(key)
        try:
            return pool.pop() if pool else None
        except IndexError:  # another thread took the last one
            return None

    # -- the C dispatcher -----------------------------------------------------------
    def fast_path(self, single: bool) -> Any:
        """A C callable running the common call path, or None (no dispatcher here).

        It returns None for anything it does not handle, and then the Python path runs."""
        from exprc.compile import dispatch

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
            res = np.empty(shape, dt)
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
        for j, slot, shape, dt in plan.out_specs:
            res = out[j] if out is not None and out[j] is not None else np.empty(shape, dt)
            results[slot] = res
            ptrs[slot] = _pointer(res)
        for slot, base, off in plan.input_views:
            ptrs[slot] = ptrs[base] + off
        live = []
        for slot, n in plan.copied_views:
            arr = np.ascontiguousarray(self._value(n, dict(zip(self._inputs, arrays))))
            live.append(arr)
            ptrs[slot] = _pointer(arr)
        env = None
        for seg in plan.segments:
            if isinstance(seg, tuple):
                self._run(ptrs, plan.P_ptr, seg[0], seg[1], 1 if _SERIAL[0] else self.nthreads)
            else:
                if env is None:
                    env = self._env(plan, arrays, results)
                node = seg.node
                with np.errstate(all="ignore"):
                    val = OPS[node.op].impl(*[self._value(i, env) for i in node.inputs], **dict(node.attrs))
                dest = env[node]
                np.copyto(dest, val, casting="unsafe")
        outs = []
        for j, o in enumerate(self._outputs):
            slot = self._slot[o]
            res = results.get(slot)
            if res is not None and all(o is not p for p in self._outputs[:j]):
                outs.append(res)
                continue
            if env is None:
                env = self._env(plan, arrays, results)
            val = self._value(o, env) if res is None else res
            if out is not None and out[j] is not None:
                _check_out(j, out[j], np.shape(val), o.dtype)
                np.copyto(out[j], val, casting="unsafe")
                outs.append(out[j])
            else:
                outs.append(np.array(val, dtype=o.dtype, copy=True))
        return outs

    def _env(self, plan: Plan, arrays: Sequence[np.ndarray], results: dict[int, np.ndarray]) -> dict:
        env: dict[Node, np.ndarray] = dict(zip(self._inputs, arrays))
        env.update(plan.scratch)
        for slot, arr in results.items():
            env[self.layout.slots[slot]] = arr
        for node, out, shape in plan.redirects:
            env[node] = env[out].reshape(shape)
        for node, base in plan.aliases:
            if node not in env:
                env[node] = OPS[node.op].impl(env[base], *[self._value(i, env) for i in node.inputs[1:]],
                                              **dict(node.attrs))
        return env

    def _fallback(self, arrays: Sequence[np.ndarray], out: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        from exprc.codegen.python import NumpyKernel

        if not hasattr(self, "_numpy"):
            self._numpy = NumpyKernel(FunctionGraph(tuple(self._inputs), tuple(self._outputs)))
        res = self._numpy(*arrays)
        return res if out is None else _copy_out(out, res)


def _overlapping(out: Sequence[Any], arrays: Sequence[np.ndarray]) -> bool:
    """Whether an ``out=`` array may share memory with an argument (then the kernels could read what
    they already wrote: compute into fresh arrays and copy, as NumPy does for overlapping operands)."""
    return any(isinstance(o, np.ndarray) and any(np.may_share_memory(o, a) for a in arrays) for o in out)


def _segments(program: Program, skip: set[Node]) -> list[tuple[int, int] | Step]:
    """(first, last) ranges of consecutive native kernels and the NumPy steps between them, minus the
    steps whose nodes are in ``skip`` (run once per plan, or views the plan resolved)."""
    segments: list[tuple[int, int] | Step] = []
    k = 0
    for s in program.steps:
        if isinstance(s, Kernel):
            if segments and isinstance(segments[-1], tuple):
                segments[-1] = (segments[-1][0], k + 1)
            else:
                segments.append((k, k + 1))
            k += 1
        elif s.node not in skip:
            segments.append(s)
    return segments


def _contiguous_outs(out: Sequence[Any] | None) -> bool:
    """Whether a plan made for these ``out=`` arrays also serves fresh C-contiguous outputs."""
    return out is None or all(o is None or (isinstance(o, np.ndarray) and o.flags.c_contiguous) for o in out)


class _Unsupported(Exception):
    """This input signature needs something the generated loops do not do."""


def _shape_only_steps(program: Program, outputs: set[Node]) -> list[Step]:
    """The NumPy steps whose values depend only on input shapes (not data), outputs excluded."""
    from exprc.graph import toposort

    steps = [s for s in program.steps if isinstance(s, Step) and s.node not in outputs]
    if not steps:
        return []
    shape_only: dict[Node, bool] = {}
    for n in toposort([s.node for s in steps]):
        if n.op == "shape" or n.op == "constant":
            shape_only[n] = True
        elif n.op == "input" or not n.inputs:
            shape_only[n] = False
        else:
            shape_only[n] = all(shape_only[i] for i in n.inputs)
    return [s for s in steps if shape_only[s.node]]


def _matmul_params(kl: Any, arrays: list[np.ndarray], P: np.ndarray) -> None:
    """Fill a matmul kernel's block: sizes, BLAS transposes and leading dimensions (flag 1),
    or only byte strides for the plain loop (flag 0: a layout BLAS cannot take, or empty)."""
    A, B, C = arrays
    isz = A.itemsize
    M, K = (1, A.shape[0]) if A.ndim == 1 else A.shape
    N = 1 if B.ndim == 1 else B.shape[1]
    a = (0, A.strides[0]) if A.ndim == 1 else A.strides
    b = (B.strides[0], 0) if B.ndim == 1 else B.strides
    if C.ndim == 2:
        c = C.strides
    elif C.ndim == 1:
        c = (C.strides[0], 0) if B.ndim == 1 else (0, C.strides[0])
    else:
        c = (0, 0)

    def blas(s0: int, s1: int, rows: int, cols: int) -> tuple[int, int] | None:
        """(CblasNoTrans=111 | CblasTrans=112, leading dimension) for a row-major call."""
        if (s1 == isz or cols == 1) and (rows == 1 or (s0 > 0 and s0 % isz == 0 and s0 // isz >= cols)):
            return 111, (s0 // isz if rows > 1 else max(cols, 1))
        if (s0 == isz or rows == 1) and (cols == 1 or (s1 > 0 and s1 % isz == 0 and s1 // isz >= rows)):
            return 112, (s1 // isz if cols > 1 else max(rows, 1))
        return None

    ta, tb, tc = blas(*a, M, K), blas(*b, K, N), blas(*c, M, N)
    ok = min(M, N, K) > 0 and ta is not None and tb is not None and tc is not None and tc[0] == 111
    base = kl.p_flag
    P[base:base + 9] = [1 if ok else 0, M, N, K, *(ta or (0, 0)), *(tb or (0, 0)), (tc or (0, 0))[1]]
    for (_, _, pi), st in zip(kl.accesses, (a, b, c)):
        P[pi:pi + 2] = st


_BLAS: list = []


def _blas() -> tuple[Any, Any] | None:
    """Addresses of cblas_dgemm/sgemm (ILP64) in the OpenBLAS that NumPy ships, or None."""
    if not _BLAS:
        _BLAS.append(_find_blas())
    return _BLAS[0]


def _find_blas() -> tuple[Any, Any] | None:
    import glob

    if os.environ.get("EXPRC_NO_BLAS"):
        return None
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    ffi = cffi.FFI()
    for prefix in ("scipy_", ""):
        ffi_decl = (f"void {prefix}cblas_dgemm64_(int, int, int, int64_t, int64_t, int64_t, double, const double *, "
                    "int64_t, const double *, int64_t, double, double *, int64_t);"
                    f"void {prefix}cblas_sgemm64_(int, int, int, int64_t, int64_t, int64_t, float, const float *, "
                    "int64_t, const float *, int64_t, float, float *, int64_t);")
        for path in sorted(glob.glob(os.path.join(libs, "lib*openblas64*.so*"))):
            try:
                f = cffi.FFI()
                f.cdef(ffi_decl)
                lib = f.dlopen(path)
                d, s = getattr(lib, f"{prefix}cblas_dgemm64_"), getattr(lib, f"{prefix}cblas_sgemm64_")
                _KEEP_BLAS.append((f, lib))
                return f.cast("void *", d), f.cast("void *", s)
            except (OSError, AttributeError, cffi.CDefError):
                continue
    del ffi
    return None


_KEEP_BLAS: list = []
_RENDER_HASH: str | None = None


def renderer_hash() -> str:
    """Hash of the templates (a cache key part: template edits invalidate entries)."""
    global _RENDER_HASH
    if _RENDER_HASH is None:
        import hashlib

        from exprc.codegen.c import prelude, template

        _RENDER_HASH = hashlib.sha256((prelude("c_prelude.h") + template("c_module.c")).encode()).hexdigest()[:16]
    return _RENDER_HASH


def _dlopen(path: Any) -> Any:
    with _LOAD_LOCK:
        return _FFI.dlopen(str(path))


def factory(fg: FunctionGraph, cfg: Config) -> CKernel:
    return CKernel(fg, cfg, fuse="fusion" not in cfg.exclude)


__all__ = ["CKernel", "factory"]
