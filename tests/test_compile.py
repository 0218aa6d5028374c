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
