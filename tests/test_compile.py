"""The compiler interface: CompileError with source and log; fallback without a compiler."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import exprc
from exprc import backends
from exprc.backends.c import compile as cc
from exprc.errors import BackendUnavailable, CompileError


def test_compile_error_carries_source_path_and_log(tmp_path):
    with pytest.raises(CompileError) as info:
        cc.compile_library("int main( {", tmp_path, "broken", exprc.Config(cache=False))
    err = info.value
    assert err.source_path == str(tmp_path / "broken.c")
    assert "error" in err.log.lower()
    assert "int main( {" in (tmp_path / "broken.c").read_text()
    assert "compiler log" in str(err)


def test_missing_compiler_falls_back_to_numpy_with_one_warning(monkeypatch):
    cfg = exprc.Config(cc="/nonexistent/exprc-test-cc", cache=False)
    monkeypatch.setattr(backends, "_WARNED", set())
    x = exprc.vector("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = exprc.function([x], exprc.exp(x), config=cfg)
        g = exprc.function([x], exprc.sin(x), config=cfg)
    assert f.backend == g.backend == "numpy"
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "no C compiler found" in msgs[0] and "CC" in msgs[0]
    np.testing.assert_allclose(f([0.0, 1.0]), np.exp([0.0, 1.0]))


def test_explicit_c_backend_without_compiler_raises():
    x = exprc.vector("x")
    with pytest.raises(BackendUnavailable, match="no C compiler"):
        exprc.function([x], x + 1, backend="c", config=exprc.Config(cc="/nonexistent/exprc-test-cc", cache=False))


def test_flags_follow_the_config():
    base = cc.flags(exprc.Config())
    assert "-O2" in base and "-fno-math-errno" in base and "-ffast-math" not in base
    assert "-ffast-math" in cc.flags(exprc.Config(fast_math=True))
    precise = cc.flags(exprc.Config(precise_math=True))
    assert "-lmvec" not in precise


def test_precise_math_uses_scalar_libm(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path))
    x = exprc.vector("x")
    f = exprc.function([x], exprc.exp(x), config=exprc.Config(precise_math=True))
    assert "#define EXPRC_PRECISE_MATH 1" in f.source
    v = np.linspace(-5, 5, 1001)
    np.testing.assert_array_max_ulp(f(v), np.exp(v), maxulp=1)  # correctly rounded scalar libm


def test_undeclared_functions_do_not_compile(tmp_path):
    # A template that slipped past exprc.custom's checks must not reach libc through an implicit declaration.
    assert "-Werror=implicit-function-declaration" in cc.flags(exprc.Config())
    with pytest.raises(CompileError, match="C compilation failed") as info:
        cc.compile_library("double f(double x) { return x + system(0); }\n", tmp_path, "implicit",
                           exprc.Config(cache=False))
    assert "implicit" in info.value.log


def test_units_cut_at_marks_in_order_and_balanced():
    head = "/* head */\n#include <math.h>\n"
    pieces = [f"static int k{i}(void) {{ return {i}; }} /* {'x' * (100 * (i % 3 + 1))} */\n" for i in range(12)]
    source = head + "".join(cc.UNIT_MARK + p for p in pieces)
    assert cc.units(source, 8) == [source]  # too small to be worth a second compiler
    old = cc.UNIT_BYTES
    try:
        cc.UNIT_BYTES = 100
        for jobs in (2, 3, 5):
            parts = cc.units(source, jobs)
            assert len(parts) == jobs
            assert all(p.startswith(head) for p in parts)
            assert "".join(p[len(head):] for p in parts) == "".join(pieces)  # every kernel once, in order
            sizes = [len(p) - len(head) for p in parts]
            assert max(sizes) - min(sizes) <= 2 * max(len(p) for p in pieces)
        assert cc.units(source, 1) == [source]
    finally:
        cc.UNIT_BYTES = old


def _many_kernels(cfg):
    X, W, b, v = exprc.matrix("X"), exprc.matrix("W"), exprc.vector("b"), exprc.vector("v")
    z = X @ W + b
    p = exprc.softmax(z, axis=1)
    loss = -exprc.mean(exprc.log(p)[exprc.arange(X.shape[0]), exprc.argmax(z, axis=1)])
    gW, gb = exprc.grad(loss, [W, b])
    outs = [loss, gW, gb, exprc.tanh(z) * exprc.exp(-z * z), exprc.sum(exprc.sin(v) * exprc.log1p(v * v)),
            exprc.sqrt(exprc.abs(z)).max(axis=0), X @ W]
    return exprc.function([X, W, b, v], outs, config=cfg)


def test_a_module_compiled_in_parts_gives_the_same_bits(monkeypatch):
    rng = np.random.default_rng(3)
    args = (rng.standard_normal((40, 300)), rng.standard_normal((300, 10)), rng.standard_normal(10),
            rng.standard_normal(5000))
    cfg = exprc.Config(cache=False)
    whole = _many_kernels(cfg)
    calls = []
    real_units = cc.units
    monkeypatch.setattr(cc, "UNIT_BYTES", 1000)
    monkeypatch.setattr(cc, "_jobs", lambda: 3)
    monkeypatch.setattr(cc, "units", lambda source, jobs: calls.append(real_units(source, jobs)) or calls[-1])
    parts = _many_kernels(cfg)
    assert parts.source == whole.source
    assert [len(u) for u in calls if len(u) > 1] and max(len(u) for u in calls) == 3  # it was cut
    for a, b in zip(whole(*args), parts(*args)):
        np.testing.assert_array_equal(a, b)  # BLAS installed in every unit, same code per kernel
    ref = args[0] @ args[1]
    np.testing.assert_array_equal(parts(*args)[6], ref)  # NumPy's BLAS: the kernel's unit has the pointer too
    np.testing.assert_allclose(parts(*args)[3], np.tanh(ref + args[2]) * np.exp(-(ref + args[2]) ** 2), rtol=1e-12)


def test_a_failing_unit_raises_compile_error_naming_the_module(tmp_path, monkeypatch):
    monkeypatch.setattr(cc, "UNIT_BYTES", 10)
    monkeypatch.setattr(cc, "_jobs", lambda: 2)
    source = "#include <math.h>\n" + cc.UNIT_MARK + "double f(double x) { return exp(x); }\n" + cc.UNIT_MARK + \
        "double g(double x) { return x +; }\n"
    with pytest.raises(CompileError, match="C compilation failed") as info:
        cc.compile_library(source, tmp_path, "split", exprc.Config(cache=False))
    assert info.value.source_path == str(tmp_path / "split.c")
    assert "error" in info.value.log.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split.c"]  # the units and objects are removed
