"""The C call dispatcher: same results as the Python call path, safe fallbacks, threads, fork."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import exprc
from exprc.backends.c import dispatch
from exprc.errors import InputTypeError


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dispatch-cache"))


def _fn():
    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    return exprc.function([a, b, c], [a * b + c, exprc.sum(exprc.exp(a))])


def test_dispatcher_is_built_and_used():
    f = _fn()
    x = np.arange(5.0)
    assert f._fast is None  # attached on the second call only
    f(x, x, x)
    first = f(x, x, x)  # Python path: builds the dispatcher and hands it the plan
    assert f._fast is not None, dispatch.UNAVAILABLE
    assert f._fast(x, x, x) is not None  # now served in C
    second = f(x, x, x)
    for p, q in zip(first, second):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(second[0], x * x + x)
    assert second[1] == pytest.approx(np.sum(np.exp(x)))


def test_unhandled_calls_fall_back_to_the_python_path():
    f = _fn()
    x = np.arange(6.0)
    f(x, x, x)
    f(x, x, x)
    assert f._fast(x[::2], x[::2], x[::2]) is None  # non-contiguous
    np.testing.assert_array_equal(f(x[::2], x[::2], x[::2])[0], x[::2] ** 2 + x[::2])
    assert f._fast([1.0], [2.0], [3.0]) is None  # lists
    np.testing.assert_array_equal(f([1.0], [2.0], [3.0])[0], [5.0])
    with pytest.raises(InputTypeError, match="argument 'a' .position 0."):
        f(x.reshape(2, 3), x, x)
    assert f._fast(x, x) is None
    with pytest.raises(InputTypeError, match="expected 3 arguments"):
        f(x, x)


def test_static_shapes_are_still_checked():
    a = exprc.vector("a", shape=(3,))
    f = exprc.function([a], a * 2)
    np.testing.assert_array_equal(f(np.ones(3)), [2, 2, 2])
    np.testing.assert_array_equal(f(np.ones(3)), [2, 2, 2])
    with pytest.raises(exprc.errors.ShapeError, match="expected shape"):
        f(np.ones(4))


def test_concurrent_calls_from_threads():
    f = _fn()
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(3, n)) for n in (10, 1000, 50_000, 10, 1000)] * 20

    def run(d):
        out = f(*d)
        np.testing.assert_allclose(out[0], d[0] * d[1] + d[2])
        np.testing.assert_allclose(out[1], np.sum(np.exp(d[0])), rtol=1e-12)
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(run, data))



def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_large_outputs_reuse_a_block_only_once_nothing_holds_it():
    """Outputs of 32 MiB or more come from a pool of blocks that dropped outputs gave back (no fresh
    pages to zero on every call): a block is reused only when its array and every view of it are
    gone, and the arrays behave as np.empty's (they own their data, resize, pickle)."""
    a = exprc.vector("a")
    f = exprc.function([a], exprc.exp(a) * 2)
    n = 5_000_000  # (40 MB of float64)
    x, y = np.linspace(-1, 1, n), np.linspace(0, 2, n)
    f(x)
    f(x)  # (the dispatcher serves calls from here on)
    r = f(x)
    assert f._fast is not None, dispatch.UNAVAILABLE
    addr, before = _address(r), dispatch.pool_info()["reused"]
    del r
    r = f(y)
    assert _address(r) == addr and dispatch.pool_info()["reused"] == before + 1
    np.testing.assert_allclose(r, np.exp(y) * 2, rtol=1e-15)
    assert r.flags.owndata and r.flags.writeable
    view = r[3::2]
    del r  # (the view still holds the block)
    r2 = f(x)
    assert not np.shares_memory(view, r2)
    np.testing.assert_allclose(view, (np.exp(y) * 2)[3::2], rtol=1e-15)
    np.testing.assert_allclose(r2, np.exp(x) * 2, rtol=1e-15)
    r2.resize(n + 10, refcheck=False)
    np.testing.assert_allclose(r2[:n], np.exp(x) * 2, rtol=1e-15)
    assert pickle.loads(pickle.dumps(view)).tolist() == view.tolist()
    del view, r2
    # The Python call path (a strided argument) takes its outputs from the same pool.
    big = np.repeat(y, 2)[::2]
    reused = dispatch.pool_info()["reused"]
    got = f(big)
    np.testing.assert_allclose(got, np.exp(y) * 2, rtol=1e-15)
    assert dispatch.pool_info()["reused"] == reused + 1
    info = dispatch.pool_info()
    assert info["bytes"] <= info["cap"]


