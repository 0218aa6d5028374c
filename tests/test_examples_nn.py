"""The example neural-network library (examples/nn): trains, and uses exprc's public API only."""

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import exprc

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
nn = pytest.importorskip("nn") if hasattr(exprc, "grad") else None
pytestmark = pytest.mark.skipif(nn is None, reason="exprc.grad is not available")


def _blobs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (4, 5))
    labels = rng.integers(0, 4, n)
    x = (centers[labels] + rng.normal(0, 1, (n, 5))).astype(np.float32)
    return x, labels


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum", "sgd_nesterov"])
def test_mlp_learns_blobs(optimizer):
    x, labels = _blobs(600, 0)
    opt = {"adam": nn.Adam(lr=1e-2), "sgd_momentum": nn.SGD(lr=0.05, momentum=0.9),
           "sgd_nesterov": nn.SGD(lr=0.05, momentum=0.9, nesterov=True)}[optimizer]
    net = nn.MLP([5, 16, 4], activation=nn.tanh, seed=1)
    step, predict = nn.compile_classifier(net, opt, n_features=5, n_classes=4,
                                          config=exprc.Config(num_threads=1))
    y = nn.one_hot(labels, 4)
    rng = np.random.default_rng(0)
    first = None
    for _ in range(15):
        losses = [float(step(xb, yb)) for xb, yb in nn.minibatches(x, y, 64, rng)]
        first = first if first is not None else losses[0]
    assert np.mean(losses) < first / 4
    xt, lt = _blobs(300, 0)
    assert np.mean(np.argmax(predict(xt), 1) == lt) > 0.9
    assert all(p.get_value().dtype == np.float32 for p in net.params)


def test_adam_matches_a_numpy_reference():
    x, labels = _blobs(64, 3)
    y = nn.one_hot(labels, 4)
    net = nn.MLP([5, 4], seed=2)  # one dense layer: softmax regression
    W0, b0 = (p.get_value().astype(np.float64) for p in net.params)
    step, _ = nn.compile_classifier(net, nn.Adam(lr=0.1), n_features=5, n_classes=4)
    W, b = W0.copy(), b0.copy()
    m = [np.zeros_like(W), np.zeros_like(b)]
    v = [np.zeros_like(W), np.zeros_like(b)]
    for t in range(1, 4):
        step(x, y)
        z = x @ W + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = [x.T @ ((p - y) / 64), ((p - y) / 64).sum(0)]
        lr_t = 0.1 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        for i, (param, gi) in enumerate(zip((W, b), g)):
            m[i] = 0.9 * m[i] + 0.1 * gi
            v[i] = 0.999 * v[i] + 0.001 * gi * gi
            param -= lr_t * m[i] / (np.sqrt(v[i]) + 1e-8)
    np.testing.assert_allclose(net.params[0].get_value(), W, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(net.params[1].get_value(), b, rtol=2e-4, atol=2e-5)


def test_the_library_uses_only_the_public_api():
    public = set(exprc.__all__)
    for path in sorted((EXAMPLES / "nn").glob("*.py")) + [EXAMPLES / "train_digits.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("exprc"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "exprc" or not alias.name.startswith("exprc."), path.name
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "exprc":
                assert node.attr in public, f"{path.name} uses exprc.{node.attr}, which is not public"


def _forward_numpy(net, x):
    """The net's prediction (no dropout) in NumPy, relu hidden layers."""
    params = [p.get_value().astype(np.float64) for p in net.params]
    h = x.astype(np.float64)
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i + 2 < len(params):
            h = np.maximum(h, 0)
    return h


def test_dropout_step_draws_a_new_mask_each_call_and_predict_is_deterministic():
    x, labels = _blobs(64, 4)
    y = nn.one_hot(labels, 4)
    losses = {}
    for p in (0.0, 0.5):
        net = nn.MLP([5, 32, 4], activation=nn.relu, seed=3, dropout=p)
        # lr=0: the parameters never change, so two steps differ only by their dropout masks.
        step, predict = nn.compile_classifier(net, nn.SGD(lr=0.0), n_features=5, n_classes=4)
        losses[p] = [float(step(x, y)) for _ in range(3)]
        if p:
            state = net.rng.state.get_value()
            assert state.tolist() == [3, 3]  # each step advanced the stream's counter once
        out = [predict(x) for _ in range(2)]
        assert np.array_equal(out[0], out[1])
        np.testing.assert_allclose(out[0], _forward_numpy(net, x), rtol=1e-5, atol=1e-5)
        if p:
            assert np.array_equal(net.rng.state.get_value(), state)  # predict draws nothing
    assert losses[0.0][0] == losses[0.0][1] == losses[0.0][2]  # no dropout: the same loss every call
    assert len(set(losses[0.5])) == 3  # dropout: a new mask, a new loss, every call
    assert all(v != losses[0.0][0] for v in losses[0.5])


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_mask_keep_fraction_and_scaling(p):
    keep = 1.0 - p
    x = exprc.matrix("x", "float32", shape=(None, 100))
    layer = nn.Dropout(p, exprc.random.Stream(7))
    train = exprc.function([x], layer(x, train=True))
    assert layer(x) is x  # off outside training
    xv = np.random.default_rng(0).uniform(0.5, 2.0, (1000, 100)).astype(np.float32)
    se = np.sqrt(keep * (1 - keep) / xv.size)
    masks = []
    for _ in range(2):
        out = train(xv)
        kept = out != 0
        assert abs(kept.mean() - keep) < 4 * se, (kept.mean(), keep, se)
        np.testing.assert_allclose(out[kept], xv[kept] / keep, rtol=1e-6)  # inverted dropout: x / keep
        masks.append(kept)
    # Two calls draw independent masks: they agree on keep**2 + (1-keep)**2 of the elements.
    agree = np.mean(masks[0] == masks[1])
    want = keep ** 2 + (1 - keep) ** 2
    assert abs(agree - want) < 4 * np.sqrt(want * (1 - want) / xv.size)


def _train_with_dropout(net, step, x, y, steps=6):
    rng = np.random.default_rng(0)
    for _ in range(steps // 3):
        for xb, yb in nn.minibatches(x, y, 32, rng):
            step(xb, yb)
    return [p.get_value() for p in net.params]


def test_dropout_training_is_reproducible_with_a_fixed_seed():
    x, labels = _blobs(96, 5)
    y = nn.one_hot(labels, 4)
    net = nn.MLP([5, 16, 4], activation=nn.relu, seed=1, dropout=0.5)
    init = [p.get_value() for p in net.params]
    step, _ = nn.compile_classifier(net, nn.SGD(lr=0.1), n_features=5, n_classes=4)

    def run(seed):
        for p, v in zip(net.params, init):
            p.set_value(v)
        net.rng.seed(seed)
        return _train_with_dropout(net, step, x, y)

    a, b, c = run(1), run(1), run(2)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))  # the same seed: the same masks, bit for bit
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))  # another seed: other masks
    assert not all(np.array_equal(u, v) for u, v in zip(a, init))  # it trained
    # A second net built the same way gives the same weights (its own stream, seeded by the net's seed).
    net2 = nn.MLP([5, 16, 4], activation=nn.relu, seed=1, dropout=0.5)
    step2, _ = nn.compile_classifier(net2, nn.SGD(lr=0.1), n_features=5, n_classes=4)
    d = _train_with_dropout(net2, step2, x, y)
    assert all(np.array_equal(u, v) for u, v in zip(a, d))


