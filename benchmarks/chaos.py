"""Chaos harness: a task system with checkable results on real processes, while killing things.

Run it as ``python benchmarks/chaos.py`` (``--help`` lists the options). Every node is a real
``python -m taskswarm master|slave`` process on loopback, started with ``--log-level info`` and its
log captured in the run's temporary directory; nodes are killed with SIGKILL, never asked to stop.
One row is printed per scenario run, then one "N/N passed" line per scenario; the exit status is 1
when any run failed.

The checkable work: ``Work(i)`` returns ``(i, f(i))`` with ``f(i) = (3 + i) ** (2 ** rounds) mod
(2**61 - 1)``, computed by ``rounds`` modular squarings (a few ms of CPU, deterministic). The task
system (``CountingSystem``) runs on the master, keeps a window of tasks outstanding (each result
pushes the next index, so the master journals pushes and snapshots all along), and counts in
``task_finished`` how many times each ``i`` was delivered. Its result holds the sum of the
``f(i)`` delivered and those counts; the reference is the same system run serially in this process,
with each ``f(i)`` taken from the closed form (Fermat: ``pow(3 + i, 2**rounds mod (p-1), p)``), so
checking costs microseconds. ``correct`` means the result equals the serial one; ``lost`` is the
number of ``i`` never delivered; ``duplicates`` is the number of deliveries beyond the first.

Scenarios:

* ``slave-kill``: 3 slaves; every second for 10 s (3 s with ``--quick``) one random slave gets
  SIGKILL and a replacement starts at once. Its tasks also sleep 15 ms, so that the system
  outlives the kills however fast the machine; one that completes sooner fails the run.
* ``master-kill``: 3 slaves; the master gets SIGKILL once, when 20-60 % of the tasks are done, and
  is restarted after a short pause on the same port and state directory.
* ``poison``: 1,000 tasks, one task that calls ``os._exit(1)`` (expected: ``WorkerCrashed`` after
  exactly 3 attempts, counted by the task itself in a file) and one that sleeps past its
  ``Task.timeout`` (expected: ``TaskTimeout``), all in one system.
* ``cancel``: a reverse-md5 search over ranges that completes as soon as the preimage is found;
  reports how long after completion every slave shows ``in_flight == 0`` in ``app.status()``
  (must be under 1 s), and what became of the leftover ranges (markers the tasks write).

Storage faults (the state directory on a small tmpfs the harness mounts: run as root), each
while a counting system runs; the system's result must still equal the serial one:

* ``disk-full``: the disk is filled at 20-60 % done; of ten 1 MiB plain tasks submitted
  meanwhile, those the journal's files still have room for are saved and run, the rest must be
  refused saying the disk is full (none left waiting, at least one refused); the disk is freed,
  and the master must take work again by itself.
* ``read-only``: the master is SIGKILLed, the disk remounted read-only: the restarted master must
  exit 2 with one line naming the directory; remounted writable, it resumes the system.
* ``deleted``: the state directory is deleted under the running master: new work is refused
  saying so, the running system still completes.
* ``corrupt``: the master is SIGKILLed, its journal cut to half and its -wal overwritten: a
  restart exits 2 naming the file; the backup put back, it resumes the system.
* ``oversize`` (``--max-message-mib 4``): an argument over the limit fails at ``submit``, a result
  over it fails its Future with MessageTooLarge after one attempt, not re-run; the next task runs.

Processes are reaped and temporary directories removed in ``finally`` blocks, also on Ctrl-C or
SIGTERM; every node also runs with ``--exit-with-parent`` so a harness killed with SIGKILL leaves
none behind. Workers of a SIGKILLed slave are watched too: they must exit by themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import taskswarm as ts
from procs import descendants, proc_stat
from taskswarm.ops.config import MasterConfig, SlaveConfig, to_argv

SCENARIOS = (
    "slave-kill",
    "master-kill",
    "poison",
    "cancel",
    "disk-full",
    "read-only",
    "deleted",
    "corrupt",
    "oversize",
)

#: The Mersenne prime 2**61 - 1: f(i) is computed modulo it.
PRIME = (1 << 61) - 1
#: Modular squarings per Work task: about 8 ms of CPU on a 2020s core.
ROUNDS = 100_000
#: Seconds a scenario may wait for its system's result before it counts as hung (quick: less).
RESULT_TIMEOUT = 180.0
QUICK_RESULT_TIMEOUT = 60.0
#: Seconds the master-kill scenario waits for the progress at which it kills the master.
STALL_TIMEOUT = 60.0
#: Seconds to wait for a node to start, or for slaves to become active.
START_TIMEOUT = 30.0
#: Seconds a SIGKILLed slave's workers get to notice and exit by themselves.
ORPHAN_GRACE = 5.0
#: Cancel scenario: seconds after completion by which every slave must show in_flight == 0.
CANCEL_IDLE_LIMIT = 1.0
#: A leftover range that ends this long after completion was not stopped by the cancel.
LATE_SLACK = 0.2


# -- the checkable work (runs on the master and in worker processes) ----------------------------


def slow_value(i: int, rounds: int) -> int:
    """f(i) the way a worker computes it: ``rounds`` modular squarings."""
    x = 3 + i
    for _ in range(rounds):
        x = x * x % PRIME
    return x


def fast_value(i: int, rounds: int) -> int:
    """The same f(i) in microseconds: x ** (2**rounds) = x ** (2**rounds mod (p - 1)) mod p."""
    return pow(3 + i, pow(2, rounds, PRIME - 1), PRIME)


class Work(ts.Task):
    """Returns ``(i, f(i))``; sleeps ``pause`` seconds first (pacing: a run lasts at least
    tasks * pause / workers seconds however fast the machine)."""

    def __init__(self, i: int, rounds: int, pause: float = 0.0) -> None:
        super().__init__(name=f"work-{i}")
        self.i, self.rounds, self.pause = i, rounds, pause

    def __call__(self) -> tuple[int, int]:
        if self.pause:
            time.sleep(self.pause)
        return self.i, slow_value(self.i, self.rounds)


class Crash(ts.Task):
    """Kills its worker process every time it runs; notes each attempt in ``marker``."""

    def __init__(self, marker: str) -> None:
        super().__init__(name="crash")
        self.marker = marker

    def __call__(self) -> None:
        with open(self.marker, "a") as out:
            out.write(f"{os.getpid()}\n")
        os._exit(1)


class Sleeper(ts.Task):
    """Sleeps far past its ``timeout``; notes each attempt in ``marker``."""

    def __init__(self, marker: str, timeout: float, sleep: float) -> None:
        super().__init__(name="sleeper")
        self.marker, self.timeout, self.sleep = marker, timeout, sleep

    def __call__(self) -> str:
        with open(self.marker, "a") as out:
            out.write(f"{os.getpid()}\n")
        time.sleep(self.sleep)
        return "woke up"


class CountingSystem(ts.TaskSystem):
    """``Work(i)`` for ``i < n``, ``window`` outstanding at a time, plus ``extras`` (tasks whose
    outcome is kept by name). Counts deliveries per ``i``; complete when every ``i`` and every
    extra has been delivered at least once."""

    def __init__(
        self, n: int, rounds: int, window: int, extras: list[ts.Task] = (), pause: float = 0.0
    ) -> None:
        super().__init__()
        self.n, self.rounds, self.window, self.pause = n, rounds, window, pause
        self.extras = list(extras)
        self.next = 0
        self.total = 0
        self.counts: dict[int, int] = {}
        self.outcomes: dict[str, tuple[str, str]] = {}  # extra name -> (type name, message)

    def init_system(self, master: Any) -> None:
        pass

    def generate_tasks(self, master: Any) -> list[ts.Task]:
        first = min(self.window, self.n)
        self.next = first
        return [Work(i, self.rounds, self.pause) for i in range(first)] + self.extras

    def task_finished(self, master: Any, task: Any, result: Any, error: Any) -> None:
        if not isinstance(task, Work):
            kind = "ok" if error is None else type(error).__name__
            self.outcomes[task.name] = (kind, str(error) if error is not None else repr(result))
            return
        self.counts[task.i] = self.counts.get(task.i, 0) + 1
        if error is not None:
            self.outcomes[task.name] = (type(error).__name__, str(error))
        else:
            self.total += result[1]
        if self.next < self.n:
            master.push_task(Work(self.next, self.rounds, self.pause))
            self.next += 1

    def is_complete(self, master: Any) -> bool:
        return len(self.counts) >= self.n and len(self.outcomes) >= len(self.extras)

    def gather_result(self, master: Any) -> tuple[dict, None]:
        result = {"sum": self.total, "counts": dict(self.counts), "outcomes": self.outcomes}
        return result, None


class SearchRange(ts.Task):
    """Reverse md5: the ``x`` in ``[lo, hi)`` whose md5 hex digest is ``target``, or None.
    Writes ``start-K`` when it starts and ``end-K`` when it ends into ``markers``."""

    def __init__(self, k: int, lo: int, hi: int, target: str, markers: str) -> None:
        super().__init__(name=f"range-{k}")
        self.k, self.lo, self.hi, self.target, self.markers = k, lo, hi, target, markers

    def __call__(self) -> int | None:
        Path(self.markers, f"start-{self.k}").write_text(str(time.time()))
        found = None
        md5 = hashlib.md5
        for x in range(self.lo, self.hi):
            if md5(str(x).encode()).hexdigest() == self.target:
                found = x
                break
        Path(self.markers, f"end-{self.k}").write_text(str(time.time()))
        return found


class ReverseMd5System(ts.TaskSystem):
    """Searches ``ranges`` ranges of ``chunk`` numbers; complete as soon as one finds it."""

    def __init__(self, target: str, ranges: int, chunk: int, markers: str) -> None:
        super().__init__()
        self.target, self.ranges, self.chunk, self.markers = target, ranges, chunk, markers
        self.found: int | None = None
        self.done: dict[int, int] = {}  # range -> deliveries

    def init_system(self, master: Any) -> None:
        pass

    def generate_tasks(self, master: Any) -> list[ts.Task]:
        return [
            SearchRange(k, k * self.chunk, (k + 1) * self.chunk, self.target, self.markers)
            for k in range(self.ranges)
        ]

    def task_finished(self, master: Any, task: Any, result: Any, error: Any) -> None:
        self.done[task.k] = self.done.get(task.k, 0) + 1
        if error is None and result is not None:
            self.found = result

    def is_complete(self, master: Any) -> bool:
        return self.found is not None or len(self.done) >= self.ranges

    def gather_result(self, master: Any) -> tuple[dict, None]:
        return {"found": self.found, "done": dict(self.done)}, None


# -- the serial reference ------------------------------------------------------------------------


class _SerialMaster:
    """What a system's callbacks get as ``master`` in a serial run: a plain queue."""

    system_id = "serial"

    def __init__(self) -> None:
        self.queue: deque[ts.Task] = deque()

    def push_task(self, task: ts.Task) -> None:
        self.queue.append(task)

    def push_tasks(self, tasks: Any) -> None:
        self.queue.extend(tasks)

    def cluster(self) -> dict[str, int]:
        return {"slaves": 1, "workers": 1}


