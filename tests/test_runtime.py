"""The C backend against the NumPy reference: random graphs, layouts, dtypes, threads."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import assert_close
from graphgen import graph_cases
from hypothesis import given, settings

import exprc
from exprc.errors import InputTypeError, ShapeError
from exprc.function import clear_memo


@pytest.fixture(autouse=True, scope="module")
def _cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EXPRC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def both(inputs, outputs, *args, ulps=16, **kw):
    fc = exprc.function(inputs, outputs, backend="c", **kw)
    fn = exprc.function(inputs, outputs, backend="numpy")
    got, want = fc(*args), fn(*args)
    if not isinstance(got, list):
        got, want = [got], [want]
    for g, w in zip(got, want):
        assert_close(g, w, ulps=ulps)
    return fc


@settings(max_examples=40)
@given(graph_cases(max_ops=5))
def test_random_graphs_match_numpy_backend(case):
    fc = exprc.function(case.inputs, case.expr, backend="c")
    fn = exprc.function(case.inputs, case.expr, backend="numpy")
    assert_close(fc(*case.args), fn(*case.args), ulps=16)


@settings(max_examples=60)
@given(graph_cases(max_ops=7))
def test_random_graphs_with_row_kernels_match_numpy_backend(case):
    """Row kernels and reduction epilogues on random graphs: broadcasting, size-1 axes, mixed dtypes."""
    fc = exprc.function(case.inputs, case.expr, backend="c", config=exprc.Config(row_fusion=True))
    fn = exprc.function(case.inputs, case.expr, backend="numpy")
    assert_close(fc(*case.args), fn(*case.args), ulps=16)


def test_e2_contiguous_vectorized_and_exact_enough():
    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=(3, 10_001))
    f = both([a, b, c], exprc.exp(-a * a) * exprc.sin(b) + exprc.log1p(c * c), x, y, z)
    assert len(f.kernels) == 1 and f.kernels[0]["kind"] == "elemwise"
    assert {"exp", "sin", "log1p", "add"} <= set(f.kernels[0]["ops"])


def test_reduction_fuses_its_producers():
    x = exprc.vector("x")
    f = both([x], exprc.sum(exprc.exp(x - exprc.max(x))), np.random.default_rng(1).normal(size=5000))
    kinds = [(k["kind"], k["ops"]) for k in f.kernels]
    assert kinds == [("reduce", ["max"]), ("reduce", ["sub", "exp", "sum"])]


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1), -1])
@pytest.mark.parametrize("op", ["sum", "prod", "mean", "max", "min", "all", "any"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(op, axis, keepdims):
    m = exprc.matrix("m")
    x = np.random.default_rng(2).uniform(0.5, 1.5, size=(7, 9))
    both([m], getattr(exprc, op)(m * 2, axis=axis, keepdims=keepdims), x)


def test_multi_output_kernel_is_one_loop():
    a, b = exprc.vector("a"), exprc.vector("b")
    f = both([a, b], [a + b, a * b, exprc.exp(a) - b], np.arange(5.0), np.ones(5))
    assert len(f.kernels) == 1 and f.kernels[0]["outputs"] == 3


def test_broadcasting_views_and_negative_strides():
    m, v = exprc.matrix("m"), exprc.vector("v")
    rng = np.random.default_rng(3)
    big = rng.normal(size=(8, 6))
    both([m, v], m * v + 1, big[::-2, ::-1], rng.normal(size=6))
    both([m, v], m.T * v, big, rng.normal(size=8))
    both([m], m[1:-1, None, ::3] * 2, big)
    both([m, v], exprc.sum(m[:, ::2] * v, axis=0), big, rng.normal(size=3))
    both([m], exprc.broadcast_to(m[0], (4, 6)) + 1, big)


def test_zero_size_and_0d():
    m, s = exprc.matrix("m"), exprc.scalar("s")
    both([m], m * 2, np.zeros((0, 4)))
    both([m], exprc.sum(m, axis=0), np.zeros((0, 4)))
    both([m], exprc.mean(m), np.zeros((0, 3)))
    both([s], exprc.exp(s) + 1, 0.5)
    both([s, m], s * m, 2.0, np.ones((2, 2)))
    with pytest.raises(ShapeError, match="zero-size"):
        exprc.function([m], exprc.max(m))(np.zeros((0, 3)))


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_reductions_without_identity_over_an_empty_axis_raise_a_shape_error(backend):
    """max, min, argmax and argmin over a zero-size axis (known only at call time) raise the same
    exprc ShapeError, naming the reduction, the axis and the shape, on both backends (the NumPy
    backend, and argmax's NumPy step on C, raised NumPy's bare ValueError); an axis that is not
    empty still reduces."""
    m = exprc.matrix("m")
    for fn in (exprc.max, exprc.min, exprc.argmax, exprc.argmin):
        name = fn.__name__
        for axis, shape, where in ((1, (3, 0), "(1,)"), (None, (0, 3), "(0, 1)"), (0, (0, 2), "(0,)")):
            f = exprc.function([m], fn(m, axis=axis), backend=backend)
            with pytest.raises(ShapeError, match=re.escape(f"{name}: zero-size reduction over axis {where} of shape ")):
                f(np.zeros(shape))
        assert exprc.function([m], fn(m, axis=0), backend=backend)(np.zeros((2, 0))).shape == (0,)


def test_float32_computes_in_float32():
    a = exprc.vector("a", "float32")
    f = both([a], exprc.exp(a) * 2.0 + exprc.sin(a), np.linspace(-3, 3, 100, dtype=np.float32))
    assert "expf(" in f.source and "sinf(" in f.source
    assert f(np.ones(3, np.float32)).dtype == np.float32


def test_float32_sum_accumulates_wider():
    a = exprc.vector("a", "float32")
    x = np.full(10**6, 0.1, dtype=np.float32)
    got = exprc.function([a], exprc.sum(a))(x)
    exact = float(np.sum(x.astype(np.float64)))
    assert got.dtype == np.float32
    assert abs(float(got) - exact) <= 1e-6 * exact


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_semantics_follow_numpy(dtype):
    i, j = exprc.vector("i", dtype), exprc.vector("j", dtype)
    rng = np.random.default_rng(4)
    x = rng.integers(-20, 20, 200).astype(dtype)
    y = rng.integers(-4, 4, 200).astype(dtype)
    both([i, j], [i // j, i % j, i * j, -i, abs(i), i + j, exprc.maximum(i, j)], x, y)
    info = np.iinfo(dtype)
    both([i, j], [i + j, i * j], np.array([info.max, info.min], dtype), np.array([1, -1], dtype))


def test_bool_logic():
    x = exprc.vector("x")
    v = np.linspace(0, 1, 50)
    both([x], [(x > 0.2) & (x < 0.8), (x > 0.5) | (x < 0.1), ~(x > 0.5), exprc.sum(x > 0.5),
               exprc.where(x > 0.5, x, -x)], v)


def test_nan_and_inf_propagate():
    x = exprc.vector("x")
    v = np.array([1.0, np.nan, -np.inf, np.inf, -0.0, 0.0])
    both([x], [x * 2, exprc.maximum(x, 0.5), exprc.minimum(x, 0.5), exprc.exp(x), exprc.log(x),
               exprc.sign(x)], v)
    both([x], [exprc.max(x), exprc.min(x), exprc.sum(x)], v)
    both([x], [exprc.max(x), exprc.sum(x)], np.array([1.0, np.inf, 2.0]))
    assert np.isnan(exprc.function([x], exprc.max(x))(np.array([np.nan, 1.0])))


def test_one_and_many_threads_agree():
    x, y = exprc.vector("x"), exprc.vector("y")
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 300_001))
    expr = [exprc.exp(-x * x) * exprc.sin(y), exprc.sum(exprc.exp(x)), exprc.max(x)]
    one = exprc.function([x, y], expr, config=exprc.Config(num_threads=1))(a, b)
    many = exprc.function([x, y], expr, config=exprc.Config(num_threads=4))(a, b)
    np.testing.assert_array_equal(one[0], many[0])  # elementwise: bit-identical
    assert one[2] == many[2]
    assert abs(float(one[1]) - float(many[1])) <= 1e-12 * abs(float(one[1]))  # summation order differs


def test_out_argument_writes_in_place():
    a, b = exprc.vector("a"), exprc.vector("b")
    f = exprc.function([a, b], a * b + 1)
    out = np.empty(5)
    res = f(np.arange(5.0), np.ones(5), out=out)
    assert res is out
    np.testing.assert_array_equal(out, np.arange(5.0) + 1)
    strided = np.zeros(10)[::2]
    f(np.arange(5.0), np.ones(5), out=strided)
    np.testing.assert_array_equal(strided, np.arange(5.0) + 1)
    with pytest.raises(InputTypeError, match=r"out\[0\]"):
        f(np.arange(5.0), np.ones(5), out=np.empty(4))


def test_argmax_runs_as_a_numpy_step_between_native_loops():
    m, v = exprc.matrix("m"), exprc.vector("v")
    rng = np.random.default_rng(6)
    f = both([m, v], exprc.tanh(exprc.dot(m * 2, v)) + exprc.argmax(m, axis=1), rng.normal(size=(5, 4)),
             rng.normal(size=4))
    assert not any("argmax" in k["ops"] for k in f.kernels)
    assert [k["kind"] for k in f.kernels].count("elemwise") == 2  # m * 2, then tanh(.) + argmax


def test_shapes_mismatch_at_call_time_names_the_op():
    a, b = exprc.vector("a"), exprc.vector("b")
    f = exprc.function([a, b], a + b)
    with pytest.raises(ShapeError, match=r"add.*\(3,\).*\(4,\)"):
        f(np.ones(3), np.ones(4))


def test_plan_reuse_across_calls_and_shapes():
    a = exprc.vector("a")
    f = exprc.function([a], exprc.sum(a * 2))
    for n in (3, 1000, 3, 0, 1000):
        assert float(f(np.ones(n))) == 2.0 * n


def test_fusion_can_be_excluded():
    a, b = exprc.vector("a"), exprc.vector("b")
    fused = exprc.function([a, b], exprc.exp(a) * b + 1)
    split = both([a, b], exprc.exp(a) * b + 1, np.arange(4.0), np.ones(4), exclude=("fusion",))
    assert len(fused.kernels) == 1 and len(split.kernels) == 3


def test_many_shapes_do_not_keep_unbounded_plans():
    from exprc.backends.c.kernel import MAX_SIGNATURES

    a = exprc.vector("a")
    f = exprc.function([a], exprc.exp(a) * 2)
    for n in range(1, 3 * MAX_SIGNATURES):
        np.testing.assert_allclose(f(np.ones(n)), np.full(n, 2 * np.e))
    assert len(f._kernel.pool.plans) <= MAX_SIGNATURES


MATMUL_CASES = [
    ((5, 4), (4, 3)), ((5, 4), (4,)), ((4,), (4, 3)), ((4,), (4,)), ((1, 4), (4, 1)), ((0, 4), (4, 3)),
    ((2, 0), (0, 3)), ((3, 3), (3, 3)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("sa", "sb"), MATMUL_CASES)
@pytest.mark.parametrize("layout", ["c", "transposed", "strided"])
def test_matmul_runs_blas_inside_the_native_call(sa, sb, dtype, layout):
    from exprc.backends.c.blas import blas_pointers

    rng = np.random.default_rng(7)
    a_var = exprc.tensor("a", dtype, ndim=len(sa))
    b_var = exprc.tensor("b", dtype, ndim=len(sb))
    a = rng.normal(size=sa).astype(dtype)
    b = rng.normal(size=sb).astype(dtype)
    if layout == "transposed" and a.ndim == 2:
        a = np.ascontiguousarray(a.T).T  # Fortran order: BLAS's transpose flag
    if layout == "strided" and a.ndim == 2:
        a = np.repeat(a, 2, axis=1)[:, ::2]  # no unit stride: the plain loop
    f = both([a_var, b_var], exprc.tanh(a_var @ b_var) * 2, a, b, ulps=64)
    if blas_pointers() is not None:
        assert f.kernels[0]["kind"] == "matmul"
        assert "exprc_sgemm" in f.source if dtype == "float32" else "exprc_dgemm" in f.source


BATCH_CASES = [(3, 4, 5, 6), (1, 4, 5, 6), (0, 4, 5, 6), (3, 1, 5, 6), (3, 4, 1, 6), (3, 4, 5, 1), (3, 0, 5, 6),
               (3, 4, 0, 6)]


def _matmul_blocks(f):
    """(flag, M, N, K, batch length, summed) of each matmul kernel in f's plan."""
    from exprc.backends.plan import MATMUL_PARAMS

    (plan,) = _plans(f)
    return [tuple(int(x) for x in plan.P[kl.p_flag:kl.p_flag + 1 + MATMUL_PARAMS][[0, 1, 2, 3, 9, 10]])
            for kl in f._kernel.layout.kernels if kl.kernel.matmul is not None]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("T", "m", "k", "n"), BATCH_CASES)
