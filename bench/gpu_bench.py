#!/usr/bin/env python
"""GPU benchmark of exprc's CUDA backend (run by bench/gpu_check.sh; see bench/README.md).

    python bench/gpu_bench.py                          # E1-E5, 1e6/1e7/1e8, float32 and float64
    python bench/gpu_bench.py --quick                  # 1e6 and 1e7, float32 only
    python bench/gpu_bench.py --sizes 1e8 --dtypes float32 --exprs E1,E2 --systems exprc,cupy
    python bench/gpu_bench.py --missing                # pip names of what the run needs and lacks

Systems: ``exprc`` (backend="cuda", fresh output per call), ``cupy`` (array expressions, one kernel
per op), ``cupy-fuse`` (``cupy.fuse``), ``torch`` (eager), ``torch-compile`` (inductor; compiled once
per expression and dtype with ``dynamic=True``, skipped past ``--budget`` seconds).  Every figure is
the mean wall time of ``--reps`` back-to-back calls ended by one synchronization, on inputs already on
the device.  The reference is the device-to-device copy bandwidth (``cuMemcpyDtoD`` of the same number
of bytes: read + write) measured in the same run; each cell gives the effective bandwidth
(bytes a perfectly fused kernel must move / time) as a fraction of it.  Results are checked against
NumPy at the smallest size before anything is timed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

EXPR_KEYS = ("E1", "E2", "E3", "E4", "E5")
SYSTEMS = ("exprc", "cupy", "cupy-fuse", "torch", "torch-compile")
#: (import name, pip name) of what gpu_check.sh needs on top of cuda-bindings, NVRTC, CuPy and PyTorch.
REQUIRED = (("numpy", "numpy"), ("cffi", "cffi"), ("pycparser", "pycparser"), ("networkx", "networkx"),
            ("sympy", "sympy"), ("mpmath", "mpmath"), ("pytest", "pytest"), ("hypothesis", "hypothesis"),
            ("cuda.bindings", "cuda-bindings"), ("nvidia.cuda_nvrtc|nvidia.cu13|nvidia.cu12", "nvidia-cuda-nvrtc-cu12"))
# An entry's modules separated by "|" are alternatives: CUDA 13's NVRTC wheel installs nvidia/cu13.


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes: expected positive numbers like 1e6,1e8, got {text!r}")
    return sizes


def _choices(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{what}: unknown {', '.join(bad) or 'empty list'}; "
                                             f"choose from {', '.join(allowed)}")
        return items
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_sizes, default=None, help="element counts (default 1e6,1e7,1e8)")
    ap.add_argument("--dtypes", type=_choices(("float32", "float64"), "dtypes"), default=None)
    ap.add_argument("--exprs", type=_choices(EXPR_KEYS, "exprs"), default=list(EXPR_KEYS))
    ap.add_argument("--systems", type=_choices(SYSTEMS, "systems"), default=list(SYSTEMS))
    ap.add_argument("--reps", type=int, default=None, help="calls per measurement (default: by size)")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds after which torch.compile is skipped")
    ap.add_argument("--quick", action="store_true", help="sizes 1e6,1e7; float32 only")
    ap.add_argument("--json", default=None, help="where to write results (default bench/results/gpu-<time>.json)")
    ap.add_argument("--missing", action="store_true", help="print the pip names of missing modules and exit")
    args = ap.parse_args(argv)
    if args.sizes is None:
        args.sizes = [10**6, 10**7] if args.quick else [10**6, 10**7, 10**8]
    if args.dtypes is None:
        args.dtypes = ["float32"] if args.quick else ["float32", "float64"]
    if args.reps is not None and args.reps < 1:
        ap.error("--reps must be at least 1")
    return args


def missing_modules(find: Callable[[str], Any] | None = None, version: Callable[[str], str] | None = None) -> list[str]:
    """Pip requirements for the required modules that cannot be found (and NumPy 1.x: exprc needs 2)."""
    import importlib.metadata
    import importlib.util

    find = find or importlib.util.find_spec
    version = version or importlib.metadata.version
    out = []
    for mod, pip_name in REQUIRED:
        found = False
        for alternative in mod.split("|"):
            try:
                found = found or find(alternative) is not None
            except (ImportError, ValueError):
                pass
        if not found:
            out.append(pip_name)
        elif mod == "numpy" and int(version("numpy").split(".")[0]) < 2:
            out.append("numpy>=2.0")
    return out


def bytes_moved(key: str, n: int, itemsize: int) -> int:
    """Bytes a perfectly fused implementation must move: E1-E3, E5 read 3 arrays and write 1;
    E4 reads ``a`` twice (max, then the fused exp-sum)."""
    return (2 if key == "E4" else 4) * n * itemsize


def reps_for(n: int, override: int | None = None) -> int:
    return override or (200 if n <= 10**6 else 50 if n <= 10**7 else 10)


def expressions() -> dict[str, Callable[..., Any]]:
    """``fn(m, a, b, c)`` for a NumPy-like module ``m`` (numpy, exprc, cupy, torch)."""
    return {
        "E1": lambda m, a, b, c: a * b + c,
        "E2": lambda m, a, b, c: m.exp(-a * a) * m.sin(b) + m.log1p(c * c),
        "E3": lambda m, a, b, c: m.sqrt(a * a + b * b) / (1 + m.exp(-c)),
        "E4": lambda m, a, b, c: m.sum(m.exp(a - m.max(a))),
        "E5": lambda m, a, b, c: 2 * a + 3 * b - c * 0.5 + a * b * c,
    }


def format_table(rows: list[dict[str, Any]], systems: Sequence[str]) -> str:
    """One line per (expr, dtype, size): each system's time and fraction of copy bandwidth."""
    head = ["expr", "dtype", "n", "copy GB/s"] + [f"{s}" for s in systems]
    lines = [head]
    for r in rows:
        cells = [r["expr"], r["dtype"], f"{r['n']:.0e}", f"{r['copy_gbps']:.0f}"]
        for s in systems:
            c = r["systems"].get(s)
            if c is None:
                cells.append("-")
            elif "error" in c:
                cells.append(f"! {c['error'][:28]}")
            else:
                cells.append(f"{c['us']:.1f}us {100 * c['frac']:.0f}%")
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in lines)