def run_serially(system: Any, evaluate: Callable[[ts.Task], Any]) -> Any:
    """Run a task system in this process, one task at a time, ``evaluate`` standing in for the
    worker; returns what ``gather_result`` returns."""
    master = _SerialMaster()
    system.init_system(master)
    master.push_tasks(system.generate_tasks(master) or [])
    while not system.is_complete(master):
        task = master.queue.popleft()  # IndexError: the system would wait for nothing
        result = evaluate(task)
        task.finished(result, None)
        system.task_finished(master, task, result, None)
    return system.gather_result(master)


def serial_reference(n: int, rounds: int, window: int) -> dict:
    """The result ``CountingSystem(n, rounds, window)`` must have, from a serial run."""
    result, _ = run_serially(
        CountingSystem(n, rounds, window), lambda task: (task.i, fast_value(task.i, task.rounds))
    )
    return result


def self_check(rounds: int = ROUNDS) -> None:
    """The closed form the reference uses must equal what the workers compute."""
    for i in (0, 1, 12345):
        if slow_value(i, rounds) != fast_value(i, rounds):
            raise AssertionError(f"f({i}) closed form differs from the squarings")


def count_deliveries(counts: dict[int, int], n: int) -> tuple[int, int]:
    """(lost, duplicates) of ``n`` indices from a delivery count per index."""
    lost = sum(1 for i in range(n) if counts.get(i, 0) == 0)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    return lost, duplicates


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def _sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


