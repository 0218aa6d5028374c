"""A small LSTM language model trained by SGD with backpropagation through time, in exprc.

Written the way the Theano LSTM tutorial (``lstm.py``) writes its layer: parameters are shared
variables, the input projection of every time step is computed before the loop
(``state_below = dot(emb, W) + b``), one ``scan`` runs ``_step`` over the time axis with the
hidden and cell states in ``outputs_info`` (``alloc(0., n_samples, dim)``), the gates are
``_slice``\\ s of one pre-activation, and ``T.grad`` of the cost with respect to every parameter
gives the gradients through the loop (BPTT); the training step applies ``p - lr * g`` through
``updates`` and picks its minibatch with a symbolic index through ``givens``.  Differences from
the tutorial: a language model (predict the next token: a softmax output layer over the vocabulary
at each step) instead of a sentiment classifier, no mask (every sequence has the same length),
plain SGD, and synthetic data.

Data: the Fibonacci sequence modulo the vocabulary size (``s[t] = (s[t-1] + s[t-2]) % V``), cut
into windows of ``n_steps + 1`` tokens at deterministic offsets.  A token is determined by the two
before it, so the model has to carry one token in its state.

Run: ``python examples/theano_tutorials/lstm.py`` (prints per-epoch loss and time).
"""

from __future__ import annotations

import time

import numpy as np

import exprc
import exprc as T


