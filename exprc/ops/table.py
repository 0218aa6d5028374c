"""The op table: one :class:`Op` row per op, the ``OPS`` registry, and the helpers type rules share.

A row holds most facts about an op on one line: the NumPy reference (used by the reference
backend and by constant folding), the type rule, the C expression (``{0}``, ``{1}`` … are
operands, ``{f}`` is ``f`` for float32 and empty for float64, ``{T}`` the C type), an optional
CUDA expression where it differs, how the op prints, the names of the attributes its nodes
carry (which :mod:`exprc.serialize` checks) and the gradient rule slot.  Keeping them on one
row is what lets :func:`exprc.custom_op` add an op in one call.

The rows live in the sibling modules (``elemwise``, ``leaf``, ``reduce``, ``shape``,
``linalg``), registered in that order; gradient rules are attached later by
:mod:`exprc.ops.grad`, which builds graphs with :mod:`exprc.api` and therefore sits above it.
This module imports nothing above :mod:`exprc.graph`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exprc import graph
from exprc.errors import DTypeError
from exprc.graph import Node, constant_node, rebuild, substitute
from exprc.types import TensorType, broadcast_shapes, float_dtype, promote

__all__ = ["OPS", "GradRule", "Op", "cast", "grad_rule", "rebuild", "register", "substitute"]

#: ``grad(node, g) -> one entry per operand``: its gradient, None (zero), or a function of no
#: arguments building it (called only for operands that need a gradient, so the gradient of
#: ``X @ w`` with respect to the data ``X`` is never built).
GradRule = Callable[[Node, Node], Sequence["Node | Callable[[], Node] | None"]]


@dataclass(frozen=True)
class Op:
    """One row of the op table."""

    name: str
    kind: str  # leaf | elemwise | reduce | shape | linalg
    impl: Callable[..., Any] | None
    infer: Callable[[tuple, dict], tuple[tuple, TensorType]] | None = None
    c: str | None = None
    c_int: str | None = None  # C expression for integer/bool operands, where it differs
    cuda: str | None = None
    infix: str | None = None
    prec: int = 100
    commutative: bool = False
    grad: GradRule | None = field(default=None, compare=False)
    #: The attribute names a node of this op carries (all of them, always): the schema that
    #: serialize checks a saved node against.
    attr_names: tuple[str, ...] = ()
    #: Attributes a node may carry besides those (absent: the op's NumPy meaning), which serialize
    #: accepts too: max/min's ``identity`` (see exprc/ops/reduce.py).
    optional_attrs: tuple[str, ...] = ()
    #: The operand count (fewest, most; most None: no bound), which loading a saved graph checks;
    #: None: derived (elementwise rows from their C template, reductions take one).
    nin: tuple[int, int | None] | None = None
    #: The output's shape depends on operand *values* (a symbolic slice bound, a symbolic size):
    #: such nodes split a native program into stages run one after the other
    #: (:mod:`exprc.backends.staged`); their inferred shape has None where it is not static.
    #: A predicate ``fn(node) -> bool`` instead of True when only some nodes of the op are.
    value_shape: bool | Callable[[Node], bool] = False
    #: NumPy steps only: ``into(out, *operands, **attrs)`` writes the result into an existing
    #: array (the native backends' step buffer), saving a temporary and a copy.
    into: Callable[..., None] | None = field(default=None, compare=False)
    #: NumPy steps only: ``step_shape(node, operand shapes, {operand position: value known on the
    #: host})`` gives the result's shape, so that the planner does not run the step on placeholder
    #: zeros (an index whose bounds are computed would read zeros there).
    step_shape: Callable[..., tuple] | None = field(default=None, compare=False)
    #: NumPy steps with ``into`` only: the result is the first operand updated, and ``into`` may
    #: be handed that operand's own buffer as ``out`` (the planner does so when nothing else reads it).
    in_place: bool = False
    #: Runs for a side effect on every call (``print``): never folded into a constant, never run
    #: once per plan as a shape-only step.
    impure: bool = False
    #: Elementwise ops whose C expression depends on attributes or on the element's position (random
    #: draws): ``c_call(node, operand expressions, flat index expression, bits) -> C expression``, used
    #: by every renderer instead of ``c`` (``bits``: a draw's bits already computed by a batched loop,
    #: or None).  Such an op's first operand only gives the shape: renderers do
    #: not load it and the planner does not require it contiguous.
    c_call: Callable[[Node, list, str, str | None], str] | None = field(default=None, compare=False)

    def value_shaped(self, node: Node) -> bool:
        """Whether this node's shape depends on operand values (see ``value_shape``)."""
        return self.value_shape(node) if callable(self.value_shape) else bool(self.value_shape)

    def make(self, inputs: tuple, attrs: dict) -> Node:
        """Build the node: coerce operands, infer the output type, intern."""
        if self.infer is None:
            raise TypeError(f"op {self.name} cannot be rebuilt")
        inputs, typ = self.infer(tuple(inputs), attrs)
        return Node(self.name, inputs, attrs, typ)


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    """Add ``op`` to the table (custom ops use :func:`exprc.custom_op`)."""
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} is already registered")
    OPS[op.name] = op
    return op


def grad_rule(*names: str) -> Callable[[GradRule], GradRule]:
    """Decorator: make ``fn`` the gradient rule of the ops ``names`` (rows are frozen: each is
    replaced by a copy carrying the rule, in place, so the table's order does not change)."""

    def deco(fn: GradRule) -> GradRule:
        for name in names:
            OPS[name] = dataclasses.replace(OPS[name], grad=fn)
        return fn

    return deco


def _make(op: str, inputs: tuple, attrs: dict) -> Node:
    return OPS[op].make(inputs, attrs)


# graph.rebuild re-derives a node's type through this table; graph.py sits below the table and
# cannot import it, so the table hands its builder down (registration downward, as JAX does).
graph.install_type_rules(_make)


# -- helpers for type rules ----------------------------------------------------
def cast(x: Node, dtype: str) -> Node:
    """``x`` converted to ``dtype`` (constants are converted now, other nodes get a ``cast``)."""
    if x.dtype == dtype:
        return x
    if x.op == "constant":
        return constant_node(x.value.astype(dtype), dtype)
    return OPS["cast"].make((x,), {"dtype": dtype})


def _elemwise(name: str, dtype_rule: str) -> Callable:
    """Type rule for an elementwise op: broadcast shapes, pick compute/output dtypes."""

    def infer(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
        dts = [i.dtype for i in inputs]
        compute = promote(*dts)
        if dtype_rule in ("float", "float_bool"):
            compute = float_dtype(compute)
        elif dtype_rule == "numeric" and compute == "bool":
            raise DTypeError(f"{name}: not defined for bool operands; use .astype('int64') first")
        elif dtype_rule == "integral" and compute.startswith("float"):
            raise DTypeError(f"{name}: expected bool or integer operands, got {', '.join(dts)}")
        inputs = tuple(cast(i, compute) for i in inputs)
        shape = broadcast_shapes([i.type.shape for i in inputs], name)
        out = "bool" if dtype_rule in ("bool", "float_bool") else compute
        return inputs, TensorType(out, shape)

    return infer


def _errstate(fn: Callable) -> Callable:
    """``fn`` with NumPy's floating-point warnings silenced (NaN and Inf are values here)."""

    def wrapped(*args: Any, **kw: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kw)

    wrapped.__name__ = getattr(fn, "__name__", "op")
    return wrapped
