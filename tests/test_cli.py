"""``exprc cache …`` on empty, populated and corrupted caches.

Each state is exercised through the real entry point (``python -m exprc`` in a subprocess,
``real=True``); the other checks call :func:`exprc.cli.main` in-process with the same
environment, which is the same code minus an interpreter start (keeps the suite fast)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from exprc.backends.c import compile as cc
from exprc.cli import main
from exprc.config import Config

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["path", "list", "show", "stats", "verify", "prune", "clear", "unlock"]


def exprc_cli(cache_dir: Path, *args: str, stdin: str | None = None, real: bool = False, timeout: float = 120) -> Any:
    """Run ``exprc *args`` on ``cache_dir``; ``stdin=None`` means an empty stdin (EOF)."""
    if real:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(cache_dir), "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "exprc", *args], env=env, input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL if stdin is None else None)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPRC_CACHE_DIR", str(cache_dir))
        mp.setenv("COLUMNS", "200")
        mp.setattr(sys, "stdin", io.StringIO(stdin or ""))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["exprc", *args], code, out.getvalue(), err.getvalue())


def _root(cache_dir: Path) -> Path:
    (tag,) = [p for p in cache_dir.iterdir() if p.name.startswith("v")]
    return tag


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in _root(cache_dir).iterdir() if p.is_dir() and "-" in p.name and p.name[0] != ".")


@pytest.fixture(scope="module")
def populated_template(tmp_path_factory):
    if cc.probe(Config(cache=False)) is not None:
        pytest.skip("no working C compiler")
    d = tmp_path_factory.mktemp("populated")
    code = """
        import numpy as np
        import exprc
        x = exprc.vector("x")
        for e in (exprc.exp(x) + 1, exprc.sin(x) * 2, exprc.log1p(x * x)):
            exprc.function([x], e, backend="c")(np.ones(3))
        f = exprc.function([x], exprc.exp(x) + 1, backend="c")
        f(np.ones(3)); f(np.ones(3))  # the second call builds the dispatcher
        exprc.function([x], exprc.exp(x) + 1, backend="c", config=exprc.Config(cache_max_bytes=1 << 30))(np.ones(3))
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(d)}
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, check=True, timeout=120)
    return d


@pytest.fixture
def populated(populated_template, tmp_path):
    d = tmp_path / "cache"
    shutil.copytree(populated_template, d)
    return d


# -- empty and missing caches -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["list"], ["stats"], ["verify"], ["prune"], ["clear"], ["clear", "-y"],
                                  ["unlock"], ["prune", "--max-size", "1M", "--older-than", "30d"]])
def test_missing_cache_is_reported_plainly(tmp_path, args):
    r = exprc_cli(tmp_path / "nothing", "cache", *args, real=args == ["list"])
    assert r.returncode == 0, r.stderr
    assert "does not exist" in r.stdout or "no lock files" in r.stdout
    assert not (tmp_path / "nothing").exists()  # looking does not create the folder


