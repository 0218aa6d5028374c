"""Logistic regression by gradient descent, with gradients from exprc.grad.

Data: scikit-learn's bundled breast-cancer set (569 samples, 30 features; shipped inside the
package, no download).  Install the example extra first:  pip install ".[examples]"

Run:  python examples/logistic_regression.py

It prints the cold time to build, differentiate, optimize and compile the training step (a fresh
cache folder, so the C compiler really runs), the loss going down and the final (training) accuracy.
"""

import tempfile
import time

import numpy as np

import exprc


def load():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = data.data.astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)  # standardized features
    return x, data.target.astype(np.float64)


def training_step(n_features: int, lr: float, l2: float, config: exprc.Config) -> exprc.Function:
    """One compiled function: (X, y, w, b) -> (loss, new w, new b)."""
    X = exprc.matrix("X", shape=(None, n_features))
    y = exprc.vector("y")
    w = exprc.vector("w", shape=(n_features,))
    b = exprc.scalar("b")
    z = X @ w + b  # logits
    # Binary cross-entropy on logits: -y log(sigmoid(z)) - (1 - y) log(1 - sigmoid(z)).
    loss = exprc.mean(exprc.softplus(z) - y * z) + l2 * exprc.sum(w * w)
    gw, gb = exprc.grad(loss, [w, b])
    return exprc.function([X, y, w, b], [loss, w - lr * gw, b - lr * gb], config=config)


def main() -> None:
    x, y = load()
    with tempfile.TemporaryDirectory() as cold_cache:
        # A fresh cache folder: nothing is cached, the C compiler really runs.  One thread: the
        # data are small.  The toolchain probe (once per machine and cache folder) is timed apart.
        config = exprc.Config(cache_dir=cold_cache, num_threads=1)
        t0 = time.perf_counter()
        exprc.backends.unavailable_reason("c", config)
        probe = time.perf_counter() - t0
        t0 = time.perf_counter()
        step = training_step(x.shape[1], lr=0.5, l2=1e-3, config=config)
        cold = time.perf_counter() - t0
        print(f"training step built + differentiated + optimized + compiled (cold, backend {step.backend!r}, "
              f"{len(step.kernels)} fused kernels) in {cold:.3f} s (+ {probe:.3f} s toolchain probe, once)")
        w, b = np.zeros(x.shape[1]), np.float64(0.0)
        t0 = time.perf_counter()
        for it in range(201):
            loss, w, b = step(x, y, w, b)
            if it % 25 == 0:
                print(f"  step {it:3d}  loss {float(loss):.5f}")
        run = time.perf_counter() - t0
    accuracy = np.mean(((x @ w + b) > 0) == (y > 0.5))
    print(f"final accuracy {accuracy:.4f} on {len(y)} samples (201 steps in {run * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
