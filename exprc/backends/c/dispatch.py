"""The call dispatcher: a small CPython extension (``templates/dispatch.c``) built once
per Python and NumPy version and kept in the cache's ``dispatch/`` folder.

It runs the common call path of compiled functions in C (check the arrays, pick
the plan, allocate outputs or take ``out=`` arrays, call the library without the
GIL), and for functions with updates the whole step: take the variables' locks,
read their values, write each new value into the variable's spare buffer, swap
(``Dispatcher.update``).  Outputs of 32 MiB or more come from a small pool of blocks
that earlier outputs gave back (no page zeroing on each call; ``EXPRC_POOL_BYTES``
caps it, 0 turns it off: :data:`exprc.config.POOL_BYTES`; :func:`empty`, :func:`pool_info`).  Building it
needs ``Python.h`` and NumPy's headers; where that fails exprc keeps the pure
Python call path, which is slower per call but equivalent.

The built extension is a cache entry like a kernel's, in the cache's ``dispatch/``
area (:func:`exprc.cache.load` with ``area="dispatch"``): meta.json with its sha256,
checked before every import, ownership and permission checks on ``dispatch/``,
the entry and ``locks/``, and ``exprc cache verify`` covers it.  A tampered
extension is evicted and rebuilt; an unsafe folder raises
:class:`~exprc.errors.CacheError` (importing someone else's extension would run
their code in this process).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from exprc.config import POOL_BYTES, Config
from exprc.errors import CacheError

_LOCK = threading.Lock()
_MODULE: dict[str, ModuleType | None] = {}
#: Outputs of at least this many bytes come from the dispatcher's pool (dispatch.c's EXPRC_POOL_MIN).
POOL_MIN = 32 << 20
#: Why the dispatcher could not be built (None while it works or was not tried).
UNAVAILABLE: list[str] = []


def _identity(source: str) -> str:
    import hashlib  # (OpenSSL: loaded on a call's second run, not by a process's first call)

    parts = [source, sys.version, np.__version__, sysconfig.get_config_var("EXT_SUFFIX") or ""]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("exprc_dispatch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Compiler flags of the extension (a cache key part).
FLAGS = ("-O2", "-shared", "-fPIC", "-std=c99", "-Werror=implicit-function-declaration")


def _build(source: str, folder: Path, cc: str) -> Path:
    src = folder / "exprc_dispatch.c"
    src.write_text(source)
    out = folder / f"exprc_dispatch{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    import subprocess  # (a build only: a warm process imports the cached extension)

    cmd = [*cc.split(), *FLAGS, f"-I{sysconfig.get_paths()['include']}",
           f"-I{np.get_include()}", "-o", str(out), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        raise RuntimeError((r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout) else "failed")
    return out


def load(cfg: Config) -> ModuleType | None:
    """The dispatcher module, building it on first use; None when it cannot be built."""
    from exprc.backends.c import compile as cc
    from exprc.backends.templates import read

    if os.environ.get("EXPRC_NO_DISPATCH"):
        return None
    source = read("c", "dispatch.c")
    ident = _identity(source)
    if ident in _MODULE:
        return _MODULE[ident]
    with _LOCK:
        if ident in _MODULE:
            return _MODULE[ident]
        module = None
        try:
            if cfg.cache:
                from exprc import cache

                compiler = cc.compiler(cfg)
                parts = {"python": sys.version, "numpy": np.__version__,
                         "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX") or "", "compiler": compiler,
                         "flags": " ".join(FLAGS)}
                module, _ = cache.load("exprc_dispatch", source, parts, lambda d: _build(source, d, compiler),
                                       _import, cfg, {"backend": "dispatch", "summary": "the C call dispatcher"},
                                       area="dispatch")
            else:
                with tempfile.TemporaryDirectory(prefix="exprc-dispatch-") as tmp:
                    module = _import(_build(source, Path(tmp), cc.compiler(cfg)))
        except CacheError:
            raise  # unsafe permissions: refuse, as for kernels (and try again on the next call)
        except Exception as exc:  # noqa: BLE001 - any failure means: use the Python path
            UNAVAILABLE.append(f"{type(exc).__name__}: {exc}")
            module = None
        if module is not None and POOL_BYTES is not None:
            module.set_pool_cap(POOL_BYTES)
        _MODULE[ident] = module
        return module


def _loaded() -> ModuleType | None:
    for module in _MODULE.values():
        if module is not None:
            return module
    return None


def empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A fresh output array as the dispatcher allocates one: from its pool of large blocks when it
    has at least :data:`POOL_MIN` bytes and the dispatcher is loaded; else ``np.empty``."""
    module = _loaded() if dtype.itemsize * math.prod(shape) >= POOL_MIN else None  # (np.prod: 3 us a call)
    return np.empty(shape, dtype) if module is None else module.empty(tuple(shape), dtype.num)


def pool_info() -> dict:
    """What the pool of large output blocks holds: ``bytes``, ``blocks``, ``reused`` (allocations it
    served so far) and ``cap`` (``EXPRC_POOL_BYTES``); zeros where no dispatcher is loaded."""
    module = _loaded()
    kept, blocks, reused, cap = module.pool_info() if module is not None else (0, 0, 0, 0)
    return {"bytes": kept, "blocks": blocks, "reused": reused, "cap": cap}


def pool_release() -> None:
    """Free the blocks the pool keeps (arrays still alive are not touched)."""
    module = _loaded()
    if module is not None:
        module.pool_release()
