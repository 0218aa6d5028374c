"""The CUDA backend.

Without a GPU (this suite's usual home): every CUDA source of the random-graph property suite
and of the whole op table compiles with NVRTC to PTX; golden sources; NVRTC errors; cache
entries; ``backend="cuda"`` raises BackendUnavailable; and the runtime's Python side runs on
an emulated driver (``cuda_emulator``: host memory, the C kernels of the same layout).
With a GPU: the same functions launched for real, compared with the NumPy backend.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close
from graphgen import graph_cases
from hypothesis import given, settings

import exprc
import exprc.cuda
from exprc import Config
from exprc.backends.c import compile as cc
from exprc.backends.cuda import compile as nvrtc
from exprc.errors import BackendUnavailable, CompileError, InputTypeError
from exprc.pipeline import FunctionGraph

GOLDEN = Path(__file__).parent / "golden"
NVRTC_MISSING = nvrtc.probe()
needs_nvrtc = pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"NVRTC unavailable: {NVRTC_MISSING}")


def _device_reason() -> str | None:
    from exprc.backends.cuda.kernel import probe, set_driver

    set_driver(None)
    return probe()


DEVICE_MISSING = _device_reason()
CC_MISSING = cc.probe(Config())
#: The emulated driver runs the C backend's kernels: it needs NVRTC and a C compiler.
needs_emulator = pytest.mark.skipif(NVRTC_MISSING is not None or CC_MISSING is not None,
                                    reason=f"NVRTC ({NVRTC_MISSING or 'ok'}) and a C compiler ({CC_MISSING or 'ok'})")
needs_device = pytest.mark.skipif(DEVICE_MISSING is not None, reason=f"no CUDA device: {DEVICE_MISSING}")
NOCACHE = Config(cache=False)


def _ptx_entries(ptx: str) -> list[str]:
    return [line.split()[-1].rstrip("(") for line in ptx.splitlines() if ".entry" in line]


# -- compile only (no device) ---------------------------------------------------------------------------------
@needs_nvrtc
@settings(max_examples=40)
@given(graph_cases())
def test_property_suite_compiles_to_ptx(case):
    fg = FunctionGraph(tuple(case.inputs), (case.expr,))
    out = exprc.cuda.compile_only(fg, arch="sm_90", config=NOCACHE)
    assert out.ptx.startswith("//") and ".target sm_90" in out.ptx
    assert sorted(_ptx_entries(out.ptx)) == sorted(out.kernels)


def _every_op_outputs(dtypes=("float64", "float32", "int64", "int32", "bool")):
    """One output per elementwise op of the table and per operand dtype it accepts, and every
    native reduction over every dtype, with views and broadcasting."""
    from exprc.ops import _UNARY, OPS

    unary = {row[0] for row in _UNARY}
    outs = []
    for dt in dtypes:
        x = exprc.matrix(f"x_{dt}", dt)
        y = exprc.vector(f"y_{dt}", dt)
        for name, op in sorted(OPS.items()):
            if op.kind != "elemwise" or name in ("cast", "fill"):
                continue
            arity = 1 if name in unary else 2
            args = (x, exprc.expand_dims(y, 0), x.T.T)[:arity] if name != "where" else (x > 0, x, y)
            if name == "where" and dt == "bool":
                continue
            try:
                node = op.make(args, {})
            except (TypeError, ValueError):
                continue  # not defined for this dtype (e.g. bitwise ops on floats)
            if dt in ("float64", "float32") or node.inputs[-1].dtype == dt:  # int ops cast to float: seen above
                outs.append(node)
        for r in ("sum", "prod", "mean", "max", "min", "all", "any"):
            for axis in (None, 0, 1):
                try:
                    outs.append(getattr(exprc, r)(x[::-1], axis=axis))
                except (TypeError, ValueError):
                    continue
        outs.append(x.astype("float32") + y.astype("int64"))
    return outs


@needs_nvrtc
@pytest.mark.parametrize("fast_math", [False, True])
def test_every_op_and_dtype_compiles(fast_math):
    outs = _every_op_outputs(("float32",) if fast_math else ("float64", "float32", "int64", "int32", "bool"))
    assert len(outs) > (40 if fast_math else 150)
    out = exprc.cuda.compile_only(outs, arch="sm_80", config=NOCACHE.replace(fast_math=fast_math))
    assert len(_ptx_entries(out.ptx)) == len(out.kernels) >= 8


def golden_cases():
    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    x = exprc.vector("x")
    m, v = exprc.matrix("m", "float32"), exprc.vector("v", "float32")
    key = exprc.vector("key", "int64")
    return {
        "e1_axpy": [a * b + c],
        "logsumexp_reduce": [exprc.sum(exprc.exp(x - exprc.max(x)))],
        "float32_broadcast_rowsum": [exprc.sum(exprc.tanh(m * v), axis=1)],
        "dropout_draw": [x * exprc.random.bernoulli(key, size=x.shape, p=0.8, dtype="float64") / 0.8],
    }


@pytest.mark.parametrize("name", sorted(golden_cases()))
def test_golden_cuda_sources(name):
    src = exprc.cuda.render(golden_cases()[name])[0]
    src = src[src.index("/* k"):]
    path = GOLDEN / f"{name}.cu"
    if os.environ.get("EXPRC_UPDATE_GOLDEN"):
        path.write_text(src)
    assert src == path.read_text(), f"generated CUDA for {name} changed; rerun with EXPRC_UPDATE_GOLDEN=1 and review"


def test_renderer_shares_the_c_layout_and_differs_where_it_must():
    from exprc.backends.c.render import CRenderer
    from exprc.backends.cuda.render import CUDARenderer
    from exprc.fusion import lower

    x, y = exprc.vector("x", "float32"), exprc.matrix("y", "float32")
    fg = exprc.optimize([exprc.exp(x) / y, exprc.sum(exprc.sin(y), axis=0)])
    prog = lower(list(fg.outputs), list(fg.inputs))
    c_lay = CRenderer().render(prog)[1]
    cu_src, cu_lay = CUDARenderer().render(prog)
    assert c_lay == cu_lay
    assert "expf(" in cu_src and "__expf" not in cu_src and "#pragma omp" not in cu_src
    assert 'extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK)' in cu_src
    assert "__restrict__" in cu_src and "for (int64_t i = first; i < total; i += step)" in cu_src
    fast = CUDARenderer(fast_math=True).render(prog)[0]
    assert "__expf(" in fast and "__fdividef(" in fast and "__sinf(" in fast
    assert "--fmad=false" in nvrtc.options(Config(), "sm_90", "ptx")
    assert "--use_fast_math" in nvrtc.options(Config(fast_math=True), "sm_90", "ptx")
    assert "--gpu-architecture=compute_90" in nvrtc.options(Config(), "sm_90", "ptx")
    assert "--gpu-architecture=sm_90" in nvrtc.options(Config(), "sm_90", "cubin")


def test_arch_names():
    assert [nvrtc.normalize_arch(a) for a in ("sm_90", "compute_80", "86", "8.9")] == ["sm_90", "sm_80", "sm_86",
                                                                                     "sm_89"]
    with pytest.raises(ValueError):
        nvrtc.normalize_arch("hopper")


@needs_nvrtc
def test_nvrtc_errors_carry_log_and_source(tmp_path):
    with pytest.raises(CompileError) as info:
        nvrtc.build('extern "C" __global__ void k() { undefined_thing(); }', tmp_path, "k_bad", "sm_90", "ptx",
                    Config())
    err = info.value
    assert "undefined_thing" in err.log and "error" in err.log
    assert err.source_path == str(tmp_path / "k_bad.cu") and Path(err.source_path).exists()
    assert "NVRTC compilation of k_bad failed" in str(err) and "--- compiler log ---" in str(err)


@needs_nvrtc
def test_cuda_binaries_live_in_the_cache(tmp_path, monkeypatch):
    from test_cli import exprc_cli

    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path))
    x = exprc.vector("x")
    first = exprc.cuda.compile_only([exprc.exp(x) + 1], arch="sm_90")
    again = exprc.cuda.compile_only([exprc.exp(x) + 1], arch="sm_90")
    assert first.cache_entry == again.cache_entry and first.binary == again.binary
    meta = json.loads((first.cache_entry / "meta.json").read_text())
    assert meta["backend"] == "cuda" and meta["arch"] == "sm_90" and meta["target"] == "ptx"
    assert meta["parts"]["compiler"] == "nvrtc" and meta["parts"]["compiler_version"] == nvrtc.version()
    assert (first.cache_entry / meta["library"]).name.endswith(".ptx")
    assert (first.cache_entry / meta["source"]).read_text() == first.source
    other = exprc.cuda.compile_only([exprc.exp(x) + 1], arch="sm_80")
    assert other.cache_entry != first.cache_entry  # the arch is a key part
    listing = exprc_cli(tmp_path, "cache", "list")
    assert listing.returncode == 0 and listing.stdout.count(" cuda ") == 2, listing.stdout
    assert exprc_cli(tmp_path, "cache", "verify").returncode == 0


@pytest.mark.skipif(DEVICE_MISSING is None, reason="a CUDA device is present")
def test_backend_unavailable_without_a_device():
    x = exprc.vector("x")
    with pytest.raises(BackendUnavailable) as info:
        exprc.function([x], x * 2, backend="cuda")
    msg = str(info.value)
    assert "backend 'cuda' is unavailable" in msg
    assert any(s in msg for s in ("NVIDIA driver", "cuda-bindings", "no CUDA device", "CUDA driver")), msg
    assert not exprc.cuda.is_available() and exprc.cuda.unavailable_reason() == DEVICE_MISSING


# -- the runtime on an emulated driver --------------------------------------------------------------------------
@pytest.fixture
def emulated():
    from cuda_emulator import EmulatedDriver

    from exprc.backends.cuda.kernel import set_driver

    drv = EmulatedDriver()
    set_driver(drv)
    yield drv
    set_driver(None)


def _cuda_function(drv, inputs, outputs, **cfg):
    f = exprc.function(inputs, outputs, backend="cuda", config=NOCACHE.replace(**cfg))
    if drv is not None:
        drv.attach(f._kernel)
    return f


@needs_emulator
@settings(max_examples=20)
@given(case=graph_cases(max_ops=4))
def test_emulated_runtime_matches_numpy(case):
    from cuda_emulator import EmulatedDriver

    from exprc.backends.cuda.kernel import set_driver

    drv = EmulatedDriver()
    set_driver(drv)
    try:
        f = _cuda_function(drv, case.inputs, case.expr, return_numpy=True)
        assert_close(f(*case.args), case.expected())
    finally:
        set_driver(None)


@needs_emulator
def test_fast_call_path_takes_planned_device_arrays_only(emulated):
    """From the third call, device-array calls whose shapes have a launch-only plan skip the checked
    path; everything else (new shapes, strided views, wrong dtypes, host arrays, NumPy steps) still
    goes through it and gets its checks."""
    from exprc.backends.cuda.kernel import DeviceArray
    from exprc.errors import InputTypeError

    x, y = exprc.vector("x"), exprc.vector("y")
    m = exprc.matrix("m")
    f = _cuda_function(emulated, [x, y], [x * y + 1, exprc.sum(x)])
    g = _cuda_function(emulated, [m], [m @ m.T, m * 2])  # a NumPy step (matmul): never simple
    h = _cuda_function(emulated, [x], [x * 2, x * 2])  # one node twice: never simple
    rng = np.random.default_rng(1)
    for n in (5, 5, 5, 1000, 1000, 1000):
        hx, hy = rng.normal(size=n), rng.normal(size=n)
        dx, dy = DeviceArray.from_numpy(hx, emulated), DeviceArray.from_numpy(hy, emulated)
        got = f(dx, dy)
        assert_close(got[0].get(), hx * hy + 1)
        assert_close(got[1].get(), hx.sum())
        got = h(dx)
        assert got[0] is not got[1] and np.array_equal(got[1].get(), 2 * hx)
        hm = hx[: n // 5 * 5].reshape(-1, 5)
        got = g(DeviceArray.from_numpy(hm, emulated))
        assert_close(got[0].get(), hm @ hm.T)
    assert f._fast is not None and f._fast(dx, dy) is not None
    assert h._fast is not None and h._fast(dx) is None and g._fast(DeviceArray.from_numpy(hm, emulated)) is None
    view = DeviceArray(dx.shape[:1], dx.dtype, dx.ptr, (16,), dx, emulated)  # every other element of 1000
    view.shape = (500,)
    assert f._fast(view, view) is None  # a new signature: planned by the checked path first
    assert_close(f(view, view)[0].get(), hx[::2] ** 2 + 1)
    with pytest.raises(InputTypeError, match="float32"):
        f(DeviceArray.from_numpy(hx.astype(np.float32), emulated), dy)
    assert_close(f(hx, hy)[0].get(), hx * hy + 1)


def _e_cases(dtype="float64"):
    a, b, c = (exprc.vector(n, dtype) for n in "abc")
    return [a, b, c], {
        "E1": a * b + c,
        "E2": exprc.exp(-a * a) * exprc.sin(b) + exprc.log1p(c * c),
        "E3": exprc.sqrt(a * a + b * b) / (1 + exprc.exp(-c)),
        "E4": exprc.sum(exprc.exp(a - exprc.max(a))),
        "E5": 2 * a + 3 * b - c * 0.5 + a * b * c,
    }


def _e_reference(name, a, b, c):
    return {"E1": lambda: a * b + c, "E2": lambda: np.exp(-a * a) * np.sin(b) + np.log1p(c * c),
            "E3": lambda: np.sqrt(a * a + b * b) / (1 + np.exp(-c)), "E4": lambda: np.sum(np.exp(a - np.max(a))),
            "E5": lambda: 2 * a + 3 * b - c * 0.5 + a * b * c}[name]()


@needs_emulator
def test_emulated_e1_to_e5_with_chunked_reductions(emulated):
    inputs, exprs = _e_cases()
    rng = np.random.default_rng(0)
    args = [rng.uniform(-2, 2, 20_000) for _ in range(3)]
    f = _cuda_function(emulated, inputs, list(exprs.values()))
    outs = f(*args)
    assert all(isinstance(o, exprc.cuda.DeviceArray) for o in outs)
    for name, o in zip(exprs, outs):
        assert_close(o.get(), _e_reference(name, *args))
    # 20,000 elements, 4 resident blocks: the reductions are split into chunks, then a second pass
    assert [n > 1 for name, _, n in emulated.launches if "max" in name or "sum" in name] == [True, True]


@needs_emulator
def test_emulated_views_broadcasting_and_odd_shapes(emulated):
    m, v = exprc.matrix("m"), exprc.vector("v")
    outs = [m.T * v[::-1], exprc.sum(m[::-1, 1:] * 2, axis=0), exprc.max(m, axis=1, keepdims=True),
            exprc.mean(m), m[0] + 1.0, exprc.argmax(m, axis=1), (m.T @ exprc.expand_dims(v, 1))[:, 0] + 1]
    f = _cuda_function(emulated, [m, v], outs, return_numpy=True)
    rng = np.random.default_rng(1)
    for shape in [(3, 4), (1, 4), (2000, 3)]:
        M = rng.normal(size=shape)[::1, ::-1]  # negative strides
        V = rng.normal(size=shape[0])
        got = f(M, V)
        want = [M.T * V[::-1], np.sum(M[::-1, 1:] * 2, axis=0), np.max(M, axis=1, keepdims=True), M.mean(),
                M[0] + 1, np.argmax(M, axis=1), M.T @ V + 1]
        for g, w in zip(got, want):
            assert_close(g, w, ulps=1000)  # sums of 2000 terms: the C loops add in another order than NumPy
    g = _cuda_function(emulated, [m], [m.T * 2, exprc.sum(m, axis=0), exprc.prod(m)], return_numpy=True)
    z = g(np.zeros((0, 4)))  # zero-size: the elementwise output is empty, the reductions are their identity
    assert z[0].shape == (4, 0) and np.array_equal(z[1], np.zeros(4)) and z[2] == 1.0


@needs_emulator
def test_emulated_inputs_outputs_and_conversions(emulated):
    from exprc.backends.cuda.kernel import DeviceArray

    x = exprc.vector("x", "float32")
    f = _cuda_function(emulated, [x], [x * 2, exprc.sum(x), x])
    host = np.arange(6, dtype=np.float32)
    dev = DeviceArray.from_numpy(host, emulated)

    class Foreign:  # any library's array: only __cuda_array_interface__
        def __init__(self, arr):
            self.__cuda_array_interface__ = dict(arr.__cuda_array_interface__)

    for arg in (host, dev, Foreign(dev), [0, 1, 2, 3, 4, 5]):
        doubled, total, same = f(arg)
        assert isinstance(doubled, DeviceArray) and np.array_equal(np.asarray(doubled), host * 2)
        assert float(total.get()) == 15.0 and np.array_equal(same.get(), host)
    assert isinstance(f(host, to_numpy=True)[0], np.ndarray)
    cai = dev.__cuda_array_interface__
    assert cai == {"shape": (6,), "typestr": "<f4", "data": (dev.ptr, False), "version": 3, "strides": None,
                   "stream": 1}
    strided = DeviceArray(dev.shape[:1], dev.dtype, dev.ptr, (-4,), dev, emulated)
    assert strided.__cuda_array_interface__["strides"] == (-4,)
    out_host, out_dev = np.empty(6, np.float32), DeviceArray.empty((), np.float32, emulated)
    same_dev = DeviceArray.empty((6,), np.float32, emulated)
    res = f(host, out=[out_host, out_dev, same_dev])
    assert res[0] is out_host and np.array_equal(out_host, host * 2) and float(out_dev.get()) == 15.0
    with pytest.raises(InputTypeError, match="device arrays are not cast"):
        f(DeviceArray.from_numpy(host.astype(np.float64), emulated))
    with pytest.raises(InputTypeError, match="out\\[1\\]"):
        f(host, out=[out_host, DeviceArray.empty((2,), np.float64, emulated), same_dev])


@needs_emulator
def test_emulated_out_with_fresh_entries_and_shared_updates(emulated):
    """out= may leave an output to a fresh array (None), as on every backend; updates of shared
    variables go through the same protocol (fresh device results, installed on the host)."""
    x = exprc.vector("x")
    f = _cuda_function(emulated, [x], [x * 2, exprc.sum(x)])
    host = np.arange(5.0)
    buf = np.empty(5)
    doubled, total = f(host, out=[buf, None])
    assert doubled is buf and np.array_equal(buf, host * 2)
    assert isinstance(total, exprc.cuda.DeviceArray) and float(total.get()) == 10.0
    doubled, total = f(host, out=[None, np.empty(())], to_numpy=True)
    assert isinstance(doubled, np.ndarray) and np.array_equal(doubled, host * 2) and float(total) == 10.0
    w = exprc.shared(np.zeros(5), name="w")
    step = exprc.function([x], exprc.sum(w * x), updates=[(w, w + x)], backend="cuda",
                          config=NOCACHE.replace(return_numpy=True))
    emulated.attach(step._kernel)
    for i in range(3):
        assert float(step(host)) == pytest.approx(i * float(host @ host))
    np.testing.assert_array_equal(w.get_value(), 3 * host)


GXX = __import__("shutil").which("g++")


@needs_nvrtc
@pytest.mark.skipif(GXX is None, reason="g++ (C++20) is needed to run CUDA kernels on the host")
def test_cuda_kernels_execute_on_the_host():
    """The generated CUDA itself, run on CPU threads (cuda_host_shim.h): indexing, strided paths,
    block reductions with warp shuffles, chunked reductions and their second pass."""
    from cuda_emulator import EmulatedDriver

    from exprc.backends.cuda.kernel import set_driver

    drv = EmulatedDriver(kernels="cuda")
    set_driver(drv)
    try:
        inputs, exprs = _e_cases("float32")
        m, k, bb = exprc.matrix("m"), exprc.matrix("k", "int32"), exprc.matrix("bb", "bool")
        outs = list(exprs.values()) + [
            m.T * inputs[0][:3][::-1], exprc.sum(m, axis=0), exprc.max(m[::-1], axis=1, keepdims=True),
            exprc.mean(m), exprc.prod(k, axis=1), exprc.min(k), exprc.sum(k // 3, axis=0), exprc.all(bb, axis=0),
            exprc.any(bb), exprc.max(bb, axis=1), exprc.where(bb, m, -m)]
        f = _cuda_function(drv, [*inputs, m, k, bb], outs, return_numpy=True)
        rng = np.random.default_rng(3)
        for n, cols in [(3, 1), (3000, 50)]:
            abc = [rng.uniform(-2, 2, n).astype(np.float32) for _ in range(3)]
            M = rng.normal(size=(3, cols))[:, ::-1]
            M[1, -1] = np.nan
            K = rng.integers(-9, 9, size=(3, cols)).astype(np.int32)
            B = rng.random((3, cols)) > 0.1
            got = f(*abc, M, K, B)
            want = [_e_reference(name, *abc) for name in exprs] + [
                M.T * abc[0][:3][::-1], M.sum(axis=0), M[::-1].max(axis=1, keepdims=True), M.mean(),
                K.prod(axis=1), K.min(), (K // 3).sum(axis=0), B.all(axis=0), B.any(), B.max(axis=1),
                np.where(B, M, -M)]
            for g, w in zip(got, want):
                assert_close(g, np.asarray(w, dtype=g.dtype), ulps=64, check_dtype=False)
        assert any(n.endswith("_final") for n, _, _ in drv.launches)  # 3000 elements: chunked, then pass 2
    finally:
        set_driver(None)


@needs_nvrtc
@pytest.mark.skipif(GXX is None, reason="g++ (C++20) is needed to run CUDA kernels on the host")
def test_cuda_integer_mean_accumulates_in_float64():
    """The CUDA renderer reads the mean's float64 accumulator from REDUCTIONS, as C does: an int64
    accumulator wraps (issue 13), in the one-block and in the chunked (two-pass) reduction."""
    from cuda_emulator import EmulatedDriver

    from exprc.backends.cuda.kernel import set_driver

    drv = EmulatedDriver(kernels="cuda")
    set_driver(drv)
    try:
        x, m = exprc.vector("x", "int64"), exprc.matrix("m", "int64")
        f = _cuda_function(drv, [x, m], [exprc.mean(x), exprc.mean(m, axis=1)], return_numpy=True)
        for n in (4, 3000):
            big = np.full(n, 2**62, dtype=np.int64)
            big[-1] = 1
            rows = np.stack([big, -big])
            got = f(big, rows)
            assert_close(got[0], big.mean())
            assert_close(got[1], rows.mean(axis=1))
    finally:
        set_driver(None)


def _guard_cases():
    """Graphs whose kernels hold guards ``where(rare(c), slow, fast)`` (nested in log_erfc), with
    inputs in both branches and the special values."""
    x, y = exprc.vector("x"), exprc.vector("y")
    chain = x
    for _ in range(40):
        chain = exprc.log1p(chain * chain) * 0.5 + y
    outs = [exprc.log1p(x * x), exprc.log(exprc.erfc(x)) + y, exprc.exp(-x * x) * exprc.sin(y) + exprc.log1p(y * y),
            exprc.sum(exprc.log1p(x * x)), exprc.log1p(x * x) * 2 - exprc.log1p(y * y), chain]
    rng = np.random.default_rng(5)
    data = rng.normal(scale=3, size=3000)
    data[::7] *= 1e160
    data[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e308, -1e-300, 30.0]
    return [x, y], outs, data, rng.permutation(data)


def test_cuda_guards_run_the_rare_arm_in_a_branch():
    """The nodes only a guard's slow arm needs are computed inside ``if (rare)`` in CUDA."""
    _, outs, _, _ = _guard_cases()
    src = exprc.cuda.render(outs[0])[0]
    kernel = src[src.index("__global__ void"):]
    assert re.search(r"if \(t\d+\) \{\n\s+const double t\d+ = log\(", kernel)
    assert kernel.count("log1p(") == 2 * 2  # contiguous and strided paths: the fast arm, the slow arm
    assert [x for x in exprc.cuda.render(outs[1])[0].split("\n") if x.strip().startswith("if (t")]  # nested


