"""The on-disk compile cache: keys, warm hits across processes, races, killed builds, corruption,
permissions, size limit, the in-process memo.  Each test uses its own cache folder."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import exprc
from exprc import cache
from exprc.backends.c import compile as cc
from exprc.config import Config, current
from exprc.errors import CacheError
from exprc.function import clear_memo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(cc.probe(Config(cache=False)) is not None, reason="no working C compiler")


def run_py(code: str, cache_dir: Path, *args: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter on ``cache_dir``; it prints one JSON line last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


BUILD = """
    import json, sys
    import numpy as np
    import exprc
    from exprc import cache
    x = exprc.vector("x")
    f = exprc.function([x], exprc.exp(x) * 2 + 1, backend="c")
    r = f(np.arange(4.0))
    assert np.allclose(r, np.exp(np.arange(4.0)) * 2 + 1)
    meta = json.loads((f._kernel.cache_entry / "meta.json").read_text())
    print(json.dumps({"key": f._kernel.cache_entry.name, "compiles": cache.STATS["compiles"],
                      "hits": cache.STATS["hits"], "compile_id": meta["compile_id"],
                      "raw_key": cache.entry_key("k", "int f;", {"b": "2", "a": "1"})}))
"""


def _entry_dirs(r: Path) -> list[Path]:
    return sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name not in ("locks", "toolchain", "dispatch", "graphs")) if r.exists() else []


def _fn(expr_maker=lambda x: exprc.exp(x) * 2 + 1, **kw):
    x = exprc.vector("x")
    return exprc.function([x], expr_maker(x), backend="c", **kw)


# -- keys and warm hits ------------------------------------------------------------------------------------------------
def test_keys_identical_across_processes_and_warm_hit_skips_compile(cache_dir):
    first = run_py(BUILD, cache_dir)
    second = run_py(BUILD, cache_dir)
    assert first["key"] == second["key"] and first["raw_key"] == second["raw_key"]
    assert first["raw_key"] == cache.entry_key("k", "int f;", {"a": "1", "b": "2"})
    assert (first["compiles"], first["hits"]) == (1, 0)
    assert (second["compiles"], second["hits"]) == (0, 1)  # warm hit from a fresh process: no compile
    assert second["compile_id"] == first["compile_id"]
    meta = json.loads((cache.root(current()) / first["key"] / "meta.json").read_text())
    assert meta["hits"] == 1 and meta["last_used"] >= meta["created"]


def test_entry_layout_and_meta(cache_dir):
    f = _fn()
    folder = f._kernel.cache_entry
    assert folder.parent == cache.root(current())
    assert folder.name.rsplit("-", 1)[1].isalnum() and len(folder.name.rsplit("-", 1)[1]) == 12
    meta = json.loads((folder / "meta.json").read_text())
    for field in ("key", "parts", "created", "last_used", "hits", "compile_seconds", "size_bytes", "summary",
                  "backend", "exprc_version", "sha256", "library", "source"):
        assert field in meta, field
    assert meta["backend"] == "c" and meta["summary"] == "exp(x) * 2.0 + 1.0" and meta["hits"] == 0
    assert meta["exprc_version"] == exprc.__version__
    assert (folder / meta["source"]).read_text() == f.source
    assert cache.check_entry(folder, deep=True)[1] is None
    assert not any(p.suffix in (".pkl", ".pickle") for p in folder.iterdir())
    assert not list((folder.parent / "locks").glob("*.lock"))  # the lock file goes with the compile
    assert oct(folder.stat().st_mode & 0o022) == "0o0"


def test_cache_false_leaves_nothing(cache_dir):
    f = _fn(config=Config(cache=False))
    assert np.allclose(f(np.zeros(2)), [3.0, 3.0])
    assert f._kernel.cache_entry is None
    assert not cache_dir.exists()


def test_location_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("EXPRC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.base_dir(Config()) == tmp_path / "xdg" / "exprc"
    assert cache.base_dir(Config(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path / "env"))
    assert cache.base_dir(Config(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "env"
    tag = cache.root(Config()).name
    assert exprc.__version__ in tag and sys.implementation.cache_tag in tag and sys.platform in tag


# -- concurrency ------------------------------------------------------------------------------------------------------
RACER = """
    import json, os, sys, time
    go = sys.argv[1]
    import numpy as np
    import exprc
    import exprc.backends.c.kernel
    from exprc import cache
    x = exprc.vector("x")
    expr = exprc.log1p(exprc.exp(x)) * 3 - x
    while not os.path.exists(go):
        time.sleep(0.001)
    f = exprc.function([x], expr, backend="c")
    r = f(np.linspace(-2, 2, 7))
    ok = bool(np.allclose(r, np.log1p(np.exp(np.linspace(-2, 2, 7))) * 3 - np.linspace(-2, 2, 7)))
    meta = json.loads((f._kernel.cache_entry / "meta.json").read_text())
    print(json.dumps({"ok": ok, "compiles": cache.STATS["compiles"], "compile_id": meta["compile_id"]}))
