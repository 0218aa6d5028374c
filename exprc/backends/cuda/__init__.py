"""The CUDA backend: the C renderer's loops as CUDA kernels (``render``), compiled by NVRTC to
PTX or a cubin (``compile``), launched through the driver API on the primary context (``device``)
with host plans over shadows of the device arrays (``kernel``).  Skeletons live in ``templates/``.

This module only names the backend's two entry points; cuda-bindings loads on first use.
The public helpers (``compile_only``, ``DeviceArray`` …) are in :mod:`exprc.cuda`.
"""

from __future__ import annotations

from typing import Any

from exprc.config import Config


def make(fg: Any, cfg: Config) -> Any:
    """The :class:`~exprc.backends.cuda.kernel.CUDAKernel` of optimized graph ``fg``."""
    from exprc.backends.cuda.kernel import CUDAKernel

    return CUDAKernel(fg, cfg, fuse="fusion" not in cfg.exclude)


def probe(cfg: Config) -> str | None:
    """None when a CUDA device, its driver and NVRTC can be used here, else why not."""
    from exprc.backends.cuda.device import probe as device_probe

    return device_probe(cfg)
