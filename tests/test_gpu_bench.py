"""The GPU-free parts of the GPU check: bench/gpu_check.sh (dry run), bench/gpu_bench.py's helpers,
bench/fetch_gpu_wheels.sh (usage only: downloading needs the network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_bench


def test_defaults_quick_and_subsets():
    a = gpu_bench.parse_args([])
    assert a.sizes == [10**6, 10**7, 10**8] and a.dtypes == ["float32", "float64"]
    assert a.exprs == ["E1", "E2", "E3", "E4", "E5"] and a.systems == list(gpu_bench.SYSTEMS)
    q = gpu_bench.parse_args(["--quick"])
    assert q.sizes == [10**6, 10**7] and q.dtypes == ["float32"]
    s = gpu_bench.parse_args(["--sizes", "1e3,2.5e6", "--dtypes", "float64", "--exprs", "E4,E2",
                              "--systems", "exprc,torch", "--reps", "3"])
    assert s.sizes == [1000, 2_500_000] and s.exprs == ["E4", "E2"] and s.systems == ["exprc", "torch"]
    assert s.reps == 3 and gpu_bench.reps_for(10**8, s.reps) == 3 and gpu_bench.reps_for(10**8) == 10


@pytest.mark.parametrize("argv", [["--sizes", "x"], ["--sizes", "0"], ["--exprs", "E9"], ["--dtypes", "int8"],
                                  ["--systems", "jax"], ["--reps", "0"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        gpu_bench.parse_args(argv)
    assert info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_missing_modules_names_pip_packages():
    absent = {"cffi", "hypothesis"}
    got = gpu_bench.missing_modules(find=lambda m: None if m in absent else object(), version=lambda _: "2.1.0")
    assert got == ["cffi", "hypothesis"]
    old_numpy = gpu_bench.missing_modules(find=lambda m: object(), version=lambda _: "1.26.4")
    assert old_numpy == ["numpy>=2.0"]
    assert gpu_bench.main(["--missing"]) == 0
    # CUDA 13's NVRTC wheel installs nvidia/cu13, not nvidia/cuda_nvrtc: either one will do
    cu13 = gpu_bench.missing_modules(find=lambda m: None if m in ("nvidia.cuda_nvrtc", "nvidia.cu12") else object(),
                                     version=lambda _: "2.1.0")
    assert cu13 == []
    none = gpu_bench.missing_modules(find=lambda m: None if m.startswith("nvidia.") else object(), version=lambda _: "2")
    assert none == ["nvidia-cuda-nvrtc-cu12"]


def test_bytes_and_table():
    assert gpu_bench.bytes_moved("E1", 10, 4) == 160 and gpu_bench.bytes_moved("E4", 10, 8) == 160
    rows = [{"expr": "E1", "dtype": "float32", "n": 10**8, "copy_gbps": 3000.0,
             "systems": {"exprc": {"us": 140.0, "frac": 0.95}, "torch": {"error": "RuntimeError: boom"}}}]
    table = gpu_bench.format_table(rows, ["exprc", "cupy", "torch"]).splitlines()
    assert table[0].split() == ["expr", "dtype", "n", "copy", "GB/s", "exprc", "cupy", "torch"]
    assert "140.0us 95%" in table[1] and " - " in table[1] and "! RuntimeError: boom" in table[1]
    e = gpu_bench.expressions()
    import numpy as np

    a = np.array([1.0, 2.0])
    assert np.allclose(e["E4"](np, a, a, a), np.sum(np.exp(a - 2)))
    assert np.allclose(e["E5"](np, a, a, a), 2 * a + 3 * a - a * 0.5 + a ** 3)


def _sh(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_gpu_check_dry_run_lists_its_steps(tmp_path):
    r = _sh("bench/gpu_check.sh", "--dry-run", "--quick", "--exprs", "E1,E4", EXPRC_WHEELS=str(tmp_path))
    assert r.returncode == 0, r.stderr
    steps = [line for line in r.stderr.splitlines() if line.startswith("+ ")]
    assert "unavailable_reason" in steps[-3]
    assert steps[-2].endswith("pytest -q -p no:cacheprovider tests/test_cuda.py -rs")
    assert steps[-1].endswith("bench/gpu_bench.py --quick --exprs E1,E4")
    skip = _sh("bench/gpu_check.sh", "--dry-run", "--skip-tests", "--skip-bench")
    assert "pytest" not in skip.stderr and "gpu_bench.py --" not in skip.stderr


def test_gpu_check_installs_what_is_missing_from_the_wheel_folder(tmp_path):
    fake = tmp_path / "python3"  # a Python whose gpu_bench.py --missing reports two packages
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$2" = "--missing" ]; then echo "cffi sympy"; '
                    f'else exec {sys.executable} "$@"; fi\n')
    fake.chmod(0o755)
    r = _sh("bench/gpu_check.sh", "--dry-run", PYTHON=str(fake), EXPRC_WHEELS=str(tmp_path))
    assert f"-m pip install --no-index --find-links {tmp_path} cffi sympy" in r.stderr
    r = _sh("bench/gpu_check.sh", PYTHON=str(fake), EXPRC_WHEELS=str(tmp_path / "absent"))
    assert r.returncode == 2 and "run bench/fetch_gpu_wheels.sh" in r.stderr


def test_scripts_parse_and_document_themselves():
    for script in ("bench/gpu_check.sh", "bench/fetch_gpu_wheels.sh"):
        assert _sh("-n", script).returncode == 0
        r = _sh(script, "--help")
        assert r.returncode == 0 and "Usage: bash" in r.stdout
    assert _sh("bench/fetch_gpu_wheels.sh", "--bogus").returncode == 2
