"""The backend registry and the kernel protocol: a backend is one module (or folder) plus one
``register_backend`` line, and the front end asks a kernel only what the protocol lists."""

from __future__ import annotations

import numpy as np
import pytest

import exprc
from exprc import backends
from exprc.errors import BackendUnavailable, InputTypeError


@pytest.fixture
def toy():
    import toy_backend

    backends.register_backend("toy", "toy_backend")
    toy_backend.CALLS.clear()
    toy_backend.AVAILABLE[0] = True
    yield toy_backend
    backends._MODULES.pop("toy", None)


def test_builtin_backends_are_registered():
    assert backends.names() == ["c", "cuda", "numpy"]
    from exprc.config import current

    assert backends.unavailable_reason("numpy", current()) is None


def test_a_new_backend_is_one_module_and_one_line(toy):
    x, y = exprc.vector("x"), exprc.vector("y")
    f = exprc.function([x, y], [exprc.exp(x) * y, exprc.sum(x)], backend="toy", config=exprc.Config(cache=False))
    a, b = np.linspace(-1, 1, 5), np.arange(5.0)
    r0, r1 = f(a, b)
    np.testing.assert_allclose(r0, np.exp(a) * b)
    np.testing.assert_allclose(r1, a.sum())
    assert f.backend == "toy" and f.source.startswith("# toy") and f.kernels[0]["name"] == "toy"
    assert f.cache_path is None
    outs = [np.empty(5), None]
    got = f(a, b, out=outs)
    assert got[0] is outs[0] and got[1] == pytest.approx(a.sum())
    for _ in range(3):  # later calls would attach a fast path: the toy has none
        f(a, b)
    assert toy.CALLS[0] == ("make", 2)
    assert ("call", 2, True, None) in toy.CALLS


def test_shared_updates_run_through_the_protocol(toy):
    w = exprc.shared(np.zeros(3), name="w")
    g = exprc.vector("g")
    step = exprc.function([g], exprc.sum(w), updates=[(w, w - 0.5 * g)], backend="toy",
                          config=exprc.Config(cache=False))
    for _ in range(3):
        step(np.ones(3))
    np.testing.assert_allclose(w.get_value(), np.full(3, -1.5))


def test_unknown_and_unavailable_backends_say_why(toy):
    x = exprc.vector("x")
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'nope'; choose one of c, cuda, numpy, toy"):
        exprc.function([x], x + 1, backend="nope")
    toy.AVAILABLE[0] = False
    with pytest.raises(BackendUnavailable, match="backend 'toy' is unavailable: the toy is switched off"):
        exprc.function([x], x * 3, backend="toy", config=exprc.Config(cache=False))


def test_out_count_is_checked_by_every_host_backend():
    x = exprc.vector("x")
    for name in ("numpy", "c"):
        f = exprc.function([x], [x + 1, x * 2], backend=name)
        with pytest.raises(InputTypeError, match="out: expected 2 arrays, got 1"):
            f(np.ones(3), out=[np.empty(3)])
        got = f(np.ones(3), out=[None, np.empty(3)])
        np.testing.assert_array_equal(got[0], np.full(3, 2.0))
        np.testing.assert_array_equal(got[1], np.full(3, 2.0))


def test_importing_exprc_loads_no_backend_module():
    import subprocess
    import sys

    code = ("import sys, exprc; bad = sorted(m for m in sys.modules if m.startswith('exprc.backends.') "
            "or m in ('cffi', 'networkx')); print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert r.stdout.strip() == "[]", r.stdout
