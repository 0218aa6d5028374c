"""Row gathers and scatter-adds in C for the C backend's index steps (``templates/index_rows.c``).

``W[idx]`` with one integer array on the first axis (an embedding lookup, ``lp[idx]``) and
``inc_subtensor(x[idx], v)`` of whole rows (its gradient) are the index steps that dominate
Theano-style training.  NumPy's ``take`` is fast but ``np.add.at`` is not (~5 us per row of 128
floats); these loops copy or add whole rows, check every index first (a bad one raises naming
the index operand; nothing is read or written out of bounds), and add in index order, so repeated
rows give np.add.at's result bit for bit.  The library is built once per compiler into the cache
(a kernel-like entry).  Any other index, layout or dtype takes the NumPy step (``Op.into``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from exprc.backends.c import ffi
from exprc.config import Config
from exprc.errors import IndexOutOfBounds
from exprc.ops import OPS
from exprc.ops.index import same_buffer

# The shared FFI (backends/c/ffi.py) and its types, set when the helper library is first loaded.
_FFI: Any = None
_CHARP: Any = None
_CHARS: Any = None
_INT64S: Any = None
_fb: Any = None  # from_buffer without cffi's Python-level wrapper (contiguous arrays)
_LIB: list[Any] = []
_SERIAL: list[bool] = [False]  # kernel.py's flag (set in a forked child: no OpenMP there), once loaded
_ADD = {np.dtype(t): f for t, f in (("float64", "f64"), ("float32", "f32"), ("int64", "i64"), ("int32", "i32"))}


def _load(cfg: Config) -> Any:
    """The helper library (built on first use); None when it cannot be built."""
    from exprc.backends.c.compile import helper_library

    global _FFI, _CHARP, _CHARS, _INT64S, _fb, _SERIAL
    if not _LIB:  # (the row loops read it as _LIB[0] once a caller has loaded it)
        from exprc.backends.c import kernel  # (it imports this module)

        _SERIAL = kernel._SERIAL
        f = ffi.get(cfg)
        _CHARP, _CHARS, _INT64S, _fb = f.typeof("char *"), f.typeof("char[]"), f.typeof("int64_t[]"), ffi.from_buffer(f)
        _FFI = f
        _LIB.append(helper_library("exprc_index_rows", "index_rows.c", lambda p: ffi.dlopen(f, p), cfg,
                                   "row gather/scatter-add helpers"))
    return _LIB[0]


def _ptr(a: np.ndarray) -> Any:
    if a.flags.c_contiguous:
        return _fb(_CHARS, a, False)  # ~0.3 us; __array_interface__ builds a dict (~3 us)
    return _FFI.cast(_CHARP, a.__array_interface__["data"][0])


def _rows_contiguous(a: np.ndarray) -> bool:
    """Each row (a[i]) is one contiguous block of memory."""
    expect = a.itemsize
    for n, s in zip(reversed(a.shape[1:]), reversed(a.strides[1:])):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


def _raise(node: Any, bad: int, idx: np.ndarray, rows: int, j: int) -> None:
    labels = node.arg("labels") or ()
    name = labels[j] if j < len(labels) and labels[j] else f"index operand {j}"
    raise IndexOutOfBounds(f"{name}: index {int(idx[bad])} is out of bounds for axis 0 with size {rows}")


def make_into(cfg: Config) -> dict[str, Any]:
    """``{op: into(node, out, *operands)}`` for the C backend's NumPy steps (fast paths first)."""

    rows_only: dict[Any, bool] = {}  # node -> its index is one integer array on axis 0
    nthreads = cfg.threads()

    def gather(node: Any, out: np.ndarray, x: np.ndarray, *ops: Any) -> None:
        simple = rows_only.get(node)
        if simple is None:
            simple = rows_only[node] = node.arg("index") == (("A", 1),) and _load(cfg) is not None
        if not (simple and type(x) is np.ndarray and out.flags.c_contiguous
                and _gather_rows(node, out, x, ops[0], nthreads)):
            with np.errstate(all="ignore"):
                OPS["subtensor"].into(out, x, *ops, **dict(node.attrs))

    def scatter(node: Any, out: np.ndarray, x: np.ndarray, v: Any, *ops: Any) -> None:
        idx = ops[0] if len(ops) == 1 else None
        fn = _ADD.get(out.dtype)
        lib = _load(cfg) if node.arg("index") == (("A", 2),) and node.arg("mode") == "inc" and fn else None
        v = np.asarray(v)
        if (lib is not None and isinstance(idx, np.ndarray) and idx.ndim == 1 and out.ndim >= 1
                and out.flags.c_contiguous and v.dtype == out.dtype and not np.may_share_memory(out, v)
                and not np.may_share_memory(out, idx)):
            n, row = idx.size, out.shape[1:]
            sv = None
            if v.shape == (n, *row) and _rows_contiguous(v):
                sv = v.strides[0] if n > 1 else 0
            elif v.ndim <= len(row) or (v.ndim == len(row) + 1 and v.shape[0] == 1):
                try:  # one row for every index
                    v, sv = np.ascontiguousarray(np.broadcast_to(v.reshape(v.shape[v.ndim - len(row):]) if
                                                                 v.ndim > len(row) else v, row)), 0
                except ValueError:
                    sv = None
            if sv is not None:
                ix = np.ascontiguousarray(idx, dtype=np.int64)
                if not same_buffer(out, x):
                    np.copyto(out, x)
                add = getattr(lib, f"exprc_scatter_add_rows_{fn}")
                bad = add(_ptr(out), out.shape[0], out.strides[0] if out.shape[0] > 1 else 0, _ptr(v), sv,
                          _fb(_INT64S, ix, False), ix.size, math.prod(row))
                if bad >= 0:
                    _raise(node, bad, ix, out.shape[0], 2)
                return
        with np.errstate(all="ignore"):
            OPS["scatter"].into(out, x, v, *ops, **dict(node.attrs))

    return {"subtensor": gather, "scatter": scatter}


