"""Rewrites of index steps, so that the gradients of indexing cost what they touch.

* ``sparse_update``: the gradient of ``W[idx]`` is ``inc_subtensor(zeros_like(W)[idx], g)``, a
  table of zeros with a few rows added; ``W - lr * that`` costs a pass over a zeroed table and
  another over ``W`` for an SGD step that changes a few rows.  ``inc_subtensor(W[idx], -(lr * g))``
  changes only those rows, and as the update of a shared ``W`` runs where ``W`` lies (see
  :func:`exprc.backends.plan.in_place_outputs`).
* ``slice_grad_plus_zero``: the gradient of a static slice, ``inc_subtensor(zeros, g, slice)``,
  takes the form the C planner writes without a step (``Planner._slice_writes``)."""

from __future__ import annotations

import math

from exprc.graph import Node
from exprc.ops import OPS
from exprc.ops.elemwise import plus_zero, zero_fill
from exprc.rewrite.core import constant_value, rewrite_rule
from exprc.rewrite.forms import const, make
from exprc.types import is_float


def _zeros_like(z: Node, a: Node) -> bool:
    """``z`` is ``fill(a, +0)``: zeros of exactly ``a``'s shape."""
    return zero_fill(z) and z.inputs[0] is a


@rewrite_rule("sparse_update", ("specialize", "indexing"), ops=("sub", "add"))
def sparse_update(node: Node) -> Node | None:
    """a - inc_subtensor(zeros_like(a)[i], v) * c -> inc_subtensor(a[i], -((v + 0.0) * c)) for a
    constant c > 0 (or no c; also ``/ c``), and a + inc_subtensor(zeros_like(a)[i], v) * c ->
    inc_subtensor(a[i], (v + 0.0) * c) for a constant c < 0: an SGD step by the gradient of a
    gather then changes only the rows gathered.  With distinct indices the result is the same
    bits: the rows not indexed get a - (+0) or a + (-0), which is a, -0.0 included (hence the
    signs of c); ``v + 0.0`` turns a -0.0 into the +0.0 that ``0 + v`` gave; a - w is a + (-w).
    Where an index repeats, the original adds the rows' contributions first and the rewritten
    form adds them to a one at a time: each is rounded once more (as np.add.at on the table
    would be), not the same bits."""
    for a, y in ((node.inputs[0], node.inputs[1]),) if node.op == "sub" else (node.inputs, node.inputs[::-1]):
        new = _sparse(node, a, y)
        if new is not None:
            return new
    return None


def _sparse(node: Node, a: Node, y: Node) -> Node | None:
    s, c, cv = y, None, 1.0
    if y.op in ("mul", "truediv"):
        s, c = y.inputs
        if s.op == "constant" and y.op == "mul":
            s, c = c, s
        cv = constant_value(c)
        if c.op != "constant" or cv is None or not 0 < abs(cv) < math.inf or y.type != s.type:
            return None
    if ((cv < 0) != (node.op == "add") or s.op != "scatter" or s.arg("mode") != "inc" or node.type != a.type
            or s.type != a.type or not _zeros_like(s.inputs[0], a)):
        return None
    v = s.inputs[1]
    if is_float(v.dtype):
        v = make("add", v, const(0.0, v))
    if c is not None:
        v = make(y.op, v, const(cv, v))
    return make("scatter", a, make("neg", v) if node.op == "sub" else v, *s.inputs[2:], **dict(s.attrs))


@rewrite_rule("slice_grad_plus_zero", ("specialize", "indexing"), ops=("inc_subtensor",))
def slice_grad_plus_zero(node: Node) -> Node | None:
    """inc_subtensor(zeros_like(m), g, slice) -> inc_subtensor(zeros_like(m), g + 0.0, slice) for a
    float g computed elementwise (the gradient of a slice): the same values (0 + g turns a -0.0
    into +0.0 and so does g + 0.0), and the C planner can then let g's kernel write g + 0.0
    straight into the slice of the zeros, so the step runs nothing (``Planner._slice_writes``;
    an LSTM's backward step over its four gate slices becomes one native call).  The add is
    fused into g's kernel: it costs nothing."""
    z, g = node.inputs
    if not is_float(g.dtype) or OPS[g.op].kind != "elemwise" or not zero_fill(z) or plus_zero(g):
        return None  # (plus_zero: already there)
    return make("inc_subtensor", z, make("add", g, const(0.0, g)), **dict(node.attrs))
