"""The host planner shared by the native backends: shapes, strides, views and aliases per signature.

A lowered :class:`~exprc.fusion.Program` runs its kernels over arrays whose shapes and strides
are known only at call time.  For each input signature (shapes and strides of the arguments, and
of the ``out=`` arrays) :meth:`Planner.make_plan` works out, once, on the host:

* the shape of every value the kernels and NumPy steps produce (broadcasting, reductions,
  matmul; a NumPy step's shape by running it on zeros);
* the parameter block ``P`` every kernel reads: loop sizes in the kernel's axis order, byte
  strides of each access (0 where broadcast) and the flag of its contiguous fast path;
* the scratch buffers for intermediates, and the arrays whose address is fixed for the plan
  (``fixed``: scratch, constants, views of constants);
* views of arguments and outputs as byte offsets from their base slot (``input_views``), or as
  copies made per call (``copied_views``) where NumPy cannot give a view;
* with ``resolve_steps`` (the C backend, whose buffers live on the host): the NumPy steps that
  are views of another buffer for this signature (``aliases``: they cost nothing per call) and
  the steps whose value depends on shapes only (run once, here);
* with ``resolve_steps``: a scatter's buffer donated to it by its operand (``_donate``): a
  scatter into zeros whose result is a fresh output gets that output allocated zeroed and its
  fill kernel skipped (``zeroed``, ``skipped_kernels``); and the gathers nothing reads but for
  their shape (``models``: only their index checks run);
* ``segments``: runs of consecutive native kernels with the NumPy steps between them.

A backend turns the plan into its own pointer table (cffi pointers for C, device pointers for
CUDA, which plans on host *shadows* of its device arrays).  Signatures the generated loops do not
cover raise :class:`Unsupported`; the backend then runs the reference backend.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from exprc.backends.outputs import check_out
from exprc.errors import ShapeError
from exprc.fusion import VIEW_OPS, Kernel, Program, Step, epilogue_arrays, row_levels, single_element
from exprc.graph import Node, toposort
from exprc.ops import OPS
from exprc.ops.elemwise import all_zero_bits, plus_zero, zero_fill
from exprc.ops.reduce import check_identity
from exprc.ops.shape import basic_key
from exprc.types import shape_str

#: NumPy steps that may turn out to be views of their first operand (decided per plan, by
#: whether NumPy returns a view for that signature): ``sum_to`` where nothing was broadcast,
#: transposes and reshapes of computed buffers.  They then cost nothing per call and do not
#: split the native call.
ALIAS_OPS = VIEW_OPS | {"sum_to", "reshape_like", "split_part"}


class HostPlan:
    """Everything one input signature needs, in host terms (see the module docstring)."""

    def __init__(self, p_size: int):
        self.P = np.zeros(max(p_size, 1), dtype=np.int64)
        #: slot -> array whose address is fixed for this plan (scratch, constants, static views).
        self.fixed: dict[int, np.ndarray] = {}
        self.out_specs: list[tuple[int, int, tuple, np.dtype]] = []  # (output, slot, shape, dtype) of fresh outputs
        self.input_views: list[tuple[int, int, int]] = []  # (slot, base slot, byte offset)
        self.copied_views: list[tuple[int, Node]] = []  # views NumPy must copy on every call
        self.scratch: dict[Node, np.ndarray] = {}
        #: NumPy steps that are views of another buffer for this signature, in program order:
        #: (node, the node it views); they run no code per call.
        self.aliases: list[tuple[Node, Node]] = []
        #: The aliases that are their node's buffer seen the same way (``sum_to`` where nothing was
        #: broadcast): a NumPy step reads the buffer itself, with no view made per call.
        self.identities: set[Node] = set()
        #: NumPy steps whose buffer the kernels write directly (see Planner._slice_writes): they
        #: run nothing per call.
        self.prewritten: set[Node] = set()
        #: (buffer, output, buffer shape): a kernel writes the buffer straight into the output
        #: that is its identity (or a reshape of it).
        self.redirects: list[tuple[Node, Node, tuple]] = []
        #: Fresh outputs (by output index) that must read as zeros before the steps run: a scatter
        #: into zeros writes into them, and the kernel that filled the zeros is skipped.
        self.zeroed: set[int] = set()
        #: Kernels (by position in ``program.kernels``) this plan does not run (zero fills whose
        #: buffers are allocated zeroed, in ``zeroed``).
        self.skipped_kernels: set[int] = set()
        #: NumPy steps whose value only lends its shape (the model of a ``sum_to``): a zero-stride
        #: array of that shape, no buffer, no work per call but the step's index checks.
        self.models: dict[Node, np.ndarray] = {}
        #: What a call runs: (first, last) ranges of native kernels and the NumPy steps between.
        self.segments: list[tuple[int, int] | Step] = []
        self.simple = False  # one native call, no NumPy step or copied view: the fast call path applies


class Planner:
    """Plans for one lowered program and its rendered layout (shared by every signature)."""

    def __init__(self, program: Program, layout: Any, inputs: Sequence[Node], outputs: Sequence[Node],
                 resolve_steps: bool):
        self.program = program
        self.layout = layout
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.resolve_steps = resolve_steps
        self.slot = {n: i for i, n in enumerate(layout.slots)}
        self.written = {n for s in program.steps for n in (s.outputs if isinstance(s, Kernel) else [s.node])}
        # NumPy steps that depend on nothing but shapes (``x.shape[0]``, element counts) run
        # once per plan, when it is made: their values are fixed for one input signature.
        self.plan_time = shape_only_steps(program, set(outputs)) if resolve_steps else []
        #: Index steps whose value nothing reads, only its shape (see HostPlan.models).
        self.shape_models = shape_models(program, set(outputs)) if resolve_steps else set()
        self._kernel_number = {id(k): j for j, k in enumerate(program.kernels)}
        self._producer = {o: k for k in program.kernels for o in k.outputs}
        self._consumers: dict[Node, int] = {}  # over the whole graph (views of leaves are in no step)
        for n in toposort(list(outputs)):
            for i in dict.fromkeys(n.inputs):
                self._consumers[i] = self._consumers.get(i, 0) + 1
        #: Consecutive kernels run in one native call; NumPy steps in between (a plan may drop
        #: more steps: see _find_aliases).
        self.segments = segments(program, {s.node for s in self.plan_time})
        self._reference: Any = None

    def reference(self) -> Any:
        """The NumPy reference kernel of the same graph, for signatures the loops do not cover."""
        if self._reference is None:
            from exprc.backends.reference import NumpyKernel
            from exprc.pipeline import FunctionGraph

            self._reference = NumpyKernel(FunctionGraph(tuple(self.inputs), tuple(self.outputs)))
        return self._reference

    def value(self, node: Node, env: dict[Node, np.ndarray]) -> np.ndarray:
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

    def shape(self, node: Node, env: dict, shapes: dict[Node, tuple]) -> tuple:
        """The shape of ``node`` for the arrays in ``env`` (memoized in ``shapes``).

        Iterative (an explicit stack, operands left to right, each before its user): an elemwise
        chain thousands of nodes deep must plan without Python's recursion limit.  The order is
        the one a recursive walk would take, so the first error raised is the same.
        """
        if node in shapes:
            return shapes[node]
        stack: list[tuple[Node, int]] = [(node, 0)]
        while stack:
            n, i = stack[-1]
            if i == 0:
                if n in shapes:
                    stack.pop()
                    continue
                if n in env or n.op == "constant" or n.op in VIEW_OPS and n not in self.written:
                    shapes[n] = self.value(n, env).shape
                    stack.pop()
                    continue
                if OPS[n.op].kind not in ("elemwise", "reduce") and n.op not in ("matmul", "sum_to"):
                    raise LookupError(n.op)  # NumPy steps: shape found by running them
            # operands whose shape the node needs: all of them (a reduction reads only the first)
            need = 1 if OPS[n.op].kind == "reduce" else len(n.inputs)
            if i < need:
                stack[-1] = (n, i + 1)
                child = n.inputs[i]
                if child not in shapes:
                    stack.append((child, 0))
                continue
            stack.pop()
            shapes[n] = self._shape_from_operands(n, shapes)
        return shapes[node]

    @staticmethod
    def _shape_from_operands(node: Node, shapes: dict[Node, tuple]) -> tuple:
        """The shape of an elemwise, reduce, matmul or sum_to node whose operands' shapes are known."""
        if node.op == "sum_to":
            return shapes[node.inputs[1]]
        if OPS[node.op].kind == "elemwise":
            return _broadcast([shapes[i] for i in node.inputs], node.op)
        if OPS[node.op].kind == "reduce":
            src = shapes[node.inputs[0]]
            axes, keep = node.arg("axis"), node.arg("keepdims")
            check_identity(node.op, src, axes, bool(node.arg("identity", False)))
            return tuple(1 if d in axes else n for d, n in enumerate(src) if keep or d not in axes)
        a, b = (shapes[i] for i in node.inputs)  # matmul
        ka, kb = a[-1], (b[0] if len(b) == 1 else b[-2])
        if ka != kb:
            raise ShapeError(f"matmul: shapes {shape_str(a)} and {shape_str(b)} are not aligned: "
                             f"{ka} (last axis of the first) != {kb}")
        if len(a) <= 2 and len(b) <= 2:
            return a[:-1] + (b[-1:] if len(b) == 2 else ())
        try:  # (a batch: operands >= 2-d here)
            batch = tuple(np.broadcast_shapes(a[:-2], b[:-2]))
        except ValueError:
            raise ShapeError(f"matmul: the batch axes of shapes {shape_str(a)} and {shape_str(b)} cannot be "
                             f"broadcast together ({shape_str(a[:-2])} and {shape_str(b[:-2])})") from None
        return batch + (a[-2], b[-1])

    def make_plan(self, arrays: Sequence[np.ndarray], out: Sequence[np.ndarray] | None,
                  plan: HostPlan | None = None) -> HostPlan:
        """Fill ``plan`` (a new :class:`HostPlan` when None) for these arguments and ``out=`` arrays."""
        lay = self.layout
        plan = HostPlan(lay.p_size) if plan is None else plan
        env: dict[Node, np.ndarray] = dict(zip(self.inputs, arrays))
        shapes: dict[Node, tuple] = {}
        outputs = set(self.outputs)
        # Shapes of everything the kernels and steps produce, in program order.
        for s in self.program.steps:
            if isinstance(s, Step):
                rule = OPS[s.node.op].step_shape
                if rule is not None:  # (placeholder zeros would be wrong index values)
                    known = {j: self.value(i, env) for j, i in enumerate(s.node.inputs) if i in env or i.op == "constant"}
                    shapes[s.node] = rule(s.node, [shapes[i] if i in shapes else self.shape(i, env, shapes)
                                                   for i in s.node.inputs], known)
                else:
                    ins = [self._step_input(i, env, shapes) for i in s.node.inputs]
                    with np.errstate(all="ignore"):
                        shapes[s.node] = np.shape(OPS[s.node.op].impl(*ins, **dict(s.node.attrs)))
                env[s.node] = np.zeros(shapes[s.node], s.node.dtype)
                continue
            for o in s.outputs:
                self.shape(o, env, shapes)
                env[o] = np.zeros(shapes[o], o.dtype)
        # Scratch buffers for intermediates; fresh arrays (or the caller's out=) for outputs.
        for j, o in enumerate(self.outputs):
            if o in self.written and all(o is not p for p in self.outputs[:j]):
                plan.out_specs.append((j, self.slot[o], shapes[o], np.dtype(o.dtype)))
                if out is not None and out[j] is not None:  # None: a fresh array
                    check_out(j, out[j], shapes[o], o.dtype)
                    env[o] = out[j]
        for n in self.program.materialized:
            if n in self.shape_models:
                plan.models[n] = env[n] = np.broadcast_to(np.zeros((), n.dtype), shapes[n])
            elif n not in outputs:
                plan.scratch[n] = np.empty(shapes[n], n.dtype)
                env[n] = plan.scratch[n]
        if self.resolve_steps:
            self._find_aliases(plan, env, outputs)
            self._donate(plan, env, outputs, out)
            self._slice_writes(plan, env, outputs)
        for n, arr in plan.scratch.items():
            if n in self.slot:
                plan.fixed[self.slot[n]] = arr
        for step in self.plan_time:
            node = step.node
            with np.errstate(all="ignore"):
                value = OPS[node.op].impl(*[self.value(i, env) for i in node.inputs], **dict(node.attrs))
            np.copyto(env[node], value, casting="unsafe")
        # Views of inputs and constants: an offset from their base, or a copy per call.
        for n, slot in self.slot.items():
            if n.op == "constant":
                arr = np.ascontiguousarray(n.value)
                plan.fixed[slot] = arr
                env[n] = arr
            elif n.op in VIEW_OPS and n not in self.written:
                view = self.value(n, env)
                base = n
                while base.op in VIEW_OPS:
                    base = base.inputs[0]
                root = self.value(base, env)
                lo = root.__array_interface__["data"][0]
                off = view.__array_interface__["data"][0] - lo
                aliases = view.size > 0 and root.size > 0 and np.shares_memory(view, root)
                if base in self.slot and base.op != "constant" and aliases:
                    plan.input_views.append((slot, self.slot[base], off))
                elif base.op == "constant" or view.size == 0:
                    arr = np.ascontiguousarray(view)
                    plan.fixed[slot] = arr
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
                    self.shape(o, env, shapes)
                matmul_params(kl, [env[n] for n, _, _ in kl.accesses], P)
                continue
            if k.reduce is not None:
                src = k.reduce.inputs[0]
                space = self.shape(src, env, shapes)
            elif k.rows:
                space = self._row_space(k, env, shapes)
            else:
                space = shapes[k.outputs[0]]
                for o in k.outputs:
                    if shapes[o] != space:
                        raise Unsupported("outputs of one fused loop differ in shape at run time")
            for d in kl.draws:  # a draw's values follow its element index: it must span the loop
                if self.shape(d, env, shapes) != tuple(space):
                    raise Unsupported("a random draw is broadcast inside a fused loop")
            loop = tuple(space[d] for d in kl.perm)
            P[kl.p_dims:kl.p_dims + kl.ndim] = loop
            fast = k.reduce is None or kl.nkept == 0
            if k.rows:  # contiguous along the row: every access the passes read or write per element
                row = row_levels(k)[0]
            late = epilogue_arrays(k)
            for n in k.epilogue:
                if n.op == "sum_to" and tuple(self.shape(n.inputs[0], env, shapes)) != tuple(self.shape(n, env, shapes)):
                    raise Unsupported(f"an epilogue's sum_to reduces {self.shape(n.inputs[0], env, shapes)}")
            for j, (node, slot, pi) in enumerate(kl.accesses):
                arr = env[node]
                if k.rows:
                    out_1d = j >= len(k.operands) and OPS[node.op].kind == "reduce" and node.ndim == 1
                    st = self._reduce_out_strides(node, arr, 2) if out_1d else _strides(arr.shape, arr.strides, space)
                    if node.ndim and not row[node] and st[1] != arr.itemsize:
                        fast = False
                    P[pi:pi + 2] = st
                    continue
                if k.reduce is not None and (node is k.reduce or node in late):
                    if node.ndim == 0:
                        st = [0] * len(space)
                    else:  # (an epilogue's array is over the reduction's result, element for element)
                        if tuple(arr.shape) != tuple(self.shape(k.reduce, env, shapes)):
                            raise Unsupported(f"an epilogue array of shape {arr.shape} in a reduction to "
                                              f"{self.shape(k.reduce, env, shapes)}")
                        st = self._reduce_out_strides(k.reduce, arr, len(space))
                else:
                    st = _strides(arr.shape, arr.strides, space)
                    if node.ndim and j not in kl.models and not single_element(node) and not (
                            arr.shape == tuple(space) and _contiguous(arr.shape, arr.strides, arr.itemsize)):
                        fast = False  # (a single element, read as a scalar there, does not stop it)
                P[pi:pi + kl.ndim] = [st[d] for d in kl.perm]
            P[kl.p_flag] = 1 if fast else 2 if kl.rowflat and _rows_contiguous(kl, P) else 0
        plan.segments = (segments(self.program, {s.node for s in self.plan_time} | {n for n, _ in plan.aliases}
                                  | plan.prewritten, plan.skipped_kernels)
                         if plan.aliases or plan.skipped_kernels or plan.prewritten else self.segments)
        plan.simple = (len(plan.segments) <= 1 and all(isinstance(g, tuple) for g in plan.segments)
                       and not plan.copied_views and not plan.zeroed
                       and len(plan.out_specs) == len(self.outputs)
                       and all(a.size for a in arrays) and all(math.prod(shapes[o]) for o in self.outputs))
        return plan

    def _row_space(self, k: Any, env: dict, shapes: dict) -> tuple:
        """The (rows, columns) a row kernel runs over for these arrays: its first reduction's operand's
        shape; every whole-row node must have it and every row node one value per row, or the call
        goes to the reference (a broadcast the kernel's passes cannot express)."""
        row = row_levels(k)[0]
        red = next(n for n in k.body if OPS[n.op].kind == "reduce")
        space = tuple(self.shape(red.inputs[0], env, shapes))
        for n in k.body:
            shape = tuple(self.shape(n, env, shapes))
            if n.op == "sum_to" and tuple(self.shape(n.inputs[0], env, shapes)) != shape:
                raise Unsupported(f"a row kernel's sum_to reduces {self.shape(n.inputs[0], env, shapes)} to {shape}")
            if OPS[n.op].kind == "reduce":
                if tuple(self.shape(n.inputs[0], env, shapes)) != space:  # (an operand (n, 1) in this call)
                    raise Unsupported(f"a row kernel's {n.op} reduces {self.shape(n.inputs[0], env, shapes)} "
                                      f"in a ({space[0]}, {space[1]}) loop")
                want = (space[0], 1) if n.arg("keepdims") else (space[0],)
            else:
                want = (space[0], 1) if row[n] else space
            if shape != want:
                raise Unsupported(f"a row kernel's {n.op} has shape {shape} in a ({space[0]}, {space[1]}) loop")
        for x in k.operands:
            shape = tuple(self.shape(x, env, shapes))
            if row[x] and x.ndim and shape[0] not in (1, space[0]):
                raise Unsupported(f"a row operand of shape {shape} in a ({space[0]}, {space[1]}) loop")
        return space

    def _find_aliases(self, plan: HostPlan, env: dict[Node, np.ndarray], outputs: set[Node]) -> None:
        """Turn the NumPy steps that are views of another buffer, for this signature, into
        aliases: no buffer of their own, no work per call, their slot points into the other one.

        * An output that is the identity of a scratch buffer (``sum_to`` where nothing was
          broadcast, a reshape): the kernel writing that buffer writes into the output array.
        * Any other view of a scratch buffer: a fixed pointer into it.
        * A view of an argument or an output (a new array each call): a fixed byte offset
          from its pointer (the plan's shapes and strides fix it), in ``input_views``.
        """
        plan_time = {s.node for s in self.plan_time}
        steps = [s.node for s in self.program.steps
                 if isinstance(s, Step) and s.node.op in ALIAS_OPS and s.node not in plan_time]
        if not steps:
            return
        slot = self.slot
        dynamic = {n for n in self.inputs if n in slot} | {self.layout.slots[s] for _, s, _, _ in plan.out_specs}

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
            src = env[base]
            if view.shape == src.shape and view.strides == src.strides and address(view) == address(src):
                plan.identities.add(node)
            if base in dynamic:
                dynamic.add(node)
                r = root[node] = root.get(base, base)  # base may be an alias without a slot
                if node in slot:
                    plan.input_views.append((slot[node], slot[r], address(view) - address(env[r])))
            elif node in slot:
                plan.fixed[slot[node]] = view

    def _donate(self, plan: HostPlan, env: dict[Node, np.ndarray], outputs: set[Node],
                out: Sequence[np.ndarray | None] | None) -> None:
        """Let a NumPy step that updates its first operand (``Op.in_place``: scatter) work in that
        operand's buffer when nothing else reads it: the gradient of a gather, a scatter into
        zeros, then costs one pass over the array (the zeros) instead of three (zeros, a copy, the
        update).  The operand's buffer becomes the step's (its output, or its scratch).

        When that operand is zeros (a kernel that only fills zeros, or a view of a zero constant)
        and the step's buffer is a fresh output, not even that pass runs: the output is allocated
        zeroed (``HostPlan.zeroed``: untouched pages of a large fresh block cost nothing) and the
        fill kernel is skipped.  An ``out=`` array or a scratch buffer (reused by the next call)
        keeps its fill."""
        if not any(isinstance(s, Step) and OPS[s.node.op].in_place for s in self.program.steps):
            return
        readers: dict[Node, int] = {}
        for s in self.program.steps:
            body = s.body if isinstance(s, Kernel) else [s.node]
            inside = set(body)
            for m in body:
                for x in m.inputs:
                    if x not in inside:
                        readers[x] = readers.get(x, 0) + 1
        dynamic = {self.layout.slots[s] for _, s, _, _ in plan.out_specs}
        fresh = {self.layout.slots[s]: j for j, s, _, _ in plan.out_specs if out is None or out[j] is None}
        zero_fills: dict[Node, int] = {}  # a zero fill donated to a fresh output -> that output
        for s in self.program.steps:
            if not isinstance(s, Step) or not OPS[s.node.op].in_place:
                continue
            node, x = s.node, s.node.inputs[0]
            if (node in fresh and x not in outputs and x not in self.written and self._consumers.get(x) == 1
                    and _zero_constant(x) and x.dtype == node.dtype
                    and self.value(x, dict(env)).shape == env[node].shape):
                # zeros of a static shape (a view of a zero constant): the fresh output already is them
                plan.zeroed.add(fresh[node])
                plan.redirects.append((x, node, env[node].shape))
                continue
            if (x not in plan.scratch or x in outputs or readers.get(x) != 1 or x not in self.slot
                    or env[x].shape != env[node].shape or env[x].dtype != env[node].dtype):
                continue
            if node in plan.scratch:
                del plan.scratch[x]
                plan.scratch[x] = env[x] = plan.scratch[node]
            elif node in dynamic and node in self.slot and env[node].flags.c_contiguous:
                del plan.scratch[x]
                env[x] = env[node]
                plan.input_views.append((self.slot[x], self.slot[node], 0))
                plan.redirects.append((x, node, env[node].shape))
                if node in fresh and zero_fill(x):
                    zero_fills[x] = fresh[node]
        for k in {id(self._producer[x]): self._producer[x] for x in zero_fills}.values():
            if all(o in zero_fills for o in k.outputs):  # (a kernel merged with other loops still runs)
                plan.skipped_kernels.add(self._kernel_number[id(k)])
                plan.zeroed.update(zero_fills[o] for o in k.outputs)

    def _slice_writes(self, plan: HostPlan, env: dict[Node, np.ndarray], outputs: set[Node]) -> None:
        """``inc_subtensor(zeros, g, static slice)`` (the gradient of a slice: an LSTM's gate
        slices) with ``g`` computed by a kernel for it alone: the step's scratch buffer is zeroed
        once, when the plan is made, and ``g``'s kernel writes ``g`` straight into its slice on
        every call (nothing else ever writes the buffer, so the rest stays zero); the step runs
        nothing, so a body made of such steps is one native call.  ``g`` must be ``h + 0.0``
        (rule ``slice_grad_plus_zero``) or an integer: 0 + g is what the step computes, and a
        -0.0 becomes +0.0 there."""
        shared = {}
        for arr in plan.scratch.values():
            shared[id(arr)] = shared.get(id(arr), 0) + 1
        for s in self.program.steps:
            if not isinstance(s, Step) or s.node.op != "inc_subtensor":
                continue
            u = s.node
            x, g = u.inputs
            if (g not in self._producer or not zero_fill(x) or not plus_zero(g)
                    or any(n not in plan.scratch or n in outputs for n in (u, g)) or g not in self.slot
                    or self._consumers.get(g) != 1 or shared[id(plan.scratch[u])] != 1):
                continue
            buf = np.zeros_like(plan.scratch[u])
            part = buf[basic_key(u.arg("index"))]
            if part.shape != env[g].shape or buf.shape != env[x].shape:
                continue
            plan.scratch[u] = env[u] = buf
            plan.scratch[g] = env[g] = part
            plan.prewritten.add(u)

    def _step_input(self, node: Node, env: dict, shapes: dict) -> np.ndarray:
        try:
            return self.value(node, env)
        except KeyError:
            return np.zeros(self.shape(node, env, shapes), node.dtype)

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

    def host_env(self, plan: HostPlan, arrays: Sequence[np.ndarray], results: dict[int, np.ndarray]) -> dict:
        """The arrays of everything a NumPy step may read: arguments, scratch, outputs, aliases."""
        env: dict[Node, np.ndarray] = dict(zip(self.inputs, arrays))
        env.update(plan.scratch)
        env.update(plan.models)
        for slot, arr in results.items():
            env[self.layout.slots[slot]] = arr
        for node, out, shape in plan.redirects:
            env[node] = env[out].reshape(shape)
        identities = plan.identities
        for node, base in plan.aliases:
            if node in identities:
                env[node] = env[base]
            elif node not in env:
                env[node] = OPS[node.op].impl(env[base], *[self.value(i, env) for i in node.inputs[1:]],
                                              **dict(node.attrs))
        return env



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


