"""The master is bounded by live work, not by history (DESIGN.md): what was delivered, what
left and what nobody collected is let go, on a documented schedule.

Real master and slave processes on loopback, with short retention settings so each test is
quick; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import free_port, wait_for

HERE = Path(__file__).resolve().parent


class WaitForFile(ts.Task):
    """Runs until ``path`` exists: lets a test finish a system once its application is gone."""

    def __init__(self, path: str):
        super().__init__(name="wait-for-file")
        self.path = path

    def __call__(self):
        while not Path(self.path).exists():
            time.sleep(0.01)
        return 0


class Blob(ts.TaskSystem):
    """One task; its result is ``size`` bytes (so retained bytes are easy to count). With
    ``gate``, its task runs until that file exists."""

    def __init__(self, size: int, tag: int = 0, gate: str | None = None):
        super().__init__()
        self.size, self.tag, self.gate, self.seen = size, tag, gate, False

    def init_system(self, master):
        pass

    def generate_tasks(self, master):
        return [WaitForFile(self.gate) if self.gate else ts.FunctionTask(abs, -self.tag)]

    def task_finished(self, master, task, result, error):
        self.seen = True

    def is_complete(self, master):
        return self.seen

    def gather_result(self, master):
        return bytes([self.tag % 256]) * self.size, None


class Sleep(ts.Task):
    def __init__(self, seconds: float, marker: str | None = None):
        super().__init__(name=f"sleep-{seconds}")
        self.seconds, self.marker = seconds, marker

    def __call__(self):
        if self.marker:
            Path(self.marker).write_text("started")
        time.sleep(self.seconds)
        return self.seconds


class Cluster:
    """A master (CLI process, its own options) with slaves, for one test."""

    def __init__(self, nodes, key_file: str, *master_args: str, slaves: int = 1) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.key_file = key_file
        self.master = nodes.start(
            "master",
            "--bind",
            self.address,
            "--key-file",
            key_file,
            "--no-dashboard",
            "--heartbeat",
            "0.2",
            "--slave-timeout",
            "1",
            *master_args,
        )
        self.slaves = [
            nodes.start("slave", self.address, "--key-file", key_file, "--heartbeat", "0.2")
            for _ in range(slaves)
        ]
        with self.connect() as app:
            wait_for(lambda: len(app.status()["slaves"]) == slaves)

    def connect(self) -> ts.Application:
        return ts.connect(self.address, key_file=self.key_file)

    def status(self) -> dict:
        with self.connect() as app:
            return app.status()

    def kept(self) -> dict[str, int]:
        return self.status()["master"]["kept"]


def app_process(cluster: Cluster, body: str) -> subprocess.Popen:
    """A separate application process (so it can be killed or frozen) running ``body`` with
    ``app`` connected; it imports this module's classes."""
    script = textwrap.dedent(
        f"""
        import sys, taskswarm as ts
        sys.path.insert(0, {str(HERE)!r})
        from test_retention import *
        app = ts.connect({cluster.address!r}, key_file={cluster.key_file!r})
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def journal_rows(state: Path, table: str) -> int:
    with sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def state_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.iterdir() if p.is_file())


# -- sessions, applications and slaves that left -----------------------------------------------


def test_closed_sessions_gone_applications_and_departed_slaves_are_forgotten(nodes, key_file):
    cluster = Cluster(nodes, key_file, "--forget-after", "2", slaves=2)
    with cluster.connect() as watcher:

        def kept() -> dict[str, int]:
            return watcher.status()["master"]["kept"]

        live = {"applications": 1, "sessions": 3, "departed_slaves": 0}  # watcher, 2 slaves
        wait_for(lambda: kept().items() >= live.items())
        for i in range(20):
            with cluster.connect() as app:
                assert app.submit(abs, -i).result(timeout=30) == i
        # Twenty applications came and went: their records and sessions stay a while...
        assert kept()["applications"] > 1 and kept()["sessions"] > 3
        cluster.slaves[1].kill()
        cluster.slaves[1].wait()
        wait_for(lambda: kept()["departed_slaves"] == 1)
        assert "lost" in [s["state"] for s in watcher.status()["slaves"]]
        # ... then they are forgotten, the departed slave too: back to what is live.
        live = {"applications": 1, "sessions": 2, "departed_slaves": 0}
        wait_for(lambda: kept().items() >= live.items(), timeout=30)
        assert [s["state"] for s in watcher.status()["slaves"]] == ["active"]


# -- task systems' results -----------------------------------------------------------------------


def test_a_collected_systems_result_and_journal_rows_are_let_go(nodes, key_file, tmp_path):
    state = tmp_path / "state"
    cluster = Cluster(nodes, key_file, "--state-dir", str(state), "--forget-after", "1")
    with cluster.connect() as app:
        handle = app.submit_system(Blob(1 << 20, 7))
        assert handle.result(timeout=30) == b"\x07" * (1 << 20)
        # Confirmed on receipt: the outcome and its journal row go at once.
        wait_for(lambda: app.status()["master"]["kept"]["uncollected_bytes"] == 0)
        assert journal_rows(state, "systems") == 0
        # Asked again here, the handle still held: its outcome, from the handle.
        assert app.system_result(handle.system_id, timeout=10) == b"\x07" * (1 << 20)
        # Asked by another connection: the master says what became of it.
        with cluster.connect() as other:
            with pytest.raises(ts.UnknownTaskSystem, match="was collected"):
                other.system_result(handle.system_id, timeout=10)
            wait_for(lambda: app.status()["master"]["kept"]["systems"] == 0)
            with pytest.raises(ts.UnknownTaskSystem, match="was collected"):
                other.system_result(handle.system_id, timeout=10)


def detached_blobs(cluster: Cluster, tmp_path: Path, size: int, count: int) -> list[tuple]:
    """``count`` Blob systems whose application left before they completed: (id, gate file)."""
    systems = []
    with cluster.connect() as app:
        for tag in range(count):
            gate = tmp_path / f"gate-{tag}"
            systems.append((app.submit_system(Blob(size, tag, str(gate))).system_id, gate))
    return systems


def completed(app: ts.Application, system_id: str) -> bool:
    kept = app.status()
    return any(s["id"] == system_id and s["state"] == "complete" for s in kept["systems"])


def test_a_detached_result_is_collectable_within_its_ttl_and_gone_after(nodes, key_file, tmp_path):
    state = tmp_path / "state"
    cluster = Cluster(nodes, key_file, "--state-dir", str(state), "--result-ttl", "5", slaves=2)
    (early, early_gate), (late, late_gate) = detached_blobs(cluster, tmp_path, 1000, 2)
    early_gate.touch()
    late_gate.touch()
    # Their application went away: both results wait on the master, in its journal too.
    with cluster.connect() as app:
        wait_for(lambda: completed(app, early) and completed(app, late))
        assert 2000 < app.status()["master"]["kept"]["uncollected_bytes"] < 3000  # + pickling
        assert journal_rows(state, "systems") == 2
        assert app.system_result(early, timeout=10) == b"\x00" * 1000  # within its TTL
        wait_for(lambda: app.status()["master"]["kept"]["uncollected_bytes"] == 0, timeout=15)
        assert journal_rows(state, "systems") == 0  # one collected, the other expired
        with pytest.raises(ts.UnknownTaskSystem, match=r"expired uncollected .* --result-ttl"):
            app.system_result(late, timeout=10)


def test_uncollected_results_past_the_cap_are_dropped_oldest_first(nodes, key_file, tmp_path):
    cluster = Cluster(nodes, key_file, "--result-cap-mib", "2", slaves=2)
    systems = detached_blobs(cluster, tmp_path, 900_000, 4)
    with cluster.connect() as app:
        for system_id, gate in systems:  # completed in this order: the first is the oldest
            gate.touch()
            wait_for(lambda: completed(app, system_id) or not any(  # noqa: B023
                s["id"] == system_id for s in app.status()["systems"]  # noqa: B023
            ))  # fmt: skip
        # Checked once a heartbeat: then only the newest two are held.
        wait_for(lambda: app.status()["master"]["kept"]["uncollected_bytes"] < 2 * 1024 * 1024)
        assert app.status()["master"]["kept"]["uncollected_bytes"] > 2 * 900_000
        with pytest.raises(ts.UnknownTaskSystem, match="--result-cap"):
            app.system_result(systems[0][0], timeout=10)
        assert app.system_result(systems[3][0], timeout=10) == b"\x03" * 900_000


# -- applications that go silent -----------------------------------------------------------------


def test_a_dead_applications_running_task_is_cancelled_and_its_system_lives_on(
    nodes, key_file, tmp_path
):
    cluster = Cluster(nodes, key_file, "--client-timeout", "1")
    marker = tmp_path / "started"
    child = app_process(
        cluster,
        f"""
        import time
        from pathlib import Path
        app.submit(Sleep(60, {str(marker)!r}))
        while not Path({str(marker)!r}).exists():
            time.sleep(0.01)
        from test_contract import SumOfSquares  # DESIGN.md's task system
        handle = app.submit_system(SumOfSquares(5))  # its tasks queue behind the 60s one
        print(app.client_id, handle.system_id, flush=True)
        time.sleep(600)
        """,
    )
    client_id, system_id = child.stdout.readline().split()
    child.send_signal(signal.SIGTERM)  # no goodbye: Python's default handler just exits
    child.communicate(timeout=10)
    with cluster.connect() as app:
        # One slave with one worker: the system completes only once the 60s task is stopped.
        assert app.system_result(system_id, timeout=20) == sum(i * i for i in range(5))
        status = app.status()
        assert (status["tasks"]["queued"], status["tasks"]["assigned"]) == (0, 0)
        assert client_id not in [a["id"] for a in status["applications"] if a["state"] != "gone"]


def test_an_application_back_after_being_lost_gets_its_outcomes(nodes, key_file, tmp_path):
    cluster = Cluster(nodes, key_file, "--client-timeout", "1")
    marker = tmp_path / "started"
    child = app_process(
        cluster,
        f"""
        done = app.submit(abs, -5)
        print(done.result(timeout=30), flush=True)
        future = app.submit(Sleep(60, {str(marker)!r}))
        try:
            print("result", future.result(timeout=60), flush=True)
        except Exception as exc:
            print("error", type(exc).__name__, exc, flush=True)
        app.close()
        """,
    )
    assert child.stdout.readline().strip() == "5"
    wait_for(marker.exists, timeout=30)
    child.send_signal(signal.SIGSTOP)  # frozen: silent, but its connection stays open
    try:
        with cluster.connect() as app:
            wait_for(
                lambda: "gone" in [a["state"] for a in app.status()["applications"]],
                timeout=10,
            )
            wait_for(lambda: app.status()["tasks"]["assigned"] == 0, timeout=10)
    finally:
        child.send_signal(signal.SIGCONT)
    out, err = child.communicate(timeout=30)
    assert out.startswith("error TaskError task cancelled: its application"), (out, err)
    assert "--client-timeout" in out


# -- the journal's size --------------------------------------------------------------------------


def test_the_journal_gives_back_the_space_of_collected_results(nodes, key_file, tmp_path):
    state = tmp_path / "state"
    cluster = Cluster(nodes, key_file, "--state-dir", str(state))
    with cluster.connect() as app:
        for tag in range(24):
            assert len(app.run_system(Blob(1 << 20, tag), timeout=30)) == 1 << 20
    # 24 MiB went through the journal; what is left is the size of what is live (nothing).
    wait_for(lambda: state_bytes(state) < 4 * 1024 * 1024, timeout=30)
    assert journal_rows(state, "systems") == 0


def test_journal_maintenance_gives_free_pages_and_the_wal_back(tmp_path):
    from taskswarm.master.journal import Journal

    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        for i in range(16):
            journal.add_system(f"s{i}", "app", b"x" * 1000)
            journal.system_done(f"s{i}", b"r" * (1 << 20), False, time.time())
        assert state_bytes(tmp_path) > 16 << 20
        journal.forget_systems(f"s{i}" for i in range(16))
        journal.maintain()
        journal.maintain()  # a step gives back at most VACUUM_STEP pages
        assert state_bytes(tmp_path) < 1 << 20
    finally:
        journal.close()


def test_a_journal_from_before_incremental_vacuum_is_converted(tmp_path):
    from taskswarm.master.journal import Journal

    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:  # the layout of an older taskswarm: no auto_vacuum
        db.execute("CREATE TABLE systems (system_id TEXT PRIMARY KEY, client_id TEXT NOT NULL,"
                   " snapshot BLOB NOT NULL, restored INTEGER NOT NULL DEFAULT 0,"
                   " applied_seq INTEGER NOT NULL DEFAULT 0, outcome BLOB,"
                   " failed INTEGER NOT NULL DEFAULT 0)")  # fmt: skip
        db.execute("INSERT INTO systems (system_id, client_id, snapshot, outcome) VALUES"
                   " ('old', 'app', x'', x'00')")  # fmt: skip
    journal = Journal(path)
    try:
        assert journal._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        (system,) = journal.load().systems
        assert (system.system_id, system.outcome) == ("old", b"\x00")
        assert system.ended_at is not None  # its TTL counts from now
    finally:
        journal.close()