def test_empty_cache(tmp_path):
    r = exprc_cli(tmp_path / "c", "cache", "path")
    assert r.returncode == 0 and r.stdout.strip().startswith(str(tmp_path / "c" / "v"))
    Path(r.stdout.strip()).mkdir(parents=True)
    r = exprc_cli(tmp_path / "c", "cache", "list", real=True)
    assert r.returncode == 0 and "is empty" in r.stdout
    r = exprc_cli(tmp_path / "c", "cache", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = exprc_cli(tmp_path / "c", "cache", "show", "k0")
    assert r.returncode == 1 and "no entry matches" in r.stderr


# -- usage -----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_per_subcommand(tmp_path, sub):
    r = exprc_cli(tmp_path, "cache", sub, "--help", real=sub == "list")
    assert r.returncode == 0 and f"usage: exprc cache {sub}" in r.stdout


@pytest.mark.parametrize("args", [[], ["cache"], ["cache", "list", "--sort", "bogus"], ["cache", "frobnicate"],
                                  ["cache", "prune", "--max-size", "lots"], ["cache", "prune", "--older-than", "3x"],
                                  ["cache", "show"]])
def test_usage_errors_exit_2(tmp_path, args):
    r = exprc_cli(tmp_path, *args, real=args == ["cache", "frobnicate"])
    assert r.returncode == 2
    assert "usage:" in r.stderr


# -- populated --------------------------------------------------------------------------------------------------------------------
def test_list_table_and_json(populated):
    r = exprc_cli(populated, "cache", "list", real=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for col in ("KEY", "BACKEND", "SIZE", "AGE", "LAST USED", "HITS", "COMPILE", "SUMMARY"):
        assert col in lines[0]
    assert "exp(x) + 1.0" in r.stdout and "sin(x) * 2.0" in r.stdout and "3 entries" in lines[-1]
    rows = json.loads(exprc_cli(populated, "cache", "list", "--json", "--sort", "hits", real=True).stdout)
    assert len(rows) == 3
    for row in rows:
        for field in ("key", "backend", "size_bytes", "created", "last_used", "hits", "compile_seconds", "summary"):
            assert field in row
        assert row["backend"] == "c" and row["size_bytes"] > 0
    assert rows[0]["summary"] == "exp(x) + 1.0" and rows[0]["hits"] == 1  # the warm hit sorts first
    by_key = json.loads(exprc_cli(populated, "cache", "list", "--json").stdout)
    assert [r["key"] for r in by_key] == sorted(r["key"] for r in by_key)
    rev = json.loads(exprc_cli(populated, "cache", "list", "--json", "--sort", "key", "--reverse").stdout)
    assert [r["key"] for r in rev] == [r["key"] for r in by_key][::-1]


def test_show_by_unique_prefix(populated):
    key = next(p.name for p in _entries(populated) if p.name.startswith("k0_sin"))
    r = exprc_cli(populated, "cache", "show", "k0_si")
    assert r.returncode == 0, r.stderr
    assert f"key:          {key}" in r.stdout and "sin(x) * 2.0" in r.stdout
    assert "--- source:" in r.stdout and "exprc_run" in r.stdout and "verified" in r.stdout
    page = exprc_cli(populated, "cache", "show", "k0_si", "--html")
    assert page.returncode == 0 and page.stdout.startswith("<!DOCTYPE html>") and page.stdout.endswith("</html>")
    assert f"<td>{key}</td>" in page.stdout and 'class="kw"' in page.stdout and "exprc_run" in page.stdout
    assert "sin(x) * 2.0" in page.stdout and "<script" not in page.stdout
    r = exprc_cli(populated, "cache", "show", "k0_")
    assert r.returncode == 1 and "ambiguous" in r.stderr
    r = exprc_cli(populated, "cache", "show", "zzz")
    assert r.returncode == 1 and "no entry matches" in r.stderr


def test_stats_and_verify_on_a_good_cache(populated):
    r = exprc_cli(populated, "cache", "stats")
    assert r.returncode == 0
    assert "entries:        3" in r.stdout and "hits:           1" in r.stdout
    assert "oldest:" in r.stdout and "newest:" in r.stdout and "total size:" in r.stdout
    r = exprc_cli(populated, "cache", "verify")
    assert r.returncode == 0 and "all good" in r.stdout


# -- corrupted -----------------------------------------------------------------------------------------------------------------------
def test_verify_reports_and_fixes_corruption(populated):
    es = _entries(populated)
    lib = next(es[0].glob("*.so"))
    lib.write_bytes(lib.read_bytes()[:50])
    (es[1] / "meta.json").write_text("garbage")
    tmp_left = _root(populated) / f".tmp-{es[2].name}-abcd"
    tmp_left.mkdir()
    r = exprc_cli(populated, "cache", "verify", real=True)
    assert r.returncode == 1
    assert f"BAD {es[0].name}: the library's sha256" in r.stdout
    assert f"BAD {es[1].name}: meta.json is not valid JSON" in r.stdout
    assert "leftover" in r.stdout and "--fix" in r.stdout
    r = exprc_cli(populated, "cache", "list")
    # list and stats read meta.json only (cheap); the library checksum is verify's job
    assert r.returncode == 0 and r.stdout.count("<broken:") == 1
    r = exprc_cli(populated, "cache", "stats")
    assert r.returncode == 0 and "(1 broken)" in r.stdout
    r = exprc_cli(populated, "cache", "verify", "--fix", real=True)
    assert r.returncode == 0 and "evicted" in r.stdout
    assert [p.name for p in _entries(populated)] == [es[2].name] and not tmp_left.exists()
    r = exprc_cli(populated, "cache", "verify")
    assert r.returncode == 0 and "all good" in r.stdout


def test_special_files_are_reported_not_read(populated):
    es = _entries(populated)
    (es[0] / "meta.json").unlink()
    os.mkfifo(es[0] / "meta.json")  # opening a FIFO for reading waits for a writer: forever
    lib = next(es[1].glob("*.so"))
    lib.unlink()
    lib.symlink_to("/dev/zero")
    for args in (["list"], ["stats"], ["verify"], ["show", es[0].name], ["show", es[1].name]):
        r = exprc_cli(populated, "cache", *args, real=True, timeout=30)
        assert "Traceback" not in r.stderr, r.stderr  # finishes (timeout=) with a plain report
    assert "is not a regular file (a FIFO)" in exprc_cli(populated, "cache", "list").stdout
    r = exprc_cli(populated, "cache", "verify", real=True, timeout=30)
    assert r.returncode == 1
    assert f"BAD {es[0].name}: meta.json is not a regular file (a FIFO)" in r.stdout
    assert f"BAD {es[1].name}: the library {lib.name} is a symbolic link" in r.stdout
    r = exprc_cli(populated, "cache", "verify", "--fix", real=True, timeout=30)
    assert r.returncode == 0 and [p.name for p in _entries(populated)] == [p.name for p in es[2:]]


def _dispatcher(cache_dir: Path) -> Path:
    (lib,) = (_root(cache_dir) / "dispatch").glob("*/*.so")
    return lib


def test_verify_covers_the_dispatcher(populated):
    r = exprc_cli(populated, "cache", "verify")
    assert r.returncode == 0 and "all good" in r.stdout and "dispatcher" in r.stdout
    lib = _dispatcher(populated)
    lib.write_bytes(lib.read_bytes()[:-10] + b"0123456789")  # replaced by someone else's code
    r = exprc_cli(populated, "cache", "verify", real=True)
    assert r.returncode == 1
    assert f"BAD dispatch/{lib.parent.name}: the library's sha256 does not match" in r.stdout
    r = exprc_cli(populated, "cache", "verify", "--fix")
    assert r.returncode == 0 and f"evicted dispatch/{lib.parent.name}" in r.stdout and not lib.exists()
    r = exprc_cli(populated, "cache", "verify")
    assert r.returncode == 0 and "all good" in r.stdout


@pytest.mark.parametrize("where", ["dispatch", "locks", "dispatcher entry"])
def test_verify_reports_folders_other_users_can_write(populated, where):
    lib = _dispatcher(populated)
    (_root(populated) / "locks").mkdir(exist_ok=True)
    folder = {"dispatch": lib.parent.parent, "locks": _root(populated) / "locks", "dispatcher entry": lib.parent}[where]
    os.chmod(folder, 0o777)
    try:
        r = exprc_cli(populated, "cache", "verify")
        assert r.returncode == 1 and "writable by other users" in r.stdout and str(folder) in r.stdout, r.stdout
        r = exprc_cli(populated, "cache", "verify", "--fix")
        if where == "dispatcher entry":  # an entry others could write is evicted (rebuilt on next use)
            assert r.returncode == 0 and "evicted dispatch/" in r.stdout and not folder.exists()
        else:  # --fix does not change a folder's permissions: the message says how
            assert r.returncode == 1 and "chmod go-w" in r.stdout
    finally:
        if folder.exists():
            os.chmod(folder, 0o755)


def test_clear_on_a_read_only_cache_says_what_stayed(populated, monkeypatch):
    import errno
    import tempfile

    n = len(_entries(populated))
    real = tempfile.mkdtemp

    def read_only(suffix=None, prefix=None, dir=None):
        if dir is not None and str(populated) in str(dir):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    r = exprc_cli(populated, "cache", "clear", "-y")
    assert r.returncode == 1 and "removed 0 entries" in r.stdout, r.stdout
    assert f"could not remove {n} entries" in r.stdout + r.stderr and "Read-only file system" in r.stdout + r.stderr
    assert len(_entries(populated)) == n
    es = _entries(populated)
    (es[0] / "meta.json").write_text("garbage")
    r = exprc_cli(populated, "cache", "verify", "--fix")
    assert r.returncode == 1 and f"evicted {es[0].name}" not in r.stdout
    assert f"could not evict {es[0].name}" in r.stdout + r.stderr


def test_unsafe_cache_folder_is_refused(populated):
    r0 = _root(populated)
    os.chmod(r0, 0o777)
    try:
        r = exprc_cli(populated, "cache", "list", real=True)
    finally:
        os.chmod(r0, 0o755)
    assert r.returncode == 1
    assert f"chmod go-w {r0}" in r.stderr and "EXPRC_CACHE_DIR" in r.stderr


# -- maintenance -------------------------------------------------------------------------------------------------------------------------
def test_clear_asks_and_eof_means_no(populated):
    n = len(_entries(populated))
    r = exprc_cli(populated, "cache", "clear", real=True)  # stdin is /dev/null: EOF
    assert r.returncode == 1 and "aborted" in r.stdout and len(_entries(populated)) == n
    r = exprc_cli(populated, "cache", "clear", stdin="n\n")
    assert r.returncode == 1 and len(_entries(populated)) == n
    r = exprc_cli(populated, "cache", "clear", stdin="y\n", real=True)
    assert r.returncode == 0 and f"removed {n} entries" in r.stdout and _entries(populated) == []
    r = exprc_cli(populated, "cache", "list")
    assert r.returncode == 0 and "is empty" in r.stdout


def test_clear_yes(populated):
    graphs = _root(populated) / "graphs"
    assert len(list(graphs.iterdir())) >= 3  # the graph index's records of the compiles above
    r = exprc_cli(populated, "cache", "clear", "-y")
    assert r.returncode == 0 and _entries(populated) == []
    assert list(graphs.iterdir()) == []


def test_prune_by_age_and_size(populated):
    es = _entries(populated)
    meta = json.loads((es[0] / "meta.json").read_text())
    meta["last_used"] -= 40 * 86400
    (es[0] / "meta.json").write_text(json.dumps(meta))
    r = exprc_cli(populated, "cache", "prune", "--older-than", "30d")
    assert r.returncode == 0 and "removed 1 entries" in r.stdout
    assert [p.name for p in _entries(populated)] == [p.name for p in es[1:]]
    sizes = [row["size_bytes"] for row in json.loads(exprc_cli(populated, "cache", "list", "--json").stdout)]
    limit = max(sizes) + min(sizes) // 2  # room for one entry (the biggest), not for two
    r = exprc_cli(populated, "cache", "prune", "--max-size", str(limit))
    assert r.returncode == 0
    rows = json.loads(exprc_cli(populated, "cache", "list", "--json").stdout)
    assert len(rows) == 1 and sum(row["size_bytes"] for row in rows) <= limit


def test_unlock_removes_only_unheld_locks(populated):
    locks = _root(populated) / "locks"
    locks.mkdir(exist_ok=True)
    (locks / "k0_stale-000000000000.lock").write_text("")
    held = locks / "k0_busy-111111111111.lock"
    fd = os.open(held, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = exprc_cli(populated, "cache", "unlock")
    finally:
        os.close(fd)
    assert r.returncode == 0 and "removed 1 stale lock" in r.stdout and "1 held" in r.stdout
    assert [p.name for p in locks.iterdir()] == [held.name]


def test_console_script_entry_point_is_cli_main():
    setup = (ROOT / "setup.py").read_text()
    assert '"exprc=exprc.cli:main"' in setup
    from exprc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["cache", "--help"])
    assert exc.value.code == 0
