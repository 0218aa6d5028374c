"""Random streams (exprc.random, exprc.ops.random): Philox against Random123's known answers, the
log/cos polynomials against mpmath, bit-identical draws on the NumPy reference, C (1, 2 and 3
threads, contiguous and strided loops, reductions) and CUDA (the generated source run on the host),
stream semantics (default updates, seeding, threads), statistics against scipy at sizes where a
wrong generator fails, gradients and bad input."""

from __future__ import annotations

import threading

import mpmath
import numpy as np
import pytest
from scipy import stats

import exprc
from exprc import Config
from exprc.errors import ControlFlowError, DTypeError, ParameterError, ShapeError
from exprc.ops.random import philox_words, rlog, rsincos2pi

NOCACHE = Config(cache=False)


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.reshape(-1).view(np.uint8)


def assert_same_bits(got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert np.array_equal(_bits(got), _bits(want)), (got.ravel()[:5], want.ravel()[:5])


# -- the generator and the polynomials -------------------------------------------------------------------
@pytest.mark.parametrize("ctr,key,want", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(ctr, key, want):
    # Random123's tests/kat_vectors, the three "philox4x32 10" lines.
    assert tuple(int(w) for w in philox_words(*ctr, *key)) == want


def _ulps(got: np.ndarray, exact: list) -> np.ndarray:
    want = np.array([float(v) for v in exact])
    return np.abs(got - want) / np.spacing(np.abs(want))


def test_log_and_cos_polynomials_are_accurate():
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.random(2000), [1.0, 2.0 ** -52, 0.5, np.sqrt(0.5), np.nextafter(np.sqrt(0.5), 1),
                                           np.nextafter(1.0, 0), 1 - 2.0 ** -52, 1e-300]])
    u = u[u > 0]
    mpmath.mp.prec = 100
    assert _ulps(rlog(u), [mpmath.log(mpmath.mpf(float(x))) for x in u]).max() <= 2
    v = np.concatenate([rng.random(2000), np.arange(8) / 8, np.nextafter(np.arange(1, 8) / 8, 0), [1 - 2.0 ** -52]])
    for odd, fn in ((0, mpmath.cos), (1, mpmath.sin)):
        exact = [fn(2 * mpmath.pi * mpmath.mpf(float(x))) for x in v]
        err = np.abs(rsincos2pi(v, odd) - np.array([float(e) for e in exact]))
        assert err.max() <= 4e-16  # absolute: the curves cross 0, where relative error means nothing


# -- bit-identical backends ------------------------------------------------------------------------------
def _draws(rng: exprc.random.Stream, x, y):
    return [rng.uniform(size=x.shape), rng.normal(size=(3, 5)), x * rng.bernoulli(size=x.shape, p=0.3, dtype="float64"),
            rng.integers(size=(7,), low=-5, high=10), rng.binomial(size=(6,), n=10, p=0.25),
            rng.uniform(size=(4,), dtype="float32", low=-1, high=3), rng.normal(size=y.shape, dtype="float32", avg=1, std=2),
            rng.normal(size=()), rng.integers(size=x.shape, low=-(2**63), high=2**63 - 1),
            rng.integers(size=(5,), low=0, high=3, dtype="int32"), rng.permutation(6),
            rng.choice(10, size=(3,), replace=False), rng.choice(y[:, 0], size=(2, 2)),
            rng.uniform(size=(0, 4)), rng.normal(size=y.shape)[::2, 1:]]


