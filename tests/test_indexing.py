"""Indexing with symbolic ints and slice bounds, integer arrays (gather), boolean masks, and
writing into an index (set_subtensor / inc_subtensor / x.at[...]): every result against NumPy on
the NumPy and C backends, errors at call time naming the index, gradients against NumPy's
scatter-add, staged execution of value-dependent shapes, serialization."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import exprc
from exprc.errors import IndexOutOfBounds, InputTypeError, SerializationError

BACKENDS = ["numpy", "c"]
RNG = np.random.default_rng(20261203)
W = RNG.standard_normal((6, 5))


def run(inputs, outputs, args, backend, **kw):
    return exprc.function(inputs, outputs, backend=backend, **kw)(*args)


# -- symbolic ints and slices -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_symbolic_int_index_every_position_and_negative(backend):
    x, i = exprc.matrix("x"), exprc.scalar("i", "int64")
    f = exprc.function([x, i], [x[i], exprc.exp(x[-1 - i]) + x[i]], backend=backend)
    cols = exprc.function([x, i], [x[:, i], x[i, i]], backend=backend)
    for k in range(-6, 6):
        got = f(W, k)
        np.testing.assert_array_equal(got[0], W[k])
        np.testing.assert_allclose(got[1], np.exp(W[-1 - k]) + W[k], rtol=1e-15)
        if -5 <= k < 5:
            np.testing.assert_array_equal(cols(W, k)[0], W[:, k])
            np.testing.assert_array_equal(cols(W, k)[1], W[k, k])
    for k in (6, -7, 100):
        with pytest.raises(IndexOutOfBounds, match=rf"i = {k} is out of bounds for axis 0 with size 6"):
            f(W, k)
    with pytest.raises(IndexOutOfBounds, match="i = 5 is out of bounds for axis 1 with size 5"):
        cols(W, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_symbolic_slices_match_numpy_including_clipping_and_steps(backend):
    x = exprc.matrix("x")
    a, b, c = (exprc.scalar(n, "int64") for n in "abc")
    f = exprc.function([x, a, b, c], [x[a:b:c], 2 * x[a:b, 1:], x[:, a:], x[b::c]], backend=backend)
    for av, bv, cv in itertools.product([-8, -3, 0, 2, 5, 9], [-9, -1, 0, 3, 6, 20], [1, 2, -1, -3]):
        got = f(W, av, bv, cv)
        np.testing.assert_array_equal(got[0], W[av:bv:cv])
        np.testing.assert_array_equal(got[1], 2 * W[av:bv, 1:])
        np.testing.assert_array_equal(got[2], W[:, av:])
        np.testing.assert_array_equal(got[3], W[bv::cv])
    with pytest.raises(ValueError, match="slice step cannot be zero"):
        f(W, 0, 1, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minibatch_givens_over_a_shared_dataset(backend):
    """Theano's classic: givens={x: data[i*bs:(i+1)*bs]}, the last batch shorter; with gradients."""
    data = np.arange(70.0).reshape(14, 5) / 10
    ds = exprc.shared(data, name="ds")
    i, bs = exprc.scalar("i", "int64"), 4
    x, w = exprc.matrix("x"), exprc.vector("w")
    cost = exprc.mean(exprc.log1p(exprc.exp(x @ w)))
    f = exprc.function([i, w], [cost, exprc.grad(cost, w)], givens={x: ds[i * bs:(i + 1) * bs]}, backend=backend)
    wv = np.linspace(-1, 1, 5)
    for k in range(4):
        xb = data[k * bs:(k + 1) * bs]
        z = xb @ wv
        c, g = f(k, wv)
        np.testing.assert_allclose(c, np.mean(np.log1p(np.exp(z))), rtol=1e-13)
        np.testing.assert_allclose(g, xb.T @ (1 / (1 + np.exp(-z))) / len(xb), rtol=1e-12)


def test_static_out_of_range_raises_when_built():
    x = exprc.tensor("x", shape=(4, 3))
    with pytest.raises(IndexError, match="out of bounds"):
        x[4]
    with pytest.raises(IndexOutOfBounds, match="too many indices"):
        x[exprc.scalar("i", "int64"), 0, 0]
    with pytest.raises(IndexOutOfBounds, match="integer"):
        x[exprc.vector("f")]


