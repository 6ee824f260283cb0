"""Throughput and round-trip latency: taskswarm's LocalCluster beside multiprocessing.Pool.

Run it as ``python benchmarks/throughput.py`` (``make bench``); ``--help`` lists the options.

What it measures, for ``LocalCluster(slaves=1, workers=2)`` and ``multiprocessing.Pool(2)`` in
the same run, on the same machine:

* **throughput**: no-op tasks per second over ``--tasks`` tasks (default 20,000), counted from
  before the first task is created to the moment the last result is in;
* **round trip**: ``--round-trips`` (default 1,000) sequential submit-and-wait calls, p50 and
  p99 in milliseconds;
* **start-up**: seconds from creating the cluster (or pool) to the first result, measured once
  and never counted in the other numbers (both stay alive across repeats, after a warm-up).

The frameworks alternate inside each repeat, and which one goes first alternates between repeats,
so a burst of noise from a neighbour on a shared box hits both alike. Each number shown is the
median over ``--repeats`` runs; the ratios compare those medians. Nothing here asserts a timing:
the script fails (exit code 1) only when a task fails or a result is wrong.

The Pool's main row uses ``imap_unordered(chunksize=1)``: one task per message, the per-task
comparison that matches taskswarm, which sends tasks in batches but runs and returns each one
by itself. ``Pool.map`` with its default chunksize would group hundreds of tasks per message and
measure something else.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

import taskswarm as ts

CLUSTER = "taskswarm LocalCluster(slaves=1, workers=2)"
POOL = "multiprocessing.Pool(2)"

#: Warm-up tasks run on each framework before anything is timed.
WARM_UP = 200
#: Extra seconds granted on top of what a result wait could reasonably take, before giving up.
WAIT_SLACK = 120.0


def noop(x: Any) -> Any:
    """The workload: returns its argument, so only the framework's own cost is measured."""
    return x


# -- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a framework and a way of sending it tasks."""

    framework: str
    method: str
    throughput: list[float] = field(default_factory=list)  # tasks/s, one per repeat
    p50: list[float] = field(default_factory=list)  # ms, one per repeat
    p99: list[float] = field(default_factory=list)  # ms, one per repeat
    startup: float | None = None  # s, once

    def median(self, name: str) -> float | None:
        values = getattr(self, name)
        return statistics.median(values) if values else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "method": self.method,
            "tasks_per_s": self.throughput,
            "tasks_per_s_median": self.median("throughput"),
            "p50_ms": self.p50,
            "p50_ms_median": self.median("p50"),
            "p99_ms": self.p99,
            "p99_ms_median": self.median("p99"),
            "startup_s": self.startup,
        }


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    """p50 and p99 of the samples (linear interpolation between the closest ranks)."""
    if len(samples_ms) == 1:
        return samples_ms[0], samples_ms[0]
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return cuts[49], cuts[98]


def check_results(name: str, results: list[Any], expected: list[Any]) -> None:
    """A correctness check (not a timing check): every task ran once and returned its input."""
    if sorted(results) != expected:
        missing = len(set(expected) - set(results))
        raise RuntimeError(f"{name}: {len(results)} results, {missing} of the inputs missing")


# -- taskswarm -----------------------------------------------------------------------------------


def result_timeout(n: int) -> float:
    """How long to wait for n no-op results before calling it a hang (1 ms per task, plus slack)."""
    return WAIT_SLACK + n / 1000


def cluster_push_tasks(app: ts.Application, n: int) -> float:
    """tasks/s for one batch of n FunctionTasks sent with push_tasks, waiting for all of them."""
    start = time.perf_counter()
    futures = app.push_tasks([ts.FunctionTask(noop, i) for i in range(n)])
    done, not_done = concurrent.futures.wait(futures, timeout=result_timeout(n))
    elapsed = time.perf_counter() - start
    if not_done:
        raise TimeoutError(f"push_tasks: {len(not_done)} of {n} results still missing")
    check_results("push_tasks", [f.result() for f in futures], list(range(n)))
    return n / elapsed


def cluster_executor_map(app: ts.Application, n: int) -> float:
    """tasks/s for ``list(app.executor().map(noop, range(n)))``."""
    start = time.perf_counter()
    with app.executor() as executor:
        results = list(executor.map(noop, range(n), timeout=result_timeout(n)))
    elapsed = time.perf_counter() - start
    check_results("executor().map", results, list(range(n)))
    return n / elapsed