def test_dropout_step_is_bit_identical_on_the_c_and_numpy_backends():
    v0 = np.random.default_rng(1).normal(size=(200, 50)).astype(np.float32)
    cv = np.random.default_rng(2).normal(size=(200, 50)).astype(np.float32)
    got = {}
    for backend in ("c", "numpy"):
        rng = exprc.random.Stream(11)
        v = exprc.shared(v0.copy(), "v", shape=(200, 50))
        c = exprc.matrix("c", "float32", shape=(200, 50))
        dropped = nn.dropout(v, 0.3, rng)
        g = exprc.grad(exprc.sum(dropped * c), v)  # c * mask / keep: the mask is a constant for grad
        f = exprc.function([c], [dropped, g], updates=[(v, v - 0.5 * g)], config=exprc.Config(backend=backend))
        assert f.backend == backend
        got[backend] = [np.copy(o) for o in f(cv)] + [v.get_value()]
        got[backend] += [np.copy(o) for o in f(cv)] + [v.get_value()]  # a second step: a new mask
    for a, b in zip(got["c"], got["numpy"]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    d1, g1 = got["c"][0], got["c"][1]
    mask = d1 != 0
    np.testing.assert_allclose(g1, np.where(mask, cv / np.float32(0.7), 0), rtol=1e-6)  # NumPy's own grad
    np.testing.assert_allclose(d1, np.where(mask, v0 / np.float32(0.7), 0), rtol=1e-6)
    assert not np.array_equal(mask, got["c"][3] != 0)


def test_mlp_dropout_step_agrees_on_the_c_and_numpy_backends():
    x, labels = _blobs(64, 6)
    y = nn.one_hot(labels, 4)
    got = {}
    for backend in ("c", "numpy"):
        net = nn.MLP([5, 16, 4], activation=nn.relu, seed=1, dropout=0.5)
        step, _ = nn.compile_classifier(net, nn.SGD(lr=0.1), n_features=5, n_classes=4,
                                        config=exprc.Config(backend=backend, num_threads=1))
        got[backend] = [np.asarray(step(x, y))] + [p.get_value() for p in net.params]
    # The same masks; the rest of the step may round its reductions differently (1 ulp).
    for a, b in zip(got["c"], got["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
