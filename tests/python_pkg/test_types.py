"""The package's types: mypy --strict over its Python files, and stubtest checking that the
native module's stub (_zeropoint.pyi) matches the compiled module."""

import subprocess
import sys
from pathlib import Path

import pytest

PYTHON = Path(__file__).resolve().parents[2] / "python"
pytest.importorskip("mypy")


def mypy(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=PYTHON, capture_output=True, text=True)


def test_mypy_strict():
    r = mypy("mypy", "--strict", "--no-incremental", "zeropoint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_stub_matches_the_native_module():
    r = mypy("mypy.stubtest", "zeropoint._zeropoint")
    assert r.returncode == 0, r.stdout + r.stderr
