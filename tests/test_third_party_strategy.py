"""A schedule strategy from another package, found by its entry point, runs a real cluster.

The test writes a tiny package (a pyproject.toml and one module whose strategy uses only the seed's
ITaskScheduleStrategy interface), installs it with pip into a folder of its own, puts that folder
on PYTHONPATH (LocalCluster's nodes inherit the environment) and starts a cluster with
``strategy="most-workers"``. No network is needed: pip builds it with the build backend already
installed here (``--no-build-isolation``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import importable
from taskswarm.api import ITaskScheduleStrategy
from taskswarm.scheduling import available, load_plugin

pytestmark = pytest.mark.timeout(90)

PACKAGE = "most_workers_strategy"
STRATEGY = "most-workers"

MODULE = '''\
"""A strategy written against the seed interface alone: setup, rate, get_next_slave."""

import math

from taskswarm.api import ITaskScheduleStrategy


class MostWorkersStrategy(ITaskScheduleStrategy):
    """Every task to the ready slave with the most workers; the least loaded among equals."""

    def setup(self, scheduler, master):
        self.scheduler = scheduler

    def rate(self, slave):
        if slave.workers <= 0:
            return math.inf
        return len(slave.in_flight) / slave.workers

    def get_next_slave(self):
        slaves = self.scheduler.eligible_slaves()
        if not slaves:
            return None
        return max(slaves, key=lambda slave: (slave.workers, -slave.rating))
'''

PYPROJECT = f"""\
[build-system]
{{build_system}}

[project]
name = "{PACKAGE.replace("_", "-")}"
version = "0.1"
description = "A taskswarm schedule strategy from outside taskswarm (test fixture)."

[project.entry-points."taskswarm.strategies"]
{STRATEGY} = "{PACKAGE}:MostWorkersStrategy"

[tool.setuptools]
packages = ["{PACKAGE}"]
"""

#: The dev extra installs a setuptools that builds wheels by itself (70.1 or later).
SETUPTOOLS = 'requires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"'


def write_package(root: Path) -> Path:
    root.mkdir()
    (root / PACKAGE).mkdir()
    (root / PACKAGE / "__init__.py").write_text(MODULE)
    (root / "pyproject.toml").write_text(PYPROJECT.format(build_system=SETUPTOOLS))
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the package was installed into (not on any path yet)."""
    base = tmp_path_factory.mktemp("third-party")
    package = write_package(base / "src")
    target = base / "site"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            str(package),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert list(target.glob(f"{PACKAGE}-0.1.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def on_path(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The package importable here and in every node LocalCluster starts; undone afterwards."""
    yield from importable(installed, PACKAGE, monkeypatch)


def worker_ancestry() -> list[int]:
    """The pids from this worker up to its slave (and a little above).

    Defined here, not shared with test_priorities_resources.py's twin: a function from a test
    module travels to the workers by value, one imported from a helper module by reference,
    and the workers cannot import the tests.
    """
    pids = [os.getpid()]
    for _ in range(5):
        try:
            stat = Path(f"/proc/{pids[-1]}/stat").read_text()
        except OSError:
            break
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent <= 1:
            break
        pids.append(parent)
    return pids


def test_the_installed_strategy_is_found_through_its_entry_point(on_path):
    assert STRATEGY in available("taskswarm.strategies")
    strategy = load_plugin("taskswarm.strategies", STRATEGY)
    assert issubclass(strategy, ITaskScheduleStrategy)
    assert strategy.__module__ == PACKAGE
    assert Path(sys.modules[PACKAGE].__file__).is_relative_to(on_path)


def test_a_cluster_runs_with_a_strategy_another_package_registers(on_path):
    with ts.LocalCluster(slaves=1, workers=1, strategy=STRATEGY, stealing=False) as cluster:
        big = cluster.add_slave(2)
        small_pid = next(p.pid for p in cluster.slave_processes if p is not big)
        with cluster.connect() as app:
            assert app.status()["master"]["strategy"] == STRATEGY
            # All sent at once: the slave with the most workers has room for every one of them.
            futures = app.push_tasks([ts.FunctionTask(worker_ancestry) for _ in range(4)])
            where = [f.result(timeout=30) for f in futures]
            # And a stream of them completes, whichever slave has room.
            assert [
                f.result(timeout=30)
                for f in app.push_tasks([ts.FunctionTask(pow, 2, i) for i in range(40)])
            ] == [2**i for i in range(40)]
            assert app.status()["tasks"] == {"queued": 0, "assigned": 0}

    assert all(big.pid in pids and small_pid not in pids for pids in where)


def test_an_unknown_strategy_is_refused_before_any_process_starts():
    with pytest.raises(ts.ConfigurationError) as refused:
        ts.LocalCluster(slaves=1, workers=1, strategy="no-such-strategy")

    assert "no strategy named 'no-such-strategy'; choose one of:" in str(refused.value)
    for name in available("taskswarm.strategies"):
        assert name in str(refused.value)


def test_a_master_given_an_unknown_strategy_says_which_exist_without_a_traceback(key_file):
    out = subprocess.run(
        [sys.executable, "-m", "taskswarm", "master", "--bind", "tcp://127.0.0.1:0"]
        + ["--key-file", key_file, "--no-state-dir", "--strategy", "no-such-strategy"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )

    assert out.returncode != 0
    assert "no strategy named 'no-such-strategy'; choose one of:" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_unknown_strategy_lists_the_installed_third_party_one_too(on_path):
    with pytest.raises(ts.ConfigurationError, match=f"choose one of: .*{STRATEGY}"):
        load_plugin("taskswarm.strategies", "no-such-strategy")