def segments(program: Program, skip: set[Node], skip_kernels: Collection[int] = ()) -> list[tuple[int, int] | Step]:
    """(first, last) ranges of consecutive native kernels and the NumPy steps between them, minus the
    steps whose nodes are in ``skip`` (run once per plan, or views the plan resolved) and the
    kernels numbered in ``skip_kernels`` (zero fills of buffers allocated zeroed)."""
    segments: list[tuple[int, int] | Step] = []
    k = 0
    for s in program.steps:
        if isinstance(s, Kernel):
            if k in skip_kernels:
                segments.append(None)  # (splits the range; dropped below)
            elif segments and isinstance(segments[-1], tuple):
                segments[-1] = (segments[-1][0], k + 1)
            else:
                segments.append((k, k + 1))
            k += 1
        elif s.node not in skip:
            segments.append(s)
    return [g for g in segments if g is not None]


class PlanPool:
    """Free plans per signature.  A call takes one and gives it back afterwards, so concurrent calls
    never share scratch buffers; past ``max_signatures`` signatures the old plans are dropped."""

    def __init__(self, max_signatures: int = 32):
        self.max_signatures = max_signatures
        self.plans: dict[tuple, list[Any]] = {}

    def take(self, key: tuple) -> Any:
        """A free plan for this signature, or None."""
        pool = self.plans.get(key)
        try:
            return pool.pop() if pool else None
        except IndexError:  # another thread took the last one
            return None

    def made(self, key: tuple) -> None:
        """A plan was made for ``key``: make room for its signature."""
        if key not in self.plans and len(self.plans) >= self.max_signatures:
            self.plans.clear()  # many shapes seen: drop old plans and their scratch buffers
        self.plans.setdefault(key, [])

    def give(self, key: tuple, plan: Any) -> None:
        self.plans.setdefault(key, []).append(plan)


