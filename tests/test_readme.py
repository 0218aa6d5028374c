"""README's Python examples run as written, in order, in one namespace (as a reader pastes them
into one session), so an API change that breaks the README fails here.

Blocks that need a GPU and CuPy (the CUDA section) run only where ``backend="cuda"`` can run and
CuPy is installed; everything else runs here, in a temporary folder (the examples write files).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def _needs_gpu(block: str) -> bool:
    return "cupy" in block or 'backend="cuda"' in block


def _gpu_ready() -> bool:
    import importlib.util

    import exprc.cuda

    return exprc.cuda.is_available() and importlib.util.find_spec("cupy") is not None


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 8
    assert sum(_needs_gpu(b) for b in BLOCKS) == 1  # only the CUDA section is skipped without a GPU


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path / "cache"))
    namespace: dict = {"__name__": "readme"}
    ran = 0
    for i, block in enumerate(BLOCKS):
        if _needs_gpu(block) and not _gpu_ready():
            continue
        code = compile(block, f"README.md python block {i}", "exec")
        try:
            exec(code, namespace)  # noqa: S102 - our own README
        except Exception as exc:  # noqa: BLE001 - report which block broke
            pytest.fail(f"README python block {i} raised {type(exc).__name__}: {exc}\n---\n{block}")
        ran += 1
    assert ran >= len(BLOCKS) - 1
    assert capsys.readouterr().out  # the tour prints results