@pytest.mark.skipif(GXX is None, reason="a C preprocessor is needed")
def test_cuda_keeps_its_own_tanh():
    """numpy_semantics.h's exprc_tanh (the C backend's expm1 form, for libmvec) is CUDA's own tanh under
    NVRTC, which defines __CUDACC__; the C backend gets the expm1 form."""
    import subprocess

    header = Path(exprc.__file__).parent / "backends" / "c" / "templates" / "numpy_semantics.h"
    text = "#include <math.h>\n#define EXPRC_INLINE static\n" + header.read_text()

    def body(*defines: str) -> str:
        out = subprocess.run([GXX, "-E", "-P", "-x", "c++", *defines, "-"], input=text, capture_output=True,
                             text=True, check=True).stdout
        return out[out.index("exprc_tanh(double x)"):].split("}", 1)[0]

    assert "return tanh(x);" in body("-D__CUDACC__") and "expm1" not in body("-D__CUDACC__")
    assert "expm1(" in body() and "tanh(" not in body().split("{", 1)[1]


def test_cuda_unrolls_narrow_reductions_only():
    """``#pragma unroll`` where it measured faster on an H200 (reductions over float32), not where it
    measured slower (float64 reductions, elementwise loops)."""
    for dtype, want in (("float32", 1), ("float64", 0), ("int32", 1), ("bool", 1)):
        x = exprc.vector("x", dtype)
        assert exprc.cuda.render(exprc.sum(x))[0].count("#pragma unroll") == want, dtype
        assert "#pragma unroll" not in exprc.cuda.render(x * 2)[0]


