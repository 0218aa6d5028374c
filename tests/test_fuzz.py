"""The differential fuzzer's fast slice (tests/fuzz.py): a fixed set of seeded batches of random graphs,
every backend against NumPy and the stability rewrites against exact values, with no unexplained
mismatch.  The long mode (10,000 graphs and more) is ``python bench/fuzz.py``."""

from __future__ import annotations

import fuzz
import numpy as np
import pytest

import exprc


@pytest.mark.parametrize("seed", range(12))
def test_random_batches_agree_with_numpy(seed):
    res = fuzz.run(range(seed * 7919, seed * 7919 + 1), width=16)
    assert res["graphs"] == 16
    assert not res["mismatches"], "\n".join(str(m) for m in res["mismatches"])


@pytest.mark.parametrize("seed", [101, 3, 17, 29, 44, 58])
def test_random_row_batches_agree_with_numpy(seed):
    """Matrices and reductions over their rows (make_batch(rows=True)): the C row kernels against NumPy.
    Seed 101 is a row min without keepdims read by a matrix (the row kernel read it per row)."""
    res = fuzz.run(range(seed, seed + 1), width=16, rows=True)
    assert res["graphs"] == 16
    assert not res["mismatches"], "\n".join(str(m) for m in res["mismatches"])


def test_batches_are_reproducible_from_their_seed():
    a, b = fuzz.make_batch(42), fuzz.make_batch(42)
    assert [g.names() for g in a.graphs] == [g.names() for g in b.graphs]
    for x, y in zip(a.args, b.args):
        np.testing.assert_array_equal(x, y)
        assert x.strides == y.strides


def test_the_fuzzer_sees_what_it_is_meant_to_see():
    """Each check reports a planted mismatch (so a silent fuzzer is not mistaken for a clean run)."""
    u, v = exprc.vector("u"), exprc.vector("v")
    graph = fuzz.Graph([("planted", lambda m, x, y: x * y, (0, 1), ())], 2)
    batch = fuzz.Batch(0, [u, v], [np.array([1.0, 2.0]), np.array([3.0, 4.0])], [graph])
    assert fuzz.check_batch(batch, exprc.Config()) == []
    wrong = fuzz.Graph([("planted", lambda m, x, y: x * y + (m is not exprc), (0, 1), ())], 2)
    found = fuzz.check_batch(fuzz.Batch(0, [u, v], batch.args, [wrong]), exprc.Config())
    assert {m.check for m in found} >= {"front end, C", "front end, NumPy backend"}
    # 1-ulp noise of an ill-conditioned formula is explained, a real difference is not
    ref = np.array([1.0, np.nan, np.inf])
    assert fuzz.compare(np.array([1.0 + 2e-16, np.nan, np.inf]), ref, list) is None
    assert fuzz.compare(np.array([1.5, np.nan, np.inf]), ref, lambda: [ref]) is not None
    assert fuzz.compare(np.array([1.5, np.nan, np.inf]), ref, lambda: [np.array([1.6, 0, 0]), ref]) is None
    assert fuzz.compare(np.array([1.0, 0.0, np.inf]), ref, lambda: [ref]) is not None
    assert fuzz.compare(np.array([1.0, np.nan, -np.inf]), ref, lambda: [ref]) is not None
