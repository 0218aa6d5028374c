"""The Theano tutorial's denoising autoencoder (``dA.py``, deeplearning.net) trained by minibatch SGD, in exprc.

As in the tutorial: a ``dA`` class with tied weights (shared ``W`` for the encoder and ``W.T`` for
the decoder) and the biases ``b`` (hidden) and ``b_prime`` (visible), sigmoid units, the input
corrupted by zeroing each element with probability ``corruption_level`` through a random stream's
``binomial(size=input.shape, n=1, p=1 - corruption_level)``, the summed cross-entropy of the
reconstruction against the clean input averaged over the minibatch, and a training step
``[index] -> cost`` with ``updates=[(param, param - learning_rate * gparam)]`` whose minibatch is
selected through ``givens``.

The corruption mask is drawn inside the compiled training step: the step draws a new mask on every
call (the stream's state is a shared variable the step advances by itself), generated in the fused
loop that consumes it, never passed in from NumPy.  The mask is a constant for ``T.grad``, as in
Theano.

Differences from the Theano original: ``import exprc as T``, ``exprc.random.Stream`` for
``RandomStreams``, a NumPy ``Generator`` for ``RandomState``, and instead of downloaded MNIST the
synthetic data of :mod:`logistic_sgd` (``make_data``) squashed into (0, 1) by a logistic function,
64 visible and 32 hidden units, 5 epochs.

Run: ``python examples/theano_tutorials/dA.py`` (prints the mean cost of each epoch, without and
with corruption).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import exprc
import exprc as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from logistic_sgd import make_data

floatX = "float64"  # Theano's config.floatX (exprc's default Config.float_dtype)


def load_data() -> np.ndarray:
    """The inputs of :func:`logistic_sgd.make_data` mapped into (0, 1), as the tutorial's pixel
    intensities are (the cross-entropy cost needs targets in [0, 1])."""
    x, _ = make_data()
    return (1.0 / (1.0 + np.exp(-x))).astype(floatX)


def init_W(numpy_rng: np.random.Generator, n_visible: int, n_hidden: int) -> np.ndarray:
    """The tutorial's initialisation: uniform in +-4 sqrt(6 / (n_hidden + n_visible)) (sigmoid units)."""
    bound = 4 * np.sqrt(6.0 / (n_hidden + n_visible))
    return numpy_rng.uniform(-bound, bound, (n_visible, n_hidden)).astype(floatX)


class dA:
    """Denoising autoencoder with tied weights."""

    def __init__(self, numpy_rng, theano_rng=None, input=None, n_visible=64, n_hidden=32, W=None, bhid=None,
                 bvis=None):
        self.n_visible, self.n_hidden = n_visible, n_hidden
        if theano_rng is None:
            theano_rng = exprc.random.Stream(int(numpy_rng.integers(2 ** 30)))
        if W is None:
            W = exprc.shared(init_W(numpy_rng, n_visible, n_hidden), name="W")
        if bvis is None:
            bvis = exprc.shared(np.zeros(n_visible, floatX), name="b_prime")
        if bhid is None:
            bhid = exprc.shared(np.zeros(n_hidden, floatX), name="b")
        self.W, self.b, self.b_prime = W, bhid, bvis
        self.W_prime = self.W.T  # tied weights
        self.theano_rng = theano_rng
        self.x = T.matrix("input", floatX) if input is None else input
        self.params = [self.W, self.b, self.b_prime]

    def get_corrupted_input(self, input, corruption_level):
        """Zero each element with probability ``corruption_level`` (a mask drawn in the step)."""
        return input * self.theano_rng.binomial(size=input.shape, n=1, p=1 - corruption_level, dtype=floatX)

    def get_hidden_values(self, input):
        return T.sigmoid(T.dot(input, self.W) + self.b)

    def get_reconstructed_input(self, hidden):
        return T.sigmoid(T.dot(hidden, self.W_prime) + self.b_prime)

    def get_cost_updates(self, corruption_level, learning_rate):
        """The minibatch cost and the SGD updates of one training step."""
        tilde_x = self.get_corrupted_input(self.x, corruption_level)
        y = self.get_hidden_values(tilde_x)
        z = self.get_reconstructed_input(y)
        L = -T.sum(self.x * T.log(z) + (1 - self.x) * T.log(1 - z), axis=1)
        cost = T.mean(L)
        gparams = T.grad(cost, self.params)
        updates = [(param, param - learning_rate * gparam) for param, gparam in zip(self.params, gparams)]
        return cost, updates


