"""Configuration: one frozen :class:`Config` value, the environment read in one place,
and a context manager for scoped overrides.

Precedence: explicit ``config=``/keyword arguments > ``with exprc.config(...)`` >
environment variables (read once, at import) > defaults.

Environment variables: ``EXPRC_BACKEND``, ``EXPRC_NUM_THREADS``, ``EXPRC_CACHE_DIR``,
``EXPRC_CACHE`` (``0`` disables the disk cache), ``EXPRC_FLOAT_DTYPE`` (``float32`` or
``float64``), ``CC``; and, process-wide rather than per Config, ``EXPRC_POOL_BYTES`` (:data:`POOL_BYTES`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

#: The values ``Config.float_dtype`` (and ``$EXPRC_FLOAT_DTYPE``) accept.
FLOAT_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Config:
    """Everything that changes what exprc builds or how it runs."""

    backend: str | None = None  #: None picks "c" when a C compiler works, else "numpy"
    num_threads: int = 0  #: 0 means one per core
    #: False builds without the OpenMP runtime (serial code, the same bits; half the compile of a
    #: large library): what exprc uses for loop bodies, which run one step's arrays at a time.
    openmp: bool = True
    cache: bool = True  #: False compiles into a temporary folder and keeps nothing
    cache_dir: str | None = None  #: None: $EXPRC_CACHE_DIR or the user cache folder
    cache_max_bytes: int = 1 << 30
    precise_math: bool = False  #: scalar libm instead of vector math
    fast_math: bool = False  #: opt-in -ffast-math (breaks NaN/Inf semantics)
    cc: str | None = None  #: C compiler; None: $CC, else cc
    extra_cflags: tuple[str, ...] = ()
    max_rewrite_rounds: int = 16
    exclude: tuple[str, ...] = field(default=())  #: rewrite names or tags to skip
    return_numpy: bool = False  #: CUDA backend: return NumPy arrays instead of exprc.cuda.DeviceArray
    #: The dtype of variables (``exprc.vector()``...) and creation functions (``zeros``, ``eye``...)
    #: given no dtype, and of their Python float values: Theano's ``floatX``.  Promotion does not
    #: change (``int32_var + 2.5`` is float64; a Python float next to float32 stays float32).
    float_dtype: str = "float64"
    #: Theano's NanGuardMode: each call checks every output and update for NaN/Inf made from finite
    #: inputs and raises :class:`~exprc.errors.NonFiniteError` naming the first node that made one
    #: (:mod:`exprc.guard`).  Off: no cost.
    nan_guard: bool = False
    #: Time every kernel and NumPy step of each call, and the compile by stage (:mod:`exprc.profile`;
    #: ``Function.profile``).  Off: no cost.
    profile: bool = False
    #: C backend: row kernels (``fusion._row_kernels``), a reduction over a matrix's last axis fused
    #: with the elementwise work around it, one loop nest per row (rows of up to 32 elements several
    #: to a SIMD loop).  None (the default): only where the row calls vector math (softmax,
    #: log-softmax, logsumexp, a cross-entropy and their gradients: 2-3x faster at (256, 1000), as
    #: fast at (128, 10)); True: every row reduction (a layer norm too: 5x faster at (256, 1000), but
    #: a variance over rows of 2 to 10 is 1.3-3.6x slower); False: a kernel per reduction.
    row_fusion: bool | None = None

    def __post_init__(self) -> None:
        name = getattr(self.float_dtype, "__name__", None) or str(self.float_dtype)  # np.float32, np.dtype(...)
        if name not in FLOAT_DTYPES:
            raise ValueError(f"Config: float_dtype must be one of {', '.join(FLOAT_DTYPES)}, got {self.float_dtype!r}")
        object.__setattr__(self, "float_dtype", name)
        if not (self.row_fusion is None or self.row_fusion is True or self.row_fusion is False):  # (not 1, 0.0)
            raise ValueError(f"Config: row_fusion must be None, True or False, got {self.row_fusion!r}")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def threads(self) -> int:
        """The threads native loops use: ``num_threads``, or one per core when it is 0."""
        return self.num_threads or os.cpu_count() or 1


def _from_environment(env: os._Environ | dict) -> Config:
    kw: dict[str, Any] = {}
    if env.get("EXPRC_BACKEND"):
        kw["backend"] = env["EXPRC_BACKEND"]
    if env.get("EXPRC_NUM_THREADS"):
        kw["num_threads"] = int(env["EXPRC_NUM_THREADS"])
    if env.get("EXPRC_CACHE_DIR"):
        kw["cache_dir"] = env["EXPRC_CACHE_DIR"]
    if env.get("EXPRC_CACHE") in ("0", "false", "no"):
        kw["cache"] = False
    if env.get("CC"):
        kw["cc"] = env["CC"]
    if env.get("EXPRC_FLOAT_DTYPE"):
        if env["EXPRC_FLOAT_DTYPE"] not in FLOAT_DTYPES:
            raise ValueError(f"EXPRC_FLOAT_DTYPE must be one of {', '.join(FLOAT_DTYPES)}, "
                             f"got {env['EXPRC_FLOAT_DTYPE']!r}")
        kw["float_dtype"] = env["EXPRC_FLOAT_DTYPE"]
    return Config(**kw)


_DEFAULT = _from_environment(os.environ)


def _pool_bytes(env: os._Environ | dict) -> int | None:
    v = env.get("EXPRC_POOL_BYTES")
    if not v:
        return None
    if not (v.isascii() and v.isdigit()) or int(v) >= 1 << 63:
        raise ValueError(f"EXPRC_POOL_BYTES must be a number of bytes below 2**63 (0 turns the pool off), got {v!r}")
    return int(v)


#: What the C dispatcher's pool of large output blocks may keep (``$EXPRC_POOL_BYTES``; 0: no pool;
#: None: its default, 512 MiB or a 16th of the memory).  Process-wide: the pool is one per process.
POOL_BYTES: int | None = _pool_bytes(os.environ)
_CURRENT: contextvars.ContextVar[Config] = contextvars.ContextVar("exprc_config", default=_DEFAULT)


def current() -> Config:
    """The configuration in force here (context overrides included)."""
    return _CURRENT.get()


@contextlib.contextmanager
def config(**overrides: Any) -> Iterator[Config]:
    """Override configuration fields inside a ``with`` block (per thread/task)."""
    token = _CURRENT.set(_CURRENT.get().replace(**overrides))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def resolve(cfg: Config | None, **overrides: Any) -> Config:
    """``cfg`` (or the current config) with non-None ``overrides`` applied."""
    base = cfg if cfg is not None else current()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return base.replace(**changes) if changes else base
