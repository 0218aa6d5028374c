"""A seeded differential fuzzer: random graphs, every backend against NumPy, mismatches explained or reported.

One *batch* is a pool of input variables (random dtypes, broadcast-compatible shapes from one base
shape, sometimes of size 0) and ``width`` random graphs over them, compiled together as one function
(one compiler run for many graphs: the long mode runs 10,000 graphs in minutes, and fusion sees
graphs side by side).  The op sequences are :mod:`graphgen`'s tables (each op written once for exprc
and NumPy) plus raw, unguarded ops (``log`` of negatives, ``sqrt``, ``x ** y``, division by zero,
integer ``//`` and ``%`` by zero) so NaN, ±inf and -0.0 flow through.  Arguments mix ordinary values
with 0, -0.0, NaN, ±inf, huge, tiny and subnormal numbers, and are passed contiguous, reversed,
strided or in Fortran order.

Each batch is checked three ways:

* **front end**: exprc with ``exclude=("stability",)`` on the C and on the NumPy backend against the
  op sequence evaluated by NumPy directly (graph building, promotion, broadcasting, exact rewrites,
  codegen);
* **backends**: the default pipeline's optimized graph on C against the same graph evaluated node by
  node with each op's NumPy reference (what every backend is tested against);
* **exceptions**: where NumPy raises for a graph, exprc must raise too;
* **NaN contract** of the stability rewrites (elementwise graphs): against the exact value of the
  formula (mpmath, the exact table of :mod:`exprc.accuracy.exact`), the default pipeline returns NaN
  where the formula is undefined and NumPy's naive evaluation says so too, and does not return NaN
  where the formula is defined and the naive evaluation is not NaN (a rewrite may fix an overflow,
  never create or hide an undefined point).

A value mismatch is *explained* when it lies within the formula's own rounding noise: the
reference is evaluated again ten times with every inexact intermediate perturbed by a relative
error of up to 4 ulp (all up, all down, and eight random mixes), and an element agrees when exprc's
value is inside the spread of those runs (NaN matching NaN, an infinity matching the same infinity)
— so a ``floor`` or a comparison on a value one rounding from its threshold, or ``tan`` near a pole,
is not a bug.  Every other mismatch is reported with its seed and graph.

    python tests/fuzz.py --graphs 10000            # the long mode (also: python bench/fuzz.py)
    python tests/fuzz.py --graphs 2000 --rows      # matrices and row reductions (row kernels)
    python tests/fuzz.py --seed 1234 --graphs 1 -v # replay one batch
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphgen
from graphgen import NP

import exprc
from exprc.ops import OPS

#: Unguarded ops: their NaN/inf/-0.0 results are part of what must agree.
RAW_UNARY: list[tuple[str, Callable]] = [
    ("raw_log", lambda m, x: m.log(x)),
    ("raw_sqrt", lambda m, x: m.sqrt(x)),
    ("raw_log1p", lambda m, x: m.log1p(x)),
    ("raw_exp", lambda m, x: m.exp(x)),
    ("raw_expm1", lambda m, x: m.expm1(x)),
    ("raw_arcsin", lambda m, x: m.arcsin(x)),
    ("raw_arccosh", lambda m, x: m.arccosh(x)),
    ("raw_arctanh", lambda m, x: m.arctanh(x)),
    ("raw_recip", lambda m, x: 1.0 / x),
    ("raw_neg_pow", lambda m, x: m.astype(x, "float64") ** -1.5),
    ("raw_log_1_plus", lambda m, x: m.log(1 + x)),
    ("raw_log_sigmoid", lambda m, x: m.log(1 / (1 + m.exp(-x)))),
    ("raw_exp_minus_1", lambda m, x: m.exp(x) - 1),
]
RAW_BINARY: list[tuple[str, Callable]] = [
    ("raw_div", lambda m, x, y: x / y),
    ("raw_pow", lambda m, x, y: m.astype(x, "float64") ** m.astype(y, "float64")),
    ("raw_floordiv", lambda m, x, y: x // y),
    ("raw_mod", lambda m, x, y: x % y),
    ("raw_log_mul", lambda m, x, y: m.log(x * y)),
    ("raw_sqrt_diff", lambda m, x, y: m.sqrt(x * x + y * y) - x),
    ("raw_logaddexp", lambda m, x, y: m.log(m.exp(x) + m.exp(y))),
]
UNARY = graphgen.UNARY + RAW_UNARY
BINARY = graphgen.BINARY + RAW_BINARY
REDUCE = graphgen.REDUCE

DTYPES = ("float64", "float64", "float32", "int64", "int32")
SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e300, -1e300, 1e-300, 5e-324, 1e-8, 710.0, -745.0, 0.5, -1.0])
PERTURB_RUNS = 8
ULPS = 4


@dataclass
class Graph:
    """One random graph: its steps (name, fn, operand indices, extra args) over the pool's inputs."""

    steps: list
    out: int  # index into the value list (inputs first, then one value per step)

    def names(self) -> list[str]:
        return [s[0] for s in self.steps]


