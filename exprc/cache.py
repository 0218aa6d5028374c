"""The on-disk compile cache: readable keys, atomic entries, per-entry locks, integrity checks.

Layout of :func:`root` (one folder per exprc version, Python ABI and platform)::

    <name>-<hash12>/        one entry; appears atomically and never changes except meta.json
        <name>.c            the generated source (<name>.cu for the CUDA backend)
        <name>.so           the shared library (<name>.cubin or <name>.ptx for the CUDA backend)
        meta.json           key parts, timestamps, hits, sizes, sha256 of the library (no pickle)
    locks/<key>.lock        flock-ed only while that entry compiles (released when a process dies)
    toolchain/<id>.json     compiler probe results (see :mod:`exprc.backends.c.compile`)
    dispatch/<name>-<hash12>/  the call dispatcher extension (:mod:`exprc.backends.c.dispatch`): an entry
                            like the others (meta.json, sha256, the same checks) in its own area
    graphs/<key>            the graph index (:mod:`exprc.graph_index`): which entry a user's graph
                            compiles to, with the optimized graph and the backend's plan: a pickle read
                            with an allow-list of classes, sha256- and owner-checked
    .tmp-<key>-XXXX/        an entry being built, or what a killed build left (never loaded)
    .trash-<key>-XXXX/      an entry being deleted

:func:`load` is the one entry point of the compile path: look the entry up
without any lock; on a miss take that entry's lock (never a global one), look
again, build into a temporary folder, write ``meta.json`` and ``os.replace``
the folder into place.  A library whose sha256 does not match ``meta.json``,
or an entry whose ``meta.json`` cannot be read, is evicted with a warning and
rebuilt.  The cache refuses folders that other users can write to or own (the
root, ``locks/``, ``dispatch/`` and every entry).

Files in the cache are opened only as regular files: never through a symbolic
link (``O_NOFOLLOW``, entry folders opened with ``O_DIRECTORY`` and read
relative to that handle), never blocking on a FIFO (``O_NONBLOCK`` then
``fstat``), and read no further than the size ``meta.json`` records (meta.json
itself at most :data:`META_MAX_BYTES`).  Anything else makes the entry corrupt:
evicted and rebuilt.

A cache that cannot be written (read-only or full disk, ``EXPRC_CACHE_DIR``
naming a file) does not stop a compile: :func:`load` warns once per folder and
builds into a private temporary folder, as with ``Config(cache=False)``.
Unsafe permissions are not that case: they raise :class:`CacheError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from exprc._version import __version__
from exprc.config import Config
from exprc.digest import sha256
from exprc.errors import CacheError

T = TypeVar("T")

#: Version of the entry layout; an entry with another format is treated as corrupt and rebuilt.
FORMAT = 1
_ENTRY_RE = re.compile(r"^[A-Za-z0-9_.]+-[0-9a-f]{12}$")
_REQUIRED = {"key": str, "library": str, "sha256": str, "created": (int, float), "last_used": (int, float),
             "hits": int, "size_bytes": int}

#: meta.json is a few KiB (the summary is capped at 500 characters); anything larger is not ours.
META_MAX_BYTES = 1 << 20
#: Cap on a read through :func:`read_file` when the caller knows no recorded size.
FILE_MAX_BYTES = 1 << 30
#: errno values that mean "this folder cannot be written" (then :func:`load` builds privately).
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST,
                 errno.EMLINK}
_WARNED: set[str] = set()

#: Per-process counters (tests and benchmarks read them): compiles, hits, evictions of kernel entries
#: (the ``dispatch/`` area's dispatcher and declarations are not counted).
STATS = {"compiles": 0, "hits": 0, "evictions": 0}
_STATS_LOCK = threading.Lock()


def _count(what: str) -> None:
    with _STATS_LOCK:
        STATS[what] += 1


# -- location and safety ---------------------------------------------------------------------------------------
def base_dir(cfg: Config) -> Path:
    """``$EXPRC_CACHE_DIR``, else ``Config.cache_dir``, else ``$XDG_CACHE_HOME/exprc`` or ``~/.cache/exprc``."""
    base = os.environ.get("EXPRC_CACHE_DIR") or cfg.cache_dir
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "exprc")
    return Path(base)


def root(cfg: Config) -> Path:
    """The cache folder for this exprc version, Python ABI and platform."""

    return base_dir(cfg) / f"v{__version__}-{sys.implementation.cache_tag}-{sys.platform}"


def check_safe(path: Path, what: str = "cache folder") -> None:
    """Raise :class:`CacheError` when ``path`` is owned by another user or writable by group/others.

    A world-writable folder with the sticky bit (``/tmp``) is accepted as a *parent*
    only through :func:`ensure_root`, which checks the exprc folders below it.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CacheError(f"exprc: cannot read the {what} {path}: {exc}; set EXPRC_CACHE_DIR to a folder you own")
    uid = os.getuid()
    if st.st_uid != uid:
        raise CacheError(f"exprc: refusing to use the {what} {path}: it is owned by uid {st.st_uid}, not by you "
                         f"(uid {uid}), so its libraries could run someone else's code. Set EXPRC_CACHE_DIR to a "
                         "folder you own (or chown it).")
    if st.st_mode & 0o022:
        raise CacheError(f"exprc: refusing to use the {what} {path}: it is writable by other users (mode "
                         f"{stat.S_IMODE(st.st_mode):o}), so its libraries could be replaced. Fix it with "
                         f"`chmod go-w {path}` or set EXPRC_CACHE_DIR to a private folder.")


