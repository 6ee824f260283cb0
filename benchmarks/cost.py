"""Where a task's time goes: CPU microseconds per no-op task in each process of a LocalCluster.

Run it as ``python benchmarks/cost.py`` (``--help`` lists the options). It starts
``LocalCluster(slaves=1, workers=2)``, warms it up, then pushes ``--tasks`` no-op tasks at once,
``--repeats`` times, and reads from ``/proc`` how much CPU time each process spent meanwhile:

* **app**: this process (making, pickling and sending the tasks, receiving the results);
* **master**, **slave**: the two node processes;
* **workers**: the slave's worker processes together.

With ``--page`` the master serves its dashboard and a separate process does what an open
dashboard page does (follows ``/api/events``, fetches ``/api/history`` every 2 s and the task
stream's new tasks every second), so the master's µs per task with a page open can be set beside
those without one.

Per-process CPU is what guided the work in benchmarks/README.md: tasks/s on a shared 2-core
machine wobbles by a fifth from run to run, CPU time per task much less. Linux only (``/proc``).
Nothing is asserted: the script fails only when a result is wrong.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import taskswarm as ts
from procs import descendants

PROCESSES = ("app", "master", "slave", "workers")


def noop(x: Any) -> Any:
    return x


def length(data: bytes) -> int:
    return len(data)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(cluster: ts.LocalCluster) -> dict[str, float]:
    assert cluster.master_process is not None
    slave = cluster.slave_processes[0].pid
    return {
        "app": cpu_seconds(os.getpid()),
        "master": cpu_seconds(cluster.master_process.pid),
        "slave": cpu_seconds(slave),
        "workers": sum(cpu_seconds(p) for p in descendants(slave)),
    }


def watch(url: str, stop: Any) -> None:
    """What an open dashboard page asks of the master, until ``stop`` is set (run in a process
    of its own, so its CPU is counted nowhere above)."""

    def follow_events() -> None:
        with urllib.request.urlopen(url + "/api/events", timeout=30) as events:
            while not stop.is_set() and events.readline():
                pass

    threading.Thread(target=follow_events, daemon=True).start()
    last, rounds = 0, 0
    while not stop.wait(1.0):
        with urllib.request.urlopen(f"{url}/api/stream?after={last}", timeout=30) as answer:
            last = json.load(answer)["last"]
        rounds += 1
        if rounds % 2 == 0:
            with urllib.request.urlopen(url + "/api/history", timeout=30) as answer:
                json.load(answer)


def one_run(
    app: ts.Application, cluster: ts.LocalCluster, n: int, arg_bytes: int
) -> dict[str, float]:
    before = snapshot(cluster)
    start = time.perf_counter()
    if arg_bytes:
        data = bytes(arg_bytes)
        futures = app.push_tasks(ts.FunctionTask(length, data) for _ in range(n))
        expected = [arg_bytes] * n
    else:
        futures = app.push_tasks(ts.FunctionTask(noop, i) for i in range(n))
        expected = list(range(n))
    done, not_done = concurrent.futures.wait(futures, timeout=60 + n / 1000)
    elapsed = time.perf_counter() - start
    after = snapshot(cluster)
    if not_done or sorted(f.result() for f in done) != expected:
        raise RuntimeError(f"{len(not_done)} of {n} tasks did not come back right")
    row = {name: (after[name] - before[name]) / n * 1e6 for name in PROCESSES}
    row["tasks/s"] = n / elapsed
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40_000, help="tasks per run (40,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs; medians shown (3)")
    parser.add_argument("--scheduler", default="push", help="push or pull (push)")
    parser.add_argument(
        "--durable", action="store_true", help="give the master a journal (a state directory)"
    )
    parser.add_argument(
        "--arg-bytes",
        type=int,
        default=0,
        help="give every task a bytes argument this long and have it return the length"
        " (0: no-op tasks)",
    )
    parser.add_argument(
        "--page",
        action="store_true",
        help="serve the dashboard and keep a page's requests going (another process)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="taskswarm-cost-") as state:
        cluster = ts.LocalCluster(
            slaves=1,
            workers=2,
            scheduler=args.scheduler,
            state_dir=state if args.durable else None,
            dashboard="127.0.0.1:0" if args.page else None,
        )
        with cluster, cluster.connect() as app:
            for future in app.push_tasks(ts.FunctionTask(noop, i) for i in range(2000)):
                future.result(timeout=60)
            page, stop = None, multiprocessing.get_context("spawn").Event()
            if args.page:
                url = app.status()["master"]["dashboard"]
                page = multiprocessing.get_context("spawn").Process(target=watch, args=(url, stop))
                page.start()
            try:
                rows = [
                    one_run(app, cluster, args.tasks, args.arg_bytes) for _ in range(args.repeats)
                ]
            finally:
                stop.set()
                if page is not None:
                    page.join(timeout=10)
                    if page.is_alive():
                        page.kill()
                        page.join()
    medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    total = sum(medians[name] for name in PROCESSES)
    print(
        f"{args.tasks:,} {f'{args.arg_bytes:,}-byte-argument' if args.arg_bytes else 'no-op'}"
        f" tasks, LocalCluster(slaves=1, workers=2, {args.scheduler})"
        f"{', durable' if args.durable else ''}{', a dashboard page open' if args.page else ''}"
        f"; median of {args.repeats}"
    )
    print("| tasks/s | " + " | ".join(f"{p} µs" for p in PROCESSES) + " | total µs |")
    print("|--:|" + "--:|" * (len(PROCESSES) + 1))
    cells = " | ".join(f"{medians[p]:.1f}" for p in PROCESSES)
    print(f"| {medians['tasks/s']:,.0f} | {cells} | {total:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