@dataclass
class Batch:
    seed: int
    inputs: list  # exprc variables
    args: list  # NumPy arrays (possibly non-contiguous views)
    graphs: list[Graph]
    nodes: list = field(default_factory=list)  # exprc output node per graph


@dataclass
class Mismatch:
    seed: int
    graph: int
    check: str
    detail: str
    steps: list

    def __str__(self) -> str:
        return f"seed {self.seed} graph {self.graph} [{self.check}] steps={self.steps}: {self.detail}"


# -- generation -----------------------------------------------------------------------------------------------
def _values(rng: np.random.Generator, dtype: str, shape: tuple) -> np.ndarray:
    n = int(np.prod(shape))
    if dtype.startswith("int"):
        vals = rng.integers(-5, 6, n)
        if n and rng.random() < 0.1:
            info = np.iinfo(dtype)
            vals[rng.integers(n)] = rng.choice([info.min, info.max])
        return vals.astype(dtype).reshape(shape)
    vals = rng.uniform(-3, 3, n)
    special = rng.random(n) < 0.3
    vals[special] = rng.choice(SPECIAL, int(special.sum()))
    with np.errstate(over="ignore"):
        return vals.astype(dtype).reshape(shape)


def _layout(rng: np.random.Generator, arr: np.ndarray) -> np.ndarray:
    """The same values, laid out as the caller might hand them over."""
    kind = rng.integers(5)
    if arr.ndim == 0 or kind == 0:
        return arr
    if kind == 1:  # reversed along the last axis (negative strides)
        return np.ascontiguousarray(arr[..., ::-1])[..., ::-1]
    if kind == 2:  # every other element of a bigger array
        big = np.repeat(arr, 2, axis=-1)
        return big[..., ::2]
    if kind == 3:
        return np.asfortranarray(arr)
    return arr.copy()


