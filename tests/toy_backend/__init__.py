"""A backend written as a newcomer would add one: this folder plus one ``register_backend`` line.

It runs the NumPy reference listing but keeps a log of what the front end asked of it, so
tests/test_backends.py can check that :mod:`exprc.function` speaks only the kernel protocol.
"""

from __future__ import annotations

from typing import Any

from exprc.backends import Kernel
from exprc.backends.outputs import check_count, copy_into
from exprc.backends.reference import NumpyKernel

CALLS: list[tuple] = []
AVAILABLE = [True]
PROTOCOL = {"source", "kernels", "cache_entry", "writes_out", "device_arrays", "fast_path", "device_input", "in_place",
            "__call__"}


class ToyKernel(Kernel):
    """Reference results, every call logged; any attribute outside the protocol is an error."""

    def __init__(self, fg: Any):
        self._ref = NumpyKernel(fg)
        self.source = "# toy\n" + self._ref.source
        self.kernels = [{"name": "toy", "kind": "elemwise", "ops": [], "outputs": len(fg.outputs)}]

    def __call__(self, *arrays: Any, out: list | None = None, to_numpy: bool | None = None) -> list:
        CALLS.append(("call", len(arrays), out is not None, to_numpy))
        res = self._ref.run(arrays)
        if out is None:
            return res
        check_count(out, len(res))
        return copy_into(out, res)

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in PROTOCOL:
            raise AssertionError(f"the front end asked the kernel for {name!r}, which the protocol does not list")
        return super().__getattribute__(name)


def make(fg: Any, cfg: Any) -> ToyKernel:
    CALLS.append(("make", len(fg.inputs)))
    return ToyKernel(fg)


def probe(cfg: Any) -> str | None:
    return None if AVAILABLE[0] else "the toy is switched off"