def cluster_round_trips(app: ts.Application, n: int) -> list[float]:
    """Milliseconds for each of n sequential ``app.submit(noop, i).result()`` calls."""
    samples = []
    for i in range(n):
        start = time.perf_counter()
        result = app.submit(noop, i).result(timeout=WAIT_SLACK)
        samples.append((time.perf_counter() - start) * 1000)
        if result != i:
            raise RuntimeError(f"submit(noop, {i}) returned {result!r}")
    return samples


# -- multiprocessing.Pool ------------------------------------------------------------------------


def pool_imap_unordered(pool: Any, n: int) -> float:
    """tasks/s for ``imap_unordered(noop, range(n), chunksize=1)``."""
    start = time.perf_counter()
    iterator = pool.imap_unordered(noop, range(n), chunksize=1)
    results = [iterator.next(timeout=WAIT_SLACK) for _ in range(n)]
    elapsed = time.perf_counter() - start
    check_results("imap_unordered", results, list(range(n)))
    return n / elapsed


def pool_map_async(pool: Any, n: int) -> float:
    """tasks/s for ``map_async(noop, range(n), chunksize=1)``."""
    start = time.perf_counter()
    results = pool.map_async(noop, range(n), chunksize=1).get(timeout=result_timeout(n))
    elapsed = time.perf_counter() - start
    check_results("map_async", results, list(range(n)))
    return n / elapsed


def pool_round_trips(pool: Any, n: int) -> list[float]:
    """Milliseconds for each of n sequential ``pool.apply(noop, (i,))`` calls."""
    samples = []
    for i in range(n):
        start = time.perf_counter()
        result = pool.apply(noop, (i,))
        samples.append((time.perf_counter() - start) * 1000)
        if result != i:
            raise RuntimeError(f"apply(noop, ({i},)) returned {result!r}")
    return samples


# -- the run -------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Side:
    """One framework as the benchmark drives it: its rows and how to measure each."""

    throughput: list[tuple[Row, Callable[[int], float]]]
    round_trip_row: Row
    round_trips: Callable[[int], list[float]]


def run_repeat(sides: list[Side], tasks: int, round_trips: int) -> None:
    """One repeat: every measurement, alternating the frameworks measurement by measurement."""
    measurements = max(len(side.throughput) for side in sides)
    for index in range(measurements):
        for side in sides:
            if index < len(side.throughput):
                row, measure = side.throughput[index]
                row.throughput.append(measure(tasks))
                progress(f"  {row.framework} {row.method}: {row.throughput[-1]:,.0f} tasks/s")
    for side in sides:
        p50, p99 = percentiles(side.round_trips(round_trips))
        side.round_trip_row.p50.append(p50)
        side.round_trip_row.p99.append(p99)
        name = side.round_trip_row.framework
        progress(f"  {name} round trip: p50 {p50:.3f} ms, p99 {p99:.3f} ms")


def start_cluster() -> tuple[ts.LocalCluster, ts.Application, float]:
    """Start the cluster, connect, and time it up to the first result."""
    start = time.perf_counter()
    cluster = ts.LocalCluster(slaves=1, workers=2)
    try:
        app = cluster.connect()
        app.submit(noop, 0).result(timeout=WAIT_SLACK)
    except BaseException:
        cluster.close()
        raise
    return cluster, app, time.perf_counter() - start


def start_pool() -> tuple[Any, float]:
    """Start the pool and time it up to the first result."""
    start = time.perf_counter()
    pool = multiprocessing.Pool(2)
    try:
        pool.apply(noop, (0,))
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    return pool, time.perf_counter() - start


def benchmark(tasks: int, round_trips: int, repeats: int) -> list[Row]:
    """Run everything; returns the table's rows (main rows first)."""
    cluster_main = Row(CLUSTER, "push_tasks")
    cluster_map = Row(CLUSTER, "executor().map")
    pool_main = Row(POOL, "imap_unordered, chunksize=1")
    pool_map = Row(POOL, "map_async, chunksize=1")
    rows = [cluster_main, pool_main, cluster_map, pool_map]

    cluster = app = pool = None
    try:
        progress(f"starting {CLUSTER} ...")
        cluster, app, cluster_main.startup = start_cluster()
        progress(f"starting {POOL} ...")
        pool, pool_main.startup = start_pool()

        progress(f"warming up ({WARM_UP} tasks each) ...")
        cluster_push_tasks(app, WARM_UP)
        cluster_round_trips(app, min(WARM_UP, 20))
        pool_imap_unordered(pool, WARM_UP)
        pool_round_trips(pool, min(WARM_UP, 20))

        cluster_side = Side(
            throughput=[
                (cluster_main, lambda n: cluster_push_tasks(app, n)),
                (cluster_map, lambda n: cluster_executor_map(app, n)),
            ],
            round_trip_row=cluster_main,
            round_trips=lambda n: cluster_round_trips(app, n),
        )
        pool_side = Side(
            throughput=[
                (pool_main, lambda n: pool_imap_unordered(pool, n)),
                (pool_map, lambda n: pool_map_async(pool, n)),
            ],
            round_trip_row=pool_main,
            round_trips=lambda n: pool_round_trips(pool, n),
        )
        for repeat in range(repeats):
            # Who goes first alternates too, so neither side always runs on a "fresh" machine.
            order = [cluster_side, pool_side] if repeat % 2 == 0 else [pool_side, cluster_side]
            progress(f"repeat {repeat + 1}/{repeats} ...")
            run_repeat(order, tasks, round_trips)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if app is not None:
            app.close()
        if cluster is not None:
            cluster.close()
    return rows


