"""`make run` installs what running needs, `make test` and `make test-fast` the dev extra: read
from what make would do (``make -n`` against a virtual environment that does not exist yet),
installing nothing."""

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


def test_make_run_installs_the_package_and_the_examples_extra_without_the_dev_extra(tmp_path):
    lines = planned("run", tmp_path)
    assert installs(lines) and all("dev" not in line for line in installs(lines)), lines
    assert any("'.[examples]'" in line for line in installs(lines)), lines
    assert any("taskswarm run examples/mandelbrot.py" in line for line in lines)
    assert (ROOT / "examples" / "mandelbrot.py").is_file()


def test_make_test_installs_the_dev_extra(tmp_path):
    lines = planned("test", tmp_path)
    assert any(".[dev]" in line for line in installs(lines)), lines
    assert any("pytest" in line for line in lines)


def test_make_test_fast_runs_the_fast_tier_of_existing_modules(tmp_path):
    from conftest import FAST_MODULES

    lines = planned("test-fast", tmp_path)
    assert any(".[dev]" in line for line in installs(lines)), lines
    assert any("pytest -m 'fast and not slow'" in line for line in lines), lines
    missing = [name for name in FAST_MODULES if not (ROOT / "tests" / f"{name}.py").is_file()]
    assert not missing, f"FAST_MODULES names modules that do not exist: {missing}"


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