def test_cuda_guards_in_a_deep_kernel():
    """A kernel with 3000 guards in a chain renders every one as a branch (one backward pass over the
    body: the first version of this code took 74 s for 200) and without recursion."""
    x = exprc.vector("x")
    e = x
    for _ in range(3000):
        e = exprc.log1p(e * e) * 0.5 + x
    src = exprc.cuda.render(e)[0]
    assert len(re.findall(r"^ +if \(t\d+\) \{$", src, re.MULTILINE)) == 2 * 3000  # contiguous and strided paths


@needs_nvrtc
@pytest.mark.skipif(GXX is None, reason="g++ (C++20) is needed to run CUDA kernels on the host")
def test_cuda_guarded_kernels_execute_on_the_host():
    from cuda_emulator import EmulatedDriver

    from exprc.backends.cuda.kernel import set_driver

    drv = EmulatedDriver(kernels="cuda")
    set_driver(drv)
    try:
        inputs, outs, x, y = _guard_cases()
        f = _cuda_function(drv, inputs, outs, return_numpy=True)
        want = exprc.function(inputs, outs, backend="numpy")(x, y)
        for got, w in zip(f(x, y), want):
            assert_close(got, w, ulps=8)
        for got, w in zip(f(x[::-3], y[::-3]), exprc.function(inputs, outs, backend="numpy")(x[::-3], y[::-3])):
            assert_close(got, w, ulps=8)  # the strided path
    finally:
        set_driver(None)