# -- gather -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("idt", ["int32", "int64"])
def test_gather_matches_numpy(backend, idt):
    x = exprc.tensor("x", ndim=3)
    p, q = exprc.vector("p", idt), exprc.matrix("q", idt)
    X = RNG.standard_normal((5, 4, 3))
    P = np.array([0, -1, 3, 3, 1], idt)
    Q = np.array([[0, 2], [-3, 1]], idt)
    cases = [
        (lambda x, p, q: x[p], None),
        (lambda x, p, q: x[:, q], None),
        (lambda x, p, q: x[..., p[:2]], None),
        (lambda x, p, q: x[p, 1:3], None),
        (lambda x, p, q: x[q, :, 0], None),  # separated: broadcast axes first
        (lambda x, p, q: x[q, q, 1], None),  # several arrays broadcast
        (lambda x, p, q: x[1, :, p[:2]], None),  # int + array separated by a slice
        (lambda x, p, q: x[p[:2], :, 1], None),
        (lambda x, p, q: x[None, p, None], None),
        (lambda x, p, q: x[p][:, q], None),
        (lambda x, p, q: exprc.exp(x[p]) * 2 + x[p], None),
    ]
    for spell, _ in cases:
        got = run([x, p, q], spell(x, p, q), [X, P, Q], backend)
        want = spell(X, P, Q) if spell is not cases[-1][0] else np.exp(X[P]) * 2 + X[P]
        np.testing.assert_allclose(got, want, rtol=1e-14)  # exact but for C's exp (an ulp)
        assert got.shape == want.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_constant_arrays_lists_and_empty(backend):
    x = exprc.matrix("x")
    got = run([x], [x[[2, 0, 2]], x[np.array([], np.int64)], x[:, [4, -5]], x[[[1], [2]], [0, 1]]], [W], backend)
    for g, w in zip(got, [W[[2, 0, 2]], W[np.array([], np.int64)], W[:, [4, -5]], W[[[1], [2]], [0, 1]]]):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_picking_log_probabilities_by_label(backend):
    """LP[arange(n), y]: the negative log-likelihood of the logistic-regression tutorial."""
    lp, y = exprc.matrix("lp"), exprc.vector("y", "int32")
    n = exprc.shape(lp)[0] if False else None
    LP = np.log(RNG.dirichlet(np.ones(5), size=7))
    Y = RNG.integers(0, 5, 7).astype(np.int32)
    nll = -exprc.mean(lp[np.arange(7), y])
    np.testing.assert_allclose(run([lp, y], nll, [LP, Y], backend), -np.mean(LP[np.arange(7), Y]), rtol=1e-15)
    assert n is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_array_indices_raise_at_call_time_naming_the_argument(backend):
    x, idx = exprc.matrix("x"), exprc.vector("idx", "int64")
    f = exprc.function([x, idx], x[idx] * 2, backend=backend)
    with pytest.raises(IndexOutOfBounds, match=r"idx: index 6 is out of bounds for axis 0 with size 6"):
        f(W, np.array([0, 6]))
    with pytest.raises(IndexOutOfBounds, match=r"idx: index -7 is out of bounds"):
        f(W, np.array([-7]))
    g = exprc.function([x, idx], x[:, idx], backend=backend)
    with pytest.raises(IndexOutOfBounds, match="axis 1 with size 5"):
        g(W, np.array([5]))


# -- boolean masks (value-dependent shape: staged on native backends) -----------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_boolean_masks(backend):
    x = exprc.matrix("x")
    got = run([x], [x[x > 0], exprc.sum(x[x > 0.5]), x[np.array([True, False, True, False, False, True])]],
              [W], backend)
    np.testing.assert_array_equal(got[0], W[W > 0])
    np.testing.assert_allclose(got[1], np.sum(W[W > 0.5]), rtol=1e-14)
    np.testing.assert_array_equal(got[2], W[[0, 2, 5]])
    with pytest.raises(IndexOutOfBounds):
        exprc.function([x], x[np.array([True, False])], backend=backend)(W)


# -- writing into an index ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_set_and_inc_subtensor_match_numpy_with_repeats(backend):
    x, v, idx = exprc.matrix("x"), exprc.matrix("v"), exprc.vector("idx", "int64")
    i = exprc.scalar("i", "int64")
    I = np.array([3, 0, 3, -1, 3])
    V = RNG.standard_normal((5, 5))
    outs = [exprc.inc_subtensor(x[idx], v), exprc.set_subtensor(x[idx, 1:3], 0.0),
            x.at[i:i + 2].add(1.0), x.at[idx].set(v[0]), exprc.inc_subtensor(x[1], v[0]) * 2]
    got = run([x, v, idx, i], outs, [W, V, I, 2], backend)
    want = [W.copy() for _ in outs]
    np.add.at(want[0], I, V)
    want[1][I, 1:3] = 0.0
    want[2][2:4] += 1.0
    want[3][I] = V[0]
    want[4][1] += V[0]
    want[4] *= 2
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # repeats add in index order on every backend, as np.add.at
    np.testing.assert_array_equal(got[0], run([x, v, idx, i], outs[0], [W, V, I, 2], backend))  # deterministic


