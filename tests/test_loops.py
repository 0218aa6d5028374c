"""The loop runtime (exprc/backends/loops.py) and the C backend's native stepper
(exprc/backends/c/looplib.py): the stepper runs every step after the first in one C call, gives
the Python loop's results bit for bit, is safe from several threads, and the body is optimized
like any function (stability rules apply inside it).  Semantics of scan/ifelse are in
tests/test_control.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import exprc
from exprc.backends import loops
from exprc.backends.c import loopkernel, looplib


def _rnn():
    X, W, h0 = exprc.matrix("X"), exprc.matrix("W"), exprc.vector("h0")
    hs, _ = exprc.scan(lambda x, h, W: exprc.tanh(x + h @ W), sequences=[X], outputs_info=[h0], non_sequences=[W])
    return [X, W, h0], hs


def _numpy_rnn(xv, wv, hv):
    out, h = [], hv
    for x in xv:
        h = np.tanh(x + h @ wv)
        out.append(h)
    return np.array(out).reshape(len(xv), -1)


@pytest.fixture
def stepper_calls(monkeypatch):
    calls = []
    original = looplib.CStepper.__call__

    def spy(self, runner, st, start, end):
        done = original(self, runner, st, start, end)
        calls.append((runner.loop.name, end, done))
        return done

    monkeypatch.setattr(looplib.CStepper, "__call__", spy)
    return calls


def test_native_stepper_runs_the_steps_and_matches_the_python_loop(stepper_calls, monkeypatch):
    ins, hs = _rnn()
    rng = np.random.default_rng(0)
    xv, wv, hv = rng.normal(size=(50, 8)), rng.normal(size=(8, 8)) * 0.4, rng.normal(size=8)
    native = exprc.function(ins, hs, backend="c")(xv, wv, hv)
    assert stepper_calls == [("scan", 50, 50)]  # steps 1..49 in one C call
    monkeypatch.setitem(loops.NATIVE, "c", lambda runner: None)  # the Python loop over the same kernel
    python = exprc.function(ins, hs * 1.0, backend="c")(xv, wv, hv)
    np.testing.assert_array_equal(native, python)
    np.testing.assert_allclose(native, _numpy_rnn(xv, wv, hv), rtol=1e-13, atol=1e-15)


def test_stepper_handles_rings_taps_strides_and_until(stepper_calls):
    x = exprc.vector("x")
    a0 = exprc.vector("a0")
    fib, _ = exprc.scan(lambda a, b: a + b, outputs_info=[{"initial": a0, "taps": [-2, -1]}], n_steps=30)
    last = exprc.fori_loop(0, 40, lambda i, v: v * 0.5 + exprc.astype(i, "float64"), exprc.scalar("s"))
    def step(xm, xp, acc):
        new = acc + xm * xp
        return new, exprc.until(new > 50)

    sums, _ = exprc.scan(step, sequences=[{"input": x, "taps": [-1, 1]}], outputs_info=[exprc.constant(0.0)])
    s = next(n for n in exprc.graph.graph_inputs([last]) if n.name == "s")
    f = exprc.function([a0, x, s], [fib, sums, last], backend="c")
    xs = np.arange(40.0)[::2]  # a strided sequence
    got_fib, got_sums, got_last = f(np.array([0.0, 1.0]), xs, 3.0)
    want = [0.0, 1.0]
    for _ in range(30):
        want.append(want[-1] + want[-2])
    np.testing.assert_array_equal(got_fib, want[2:])
    acc, rows = 0.0, []
    for t in range(len(xs) - 2):
        acc += xs[t] * xs[t + 2]
        rows.append(acc)
        if acc > 50:
            break
    np.testing.assert_array_equal(got_sums, rows)
    v = 3.0
    for i in range(40):
        v = v * 0.5 + i
    assert got_last == v
    # (the fori_loop's body is elementwise: it runs with the loop inside, not through the stepper)
    assert sorted(name for name, _, _ in stepper_calls) == ["scan", "scan"]


def test_loop_from_several_threads():
    ins, hs = _rnn()
    f = exprc.function(ins, hs, backend="c")
    rng = np.random.default_rng(1)
    cases = [(rng.normal(size=(n, 6)), rng.normal(size=(6, 6)) * 0.3, rng.normal(size=6)) for n in (20, 31, 20, 7)]
    errors = []

    def work(case):
        try:
            for _ in range(20):
                np.testing.assert_allclose(f(*case), _numpy_rnn(*case), rtol=1e-13, atol=1e-15)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_body_is_optimized_and_compiles_once_for_any_length():
    x, h0 = exprc.vector("x"), exprc.scalar("h0")
    hs, _ = exprc.scan(lambda xt, h: h + exprc.log(1 + exprc.exp(xt)), sequences=[x], outputs_info=[h0])
    f = exprc.function([x, h0], hs, backend="c")
    body = next(r for n, r in f._kernel.runners.items() if n.op == "scan").kernel
    assert "log1p" in body.source  # softplus rewritten in the body: exact for large x
    big = np.array([800.0, -800.0, 1e-20])
    np.testing.assert_allclose(f(big, 0.0), np.cumsum(np.logaddexp(0, big)), rtol=1e-15)
    entries = {body.cache_entry}
    for n in (1, 10, 1000):
        g = exprc.function([x, h0], hs, backend="c")
        g(np.zeros(n), 0.0)
        entries.add(next(r for m, r in g._kernel.runners.items() if m.op == "scan").kernel.cache_entry)
    assert len(entries) == 1  # one body library whatever the number of steps


@pytest.fixture
def whole_calls(monkeypatch):
    calls = []
    original = loopkernel.ElementwiseLoop.__call__

    def spy(self, runner, st):
        done = original(self, runner, st)
        calls.append(done)
        return done

    monkeypatch.setattr(loopkernel.ElementwiseLoop, "__call__", spy)
    return calls


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_elementwise_body_runs_with_the_loop_inside(whole_calls, stepper_calls, monkeypatch, dtype):
    """States, a sequence, an invariant, a scalar and a counter: element i's recurrence is
    independent of the others, so the C function loops over elements outside and steps inside.
    Arithmetic only: the result equals the stepper's (and NumPy's loop) bit for bit."""
    X, s0, a, c = exprc.matrix("X", dtype), exprc.vector("s0", dtype), exprc.vector("a", dtype), exprc.scalar("c", dtype)

    def step(x, s, k, a, c):
        return s * a + x * c - s * a * 0.125, k + 1, s - x

    (ss, ks, ds), _ = exprc.scan(step, sequences=[X], outputs_info=[s0, exprc.constant(0), None], non_sequences=[a, c])
    last = exprc.fori_loop(0, 7, lambda i, v: v * a + c, s0)
    ins = [X, s0, a, c]
    rng = np.random.default_rng(2)
    vals = [rng.normal(size=(25, 5)).astype(dtype), rng.normal(size=5).astype(dtype),
            rng.uniform(0.5, 1, 5).astype(dtype), np.asarray(0.3, dtype)]
    got = exprc.function(ins, [ss, ks, ds, last], backend="c")(*vals)
    assert whole_calls == [25, 7] and stepper_calls == []
    xv, sv, av, cv = vals
    want_s, want_d, s = [], [], sv
    for x in xv:
        want_d.append(s - x)
        s = s * av + x * cv - s * av * dtype_scalar(dtype, 0.125)
        want_s.append(s)
    np.testing.assert_array_equal(got[0], np.array(want_s))
    np.testing.assert_array_equal(got[1], np.arange(1, 26))
    np.testing.assert_array_equal(got[2], np.array(want_d))
    v = sv
    for _ in range(7):
        v = v * av + cv
    np.testing.assert_array_equal(got[3], v)
    monkeypatch.setitem(loops.WHOLE, "c", lambda loop, cfg: None)  # the stepper over the same body
    again = exprc.function(ins, [ss * 1, ks, ds, last * 1], backend="c")(*vals)
    for g, h in zip(got, again):
        np.testing.assert_array_equal(g, h)


def dtype_scalar(dtype, v):
    return np.asarray(v, dtype)[()]


def test_elementwise_loop_declines_what_it_cannot_take(whole_calls):
    """A non-contiguous invariant or operands of different shapes go to the stepper (same results)."""
    s0, a = exprc.vector("s0"), exprc.vector("a")
    ss, _ = exprc.scan(lambda s, a: s * a + 1, outputs_info=[s0], non_sequences=[a], n_steps=6)
    f = exprc.function([s0, a], ss, backend="c")
    av = np.linspace(0.1, 0.9, 10)[::2]  # strided
    want, s = [], np.ones(5)
    for _ in range(6):
        s = s * av + 1
        want.append(s)
    np.testing.assert_array_equal(f(np.ones(5), av), np.array(want))
    assert whole_calls == [None]
    np.testing.assert_array_equal(f(np.ones(5), np.ascontiguousarray(av)), np.array(want))
    assert whole_calls == [None, 6]
    none, _ = exprc.scan(lambda s, a: s * a + 1, outputs_info=[s0], non_sequences=[a], n_steps=0)
    assert exprc.function([s0, a], none, backend="c")(np.ones(5), np.ascontiguousarray(av)).shape == (0, 5)
    assert whole_calls == [None, 6]  # zero steps: nothing to run, the runner returns the empty rows


@pytest.mark.parametrize("be", ["numpy", "c"])
def test_while_loop_never_runs_a_raising_body_on_a_false_condition(be):
    """A body that indexes with the state is an ifelse branch: the last step (condition false)
    does not evaluate x[len(x)], which would raise."""
    x = exprc.vector("x")
    i, total = exprc.while_loop(lambda s: s[0] < exprc.shape(x)[0], lambda s: (s[0] + 1, s[1] + x[s[0]]),
                                (exprc.constant(0), exprc.constant(0.0)))
    f = exprc.function([x], [i, total], backend=be)
    for n in (0, 1, 5):
        xv = np.arange(n) * 1.5
        got = f(xv)
        assert int(got[0]) == n
        assert float(got[1]) == xv.sum()


@pytest.mark.parametrize("native", [True, False])
def test_until_without_a_bound_grows_its_rows(native, monkeypatch):
    """until with neither n_steps nor sequences: rows are allocated 1024 at a time and doubled (the
    bound is 2**62), natively in chunks or in the Python loop."""
    if not native:
        monkeypatch.setitem(loops.NATIVE, "c", lambda runner: None)
    h0, lim = exprc.scalar("h0"), exprc.scalar("lim")

    def step(h):
        new = h + 1.0
        return new, exprc.until(new >= lim)

    res, _ = exprc.scan(step, outputs_info=h0)
    f = exprc.function([h0, lim], res, backend="c")
    for limit in (3.0, 1024.0, 1025.0, 5000.0):
        got = f(0.0, limit)
        np.testing.assert_array_equal(got, np.arange(1.0, limit + 1))


def test_theano_scan_keywords():
    """strict=True refuses variables the function closes over (listed in non_sequences they are
    fine); truncate_gradient other than -1 says it is not implemented; mode/profile/allow_gc pass."""
    x, w, h0 = exprc.vector("x"), exprc.scalar("w"), exprc.scalar("h0")
    with pytest.raises(exprc.errors.ControlFlowError, match="strict=True.*'?w"):
        exprc.scan(lambda xt, h: h * w + xt, sequences=[x], outputs_info=[h0], strict=True)
    hs, _ = exprc.scan(lambda xt, h, w: h * w + xt, sequences=[x], outputs_info=[h0], non_sequences=[w],
                       strict=True, mode="FAST_RUN", profile=False, allow_gc=True)
    np.testing.assert_array_equal(exprc.function([x, w, h0], hs)(np.ones(3), 2.0, 0.0), [1.0, 3.0, 7.0])
    with pytest.raises(NotImplementedError, match="truncate_gradient"):
        exprc.scan(lambda xt, h: h + xt, sequences=[x], outputs_info=[h0], truncate_gradient=5)


def test_substituting_a_loop_operand_retypes_its_results_and_loops_pickle_after_running():
    import pickle

    x = exprc.vector("x", shape=(5,))
    ys, _ = exprc.scan(lambda a: a * 2, sequences=x)
    y = exprc.vector("y", shape=(7,))
    (z,) = exprc.graph.substitute([ys], {x: y})
    assert z.type.shape == (7,)
    assert exprc.function([y], z.sum() + exprc.shape(z)[0])(np.ones(7)) == 21.0
    loop = ys.inputs[0].arg("loop")
    exprc.ops.OPS["scan"].impl(np.int64(-1), np.ones(5), loop=loop)  # caches a NumPy kernel on the loop
    again = pickle.loads(pickle.dumps(ys))
    np.testing.assert_array_equal(exprc.function([again.inputs[0].inputs[1]], again)(np.arange(5.0)),
                                  np.arange(5.0) * 2)


@pytest.mark.parametrize("be", ["numpy", "c"])
def test_gradient_through_one_step(be):
    x, h0 = exprc.vector("x"), exprc.scalar("h0")
    hs, _ = exprc.scan(lambda xt, h: h * xt + xt ** 2, sequences=[x], outputs_info=[h0])
    gx, gh = exprc.grad(exprc.sum(hs), [x, h0])
    got = exprc.function([x, h0], [gx, gh], backend=be)(np.array([3.0]), 2.0)
    np.testing.assert_array_equal(got[0], [2.0 + 6.0])
    assert got[1] == 3.0


def _lstm_numpy(xv, wv, uv, bv, H):
    def sig(v):
        return 1 / (1 + np.exp(-v))

    h = np.zeros((xv.shape[1], H))
    c = np.zeros_like(h)
    total = 0.0
    for x in xv:
        z = x @ wv + h @ uv + bv
        i, f, o, g = sig(z[:, :H]), sig(z[:, H:2 * H]), sig(z[:, 2 * H:3 * H]), np.tanh(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        total += np.sum(h ** 2)
    return total


def test_lstm_gradient_with_static_shapes_runs_both_loops_natively(stepper_calls):
    """The gate slices of z = x@W + h@U + b move onto the weights' slices in the reverse loop
    (static shapes: no operand can be a broadcast), whose gradients it accumulates; the weights'
    own gradients are assembled once after it.  No scatter is left in the reverse body, so it
    runs in the C stepper.  Gradients match central differences."""
    T, B, H = 6, 3, 4
    X = exprc.tensor3("X", shape=(T, B, H))
    W, U, b = exprc.matrix("W", shape=(H, 4 * H)), exprc.matrix("U", shape=(H, 4 * H)), exprc.vector("b", shape=(4 * H,))

    def step(x, h, c, W, U, b):
        z = x @ W + h @ U + b
        i, f = exprc.sigmoid(z[:, :H]), exprc.sigmoid(z[:, H:2 * H])
        o, g = exprc.sigmoid(z[:, 2 * H:3 * H]), exprc.tanh(z[:, 3 * H:])
        c2 = f * c + i * g
        return o * exprc.tanh(c2), c2

    (hs, _), _ = exprc.scan(step, sequences=[X], outputs_info=[exprc.zeros((B, H)), exprc.zeros((B, H))],
                            non_sequences=[W, U, b])
    loss = exprc.sum(hs ** 2)
    f = exprc.function([X, W, U, b], [loss, *exprc.grad(loss, [X, W, U, b])], backend="c")
    rng = np.random.default_rng(4)
    vals = [rng.normal(size=(T, B, H)), rng.normal(size=(H, 4 * H)) * 0.4, rng.normal(size=(H, 4 * H)) * 0.4,
            rng.normal(size=4 * H) * 0.4]
    got = f(*vals)
    assert sorted(name for name, _, done in stepper_calls if done is not None) == ["scan", "scan.grad"]
    assert got[0] == pytest.approx(_lstm_numpy(*vals, H), rel=1e-13)
    eps = 1e-6
    for j in range(4):
        fd = np.zeros_like(vals[j])
        for idx in np.ndindex(vals[j].shape):
            up = [v.copy() for v in vals]
            dn = [v.copy() for v in vals]
            up[j][idx] += eps
            dn[j][idx] -= eps
            fd[idx] = (_lstm_numpy(*up, H) - _lstm_numpy(*dn, H)) / (2 * eps)
        np.testing.assert_allclose(got[1 + j], fd, rtol=1e-6, atol=1e-8)


def test_push_slices_keeps_values_and_leaves_possible_broadcasts_alone():
    from exprc.control import _push_slices

    A, B = exprc.matrix("A", shape=(3, 4)), exprc.matrix("B", shape=(4, 6))
    row, col = exprc.matrix("row", shape=(1, 6)), exprc.matrix("any")
    z = exprc.exp(A @ B + row)
    (pushed,) = _push_slices([z[1:, 2:5]])
    ops = [n.op for n in exprc.graph.toposort([pushed])]
    # A[1:], B[:, 2:5] and row[:, 2:5] (its axis 0 is a broadcast of size 1: kept whole)
    assert ops.count("getitem") == 3 and pushed.op == "exp"
    assert any(n.op == "getitem" and n.inputs[0] is row and n.type.shape == (1, 3)
               for n in exprc.graph.toposort([pushed]))
    vals = {A: np.arange(12.0).reshape(3, 4) / 10, B: np.arange(24.0).reshape(4, 6) / 10, row: np.ones((1, 6))}
    np.testing.assert_allclose(pushed.eval(vals), z[1:, 2:5].eval(vals), rtol=1e-15)
    unknown = (A @ B + col)[:, 2:5]  # col's size is not static: it could be a broadcast (1 column)
    assert _push_slices([unknown])[0] is unknown