def test_batched_matmul_runs_natively(T, m, k, n, dtype):
    """Batches of products (3-d @ 2-d, 2-d @ 3-d, 3-d @ 3-d with a batch of 1 broadcast) are matmul
    kernels: BLAS per matrix, or one call when the batch's rows follow each other; strided and
    reversed operands take the plain loop.  Results match NumPy's."""
    from exprc.backends.c.blas import blas_pointers

    rng = np.random.default_rng(T * 1000 + m * 100 + k * 10 + n)
    a3, b2, b3, a2 = (exprc.tensor(nm, dtype, ndim=nd) for nm, nd in (("a", 3), ("b", 2), ("c", 3), ("d", 2)))
    A, B = rng.normal(size=(T, m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)
    D, C3 = rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(T, k, n)).astype(dtype)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-5}
    cases = [([a3, b2], a3 @ b2, [(A, B), (A[:, ::-1], B), (A[::2], np.asfortranarray(B))]),
             ([a2, b3], a2 @ b3, [(D, C3), (D.T.copy().T, C3[:, :, ::-1])]),
             ([a3, b3], a3 @ b3, [(A, C3), (A[:1], C3), (A, C3[:1])])]
    for ins, out, argsets in cases:
        f = exprc.function(ins, out, backend="c")
        for args in argsets:
            np.testing.assert_allclose(f(*args), np.matmul(*args), **tol)
        if blas_pointers() is not None:
            assert [k["kind"] for k in f.kernels] == ["matmul"]
    clear_memo()  # (a fresh function: its one plan is this call's)
    f = exprc.function([a3, b2], a3 @ b2, backend="c")
    f(A, B)
    if blas_pointers() is not None and min(T, m, k, n) > 0:
        assert _matmul_blocks(f) == ([(1, T * m, n, k, 1, 0)] if m > 1 else [(1, m, n, k, T, 0)])