def test_pooled_outputs_from_many_threads_are_never_shared():
    a, b = exprc.vector("a"), exprc.vector("b")
    f = exprc.function([a, b], a * b + 1)
    n = 4_500_000
    base = np.linspace(0, 1, n)

    def run(k):
        out = [f(base, np.full(n, float(k + j))) for j in range(3)]
        return all(np.array_equal(o, base * (k + j) + 1) for j, o in enumerate(out))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(8)))


def test_pool_cap_from_the_environment():
    """EXPRC_POOL_BYTES caps what the pool keeps; 0 turns it off."""
    code = (
        "import numpy as np, exprc\n"
        "from exprc.backends.c import dispatch\n"
        "a = exprc.vector('a')\n"
        "f = exprc.function([a], a + 1)\n"
        "x = np.zeros(5_000_000)\n"
        "f(x); f(x)\n"
        "rs = [f(x) for _ in range(3)]\n"
        "del rs\n"
        "kept = dispatch.pool_info()\n"
        "r = f(x)\n"
        "print(kept['bytes'], kept['blocks'], dispatch.pool_info()['reused'] - kept['reused'], kept['cap'],\n"
        "      float(r.sum()))\n"
    )
    for cap, want in (("0", (0, 0, 0, 0)), ("100000000", (80_000_000, 2, 1, 100_000_000))):
        env = {**os.environ, "EXPRC_POOL_BYTES": cap}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                           check=False)
        assert r.returncode == 0, r.stderr
        *got, total = r.stdout.split()
        assert tuple(int(v) for v in got) == want and float(total) == 5_000_000


def _child(q):
    a = exprc.vector("a")
    f = exprc.function([a], exprc.sum(exprc.exp(a)))
    q.put(float(f(np.ones(200_000))))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_forked_children_do_not_hang_after_parallel_regions():
    a = exprc.vector("a")
    f = exprc.function([a], exprc.sum(exprc.exp(a)), config=exprc.Config(num_threads=2))
    f(np.ones(500_000))  # the parent has now run an OpenMP parallel region
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(60)
    assert p.exitcode == 0, "forked child hung or crashed"
    assert q.get(timeout=5) == pytest.approx(200_000 * np.e)


def test_out_arguments_are_served_in_c_and_checked():
    a, b = exprc.vector("a"), exprc.vector("b")
    f = exprc.function([a, b], a * b + 1.0)
    g = exprc.function([a, b], [a * b, exprc.sum(a)])
    x = np.linspace(0.0, 1.0, 7)
    o, o2 = np.empty(7), np.empty(())
    for _ in range(2):
        assert f(x, x, out=o) is o
        assert g(x, x, out=[o, o2])[0] is o
    assert f._fast is not None, dispatch.UNAVAILABLE
    o[:] = 0.0
    assert f._fast.into((x, x), [o]) is o  # served in C, written in place
    np.testing.assert_array_equal(o, x * x + 1.0)
    res = g._fast.into((x, x), [None, o2])
    assert res[1] is o2 and float(o2) == pytest.approx(x.sum())
    np.testing.assert_array_equal(res[0], x * x)
    strided = np.empty(14)[::2]
    assert f._fast.into((x, x), [strided]) is None  # not C-contiguous: the Python path writes it
    np.testing.assert_array_equal(f(x, x, out=strided), x * x + 1.0)
    for bad, what in [(np.empty(6), r"shape \(7,\)"), (np.empty(7, np.float32), "float64"),
                      (np.empty(7)[None], "shape")]:
        assert f._fast.into((x, x), [bad]) is None
        with pytest.raises(InputTypeError, match=what):
            f(x, x, out=bad)
    ro = np.empty(7)
    ro.flags.writeable = False
    with pytest.raises(InputTypeError, match="read-only"):
        f(x, x, out=ro)