def _make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing; folders this creates get no group/other write bit."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        with contextlib.suppress(OSError):
            os.chmod(p, stat.S_IMODE(os.stat(p).st_mode) & ~0o022)


def ensure_root(cfg: Config) -> Path:
    """The cache root, created when missing, after the safety checks."""
    r = root(cfg)
    if not r.is_dir():
        _make_private_dir(r)
    check_safe(r)
    base = r.parent
    st = os.stat(base)
    if not st.st_mode & stat.S_ISVTX:  # a sticky parent (/tmp) cannot have our folder swapped out
        check_safe(base)
    return r


def ensure_folder(r: Path, name: str, what: str) -> Path:
    """``<root>/<name>`` (``locks``, ``dispatch``, ``toolchain``), created private when missing, after the
    same ownership and permission checks as the root: a lock or dispatcher folder other users can write
    to would let them swap in a library the next process (maybe root's) loads."""
    path = r / name
    if not path.is_dir():
        _make_private_dir(path)
    check_safe(path, what)
    return path


# -- keys ---------------------------------------------------------------------------------------------------------
def entry_key(name: str, source: str, parts: dict[str, str]) -> str:
    """``<name>-<hash12>``: sha256 over the sorted named parts and the source (stable across processes)."""
    h = sha256()
    for k in sorted(parts):
        h.update(f"{k}={parts[k]}\n".encode())
    h.update(b"source\n")
    h.update(source.encode())
    return f"{name}-{h.hexdigest()[:12]}"


def is_entry_name(name: str) -> bool:
    return bool(_ENTRY_RE.match(name))


