"""Constant folding: an op whose operands are all constants becomes a constant."""

from __future__ import annotations

import numpy as np

from exprc.graph import Node, constant_node
from exprc.ops import OPS
from exprc.rewrite.core import rewrite_rule

#: Results larger than this stay in the graph (folding must not bloat the binary).
MAX_FOLDED_ELEMENTS = 1 << 16


@rewrite_rule("constant_fold", tags=("canonicalize", "fold"), operands=("constant",))
def constant_fold(node: Node) -> Node | None:
    """op(constants...) -> constant, evaluated with the op's NumPy reference."""
    if not node.inputs or not all(i.op == "constant" for i in node.inputs):
        return None
    op = OPS[node.op]
    if op.impl is None or op.kind == "leaf" or op.impure:
        return None
    size = 1
    for s in node.type.shape:
        size *= s if s is not None else MAX_FOLDED_ELEMENTS + 1
    if size > MAX_FOLDED_ELEMENTS:
        return None
    with np.errstate(all="ignore"):
        value = np.asarray(op.impl(*[i.value for i in node.inputs], **dict(node.attrs)))
    return constant_node(value.astype(node.dtype, copy=False), node.dtype)