def make_batch(seed: int, width: int = 16, max_ops: int = 6, rows: bool = False) -> Batch:
    """A pool of inputs and ``width`` graphs over it, all decided by ``seed``.

    ``rows``: matrices (often square, rows of up to 33) and reductions over their last axis, with and
    without keepdims, for the C backend's row kernels (a row sum without keepdims broadcasts along
    the columns: a row kernel once read it per row); float inputs without huge values, whose sums
    over 33 entries would depend on the summation order beyond the rounding envelope."""
    rng = np.random.default_rng(seed)
    if rows:
        n = int(rng.choice([2, 3, 5, 9, 33]))
        base = (n, n) if rng.random() < 0.6 else (int(rng.choice([1, 2, 7, 40])), n)
    else:
        base = tuple(int(rng.choice([1, 2, 3, 4, 5])) for _ in range(rng.integers(0, 4)))
        if base and rng.random() < 0.08:
            base = base[:-1] + (0,)  # an empty axis
    inputs, args = [], []
    for i in range(rng.integers(1, 4 if rows else 5)):
        nd = int(rng.choice([2, 2, 2, 1, 0])) if rows else int(rng.integers(0, len(base) + 1))
        shape = tuple(1 if rng.random() < (0.15 if rows else 0.25) else s for s in base[len(base) - nd:])
        dtype = str(rng.choice(["float64", "float32"] if rows else DTYPES))
        static = rng.random() < 0.5
        inputs.append(exprc.tensor(f"x{i}", dtype, shape=shape if static else None, ndim=None if static else nd))
        vals = _values(rng, dtype, shape)
        if rows:
            big = np.isfinite(vals) & (np.abs(vals) > 1e6)
            vals[big] = np.sign(vals[big]) * 2.5
        args.append(vals)
    graphs = []
    for _ in range(width):
        shapes = [a.shape for a in args]
        steps: list = []
        for _ in range(rng.integers(2 if rows else 1, max_ops + 1)):
            kind = rng.choice(["unary", "binary", "reduce"], p=[0.3, 0.4, 0.3] if rows else [0.35, 0.45, 0.2])
            i = int(rng.integers(len(shapes)))
            if kind == "binary":
                j = int(rng.integers(len(shapes)))
                try:
                    shape = np.broadcast_shapes(shapes[i], shapes[j])
                except ValueError:
                    kind, j = "unary", None
            if kind == "reduce" and rows and not shapes[i]:
                kind = "unary"
            if kind == "unary":
                name, fn = UNARY[rng.integers(len(UNARY))]
                step, shape = (name, fn, (i,), ()), shapes[i]
            elif kind == "binary":
                name, fn = BINARY[rng.integers(len(BINARY))]
                step = (name, fn, (i, j), ())
            else:
                name, fn = REDUCE[rng.integers(len(REDUCE))]
                nd = len(shapes[i])
                if rows:
                    axis = -1 if rng.random() < 0.6 else int(rng.integers(-nd, nd))
                else:
                    axis = None if nd == 0 or rng.random() < 0.4 else int(rng.integers(-nd, nd))
                keep = bool(rng.random() < 0.5)
                step = (name, fn, (i,), (axis, keep))
                shape = np.sum(np.zeros(shapes[i]), axis=axis, keepdims=keep).shape
            steps.append(step)
            shapes.append(tuple(shape))
        graphs.append(Graph(steps, len(shapes) - 1))
    args = [_layout(rng, a) for a in args]
    return Batch(seed, inputs, args, graphs)


# -- reference evaluation -------------------------------------------------------------------------------------
class _Extreme:
    """A stand-in generator whose every perturbation is the largest, upwards or downwards: with the random
    runs, the envelope then always spans a monotone formula's full rounding range."""

    def __init__(self, sign: int, steps: bool = True):
        self.sign = sign
        #: Also push each step's own result (operators such as ``**``)?  Without: only the functions'
        #: results move, so a step's rounding does not cancel its functions' (log(exp(-5) + exp(x))
        #: at x = -1, float32: pushing exp up and the negative result's magnitude up cancel: seed 100221).
        self.steps = steps

    def uniform(self, lo: float, hi: float, shape: tuple) -> np.ndarray:
        return np.full(shape, hi if self.sign > 0 else lo)


def _perturbations(seed: int) -> list:
    """The generators of the envelope runs: both extremes, then PERTURB_RUNS random ones."""
    rng = np.random.default_rng(seed)
    return [_Extreme(1), _Extreme(-1), _Extreme(1, steps=False), _Extreme(-1, steps=False)] + [rng] * PERTURB_RUNS


def _perturb(rng: np.random.Generator | _Extreme | None, v: object, operands: list = ()) -> object:
    """``v`` times (1 + e), |e| up to ULPS units of the coarsest float among ``v`` and the operands (a step
    that computes in float32 and returns float64 carries float32 rounding)."""
    if rng is None:
        return v
    a = np.asarray(v)
    if a.dtype.kind != "f" or a.size == 0:
        return v
    floats = [np.asarray(o).dtype for o in operands if np.asarray(o).dtype.kind == "f"] + [a.dtype]
    eps = max(float(np.finfo(d).eps) for d in floats) * ULPS
    return (a * (1 + rng.uniform(-eps, eps, a.shape))).astype(a.dtype)


def _needed(graph: Graph, n_inputs: int) -> set[int]:
    """The steps the output depends on (NumPy must not raise for a step the graph does not use)."""
    need, stack = set(), [graph.out]
    while stack:
        k = stack.pop()
        if k >= n_inputs and k not in need:
            need.add(k)
            stack.extend(graph.steps[k - n_inputs][2])
    return need


