"""Control-flow rows: ``scan`` (a loop whose body is a graph of its own), ``scan_output`` (one
result of a loop) and ``ifelse`` (a lazy choice between two graphs).

A loop is one node of the outer graph.  Its body was traced once, over *placeholders* (fresh
``input`` nodes standing for one step's slices of the sequences, the states the body reads and
the loop-invariant values), into a :class:`Loop`; the node's operands are what the placeholders
stand for::

    scan(n_steps, *sequences, *initial states, *invariants; loop=Loop)

A node has one value, a loop has several results: the ``scan`` node's value is the tuple of
them and each result is a ``scan_output(scan node; k)`` node, the only users of a ``scan`` node
(the scan node's own type is a placeholder, 0-d bool, that nothing reads).  Both rows are
``value_shape``: a native program stops before them (:mod:`exprc.backends.staged`), the loop runs
on the host over the body's compiled kernel (:mod:`exprc.backends.loops`; the C backend runs the
iterations in a native loop), and the rest of the graph reads its results.

``ifelse(cond, *captured; branches=Branches)`` evaluates the one branch ``cond`` picks: both
branches are graphs over placeholders for ``captured`` (the graph inputs they read), compiled on
their own, so the untaken branch runs nothing.

The ``impl`` of each row is the reference: NumPy kernels of the bodies (the NumPy backend and
constant folding's callers never see a loop node any other way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from exprc import graph
from exprc.errors import ControlFlowError, ShapeError
from exprc.graph import Node, toposort
from exprc.ops.table import Op, register
from exprc.types import TensorType, shape_str


@dataclass(frozen=True, eq=False)
class Loop:
    """A loop body and how its operands and results are laid out (compared by identity).

    ``inputs``: the body's placeholders in the order the user's function received them (each
    sequence's taps, each recurrent output's taps, then the invariants); ``outputs``: one body
    output per loop result, then the ``until`` condition when there is one.  ``state_taps[k]`` is
    None for a result that is not fed back (``outputs_info`` None), else its taps (negative,
    ascending); ``keep[k]`` is ``"all"`` (the stacked results of every step) or ``"last"`` (the
    final value only: ``fori_loop``, carried gradients)."""

    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    seq_taps: tuple[tuple[int, ...], ...]
    state_taps: tuple[tuple[int, ...] | None, ...]
    keep: tuple[str, ...]
    n_invariants: int
    until: bool = False
    go_backwards: bool = False
    from_sequences: bool = False  # n_steps is the sequences' common length
    labels: tuple[str, ...] = ()  # per result, for messages ("outputs_info[1]")
    name: str = "scan"

    def __getstate__(self) -> dict:
        # (compiled kernels cached on the object by the reference runner are not part of it)
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @property
    def n_seqs(self) -> int:
        return len(self.seq_taps)

    @property
    def n_results(self) -> int:
        return len(self.state_taps)

    @property
    def recurrent(self) -> list[int]:
        return [k for k, t in enumerate(self.state_taps) if t is not None]

    def depth(self, k: int) -> int:
        """How many past values result ``k`` reads (0: not recurrent)."""
        taps = self.state_taps[k]
        return -min(taps) if taps else 0

    def span(self, j: int) -> int:
        """How many more rows than steps sequence ``j`` needs (its taps' spread)."""
        taps = self.seq_taps[j]
        return max(taps) - min(taps)

    def result_type(self, k: int, n_static: int | None) -> TensorType:
        t = self.outputs[k].type
        return t if self.keep[k] == "last" else TensorType(t.dtype, (n_static, *t.shape))

    def __repr__(self) -> str:
        return f"Loop({self.name}: {len(self.inputs)} inputs, {self.n_results} results, {len(toposort(self.outputs))} nodes)"


@dataclass(frozen=True, eq=False)
class Branches:
    """The two graphs of an ``ifelse`` over placeholders for its captured operands."""

    inputs: tuple[Node, ...]
    then: Node
    orelse: Node

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"Branches({len(self.inputs)} inputs)"


# -- the reference runners ----------------------------------------------------------------------
def _reference_kernel(holder: Any, outputs: tuple[Node, ...]) -> Any:
    """A NumPy kernel of a body (cached on the Loop/Branches object, per body outputs)."""
    cache = holder.__dict__.setdefault("_numpy_kernels", {})
    key = tuple(map(id, outputs))
    if key not in cache:
        from exprc.backends import build
        from exprc.config import current
        from exprc.pipeline import FunctionGraph, optimize

        cfg = current()
        cache[key] = build("numpy", optimize(FunctionGraph(holder.inputs, outputs), cfg), cfg)
    return cache[key]


def steps_of(loop: Loop, n_arg: Any, seqs: list[np.ndarray]) -> int:
    """The number of steps to run: checks ``n_steps`` and the sequences' lengths."""
    lengths = [np.shape(s)[0] - loop.span(j) for j, s in enumerate(seqs)]
    if loop.from_sequences:
        if len(set(lengths)) > 1:
            desc = ", ".join(f"sequences[{j}] gives {n}" for j, n in enumerate(lengths))
            raise ControlFlowError(f"{loop.name}: the sequences have different lengths ({desc} steps); "
                                   "pass n_steps to run fewer steps than the longest")
        n = lengths[0] if lengths else 0
        if n < 0:
            raise ControlFlowError(f"{loop.name}: sequences[0] has {np.shape(seqs[0])[0]} rows, fewer than its taps "
                                   f"need ({loop.span(0) + 1})")
        return n
    n = int(np.asarray(n_arg))
    if n < 0:
        raise ControlFlowError(f"{loop.name}: n_steps must be >= 0, got {n}")
    for j, m in enumerate(lengths):
        if m < n:
            raise ControlFlowError(f"{loop.name}: sequences[{j}] has {np.shape(seqs[j])[0]} rows but {n} steps with "
                                   f"taps {list(loop.seq_taps[j])} need {n + loop.span(j)}")
    return n


def _scan_impl(*args: Any, loop: Loop) -> tuple:
    from exprc.backends.loops import LoopRunner

    runner = loop.__dict__.get("_numpy_runner")
    if runner is None:
        runner = LoopRunner(loop, _reference_kernel(loop, loop.outputs))
        loop.__dict__["_numpy_runner"] = runner
    return runner(*args)


def _infer_scan(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    loop: Loop = attrs["loop"]
    want = 1 + loop.n_seqs + len(loop.recurrent) + loop.n_invariants
    if len(inputs) != want:
        raise ShapeError(f"{loop.name}: expected {want} operands, got {len(inputs)}")
    return inputs, TensorType("bool", ())


def static_steps(node: Node) -> int | None:
    """The number of steps of a ``scan`` node when the graph fixes it."""
    loop: Loop = node.arg("loop")
    if loop.until:
        return None
    if loop.from_sequences:
        lengths = {s.type.shape[0] - loop.span(j) if s.type.shape[0] is not None else None
                   for j, s in enumerate(node.inputs[1:1 + loop.n_seqs])}
        return lengths.pop() if len(lengths) == 1 else None
    n = node.inputs[0]
    return int(n.value) if n.op == "constant" else None


def _infer_scan_output(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (scan,) = inputs
    if scan.op != "scan":
        raise TypeError("scan_output reads a scan node")
    loop: Loop = scan.arg("loop")
    return inputs, loop.result_type(attrs["k"], static_steps(scan))


def _scan_output(packed: tuple, k: int) -> Any:
    return packed[k]


def check_condition(value: Any, what: str) -> bool:
    """The truth of an ``ifelse``/``until`` condition computed at call time (a 0-d array)."""
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise ShapeError(f"{what}: expected a scalar condition, got shape {shape_str(arr.shape)}")
    return bool(arr)


def run_branch(branches: Branches, kernels: tuple[Any, Any], cond: Any, captured: list) -> Any:
    """Run the branch ``cond`` picks (``kernels``: compiled then/else graphs)."""
    kernel = kernels[0] if check_condition(cond, "ifelse: condition") else kernels[1]
    return kernel(*captured, to_numpy=True)[0]


def _ifelse_impl(cond: Any, *captured: Any, branches: Branches) -> Any:
    kernels = (_reference_kernel(branches, (branches.then,)), _reference_kernel(branches, (branches.orelse,)))
    return run_branch(branches, kernels, cond, list(captured))


def _infer_ifelse(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    b: Branches = attrs["branches"]
    a, o = b.then.type, b.orelse.type
    if len(inputs) != 1 + len(b.inputs):
        raise ShapeError(f"ifelse: expected {1 + len(b.inputs)} operands, got {len(inputs)}")
    shape = tuple(x if x == y else None for x, y in zip(a.shape, o.shape))
    return inputs, TensorType(a.dtype, shape)


graph.RETYPE_ALWAYS.add("scan_output")  # (its shape follows the loop's operands, not the loop node's type)

register(Op("scan", "control", _scan_impl, _infer_scan, attr_names=("loop",), nin=(1, None), value_shape=True))
register(Op("scan_output", "control", _scan_output, _infer_scan_output, attr_names=("k",), nin=(1, 1),
            value_shape=True))
register(Op("ifelse", "control", _ifelse_impl, _infer_ifelse, attr_names=("branches",), nin=(1, None),
            value_shape=True))

__all__ = ["Branches", "Loop", "check_condition", "run_branch", "static_steps", "steps_of"]
