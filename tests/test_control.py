"""Control flow, forward semantics (exprc/control.py, exprc/ops/control.py, exprc/backends/loops.py,
exprc/backends/staged.py): a differential suite.  Every result is compared with a plain NumPy /
Python loop written here (never a hard-coded value), on the NumPy and the C backends.

Covered: scan (sequences with taps, outputs_info None / initial value / dict with taps,
non_sequences, closures over outer and shared variables, n_steps as int / symbolic / fewer than
the sequences, go_backwards, return_list, matrix / 0-d / float32 / int64 states, strided,
non-contiguous and broadcast arguments, NaN and inf, zero steps, long loops, nested loops, loop
results in further expressions and in givens, several loops per function, repeated calls),
until, updates of shared variables, fori_loop, while_loop, ifelse (laziness, promotion, shapes),
switch, the errors, the determinism of the generated source, and what the gradient through scan
runs (saved products, weight gradients summed after the reverse loop; the values against
central differences).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import exprc
from exprc.errors import ControlFlowError, DTypeError, IndexOutOfBounds, ShapeError

BACKENDS = ["numpy", "c"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fn(inputs, outputs, be, **kw):
    return exprc.function(inputs, outputs, backend=be, **kw)


def check(got, want, rtol=1e-12, atol=0.0, dtype=None):
    """Same shape, same dtype (the reference's, or ``dtype``), values close (NaN == NaN)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    assert got.dtype == np.dtype(dtype or want.dtype), f"dtype {got.dtype} != {dtype or want.dtype}"
    if want.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


def rng(seed=0):
    return np.random.default_rng(seed)


# -- scan: sequences and taps ----------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_sequences_with_taps(be):
    x, y, z = exprc.vector("x"), exprc.matrix("y"), exprc.vector("z")

    def step(xm1, x0, x2, y0, y1, z0):
        return xm1 * 2 + x0 - x2 * 3 + (y0 * y1).sum() + z0

    res, upd = exprc.scan(step, sequences=[{"input": x, "taps": [-1, 0, 2]}, {"input": y, "taps": [0, 1]}, z])
    assert upd == {}
    f = fn([x, y, z], res, be)
    r = rng(1)
    for n in (6, 1, 4):
        X, Y, Z = r.normal(size=n + 3), r.normal(size=(n + 1, 3)), r.normal(size=n)
        want = [X[t] * 2 + X[t + 1] - X[t + 3] * 3 + (Y[t] * Y[t + 1]).sum() + Z[t] for t in range(n)]
        check(f(X, Y, Z), np.array(want))


@pytest.mark.parametrize("be", BACKENDS)
def test_unsorted_and_positive_only_taps(be):
    # taps listed out of order reach the function sorted (Theano sorts them); taps [1, 3] read
    # x[t + 0] and x[t + 2] (tap k reads x[t + k - min(taps)])
    x = exprc.vector("x")
    res, _ = exprc.scan(lambda a, b, c: a * 100 + b * 10 + c, sequences={"input": x, "taps": [2, -1, 0]})
    res2, _ = exprc.scan(lambda a, b: a - b, sequences={"input": x, "taps": [1, 3]})
    f = fn([x], [res, res2], be)
    X = np.arange(9.0) ** 2
    got = f(X)
    check(got[0], np.array([X[t] * 100 + X[t + 1] * 10 + X[t + 3] for t in range(len(X) - 3)]))
    check(got[1], np.array([X[t] - X[t + 2] for t in range(len(X) - 2)]))


# -- scan: outputs_info ----------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_outputs_info_none_plain_and_taps(be):
    x, h0, f0 = exprc.vector("x"), exprc.scalar("h0"), exprc.vector("f0")

    def step(xt, h, fm2, fm1):
        return [xt * h, h * 0.5 + xt, fm2 + fm1]

    (a, h, fib), _ = exprc.scan(step, sequences=x, outputs_info=[None, h0, {"initial": f0, "taps": [-2, -1]}])
    f = fn([x, h0, f0], [a, h, fib], be)
    X = rng(2).normal(size=7)
    H0, F0 = 1.5, np.array([0.25, 1.0])
    wa, wh, wf = [], [], []
    hv, fm2, fm1 = H0, F0[0], F0[1]
    for t in range(len(X)):
        wa.append(X[t] * hv)
        hv = hv * 0.5 + X[t]
        wh.append(hv)
        fm2, fm1 = fm1, fm2 + fm1
        wf.append(fm1)
    got = f(X, H0, F0)
    check(got[0], np.array(wa))
    check(got[1], np.array(wh))
    check(got[2], np.array(wf))


@pytest.mark.parametrize("be", BACKENDS)
def test_fibonacci_int64_and_sparse_taps(be):
    n = exprc.scalar("n", "int64")
    f0 = exprc.vector("f0", "int64")
    fib, _ = exprc.scan(lambda a, b: a + b, outputs_info={"initial": f0, "taps": [-2, -1]}, n_steps=n)
    # taps [-3, -1]: x[t] = x[t-3] - x[t-1]; the initial value has three rows
    g0 = exprc.vector("g0")
    g, _ = exprc.scan(lambda a, b: a - 2 * b, outputs_info={"initial": g0, "taps": [-3, -1]}, n_steps=n)
    f = fn([n, f0, g0], [fib, g], be)
    for N in (0, 1, 2, 30, 80):
        F = [0, 1]
        for _ in range(N):
            F.append(F[-2] + F[-1])
        G = [1.0, -2.0, 0.5]
        for _ in range(N):
            G.append(G[-3] - 2 * G[-1])
        got = f(N, np.array([0, 1], np.int64), np.array([1.0, -2.0, 0.5]))
        check(got[0], np.array(F[2:], np.int64).reshape(N))
        check(got[1], np.array(G[3:], np.float64).reshape(N))


@pytest.mark.parametrize("be", BACKENDS)
def test_matrix_state_with_non_sequences(be):
    x, h0, W, b = exprc.matrix("x"), exprc.vector("h0"), exprc.matrix("W"), exprc.vector("b")
    res, _ = exprc.scan(lambda xt, h, W_, b_: exprc.tanh(exprc.dot(h, W_) + xt + b_), sequences=x,
                        outputs_info=h0, non_sequences=[W, b])
    M0 = exprc.matrix("M0")
    mats, _ = exprc.scan(lambda m, W_: exprc.dot(m, W_) * 0.5 + m.T, outputs_info=M0, non_sequences=W, n_steps=4)
    f = fn([x, h0, W, b, M0], [res, mats], be)
    r = rng(3)
    X, H0, Wv, B, M = r.normal(size=(5, 3)), r.normal(size=3), r.normal(size=(3, 3)), r.normal(size=3), r.normal(size=(3, 3))
    hv, wh = H0, []
    for t in range(5):
        hv = np.tanh(hv @ Wv + X[t] + B)
        wh.append(hv)
    mv, wm = M, []
    for _ in range(4):
        mv = mv @ Wv * 0.5 + mv.T
        wm.append(mv)
    got = f(X, H0, Wv, B, M)
    check(got[0], np.array(wh), rtol=1e-12)
    check(got[1], np.array(wm), rtol=1e-12)


@pytest.mark.parametrize("be", BACKENDS)
def test_closures_over_outer_and_shared_variables(be):
    x, a = exprc.vector("x"), exprc.scalar("a")
    s = exprc.shared(np.array([1.0, -2.0, 3.0]), name="s_closure")
    c = exprc.exp(a) + 1  # an outer expression read by the body (hoisted)
    res, upd = exprc.scan(lambda xt, h: h * c + s * xt + a, sequences=x, outputs_info=exprc.zeros(3))
    assert upd == {}
    f = fn([x, a], res, be)
    X = rng(4).normal(size=5)

    def want(S, A):
        hv, out = np.zeros(3), []
        for t in range(len(X)):
            hv = hv * (np.exp(A) + 1) + S * X[t] + A
            out.append(hv)
        return np.array(out)

    check(f(X, 0.3), want(s.get_value(), 0.3))
    s.set_value(np.array([0.5, 0.0, -1.0]))  # the loop reads the shared value of the call
    check(f(X, -0.1), want(s.get_value(), -0.1))


@pytest.mark.parametrize("be", BACKENDS)
def test_outputs_that_are_inputs_constants_or_the_state(be):
    # bodies that return a sequence slice, a non-sequence, a constant or the state unchanged
    x, w, h0 = exprc.matrix("x"), exprc.vector("w"), exprc.vector("h0")
    outs, _ = exprc.scan(lambda xt, h, w_: [xt, w_, exprc.constant(2.5), h], sequences=x,
                         outputs_info=[None, None, None, h0], non_sequences=w)
    f = fn([x, w, h0], outs, be)
    X, W, H = rng(5).normal(size=(4, 3)), np.array([1.0, 2.0]), np.array([7.0, 8.0, 9.0])
    got = f(X, W, H)
    check(got[0], X)
    check(got[1], np.tile(W, (4, 1)))
    check(got[2], np.full(4, 2.5))
    check(got[3], np.tile(H, (4, 1)))
    for g, a in zip(got, (X, W, H)):
        assert not np.shares_memory(g, a)


# -- n_steps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_n_steps_int_symbolic_and_fewer_than_sequences(be):
    x, h0, n = exprc.vector("x"), exprc.scalar("h0"), exprc.scalar("n", "int32")
    step = lambda xt, h: h * 0.9 + xt * xt
    r_int, _ = exprc.scan(step, sequences=x, outputs_info=h0, n_steps=3)
    r_sym, _ = exprc.scan(step, sequences=x, outputs_info=h0, n_steps=n)
    r_tap, _ = exprc.scan(lambda a, b, h: h + a * b, sequences={"input": x, "taps": [-2, 0]}, outputs_info=h0,
                          n_steps=n)
    r_none, _ = exprc.scan(lambda h: h * 2 + 1, outputs_info=h0, n_steps=n)
    f = fn([x, h0, n], [r_int, r_sym, r_tap, r_none], be)
    X = rng(6).normal(size=8)

    def ref(n_, g):
        hv, out = 1.25, []
        for t in range(n_):
            hv = g(t, hv)
            out.append(hv)
        return np.array(out).reshape(n_)

    for N in (0, 1, 3, 6):
        got = f(X, 1.25, N)
        check(got[0], ref(3, lambda t, h: h * 0.9 + X[t] * X[t]))
        check(got[1], ref(N, lambda t, h: h * 0.9 + X[t] * X[t]))
        check(got[2], ref(N, lambda t, h: h + X[t] * X[t + 2]))
        check(got[3], ref(N, lambda t, h: h * 2 + 1))


@pytest.mark.parametrize("be", BACKENDS)
def test_go_backwards(be):
    x, y, h0, n = exprc.vector("x"), exprc.matrix("y"), exprc.scalar("h0"), exprc.scalar("n", "int64")
    res, _ = exprc.scan(lambda xt, yt, h: h * 0.5 + xt * yt.sum(), sequences=[x, y], outputs_info=h0,
                        go_backwards=True)
    # taps apply to the reversed sequence (Theano); n_steps fewer than the rows: the last rows
    taps, _ = exprc.scan(lambda a, b: a - 10 * b, sequences={"input": x, "taps": [0, 1]}, go_backwards=True)
    short, _ = exprc.scan(lambda xt, h: h + xt, sequences=x, outputs_info=h0, n_steps=n, go_backwards=True)
    f = fn([x, y, h0, n], [res, taps, short], be)
    r = rng(7)
    X, Y = r.normal(size=6), r.normal(size=(6, 2))
    Xr, Yr = X[::-1], Y[::-1]
    hv, want = 2.0, []
    for t in range(6):
        hv = hv * 0.5 + Xr[t] * Yr[t].sum()
        want.append(hv)
    got = f(X, Y, 2.0, 4)
    check(got[0], np.array(want))
    check(got[1], np.array([Xr[t] - 10 * Xr[t + 1] for t in range(5)]))
    check(got[2], 2.0 + np.cumsum(Xr[:4]))


@pytest.mark.parametrize("be", BACKENDS)
def test_return_list_and_single_output(be):
    x = exprc.vector("x")
    one, _ = exprc.scan(lambda xt: xt * 3, sequences=x)
    lst, _ = exprc.scan(lambda xt: xt * 3, sequences=x, return_list=True)
    assert isinstance(lst, list) and len(lst) == 1
    assert isinstance(one, exprc.Node)
    f = fn([x], [one, lst[0]], be)
    X = np.array([1.0, -2.0, 0.5])
    got = f(X)
    check(got[0], X * 3)
    check(got[1], X * 3)


@pytest.mark.parametrize("be", BACKENDS)
def test_constant_sequences_initial_values_and_non_sequences(be):
    # NumPy arrays and Python numbers where expressions are expected
    a = exprc.scalar("a")
    res, _ = exprc.scan(lambda xt, h, c: h * c + xt + a, sequences=np.arange(4.0), outputs_info=0.5,
                        non_sequences=2.0)
    rows, _ = exprc.scan(lambda r: r * a, sequences=(np.arange(6.0).reshape(3, 2),))
    f = fn([a], [res, rows], be)
    for A in (0.0, -1.5):
        hv, want = 0.5, []
        for t in range(4):
            hv = hv * 2.0 + t + A
            want.append(hv)
        got = f(A)
        check(got[0], np.array(want))
        check(got[1], np.arange(6.0).reshape(3, 2) * A)


# -- dtypes, layouts, special values ---------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_float32_and_int64_states(be):
    x32, h32 = exprc.vector("x32", "float32"), exprc.scalar("h32", "float32")
    xi, hi = exprc.vector("xi", "int64"), exprc.scalar("hi", "int64")
    r32, _ = exprc.scan(lambda xt, h: h * 0.5 + xt, sequences=x32, outputs_info=h32)
    ri, _ = exprc.scan(lambda xt, h: (h * 31 + xt) % 1000003, sequences=xi, outputs_info=hi)
    f = fn([x32, h32, xi, hi], [r32, ri], be)
    X32 = rng(8).normal(size=9).astype(np.float32)
    XI = rng(8).integers(0, 10**6, size=9)
    got = f(X32, np.float32(1.5), XI, 7)
    hv, w32 = np.float32(1.5), []
    for t in range(9):
        hv = np.float32(hv * np.float32(0.5) + X32[t])
        w32.append(hv)
    hv, wi = 7, []
    for t in range(9):
        hv = (hv * 31 + int(XI[t])) % 1000003
        wi.append(hv)
    check(got[0], np.array(w32, np.float32), rtol=1e-6)
    check(got[1], np.array(wi, np.int64))


@pytest.mark.parametrize("be", BACKENDS)
def test_strided_non_contiguous_and_broadcast_arguments(be):
    x, h0, w = exprc.matrix("x"), exprc.vector("h0"), exprc.vector("w")
    res, _ = exprc.scan(lambda xt, h, w_: h * w_ + xt, sequences=x, outputs_info=h0, non_sequences=w)
    f = fn([x, h0, w], res, be)
    base = np.arange(60.0).reshape(6, 10) / 7

    def ref(X, H, W):
        hv, out = H, []
        for t in range(X.shape[0]):
            hv = hv * W + X[t]
            out.append(hv)
        return np.array(out)

    cases = [
        (base[::2, 1::3], np.ones(3), np.full(3, 0.5)),                          # strided rows and columns
        (base.T[:, :3], np.arange(3.0), np.array([1.0, -1.0, 0.5])),             # transposed (F order)
        (base[::-1, ::-2], np.zeros(5), np.linspace(0, 1, 5)),                    # negative strides
        (np.broadcast_to(np.arange(3.0), (5, 3)), np.broadcast_to(2.0, (3,)),    # zero strides
         np.broadcast_to(np.float64(0.25), (3,))),
        (np.asfortranarray(base[:4, :4]), base[0, ::-1][:4], base[:4, 2]),        # column slices
    ]
    for X, H, W in cases:
        before = [np.array(a, copy=True) for a in (X, H, W)]
        check(f(X, H, W), ref(np.asarray(X), np.asarray(H), np.asarray(W)))
        for a, b in zip((X, H, W), before):
            assert np.array_equal(a, b)  # arguments are not written


@pytest.mark.parametrize("be", BACKENDS)
def test_nan_and_inf_flow_through(be):
    x, h0 = exprc.vector("x"), exprc.scalar("h0")
    (mx, sm, pr, fin), _ = exprc.scan(
        lambda xt, m, s, p: [exprc.maximum(m, xt), s + xt, p * xt, exprc.where(exprc.isfinite(xt), xt, -1.0)],
        sequences=x, outputs_info=[h0, h0, exprc.constant(1.0), None])
    f = fn([x, h0], [mx, sm, pr, fin], be)
    X = np.array([1.0, np.inf, -2.0, np.nan, 3.0, -np.inf, 0.0])
    got = f(X, 0.0)
    m, s, p = 0.0, 0.0, 1.0
    wm, ws, wp = [], [], []
    with np.errstate(all="ignore"):
        for t in range(len(X)):
            m, s, p = np.maximum(m, X[t]), s + X[t], p * X[t]
            wm.append(m)
            ws.append(s)
            wp.append(p)
    check(got[0], np.array(wm))
    check(got[1], np.array(ws))
    check(got[2], np.array(wp))
    check(got[3], np.where(np.isfinite(X), X, -1.0))


# -- zero steps ------------------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_zero_steps_give_empty_stacks(be):
    x, h0, M0, n, v = exprc.matrix("x"), exprc.scalar("h0"), exprc.matrix("M0"), exprc.scalar("n", "int64"), \
        exprc.vector("v")

    def step(xt, h, m, v_):
        outer = exprc.dot(exprc.expand_dims(xt, 1), exprc.expand_dims(v_, 0))  # (cols, len(v))
        return [outer, h + xt.sum(), m * 2, xt * 0 + 1]

    outs, _ = exprc.scan(step, sequences=x, outputs_info=[None, h0, M0, None], non_sequences=v)
    f = fn([x, h0, M0, v], outs, be)
    got = f(np.zeros((0, 3)), 1.0, np.ones((2, 4)), np.arange(5.0))
    assert [g.shape for g in got] == [(0, 3, 5), (0,), (0, 2, 4), (0, 3)]
    assert [g.dtype for g in got] == [np.float64] * 4
    # n_steps = 0 (constant and symbolic), with sequences longer than that
    zs, _ = exprc.scan(lambda xt, h: [xt * h, h + 1], sequences=x, outputs_info=[None, h0], n_steps=0)
    zn, _ = exprc.scan(lambda xt, h: [xt * h, h + 1], sequences=x, outputs_info=[None, h0], n_steps=n)
    g = fn([x, h0, n], zs + zn, be)(np.ones((4, 3)), 2.0, 0)
    assert [a.shape for a in g] == [(0, 3), (0,), (0, 3), (0,)]
    # a sequence with taps [-1, 0] and a single row runs zero steps
    s1, _ = exprc.scan(lambda a, b: a - b, sequences={"input": x, "taps": [-1, 0]})
    assert fn([x], s1, be)(np.ones((1, 2))).shape == (0, 2)
    # zero-step results feed further expressions
    h = outs[1]
    k = fn([x, h0, M0, v], [h.sum(), h.shape[0], outs[0].sum(axis=0)], be)(np.zeros((0, 2)), 1.0, np.ones((1, 1)),
                                                                          np.ones(3))
    check(k[0], np.float64(0.0))
    assert int(k[1]) == 0
    check(k[2], np.zeros((2, 3)))


# -- long, nested, composed ------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_thousand_steps(be):
    x, h0 = exprc.vector("x"), exprc.scalar("h0")
    (h, y), _ = exprc.scan(lambda xt, h: [h * 0.999 + exprc.sin(xt), h * xt], sequences=x, outputs_info=[h0, None])
    f = fn([x, h0], [h, y, h[-1]], be)
    X = rng(9).normal(size=1000)
    hv, wh, wy = 0.5, [], []
    for t in range(1000):
        wy.append(hv * X[t])
        hv = hv * 0.999 + np.sin(X[t])
        wh.append(hv)
    got = f(X, 0.5)
    check(got[0], np.array(wh), rtol=1e-10)
    check(got[1], np.array(wy), rtol=1e-10, atol=1e-13)
    check(got[2], np.float64(wh[-1]), rtol=1e-10)


@pytest.mark.parametrize("be", BACKENDS)
def test_nested_scan(be):
    x, h0, w = exprc.matrix("x"), exprc.scalar("h0"), exprc.scalar("w")

    def outer(row, h):
        inner, _ = exprc.scan(lambda v, c: c * w + v + h, sequences=row, outputs_info=exprc.zeros(()))
        return [inner[-1] + h, inner]

    (hs, inners), _ = exprc.scan(outer, sequences=x, outputs_info=[h0, None])
    f = fn([x, h0, w], [hs, inners], be)
    X = rng(10).normal(size=(4, 5))
    hv, wh, wi = 0.5, [], []
    for t in range(4):
        c, row = 0.0, []
        for j in range(5):
            c = c * 0.7 + X[t, j] + hv
            row.append(c)
        wi.append(row)
        hv = row[-1] + hv
        wh.append(hv)
    got = f(X, 0.5, 0.7)
    check(got[0], np.array(wh))
    check(got[1], np.array(wi))


@pytest.mark.parametrize("be", BACKENDS)
def test_results_in_expressions_givens_and_several_scans(be):
    x, h0, y, a = exprc.vector("x"), exprc.scalar("h0"), exprc.vector("y"), exprc.scalar("a")
    cs, _ = exprc.scan(lambda xt, h: h + xt * a, sequences=x, outputs_info=h0)
    # a second loop over the first one's result, backwards, and a third one of its own
    back, _ = exprc.scan(lambda c, h: h * 0.5 + c, sequences=cs, outputs_info=exprc.zeros(()), go_backwards=True)
    prod, _ = exprc.scan(lambda xt, p: p * (1 + xt), sequences=x[::-1], outputs_info=exprc.ones(()))
    out = [cs.sum(), cs[-1], cs[1:3] * 2, back, (y * 2).sum() + y[0], prod[-1] + back[-1]]
    # y stands for the loop's result (givens substitute a scan's output for a variable)
    f = fn([x, h0, a], out, be, givens={y: cs})
    # a replaced by an expression of h0: givens reach the loop's body (the value it closes over)
    g = fn([x, h0], [cs, back], be, givens={a: h0 * 2 + 1})
    X = rng(11).normal(size=6)
    H0 = 0.25

    def refs(A):
        C = np.array([H0 + sum(X[:t + 1] * A) for t in range(6)])
        hv, wb = 0.0, []
        for c in C[::-1]:
            hv = hv * 0.5 + c
            wb.append(hv)
        return C, np.array(wb)

    C, wb = refs(-0.75)
    P = np.prod(1 + X)
    got = f(X, H0, -0.75)
    check(got[0], C.sum())
    check(got[1], C[-1])
    check(got[2], C[1:3] * 2)
    check(got[3], wb)
    check(got[4], (C * 2).sum() + C[0])
    check(got[5], P + wb[-1], rtol=1e-12)
    C, wb = refs(H0 * 2 + 1)
    got = g(X, H0)
    check(got[0], C)
    check(got[1], wb)


@pytest.mark.parametrize("be", BACKENDS)
def test_repeated_calls_with_different_lengths(be):
    x, h0 = exprc.matrix("x"), exprc.vector("h0")
    (h, y), _ = exprc.scan(lambda xt, h: [h * 0.5 + xt, xt.sum() + h.sum()], sequences=x, outputs_info=[h0, None])
    f = fn([x, h0], [h, y], be)
    r = rng(12)
    results = []
    for n in (5, 0, 3, 7, 1, 0, 2, 5):
        X, H = r.normal(size=(n, 2)), r.normal(size=2)
        hv, wh, wy = H, [], []
        for t in range(n):
            wy.append(X[t].sum() + hv.sum())
            hv = hv * 0.5 + X[t]
            wh.append(hv)
        got = f(X, H)
        check(got[0], np.array(wh).reshape(n, 2))
        check(got[1], np.array(wy).reshape(n))
        results.append((got, np.array(wh).reshape(n, 2)))
    for got, want in results:  # earlier results are not overwritten by later calls
        check(got[0], want)


@pytest.mark.parametrize("be", BACKENDS)
def test_wide_elementwise_loop_and_zero_width_states(be):
    # a wide elementwise body (the C backend may run it with the loop inside, threaded over elements)
    x, h0, w = exprc.matrix("x"), exprc.vector("h0"), exprc.vector("w")
    (h, y), _ = exprc.scan(lambda xt, h, w_: [h * w_ + exprc.tanh(xt), h * xt - 1], sequences=x,
                           outputs_info=[h0, None], non_sequences=w)
    f = fn([x, h0, w], [h, y], be)
    r = rng(17)
    X, H, W = r.normal(size=(600, 200)), r.normal(size=200), r.uniform(0.5, 1.0, size=200)
    hv, wh, wy = H, [], []
    for t in range(600):
        wy.append(hv * X[t] - 1)
        hv = hv * W + np.tanh(X[t])
        wh.append(hv)
    got = f(X, H, W)
    check(got[0], np.array(wh), rtol=1e-9, atol=1e-12)
    check(got[1], np.array(wy), rtol=1e-9, atol=1e-12)
    # the same body over reversed (negative-stride) and F-ordered sequences
    Xs = np.asfortranarray(X[::-1][:50, :7])
    got = f(Xs, H[:7], W[:7])
    hv, wh = H[:7], []
    for t in range(50):
        hv = hv * W[:7] + np.tanh(Xs[t])
        wh.append(hv)
    check(got[0], np.array(wh), rtol=1e-9, atol=1e-12)
    # states with zero elements: n steps of nothing
    got = f(np.zeros((4, 0)), np.zeros(0), np.zeros(0))
    assert got[0].shape == (4, 0) and got[1].shape == (4, 0)


@pytest.mark.parametrize("be", BACKENDS)
def test_integer_loop_division_semantics(be):
    # floor division and modulo by negatives and by zero inside a loop body, as NumPy computes them
    y, h0 = exprc.vector("y", "int64"), exprc.vector("h0", "int64")
    res, _ = exprc.scan(lambda yt, h: h // yt + h % yt - 3 * h, sequences=y, outputs_info=h0)
    f = fn([y, h0], res, be)
    Y, H = np.array([3, -2, 0, 5, -7]), np.array([100, -100, 7, 0, 1, -1])
    hv, want = H, []
    with np.errstate(all="ignore"):
        for t in range(len(Y)):
            hv = hv // Y[t] + hv % Y[t] - 3 * hv
            want.append(hv)
    check(f(Y, H), np.array(want))


@pytest.mark.parametrize("be", BACKENDS)
def test_result_shape_changing_between_steps_raises(be):
    # a result that is not fed back must keep one shape over the steps: rows of different lengths
    # cannot be stacked (and must not be broadcast into the first row's shape)
    k, v = exprc.vector("k", "int64"), exprc.vector("v")
    out, _ = exprc.scan(lambda kt, v_: v_[:kt] * 2, sequences=k, non_sequences=v)
    f = fn([k, v], out, be)
    V = np.arange(3.0) + 1
    check(f(np.array([2, 2, 2]), V), np.tile(V[:2] * 2, (3, 1)))
    for K in ([3, 1], [3, 2], [1, 3], [2, 0]):
        with pytest.raises(ShapeError, match=r"outputs_info\[0\]"):
            f(np.array(K), V)


@pytest.mark.parametrize("be", BACKENDS)
def test_body_results_that_alias_inputs_or_each_other(be):
    # results that are a state (swapped), the same expression twice, and views of the step's inputs
    x, a0, b0 = exprc.matrix("x"), exprc.scalar("a0"), exprc.scalar("b0")

    def step(xt, a, b):
        s = a + b
        return [b, s, a + b, xt[::-1], xt[1:] * 1, exprc.expand_dims(xt, 0)]

    outs, _ = exprc.scan(step, sequences=x, outputs_info=[a0, b0, None, None, None, None])
    f = fn([x, a0, b0], outs, be)
    X = np.arange(15.0).reshape(5, 3)
    got = f(X, 0.0, 1.0)
    a, b, wa, wb = 0.0, 1.0, [], []
    for _ in range(5):
        a, b = b, a + b
        wa.append(a)
        wb.append(b)
    check(got[0], np.array(wa))
    check(got[1], np.array(wb))
    check(got[2], np.array(wb))
    check(got[3], X[:, ::-1])
    check(got[4], X[:, 1:])
    check(got[5], X[:, None, :])
    # a state that is a transposed view of itself
    M0 = exprc.matrix("M0")
    tr, _ = exprc.scan(lambda m: m.T + 0.5, outputs_info=M0, n_steps=3)
    g = fn([M0], tr, be)
    M = np.arange(4.0).reshape(2, 2)
    check(g(M), np.array([M.T + 0.5, M + 1.0, M.T + 1.5]))
    with pytest.raises(ShapeError, match=r"outputs_info\[0\]"):
        g(np.arange(6.0).reshape(2, 3))  # (2, 3) -> (3, 2): not the state's shape


@pytest.mark.parametrize("be", BACKENDS)
def test_keep_last(be):
    f0, n, h0 = exprc.vector("f0"), exprc.scalar("n", "int64"), exprc.matrix("h0")
    (fib, h), _ = exprc.scan(lambda a, b, h: [a + b, h @ h * 0.5], outputs_info=[{"initial": f0, "taps": [-2, -1]}, h0],
                             n_steps=n, keep="last")
    f = fn([f0, n, h0], [fib, h], be)
    H = np.array([[0.5, 1.0], [-0.25, 0.75]])
    for N in (0, 1, 2, 3, 10):
        F, hv = [1.0, 2.0], H
        for _ in range(N):
            F.append(F[-2] + F[-1])
            hv = hv @ hv * 0.5
        got = f(np.array([1.0, 2.0]), N, H)
        check(got[0], np.float64(F[-1]))  # after zero steps: the last initial row
        check(got[1], hv)


@pytest.mark.parametrize("be", BACKENDS)
def test_zero_steps_do_not_evaluate_the_body_on_made_up_values(be):
    # with no steps there is no step value: a body that indexes by a sequence value must not fail
    k, v = exprc.vector("k", "int64"), exprc.vector("v")
    out, _ = exprc.scan(lambda kt, v_: v_[kt] * 2, sequences=k, non_sequences=v)
    f = fn([k, v], out, be)
    check(f(np.array([1, 0]), np.array([3.0, 4.0])), np.array([8.0, 6.0]))
    check(f(np.zeros(0, np.int64), np.zeros(0)), np.zeros(0))
    check(f(np.zeros(0, np.int64), np.array([3.0])), np.zeros(0))


# -- until -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_until_truncates(be):
    x, h0, lim = exprc.vector("x"), exprc.scalar("h0"), exprc.scalar("lim")

    def step(xt, h):
        new = h + xt
        return [new, new * 10], exprc.until(new > lim)

    (h, y), _ = exprc.scan(step, sequences=x, outputs_info=[h0, None])
    f = fn([x, h0, lim], [h, y, h.shape[0]], be)
    X = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 4.0])
    for H0, L in [(0.0, 2.5), (0.0, 100.0), (10.0, 1.0), (0.0, 6.4), (0.0, 6.5)]:
        hv, wh = H0, []
        for t in range(len(X)):
            hv = hv + X[t]
            wh.append(hv)
            if hv > L:
                break
        got = f(X, H0, L)
        check(got[0], np.array(wh))
        check(got[1], np.array(wh) * 10)
        assert int(got[2]) == len(wh)


