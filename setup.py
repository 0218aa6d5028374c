"""Packaging for exprc.  ``templates/`` is installed as the package ``exprc.templates``."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "exprc" / "__init__.py").read_text()).group(1)

setup(
    name="exprc",
    version=VERSION,
    description="A Theano-style expression compiler: stable rewrites, fused C kernels, a disk cache",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["exprc", "exprc.*"]) + ["exprc.templates"],
    package_dir={"exprc.templates": "templates"},
    package_data={"exprc.templates": ["*.c", "*.h", "*.cu"]},
    install_requires=["numpy>=2.0", "cffi>=1.16", "networkx>=3.0", "sympy>=1.12"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "mpmath>=1.3", "ruff"],
        "bench": ["numexpr", "numba"],
        "examples": ["scikit-learn"],
        "cuda": ["cuda-bindings>=12.6", "nvidia-cuda-nvrtc-cu12"],
    },
    entry_points={"console_scripts": ["exprc=exprc.cli:main"]},
)