#: Functions whose results C and NumPy both round exactly (or that only select or compare): never perturbed.
_EXACT = frozenset({"where", "clip", "astype", "maximum", "minimum", "equal", "not_equal", "isnan", "isinf",
                    "isfinite", "abs", "absolute", "floor", "ceil", "round", "rint", "sign", "square", "sqrt",
                    "negative", "all", "any", "max", "min", "floor_divide", "mod", "remainder"})


class _Perturbing:
    """:data:`NP` whose inexact functions (exp, tan, sum …) return results perturbed by a few ulp: the
    rounding noise of every elementary function inside a step, where C and NumPy may differ."""

    def __init__(self, rng: np.random.Generator | _Extreme):
        self._rng = rng

    def __getattr__(self, name: str) -> object:
        fn = getattr(NP, name)
        if not callable(fn) or name in _EXACT:
            return fn
        rng = self._rng
        if name in ("sum", "mean"):
            return lambda *a, **k: _reorder(rng, fn(*a, **k), fn(np.abs(a[0]), *a[1:], **k), a[0], k.get("axis"))
        return lambda *a, **k: _perturb(rng, fn(*a, **k), list(a))


def _reorder(rng: np.random.Generator | _Extreme, v: object, size: object, x: object, axis: object) -> object:
    """A sum ``v`` (or mean) of the terms of ``x`` moved by up to n eps sum(|x|) (``size``: that sum of
    magnitudes): what adding n terms in another order (pairwise, by SIMD lanes, by chunks) may change
    where they cancel, beyond a few ulp of the result (33 terms of a row: 13 ulp in a seed of the row
    batches)."""
    a, x = np.asarray(v), np.asarray(x)
    if a.dtype.kind != "f" or a.size == 0:
        return v
    n = x.size if axis is None else int(np.prod([x.shape[d] for d in np.atleast_1d(axis)])) if x.ndim else 1
    eps = float(np.finfo(a.dtype).eps) * ULPS
    with np.errstate(all="ignore"):
        out = a + rng.uniform(-1.0, 1.0, a.shape) * eps * n * np.asarray(size, dtype=a.dtype)
    return np.where(np.isfinite(out), out, a).astype(a.dtype)


def run_steps(graph: Graph, args: list, rng: np.random.Generator | _Extreme | None = None) -> np.ndarray:
    """NumPy's answer for ``graph``; with ``rng``, every inexact intermediate is perturbed (see
    :class:`_Perturbing`) and so is each step's result (operators such as ``**``)."""
    vals: list = [np.array(a, copy=True) for a in args]
    need = _needed(graph, len(args))
    m = NP if rng is None else _Perturbing(rng)
    with np.errstate(all="ignore"):
        for k, (_, fn, idx, extra) in enumerate(graph.steps, start=len(args)):
            if k not in need:
                vals.append(None)
                continue
            operands = [vals[j] for j in idx]
            out = fn(m, *operands, *extra)
            vals.append(out if isinstance(rng, _Extreme) and not rng.steps else _perturb(rng, out, operands))
    return np.asarray(vals[graph.out])


def run_nodes(order: list, inputs: list, args: list, rng: np.random.Generator | _Extreme | None = None) -> dict:
    """Every node of an (optimized) graph evaluated with its op's NumPy reference, perturbed likewise."""
    vals = dict(zip(inputs, args))
    with np.errstate(all="ignore"):
        for n in order:
            if n in vals:
                continue
            if n.op == "constant":
                vals[n] = n.value
                continue
            operands = [vals[i] for i in n.inputs]
            out = OPS[n.op].impl(*operands, **dict(n.attrs))
            if rng is not None and n.op in ("sum", "mean") and np.asarray(out).dtype.kind == "f":
                size = OPS[n.op].impl(np.abs(operands[0]), **dict(n.attrs))
                out = _reorder(rng, out, size, operands[0], n.arg("axis"))
            vals[n] = np.asarray(_perturb(rng, out, operands)).astype(n.dtype, copy=False)
    return vals


