"""No hidden global state, thread safety and the GIL, tested through the public API only."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import exprc


def _graph(k: float):
    x, y = exprc.vector("x"), exprc.vector("y")
    return [x, y], [exprc.tanh(x * k) + exprc.exp(-y * y) * k, exprc.sum(exprc.sin(x) * k)]


def _reference(k: float, a: np.ndarray, b: np.ndarray):
    return [np.tanh(a * k) + np.exp(-b * b) * k, np.sum(np.sin(a) * k)]


def test_compile_and_call_from_a_thread_pool(tmp_path):
    """16 tasks on 8 threads: every task builds, compiles and calls the same graph or one of
    4 different graphs (fresh cache: real concurrent compiles of one entry), with shapes that
    vary per call; every result is checked against NumPy.  Then all functions are called
    concurrently, many times each."""
    cfg = exprc.Config(cache_dir=str(tmp_path / "cache"), num_threads=1)
    salt = uuid.uuid4().int % 1000 / 1e6  # constants no other run has compiled
    barrier = threading.Barrier(8)

    def task(i: int):
        k = 1.5 + salt if i % 2 == 0 else 2.0 + salt + (i % 8)  # evens share one graph
        if i < 8:
            barrier.wait()  # start the first compiles together
        ins, outs = _graph(k)
        f = exprc.function(ins, outs, config=cfg)
        rng = np.random.default_rng(i)
        for n in (1, 7, 1000, 7, 100_000):
            a, b = rng.standard_normal(n), rng.standard_normal(n)
            got = f(a, b)
            want = _reference(k, a, b)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-9)
        return k, f

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(task, range(16)))
    sources = {}
    for k, f in made:
        sources.setdefault(k, set()).add(f.source)
    assert len(sources) == 5 and all(len(s) == 1 for s in sources.values())

    def call(job):
        k, f, seed = job
        rng = np.random.default_rng(seed)
        for _ in range(60):
            n = int(rng.choice([3, 64, 5000]))
            a, b = rng.standard_normal(n), rng.standard_normal(n)
            got = f(a, b)
            want = _reference(k, a, b)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-9)
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, [(k, f, s) for s, (k, f) in enumerate(made * 2)]))


def test_one_function_called_from_many_threads_shares_nothing_mutable():
    x = exprc.matrix("x")
    f = exprc.function([x], [exprc.exp(x) * 2 - x, exprc.sum(x, axis=1)], config=exprc.Config(num_threads=1))
    f(np.ones((2, 2)))
    f(np.ones((2, 2)))  # the C dispatcher is attached: its plans are taken, never shared

    def work(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        for _ in range(100):
            a = rng.standard_normal((int(rng.integers(1, 40)), 33))
            if seed % 3 == 0:
                a = a.T  # strided inputs take the Python path
            r0, r1 = f(a)
            np.testing.assert_allclose(r0, np.exp(a) * 2 - a, rtol=1e-13)
            np.testing.assert_allclose(r1, a.sum(axis=1), rtol=1e-12, atol=1e-12)
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(16)))


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_concurrent_updates_are_serialized(backend):
    count = exprc.shared(np.zeros(3, np.int64), "count")
    total = exprc.shared(0.0, "total")
    x = exprc.scalar("x")
    inc = exprc.function([x], [], updates=[(count, count + 1), (total, total + x)], backend=backend)
    dec = exprc.function([], [], updates=[(count, count - 1)], backend=backend)

    def work(i: int) -> None:
        for _ in range(250):
            inc(1.0)
            inc(1.0)
            dec()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert count.get_value().tolist() == [8 * 250] * 3 and total.get_value() == 8 * 500


def test_two_configurations_in_one_process_do_not_disturb_each_other(tmp_path):
    """Two libraries, one process: each passes its own Config (or scopes one with exprc.config);
    neither sees the other's settings, in any thread."""
    lib_a = exprc.Config(backend="numpy", exclude=("fold",))
    lib_b = exprc.Config(backend="c", num_threads=1, cache_dir=str(tmp_path / "b"))
    x = exprc.vector("x")
    expr = x * (exprc.constant(2.0) + 1.0)
    fa = exprc.function([x], expr, config=lib_a)
    fb = exprc.function([x], expr, config=lib_b)
    assert fa.backend == "numpy" and fb.backend == "c"
    assert "constant_fold" not in fa.rewrites and "constant_fold" in fb.rewrites
    assert fb.cache_path is not None
    np.testing.assert_array_equal(fa([1.0]), fb([1.0]))

    @exprc.jit
    def double(a):
        return a * 2

    seen = {}

    def in_thread(name: str, cfg: dict) -> None:
        with exprc.config(**cfg):
            seen[name] = (exprc.function([x], x + 1).backend,)
            double(np.ones(2))
            seen[name + "_jit"] = {f.backend for f in double.functions.values()}
            time.sleep(0.05)  # overlap the two threads' scopes
            seen[name + "_after"] = exprc.function([x], x + 1).backend

    t1 = threading.Thread(target=in_thread, args=("a", {"backend": "numpy"}))
    t2 = threading.Thread(target=in_thread, args=("b", {"backend": "c"}))
    t1.start()
    t2.start()
    t1.join()
    t2.join()
    assert seen["a"][0] == "numpy" and seen["a_after"] == "numpy"
    assert seen["b"][0] == "c" and seen["b_after"] == "c"
    assert {f.backend for f in double.functions.values()} == {"numpy", "c"}  # one per configuration
    assert exprc.function([x], x + 1).backend == exprc.function([x], x + 1, config=exprc.Config()).backend
    # eval under a scoped configuration does not reuse a function compiled under another
    y = exprc.scalar("y")
    e = y * (exprc.constant(3.0) + 1.0)
    assert e.eval({y: 1.0}) == 4.0
    with exprc.config(exclude=("fold",)):
        assert e.eval({y: 1.0}) == 4.0


