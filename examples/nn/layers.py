"""Layers and activations: functions from exprc expressions to exprc expressions."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

import exprc


def relu(x: exprc.Node) -> exprc.Node:
    return exprc.maximum(x, 0)


def tanh(x: exprc.Node) -> exprc.Node:
    return exprc.tanh(x)


def sigmoid(x: exprc.Node) -> exprc.Node:
    return exprc.sigmoid(x)


def softmax(x: exprc.Node) -> exprc.Node:
    return exprc.softmax(x, axis=-1)


class Dense:
    """``activation(x @ W + b)`` with ``W`` (Glorot-uniform) and ``b`` (zeros) as shared variables."""

    def __init__(self, n_in: int, n_out: int, activation: Callable | None = None, rng: np.random.Generator | None = None,
                 dtype: str = "float32", name: str = "dense"):
        rng = rng if rng is not None else np.random.default_rng()
        limit = np.sqrt(6.0 / (n_in + n_out))
        # Static shapes (parameters never change size) let exprc prove gradient shapes at compile time.
        self.W = exprc.shared(rng.uniform(-limit, limit, (n_in, n_out)).astype(dtype), f"{name}.W",
                              shape=(n_in, n_out))
        self.b = exprc.shared(np.zeros(n_out, dtype), f"{name}.b", shape=(n_out,))
        self.activation = activation

    @property
    def params(self) -> list[exprc.SharedVariable]:
        return [self.W, self.b]

    def __call__(self, x: exprc.Node) -> exprc.Node:
        z = x @ self.W + self.b
        return self.activation(z) if self.activation is not None else z


class MLP:
    """Dense layers of the given sizes; ``activation`` between them, raw logits out."""

    def __init__(self, sizes: Sequence[int], activation: Callable = relu, seed: int = 0, dtype: str = "float32"):
        rng = np.random.default_rng(seed)
        self.layers = [Dense(a, b, activation if i < len(sizes) - 2 else None, rng, dtype, f"layer{i}")
                       for i, (a, b) in enumerate(itertools.pairwise(sizes))]
        self.dtype = dtype

    @property
    def params(self) -> list[exprc.SharedVariable]:
        return [p for layer in self.layers for p in layer.params]

    def __call__(self, x: exprc.Node) -> exprc.Node:
        for layer in self.layers:
            x = layer(x)
        return x