class Cluster:
    """A master and slaves as ``python -m taskswarm`` processes that can be killed and restarted.

    Logs go to ``<dir>/<node>.log``. ``close()`` kills and reaps every process it started, checks
    that the processes left behind by killed slaves (their workers) are gone, and removes the
    directory.
    """

    def __init__(
        self,
        slaves: int,
        workers: int = 1,
        *,
        heartbeat: float = 0.2,
        slave_timeout: float = 1.0,
        log_level: str = "info",
        state_dir: Path | None = None,
        master_args: tuple[str, ...] = (),
    ) -> None:
        self.workers, self.heartbeat, self.slave_timeout = workers, heartbeat, slave_timeout
        self.log_level = log_level
        self.master_args = master_args
        self.dir = Path(tempfile.mkdtemp(prefix="taskswarm-chaos-"))
        self.state_dir = state_dir or self.dir / "state"
        self.key_file = str(self.dir / "cluster.key")
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.master: subprocess.Popen | None = None
        self.slaves: list[subprocess.Popen] = []
        self.reaped: list[subprocess.Popen] = []
        self.watched: dict[int, str] = {}  # pid -> what it was, for processes we cannot reap
        self.leaked: list[str] = []
        self._logs: list[Any] = []
        self._count = 0
        self._closed = False
        try:
            self._keygen()
            self.start_master()
            for _ in range(slaves):
                self.start_slave()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _keygen(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "taskswarm", "keygen", self.key_file],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"taskswarm keygen failed: {done.stderr.strip()}")

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        command = [sys.executable, "-m", "taskswarm", "--log-level", self.log_level]
        command += ["--exit-with-parent", str(os.getpid()), *args]
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def _spawn_master(self, ready: Path) -> subprocess.Popen:
        config = MasterConfig(
            bind=self.address,
            key_file=self.key_file,
            state_dir=str(self.state_dir),
            heartbeat=self.heartbeat,
            slave_timeout=self.slave_timeout,
            ready_file=str(ready),
        )
        return self._spawn("master", *to_argv(config), *self.master_args)

    def refused_start(self) -> tuple[int | None, list[str]]:
        """Start the master expecting it to refuse: (its exit code, or None if it stayed up,
        and the lines it wrote). One that stays up is stopped again."""
        log = self.dir / "master.log"
        offset = log.stat().st_size if log.exists() else 0
        ready = self.dir / "master.ready"
        ready.unlink(missing_ok=True)
        process = self._spawn_master(ready)
        try:
            code = process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
            process.kill()
            process.wait(timeout=10)
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        return code, lines

    def start_master(self) -> subprocess.Popen:
        """Start the master (again) on the same address and state directory; wait till it
        listens."""
        ready = self.dir / "master.ready"
        ready.unlink(missing_ok=True)
        self.master = self._spawn_master(ready)
        deadline = time.monotonic() + START_TIMEOUT
        while not (ready.exists() and ready.read_text()):
            if self.master.poll() is not None:
                raise RuntimeError(f"the master exited with code {self.master.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the master did not listen within {START_TIMEOUT:g}s")
            time.sleep(0.02)
        return self.master

    def start_slave(self) -> subprocess.Popen:
        self._count += 1
        config = SlaveConfig(
            master_address=self.address,
            key_file=self.key_file,
            workers=self.workers,
            heartbeat=self.heartbeat,
        )
        process = self._spawn(f"slave-{self._count}", *to_argv(config))
        self.slaves.append(process)
        return process

    def kill(self, process: subprocess.Popen, what: str) -> None:
        """SIGKILL one node; what it started (worker processes) is left to exit by itself and
        watched until ``close()``."""
        for pid in descendants(process.pid):
            self.watched[pid] = f"child {pid} of {what} {process.pid}"
        process.kill()
        process.wait(timeout=10)
        if process in self.slaves:
            self.slaves.remove(process)
        self.reaped.append(process)

    def kill_master(self) -> None:
        if self.master is not None:
            self.kill(self.master, "master")
            self.master = None

    def kill_random_slave(self, rng: random.Random) -> None:
        self.kill(rng.choice(self.slaves), "slave")

    def exited(self) -> list[str]:
        """Nodes that exited by themselves (not killed here), with their exit codes."""
        nodes = [("master", self.master)] if self.master is not None else []
        nodes += [("slave", p) for p in self.slaves]
        return [
            f"{what} {p.pid} exited by itself with code {p.returncode}"
            for what, p in nodes
            if p.poll() is not None
        ]

    def connect(self) -> ts.Application:
        return ts.connect(self.address, key_file=self.key_file, connect_timeout=START_TIMEOUT)

    def wait_active(self, app: ts.Application, count: int, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            active = [s for s in app.status()["slaves"] if s["state"] == "active"]
            if len(active) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(active)} of {count} slaves active after {timeout:g}s")
            time.sleep(0.05)

    def log_lines(self, levels: tuple[str, ...] = ("WARNING", "ERROR"), limit: int = 40) -> list:
        """The last ``limit`` log lines at these levels, each prefixed with its node."""
        lines = []
        for path in sorted(self.dir.glob("*.log")):
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    if any(f" {level} " in line for level in levels) or "Traceback" in line:
                        lines.append(f"{path.stem}: {line}")
        return lines[-limit:]

    def requeued(self) -> tuple[int, int]:
        """(slaves the master lost, tasks it requeued from them), from the master's log."""
        lost = tasks = 0
        with contextlib.suppress(OSError):
            for line in (self.dir / "master.log").read_text(errors="replace").splitlines():
                if line.endswith(" tasks requeued") and " lost (" in line:
                    lost += 1
                    tasks += int(line.rsplit(" ", 3)[-3])
        return lost, tasks

    def restore_lines(self) -> list[str]:
        """What the master logged about restoring its state after a restart."""
        try:
            text = (self.dir / "master.log").read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if " restored " in line]

    def keep_logs(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for path in self.dir.glob("*.log"):
            shutil.copy2(path, target / path.name)

    def close(self) -> None:
        """Kill and reap everything; note what a killed node left behind. Safe twice."""
        if self._closed:
            return
        self._closed = True
        live = [p for p in [*self.slaves, self.master] if p is not None and p.poll() is None]
        for process in live:
            for pid in descendants(process.pid):
                self.watched.setdefault(pid, f"child {pid} of a node stopped at the end")
            process.kill()
        for process in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self._check_orphans()
        for log in self._logs:
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _check_orphans(self) -> None:
        deadline = time.monotonic() + ORPHAN_GRACE
        while any(alive(pid) for pid in self.watched) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, what in self.watched.items():
            if alive(pid):
                self.leaked.append(what)
                _sigkill(pid)


# -- outcomes ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One scenario run: one row of the table."""

    scenario: str
    run: int = 1
    kills: int = 0
    tasks: int = 0
    correct: bool = False
    lost: int | None = None
    duplicates: int | None = None
    seconds: float = 0.0
    note: str = ""
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every check of the run held (a run that never got to its checks has failures)."""
        return not self.failures

    def fail(self, why: str) -> None:
        self.failures.append(why)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class Options:
    quick: bool = False
    seed: int | None = None
    tasks: int | None = None
    rounds: int = ROUNDS
    result_timeout: float = RESULT_TIMEOUT
    keep_failed: Path | None = None


def _finish_counting(outcome: Outcome, result: dict, reference: dict, n: int) -> None:
    outcome.lost, outcome.duplicates = count_deliveries(result["counts"], n)
    outcome.correct = (result["sum"], result["counts"]) == (reference["sum"], reference["counts"])
    if not outcome.correct:
        outcome.fail("result differs from the serial run")
    if outcome.lost:
        outcome.fail(f"{outcome.lost} tasks never delivered")
    if outcome.duplicates:
        outcome.fail(f"{outcome.duplicates} duplicate deliveries")


def restore_summary(lines: list[str]) -> str:
    """'restored 53 tasks, 0 undelivered results, 1 task systems' and 'task system X restored
    (from a snapshot, 2 results to replay)' as one short phrase."""
    parts = []
    for line in lines:
        message = line.split(": ", 1)[-1]
        if message.startswith("restored "):
            parts.append(message.split(",")[0])
        elif "(" in message:
            parts.append(message[message.index("(") + 1 : message.rindex(")")])
    return "; ".join(parts)


def _wait_result(
    app: ts.Application, handle: ts.SystemHandle, outcome: Outcome, timeout: float
) -> Any:
    """The system's result, or None after noting why there is none (hung, or an error)."""
    try:
        return handle.result(timeout=timeout)
    except FutureTimeout:
        outcome.fail(f"hung: no result after {timeout:g}s ({_progress_text(app, handle)})")
    except Exception as exc:  # noqa: BLE001 - any error is this run's failure, not the harness's
        outcome.fail(f"the system failed: {type(exc).__name__}: {exc}")
    return None


def _progress_text(app: ts.Application, handle: ts.SystemHandle) -> str:
    try:
        status = app.status(timeout=5.0)
    except Exception as exc:  # noqa: BLE001
        return f"no status from the master: {type(exc).__name__}"
    for system in status["systems"]:
        if system["id"] == handle.system_id:
            return f"{system['done']} of {system['total']} done, {system['state']}"
    return "the master does not know the system"


def _run_until(
    app: ts.Application, outcome: Outcome, n: int, rounds: int, window: int, at: float, pause=0.0
) -> tuple[ts.SystemHandle, list[int]] | None:
    """Submit a counting system and wait until ``at`` of it is done: its handle, and how many
    are done as progress last said (None, the run's failure noted: it never got there, or it
    completed before the fault could come)."""
    reached = threading.Event()
    seen = [0]

    def progress(done: int, total: int) -> None:
        seen[0] = done
        if done >= at * n:
            reached.set()

    handle = app.submit_system(CountingSystem(n, rounds, window, pause=pause), progress=progress)
    handle.add_done_callback(lambda _: reached.set())
    if not reached.wait(STALL_TIMEOUT):
        outcome.fail(f"no progress to {at:.0%} within {STALL_TIMEOUT:g}s ({seen[0]}/{n})")
        return None
    if handle.done():
        outcome.fail("the system completed before the fault could come: raise --tasks")
        return None
    return handle, seen


class _ClusterRun:
    """``with _ClusterRun(outcome, slaves, opts) as (cluster, app)``: a cluster with its slaves
    active and a connection, for one scenario run. An error inside becomes a failure of the run;
    the processes are reaped and the logs of a failed run kept (in ``outcome.log``) either way."""

    def __init__(self, outcome: Outcome, slaves: int, opts: Options, **cluster: Any) -> None:
        self.outcome, self.slaves, self.opts = outcome, slaves, opts
        self.options = cluster  # for Cluster: state_dir, master_args
        self.cluster: Cluster | None = None
        self.app: ts.Application | None = None

    def __enter__(self) -> tuple[Cluster, ts.Application]:
        try:
            self.cluster = Cluster(self.slaves, **self.options)
            self.app = self.cluster.connect()
            self.cluster.wait_active(self.app, self.slaves)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self.cluster, self.app

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, Exception):
            self.outcome.fail(_describe(exc))
            self.outcome.details["traceback"] = "".join(traceback.format_exception(exc))
        try:
            if self.app is not None:
                self.app.close()
        finally:
            if self.cluster is not None:
                _close_cluster(self.cluster, self.outcome, self.opts)
        return isinstance(exc, Exception)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _close_cluster(cluster: Cluster, outcome: Outcome, opts: Options) -> None:
    exited = cluster.exited()
    if exited:
        outcome.details["exited"] = exited
        outcome.fail("; ".join(exited))
    try:
        if not outcome.passed:
            outcome.log = cluster.log_lines()
            if opts.keep_failed is not None:
                target = opts.keep_failed / f"{outcome.scenario}-{outcome.run}"
                cluster.keep_logs(target)
                outcome.details["logs"] = str(target)
    finally:
        cluster.close()
    if cluster.leaked:
        outcome.details["leaked"] = cluster.leaked
        outcome.fail(f"{len(cluster.leaked)} processes outlived their killed node")


