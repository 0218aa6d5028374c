"""Reading a backend's source skeletons, and the one hash of them that goes into cache keys.

Each native backend keeps its skeletons in its own ``templates/`` folder (package data of
``exprc.backends.<name>``), read through :mod:`importlib.resources`, so an installed exprc and a
checkout find them the same way.  ``numpy_semantics.h`` (the NumPy-exact helpers for ``%``, ``//``,
``sign``, rounding …) is C that every C-like target shares; it lives with the C backend and is
spliced into a target's prelude at the marker below.
"""

from __future__ import annotations

import hashlib
from importlib import resources

_SPLICE = "/* exprc: numpy_semantics.h is spliced in here by the renderer */\n"


def read(backend: str, name: str) -> str:
    """The text of ``exprc/backends/<backend>/templates/<name>``."""
    return resources.files(f"exprc.backends.{backend}").joinpath("templates", name).read_text()


def prelude(backend: str, name: str) -> str:
    """A target's prelude with the shared NumPy-semantics helpers spliced in."""
    return read(backend, name).replace(_SPLICE, read("c", "numpy_semantics.h"))


def digest(*texts: str) -> str:
    """A short hash of template texts: a cache-key part, so that editing a template invalidates
    the binaries built from it."""
    return hashlib.sha256("".join(texts).encode()).hexdigest()[:16]


__all__ = ["digest", "prelude", "read"]
