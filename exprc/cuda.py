"""``exprc.cuda``: the CUDA backend's public helpers.

* :func:`compile_only` renders a graph as CUDA and NVRTC-compiles it to PTX for a named
  architecture, with no GPU and no driver (what the GPU-less test suite runs).
* :func:`is_available` / :func:`unavailable_reason`: can ``backend="cuda"`` run here?
* :class:`DeviceArray`: what CUDA functions return (``__cuda_array_interface__``, ``.get()``,
  ``numpy.asarray``).

Importing this module imports neither cuda-bindings nor NVRTC; they are loaded on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprc.config import Config, resolve
from exprc.graph import Node, toposort


@dataclass
class CompiledCUDA:
    """The result of :func:`compile_only`."""

    source: str  #: the CUDA C++ source
    ptx: str  #: NVRTC's PTX (``target="ptx"``), or "" for a cubin
    binary: bytes  #: PTX bytes (NUL-terminated) or the cubin
    arch: str  #: ``sm_XX``
    kernels: list[str]  #: the ``__global__`` functions, in launch order
    cache_entry: Path | None  #: the cache folder (None with ``Config(cache=False)``)


def _function_graph(graph: Any, cfg: Config) -> Any:
    from exprc.pipeline import FunctionGraph, optimize

    if isinstance(getattr(graph, "graph", None), FunctionGraph):  # a compiled Function
        return graph.graph
    if isinstance(graph, FunctionGraph):
        return optimize(graph, cfg)
    outputs = [graph] if isinstance(graph, Node) else list(graph)
    inputs = tuple(n for n in toposort(outputs) if n.op == "input")
    return optimize(FunctionGraph(inputs, tuple(outputs)), cfg)


def render(graph: Any, config: Config | None = None) -> tuple[str, Any, Any]:
    """(CUDA source, layout, lowered program) of ``graph`` (see :func:`compile_only`)."""
    from exprc.backends.cuda.render import CUDARenderer
    from exprc.fusion import lower, stable_branches
    from exprc.pipeline import FunctionGraph
    from exprc.printing import pprint

    cfg = resolve(config)
    fg = _function_graph(graph, cfg)
    fg = FunctionGraph(fg.inputs, tuple(stable_branches(fg.outputs)))  # (as CUDAKernel: no row kernels)
    program = lower(list(fg.outputs), list(fg.inputs), fuse="fusion" not in cfg.exclude)
    renderer = CUDARenderer(precise_math=cfg.precise_math, fast_math=cfg.fast_math)
    source, layout = renderer.render(program, pprint(list(fg.outputs), max_inline=10_000, max_nodes=200)[:2000])
    return source, layout, program


def compile_only(graph: Any, arch: str = "sm_90", config: Config | None = None,
                 target: str = "ptx") -> CompiledCUDA:
    """Render ``graph`` as CUDA and NVRTC-compile it for ``arch``; no device is needed.

    ``graph``: a compiled :class:`~exprc.Function` (its optimized graph), a
    :class:`~exprc.pipeline.FunctionGraph`, or an output node / list of output nodes (the inputs
    are every variable they depend on).  The binary goes to the cache like a C library
    (``exprc cache list`` shows backend ``cuda``).  Raises :class:`~exprc.errors.CompileError`
    with NVRTC's log, :class:`~exprc.errors.BackendUnavailable` when NVRTC cannot be loaded.
    """
    from exprc.backends.cuda import compile as nvrtc
    from exprc.backends.cuda.render import kernel_names
    from exprc.errors import BackendUnavailable

    why = nvrtc.probe()
    if why:
        raise BackendUnavailable(f"exprc.cuda.compile_only needs NVRTC: {why}")
    cfg = resolve(config)
    source, layout, program = render(graph, cfg)
    name = program.kernels[0].name if program.kernels else "k_empty"
    binary, entry = nvrtc.cached_compile(source, name, arch, target, cfg)
    ptx = binary.rstrip(b"\0").decode() if target == "ptx" else ""
    return CompiledCUDA(source, ptx, binary, nvrtc.normalize_arch(arch), kernel_names(layout), entry)


def unavailable_reason(config: Config | None = None) -> str | None:
    """None when ``backend="cuda"`` can run here, else why not."""
    from exprc.backends.cuda.device import probe

    return probe(resolve(config))


def is_available(config: Config | None = None) -> bool:
    return unavailable_reason(config) is None


def __getattr__(name: str) -> Any:
    if name == "DeviceArray":  # imported on first use (numpy only; cuda-bindings when used)
        from exprc.backends.cuda.device import DeviceArray

        return DeviceArray
    raise AttributeError(f"module 'exprc.cuda' has no attribute {name!r}")


__all__ = ["CompiledCUDA", "compile_only", "is_available", "render", "unavailable_reason"]
