"""Compiled functions on Dask arrays: blockwise kernels and tree reductions (``exprc.dask``).

``exprc.dask.function(inputs, outputs)`` (or ``Function.on_dask()``) returns a callable that takes
``dask.array`` arrays and returns ``dask.array`` arrays.  exprc schedules nothing: it turns its graph
into ordinary dask layers, and dask (or ``distributed``) runs them.

The graph that splits is the optimized one, as the in-memory function compiles it (its stable
forms: ``exp(x) / sum(exp(x))`` over a row holding 720 is the max-shifted softmax, not NaN), or the
graph as written where the optimized one would not split.  Log-sum-exps and softmaxes written out
are first put in the forms exprc.logsumexp and exprc.softmax build (one tree each, below).

How a graph splits (decided per call, when the arrays' chunks are known):

* **Elementwise regions** (elementwise ops, casts, ``dimshuffle``) become one exprc kernel each, mapped
  with :func:`dask.array.blockwise` (``align_arrays=True``: dask unifies the operands' chunks and
  broadcasts size-1 axes as NumPy does).  Each block index is a label; a ``dimshuffle`` in the region
  permutes labels, so ``x + x.T`` reads block ``(i, j)`` of one operand and ``(j, i)`` of the other.
* **Reductions** become tree reductions (:func:`dask.array.reduction` with ``split_every``): an exprc
  *chunk* kernel (the elementwise producer fused with a partial reduction) per block, then exprc
  *combine* kernels up the tree.  ``sum``/``prod``/``max``/``min``/``all``/``any`` combine with
  themselves; ``mean`` carries (sum, count); ``var``/``std`` carry (count, mean, M2) and combine with
  Chan's formula (one pass over the data); ``logsumexp`` and the softmax denominator carry (max,
  shifted sum of exponentials) and combine as a stable logsumexp does; ``argmax``/``argmin`` carry
  (value, global index).  ``softmax`` over a chunked axis is two passes: that reduction, then a
  blockwise ``exp(x - max) / sum``.
* ``matmul`` delegates to ``dask.array.matmul`` on the operands' arrays; ``shape`` is read from the
  arrays; ``broadcast_to`` is ``dask.array.broadcast_to``.
* Anything else (a scan, indexing, a reshape, random draws) raises :class:`~exprc.errors.NotSplittableError`
  naming the op when the function is built.

Compile once per worker: a task carries its kernel as the graph's JSON text (never a binary) and a
hash of it (:mod:`exprc.dask_tasks`, the worker side).  The first task of a worker process that needs a kernel builds it with
:func:`exprc.function` -- a compile, or a load from the disk cache (``EXPRC_CACHE_DIR``; a folder
shared by the workers is compiled into once) -- and keeps it in a per-process table; every later task
in that process reuses it.  :func:`stats` counts both, per process.

Bits: an elementwise kernel computes each element as the in-memory function does, and where the
element sits does not change how: a kernel with vector math runs every element through the vector
loop (a chunk's last few elements on a padded block, see ``render._uniform_span``), so chunked and
in-memory elementwise results are the same bits, transcendental or not, with vector math or
``precise_math``.  Reductions add in a different order and agree to rounding (about 1e-15 relative).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import dask.array as da  # (absolute: this module is exprc.dask, the package is dask)
import numpy as np

from exprc.autodiff import stable_forms
from exprc.config import Config, current
from exprc.dask_tasks import Combine, Kernel, Map, Partial, identity, stats
from exprc.errors import InputTypeError, MissingInputError, NotSplittableError, ShapeError
from exprc.graph import Node, constant_node, input_node, rebuild, substitute, toposort
from exprc.ops import OPS
from exprc.pipeline import optimize

__all__ = ["DaskFunction", "function", "stats"]

# -- what splits -------------------------------------------------------------------------------------

#: Why the ops that do not split cannot (the rest get a generic reason).
_WHY = {
    "scan": "a scan carries state from one step to the next along its sequence axis, which dask chunks",
    "scan_output": "a scan carries state from one step to the next along its sequence axis, which dask chunks",
    "ifelse": "a condition picks whole arrays by a value computed from them",
    "getitem": "indexing reads positions of the whole array, which chunks do not know",
    "subtensor": "indexing reads positions of the whole array, which chunks do not know",
    "inc_subtensor": "indexing writes positions of the whole array, which chunks do not know",
    "reshape": "a reshape moves elements across chunk boundaries",
    "concatenate": "a concatenation moves elements across chunk boundaries",
    "print": "a print runs once per call, not once per chunk",
}
_DELEGATED = ("matmul", "shape", "broadcast_to")


def _blockwise_op(node: Node) -> bool:
    """Ops that compute each element from the same position of their operands (plus dimshuffle)."""
    row = OPS.get(node.op)
    if row is None:
        return False
    if row.kind == "elemwise":
        return getattr(row, "c_call", None) is None and not row.impure
    if node.op == "dimshuffle":
        return True
    return row.kind == "reduce" and node.arg("axis") == ()


def _foldable(outputs: Sequence[Node]) -> set[Node]:
    """Nodes computed from constants and array shapes alone (``var(x, ddof=1)``'s count, ``x.shape[0]``):
    evaluated in the driver, whatever their op."""
    out: set[Node] = set()
    for n in toposort(outputs):
        if n.op in ("constant", "shape") or (n.inputs and n.op not in ("input", "print")
                                            and all(i in out for i in n.inputs)):
            out.add(n)
    return out


def _check_splittable(outputs: Sequence[Node]) -> None:
    folded = _foldable(outputs)
    for n in toposort(outputs):
        row = OPS.get(n.op)
        kind = row.kind if row is not None else None
        if n in folded or kind in ("leaf", "reduce") or n.op in _DELEGATED or _blockwise_op(n):
            continue
        why = _WHY.get(n.op)
        if why is None and row is not None and getattr(row, "c_call", None) is not None:
            why = "a random draw depends on the element's position in the whole array"
        raise NotSplittableError(
            f"exprc.dask: the op {n.op!r} cannot be split over dask chunks ({why or 'no blockwise or tree rule for it'}); "
            f"compute that part with exprc.function on in-memory arrays, or express it with elementwise ops, "
            f"reductions and matmul")


def _strip_cast(n: Node) -> Node:
    while n.op == "cast":
        n = n.inputs[0]
    return n


def _leaves_of(node: Node) -> set[Node]:
    """The non-constant, non-blockwise nodes an elementwise region reads."""
    out, seen, stack = set(), set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "constant":
            continue
        if _blockwise_op(n):
            stack.extend(n.inputs)
        else:
            out.add(n)
    return out


def _match_lse(r: Node) -> Node | None:
    """``sum(exp(x - F(m)), A)`` with ``m = max(x, A, keepdims=True)`` and F elementwise in m alone (what
    logsumexp and softmax build): returns m."""
    if r.op != "sum" or r.inputs[0].op != "exp" or r.inputs[0].inputs[0].op != "sub":
        return None
    x, shift = r.inputs[0].inputs[0].inputs
    leaves = _leaves_of(shift) if _blockwise_op(shift) else {shift}
    if len(leaves) != 1:
        return None
    (m,) = leaves
    # keepdims, or a max over every axis (a 0-d shift, as in sum(exp(a - max(a)))) reached through
    # elementwise ops alone (no dimshuffle to re-aim at the partials in the combine)
    between, stack = [], [shift]
    while stack:
        n = stack.pop()
        if n is not m and n.op != "constant":
            between.append(n)
            stack.extend(n.inputs)
    whole = len(m.arg("axis")) == x.ndim and all(OPS[n.op].kind == "elemwise" for n in between)
    ok = (m.op == "max" and m.inputs[0] is x and m.arg("axis") == r.arg("axis") and (m.arg("keepdims") or whole)
          and x.dtype in ("float32", "float64"))
    return m if ok else None


def _match_m2(r: Node) -> Node | None:
    """``sum|mean(square(x - mean(x, A, keepdims=True)), A)`` (what var and std build): returns the mean."""
    if r.op not in ("sum", "mean") or r.inputs[0].op != "square" or r.inputs[0].inputs[0].op != "sub":
        return None
    x, mu = r.inputs[0].inputs[0].inputs
    ok = (mu.op == "mean" and _strip_cast(mu.inputs[0]) is _strip_cast(x) and mu.arg("axis") == r.arg("axis")
          and mu.arg("keepdims") and r.dtype in ("float32", "float64"))
    return mu if ok else None


# -- the function ------------------------------------------------------------------------------------

class DaskFunction:
    """An exprc function over dask arrays (see the module docstring).  Call it like the in-memory
    function, with dask arrays (NumPy arrays and scalars are wrapped as one chunk); it returns dask
    arrays (one, or a list for several outputs) without computing anything."""

    def __init__(self, inputs: Sequence[Node], outputs: Node | Sequence[Node], config: Config | None = None,
                 split_every: int | dict | None = None, num_threads: int = 1):
        self._single = isinstance(outputs, Node)
        outs = [outputs] if self._single else list(outputs)
        for i, o in enumerate(outs):
            if not isinstance(o, Node):
                raise TypeError(f"exprc.dask.function: output {i} must be an exprc expression, got {type(o).__name__}")
        self.inputs = tuple(inputs)
        for i, v in enumerate(self.inputs):
            if not isinstance(v, Node) or v.op != "input":
                raise TypeError(f"exprc.dask.function: input {i} must be a variable (exprc.vector(...)), got {v!r}")
        missing = [n for n in toposort(outs) if n.op == "input" and n not in self.inputs]
        if missing:
            raise MissingInputError(f"exprc.dask.function: the outputs read {missing[0].arg('name') or 'a variable'!r}, "
                                    "which is not among the inputs")
        _check_splittable(outs)
        cfg = config or current()
        # The graph the in-memory function compiles: its stable forms too (as written, a softmax or a
        # log-sum-exp over a row holding 720 was NaN and inf here, finite in memory).  Written-out
        # log-sum-exps and softmaxes first as exprc.logsumexp and exprc.softmax build them (autodiff's
        # stable_forms), whose max and shifted sum one tree carries (_match_lse): the optimizer's own
        # forms (a tie count, a row guard with both branches) took 3 and 4 trees, 1.8x and 1.6x the
        # time on a (3000, 2000) array in (750, 500) chunks; their values are those functions', within
        # rounding of the in-memory ones.  Kept as written if a rewrite made it unsplittable (not seen).
        optimized = list(optimize(stable_forms(outs), cfg).outputs)
        try:
            _check_splittable(optimized)
            outs = optimized
        except NotSplittableError:
            pass
        self.outputs = outs
        self._folded = _foldable(outs)
        # The max (mean) that a logsumexp/softmax (var) pattern computes on the way: lowering it means
        # lowering the pattern's one-pass reduction, not a pass of its own.
        self._partners: dict[Node, Node] = {}
        for n in toposort(outs):
            p = _match_lse(n)
            p = _match_m2(n) if p is None else p
            if p is not None:
                self._partners.setdefault(p, n)
        if num_threads < 1:
            raise ValueError(f"exprc.dask.function: num_threads must be >= 1, got {num_threads}")
        # Threads inside one kernel call: dask already runs one task per worker thread.
        self._options = {"precise_math": cfg.precise_math, "fast_math": cfg.fast_math, "exclude": list(cfg.exclude),
                         "openmp": cfg.openmp and num_threads > 1, "num_threads": num_threads}
        if cfg.backend is not None:
            self._options["backend"] = cfg.backend
        self.split_every = split_every

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        values = list(args)
        if len(values) > len(self.inputs):
            raise InputTypeError(f"expected {len(self.inputs)} arguments, got {len(values)}")
        values += [None] * (len(self.inputs) - len(values))
        names = {v.arg("name"): i for i, v in enumerate(self.inputs)}
        for k, v in kwargs.items():
            if k not in names:
                raise InputTypeError(f"unknown keyword argument {k!r}")
            values[names[k]] = v
        env = {}
        for i, (var, value) in enumerate(zip(self.inputs, values)):
            env[var] = _as_input(i, var, value)
        run = _Lowering(env, self._options, self.split_every, self._partners, self._folded)
        outs = [run.dask_value(o) for o in self.outputs]
        return outs[0] if self._single else outs


def _as_input(pos: int, var: Node, value: Any) -> da.Array:
    label = f"argument {var.arg('name')!r} (position {pos})" if var.arg("name") else f"argument at position {pos}"
    if value is None:
        raise InputTypeError(f"missing {label}")
    arr = value if isinstance(value, da.Array) else da.asarray(np.asarray(value))
    want = f"a {var.dtype} dask array with ndim {var.ndim}"
    if arr.ndim != var.ndim:
        raise InputTypeError(f"{label}: expected {want}, got ndim {arr.ndim}")
    if any(np.isnan(s) for s in arr.shape):
        raise ShapeError(f"{label}: chunk sizes are unknown (NaN); call .compute_chunk_sizes() first")
    for want_s, got in zip(var.type.shape, arr.shape):
        if want_s is not None and want_s != got:
            raise ShapeError(f"{label}: expected shape {var.type.shape}, got {arr.shape}")
    if arr.dtype != np.dtype(var.dtype):
        dt = np.dtype(var.dtype)
        if not (np.can_cast(arr.dtype, dt, "safe") or (arr.dtype.kind in "biu" and dt.kind == "f")):
            raise InputTypeError(f"{label}: expected {want}, got {arr.dtype} (casting to {dt} would lose information)")
        arr = arr.astype(dt)
    return arr


class _Lowering:
    """One call's translation: node -> NumPy constant or dask array, memoized."""

    def __init__(self, env: dict[Node, da.Array], options: dict, split_every: Any, partners: dict[Node, Node],
                 folded: set[Node]):
        self.values: dict[Node, Any] = dict(env)
        self.folded = folded
        self.partners = partners
        self.options = options
        self.split_every = split_every
        self._drop_labels: dict[tuple, str] = {}

    # -- values ------------------------------------------------------------------------------------
    def dask_value(self, node: Node) -> da.Array:
        v = self.value(node)
        return v if isinstance(v, da.Array) else da.from_array(np.asarray(v, dtype=node.dtype))

    def value(self, node: Node) -> Any:
        v = self.values.get(node)
        if v is None:
            v = self._lower(node)
            self.values[node] = v
        return v

    def _lower(self, node: Node) -> Any:
        owner = self.partners.get(node)
        if owner is not None:
            self.value(owner)  # sets this node's value too
            if node in self.values:
                return self.values[node]
        if node.op == "constant":
            return node.value
        if node in self.folded:
            return self._fold(node)
        if node.op == "matmul":
            a, b = (self.dask_value(i) for i in node.inputs)
            return da.matmul(a, b).astype(node.dtype)
        if node.op == "broadcast_to":
            return da.broadcast_to(self.dask_value(node.inputs[0]), node.arg("shape")).astype(node.dtype)
        if _blockwise_op(node):
            return self._map(node)
        if OPS[node.op].kind == "reduce":
            return self._reduce(node)
        raise NotSplittableError(f"exprc.dask: the op {node.op!r} cannot be split over dask chunks")  # (checked earlier)

    # -- regions -----------------------------------------------------------------------------------
    def _region(self, roots: Sequence[Node], labels: tuple, inline: frozenset = frozenset()) -> tuple:
        """The elementwise region above ``roots`` (all with axes ``labels``) as a kernel graph: returns
        (kernel outputs, kernel inputs, [(dask array, its labels)])."""
        self._root_labels = labels
        memo: dict[tuple, Node] = {}
        kin: list[Node] = []
        args: list[tuple] = []
        stack = [(r, labels) for r in roots]
        while stack:
            node, lab = stack[-1]
            if (node, lab) in memo:
                stack.pop()
                continue
            inner = node in inline or (_blockwise_op(node) and node.op != "constant")
            if not inner:
                stack.pop()
                memo[(node, lab)] = self._leaf(node, lab, kin, args)
                continue
            kids = self._child_labels(node, lab)
            pending = [(c, cl) for c, cl in zip(node.inputs, kids) if (c, cl) not in memo]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            memo[(node, lab)] = rebuild(node, [memo[(c, cl)] for c, cl in zip(node.inputs, kids)])
        return [memo[(r, labels)] for r in roots], kin, args

    def _child_labels(self, node: Node, lab: tuple) -> list[tuple]:
        if node.op == "dimshuffle":
            order = node.arg("order")
            (x,) = node.inputs
            where = {o: k for k, o in enumerate(order) if o != "x"}
            # a dropped axis has size 1: a label of its own, which blockwise contracts over one block
            return [tuple(lab[where[d]] if d in where else self._dropped(node, lab, d) for d in range(x.ndim))]
        if OPS[node.op].kind == "reduce" and not node.arg("keepdims"):
            # (an inline max over every axis, without keepdims: its operand spans the region's axes)
            return [self._root_labels]
        return [lab[len(lab) - c.ndim:] if c.ndim else () for c in node.inputs]

    def _dropped(self, node: Node, lab: tuple, d: int) -> str:
        # the same label every time this axis is met, so that the region's memo sees one operand
        key = (node, lab, d)
        if key not in self._drop_labels:
            self._drop_labels[key] = f"s{len(self._drop_labels)}"
        return self._drop_labels[key]

    def _leaf(self, node: Node, lab: tuple, kin: list, args: list) -> Node:
        v = self.value(node)
        if not isinstance(v, da.Array):
            v = np.asarray(v, dtype=node.dtype)
            if all(s == 1 for s in v.shape):
                return constant_node(v, node.dtype)  # scalars stay in the kernel's source
            v = da.from_array(v)
        var = input_node(f"a{len(kin)}", node.dtype, tuple(1 if s == 1 else None for s in v.shape))
        kin.append(var)
        args.append((v, lab))
        return var

    def _kernel(self, kin: Sequence[Node], kout: Sequence[Node]) -> Kernel:
        return Kernel(kin, kout, self.options)

    def _map(self, node: Node) -> Any:
        labels = tuple(f"i{k}" for k in range(node.ndim))
        (out,), kin, args = self._region([node], labels)
        if not args:  # only constants: folded here
            return np.asarray(out.eval(), dtype=node.dtype)
        return self._blockwise(Map(self._kernel(kin, [out])), labels, args, node.dtype, token="exprc-map")

    def _blockwise(self, fn: Any, labels: tuple, args: list[tuple], dtype: str, adjust: dict | None = None,
                   extra: Sequence[tuple] = (), token: str = "exprc") -> da.Array:
        flat = [x for a, lab in list(args) + list(extra) for x in (a, lab)]
        carried = {lab for _, labs in args for lab in labs}
        new_axes = {lab: 1 for lab in labels if lab not in carried}
        return da.blockwise(fn, labels, *flat, dtype=dtype, meta=np.empty((0,) * len(labels), dtype=dtype),
                            align_arrays=True, concatenate=True, new_axes=new_axes or None, adjust_chunks=adjust,
                            token=token)

    # -- reductions --------------------------------------------------------------------------------
    def _reduce(self, r: Node) -> Any:
        axes = tuple(r.arg("axis"))
        x = r.inputs[0]
        m = _match_lse(r)
        if m is not None:
            return self._tree(r, x, axes, "lse", partner=m)
        mu = _match_m2(r)
        if mu is not None:
            return self._tree(r, x, axes, "var_mean" if r.op == "mean" else "var", partner=mu)
        if r.op == "mean":
            return self._tree(r, x, axes, "count")
        if r.op in ("argmax", "argmin"):
            return self._tree(r, x, axes, "arg")
        return self._tree(r, x, axes, "plain")

    def _tree(self, r: Node, x: Node, axes: tuple[int, ...], mode: str, partner: Node | None = None) -> Any:
        nd = x.ndim
        labels = tuple(f"i{k}" for k in range(nd))
        kd = dict(r.attrs, keepdims=True)
        if mode == "plain":
            roots = [OPS[r.op].make((x,), kd)]
        elif mode == "count":
            roots = [OPS["sum"].make((x,), kd)]
        elif mode == "arg":
            roots = [OPS["max" if r.op == "argmax" else "min"].make((x,), kd), OPS[r.op].make((x,), kd)]
        elif mode == "lse":
            # (the partner's identity too: over a block of an empty axis its max is -inf, as in one piece)
            roots = [OPS["max"].make((partner.inputs[0],), {**kd, **dict(partner.attrs), "keepdims": True}),
                     OPS["sum"].make((x,), kd)]
        else:  # var: the chunk's mean and M2 = sum((x - mean)^2), in float64 as exprc's float32 sums accumulate
            from exprc import api

            x64 = api.astype(r.inputs[0].inputs[0].inputs[0], "float64")
            mu64 = OPS["mean"].make((x64,), kd)
            roots = [mu64, OPS["sum"].make((api.square(x64 - mu64),), kd)]
        kout, kin, args = self._region(roots, labels, inline=frozenset(roots) | ({partner} if partner is not None else set()))
        dtypes = [o.dtype for o in kout] + (["float64"] if mode in ("count", "var", "var_mean") else [])
        if mode == "arg":
            dtypes[1] = "int64"
        extra, full = [], ()
        if mode == "arg":
            chunkss, _ = da.core.unify_chunks(*[y for a, lab in args for y in (a, lab)])
            extra = [(da.arange(sum(chunkss[labels[a]]), chunks=(chunkss[labels[a]],), dtype=np.int64),
                      (labels[a],)) for a in axes]
            full = tuple(int(sum(chunkss[labels[a]])) for a in axes)
        part = Partial(self._kernel(kin, kout), [lab for _, lab in args], labels, axes, dtypes,
                        "count" if mode in ("count", "var", "var_mean") else mode, full)
        partials = self._blockwise(part, labels, args, dtypes[0], adjust={labels[a]: 1 for a in axes}, extra=extra,
                                   token=f"exprc-{r.op}-chunk")
        comb = self._combine_kernel(r, mode, dtypes, axes, nd, partner)
        final_dtypes = [r.dtype] if partner is None else [partner.dtype, r.dtype]
        if mode == "arg":
            final_dtypes = ["int64"]
        res = da.reduction(partials, identity, Combine(comb, axes, mode, True, final_dtypes),
                           combine=Combine(comb, axes, mode, False, final_dtypes), axis=axes, keepdims=True,
                           dtype=final_dtypes[-1], split_every=self.split_every, concatenate=False, name=f"exprc-{r.op}",
                           meta=np.empty((0,) * nd, dtype=final_dtypes[-1]))
        if len(final_dtypes) == 2:
            pv = res.map_blocks(operator.getitem, 0, dtype=final_dtypes[0], meta=np.empty((0,) * nd, final_dtypes[0]))
            # the max / mean the pattern computed on the way
            self.values[partner] = pv if partner.arg("keepdims") else pv.squeeze(axis=axes)
            res = res.map_blocks(operator.getitem, 1, dtype=final_dtypes[1], meta=np.empty((0,) * nd, final_dtypes[1]))
        return res if r.arg("keepdims") else res.squeeze(axis=axes)

    def _fold(self, r: Node) -> np.ndarray:
        leaves = [n for n in toposort([r]) if n.op == "shape"]
        consts = {n: constant_node(np.array(np.shape(self.value(n.inputs[0])), dtype=np.int64)) for n in leaves}
        (e,) = substitute([r], consts) if consts else (r,)
        return np.asarray(e.eval(), dtype=r.dtype)

    def _combine_kernel(self, r: Node, mode: str, dtypes: list[str], axes: tuple, nd: int,
                        partner: Node | None) -> Kernel:
        """The exprc graph that merges partials (fields concatenated along ``axes``) into one partial."""
        from exprc import api

        ps = [input_node(f"p{k}", dt, (None,) * nd) for k, dt in enumerate(dtypes)]
        kd = {"axis": axes, "keepdims": True}
        # (identity: a max that is -inf over an empty axis stays so over the empty partials of empty blocks)
        red = {op: (lambda v, identity=False, op=op: OPS[op].make((v,), {**kd, **({"identity": True} if identity else {})}))
               for op in ("sum", "max", "min", "prod", "all", "any")}
        if mode == "plain":
            outs = [red[r.op](ps[0], bool(r.arg("identity")))]
        elif mode == "count":
            outs = [red["sum"](ps[0]), red["sum"](ps[1])]
        elif mode == "arg":
            v, idx = ps
            top = red["max" if r.op == "argmax" else "min"](v)
            hit = api.equal(v, top)
            if v.dtype in ("float32", "float64"):
                hit = api.logical_or(hit, api.logical_and(api.isnan(v), api.isnan(top)))
            # ties and NaNs: the smallest global index among the blocks that hold the extremum
            outs = [top, red["min"](api.where(hit, idx, np.iinfo(np.int64).max))]
        elif mode == "lse":
            mv, sv = ps
            m = partner  # max(x, A, keepdims=True): F's only non-constant leaf
            shift_node = r.inputs[0].inputs[0].inputs[1]
            top = red["max"](mv, bool(m.arg("identity")))
            f_part, f_top = (substitute([shift_node], {m: v})[0] for v in (mv, top))
            # s_i * exp(F(m_i) - F(M)) is block i's sum of exp(x - F(M)); a block of -inf alone adds 0
            # (its terms are exp(-inf) = 0, while its shifted sum may be NaN from -inf - -inf).
            term = api.where(api.logical_and(api.equal(mv, -np.inf), api.greater(top, -np.inf)), 0.0,
                             sv * api.exp(f_part - f_top))
            outs = [top, api.astype(red["sum"](term), sv.dtype)]
        else:  # var: Chan's combine of (mean, M2, n)
            mu, m2, n = ps
            mu64, m264 = api.astype(mu, "float64"), api.astype(m2, "float64")
            big_n = red["sum"](n)
            has = api.greater(n, 0.0)
            mean = red["sum"](api.where(has, n * mu64, 0.0)) / big_n
            m2_all = red["sum"](api.where(has, m264 + n * api.square(mu64 - mean), 0.0))
            outs = [api.astype(mean, mu.dtype), api.astype(m2_all, m2.dtype), big_n]
        return self._kernel(ps, outs)


def function(inputs: Sequence[Node], outputs: Node | Sequence[Node], *, config: Config | None = None,
             split_every: int | dict | None = None, num_threads: int = 1) -> DaskFunction:
    """Compile-on-the-workers version of :func:`exprc.function` for dask arrays.

    ``inputs``/``outputs`` as for :func:`exprc.function`.  ``config``: the :class:`~exprc.Config`
    whose math options (``precise_math``, ``fast_math``, ``exclude``, ``backend``) the kernels use
    (default: the current one).  ``split_every``: the tree reductions' fan-in (dask's default when
    None).  ``num_threads``: threads one kernel call may use inside a task (1: dask already runs a
    task per worker thread).  Raises :class:`~exprc.errors.NotSplittableError` naming the op when
    the graph has one that cannot run chunk by chunk."""
    return DaskFunction(inputs, outputs, config=config, split_every=split_every, num_threads=num_threads)