"""


def test_eight_processes_compile_once(cache_dir, tmp_path):
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(RACER), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    time.sleep(1.0)  # let them import
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["ok"] for r in results)
    assert sum(r["compiles"] for r in results) == 1
    assert len({r["compile_id"] for r in results}) == 1
    r = cache.root(current())
    assert len(_entry_dirs(r)) == 1
    assert not cache.leftovers(r)


KILLED = """
    import sys, time
    from pathlib import Path
    from exprc import cache
    from exprc.backends.c import compile as cc
    from exprc.config import current
    ready = Path(sys.argv[1])
    def build(d):
        lib = cc.compile_library("int answer(void) { return 42; }\\n", d, "k_answer", current())
        ready.touch()
        time.sleep(120)
        return lib
    cache.load("k_answer", "int answer(void) { return 42; }\\n", {"t": "1"}, build, str, current())
"""


def test_killed_compile_leaves_no_partial_entry(cache_dir, tmp_path):
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(cache_dir)}
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED), str(ready)], env=env)
    deadline = time.time() + 60
    while not ready.exists():
        assert p.poll() is None and time.time() < deadline, "the compiling child did not start"
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    r = cache.root(current())
    assert _entry_dirs(r) == [] and cache.entries(r) == []
    assert len(cache.leftovers(r)) == 1  # the hidden temporary folder, never loaded
    # a later call builds the entry (the dead process's lock does not block) and tidies the leftover
    src = "int answer(void) { return 42; }\n"
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("int answer(void);")
    lib, folder = cache.load("k_answer", src, {"t": "1"}, lambda d: cc.compile_library(src, d, "k_answer", current()),
                             lambda p: ffi.dlopen(str(p)), current())
    assert lib.answer() == 42
    assert _entry_dirs(r) == [folder] and cache.leftovers(r) == []


def test_stale_lock_file_does_not_block(cache_dir):
    r = cache.ensure_root(current())
    (r / "locks").mkdir()
    key = _fn()._kernel.cache_entry.name
    cache.evict(r / key)
    clear_memo()
    (r / "locks" / f"{key}.lock").write_text("")  # as a killed process leaves it
    t0 = time.perf_counter()
    f = _fn()
    assert time.perf_counter() - t0 < 30 and f._kernel.cache_entry.name == key
    assert cache.remove_unheld_locks(r) == []  # the compile removed it


# -- integrity -----------------------------------------------------------------------------------------------------------
def _truncate(folder, meta):
    lib = folder / meta["library"]
    lib.write_bytes(lib.read_bytes()[:100])


def _garbage(folder, meta):
    lib = folder / meta["library"]
    lib.write_bytes(os.urandom(lib.stat().st_size))


def _meta_garbage(folder, meta):
    (folder / "meta.json").write_text("{not json")


def _meta_missing(folder, meta):
    (folder / "meta.json").unlink()


def _sha_mismatch(folder, meta):
    meta["sha256"] = "0" * 64
    (folder / "meta.json").write_text(json.dumps(meta))


def _library_missing(folder, meta):
    (folder / meta["library"]).unlink()


@pytest.mark.parametrize("damage", [_truncate, _garbage, _meta_garbage, _meta_missing, _sha_mismatch,
                                    _library_missing])
def test_corrupted_entry_is_evicted_and_rebuilt(cache_dir, damage):
    # populated by another process: damaging a library this process has loaded would crash it (SIGBUS)
    folder = cache.root(current()) / run_py(BUILD, cache_dir)["key"]
    meta = json.loads((folder / "meta.json").read_text())
    damage(folder, meta)
    before = cache.STATS["compiles"]
    with pytest.warns(RuntimeWarning, match="corrupted cache entry"):
        f = _fn()
    assert cache.STATS["compiles"] == before + 1
    assert np.allclose(f(np.arange(3.0)), np.exp(np.arange(3.0)) * 2 + 1)
    assert f._kernel.cache_entry == folder and cache.check_entry(folder, deep=True)[1] is None
    new = json.loads((folder / "meta.json").read_text())
    assert new.get("compile_id") != meta.get("compile_id")


def _limited_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # an unbounded read fails fast, not the machine


def _fifo_meta(folder, meta):
    (folder / "meta.json").unlink()
    os.mkfifo(folder / "meta.json")


def _library_is_dev_zero(folder, meta):
    (folder / meta["library"]).unlink()
    (folder / meta["library"]).symlink_to("/dev/zero")


def _library_is_symlink(folder, meta):
    lib = folder / meta["library"]
    outside = folder.parent.parent / "outside.so"
    lib.rename(outside)
    lib.symlink_to(outside)


def _entry_is_symlink(folder, meta):
    outside = folder.parent.parent / "outside-entry"
    folder.rename(outside)
    folder.symlink_to(outside)


@pytest.mark.parametrize("damage", [_fifo_meta, _library_is_dev_zero, _library_is_symlink, _entry_is_symlink])
def test_special_files_in_an_entry_are_never_read(cache_dir, damage):
    """A FIFO blocks an open for reading; /dev/zero never ends: the entry is corrupt, evicted and rebuilt."""
    folder = cache.root(current()) / run_py(BUILD, cache_dir)["key"]
    damage(folder, json.loads((folder / "meta.json").read_text()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "always"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(BUILD)], env=env, capture_output=True, text=True,
                         timeout=60, check=False, preexec_fn=_limited_memory)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["compiles"] == 1
    assert "corrupted cache entry" in out.stderr
    assert not folder.is_symlink() and cache.check_entry(folder, deep=True)[1] is None


def test_fifo_toolchain_record_is_replaced_not_read(cache_dir):
    run_py(BUILD, cache_dir)
    (record,) = (cache.root(current()) / "toolchain").glob("*.json")
    record.unlink()
    os.mkfifo(record)
    assert run_py(BUILD, cache_dir, timeout=60)["hits"] == 1  # probed again instead of waiting on the FIFO
    assert record.is_file() and json.loads(record.read_text())["version"]


def test_hit_bookkeeping_failure_does_not_fail_the_call(cache_dir, monkeypatch):
    folder = _fn()._kernel.cache_entry
    clear_memo()

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "write_json_atomic", broken)
    f = _fn()
    assert np.allclose(f(np.zeros(1)), [3.0])
    assert json.loads((folder / "meta.json").read_text())["hits"] == 0


# -- permissions -----------------------------------------------------------------------------------------------------------
def test_refuses_folders_writable_by_others(cache_dir):
    folder = _fn()._kernel.cache_entry
    r = folder.parent
    clear_memo()
    os.chmod(r, 0o777)
    try:
        with pytest.raises(CacheError, match=r"chmod go-w .*EXPRC_CACHE_DIR|writable by other users"):
            _fn()
        with pytest.raises(CacheError, match="chmod go-w"):
            _fn()
    finally:
        os.chmod(r, 0o755)
    os.chmod(folder, 0o775)
    try:
        with pytest.raises(CacheError, match="writable by other users"):
            _fn()
    finally:
        os.chmod(folder, 0o700)
    assert np.allclose(_fn()(np.zeros(1)), [3.0])


@pytest.mark.skipif(os.getuid() != 0, reason="changing a folder's owner needs root")
def test_refuses_folders_owned_by_someone_else(cache_dir):
    folder = _fn()._kernel.cache_entry
    clear_memo()
    os.chown(folder.parent, 12345, -1)
    try:
        with pytest.raises(CacheError, match="owned by uid 12345.*EXPRC_CACHE_DIR"):
            _fn()
    finally:
        os.chown(folder.parent, 0, -1)


def test_new_cache_folders_are_not_group_writable(cache_dir):
    old = os.umask(0o002)
    try:
        _fn()
    finally:
        os.umask(old)
    r = cache.root(current())
    for p in (cache_dir, r, r / "locks"):
        assert not p.stat().st_mode & 0o022, p


# -- a cache that cannot be written: warn once, build privately -----------------------------------------------------------
def test_cache_dir_that_is_a_file_builds_privately(cache_dir, monkeypatch):
    monkeypatch.setattr(cache, "_WARNED", set())
    cache_dir.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match=f"cannot write the compile cache {cache_dir}.*private temporary.*"
                                            "EXPRC_CACHE_DIR"):
        f = _fn()
    assert f._kernel.cache_entry is None and np.allclose(f(np.zeros(2)), [3.0, 3.0])
    clear_memo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per folder and process
        g = _fn(lambda x: exprc.sin(x) + 1)
        assert np.allclose(g(np.zeros(2)), [1.0, 1.0]) and np.allclose(g(np.zeros(2)), [1.0, 1.0])
    assert cache_dir.read_text() == "not a folder"


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_read_only_or_full_cache_builds_privately(cache_dir, monkeypatch, code):
    monkeypatch.setattr(cache, "_WARNED", set())
    hit = _fn()  # an entry written before the cache became read-only still loads
    clear_memo()
    real = tempfile.mkdtemp

    def cannot_write(suffix=None, prefix=None, dir=None):
        if dir is not None and str(cache_dir) in str(dir):
            raise OSError(code, os.strerror(code))
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkdtemp", cannot_write)
    assert _fn()._kernel.cache_entry == hit._kernel.cache_entry
    with pytest.warns(RuntimeWarning, match=f"cannot write the compile cache .*{os.strerror(code)}"):
        f = _fn(lambda x: exprc.cos(x) * 3)
    assert f._kernel.cache_entry is None and np.allclose(f(np.zeros(2)), [3.0, 3.0])
    assert len(_entry_dirs(cache.root(current()))) == 1


# -- size limit --------------------------------------------------------------------------------------------------------------
def test_least_recently_used_entries_are_evicted(cache_dir):
    exprs = [exprc.exp, exprc.log, exprc.sin]
    first = _fn(exprs[0])
    size = json.loads((first._kernel.cache_entry / "meta.json").read_text())["size_bytes"]
    limit = int(size * 2.5)
    cfg = current().replace(cache_max_bytes=limit)
    _fn(exprs[1], config=cfg)
    time.sleep(0.01)
    clear_memo()
    _fn(exprs[0], config=cfg)  # a hit: exp is now more recently used than log
    time.sleep(0.01)
    _fn(exprs[2], config=cfg)  # 3 entries > 2.5 sizes: the least recently used (log) goes
    names = [p.name.split("-")[0] for p in _entry_dirs(cache.root(current()))]
    assert sorted(names) == ["k0_exp", "k0_sin"]
    total = sum(e.size for e in cache.entries(cache.root(current())))
    assert total <= limit


def test_a_build_reads_every_entry_only_when_the_running_size_says_so(cache_dir, monkeypatch, tmp_path):
    """The running size in usage.json: a build scans the entries when the record is missing, broken or
    hostile, every SCAN_EVERY builds, and when the total passes the limit (then it evicts as before)."""
    scans = []
    real = cache._enforce
    monkeypatch.setattr(cache, "_enforce", lambda *a: scans.append(1) or real(*a))
    monkeypatch.setattr(cache, "SCAN_EVERY", 4)
    ops = [exprc.exp, exprc.log, exprc.sin, exprc.cos, exprc.tan, exprc.sqrt, exprc.tanh, exprc.expm1, exprc.log1p]
    first = _fn(ops[0])
    r = cache.root(current())
    record = r / cache.USAGE_FILE
    size = json.loads((first._kernel.cache_entry / "meta.json").read_text())["size_bytes"]
    assert len(scans) == 1 and json.loads(record.read_text()) == {"bytes": size, "builds": 0}
    for op in ops[1:4]:
        _fn(op)
    assert len(scans) == 1  # three builds: the record is enough
    got = json.loads(record.read_text())
    assert got["builds"] == 3 and got["bytes"] == sum(e.size for e in cache.entries(r))
    _fn(ops[4])
    assert len(scans) == 2 and json.loads(record.read_text())["builds"] == 0  # the 4th build: a scan
    record.write_text("{not json")
    _fn(ops[5])
    assert len(scans) == 3  # broken record: a scan, and a good record again
    assert json.loads(record.read_text())["bytes"] == sum(e.size for e in cache.entries(r))
    outside = tmp_path / "outside.json"
    outside.write_text('{"bytes": 0, "builds": 1}')
    record.unlink()
    record.symlink_to(outside)
    _fn(ops[6])
    assert len(scans) == 4 and outside.read_text() == '{"bytes": 0, "builds": 1}' and not record.is_symlink()
    record.unlink()
    os.mkfifo(record)  # a FIFO must not hang the build
    _fn(ops[7])
    assert len(scans) == 5 and record.is_file()
    limit = sum(e.size for e in cache.entries(r)) + size // 2
    _fn(ops[8], config=current().replace(cache_max_bytes=limit))  # past the limit: scan and evict
    assert len(scans) == 6 and sum(e.size for e in cache.entries(r)) <= limit
    assert json.loads(record.read_text())["bytes"] == sum(e.size for e in cache.entries(r))


# -- in-process memo ------------------------------------------------------------------------------------------------------------
def test_memo_returns_independent_functions_sharing_the_kernel(cache_dir):
    x = exprc.vector("x", dtype="float32")
    f = exprc.function([x], exprc.exp(x), backend="c")
    before = dict(cache.STATS)
    g = exprc.function([x], exprc.exp(x), backend="c", allow_downcast=True)
    assert cache.STATS == before  # not even a disk lookup
    assert f is not g and f._kernel is g._kernel
    g.extra = 1
    assert not hasattr(f, "extra")
    with pytest.raises(exprc.errors.InputTypeError):
        f(np.ones(2, np.float64))  # f keeps its own argument rules
    assert g(np.ones(2, np.float64)).dtype == np.float32
    h = exprc.function([x], exprc.exp(x), backend="c", config=current().replace(cache=False))
    assert h._kernel is not f._kernel


def test_failed_build_leaves_nothing_and_releases_the_lock(cache_dir):
    def build(d):
        (d / "half.so").write_bytes(b"partial")
        raise exprc.errors.CompileError("boom", None, "log")

    with pytest.raises(exprc.errors.CompileError, match="boom"):
        cache.load("k_fail", "int x;", {}, build, str, current())
    r = cache.root(current())
    assert _entry_dirs(r) == [] and cache.leftovers(r) == [] and not list((r / "locks").glob("*.lock"))
    lib, folder = cache.load("k_fail", "int x;", {}, lambda d: (d / "k_fail.so").write_bytes(b"ok") and d / "k_fail.so",
                             lambda p: p.read_bytes(), current())
    assert lib == b"ok" and folder.name.startswith("k_fail-")
