"""The Theano tutorial's logistic regression trained by minibatch SGD (``logistic_sgd.py``), in exprc.

The structure is the tutorial's: a ``LogisticRegression`` class holding shared ``W`` and ``b``,
``negative_log_likelihood`` picking each example's log-probability by label
(``log_p[arange(n), y]``, a gather), and a training step compiled once whose minibatch is
selected by a symbolic index through ``givens={x: train_x[i*bs:(i+1)*bs]}`` over shared datasets.
What differs from the Theano original: ``import exprc as T`` (and ``exprc`` for ``theano``),
``T.softmax`` for ``T.nnet.softmax``, and synthetic data instead of a downloaded MNIST.

Run: ``python examples/theano_tutorials/logistic_sgd.py`` (prints per-epoch loss and time).
"""

from __future__ import annotations

import time

import numpy as np

import exprc
import exprc as T


def make_data(n: int = 2000, n_in: int = 64, n_out: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around one random centre per class (deterministic)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_out, n_in)) * 1.5
    y = rng.integers(0, n_out, n).astype(np.int32)
    x = centres[y] + rng.standard_normal((n, n_in))
    return x, y


class LogisticRegression:
    def __init__(self, input, n_in, n_out):
        self.W = exprc.shared(np.zeros((n_in, n_out)), name="W")
        self.b = exprc.shared(np.zeros((n_out,)), name="b")
        self.p_y_given_x = T.softmax(T.dot(input, self.W) + self.b, axis=-1)
        self.y_pred = T.argmax(self.p_y_given_x, axis=1)
        self.params = [self.W, self.b]
        self.input = input

    def negative_log_likelihood(self, y):
        return -T.mean(T.log(self.p_y_given_x)[T.arange(y.shape[0]), y])

    def errors(self, y):
        return T.mean(T.not_equal(self.y_pred, y))


def sgd_optimization(learning_rate: float = 0.13, n_epochs: int = 5, batch_size: int = 100,
                     verbose: bool = True) -> list[float]:
    """Train; return the mean minibatch loss of each epoch."""
    data_x, data_y = make_data()
    train_set_x = exprc.shared(data_x, name="train_set_x")
    train_set_y = exprc.shared(data_y, name="train_set_y")
    n_train_batches = data_x.shape[0] // batch_size

    index = T.scalar("index", "int64")
    x = T.matrix("x")
    y = T.vector("y", "int32")
    classifier = LogisticRegression(input=x, n_in=data_x.shape[1], n_out=10)
    cost = classifier.negative_log_likelihood(y)
    g_W = T.grad(cost=cost, wrt=classifier.W)
    g_b = T.grad(cost=cost, wrt=classifier.b)
    updates = [(classifier.W, classifier.W - learning_rate * g_W),
               (classifier.b, classifier.b - learning_rate * g_b)]
    t0 = time.perf_counter()
    train_model = exprc.function(
        inputs=[index], outputs=cost, updates=updates,
        givens={x: train_set_x[index * batch_size:(index + 1) * batch_size],
                y: train_set_y[index * batch_size:(index + 1) * batch_size]})
    if verbose:
        print(f"compiled the training step in {time.perf_counter() - t0:.3f} s")
    return train(train_model, n_train_batches, n_epochs, verbose, "loss")


def train(train_model, n_train_batches: int, n_epochs: int, verbose: bool, what: str) -> list[float]:
    """Run ``n_epochs`` passes over the minibatches; the mean minibatch ``what`` of each epoch."""
    losses = []
    for epoch in range(n_epochs):
        t0 = time.perf_counter()
        batch = [float(train_model(i)) for i in range(n_train_batches)]
        losses.append(float(np.mean(batch)))
        if verbose:
            print(f"epoch {epoch + 1}: mean minibatch {what} {losses[-1]:.6f} ({time.perf_counter() - t0:.4f} s)")
    return losses


def numpy_reference(learning_rate: float = 0.13, n_epochs: int = 5, batch_size: int = 100) -> list[float]:
    """The same training in plain NumPy (the tests compare the two)."""
    data_x, data_y = make_data()
    W, b = np.zeros((data_x.shape[1], 10)), np.zeros(10)
    losses = []
    for _ in range(n_epochs):
        batch = []
        for i in range(data_x.shape[0] // batch_size):
            xb, yb = data_x[i * batch_size:(i + 1) * batch_size], data_y[i * batch_size:(i + 1) * batch_size]
            z = xb @ W + b
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            n = len(yb)
            batch.append(-np.mean(np.log(p)[np.arange(n), yb]))
            d = p.copy()
            d[np.arange(n), yb] -= 1
            d /= n
            W, b = W - learning_rate * xb.T @ d, b - learning_rate * d.sum(axis=0)
        losses.append(float(np.mean(batch)))
    return losses


if __name__ == "__main__":
    sgd_optimization()