@pytest.mark.parametrize(("T", "m", "k", "n"), BATCH_CASES)
def test_sum_over_a_batch_of_products_is_one_kernel(T, m, k, n):
    """sum(x^T @ g, axis=0) over a batch (the gradient of ``x @ W`` for a 3-d x) is one matmul
    kernel: one BLAS call over the batch's rows when they follow each other, per-matrix calls
    adding into the result otherwise, zeros for an empty batch.  float32 keeps a separate sum (its
    running value is float64)."""
    from exprc.backends.c.blas import blas_pointers

    rng = np.random.default_rng(T * 1000 + m * 100 + k * 10 + n + 1)
    x3, g3 = exprc.tensor3("x"), exprc.tensor3("g")
    X, G = rng.normal(size=(T, k, m)), rng.normal(size=(T, k, n))
    f = exprc.function([x3, g3], exprc.sum(x3.dimshuffle(0, 2, 1) @ g3, axis=0), backend="c")
    for x, g in [(X, G), (X[:, :, ::-1], G[:, ::-1]), (X[::2], G[::2]), (X[:1], G)]:
        want = (x.transpose(0, 2, 1) @ g).sum(axis=0)
        np.testing.assert_allclose(f(x, g), want, rtol=1e-12, atol=1e-12)
    clear_memo()
    f = exprc.function([x3, g3], exprc.sum(x3.dimshuffle(0, 2, 1) @ g3, axis=0), backend="c")
    f(X, G)
    if blas_pointers() is not None:
        assert [k["kind"] for k in f.kernels] == ["matmul"]
        if min(T, m, k, n) > 0:
            assert _matmul_blocks(f) == ([(1, m, n, T * k, 1, 1)] if k > 1 else [(1, m, n, k, T, 1)])
    x3f, g3f = exprc.tensor3("x", "float32"), exprc.tensor3("g", "float32")
    ff = exprc.function([x3f, g3f], exprc.sum(x3f @ g3f, axis=0), backend="c")
    assert [k["kind"] for k in ff.kernels] == (["matmul", "reduce"] if blas_pointers() is not None
                                                else [k["kind"] for k in ff.kernels])
    Xf, Gf = X.transpose(0, 2, 1).astype("float32"), G.astype("float32")
    np.testing.assert_allclose(ff(Xf, Gf), (Xf.astype("float64") @ Gf).sum(axis=0), rtol=1e-5, atol=1e-5)