# -- comparison -----------------------------------------------------------------------------------------------
def _close(got: np.ndarray, ref: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Elementwise agreement within a few ulp (relative, plus an absolute floor at the array's scale)."""
    if dtype.kind not in "fc":
        return got == ref
    g, r = got.astype(np.float64), ref.astype(np.float64)
    nan = np.isnan(g) & np.isnan(r)
    inf = np.isinf(g) & (g == r)
    fin = np.isfinite(g) & np.isfinite(r)
    eps = float(np.finfo(dtype).eps)
    scale = np.max(np.abs(r[np.isfinite(r)]), initial=1.0)
    tol = 16 * eps * np.maximum(np.abs(r), 1e-300) + 16 * eps * scale * 1e-6
    return nan | inf | (fin & (np.abs(g - r) <= tol))


def compare(got: object, ref: np.ndarray, envelope: Callable[[], list[np.ndarray]]) -> str | None:
    """None when ``got`` agrees with ``ref``, or every differing element is inside the envelope."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return f"shape {got.shape} != reference {ref.shape}"
    if got.dtype != ref.dtype and not (got.dtype.kind == ref.dtype.kind == "f"):
        return f"dtype {got.dtype} != reference {ref.dtype}"
    dtype = np.result_type(got.dtype, ref.dtype)
    ok = _close(got, ref, dtype)
    if ok.all():
        return None
    runs = [np.broadcast_to(np.asarray(r), ref.shape) for r in envelope()]
    g = got.astype(np.float64) if dtype.kind == "f" else got
    explained = np.zeros(ref.shape, bool)
    if dtype.kind == "f":
        stack = np.stack([r.astype(np.float64) for r in runs + [ref]])
        finite = np.isfinite(stack)
        lo = np.where(finite, stack, np.inf).min(axis=0)
        hi = np.where(finite, stack, -np.inf).max(axis=0)
        eps = float(np.finfo(dtype).eps)
        slack = 16 * eps * np.maximum(np.abs(lo), np.abs(hi))
        explained |= np.isfinite(g) & (lo - slack <= g) & (g <= hi + slack)
        explained |= np.isnan(g) & np.isnan(stack).any(axis=0)
        explained |= np.isinf(g) & (stack == g).any(axis=0)
        # a finite value where some perturbed run overflowed or underflowed to the same side
        explained |= np.isfinite(g) & (np.abs(g) > np.finfo(dtype).max / 4) & np.isinf(stack).any(axis=0)
    else:
        for r in runs:
            explained |= g == r
    bad = ~(ok | explained)
    if not bad.any():
        return None
    idx = tuple(np.argwhere(bad)[0]) if ref.ndim else ()
    return (f"{int(bad.sum())} of {bad.size} elements differ beyond the formula's rounding noise; first at "
            f"{idx}: got {got[idx]!r}, reference {ref[idx]!r}")


# -- one batch ------------------------------------------------------------------------------------------------
def _build(batch: Batch) -> list:
    nodes = [None] * len(batch.graphs)
    for gi, g in enumerate(batch.graphs):
        vals: list = list(batch.inputs)
        need = _needed(g, len(vals))
        for k, (_, fn, idx, extra) in enumerate(g.steps, start=len(batch.inputs)):
            vals.append(fn(exprc, *[vals[j] for j in idx], *extra) if k in need else None)
        nodes[gi] = exprc.as_node(vals[g.out])
    return nodes


def _reference_or_error(g: Graph, args: list) -> tuple[np.ndarray | None, str | None]:
    try:
        return run_steps(g, args), None
    except Exception as exc:  # noqa: BLE001 - NumPy's exception is the expected behaviour
        return None, f"{type(exc).__name__}: {exc}"


def check_batch(batch: Batch, cfg: exprc.Config) -> list[Mismatch]:
    """Every check of the module docstring on one batch; a list of unexplained mismatches."""
    out: list[Mismatch] = []
    refs, errors = [], []
    for g in batch.graphs:
        r, e = _reference_or_error(g, batch.args)
        refs.append(r)
        errors.append(e)
    try:
        nodes = _build(batch)
    except Exception as exc:  # noqa: BLE001
        # Building may raise (a dtype rule NumPy does not have): every graph must then be checked alone.
        if len(batch.graphs) == 1:
            if errors[0] is None:
                out.append(Mismatch(batch.seed, 0, "build", f"{type(exc).__name__}: {exc}", batch.graphs[0].names()))
            return out
        return _one_by_one(batch, cfg)
    live = [i for i, e in enumerate(errors) if e is None]
    for i, e in enumerate(errors):
        if e is not None:
            out += _expect_error(batch, i, nodes[i], cfg, e)
    if not live:
        return out
    outs = [nodes[i] for i in live]
    for label, backend, exclude in (("front end, C", "c", ("stability",)),
                                    ("front end, NumPy backend", "numpy", ("stability",))):
        try:
            f = exprc.function(batch.inputs, outs, backend=backend, exclude=exclude, config=cfg)
            got = f(*batch.args)
        except Exception:  # noqa: BLE001
            if len(batch.graphs) > 1:
                return _one_by_one(batch, cfg)
            out.append(Mismatch(batch.seed, live[0], label, traceback.format_exc(limit=3), batch.graphs[live[0]].names()))
            continue
        for k, i in enumerate(live):
            g = batch.graphs[i]
            why = compare(got[k], refs[i], lambda g=g, s=batch.seed * 1000 + i: [
                run_steps(g, batch.args, r) for r in _perturbations(s)])
            if why:
                out.append(Mismatch(batch.seed, i, label, why, g.names()))
    try:
        f = exprc.function(batch.inputs, outs, config=cfg)
        got = f(*batch.args)
    except Exception:  # noqa: BLE001
        if len(batch.graphs) > 1:
            return _one_by_one(batch, cfg)
        out.append(Mismatch(batch.seed, live[0], "default pipeline", traceback.format_exc(limit=3),
                            batch.graphs[live[0]].names()))
        return out
    for k, i in enumerate(live):
        g = batch.graphs[i]
        why = nan_contract(batch, nodes[i], got[k], refs[i], lambda g=g, s=batch.seed * 1000 + 700 + i: [
            run_steps(g, batch.args, r) for r in _perturbations(s)])
        if why:
            out.append(Mismatch(batch.seed, i, "NaN contract of the default pipeline", why, batch.graphs[i].names()))
    order = exprc.graph.toposort(list(f.graph.outputs))
    ref_vals = run_nodes(order, list(f.graph.inputs), batch.args)
    for k, i in enumerate(live):
        node = f.graph.outputs[k]
        why = compare(got[k], np.asarray(ref_vals[node]),
                      lambda node=node, s=batch.seed * 1000 + 500 + i: [
                          run_nodes(order, list(f.graph.inputs), batch.args, r)[node] for r in _perturbations(s)])
        if why:
            out.append(Mismatch(batch.seed, i, "backends (optimized graph, C vs reference)", why,
                                batch.graphs[i].names()))
    return out


#: Ops the exact (pointwise) evaluation cannot follow: the NaN contract is checked on the rest.
_NOT_POINTWISE = {"sum", "prod", "mean", "max", "min", "all", "any", "argmax", "argmin", "reshape", "dimshuffle",
                  "broadcast_to", "concatenate", "shape", "getitem", "sum_to", "reshape_like", "split_part",
                  "inc_subtensor"}


def nan_contract(batch: Batch, node: object, got: object, naive: np.ndarray,
                 envelope: Callable[[], list[np.ndarray]] = list) -> str | None:
    """Where the exact value is NaN and so is NumPy's naive one, exprc must give NaN; where the exact value
    is a number and the naive one is not NaN, exprc must not give NaN (elementwise float graphs only).
    A point where some run of the naive formula perturbed by a few ulp (``envelope``) lands on the other
    side is explained: rounding noise at a singularity (arctanh(log(exp(-1))) is arctanh(-1) = -inf
    in NumPy, finite where log(exp(-1)) rounds to -1 + 1 ulp, as in C: seed 100278)."""
    order = exprc.graph.toposort([node])
    got = np.asarray(got)
    if got.dtype.kind != "f" or got.size == 0 or any(n.op in _NOT_POINTWISE for n in order):
        return None
    used = [v for v in batch.inputs if v in set(order)]
    args = [batch.args[batch.inputs.index(v)] for v in used]
    shape = got.shape
    try:
        points = np.stack([np.broadcast_to(np.asarray(a, np.float64), shape).ravel() for a in args]) if used \
            else np.zeros((0, int(np.prod(shape))))
    except ValueError:
        return None
    if not used:
        return None
    from exprc.accuracy.exact import exact_values

    exact = np.asarray(exact_values(order, used, points, saturate=False)[node]).reshape(shape)
    naive = np.broadcast_to(np.asarray(naive, np.float64), shape)
    g = got.astype(np.float64)
    lost = np.isnan(exact) & np.isnan(naive) & ~np.isnan(g)
    made = ~np.isnan(exact) & ~np.isnan(naive) & np.isnan(g)
    if lost.any() or made.any():
        runs = [np.broadcast_to(np.asarray(r, np.float64), shape) for r in envelope()]
        lost &= ~np.any([~np.isnan(r) for r in runs], axis=0) if runs else lost
        made &= ~np.any([np.isnan(r) for r in runs], axis=0) if runs else made
    for what, bad in (("a number where the formula is undefined (exact and naive NaN)", lost),
                      ("NaN where the formula is defined (exact and naive are numbers)", made)):
        if bad.any():
            idx = tuple(np.argwhere(bad)[0])
            at = {v.arg("name"): float(np.broadcast_to(a, shape)[idx]) for v, a in zip(used, args)}
            return f"{what}: {int(bad.sum())} elements; first at {at}: got {g[idx]!r}, exact {exact[idx]!r}"
    return None


def _expect_error(batch: Batch, i: int, node: object, cfg: exprc.Config, error: str) -> list[Mismatch]:
    """NumPy raised for graph ``i``: exprc must raise too (at build, compile or call time)."""
    try:
        f = exprc.function(batch.inputs, node, exclude=("stability",), config=cfg)
        got = f(*batch.args)
    except Exception:  # noqa: BLE001
        return []
    return [Mismatch(batch.seed, i, "exceptions", f"NumPy raised {error}; exprc returned {got!r}",
                     batch.graphs[i].names())]


def _one_by_one(batch: Batch, cfg: exprc.Config) -> list[Mismatch]:
    out = []
    for i, g in enumerate(batch.graphs):
        sub = Batch(batch.seed, batch.inputs, batch.args, [g])
        for m in check_batch(sub, cfg):
            m.graph = i
            out.append(m)
    return out


def run(seeds: range, width: int = 16, cfg: exprc.Config | None = None, verbose: bool = False,
        rows: bool = False) -> dict:
    """Check the batches of ``seeds`` (``rows``: see make_batch): a summary with the number of graphs
    and the mismatches."""
    cfg = cfg or exprc.Config()
    mismatches: list[Mismatch] = []
    graphs = 0
    t0 = time.perf_counter()
    for seed in seeds:
        batch = make_batch(seed, width, rows=rows)
        graphs += len(batch.graphs)
        found = check_batch(batch, cfg)
        mismatches += found
        if verbose:
            for m in found:
                print(m, flush=True)
            if (seed - seeds.start + 1) % 25 == 0:  # progress of a long run (bench/fuzz.py -v)
                print(f"[{seed - seeds.start + 1}/{len(seeds)} batches: {graphs} graphs, {len(mismatches)} unexplained, "
                      f"{time.perf_counter() - t0:.0f} s]", flush=True)
    return {"batches": len(seeds), "graphs": graphs, "mismatches": mismatches,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graphs", type=int, default=10_000, help="graphs to run (default 10,000)")
    p.add_argument("--width", type=int, default=16, help="graphs per compiled batch")
    p.add_argument("--seed", type=int, default=0, help="first batch seed")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--rows", action="store_true", help="matrices and reductions over their rows (row kernels)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    nb = max(1, -(-a.graphs // a.width))
    res = run(range(a.seed, a.seed + nb), a.width, verbose=a.verbose, rows=a.rows)
    print(f"{res['graphs']} graphs in {res['batches']} batches, {res['seconds']:.0f} s: "
          f"{len(res['mismatches'])} unexplained mismatches")
    for m in res["mismatches"][:50]:
        print(" ", m)
    if a.json:
        Path(a.json).write_text(json.dumps({**res, "mismatches": [str(m) for m in res["mismatches"]]}, indent=1))
    return 1 if res["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