# -- locks --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def entry_lock(r: Path, key: str) -> Iterator[None]:
    """Hold ``<root>/locks/<key>.lock`` (flock, blocking).  The holder unlinks the file before releasing,
    so a waiter that wakes on an unlinked file retries on a fresh one; a killed holder's lock is
    released by the kernel and its leftover file is reused."""
    path = ensure_folder(r, "locks", "lock folder") / f"{key}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the previous holder removed this file: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def lock_is_held(path: Path) -> bool:
    """True when some process holds the flock on ``path``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:  # a symlink or a special file: not a lock anybody holds
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def remove_unheld_locks(r: Path) -> list[Path]:
    """Delete the lock files nobody holds (left by killed processes); returns them."""
    removed = []
    for path in sorted((r / "locks").glob("*.lock")):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # vanished, or a symlink/special file (never followed)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                removed.append(path)
        except OSError:  # vanished, or a read-only folder: the file stays, and is not reported removed
            pass
        finally:
            os.close(fd)
    return removed


# -- reading files safely -------------------------------------------------------------------------------------------
class _BadFile(Exception):
    """A file in the cache that must not be read (the message completes "<file> ...")."""


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_regular(name: str | Path, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """An fd on a regular file: no symlink followed (O_NOFOLLOW), no wait on a FIFO (O_NONBLOCK), fstat-checked."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _BadFile("is a symbolic link (links are never followed inside the cache)") from None
        if exc.errno == errno.ENXIO:
            raise _BadFile("is not a regular file (a socket)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "a special file")
        raise _BadFile(f"is not a regular file ({kind})")
    return fd, st


def _chunks(fd: int, st: os.stat_result, limit: int) -> Iterator[bytes]:
    """The file's bytes, at most ``limit`` (checked on the size first, then while reading)."""
    if st.st_size > limit:
        raise _BadFile(f"is larger than recorded ({st.st_size} bytes, at most {limit} expected)")
    total = 0
    while True:
        b = os.read(fd, min(1 << 20, limit + 1 - total))
        if not b:
            return
        total += len(b)
        if total > limit:
            raise _BadFile(f"grew past the recorded size ({limit} bytes) while being read")
        yield b


def _read_at(name: str | Path, limit: int, dir_fd: int | None = None, private: bool = False) -> bytes:
    fd, st = _open_regular(name, dir_fd)
    try:
        if private:
            _check_private(st)
        return b"".join(_chunks(fd, st, limit))
    finally:
        os.close(fd)


def _check_private(st: os.stat_result) -> None:
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise _BadFile(f"is owned by uid {st.st_uid} or writable by other users (mode "
                       f"{stat.S_IMODE(st.st_mode):o}): its contents could be replaced")


def _sha256_at(name: str | Path, limit: int, dir_fd: int | None = None, private: bool = False) -> str:
    """sha256 of a regular file; ``private``: also refuse one other users own or can write (in place)."""
    fd, st = _open_regular(name, dir_fd)
    try:
        if private:
            _check_private(st)
        h = sha256(size=st.st_size)
        for b in _chunks(fd, st, limit):
            h.update(b)
        return h.hexdigest()
    finally:
        os.close(fd)


def read_file(path: Path, limit: int = FILE_MAX_BYTES, what: str = "cache file", private: bool = False) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (no symlink, FIFO or device;
    ``private``: owned by this user and writable by no other, as a library must be to be loaded):
    raises :class:`CacheError` naming the file otherwise, ``OSError`` when it cannot be read."""
    try:
        return _read_at(path, limit, private=private)
    except _BadFile as exc:
        raise CacheError(f"exprc: refusing to read the {what} {path}: it {exc}. Remove it (`exprc cache verify "
                         "--fix` removes broken entries).") from None


@contextlib.contextmanager
def _entry_fd(folder: Path) -> Iterator[int | None]:
    """A handle on the entry folder itself (not through a symlink), or None when it does not exist."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if folder.is_symlink() else "not a folder"
            raise _BadFile(f"the entry is {kind} (links are never followed inside the cache)") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


# -- entries ------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return _sha256_at(path, FILE_MAX_BYTES)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a killed process with our pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_meta(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(meta, None) or (None, why it is unusable) or (None, None) when the entry does not exist."""
    try:
        with _entry_fd(folder) as dfd:
            if dfd is None:
                return None, None
            return _read_meta_at(folder, dfd)
    except _BadFile as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"the entry is unreadable ({exc.strerror})"


def _read_meta_at(folder: Path, dfd: int) -> tuple[dict[str, Any] | None, str | None]:
    try:
        raw = _read_at("meta.json", META_MAX_BYTES, dfd)
    except FileNotFoundError:
        return None, "meta.json is missing"
    except _BadFile as exc:
        return None, f"meta.json {exc}"
    except OSError as exc:
        return None, f"meta.json is unreadable ({exc.strerror})"
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "meta.json is not valid JSON"
    if not isinstance(meta, dict):
        return None, "meta.json is not a JSON object"
    for field, typ in _REQUIRED.items():
        if not isinstance(meta.get(field), typ):
            return None, f"meta.json lacks a valid {field!r}"
    if meta.get("format") != FORMAT:
        return None, f"entry format {meta.get('format')!r}, expected {FORMAT}"
    if meta["key"] != folder.name:
        return None, f"meta.json names key {meta['key']!r}, not {folder.name!r}"
    if "/" in meta["library"] or meta["library"].startswith("."):
        return None, "meta.json names a library outside the entry"
    return meta, None


def check_entry(folder: Path, deep: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """Like :func:`read_meta`, plus the library's sha256 (and with ``deep`` the source's).  Every file is
    read through one handle on the entry folder, as a regular file, no further than its recorded size."""
    try:
        with _entry_fd(folder) as dfd:
            if dfd is None:
                return None, None
            return _check_at(folder, dfd, deep)
    except _BadFile as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"the entry is unreadable ({exc.strerror})"


def _check_at(folder: Path, dfd: int, deep: bool) -> tuple[dict[str, Any] | None, str | None]:
    meta, why = _read_meta_at(folder, dfd)
    if meta is None:
        return None, why
    lib = meta["library"]
    limit = meta.get("library_bytes") if isinstance(meta.get("library_bytes"), int) else meta["size_bytes"]
    try:
        if _sha256_at(lib, limit, dfd, private=True) != meta["sha256"]:
            return None, "the library's sha256 does not match meta.json (truncated or modified)"
    except FileNotFoundError:
        return None, f"the library {lib} is missing"
    except _BadFile as exc:
        return None, f"the library {lib} {exc}"
    except OSError as exc:
        return None, f"the library is unreadable ({exc.strerror})"
    src = meta.get("source")
    if deep and isinstance(src, str) and meta.get("source_sha256") and "/" not in src and not src.startswith("."):
        try:
            if _sha256_at(src, meta["size_bytes"], dfd) != meta["source_sha256"]:
                return None, "the source's sha256 does not match meta.json"
        except _BadFile as exc:
            return None, f"the source {src} {exc}"
        except OSError:
            return None, f"the source {src} is missing or unreadable"
    return meta, None


def evict(folder: Path, errors: list[str] | None = None) -> bool:
    """Remove an entry: rename it away first (it disappears atomically), then delete it.  True when it is
    gone because of this call; when it could not be removed, why is appended to ``errors``."""
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{folder.name}-", dir=folder.parent))
    except OSError as exc:
        if errors is not None and os.path.lexists(folder):
            errors.append(f"{folder.name}: {exc.strerror or exc}")
        return False
    try:
        os.replace(folder, trash / folder.name)
    except FileNotFoundError:
        shutil.rmtree(trash, ignore_errors=True)
        return False
    except OSError as exc:
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.lexists(folder):
            if errors is not None:
                errors.append(f"{folder.name}: {exc.strerror or exc}")
            return False
        return True
    shutil.rmtree(trash, ignore_errors=True)
    _count("evictions")
    return True


def _touch(folder: Path, meta: dict[str, Any]) -> None:
    """Record a hit: last_used and hits, meta.json rewritten atomically; failures are ignored."""
    meta["last_used"] = time.time()
    meta["hits"] = int(meta.get("hits", 0)) + 1
    with contextlib.suppress(OSError):
        write_json_atomic(folder / "meta.json", meta)


def _folder_size(folder: Path) -> int:
    total = 0
    with os.scandir(folder) as it:
        for e in it:
            with contextlib.suppress(OSError):
                total += e.stat(follow_symlinks=False).st_size
    return total


def _try_load(folder: Path, loader: Callable[[Path], T], hit: bool = True) -> tuple[str, T | None, str | None]:
    """("ok", loaded, None) | ("missing", None, None) | ("bad", None, reason); ``hit`` records a hit."""
    meta, why = check_entry(folder)
    if meta is None:
        return ("bad", None, why) if why else ("missing", None, None)
    check_safe(folder, "cache entry")
    try:
        loaded = loader(folder / meta["library"])
    except FileNotFoundError:  # evicted between the check and the load
        return "missing", None, None
    except OSError as exc:
        return "bad", None, f"the library does not load ({exc})"
    if hit:
        _count("hits")
        _touch(folder, meta)
    return "ok", loaded, None


def _remove_stale_temps(r: Path, key: str) -> None:
    """Temporary folders of ``key`` left by killed builds (call while holding ``key``'s lock)."""
    for p in r.glob(f".tmp-{key}-*"):
        shutil.rmtree(p, ignore_errors=True)


def load(name: str, source: str, parts: dict[str, str], build: Callable[[Path], Path],
         loader: Callable[[Path], T], cfg: Config, meta: dict[str, Any] | None = None,
         area: str = "") -> tuple[T, Path | None]:
    """Load the library for ``source``, building it with ``build(folder) -> lib path`` when absent.

    ``parts`` are the named key parts besides the source (compiler, version, flags, …); ``meta``
    adds fields to meta.json (``backend``, ``summary``); ``area`` puts the entry in a subfolder of
    the root (``"dispatch"``: the dispatcher, kept out of ``exprc cache list`` and the size limit)
    with the same checks.  Returns the loaded object and the entry folder (None when ``cfg.cache`` is
    off or the cache cannot be written: then the build happens in a temporary folder that is
    deleted afterwards).
    """
    if not cfg.cache:
        return _private(build, loader), None
    try:
        r = ensure_root(cfg)
        where = ensure_folder(r, area, f"cache folder {area}/") if area else r
    except OSError as exc:  # cannot create the folder: read-only, full, EXPRC_CACHE_DIR is a file, ...
        return _unwritable(base_dir(cfg), exc, build, loader), None
    key = entry_key(name, source, parts)
    folder = where / key
    state, loaded, _ = _try_load(folder, loader, hit=not area)
    if state == "ok":
        return loaded, folder  # type: ignore[return-value]
    try:
        with entry_lock(r, key):
            state, loaded, why = _try_load(folder, loader, hit=not area)  # built by the process we waited for?
            if state == "ok":
                return loaded, folder  # type: ignore[return-value]
            if state == "bad":
                warnings.warn(f"exprc: evicting the corrupted cache entry {folder} ({why}); rebuilding it",
                              RuntimeWarning, stacklevel=4)
                evict(folder)
            _remove_stale_temps(where, key)
            built = _build(where, folder, name, source, parts, build, meta or {})
            if not area:
                _count("compiles")
            state, loaded, why = _try_load(folder, loader, hit=False)
            if state != "ok":
                raise CacheError(f"exprc: the freshly built cache entry {folder} cannot be used: {why or 'missing'}")
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        return _unwritable(where, exc, build, loader), None
    if cfg.cache_max_bytes and not area:
        with contextlib.suppress(OSError):
            _count_build(r, folder.name, built, cfg.cache_max_bytes)
    return loaded, folder  # type: ignore[return-value]


def load_entry(cfg: Config, key: str, loader: Callable[[Path], T]) -> tuple[T, Path] | None:
    """The library of the existing entry ``key`` loaded with ``loader`` (a hit, as in :func:`load`), and
    its folder; None when the cache is off, unsafe or unreadable, or the entry is missing or corrupt
    (nothing is built or evicted here: the caller's full path does that)."""
    if not cfg.cache or not is_entry_name(key):
        return None
    try:
        r = root(cfg)
        check_safe(r)
        state, loaded, _ = _try_load(r / key, loader)
    except (OSError, CacheError):
        return None
    return (loaded, r / key) if state == "ok" else None  # type: ignore[return-value]


def _private(build: Callable[[Path], Path], loader: Callable[[Path], T]) -> T:
    """Build in a temporary folder deleted afterwards (a loaded library stays mapped)."""
    with tempfile.TemporaryDirectory(prefix="exprc-") as tmp:
        return loader(build(Path(tmp)))


def _unwritable(folder: Path, exc: OSError, build: Callable[[Path], Path], loader: Callable[[Path], T]) -> T:
    """The cache cannot be written: warn once per folder, then build privately (as with cache=False)."""
    with _STATS_LOCK:
        first = str(folder) not in _WARNED
        _WARNED.add(str(folder))
    if first:
        warnings.warn(f"exprc: cannot write the compile cache {folder} ({exc.strerror or exc}); compiling into a "
                      "private temporary folder instead (nothing is reused across processes). Fix: make it a "
                      "writable folder you own, free disk space, set EXPRC_CACHE_DIR to another folder, or pass "
                      "Config(cache=False) to go without the cache.", RuntimeWarning, stacklevel=4)
    try:
        return _private(build, loader)
    except OSError as exc2:
        if exc2.errno not in _WRITE_ERRNOS:
            raise
        raise CacheError(f"exprc: cannot write the compile cache {folder} ({exc.strerror or exc}) nor a temporary "
                         f"folder ({exc2}): free disk space, or set EXPRC_CACHE_DIR and TMPDIR to writable "
                         "folders") from exc2


def _build(r: Path, folder: Path, name: str, source: str, parts: dict[str, str], build: Callable[[Path], Path],
           extra: dict[str, Any]) -> int:
    """Build entry ``folder``; its ``size_bytes``."""

    key = folder.name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=r))
    try:
        t0 = time.perf_counter()
        lib = build(tmp)
        seconds = time.perf_counter() - t0
        lib_name = f"{name}{lib.suffix or '.so'}"  # .so, or .cubin/.ptx for CUDA entries
        if lib.name != lib_name or lib.parent != tmp:
            os.replace(lib, tmp / lib_name)
        # The source the build wrote itself (.cu for CUDA, .in.json for an accuracy search), else <name>.c.
        src = next((p for p in (tmp / f"{name}.cu", tmp / f"{name}.in.json") if p.exists()), tmp / f"{name}.c")
        if not src.exists():
            src.write_text(source)
        for p in tmp.iterdir():
            os.chmod(p, stat.S_IMODE(p.stat().st_mode) & ~0o022)
        now = time.time()
        meta = {k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}
        meta.update({
            "format": FORMAT, "key": key, "name": name, "parts": dict(parts), "library": lib_name,
            "library_bytes": (tmp / lib_name).stat().st_size,
            "source": src.name, "sha256": _sha256(tmp / lib_name), "source_sha256": _sha256(src),
            "created": now, "last_used": now, "hits": 0, "compile_seconds": round(seconds, 4),
            "exprc_version": __version__, "compile_id": os.urandom(16).hex(), "pid": os.getpid(),
        })
        meta.setdefault("backend", "")
        meta.setdefault("summary", "")
        meta["summary"] = " ".join(str(meta["summary"]).split())  # one line
        meta["size_bytes"] = _folder_size(tmp) + 600  # meta.json itself, roughly
        write_json_atomic(tmp / "meta.json", meta)
        try:
            os.replace(tmp, folder)
        except OSError:
            pass  # an entry appeared without our lock (e.g. a cache copied in); the caller checks it
        return int(meta["size_bytes"])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -- listing and maintenance (used by the CLI) -----------------------------------------------------------------