def test_write_needs_an_indexed_expression():
    x = exprc.matrix("x")
    with pytest.raises(TypeError, match="indexed expression"):
        exprc.set_subtensor(np.zeros(3), 1.0)
    # x[:] is x itself: writing into it fills or adds everywhere
    np.testing.assert_array_equal(exprc.set_subtensor(x[:], 2.0).eval({x: W}), np.full_like(W, 2.0))
    with pytest.raises(exprc.errors.ShapeError):
        exprc.inc_subtensor(x[exprc.vector("i", "int64")], exprc.tensor("v", ndim=3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_of_gather_and_scatter(backend):
    x, v, idx = exprc.matrix("x"), exprc.matrix("v"), exprc.vector("idx", "int64")
    i = exprc.scalar("i", "int64")
    I = np.array([1, 4, 1, -2])
    V = RNG.standard_normal((4, 5))
    cost = exprc.sum(exprc.square(x[idx]) * v) + exprc.sum(exprc.sin(x[i:i + 3, 2]))
    gx, gv = exprc.grad(cost, [x, v])
    got = run([x, v, idx, i], [gx, gv], [W, V, I, 1], backend)
    want = np.zeros_like(W)
    np.add.at(want, I, 2 * W[I] * V)
    want[1:4, 2] += np.cos(W[1:4, 2])
    np.testing.assert_allclose(got[0], want, rtol=1e-14)
    np.testing.assert_allclose(got[1], np.square(W[I]), rtol=1e-15)
    # through set/inc: d/dx sum(set_subtensor(x[idx], v) * c) zeroes the set rows; d/dv gathers c,
    # for set only at the writes kept (rows 1 and 4 are each written twice, -2 being 4: the last
    # write wins, and the earlier one changes nothing); inc's at every write
    c = RNG.standard_normal(W.shape)
    cost2 = exprc.sum(exprc.set_subtensor(x[idx], v) * c) + exprc.sum(exprc.inc_subtensor(x[idx], v) * c)
    gx2, gv2 = run([x, v, idx], exprc.grad(cost2, [x, v]), [W, V, I], backend)
    wx = c.copy()
    wx[I] = 0
    np.testing.assert_allclose(gx2, wx + c, rtol=1e-15)
    rows = I % W.shape[0]
    kept = np.array([j == max(k for k in range(len(rows)) if rows[k] == r) for j, r in enumerate(rows)])
    assert kept.tolist() == [False, False, True, True]
    np.testing.assert_allclose(gv2, c[I] * kept[:, None] + c[I], rtol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_gradient_of_a_repeated_set_counts_only_the_writes_kept(backend, dtype):
    """set_subtensor at a position named twice keeps the last write (NumPy's): the value's gradient is
    zero at the writes overwritten.  Repeated rows (constant and symbolic), columns, (row, column)
    pairs, a broadcast value, -1 beside its positive alias: against central differences of the
    loss.  A constant index of distinct entries of one sign (or constant arrays whose broadcast tuples
    are distinct) builds no mask (no int64 scatter)."""
    x, iv = exprc.matrix("x", dtype), exprc.vector("iv", "int64")
    cases = {"rows": (lambda: exprc.set_subtensor(x[np.array([0, 0, 2])], exprc.cos(x[:3])), False),
             "symbolic": (lambda: exprc.set_subtensor(x[iv], exprc.cos(x[:3])), True),
             "columns": (lambda: exprc.set_subtensor(x[:, np.array([4, 1, 4])], exprc.sin(x[:, :3]) * 2.0), False),
             "pairs": (lambda: exprc.set_subtensor(x[np.array([0, 1, 0]), np.array([2, 3, 2])], exprc.exp(x[0, :3])),
                       False),
             "broadcast": (lambda: exprc.set_subtensor(x[np.array([1, 1])], exprc.sin(x[3])), False),
             "aliases": (lambda: exprc.set_subtensor(x[np.array([-1, 3])], exprc.cos(x[:2])), False),
             "distinct": (lambda: exprc.set_subtensor(x[np.array([2, 0])], exprc.cos(x[:2])), False),
             "distinct pairs": (lambda: exprc.set_subtensor(x[np.array([0, 1]), np.array([2, 2])], exprc.exp(x[0, :2])),
                                False)}
    xv = np.random.default_rng(5).normal(size=(4, 5))
    eps = 1e-6 if dtype == "float64" else 1e-2
    for name, (make, symbolic) in cases.items():
        out = make()
        loss = exprc.sum(exprc.sin(out) * out)
        ins = [x, iv] if symbolic else [x]
        rest = [np.array([1, 1, 0])] if symbolic else []
        forward = exprc.function(ins, exprc.astype(loss, "float64"), backend=backend)
        grad = exprc.function(ins, exprc.grad(loss, x), backend=backend)
        got = grad(xv.astype(dtype), *rest)
        want = np.zeros_like(xv)
        for idx in np.ndindex(xv.shape):
            up, dn = xv.copy(), xv.copy()
            up[idx] += eps
            dn[idx] -= eps
            want[idx] = (forward(up.astype(dtype), *rest) - forward(dn.astype(dtype), *rest)) / (2 * eps)
        tol = {"rtol": 1e-6, "atol": 1e-8} if dtype == "float64" else {"rtol": 2e-2, "atol": 2e-2}
        np.testing.assert_allclose(got, want, err_msg=name, **tol)
        masks = [n for n in grad.graph.nodes if n.op == "scatter" and n.dtype == "int64"]
        assert bool(masks) == (not name.startswith("distinct")), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_repeated_set_with_one_index_array_finds_its_writes_along_that_axis(backend):
    """With one index array the writes kept are found along the indexed axis alone (an int64 scatter
    of the axis's length, not of x's size), and placed on the part's axes as NumPy places the array's:
    where it is, beside ints (advanced indices too), before everything when an int stands apart from
    it (x[:, idx, :, 2]), under a new axis, with an Ellipsis.  Against central differences."""
    x, iv = exprc.tensor("x", "float64", ndim=4), exprc.vector("iv", "int64")
    cases = {"apart": lambda: exprc.set_subtensor(x[:, iv, :, 2], exprc.sin(x[:, :3, :, 3]).dimshuffle(1, 0, 2)),
             "beside_an_int": lambda: exprc.set_subtensor(x[:, 1, iv], exprc.sin(x[:, 2, :3])),
             "after_an_int": lambda: exprc.set_subtensor(x[2, iv], exprc.sin(x[1, :3])),
             "after_a_slice": lambda: exprc.set_subtensor(x[1:3, iv], exprc.sin(x[:2, 1:4])),
             "new_axis": lambda: exprc.set_subtensor(x[:, None, iv], exprc.sin(x[:, None, :3])),
             "ellipsis": lambda: exprc.set_subtensor(x[..., iv], exprc.sin(x[..., :3]))}
    xv, ivv = np.random.default_rng(6).normal(size=(3, 4, 5, 6)), np.array([1, 1, 0])
    for name, make in cases.items():
        out = make()
        loss = exprc.sum(exprc.sin(out) * out)
        forward = exprc.function([x, iv], loss, backend=backend)
        grad = exprc.function([x, iv], exprc.grad(loss, x), backend=backend)
        want = np.zeros_like(xv)
        for idx in np.ndindex(xv.shape):
            up, dn = xv.copy(), xv.copy()
            up[idx] += 1e-6
            dn[idx] -= 1e-6
            want[idx] = (forward(up, ivv) - forward(dn, ivv)) / 2e-6
        np.testing.assert_allclose(grad(xv, ivv), want, rtol=1e-6, atol=1e-7, err_msg=name)
        masks = [n for n in grad.graph.nodes if n.op == "scatter" and n.dtype == "int64"]
        assert masks and all(n.ndim == 1 for n in masks), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gradient_with_a_value_that_does_not_fit_its_part_raises_shape_error(backend):
    """The gradient of inc_subtensor(x[idx], v) need not run the scatter that checks v's shape: a v
    that does not fit raised NumPy's bare ValueError from the C backend's sum to v's shape."""
    x, v, idx = exprc.matrix("x"), exprc.matrix("v"), exprc.vector("idx", "int64")
    loss = exprc.sum(exprc.sin(exprc.inc_subtensor(x[idx], v)))
    f = exprc.function([x, v, idx], exprc.grad(loss, [x, v]), backend=backend)
    with pytest.raises(exprc.errors.ShapeError, match=r"\(2, 5\)"):
        f(W, np.ones((2, 5)), np.array([0, 1, 2]))
    np.testing.assert_allclose(f(W, np.ones((3, 5)), np.array([0, 1, 2]))[1],
                               np.cos(W[[0, 1, 2]] + 1), rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_update_through_inc_subtensor(backend):
    """SGD on an embedding table: only the looked-up rows move, repeated rows accumulate."""
    table = exprc.shared(W.copy(), name="table")
    idx = exprc.vector("idx", "int64")
    cost = exprc.sum(exprc.square(table[idx]))
    g = exprc.grad(cost, table)
    step = exprc.function([idx], cost, updates={table: table - 0.1 * g}, backend=backend)
    step(np.array([0, 0, 5]))
    want = W.copy()
    want[0] -= 0.1 * 2 * 2 * W[0]
    want[5] -= 0.1 * 2 * W[5]
    np.testing.assert_allclose(table.get_value(), want, rtol=1e-15)


def test_strided_and_broadcast_inputs():
    x, idx = exprc.matrix("x"), exprc.vector("idx", "int64")
    X = np.asfortranarray(RNG.standard_normal((8, 6)))[::2, ::-1]
    I = np.arange(10)[::3][:2]
    f = exprc.function([x, idx], [x[idx] + 1, exprc.inc_subtensor(x[idx], 1.0)], backend="c")
    got = f(X, I)
    np.testing.assert_array_equal(got[0], X[I] + 1)
    want = X.copy()
    np.add.at(want, I, 1.0)
    np.testing.assert_array_equal(got[1], want)


# -- differential: random keys against NumPy -------------------------------------------------------------
def _random_key(rng: np.random.Generator, shape: tuple) -> tuple[list, list]:
    """A NumPy key and the exprc key (symbolic parts as inputs), for an array of ``shape``."""
    np_key, ex_key, args, ins = [], [], [], []
    for d, n in enumerate(shape):
        kind = rng.choice(["int", "sym_int", "slice", "sym_slice", "array", "full"])
        if kind in ("int", "sym_int"):
            k = int(rng.integers(-n, n))
            np_key.append(k)
            if kind == "int":
                ex_key.append(k)
            else:
                v = exprc.scalar(f"k{d}", "int64")
                ins.append(v)
                args.append(np.int64(k))
                ex_key.append(v)
        elif kind in ("slice", "sym_slice"):
            a, b = (int(t) for t in rng.integers(-n - 2, n + 3, 2))
            c = int(rng.choice([1, 2, -1, -2]))
            np_key.append(slice(a, b, c))
            if kind == "slice":
                ex_key.append(slice(a, b, c))
            else:
                va, vb = exprc.scalar(f"a{d}", "int64"), exprc.scalar(f"b{d}", "int64")
                ins += [va, vb]
                args += [np.int64(a), np.int64(b)]
                ex_key.append(slice(va, vb, c))
        elif kind == "array":
            arr = rng.integers(-n, n, int(rng.integers(0, 4))) if n else np.zeros(0, np.int64)
            v = exprc.vector(f"p{d}", "int64")
            ins.append(v)
            args.append(arr)
            np_key.append(arr)
            ex_key.append(v)
        else:
            np_key.append(slice(None))
            ex_key.append(slice(None))
    return np_key, ex_key, ins, args


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_keys_against_numpy(backend):
    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 5, int(rng.integers(1, 4))))
        X = rng.standard_normal(shape)
        np_key, ex_key, ins, args = _random_key(rng, shape)
        try:
            want = X[tuple(np_key)]
        except IndexError:
            continue
        x = exprc.tensor("x", ndim=len(shape))
        e = x[tuple(ex_key)]
        got = exprc.function([x, *ins], [e * 1.0, exprc.inc_subtensor(e, 1.0)], backend=backend)(X, *args)
        np.testing.assert_array_equal(got[0], want, err_msg=str((shape, np_key)))
        inc = X.copy()
        np.add.at(inc, tuple(np_key), 1.0)
        np.testing.assert_array_equal(got[1], inc, err_msg=str((shape, np_key)))
        checked += 1
    assert checked >= 25


# -- serialization ---------------------------------------------------------------------------------------
def test_save_load_round_trip_and_hostile_attributes():
    x, idx, i = exprc.matrix("x"), exprc.vector("idx", "int64"), exprc.scalar("i", "int64")
    e = exprc.inc_subtensor(x[idx], 1.0) + x[i:i + 6][::-1] + x[x > 0].sum()
    e2 = exprc.loads(exprc.dumps(e))
    ins = sorted((n for n in exprc.graph.toposort([e2]) if n.op == "input"), key=lambda n: n.arg("name"))
    f = exprc.function(ins, e2, backend="numpy")
    got = f(np.int64(0), np.array([1, 1]), W)
    want = W.copy()
    np.add.at(want, [1, 1], 1.0)
    np.testing.assert_allclose(got, want + W[0:6][::-1] + W[W > 0].sum(), rtol=1e-14)
    text = exprc.dumps(x[idx])
    for bad in ('["A", 1]', ):
        assert bad.replace(" ", "") in text.replace(" ", "")
        for evil in ('["A", 0]', '["A", 7]', '["Z", 1]', '["S", 1, 1, 1, 1]'):
            with pytest.raises(SerializationError):
                exprc.loads(text.replace(" ", "").replace(bad.replace(" ", ""), evil.replace(" ", "")))


# -- the C backend's row loops (exprc/backends/c/indexlib.py) and the in-place scatter ------------------
@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "int32"])
def test_row_gather_and_scatter_add_in_c_match_numpy_bit_for_bit(dtype):
    x, idx = exprc.tensor("x", dtype, ndim=3), exprc.vector("idx", "int32")
    v = exprc.tensor("v", dtype, ndim=3)
    X = (RNG.standard_normal((7, 3, 2)) * 100).astype(dtype)
    V = (RNG.standard_normal((9, 3, 2)) * 100).astype(dtype)
    I = np.array([6, 0, 6, -1, 2, 6, 0, -7, 3], np.int32)
    f = exprc.function([x, idx, v], [x[idx], exprc.inc_subtensor(x[idx], v), exprc.inc_subtensor(x[idx], v[0]),
                                     exprc.inc_subtensor(x[idx], v[:1])], backend="c")
    assert "subtensor" in f._kernel._into  # the C row loops are in use
    got = f(X, I, V)
    np.testing.assert_array_equal(got[0], X[I])
    for g, val in zip(got[1:], [V, V[0], V[:1]]):
        want = X.copy()
        np.add.at(want, I, val)
        np.testing.assert_array_equal(g, want)  # same additions in the same order
    with pytest.raises(IndexOutOfBounds, match=r"idx: index 7 is out of bounds for axis 0 with size 7"):
        f(X, np.array([0, 7], np.int32), V[:2])
    empty = exprc.function([x, idx, v], [x[idx], exprc.inc_subtensor(x[idx], v)], backend="c")(
        X, np.zeros(0, np.int32), V[:0])
    assert empty[0].shape == (0, 3, 2)
    np.testing.assert_array_equal(empty[1], X)