# -- on a GPU ---------------------------------------------------------------------------------------------------
@needs_device
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_device_e1_to_e5(dtype):
    inputs, exprs = _e_cases(dtype)
    rng = np.random.default_rng(0)
    for n in (1, 1000, 1_000_003):
        args = [rng.uniform(-2, 2, n).astype(dtype) for _ in range(3)]
        for name, e in exprs.items():
            got = exprc.function(inputs, e, backend="cuda")(*args, to_numpy=True)
            want = exprc.function(inputs, e, backend="numpy")(*args)
            assert_close(got, want, ulps=64 if name == "E4" else 8)


@needs_device
@settings(max_examples=30)
@given(case=graph_cases(max_ops=5))
def test_device_property_suite_matches_numpy(case):
    f = exprc.function(case.inputs, case.expr, backend="cuda", config=Config(return_numpy=True))
    assert_close(f(*case.args), case.expected())


@needs_device
def test_device_guards_match_numpy():
    inputs, outs, x, y = _guard_cases()
    x, y = np.tile(x, 400), np.tile(y, 400)
    got = exprc.function(inputs, outs, backend="cuda", config=Config(return_numpy=True))(x, y)
    for g, w in zip(got, exprc.function(inputs, outs, backend="numpy")(x, y)):
        assert_close(g, w, ulps=8)