def test_out_arrays_that_overlap_the_arguments_get_numpy_semantics():
    # f(x, out=x) and friends: the kernels would read what they already wrote; the result is what
    # NumPy gives for overlapping operands (computed as if into a fresh array, then copied).
    a, b = exprc.matrix("a"), exprc.vector("b")
    f = exprc.function([a, b], [exprc.transpose(a) * 2.0 + exprc.sum(a, axis=1)])
    g = exprc.function([b], exprc.exp(b) - exprc.sum(exprc.exp(b)))
    for _ in range(3):  # the Python path, then the dispatcher (which hands such calls back)
        x = np.arange(9.0).reshape(3, 3)
        want = x.T * 2.0 + x.sum(axis=1)
        got = f(x, np.ones(3), out=[x])
        assert got[0] is x
        np.testing.assert_allclose(x, want)
        v = np.linspace(0.0, 1.0, 5)
        want_v = np.exp(v) - np.exp(v).sum()
        assert g(v, out=v) is v
        np.testing.assert_allclose(v, want_v)
        w = np.linspace(0.0, 1.0, 10)
        want_w = np.exp(w[2:7]) - np.exp(w[2:7]).sum()
        g(w[2:7], out=w[1:6])  # shifted overlap
        np.testing.assert_allclose(w[1:6], want_w)


# -- the cached extension: integrity and ownership (issue 13) ------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
TWO_CALLS = """
import json, warnings
import numpy as np
import exprc
from exprc.backends.c import dispatch
from exprc.errors import CacheError
warnings.simplefilter("always")
a = exprc.vector("a")
f = exprc.function([a], a * 2 + 1, backend="c")
try:
    f(np.ones(3)); f(np.ones(3))
    print(json.dumps({"fast": f._fast is not None, "unavailable": dispatch.UNAVAILABLE}))
except CacheError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def _two_calls(cache_dir: Path, **env: str) -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(cache_dir), **env}
    e.pop("EXPRC_NO_DISPATCH", None)
    out = subprocess.run([sys.executable, "-c", TWO_CALLS], env=e, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


HOSTILE = """
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "exprc_dispatch", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_exprc_dispatch(void) {
    FILE *f = fopen(getenv("EXPRC_TEST_MARKER"), "w");
    if (f) fclose(f);
    return PyModule_Create(&def);
}
"""


def test_replaced_dispatcher_is_detected_and_rebuilt(tmp_path):
    d = tmp_path / "cache"
    assert _two_calls(d)["fast"]
    (lib,) = [p for p in d.rglob("*.so") if "dispatch" in str(p.relative_to(d))]
    # Another user's extension with the same init function, put where the dispatcher was.
    src = tmp_path / "hostile.c"
    src.write_text(HOSTILE)
    subprocess.run(["cc", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", "-o", str(lib), str(src)],
                   check=True, timeout=120)
    marker = tmp_path / "pwned"
    r = _two_calls(d, EXPRC_TEST_MARKER=str(marker))
    assert not marker.exists(), "the replaced dispatcher ran"
    assert r["fast"] and "corrupted cache entry" in r["stderr"] and "sha256" in r["stderr"]


@pytest.mark.parametrize("where", ["dispatch", "entry", "locks"])
def test_dispatcher_folders_writable_by_others_are_refused(tmp_path, where):
    d = tmp_path / "cache"
    assert _two_calls(d)["fast"]
    (lib,) = [p for p in d.rglob("*.so") if "dispatch" in str(p.relative_to(d))]
    folder = {"dispatch": lib.parent.parent, "entry": lib.parent, "locks": lib.parent.parent.parent / "locks"}[where]
    os.chmod(folder, 0o777)
    try:
        if where == "locks":  # a compile takes a lock: another user could plant a symlink there
            code = TWO_CALLS.replace("a * 2 + 1", "a * 3 + 1")
            e = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(d)}
            out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300,
                                 check=False)
            assert "CacheError" in out.stderr and "lock folder" in out.stderr and str(folder) in out.stderr
        else:
            r = _two_calls(d)
            assert "writable by other users" in r.get("error", ""), r
            assert str(folder) in r["error"]
    finally:
        os.chmod(folder, 0o755)