# -- reporting -----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def render(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"no-op tasks: {args.tasks:,} for throughput, {args.round_trips:,} sequential round "
        f"trips; median of {args.repeats} run(s); {os.cpu_count()} CPUs; Python "
        f"{platform.python_version()}, taskswarm {ts.__version__}, pyzmq {zmq.__version__}",
        "",
        "| framework | method | tasks/s (median) | tasks/s (min–max) "
        "| p50 ms | p99 ms | start-up s |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        spread = f"{min(row.throughput):,.0f}–{max(row.throughput):,.0f}" if row.throughput else "—"
        lines.append(
            f"| {row.framework} | {row.method} | {fmt(row.median('throughput'), ',.0f')} "
            f"| {spread} | {fmt(row.median('p50'), '.3f')} | {fmt(row.median('p99'), '.3f')} "
            f"| {fmt(row.startup, '.2f')} |"
        )
    cluster_main, pool_main = rows[0], rows[1]
    throughput_ratio = ratio(cluster_main.median("throughput"), pool_main.median("throughput"))
    p50_ratio = ratio(cluster_main.median("p50"), pool_main.median("p50"))
    lines += [
        "",
        f"taskswarm / Pool (main rows: push_tasks vs imap_unordered chunksize=1): "
        f"throughput {fmt(throughput_ratio, '.3f')}x (higher is better for taskswarm), "
        f"p50 round trip {fmt(p50_ratio, '.2f')}x (lower is better for taskswarm)",
        "",
        "Round trips are sequential submit(...).result() / Pool.apply(...). Start-up runs from "
        "creating the cluster or pool to its first result and is not in the other columns.",
    ]
    return "\n".join(lines)


def write_json(path: str, rows: list[Row], args: argparse.Namespace) -> None:
    cluster_main, pool_main = rows[0], rows[1]
    report = {
        "parameters": {
            "tasks": args.tasks,
            "round_trips": args.round_trips,
            "repeats": args.repeats,
            "warm_up": WARM_UP,
        },
        "environment": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "taskswarm": ts.__version__,
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "cpu_count": os.cpu_count(),
            "start_method": multiprocessing.get_start_method(),
        },
        "rows": [row.as_dict() for row in rows],
        "ratios": {
            "throughput_taskswarm_over_pool": ratio(
                cluster_main.median("throughput"), pool_main.median("throughput")
            ),
            "p50_taskswarm_over_pool": ratio(cluster_main.median("p50"), pool_main.median("p50")),
            "p99_taskswarm_over_pool": ratio(cluster_main.median("p99"), pool_main.median("p99")),
        },
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
        file.write("\n")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Compare taskswarm's LocalCluster(slaves=1, workers=2) with multiprocessing.Pool(2) "
            "in one run: no-op tasks per second and sequential round-trip latency (p50/p99). "
            "Prints a markdown table of medians over several runs; progress goes to stderr."
        ),
    )
    parser.add_argument(
        "--tasks",
        type=positive,
        default=20_000,
        help="no-op tasks per throughput measurement (default: %(default)s)",
    )
    parser.add_argument(
        "--round-trips",
        type=positive,
        default=1_000,
        help="sequential submit-and-wait calls per latency measurement (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=positive,
        default=3,
        help="runs of every measurement; the table shows their median (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="also write the results, with every run's numbers and the versions, as JSON here",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2,000 tasks, 100 round trips, 1 repeat (overrides the three above)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.round_trips, args.repeats = 2_000, 100, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = benchmark(args.tasks, args.round_trips, args.repeats)
    except Exception as exc:  # a failed task or a hang, never a slow timing
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(render(rows, args))
    if args.json:
        write_json(args.json, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
