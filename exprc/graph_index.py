"""The graph index: a warm ``exprc.function`` goes from the user's graph straight to its cached library.

The compile cache is keyed by the rendered source, so a process that finds its library on disk
has still paid for every stage before it: loading the rewrite rules, optimize, lower (fusion) and
render.  The index keys a record by what decides those stages:

* the user's graph: every node's op, attributes (constants by their bytes, floats by their bits),
  dtype and shape, in :func:`~exprc.graph.toposort` order, inputs by their position (not their
  names), and the dtype and shape of every input (used or not);
* the :class:`~exprc.config.Config` (its ``repr``: every field);
* the backend and what its module's ``index_parts(cfg)`` names (the C backend: compiler, version,
  flags, templates, CPU: the parts of the library's own cache key);
* the code that runs the stages: exprc's version and the path, size and modification time of
  every file of the package (an edited rule or renderer makes every record a miss), NumPy's
  version (it folds constants) and Python's.

and a record holds what the stages made: the optimized :class:`~exprc.pipeline.FunctionGraph`
and the kernel's ``index_state()`` (the C backend: the lowered program, its layout and the name of
the library's cache entry).  :func:`lookup` then only unpickles and loads the library.  Anything
wrong with a record (missing, unreadable, truncated, a checksum that does not match, an entry that
was evicted) is a miss: the full path runs and :func:`store` writes the record again.

Not indexed (the full path, every time): a process where rewrite rules were registered outside
exprc's own (the index cannot see the user's code), graphs with custom ops, shared variables or
updates, the accuracy search (it has its own cache), profile mode, graphs over :data:`MAX_NODES`
nodes, attribute values of a type the key does not know, and kernels that keep no state (the
NumPy and CUDA backends, staged graphs).

Records are files ``graphs/<key>`` in the compile cache's root, which is checked private (owner,
permissions) before anything is read from it: the index trusts that folder as the cache trusts
the libraries it loads.  A record is ``FORMAT``, the sha256 of the payload and the payload: a
pickle whose graph inputs are references to the caller's inputs by position, read back by an
unpickler that resolves only the globals in :data:`_GLOBALS` (the classes store() writes, and NumPy's
array and dtype constructors), from a file owned by this user that no other can write.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exprc import cache
from exprc._version import __version__
from exprc.config import Config
from exprc.digest import sha256
from exprc.errors import CacheError
from exprc.graph import ConstValue, Node, toposort
from exprc.pipeline import FunctionGraph
from exprc.types import TensorType

FORMAT = b"exprc graph index 1\n"
FOLDER = "graphs"
#: Larger graphs are not indexed (the in-process memo has the same bound).
MAX_NODES = 10_000
#: A record larger than this is neither written nor read.
RECORD_MAX_BYTES = 32 << 20
#: When the folder holds more records than this, :func:`store` deletes the least recently used quarter.
MAX_RECORDS = 4096


class _Unindexable(Exception):
    """An attribute value the key cannot write exactly."""


def enabled(cfg: Config) -> bool:
    """Whether ``exprc.function`` consults the index (``EXPRC_GRAPH_INDEX=0`` turns it off)."""
    return cfg.cache and not cfg.profile and os.environ.get("EXPRC_GRAPH_INDEX", "1") != "0"


def key(backend: str, inputs: Sequence[Node], outputs: Sequence[Node], cfg: Config) -> str | None:
    """The record key of ``outputs`` as a function of ``inputs`` on ``backend``, or None when the
    graph or this process is not indexed (see the module docstring)."""
    from exprc import backends
    from exprc.rewrite import core

    module = backends.backend_module(backend)
    if core.GENERATION[0] or not hasattr(module, "restore"):
        return None
    custom = sys.modules.get("exprc.custom")
    user_ops = set(getattr(custom, "_CUSTOM", ())) if custom is not None else set()
    order = toposort(outputs)
    if len(order) > MAX_NODES:
        return None
    position = {n: i for i, n in enumerate(inputs)}
    row: dict[Node, int] = {}
    h = sha256(FORMAT)
    parts = dict(module.index_parts(cfg))
    # (NumPy folds constants and Python's math picks series terms: their versions decide the graph too)
    for head in (f"exprc {__version__}", f"code {code_fingerprint()}", f"numpy {np.__version__}",
                 f"python {sys.version}", f"backend {backend}", f"config {cfg!r}",
                 f"inputs {[(n.dtype, n.type.shape) for n in inputs]!r}", *(f"{k}={parts[k]}" for k in sorted(parts))):
        h.update(head.encode() + b"\n")
    try:
        for n in order:
            if n.op == "input":
                if n not in position:
                    return None  # (a shared variable: not indexed)
                text = repr(("input", position[n], n.dtype, n.type.shape))
            elif n.op in user_ops:
                return None
            else:
                text = repr((n.op, tuple(row[i] for i in n.inputs), _canon(n.attrs), n.dtype, n.type.shape))
            row[n] = len(row)
            h.update(text.encode() + b"\n")
    except _Unindexable:
        return None
    h.update(repr(("outputs", tuple(row[o] for o in outputs))).encode())
    return h.hexdigest()[:32]


def _canon(value: Any) -> Any:
    """``value`` as something whose ``repr`` is exact and the same in every process."""
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return ("float", struct.pack("<d", value).hex())  # (every bit: -0.0 and NaN payloads too)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *(_canon(v) for v in value))
    if isinstance(value, ConstValue):
        a = value.array
        return ("const", a.dtype.str, a.shape, sha256(np.ascontiguousarray(a).tobytes()).hexdigest())
    if isinstance(value, np.generic):  # (np.float64 is a float subclass: its own row, with its dtype)
        return ("scalar", value.dtype.str, value.tobytes().hex())
    if isinstance(value, np.dtype):
        return ("dtype", value.str)
    if isinstance(value, slice):
        return ("slice", _canon(value.start), _canon(value.stop), _canon(value.step))
    if value is Ellipsis:
        return ("...",)
    if isinstance(value, TensorType):
        return ("type", value.dtype, value.shape)
    raise _Unindexable(type(value).__name__)


@functools.cache
def code_fingerprint(package: str | None = None) -> str:
    """A hash of the path, size and modification time of every file of the exprc package (or of the
    folder ``package``), bytecode caches left out."""
    h = sha256()
    stack = [(package or os.path.dirname(os.path.abspath(__file__)), "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                found = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in found:  # (each listing in name order: the same hash in every process)
            if e.is_dir(follow_symlinks=False):
                if e.name != "__pycache__":
                    stack.append((e.path, f"{rel}{e.name}/"))
            elif not e.name.endswith((".pyc", ".pyo")):
                try:
                    st = e.stat()
                except OSError:
                    continue
                h.update(f"{rel}{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _folder(cfg: Config, create: bool) -> Path | None:
    """The records' folder, after the cache's ownership checks (created only when ``create``); None when
    the cache cannot be used."""
    try:
        if create:
            return cache.ensure_folder(cache.ensure_root(cfg), FOLDER, "graph index folder")
        r = cache.root(cfg)
        cache.check_safe(r)
        cache.check_safe(r / FOLDER, "graph index folder")
        return r / FOLDER
    except (OSError, CacheError):
        return None


def lookup(backend: str, record: str, inputs: Sequence[Node], cfg: Config) -> tuple[Any, Any] | None:
    """(optimized graph, kernel) from record ``record`` (a :func:`key`), its graph over ``inputs``
    themselves; None on a miss of any kind."""
    from exprc import backends

    folder = _folder(cfg, create=False)
    if folder is None:
        return None
    path = folder / record
    try:  # (owned by this user and written by no other, as a library must be to be loaded)
        data = cache.read_file(path, RECORD_MAX_BYTES, "graph index record", private=True)
    except (OSError, CacheError):
        return None
    head = len(FORMAT) + 65
    if len(data) < head or not data.startswith(FORMAT):
        return None
    payload = data[head:]
    if sha256(payload).hexdigest().encode() + b"\n" != data[len(FORMAT):head]:
        return None
    try:  # any record that is not exactly what store() wrote is a miss, never an error
        _nodes, (saved_record, graph, state) = _Unpickler(io.BytesIO(payload), inputs).load()
        if (saved_record != record or not isinstance(graph, FunctionGraph)
                or tuple(graph.inputs) != tuple(inputs)):
            return None
        kernel = backends.backend_module(backend).restore(graph, state, cfg)
    except Exception:  # noqa: BLE001
        return None
    if kernel is None:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # (used: _prune deletes the least recently used records)
    return graph, kernel


def store(record: str, graph: Any, kernel: Any, inputs: Sequence[Node], cfg: Config) -> bool:
    """Write record ``record`` for ``graph`` (optimized) and its ``kernel``; True when written.
    Nothing is raised: a cache that cannot be written, or state that does not pickle, is no record."""
    state = kernel.index_state()
    if state is None or tuple(graph.inputs) != tuple(inputs):
        return False
    buf = io.BytesIO()
    try:
        # The graph's nodes go first in graph order, so each node's operands are already in the
        # pickle's memo: a deep graph pickles without deep recursion.
        _Pickler(buf, inputs).dump((toposort(graph.outputs), (record, graph, state)))
    except Exception:  # noqa: BLE001 - state that does not pickle (or a graph too deep): no record
        return False
    payload = buf.getvalue()
    if len(payload) > RECORD_MAX_BYTES:
        return False
    folder = _folder(cfg, create=True)
    if folder is None:
        return False
    data = FORMAT + sha256(payload).hexdigest().encode() + b"\n" + payload
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / record)
        except BaseException:
            os.unlink(tmp)
            raise
        _prune(folder)
    except OSError:
        return False
    return True


def _prune(folder: Path) -> None:
    """Keep at most :data:`MAX_RECORDS` records (deleting the least recently used quarter beyond), and
    delete temporary files an interrupted :func:`store` left over an hour ago."""
    now = time.time()
    records = []
    with os.scandir(folder) as it:
        for e in it:
            if not e.is_file(follow_symlinks=False):
                continue
            if not e.name.startswith("."):
                records.append(e)
            elif e.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    if now - e.stat(follow_symlinks=False).st_mtime > 3600:
                        os.unlink(e.path)
    if len(records) <= MAX_RECORDS:
        return
    records.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime)
    for e in records[:len(records) - MAX_RECORDS * 3 // 4]:
        with contextlib.suppress(OSError):
            os.unlink(e.path)


def clear(r: Path) -> int:
    """Delete every record under cache root ``r`` (``exprc cache clear``); how many were deleted."""
    n = 0
    try:
        with os.scandir(r / FOLDER) as it:
            found = [e for e in it if e.is_file(follow_symlinks=False) or e.is_symlink()]
    except OSError:
        return 0
    for e in found:
        try:
            os.unlink(e.path)
            n += 1
        except OSError:
            pass
    return n


def _node(op: str, inputs: tuple, attrs: tuple, dtype: str, shape: tuple) -> Node:
    return Node(op, inputs, attrs, TensorType(dtype, tuple(shape)))


class _Pickler(pickle.Pickler):
    """Nodes as rows over their operands (interned again when read); graph inputs as their position."""

    def __init__(self, file: io.BytesIO, inputs: Sequence[Node]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._position = {id(n): i for i, n in enumerate(inputs)}

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is Node and obj.op == "input":
            if id(obj) not in self._position:
                raise pickle.PicklingError("a graph input that is not among the function's inputs")
            return self._position[id(obj)]
        return None

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Node:
            return _node, (obj.op, obj.inputs, obj.attrs, obj.dtype, obj.type.shape)
        return NotImplemented


#: The only globals a record's pickle may name: the classes of what store() writes, and what pickle
#: and NumPy need to rebuild arrays and dtypes.  Exact pairs: a dotted name resolved through an
#: allowed module (exprc.graph_index's os.system) must not get through.
_GLOBALS = frozenset({
    ("exprc.backends.layout", "KernelLayout"), ("exprc.backends.layout", "Layout"), ("exprc.fusion", "Kernel"),
    ("exprc.fusion", "Program"), ("exprc.fusion", "Step"), ("exprc.graph", "ConstValue"),
    ("exprc.graph_index", "_node"), ("exprc.pipeline", "FunctionGraph"), ("exprc.rewrite.driver", "TraceEntry"),
    ("exprc.types", "TensorType"), ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("copyreg", "_reconstructor"), ("builtins", "slice"), ("builtins", "frozenset"), ("builtins", "set"),
    ("builtins", "complex"), ("builtins", "object"),
})


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, inputs: Sequence[Node]):
        super().__init__(file)
        self._inputs = tuple(inputs)

    def persistent_load(self, pid: Any) -> Node:
        if type(pid) is not int or not 0 <= pid < len(self._inputs):
            raise pickle.UnpicklingError("a record names an input the function does not have")
        return self._inputs[pid]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a graph index record names {module}.{name}")


__all__ = ["FORMAT", "MAX_NODES", "clear", "code_fingerprint", "enabled", "key", "lookup", "store"]
