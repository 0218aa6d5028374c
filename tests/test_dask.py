"""exprc.dask: compiled functions on dask arrays (issue 20).

Every result is compared with the in-memory exprc function on the same data: bit for bit for
elementwise graphs (transcendental ones too, with vector math and with ``precise_math``: see the
module docstring of exprc.dask), within 1e-12 relative for float64 reductions (1e-5 for float32).  Most
tests run on dask's synchronous scheduler; the last ones on a two-process ``distributed``
cluster bound to loopback that shares one compile-cache folder.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from conftest import assert_same_bits

import exprc
import exprc.dask as ed
from exprc.errors import InputTypeError, NotSplittableError, ShapeError

ROOT = Path(__file__).resolve().parent.parent
PRECISE = exprc.Config(precise_math=True)


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def _special(shape, dtype, seed=0):
    """Normal values with NaN, +-inf, -0.0 and 0.0 sprinkled in."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape).astype(dtype) * 3
    flat = a.reshape(-1)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype=dtype)
    if flat.size:
        idx = rng.choice(flat.size, size=min(flat.size, 12), replace=False)
        flat[idx] = specials[np.arange(idx.size) % specials.size]
    return a


def _rel(got, want, dtype):
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=0)


# -- elementwise: bit for bit -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunks", [(5, 3), ((1, 1, 7, 4), (2, 9, 1)), (1, 1), (13, 12)])
def test_elementwise_arithmetic_bits(dtype, chunks):
    x, y = exprc.matrix("x", dtype=dtype), exprc.matrix("y", dtype=dtype)
    out = exprc.where(x > y, x * y - y / 3, -x) + exprc.sqrt(exprc.abs(y)) + exprc.maximum(x, 0.5) * 2
    a, b = _special((13, 12), dtype, 1), _special((13, 12), dtype, 2)
    want = exprc.function([x, y], out)(a, b)
    got = ed.function([x, y], out)(da.from_array(a, chunks=chunks), da.from_array(b, chunks=(4, 4))).compute()
    assert_same_bits(got, want)


