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
