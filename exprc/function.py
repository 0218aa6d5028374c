"""``exprc.function`` and ``@exprc.jit``: optimize -> build on a backend -> wrap.

:func:`function` reads top-down as the pipeline: check the inputs, substitute ``givens``,
optimize (:func:`exprc.pipeline.optimize`), optionally search for more accurate forms, then
hand the graph to the chosen backend (:func:`exprc.backends.build`: lower, render, compile
through the disk cache, load) and wrap the kernel.  The :class:`Function` wrapper owns
argument validation (dtype, ndim, static sizes, safe casts) so that no backend ever receives an
array it did not declare; it speaks to the kernel only through the protocol written down in
:mod:`exprc.backends`, and names no backend.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from exprc import backends
from exprc.config import Config, current, resolve
from exprc.errors import InputError, InputTypeError, MissingInputError, ShapeError
from exprc.graph import Node, substitute, toposort
from exprc.pipeline import FunctionGraph, optimize
from exprc.rewrite import core as _rules
from exprc.types import shape_str


def _label(var: Node, pos: int) -> str:
    name = var.arg("name")
    return f"argument {name!r} (position {pos})" if name else f"argument at position {pos}"


def _expected(var: Node) -> str:
    return f"a {var.dtype} array with ndim {var.ndim}"


def _make_converter(pos: int, var: Node, allow_downcast: bool,
                    device: Callable[[Any, Node, str], Any] | None = None) -> Callable[[Any], np.ndarray]:
    dt = np.dtype(var.dtype)
    nd = var.ndim
    static = var.type.shape
    check_shape = any(s is not None for s in static)
    label = _label(var, pos)

    def slow(value: Any) -> np.ndarray:
        if isinstance(value, Node):
            raise InputTypeError(f"{label}: expected {_expected(var)}, got a symbolic expression; "
                                 "call .eval() or compile a function instead")
        if device is not None and hasattr(value, "__cuda_array_interface__"):
            return device(value, var, label)  # GPU backends take device arrays as they are
        weak = not isinstance(value, (np.ndarray, np.generic)) and not hasattr(value, "__array_interface__")
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InputTypeError(f"{label}: expected {_expected(var)}, got {type(value).__name__} ({exc})") from exc
        if arr.dtype.kind not in "biuf":
            raise InputTypeError(f"{label}: expected {_expected(var)}, got {arr.dtype} data")
        if arr.ndim != nd:
            raise InputTypeError(f"{label}: expected {_expected(var)}, got {arr.dtype} with ndim {arr.ndim}")
        if arr.dtype != dt:
            ok = (np.can_cast(arr.dtype, dt, "safe")
                  or (arr.dtype.kind in "biu" and dt.kind == "f")
                  or (weak and np.can_cast(arr.dtype, dt, "same_kind"))
                  or (allow_downcast and dt.kind != "b"))
            if not ok:
                hint = "; pass allow_downcast=True to exprc.function to accept a lossy cast" if dt.kind != "b" else ""
                raise InputTypeError(f"{label}: expected {_expected(var)}, got {arr.dtype} with ndim {arr.ndim}"
                                     f" (casting {arr.dtype} to {dt} would lose information{hint})")
            try:
                arr = np.asarray(value, dtype=dt) if weak else arr.astype(dt)
            except OverflowError as exc:
                raise InputTypeError(f"{label}: values do not fit in {dt}: {exc}") from exc
        return arr

    def check(arr: np.ndarray) -> None:
        for want, got in zip(static, arr.shape):
            if want is not None and want != got:
                raise ShapeError(f"{label}: expected shape {shape_str(static)}, got {shape_str(arr.shape)}")

    def conv(value: Any) -> np.ndarray:
        if type(value) is np.ndarray and (value.dtype is dt or value.dtype == dt) and value.ndim == nd:
            arr = value
        else:
            arr = slow(value)
        if check_shape:
            check(arr)
        return arr

    return conv


class Function:
    """A compiled function.  Call it with arrays (positionally, or by input name).

    Attributes: ``inputs``, ``outputs`` (as given), ``graph`` (the optimized
    :class:`~exprc.pipeline.FunctionGraph`), ``backend``, ``rewrites`` (names
    of the rules that fired, in order), ``source`` (the generated code),
    ``kernels`` (what the backend fused) and ``accuracy_report`` (what
    ``accuracy="search"`` changed, an :class:`exprc.search.AccuracyReport`; None
    in the default mode).
    """

    accuracy_report: Any = None

    def __init__(self, inputs: tuple[Node, ...], outputs: tuple[Node, ...], single: bool,
                 graph: FunctionGraph, kernel: Any, backend: str, config: Config, allow_downcast: bool):
        self.inputs = inputs
        self.outputs = list(outputs)
        self.graph = graph
        self.backend = backend
        self.config = config
        self.allow_downcast = allow_downcast
        self._kernel = kernel
        self._single = single
        # The kernel's fast path (the C dispatcher) is attached on the second call: a function called
        # once should not pay for it (building it the first time on a machine takes a compiler run).
        self._make_fast = kernel.fast_path
        self._fast = None
        self._n = len(inputs)
        device = kernel.device_input if kernel.device_arrays else None  # __cuda_array_interface__ objects
        self._convert = [_make_converter(i, v, allow_downcast, device) for i, v in enumerate(inputs)]
        self._positions: dict[str, int | None] = {}
        for i, v in enumerate(inputs):
            name = v.arg("name")
            if name is not None:
                self._positions[name] = None if name in self._positions else i  # None: ambiguous

    @property
    def rewrites(self) -> list[str]:
        return self.graph.rewrites

    @property
    def source(self) -> str:
        return self._kernel.source

    @property
    def kernels(self) -> list:
        return list(self._kernel.kernels)

    def _bind(self, args: tuple, kwargs: dict) -> list:
        if len(args) > self._n:
            raise InputTypeError(f"expected {self._n} arguments ({self._signature()}), got {len(args)}")
        values: list = list(args) + [_MISSING] * (self._n - len(args))
        for key, value in kwargs.items():
            if key not in self._positions:
                raise InputTypeError(f"unknown keyword argument {key!r}; the inputs are {self._signature()}")
            pos = self._positions[key]
            if pos is None:
                raise InputTypeError(f"keyword argument {key!r} is ambiguous: several inputs have that name")
            if values[pos] is not _MISSING:
                raise InputTypeError(f"got multiple values for argument {key!r}")
            values[pos] = value
        missing = [_label(self.inputs[i], i) for i, v in enumerate(values) if v is _MISSING]
        if missing:
            raise InputTypeError(f"missing {', '.join(missing)}")
        return values

    def _signature(self) -> str:
        return ", ".join(str(v.arg("name") or f"<position {i}>") for i, v in enumerate(self.inputs))

    def on_dask(self, split_every: int | dict | None = None, num_threads: int = 1) -> Any:
        """This function over dask arrays: :func:`exprc.dask.function` with these inputs, outputs and
        configuration (blockwise kernels and tree reductions, compiled once per worker process)."""
        from exprc.dask import function as dask_function  # dask is optional: loaded on first use

        return dask_function(self.inputs, self.outputs[0] if self._single else self.outputs, config=self.config,
                             split_every=split_every, num_threads=num_threads)

    @property
    def profile(self) -> Any:
        """With ``profile=True``: an :class:`exprc.profile.Profile` of the calls so far (prints as a
        table; ``to_dict()``); else None."""
        return getattr(self._kernel, "profile", None)

    def report(self, path: Any = None) -> str:
        """This function as one self-contained HTML page (graphs before and after optimization,
        the rewrites, the kernels and their source, the profile and the accuracy report when
        there are; :mod:`exprc.report`); written to ``path`` when given.  Returns the HTML."""
        from pathlib import Path

        from exprc.report import render

        text = render(self)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @property
    def cache_path(self) -> str | None:
        """The cache entry folder of the compiled library (None: NumPy backend or cache off)."""
        entry = self._kernel.cache_entry
        return None if entry is None else str(entry)

    def __call__(self, *args: Any, out: Any = None, to_numpy: bool | None = None, **kwargs: Any) -> Any:
        """Run the function.  ``out=`` (an array, or a list for several outputs; None entries get
        fresh arrays) receives the results in place, saving the allocation of fresh outputs (the C
        backend computes straight into them).  ``to_numpy=True``: a device backend (CUDA) returns
        NumPy arrays instead of device arrays."""
        fast = self._fast
        if fast is not None and not kwargs and to_numpy is None:
            if out is None:
                result = fast(*args)
            elif self._single:
                result = fast.into(args, [out])
            else:
                result = fast.into(args, out) if isinstance(out, list) else None
            if result is not None:
                return result
        if kwargs:
            args = tuple(self._bind(args, kwargs))
        elif len(args) != self._n:
            raise InputTypeError(f"expected {self._n} arguments ({self._signature()}), got {len(args)}")
        arrays = [conv(a) for conv, a in zip(self._convert, args)]
        make_fast = self._make_fast  # read once: another thread may attach the dispatcher meanwhile
        if make_fast is not None:
            self._calls = getattr(self, "_calls", 0) + 1
            if self._calls >= 2:
                self._fast, self._make_fast = make_fast(self._single), None
        if out is not None:
            outs = self._kernel(*arrays, out=[out] if self._single else list(out), to_numpy=to_numpy)
        elif to_numpy is not None:
            outs = self._kernel(*arrays, to_numpy=to_numpy)
        else:
            outs = self._kernel(*arrays)
        return outs[0] if self._single else outs

    def __reduce__(self) -> tuple:
        """Pickling stores the graph in exprc's JSON format (never the binary); unpickling
        compiles it again, which the disk cache makes a lookup."""
        from exprc.serialize import reduce_function

        return reduce_function(self)

    def __repr__(self) -> str:
        from exprc.printing import pprint

        return f"<exprc.Function backend={self.backend} ({self._signature()}) -> {pprint(self.outputs)[:80]!r}>"


_MISSING = object()


def _as_outputs(outputs: Any) -> tuple[tuple[Node, ...], bool]:
    from exprc.api import as_node

    if isinstance(outputs, (list, tuple)):
        return tuple(as_node(o) for o in outputs), False
    return (as_node(outputs),), True


def _check_inputs(inputs: Iterable[Node]) -> tuple[Node, ...]:
    if isinstance(inputs, Node):
        inputs = [inputs]
    inputs = tuple(inputs)
    for i, v in enumerate(inputs):
        if not isinstance(v, Node):
            raise TypeError(f"inputs[{i}]: expected an exprc variable, got {type(v).__name__}")
        if v.op != "input":
            raise TypeError(f"inputs[{i}]: expected a variable made by exprc.vector/matrix/…, got the expression "
                            f"{v!r}")
    if len(set(inputs)) != len(inputs):
        raise ValueError("inputs: the same variable is listed twice")
    return inputs


def function(inputs: Sequence[Node], outputs: Node | Sequence[Node], backend: str | None = None,
             exclude: Iterable[str] = (), config: Config | None = None, allow_downcast: bool = False,
             updates: Any = None, givens: Any = None, accuracy: Any = "default", domain: Any = None,
             profile: bool = False) -> Function:
    """Compile ``outputs`` as a function of ``inputs``.

    ``backend``: ``"c"`` (fused C loops), ``"numpy"`` (the reference), ``"cuda"`` (NVIDIA GPUs,
    with ``exprc[cuda]``) or None (``Config.backend``, else C when a compiler works, else NumPy
    with a warning); :func:`exprc.backends.names` lists them.
    ``exclude``: rewrite names or tags to skip.  ``allow_downcast``: accept
    lossy casts of call arguments (float64 data into a float32 input).
    ``updates``: ``[(shared_variable, new_value_expression), ...]`` (or a dict),
    installed after each call from values computed with the old ones.
    ``givens``: ``{variable: expression}`` substituted in outputs and updates.
    Shared variables (:func:`exprc.shared`) the graph reads need not be inputs.
    ``accuracy``: ``"default"`` (the rewrite rules only) or ``"search"`` (also measure the error on
    sampled points of ``domain`` = ``{input: (lo, hi)}`` and keep more accurate forms, Herbie-style:
    see :mod:`exprc.search`; slower to compile, cached on disk).
    ``profile``: time every kernel and NumPy step of each call, and the compile by stage
    (``Config.profile``; the result is ``f.profile``, see :mod:`exprc.profile`).
    """
    cfg = resolve(config)
    if profile:
        cfg = cfg.replace(profile=True)
    if exclude:
        cfg = cfg.replace(exclude=tuple(sorted(set(cfg.exclude) | set(exclude))))
    ins = _check_inputs(inputs)
    outs, single = _as_outputs(outputs)
    settings, dom = None, ()
    if accuracy != "default" or domain is not None:
        from exprc import search  # (imported on demand: it costs ~30 ms at import)

        settings, dom = search.check_options(accuracy, domain, ins)
    upd: tuple = ()
    if updates or givens:
        from exprc.shared import check_givens, check_updates

        given = check_givens(givens)
        if given:
            outs = tuple(substitute(list(outs), given))
        upd = check_updates(updates, given)
    from exprc.shared import default_updates  # (shared imports this module: not at the top)

    upd += default_updates(outs + tuple(e for _, e in upd), updates, ins)
    # (GENERATION counts the user's rule registrations; the built-in rules load when a graph is optimized)
    memo_key = (ins, outs, upd, backend, cfg, _rules.GENERATION[0], settings, dom)
    with _MEMO_LOCK:
        hit = _MEMO.get(memo_key)
        if hit is not None:
            _MEMO.move_to_end(memo_key)
    if hit is not None:
        name, graph, kernel, hidden, report = hit
        return _wrap(ins, outs, single, graph, kernel, name, cfg, allow_downcast, hidden, upd, report)
    known = set(ins)
    order = toposort(outs + tuple(e for _, e in upd))
    hidden = tuple(v for v in order if v.op == "input" and v not in known and hasattr(v, "get_value"))
    missing = [v for v in order if v.op == "input" and v not in known and not hasattr(v, "get_value")]
    if missing:
        listed = ", ".join(f"{v.arg('name') or '<unnamed>'} ({v.type})" for v in missing)
        raise MissingInputError(f"the outputs depend on variables that are not among the inputs: {listed}")
    name = backends.choose(backend, cfg)
    record = restored = None
    from exprc import graph_index  # (it imports the cache: loaded on the first compile, not at import)

    if settings is None and not hidden and not upd and graph_index.enabled(cfg):
        # A warm compile: the user's graph maps straight to its optimized graph and cached library.
        record = graph_index.key(name, ins, outs, cfg)
        restored = graph_index.lookup(name, record, ins, cfg) if record else None
    if restored is not None:
        graph, kernel = restored
        report = None
    else:
        graph, kernel, report = _compile(name, ins, hidden, outs, upd, cfg, settings, dom)
        if record:
            graph_index.store(record, graph, kernel, ins, cfg)
    if cfg.cache and len(order) <= _EVAL_CACHE_MAX_NODES:  # the memo must not keep big graphs alive
        with _MEMO_LOCK:
            _MEMO[memo_key] = (name, graph, kernel, hidden, report)
            while len(_MEMO) > _MEMO_MAX:
                _MEMO.popitem(last=False)
    return _wrap(ins, outs, single, graph, kernel, name, cfg, allow_downcast, hidden, upd, report)


def _compile(name: str, ins: tuple, hidden: tuple, outs: tuple, upd: tuple, cfg: Config, settings: Any,
             dom: Any) -> tuple[FunctionGraph, Any, Any]:
    """optimize -> (search) -> build: the optimized graph, its kernel and the search's report."""
    t_optimize = time.perf_counter()
    graph = optimize(FunctionGraph(ins + hidden, outs + tuple(e for _, e in upd)), cfg)
    t_optimize = time.perf_counter() - t_optimize
    report = None
    if settings is not None:
        from exprc import search
        from exprc.errors import DomainError

        if upd:
            raise DomainError("accuracy=\"search\" does not support updates=")
        graph, report = search.search(ins, outs, graph, dom, settings, cfg)
    kernel = backends.build(name, graph, cfg)
    prof = getattr(kernel, "own_profile", lambda: getattr(kernel, "profile", None))() if cfg.profile else None
    if prof is not None:  # (a staged kernel's merged profile is made per read: record in its own)
        prof.compile = {"optimize": t_optimize, **prof.compile}
    return graph, kernel, report


