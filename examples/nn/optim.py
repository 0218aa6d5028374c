"""Optimizers: each turns (params, gradients) into an ``updates`` list for exprc.function."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import exprc


def _zeros_like(p: exprc.SharedVariable, name: str) -> exprc.SharedVariable:
    v = p.get_value(borrow=True)
    return exprc.shared(np.zeros_like(v), f"{p.name}.{name}", shape=p.type.shape)


class SGD:
    """Stochastic gradient descent with (optionally Nesterov) momentum."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov

    def updates(self, params: Sequence[exprc.SharedVariable], grads: Sequence[exprc.Node]) -> list:
        out = []
        for p, g in zip(params, grads):
            g = g.astype(p.dtype)
            if not self.momentum:
                out.append((p, p - self.lr * g))
                continue
            v = _zeros_like(p, "velocity")
            v_new = self.momentum * v - self.lr * g
            out.append((v, v_new))
            out.append((p, p + (self.momentum * v_new - self.lr * g if self.nesterov else v_new)))
        return out


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction; the step count is a shared scalar."""

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps

    def updates(self, params: Sequence[exprc.SharedVariable], grads: Sequence[exprc.Node]) -> list:
        t = exprc.shared(np.float64(0.0), "adam.t")
        t_new = t + 1.0
        # Bias corrections folded into the step size, computed once per step in float64.
        lr_t = self.lr * exprc.sqrt(1.0 - self.beta2 ** t_new) / (1.0 - self.beta1 ** t_new)
        out = [(t, t_new)]
        for p, g in zip(params, grads):
            g = g.astype(p.dtype)
            m, v = _zeros_like(p, "m"), _zeros_like(p, "v")
            m_new = self.beta1 * m + (1.0 - self.beta1) * g
            v_new = self.beta2 * v + (1.0 - self.beta2) * exprc.square(g)
            step = lr_t.astype(p.dtype) * m_new / (exprc.sqrt(v_new) + self.eps)
            out += [(m, m_new), (v, v_new), (p, p - step)]
        return out