def test_row_loops_on_strided_tables_and_fallbacks():
    x, idx, v = exprc.matrix("x"), exprc.vector("idx", "int64"), exprc.matrix("v")
    f = exprc.function([x, idx, v], [x[idx], exprc.inc_subtensor(x[idx], v), exprc.set_subtensor(x[idx], v)],
                       backend="c")
    X = RNG.standard_normal((10, 8))
    for table in (X[::2], X[::-1], X[:, ::2], np.asfortranarray(X)):
        I = np.array([1, 1, 0, -1])
        V = RNG.standard_normal((4, table.shape[1]))
        got = f(table, I, V)
        np.testing.assert_array_equal(got[0], table[I])
        want = table.copy()
        np.add.at(want, I, V)
        np.testing.assert_array_equal(got[1], want)
        want = table.copy()
        want[I] = V
        np.testing.assert_array_equal(got[2], want)


def test_gradient_of_a_gather_scatters_in_place_into_its_zeros():
    """The zeros of the gradient are the scatter's buffer: one pass over the table, not three."""
    w, idx, g = exprc.matrix("W"), exprc.vector("idx", "int64"), exprc.matrix("G")
    f = exprc.function([w, idx, g], exprc.grad(exprc.sum(w[idx] * g), w), backend="c")
    assert [k["ops"] for k in f.kernels] == [["fill"]]  # the zeros; no copy kernel around the scatter
    Wv, I, G = RNG.standard_normal((30, 4)), np.array([3, 3, 29, 0]), RNG.standard_normal((4, 4))
    want = np.zeros_like(Wv)
    np.add.at(want, I, G)
    for _ in range(3):  # the buffer is refilled every call
        np.testing.assert_array_equal(f(Wv, I, G), want)
    (plans,) = f._kernel.pool.plans.values()
    assert plans and all(p.redirects for p in plans), "the zeros should be written into the output"


