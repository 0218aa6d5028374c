"""The binary interface between a rendered program and the runtime: where each kernel's sizes and
strides live in the int64 block ``P`` and which pointer slot each array uses.  The renderers make
it (:mod:`exprc.backends.c.render`, whose layout the CUDA renderer shares); the planner
(:mod:`exprc.backends.plan`) fills ``P`` from it.  Its own module so that a kernel restored from the
graph index (:mod:`exprc.graph_index`) reads it without importing a renderer."""

from __future__ import annotations

from dataclasses import dataclass, field

from exprc.fusion import Kernel
from exprc.graph import Node


@dataclass
class KernelLayout:
    """Where a kernel's sizes and strides live in ``P``, and which slot each access uses."""

    kernel: Kernel
    p_flag: int
    ndim: int  # iteration ndim (for reductions: kept + reduced)
    nkept: int
    perm: tuple[int, ...]  # iteration dims in loop order (reductions: kept dims first)
    accesses: list[tuple[Node, int, int]] = field(default_factory=list)  # (node, slot, P index of strides)
    #: Accesses read only for their shape (the model operand of a random draw): never loaded, and
    #: the contiguous path does not need them contiguous (a model is often a zero-strided view).
    models: frozenset[int] = frozenset()
    #: The kernel's ops rendered by ``c_call`` (draws): each must span the whole loop (the planner checks).
    draws: tuple[Node, ...] = ()
    #: The kernel has a row-by-row contiguous path (a 2-d elementwise loop, flag 2: the planner sets
    #: it when every access is contiguous along the inner dimension; see ``exprc_rowflat``).  What
    #: the C renderer gave this kernel, not where things live: renderers without it (CUDA) share
    #: the same layout, and their planner never sets flag 2.
    rowflat: bool = field(default=False, compare=False)

    @property
    def p_dims(self) -> int:
        return self.p_flag + 1


@dataclass
class Layout:
    """The binary interface between the generated C and the runtime."""

    slots: list[Node]
    kernels: list[KernelLayout]
    p_size: int


__all__ = ["KernelLayout", "Layout"]