def _progress_during(call, seconds_hint: float = 0.15) -> tuple[int, float]:
    """Run ``call`` in a thread; count loop iterations the main thread completes while it runs."""
    box = {}

    def runner():
        box["t0"] = time.perf_counter()
        call()
        box["t1"] = time.perf_counter()

    stamps = []
    t = threading.Thread(target=runner)
    t.start()
    while t.is_alive():
        stamps.append(time.perf_counter())
    t.join()
    t0, t1 = box["t0"], box["t1"]
    margin = (t1 - t0) * 0.1
    return sum(1 for s in stamps if t0 + margin < s < t1 - margin), t1 - t0


@pytest.mark.parametrize("path", ["dispatcher", "python"])
def test_gil_is_released_while_native_kernels_run(path):
    """Structural: while one thread is inside a long native kernel, another thread keeps running
    Python code (with the GIL held by the kernel it could not take a single timestamp)."""
    a = exprc.vector("a")
    b = exprc.vector("b")
    work = exprc.sum(exprc.sin(exprc.expand_dims(a, 1) * exprc.expand_dims(b, 0)))
    f = exprc.function([a, b], work, backend="c", config=exprc.Config(num_threads=1))
    n = 3000
    x = np.linspace(0, 1, n)
    y = np.linspace(0, 2, n) if path == "dispatcher" else np.linspace(0, 2, 2 * n)[::2]  # strided: Python path
    f(x, y)
    f(x, y)
    reps = 1
    while True:
        t = time.perf_counter()
        for _ in range(reps):
            f(x, y)
        if time.perf_counter() - t > 0.15 or reps > 64:
            break
        reps *= 2

    def call():
        for _ in range(reps):
            f(x, y)

    progress, took = _progress_during(call)
    assert progress > 0, f"no Python progress during {took:.3f} s of native work"


# -- results do not depend on the thread count (issue 13) ----------------------------------------------------
#: Sizes around the fixed chunks of a contiguous full reduction (one chunk up to 8,192 elements, then
#: 8,192-element chunks up to 256 of them, then 256 equal chunks; c_prelude.h) and around the parallel
#: thresholds (4,096 to 2**18 elements by the kernel's cost).
THREAD_SIZES = [1, 7, 4096, 8191, 8192, 8193, 16_385, 2**18 - 1, 2**18 + 1, 256 * 8192 - 1, 256 * 8192,
                256 * 8192 + 1, 3_000_017]


def _by_thread_count(inputs, outputs, args):
    """Every output at 1, 2, 3 and 4 threads (one compiled binary: the count is a call argument)."""
    return {k: exprc.function(inputs, outputs, config=exprc.Config(num_threads=k))(*args) for k in (1, 2, 3, 4)}


def _assert_same_bits(results):
    first = results[1]
    for k, outs in results.items():
        for i, (a, b) in enumerate(zip(outs, first)):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"output {i}: {k} threads != 1 thread"


@pytest.mark.parametrize("n", THREAD_SIZES)
def test_full_reductions_do_not_depend_on_the_thread_count(n):
    rng = np.random.default_rng(n)
    x, x32 = exprc.vector("x"), exprc.vector("x32", "float32")
    a = rng.standard_normal(n)
    outs = [exprc.sum(x), exprc.mean(x), exprc.prod(1 + x * 1e-3), exprc.max(x), exprc.min(x),
            exprc.sum(exprc.exp(x - exprc.max(x))), exprc.sum(x32), exprc.mean(x32), exprc.prod(1 + x32 * 1e-3)]
    got = _by_thread_count([x, x32], outs, (a, a.astype(np.float32)))
    _assert_same_bits(got)
    np.testing.assert_allclose(got[1][0], np.sum(a), rtol=1e-12, atol=1e-12 * np.abs(a).sum())


@pytest.mark.parametrize("shape", [(3, 2**18 + 5), (2**18 + 5, 3), (700, 1001), (2, 256 * 8192 + 3)])
def test_axis_reductions_and_elementwise_do_not_depend_on_the_thread_count(shape):
    """Axis reductions give each output to one thread, reduced in order; elementwise loops split the
    elements (already deterministic: checked here too)."""
    rng = np.random.default_rng(shape[0])
    m, v = exprc.matrix("m"), exprc.vector("v")
    data = rng.standard_normal(shape)
    outs = [exprc.sum(m, axis=0), exprc.sum(m, axis=1), exprc.mean(m, axis=1), exprc.prod(1 + m * 1e-3, axis=0),
            exprc.max(m, axis=1), exprc.sum(m.T, axis=1), exprc.exp(m) * 2 + m, exprc.tanh(v) * 3 - v,
            exprc.sum(m[:, ::-1])]
    got = _by_thread_count([m, v], outs, (data, data.reshape(-1)))
    _assert_same_bits(got)
    np.testing.assert_allclose(got[3][1], data.sum(axis=1), rtol=1e-12, atol=1e-9)
