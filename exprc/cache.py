"""The on-disk compile cache: readable keys, atomic entries, per-entry locks, integrity checks.

Layout of :func:`root` (one folder per exprc version, Python ABI and platform)::

    <name>-<hash12>/        one entry; appears atomically and never changes except meta.json
        <name>.c            the generated source (<name>.cu for the CUDA backend)
        <name>.so           the shared library (<name>.cubin or <name>.ptx for the CUDA backend)
        meta.json           key parts, timestamps, hits, sizes, sha256 of the library (no pickle)
    locks/<key>.lock        flock-ed only while that entry compiles (released when a process dies)
    toolchain/<id>.json     compiler probe results (see :mod:`exprc.backends.c.compile`)
    dispatch/<id>/          the call dispatcher extension (see :mod:`exprc.backends.c.dispatch`)
    .tmp-<key>-XXXX/        an entry being built, or what a killed build left (never loaded)
    .trash-<key>-XXXX/      an entry being deleted

:func:`load` is the one entry point of the compile path: look the entry up
without any lock; on a miss take that entry's lock (never a global one), look
again, build into a temporary folder, write ``meta.json`` and ``os.replace``
the folder into place.  A library whose sha256 does not match ``meta.json``,
or an entry whose ``meta.json`` cannot be read, is evicted with a warning and
rebuilt.  The cache refuses folders that other users can write to or own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from exprc._version import __version__
from exprc.config import Config
from exprc.errors import CacheError

T = TypeVar("T")

#: Version of the entry layout; an entry with another format is treated as corrupt and rebuilt.
FORMAT = 1
_ENTRY_RE = re.compile(r"^[A-Za-z0-9_.]+-[0-9a-f]{12}$")
_REQUIRED = {"key": str, "library": str, "sha256": str, "created": (int, float), "last_used": (int, float),
             "hits": int, "size_bytes": int}

#: Per-process counters (tests and benchmarks read them): compiles, hits, evictions.
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


# -- keys ---------------------------------------------------------------------------------------------------------
def entry_key(name: str, source: str, parts: dict[str, str]) -> str:
    """``<name>-<hash12>``: sha256 over the sorted named parts and the source (stable across processes)."""
    h = hashlib.sha256()
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
    locks = r / "locks"
    if not locks.is_dir():
        _make_private_dir(locks)
    path = locks / f"{key}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
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
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
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
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


# -- entries ------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_meta(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(meta, None) or (None, why it is unusable) or (None, None) when the entry does not exist."""
    try:
        raw = (folder / "meta.json").read_bytes()
    except FileNotFoundError:
        return None, ("meta.json is missing" if folder.is_dir() else None)
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
    """Like :func:`read_meta`, plus the library's sha256 (and with ``deep`` the source's)."""
    meta, why = read_meta(folder)
    if meta is None:
        return None, why
    try:
        if _sha256(folder / meta["library"]) != meta["sha256"]:
            return None, "the library's sha256 does not match meta.json (truncated or modified)"
    except FileNotFoundError:
        return None, f"the library {meta['library']} is missing"
    except OSError as exc:
        return None, f"the library is unreadable ({exc.strerror})"
    if deep and meta.get("source") and meta.get("source_sha256"):
        try:
            if _sha256(folder / meta["source"]) != meta["source_sha256"]:
                return None, "the source's sha256 does not match meta.json"
        except OSError:
            return None, f"the source {meta['source']} is missing or unreadable"
    return meta, None


def evict(folder: Path) -> bool:
    """Remove an entry: rename it away first (it disappears atomically), then delete it."""
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{folder.name}-", dir=folder.parent))
    except OSError:
        return False
    try:
        os.replace(folder, trash / folder.name)
    except FileNotFoundError:
        shutil.rmtree(trash, ignore_errors=True)
        return False
    except OSError:
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()
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
         loader: Callable[[Path], T], cfg: Config, meta: dict[str, Any] | None = None) -> tuple[T, Path | None]:
    """Load the library for ``source``, building it with ``build(folder) -> lib path`` when absent.

    ``parts`` are the named key parts besides the source (compiler, version, flags, …); ``meta``
    adds fields to meta.json (``backend``, ``summary``).  Returns the loaded object and the entry
    folder (None when ``cfg.cache`` is off: then the build happens in a temporary folder that is
    deleted afterwards).
    """
    if not cfg.cache:
        with tempfile.TemporaryDirectory(prefix="exprc-") as tmp:
            return loader(build(Path(tmp))), None
    r = ensure_root(cfg)
    key = entry_key(name, source, parts)
    folder = r / key
    state, loaded, _ = _try_load(folder, loader)
    if state == "ok":
        return loaded, folder  # type: ignore[return-value]
    with entry_lock(r, key):
        state, loaded, why = _try_load(folder, loader)  # built by the process we waited for?
        if state == "ok":
            return loaded, folder  # type: ignore[return-value]
        if state == "bad":
            warnings.warn(f"exprc: evicting the corrupted cache entry {folder} ({why}); rebuilding it",
                          RuntimeWarning, stacklevel=4)
            evict(folder)
        _remove_stale_temps(r, key)
        _build(r, folder, name, source, parts, build, meta or {})
        _count("compiles")
        state, loaded, why = _try_load(folder, loader, hit=False)
        if state != "ok":
            raise CacheError(f"exprc: the freshly built cache entry {folder} cannot be used: {why or 'missing'}")
    if cfg.cache_max_bytes:
        with contextlib.suppress(OSError):
            enforce_limit(r, cfg.cache_max_bytes, keep={key})
    return loaded, folder  # type: ignore[return-value]


def _build(r: Path, folder: Path, name: str, source: str, parts: dict[str, str], build: Callable[[Path], Path],
           extra: dict[str, Any]) -> None:

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
            "source": src.name, "sha256": _sha256(tmp / lib_name), "source_sha256": _sha256(src),
            "created": now, "last_used": now, "hits": 0, "compile_seconds": round(seconds, 4),
            "exprc_version": __version__, "compile_id": uuid.uuid4().hex, "pid": os.getpid(),
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
        if not is_entry_name(n) or not p.is_dir():
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
    keep = set(keep)
    es = entries(r)
    total = sum(e.size for e in es)
    evicted = []
    if total <= max_bytes:
        return evicted
    for e in sorted(es, key=lambda e: e.last_used):
        if total <= max_bytes:
            break
        if e.key in keep:
            continue
        if evict(e.path):
            evicted.append(e.key)
        total -= e.size
    return evicted


__all__ = [
    "STATS",
    "CacheError",
    "Entry",
    "check_entry",
    "check_safe",
    "enforce_limit",
    "ensure_root",
    "entries",
    "entry_key",
    "evict",
    "load",
    "root",
]
