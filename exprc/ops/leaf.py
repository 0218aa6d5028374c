"""Leaf rows: ``input`` and ``constant``.

They compute nothing; they have rows so that every node's op is in the table (printing, the
import of saved graphs and the op-kind checks of every pass look a node's op up without a
special case).  They are registered between the elementwise rows and the reductions, where
they have always sat in the table's order.
"""

from __future__ import annotations

from exprc.ops.table import Op, register

register(Op("input", "leaf", None, attr_names=("name", "uid")))
register(Op("constant", "leaf", None, attr_names=("value",)))
