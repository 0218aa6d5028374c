"""Backends: where a compiled function runs, and the one protocol the front end speaks to them.

A backend is a folder (``reference.py`` for NumPy, ``c/``, ``cuda/``) registered below with
one :func:`register_backend` line: its name and the module that holds two functions,

* ``make(graph, config) -> Kernel`` builds the kernel of an optimized
  :class:`~exprc.pipeline.FunctionGraph` (lower, render, compile through the cache, load);
* ``probe(config) -> str | None``: None when the backend can run here, else why not (no
  compiler, no GPU …).  It must be cheap after its first call;
* optionally ``VALUE_SHAPES = True`` when its kernels take graphs whose shapes depend on values
  (symbolic slice bounds, masks); otherwise such graphs run in stages of its kernels;
* optionally ``index_parts(cfg) -> dict`` and ``restore(graph, state, cfg) -> Kernel | None`` for
  the graph index (:mod:`exprc.graph_index`): what besides the graph and the Config decides a
  kernel (toolchain identity), and the kernel rebuilt from what its ``index_state()`` returned,
  or None when that no longer works (the library's cache entry is gone).

The module is imported on first use, so ``import exprc`` loads no compiler bindings.

The kernel protocol
-------------------
:class:`Kernel` lists everything :mod:`exprc.function` (and :mod:`exprc.shared`) may ask of a
kernel; nothing else is probed.  Subclass it to inherit the defaults.

``source``
    The generated code (C, CUDA, or the Python listing of the reference backend).
``kernels``
    One dict per fused loop (``name``, ``kind``, ``ops``, ``outputs``), in run order.
``cache_entry``
    The disk-cache folder holding the binary, or None (nothing compiled, or the cache is off).
``__call__(*arrays, out=None, to_numpy=None) -> list``
    Run once.  ``arrays`` are what :class:`~exprc.function.Function` validated: one per graph
    input, of the declared dtype and ndim (device arrays where ``device_arrays``).  ``out``, when
    given, has one entry per output: an array to write that output into, or None for a fresh
    one; the kernel checks each (:func:`exprc.backends.outputs.check_out`) and returns the list it
    wrote.  ``to_numpy``: a kernel whose results live on a device returns host arrays when true;
    host backends ignore it.
``writes_out``
    True when the kernels compute straight into ``out=`` arrays (no temporary, no copy):
    :class:`~exprc.shared.SharedFunction` then hands a variable's spare buffer as ``out=`` for
    its update instead of allocating one per call.
``in_place`` / ``__call__(..., in_place=pairs)``
    ``{output j: input i}``: outputs the kernel can compute in their input's own buffer, where
    that cannot be seen (:func:`exprc.backends.plan.in_place_outputs`: a scatter as the last
    writer of its operand).  A caller passing ``out[j]`` that *is* ``arrays[i]`` and ``(j, i)`` in
    ``in_place`` gets it updated where it lies (a shared variable's sparse update).  Default: {}.
``profile``
    With ``Config.profile``: an :class:`exprc.profile.Profile` the kernel fills on every call (the C
    backend times each kernel and NumPy step); ``Function.profile`` returns it.  Default: None.
``fast_path(single) -> callable | None``
    An optional C-level callable for the common call (validated arguments, fresh outputs,
    updates): ``fn(*args)``, ``fn.into(args, out)`` and ``fn.update(args, hidden, boxes,
    locks)``, each returning None for anything it does not take, so the Python path then runs.
    ``Function`` asks for it on its second call.  Default: None.
``index_state() -> object | None``
    What the graph index keeps to rebuild the kernel without lowering or rendering (picklable;
    its graph nodes are pickled by the index), or None when it cannot be kept.  Default: None.
``device_arrays`` / ``device_input(value, var, label)``
    Whether arguments with ``__cuda_array_interface__`` are taken as they are;
    ``device_input`` checks one against its variable (raising an ``exprc.errors`` error that
    names ``label``) and returns what ``__call__`` accepts.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exprc.config import Config
from exprc.errors import BackendUnavailable

if TYPE_CHECKING:  # (annotations only: the registry imports no pass or graph module)
    from exprc.pipeline import FunctionGraph


class Kernel:
    """The compiled form of one optimized graph on one backend (see the module docstring)."""

    source: str = ""
    kernels: list[dict] = []  # noqa: RUF012 - replaced per instance, never mutated
    cache_entry: Path | None = None
    writes_out: bool = False
    device_arrays: bool = False
    in_place: dict[int, int] = {}  # noqa: RUF012 - replaced per instance, never mutated
    profile: Any = None  # an exprc.profile.Profile in profile mode (Config.profile), where the backend keeps one

    def __call__(self, *arrays: Any, out: list | None = None, to_numpy: bool | None = None) -> list:
        raise NotImplementedError

    def fast_path(self, single: bool) -> Any:
        return None

    def index_state(self) -> Any:
        return None

    def device_input(self, value: Any, var: Any, label: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} takes no device arrays")


_MODULES: dict[str, str] = {}
_WARNED: set[str] = set()


def register_backend(name: str, module: str) -> None:
    """Register backend ``name``, implemented by ``module`` (its ``make`` and ``probe``)."""
    _MODULES[name] = module


def names() -> list[str]:
    """The registered backends, sorted."""
    return sorted(_MODULES)


def backend_module(name: str) -> Any:
    """The module implementing registered backend ``name`` (imported on first use)."""
    return importlib.import_module(_MODULES[name])


def unavailable_reason(name: str, cfg: Config) -> str | None:
    """None when backend ``name`` can run here, else why not."""
    if name not in _MODULES:
        return f"unknown backend {name!r}; choose one of {', '.join(names())}"
    return backend_module(name).probe(cfg)


def choose(requested: str | None, cfg: Config) -> str:
    """The backend to use: the requested one, or "c" when it works, else "numpy"."""
    name = requested or cfg.backend
    if name:
        why = unavailable_reason(name, cfg)
        if why:
            raise BackendUnavailable(f"backend {name!r} is unavailable: {why}")
        return name
    why = unavailable_reason("c", cfg)
    if why is None:
        return "c"
    if why not in _WARNED:
        _WARNED.add(why)
        warnings.warn(f"exprc: falling back to the NumPy backend because the C backend is unavailable: {why}",
                      RuntimeWarning, stacklevel=3)
    return "numpy"


def build(name: str, fg: FunctionGraph, cfg: Config) -> Kernel:
    """The kernel of ``fg`` on backend ``name`` (one that :func:`choose` returned).  A graph with
    value-dependent shapes runs in stages (:mod:`exprc.backends.staged`) unless the backend's
    module says it plans shapes per call itself (``VALUE_SHAPES = True``, the NumPy backend); a
    graph with loops or conditions always does (their bodies are kernels of their own)."""
    from exprc.backends.staged import StagedKernel, needs_stages

    module = backend_module(name)
    if needs_stages(fg.outputs, control_only=getattr(module, "VALUE_SHAPES", False)):
        # A loop's body runs once per step on one step's arrays: on one thread (no fork and join
        # per kernel per step, and half the compile); BLAS keeps its own threads, and an
        # elementwise loop runs its elements on every thread (loopkernel, built with ``cfg``).
        body_cfg = cfg.replace(num_threads=1, openmp=False)

        def body(inputs: tuple, outputs: tuple) -> Kernel:  # a loop's or a branch's graph
            from exprc.pipeline import FunctionGraph, optimize

            return build(name, optimize(FunctionGraph(inputs, outputs), body_cfg), body_cfg)

        return StagedKernel(fg, lambda stage: module.make(stage, cfg), body, name, cfg)
    return module.make(fg, cfg)


register_backend("numpy", "exprc.backends.reference")
register_backend("c", "exprc.backends.c")
register_backend("cuda", "exprc.backends.cuda")

__all__ = ["Kernel", "backend_module", "build", "choose", "names", "register_backend", "unavailable_reason"]