@pytest.mark.parametrize("be", BACKENDS)
def test_until_with_n_steps(be):
    h0, n = exprc.scalar("h0", "int64"), exprc.scalar("n", "int64")

    def collatz(h):
        new = exprc.where(exprc.equal(h % 2, 0), h // 2, 3 * h + 1)  # (== on nodes is identity)
        return new, exprc.until(exprc.equal(new, 1))

    bounded, _ = exprc.scan(collatz, outputs_info=h0, n_steps=n)
    f = fn([h0, n], bounded, be)
    for H0, N in [(27, 1000), (27, 10), (6, 100), (1, 5), (5, 0)]:
        hv, want = H0, []
        for _ in range(N):
            hv = hv // 2 if hv % 2 == 0 else 3 * hv + 1
            want.append(hv)
            if hv == 1:
                break
        check(f(H0, N), np.array(want, np.int64).reshape(len(want)))


@pytest.mark.parametrize("be", BACKENDS)
def test_until_without_n_steps_or_sequences(be):
    # scan allows this (n_steps is then unbounded): the loop stops at the until condition
    h0 = exprc.scalar("h0")
    res, _ = exprc.scan(lambda h: (h * 2, exprc.until(h * 2 > 100)), outputs_info=h0)
    f = fn([h0], res, be)
    hv, want = 3.0, []
    while True:
        hv = hv * 2
        want.append(hv)
        if hv > 100:
            break
    check(f(3.0), np.array(want))


@pytest.mark.parametrize("be", BACKENDS)
def test_until_variants(be):
    # go_backwards with until, an integer condition (nonzero), a condition read from a sequence tap,
    # and an inner loop with until inside an outer loop
    x, h0 = exprc.vector("x"), exprc.scalar("h0")
    back, _ = exprc.scan(lambda xt, h: (h + xt, exprc.until(h + xt > 4)), sequences=x, outputs_info=h0,
                         go_backwards=True)
    ahead, _ = exprc.scan(lambda a, b, h: (h + a, exprc.until(b < 0)), sequences={"input": x, "taps": [0, 1]},
                          outputs_info=h0)
    m = exprc.matrix("m")

    def outer(row, h):
        inner, _ = exprc.scan(lambda v, c: (c + v, exprc.until(c + v > 1)), sequences=row, outputs_info=h)
        return [inner[-1], inner.shape[0]]

    (hs, lens), _ = exprc.scan(outer, sequences=m, outputs_info=[h0, None])
    f = fn([x, h0, m], [back, ahead, hs, lens], be)
    X = np.array([0.5, -1.0, 2.0, 1.5, -0.25, 3.0])
    M = rng(18).uniform(-0.5, 1.0, size=(4, 6))
    for H0 in (0.0, -2.0, 5.0):
        got = f(X, H0, M)
        hv, wb = H0, []
        for xt in X[::-1]:
            hv = hv + xt
            wb.append(hv)
            if hv > 4:
                break
        check(got[0], np.array(wb))
        hv, wa = H0, []
        for t in range(len(X) - 1):
            hv = hv + X[t]
            wa.append(hv)
            if X[t + 1] < 0:
                break
        check(got[1], np.array(wa))
        hv, wh, wl = H0, [], []
        for row in M:
            c, steps = hv, 0
            for v in row:
                c, steps = c + v, steps + 1
                if c > 1:
                    break
            hv = c
            wh.append(hv)
            wl.append(steps)
        check(got[2], np.array(wh))
        check(got[3], np.array(wl, np.int64))


@pytest.mark.parametrize("be", BACKENDS)
def test_until_with_an_integer_condition(be):
    # until accepts an integer condition (nonzero holds), as ifelse does
    k, h0 = exprc.vector("k", "int64"), exprc.scalar("h0")
    res, _ = exprc.scan(lambda kt, h: (h * 2 + kt, exprc.until(kt)), sequences=k, outputs_info=h0)
    f = fn([k, h0], res, be)
    for K in ([0, 0, 3, 0, 1], [2, 0], [0, 0, 0], [0, -1, 5]):
        hv, want = 0.5, []
        for kt in K:
            hv = hv * 2 + kt
            want.append(hv)
            if kt:
                break
        check(f(np.array(K), 0.5), np.array(want))


# -- updates ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_updates_of_shared_variables(be):
    x = exprc.vector("x")
    acc = exprc.shared(np.float64(1.0), name="acc")
    cnt = exprc.shared(np.int64(0), name="cnt")
    vec = exprc.shared(np.zeros(2), name="vec")

    def step(xt, h):
        return h * 0.5 + acc, {acc: acc + xt, cnt: cnt + 1, vec: vec * 0.5 + xt}

    res, upd = exprc.scan(step, sequences=x, outputs_info=exprc.zeros(()))
    assert set(upd) == {acc, cnt, vec}
    f = fn([x], res, be, updates=upd)
    r = rng(13)
    for n in (4, 1, 0, 6):
        X = r.normal(size=n)
        A, C, V = float(acc.get_value()), int(cnt.get_value()), vec.get_value()
        hv, want = 0.0, []
        for t in range(n):
            hv = hv * 0.5 + A  # the body reads the value of the step, updated by the step before
            want.append(hv)
            A, C, V = A + X[t], C + 1, V * 0.5 + X[t]
        check(f(X), np.array(want).reshape(n))
        check(acc.get_value(), np.float64(A))
        check(cnt.get_value(), np.int64(C))
        check(vec.get_value(), V)


@pytest.mark.parametrize("be", BACKENDS)
def test_updates_with_until_and_without_passing_them(be):
    x = exprc.vector("x")
    tot = exprc.shared(np.float64(0.0), name="tot")

    def step(xt):
        new = tot + xt
        return {tot: new}, exprc.until(new > 3)

    none, upd0 = exprc.scan(step, sequences=x)  # a body that returns only updates and a condition
    assert none == [] and set(upd0) == {tot}
    X = np.array([1.0, 1.5, 0.25, 2.0, 5.0])
    fn([x], x.sum(), be, updates=upd0)(X)
    check(tot.get_value(), np.float64(1.0 + 1.5 + 0.25 + 2.0))
    tot.set_value(0.0)
    out, upd = exprc.scan(lambda xt: (xt * 2, {tot: tot + xt}, exprc.until(tot + xt > 3)), sequences=x)
    f = fn([x], out, be, updates=upd)
    X = np.array([1.0, 1.5, 0.25, 2.0, 5.0])
    got = f(X)
    T, want = 0.0, []
    for t in range(len(X)):
        want.append(X[t] * 2)
        T += X[t]
        if T > 3:
            break
    check(got, np.array(want))
    check(tot.get_value(), np.float64(T))
    # a function that does not pass the updates leaves the shared value alone
    tot.set_value(0.0)
    g = fn([x], out, be)
    check(g(X), np.array(want))
    check(tot.get_value(), np.float64(0.0))


@pytest.mark.parametrize("be", BACKENDS)
def test_updates_outputs_read_the_old_value(be):
    # a function's outputs are computed from the shared values before the call's updates
    x = exprc.vector("x")
    s = exprc.shared(np.float64(1.0), name="s_old")
    r, upd = exprc.scan(lambda xt: (xt * s, {s: s * 2 + xt}), sequences=x)
    f = fn([x], [r, s * 1, r.sum() + s], be, updates=upd)
    for X in (np.array([1.0, 2.0, -0.5]), np.array([3.0]), np.zeros(0)):
        S = float(s.get_value())
        rows, T = [], S
        for xt in X:
            rows.append(xt * T)
            T = T * 2 + xt
        got = f(X)
        check(got[0], np.array(rows).reshape(len(X)))
        check(got[1], np.float64(S))
        check(got[2], np.float64(sum(rows) + S))
        check(s.get_value(), np.float64(T))


# -- fori_loop / while_loop ------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_fori_loop(be):
    lo, hi, v = exprc.scalar("lo", "int64"), exprc.scalar("hi", "int32"), exprc.vector("v")
    single = exprc.fori_loop(lo, hi, lambda i, x: x * 0.5 + i, exprc.constant(1.0))
    pair = exprc.fori_loop(2, 7, lambda i, s: (s[0] + i * s[1], s[1] * 0.5 + v[i % 3]), (exprc.zeros(()), v.sum()))
    assert isinstance(pair, tuple) and len(pair) == 2
    empty = exprc.fori_loop(5, 5, lambda i, x: x + 1, v)
    backwards = exprc.fori_loop(7, 2, lambda i, x: x + 1, v)
    f = fn([lo, hi, v], [single, *pair, empty, backwards], be)
    V = np.array([0.5, -1.0, 2.0])
    for L, H in [(0, 10), (3, 4), (5, 5), (9, 2), (-3, 3)]:
        x = 1.0
        for i in range(L, H):
            x = x * 0.5 + i
        a, b = 0.0, V.sum()
        for i in range(2, 7):
            a, b = a + i * b, b * 0.5 + V[i % 3]
        got = f(L, H, V)
        check(got[0], np.float64(x))
        check(got[1], np.float64(a))
        check(got[2], np.float64(b))
        check(got[3], V)
        check(got[4], V)


@pytest.mark.parametrize("be", BACKENDS)
def test_fori_loop_list_state_and_matrix(be):
    m = exprc.matrix("m")
    out = exprc.fori_loop(0, 4, lambda i, s: [s[0] @ s[1], s[1].T * (i + 1)], [m, exprc.constant(np.eye(2))])
    assert isinstance(out, list)
    f = fn([m], out, be)
    M = np.array([[1.0, 2.0], [0.5, -1.0]])
    a, b = M, np.eye(2)
    for i in range(4):
        a, b = a @ b, b.T * (i + 1)
    got = f(M)
    check(got[0], a)
    check(got[1], b)


@pytest.mark.parametrize("be", BACKENDS)
def test_while_loop(be):
    x0, lim, k = exprc.scalar("x0"), exprc.scalar("lim"), exprc.scalar("k", "int64")
    one = exprc.while_loop(lambda x: x < lim, lambda x: x * 2 + 1, x0)
    pair = exprc.while_loop(lambda s: s[1] < k, lambda s: (s[0] + s[1], s[1] + 1), (x0, exprc.constant(0, "int64")))
    capped = exprc.while_loop(lambda x: x < lim, lambda x: x + 1, x0, max_steps=k)
    int_cond = exprc.while_loop(lambda s: s, lambda s: s - 1, k)  # integer condition: s != 0
    f = fn([x0, lim, k], [one, *pair, capped, int_cond], be)
    for X0, L, K in [(1.0, 100.0, 5), (200.0, 100.0, 0), (-0.5, 0.0, 3), (0.0, 5.5, 2), (5.5, 5.5, 10)]:
        x = X0
        while x < L:
            x = x * 2 + 1
        a, b = X0, 0
        while b < K:
            a, b = a + b, b + 1
        c = X0
        for _ in range(K):
            if not c < L:
                break
            c = c + 1
        d = K
        while d:
            d = d - 1
        got = f(X0, L, K)
        check(got[0], np.float64(x))
        check(got[1], np.float64(a))
        check(got[2], np.int64(b))
        check(got[3], np.float64(c))
        check(got[4], np.int64(d))


@pytest.mark.parametrize("be", BACKENDS)
def test_while_loop_vector_state_and_symbolic_max_steps(be):
    v, cap = exprc.vector("v"), exprc.scalar("cap", "int32")
    out = exprc.while_loop(lambda s: s[0].sum() < 100, lambda s: (s[0] * 2 + 1, s[1] + 1),
                           (v, exprc.constant(0, "int64")), max_steps=cap)
    f = fn([v, cap], list(out), be)
    for V, C in [(np.array([1.0, 2.0]), 100), (np.array([1.0, 2.0]), 3), (np.array([200.0]), 100),
                 (np.array([-1.0, -1.0, 0.5]), 50), (np.zeros(0), 4)]:
        a, b = V, 0
        for _ in range(C):
            if not a.sum() < 100:
                break
            a, b = a * 2 + 1, b + 1
        got = f(V, C)
        check(got[0], a)
        check(got[1], np.int64(b))


# -- ifelse / switch -------------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_ifelse_branches_and_lists(be):
    c, x, y = exprc.scalar("c", "bool"), exprc.vector("x"), exprc.vector("y")
    one = exprc.ifelse(c, exprc.exp(x) + y, x * y)
    pair = exprc.ifelse(exprc.sum(x) > 0, [x + 1, y.sum()], [y, x.max()])
    assert isinstance(pair, list) and len(pair) == 2
    n = exprc.scalar("n", "int64")
    by_int = exprc.ifelse(n, x, y)  # an integer condition: nonzero
    f = fn([c, x, y, n], [one, *pair, by_int, one.sum() * 2], be)
    r = rng(14)
    for C, N in [(True, 0), (False, 3), (True, -1), (False, 0)]:
        X, Y = r.normal(size=4), r.normal(size=4)
        got = f(C, X, Y, N)
        w = np.exp(X) + Y if C else X * Y
        check(got[0], w)
        check(got[1], X + 1 if X.sum() > 0 else Y)
        check(got[2], Y.sum() if X.sum() > 0 else X.max())
        check(got[3], X if N else Y)
        check(got[4], w.sum() * 2)
    X = np.array([1.0, 2.0])
    assert not np.shares_memory(f(True, X, X, 1)[3], X)


@pytest.mark.parametrize("be", BACKENDS)
def test_ifelse_is_lazy(be):
    c, x, i, n = exprc.scalar("c", "bool"), exprc.vector("x"), exprc.scalar("i", "int64"), exprc.scalar("n", "int64")
    oob = exprc.ifelse(c, x[i] * 2, x.sum())  # x[i] is out of bounds when c is false
    # an untaken branch holding a loop that would raise (negative n_steps at call time) or index out of bounds
    loop, _ = exprc.scan(lambda h: h + 1, outputs_info=x, n_steps=n)
    with_loop = exprc.ifelse(c, loop.sum(), x.sum())
    bad_body = exprc.fori_loop(0, 3, lambda j, s: s + x[i + j], exprc.zeros(()))
    with_body = exprc.ifelse(c, bad_body, x.sum())
    f = fn([c, x, i, n], [oob, with_loop, with_body], be)
    X = np.array([1.0, 2.0, 3.0])
    got = f(False, X, 100, -1)
    check(got[0], X.sum())
    check(got[1], X.sum())
    check(got[2], X.sum())
    with pytest.raises(IndexOutOfBounds):
        f(True, X, 100, 2)  # taken: it does raise
    with pytest.raises(ControlFlowError, match="n_steps"):
        f(True, X, 0, -1)
    got = f(True, X, 0, 2)
    check(got[0], X[0] * 2)
    check(got[1], (X[None] + np.arange(1, 3)[:, None]).sum())
    check(got[2], X.sum())
    g = fn([c, x, i], with_body, be)
    check(g(True, X, 0), np.float64(X.sum()))
    check(g(False, X, 2), np.float64(X.sum()))


@pytest.mark.parametrize("be", BACKENDS)
def test_index_error_in_a_loop_body_keeps_its_class(be):
    # an out-of-bounds index at some step raises IndexOutOfBounds, as outside a loop, on every backend
    x, i = exprc.vector("x"), exprc.scalar("i", "int64")
    f = fn([x, i], exprc.fori_loop(0, 3, lambda j, s: s + x[i + j], exprc.zeros(())), be)
    X = np.array([1.0, 2.0, 3.0])
    check(f(X, 0), np.float64(X.sum()))
    for bad in (1, 2, 3, -4):  # the first bad read at step 2, 1, 0, 0
        with pytest.raises(IndexOutOfBounds):
            f(X, bad)


@pytest.mark.parametrize("be", BACKENDS)
def test_ifelse_dtype_promotion_and_shapes(be):
    c = exprc.scalar("c", "bool")
    xi, xf, xb = exprc.vector("xi", "int32"), exprc.vector("xf", "float32"), exprc.vector("xb", "bool")
    x8 = exprc.vector("x8", "int64")
    p1 = exprc.ifelse(c, xi, xf)
    p2 = exprc.ifelse(c, xb, x8)
    p3 = exprc.ifelse(c, xi, 2.5 * xf)
    m = exprc.matrix("m")
    shapes = exprc.ifelse(c, m[:1], exprc.concatenate([m, m], axis=0).T)
    f = fn([c, xi, xf, xb, x8, m], [p1, p2, p3, shapes, shapes.shape[0]], be)
    XI, XF = np.array([1, -2, 3], np.int32), np.array([0.5, 1.5], np.float32)
    XB, X8 = np.array([True, False]), np.array([-3, 4, 5, 6], np.int64)
    M = np.arange(6.0).reshape(2, 3)
    for C in (True, False):
        got = f(C, XI, XF, XB, X8, M)
        t1 = np.promote_types(np.int32, np.float32)
        check(got[0], (XI if C else XF).astype(t1))
        t2 = np.promote_types(np.bool_, np.int64)
        check(got[1], (XB if C else X8).astype(t2))
        check(got[2], (XI if C else np.float32(2.5) * XF).astype(t1), rtol=1e-6)
        w = M[:1] if C else np.concatenate([M, M]).T
        check(got[3], w)
        assert int(got[4]) == w.shape[0]


@pytest.mark.parametrize("be", BACKENDS)
def test_ifelse_inside_scan_and_scan_inside_ifelse(be):
    x, c = exprc.vector("x"), exprc.scalar("c", "bool")
    t0 = exprc.constant(0, "int64")

    def step(xt, h, t):
        return [exprc.ifelse(exprc.equal(t % 2, 0), h + xt, h * xt), t + 1]

    (h, _), _ = exprc.scan(step, sequences=x, outputs_info=[exprc.zeros(()), t0])
    inner, _ = exprc.scan(lambda xt, a: a * 0.5 + xt, sequences=x, outputs_info=exprc.zeros(()))
    chosen = exprc.ifelse(c, inner, x[::-1])
    f = fn([x, c], [h, chosen], be)
    X = rng(15).normal(size=7)
    hv, wh = 0.0, []
    for t in range(7):
        hv = hv + X[t] if t % 2 == 0 else hv * X[t]
        wh.append(hv)
    a, wi = 0.0, []
    for t in range(7):
        a = a * 0.5 + X[t]
        wi.append(a)
    for C in (True, False):
        got = f(X, C)
        check(got[0], np.array(wh))
        check(got[1], np.array(wi) if C else X[::-1])


@pytest.mark.parametrize("be", BACKENDS)
def test_ifelse_on_loop_results_and_constant_branches(be):
    x = exprc.vector("x")
    cs, _ = exprc.scan(lambda xt, h: h + xt, sequences=x, outputs_info=exprc.zeros(()))
    pick = exprc.ifelse(cs[-1] > 0, cs * 2, x[::-1])  # the condition is known after the loop only
    const = exprc.ifelse(x.sum() > 0, 1, x.sum())  # an int constant against a float expression
    both = exprc.ifelse(x.sum() > 0, [cs, 2.5], [x, cs[0]])
    f = fn([x], [pick, const, *both], be)
    for X in (np.array([1.0, -0.5, 2.0]), np.array([-1.0, 0.25]), np.array([3.0])):
        C = np.cumsum(X)
        got = f(X)
        check(got[0], C * 2 if C[-1] > 0 else X[::-1])
        check(got[1], np.float64(1) if X.sum() > 0 else np.float64(X.sum()))
        check(got[2], C if X.sum() > 0 else X)
        check(got[3], np.float64(2.5) if X.sum() > 0 else np.float64(C[0]))


@pytest.mark.parametrize("be", BACKENDS)
def test_second_derivatives_through_ifelse(be):
    """The gradient of an ifelse is an ifelse capturing the cotangent, which reads the inputs: its own
    gradient (a hessian, a gradient of a gradient) differentiates each captured operand over its own
    paths (the branches' placeholders); as total derivatives the cotangent's paths counted twice (a
    hessian 2.8 off).  Both branches, against central differences of the gradient."""
    w, c = exprc.vector("w"), exprc.scalar("c")
    losses = [exprc.sum(exprc.ifelse(c > 0, exprc.sin(w) * w, exprc.cos(w)) ** 2),
              exprc.sum(exprc.exp(exprc.ifelse(c > 0, exprc.sin(w), w * w) * 0.5)) * exprc.sum(w)]
    wv = np.array([0.3, -0.7, 1.1])
    for loss in losses:
        grad = fn([w, c], exprc.grad(loss, w), be)
        hess = fn([w, c], exprc.hessian(loss, w), be)
        for cv in (np.asarray(1.0), np.asarray(-1.0)):
            want = np.zeros((3, 3))
            for i in range(3):
                up, dn = wv.copy(), wv.copy()
                up[i] += 1e-6
                dn[i] -= 1e-6
                want[:, i] = (grad(up, cv) - grad(dn, cv)) / 2e-6
            np.testing.assert_allclose(hess(wv, cv), want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("be", BACKENDS)
def test_switch_is_where(be):
    c, x, y, m = exprc.vector("c", "bool"), exprc.vector("x"), exprc.vector("y"), exprc.matrix("m")
    f = fn([c, x, y, m], [exprc.switch(c, x, y), exprc.switch(x > 0, x, -x), exprc.switch(c, m, 0.5),
                          exprc.switch(x > y, exprc.log(x), y)], be)
    r = rng(16)
    C = np.array([True, False, True, False])
    X, Y, M = r.normal(size=4), r.normal(size=4), r.normal(size=(3, 4))
    got = f(C, X, Y, M)
    with np.errstate(all="ignore"):
        want = [np.where(C, X, Y), np.where(X > 0, X, -X), np.where(C, M, 0.5), np.where(X > Y, np.log(X), Y)]
    for g, w in zip(got, want):
        check(g, w)


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_negative_n_steps(be):
    h0, n = exprc.scalar("h0"), exprc.scalar("n", "int64")
    with pytest.raises(ControlFlowError, match="n_steps"):
        exprc.scan(lambda h: h + 1, outputs_info=h0, n_steps=-1)
    with pytest.raises(ControlFlowError, match="n_steps"):
        exprc.scan(lambda h: h + 1, outputs_info=h0, n_steps=np.int64(-3))
    res, _ = exprc.scan(lambda h: h + 1, outputs_info=h0, n_steps=n)
    f = fn([h0, n], res, be)
    with pytest.raises(ControlFlowError, match="n_steps.*-2"):
        f(0.0, -2)
    check(f(0.0, 2), np.array([1.0, 2.0]))  # still usable
    lo = exprc.scalar("lo", "int64")
    g = fn([h0, lo], exprc.fori_loop(lo, 2, lambda i, v: v + i, h0), be)
    check(g(1.0, 5), np.float64(1.0))  # fori_loop clamps: lower > upper runs no step


@pytest.mark.parametrize("be", BACKENDS)
def test_sequences_of_different_lengths(be):
    a, b = exprc.vector("a", shape=(5,)), exprc.vector("b", shape=(6,))
    with pytest.raises(ControlFlowError, match=r"sequences\[1\]"):
        exprc.scan(lambda u, v: u + v, sequences=[a, b])
    # taps make the lengths agree: 5 rows with taps [0, 1] and 6 rows with taps [-1, 0, 1] both give 4 steps
    c = exprc.vector("c", shape=(6,))
    ok, _ = exprc.scan(lambda u0, u1, v, w, z: u0 - u1 + v * w * z, sequences=[{"input": a, "taps": [0, 1]},
                                                                        {"input": c, "taps": [-1, 0, 1]}])
    A, C = np.arange(5.0) ** 2, np.arange(6.0) * 2 + 1
    check(fn([a, c], ok, be)(A, C), np.array([A[t] - A[t + 1] + C[t] * C[t + 1] * C[t + 2] for t in range(4)]))
    with pytest.raises(ControlFlowError, match="sequences"):
        exprc.scan(lambda u, v, w, z: u, sequences=[a, {"input": c, "taps": [-1, 0, 1]}])
    x, y = exprc.vector("x"), exprc.vector("y")
    res, _ = exprc.scan(lambda u, v: u + v, sequences=[x, y])
    f = fn([x, y], res, be)
    with pytest.raises(ControlFlowError, match=r"sequences\[0\] gives 3.*sequences\[1\] gives 4"):
        f(np.zeros(3), np.zeros(4))
    with pytest.raises(ControlFlowError, match="sequences"):
        f(np.zeros(0), np.zeros(1))
    check(f(np.ones(2), np.ones(2)), np.full(2, 2.0))
    # one length known statically, the other at call time
    mixed, _ = exprc.scan(lambda u, v: u * v, sequences=[a, y])
    g = fn([a, y], mixed, be)
    check(g(A, np.ones(5)), A)
    with pytest.raises(ControlFlowError, match=r"sequences\[1\] gives 6"):
        g(A, np.ones(6))
    # n_steps beyond a sequence's rows (at call time)
    n = exprc.scalar("n", "int64")
    r2, _ = exprc.scan(lambda u: u * 2, sequences=x, n_steps=n)
    with pytest.raises(ControlFlowError, match=r"sequences\[0\]"):
        fn([x, n], r2, be)(np.zeros(3), 4)


@pytest.mark.parametrize("be", BACKENDS)
def test_body_result_dtype_and_shape_mismatch(be):
    h0, x = exprc.scalar("h0"), exprc.vector("x")
    with pytest.raises(DTypeError, match=r"outputs_info\[1\].*float32"):
        exprc.scan(lambda xt, h: [xt, exprc.astype(h, "float32")], sequences=x, outputs_info=[None, h0])
    v3 = exprc.vector("v3", shape=(3,))
    with pytest.raises(ShapeError, match=r"outputs_info\[1\]"):
        exprc.scan(lambda h, g: [h, exprc.concatenate([g, g])], outputs_info=[h0, v3], n_steps=2)
    with pytest.raises(ShapeError, match=r"outputs_info\[0\]"):
        exprc.scan(lambda h: h.sum(), outputs_info=v3, n_steps=2)
    # shapes known only at call time: the first step, and a later one
    v = exprc.vector("v")
    bad, _ = exprc.scan(lambda h, g: [h + 1, g[1:]], outputs_info=[h0, v], n_steps=3)
    f = fn([h0, v], bad, be)
    with pytest.raises(ShapeError, match=r"outputs_info\[1\]"):
        f(0.0, np.ones(3))
    k = exprc.vector("k", "int64")
    later, _ = exprc.scan(lambda kt, h, g: [h + 1, g[:kt] * 2], sequences=k, outputs_info=[h0, v])
    g = fn([k, h0, v], later, be)
    check(g(np.array([3, 3]), 0.0, np.ones(3))[1], np.array([[2.0] * 3, [4.0] * 3]))
    with pytest.raises(ShapeError, match=r"outputs_info\[1\]"):
        g(np.array([3, 2, 3]), 0.0, np.ones(3))
    # an initial value with fewer rows than the taps need (at call time)
    f0 = exprc.vector("f0")
    fib, _ = exprc.scan(lambda a, b: a + b, outputs_info={"initial": f0, "taps": [-3, -1]}, n_steps=2)
    with pytest.raises(ControlFlowError, match=r"outputs_info\[0\]"):
        fn([f0], fib, be)(np.ones(2))


def test_malformed_scans_and_conditions():
    x, h0 = exprc.vector("x"), exprc.scalar("h0")
    with pytest.raises(DTypeError, match="n_steps"):
        exprc.scan(lambda h: h, outputs_info=h0, n_steps=exprc.scalar("nf"))
    with pytest.raises(DTypeError, match="n_steps"):
        exprc.scan(lambda h: h, outputs_info=h0, n_steps=3.0)
    with pytest.raises(DTypeError, match="n_steps"):
        exprc.scan(lambda h: h, outputs_info=h0, n_steps=True)
    with pytest.raises(DTypeError, match="n_steps"):
        exprc.scan(lambda h: h, outputs_info=h0, n_steps=exprc.vector("nv", "int64"))
    with pytest.raises(ControlFlowError, match="taps"):
        exprc.scan(lambda a: a, sequences={"input": x, "taps": [0.5]})
    with pytest.raises(ControlFlowError, match="taps"):
        exprc.scan(lambda a: a, sequences={"input": x, "taps": ["0"]})
    with pytest.raises(ControlFlowError, match="taps"):
        exprc.scan(lambda a, b: a, sequences={"input": x, "taps": [0, 0]})
    with pytest.raises(ControlFlowError, match="taps"):
        exprc.scan(lambda a: a, outputs_info={"initial": x, "taps": [-1.0]}, n_steps=2)
    with pytest.raises(ControlFlowError, match="taps"):
        exprc.scan(lambda a: a, outputs_info={"initial": x, "taps": [1]}, n_steps=2)
    with pytest.raises(ControlFlowError, match="n_steps"):
        exprc.scan(lambda h: h + 1, outputs_info=h0)
    with pytest.raises(ControlFlowError, match="outputs"):
        exprc.scan(lambda xt, h: [h, h], sequences=x, outputs_info=h0)
    with pytest.raises(ShapeError, match=r"sequences\[0\]"):
        exprc.scan(lambda a: a, sequences=h0)
    with pytest.raises(DTypeError, match="until"):
        exprc.scan(lambda xt: (xt, exprc.until(xt)), sequences=x)
    with pytest.raises(ShapeError, match="until"):
        exprc.scan(lambda xt: (xt, exprc.until(x > 0)), sequences=x)
    # ifelse conditions
    with pytest.raises(ShapeError, match="condition"):
        exprc.ifelse(exprc.vector("cv", "bool"), h0, h0)
    with pytest.raises(DTypeError, match="condition"):
        exprc.ifelse(exprc.scalar("cf"), h0, h0)
    with pytest.raises(DTypeError, match="condition"):
        exprc.ifelse(1.5, h0, h0)
    with pytest.raises(ShapeError, match="output 1"):
        exprc.ifelse(exprc.scalar("cb", "bool"), [h0, x], [h0, h0])
    with pytest.raises(ControlFlowError, match="outputs"):
        exprc.ifelse(exprc.scalar("cb", "bool"), [h0, x], [h0])
    with pytest.raises(DTypeError, match="cond_fun"):
        exprc.while_loop(lambda v: v, lambda v: v + 1, h0)
    with pytest.raises(ControlFlowError, match="body_fun"):
        exprc.fori_loop(0, 3, lambda i, s: s[0], (h0, h0))


@pytest.mark.parametrize("be", BACKENDS)
def test_ifelse_condition_checked_at_call_time(be):
    # a 0-d condition from an expression whose value changes between calls
    x = exprc.vector("x")
    f = fn([x], exprc.ifelse(x.sum() > 0, x * 2, -x), be)
    for X in (np.array([1.0, -0.5]), np.array([-1.0, 0.5]), np.array([0.0])):
        check(f(X), X * 2 if X.sum() > 0 else -X)


# -- determinism -----------------------------------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import hashlib
    import exprc
    x, h0, w, c = exprc.matrix("x"), exprc.vector("h0"), exprc.matrix("w"), exprc.scalar("c", "bool")
    def step(a, b, h, f2, f1, w_):
        inner, _ = exprc.scan(lambda v, s: s + v, sequences=a, outputs_info=exprc.zeros(()))
        return [exprc.tanh(exprc.dot(h, w_) + b) + inner[-1], f2 + f1], exprc.until(h.sum() > 1e9)
    (h, f), _ = exprc.scan(step, sequences={"input": x, "taps": [-1, 0]},
                           outputs_info=[h0, dict(initial=x[:2], taps=[-2, -1])], non_sequences=w)
    out = exprc.ifelse(c, h.sum(axis=0), f[-1]) + exprc.fori_loop(0, 3, lambda i, v: v * 2, h0)
    fn = exprc.function([x, h0, w, c], [out, h], backend="c")
    print(hashlib.sha256(fn.source.encode()).hexdigest(), len(fn.source))
""")


def test_source_is_deterministic_across_processes():
    outs = []
    for seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.run([sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout.strip())
    assert outs[0] == outs[1]
    assert int(outs[0].split()[1]) > 0


# -- the gradient through scan: what the reverse loop keeps and computes ------------------------------
def _check_central_differences(grads, ref, vals, eps=1e-6):
    """Each of ``grads`` against central differences of the NumPy function ``ref`` at ``vals``."""
    for j, g in enumerate(grads):
        fd = np.zeros_like(vals[j])
        for idx in np.ndindex(vals[j].shape):
            up, dn = [v.copy() for v in vals], [v.copy() for v in vals]
            up[j][idx] += eps
            dn[j][idx] -= eps
            fd[idx] = (ref(*up) - ref(*dn)) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8, err_msg=f"gradient {j}")


def _rnn_loss(xs, h0, w, u, n, go_backwards):
    """sum(h_t^2) + sum(h_n) for h_t = tanh(x_t @ w + h_{t-1} @ u), in NumPy."""
    rows = xs[::-1][:n] if go_backwards else xs[:n]
    h, total = h0, 0.0
    for x in rows:
        h = np.tanh(x @ w + h @ u)
        total += np.sum(h * h)
    return total + np.sum(h)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize(("n", "go_backwards", "keep"), [(None, False, "all"), (None, True, "all"), (3, False, "all"),
                                                          (3, True, "all"), (0, False, "all"), (None, False, "last")])
def test_rnn_gradient_saves_products_and_sums_the_weight_gradient_after_the_loop(be, n, go_backwards, keep):
    """BPTT through h_t = tanh(x_t @ W + h_{t-1} @ U): the reverse loop reads the forward loop's
    products (one forward loop runs for the cost and the gradient: the optimizer merges the loop
    the gradient adds them to with the user's), and U's gradient, the sum of h_{t-1}^T @ g_t,
    is one product after it.  Its body keeps three products: dh = g @ U^T, dx = g @ W^T and x's
    part of W's gradient (6 before: h @ U and x @ W again, and h^T @ g).  Gradients match central
    differences, on zero steps, fewer steps than rows (the reverse loop reads the rows the forward
    one read: the first n, the last n going backwards), go_backwards and a keep='last' loop."""
    T, B, D, H = 5, 3, 4, 6
    xs, h0, w, u = exprc.tensor3("xs"), exprc.matrix("h0"), exprc.matrix("w"), exprc.matrix("u")
    kw = {} if n is None else {"n_steps": n}
    hs, _ = exprc.scan(lambda x, h, w, u: exprc.tanh(x @ w + h @ u), sequences=[xs], outputs_info=[h0],
                       non_sequences=[w, u], go_backwards=go_backwards, keep=keep, **kw)
    if keep == "last":
        loss = exprc.sum(hs * hs) + exprc.sum(hs)  # (the final state only: the reference's one step)
        steps = 1
    else:
        last = hs[-1] if n != 0 else h0
        loss = exprc.sum(hs * hs) + exprc.sum(last)
        steps = T if n is None else n
    args = [xs, h0, w, u]
    f = fn(args, [loss, *exprc.grad(loss, args)], be)
    r = rng(11)
    vals = [r.normal(size=(T, B, D)) * 0.5, r.normal(size=(B, H)) * 0.5, r.normal(size=(D, H)) * 0.5,
            r.normal(size=(H, H)) * 0.5]

    def ref(*v):
        if keep == "last":  # sum(h_n^2) + sum(h_n) of the whole loop
            rows = v[0][::-1] if go_backwards else v[0]
            h = v[1]
            for x in rows:
                h = np.tanh(x @ v[2] + h @ v[3])
            return np.sum(h * h) + np.sum(h)
        return _rnn_loss(*v, steps, go_backwards)

    got = f(*vals)
    assert got[0] == pytest.approx(ref(*vals), rel=1e-13)
    _check_central_differences(got[1:], ref, vals)
    loops = [m.arg("loop") for m in f.graph.nodes if m.op == "scan"]
    forward = [lp for lp in loops if not lp.name.endswith(".grad")]
    (back,) = [lp for lp in loops if lp.name.endswith(".grad")]
    # h and the two saved products; a keep='last' loop runs once more keeping every step.
    assert [lp.n_results for lp in forward] == ([1, 3] if keep == "last" else [3])
    from exprc.graph import toposort

    assert sum(m.op == "matmul" for m in toposort(list(back.outputs))) == 3
    assert back.keep.count("last") == 2  # the carried gradient of h and W's sum (not U's)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("case", ["hoisted_multiple", "whole_and_row", "product_and_row", "rnn_slices"])
def test_gradient_of_a_loop_invariant_read_whole_and_through_another_invariant(be, case):
    """A weight the body reads itself and through another loop invariant (2 w hoisted out of the body
    as an operand of its own, a row W[0] beside h @ W): each invariant's gradient is along its own
    paths; the caller's backpropagation carries 2 w's (W[0]'s) to w.  As total derivatives, the
    reverse step and the loop's operands counted those paths twice (d/dw of x w + 2 w over 3 steps
    came out 18.6 for 6.6; an RNN reading W whole and in column slices got W's gradient 2.0 off).
    Gradients against central differences of the loss (its forward values are the other tests')."""
    T, B, D = 3, 2, 3
    r = rng(21)
    if case == "hoisted_multiple":
        xs, h0, w = exprc.vector("xs"), exprc.vector("h0"), exprc.vector("w")
        args, vals = [xs, h0, w], [r.normal(size=T + 1), np.zeros(2), r.normal(size=2)]
        hs, _ = exprc.scan(lambda x, h, w: x * w + w * 2.0, sequences=[xs], outputs_info=[h0], non_sequences=[w],
                           n_steps=T)
    else:
        xs, h0, w = exprc.tensor3("xs"), exprc.matrix("h0"), exprc.matrix("w")
        args = [xs, h0, w]
        vals = [r.normal(size=(T, B, D)) * 0.5, r.normal(size=(B, D)) * 0.5,
                r.normal(size=(D, 2 * D if case == "rnn_slices" else D)) * 0.5]

        def step(x, h, w):
            if case == "whole_and_row":
                return exprc.tanh(h @ w + x) + w[0] * 0.5 + exprc.sin(w[1])
            if case == "product_and_row":
                return exprc.tanh(h @ w * w[0] + x)
            return exprc.tanh(h @ w[:, :D] + x) * exprc.sigmoid((h @ w)[:, D:])

        hs, _ = exprc.scan(step, sequences=[xs], outputs_info=[h0], non_sequences=[w])
    loss = exprc.sum(hs * hs) + exprc.sum(exprc.sin(hs))
    forward = fn(args, loss, be)
    got = fn(args, exprc.grad(loss, args, disconnected="zero"), be)(*vals)
    _check_central_differences(got, forward, vals)


_UNARY = [exprc.tanh, exprc.sin, lambda x: exprc.exp(-x * x), lambda x: exprc.log1p(exprc.exp(x)), exprc.sigmoid,
          lambda x: x * 0.7, lambda x: x * x * 0.3]
_BINARY = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b * 0.5]


def _random_scan(seed: int) -> tuple[list, list, object]:
    """A random scan and a loss of it: sequences of scalars or vectors with taps among -2..1, states
    (vectors, scalars) and a non-fed-back output, non-sequences, and a body of random smooth ops over
    all of them; or a batched RNN body of products h @ W, W's column slices, U, U's rows and a bias's
    halves.  go_backwards, keep='last' and n_steps at random.  Returns (inputs, values, loss)."""
    r = rng(seed)
    T, D = 4, 3
    pick = lambda xs: xs[int(r.integers(len(xs)))]

    def expr(leaves, depth):
        if depth == 0 or r.random() < 0.25:
            return pick(leaves)
        if r.random() < 0.45:
            return pick(_UNARY)(expr(leaves, depth - 1))
        return pick(_BINARY)(expr(leaves, depth - 1), expr(leaves, depth - 1))

    go_backwards, keep = bool(r.random() < 0.3), "last" if r.random() < 0.25 else "all"
    n_steps = int(r.integers(0, T + 1)) if r.random() < 0.3 else T
    if seed % 2:  # a batched RNN body
        B = 2
        ins = [exprc.tensor3("xs"), exprc.matrix("h"), exprc.matrix("W"), exprc.matrix("U"), exprc.vector("b")]
        vals = [r.normal(size=(T, B, D)) * 0.5, r.normal(size=(B, D)) * 0.5, r.normal(size=(D, 2 * D)) * 0.4,
                r.normal(size=(D, D)) * 0.4, r.normal(size=2 * D) * 0.3]

        def step(x, h, w, u, b):
            terms = [pick([lambda v: v @ w[:, :D], lambda v: v @ w[:, D:], lambda v: v @ u, lambda v: v * b[:D],
                           lambda v: v + b[D:], lambda v: (v @ w)[:, :D], lambda v: (v @ u) * u[0]])(v)
                     for v in (x, h, h)]
            return exprc.tanh(expr(terms, 3))

        outs, _ = exprc.scan(step, sequences=[ins[0]], outputs_info=[ins[1]], non_sequences=ins[2:],
                             go_backwards=go_backwards, keep=keep, n_steps=n_steps, return_list=True)
    else:
        ins, vals, seqs, infos, nonseqs = [], [], [], [], []
        for j in range(int(r.integers(0, 3))):
            vec = r.random() < 0.6
            x = exprc.matrix(f"s{j}") if vec else exprc.vector(f"s{j}")
            taps = sorted(r.choice([-2, -1, 0, 1], size=int(r.integers(1, 3)), replace=False).tolist())
            ins.append(x)
            vals.append(r.normal(size=(T + 3, D) if vec else (T + 3,)) * 0.5)
            seqs.append({"input": x, "taps": taps})
        kinds = []
        for k in range(int(r.integers(1, 3))):
            kinds.append(r.random() < 0.6)
            ins.append(exprc.vector(f"h{k}") if kinds[-1] else exprc.scalar(f"h{k}"))
            vals.append(np.asarray(r.normal(size=(D,) if kinds[-1] else ()) * 0.5))
            infos.append(ins[-1])
        extra = r.random() < 0.3 and keep == "all"
        for j in range(int(r.integers(0, 3))):
            vec = r.random() < 0.6
            nonseqs.append(exprc.vector(f"w{j}") if vec else exprc.scalar(f"w{j}"))
            ins.append(nonseqs[-1])
            vals.append(np.asarray(r.normal(size=(D,) if vec else ()) * 0.5))

        def step(*args):
            res = []
            for vec in kinds:
                e = expr(list(args), 3)
                res.append(exprc.tanh(e + exprc.zeros(D) if vec and e.ndim == 0 else exprc.sum(e) if not vec and e.ndim
                                      else e))
            return res + ([expr(list(args), 2) * 1.0] if extra else [])

        outs, _ = exprc.scan(step, sequences=seqs or None, outputs_info=infos + [None] * extra,
                             non_sequences=nonseqs or None, go_backwards=go_backwards, keep=keep, n_steps=n_steps,
                             return_list=True)
    loss = sum(exprc.sum(o * o) * 0.5 + exprc.sum(exprc.sin(o)) for o in outs)
    return ins, vals, loss


@pytest.mark.parametrize("be", BACKENDS)
def test_random_scans_against_central_differences(be):
    """A small gradient fuzzer of scan (the long version found the double-counted invariants of
    test_gradient_of_a_loop_invariant_read_whole_and_through_another_invariant): random scans'
    exprc.grad against central differences of their loss."""
    for seed in range(12):
        ins, vals, loss = _random_scan(seed)
        forward = fn(ins, loss, be)
        got = fn(ins, exprc.grad(loss, ins, disconnected="zero"), be)(*vals)
        _check_central_differences(got, forward, vals)


@pytest.mark.parametrize("be", BACKENDS)
def test_random_scans_second_derivatives(be):
    """Hessians through random scans (the reverse loop's own reverse loop) with respect to a small
    input, against central differences of the gradient."""
    checked = 0
    for seed in range(16):
        ins, vals, loss = _random_scan(seed)
        j = next((i for i in range(len(ins)) if 0 < vals[i].size <= 6), None)
        if j is None:
            continue
        grad = fn(ins, exprc.grad(loss, ins[j], disconnected="zero"), be)
        got = np.asarray(fn(ins, exprc.hessian(loss, ins[j], disconnected="zero"), be)(*vals))
        n = vals[j].size
        want = np.zeros((n, n))
        for i in range(n):
            up, dn = [v.copy() for v in vals], [v.copy() for v in vals]
            up[j].reshape(-1)[i] += 1e-5
            dn[j].reshape(-1)[i] -= 1e-5
            want[:, i] = ((grad(*up) - grad(*dn)) / 2e-5).reshape(-1)
        np.testing.assert_allclose(got.reshape(n, n), want, rtol=1e-4, atol=1e-6, err_msg=f"seed {seed}")
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("be", BACKENDS)
def test_gru_like_gradient_with_products_of_the_state_and_of_a_gated_state(be):
    """h_t = tanh(x_t @ W + (r * h) @ U), r = sigmoid(h @ R): R's gradient is summed after the loop
    (read only as state @ R), U's is accumulated in it (its left operand is not the state); both
    products are saved by the forward loop.  Gradients match central differences."""
    T, B, D, H = 4, 2, 3, 5
    xs, h0 = exprc.tensor3("xs"), exprc.matrix("h0")
    w, u, rw = exprc.matrix("w"), exprc.matrix("u"), exprc.matrix("rw")

    def step(x, h, w, u, rw):
        r = exprc.sigmoid(h @ rw)
        return exprc.tanh(x @ w + (r * h) @ u)

    hs, _ = exprc.scan(step, sequences=[xs], outputs_info=[h0], non_sequences=[w, u, rw])
    loss = exprc.sum(hs * hs)
    args = [xs, h0, w, u, rw]
    f = fn(args, [loss, *exprc.grad(loss, args)], be)
    r = rng(12)
    vals = [r.normal(size=(T, B, D)), r.normal(size=(B, H)), r.normal(size=(D, H)) * 0.5,
            r.normal(size=(H, H)) * 0.5, r.normal(size=(H, H)) * 0.5]

    def ref(xv, hv, wv, uv, rv):
        total = 0.0
        for x in xv:
            gate = 1 / (1 + np.exp(-(hv @ rv)))
            hv = np.tanh(x @ wv + (gate * hv) @ uv)
            total += np.sum(hv * hv)
        return total

    got = f(*vals)
    assert got[0] == pytest.approx(ref(*vals), rel=1e-13)
    _check_central_differences(got[1:], ref, vals)
    loops = [m.arg("loop") for m in f.graph.nodes if m.op == "scan"]
    assert [lp.n_results for lp in loops if not lp.name.endswith(".grad")] == [4]  # h and 3 saved products