def test_shape_only_steps_run_once_per_plan():
    m = exprc.matrix("m")
    n = exprc.cast(m.shape[0], "float64") if hasattr(exprc, "cast") else m.shape[0].astype("float64")
    f = exprc.function([m], exprc.sum(m, axis=0) / n)
    planner = f._kernel.planner
    assert planner.plan_time and all(s not in planner.segments for s in planner.plan_time)
    for shape in [(4, 3), (7, 3), (4, 3)]:
        a = np.random.default_rng(9).normal(size=shape)
        np.testing.assert_allclose(f(a), a.sum(axis=0) / shape[0])


def _plans(f):
    return [p for pool in f._kernel.pool.plans.values() for p in pool]


def test_views_and_identity_sums_of_computed_buffers_cost_no_step():
    # A gradient sums to an operand's shape (sum_to) where the sizes were not provably equal, and
    # transposes computed buffers: when NumPy would return a view for the call's shapes, the plan
    # makes them pointers (and an identity output is written by its kernel directly), so the
    # whole function is one native call; when the sum really reduces, the step stays.
    a, b, v, w = exprc.matrix("a"), exprc.matrix("b"), exprc.matrix("v"), exprc.matrix("w")
    h = exprc.maximum(a @ w, 0.0)
    ga, gb = exprc.grad(exprc.sum(exprc.exp(h) * b), [a, b])
    outs = [ga, gb, exprc.transpose(h) @ v, exprc.transpose(b) * 2.0]
    rng = np.random.default_rng(3)
    A, W, V = rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), rng.normal(size=(5, 2))
    f = exprc.function([a, b, v, w], outs)
    ops = sorted(s.node.op for s in f._kernel.program.steps if not hasattr(s, "outputs"))
    assert ops == ["dimshuffle", "sum_to", "sum_to"]  # what the plans have to remove
    for B, steps in [(rng.normal(size=(5, 4)), []), (rng.normal(size=(1, 4)), ["sum_to"])]:
        f._kernel.pool.plans.clear()
        want = exprc.function([a, b, v, w], outs, backend="numpy")(A, B, V, W)
        for _ in range(3):  # the Python path, then the C dispatcher
            got = f(A, B, V, W)
            for g, x in zip(got, want):
                assert_close(g, x, ulps=16)
        plan = _plans(f)[-1] if _plans(f) else f._kernel._make_plan([A, B, V, W], None)
        assert [s.node.op for s in plan.segments if not isinstance(s, tuple)] == steps
        assert len(got) == 4 and len({id(g) for g in got}) == 4  # no two outputs share an array
        assert not any(np.shares_memory(g, x) for g in got for x in (A, B, V, W))