@dataclass
class Entry:
    path: Path
    meta: dict[str, Any] | None
    problem: str | None = None

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def size(self) -> int:
        if self.meta is not None:
            return int(self.meta["size_bytes"])
        try:
            return _folder_size(self.path)
        except OSError:
            return 0

    @property
    def last_used(self) -> float:
        if self.meta is not None:
            return float(self.meta["last_used"])
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0


def entries(r: Path, deep: bool = False) -> list[Entry]:
    """Every entry under root ``r``; ``deep`` also checks sha256 of library and source."""
    out = []
    try:
        names = sorted(os.listdir(r))
    except FileNotFoundError:
        return []
    for n in names:
        p = r / n
        if not is_entry_name(n) or not (p.is_dir() or p.is_symlink()):  # a symlink is listed as broken
            continue
        meta, why = check_entry(p, deep=True) if deep else read_meta(p)
        if meta is None and why is None:
            continue  # vanished meanwhile
        if deep and meta is not None:
            try:
                check_safe(p, "cache entry")
            except CacheError as exc:
                meta, why = None, str(exc)
        out.append(Entry(p, meta, why))
    return out


#: Sub-folders of the root and what they are called in messages (checked like the root).
SUBFOLDERS = (("locks", "lock folder"), ("dispatch", "cache folder dispatch/"), ("toolchain", "toolchain folder"),
              ("graphs", "graph index folder"))


