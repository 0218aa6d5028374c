"""The cffi declarations of the C functions the runtime calls, loaded without cffi's C parser.

``cffi.FFI().cdef(...)`` imports pycparser and parses C on every start (about 60 ms of CPU here: a
fresh process that calls a cached function spent a fifth of its time on it).  cffi's out-of-line
ABI mode writes the parsed declarations as a small Python module (``emit_python_code``) that
builds the same FFI from serialized type tables in C.  :func:`get` loads that module from the
cache's ``dispatch/`` area (an entry like the dispatcher's: sha256-checked before every import,
keyed by the declarations, cffi's and Python's versions), writing it on first use; without a
cache, or when anything fails, it falls back to ``cdef`` (same declarations, same behaviour).

"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from exprc.config import Config

#: Every C function the runtime calls: kernels, the index helpers, the loop stepper and the
#: elementwise loops (one FFI serves every library; the BLAS gemms are added from backends/c/blas.py).
CDEF = """
void exprc_run(char **ptrs, const int64_t *P, int64_t first, int64_t last, int nthreads);
void exprc_set_blas(void *dgemm, void *sgemm);
int64_t exprc_gather_rows(char *out, const char *x, int64_t rows, int64_t sx, const int64_t *idx, int64_t n,
                          int64_t row_bytes, int nthreads);
int64_t exprc_scatter_add_rows_f64(char *, int64_t, int64_t, const char *, int64_t, const int64_t *, int64_t, int64_t);
int64_t exprc_scatter_add_rows_f32(char *, int64_t, int64_t, const char *, int64_t, const int64_t *, int64_t, int64_t);
int64_t exprc_scatter_add_rows_i64(char *, int64_t, int64_t, const char *, int64_t, const int64_t *, int64_t, int64_t);
int64_t exprc_scatter_add_rows_i32(char *, int64_t, int64_t, const char *, int64_t, const int64_t *, int64_t, int64_t);
int64_t exprc_loop_steps(void *run, char **ptrs, const int64_t *P, int64_t nkernels, int nthreads,
                         int64_t start, int64_t n,
                         int64_t nmoves, const int64_t *slot, char *const *base, const int64_t *stride,
                         const int64_t *off, const int64_t *mod,
                         int64_t nviews, const int64_t *vslot, const int64_t *vbase, const int64_t *voff,
                         const char *cond);
void exprc_loop(char **ptrs, const int64_t *rows, const int64_t *es, int64_t n, int64_t total, int nthreads);
"""

def _declarations() -> str:
    from exprc.backends.c.blas import DECLARATIONS

    return CDEF + DECLARATIONS.replace(";", ";\n")


_MODULE = "exprc_ffi_decls"
_LOCK = threading.Lock()
_FFI: list[Any] = []
#: Why the pre-parsed declarations could not be used (empty while they work or were not tried).
UNAVAILABLE: list[str] = []


def get(cfg: Config) -> Any:
    """The FFI with :data:`CDEF` (built once per process)."""
    if _FFI:
        return _FFI[0]
    with _LOCK:
        if not _FFI:
            _FFI.append(_load(cfg))
    return _FFI[0]


def dlopen(ffi: Any, path: Any) -> Any:
    """``ffi.dlopen(path)`` with ``RTLD_NODELETE``: the library stays loaded for the life of the
    process.  cffi's out-of-line FFI closes a library when its lib object is collected (the in-line
    one never did), and closing the last library linked with libgomp unloads libgomp under its idle
    worker threads, which then crash (tests/test_ffi.py shows it)."""
    return ffi.dlopen(str(path), os.RTLD_NOW | getattr(os, "RTLD_NODELETE", 0))


def from_buffer(ffi: Any) -> Any:
    """``from_buffer(ctype, buffer, require_writable)`` without cffi's Python-level wrapper (~1 us
    per array) where there is one (the in-line FFI); the out-of-line FFI's is already C."""
    return getattr(ffi, "_backend", ffi).from_buffer


def _load(cfg: Config) -> Any:
    if cfg.cache:
        try:
            import _cffi_backend

            from exprc import cache

            parts = {"cffi": _cffi_backend.__version__, "python": sys.version}
            module, _ = cache.load(_MODULE, _declarations(), parts, _emit, _import, cfg,
                                   {"backend": "ffi", "summary": "the runtime's cffi declarations, pre-parsed"},
                                   area="dispatch")
            return module.ffi
        except Exception as exc:  # noqa: BLE001 - any failure: parse the declarations in this process instead
            UNAVAILABLE.append(f"{type(exc).__name__}: {exc}")
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_declarations())
    return ffi


def _emit(folder: Path) -> Path:
    import cffi

    builder = cffi.FFI()
    builder.cdef(_declarations())
    builder.set_source(_MODULE, None)
    path = folder / f"{_MODULE}.py"
    with contextlib.redirect_stdout(io.StringIO()):  # cffi prints "generating <path>"
        builder.emit_python_code(str(path))
    return path


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "ffi"):
        raise ImportError(f"{path} defines no ffi")
    return module


__all__ = ["CDEF", "dlopen", "from_buffer", "get"]