def test_transposed_arguments_keep_the_c_dispatcher():
    x, y = exprc.matrix("x"), exprc.matrix("y")
    f = exprc.function([x, y], [exprc.transpose(x) @ y, exprc.transpose(x) + 1.0])
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    f(X, Y)
    f(X, Y)
    if f._fast is None:
        pytest.skip("no C dispatcher on this machine")
    got = f._fast(X, Y)
    assert got is not None  # the views are offsets the dispatcher applies
    assert_close(got[0], X.T @ Y, ulps=64)
    np.testing.assert_array_equal(got[1], X.T + 1.0)
    X2 = rng.normal(size=(6, 3))
    np.testing.assert_array_equal(f._fast(X2, Y)[1], X2.T + 1.0)


def test_outputs_that_are_views_of_computed_buffers():
    # An output that views a computed buffer (a dropped axis, a reshape, a transpose) must come
    # out right whether the plan lets the kernel write the buffer straight into it or copies it.
    x, y = exprc.matrix("x"), exprc.matrix("y")
    e = exprc.exp(x) * y
    s = exprc.sum(e, axis=1, keepdims=True)
    outs = [exprc.squeeze(s, 1), exprc.transpose(e + 1.0), exprc.reshape(e * 2.0, (-1,)),
            exprc.grad(exprc.sum(e), y), s]
    rng = np.random.default_rng(5)
    for shape_y in [(4, 3), (1, 3), (4, 1)]:
        X, Y = rng.normal(size=(4, 3)), rng.normal(size=shape_y)
        f = both([x, y], outs, X, Y)
        got = f(X, Y)
        assert len({id(g) for g in got}) == len(got)
        assert not any(np.shares_memory(p, q) for i, p in enumerate(got) for q in got[i + 1:])