# -- measurement (GPU only) ------------------------------------------------------------------------------------
def _sync_fn(drv: Any) -> Callable[[], None]:
    return drv.synchronize


def timeit(fn: Callable[[], Any], sync: Callable[[], None], reps: int) -> float:
    """Mean seconds per call of ``reps`` back-to-back calls (after two warm-up calls)."""
    fn()
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def _system(name: str, key: str, dtype: str, fn: Callable[..., Any], budget_left: float) -> Callable[..., Any] | None:
    """A callable ``f(a, b, c)`` on device arrays of that system, or None when unavailable."""
    if name == "exprc":
        import exprc

        ins = [exprc.vector(v, dtype) for v in "abc"]
        f = exprc.function(ins, fn(exprc, *ins), backend="cuda")
        return lambda a, b, c: f(a, b, c)
    if name.startswith("cupy"):
        cupy = importlib.import_module("cupy")
        if name == "cupy":
            return lambda a, b, c: fn(cupy, a, b, c)
        def expr(a: Any, b: Any, c: Any) -> Any:  # a named function: cupy.fuse names its kernel after it
            return fn(cupy, a, b, c)

        expr.__name__ = expr.__qualname__ = f"fused_{key}_{dtype}"
        return cupy.fuse(expr)
    torch = importlib.import_module("torch")
    if name == "torch":
        return lambda a, b, c: fn(torch, a, b, c)
    if budget_left <= 0:
        return None
    # Every expression and dtype is compiled from the same lambda's code object: without a higher
    # limit dynamo stops recompiling after 8 and silently runs the rest eagerly.
    dynamo = importlib.import_module("torch._dynamo")
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, limit):
            setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), 256))
    return torch.compile(lambda a, b, c: fn(torch, a, b, c), dynamic=True)


