#!/usr/bin/env bash
# Download, on a machine with network access, the wheels bench/gpu_check.sh installs on a GPU machine
# that has no package registry: exprc's own dependencies and the test tools (cuda-bindings, NVRTC,
# CuPy and PyTorch are expected there already; --with-cuda adds cuda-bindings and NVRTC, --with-numpy
# adds NumPy 2 for a machine whose NumPy is 1.x).  About 15 MB without those options.
#
# Usage: bash bench/fetch_gpu_wheels.sh [--python 3.10,3.11,3.12,3.13] [--arch x86_64|aarch64]
#                                       [--with-cuda] [--with-numpy] [--dest bench/wheels]
# Then copy the checkout with bench/wheels/ (git ignores it) to the GPU machine and run
# bash bench/gpu_check.sh there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pythons="3.10,3.11,3.12,3.13"; arch="x86_64"; dest="$root/bench/wheels"; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) pythons="$2"; shift ;;
    --arch) arch="$2"; shift ;;
    --dest) dest="$2"; shift ;;
    --with-cuda) extra+=("cuda-bindings>=12.8,<13" "nvidia-cuda-nvrtc-cu12>=12.8") ;;
    --with-numpy) extra+=("numpy>=2.0") ;;
    -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fetch_gpu_wheels: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# pip resolves each package's dependencies for the target Python (pycparser, mpmath, pluggy, attrs, ...).
pkgs=("cffi>=1.16" "networkx>=3.0" "sympy>=1.12" "mpmath>=1.3" "pytest>=7" "hypothesis>=6.80"
      ${extra[@]+"${extra[@]}"})
mkdir -p "$dest"
IFS=',' read -r -a versions <<< "$pythons"
for v in "${versions[@]}"; do
  echo "+ wheels for CPython $v on manylinux $arch" >&2
  python3 -m pip download --quiet --only-binary=:all: --dest "$dest" \
    --python-version "$v" --implementation cp --platform "manylinux2014_$arch" \
    --platform "manylinux_2_17_$arch" --platform "manylinux_2_28_$arch" "${pkgs[@]}"
done
du -sh "$dest" >&2