# -- scenarios -----------------------------------------------------------------------------------


def slave_kill(opts: Options, outcome: Outcome) -> None:
    """3 slaves; one random slave SIGKILLed and replaced every second for 10 s (3 s quick)."""
    rng = random.Random(opts.seed if opts.seed is not None else None)
    n = opts.tasks or (600 if opts.quick else 1500)
    window, kill_for, pause = 60, (3.0 if opts.quick else 10.0), 0.015
    outcome.tasks = n
    reference = serial_reference(n, opts.rounds, window)
    with _ClusterRun(outcome, 3, opts) as (cluster, app):
        done = threading.Event()
        started = time.monotonic()
        handle = app.submit_system(CountingSystem(n, opts.rounds, window, pause=pause))
        handle.add_done_callback(lambda _: done.set())
        while outcome.kills < kill_for and not done.wait(
            max(0.0, started + outcome.kills + 1 - time.monotonic())
        ):
            cluster.kill_random_slave(rng)
            cluster.start_slave()
            outcome.kills += 1
        result = _wait_result(app, handle, outcome, opts.result_timeout)
        outcome.seconds = time.monotonic() - started
        lost, requeued = cluster.requeued()
        outcome.note = f"master lost {lost} slaves, requeued {requeued} tasks"
        if outcome.kills < kill_for:
            outcome.fail(f"completed after {outcome.kills} of {kill_for:g} kills: raise --tasks")
        if result is not None:
            _finish_counting(outcome, result, reference, n)