@pytest.mark.parametrize("threads", [1, 3])
def test_c_and_numpy_draw_the_same_bits(threads):
    x, y = exprc.matrix("x"), exprc.matrix("y", "float32")
    res = {}
    rng = exprc.random.Stream(42)
    outs = _draws(rng, x, y)
    xv, yv = np.ones((3, 4)), np.ones((9, 3), np.float32)
    for backend in ("c", "numpy"):
        rng.seed(42)
        f = exprc.function([x, y], outs, backend=backend, config=NOCACHE.replace(num_threads=threads))
        res[backend] = [f(xv, yv) for _ in range(3)]
        assert int(rng.state.get_value()[1]) == 3
    for calls_c, calls_np in zip(res["c"], res["numpy"]):
        for a, b in zip(calls_c, calls_np):
            assert_same_bits(a, b)
    assert not np.array_equal(res["c"][0][0], res["c"][1][0])  # each call draws new numbers


def test_big_draws_on_any_thread_count_and_strided_loops():
    # 300k elements: the contiguous loop is split in chunks over threads; a strided model and a
    # transposed consumer take the strided loop (the index comes from the loop counters).
    x = exprc.matrix("x")
    key = exprc.vector("key", "int64")
    outs = [exprc.random.normal(key, size=x.shape), exprc.random.uniform(key, size=x.shape, draw=1).T * x.T,
            exprc.random.bernoulli(key, size=x.shape, p=0.7, draw=2)]
    xv = np.random.default_rng(1).normal(size=(600, 1000))[::2, ::2]  # strided (300, 500)
    k = exprc.random.key(7)
    want = exprc.function([x, key], outs, backend="numpy")(xv, k)
    for threads in (1, 2, 4):
        got = exprc.function([x, key], outs, config=NOCACHE.replace(num_threads=threads))(xv, k)
        for g, w in zip(got, want):
            assert_same_bits(g, w)
    got = exprc.function([x, key], outs, config=NOCACHE)(np.ascontiguousarray(xv), k)
    for g, w in zip(got, want):
        assert_same_bits(g, w)


def test_draws_fuse_into_their_consumer_and_reductions():
    rng = exprc.random.Stream(3)
    x = exprc.vector("x")
    f = exprc.function([x], x * rng.bernoulli(size=x.shape, p=0.5, dtype="float64") / 0.5)
    (loop,) = [k for k in f.kernels if "random_uniform" in k["ops"]]
    assert "mul" in loop["ops"] and loop["outputs"] == 1  # the mask is never stored
    m = exprc.mean(exprc.exp(rng.normal(size=(200_000,))))
    g = exprc.function([], m, config=NOCACHE)
    assert any(k["kind"] == "reduce" and "random_normal" in k["ops"] for k in g.kernels)
    rng.seed(3)
    want = exprc.function([], m, backend="numpy")()
    rng.seed(3)
    got = g()
    np.testing.assert_allclose(got, want, rtol=1e-12)  # the same draws, summed in another order
    assert abs(float(got) - np.exp(0.5)) < 5 * np.sqrt((np.e - 1) * np.e / 200_000)


def test_a_draw_broadcast_inside_a_loop_runs_right():
    # A draw of shape (1, m) known only at call time meets (n, m): the fused loop would index it by
    # the loop's element, so the planner refuses and the reference backend runs (same bits).
    rng = exprc.random.Stream(5)
    x, y = exprc.matrix("x"), exprc.matrix("y")
    out = x + rng.uniform(size=y.shape)
    xv, yv = np.zeros((4, 3)), np.zeros((1, 3))
    got = exprc.function([x, y], out, config=NOCACHE)(xv, yv)
    rng.seed(5)
    want = exprc.function([x, y], out, backend="numpy")(xv, yv)
    assert_same_bits(got, want)
    assert np.all(got == got[0])  # one draw of 3 numbers, broadcast over the rows


def test_symbolic_sizes():
    n = exprc.scalar("n", "int64")
    rng = exprc.random.Stream(9)
    out = rng.normal(size=(n, 3)) * 2.0
    f = exprc.function([n], out, config=NOCACHE)
    g = exprc.function([n], out, backend="numpy")
    a = f(5)
    rng.seed(9)
    b = g(5)
    assert a.shape == (5, 3)
    assert_same_bits(a, b)
    assert f(0).shape == (0, 3)
    with pytest.raises(ShapeError, match="size 0 is -1"):
        f(-1)