def test_a_view_of_an_argument_view_without_a_buffer_of_its_own():
    # The gradient of v * sum(h, axis=0) with respect to h is sum_to(v, ...) (a view of the
    # argument v: no buffer, no slot) then a dimshuffle of that: the plan must place the second
    # view relative to v itself.
    a, w, v = exprc.matrix("a"), exprc.matrix("w"), exprc.vector("v")
    outs = exprc.grad(exprc.sum(v * exprc.sum(exprc.tanh(a @ w), axis=0)), [a, w, v])
    rng = np.random.default_rng(6)
    fn = exprc.function([a, w, v], outs, backend="numpy")
    fc = exprc.function([a, w, v], outs, backend="c")
    for _ in range(3):  # the Python path, then the C dispatcher
        A, W, V = rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), rng.normal(size=4)
        for g, x in zip(fc(A, W, V), fn(A, W, V)):
            assert_close(g, x, ulps=64)
    o = [np.empty((5, 3)), np.empty((3, 4)), np.empty(4)]
    for g, x in zip(fc(A, W, V, out=o), fn(A, W, V)):
        assert_close(g, x, ulps=64)


def test_an_output_that_is_a_reshape_of_a_shape_only_value():
    # shape(x) is computed once per plan, when the plan is made: an output reshaping it cannot
    # have its buffer written straight into the output array, which is fresh on every call.
    x = exprc.matrix("x")
    sh = exprc.shape(x)
    outs = [exprc.reshape(sh, (-1,)), sh * 2, exprc.reshape(sh, (1, -1))]
    f = exprc.function([x], outs, backend="c")
    for shape in [(7, 3), (5, 11), (7, 3), (5, 11), (7, 3)]:
        got = f(np.zeros(shape))
        np.testing.assert_array_equal(got[0], shape)
        np.testing.assert_array_equal(got[1], 2 * np.array(shape))
        np.testing.assert_array_equal(got[2], [shape])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_plan_aliases_across_layouts_sizes_and_out_arrays(dtype):
    # Gradients full of sum_to/reshape/transpose/split_part steps: sizes 0 and 1 (the steps may
    # or may not be views), Fortran-ordered arguments (the Python path), out= arrays (C-contiguous
    # and strided), each signature called enough times to reach the C dispatcher.
    a, b, w = (exprc.matrix(n, dtype=dtype) for n in "abw")
    v = exprc.vector("v", dtype=dtype)
    h = exprc.tanh(a @ w)
    cost = exprc.sum(exprc.exp(h) * b) + exprc.sum(v * exprc.sum(h, axis=0))
    mlp = [*exprc.grad(cost, [a, b, w, v]), exprc.reshape(exprc.grad(cost, b), (-1,))]
    cat = [*exprc.grad(exprc.sum(exprc.sin(exprc.concatenate([a, b], axis=1)) * v[0]), [a, b, v])]
    rng = np.random.default_rng(7)
    for outs, b_shapes in [(mlp, lambda n, k: [(n, k), (1, k), (n, 1)]), (cat, lambda n, k: [(n, k)])]:
        fc = exprc.function([a, b, w, v], outs, backend="c")
        fn = exprc.function([a, b, w, v], outs, backend="numpy")
        for n, m, k in [(5, 3, 4), (1, 3, 4), (5, 1, 1), (0, 3, 4), (5, 0, 4)]:
            for order, shape_b in [(o, sb) for sb in b_shapes(n, k) for o in "CF"]:
                for call in range(4):
                    A = np.asarray(rng.normal(size=(n, m)), dtype, order=order)
                    B = np.asarray(rng.normal(size=shape_b), dtype, order=order)
                    W, V = np.asarray(rng.normal(size=(m, k)), dtype), np.asarray(rng.normal(size=k), dtype)
                    want = fn(A, B, W, V)
                    out = None
                    if call == 2:
                        out = [np.empty_like(x, order="C") for x in want]
                    elif call == 3:  # strided out= arrays
                        out = [np.empty((2, *x.shape), dtype)[1] if x.ndim < 2 else np.empty(x.shape[::-1], dtype).T
                               for x in want]
                    got = fc(A, B, W, V, out=out)
                    assert out is None or all(g is o for g, o in zip(got, out))
                    for g, x in zip(got, want):
                        assert_close(g, x, ulps=64 if dtype == "float64" else 512)
                    assert not any(np.shares_memory(p, q) for i, p in enumerate(got) for q in got[i + 1:])