def _counting_runs(f, *args):
    """Wrap the C kernel's native entry point: the (first, last) kernel ranges each call runs.
    (Two calls first: the second makes the function's C dispatcher, which takes the real entry.)"""
    f(*args)
    f(*args)
    k = f._kernel
    runs, real = [], k._run

    def run(ptrs, P, first, last, nthreads):
        runs.append((first, last))
        return real(ptrs, P, first, last, nthreads)

    k._run = run
    return runs


def test_gradient_of_a_gather_allocates_zeros_instead_of_filling_them():
    """grad(sum(W[idx] * G), W) into a fresh output: the output is allocated zeroed (untouched pages
    of a fresh block cost nothing) and the fill kernel does not run; the gather W[idx], whose value
    nothing reads (only its shape, for sum_to), does not run either but still checks its indices.
    out= arrays, scratch buffers and repeated or concurrent calls keep NumPy's results exactly."""
    from concurrent.futures import ThreadPoolExecutor

    w, idx, g = exprc.matrix("W"), exprc.vector("idx", "int64"), exprc.matrix("G")
    grad = exprc.grad(exprc.sum(w[idx] * g), w)
    f = exprc.function([w, idx, g], grad, backend="c")

    def want(Wv, I, G):
        z = np.zeros_like(Wv)
        np.add.at(z, I, G)
        return z

    Wv, G = RNG.standard_normal((40, 6)), RNG.standard_normal((5, 6))
    I = np.array([3, 3, 39, 0, -1])
    runs = _counting_runs(f, Wv, I, G)
    for _ in range(3):
        got = f(Wv, I, G)
        np.testing.assert_array_equal(got, want(Wv, I, G))
        got[:] = np.nan  # a caller writing into its result changes nothing for the next call
    assert runs == [], "the fill kernel should not run for a fresh output"
    (plans,) = f._kernel.pool.plans.values()
    (plan,) = plans
    assert plan.zeroed == {0} and plan.skipped_kernels == {0}
    assert [n.op for n in plan.models] == ["subtensor"] and not plan.scratch
    with pytest.raises(IndexOutOfBounds, match=r"idx: index 40 is out of bounds for axis 0 with size 40"):
        f(Wv, np.array([0, 1, 2, 3, 40]), G)
    with pytest.raises(IndexOutOfBounds, match=r"idx: index -41 is out of bounds"):
        f(Wv, np.array([0, 1, 2, 3, -41]), G)
    # out=: the caller's array holds anything; the fill runs into it
    dirty = np.full_like(Wv, np.nan)
    assert f(Wv, I, G, out=dirty) is dirty
    np.testing.assert_array_equal(dirty, want(Wv, I, G))
    assert runs == [(0, 1)]
    # out=[None]: a fresh array again, zeroed
    runs.clear()
    np.testing.assert_array_equal(f._kernel(Wv, I, G, out=[None])[0], want(Wv, I, G))
    assert runs == []
    # concurrent calls: each its own plan and zeros
    def call(seed):
        r = np.random.default_rng(seed)
        Ii, Gi = r.integers(-40, 40, 7), r.standard_normal((7, 6))
        return all(np.array_equal(f(Wv, Ii, Gi), want(Wv, Ii, Gi)) for _ in range(20))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(16)))
    assert runs == []


