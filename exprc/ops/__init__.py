"""The op table, one module per family of rows (see :mod:`exprc.ops.table` for the row).

Importing the package registers the rows, in this order (the order of ``OPS``):
:mod:`~exprc.ops.elemwise`, :mod:`~exprc.ops.leaf`, :mod:`~exprc.ops.reduce` (with the
reduction facts renderers read, :data:`REDUCTIONS`), :mod:`~exprc.ops.shape` (with each op's
attribute schema), :mod:`~exprc.ops.linalg`, :mod:`~exprc.ops.creation` (``alloc`` and
``arange`` with sizes known at call time), :mod:`~exprc.ops.index`, :mod:`~exprc.ops.control`,
:mod:`~exprc.ops.random` and :mod:`~exprc.ops.debug` (``print``).  Gradient rules (:mod:`exprc.ops.grad`) are not
imported here: they build graphs with :mod:`exprc.api`, which imports this package, so
:mod:`exprc.autodiff` imports them (last).  The names below are those the rest of exprc imports
from ``exprc.ops``.
"""

from exprc.ops.table import OPS, GradRule, Op, cast, grad_rule, rebuild, register, substitute
from exprc.ops.table import _elemwise as _elemwise  # custom_op builds rows with these two
from exprc.ops.table import _errstate as _errstate

# isort: off
# The row modules register on import, in this order: the order of OPS.
from exprc.ops import elemwise
from exprc.ops import leaf
from exprc.ops import reduce
from exprc.ops import shape
from exprc.ops import linalg
from exprc.ops import creation
from exprc.ops import index
from exprc.ops import control
from exprc.ops import random
from exprc.ops import debug
# isort: on

from exprc.ops.elemwise import _BINARY as _BINARY  # the CUDA tests list the unary and binary rows
from exprc.ops.elemwise import _UNARY as _UNARY
from exprc.ops.reduce import REDUCTIONS, Reduction

__all__ = ["OPS", "REDUCTIONS", "GradRule", "Op", "Reduction", "cast", "control", "creation", "debug", "elemwise", "grad_rule",
           "index",
           "leaf", "linalg", "random", "rebuild", "reduce", "register", "shape", "substitute"]
