"""backends/c/ffi.py: the runtime's cffi declarations load pre-parsed from the cache (no pycparser in a
warm process), a tampered declarations module is rebuilt rather than run, and without a cache the
declarations are parsed in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import exprc
from exprc import Config
from exprc.backends.c import compile as cc

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(cc.probe(Config(cache=False)) is not None, reason="no working C compiler")

JOB = """
    import json, sys
    import numpy as np
    import exprc
    x = exprc.vector("x")
    f = exprc.function([x], exprc.exp(x) * 2 + 1)
    y = f(np.arange(3.0))
    from exprc.backends.c import ffi
    print(json.dumps({"ok": bool(np.allclose(y, np.exp(np.arange(3.0)) * 2 + 1)),
                      "pycparser": "pycparser" in sys.modules, "kind": type(ffi._FFI[0]).__module__,
                      "why": ffi.UNAVAILABLE}))
"""


def _run(cache_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(JOB)], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_warm_process_does_not_parse_c_and_a_tampered_module_is_rebuilt(tmp_path, monkeypatch):
    first = _run(tmp_path)  # writes the declarations module (parsing them once)
    assert first["ok"] and first["why"] == []
    second = _run(tmp_path)
    assert second == {"ok": True, "pycparser": False, "kind": "_cffi_backend", "why": []}
    (module,) = tmp_path.glob("*/dispatch/exprc_ffi_decls-*/exprc_ffi_decls.py")
    module.write_text("raise SystemExit('tampered declarations were executed')\n")
    from exprc.backends.c import ffi

    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path))  # (it wins over Config.cache_dir)
    with pytest.warns(RuntimeWarning, match="evicting"):  # (in this process: the same checks as a fresh one)
        got = ffi._load(Config())
    assert type(got).__module__ == "_cffi_backend" and "SystemExit" not in module.read_text()
    assert _run(tmp_path)["ok"]


def test_without_a_cache_the_declarations_are_parsed_in_process():
    from exprc.backends.c import ffi

    got = ffi._load(Config(cache=False))
    assert type(got).__module__.startswith("cffi")
    lib_fn = got.typeof("void(*)(char **, const int64_t *, int64_t, int64_t, int)")
    assert got.typeof("char[]") is not None and lib_fn is not None
    f = exprc.function([x := exprc.vector("x")], x + 1.0, config=Config(cache=False))
    np.testing.assert_array_equal(f(np.arange(3.0)), [1.0, 2.0, 3.0])


GOMP = """
    import gc, time
    import numpy as np
    import exprc
    from exprc import Config
    x = exprc.vector("x")
    g = exprc.function([x], x * 3.0, config=Config(num_threads=1))  # (built without libgomp)
    g(np.ones(3))
    for _ in range(3):
        f = exprc.function([x], exprc.exp(x) * 2.0, config=Config(cache=False, num_threads=2))
        f(np.ones(1 << 20))  # a parallel region: libgomp's worker threads
        del f
        gc.collect()
        time.sleep(0.1)
    print(g(np.ones(3)).sum())
"""


def test_collected_functions_do_not_unload_libgomp_under_its_threads(tmp_path):
    # cffi's out-of-line FFI closes a library when its lib object is collected: closing the last
    # library linked with libgomp unloaded libgomp while its (spinning) workers still ran: a
    # segfault in CI. Libraries are opened RTLD_NODELETE; the process must run and exit cleanly.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(tmp_path), "OMP_WAIT_POLICY": "ACTIVE"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(GOMP)], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip().endswith("9.0")