@pytest.mark.skipif(exprc.cuda.unavailable_reason() is not None and not __import__("shutil").which("g++"),
                    reason="needs g++ to run the generated CUDA on the host")
def test_cuda_source_draws_the_same_bits():
    """The generated CUDA itself (run on CPU threads by tests/cuda_emulator.py): its contiguous and
    strided elementwise loops and its one- and two-pass reductions give the reference's bits."""
    from exprc.backends.cuda import compile as nvrtc

    if nvrtc.probe():
        pytest.skip(f"NVRTC unavailable: {nvrtc.probe()}")
    from cuda_emulator import EmulatedDriver

    from exprc.backends.cuda.kernel import set_driver

    x = exprc.matrix("x")
    key = exprc.vector("key", "int64")
    outs = [exprc.random.normal(key, size=x.shape) * x, exprc.random.uniform(key, size=x.shape, draw=1, dtype="float32"),
            exprc.random.integers(key, size=x.shape, low=-3, high=1000, draw=2).T,
            exprc.sum(exprc.random.binomial(key, size=x.shape, n=3, p=0.4, draw=3), axis=1),
            exprc.max(exprc.random.normal(key, size=x.shape, draw=4), axis=0),
            exprc.min(exprc.random.uniform(key, size=x.shape, draw=5))]
    drv = EmulatedDriver(kernels="cuda")
    set_driver(drv)
    try:
        f = exprc.function([x, key], outs, backend="cuda", config=NOCACHE.replace(return_numpy=True))
        drv.attach(f._kernel)
        for xv in (np.ones((3, 70)), np.ones((40, 90))[::2, ::3]):
            k = exprc.random.key(11)
            want = exprc.function([x, key], outs, backend="numpy")(xv, k)
            for g, w in zip(f(xv, k), want):
                assert_same_bits(g, w)
    finally:
        set_driver(None)


def test_cuda_source_compiles_with_nvrtc():
    from exprc.backends.cuda import compile as nvrtc

    if nvrtc.probe():
        pytest.skip(f"NVRTC unavailable: {nvrtc.probe()}")
    x = exprc.vector("x")
    rng = exprc.random.Stream(1)
    out = exprc.cuda.compile_only([x * rng.bernoulli(size=x.shape, p=0.5, dtype="float32"),
                                   rng.normal(size=x.shape), exprc.sum(rng.uniform(size=x.shape))],
                                  arch="sm_90", config=NOCACHE)
    assert "exprc_philox" in out.source and ".entry" in out.ptx


# -- stream semantics --------------------------------------------------------------------------------------
def test_streams_calls_seeds_and_explicit_updates():
    a, b = exprc.random.Stream(1), exprc.random.Stream(2)
    fa = exprc.function([], [a.normal(size=(1000,)), a.normal(size=(1000,))])
    fb = exprc.function([], b.normal(size=(1000,)))
    first, second = fa(), fa()
    assert not np.array_equal(first[0], second[0])
    assert abs(np.corrcoef(first[0], first[1])[0, 1]) < 0.15  # two draws of one call
    assert abs(np.corrcoef(first[0], fb())[0, 1]) < 0.15  # two seeds
    a.seed(1)
    again = fa()
    assert_same_bits(again[0], first[0])
    assert list(a.state.get_value()) == [1, 1]
    # An explicit update of the state replaces the default one.
    g = exprc.function([], a.uniform(size=(3,)), updates=[(a.state, a.state)])
    assert_same_bits(g(), g())
    # .eval() reads the state and leaves it alone.
    z = a.uniform(size=(4,))
    assert_same_bits(z.eval(), z.eval())
    # The same seed gives the same numbers in another stream made the same way.
    c = exprc.random.Stream(1)
    c_out = exprc.function([], [c.normal(size=(1000,)), c.normal(size=(1000,))])()
    assert_same_bits(c_out[0], first[0])