def describe(layout: Any) -> list[dict]:
    """What ``Function.kernels`` shows: one dict per fused loop, in run order."""
    return [{"name": kl.kernel.name, "kind": kl.kernel.kind, "ops": kl.kernel.ops, "outputs": len(kl.kernel.outputs)}
            for kl in layout.kernels]


class Unsupported(Exception):
    """This input signature needs something the generated loops do not do."""


def shape_only_steps(program: Program, outputs: set[Node]) -> list[Step]:
    """The NumPy steps whose values depend only on input shapes (not data), outputs excluded."""
    steps = [s for s in program.steps if isinstance(s, Step) and s.node not in outputs]
    if not steps:
        return []
    shape_only: dict[Node, bool] = {}
    for n in toposort([s.node for s in steps]):
        if n.op == "shape" or n.op == "constant":
            shape_only[n] = True
        elif n.op == "input" or not n.inputs or OPS[n.op].impure:
            shape_only[n] = False
        else:
            shape_only[n] = all(shape_only[i] for i in n.inputs)
    return [s for s in steps if shape_only[s.node]]


#: Readers that take only the shape of an operand, by op: the operand positions (None: all
#: but the first).  ``shape`` is listed whole.
_SHAPE_READERS = {"sum_to": (1,), "reshape_like": (1,), "split_part": None, "shape": (0,)}