def test_gradients_of_slices_are_written_by_their_kernels():
    """inc_subtensor(zeros, g, slice) (the gradient of gate slices) costs no step: g's kernel
    writes g + 0.0 into the slice of a buffer zeroed once per plan.  Exact against NumPy (0 + g:
    -0.0 becomes +0.0), the zeros stay zeros over many calls with other values, and an output
    gradient (a fresh array each call) keeps the step."""
    x, w, t = exprc.matrix("x"), exprc.matrix("w"), exprc.matrix("t")
    gates = x @ w
    i, o = exprc.sigmoid(gates[:, 0:3]), exprc.tanh(gates[:, 3:6])
    loss = exprc.sum(i * o * t)
    gw = exprc.grad(loss, w)  # reads the slice gradients through a matmul: they are scratch
    f = exprc.function([x, w, t], gw, backend="c")
    ref = exprc.function([x, w, t], gw, backend="numpy")
    assert "slice_grad_plus_zero" in f.graph.rewrites
    rng = np.random.default_rng(8)
    X, Wv = rng.normal(size=(5, 4)), rng.normal(size=(4, 8))
    for seed in range(4):
        T = np.random.default_rng(seed).normal(size=(5, 3))
        T[0, 0], T[1, 1] = -0.0, np.nan
        got, want = f(X, Wv, T), ref(X, Wv, T)
        assert got.tobytes() == want.tobytes() or np.allclose(got, want, rtol=1e-14, equal_nan=True)
    plan = _plans(f)[-1] if _plans(f) else f._kernel._make_plan([X, Wv, T], None)
    assert [s.node.op for s in plan.segments if not isinstance(s, tuple)] == []
    assert len(plan.prewritten) == 2
    direct = exprc.function([x, w, t], exprc.grad(loss, gates), backend="c")
    G = direct(X, Wv, T)
    np.testing.assert_allclose(G, exprc.function([x, w, t], exprc.grad(loss, gates),
                                                 backend="numpy")(X, Wv, T), rtol=1e-15)
    assert not np.signbit(G[:, 6:]).any() and not G[:, 6:].any()  # (the part no slice reads)


