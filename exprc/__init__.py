"""exprc: a Theano-style expression compiler.

Build expressions with a NumPy-like API, compile them with :func:`function`,
call the result like a NumPy function::

    import exprc
    x = exprc.vector("x")
    f = exprc.function([x], exprc.log(1 + exprc.exp(x)))
    f([0.0, 1000.0])
"""

from exprc import cuda, errors, random
from exprc._version import __version__
from exprc.api import (
    abs,
    absolute,
    add,
    all,
    any,
    arccos,
    arccosh,
    arcsin,
    arcsinh,
    arctan,
    arctan2,
    arctanh,
    argmax,
    argmin,
    as_node,
    astype,
    bitwise_and,
    bitwise_or,
    bitwise_xor,
    broadcast_to,
    cbrt,
    ceil,
    clip,
    concatenate,
    constant,
    cos,
    cosh,
    dimshuffle,
    divide,
    dot,
    equal,
    erf,
    erfc,
    erfcx,
    exp,
    exp2,
    expand_dims,
    expm1,
    flatten,
    floor,
    floor_divide,
    greater,
    greater_equal,
    hypot,
    invert,
    isfinite,
    isinf,
    isnan,
    less,
    less_equal,
    log,
    log1mexp,
    log1p,
    log2,
    log10,
    log_softmax,
    logaddexp,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    logsumexp,
    matmul,
    matrix,
    max,
    maximum,
    mean,
    min,
    minimum,
    mod,
    mul,
    multiply,
    negative,
    not_equal,
    power,
    prod,
    reciprocal,
    remainder,
    reshape,
    rint,
    round,
    scalar,
    shape,
    sigmoid,
    sign,
    sin,
    sinh,
    softmax,
    softplus,
    sqrt,
    square,
    squeeze,
    stack,
    std,
    sub,
    subtract,
    sum,
    tan,
    tanh,
    tensor,
    tensor3,
    transpose,
    true_divide,
    var,
    vector,
    where,
)
from exprc.autodiff import disconnected_grad, grad, hessian, jacobian, jvp, stop_gradient, vjp, zero_grad
from exprc.config import Config, config
from exprc.control import fori_loop, ifelse, scan, switch, until, while_loop
from exprc.creation import alloc, arange, eye, fill, full, full_like, one_hot, ones, ones_like, zeros, zeros_like
from exprc.function import Function, function, jit
from exprc.graph import Node
from exprc.indexing import inc_subtensor, set_subtensor
from exprc.pipeline import FunctionGraph, optimize
from exprc.printing import Print, debugprint, pprint, to_dot
from exprc.shared import SharedVariable, shared

#: Functions that load their module on first use: a program that never saves a graph, defines an op
#: or converts from sympy/networkx does not pay for importing those modules (json, the template
#: checker ...) at start-up (issue 17's warm start).
_LAZY = {
    **dict.fromkeys(("custom_op", "register_rewrite", "rewrite_rule"), "exprc.custom"),
    **dict.fromkeys(("from_networkx", "to_networkx"), "exprc.nxbridge"),
    **dict.fromkeys(("dumps", "load", "loads", "save"), "exprc.serialize"),
    **dict.fromkeys(("from_sympy", "to_sympy"), "exprc.sympy_bridge"),
}

__all__ = [name for name in dir() if not name.startswith("_")] + ["search"] + list(_LAZY)


def __getattr__(name: str) -> object:
    # exprc.search (the accuracy search, exprc.search.Settings) loads on first use: ~30 ms of import;
    # exprc.dask (functions on dask arrays) too: dask is an optional dependency, and a heavy import.
    import importlib

    if name in ("search", "dask"):
        return importlib.import_module(f"exprc.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # (the next access is a plain attribute)
        return value
    raise AttributeError(f"module 'exprc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"search", "dask"})