def _wrap(ins: tuple, outs: tuple, single: bool, graph: FunctionGraph, kernel: Any, name: str, cfg: Config,
          allow_downcast: bool, hidden: tuple, upd: tuple, report: Any = None) -> Function:
    if cfg.nan_guard:
        from exprc.guard import GuardedKernel

        kernel = GuardedKernel(kernel, graph)
    if not hidden and not upd:
        fn = Function(ins, outs, single, graph, kernel, name, cfg, allow_downcast)
    else:
        from exprc.shared import SharedFunction

        fn = SharedFunction(ins, outs, single, graph, kernel, name, cfg, allow_downcast, hidden, upd)
    fn.accuracy_report = report
    return fn


#: In-process memo of compiled kernels, keyed by everything that decides the kernel: (inputs, outputs after
#: givens, updates, requested backend, config, rule-registry generation, search settings, search domain) ->
#: (backend, optimized graph, kernel, shared variables read, accuracy report).  Each ``function`` call still returns a new :class:`Function` (own argument handling, own
#: attributes); only the immutable graph and the compiled kernel are shared.  Off with ``Config(cache=False)``.
_MEMO: OrderedDict[tuple, tuple] = OrderedDict()
_MEMO_MAX = 256
_MEMO_LOCK = threading.Lock()


