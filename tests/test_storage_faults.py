"""The master and its state directory: a storage fault is a clear refusal, never a dead master.

At start a state directory that cannot be written (full, read-only) or a journal that cannot be
read whole (truncated, not a database) ends the master with exit status 2 and one line naming
the path and the remedy. While it serves, a journal write that fails refuses the work it would
have saved (its Futures fail with the reason), the master stays up and says it is degraded, and
takes work again once the disk does; a journal deleted under it stops acceptance for good.

The disks are real: small tmpfs mounts made by the test (root, as in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import Nodes, free_port, wait_for
from taskswarm.master.journal import Journal

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root"),
]


def identity(x: object) -> object:
    return x


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a tmpfs of a given size (and options) under tmp_path; unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: str = "2m", options: str = "") -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        opts = f"size={size},mode=0700" + (f",{options}" if options else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk under ``directory`` has not a byte left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = 1 << 16
        while chunk:
            try:
                f.write(bytes(chunk))
            except OSError:
                chunk //= 2
    return filler


def start_master(nodes: Nodes, key_file: str, state_dir: Path) -> subprocess.CompletedProcess:
    return nodes.run(
        "master",
        "--bind",
        f"tcp://127.0.0.1:{free_port()}",
        "--key-file",
        key_file,
        "--state-dir",
        str(state_dir),
        "--no-dashboard",
        timeout=30,
    )


def assert_refused_at_start(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    for word in words:
        assert word in lines[0], lines[0]


# -- at start -------------------------------------------------------------------------------------


def test_a_full_state_directory_stops_the_master_at_start(nodes, key_file, tmpfs):
    disk = tmpfs("512k")
    fill(disk)
    result = start_master(nodes, key_file, disk / "state")
    assert_refused_at_start(result, str(disk / "state"), "disk is full", "--state-dir")


def test_a_read_only_state_directory_stops_the_master_at_start(nodes, key_file, tmpfs):
    disk = tmpfs("4m")
    Journal(disk / "journal.sqlite3").close()  # a journal from an earlier run
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    result = start_master(nodes, key_file, disk)
    assert_refused_at_start(result, str(disk), "read-only", "writable")


def _journal_with_rows(path: Path, rows: int = 400) -> None:
    journal = Journal(path)
    journal.add_tasks(
        (f"task-{i}", "app", None, os.urandom(2048), None, 0, "", 0, None) for i in range(rows)
    )
    journal.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_journal_is_named_at_start(nodes, key_file, tmp_path, damage):
    state = tmp_path / "state"
    journal = state / "journal.sqlite3"
    _journal_with_rows(journal)
    if damage == "truncated":
        with open(journal, "r+b") as f:
            f.truncate(journal.stat().st_size // 2)
    else:
        journal.write_bytes(b"this is not a journal\n" * 100)
    result = start_master(nodes, key_file, state)
    assert_refused_at_start(result, str(journal), "damaged", "move it aside")


def test_the_master_unit_does_not_restart_a_master_that_exits_2():
    unit = Path(__file__).parent.parent / "deploy" / "taskswarm-master.service"
    assert "RestartPreventExitStatus=2" in unit.read_text()


# -- while serving --------------------------------------------------------------------------------


def test_a_full_disk_refuses_new_work_and_the_master_recovers(tmpfs):
    disk = tmpfs("3m")
    with (
        ts.LocalCluster(slaves=1, workers=1, state_dir=disk / "state", heartbeat=0.2) as cluster,
        cluster.connect() as app,
    ):
        assert app.submit(identity, 1).result(timeout=30) == 1
        filler = fill(disk)
        refused = app.submit(identity, bytes(512 * 1024))
        with pytest.raises(ts.TaskswarmError, match="disk is full") as caught:
            refused.result(timeout=30)
        assert "refused" in str(caught.value)
        assert app.status()["master"]["journal_failed_writes"] >= 1
        # Still refused while the disk stays full (a small write may fit where the refused one
        # began: SQLite reuses that space, so the next big one is what cannot fit).
        with pytest.raises(ts.TaskswarmError, match="disk is full"):
            app.submit(identity, bytes(512 * 1024)).result(timeout=30)
        filler.unlink()
        wait_for(lambda: app.status()["master"]["degraded"] is None, timeout=30)
        assert app.submit(identity, 3).result(timeout=30) == 3
        assert app.status()["master"]["rejected"]["not-saved"] >= 2


def test_a_deleted_state_directory_stops_acceptance(tmp_path):
    state = tmp_path / "state"
    with (
        ts.LocalCluster(slaves=1, workers=1, state_dir=state, heartbeat=0.2) as cluster,
        cluster.connect() as app,
    ):
        assert app.submit(identity, 1).result(timeout=30) == 1
        shutil.rmtree(state)
        wait_for(lambda: app.status()["master"]["degraded"] is not None, timeout=30)
        assert "deleted or replaced" in app.status()["master"]["degraded"]
        with pytest.raises(ts.TaskswarmError, match="deleted or replaced"):
            app.submit(identity, 2).result(timeout=30)
        from test_task_systems import CollatzWalks

        refused = CollatzWalks([5, 7])
        with pytest.raises(ts.TaskswarmError, match="deleted or replaced"):
            app.submit_system(refused)
        assert refused.system_id not in app._ledger.systems  # nothing left waiting for it
        # Put back, the directory is still not the journal the master has open: it stays so.
        state.mkdir()
        with pytest.raises(ts.TaskswarmError, match="deleted or replaced"):
            app.submit(identity, 3).result(timeout=30)