def run(args: argparse.Namespace) -> dict[str, Any]:  # pragma: no cover - needs a GPU
    import numpy as np

    import exprc
    from exprc.backends.cuda.kernel import DeviceArray, get_driver

    drv = get_driver()
    sync = _sync_fn(drv)
    start = time.perf_counter()
    fns = expressions()
    wrappers: dict[str, Callable[[Any], Any]] = {"exprc": lambda d: d}
    available = ["exprc"]
    for s in args.systems:
        if s == "exprc":
            continue
        try:
            mod = importlib.import_module("cupy" if s.startswith("cupy") else "torch")
        except ImportError:
            print(f"# {s}: not installed, skipped", file=sys.stderr)
            continue
        if s.startswith("cupy"):
            wrappers[s] = mod.asarray
        else:
            wrappers[s] = lambda d, t=mod: t.as_tensor(d, device="cuda")
        available.append(s)
    systems = [s for s in args.systems if s in available]
    rows = []
    made: dict[tuple, Any] = {}  # (system, expr, dtype) -> callable: torch.compile compiles once per pair
    rng = np.random.default_rng(0)
    for dtype in args.dtypes:
        for n in sorted(args.sizes):
            host = [rng.uniform(-2, 2, n).astype(dtype) for _ in range(3)]
            dev = [DeviceArray.from_numpy(h, drv) for h in host]
            itemsize = np.dtype(dtype).itemsize
            nbytes = n * itemsize
            dst = DeviceArray.empty((n,), dtype, drv)
            copy_s = timeit(lambda dst=dst, src=dev[0], nb=nbytes: drv.dtod(dst.ptr, src.ptr, nb), sync,
                            reps_for(n, args.reps))
            copy_gbps = 2 * nbytes / copy_s / 1e9
            for key in args.exprs:
                row = {"expr": key, "dtype": dtype, "n": n, "copy_gbps": copy_gbps, "systems": {}}
                want = fns[key](np, *host) if n == min(args.sizes) else None
                for s in systems:
                    left = args.budget - (time.perf_counter() - start)
                    try:
                        if (s, key, dtype) not in made:
                            made[s, key, dtype] = _system(s, key, dtype, fns[key], left)
                        f = made[s, key, dtype]
                        if f is None:
                            row["systems"][s] = {"error": "skipped (time budget)"}
                            continue
                        ins = [wrappers[s](d) for d in dev]
                        if want is not None:
                            got = np.asarray(_to_host(f(*ins)))
                            tol = {"float32": 2e-4, "float64": 1e-9}[dtype]
                            if not np.allclose(got, want, rtol=tol, atol=tol):
                                row["systems"][s] = {"error": "wrong result"}
                                continue
                        sec = timeit(lambda f=f, ins=ins: f(*ins), sync, reps_for(n, args.reps))
                        gbps = bytes_moved(key, n, itemsize) / sec / 1e9
                        row["systems"][s] = {"us": sec * 1e6, "gbps": gbps, "frac": gbps / copy_gbps}
                    except Exception as exc:  # noqa: BLE001 - a failing system is reported, not fatal
                        row["systems"][s] = {"error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                print(format_table([row], systems).splitlines()[-1], file=sys.stderr, flush=True)
            del dev, dst
    overhead = _launch_overhead(drv, sync, systems, wrappers)
    return {"device": drv.name, "arch": drv.arch, "exprc": exprc.__version__, "rows": rows, "systems": systems,
            "launch_overhead_us": overhead, "seconds": time.perf_counter() - start}


def _to_host(x: Any) -> Any:  # pragma: no cover - needs a GPU
    if hasattr(x, "get"):
        return x.get()
    if hasattr(x, "cpu"):
        return x.cpu().numpy()
    return x


def _launch_overhead(drv: Any, sync: Callable[[], None], systems: Sequence[str],
                     wrappers: dict) -> dict[str, float]:  # pragma: no cover - needs a GPU
    """Microseconds per call of E1 on 1000-element float32 arrays (call + launch, no sync per call)."""
    import numpy as np

    from exprc.backends.cuda.kernel import DeviceArray

    fn = expressions()["E1"]
    dev = [DeviceArray.from_numpy(np.ones(1000, np.float32), drv) for _ in range(3)]
    out = {}
    for s in systems:
        if s == "torch-compile":
            continue
        try:
            f = _system(s, "E1", "float32", fn, 1.0)
            ins = [wrappers[s](d) for d in dev]
            out[s] = timeit(lambda f=f, ins=ins: f(*ins), sync, 2000) * 1e6
        except Exception:  # noqa: BLE001,S112 - reported as missing
            continue
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.missing:
        print(" ".join(missing_modules()))
        return 0
    result = run(args)  # pragma: no cover - needs a GPU
    print(f"\n{result['device']} ({result['arch']}), exprc {result['exprc']}: time per call and effective "
          "bandwidth as a fraction of device-to-device copy bandwidth")
    print(format_table(result["rows"], result["systems"]))
    print("launch overhead (us per call, E1 on 1000 elements): "
          + ", ".join(f"{k} {v:.1f}" for k, v in result["launch_overhead_us"].items()))
    path = Path(args.json) if args.json else HERE / "results" / f"gpu-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"results: {path}  ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["bytes_moved", "format_table", "main", "missing_modules", "parse_args"]