def master_kill(opts: Options, outcome: Outcome) -> None:
    """3 slaves; the master SIGKILLed once at 20-60 % done, restarted on its state dir."""
    rng = random.Random(opts.seed if opts.seed is not None else None)
    n = opts.tasks or (300 if opts.quick else 600)
    window = 60
    at, pause = rng.uniform(0.2, 0.6), rng.uniform(0.2, 1.0)
    outcome.tasks = n
    reference = serial_reference(n, opts.rounds, window)
    with _ClusterRun(outcome, 3, opts) as (cluster, app):
        started = time.monotonic()
        running = _run_until(app, outcome, n, opts.rounds, window, at)
        if running is None or cluster.exited():
            return  # why is noted already, or the check on closing says which node
        handle, seen = running
        killed_at = seen[0]
        cluster.kill_master()
        outcome.kills = 1
        time.sleep(pause)
        cluster.start_master()
        outcome.note = f"killed at {killed_at}/{n} done, down {pause:.2f} s"
        result = _wait_result(app, handle, outcome, opts.result_timeout)
        outcome.seconds = time.monotonic() - started
        outcome.details["restore"] = cluster.restore_lines()
        if outcome.details["restore"]:
            outcome.note += "; " + restore_summary(outcome.details["restore"])
        if result is not None:
            _finish_counting(outcome, result, reference, n)


def poison(opts: Options, outcome: Outcome) -> None:
    """1,000 tasks, a task that kills its worker, a task that sleeps past its timeout."""
    n = opts.tasks or 1000
    rounds, timeout = 2_000, 1.0
    outcome.tasks = n + 2
    reference = serial_reference(n, rounds, n)
    with _ClusterRun(outcome, 2, opts) as (cluster, app):
        crash_marker = str(cluster.dir / "crash.attempts")
        sleep_marker = str(cluster.dir / "sleeper.attempts")
        extras = [Crash(crash_marker), Sleeper(sleep_marker, timeout, 60.0)]
        started = time.monotonic()
        handle = app.submit_system(CountingSystem(n, rounds, n, extras))
        result = _wait_result(app, handle, outcome, opts.result_timeout)
        outcome.seconds = time.monotonic() - started
        if result is not None:
            _finish_counting(outcome, result, reference, n)
            crashes = _attempts(crash_marker)
            sleeps = _attempts(sleep_marker)
            _check_poison(outcome, result["outcomes"], crashes, sleeps, timeout)


def _attempts(marker: str) -> int:
    try:
        return len(Path(marker).read_text().split())
    except OSError:
        return 0


def _check_poison(
    outcome: Outcome, outcomes: dict, crashes: int, sleeps: int, timeout: float
) -> None:
    crash_kind, crash_text = outcomes.get("crash", ("missing", ""))
    sleep_kind, _ = outcomes.get("sleeper", ("missing", ""))
    outcome.details.update(crash=outcomes.get("crash"), sleeper=outcomes.get("sleeper"))
    outcome.note = (
        f"crash: {crash_kind} after {crashes} attempts; sleeper: {sleep_kind} "
        f"(timeout {timeout:g} s, {sleeps} attempt{'s' if sleeps != 1 else ''})"
    )
    work_errors = {k: v for k, v in outcomes.items() if k not in ("crash", "sleeper")}
    if crash_kind != "WorkerCrashed" or crashes != 3:
        outcome.fail("expected WorkerCrashed after 3 attempts")
    if sleep_kind != "TaskTimeout":
        outcome.fail("expected TaskTimeout")
    if work_errors:
        outcome.details["work_errors"] = work_errors
        outcome.fail(f"{len(work_errors)} Work tasks failed")