def test_zeros_of_a_scatter_stay_correct_when_read_again_or_static():
    """Where the scatter's buffer is scratch (an SGD step reads the gradient), the fill still runs
    every call (the buffer is reused); an output also read by a later kernel is zeroed on
    allocation; zeros of a static shape (a constant) are the fresh output already."""
    w, idx, g = exprc.matrix("W"), exprc.vector("idx", "int64"), exprc.matrix("G")
    grad = exprc.grad(exprc.sum(w[idx] * g), w)
    # (sparse_update would make the step inc_subtensor(W[idx], ...): no zeros to check)
    step = exprc.function([w, idx, g], w - 0.5 * grad, backend="c", exclude=["sparse_update"])
    both = exprc.function([w, idx, g], [grad, w - 0.5 * grad], backend="c", exclude=["sparse_update"])
    Wv = RNG.standard_normal((20, 3))
    for seed in range(4):  # different rows each call: stale rows of the last call would show
        r = np.random.default_rng(seed)
        I, G = r.integers(0, 20, 6), r.standard_normal((6, 3))
        z = np.zeros_like(Wv)
        np.add.at(z, I, G)
        np.testing.assert_array_equal(step(Wv, I, G), Wv - 0.5 * z)
        got = both(Wv, I, G)
        np.testing.assert_array_equal(got[0], z)
        np.testing.assert_array_equal(got[1], Wv - 0.5 * z)
    for k, zeroed in ((step, set()), (both, {0})):
        (plans,) = k._kernel.pool.plans.values()
        assert plans[0].zeroed == zeroed
    ws = exprc.tensor("W", shape=(30, 4))
    f = exprc.function([ws, idx, g], exprc.grad(exprc.sum(ws[idx] * g), ws), backend="c")
    Wv, I, G = RNG.standard_normal((30, 4)), np.array([1, 29, 1]), RNG.standard_normal((3, 4))
    z = np.zeros_like(Wv)
    np.add.at(z, I, G)
    for _ in range(2):
        got = f(Wv, I, G)
        np.testing.assert_array_equal(got, z)
        got[:] = 7.0
    dirty = np.full_like(Wv, np.nan)
    f(Wv, I, G, out=dirty)
    np.testing.assert_array_equal(dirty, z)
    assert sorted(len(p.zeroed) for ps in f._kernel.pool.plans.values() for p in ps) == [0, 1]  # out=: none


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_value_that_does_not_fit_its_index_is_a_shape_error(backend):
    x, idx, v = exprc.matrix("x"), exprc.vector("idx", "int64"), exprc.matrix("v")
    f = exprc.function([x, idx, v], exprc.inc_subtensor(x[idx], v), backend=backend)
    with pytest.raises(exprc.errors.ShapeError, match=r"cannot put a value of shape \(3, 5\) into a part of "
                                                      r"shape \(4, 5\)"):
        f(W, np.array([0, 1, 2, 3]), np.ones((3, 5)))


