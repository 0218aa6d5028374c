"""BLAS for the C backend's matmul kernels: ``cblas_dgemm``/``cblas_sgemm`` with 64-bit integers
from the OpenBLAS that NumPy ships (``numpy.libs``), found once per process.

The generated C calls them through function pointers installed with ``exprc_set_blas``, so a
library links against nothing and one binary serves every NumPy install.  ``EXPRC_NO_BLAS=1``
(or a NumPy without a bundled OpenBLAS) makes matmul a NumPy step between native segments.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import cffi
import numpy as np

_BLAS: list = []


def blas_pointers() -> tuple[Any, Any] | None:
    """Addresses of cblas_dgemm/sgemm (ILP64) in the OpenBLAS that NumPy ships, or None."""
    if not _BLAS:
        _BLAS.append(_find_blas())
    return _BLAS[0]


def _find_blas() -> tuple[Any, Any] | None:
    if os.environ.get("EXPRC_NO_BLAS"):
        return None
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    ffi = cffi.FFI()
    for prefix in ("scipy_", ""):
        ffi_decl = (f"void {prefix}cblas_dgemm64_(int, int, int, int64_t, int64_t, int64_t, double, const double *, "
                    "int64_t, const double *, int64_t, double, double *, int64_t);"
                    f"void {prefix}cblas_sgemm64_(int, int, int, int64_t, int64_t, int64_t, float, const float *, "
                    "int64_t, const float *, int64_t, float, float *, int64_t);")
        for path in sorted(glob.glob(os.path.join(libs, "lib*openblas64*.so*"))):
            try:
                f = cffi.FFI()
                f.cdef(ffi_decl)
                lib = f.dlopen(path)
                d, s = getattr(lib, f"{prefix}cblas_dgemm64_"), getattr(lib, f"{prefix}cblas_sgemm64_")
                _KEEP_BLAS.append((f, lib))
                return f.cast("void *", d), f.cast("void *", s)
            except (OSError, AttributeError, cffi.CDefError):
                continue
    del ffi
    return None


_KEEP_BLAS: list = []


__all__ = ["blas_pointers"]
