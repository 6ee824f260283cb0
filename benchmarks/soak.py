"""Soak: does the master follow live work, not history? (DESIGN.md, "Bounded by live work")

Run it as ``python benchmarks/soak.py`` (``--help`` lists the options). It starts a real master
(``python -m taskswarm master --state-dir ...``) and slaves on loopback, then:

1. ``--sessions`` application sessions, ``--parallel`` at a time: each connects, runs one task,
   and closes. Nothing of them should stay: records, sessions, journal rows.
2. ``--systems`` task systems, each returning ``--mib`` MiB, every result collected. Their
   results pass through the master's memory and its journal; neither should keep them.
3. A detached result (its application left before it completed) is collectable within the
   master's ``--result-ttl`` (short here: ``--ttl``), and gone after it, with a clear error.

It prints one table row per sample (every tenth of a phase): the master's RSS (VmRSS from
/proc/PID/status) and its growth since the start, the state directory's size (journal and its
WAL), and what the master says it keeps (``status()["master"]["kept"]``: application records,
reply sessions, the sessions its codec remembers against replays, task system records, bytes of
results waiting for collection). The last row is taken
once the master has had time for its periodic sweep and journal maintenance. The exit status is
1 when the final figures pass ``--max-rss-growth-mib`` or ``--max-state-mib`` (the acceptance:
20 and 64), or the detached result did not behave.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import taskswarm as ts

#: Seconds to wait for the master and slaves to start.
START_TIMEOUT = 30.0


class Blob(ts.TaskSystem):
    """One small task; the system's result is ``size`` bytes, made on the master."""

    def __init__(self, size: int, tag: int = 0, delay: float = 0.0) -> None:
        super().__init__()
        self.size, self.tag, self.delay, self.seen = size, tag, delay, False

    def init_system(self, master: Any) -> None:
        pass

    def generate_tasks(self, master: Any) -> list[ts.Task]:
        return [ts.FunctionTask(time.sleep, self.delay)]

    def task_finished(self, master: Any, task: ts.Task, result: Any, error: Any) -> None:
        self.seen = True

    def is_complete(self, master: Any) -> bool:
        return self.seen

    def gather_result(self, master: Any) -> tuple[bytes, None]:
        return bytes([self.tag % 256]) * self.size, None


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Soak:
    """The master and slaves under test, and the table being printed."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.state = workdir / "state"
        self.key_file = str(workdir / "cluster.key")
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.processes: list[subprocess.Popen] = []
        self.master: subprocess.Popen | None = None
        self.base_rss = 0
        self.started = time.monotonic()

    # -- nodes -----------------------------------------------------------------------------------

    def _node(self, *args: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "taskswarm", "--log-level", "warning"]
        command += ["--exit-with-parent", str(os.getpid()), *args]
        log = open(self.workdir / f"node-{len(self.processes)}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.processes.append(process)
        return process

    def start(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "taskswarm", "keygen", self.key_file],
            check=True,
            capture_output=True,
        )
        self.master = self._node(
            "master",
            "--bind",
            self.address,
            "--key-file",
            self.key_file,
            "--state-dir",
            str(self.state),
            "--no-dashboard",
            "--result-ttl",
            str(self.args.ttl),
        )
        for _ in range(self.args.slaves):
            self._node("slave", self.address, "--key-file", self.key_file, "--workers", "1")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with self.connect(timeout=2.0) as app:
                    if len(app.status()["slaves"]) == self.args.slaves:
                        break
            except ts.MasterUnreachable:
                pass
            if self.master.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the cluster did not start; logs in {self.workdir}")
            time.sleep(0.1)

    def connect(self, timeout: float = 10.0) -> ts.Application:
        return ts.connect(self.address, key_file=self.key_file, connect_timeout=timeout)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -- the table -------------------------------------------------------------------------------

    HEADER = (
        "| phase | done | elapsed s | per s | master RSS MiB | growth MiB | state MiB "
        "| apps | sessions | replay sessions | systems | uncollected KiB |"
    )

    def row(self, phase: str, done: int, phase_started: float) -> dict[str, Any]:
        assert self.master is not None
        rss = rss_kib(self.master.pid)
        with self.connect() as app:
            kept = app.status()["master"]["kept"]
        elapsed = time.monotonic() - phase_started
        figures = {
            "rss_mib": rss / 1024,
            "growth_mib": (rss - self.base_rss) / 1024,
            "state_mib": dir_bytes(self.state) / 2**20,
            "kept": kept,
        }
        print(
            f"| {phase} | {done:,} | {elapsed:.1f} | {done / elapsed if elapsed else 0:,.0f} "
            f"| {figures['rss_mib']:.1f} | {figures['growth_mib']:+.1f} "
            f"| {figures['state_mib']:.1f} | {kept['applications']} | {kept['sessions']} "
            f"| {kept.get('replay_sessions', '?')} | {kept['systems']} "
            f"| {kept['uncollected_bytes'] / 1024:,.0f} |",
            flush=True,
        )
        return figures

    # -- phases ----------------------------------------------------------------------------------

    def sessions(self) -> None:
        total, parallel = self.args.sessions, self.args.parallel
        if not total:
            return
        step = max(1, total // 10)
        done = 0
        lock = threading.Lock()
        failures: list[BaseException] = []
        started = time.monotonic()
        next_row = step

        def worker(indices: Iterator[int]) -> None:
            nonlocal done
            for i in indices:
                try:
                    with self.connect() as app:
                        if app.submit(abs, -i).result(timeout=60) != i:
                            raise RuntimeError(f"session {i}: wrong result")
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)
                    return
                with lock:
                    done += 1

        counter = iter(range(total))
        shared = _locked(counter)
        threads = [threading.Thread(target=worker, args=(shared,)) for _ in range(parallel)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            threads[0].join(0.5)
            if done >= next_row:
                self.row("sessions", done, started)
                next_row += step
        if failures:
            raise SystemExit(f"a session failed: {failures[0]!r}")
        self.row("sessions", done, started)

    def systems(self) -> None:
        total = self.args.systems
        if not total:
            return
        size = int(self.args.mib * 2**20)
        step = max(1, total // 10)
        started = time.monotonic()
        with self.connect() as app:
            for i in range(total):
                result = app.run_system(Blob(size, i), timeout=120)
                if len(result) != size or result[:1] != bytes([i % 256]):
                    raise SystemExit(f"system {i}: wrong result")
                if (i + 1) % step == 0 and i + 1 < total:
                    self.row("systems", i + 1, started)
        self.row("systems", total, started)

    def detached(self) -> bool:
        """A result whose application left: there within the TTL, expired after it."""
        ttl = self.args.ttl
        with self.connect() as app:
            early = app.submit_system(Blob(2**20, 1, delay=0.5)).system_id
            late = app.submit_system(Blob(2**20, 2, delay=0.5)).system_id
        # Their application is gone; they complete on the master, their results wait there.
        with self.connect() as app:
            started = time.monotonic()
            fetched = app.system_result(early, timeout=60)
            fetched_after = time.monotonic() - started
            ok = fetched == b"\x01" * 2**20
            print(
                f"detached result fetched {fetched_after:.1f}s after its application left "
                f"(--result-ttl {ttl:g}s): {'ok' if ok else 'WRONG'}"
            )
            # The other one: completed (its result waiting), then expired (the master let go).
            deadline = time.monotonic() + ttl + 30
            while _state(app, late) == "running" and time.monotonic() < deadline:
                time.sleep(0.1)
            while _state(app, late) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            try:
                app.system_result(late, timeout=10)
                print("the other detached result was still there after its TTL: WRONG")
                return False
            except ts.UnknownTaskSystem as exc:
                print(f"the other, asked for after its TTL: UnknownTaskSystem: {exc}")
                return ok and "expired" in str(exc)

    def run(self) -> int:
        self.start()
        assert self.master is not None
        self.base_rss = rss_kib(self.master.pid)
        print(
            f"master pid {self.master.pid}, {self.args.slaves} slaves x 1 worker, state "
            f"{self.state}; --result-ttl {self.args.ttl:g}s (every result below but the "
            "detached ones is collected)\n",
            flush=True,
        )
        print(self.HEADER)
        print("|" + "---|" * (self.HEADER.count("|") - 1))
        start = time.monotonic()
        self.row("start", 0, start)
        self.sessions()
        self.systems()
        time.sleep(self.args.settle)  # the master's sweep and journal maintenance are periodic
        final = self.row("settled", self.args.sessions + self.args.systems, start)
        print()
        detached_ok = self.detached()
        passed = (
            final["growth_mib"] <= self.args.max_rss_growth_mib
            and final["state_mib"] <= self.args.max_state_mib
            and detached_ok
        )
        print(
            f"\nfinal: master RSS growth {final['growth_mib']:+.1f} MiB "
            f"(limit {self.args.max_rss_growth_mib:g}), state directory "
            f"{final['state_mib']:.1f} MiB (limit {self.args.max_state_mib:g}); "
            f"{'PASS' if passed else 'FAIL'}"
        )
        if self.args.sessions:
            per = final["growth_mib"] * 2**20 / self.args.sessions
            print(f"growth per session: {per:.1f} bytes (all phases counted against sessions)")
        return 0 if passed else 1


def _state(app: ts.Application, system_id: str) -> str | None:
    """A task system's state in the master's status; None once the master forgot it."""
    for system in app.status()["systems"]:
        if system["id"] == system_id:
            return system["state"]
    return None


def _locked(iterator: Iterator[int]) -> Iterator[int]:
    """One iterator shared by threads (a generator may not be advanced by two at once)."""
    lock = threading.Lock()

    def shared() -> Iterator[int]:
        while True:
            with lock:
                try:
                    value = next(iterator)
                except StopIteration:
                    return
            yield value

    return shared()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="application sessions")
    parser.add_argument("--parallel", type=int, default=4, help="sessions at a time")
    parser.add_argument("--systems", type=int, default=1_000, help="task systems, all collected")
    parser.add_argument("--mib", type=float, default=4.0, help="MiB each system returns")
    parser.add_argument("--slaves", type=int, default=2, help="slaves, one worker each")
    parser.add_argument("--ttl", type=float, default=5.0, help="the master's --result-ttl")
    parser.add_argument(
        "--settle",
        type=float,
        default=40.0,
        help="seconds given to the master's sweep (each heartbeat), journal maintenance "
        "(every 5s) and collection of finished systems' garbage (every 30s) before the final row",
    )
    parser.add_argument("--max-rss-growth-mib", type=float, default=20.0)
    parser.add_argument("--max-state-mib", type=float, default=64.0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="taskswarm-soak-"))
    soak = Soak(args, workdir)
    try:
        return soak.run()
    finally:
        soak.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


if __name__ == "__main__":
    sys.exit(main())