def shape_models(program: Program, outputs: set[Node]) -> set[Node]:
    """Index steps (``subtensor``: a gather) that nothing reads but for their shape: the model of a
    ``sum_to`` in the gradient of ``W[idx] * G``.  Their shape follows from the operands' shapes
    (``Op.step_shape``), so a call runs only their index checks (the same errors, no gather)."""
    candidates = {s.node for s in program.steps if isinstance(s, Step) and s.node.op == "subtensor"
                  and s.node not in outputs and not OPS["subtensor"].value_shaped(s.node)}
    if not candidates:
        return set()
    for s in program.steps:
        body = s.body if isinstance(s, Kernel) else [s.node]
        inside = set(body)
        for m in body:
            pos = _SHAPE_READERS.get(m.op, ()) if isinstance(s, Step) else ()
            for j, x in enumerate(m.inputs):
                if x in candidates and x not in inside and not (j in pos if pos is not None else j > 0):
                    candidates.discard(x)  # its values are read
    return candidates


def in_place_outputs(program: Program, inputs: Sequence[Node], outputs: Sequence[Node]) -> dict[int, int]:
    """``{output index: input index}``: outputs that may be computed in their input's own buffer
    (``inc_subtensor(W[idx], v)`` as the update of a shared ``W``: a sparse step touches its rows,
    not a copy of the table).  A pair is listed only when that is invisible: the output is a
    NumPy step updating its first operand (``Op.in_place``: scatter), that operand is the input;
    every other step reading the input or a view of it runs before the scatter; the scatter's
    other operands and every output are not views of it; the output is returned once; and only
    native kernels and views, which cannot raise, run after it (an error never leaves a
    half-updated input: the scatter itself checks every index before it writes)."""
    pos = {s.node: p for p, s in enumerate(program.steps) if isinstance(s, Step)}
    order = toposort(list(outputs))
    found: dict[int, int] = {}
    for j, u in enumerate(outputs):
        x = u.inputs[0] if u.inputs else None
        late = program.steps[pos[u] + 1:] if u in pos else []
        if (not OPS[u.op].in_place or x not in inputs or u not in pos or list(outputs).count(u) != 1
                or any(isinstance(s, Step) and s.node.op not in ALIAS_OPS for s in late)):
            continue
        views = {x}  # x and whatever may share its memory
        for n in order:
            if n.op in ALIAS_OPS and n.inputs[0] in views:
                views.add(n)
        if views & set(outputs) or views & set(u.inputs[1:]):
            continue
        if any(views & set(s.operands if isinstance(s, Kernel) else s.node.inputs) for s in late):
            continue
        found[j] = list(inputs).index(x)
    return found