def test_constant_masks_over_static_axes_are_index_arrays():
    """NumPy reads x[mask] as x[mask.nonzero()]: over axes of static size the shape is static (no
    stages); over axes known only at call time the mask is checked when called."""
    from exprc.backends.staged import StagedKernel

    X = np.arange(12.0).reshape(3, 4)
    m2 = np.array([[True, False, True, False], [False] * 4, [True] * 4])
    keys = [m2, (np.array([True, False, True]),), (slice(None), np.array([True, False, False, True])),
            (np.array([True, False, True]), 1), (Ellipsis, np.array([True, False, False, True]))]
    for x, staged in ((exprc.tensor("x", shape=(3, 4)), False), (exprc.matrix("x"), True)):
        for key in keys:
            e = x[key]
            f = exprc.function([x], e * 1.0, backend="c")
            np.testing.assert_array_equal(f(X), X[key])
            assert isinstance(f._kernel, StagedKernel) == (staged or key[0] is Ellipsis)
            if not staged and key[0] is not Ellipsis:
                assert None not in e.type.shape
        with pytest.raises(IndexOutOfBounds):
            x[np.array([True, False])].eval({x: X})


def test_a_lone_row_gather_skips_the_planner_and_keeps_every_check():
    """exprc.function([W, idx], W[idx]) (an embedding lookup) calls the C row gather directly."""
    w, idx = exprc.matrix("W"), exprc.vector("idx", "int64")
    f = exprc.function([w, idx], w[idx], backend="c")
    assert f._kernel._direct is not None
    X = np.arange(30.0).reshape(6, 5)
    for table, I in [(X, np.array([5, 0, 5, -6])), (X[::-2], np.array([2, -1])), (X[:, ::2], np.array([1])),
                     (np.asfortranarray(X), np.array([3, 3])), (np.zeros((0, 5)), np.zeros(0, np.int64)),
                     (X, np.zeros(0, np.int64))]:
        got = f(table, I)
        assert got.shape == table[I].shape and got.flags.c_contiguous
        np.testing.assert_array_equal(got, table[I])
        assert not np.shares_memory(got, table)
    with pytest.raises(IndexOutOfBounds, match=r"idx: index 6 is out of bounds for axis 0 with size 6"):
        f(X, np.array([0, 6]))
    with pytest.raises(IndexOutOfBounds, match="size 0"):
        f(np.zeros((0, 5)), np.array([0]))
    np.testing.assert_array_equal(f(X, np.array([1, 2], np.int64), out=np.empty((2, 5))), X[[1, 2]])  # out=: planner
    # After two calls the Function calls the gather without converting its arguments: only when they
    # already are arrays of the inputs' dtypes and ndims; everything else still goes through the checks.
    assert f._fast is not None
    np.testing.assert_array_equal(f(X, np.array([4, 1], np.int32)), X[[4, 1]])  # int32: converted
    np.testing.assert_array_equal(f(X.tolist(), [4, -1]), X[[4, -1]])
    np.testing.assert_array_equal(f(X[::-2], np.array([2])), X[::-2][[2]])
    with pytest.raises(IndexOutOfBounds, match="idx: index -7"):
        f(X, np.array([-7]))
    with pytest.raises(InputTypeError, match="expected 2 arguments"):
        f(X)
    with pytest.raises(InputTypeError, match="idx"):
        f(X, np.array([0.0]))
    with pytest.raises(InputTypeError, match="W"):
        f(X[0], np.array([0]))
    wf = exprc.matrix("W", shape=(6, 5))
    fixed = exprc.function([wf, idx], wf[idx], backend="c")
    assert fixed._kernel.fast_path(True) is None  # static sizes are checked on the general path


