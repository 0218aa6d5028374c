"""Train an MLP on scikit-learn's bundled digits with the small ``nn`` library (examples/nn/),
which uses only exprc's public API, then train the same model written by hand in NumPy.

Data: 1797 8x8 images shipped inside scikit-learn (no download); 80/20 split.  Install the
example extra first:  pip install ".[examples]"

Run:  python examples/train_digits.py [--epochs 30] [--hidden 128] [--batch 64]

Prints one line per epoch (loss, train and test accuracy, time), the cold compile time, the time
per epoch next to NumPy by hand (same initial weights, same Adam, same minibatches) and the
per-step call overhead of the compiled training step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Small matrices: BLAS threads cost more than they save (and on a busy machine far more); both the
# exprc model (whose matmuls call the same OpenBLAS from the generated C) and the NumPy-by-hand one use the
# same single thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nn  # the example library next to this file

import exprc


def load(seed: int = 0) -> tuple:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=seed, stratify=d.target)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-3
    return (x_tr - mean) / std, (x_te - mean) / std, y_tr, y_te


def train_exprc(data: tuple, args: argparse.Namespace, quiet: bool = False) -> tuple[list[float], float, object]:
    x_tr, x_te, y_tr, y_te = data
    net = nn.MLP([x_tr.shape[1], args.hidden, 10], activation=nn.relu, seed=args.seed)
    config = exprc.Config(num_threads=1)  # small arrays: one thread per kernel
    init = [p.get_value() for p in net.params]
    t0 = time.perf_counter()
    step, predict = nn.compile_classifier(net, nn.Adam(lr=args.lr), n_features=x_tr.shape[1], n_classes=10,
                                          config=config)
    compile_s = time.perf_counter() - t0
    if not quiet:
        print(f"exprc: training step built, differentiated and compiled in {compile_s:.2f} s "
              f"(backend {step.backend}, {len(step.kernels)} fused kernels, {len(step.updates)} updates)")
    y_tr1 = nn.one_hot(y_tr, 10)
    rng = np.random.default_rng(args.seed)
    times = []
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        losses = [float(step(xb, yb)) for xb, yb in nn.minibatches(x_tr, y_tr1, args.batch, rng)]
        times.append(time.perf_counter() - t)
        if not quiet:
            tr = np.mean(np.argmax(predict(x_tr), 1) == y_tr)
            te = np.mean(np.argmax(predict(x_te), 1) == y_te)
            bar = "#" * int(20 * epoch / args.epochs)
            print(f"epoch {epoch:3d}/{args.epochs} [{bar:<20}] loss {np.mean(losses):.4f}  train acc {tr:.4f}  "
                  f"test acc {te:.4f}  ({times[-1] * 1e3:.1f} ms)")
    test_acc = float(np.mean(np.argmax(predict(x_te), 1) == y_te))
    return times, test_acc, (init, step)


def train_numpy(data: tuple, args: argparse.Namespace, init: list[np.ndarray]) -> tuple[list[float], float]:
    """The same model, loss, Adam and minibatch order, with gradients written by hand."""
    x_tr, x_te, y_tr, y_te = data
    W1, b1, W2, b2 = (p.copy() for p in init)
    params = [W1, b1, W2, b2]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1_, b2_, eps, lr = 0.9, 0.999, 1e-8, args.lr
    y_tr1 = nn.one_hot(y_tr, 10)
    rng = np.random.default_rng(args.seed)
    t_step = 0
    times = []
    for _ in range(args.epochs):
        t = time.perf_counter()
        for xb, yb in nn.minibatches(x_tr, y_tr1, args.batch, rng):
            n = len(xb)
            z1 = xb @ W1 + b1
            h = np.maximum(z1, 0)
            z2 = h @ W2 + b2
            z2 = z2 - z2.max(1, keepdims=True)
            p = np.exp(z2)
            p /= p.sum(1, keepdims=True)
            dz2 = (p - yb) / n
            gW2, gb2 = h.T @ dz2, dz2.sum(0)
            dh = dz2 @ W2.T
            dz1 = dh * (z1 > 0)
            gW1, gb1 = xb.T @ dz1, dz1.sum(0)
            t_step += 1
            lr_t = np.float32(lr * np.sqrt(1 - b2_ ** t_step) / (1 - b1_ ** t_step))
            for i, g in enumerate((gW1, gb1, gW2, gb2)):
                m[i] = b1_ * m[i] + (1 - b1_) * g
                v[i] = b2_ * v[i] + (1 - b2_) * g * g
                params[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)
        times.append(time.perf_counter() - t)
    z = np.maximum(x_te @ W1 + b1, 0) @ W2 + b2
    return times, float(np.mean(np.argmax(z, 1) == y_te))


def step_time(step: exprc.Function, x: np.ndarray, batch: int) -> float:
    """Median time of one training step on a ``batch``-row minibatch."""
    xb = np.ascontiguousarray(x[:batch])
    yb = nn.one_hot(np.arange(batch) % 10, 10)
    for _ in range(50):
        step(xb, yb)
    reps = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(200):
            step(xb, yb)
        reps.append((time.perf_counter() - t) / 200)
    return float(np.median(reps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t_all = time.perf_counter()
    data = load(args.seed)
    print(f"digits: {len(data[0])} training and {len(data[1])} test images, {data[0].shape[1]} features, 10 classes")
    times, acc, (init, step) = train_exprc(data, args)
    total = time.perf_counter() - t_all
    print(f"exprc: test accuracy {acc:.4f} after {args.epochs} epochs; whole run {total:.1f} s")
    np_times, np_acc = train_numpy(data, args, init)
    ex, npy = np.median(times[1:] or times), np.median(np_times[1:] or np_times)
    print(f"time per epoch (median, {len(data[0]) // args.batch + 1} steps of {args.batch}): exprc {ex * 1e3:.1f} ms, "
          f"NumPy by hand {npy * 1e3:.1f} ms (ratio NumPy/exprc {npy / ex:.2f}); NumPy by hand reaches test "
          f"accuracy {np_acc:.4f}")
    per_step = step_time(step, data[0], args.batch)
    print(f"one training step ({args.batch} rows, forward + backward + Adam on {len(step.updates)} shared "
          f"variables): {per_step * 1e6:.1f} us")


if __name__ == "__main__":
    main()
