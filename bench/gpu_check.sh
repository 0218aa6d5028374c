#!/usr/bin/env bash
# GPU check for exprc's CUDA backend, in one run on a machine with an NVIDIA GPU, cuda-bindings,
# NVRTC, CuPy and PyTorch but no package registry (see bench/README.md, "GPU check"):
#   1. installs what is missing (cffi, networkx, sympy, pytest, hypothesis, ...) from the wheels
#      brought along in bench/wheels/ (made by bench/fetch_gpu_wheels.sh on a connected machine);
#   2. runs the CUDA tests (tests/test_cuda.py: every kernel launched and compared with the NumPy
#      backend, plus the GPU-less checks);
#   3. runs the benchmark (bench/gpu_bench.py): E1-E5 at 1e6-1e8 in float32/float64 against CuPy,
#      PyTorch eager and torch.compile, with the device-to-device copy bandwidth as the limit.
# Under 8 minutes on an H100.  exprc is used from this checkout (PYTHONPATH), not installed.
#
# Usage: bash bench/gpu_check.sh [--dry-run] [--quick] [--skip-tests] [--skip-bench] [gpu_bench.py options]
#   --dry-run      print the steps instead of running them
#   --quick        benchmark 1e6 and 1e7 in float32 only
# Environment: PYTHON (default python3), EXPRC_WHEELS (default bench/wheels), TEST_TIMEOUT (180 s),
#              BENCH_TIMEOUT (280 s).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
wheels="${EXPRC_WHEELS:-$root/bench/wheels}"
dry=0; tests=1; bench=1; pass=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    --skip-tests) tests=0 ;;
    --skip-bench) bench=0 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) pass+=("$arg") ;;
  esac
done

step() {  # print a step; run it unless --dry-run
  echo "+ $*" >&2
  if [ "$dry" = 0 ]; then "$@"; fi
}

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export EXPRC_CACHE_DIR="${EXPRC_CACHE_DIR:-$(mktemp -d)/exprc-cache}"
export EXPRC_HYPOTHESIS_PROFILE=exprc
cd "$root"

missing="$("$py" bench/gpu_bench.py --missing)"
if [ -n "$missing" ]; then
  if [ ! -d "$wheels" ]; then
    echo "gpu_check: missing $missing and no wheel folder at $wheels; run bench/fetch_gpu_wheels.sh on a" \
         "machine with network access and bring bench/wheels/ along" >&2
    [ "$dry" = 1 ] || exit 2
  fi
  # shellcheck disable=SC2086  # one word per package
  # A failed install is not fatal: the CUDA backend's own check below is what must pass.
  step "$py" -m pip install --no-index --find-links "$wheels" $missing || echo "gpu_check: pip install failed" >&2
fi
step "$py" -c "import exprc.cuda, sys; why = exprc.cuda.unavailable_reason(); print('CUDA backend:', why or 'ready'); sys.exit(1 if why else 0)"

status=0
if [ "$tests" = 1 ]; then
  step timeout "${TEST_TIMEOUT:-180}" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs || status=$?
fi
if [ "$bench" = 1 ]; then
  step timeout "${BENCH_TIMEOUT:-280}" "$py" bench/gpu_bench.py ${pass[@]+"${pass[@]}"} || status=$?
fi
exit "$status"
