"""What runs on the workers for :mod:`exprc.dask`: kernels as tasks carry them, and the task callables.

A task carries its kernel as a :class:`Kernel`: the JSON of the kernel's graph, its options and their
hash -- never compiled code.  The first task of a process that needs a kernel builds it with
:func:`exprc.function` (a compile, or a load from the disk cache) and keeps it in a per-process table
keyed by the hash; every later task in that process reuses it (:func:`stats` counts both).  The task
callables (:class:`Map`, :class:`Partial`, :class:`Combine`) are module-level classes, so dask pickles
them by reference plus their few fields.  This module needs NumPy and exprc, not dask.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc import cache as _cache
from exprc import serialize
from exprc.config import current
from exprc.errors import ShapeError
from exprc.graph import Node

__all__ = ["Combine", "Kernel", "Map", "Partial", "identity", "stats"]

# -- kernels as tasks carry them -------------------------------------------------------------------

#: Per-process table of built kernels, by the hash of their JSON: a worker builds each kernel once.
_BUILT: dict[str, Any] = {}
_BUILD_LOCK = threading.Lock()
_STATS = {"builds": 0, "reuses": 0}


def stats() -> dict[str, int]:
    """This process's counters: ``builds`` (kernels built from their JSON: one ``exprc.function`` each),
    ``reuses`` (tasks that found their kernel built), and the disk cache's ``compiles`` (real compiler
    runs) and ``cache_hits``, plus ``pid``.  Run it on workers with ``client.run(exprc.dask.stats)``."""
    return {"builds": _STATS["builds"], "reuses": _STATS["reuses"], "compiles": _cache.STATS["compiles"],
            "cache_hits": _cache.STATS["hits"], "pid": os.getpid()}


class Kernel:
    """An exprc function as a dask task holds it: the JSON of its graph, its options and their hash.

    Pickles as that text (a few KB), never as compiled code; :meth:`__call__` builds the function on
    first use in each process (through the disk cache) and reuses it afterwards."""

    __slots__ = ("key", "text")

    def __init__(self, inputs: Sequence[Node], outputs: Sequence[Node], options: dict):
        doc = {"graph": serialize.to_dict(list(outputs) + list(inputs)), "n_out": len(outputs), "options": options}
        self.text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
        self.key = hashlib.sha256(self.text.encode()).hexdigest()[:32]

    def __getstate__(self) -> tuple[str, str]:
        return self.key, self.text

    def __setstate__(self, state: tuple[str, str]) -> None:
        self.key, self.text = state

    def function(self) -> Any:
        fn = _BUILT.get(self.key)
        if fn is not None:
            _STATS["reuses"] += 1
            return fn
        with _BUILD_LOCK:  # one build per process even when the worker runs tasks in threads
            fn = _BUILT.get(self.key)
            if fn is None:
                fn = _build(self.text)
                _BUILT[self.key] = fn
                _STATS["builds"] += 1
            else:
                _STATS["reuses"] += 1
        return fn

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        out = self.function()(*arrays)
        return list(out)

    def __dask_tokenize__(self) -> str:  # equal kernels, equal dask keys (deterministic graphs)
        return self.key


def _build(text: str) -> Any:
    from exprc.function import function as exprc_function  # (function.py imports this module lazily too)

    doc = json.loads(text)
    nodes = serialize.from_dict(doc["graph"])
    n_out = doc["n_out"]
    opts = doc["options"]
    cfg = current().replace(**{k: (tuple(v) if k == "exclude" else v) for k, v in opts.items()})
    return exprc_function(nodes[n_out:], nodes[:n_out], config=cfg)


# -- task functions (module level: dask pickles them by reference) ---------------------------------

class Task:
    """What the task classes share: a deterministic dask token from their fields."""

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, *(repr(v) if not isinstance(v, Kernel) else v.key for v in vars(self).values()))


class Map(Task):
    """An elementwise block: the kernel's only output."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel

    def __call__(self, *blocks: np.ndarray) -> np.ndarray:
        return self.kernel(*blocks)[0]


def _extents(blocks: Sequence[np.ndarray], arg_labels: Sequence[tuple], out_labels: tuple) -> list[int]:
    """The size of each output axis of a block: the operands' sizes broadcast (a 0 wins over 1)."""
    sizes: dict[Any, list[int]] = {}
    for b, labels in zip(blocks, arg_labels):
        for lab, s in zip(labels, np.shape(b)):
            sizes.setdefault(lab, []).append(int(s))
    out = []
    for lab in out_labels:
        ss = sizes.get(lab, [1])
        out.append(0 if 0 in ss else max(ss))
    return out