def check_folders(r: Path) -> list[tuple[Path, str]]:
    """(folder, problem) for each existing sub-folder of root ``r`` that other users own or can write to."""
    out = []
    for name, what in SUBFOLDERS:
        try:
            check_safe(r / name, what)
        except CacheError as exc:
            out.append((r / name, str(exc)))
    return out


def leftovers(r: Path) -> list[Path]:
    """Temporary and trash folders whose build or deletion is not running (nobody holds the key's lock)."""
    out = []
    if not r.is_dir():
        return out
    for p in sorted(r.iterdir()):
        m = re.match(r"^\.(tmp|trash)-(.+-[0-9a-f]{12})-", p.name)
        if m and not (m.group(1) == "tmp" and lock_is_held(r / "locks" / f"{m.group(2)}.lock")):
            out.append(p)
    return out


def enforce_limit(r: Path, max_bytes: int, keep: Iterable[str] = ()) -> list[str]:
    """Evict least-recently-used entries until the total size is at most ``max_bytes``."""
    return _enforce(r, max_bytes, set(keep))[0]


def _enforce(r: Path, max_bytes: int, keep: set[str]) -> tuple[list[str], int]:
    """:func:`enforce_limit`, and the bytes left."""
    es = entries(r)
    total = sum(e.size for e in es)
    evicted: list[str] = []
    if total <= max_bytes:
        return evicted, total
    for e in sorted(es, key=lambda e: e.last_used):
        if total <= max_bytes:
            break
        if e.key in keep:
            continue
        if evict(e.path):
            evicted.append(e.key)
        total -= e.size
    return evicted, total