def clear_memo() -> None:
    """Forget the in-process memo (the disk cache is untouched)."""
    with _MEMO_LOCK:
        _MEMO.clear()


_EVAL_CACHE: dict[tuple, Function] = {}
_EVAL_CACHE_MAX_NODES = 10_000
_EVAL_LOCK = threading.Lock()


def evaluate(expr: Node, inputs: dict, **kwargs: Any) -> np.ndarray:
    """Evaluate ``expr`` with the NumPy reference backend (``expr.eval(...)``)."""
    by_name = {k: v for k, v in inputs.items() if isinstance(k, str)}
    order = toposort([expr])
    needed = [n for n in order if n.op == "input"]
    values = {}
    for var in needed:
        if var in inputs:
            values[var] = inputs[var]
        elif var.arg("name") in by_name:
            values[var] = by_name[var.arg("name")]
        elif hasattr(var, "get_value"):  # a shared variable: its current value
            values[var] = var.get_value(borrow=True)
        else:
            raise MissingInputError(f"eval: no value given for variable {var.arg('name') or '<unnamed>'} "
                                    f"({var.type})")
    key = (expr, tuple(needed), current())  # the configuration in force is part of the key
    with _EVAL_LOCK:
        fn = _EVAL_CACHE.get(key) if not kwargs else None
    if fn is None:
        fn = function(needed, expr, backend="numpy", **kwargs)
        if kwargs or len(order) > _EVAL_CACHE_MAX_NODES:  # options given, or a big graph: not kept
            return fn(*[values[v] for v in needed])
        with _EVAL_LOCK:
            if len(_EVAL_CACHE) > 128:
                _EVAL_CACHE.clear()
            _EVAL_CACHE[key] = fn
    return fn(*[values[v] for v in needed])


