"""Packaging: every backend's templates ship inside the package and are found through importlib.resources."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TEMPLATES = sorted((p.parent.parent.name, p.name) for p in REPO.glob("exprc/backends/*/templates/*") if p.is_file())

PROBE = f"""
import exprc, pathlib, sys
from exprc.backends.templates import read
print(pathlib.Path(exprc.__file__).resolve().parent)
for backend, name in {TEMPLATES!r}:
    print(backend, name, len(read(backend, name)))
"""


def test_every_backend_has_its_templates():
    assert {b for b, _ in TEMPLATES} == {"c", "cuda"}
    assert ("c", "numpy_semantics.h") in TEMPLATES and ("cuda", "cuda_module.cu") in TEMPLATES
    assert not (REPO / "templates").exists()  # no second copy outside the package


def test_templates_found_from_the_installed_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0 and "No module named 'exprc'" in r.stderr:
        pytest.skip("exprc is not installed in this interpreter (running from a source tree)")
    assert r.returncode == 0, r.stderr
    location, *rows = r.stdout.splitlines()
    assert len(rows) == len(TEMPLATES)
    for (backend, name), row in zip(TEMPLATES, rows):
        assert row.split()[:2] == [backend, name] and int(row.split()[2]) > 0
    # A normal install puts the package outside the checkout; the templates came from there.
    if Path(location).parent != REPO:
        for backend, name in TEMPLATES:
            assert (Path(location) / "backends" / backend / "templates" / name).is_file()


def test_template_helper_reads_every_skeleton():
    from exprc.backends.templates import read

    for backend, name in TEMPLATES:
        assert read(backend, name) == (REPO / "exprc" / "backends" / backend / "templates" / name).read_text()


def test_console_script_and_module_entry_agree():
    r = subprocess.run([sys.executable, "-m", "exprc", "--version"], capture_output=True, text=True, check=False,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    import exprc

    assert r.returncode == 0
    assert r.stdout.strip() == f"exprc {exprc.__version__}"
