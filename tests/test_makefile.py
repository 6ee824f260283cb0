"""`make run` installs what running needs, `make test` the dev extra: read from what make would
do (``make -n`` against a virtual environment that does not exist yet), installing nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned(target: str, tmp_path: Path) -> list[str]:
    out = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.splitlines()


def installs(lines: list[str]) -> list[str]:
    return [line for line in lines if "pip install" in line and "--upgrade pip" not in line]


def test_make_run_installs_the_package_without_the_dev_extra(tmp_path):
    lines = planned("run", tmp_path)
    assert installs(lines) and all("[" not in line for line in installs(lines)), lines
    assert any("taskswarm run -m taskswarm.samples.mandelbrot" in line for line in lines)


def test_make_test_installs_the_dev_extra(tmp_path):
    lines = planned("test", tmp_path)
    assert any(".[dev]" in line for line in installs(lines)), lines
    assert any("pytest" in line for line in lines)


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
