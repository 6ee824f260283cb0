"""How long a LocalCluster takes to be ready for its first task, and where that time goes.

One run: ``LocalCluster(slaves=2, workers=1)`` entered, a connection made, and
``app.submit(pow, 2, 10).result()`` returned; the clock runs from the first to the last. The
phases come from the cluster's own record of its start (``LocalCluster.startup``: when the
master listened, when every slave's workers were started, when every slave was registered),
then this script's: the constructor returned, the application connected, the first result came.
Each is in seconds from ``LocalCluster(...)`` entered, the last node to reach it.

An untimed run comes first (``--warmup``): it imports the application side of taskswarm (a
program has imported it before it starts a cluster) and warms the disk cache, which the first
cluster of a cold machine pays and no later one does. No timing is asserted anywhere.

    .venv/bin/python benchmarks/startup.py                  # 5 runs, medians, min, max
    .venv/bin/python benchmarks/startup.py --runs 9 --tcp --json /tmp/startup.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import taskswarm as ts

#: The phases in the order a start reaches them, and what each means.
PHASES = {
    "master listening": "the master is bound (it listens; it answers once it serves)",
    "workers started": "every slave's worker processes exist",
    "slaves registered": "every slave is welcomed by the master, its workers started",
    "cluster returned": "LocalCluster(...) returned",
    "connected": "cluster.connect() returned",
    "first result": "app.submit(pow, 2, 10).result() returned: the figure that counts",
}


def one_run(slaves: int, workers: int, ipc: bool) -> dict[str, float]:
    """The phases of one start, in seconds from LocalCluster(...) entered."""
    entered = time.monotonic()
    with ts.LocalCluster(slaves=slaves, workers=workers, ipc=ipc) as cluster:
        returned = time.monotonic()
        with cluster.connect() as app:
            connected = time.monotonic()
            result = app.submit(pow, 2, 10).result(timeout=60)
            first = time.monotonic()
        phases = dict(getattr(cluster, "startup", {}))  # absent before it was recorded
    if result != 1024:
        raise SystemExit(f"wrong result: {result!r}")
    phases["cluster returned"] = returned - entered
    phases["connected"] = connected - entered
    phases["first result"] = first - entered
    return phases


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    table = {}
    for phase in PHASES:
        values = [run[phase] for run in runs if phase in run]
        if values:
            table[phase] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return table


def print_table(table: dict[str, dict[str, float]], runs: int, args: argparse.Namespace) -> None:
    transport = "loopback TCP" if args.tcp else "a Unix socket"
    print(
        f"\nLocalCluster(slaves={args.slaves}, workers={args.workers}) over {transport}: "
        f"seconds from LocalCluster(...) entered; median of {runs} (min-max)\n"
    )
    print("| phase | median s | min s | max s | what |")
    print("|---|--:|--:|--:|---|")
    before = 0.0
    for phase, figures in table.items():
        step = figures["median"] - before
        before = figures["median"]
        print(
            f"| {phase} | {figures['median']:.3f} | {figures['min']:.3f} | "
            f"{figures['max']:.3f} | {PHASES[phase]} (+{step * 1000:.0f} ms) |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--slaves", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tcp", action="store_true", help="loopback TCP instead of ipc://")
    parser.add_argument("--json", metavar="PATH", help="write every run's phases here")
    args = parser.parse_args(argv)

    for _ in range(args.warmup):
        one_run(args.slaves, args.workers, not args.tcp)
    runs = []
    for i in range(args.runs):
        phases = one_run(args.slaves, args.workers, not args.tcp)
        runs.append(phases)
        print(f"run {i + 1}: first result after {phases['first result']:.3f} s", flush=True)
    table = summary(runs)
    print_table(table, len(runs), args)
    if args.json:
        record: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "slaves": args.slaves,
            "workers": args.workers,
            "transport": "tcp" if args.tcp else "ipc",
            "runs": runs,
            "summary": table,
        }
        with open(args.json, "w") as out:
            json.dump(record, out, indent=2)


if __name__ == "__main__":
    main()
