"""BLAS for the C backend's matmul kernels: ``cblas_dgemm``/``cblas_sgemm`` with 64-bit integers
from the OpenBLAS that NumPy ships (``numpy.libs``), found once per process.

The generated C calls them through function pointers installed with ``exprc_set_blas``, so a
library links against nothing and one binary serves every NumPy install.  ``EXPRC_NO_BLAS=1``
(or a NumPy without a bundled OpenBLAS) makes matmul a NumPy step between native segments.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_BLAS: list = []

#: The two gemms, under the names NumPy's OpenBLAS has used (with and without scipy's prefix).
DECLARATIONS = "".join(
    f"void {p}cblas_dgemm64_(int, int, int, int64_t, int64_t, int64_t, double, const double *, int64_t, "
    f"const double *, int64_t, double, double *, int64_t);"
    f"void {p}cblas_sgemm64_(int, int, int, int64_t, int64_t, int64_t, float, const float *, int64_t, "
    f"const float *, int64_t, float, float *, int64_t);" for p in ("scipy_", ""))


def blas_pointers(ffi: Any = None) -> tuple[Any, Any] | None:
    """Addresses of cblas_dgemm/sgemm (ILP64) in the OpenBLAS that NumPy ships, or None.
    ``ffi``: an FFI declaring both spellings of the two functions (backends/c/ffi.py); None: a new one."""
    if not _BLAS:
        _BLAS.append(_find_blas(ffi))
    return _BLAS[0]


def _find_blas(ffi: Any) -> tuple[Any, Any] | None:
    if os.environ.get("EXPRC_NO_BLAS"):
        return None
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    if ffi is None:
        import cffi

        ffi = cffi.FFI()
        ffi.cdef(DECLARATIONS)
    import glob  # (here: a warm start that needs no BLAS does not import it)

    for path in sorted(glob.glob(os.path.join(libs, "lib*openblas64*.so*"))):
        try:
            lib = ffi.dlopen(path)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            try:
                d, s = getattr(lib, f"{prefix}cblas_dgemm64_"), getattr(lib, f"{prefix}cblas_sgemm64_")
            except AttributeError:
                continue
            _KEEP_BLAS.append((ffi, lib))
            return ffi.cast("void *", d), ffi.cast("void *", s)
    return None


_KEEP_BLAS: list = []


__all__ = ["DECLARATIONS", "blas_pointers"]
