"""Shared variables, updates= and givens=, written as a library using exprc would (public API only)."""

import sys

import numpy as np
import pytest

import exprc
from exprc.errors import DTypeError, ExprcError, MissingInputError, ShapeError, UpdateError

BACKENDS = ["numpy", "c"]


def test_value_is_copied_unless_borrowed():
    data = np.arange(3.0)
    s = exprc.shared(data, "s")
    data[0] = 99.0
    assert s.get_value()[0] == 0.0  # copied in
    v = s.get_value()
    v[1] = 99.0
    assert s.get_value()[1] == 1.0  # copied out
    assert s.get_value(borrow=True) is s.get_value(borrow=True)
    b = np.zeros(3)
    s.set_value(b, borrow=True)
    assert s.get_value(borrow=True) is b
    s.set_value(b)
    assert s.get_value(borrow=True) is not b
    t = exprc.shared(data, borrow=True)
    assert t.get_value(borrow=True) is data


def test_types_and_set_value_checks():
    assert exprc.shared(1.5).dtype == "float64" and exprc.shared(1.5).ndim == 0
    assert exprc.shared([1, 2]).dtype == "int64"
    assert exprc.shared(np.zeros(2, np.float32)).dtype == "float32"
    assert exprc.shared([1, 2], dtype="float32").dtype == "float32"
    s = exprc.shared(np.zeros((2, 3), np.float32), "w")
    assert isinstance(s, exprc.SharedVariable) and isinstance(s, exprc.Node)
    assert s.name == "w" and s.type.shape == (None, None)
    s.set_value(np.ones((4, 5), np.int32))  # safe cast; sizes are free
    assert s.get_value().dtype == np.float32 and s.get_value().shape == (4, 5)
    s.set_value([[0.5]])  # Python floats are weak
    with pytest.raises(DTypeError, match="'w'.*float32.*float64"):
        s.set_value(np.ones((1, 1)))
    with pytest.raises(ShapeError, match="'w'.*ndim 2"):
        s.set_value(np.ones(3, np.float32))
    fixed = exprc.shared(np.zeros((2, 3)), "fixed", shape=(2, None))
    assert fixed.type.shape == (2, None)
    fixed.set_value(np.zeros((2, 7)))
    with pytest.raises(ShapeError, match="fixed"):
        fixed.set_value(np.zeros((3, 3)))
    with pytest.raises(TypeError):
        exprc.shared(exprc.vector("x"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_functions_read_shared_values_without_arguments(backend):
    w = exprc.shared(np.array([1.0, 2.0, 3.0]), "w")
    x = exprc.vector("x")
    f = exprc.function([x], exprc.sum(w * x), backend=backend)
    assert f.inputs == (x,)
    assert f(np.ones(3)) == 6.0
    w.set_value([0.0, 0.0, 1.0])
    for _ in range(3):  # the C dispatcher attaches on the second call: check it sees the new values
        assert f(np.ones(3)) == 1.0
    w.set_value([2.0, 2.0, 2.0, 2.0])
    assert f(np.ones(4)) == 8.0
    g = exprc.function([], w * 2, backend=backend)  # no inputs at all
    np.testing.assert_array_equal(g(), [4.0] * 4)
    np.testing.assert_array_equal((w + 1).eval(), [3.0] * 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_updates_use_old_values_and_install_all(backend):
    a = exprc.shared(np.array([1.0, 2.0]), "a")
    b = exprc.shared(np.array([10.0, 20.0]), "b")
    n = exprc.shared(np.int64(0), "n")
    x = exprc.vector("x")
    # swap a and b, count calls, return outputs computed from the old values
    f = exprc.function([x], [a + x, b], updates=[(a, b), (b, a + x), (n, n + 1)], backend=backend)
    for step in range(4):
        old_a, old_b = a.get_value(), b.get_value()
        out_a, out_b = f(np.array([0.5, 0.5]))
        np.testing.assert_array_equal(out_a, old_a + 0.5)
        np.testing.assert_array_equal(out_b, old_b)
        np.testing.assert_array_equal(a.get_value(), old_b)
        np.testing.assert_array_equal(b.get_value(), old_a + 0.5)
        assert int(n.get_value()) == step + 1
    assert [v for v, _ in f.updates] == [a, b, n]


@pytest.mark.parametrize("backend", BACKENDS)
def test_updates_as_dict_single_output_and_out(backend):
    s = exprc.shared(np.zeros(3, np.float32), "s")
    x = exprc.vector("x", "float32")
    f = exprc.function([x], s * 2, updates={s: s + x}, backend=backend)
    assert f(np.ones(3, np.float32)).tolist() == [0.0, 0.0, 0.0]
    assert f(np.ones(3, np.float32)).tolist() == [2.0, 2.0, 2.0]
    dst = np.empty(3, np.float32)
    assert f(np.ones(3, np.float32), out=dst) is dst
    assert dst.tolist() == [4.0, 4.0, 4.0] and s.get_value().tolist() == [3.0, 3.0, 3.0]
    g = exprc.function([x], [], updates=[(s, s * 0)], backend=backend)  # nothing returned
    assert g(np.ones(3, np.float32)) == [] and s.get_value().tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_returned_arrays_never_alias_shared_values(backend):
    s = exprc.shared(np.zeros(2), "s")
    t = exprc.shared(np.zeros(2), "t")
    x = exprc.vector("x")
    new = s + x
    f = exprc.function([x], new, updates=[(s, new), (t, new)], backend=backend)
    for _ in range(3):
        out = f(np.ones(2))
        out[0] = -1.0
        assert s.get_value()[0] >= 1.0 and t.get_value()[0] >= 1.0
        s.get_value(borrow=True)[1] = 5.0  # writing into one value must not change the other
        assert t.get_value()[1] != 5.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_borrowed_values_are_never_overwritten(backend):
    s = exprc.shared(np.zeros(4), "s")
    f = exprc.function([], [], updates=[(s, s + 1.0)], backend=backend)
    held = [s.get_value(borrow=True)]
    for i in range(1, 5):
        f()
        held.append(s.get_value(borrow=True))
    for i, v in enumerate(held):
        np.testing.assert_array_equal(v, np.full(4, float(i)))


def test_big_updates_reuse_a_spare_buffer_safely():
    # Values of 16 MiB and more are written into a spare buffer (the previous value) instead of a
    # fresh array; a spare that someone still holds is never written into.
    n = (16 << 20) // 8 + 1
    s = exprc.shared(np.zeros(n), "big")
    x = exprc.scalar("x")
    f = exprc.function([x], [], updates=[(s, s + x)], backend="c")
    f(1.0)
    first = s.get_value(borrow=True)
    f(1.0)
    f(1.0)  # the old value `first` would be the spare now, but we hold it
    assert first[0] == 1.0 and first[-1] == 1.0
    del first
    for _ in range(3):
        f(1.0)
    v = s.get_value(borrow=True)
    assert v[0] == 6.0 and v[-1] == 6.0 and v.shape == (n,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_errors_name_the_variable(backend):
    w = exprc.shared(np.zeros(3, np.float32), "weights")
    x = exprc.vector("x")
    m = exprc.matrix("m", "float32")
    with pytest.raises(DTypeError, match="'weights' is float32 but its update is float64"):
        exprc.function([x], [], updates=[(w, w + x)], backend=backend)
    with pytest.raises(ShapeError, match="'weights' has ndim 1"):
        exprc.function([m], [], updates=[(w, w + m)], backend=backend)
    with pytest.raises(UpdateError, match="'weights' is updated twice"):
        exprc.function([], [], updates=[(w, w * 2), (w, w * 3)], backend=backend)
    with pytest.raises(TypeError, match="only shared variables"):
        exprc.function([x], [], updates=[(x, x + 1)], backend=backend)
    with pytest.raises(TypeError, match="pair"):
        exprc.function([x], [], updates=[w], backend=backend)
    fixed = exprc.shared(np.zeros(3), "fixed", shape=(3,))
    with pytest.raises(ShapeError, match="'fixed' has shape \\(3,\\)"):
        exprc.function([], [], updates=[(fixed, exprc.constant(np.zeros(4)) + fixed[0])], backend=backend)
    # A size known only at call time: checked at call time, and then nothing is written.
    v = exprc.vector("v", "float32")
    other = exprc.shared(np.zeros(3, np.float32), "other")
    f = exprc.function([v], [], updates=[(other, other + 1), (w, v * 2)], backend=backend)
    f(np.ones(3, np.float32))
    with pytest.raises(ShapeError, match="'weights' has shape \\(4,\\).*\\(3,\\); nothing was updated"):
        f(np.ones(4, np.float32))
    assert other.get_value().tolist() == [1.0] * 3 and w.get_value().tolist() == [2.0] * 3
    assert issubclass(UpdateError, ExprcError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_givens(backend):
    x, y = exprc.vector("x"), exprc.vector("y")
    f = exprc.function([y], x * 2, givens={x: y + 1}, backend=backend)
    np.testing.assert_array_equal(f([1.0, 2.0]), [4.0, 6.0])
    # replace a shared variable by an input (and givens apply to updates as well)
    s = exprc.shared(np.zeros(2), "s")
    c = exprc.shared(np.zeros(2), "c")
    g = exprc.function([y], s + 1, givens=[(s, y)], updates=[(c, c + s)], backend=backend)
    np.testing.assert_array_equal(g([5.0, 6.0]), [6.0, 7.0])
    np.testing.assert_array_equal(c.get_value(), [5.0, 6.0])
    # minibatches of a data set held in a shared variable
    data = exprc.shared(np.arange(12.0).reshape(6, 2), "data")
    batch = exprc.matrix("batch")
    h = exprc.function([], exprc.sum(batch, axis=0), givens={batch: data[2:4]}, backend=backend)
    np.testing.assert_array_equal(h(), [10.0, 12.0])
    with pytest.raises(DTypeError, match="'x' is float64\\[\\?\\] but its replacement is int64"):
        exprc.function([y], x * 2, givens={x: exprc.vector("i", "int64")}, backend=backend)
    with pytest.raises(TypeError, match="givens"):
        exprc.function([y], x * 2, givens={x * 2: y}, backend=backend)
    with pytest.raises(MissingInputError):
        exprc.function([], x * 2, givens={x: y}, backend=backend)


def test_distinct_updates_are_distinct_functions():
    s = exprc.shared(np.zeros(1), "s")
    inc = exprc.function([], s, updates=[(s, s + 1)])
    dec = exprc.function([], s, updates=[(s, s - 1)])
    read = exprc.function([], s)
    inc(), inc(), dec()
    assert read()[0] == 1.0


def test_updates_write_into_the_spare_buffer_and_allocate_nothing():
    # From the second call on the C dispatcher writes each new value into the variable's spare
    # buffer (its value before the current one) and swaps: two buffers alternate.
    s = exprc.shared(np.zeros(5), "s")
    m = exprc.shared(np.zeros((2, 3), dtype=np.float32), "m")
    x = exprc.vector("x")
    f = exprc.function([x], exprc.sum(s), updates=[(s, s + x), (m, m * 0.5 + 1.0)], backend="c")
    seen_s, seen_m = set(), set()
    for i in range(1, 9):
        total = f(np.ones(5))
        assert float(total) == 5.0 * (i - 1)  # outputs from the old values
        np.testing.assert_array_equal(s.get_value(), np.full(5, float(i)))
        seen_s.add(s.get_value(borrow=True).__array_interface__["data"][0])
        seen_m.add(m.get_value(borrow=True).__array_interface__["data"][0])
    if f._fast is None:
        pytest.skip("no C dispatcher on this machine")
    want = np.zeros((2, 3), np.float32)
    for _ in range(8):
        want = want * np.float32(0.5) + np.float32(1.0)
    np.testing.assert_array_equal(m.get_value(), want)
    assert len(seen_s) <= 3 and len(seen_m) <= 3  # first fresh arrays, then two buffers alternate


def test_the_c_update_path_keeps_every_guarantee():
    s = exprc.shared(np.zeros(4), "s")
    x = exprc.vector("x")
    f = exprc.function([x], [], updates=[(s, s + x)], backend="c")
    for _ in range(3):
        f(np.ones(4))
    held = s.get_value(borrow=True)  # held values are never written into
    for _ in range(4):
        f(np.ones(4))
    np.testing.assert_array_equal(held, np.full(4, 3.0))
    np.testing.assert_array_equal(s.get_value(), np.full(4, 7.0))
    g = exprc.function([x], [], updates=[(s, x * 2.0)], backend="c")
    g(np.ones(4))
    g(np.ones(4))
    for _ in range(3):  # an update of another shape installs nothing, on either call path
        with pytest.raises(ShapeError, match="'s'"):
            g(np.ones(5))
        np.testing.assert_array_equal(s.get_value(), np.full(4, 2.0))
    s.set_value(np.zeros(6))  # a new size: new plans, same semantics
    for _ in range(3):
        f(np.ones(6))
    np.testing.assert_array_equal(s.get_value(), np.full(6, 3.0))


@pytest.mark.parametrize("path", ["dispatcher", "python"])
def test_a_borrowed_view_is_never_written_into(path, monkeypatch):
    # set_value(view, borrow=True): the caller holds the memory through the view's base, not the
    # view, so the variable must not reuse the view as a spare buffer for a later update.
    monkeypatch.setattr(sys.modules["exprc.shared"], "SWAP_BYTES", 0)  # the Python path swaps every value
    s = exprc.shared(np.zeros(4), "s")
    x = exprc.vector("x")
    f = exprc.function([x], [], updates=[(s, s + x)], backend="c")
    one = np.ones(4) if path == "dispatcher" else [1.0] * 4  # a list: the dispatcher passes
    for _ in range(3):
        f(one)
    big = np.zeros((3, 4))
    s.set_value(big[1], borrow=True)
    for _ in range(4):
        f(one)
    np.testing.assert_array_equal(big, np.zeros((3, 4)))
    np.testing.assert_array_equal(s.get_value(), np.full(4, 4.0))


def test_update_edge_cases_on_the_c_path():
    # 0-d and float32 variables; the argument is the updated variable's own (borrowed) value;
    # two variables sharing one borrowed array; returned outputs keep their values.
    s0 = exprc.shared(0.0, "s0")
    m = exprc.shared(np.zeros((2, 3), np.float32), "m")
    x = exprc.scalar("x")
    f = exprc.function([x], s0 * 1.0, updates=[(s0, s0 + x), (m, m + x.astype("float32"))], backend="c")
    for i in range(6):
        assert float(f(1.0)) == i
    assert s0.get_value() == 6.0 and m.get_value().tolist() == [[6.0] * 3] * 2
    v, w = exprc.shared(np.zeros(4), "v"), exprc.shared(np.zeros(4), "w")
    y = exprc.vector("y")
    g = exprc.function([y], [v + y], updates=[(v, v * 2.0 + y), (w, w + v)], backend="c")
    held, want_v, want_w = [], np.zeros(4), np.zeros(4)
    for i in range(8):
        arg = v.get_value(borrow=True) if i % 2 else np.ones(4)
        before = arg.copy()
        out = g(arg)[0]
        held.append((out, out.copy()))
        np.testing.assert_array_equal(arg, before)
        np.testing.assert_array_equal(out, want_v + before)
        want_v, want_w = want_v * 2.0 + before, want_w + want_v
        np.testing.assert_array_equal(v.get_value(), want_v)
        np.testing.assert_array_equal(w.get_value(), want_w)
        if i == 3:  # two variables sharing one borrowed array
            want_v, want_w = np.arange(4.0), np.arange(4.0)
            both = np.arange(4.0)
            v.set_value(both, borrow=True)
            w.set_value(both, borrow=True)
            del both
    for out, copy in held:
        np.testing.assert_array_equal(out, copy)


def test_default_update_applies_unless_updates_name_the_variable():
    # Theano's default_update: every function reading the variable installs it, unless its updates=
    # names the variable (an update to itself turns it off); explicit inputs (eval) are left alone.
    w = exprc.shared(np.zeros(2), "w")
    w.default_update = w + 1.0
    f = exprc.function([], w * 2)
    f()
    np.testing.assert_array_equal(f(), [2.0, 2.0])
    np.testing.assert_array_equal(w.get_value(), [2.0, 2.0])
    exprc.function([], w * 2, updates=[(w, w * 10)])()
    np.testing.assert_array_equal(w.get_value(), [20.0, 20.0])
    exprc.function([], w * 2, updates=[(w, w)])()
    np.testing.assert_array_equal(w.get_value(), [20.0, 20.0])
    (w * 2).eval()
    np.testing.assert_array_equal(w.get_value(), [20.0, 20.0])
    with pytest.raises(exprc.errors.DTypeError, match="update is int64"):
        w.default_update = exprc.vector("q", "int64")
    w.default_update = None  # for functions compiled from now on (f keeps the update it was built with)
    exprc.function([], w * 2)()
    np.testing.assert_array_equal(w.get_value(), [20.0, 20.0])
    f()
    np.testing.assert_array_equal(w.get_value(), [21.0, 21.0])


# -- sparse updates where the value lies -----------------------------------------------------------
def _address(var):
    return var.get_value(borrow=True).__array_interface__["data"][0]


def test_sparse_update_runs_in_place_and_matches_numpy():
    """inc_subtensor(W[idx], v) as W's update (and the SGD step the sparse_update rule makes of
    W - lr * grad) changes W where it lies, with np.add.at's values; outputs read the old W."""
    rng = np.random.default_rng(5)
    W0 = rng.standard_normal((40, 6))
    W = exprc.shared(W0.copy(), "W")
    idx, g = exprc.vector("idx", "int64"), exprc.matrix("G")
    loss = exprc.sum(W[idx] * g)
    add = exprc.function([idx, g], exprc.sum(W), updates={W: exprc.inc_subtensor(W[idx], g)}, backend="c")
    sgd = exprc.function([idx, g], loss, updates={W: W - 0.25 * exprc.grad(loss, W)}, backend="c")
    assert add._in_place and sgd._in_place
    ref = W0.copy()
    where = _address(W)
    for seed in range(6):
        r = np.random.default_rng(seed)
        I, G = r.integers(-40, 40, 9), r.standard_normal((9, 6))
        I[3] = I[0]  # a repeated row accumulates
        before = W.get_value()
        assert add(I, G) == pytest.approx(before.sum(), rel=1e-15)  # (the old W)
        np.add.at(ref, I, G)
        np.testing.assert_array_equal(W.get_value(), ref)
        assert sgd(I, G) == pytest.approx(np.sum(ref[I] * G), rel=1e-14)
        np.add.at(ref, I, -0.25 * G)  # (the rule adds each row's step in turn, as np.add.at does)
        np.testing.assert_allclose(W.get_value(), ref, rtol=1e-15, atol=1e-15)
        ref = W.get_value()
    assert _address(W) == where  # never copied


def test_sparse_update_never_changes_an_array_someone_holds():
    """A value handed out with borrow=True (or set with borrow=True and still held) is not
    written: the update then goes to a new array, as every other update does."""
    W = exprc.shared(np.zeros((5, 2)), "W")
    idx = exprc.vector("idx", "int64")
    f = exprc.function([idx], [], updates={W: exprc.inc_subtensor(W[idx], 1.0)}, backend="c")
    held = W.get_value(borrow=True)
    f(np.array([0, 0, 4]))
    assert not held.any()
    np.testing.assert_array_equal(W.get_value()[:, 0], [2, 0, 0, 0, 1])
    mine = np.zeros((5, 2))
    W.set_value(mine, borrow=True)
    f(np.array([1]))
    assert not mine.any() and W.get_value()[1, 0] == 1
    view = np.zeros((10, 2))[::2]  # a view: whoever holds the base holds the memory
    W.set_value(view, borrow=True)
    f(np.array([2]))
    assert not view.any()
    del held, mine
    where = _address(W)
    f(np.array([3]))
    assert _address(W) == where and W.get_value()[3, 0] == 1  # nobody holds it now: in place


def test_sparse_update_bad_index_leaves_the_value_unchanged():
    W = exprc.shared(np.arange(8.0).reshape(4, 2), "W")
    idx = exprc.vector("idx", "int64")
    f = exprc.function([idx], [], updates={W: exprc.inc_subtensor(W[idx], 1.0)}, backend="c")
    with pytest.raises(exprc.errors.IndexOutOfBounds, match="idx"):
        f(np.array([0, 1, 4]))
    np.testing.assert_array_equal(W.get_value(), np.arange(8.0).reshape(4, 2))


@pytest.mark.parametrize("case", ["output_is_w", "output_view", "value_view", "late_reader", "two_tables"])
def test_sparse_update_with_other_readers_of_the_variable(case):
    """Outputs and other updates see the old value however the function reads it; in place only
    where that holds (the answer is checked either way)."""
    rng = np.random.default_rng(1)
    A0, B0 = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    A, B = exprc.shared(A0.copy(), "A"), exprc.shared(B0.copy(), "B")
    idx = exprc.vector("idx", "int64")
    I = np.array([1, 4, 1])
    newA = A0.copy()
    if case == "value_view":
        upd = {A: exprc.inc_subtensor(A[idx], A[0:3])}
        np.add.at(newA, I, A0[0:3])
        outs, want = [], []
    else:
        upd = {A: exprc.inc_subtensor(A[idx], 2.0)}
        np.add.at(newA, I, 2.0)
        outs, want = {"output_is_w": ([A], [A0]), "output_view": ([A.T], [A0.T]),
                      "late_reader": ([exprc.sum(A * B, axis=0)], [np.sum(A0 * B0, axis=0)]),
                      "two_tables": ([], [])}[case]
    newB = B0.copy()
    if case == "two_tables":
        upd[B] = exprc.inc_subtensor(B[idx], A[idx] * 3.0)
        np.add.at(newB, I, A0[I] * 3.0)
    f = exprc.function([idx], outs, updates=upd, backend="c")
    for _ in range(2):
        got = f(I)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(A.get_value(), newA)
        np.testing.assert_array_equal(B.get_value(), newB)
        A.set_value(A0)
        B.set_value(B0)


def test_readers_in_other_threads_never_see_a_sparse_update_half_done():
    """A function reading W from another thread sees W before or after each update, never
    between: every row gets +1 per update, so any read is a whole number of updates."""
    import threading

    W = exprc.shared(np.zeros((200_000, 4)), "W")
    idx = exprc.vector("idx", "int64")
    step = exprc.function([idx], [], updates={W: exprc.inc_subtensor(W[idx], 1.0)}, backend="c")
    read = exprc.function([], exprc.sum(W), backend="c")
    rows = np.arange(200_000)
    done, seen = threading.Event(), []

    def reader():
        while not done.is_set():
            seen.append(float(read()))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(40):
            step(rows)
    finally:
        done.set()
        t.join()
    assert seen and all(s % 800_000 == 0 for s in seen), sorted(set(seen))[:5]
    assert W.get_value()[0, 0] == 40