class Partial(Task):
    """A reduction's chunk step: the kernel's partial fields for one block (reduced axes kept, size 1).

    ``mode`` adds what the kernel cannot know: ``count`` appends the number of elements reduced (mean,
    var); ``arg`` turns the kernel's index within the block into an index into the whole array."""

    def __init__(self, kernel: Kernel, arg_labels: list[tuple], out_labels: tuple, axes: tuple[int, ...],
                 dtypes: list[str], mode: str, full: tuple[int, ...] = ()):
        self.kernel, self.arg_labels, self.out_labels = kernel, arg_labels, out_labels
        self.axes, self.dtypes, self.mode, self.full = axes, dtypes, mode, full

    def __call__(self, *blocks: np.ndarray) -> tuple:
        nargs = len(self.arg_labels)
        ext = _extents(blocks[:nargs], self.arg_labels, self.out_labels)
        if any(ext[a] == 0 for a in self.axes):
            # An empty block reduces to nothing: fields with no extent along the reduced axes, which the
            # combine's concatenation skips (max of an empty array still raises there, as in memory).
            shape = tuple(0 if k in self.axes else e for k, e in enumerate(ext))
            return tuple(np.empty(shape, dtype=dt) for dt in self.dtypes)
        fields = self.kernel(*blocks[:nargs])
        shape = tuple(1 if k in self.axes else e for k, e in enumerate(ext))
        if self.mode == "count":
            n = float(np.prod([ext[a] for a in self.axes]))
            fields.append(np.full(shape, n))
        elif self.mode == "arg":
            # offsets: one int64 array per reduced axis, the global positions of this block's elements
            offsets = [int(o[0]) for o in blocks[nargs:]]
            local = np.unravel_index(fields[1].astype(np.int64), [ext[a] for a in self.axes])
            glob = [loc + off for loc, off in zip(local, offsets)]
            fields[1] = np.ravel_multi_index(glob, [self.full[k] for k in range(len(self.axes))]).astype(np.int64)
        return tuple(np.broadcast_to(f, shape) if np.shape(f) != shape else f for f in fields)


def _gather(parts: Any, axes: Sequence[int]) -> tuple:
    """Partials as dask's tree hands them over (lists nested once per reduced axis) -> one array per
    field, concatenated along the reduced axes in block order."""
    if isinstance(parts, tuple):
        return parts
    items = [_gather(p, axes[1:]) for p in parts]
    return tuple(np.concatenate([it[k] for it in items], axis=axes[0]) for k in range(len(items[0])))


class Combine(Task):
    """A reduction's combine (``final=False``) or aggregate (``final=True``) step."""

    def __init__(self, kernel: Kernel, axes: tuple[int, ...], mode: str, final: bool, dtypes: list[str]):
        self.kernel, self.axes, self.mode, self.final, self.dtypes = kernel, axes, mode, final, dtypes

    def __call__(self, parts: Any, axis: Any = None, keepdims: bool = True, **kw: Any) -> Any:
        fields = _gather(parts, list(self.axes))
        if any(np.shape(fields[0])[a] == 0 for a in self.axes):
            if not self.final:  # a group of empty blocks stays an empty partial (max of nothing cannot run)
                return fields
            if self.mode == "arg":
                raise ShapeError("argmax/argmin: attempt to get the position of an extremum of an empty sequence")
        out = tuple(self.kernel(*fields))
        if not self.final:
            return out
        if self.mode == "plain":
            return out[0]
        if self.mode == "count":  # mean: sum / count (0 / 0: NaN, as the in-memory mean of nothing)
            with np.errstate(divide="ignore", invalid="ignore"):
                return (out[0] / out[1]).astype(self.dtypes[0])
        if self.mode == "arg":
            return out[1].astype(np.int64)
        if self.mode == "var":  # (mean, M2)
            mu, m2, n = out
            return mu.astype(self.dtypes[0]), m2.astype(self.dtypes[1])
        if self.mode == "var_mean":  # (mean, M2 / n)
            mu, m2, n = out
            with np.errstate(divide="ignore", invalid="ignore"):
                return mu.astype(self.dtypes[0]), (m2 / n).astype(self.dtypes[1])
        if self.mode == "lse":  # (max, sum of exp(x - shift))
            return out[0].astype(self.dtypes[0]), out[1].astype(self.dtypes[1])
        raise AssertionError(self.mode)


def identity(x: Any, axis: Any = None, keepdims: bool = True, **kw: Any) -> Any:
    return x
