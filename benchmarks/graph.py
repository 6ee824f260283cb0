"""A task graph beside Dask and Ray: a tree reduction of NumPy arrays, and what it moved.

    python benchmarks/graph.py [--leaves 256] [--mib 4] [--repeats 3] [--frameworks ...]

Each leaf task makes an array of ``--mib`` MiB (``np.full``); pairs are summed, level by level,
until one array is left, every sum taking its two inputs as Futures (Dask ``client.submit``
with futures, Ray ``ObjectRef``s, taskswarm ``app.submit`` with Futures). The whole graph is
submitted at once and only the root is waited for. 2 workers each, on this machine:

* ``taskswarm``: ``LocalCluster(slaves=1, workers=2)`` as it comes (big results through shared
  memory on one host);
* ``taskswarm-noshm``: ``LocalCluster(slaves=2, workers=1, shared_memory=False)``, as between
  hosts: big results stay on the slave that made them, and a sum whose inputs are on the
  other slave fetches them from it directly;
* ``dask``: ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)``;
* ``ray``: ``ray.init(num_cpus=2)``.

Measured for each: wall time from the first submit to the root's value (median of
``--repeats``), and for taskswarm the bytes of every message into and out of the master
during the run (its ``wire_bytes`` measure), against the bytes the tasks produced (every
leaf's and every sum's result). Each measurement runs in a fresh driver process of its own
(``--driver NAME``), after the framework has started and run one small graph; the frameworks
take turns within each repetition, in the reverse order every other one, so a noisy minute
hits all alike. Nothing here asserts a timing; the exit code is 1 when a result is wrong or a
driver fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

FRAMEWORKS = ("taskswarm", "taskswarm-noshm", "dask", "ray")


def make(i: int, n: int) -> Any:
    import numpy as np

    return np.full(n, float(i))


def add(a: Any, b: Any) -> Any:
    return a + b


def expected(leaves: int) -> float:
    return float(sum(range(leaves)))


# -- one framework, in its own process ---------------------------------------------------------


def run_taskswarm(leaves: int, n: int, shared: bool) -> dict[str, Any]:
    import taskswarm as ts

    def reduce(app: Any, count: int) -> tuple[Any, float]:
        start = time.perf_counter()
        level = [app.submit(make, i, n) for i in range(count)]
        while len(level) > 1:
            level = [app.submit(add, level[i], level[i + 1]) for i in range(0, len(level), 2)]
        value = level[0].result(timeout=600)
        return value, time.perf_counter() - start

    def through_master(app: Any) -> float:
        return sum(s["sum"] for s in app.status()["stats"] if s["name"] == "wire_bytes")

    # Without shared memory, two slaves of one worker each, as two hosts would be: big results
    # stay on the slave that made them, and a sum fetches an input the other slave keeps.
    slaves, workers = (1, 2) if shared else (2, 1)
    with ts.LocalCluster(slaves=slaves, workers=workers, shared_memory=shared) as cluster:
        with cluster.connect() as app:
            reduce(app, 4)  # warm: workers started, code shipped
            before = through_master(app)
            value, seconds = reduce(app, leaves)
            moved = through_master(app) - before
    return {"seconds": seconds, "root": float(value[0]), "master_bytes": moved}


def run_dask(leaves: int, n: int) -> dict[str, Any]:
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.worker.memory.target": False})
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):

        def reduce(count: int) -> tuple[Any, float]:
            start = time.perf_counter()
            level = [client.submit(make, i, n, pure=False) for i in range(count)]
            while len(level) > 1:
                level = [
                    client.submit(add, level[i], level[i + 1], pure=False)
                    for i in range(0, len(level), 2)
                ]
            value = level[0].result(timeout=600)
            return value, time.perf_counter() - start

        reduce(4)
        value, seconds = reduce(leaves)
    return {"seconds": seconds, "root": float(value[0])}


def run_ray(leaves: int, n: int) -> dict[str, Any]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        remote_make, remote_add = ray.remote(make), ray.remote(add)

        def reduce(count: int) -> tuple[Any, float]:
            start = time.perf_counter()
            level = [remote_make.remote(i, n) for i in range(count)]
            while len(level) > 1:
                level = [remote_add.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            value = ray.get(level[0], timeout=600)
            return value, time.perf_counter() - start

        reduce(4)
        value, seconds = reduce(leaves)
    finally:
        ray.shutdown()
    return {"seconds": seconds, "root": float(value[0])}


def drive(name: str, leaves: int, mib: float) -> dict[str, Any]:
    n = int(mib * (1 << 20)) // 8  # float64
    if name == "taskswarm":
        return run_taskswarm(leaves, n, True)
    if name == "taskswarm-noshm":
        return run_taskswarm(leaves, n, False)
    if name == "dask":
        return run_dask(leaves, n)
    if name == "ray":
        return run_ray(leaves, n)
    raise SystemExit(f"unknown framework {name!r}; choose from {', '.join(FRAMEWORKS)}")


# -- the orchestrator ------------------------------------------------------------------------------


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--driver", name, "--leaves", str(args.leaves)]
    command += ["--mib", str(args.mib)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.deadline, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {args.deadline:g}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1])
    if result["root"] != expected(args.leaves):
        result["error"] = f"wrong root value {result['root']}, expected {expected(args.leaves)}"
    return result


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> bool:
    produced = (2 * args.leaves - 1) * args.mib * (1 << 20)
    print(
        f"\ntree reduction: {args.leaves} leaves of {args.mib:g} MiB, {2 * args.leaves - 1} tasks, "
        f"{produced / (1 << 20):,.0f} MiB of results produced; 2 workers each; median of "
        f"{args.repeats}; {os.cpu_count()} CPUs\n"
    )
    print("| framework | seconds (median) | min–max | × dask | × ray | through the master | note |")
    print("|---|--:|--:|--:|--:|--:|---|")
    medians = {
        name: statistics.median(r["seconds"] for r in rows)
        for name, rows in runs.items()
        if rows and all("error" not in r for r in rows)
    }
    ok = True
    for name, rows in runs.items():
        errors = [r["error"] for r in rows if "error" in r]
        if errors or not rows:
            ok = ok and not name.startswith("taskswarm")
            print(f"| {name} | – | – | – | – | – | {errors[0] if errors else 'not run'} |")
            continue
        seconds = [r["seconds"] for r in rows]
        median = medians[name]
        versus = [
            f"{median / medians[peer]:.2f}" if peer in medians else "–" for peer in ("dask", "ray")
        ]
        moved = [r["master_bytes"] for r in rows if "master_bytes" in r]
        share = f"{statistics.median(moved) / produced:.2%} of produced" if moved else "–"
        print(
            f"| {name} | {median:.2f} | {min(seconds):.2f}–{max(seconds):.2f} | "
            f"{versus[0]} | {versus[1]} | {share} | |"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=256, help="leaf tasks (a power of 2; 256)")
    parser.add_argument("--mib", type=float, default=4.0, help="MiB per array (4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, medians shown (3)")
    parser.add_argument(
        "--frameworks", default=",".join(FRAMEWORKS), help=f"of {', '.join(FRAMEWORKS)}"
    )
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per run (600)")
    parser.add_argument("--json", help="write every run's figures to this file")
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.leaves < 2 or args.leaves & (args.leaves - 1):
        parser.error("--leaves must be a power of 2, at least 2")
    if args.driver:
        print(json.dumps(drive(args.driver, args.leaves, args.mib)), flush=True)
        return 0
    names = [name.strip() for name in args.frameworks.split(",") if name.strip()]
    unknown = set(names) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"unknown frameworks: {', '.join(sorted(unknown))}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            result = measure(name, args)
            runs[name].append(result)
            shown = result.get("error") or f"{result['seconds']:.2f}s"
            print(f"run {repeat + 1}/{args.repeats} {name}: {shown}", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "runs": runs}, out, indent=1)
    return 0 if report(runs, args) else 1


if __name__ == "__main__":
    sys.exit(main())
