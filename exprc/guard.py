"""NaN/Inf guard (``Config(nan_guard=True)``, Theano's ``NanGuardMode``).

:class:`GuardedKernel` wraps a compiled kernel: after each call it checks every float output
(results and shared-variable updates) with one ``isfinite`` pass.  When one holds NaN or Inf and
every float input was finite, the graph is evaluated again node by node with the NumPy reference
to find the first node whose value is not finite although its operands are, and
:class:`~exprc.errors.NonFiniteError` names it (``pprint``), the fused kernel that computes it,
and its operands (shape, min, max, mean, NaN/Inf counts).  NaN or Inf already in an input is IEEE
propagation, not an error.  A NaN made and then masked inside the graph (``where(isnan(...))``)
changes no output and is not reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exprc.backends import Kernel
from exprc.errors import NonFiniteError
from exprc.graph import Node, toposort
from exprc.ops import OPS
from exprc.ops.debug import describe


def _host(a: Any) -> np.ndarray:
    """A NumPy view or copy of an array (a device array: copied to the host)."""
    if isinstance(a, np.ndarray):
        return a
    to_host = getattr(a, "to_numpy", None) or getattr(a, "get", None)
    return np.asarray(to_host() if to_host is not None else a)


def _finite(a: Any) -> bool:
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    return a.dtype.kind not in "fc" or bool(np.isfinite(a).all())


class GuardedKernel(Kernel):
    """A kernel whose every call is checked (see the module docstring); the protocol otherwise
    forwards to the wrapped kernel."""

    def __init__(self, kernel: Any, graph: Any):
        self._inner = kernel
        self._graph = graph
        self.device_arrays = kernel.device_arrays
        self.writes_out = kernel.writes_out
        # (no in_place: an update is checked before it is installed, so never written where it lies)

    @property
    def source(self) -> str:  # type: ignore[override]
        return self._inner.source

    @property
    def kernels(self) -> list:  # type: ignore[override]
        return self._inner.kernels

    @property
    def cache_entry(self) -> Any:  # type: ignore[override]
        return self._inner.cache_entry

    @property
    def profile(self) -> Any:  # type: ignore[override]
        return getattr(self._inner, "profile", None)

    def fast_path(self, single: bool) -> Any:
        """The wrapped kernel's fast path, its results checked: a result that is not finite makes
        it return None, and the Python path runs the call again and raises with the diagnosis."""
        inner = self._inner.fast_path(single)
        if inner is None:
            return None

        def fast(*args: Any) -> Any:
            res = inner(*args)
            if res is None or not all(_finite(o) for o in ([res] if single else res)):
                return None
            return res

        fast.into = lambda args, outs: None  # type: ignore[attr-defined]  # (out= and updates: the
        fast.update = lambda *a: None  # type: ignore[attr-defined]        # checked Python path)
        return fast

    def device_input(self, value: Any, var: Any, label: str) -> Any:
        return self._inner.device_input(value, var, label)

    def __call__(self, *arrays: Any, out: list | None = None, to_numpy: bool | None = None, **kw: Any) -> list:
        if out is not None or to_numpy is not None:
            outs = self._inner(*arrays, out=out, to_numpy=to_numpy)
        else:
            outs = self._inner(*arrays)
        bad = next((j for j, o in enumerate(outs) if not _finite(_host(o))), None)
        if bad is not None and all(_finite(_host(a)) for a in arrays):
            raise NonFiniteError(self._diagnose([_host(a) for a in arrays], bad))
        return outs

    def _diagnose(self, arrays: tuple, j: int) -> str:
        graph = self._graph
        label = f"output {j}"
        values: dict[Node, Any] = dict(zip(graph.inputs, arrays))
        with np.errstate(all="ignore"):
            for n in toposort(list(graph.outputs)):
                if n in values:
                    continue
                if n.op == "constant":
                    values[n] = n.value
                    continue
                op = OPS[n.op]
                if op.impl is None or op.impure:
                    return f"nan_guard: {label} holds NaN or Inf although every input is finite"
                try:
                    v = op.impl(*[values[i] for i in n.inputs], **dict(n.attrs))
                except Exception:  # noqa: BLE001 - the diagnosis is best effort; the call's error stands
                    return f"nan_guard: {label} holds NaN or Inf although every input is finite"
                values[n] = v
                if not _finite(v) and all(_finite(values[i]) for i in n.inputs):
                    return self._message(n, values, label)
        return f"nan_guard: {label} holds NaN or Inf although every input is finite"

    def _message(self, n: Node, values: dict, label: str) -> str:
        from exprc.printing import pprint

        v = np.asarray(values[n])
        count = int((~np.isfinite(v)).sum()) if v.dtype.kind in "fc" else 0
        try:  # (a C kernel's program; other backends have none, or refuse names outside the protocol)
            steps = self._inner.program.kernels
        except Exception:  # noqa: BLE001
            steps = []
        kernel = next((k.name for k in steps if n in k.body or n in k.outputs), None)
        where = f" in kernel {kernel}" if kernel else ""
        ops = "; ".join(f"operand {i} ({pprint(x, max_nodes=20)[:80]}): {describe(values[x])}"
                        for i, x in enumerate(n.inputs))
        return (f"nan_guard: {pprint(n, max_nodes=40)[:200]}{where} made {count} NaN/Inf value(s) of "
                f"{v.size} from finite operands (the first such node; {label} is not finite): {ops}")


__all__ = ["GuardedKernel"]
