"""Exceptions raised by exprc.

Every exception derives from :class:`ExprcError`.  Errors about what a caller
passed also derive from the matching built-in (``TypeError``/``ValueError``)
so that code written against NumPy conventions keeps working.
"""

from __future__ import annotations


class ExprcError(Exception):
    """Base class of every exprc error."""


class ShapeError(ExprcError, ValueError):
    """Shapes that cannot work together (known at build time or at call time)."""


class IndexOutOfBounds(ExprcError, IndexError):
    """An index (int, array entry, mask) does not fit the axis it indexes: at build time when
    both are static, else when the function is called (never an out-of-bounds read)."""


class DTypeError(ExprcError, TypeError):
    """A dtype that an operation or an input does not accept."""


class InputError(ExprcError, ValueError):
    """A call-time input that does not match the compiled function's signature."""


class InputTypeError(InputError, TypeError):
    """A call-time input of the wrong dtype or kind (also a ``TypeError``)."""


class MissingInputError(ExprcError, ValueError):
    """An output depends on a variable that is not among the function's inputs."""


class UnknownRewriteError(ExprcError, KeyError):
    """A rewrite name or tag given to ``exclude=`` that no rule has."""


class CompileError(ExprcError, RuntimeError):
    """The native compiler failed; carries the source path and the compiler log."""

    def __init__(self, message: str, source_path: str | None = None, log: str = ""):
        super().__init__(message if not log else f"{message}\n--- compiler log ---\n{log}")
        self.source_path = source_path
        self.log = log


class BackendUnavailable(ExprcError, RuntimeError):
    """The requested backend cannot run on this machine."""


class CacheError(ExprcError, RuntimeError):
    """The compile cache is unusable (unsafe permissions, unreadable folder)."""


class DisconnectedInputError(ExprcError, ValueError):
    """A variable passed to ``grad`` does not influence the cost."""


class UpdateError(ExprcError, ValueError):
    """``updates=`` of ``exprc.function`` is malformed (a variable updated twice, ...)."""


class NonFiniteError(ExprcError, FloatingPointError):
    """``Config(nan_guard=True)``: a compiled function produced NaN or Inf from finite inputs; the
    message names the first node (and its fused kernel) that did, with its operands' summary."""


class CUDAError(ExprcError, RuntimeError):
    """A CUDA driver call failed (the message names the call and the driver's error)."""


class SerializationError(ExprcError, ValueError):
    """A saved graph cannot be loaded: malformed, hostile, or from an unsupported format version."""


class DomainError(ExprcError, ValueError):
    """``accuracy=`` / ``domain=`` of ``exprc.function`` are malformed (unknown mode, a bound that is not an
    input, lo >= hi, a domain without the search)."""


class ParameterError(ExprcError, ValueError):
    """A distribution's parameter is outside its domain (``p`` outside [0, 1], ``low >= high``, a negative
    ``std``, ``n`` out of range) or a seed is out of range; the message names the parameter."""


class ControlFlowError(ExprcError, ValueError):
    """A loop or condition is malformed or was given bad values: negative ``n_steps``, sequences of
    different lengths, a body whose result does not match its ``outputs_info``."""


class NotSplittableError(ExprcError, ValueError):
    """``exprc.dask``: the graph has an op that cannot run chunk by chunk on dask arrays (a scan along
    a chunked axis, indexing, a reshape, random draws); the message names the op."""