@needs_device
def test_device_reductions_are_deterministic_and_chunked():
    x = exprc.vector("x", "float32")
    f = exprc.function([x], [exprc.sum(x), exprc.max(x), exprc.mean(x * x)], backend="cuda",
                       config=Config(return_numpy=True))
    data = np.random.default_rng(2).normal(size=10_000_019).astype(np.float32)
    first, again = f(data), f(data)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))
    np.testing.assert_allclose(first[0], data.astype(np.float64).sum(), rtol=1e-6)
    assert first[1] == data.max()
    data[123] = np.nan
    assert np.isnan(f(data)[1])


@needs_device
def test_device_zero_copy_with_cupy_and_torch():
    x = exprc.vector("x", "float32")
    f = exprc.function([x], exprc.exp(x) * 2, backend="cuda")
    host = np.linspace(-1, 1, 1000, dtype=np.float32)
    want = np.exp(host) * 2
    tried = 0
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        out = f(cupy.asarray(host))
        np.testing.assert_allclose(cupy.asnumpy(cupy.asarray(out)), want, rtol=1e-6)
        tried += 1
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        out = f(torch.from_numpy(host).cuda())
        np.testing.assert_allclose(torch.as_tensor(out, device="cuda").cpu().numpy(), want, rtol=1e-6)
        tried += 1
    if not tried:
        pytest.skip("neither CuPy nor PyTorch (with CUDA) is installed")


