"""Where a task's time goes: CPU microseconds per no-op task in each process of a LocalCluster.

Run it as ``python benchmarks/cost.py`` (``--help`` lists the options). It starts
``LocalCluster(slaves=1, workers=2)``, warms it up, then pushes ``--tasks`` no-op tasks at once,
``--repeats`` times, and reads from ``/proc`` how much CPU time each process spent meanwhile:

* **app**: this process (making, pickling and sending the tasks, receiving the results);
* **master**, **slave**: the two node processes;
* **workers**: the slave's worker processes together.

Per-process CPU is what guided the work in benchmarks/README.md: tasks/s on a shared 2-core
machine wobbles by a fifth from run to run, CPU time per task much less. Linux only (``/proc``).
Nothing is asserted: the script fails only when a result is wrong.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
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
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="taskswarm-cost-") as state:
        cluster = ts.LocalCluster(
            slaves=1,
            workers=2,
            scheduler=args.scheduler,
            state_dir=state if args.durable else None,
        )
        with cluster, cluster.connect() as app:
            for future in app.push_tasks(ts.FunctionTask(noop, i) for i in range(2000)):
                future.result(timeout=60)
            rows = [one_run(app, cluster, args.tasks, args.arg_bytes) for _ in range(args.repeats)]
    medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    total = sum(medians[name] for name in PROCESSES)
    print(
        f"{args.tasks:,} {f'{args.arg_bytes:,}-byte-argument' if args.arg_bytes else 'no-op'}"
        f" tasks, LocalCluster(slaves=1, workers=2, {args.scheduler})"
        f"{', durable' if args.durable else ''}; median of {args.repeats}"
    )
    print("| tasks/s | " + " | ".join(f"{p} µs" for p in PROCESSES) + " | total µs |")
    print("|--:|" + "--:|" * (len(PROCESSES) + 1))
    cells = " | ".join(f"{medians[p]:.1f}" for p in PROCESSES)
    print(f"| {medians['tasks/s']:,.0f} | {cells} | {total:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
