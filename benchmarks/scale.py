"""How the master copes as slaves multiply: registration, heartbeat load, memory and tasks/s.

Run it as ``python benchmarks/scale.py`` (``--help`` lists the options; the default run, 1 to
200 slaves of 1 worker, took 8 minutes on a busy 2-core machine, ``--slaves 2,4 --tasks 500
--idle-seconds 1`` well under one). Linux only (``/proc``). For each slave count N it starts a
fresh master (``taskswarm master --no-dashboard --no-state-dir`` on loopback TCP), measures it
alone, starts N slaves of ``--workers`` workers, and measures:

* **registration**: seconds from starting the first slave until the master's status (what
  ``taskswarm status`` shows) lists N active slaves;
* **heartbeat load**: the master's CPU while the cluster idles, over ``--repeats`` windows of
  ``--idle-seconds``, against its CPU alone before any slave came. Every slave sends a
  heartbeat each ``--heartbeat`` seconds and the master sends every peer one, so the difference
  over N / heartbeat is the master's CPU per slave heartbeat, both ways. Its loop thread (every
  message goes through it, so it is the first to saturate) is shown apart from ZeroMQ's I/O
  thread; the slaves' own CPU and what the rest of the machine used meanwhile (other people's
  work: the noise) stand beside it;
* **memory**: the master's RSS with N slaves less its RSS alone, per slave; the slaves'
  proportional set size (PSS: shared pages split between their sharers) per slave; the size of
  one status reply;
* **tasks/s**: ``--tasks`` no-op tasks pushed at once from this process, ``--repeats`` times
  after a warm-up, with the master's CPU per task, its dispatch time per decision and the tasks
  each TASKS message carried (from the master's counters in its status);
* **bookkeeping** (in this process, ``--book-slaves`` slave records, no sockets): the bytes of
  the master's records per slave, the Python work of one heartbeat each way, and the two scans
  over every slave that do not depend on the heartbeat: one look for work to steal, one status.

How slaves run (``--slaves-as``):

* ``process`` (default): each slave is ``taskswarm slave --workers W``, as on a real cluster: an
  interpreter, and once it has workers a forkserver and a resource tracker besides (about 40 MiB
  of PSS for a slave of 1 worker). Before each count the script checks that the slaves fit in
  the memory available, from what the counts before measured.
``--total-workers T`` gives each of N slaves T / N workers (at least 1) instead of ``--workers``,
so every count runs about as many workers: ``--slaves-as thread --slaves 1,10,100
--total-workers 100`` compares one slave of 100 workers with 100 slaves of one, the master's
cost per task with few slaves and with many, on the same load for the machine.

* ``thread``: N ``Slave`` objects, each serving in a thread of one of ``--hosts`` host processes
  (``scale.py host ...``) and sharing that host's forkserver. The master sees what it sees from
  N processes (N connections, N identities, N heartbeats) for a fraction of the memory and
  start-up CPU, so larger counts fit: ``--slaves-as thread --slaves 100,500,1000 --workers 0``
  measures registration and heartbeats alone.

CPU comes from ``/proc/PID/task/*/schedstat`` (nanoseconds, every thread of a process;
``/proc/PID/stat`` counts 10 ms ticks, too coarse for an idle master) and ``/proc/stat`` for the
whole machine; a CPU % is of one core (a 2-core machine has 200 %). Counts run in ascending
order, ``--rounds`` times (every other round descending); tables show medians. Nothing is
asserted about timings: the exit code is 1 when a result is wrong or a cluster did not come up
(the reason is printed, with the end of the nodes' log), 130 on Ctrl-C or SIGTERM, and every
process started here is gone either way (the nodes also stop by themselves when this script dies).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import msgpack

import taskswarm as ts
from procs import descendants
from taskswarm.protocol.keys import generate_key_file, load_keys

SCRIPT = Path(__file__).resolve()
#: Heartbeat intervals left to start-up work (imports, first GCs) before the idle cluster is
#: measured, and the master's own idle window before any slave comes.
SETTLE_BEATS = 2
#: A slave's PSS before any was measured: an interpreter, plus a forkserver, a resource tracker
#: and a worker each when it has workers (process); a worker each (thread).
FIRST_GUESS = {"process": (25 << 20, 30 << 20, 10 << 20), "thread": (1 << 20, 0, 10 << 20)}
#: Share of the memory available that the slaves of one count may take.
MEMORY_SHARE = 0.8
#: Seconds to stop gracefully (SIGTERM) before SIGKILL.
GRACE = 20.0


def noop(x: Any) -> Any:
    return x


class ClusterFailed(Exception):
    """Raised when a master or its slaves did not come up: the run cannot go on."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int, threads: list[str] | None = None) -> float:
    """CPU time of every thread of ``pid`` (or of ``threads`` only) so far; 0 once it is gone."""
    total = 0
    try:
        threads = threads or os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as file:
                total += int(file.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9


def proc_field(pid: int | str, file: str, name: str) -> int:
    """A ``Name: value kB`` line of /proc/PID/FILE in bytes (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as lines:
            for line in lines:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): tells a process from a later one that
    reused its pid. None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return int(file.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def machine_busy() -> float:
    """CPU seconds the whole machine (every core) has spent busy since boot."""
    with open("/proc/stat") as file:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, file.readline().split()[1:8])
    # Steal (time the hypervisor gave to other machines) is not this machine's work.
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def meminfo(name: str) -> int:
    """A line of /proc/meminfo (``MemAvailable``, ``MemTotal``) in bytes."""
    return proc_field("self", "../meminfo", name)


# -- thread hosts ------------------------------------------------------------------------------


def host(argv: list[str]) -> int:
    """``scale.py host ADDRESS KEY_FILE COUNT WORKERS HEARTBEAT``: serve COUNT slaves, each in a
    thread of this process, until SIGTERM, SIGINT, or the end of stdin (the script that started
    this process closed its end of the pipe, or died)."""
    from taskswarm.slave.node import Slave

    address, key_file, count, workers, heartbeat = argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s host %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    keys = load_keys(key_file)
    slaves: list[Slave] = []
    threads: list[threading.Thread] = []
    try:
        for _ in range(int(count)):
            slave = Slave(address, keys, workers=int(workers), heartbeat_interval=float(heartbeat))
            slaves.append(slave)
            threads.append(threading.Thread(target=slave.serve, name=slave.node_id))
            threads[-1].start()
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()
        while not stop.wait(1.0):
            pass
    finally:
        for slave in slaves:
            slave.stop()
        for thread in threads:
            thread.join()
    return 0


# -- one cluster -------------------------------------------------------------------------------


class Cluster:
    """One master and its slaves (or host processes), always stopped by ``close``."""

    def __init__(self, args: argparse.Namespace, key_file: str, workdir: Path, out: IO) -> None:
        self.args, self.key_file, self.workdir, self.out = args, key_file, workdir, out
        self.master: subprocess.Popen | None = None
        self.slaves: list[subprocess.Popen] = []  # slave processes, or host processes
        self.address = ""
        self.app: ts.Application | None = None

    def _node(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "taskswarm",
            "--log-level",
            "warning",
            "--exit-with-parent",
            str(os.getpid()),
            *args,
        ]

    def _spawn(self, command: list[str], stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen(command, stdin=stdin, stdout=self.out, stderr=self.out)

    def start_master(self) -> None:
        ready = self.workdir / f"master-{time.monotonic_ns()}.address"
        beat = self.args.heartbeat
        self.master = self._spawn(
            self._node(
                "master",
                "--bind",
                "tcp://127.0.0.1:0",
                "--key-file",
                self.key_file,
                "--no-dashboard",
                "--no-state-dir",
                "--heartbeat",
                str(beat),
                "--slave-timeout",
                str(max(5.0, 5 * beat)),
                "--ready-file",
                str(ready),
            )
        )
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            if self.master.poll() is not None:
                raise ClusterFailed(f"the master exited with code {self.master.returncode}")
            if time.monotonic() > deadline:
                raise ClusterFailed("the master did not write its address within 30 s")
            time.sleep(0.02)
        self.address = ready.read_text().strip()
        self.app = ts.connect(self.address, self.key_file)

    def start_slaves(self, count: int) -> None:
        args = self.args
        if args.slaves_as == "process":
            for _ in range(count):
                self.slaves.append(
                    self._spawn(
                        self._node(
                            "slave",
                            self.address,
                            "--key-file",
                            self.key_file,
                            "--workers",
                            str(args.workers),
                            "--heartbeat",
                            str(args.heartbeat),
                        )
                    )
                )
            return
        hosts = min(args.hosts, count)
        for i in range(hosts):
            size = count // hosts + (i < count % hosts)
            command = [sys.executable, str(SCRIPT), "host", self.address, self.key_file]
            command += [str(size), str(args.workers), str(args.heartbeat)]
            self.slaves.append(self._spawn(command, stdin=subprocess.PIPE))

    def wait_registered(self, count: int, timeout: float) -> dict[str, Any]:
        """The master's status once it lists ``count`` active slaves."""
        assert self.app is not None and self.master is not None
        deadline = time.monotonic() + timeout
        while True:
            status = self.app.status()
            active = sum(1 for s in status["slaves"] if s["state"] == "active")
            if active >= count:
                return status
            exited = [p.returncode for p in [self.master, *self.slaves] if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                why = f"{len(exited)} node processes exited" if exited else f"after {timeout:g} s"
                raise ClusterFailed(f"only {active} of {count} slaves became active ({why})")
            time.sleep(0.1)

    def slave_tree(self) -> list[int]:
        """Every process of the slaves: slave (or host) processes and everything below them."""
        return [pid for p in self.slaves for pid in (p.pid, *descendants(p.pid))]

    def close(self) -> None:
        """Stop everything started here, even when interrupted again meanwhile."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.app is not None:
                self.app.close()
            # Forkservers, trackers and workers: whoever their parent is by then, each is
            # killed by its own id (and start time) if it outlives its slave.
            below = [(pid, start_time(pid)) for pid in descendants(os.getpid())]
            stop(self.slaves)
            stop([self.master] if self.master else [])
            for pid, started in below:
                if started is not None and start_time(pid) == started:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            signal.signal(signal.SIGINT, previous)


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM (and end of stdin) for each, then SIGKILL for whichever outlives ``GRACE``."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()


# -- measuring ---------------------------------------------------------------------------------


def idle_window(master: int, slaves: list[int], seconds: float) -> dict[str, float]:
    """CPU % (of one core) of the master, its loop thread (the one every message goes through:
    the first to saturate), the slaves and everything else over ``seconds``."""

    def sample() -> tuple[float, ...]:
        return (
            time.monotonic(),
            cpu_seconds(master),
            cpu_seconds(master, [str(master)]),
            sum(map(cpu_seconds, slaves)),
            cpu_seconds(os.getpid()),
            machine_busy(),
        )

    before = sample()
    time.sleep(seconds)  # the window itself
    after = sample()
    wall, master_s, loop_s, slaves_s, own_s, busy_s = (
        a - b for a, b in zip(after, before, strict=True)
    )
    return {
        "master_pct": 100 * master_s / wall,
        "loop_pct": 100 * loop_s / wall,
        "slaves_pct": 100 * slaves_s / wall,
        "others_pct": max(0.0, 100 * (busy_s - master_s - slaves_s - own_s) / wall),
    }


def counters(status: dict[str, Any]) -> dict[str, float]:
    """The master's TASKS messages sent and dispatch time, from its status."""
    found = {"messages": 0.0, "decisions": 0.0, "dispatch_s": 0.0}
    for row in status["stats"]:
        if row["name"] == "send_seconds" and not row["labels"]:
            found["messages"] = row["count"]
        elif row["name"] == "dispatch_seconds" and not row["labels"]:
            found["decisions"], found["dispatch_s"] = row["count"], row["sum"]
    return found


def push_noops(app: ts.Application, count: int) -> None:
    futures = app.push_tasks(ts.FunctionTask(noop, i) for i in range(count))
    done, not_done = concurrent.futures.wait(futures, timeout=60 + count / 500)
    try:
        results = sorted(f.result() for f in done)
    except Exception as exc:  # noqa: BLE001 - any failure of a no-op task is a wrong result
        raise ClusterFailed(f"a no-op task failed: {exc!r}") from exc
    if not_done or results != list(range(count)):
        raise ClusterFailed(f"{len(not_done)} of {count} no-op tasks did not come back right")


def task_runs(app: ts.Application, master: int, slaves: int, args: argparse.Namespace) -> list:
    push_noops(app, max(1000, 4 * slaves * args.workers))  # every worker's pace is known
    runs = []
    for _ in range(args.repeats):
        before, cpu = counters(app.status()), cpu_seconds(master)
        start = time.perf_counter()
        push_noops(app, args.tasks)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(master) - cpu
        after = counters(app.status())
        decisions = max(1.0, after["decisions"] - before["decisions"])
        runs.append(
            {
                "tasks_per_s": args.tasks / elapsed,
                "master_us_per_task": cpu / args.tasks * 1e6,
                "dispatch_us": (after["dispatch_s"] - before["dispatch_s"]) / decisions * 1e6,
                "tasks_per_message": args.tasks / max(1, after["messages"] - before["messages"]),
            }
        )
    return runs


def measure(count: int, args: argparse.Namespace, cluster: Cluster, guess: float) -> dict:
    """Everything about ``count`` slaves, from a master alone to the last task run."""
    cluster.start_master()
    assert cluster.master is not None and cluster.app is not None
    master = cluster.master.pid
    alone = idle_window(master, [], SETTLE_BEATS * args.heartbeat)["master_pct"]
    rss_alone = proc_field(master, "status", "VmRSS")
    need, free = guess * count, meminfo("MemAvailable")
    if need > MEMORY_SHARE * free:
        raise ClusterFailed(
            f"{count} slaves of {args.workers} workers (a {args.slaves_as} each) would take about "
            f"{need / 2**30:.1f} GiB ({guess / 2**20:.0f} MiB each) and {free / 2**30:.1f} GiB "
            "is available: give smaller --slaves counts, fewer --workers, or --slaves-as thread"
        )
    started = time.monotonic()
    cluster.start_slaves(count)
    status = cluster.wait_registered(count, args.start_timeout or 60 + count)
    registered = time.monotonic() - started
    log(f"  {count} slaves registered in {registered:.2f} s; measuring the idle cluster")
    time.sleep(SETTLE_BEATS * args.heartbeat)  # start-up work dies down
    tree = cluster.slave_tree()
    windows = [idle_window(master, tree, args.idle_seconds) for _ in range(args.repeats)]
    rss = proc_field(master, "status", "VmRSS")
    pss = sum(proc_field(pid, "smaps_rollup", "Pss") for pid in tree)
    runs = task_runs(cluster.app, master, count, args) if args.workers else []
    for window in windows:
        beats_per_s = count / args.heartbeat
        window["us_per_heartbeat"] = (window["master_pct"] - alone) / 100 / beats_per_s * 1e6
    return {
        "slaves": count,
        "workers": args.workers,
        "registration_s": registered,
        "master_alone_pct": alone,
        "windows": windows,
        "master_rss": rss,
        "master_rss_alone": rss_alone,
        "slave_pss": pss / count,
        "status_bytes": len(msgpack.packb(status)),
        "runs": runs,
    }


def bookkeeping(count: int) -> dict[str, float]:
    """The master's per-slave work on ``count`` slave records, in this process (no sockets):
    the bytes ``on_slave_register`` keeps per slave (the record, its scheduler entries, the peer
    table, the session the gate remembers), one heartbeat's Python work each way, and the scans
    over every slave that the master's loop makes whatever the heartbeat interval."""
    from taskswarm.protocol.codec import Codec, Kind
    from taskswarm.protocol.messages import Heartbeat
    from taskswarm.scheduling.push import PushScheduler
    from taskswarm.scheduling.records import NodeState, SlaveRecord
    from taskswarm.scheduling.strategies import LoadStrategy

    scheduler = PushScheduler(LoadStrategy(), prefetch=2)
    scheduler.setup(None)
    peers: dict[bytes, SlaveRecord] = {}
    sessions: dict[bytes, str] = {}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            node_id = f"worker-host-{10_000 + i}-{i:06x}"  # hostname-pid-6 hex digits
            identity = node_id.encode()
            record = SlaveRecord(node_id, identity, "worker-host", 10_000 + i, workers=1)
            record.state, record.want = NodeState.ACTIVE, 2
            peers[identity], sessions[identity] = record, f"{i:016x}"
            scheduler.add_slave(record)
        per_record = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    master, slave = Codec(b"k" * 32), Codec(b"k" * 32)
    incoming = [
        slave.encode(
            Kind.HEARTBEAT, Heartbeat(workers=1, want=2, rejected=0, held=[]), to=master.session
        )
        for _ in range(count)
    ]
    records = list(peers.values())
    start = time.perf_counter()
    for frames, record in zip(incoming, records, strict=True):
        message = master.decode(frames)
        scheduler.reclaim_missing(record, set(message.read(Heartbeat).held or ()), 0.0)
        scheduler.refresh(record)
    received = time.perf_counter() - start
    start = time.perf_counter()
    for identity in peers:
        master.encode(Kind.HEARTBEAT, Heartbeat(), to=sessions[identity])
    sent = time.perf_counter() - start
    looks = []
    for _ in range(5):
        scheduler._next_steal_look = 0.0  # look now, as the loop does every 50 ms when idle
        start = time.perf_counter()
        scheduler.plan_steals()
        looks.append(time.perf_counter() - start)
    start = time.perf_counter()
    status = msgpack.packb([record.summary() for record in records])
    summaries = time.perf_counter() - start
    return {
        "slaves": count,
        "record_bytes": per_record,
        "receive_us": received / count * 1e6,
        "send_us": sent / count * 1e6,
        "steal_look_ms": statistics.median(looks) * 1e3,
        "status_ms": summaries * 1e3,
        "status_kib": len(status) / 1024,
    }


# -- the table ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(results: list[dict]) -> dict[str, Any]:
    """One row per slave count: medians over rounds, windows and task runs."""
    windows = [w for r in results for w in r["windows"]]
    runs = [run for r in results for run in r["runs"]]
    count = results[0]["slaves"]
    row: dict[str, Any] = {
        "slaves": count,
        "workers": results[0].get("workers", 0),
        "registration_s": median([r["registration_s"] for r in results]),
        "master_alone_pct": median([r["master_alone_pct"] for r in results]),
        "master_rss_mib": median([r["master_rss"] / 2**20 for r in results]),
        "kib_per_slave": median(
            [(r["master_rss"] - r["master_rss_alone"]) / 1024 / count for r in results]
        ),
        "slave_pss_mib": median([r["slave_pss"] / 2**20 for r in results]),
        "status_kib": median([r["status_bytes"] / 1024 for r in results]),
    }
    for key in ("master_pct", "loop_pct", "us_per_heartbeat", "slaves_pct", "others_pct"):
        row[key] = median([w[key] for w in windows])
    for key in ("tasks_per_s", "master_us_per_task", "dispatch_us", "tasks_per_message"):
        row[key] = median([run[key] for run in runs])
    row["tasks_min"] = min((run["tasks_per_s"] for run in runs), default=float("nan"))
    row["tasks_max"] = max((run["tasks_per_s"] for run in runs), default=float("nan"))
    return row


def print_tables(rows: list[dict], args: argparse.Namespace, book: dict[str, float]) -> None:
    kind = "processes" if args.slaves_as == "process" else f"threads in up to {args.hosts} hosts"
    each = f"{args.total_workers} / slaves" if args.total_workers else str(args.workers)
    print(
        f"\n### idle cluster: slaves of {each} worker(s) as {kind}, heartbeat every"
        f" {args.heartbeat:g} s\n\nMedians of {args.rounds} round(s) x {args.repeats} windows"
        f" of {args.idle_seconds:g} s. CPU % of one core ({os.cpu_count()} cores: "
        f"{100 * (os.cpu_count() or 1)} %); loop thread: the master's thread that handles every"
        " message (at most one core); µs per heartbeat: the master's CPU above its own"
        " (alone) per slave heartbeat, received and answered; rest of machine: CPU used by"
        " processes not started here.\n"
    )
    print(
        "| slaves | registered in s | master CPU % | loop thread % | alone % | µs per heartbeat "
        "| slaves CPU % | rest of machine % | master RSS MiB | KiB per slave | slave PSS MiB "
        "| status KiB |"
    )
    print("|--:|" + "--:|" * 11)
    for r in rows:
        print(
            f"| {r['slaves']:,} | {r['registration_s']:.2f} | {r['master_pct']:.2f} "
            f"| {r['loop_pct']:.2f} | {r['master_alone_pct']:.3f} | {r['us_per_heartbeat']:.0f} "
            f"| {r['slaves_pct']:.1f} "
            f"| {r['others_pct']:.1f} | {r['master_rss_mib']:.1f} | {r['kib_per_slave']:.1f} "
            f"| {r['slave_pss_mib']:.1f} | {r['status_kib']:.1f} |"
        )
    if args.workers or args.total_workers:
        print_tasks(rows, args)
    print(
        f"\n### the master's bookkeeping for {book['slaves']:,} slaves, in this process\n\n"
        "Python only (no sockets, no wake-ups): what the loop does per slave heartbeat, and the"
        " scans over every slave it makes however rarely slaves beat.\n"
    )
    print(
        "| per slave record | heartbeat in (decode, refresh) | heartbeat out (encode) "
        "| idle look for work to steal (up to 20/s) | status of every slave |"
    )
    print("|--:|--:|--:|--:|--:|")
    print(
        f"| {book['record_bytes']:,.0f} B | {book['receive_us']:.1f} µs | {book['send_us']:.1f} µs"
        f" | {book['steal_look_ms']:.2f} ms | {book['status_ms']:.0f} ms,"
        f" {book['status_kib']:,.0f} KiB |"
    )
    sys.stdout.flush()


def print_tasks(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n### {args.tasks:,} no-op tasks pushed at once\n\nMedian of {args.repeats * args.rounds}"
        " runs; master µs/task: its CPU per task; dispatch: its scheduler's time per decision;"
        " tasks per message: tasks over TASKS messages the master sent.\n"
    )
    print(
        "| slaves | workers | tasks/s | min–max | master µs/task | dispatch µs/decision "
        "| tasks per message |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['slaves']:,} | {r['slaves'] * r['workers']:,} | {r['tasks_per_s']:,.0f} "
            f"| {r['tasks_min']:,.0f}–{r['tasks_max']:,.0f} | {r['master_us_per_task']:.1f} "
            f"| {r['dispatch_us']:.2f} | {r['tasks_per_message']:.1f} |"
        )


# -- the script --------------------------------------------------------------------------------


def counts(text: str) -> list[int]:
    try:
        chosen = sorted({int(n.replace("_", "")) for n in text.split(",") if n.strip()})
    except ValueError as error:
        raise argparse.ArgumentTypeError("give slave counts such as 1,10,50,100,200") from error
    if not chosen or chosen[0] < 1:
        raise argparse.ArgumentTypeError("give slave counts of 1 or more")
    return chosen


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--slaves",
        type=counts,
        default=[1, 10, 50, 100, 200],
        help="slave counts, comma-separated; each gets a fresh master (1,10,50,100,200)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="workers per slave; 0: no tasks/s (1)"
    )
    parser.add_argument(
        "--total-workers",
        type=int,
        default=0,
        metavar="T",
        help="give each of N slaves T / N workers (at least 1) instead of --workers (0: off)",
    )
    parser.add_argument(
        "--slaves-as",
        choices=("process", "thread"),
        default="process",
        help="a `taskswarm slave` process each, or threads of --hosts processes (process)",
    )
    parser.add_argument("--hosts", type=int, default=4, help="host processes for threads (4)")
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, help="seconds, for master and slaves (1.0)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=5.0, help="seconds per idle window (5)"
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per run (20,000)")
    parser.add_argument("--repeats", type=int, default=3, help="idle windows and task runs (3)")
    parser.add_argument("--rounds", type=int, default=1, help="times through the counts (1)")
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=None,
        help="seconds for N slaves to register (60 + N)",
    )
    parser.add_argument(
        "--book-slaves",
        type=int,
        default=10_000,
        help="slave records for the in-process bookkeeping figures (10,000)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure there")
    args = parser.parse_args(argv)
    if min(args.hosts, args.tasks, args.repeats, args.rounds, args.book_slaves) < 1:
        parser.error("--hosts, --tasks, --repeats, --rounds and --book-slaves must be 1 or more")
    if args.workers < 0 or args.total_workers < 0:
        parser.error("--workers and --total-workers must be 0 or more")
    if args.heartbeat < 0.05 or args.idle_seconds <= 0:
        parser.error("--heartbeat must be at least 0.05 s and --idle-seconds above 0")
    return args


