"""The on-disk compile cache (minimal form: content-addressed, atomic entries).

One folder per entry, named ``<name>-<hash12>``; an entry appears atomically
(built in a temporary folder, then ``os.replace``d into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

from exprc.config import Config

T = TypeVar("T")


def root(cfg: Config) -> Path:
    """The cache folder for this exprc version, Python ABI and platform."""
    import exprc

    base = os.environ.get("EXPRC_CACHE_DIR") or cfg.cache_dir
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "exprc")
    tag = f"v{exprc.__version__}-{sys.implementation.cache_tag}-{sys.platform}"
    return Path(base) / tag


def entry_key(name: str, source: str, parts: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(parts):
        h.update(f"{k}={parts[k]}\n".encode())
    h.update(b"source\n")
    h.update(source.encode())
    return f"{name}-{h.hexdigest()[:12]}"


def load(name: str, source: str, parts: dict[str, str], build: Callable[[Path], Path],
         loader: Callable[[Path], T], cfg: Config, meta: dict[str, Any] | None = None) -> tuple[T, Path | None]:
    """Load the library for ``source``, building it with ``build(folder) -> lib path`` when absent.

    Returns the loaded object and the entry folder (None when ``cfg.cache`` is off).
    """
    if not cfg.cache:
        with tempfile.TemporaryDirectory(prefix="exprc-") as tmp:
            return loader(build(Path(tmp))), None
    key = entry_key(name, source, parts)
    folder = root(cfg) / key
    lib_name = f"{name}.so"
    if (folder / lib_name).exists():
        return loader(folder / lib_name), folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=folder.parent))
    try:
        lib = build(tmp)
        if lib.name != lib_name:
            os.replace(lib, tmp / lib_name)
        (tmp / "meta.json").write_text(json.dumps({"key": key, "parts": parts, **(meta or {})}, indent=1,
                                                  sort_keys=True))
        try:
            os.replace(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; use its entry
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return loader(folder / lib_name), folder