def _gather_rows(node: Any, out: np.ndarray, x: np.ndarray, idx: Any, nthreads: int) -> bool:
    """out (C-contiguous, len(idx) rows) = x[idx] by the C loop; False when the layout is not one it
    takes (then nothing was written).  A bad index raises, naming the index operand."""
    if type(idx) is not np.ndarray or idx.ndim != 1 or x.ndim < 1 or not (x.flags.c_contiguous or
                                                                            _rows_contiguous(x)):
        return False
    ix = idx if idx.dtype == np.int64 and idx.flags.c_contiguous else np.ascontiguousarray(idx, np.int64)
    bad = _LIB[0].exprc_gather_rows(_fb(_CHARS, out, False), _ptr(x), x.shape[0],
                                    x.strides[0] if x.shape[0] > 1 else 0, _fb(_INT64S, ix, False), ix.size,
                                    x.itemsize * math.prod(x.shape[1:]), 1 if _SERIAL[0] else nthreads)
    if bad >= 0:
        _raise(node, bad, ix, x.shape[0], 1)
    return True


def direct_gather(cfg: Config, node: Any, inputs: Any) -> DirectGather | None:
    """For a program that is only ``x[idx]`` of its two arguments (an embedding lookup, ``inputs``
    in that order): a :class:`DirectGather` that skips the planner; None when the index is not
    one integer array on the first axis or the helper library cannot be built."""
    if node.op != "subtensor" or node.arg("index") != (("A", 1),) or _load(cfg) is None:
        return None
    return DirectGather(node, inputs, cfg.threads())


class DirectGather:
    """``fn(x, idx) -> array or None`` (None: not a whole-row gather this time, and nothing was
    written; the caller takes the general path)."""

    def __init__(self, node: Any, inputs: Any, nthreads: int):
        self.node = node
        self.inputs = inputs
        self.nthreads = nthreads

    def __call__(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray | None:
        if idx.ndim != 1 or x.ndim < 1:
            return None
        out = np.empty((idx.size, *x.shape[1:]), x.dtype)
        return out if _gather_rows(self.node, out, x, idx, self.nthreads) else None

    def fast_path(self, single: bool) -> Any:
        """The Function-level call (``exprc.function``'s dispatcher protocol): with arguments that
        already are arrays of exactly the inputs' dtypes and ndims, nothing to convert or check
        (inputs with static sizes are not taken), so a lookup costs what the row copy costs plus a
        few attribute reads; anything else returns None and the checked path runs."""
        (x_in, i_in) = self.inputs
        if i_in.ndim != 1 or any(d is not None for v in self.inputs for d in v.type.shape):
            return None
        dx, nx, di = np.dtype(x_in.dtype), x_in.ndim, np.dtype(i_in.dtype)

        def fast(*args: Any) -> Any:
            if len(args) != 2:
                return None
            x, idx = args
            if (type(x) is not np.ndarray or type(idx) is not np.ndarray or x.dtype != dx or idx.dtype != di
                    or x.ndim != nx):
                return None
            out = self(x, idx)
            return out if single or out is None else [out]

        fast.into = lambda args, outs: None  # type: ignore[attr-defined]  # (out=: the checked path)
        return fast


__all__ = ["DirectGather", "direct_gather", "make_into"]