# -- sparse_update: W - lr * (gradient of a gather) changes only the rows gathered ------------------
def _sparse_forms(w, idx, g):
    grad = exprc.grad(exprc.sum(w[idx] * g), w)
    return {"sub_mul": w - 0.5 * grad, "sub_rmul": w - grad * 3.0, "sub_div": w - grad / 3.0,
            "sub_bare": w - grad, "add_negative": w + grad * -0.5, "add_negative_left": -0.5 * grad + w}


@pytest.mark.parametrize("form", ["sub_mul", "sub_rmul", "sub_div", "sub_bare", "add_negative", "add_negative_left"])
def test_sparse_update_rule_gives_the_dense_steps_bits_with_distinct_rows(form):
    """Distinct indices: the same bits as the dense step (NumPy), signed zeros, NaN and inf
    included; the optimized graph has no table of zeros left."""
    w, idx, g = exprc.matrix("W"), exprc.vector("idx", "int64"), exprc.matrix("G")
    expr = _sparse_forms(w, idx, g)[form]
    f = exprc.function([w, idx, g], expr, backend="c")
    assert "sparse_update" in f.graph.rewrites
    assert not any(n.op == "fill" for n in f.graph.nodes)
    dense = exprc.function([w, idx, g], expr, backend="numpy", exclude=["sparse_update"])
    Wv = RNG.standard_normal((12, 4))
    Wv[0, 0] = Wv[5, 1] = -0.0
    Wv[2, 2], Wv[3, 3] = np.inf, np.nan
    G = RNG.standard_normal((5, 4))
    G[0, 0] = G[1, 1] = -0.0
    G[2, 2], G[3, 0] = np.nan, -np.inf
    I = np.array([0, 5, -3, 7, 2])
    want = dense(Wv, I, G)
    got = f(Wv, I, G)
    np.testing.assert_array_equal(got, want)
    real = ~np.isnan(want)  # (a NaN's sign means nothing in IEEE arithmetic)
    assert np.array_equal(np.signbit(got)[real], np.signbit(want)[real])


def test_sparse_update_rule_with_repeated_rows_is_np_add_at_on_the_table():
    w, idx, g = exprc.matrix("W"), exprc.vector("idx", "int64"), exprc.matrix("G")
    f = exprc.function([w, idx, g], _sparse_forms(w, idx, g)["sub_mul"], backend="c")
    Wv, I, G = RNG.standard_normal((8, 3)), np.array([1, 1, 6, 1]), RNG.standard_normal((4, 3))
    ref = Wv.copy()
    np.add.at(ref, I, -(G * 0.5))
    np.testing.assert_array_equal(f(Wv, I, G), ref)
    z = np.zeros_like(Wv)
    np.add.at(z, I, G)
    np.testing.assert_allclose(f(Wv, I, G), Wv - 0.5 * z, rtol=1e-15, atol=1e-15)


def test_sparse_update_rule_declines_what_it_would_change():
    """Not rewritten: a c whose zero term would change a -0.0 (W - grad * -c, W + grad * c,
    W + grad), a symbolic c (it could be inf: 0 * inf is NaN), set_subtensor (a repeated row
    takes the last value), a table other than the one the zeros are shaped like."""
    w, u, idx, g, c = (exprc.matrix("W"), exprc.matrix("U"), exprc.vector("idx", "int64"), exprc.matrix("G"),
                       exprc.scalar("c"))
    grad = exprc.grad(exprc.sum(w[idx] * g), w)
    for expr in [w - grad * -0.5, w + grad * 0.5, w + grad, w - c * grad, u - 0.5 * grad,
                 w - exprc.set_subtensor(exprc.zeros_like(w)[idx], g)]:
        fg = exprc.optimize(expr)
        assert "sparse_update" not in fg.rewrites, exprc.pprint(expr)
        assert any(n.op == "fill" for n in fg.nodes)