def build(corruption_level: float = 0.3, learning_rate: float = 0.1, batch_size: int = 20, n_hidden: int = 32,
          seed: int = 123, data: np.ndarray | None = None):
    """The tutorial's set-up: ``(da, train_da, n_train_batches)``, ``train_da(index) -> cost``."""
    data = load_data() if data is None else data
    train_set_x = exprc.shared(data, name="train_set_x")
    n_train_batches = data.shape[0] // batch_size
    index = T.scalar("index", "int64")
    x = T.matrix("x", floatX)
    rng = np.random.default_rng(seed)
    theano_rng = exprc.random.Stream(int(rng.integers(2 ** 30)))
    da = dA(numpy_rng=rng, theano_rng=theano_rng, input=x, n_visible=data.shape[1], n_hidden=n_hidden)
    cost, updates = da.get_cost_updates(corruption_level=corruption_level, learning_rate=learning_rate)
    train_da = exprc.function([index], cost, updates=updates,
                              givens={x: train_set_x[index * batch_size:(index + 1) * batch_size]})
    return da, train_da, n_train_batches


def test_dA(learning_rate: float = 0.1, training_epochs: int = 5, batch_size: int = 20,
            corruption_level: float = 0.3, verbose: bool = True) -> list[float]:
    """Train; return the mean minibatch cost of each epoch."""
    t0 = time.perf_counter()
    _, train_da, n_train_batches = build(corruption_level, learning_rate, batch_size)
    if verbose:
        print(f"corruption {corruption_level:.0%}: compiled the training step in {time.perf_counter() - t0:.3f} s")
    costs = []
    for epoch in range(training_epochs):
        t0 = time.perf_counter()
        costs.append(float(np.mean([train_da(i) for i in range(n_train_batches)])))
        if verbose:
            print(f"Training epoch {epoch}, cost {costs[-1]:.6f} ({time.perf_counter() - t0:.4f} s)")
    return costs


def numpy_reference(learning_rate: float = 0.1, training_epochs: int = 5, batch_size: int = 20, n_hidden: int = 32,
                    seed: int = 123) -> list[float]:
    """The same training without corruption in plain NumPy (the tests compare the two)."""
    data = load_data()
    rng = np.random.default_rng(seed)
    rng.integers(2 ** 30)  # the stream's seed, drawn first as in build()
    W = init_W(rng, data.shape[1], n_hidden)
    b, b_prime = np.zeros(n_hidden), np.zeros(data.shape[1])
    costs = []
    for _ in range(training_epochs):
        batch = []
        for i in range(data.shape[0] // batch_size):
            x = data[i * batch_size:(i + 1) * batch_size]
            y = 1 / (1 + np.exp(-(x @ W + b)))
            z = 1 / (1 + np.exp(-(y @ W.T + b_prime)))
            batch.append(np.mean(-np.sum(x * np.log(z) + (1 - x) * np.log(1 - z), axis=1)))
            dz = (z - x) / len(x)  # d cost / d (pre-sigmoid of z)
            dy = (dz @ W) * y * (1 - y)  # d cost / d (pre-sigmoid of y)
            gW = x.T @ dy + dz.T @ y
            W, b, b_prime = W - learning_rate * gW, b - learning_rate * dy.sum(0), b_prime - learning_rate * dz.sum(0)
        costs.append(float(np.mean(batch)))
    return costs


def main() -> None:
    test_dA(corruption_level=0.0)
    test_dA(corruption_level=0.3)


if __name__ == "__main__":
    main()
