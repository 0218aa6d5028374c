"""The C backend: fused loops rendered as C99 (``render``), built with the system compiler into a
plain shared library (``compile``), loaded with cffi and run through host plans (``kernel``);
``dispatch`` is the small CPython extension that runs the common call without Python, ``blas``
finds NumPy's OpenBLAS for matmul.  Skeletons live in ``templates/``.

This module only names the backend's two entry points; it imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

from exprc.config import Config


def make(fg: Any, cfg: Config) -> Any:
    """The :class:`~exprc.backends.c.kernel.CKernel` of optimized graph ``fg``."""
    from exprc.backends.c.kernel import CKernel

    return CKernel(fg, cfg, fuse="fusion" not in cfg.exclude)


def index_parts(cfg: Config) -> dict[str, str]:
    """What besides the graph and the Config decides a kernel here (the graph index's key): the
    compiler's identity, flags, templates and CPU, as in the cache key of the library."""
    from exprc.backends.c import compile as cc

    return cc.key_parts(cfg)


def restore(fg: Any, state: Any, cfg: Config) -> Any:
    """The kernel of a graph-index record (:meth:`CKernel.index_state`), or None."""
    from exprc.backends.c.kernel import CKernel

    return CKernel.restore(fg, state, cfg)


def _register_loop_stepper() -> None:
    from exprc.backends.loops import NATIVE, WHOLE

    NATIVE["c"] = _stepper
    WHOLE["c"] = _whole_loop


def _stepper(runner: Any) -> Any:
    """The native stepper of a loop (backends/c/looplib.py), imported when a loop first runs: its
    cffi declarations cost a C parse that a function without loops should not pay at start-up."""
    from exprc.backends.c.looplib import stepper

    return stepper(runner)


def _whole_loop(loop: Any, cfg: Config) -> Any:
    """An elementwise loop body runs with the loop inside (backends/c/loopkernel.py), or None."""
    from exprc.backends.c.loopkernel import build

    return build(loop, cfg)


_register_loop_stepper()


def probe(cfg: Config) -> str | None:
    """None when a working C compiler is configured, else why not."""
    from exprc.backends.c import compile as cc

    return cc.probe(cfg)