def sweep(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Every count, ``--rounds`` times; fills ``report`` as it goes."""
    process_pss, extra_pss, worker_pss = FIRST_GUESS[args.slaves_as]
    guess = process_pss + (extra_pss + worker_pss * args.workers if args.workers else 0)
    results: dict[int, list[dict]] = report["results"]
    with tempfile.TemporaryDirectory(prefix="taskswarm-scale-") as tmp:
        workdir = Path(tmp)
        key_file = str(generate_key_file(workdir / "cluster.key"))
        log_path = workdir / "nodes.log"
        with open(log_path, "ab") as out:
            for round_ in range(args.rounds):
                order = args.slaves if round_ % 2 == 0 else args.slaves[::-1]
                for count in order:
                    log(f"round {round_ + 1}/{args.rounds}: a master and {count} slaves")
                    these = args
                    if args.total_workers:  # as many workers at every count
                        these = argparse.Namespace(**vars(args))
                        these.workers = max(1, args.total_workers // count)
                        guess = process_pss + extra_pss + worker_pss * these.workers
                    cluster = Cluster(these, key_file, workdir, out)
                    try:
                        result = measure(count, these, cluster, guess)
                    except ClusterFailed as failure:
                        out.flush()
                        tail = log_path.read_text(errors="replace").splitlines()[-30:]
                        raise ClusterFailed(
                            "\n".join([str(failure), "nodes' log:", *tail])
                        ) from None
                    finally:
                        cluster.close()
                    results.setdefault(count, []).append(result)
                    guess = max(guess, result["slave_pss"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["host"]:
        return host(argv[1:])
    args = parse(argv)
    signal.signal(signal.SIGTERM, interrupted)
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "memory_gib": meminfo("MemTotal") / 2**30,
        },
        "args": vars(args),
        "results": {},
    }
    try:
        sweep(args, report)
        report["rows"] = [summarize(report["results"][n]) for n in args.slaves]
        report["bookkeeping"] = bookkeeping(args.book_slaves)
    except KeyboardInterrupt:
        log("interrupted: every process started here has been stopped")
        return 130
    except ClusterFailed as failure:
        log(f"WRONG: {failure}")
        return 1
    finally:
        if args.json:
            with open(args.json, "w") as file:
                json.dump(report, file, indent=1, default=str)
    print(
        f"{report['when']}; Python {platform.python_version()} on {platform.platform()}; "
        f"{os.cpu_count()} CPUs, {report['machine']['memory_gib']:.0f} GiB"
    )
    print_tables(report["rows"], args, report["bookkeeping"])
    return 0


def interrupted(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops what it started."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
