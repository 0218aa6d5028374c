"""SHA-256 for exprc's cache keys and checksums, without loading OpenSSL in a warm start.

``hashlib`` loads OpenSSL, 3-4 ms of CPU (7 with NumPy's OpenBLAS thread spinning beside it): a
tenth of what a fresh process spends in exprc to reach a cached function.  Python's own SHA-256
module gives the same digests; it is slower on large inputs (about 3 ms a megabyte against 0.6),
so a caller hashing something large says so (``size``) and gets hashlib's.
"""

from __future__ import annotations

from typing import Any

try:
    from _sha2 import sha256 as _builtin  # Python 3.12 and later
except ImportError:
    try:
        from _sha256 import sha256 as _builtin  # Python 3.11
    except ImportError:  # (a build without them: hashlib has it)
        _builtin = None

#: Inputs larger than this (bytes) are hashed by hashlib.
LARGE = 1 << 20


def sha256(data: bytes = b"", size: int = 0) -> Any:
    """A SHA-256 object (``update``, ``hexdigest``) started with ``data``; ``size``: the bytes that will
    be hashed in all, when more will be passed to ``update``."""
    if _builtin is None or max(size, len(data)) > LARGE:
        import hashlib

        return hashlib.sha256(data)
    return _builtin(data)


__all__ = ["LARGE", "sha256"]
