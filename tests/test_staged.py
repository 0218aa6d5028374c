"""Staged execution (exprc/backends/staged.py): graphs whose shapes depend on values run as stage
kernels with host steps between them on the native backends; results equal NumPy's."""

from __future__ import annotations

import numpy as np
import pytest

import exprc
from exprc.backends.reference import NumpyKernel
from exprc.backends.staged import StagedKernel, needs_stages

X = np.arange(42.0).reshape(7, 6) / 7


def test_static_graphs_are_not_staged():
    x, i, idx = exprc.matrix("x"), exprc.scalar("i", "int64"), exprc.vector("idx", "int64")
    assert not needs_stages([x[i] + x[idx][0], x[1:3], x[exprc.constant(1):exprc.constant(3)]])
    assert needs_stages([x[i:]]) and needs_stages([x[x > 0]]) and needs_stages([exprc.arange(i)])
    f = exprc.function([x, i], x[i] * 2, backend="c")
    assert not isinstance(f._kernel, StagedKernel)


def test_stage_structure_and_index_arithmetic_on_numpy():
    x, i = exprc.matrix("x"), exprc.scalar("i", "int64")
    f = exprc.function([x, i], exprc.exp(x[i * 2:(i + 1) * 2]).sum(axis=0), backend="c")
    k = f._kernel
    assert isinstance(k, StagedKernel) and len(k.stages) == 2
    assert isinstance(k.stages[0].kernel, NumpyKernel)  # i*2, (i+1)*2: no compile for scalars
    assert [c.op for c in k.stages[0].cuts] == ["subtensor"]
    assert "/* stage 1 */" in f.source
    for j in range(-5, 6):
        np.testing.assert_allclose(f(X, j), np.exp(X[j * 2:(j + 1) * 2]).sum(axis=0), rtol=1e-14)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_chained_value_shapes_outputs_and_out(backend):
    x, a, b = exprc.matrix("x"), exprc.scalar("a", "int64"), exprc.scalar("b", "int64")
    y = exprc.sin(x)[a:][:b]  # two levels of value-dependent shapes
    outs = [y, y.sum(), x[a:], exprc.arange(a * b).astype("float64") + 1]
    f = exprc.function([x, a, b], outs, backend=backend)
    for av, bv in [(0, 3), (2, 1), (5, 9), (-3, 2), (7, 0)]:
        got = f(X, av, bv)
        want = [np.sin(X)[av:][:bv], np.sin(X)[av:][:bv].sum(), X[av:], np.arange(max(av * bv, 0)) + 1.0]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-14)
    got = f(X, 1, 2)
    assert got[2] is not X and not np.shares_memory(got[2], X)  # a view of an argument is copied
    out = np.empty(())
    res = exprc.function([x, a, b], y.sum(), backend=backend)(X, 1, 2, out=out)
    assert res is out and np.isclose(out, np.sin(X)[1:][:2].sum())


def test_symbolic_sizes_on_the_c_backend():
    x, n, y = exprc.matrix("x"), exprc.scalar("n", "int64"), exprc.vector("y", "int32")
    f = exprc.function([x, n, y], [exprc.zeros(x.shape) + x, exprc.arange(n) * 2, exprc.eye(n),
                                   exprc.sum(exprc.log_softmax(x)[exprc.arange(y.shape[0]), y])], backend="c")
    Y = np.array([1, 0, 5, 2, 2, 0, 1], np.int32)
    got = f(X, 4, Y)
    np.testing.assert_array_equal(got[0], X)
    np.testing.assert_array_equal(got[1], np.arange(4) * 2)
    np.testing.assert_array_equal(got[2], np.eye(4))
    ls = X - np.log(np.exp(X).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got[3], ls[np.arange(7), Y].sum(), rtol=1e-14)


def test_a_chain_of_150_dynamic_slices_compiles_once_and_matches_numpy():
    """Each level of value-dependent shape is a stage; the small ones in between run on NumPy, so a
    deep chain costs one compile (it cost one per level: 150 C compiles, ~2 minutes here)."""
    x, i = exprc.vector("x"), exprc.scalar("i", "int64")
    z = x
    for k in range(300):
        z = z[i:] if k % 2 == 0 else exprc.cos(z)
    f = exprc.function([x, i], z.sum(), backend="c")
    compiled = [s.kernel for s in f._kernel.stages if s.kernel is not None and not isinstance(s.kernel, NumpyKernel)]
    assert len(f._kernel.stages) == 151 and len(compiled) == 1
    v = np.linspace(0, 1, 1000)
    want = v
    for k in range(300):
        want = want[1:] if k % 2 == 0 else np.cos(want)
    np.testing.assert_allclose(f(v, 1), want.sum(), rtol=1e-13)


def test_a_costly_node_is_computed_once_across_stages(capsys):
    """``x @ w`` feeds a value-shaped slice and the rest of the graph: the first stage keeps it for
    the second (which computes no matmul), and a ``Print`` before the cut prints once per call."""
    from exprc.backends.staged import _reached

    x, w, i = exprc.matrix("x"), exprc.matrix("w"), exprc.scalar("i", "int64")
    m = exprc.Print("m=")(x @ w)
    y = exprc.exp(m + 1.0)[:i].sum() + (m * 2.0).sum(axis=0)
    f = exprc.function([x, w, i], y, backend="c")
    k = f._kernel
    assert isinstance(k, StagedKernel) and len(k.stages) == 2
    later = _reached(k.stages[1].outputs, dict.fromkeys(k.stages[1].inputs)) - set(k.stages[1].inputs)
    assert later and not any(n.op in ("matmul", "print") for n in later)
    W = np.linspace(-1, 1, 30).reshape(6, 5)
    for j in (0, 3, 7, -2):
        capsys.readouterr()
        got = f(X, W, j)
        M = X @ W
        np.testing.assert_allclose(got, np.exp(M + 1.0)[:j].sum() + (M * 2.0).sum(axis=0), rtol=1e-13)
        assert capsys.readouterr().out.count("m=") == 1
