"""The call dispatcher: a small CPython extension (``templates/dispatch.c``) built once
per Python and NumPy version and kept in the cache's ``dispatch/`` folder.

It runs the common call path of compiled functions in C (check the arrays, pick
the plan, allocate outputs or take ``out=`` arrays, call the library without the
GIL), and for functions with updates the whole step: take the variables' locks,
read their values, write each new value into the variable's spare buffer, swap
(``Dispatcher.update``).  Building it
needs ``Python.h`` and NumPy's headers; where that fails exprc keeps the pure
Python call path, which is slower per call but equivalent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from exprc.config import Config

_LOCK = threading.Lock()
_MODULE: dict[str, ModuleType | None] = {}
#: Why the dispatcher could not be built (None while it works or was not tried).
UNAVAILABLE: list[str] = []


def _identity(source: str) -> str:
    parts = [source, sys.version, np.__version__, sysconfig.get_config_var("EXT_SUFFIX") or ""]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("exprc_dispatch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(source: str, folder: Path, cc: str) -> Path:
    src = folder / "dispatch.c"
    src.write_text(source)
    out = folder / f"exprc_dispatch{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    cmd = [*cc.split(), "-O2", "-shared", "-fPIC", "-std=c99", f"-I{sysconfig.get_paths()['include']}",
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

                folder = cache.ensure_root(cfg) / "dispatch" / ident
                lib = folder / f"exprc_dispatch{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
                if not lib.exists():
                    folder.parent.mkdir(parents=True, exist_ok=True)
                    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
                    _build(source, tmp, cc.compiler(cfg))
                    try:
                        os.replace(tmp, folder)
                    except OSError:  # another process built it first
                        shutil.rmtree(tmp, ignore_errors=True)
                module = _import(lib)
            else:
                with tempfile.TemporaryDirectory(prefix="exprc-dispatch-") as tmp:
                    module = _import(_build(source, Path(tmp), cc.compiler(cfg)))
        except Exception as exc:  # noqa: BLE001 - any failure means: use the Python path
            UNAVAILABLE.append(f"{type(exc).__name__}: {exc}")
            module = None
        _MODULE[ident] = module
        return module
