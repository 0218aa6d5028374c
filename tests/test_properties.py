"""Hypothesis: random graphs evaluated by exprc agree with NumPy applied to the same op sequence."""

import numpy as np
import pytest
from conftest import assert_close
from graphgen import graph_cases
from hypothesis import given

import exprc


@given(graph_cases())
def test_eval_matches_numpy(case):
    expected = case.expected()
    assert case.expr.dtype == expected.dtype.name, case
    assert case.expr.ndim == expected.ndim, case
    assert_close(case.expr.eval(dict(zip(case.inputs, case.args))), expected)


@pytest.mark.parametrize("exclude", [(), ("canonicalize", "stability")])
@given(case=graph_cases(max_ops=5))
def test_function_matches_numpy(exclude, case):
    f = exprc.function(case.inputs, case.expr, backend="numpy", exclude=exclude)
    out = f(*case.args)
    assert_close(out, case.expected())
    if exclude:
        assert f.rewrites == []
    for n in f.graph.nodes:  # known static sizes survive optimization
        assert n.type.dtype in exprc.types.DTYPES


@given(graph_cases(max_ops=4, specials=False))
def test_optimize_preserves_types_and_values(case):
    g = exprc.optimize([case.expr])
    (out,) = g.outputs
    assert out.type.dtype == case.expr.type.dtype and out.ndim == case.expr.ndim
    for a, b in zip(case.expr.type.shape, out.type.shape):
        assert a is None or a == b
    got = exprc.function(case.inputs, out, backend="numpy", exclude=("canonicalize",))(*case.args)
    assert_close(got, np.asarray(case.expected()))
