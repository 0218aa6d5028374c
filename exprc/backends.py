"""Backend registry: name -> a factory ``(FunctionGraph, Config) -> kernel``.

A kernel is callable with one array per graph input and returns a list with
one array per output; it exposes ``source`` and ``kernels``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from exprc.config import Config
from exprc.errors import BackendUnavailable
from exprc.pipeline import FunctionGraph

Factory = Callable[[FunctionGraph, Config], Any]
_FACTORIES: dict[str, Factory] = {}
_PROBES: dict[str, Callable[[Config], str | None]] = {}
_WARNED: set[str] = set()


def register_backend(name: str, factory: Factory, probe: Callable[[Config], str | None] | None = None) -> None:
    """Register a backend; ``probe(config)`` returns None when usable, else why not."""
    _FACTORIES[name] = factory
    if probe is not None:
        _PROBES[name] = probe


def unavailable_reason(name: str, cfg: Config) -> str | None:
    if name not in _FACTORIES:
        return f"unknown backend {name!r}; choose one of {', '.join(sorted(_FACTORIES))}"
    probe = _PROBES.get(name)
    return probe(cfg) if probe else None


def choose(requested: str | None, cfg: Config) -> str:
    """The backend to use: the requested one, or "c" when it works, else "numpy"."""
    name = requested or cfg.backend
    if name:
        why = unavailable_reason(name, cfg)
        if why:
            raise BackendUnavailable(f"backend {name!r} is unavailable: {why}")
        return name
    if "c" in _FACTORIES:
        why = unavailable_reason("c", cfg)
        if why is None:
            return "c"
        if why not in _WARNED:
            _WARNED.add(why)
            warnings.warn(f"exprc: falling back to the NumPy backend because the C backend is unavailable: {why}",
                          RuntimeWarning, stacklevel=3)
    return "numpy"


def build(name: str, fg: FunctionGraph, cfg: Config) -> Any:
    return _FACTORIES[name](fg, cfg)


def _numpy_factory(fg: FunctionGraph, cfg: Config) -> Any:
    from exprc.codegen.python import NumpyKernel

    return NumpyKernel(fg)


register_backend("numpy", _numpy_factory)


def _c_factory(fg: FunctionGraph, cfg: Config) -> Any:
    from exprc.runtime import factory

    return factory(fg, cfg)


def _c_probe(cfg: Config) -> str | None:
    from exprc.compile import cc

    return cc.probe(cfg)


register_backend("c", _c_factory, _c_probe)


def _cuda_factory(fg: FunctionGraph, cfg: Config) -> Any:
    from exprc.cuda_runtime import factory

    return factory(fg, cfg)


def _cuda_probe(cfg: Config) -> str | None:
    from exprc.cuda_device import probe

    return probe(cfg)


register_backend("cuda", _cuda_factory, _cuda_probe)
