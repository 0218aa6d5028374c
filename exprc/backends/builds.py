"""Overlapped native builds: compile a function's several libraries at the same time.

A graph with loops or stages is several kernels (stages, loop bodies, their gradients'), each a
library the C compiler builds on a cache miss.  The compiler runs as a subprocess, so the builds
can overlap: inside :func:`overlapped` (which :class:`~exprc.backends.staged.StagedKernel` enters
while it makes its kernels) :func:`submit` starts a build on a worker thread and returns at once;
leaving the block waits for every build it started and raises the first error, so a broken
kernel still fails when the function is made, not when it is first called.  Outside the block
:func:`submit` runs the build at once (nothing changes for a function of one kernel).

The Python side (lowering, rendering) stays on the calling thread; the workers only run
:func:`exprc.cache.load`, which locks per entry and is safe across threads and processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (concurrent.futures loads only when builds overlap: not in a warm start)
    from concurrent.futures import Future, ThreadPoolExecutor

_PENDING: contextvars.ContextVar[list[Future] | None] = contextvars.ContextVar("exprc_pending_builds", default=None)
_POOL: list[ThreadPoolExecutor] = []


class _Done:
    """A build that already ran (the Future interface's ``result``)."""

    def __init__(self, fn: Callable[[], Any]):
        self._value = fn()

    def result(self) -> Any:
        return self._value


def done(value: Any) -> Any:
    """A build whose result is already known (``value``)."""
    return _Done(lambda: value)


def submit(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (a build) now, or on a worker inside :func:`overlapped`; ``.result()`` waits."""
    pending = _PENDING.get()
    if pending is None:
        return _Done(fn)
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="exprc-build"))
    future = _POOL[0].submit(fn)
    pending.append(future)
    return future


@contextlib.contextmanager
def overlapped() -> Iterator[None]:
    """Builds submitted inside run concurrently; leaving waits for them (first error raised)."""
    if _PENDING.get() is not None:  # nested: the outer block waits for everything
        yield
        return
    pending: list[Future] = []
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
        errors = []
        for f in pending:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001 - re-raised below, first one wins
                errors.append(e)
        if errors:
            raise errors[0]


__all__ = ["done", "overlapped", "submit"]