#: The cache's running size, in ``<root>/usage.json``: ``{"bytes": total, "builds": since the last scan}``.
#: Reading every entry's metadata on every build took 1.2 s per compile with 7,000 entries, so a build
#: adds its entry's size to the record and scans every entry (:func:`enforce_limit`) only when the total
#: passes the limit, when the record is missing or unreadable, and every ``SCAN_EVERY`` builds (which
#: also catches entries copied in or removed by hand: until then the record can be off by those).
USAGE_FILE = "usage.json"
SCAN_EVERY = 256


def _count_build(r: Path, key: str, added: int, max_bytes: int) -> None:
    """Add the ``added`` bytes of entry ``key``, just built, to the running size; evict least-recently-used
    entries (never this one) when the total passes ``max_bytes``."""
    path = r / USAGE_FILE
    with entry_lock(r, "usage"):
        try:  # (a regular file of a few bytes: a FIFO or a symlink here must not hang or redirect the read)
            d = json.loads(read_file(path, 1 << 12, "cache usage record"))
            total, builds = int(d["bytes"]) + added, int(d["builds"]) + 1
            fresh = total >= 0 and 0 < builds < SCAN_EVERY
        except (OSError, ValueError, KeyError, TypeError, CacheError):
            fresh = False
        if not fresh or total > max_bytes:
            total, builds = _enforce(r, max_bytes, {key})[1], 0
        write_json_atomic(path, {"bytes": total, "builds": builds})  # (a rename: replaces a FIFO or a link itself)


__all__ = [
    "STATS",
    "CacheError",
    "Entry",
    "check_entry",
    "check_folders",
    "check_safe",
    "enforce_limit",
    "ensure_folder",
    "ensure_root",
    "entries",
    "entry_key",
    "evict",
    "load",
    "load_entry",
    "read_file",
    "root",
]