def _rows_contiguous(kl: Any, P: np.ndarray) -> bool:
    """Every array access of 2-d elementwise kernel ``kl`` steps by one element along the loop's
    inner dimension, as its strides in ``P`` say (each row is contiguous: ``exprc_rowflat`` runs
    the flat loop once per row)."""
    if P[kl.p_dims + 1] == 1:
        return True
    return all(P[pi + 1] == np.dtype(node.dtype).itemsize
               for j, (node, _, pi) in enumerate(kl.accesses) if node.ndim and j not in kl.models)


def _zero_constant(x: Node) -> bool:
    """``x`` is a constant, or a view of one, holding only zeros (+0.0: what fresh pages read as)."""
    while x.op in VIEW_OPS:
        x = x.inputs[0]
    return x.op == "constant" and all_zero_bits(x.value)


#: Entries of a matmul kernel's parameter block after its flag: M, N, K, transA, lda, transB, ldb,
#: ldc, the batch's length and whether it is summed; then 3 byte strides per matrix (rows, columns,
#: batch).  The C renderer reads them in this order.
MATMUL_PARAMS = 10


def matmul_params(kl: Any, arrays: list[np.ndarray], P: np.ndarray) -> None:
    """Fill a matmul kernel's block: sizes, BLAS transposes and leading dimensions (flag 1),
    or only byte strides for the plain loop (flag 0: a layout BLAS cannot take, or empty); then
    the batch: its length, whether it is summed (``sum(a @ b, axis=0)``, see fusion.lower) and
    each matrix's byte stride along it.  A batch whose matrices follow each other the way rows
    (or, summed, the contracted axis) do is folded into one BLAS call."""
    A, B, C = arrays
    isz = A.itemsize
    summed = kl.kernel.outputs[0] is not kl.kernel.matmul
    batch = [x.shape[0] for x in (A, B) if x.ndim == 3]
    nb = 0 if 0 in batch else max(batch, default=1)
    sb = [x.strides[0] if x.ndim == 3 and x.shape[0] != 1 else 0 for x in (A, B)]
    sb.append(C.strides[0] if C.ndim == 3 and not summed else 0)
    # One matrix of each operand (the batch axis dropped): its shape and byte strides.
    (sa, ta), (sbs, tb), (sc, tc) = ((x.shape[1:], x.strides[1:]) if x.ndim == 3 else (x.shape, x.strides)
                                     for x in (A, B, C))
    M, K = (1, sa[0]) if len(sa) == 1 else sa
    N = 1 if len(sbs) == 1 else sbs[1]
    a = (0, ta[0]) if len(sa) == 1 else ta
    b = (tb[0], 0) if len(sbs) == 1 else tb
    if len(sc) == 2:
        c = tc
    elif len(sc) == 1:
        c = (tc[0], 0) if len(sbs) == 1 else (0, tc[0])
    else:
        c = (0, 0)
    if nb > 1 and not summed and A.ndim == 3 and B.ndim == 2 and M > 1 and sb[0] == M * a[0] and sb[2] == M * c[0]:
        M, nb, sb = M * nb, 1, [0, 0, 0]  # rows of consecutive matrices: one (nb*M, K) @ (K, N)
    elif nb > 1 and summed and K > 1 and sb[0] == K * a[1] and sb[1] == K * b[0]:
        K, nb, sb = K * nb, 1, [0, 0, 0]  # sum_t A_t @ B_t = [A_0 .. A_T] @ [B_0; ..; B_T]

    def blas(s0: int, s1: int, rows: int, cols: int) -> tuple[int, int] | None:
        """(CblasNoTrans=111 | CblasTrans=112, leading dimension) for a row-major call."""
        if (s1 == isz or cols == 1) and (rows == 1 or (s0 > 0 and s0 % isz == 0 and s0 // isz >= cols)):
            return 111, (s0 // isz if rows > 1 else max(cols, 1))
        if (s0 == isz or rows == 1) and (cols == 1 or (s1 > 0 and s1 % isz == 0 and s1 // isz >= rows)):
            return 112, (s1 // isz if cols > 1 else max(rows, 1))
        return None

    ta, tb, tc = blas(*a, M, K), blas(*b, K, N), blas(*c, M, N)
    ok = min(M, N, K, nb) > 0 and ta is not None and tb is not None and tc is not None and tc[0] == 111
    base = kl.p_flag
    P[base:base + 1 + MATMUL_PARAMS] = [1 if ok else 0, M, N, K, *(ta or (0, 0)), *(tb or (0, 0)),
                                        (tc or (0, 0))[1], nb, 1 if summed else 0]
    for (_, _, pi), st, batch in zip(kl.accesses, (a, b, c), sb):
        P[pi:pi + 3] = (*st, batch)


__all__ = [
    "ALIAS_OPS",
    "MATMUL_PARAMS",
    "HostPlan",
    "PlanPool",
    "Planner",
    "Unsupported",
    "describe",
    "in_place_outputs",
    "matmul_params",
    "segments",
    "shape_models",
    "shape_only_steps",
]