def test_backward_scan_over_gate_slices_is_one_native_call():
    """The LSTM pattern: a scan whose body slices a matmul's result into gates; its gradient's
    body (a reverse scan) runs natively, and matches finite differences."""
    from exprc.backends.c import looplib

    h0, xs, U = exprc.matrix("h0"), exprc.tensor3("xs"), exprc.matrix("U")

    def step(x_t, h):
        pre = h @ U + x_t
        return exprc.sigmoid(pre[:, 0:4]) * exprc.tanh(pre[:, 4:8])

    hs, _ = exprc.scan(step, sequences=[xs], outputs_info=[h0])
    cost = exprc.sum(hs[-1] ** 2)
    f = exprc.function([h0, xs, U], [cost, exprc.grad(cost, U)], backend="c")
    rng = np.random.default_rng(2)
    H0, XS, Uv = rng.normal(size=(3, 4)), rng.normal(size=(6, 3, 8)), rng.normal(size=(4, 8)) * 0.5
    taken = []
    orig = looplib.CStepper.__call__

    def spy(self, runner, st, start, end):
        r = orig(self, runner, st, start, end)
        taken.append(r is not None)
        return r

    looplib.CStepper.__call__ = spy
    try:
        _, g = f(H0, XS, Uv)
    finally:
        looplib.CStepper.__call__ = orig
    assert taken and all(taken)  # forward and backward loops: native
    eps, num = 1e-6, np.zeros_like(Uv)
    for k in np.ndindex(Uv.shape):
        up, dn = Uv.copy(), Uv.copy()
        up[k] += eps
        dn[k] -= eps
        num[k] = (f(H0, XS, up)[0] - f(H0, XS, dn)[0]) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def _layout(rng, a, kind):
    """``a``'s values in another memory layout: transposed storage, every other element, reversed
    batch, or as is."""
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.repeat(np.repeat(a, 2, axis=-1), 2, axis=-2)
        return big[..., ::2, ::2]
    if kind == "reversed" and a.ndim == 3:
        return np.ascontiguousarray(a[::-1])[::-1]
    return a


def test_batched_matmul_kernels_on_random_shapes_and_layouts():
    """A differential run: 3-d @ 2-d, 2-d @ 3-d, 3-d @ 3-d (batch of 1 broadcast both ways) and the
    summed batch over random sizes (0 included) and layouts, C backend against NumPy."""
    rng = np.random.default_rng(2026)
    a3, b3, a2, b2 = exprc.tensor3("a"), exprc.tensor3("b"), exprc.matrix("a2"), exprc.matrix("b2")
    fns = {"32": exprc.function([a3, b2], a3 @ b2), "23": exprc.function([a2, b3], a2 @ b3),
           "33": exprc.function([a3, b3], a3 @ b3), "sum": exprc.function([a3, b3], exprc.sum(a3 @ b3, axis=0)),
           "sumT": exprc.function([a3, b3], exprc.sum(a3.dimshuffle(0, 2, 1) @ b3, axis=0))}
    kinds = ["c", "fortran", "strided", "reversed"]
    for _ in range(60):
        T, m, k, n = (int(v) for v in rng.integers(0, 5, size=4))
        Tb = 1 if rng.random() < 0.2 else T
        Ta = 1 if Tb != 1 and rng.random() < 0.2 else T
        A, B = rng.normal(size=(Ta, m, k)), rng.normal(size=(Tb, k, n))
        A2, B2 = rng.normal(size=(m, k)), rng.normal(size=(k, n))
        lay = [rng.choice(kinds) for _ in range(4)]
        A_, B_ = _layout(rng, A, lay[0]), _layout(rng, B, lay[1])
        A2_, B2_ = _layout(rng, A2, lay[2]), _layout(rng, B2, lay[3])
        checks = [("32", (A_, B2_), A @ B2), ("23", (A2_, B_), A2 @ B), ("33", (A_, B_), A @ B),
                  ("sum", (A_, B_), (A @ B).sum(axis=0))]
        X = rng.normal(size=(Ta, k, m))
        checks.append(("sumT", (_layout(rng, X, lay[0]), B_), (X.transpose(0, 2, 1) @ B).sum(axis=0)))
        for name, args, want in checks:
            np.testing.assert_allclose(fns[name](*args), want, rtol=1e-12, atol=1e-12,
                                       err_msg=f"{name} T={T} Ta={Ta} Tb={Tb} m={m} k={k} n={n} {lay}")


def test_batched_matmul_errors_name_the_shapes():
    a3, b3 = exprc.tensor3("a"), exprc.tensor3("b")
    f = exprc.function([a3, b3], a3 @ b3, backend="c")
    with pytest.raises(ShapeError, match=r"matmul: the batch axes of shapes \(3, 2, 4\) and \(2, 4, 5\)"):
        f(np.ones((3, 2, 4)), np.ones((2, 4, 5)))
    with pytest.raises(ShapeError, match="not aligned"):
        f(np.ones((3, 2, 4)), np.ones((3, 5, 5)))
