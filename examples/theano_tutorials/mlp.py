"""The Theano tutorial's multilayer perceptron (``mlp.py``) trained by minibatch SGD, in exprc.

As in the tutorial: a tanh ``HiddenLayer`` with uniformly initialised weights feeding the
``LogisticRegression`` layer of :mod:`logistic_sgd`, L1 and L2 penalties in the cost, gradients of
every parameter with ``T.grad`` and updates ``param - learning_rate * gparam``, minibatches chosen
by a symbolic index through ``givens``.  Differences from the original: ``import exprc as T``,
synthetic data, 3 epochs by default.

Run: ``python examples/theano_tutorials/mlp.py`` (prints per-epoch loss and time).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import exprc
import exprc as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from logistic_sgd import LogisticRegression, make_data, train


def init_weights(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    bound = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-bound, bound, (n_in, n_out))


class HiddenLayer:
    def __init__(self, rng, input, n_in, n_out, activation=T.tanh):
        self.W = exprc.shared(init_weights(rng, n_in, n_out), name="W_hidden")
        self.b = exprc.shared(np.zeros((n_out,)), name="b_hidden")
        self.output = activation(T.dot(input, self.W) + self.b)
        self.params = [self.W, self.b]


class MLP:
    def __init__(self, rng, input, n_in, n_hidden, n_out):
        self.hiddenLayer = HiddenLayer(rng, input, n_in, n_hidden)
        self.logRegressionLayer = LogisticRegression(self.hiddenLayer.output, n_hidden, n_out)
        self.L1 = abs(self.hiddenLayer.W).sum() + abs(self.logRegressionLayer.W).sum()
        self.L2_sqr = (self.hiddenLayer.W ** 2).sum() + (self.logRegressionLayer.W ** 2).sum()
        self.negative_log_likelihood = self.logRegressionLayer.negative_log_likelihood
        self.params = self.hiddenLayer.params + self.logRegressionLayer.params


def test_mlp(learning_rate: float = 0.01, L1_reg: float = 0.00, L2_reg: float = 0.0001, n_epochs: int = 3,
             batch_size: int = 20, n_hidden: int = 50, verbose: bool = True) -> list[float]:
    """Train; return the mean minibatch cost of each epoch."""
    data_x, data_y = make_data()
    train_set_x = exprc.shared(data_x, name="train_set_x")
    train_set_y = exprc.shared(data_y, name="train_set_y")
    n_train_batches = data_x.shape[0] // batch_size
    index = T.scalar("index", "int64")
    x, y = T.matrix("x"), T.vector("y", "int32")
    rng = np.random.default_rng(1234)
    classifier = MLP(rng=rng, input=x, n_in=data_x.shape[1], n_hidden=n_hidden, n_out=10)
    cost = classifier.negative_log_likelihood(y) + L1_reg * classifier.L1 + L2_reg * classifier.L2_sqr
    gparams = [T.grad(cost, param) for param in classifier.params]
    updates = [(param, param - learning_rate * gparam) for param, gparam in zip(classifier.params, gparams)]
    t0 = time.perf_counter()
    train_model = exprc.function(
        inputs=[index], outputs=cost, updates=updates,
        givens={x: train_set_x[index * batch_size:(index + 1) * batch_size],
                y: train_set_y[index * batch_size:(index + 1) * batch_size]})
    if verbose:
        print(f"compiled the training step in {time.perf_counter() - t0:.3f} s")
    return train(train_model, n_train_batches, n_epochs, verbose, "cost")


def numpy_reference(learning_rate: float = 0.01, L1_reg: float = 0.00, L2_reg: float = 0.0001, n_epochs: int = 3,
                    batch_size: int = 20, n_hidden: int = 50) -> list[float]:
    """The same training in plain NumPy (the tests compare the two)."""
    data_x, data_y = make_data()
    rng = np.random.default_rng(1234)
    W1, b1 = init_weights(rng, data_x.shape[1], n_hidden), np.zeros(n_hidden)
    W2, b2 = np.zeros((n_hidden, 10)), np.zeros(10)
    losses = []
    for _ in range(n_epochs):
        batch = []
        for i in range(data_x.shape[0] // batch_size):
            xb, yb = data_x[i * batch_size:(i + 1) * batch_size], data_y[i * batch_size:(i + 1) * batch_size]
            n = len(yb)
            h = np.tanh(xb @ W1 + b1)
            z = h @ W2 + b2
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            nll = -np.mean(np.log(p)[np.arange(n), yb])
            batch.append(nll + L1_reg * (np.abs(W1).sum() + np.abs(W2).sum())
                         + L2_reg * ((W1 ** 2).sum() + (W2 ** 2).sum()))
            d = p.copy()
            d[np.arange(n), yb] -= 1
            d /= n
            gW2 = h.T @ d + L1_reg * np.sign(W2) + 2 * L2_reg * W2
            gb2 = d.sum(axis=0)
            dh = (d @ W2.T) * (1 - h ** 2)
            gW1 = xb.T @ dh + L1_reg * np.sign(W1) + 2 * L2_reg * W1
            gb1 = dh.sum(axis=0)
            W1, b1, W2, b2 = (W1 - learning_rate * gW1, b1 - learning_rate * gb1,
                              W2 - learning_rate * gW2, b2 - learning_rate * gb2)
        losses.append(float(np.mean(batch)))
    return losses


if __name__ == "__main__":
    test_mlp()
