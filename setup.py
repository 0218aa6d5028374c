"""Packaging for exprc.  Each native backend's source skeletons ship as package data of its folder
(``exprc/backends/<name>/templates/``) and are read through importlib.resources."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "exprc" / "_version.py").read_text()).group(1)

# CUDA 12 line: cuda-bindings 12.x with NVRTC 12.x (cuda-bindings 13 needs a CUDA 13 driver and the
# nvidia-cuda-nvrtc 13 wheel).  Linux and Windows wheels only.
_GPU_OS = "platform_system == 'Linux' or platform_system == 'Windows'"
CUDA = [f"cuda-bindings>=12.8,<13; {_GPU_OS}", f"nvidia-cuda-nvrtc-cu12>=12.8; {_GPU_OS}"]
#: exprc.dask: functions on dask arrays (a distributed cluster for scale-out).
DASK = ["dask[array]>=2024.1", "distributed>=2024.1"]

# Every backend folder's templates/ ships with it: adding a backend needs no line here.
TEMPLATES = {f"exprc.backends.{d.name}": ["templates/*"]
             for d in sorted((HERE / "exprc" / "backends").iterdir()) if (d / "templates").is_dir()}

setup(
    name="exprc",
    version=VERSION,
    description="A Theano-style expression compiler: stable rewrites, fused C kernels, a disk cache",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["exprc", "exprc.*"]),
    package_data=TEMPLATES,
    install_requires=["numpy>=2.0", "cffi>=1.16", "networkx>=3.0", "sympy>=1.12"],
    extras_require={
        # NVRTC (no GPU or driver needed; installs in seconds) lets the GPU-less suite compile every CUDA source.
        # scipy: the random-stream tests check draws against scipy.stats' distributions (KS, chi-square).
        # dask: tests/test_dask.py runs exprc.dask on a two-process distributed cluster.
        "test": ["pytest>=7", "hypothesis>=6.80", "mpmath>=1.3", "scipy>=1.10", "ruff", *CUDA, *DASK],
        "bench": ["numexpr", "numba"],
        "examples": ["scikit-learn"],
        "cuda": CUDA,
        "dask": DASK,
    },
    entry_points={"console_scripts": ["exprc=exprc.cli:main"]},
)
