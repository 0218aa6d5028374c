"""Deep graphs through every public entry point (issue 13, "Deep graphs").

Every traversal is iterative: chains thousands of nodes deep must build, print, optimize,
compile, differentiate, save and load without touching Python's recursion limit (the tests run
at the default limit of 1,000 frames) and in time near-linear in the depth.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import exprc
from exprc.backends.plan import Planner
from exprc.fusion import lower

assert sys.getrecursionlimit() <= 1000 + 100, "deep-graph tests must run at the default recursion limit"


def elementwise_chain(n: int) -> tuple[exprc.Node, exprc.Node]:
    x = exprc.vector("x")
    y = x
    for i in range(n):
        y = exprc.sin(y) if i % 2 else y * 0.5
    return x, y


def test_planner_shape_of_a_2000_deep_fused_chain():
    # The planner works out the shape of a fused loop's output by walking its elemwise operands:
    # recursively before, a RecursionError on the first call of any chain ~2,000 deep.
    x, y = elementwise_chain(2500)
    program = lower([y], [x])
    planner = Planner(program, types.SimpleNamespace(slots=[x, y], kernels=[], p_size=0), [x], [y],
                      resolve_steps=False)
    shapes: dict = {}
    assert planner.shape(y, {x: np.zeros(7)}, shapes) == (7,)
    assert len(shapes) == 2502  # the chain, x and the constant 0.5
    # same errors as before: shapes that do not broadcast name the op and both shapes
    z = exprc.vector("z")
    planner = Planner(lower([y + z], [x, z]), types.SimpleNamespace(slots=[], kernels=[], p_size=0),
                      [x, z], [y + z], resolve_steps=False)
    with pytest.raises(exprc.errors.ShapeError, match=r"add: shapes \(7,\) and \(3,\)"):
        planner.shape(y + z, {x: np.zeros(7), z: np.zeros(3)}, {})