def test_explicit_keys_are_pure():
    key = exprc.vector("key", "int64")
    f = exprc.function([key], [exprc.random.uniform(key, size=(5,)), exprc.random.uniform(key, size=(5,), draw=1)])
    k = exprc.random.key(3)
    one, two = f(k), f(k)
    assert_same_bits(one[0], two[0])
    assert not np.array_equal(one[0], one[1])
    assert not np.array_equal(f(k + np.array([0, 1]))[0], one[0])
    assert not np.array_equal(f(exprc.random.key(4))[0], one[0])


def test_threads_draw_distinct_numbers():
    rng = exprc.random.Stream(0)
    f = exprc.function([], rng.integers(size=(4,), low=0, high=2**62))
    f()
    seen, lock = [], threading.Lock()

    def work():
        mine = [tuple(f()) for _ in range(50)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 200
    assert int(rng.state.get_value()[1]) == 201


# -- statistics --------------------------------------------------------------------------------------------
N = 400_000


def _one(out):
    return exprc.function([], out, config=NOCACHE)()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_uniform_and_normal_distributions(dtype):
    rng = exprc.random.Stream(123)
    u = _one(rng.uniform(size=(N,), dtype=dtype, low=-2, high=5))
    assert u.dtype == dtype and u.min() >= -2 and u.max() < 5
    assert stats.kstest(u, stats.uniform(-2, 7).cdf).pvalue > 1e-4
    z = _one(rng.normal(size=(N,), dtype=dtype, avg=1.5, std=3))
    assert stats.kstest(z, stats.norm(1.5, 3).cdf).pvalue > 1e-4
    z0 = (z.astype(np.float64) - 1.5) / 3
    for k, want in ((1, 0), (2, 1), (3, 0), (4, 3)):  # moments, within 5 standard errors
        se = np.sqrt(stats.norm.moment(2 * k) - want ** 2) / np.sqrt(N)
        assert abs(np.mean(z0 ** k) - want) < 5 * se, k
    tail = np.mean(np.abs(z0) > 4)  # the tails are there: P(|z| > 4) = 6.3e-5
    assert 0.3 * 6.3e-5 < tail < 3 * 6.3e-5


def test_discrete_distributions():
    rng = exprc.random.Stream(77)
    b = _one(rng.binomial(size=(N,), n=10, p=0.3))
    counts = np.bincount(b, minlength=11)
    assert stats.chisquare(counts, stats.binom(10, 0.3).pmf(np.arange(11)) * N).pvalue > 1e-4
    m = _one(rng.bernoulli(size=(N,), p=0.2))
    assert m.dtype == bool and abs(m.mean() - 0.2) < 5 * np.sqrt(0.16 / N)
    i = _one(rng.integers(size=(N,), low=-3, high=7))
    assert i.min() == -3 and i.max() == 6
    assert stats.chisquare(np.bincount(i + 3)).pvalue > 1e-4
    # Big ranges: the high bits are uniform too.
    big = _one(rng.integers(size=(N,), low=0, high=2**62))
    assert stats.kstest(big / 2.0**62, "uniform").pvalue > 1e-4
    # Permutations: each is one, and where element 0 lands is uniform.
    f = exprc.function([], rng.permutation(5))
    perms = np.array([f() for _ in range(3000)])
    assert all(sorted(p) == list(range(5)) for p in perms)
    assert stats.chisquare(np.bincount(np.argmax(perms == 0, axis=1), minlength=5)).pvalue > 1e-4
    c = exprc.function([], rng.choice(exprc.constant(np.array([10.0, 20.0, 30.0])), size=(N,)))()
    assert stats.chisquare([np.sum(c == v) for v in (10, 20, 30)]).pvalue > 1e-4


def test_successive_calls_and_neighbouring_elements_are_independent():
    rng = exprc.random.Stream(2024)
    f = exprc.function([], rng.uniform(size=(N,)))
    a, b = f(), f()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(N)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 5 / np.sqrt(N)
    # 2-d uniformity of consecutive pairs (a 16x16 grid)
    h = np.histogram2d(a[0::2], a[1::2], bins=16)[0].ravel()
    assert stats.chisquare(h).pvalue > 1e-4


# -- gradients ---------------------------------------------------------------------------------------------
def test_draws_are_constants_for_grad_and_reparameterization_works():
    rng = exprc.random.Stream(8)
    mu, sigma, x = exprc.scalar("mu"), exprc.scalar("sigma"), exprc.vector("x")
    z = rng.normal(size=(1000,))
    sample = mu + sigma * z
    cost = exprc.sum(sample ** 2)
    f = exprc.function([mu, sigma], [z, exprc.grad(cost, mu), exprc.grad(cost, sigma)], config=NOCACHE)
    zv, gmu, gsig = f(0.5, 2.0)
    s = 0.5 + 2.0 * zv
    np.testing.assert_allclose(gmu, np.sum(2 * s), rtol=1e-12)
    np.testing.assert_allclose(gsig, np.sum(2 * s * zv), rtol=1e-12)
    mask = rng.bernoulli(size=x.shape, p=0.5, dtype="float64")
    g = exprc.function([x], [mask, exprc.grad(exprc.sum(x * mask * 3.0), x)])
    m, gx = g(np.ones(50))
    assert_same_bits(gx, 3.0 * m)


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_parameters_raise_clear_errors():
    rng = exprc.random.Stream(0)
    with pytest.raises(ShapeError, match="negative size -2"):
        rng.uniform(size=(3, -2))
    with pytest.raises(ParameterError, match="p must be in"):
        rng.binomial(size=(3,), p=1.5)
    with pytest.raises(ParameterError, match="p must be in"):
        rng.bernoulli(size=(3,), p=-0.1)
    with pytest.raises(ParameterError, match="low must be < high"):
        rng.uniform(size=(3,), low=2.0, high=2.0)
    with pytest.raises(ParameterError, match="low < high"):
        rng.integers(size=(3,), low=5, high=5)
    with pytest.raises(ParameterError, match="int32"):
        rng.integers(size=(3,), low=0, high=2**40, dtype="int32")
    with pytest.raises(ParameterError, match="std"):
        rng.normal(size=(3,), std=-1.0)
    with pytest.raises(ParameterError, match="n must be"):
        rng.binomial(size=(3,), n=-1)
    with pytest.raises(ParameterError, match="without replacement"):
        rng.choice(3, size=(5,), replace=False)
    with pytest.raises(DTypeError, match="seed"):
        exprc.random.Stream(1.5)
    with pytest.raises(DTypeError, match="seed"):
        exprc.random.Stream("7")
    with pytest.raises(ParameterError, match="seed"):
        exprc.random.Stream(2**64)
    with pytest.raises(DTypeError, match="dtype"):
        rng.normal(size=(3,), dtype="int32")
    with pytest.raises(DTypeError, match="key"):
        exprc.random.uniform(exprc.vector("k"), size=(3,))
    with pytest.raises(ShapeError, match="does not broadcast"):
        rng.binomial(size=(3,), p=exprc.constant(np.full(4, 0.5)))


def test_draws_inside_a_loop_body_are_refused():
    rng = exprc.random.Stream(0)
    x = exprc.vector("x")
    with pytest.raises(ControlFlowError, match="random draws inside a loop"):
        exprc.scan(lambda h: h + rng.normal(size=h.shape), outputs_info=[x], n_steps=3)


def test_graphs_with_draws_save_and_load():
    rng = exprc.random.Stream(4)
    x = exprc.vector("x")
    out = x * rng.bernoulli(size=x.shape, p=0.5, dtype="float64") + rng.normal(size=(3,))[0]
    (back,) = exprc.loads(exprc.dumps([out]))
    key = exprc.vector("key", "int64")
    k = exprc.random.key(4)

    def run(expr):
        xs = [v for v in exprc.graph.graph_inputs([expr]) if v.arg("name") == "x"]
        st = [v for v in exprc.graph.graph_inputs([expr]) if v.arg("name") == "random_state"]
        expr = exprc.graph.substitute([expr], {st[0]: key})[0]
        return exprc.function([xs[0], key], expr, backend="numpy")(np.arange(6.0), k)

    assert_same_bits(run(back), run(out))


def test_draws_in_axis_reductions_and_several_draws_in_one_loop():
    # A reduction over a leading axis runs its loops in (kept, reduced) order: the draw's index must
    # still be its C-order position. max/min select, so C and NumPy must agree exactly.
    key = exprc.vector("key", "int64")
    x = exprc.tensor3("x")
    z = exprc.random.normal(key, size=x.shape)
    two = exprc.random.uniform(key, size=x.shape, draw=1) + exprc.random.normal(key, size=x.shape, draw=2)
    outs = [exprc.max(z, axis=0), exprc.min(z, axis=(0, 2), keepdims=True), exprc.max(z * x, axis=1),
            x * two, exprc.argmax(exprc.random.uniform(key, size=x.shape, draw=3), axis=0)]
    f = exprc.function([x, key], outs, config=NOCACHE)
    g = exprc.function([x, key], outs, backend="numpy")
    for shape in [(4, 5, 6), (1, 300, 3), (70, 3, 1000)]:
        xv, k = np.ones(shape), exprc.random.key(shape[0])
        for a, b in zip(f(xv, k), g(xv, k)):
            assert_same_bits(a, b)


def test_the_same_graph_gives_the_same_source_in_another_process():
    import subprocess
    import sys

    script = ("import exprc, hashlib\n"
              "rng = exprc.random.Stream(3)\n"
              "x = exprc.matrix('x')\n"
              "f = exprc.function([x], [x * rng.bernoulli(size=x.shape, p=0.5, dtype='float64'), "
              "exprc.sum(rng.normal(size=(4, 5)), axis=0)])\n"
              "print(hashlib.sha256(f.source.encode()).hexdigest())\n")
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1 and len(runs.pop().strip()) == 64


def test_draws_on_broadcast_and_strided_loops_run_in_batches():
    # relu(x + b) * mask reads b broadcast: the strided loop, its last axis filled in batches (rows
    # longer than a batch, a 1-d strided vector split over threads, 3-d with a broadcast middle axis).
    key = exprc.vector("key", "int64")
    x, b, v = exprc.matrix("x"), exprc.vector("b"), exprc.vector("v")
    t = exprc.tensor3("t")
    outs = [exprc.maximum(x + b, 0.0) * exprc.random.bernoulli(key, size=x.shape, p=0.5, dtype="float64"),
            v * exprc.random.normal(key, size=v.shape, draw=1),
            (t + b) * exprc.random.uniform(key, size=t.shape, draw=2, dtype="float32"),
            exprc.random.integers(key, size=x.shape, low=0, high=7, draw=3) + b.astype("int64")]
    f = exprc.function([x, b, v, t, key], outs, config=NOCACHE)
    assert "exprc_rfill(&rb0, a" in f.source and "rrow" in f.source
    g = exprc.function([x, b, v, t, key], outs, backend="numpy")
    rng = np.random.default_rng(0)
    for n, m in [(3, 5), (300, 1000), (7, 257)]:
        args = [rng.normal(size=(n, m)), rng.normal(size=m), rng.normal(size=2 * n * m)[::2],
                np.ones((2, 1, m)), exprc.random.key(n)]
        for threads in (1, 2):
            got = exprc.function([x, b, v, t, key], outs, config=NOCACHE.replace(num_threads=threads))(*args)
            for a, w in zip(got, g(*args)):
                assert_same_bits(a, w)
