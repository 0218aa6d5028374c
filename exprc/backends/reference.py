"""The NumPy reference backend: renders a graph as a readable Python listing of
NumPy calls and executes it.  Every other backend is tested against this one, and the native
backends fall back to it for an input signature their loops do not cover.

Variable names never reach the source: inputs are ``v0, v1, …`` in argument
order (their names appear only inside ``repr``-escaped comments), constants are
looked up by position, and attributes are ints, tuples and dtype names that the
op table validated.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from typing import Any

import numpy as np

from exprc.backends import Kernel
from exprc.backends.outputs import check_count, copy_into
from exprc.config import Config
from exprc.fusion import stable_branches
from exprc.graph import Node
from exprc.ops import OPS
from exprc.pipeline import FunctionGraph


def _fn_name(op: str) -> str:
    return op + "_" if keyword.iskeyword(op) else op


def render(fg: FunctionGraph) -> tuple[str, dict[str, Any]]:
    """Python source of ``fg`` and the namespace it runs in."""
    names: dict[Node, str] = {}
    ns: dict[str, Any] = {}
    args = []
    for i, x in enumerate(fg.inputs):
        names[x] = f"v{i}"
        args.append(f"v{i}")
    lines = ["def compiled(" + ", ".join(args) + "):"]
    lines += [f"    # v{i}: {x.arg('name')!r} {x.type}" for i, x in enumerate(fg.inputs)]
    tmp = len(fg.inputs)
    nconst = 0
    for n in fg.nodes:
        if n in names:
            continue
        if n.op == "input":  # unreachable when function() validated its inputs
            raise KeyError(n)
        if n.op == "constant":
            names[n] = f"c{nconst}"
            ns[f"c{nconst}"] = n.value
            nconst += 1
            continue
        fname = _fn_name(n.op)
        ns[fname] = OPS[n.op].impl
        operands = [names[i] for i in n.inputs]
        attrs = [f"{k}={v!r}" for k, v in n.attrs]
        names[n] = f"v{tmp}"
        tmp += 1
        lines.append(f"    {names[n]} = {fname}({', '.join(operands + attrs)})")
    lines.append("    return (" + "".join(names[o] + ", " for o in fg.outputs) + ")")
    return "\n".join(lines) + "\n", ns


class NumpyKernel(Kernel):
    """A compiled NumPy-backend function (the :class:`~exprc.backends.Kernel` protocol)."""

    def __init__(self, fg: FunctionGraph):
        # (no row kernels: a guard whose slow branch is right everywhere takes it alone, fusion.stable_branches)
        fg = FunctionGraph(fg.inputs, tuple(stable_branches(fg.outputs)), fg.trace)
        self.source, ns = render(fg)
        code = compile(self.source, "<exprc-numpy>", "exec")
        exec(code, ns)  # noqa: S102 - our own generated listing, see module docstring
        self._fn: Callable[..., tuple] = ns["compiled"]
        self._dtypes = [np.dtype(o.dtype) for o in fg.outputs]
        self._copy = [not o.inputs for o in fg.outputs]
        self.kernels: list = []
        self._n = len(fg.outputs)

    def __call__(self, *arrays: np.ndarray, out: list | None = None, to_numpy: bool | None = None) -> list:
        outs = self.run(arrays)
        if out is None:
            return outs
        check_count(out, self._n)
        return copy_into(out, outs)

    def run(self, arrays: tuple | list) -> list[np.ndarray]:
        """Fresh output arrays (never views of the inputs or constants)."""
        with np.errstate(all="ignore"):
            raw = self._fn(*arrays)
        outs = []
        for v, dt, copy in zip(raw, self._dtypes, self._copy):
            a = np.asarray(v)
            if copy or a.base is not None or not a.flags.writeable:
                a = a.copy()  # never hand out views of inputs, constants or broadcasts
            if a.dtype != dt:
                a = a.astype(dt)
            outs.append(a)
        return outs


#: Evaluated node by node: shapes that depend on values need no stages (exprc.backends.staged).
VALUE_SHAPES = True


def make(fg: FunctionGraph, cfg: Config) -> NumpyKernel:
    return NumpyKernel(fg)


def probe(cfg: Config) -> str | None:
    return None  # NumPy is always there