@pytest.mark.parametrize("config", [None, PRECISE], ids=["vector_math", "precise_math"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise_transcendental_bits(dtype, config):
    a, b, c = (exprc.vector(n, dtype=dtype) for n in "abc")
    outs = [exprc.exp(-a * a) * exprc.sin(b) + exprc.log1p(c * c),
            exprc.tanh(a) + exprc.sigmoid(b) * exprc.arctan(c) + exprc.softplus(a)]
    xs = [_special(1001, dtype, s) for s in range(3)]
    want = exprc.function([a, b, c], outs, config=config)(*xs)
    dx = [da.from_array(xs[0], chunks=7), da.from_array(xs[1], chunks=(1, 500, 499, 1)), da.from_array(xs[2], chunks=333)]
    got = dask.compute(*ed.function([a, b, c], outs, config=config)(*dx))
    for g, w in zip(got, want):
        assert_same_bits(g, w)


@pytest.mark.parametrize("chunks", [(5, 3), ((1, 1, 7, 4), (2, 9, 1)), (13, 1)])
def test_elementwise_transcendental_bits_2d_views(chunks):
    """from_array's blocks are views of the array (column blocks strided): the strided path must give
    the bits the in-memory function's flat loop gives."""
    x, y = exprc.matrix("x"), exprc.matrix("y")
    out = exprc.exp(x) * exprc.cos(y) - exprc.log1p(x * x)
    a, b = _special((13, 12), "float64", 1), _special((13, 12), "float64", 2)
    want = exprc.function([x, y], out)(a, b)
    got = ed.function([x, y], out)(da.from_array(a, chunks=chunks), da.from_array(b, chunks=(4, 4))).compute()
    assert_same_bits(got, want)


def test_broadcast_column_row_different_chunks():
    col, row = exprc.tensor("col", ndim=2), exprc.tensor("row", ndim=2)
    v = exprc.vector("v")
    outs = [col * row + 1, col - v, exprc.exp(row) / (1 + col), col + col.T]
    c = _special((9, 1), "float64", 3)
    r = _special((1, 9), "float64", 4)
    vv = _special(9, "float64", 5)
    want = exprc.function([col, row, v], outs)(c, r, vv)
    got = dask.compute(*ed.function([col, row, v], outs)(
        da.from_array(c, chunks=(2, 1)), da.from_array(r, chunks=(1, 4)), da.from_array(vv, chunks=(5, 4))))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert_same_bits(g, w)


def test_transpose_reads_mirrored_blocks():
    x = exprc.matrix("x")
    out = x * 2 - x.T
    a = np.arange(49.0).reshape(7, 7) ** 1.5
    got = ed.function([x], out)(da.from_array(a, chunks=(2, 3))).compute()
    assert_same_bits(got, exprc.function([x], out)(a))


def test_empty_arrays():
    x = exprc.matrix("x")
    outs = [x * 3 + 1, exprc.sum(x, axis=0), exprc.sum(x), exprc.mean(x, axis=1)]
    a = np.zeros((0, 4))
    want = exprc.function([x], outs)(a)
    got = dask.compute(*ed.function([x], outs)(da.from_array(a, chunks=(1, 2))))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_empty_blocks_inside_a_nonempty_array():
    x = exprc.vector("x")
    outs = [exprc.max(x), exprc.argmin(x), exprc.mean(x), exprc.var(x), exprc.logsumexp(x)]
    a = np.random.default_rng(4).normal(size=9)
    arr = da.from_array(a, chunks=((0, 0, 0, 0, 4, 0, 0, 5, 0),))  # whole tree groups of empty blocks
    got = dask.compute(*ed.function([x], outs, split_every=2)(arr))
    for g, w in zip(got, exprc.function([x], outs)(a)):
        _rel(g, w, "float64")


def test_max_of_empty_raises_as_in_memory():
    x = exprc.vector("x")
    with pytest.raises(ShapeError):
        exprc.function([x], exprc.max(x))(np.zeros(0))
    with pytest.raises(ShapeError):
        ed.function([x], exprc.max(x))(da.zeros(0, chunks=1)).compute()


def test_stable_forms_over_an_empty_axis_as_in_memory():
    """exprc.logsumexp / softmax / log_softmax (and a max loaded with identity=True) over an empty axis
    give in-memory exprc's values (-inf, an empty array), chunked or not: the combine's max keeps
    the shift's identity over the empty partials of empty blocks (it raised ShapeError)."""
    x = exprc.matrix("x")
    shift = exprc.loads(exprc.dumps(exprc.logsumexp(x, axis=1)))
    loaded_max = next(n for n in exprc.graph.toposort([shift]) if n.op == "max")
    xin = next(n for n in exprc.graph.toposort([shift]) if n.is_input)
    for shape, axis, chunks in [((3, 0), 1, (2, 1)), ((0, 0), 1, (1, 1)), ((3, 0), None, (1, 1)), ((0, 4), 0, (1, 2))]:
        a = np.zeros(shape)
        outs = [exprc.logsumexp(x, axis=axis), exprc.softmax(x, axis=-1 if axis is None else axis),
                exprc.log_softmax(x, axis=-1 if axis is None else axis)]
        want = exprc.function([x], outs)(a)
        got = dask.compute(*ed.function([x], outs)(da.from_array(a, chunks=chunks)))
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g, w)
    a = np.zeros((3, 0))
    want = exprc.function([xin], loaded_max)(a)
    np.testing.assert_array_equal(want, np.full((3, 1), -np.inf))
    np.testing.assert_array_equal(ed.function([xin], loaded_max)(da.from_array(a, chunks=(2, 1))).compute(), want)


def test_stable_forms_as_in_memory_where_the_formula_as_written_overflows():
    """Found in review: exprc.dask split the graph as written, so exp(x) / sum(exp(x)) and
    log(sum(exp(x))) over a row holding 720 were NaN and inf where the in-memory function (which
    compiles the optimized graph, its stable forms) gives the softmax and 720; 1 / (1 + exp(-x)) at
    -800 likewise.  It splits the optimized graph now: the in-memory values, chunked or not."""
    x = exprc.matrix("x")
    outs = [exprc.exp(x) / exprc.sum(exprc.exp(x), 1, keepdims=True), exprc.log(exprc.sum(exprc.exp(x), 1)),
            exprc.log(exprc.sum(exprc.exp(x), 0)), 1 / (1 + exprc.exp(-x))]
    a = np.array([[720.0, 1.0, 2.0, -800.0], [1.0, 2.0, 3.0, 4.0], [-1000.0, -1001.0, -999.0, -1000.0]])
    want = exprc.function([x], outs)(a)
    assert np.isfinite(want[1]).all() and np.isfinite(want[0]).all()
    for chunks in ((1, 2), (3, 4), (2, 1)):
        got = dask.compute(*ed.function([x], outs)(da.from_array(a, chunks=chunks)))
        for g, w in zip(got, want):
            _rel(g, w, "float64")
    # Written out, each is still one tree reduction, as exprc.softmax / exprc.logsumexp (found in
    # review: the optimizer's own forms, a tie count and a row guard, took 3 and 4)
    big = da.from_array(np.random.default_rng(1).normal(size=(8, 30)), chunks=(8, 7))
    for i, n in ((0, 1), (1, 1), (2, 1)):
        assert _reduction_trees(ed.function([x], outs[i])(big)) == n, i
    assert _reduction_trees(ed.function([x], x - exprc.log(exprc.sum(exprc.exp(x), 1, keepdims=True)))(big)) == 1


def test_multiple_outputs_and_int_inputs():
    x, k = exprc.matrix("x"), exprc.matrix("k", dtype="int32")
    outs = [x + k, k * 2, exprc.sum(k, axis=1), exprc.mean(k), x]
    a = _special((6, 5), "float64")
    kk = np.arange(30, dtype=np.int32).reshape(6, 5) - 11
    want = exprc.function([x, k], outs)(a, kk)
    got = dask.compute(*ed.function([x, k], outs)(da.from_array(a, chunks=(4, 2)), da.from_array(kk, chunks=(1, 5))))
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        assert_same_bits(g, w) if g.dtype.kind == "f" and g.ndim == 2 else np.testing.assert_allclose(g, w, rtol=1e-12)


# -- reductions: within 1e-12 ----------------------------------------------------------------------

REDUCTIONS = {
    "sum": lambda x, ax: exprc.sum(exprc.exp(x / 4) + 1, axis=ax),  # (no cancellation: 1e-12 is meaningful)
    "prod": lambda x, ax: exprc.prod(1 + x / 100, axis=ax),
    "mean": lambda x, ax: exprc.mean(x * x, axis=ax, keepdims=True),
    "max": lambda x, ax: exprc.max(-x, axis=ax),
    "min": lambda x, ax: exprc.min(x, axis=ax),
    "var": lambda x, ax: exprc.var(x + 1e3, axis=ax),
    "std_ddof1": lambda x, ax: exprc.std(x, axis=ax, ddof=1),
    "logsumexp": lambda x, ax: exprc.logsumexp(x * 10, axis=ax),
    "softmax": lambda x, ax: exprc.softmax(x, axis=ax if ax is not None else 0),
    "any": lambda x, ax: exprc.any(x > 2.5, axis=ax),
}


@pytest.mark.parametrize(("axis", "dtype"), [(None, "float64"), (0, "float64"), (1, "float64"), (1, "float32")])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions(name, axis, dtype):
    x = exprc.matrix("x", dtype=dtype)
    out = REDUCTIONS[name](x, axis)
    a = np.random.default_rng(7).normal(size=(23, 17)).astype(dtype)
    want = exprc.function([x], out)(a)
    got = ed.function([x], out, split_every=3)(da.from_array(a, chunks=((1, 5, 10, 7), (4, 1, 12)))).compute()
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype == bool:
        np.testing.assert_array_equal(got, want)
    else:
        _rel(got, want, dtype)


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_arg_reductions_with_ties_and_nan(op, axis):
    x = exprc.matrix("x")
    out = getattr(exprc, op)(x * 1, axis=axis)
    a = np.round(np.random.default_rng(3).normal(size=(11, 14)))  # many ties
    fn = exprc.function([x], out)
    dfn = ed.function([x], out, split_every=2)
    chunks = ((3, 3, 5), (1, 6, 7))
    np.testing.assert_array_equal(dfn(da.from_array(a, chunks=chunks)).compute(), fn(a))
    a[5, 9] = a[2, 2] = np.nan
    np.testing.assert_array_equal(dfn(da.from_array(a, chunks=chunks)).compute(), fn(a))


def test_logsumexp_and_softmax_with_infinities():
    x = exprc.matrix("x")
    outs = [exprc.logsumexp(x, axis=1), exprc.softmax(x, axis=1), exprc.logsumexp(x, axis=0)]
    a = np.random.default_rng(1).normal(size=(6, 10)) * 300
    a[0, :] = -np.inf  # a row of -inf: logsumexp -inf, softmax NaN
    a[1, :4] = -np.inf  # -inf in whole chunks of a row with a finite max (masked softmax)
    a[2, 7] = np.inf
    a[3, 1] = np.nan
    want = exprc.function([x], outs)(a)
    got = dask.compute(*ed.function([x], outs)(da.from_array(a, chunks=(4, 4))))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        ok = np.isfinite(w)
        np.testing.assert_array_equal(g[~ok & ~np.isnan(w)], w[~ok & ~np.isnan(w)])
        np.testing.assert_allclose(g[ok], w[ok], rtol=1e-12, atol=0)


def _reduction_trees(arr) -> int:
    """How many tree reductions an array's graph holds (one exprc chunk layer each)."""
    return sum(1 for name in arr.dask.layers if "-aggregate-" in name)


def test_softmax_is_two_passes_and_var_one():
    x = exprc.matrix("x")
    a = da.from_array(np.random.default_rng(0).normal(size=(8, 30)), chunks=(8, 7))
    assert _reduction_trees(ed.function([x], exprc.softmax(x, axis=1))(a)) == 1  # then one blockwise pass
    assert _reduction_trees(ed.function([x], exprc.std(x, axis=1, ddof=1))(a)) == 1
    assert _reduction_trees(ed.function([x], exprc.logsumexp(x))(a)) == 1
    # the pattern's max is not a pass of its own; a mean absolute deviation needs its mean first
    assert _reduction_trees(ed.function([x], exprc.sum(exprc.exp(x - exprc.max(x, axis=1, keepdims=True)), axis=1)
                                        / exprc.max(x * 2))(a)) == 2
    e4 = exprc.sum(exprc.exp(x - exprc.max(x)))  # bench E4: a 0-d shift, one pass too
    assert _reduction_trees(ed.function([x], e4)(a)) == 1
    _rel(ed.function([x], e4)(a).compute(), exprc.function([x], e4)(a.compute()), "float64")
    mad = exprc.mean(exprc.abs(x - exprc.mean(x, axis=1, keepdims=True)), axis=1)
    assert _reduction_trees(ed.function([x], mad)(a)) == 2


def test_matmul_delegates_to_dask():
    x, w = exprc.matrix("x"), exprc.matrix("w")
    out = exprc.tanh(exprc.matmul(x * 2, w) + 1)
    a, b = np.random.default_rng(0).normal(size=(20, 9)), np.random.default_rng(1).normal(size=(9, 5))
    res = ed.function([x, w], out)(da.from_array(a, chunks=(7, 4)), da.from_array(b, chunks=(3, 5)))
    assert any("matmul" in name for name in res.dask.layers)
    _rel(res.compute(), exprc.function([x, w], out)(a, b), "float64")


def test_nested_reductions_and_numpy_inputs():
    x = exprc.matrix("x")
    out = (x - exprc.mean(x, axis=0)) / exprc.std(x, axis=0) + exprc.max(x) * x.shape[0]
    a = np.random.default_rng(2).normal(size=(12, 5))
    got = ed.function([x], out)(da.from_array(a, chunks=(5, 2))).compute()
    _rel(got, exprc.function([x], out)(a), "float64")
    got2 = ed.function([x], out)(a).compute()  # a NumPy array is one chunk
    _rel(got2, exprc.function([x], out)(a), "float64")


def test_on_dask_matches_function():
    x = exprc.vector("x")
    f = exprc.function([x], [exprc.logsumexp(x), x * 2])
    a = np.linspace(-5, 5, 101)
    lse, twice = dask.compute(*f.on_dask()(da.from_array(a, chunks=10)))
    _rel(lse, f(a)[0], "float64")
    assert_same_bits(twice, f(a)[1])


# -- what does not split, and bad input -------------------------------------------------------------

def test_scan_raises_naming_the_op():
    x = exprc.vector("x")
    res, _ = exprc.scan(lambda a, acc: acc + a, sequences=x, outputs_info=exprc.constant(0.0))
    with pytest.raises(NotSplittableError, match="'scan'"):
        ed.function([x], res)


def test_indexing_and_random_raise_naming_the_op():
    x = exprc.vector("x")
    with pytest.raises(NotSplittableError, match="'getitem'"):
        ed.function([x], x[1:] - x[:-1])
    with pytest.raises(NotSplittableError, match="random"):
        ed.function([x], x + exprc.random.normal(exprc.random.key(0), size=x.shape))


def test_bad_inputs_name_the_argument():
    x = exprc.matrix("x")
    f = ed.function([x], x + 1)
    with pytest.raises(InputTypeError, match="'x'.*ndim"):
        f(da.zeros(3, chunks=1))
    with pytest.raises(InputTypeError, match="'x'.*lose information"):
        f(da.zeros((2, 2), dtype=np.complex128, chunks=1))
    with pytest.raises(TypeError, match="output 0"):
        ed.function([x], [3])


def test_kernels_travel_as_json_and_build_once_per_process():
    x = exprc.vector("x")
    out = ed.function([x], exprc.sum(x * 3.25 + 0.125))(da.arange(100.0, chunks=10))
    tasks = [t for t in out.__dask_graph__().values()]
    blob = pickle.dumps(tasks)
    assert b"\x7fELF" not in blob and b'"op":"mul"' in blob  # the graph's JSON, no binary
    before = ed.stats()
    assert float(out.compute()) == pytest.approx(float(np.sum(np.arange(100.0) * 3.25 + 0.125)), rel=1e-12)
    mid = ed.stats()
    out.compute()
    after = ed.stats()
    assert mid["builds"] - before["builds"] == 2  # chunk and combine kernels: once each, not per chunk
    assert after["builds"] == mid["builds"] and after["reuses"] - mid["reuses"] >= 10


def test_import_exprc_does_not_import_dask():
    code = "import sys, exprc; assert 'dask' not in sys.modules; import exprc.dask; assert 'dask.array' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


# -- on a distributed cluster -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    cache = tmp_path_factory.mktemp("shared_cache")
    env = {"EXPRC_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, env=env) as lc, distributed.Client(lc) as client:
        client.wait_for_workers(2)
        yield lc, client


def _worker_stats(client) -> dict:
    return client.run(ed.stats)


def test_cluster_results_equal_in_memory(cluster):
    _, client = cluster
    a, b, c = (exprc.vector(n) for n in "abc")
    outs = [exprc.exp(-a * a) * exprc.sin(b) + exprc.log1p(c * c), exprc.logsumexp(a * b), exprc.var(c), exprc.argmax(b)]
    xs = [np.random.default_rng(s).normal(size=5000) for s in range(3)]
    want = exprc.function([a, b, c], outs)(*xs)
    got = client.compute(ed.function([a, b, c], outs)(*[da.from_array(v, chunks=311) for v in xs]),
                         sync=True)
    assert_same_bits(got[0], want[0])
    _rel(got[1], want[1], "float64")
    _rel(got[2], want[2], "float64")
    assert int(got[3]) == int(want[3])


def test_cluster_compiles_once_per_worker(cluster):
    _, client = cluster
    x = exprc.vector("x")
    # a kernel no other test builds: its compile must happen here, once
    out = exprc.sum(exprc.tanh(x * 1.0625) + 0.03125)
    arr = da.from_array(np.linspace(0, 1, 4000), chunks=50)  # 80 chunks
    before = _worker_stats(client)
    got = client.compute(ed.function([x], out)(arr), sync=True)
    after = _worker_stats(client)
    _rel(got, exprc.function([x], out)(np.linspace(0, 1, 4000)), "float64")
    builds = {w: after[w]["builds"] - before[w]["builds"] for w in after}
    compiles = sum(after[w]["compiles"] - before[w]["compiles"] for w in after)
    reuses = sum(after[w]["reuses"] - before[w]["reuses"] for w in after)
    assert all(n <= 2 for n in builds.values())  # the chunk and the combine kernel, at most once per process
    assert compiles <= 2  # the shared folder: a second worker loads what the first compiled
    assert reuses >= 78  # the other tasks reused a built kernel


def test_cluster_survives_a_killed_worker(cluster):
    _, client = cluster
    x = exprc.vector("x")
    out = exprc.sum(exprc.sqrt(x * x + 1.5))

    def slow_block(block):  # makes the computation last a few seconds
        time.sleep(0.04)
        return block

    base = da.arange(60_000, chunks=500, dtype=np.float64)  # 120 chunks, ~2.5 s on two workers
    arr = base.map_blocks(slow_block, dtype=np.float64)
    fut = client.compute(ed.function([x], out)(arr))
    time.sleep(0.8)
    assert not fut.done()
    victim = min(client.scheduler_info()["workers"])
    with contextlib.suppress(Exception):  # the worker dies under the call
        client.run(os._exit, 1, workers=[victim])
    got = fut.result(timeout=120)
    want = exprc.function([x], out)(np.arange(60_000, dtype=np.float64))
    _rel(got, want, "float64")
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it