@needs_emulator
def test_emulated_gather_scatter_and_staged_slices(emulated):
    """Index steps (gather, scatter-add, symbolic slices run in stages) on the CUDA runtime."""
    x, idx, i = exprc.matrix("x"), exprc.vector("idx", "int64"), exprc.scalar("i", "int64")
    X = np.arange(30.0).reshape(6, 5)
    I = np.array([4, 4, -1, 0])
    outs = [exprc.exp(x[idx]) * 2, exprc.inc_subtensor(x[idx], 1.0), exprc.grad(exprc.sum(x[idx] ** 2), x)]
    f = _cuda_function(emulated, [x, idx], outs, return_numpy=True)
    got = f(X, I)
    want_inc = X.copy()
    np.add.at(want_inc, I, 1.0)
    want_grad = np.zeros_like(X)
    np.add.at(want_grad, I, 2 * X[I])
    np.testing.assert_allclose(got[0], np.exp(X[I]) * 2, rtol=1e-15)
    np.testing.assert_array_equal(got[1], want_inc)
    np.testing.assert_array_equal(got[2], want_grad)
    g = exprc.function([x, i], exprc.sum(x[i:i + 2] * 3), backend="cuda", config=NOCACHE.replace(return_numpy=True))
    for stage in g._kernel.stages:
        if stage.kernel is not None and hasattr(stage.kernel, "program"):
            emulated.attach(stage.kernel)
    for k in range(-7, 7):
        np.testing.assert_allclose(g(X, k), np.sum(X[k:k + 2] * 3), rtol=1e-15)