def cancel(opts: Options, outcome: Outcome) -> None:
    """Reverse md5 that completes early: how long until no slave holds a leftover task."""
    rng = random.Random(opts.seed if opts.seed is not None else None)
    ranges, chunk = 16, (400_000 if opts.quick else 1_000_000)
    # In range 4, past its middle: ranges 5+ are running or waiting on the slaves by then.
    secret = 4 * chunk + rng.randrange(chunk // 2, chunk - chunk // 10)
    target = hashlib.md5(str(secret).encode()).hexdigest()
    outcome.tasks = ranges
    with _ClusterRun(outcome, 3, opts) as (cluster, app):
        markers = cluster.dir / "markers"
        markers.mkdir()
        started = time.monotonic()
        handle = app.submit_system(ReverseMd5System(target, ranges, chunk, str(markers)))
        result = _wait_result(app, handle, outcome, opts.result_timeout)
        completed, completed_wall = time.monotonic(), time.time()
        outcome.seconds = completed - started
        if result is not None:
            idle = _wait_idle(app, completed, 10 * CANCEL_IDLE_LIMIT)
            time.sleep(0.5)  # a leftover that was not stopped would go on writing markers
            _check_cancel(outcome, result, secret, idle, markers, completed_wall)


def _wait_idle(app: ts.Application, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until every slave shows in_flight == 0 (None: not within
    ``timeout``)."""
    while time.monotonic() - since < timeout:
        slaves = app.status(timeout=5.0)["slaves"]
        if all(s["in_flight"] == 0 for s in slaves):
            return time.monotonic() - since
        time.sleep(0.01)
    return None


def _check_cancel(
    outcome: Outcome, result: dict, secret: int, idle: float | None, markers: Path, since: float
) -> None:
    started = {int(p.name.split("-")[1]) for p in markers.glob("start-*")}
    ended = {int(p.name.split("-")[1]): float(p.read_text()) for p in markers.glob("end-*")}
    late = sorted(k for k, when in ended.items() if when > since + LATE_SLACK)
    stopped = sorted(started - set(ended))
    outcome.duplicates = sum(c - 1 for c in result["done"].values() if c > 1)
    outcome.correct = result["found"] == secret
    idle_text = "never" if idle is None else f"{idle:.3f} s"
    outcome.note = (
        f"idle {idle_text} after completion; {len(result['done'])} ranges done, "
        f"{len(stopped)} stopped while running, {outcome.tasks - len(started)} never started"
    )
    outcome.details.update(idle=idle, stopped=stopped, late=late, done=result["done"])
    if outcome.duplicates:
        outcome.fail(f"{outcome.duplicates} duplicate deliveries")
    if not outcome.correct:
        outcome.fail(f"found {result['found']}, expected {secret}")
    if idle is None or idle >= CANCEL_IDLE_LIMIT:
        outcome.fail(f"slaves still held tasks {CANCEL_IDLE_LIMIT:g} s after completion")
    if late:
        outcome.fail(f"ranges {late} ran to their end after completion")


# -- storage faults and oversized messages --------------------------------------------------------


def echo_size(data: bytes) -> int:
    """A plain task: how many bytes it was given."""
    return len(data)


class BigResult(ts.Task):
    """Returns ``size`` bytes; notes each attempt in ``marker``."""

    def __init__(self, marker: str, size: int) -> None:
        super().__init__(name="big-result")
        self.marker, self.size = marker, size

    def __call__(self) -> bytes:
        with open(self.marker, "a") as out:
            out.write(f"{os.getpid()}\n")
        return bytes(self.size)


@contextlib.contextmanager
def small_disk(size: str) -> Any:
    """A tmpfs of ``size`` mounted for the run (a real disk that fills and goes read-only)."""
    if os.geteuid() != 0:
        raise RuntimeError("this scenario mounts a small tmpfs: run the harness as root")
    where = Path(tempfile.mkdtemp(prefix="taskswarm-chaos-disk-"))
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


def fill_disk(directory: Path) -> Path:
    """Write a file until the disk under ``directory`` has not a byte left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        chunk = 1 << 20
        while chunk:
            try:
                out.write(bytes(chunk))
            except OSError:
                chunk //= 2
    return filler


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, capture_output=True)


def _submissions(app: ts.Application, count: int, size: int) -> tuple[int, int, int, list[str]]:
    """Submit ``count`` plain tasks: (ran, refused, unresolved, the refusals' texts)."""
    futures = [app.submit(echo_size, bytes(size)) for _ in range(count)]
    ran = refused = unresolved = 0
    reasons: list[str] = []
    for future in futures:
        try:
            ran += future.result(timeout=30) == size
        except FutureTimeout:
            unresolved += 1
        except ts.TaskswarmError as exc:
            refused += 1
            reasons.append(str(exc))
    return ran, refused, unresolved, reasons


def _wait_degraded(app: ts.Application, degraded: bool, timeout: float = 30.0) -> float | None:
    """Seconds until status says (or stops saying) degraded; None if it did not in time."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if (app.status(timeout=5.0)["master"].get("degraded") is not None) == degraded:
            return time.monotonic() - began
        time.sleep(0.05)
    return None


def disk_full(opts: Options, outcome: Outcome) -> None:
    """The state disk fills while a system runs; freed, the master takes work again."""
    rng = random.Random(opts.seed if opts.seed is not None else None)
    n, window, pause = opts.tasks or (300 if opts.quick else 600), 60, 0.01
    outcome.tasks = n
    reference = serial_reference(n, opts.rounds, window)
    with (
        small_disk("16m") as disk,
        _ClusterRun(outcome, 2, opts, state_dir=disk / "state") as (cluster, app),
    ):
        started = time.monotonic()
        running = _run_until(app, outcome, n, opts.rounds, window, rng.uniform(0.2, 0.6), pause)
        if running is None:
            return
        handle, _ = running
        filler = fill_disk(disk)
        outcome.kills = 1
        # Some may still fit in the space the journal's files already hold (SQLite reuses
        # its log): those are saved, and run. The rest must be refused, saying why.
        ran, refused, unresolved, reasons = _submissions(app, 10, 1024 * 1024)
        full = sum("disk is full" in r for r in reasons)
        failed_writes = app.status(timeout=5.0)["master"]["journal_failed_writes"]
        filler.unlink()
        recovered = _wait_degraded(app, False)
        ran_after, refused_after, unresolved_after, _ = _submissions(app, 10, 256 * 1024)
        result = _wait_result(app, handle, outcome, opts.result_timeout)
        outcome.seconds = time.monotonic() - started
        outcome.note = (
            f"full: {refused}/10 refused ({full} saying 'disk is full'), {ran} saved and ran, "
            f"{unresolved} unresolved; freed: accepting again after {_cell(recovered)} s, "
            f"{ran_after}/10 ran"
        )
        if unresolved or unresolved_after:
            outcome.fail(f"{unresolved + unresolved_after} Futures never resolved")
        if not refused or full != refused or ran + refused != 10:
            outcome.fail("work was not refused with 'disk is full' while the disk was full")
        if not failed_writes:
            outcome.fail("status counted no failed journal write while the disk was full")
        if recovered is None or ran_after != 10 or refused_after:
            outcome.fail("the master did not take work again once the disk was freed")
        if result is not None:
            _finish_counting(outcome, result, reference, n)


def _restart_refused(cluster: Cluster, outcome: Outcome, words: tuple[str, ...]) -> str | None:
    """Start the master expecting exit 2 and one line with ``words``; returns that line."""
    code, lines = cluster.refused_start()
    said = [line for line in lines if line.startswith("taskswarm master: ")]
    outcome.details["refused_start"] = lines[-5:]
    if code != 2:
        outcome.fail(f"the master started on a bad state directory (exit code {code}), not 2")
        return None
    if any("Traceback" in line for line in lines):
        outcome.fail("the refused start printed a traceback")
    if len(said) != 1 or not all(word in said[0] for word in words):
        outcome.fail(f"the refused start did not say {words} in one line: {lines[-3:]}")
        return None
    return said[0]


def _killed_and_refused(opts: Options, outcome: Outcome, fault: str) -> None:
    """Kill the master mid-system, damage its state (``fault``), expect a refused start, undo
    the damage, restart: the system completes as if nothing happened."""
    rng = random.Random(opts.seed if opts.seed is not None else None)
    n, window = opts.tasks or (300 if opts.quick else 600), 60
    outcome.tasks = n
    reference = serial_reference(n, opts.rounds, window)
    with contextlib.ExitStack() as stack:
        options: dict[str, Any] = {}
        if fault == "read-only":
            disk = stack.enter_context(small_disk("32m"))
            options["state_dir"] = disk / "state"
        cluster, app = stack.enter_context(_ClusterRun(outcome, 3, opts, **options))
        started = time.monotonic()
        running = _run_until(app, outcome, n, opts.rounds, window, rng.uniform(0.2, 0.6))
        if running is None:
            return
        handle, _ = running
        cluster.kill_master()
        outcome.kills = 1
        journal = cluster.state_dir / "journal.sqlite3"
        if fault == "read-only":
            _remount(disk, "ro")
            words = (str(cluster.state_dir), "read-only")
        else:
            backup = cluster.dir / "journal-backup"
            backup.mkdir()
            for path in cluster.state_dir.glob("journal.sqlite3*"):
                shutil.copy2(path, backup / path.name)
            # Half the file gone, and the log of recent commits (-wal) overwritten: what a
            # failing disk or a careless copy leaves.
            with open(journal, "r+b") as damaged:
                damaged.truncate(journal.stat().st_size // 2)
            wal = journal.with_name(journal.name + "-wal")
            if wal.exists():
                wal.write_bytes(b"not a journal any more\0" * (wal.stat().st_size // 23 + 1))
            words = (str(journal), "damaged")
        line = _restart_refused(cluster, outcome, words)
        if fault == "read-only":
            _remount(disk, "rw")
        else:
            for path in backup.iterdir():
                shutil.copy2(path, cluster.state_dir / path.name)
        cluster.start_master()
        result = _wait_result(app, handle, outcome, opts.result_timeout)
        outcome.seconds = time.monotonic() - started
        reason = line.split("; ", 1)[-1].split(":")[0] if line else "-"
        outcome.note = f"exit 2 ({reason}), put right, resumed:"
        restore = cluster.restore_lines()
        if restore:
            outcome.note += " " + restore_summary(restore)
        if result is not None:
            _finish_counting(outcome, result, reference, n)


def read_only(opts: Options, outcome: Outcome) -> None:
    """Master killed, its disk remounted read-only: exit 2, then it resumes once writable."""
    _killed_and_refused(opts, outcome, "read-only")


def corrupt(opts: Options, outcome: Outcome) -> None:
    """Master killed, its journal cut and its -wal overwritten: exit 2 naming it; backup back."""
    _killed_and_refused(opts, outcome, "corrupt")


def deleted(opts: Options, outcome: Outcome) -> None:
    """The state directory deleted under a running master: new work refused, the system ends."""
    rng = random.Random(opts.seed if opts.seed is not None else None)
    n, window, pause = opts.tasks or (300 if opts.quick else 600), 60, 0.01
    outcome.tasks = n
    reference = serial_reference(n, opts.rounds, window)
    with _ClusterRun(outcome, 2, opts) as (cluster, app):
        started = time.monotonic()
        running = _run_until(app, outcome, n, opts.rounds, window, rng.uniform(0.2, 0.6), pause)
        if running is None:
            return
        handle, _ = running
        shutil.rmtree(cluster.state_dir)
        outcome.kills = 1
        noticed = _wait_degraded(app, True)
        _, refused, unresolved, reasons = _submissions(app, 10, 1024)
        said = sum("deleted or replaced" in r for r in reasons)
        result = _wait_result(app, handle, outcome, opts.result_timeout)
        outcome.seconds = time.monotonic() - started
        outcome.note = (
            f"noticed after {_cell(noticed)} s; {refused}/10 refused "
            f"({said} saying why), {unresolved} unresolved"
        )
        if noticed is None:
            outcome.fail("status never said degraded")
        if unresolved:
            outcome.fail(f"{unresolved} Futures never resolved")
        if refused != 10 or said != 10:
            outcome.fail("new work was not refused with the reason")
        if result is not None:
            _finish_counting(outcome, result, reference, n)


def oversize(opts: Options, outcome: Outcome) -> None:
    """--max-message-mib 4: a 5 MiB argument and a 5 MiB result each fail once, clearly."""
    limit, size = 4, 5 * 1024 * 1024
    outcome.tasks = 3
    with _ClusterRun(outcome, 1, opts, master_args=("--max-message-mib", str(limit))) as (
        cluster,
        app,
    ):
        started = time.monotonic()
        argument = result = "-"
        try:
            future = app.submit(echo_size, bytes(size))
        except ts.MessageTooLarge as exc:
            argument = "MessageTooLarge at submit"
            if "--max-message-mib" not in str(exc):
                outcome.fail(f"the argument's error does not name the option: {exc}")
        else:
            try:
                future.result(timeout=30)
                outcome.fail("a 5 MiB argument ran under a 4 MiB limit")
            except FutureTimeout:
                outcome.fail("the oversized argument's Future never resolved")
            except ts.MessageTooLarge:
                argument = "MessageTooLarge from its Future"
        marker = str(cluster.dir / "big.attempts")
        try:
            app.submit(BigResult(marker, size)).result(timeout=60)
            outcome.fail("a 5 MiB result was delivered under a 4 MiB limit")
        except FutureTimeout:
            outcome.fail("the oversized result's Future never resolved")
        except ts.MessageTooLarge as exc:
            result = "MessageTooLarge"
            if "--max-message-mib" not in str(exc):
                outcome.fail(f"the result's error does not name the option: {exc}")
        except Exception as exc:  # noqa: BLE001 - any other error is this run's failure
            outcome.fail(f"the oversized result failed as {type(exc).__name__}: {exc}")
        attempts = _attempts(marker)
        if attempts != 1:
            outcome.fail(f"the oversized result ran {attempts} times, not once")
        after = app.submit(echo_size, bytes(1024)).result(timeout=30)
        outcome.correct = not outcome.failures and after == 1024
        outcome.lost = outcome.duplicates = 0
        outcome.seconds = time.monotonic() - started
        outcome.note = f"argument: {argument}; result: {result} after {attempts} attempt(s)"


RUNNERS: dict[str, Callable[[Options, Outcome], None]] = {
    "slave-kill": slave_kill,
    "master-kill": master_kill,
    "poison": poison,
    "cancel": cancel,
    "disk-full": disk_full,
    "read-only": read_only,
    "deleted": deleted,
    "corrupt": corrupt,
    "oversize": oversize,
}


def run_scenario(name: str, opts: Options | None = None, run: int = 1) -> Outcome:
    """Run one scenario once; never raises for a failed run (the outcome says why)."""
    opts = opts or Options()
    began = time.monotonic()
    outcome = Outcome(name, run)
    try:
        RUNNERS[name](opts, outcome)
    except Exception as exc:  # noqa: BLE001 - e.g. a cluster that did not start
        if _describe(exc) not in outcome.failures:
            outcome.fail(_describe(exc))
            outcome.details["traceback"] = traceback.format_exc()
    if not outcome.seconds:
        outcome.seconds = time.monotonic() - began
    return outcome


# -- the command line ----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).replace("|", "/")


HEADER = ("scenario", "run", "kills", "tasks", "correct", "lost", "duplicates", "seconds", "note")


def table_header() -> str:
    return "| " + " | ".join(HEADER) + " |\n|" + "|".join("---" for _ in HEADER) + "|"


def table_row(o: Outcome) -> str:
    note = (
        o.note
        if o.passed
        else "; ".join(["FAILED: " + "; ".join(o.failures), o.note][: 1 + bool(o.note)])
    )
    cells = (o.scenario, o.run, o.kills, o.tasks, o.correct, o.lost, o.duplicates, o.seconds, note)
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def summary(outcomes: list[Outcome], names: list[str]) -> list[str]:
    lines = []
    for name in names:
        runs = [o for o in outcomes if o.scenario == name]
        if runs:
            passed = sum(o.passed for o in runs)
            lines.append(f"{name}: {passed}/{len(runs)} passed")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run task systems on real taskswarm processes while killing them.",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (default 1)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="a scenario to run (repeatable; default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (3 s of slave kills)")
    parser.add_argument("--json", metavar="PATH", help="also write the outcomes as JSON")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first run")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per counting system")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"squarings per task (default {ROUNDS})"
    )
    parser.add_argument(
        "--keep-failed", metavar="DIR", help="copy the node logs of failed runs under DIR"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _print_evidence(outcome: Outcome) -> None:
    """For a failed run: the last warnings and errors its nodes logged, and any traceback."""
    if outcome.passed:
        return
    for line in outcome.log[-15:]:
        print(f"    {line}", file=sys.stderr)
    if "traceback" in outcome.details:
        print(outcome.details["traceback"], file=sys.stderr)
    sys.stderr.flush()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    names = list(dict.fromkeys(args.scenario or SCENARIOS))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    self_check(args.rounds)
    print(f"chaos: scenarios {', '.join(names)}; {args.runs} run(s) each; seed {seed}", flush=True)
    print(table_header(), flush=True)
    outcomes: list[Outcome] = []
    try:
        for run in range(1, args.runs + 1):
            for name in names:
                opts = Options(
                    quick=args.quick,
                    seed=seed + len(outcomes),
                    tasks=args.tasks,
                    rounds=args.rounds,
                    result_timeout=QUICK_RESULT_TIMEOUT if args.quick else RESULT_TIMEOUT,
                    keep_failed=Path(args.keep_failed) if args.keep_failed else None,
                )
                outcome = run_scenario(name, opts, run)
                outcome.details["seed"] = opts.seed
                outcomes.append(outcome)
                print(table_row(outcome), flush=True)
                _print_evidence(outcome)
    except KeyboardInterrupt:
        print("interrupted; every node was stopped", file=sys.stderr)
        return 130
    finally:
        if args.json:
            write_json(args.json, outcomes, seed)
    print()
    for line in summary(outcomes, names):
        print(line)
    return 0 if all(o.passed for o in outcomes) else 1


def write_json(path: str, outcomes: list[Outcome], seed: int) -> None:
    data = {
        "seed": seed,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "runs": [o.as_dict() for o in outcomes],
    }
    Path(path).write_text(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
