"""exprc quick start: build an expression, compile it, run it, look at the cache.

Run:  python examples/quickstart.py
"""

import time

import numpy as np

import exprc


def main() -> None:
    # 1. Build a symbolic expression with the NumPy-like API.
    x = exprc.vector("x")
    y = exprc.vector("y")
    expr = exprc.log(1 + exprc.exp(x)) * y + exprc.sum(exprc.exp(x - exprc.max(x)))
    print("expression:", exprc.pprint(expr))

    # 2. Compile it (C backend when a compiler works; cached on disk).
    t0 = time.perf_counter()
    f = exprc.function([x, y], expr)
    print(f"compiled for backend {f.backend!r} in {time.perf_counter() - t0:.3f} s")
    print("rewrites that fired:", ", ".join(f.rewrites) or "(none)")

    # 3. Run it on arrays and compare with NumPy.
    xs = np.linspace(-3.0, 3.0, 7)
    ys = np.arange(7.0)
    result = f(xs, ys)
    reference = np.log(1 + np.exp(xs)) * ys + np.sum(np.exp(xs - np.max(xs)))
    print("result:   ", np.array2string(result, precision=6))
    print("numpy:    ", np.array2string(reference, precision=6))
    print("max abs difference:", float(np.max(np.abs(result - reference))))

    # 4. What was generated, and where it is cached.
    print("\nfirst lines of the generated source:")
    body = [ln for ln in f.source.splitlines() if ln.startswith(("/* k", "static"))]
    for line in (body or f.source.splitlines())[:6]:
        print("   ", line)
    print("kernels:", [k["name"] if isinstance(k, dict) else k for k in f.kernels])
    print("cache entry:", f.cache_path or "(none: NumPy backend or cache disabled)")

    # 5. A second compile of the same graph is served from the cache.
    t0 = time.perf_counter()
    exprc.function([x, y], expr)
    print(f"second compile (cache hit): {1e3 * (time.perf_counter() - t0):.1f} ms")


if __name__ == "__main__":
    main()