def _attach_all(drv, kernel):
    """Attach every kernel a staged function runs (stages, loop bodies, ifelse branches)."""
    for stage in getattr(kernel, "stages", []):
        if stage.kernel is not None:
            _attach_all(drv, stage.kernel)
    for runner in getattr(kernel, "runners", {}).values():
        for k in [getattr(runner, "kernel", None), *getattr(runner, "kernels", ())]:
            if k is not None:
                _attach_all(drv, k)
    if hasattr(kernel, "program"):
        drv.attach(kernel)


@needs_emulator
def test_emulated_scan_ifelse_and_bptt(emulated):
    """Loops (a host loop of launches over the body's CUDA kernels), ifelse and the gradient
    through a scan on the CUDA runtime, against NumPy loops."""
    X, W, h0 = exprc.matrix("X"), exprc.matrix("W"), exprc.vector("h0")
    hs, _ = exprc.scan(lambda x, h, W: exprc.tanh(x + h @ W), sequences=[X], outputs_info=[h0], non_sequences=[W])
    cost = exprc.sum(hs ** 2)
    c = exprc.scalar("c", "bool")
    pick = exprc.ifelse(c, exprc.sum(exprc.exp(h0)), exprc.sum(h0) * 3)
    f = exprc.function([X, W, h0, c], [hs, cost, exprc.grad(cost, W), pick], backend="cuda",
                       config=NOCACHE.replace(return_numpy=True))
    _attach_all(emulated, f._kernel)
    rng = np.random.default_rng(3)
    xv, wv, hv = rng.normal(size=(6, 4)), rng.normal(size=(4, 4)) * 0.5, rng.normal(size=4)
    h, states, gw = hv, [], np.zeros((4, 4))
    for x in xv:
        h = np.tanh(x + h @ wv)
        states.append(h)
    states = np.array(states)
    g = np.zeros(4)  # BPTT by hand
    for t in range(len(xv) - 1, -1, -1):
        g = g + 2 * states[t]
        pre = g * (1 - states[t] ** 2)
        prev = states[t - 1] if t else hv
        gw += np.outer(prev, pre)
        g = pre @ wv.T
    for cv in (True, False):
        got = f(xv, wv, hv, cv)
        np.testing.assert_allclose(got[0], states, rtol=1e-13)
        np.testing.assert_allclose(got[1], np.sum(states ** 2), rtol=1e-13)
        np.testing.assert_allclose(got[2], gw, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got[3], np.exp(hv).sum() if cv else hv.sum() * 3, rtol=1e-14)