class Jitted:
    """A traced function: one compiled :class:`Function` per (dtype, ndim) signature."""

    def __init__(self, fn: Callable, **options: Any):
        self.fn = fn
        self.options = options
        self.functions: dict[tuple, Function] = {}
        self._lock = threading.Lock()
        try:
            self._names = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            self._names = []
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> Any:
        arrays = [a if isinstance(a, np.ndarray) else np.asarray(a) for a in args]
        # The configuration in force is part of the key: a call inside ``with exprc.config(...)``
        # must not reuse a function compiled under another configuration.
        sig = tuple((a.dtype.name, a.ndim) for a in arrays)
        key = (sig, current())
        f = self.functions.get(key)
        if f is None:
            from exprc.api import tensor

            with self._lock:
                f = self.functions.get(key)
                if f is None:
                    names = self._names + [None] * len(arrays)
                    variables = [tensor(names[i], dt, ndim=nd) for i, (dt, nd) in enumerate(sig)]
                    f = function(variables, self.fn(*variables), **self.options)
                    self.functions[key] = f
        return f(*arrays)


def jit(fn: Callable | None = None, **options: Any) -> Any:
    """Decorator: trace ``fn`` with symbolic arguments on first call per signature.

    ``@exprc.jit`` or ``@exprc.jit(backend="numpy", exclude=...)``.
    """
    if fn is None:
        return lambda f: Jitted(f, **options)
    return Jitted(fn, **options)


__all__ = ["Function", "InputError", "evaluate", "function", "jit"]