def make_data(n_seqs: int = 128, n_steps: int = 10, n_vocab: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets, each (n_steps, n_seqs) int64 (time first, as scan wants)."""
    period = 6 * n_vocab * n_vocab  # longer than any Pisano period of n_vocab (<= 6 n)
    s = [1, 1]
    while len(s) < period + n_steps + 1:
        s.append((s[-1] + s[-2]) % n_vocab)
    s = np.array(s, dtype=np.int64)
    offsets = (np.arange(n_seqs) * 37) % period
    windows = np.stack([s[o:o + n_steps + 1] for o in offsets], axis=1)
    return windows[:-1], windows[1:]


def init_params(n_vocab: int, n_embed: int, n_hidden: int, seed: int = 1234) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def ortho(n):
        u, _, _ = np.linalg.svd(rng.standard_normal((n, n)))
        return u

    return {
        "Wemb": 0.1 * rng.standard_normal((n_vocab, n_embed)),
        "lstm_W": 0.1 * rng.standard_normal((n_embed, 4 * n_hidden)),
        "lstm_U": np.concatenate([ortho(n_hidden) for _ in range(4)], axis=1),
        "lstm_b": np.zeros(4 * n_hidden),
        "U": 0.1 * rng.standard_normal((n_hidden, n_vocab)),
        "b": np.zeros(n_vocab),
    }


def init_tparams(params: dict[str, np.ndarray]) -> dict[str, exprc.SharedVariable]:
    return {k: exprc.shared(v, name=k) for k, v in params.items()}


def _slice(_x, n, dim):
    return _x[:, n * dim:(n + 1) * dim]


def lstm_layer(tparams, state_below, n_hidden):
    """The hidden states of every step, (n_timesteps, n_samples, n_hidden)."""
    n_samples = state_below.shape[1]

    def _step(x_, h_, c_):
        preact = T.dot(h_, tparams["lstm_U"])
        preact += x_
        i = T.sigmoid(_slice(preact, 0, n_hidden))
        f = T.sigmoid(_slice(preact, 1, n_hidden))
        o = T.sigmoid(_slice(preact, 2, n_hidden))
        c = T.tanh(_slice(preact, 3, n_hidden))
        c = f * c_ + i * c
        h = o * T.tanh(c)
        return h, c

    state_below = T.dot(state_below, tparams["lstm_W"]) + tparams["lstm_b"]
    rval, _updates = exprc.scan(_step, sequences=[state_below],
                                outputs_info=[T.alloc(0.0, n_samples, n_hidden), T.alloc(0.0, n_samples, n_hidden)],
                                name="lstm_layers")
    return rval[0]


def build_model(tparams, n_hidden, shape=None):
    """Symbolic (x, y, cost): x and y int64 (n_timesteps, n_samples); the cost is the mean
    negative log-likelihood of the next token over every step and sequence.  ``shape``
    (n_timesteps, n_samples) fixes those sizes in the graph (so the loop's number of steps is
    static); by default they are known at call time only."""
    x = T.matrix("x", "int64")
    y = T.matrix("y", "int64")
    n_vocab, n_embed = tparams["Wemb"].get_value().shape
    emb = tparams["Wemb"][x]  # (n_timesteps, n_samples, n_embed)
    if shape is not None:  # (on emb: indexing by an integer array of static shape raises TypeError)
        emb = emb.reshape((*shape, n_embed))
    proj = lstm_layer(tparams, emb, n_hidden)
    logits = T.dot(proj, tparams["U"]) + tparams["b"]
    log_p = T.log_softmax(logits, axis=-1).reshape((-1, n_vocab))
    y_flat = y.flatten()
    cost = -T.mean(log_p[T.arange(y_flat.shape[0]), y_flat])
    return x, y, cost


def train_lstm(n_vocab: int = 20, n_embed: int = 16, n_hidden: int = 32, n_steps: int = 10, batch_size: int = 16,
               n_batches: int = 8, n_epochs: int = 10, lrate: float = 5.0, verbose: bool = True) -> list[float]:
    """Train; return the mean minibatch cost of each epoch."""
    data_x, data_y = make_data(n_batches * batch_size, n_steps, n_vocab)
    train_x, train_y = exprc.shared(data_x, name="train_x"), exprc.shared(data_y, name="train_y")
    tparams = init_tparams(init_params(n_vocab, n_embed, n_hidden))
    x, y, cost = build_model(tparams, n_hidden)
    grads = T.grad(cost, wrt=list(tparams.values()))
    updates = [(p, p - lrate * g) for p, g in zip(tparams.values(), grads)]
    index = T.scalar("index", "int64")
    t0 = time.perf_counter()
    train_model = exprc.function(
        [index], cost, updates=updates,
        givens={x: train_x[:, index * batch_size:(index + 1) * batch_size],
                y: train_y[:, index * batch_size:(index + 1) * batch_size]})
    if verbose:
        print(f"compiled the training step in {time.perf_counter() - t0:.3f} s")
    losses = []
    for epoch in range(n_epochs):
        t0 = time.perf_counter()
        batch = [float(train_model(i)) for i in range(n_batches)]
        losses.append(float(np.mean(batch)))
        if verbose:
            print(f"epoch {epoch + 1}: mean minibatch cost {losses[-1]:.6f} ({time.perf_counter() - t0:.4f} s)")
    return losses


# -- the NumPy reference ---------------------------------------------------------------------------
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_forward(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, keep: bool = False):
    """The cost in plain NumPy (and, with ``keep``, what the backward pass needs)."""
    H = params["lstm_U"].shape[0]
    n_t, n_s = x.shape
    emb = params["Wemb"][x]
    below = emb @ params["lstm_W"] + params["lstm_b"]
    h, c = np.zeros((n_s, H)), np.zeros((n_s, H))
    hs, cache = [], []
    for t in range(n_t):
        pre = h @ params["lstm_U"] + below[t]
        i, f, o = _sigmoid(pre[:, :H]), _sigmoid(pre[:, H:2 * H]), _sigmoid(pre[:, 2 * H:3 * H])
        g = np.tanh(pre[:, 3 * H:])
        c_prev, h_prev = c, h
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cache.append((i, f, o, g, c_prev, h_prev, c))
    hs = np.array(hs)
    z = hs @ params["U"] + params["b"]
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    cost = -np.mean(np.take_along_axis(log_p, y[..., None], axis=-1))
    if keep:
        return cost, (emb, hs, log_p, cache)
    return cost


def numpy_grads(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """The cost and its gradient with respect to every parameter (hand-written BPTT)."""
    cost, (emb, hs, log_p, cache) = numpy_forward(params, x, y, keep=True)
    H = params["lstm_U"].shape[0]
    n_t, n_s = x.shape
    d = np.exp(log_p)
    np.put_along_axis(d, y[..., None], np.take_along_axis(d, y[..., None], axis=-1) - 1, axis=-1)
    d /= n_t * n_s
    g = {k: np.zeros_like(v) for k, v in params.items()}
    g["U"] = np.einsum("tsh,tsv->hv", hs, d)
    g["b"] = d.sum(axis=(0, 1))
    dh_next, dc_next = np.zeros((n_s, H)), np.zeros((n_s, H))
    dbelow = np.zeros((n_t, n_s, 4 * H))
    for t in reversed(range(n_t)):
        i, f, o, gg, c_prev, h_prev, c = cache[t]
        dh = d[t] @ params["U"].T + dh_next
        tc = np.tanh(c)
        do = dh * tc
        dc = dh * o * (1 - tc ** 2) + dc_next
        di, dg, df = dc * gg, dc * i, dc * c_prev
        dc_next = dc * f
        dpre = np.concatenate([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - gg ** 2)], axis=1)
        g["lstm_U"] += h_prev.T @ dpre
        dh_next = dpre @ params["lstm_U"].T
        dbelow[t] = dpre
    g["lstm_W"] = np.einsum("tse,tsk->ek", emb, dbelow)
    g["lstm_b"] = dbelow.sum(axis=(0, 1))
    np.add.at(g["Wemb"], x, dbelow @ params["lstm_W"].T)
    return cost, g


def numpy_reference(n_vocab: int = 20, n_embed: int = 16, n_hidden: int = 32, n_steps: int = 10,
                    batch_size: int = 16, n_batches: int = 8, n_epochs: int = 10, lrate: float = 5.0) -> list[float]:
    """The same training in plain NumPy (the tests compare the two)."""
    data_x, data_y = make_data(n_batches * batch_size, n_steps, n_vocab)
    params = init_params(n_vocab, n_embed, n_hidden)
    losses = []
    for _ in range(n_epochs):
        batch = []
        for i in range(n_batches):
            sl = slice(i * batch_size, (i + 1) * batch_size)
            cost, g = numpy_grads(params, data_x[:, sl], data_y[:, sl])
            batch.append(cost)
            params = {k: v - lrate * g[k] for k, v in params.items()}
        losses.append(float(np.mean(batch)))
    return losses


if __name__ == "__main__":
    losses = train_lstm()
    assert losses[-1] < losses[0], losses
