"""How well each schedule strategy shares uneven work among unequal slaves, and what a decision
costs the master as the cluster grows.

Run it as ``python benchmarks/scheduling.py`` (``--help`` lists the options; the default size
takes 4 to 7 minutes on a 2-core machine, ``--tasks 60 --repeats 1 --sim-repeats 1`` under
a minute). Linux only, with at least 2 CPUs (CPU affinity, ``/proc``). Two parts:

* **heterogeneous** (a real ``LocalCluster`` for every strategy, stealing on and off): slave A
  has 1 worker, slave B 3. A and everything below it are pinned to one CPU, B and everything
  below it to another, and a busy loop shares A's CPU, so A's worker runs at half speed: 1.5
  cores in all, two thirds of them behind B. Nothing tells the master so: every worker looks
  alike until tasks come back. Tasks of skewed lengths (90 % ~10 ms, 9 % ~50 ms, 1 % ~300 ms of
  pure Python, shuffled with a fixed seed) are submitted at once, after a short warm-up. The
  lower bound on the makespan is max(work / 1.5 cores, longest task); a strategy that hands A a
  share by worker count, or a pipeline A cannot get through, leaves B idle at the end while A
  finishes, and stealing is there to take those tasks back. Per row: makespan (submit to last
  result), its ratio to the bound, idle worker-time per slave (each task reports its worker's
  pid and its start and end on CLOCK_MONOTONIC, which is system wide on Linux), where the tasks
  ran and how many the master took back from each slave (``stolen``). "Half a core" is only
  roughly so (the kernel favours a worker that sleeps now and then over the hog, and a shared
  virtual machine's speed drifts), so each run also measures the cores each slave's CPU
  delivered while it had work, and gives the makespan over the bound at those speeds
  (``measured ratio``): the fairer of the two ratios.
* **simulated** (in this process, no sockets): the push scheduler and each strategy given 10 to
  10,000 slave records of 4 workers, a queue that never runs dry, and a random handful of
  completions between two dispatches, as the master's loop sees them: decisions (tasks
  assigned) per second of ``dispatch`` + ``take_outboxes``. A strategy that scans the slaves
  for each task shows as a drop from 10 to 10,000 slaves; the ready-set and heap designs should
  stay within 2x.

Work is in core-seconds: the spin loop is calibrated once, in this process, before anything
else runs. Runs alternate (the order reverses every other repetition) so drift in the
machine's speed does not land on one row only; tables show medians. Nothing is asserted about
timings: the exit code is 1 only when a result is wrong (a task lost, failed, or run by a
process of neither slave; a simulated decision that broke the scheduler's bookkeeping), 130 on
Ctrl-C or SIGTERM, and every process started here is gone either way.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import taskswarm as ts
from procs import descendants
from taskswarm.scheduling.push import PushScheduler
from taskswarm.scheduling.records import NodeState, SlaveRecord, TaskRecord
from taskswarm.scheduling.strategies import (
    LoadStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    ThroughputStrategy,
    TwoChoicesStrategy,
)

STRATEGIES: dict[str, type] = {
    "load": LoadStrategy,
    "round-robin": RoundRobinStrategy,
    "random": RandomStrategy,
    "two-choices": TwoChoicesStrategy,
    "throughput": ThroughputStrategy,
}
#: (share of the tasks, seconds of one core) of each kind of task in the heterogeneous part.
MIX = ((0.90, 0.010), (0.09, 0.050), (0.01, 0.300))
#: Workers of slave A and slave B.
SHAPE = (1, 3)
#: Cores the two slaves have between them: A's half (the hog takes the other) and B's one.
CAPACITY = 1.5
WARM_UP_TASKS = 16
WARM_UP_SECONDS = 0.001
SEED = 20261126


# -- the work ----------------------------------------------------------------------------------


def spin(count: int) -> int:
    """Pure-Python work that holds the GIL: ``count`` loop turns."""
    total = 0
    for i in range(count):
        total = (total + i * i) % 1_000_003
    return total


def timed_spin(count: int) -> tuple[int, float, float]:
    """The task: spin, and say which process ran it, from when to when (CLOCK_MONOTONIC)."""
    start = time.monotonic()
    spin(count)
    return os.getpid(), start, time.monotonic()


def calibrate(seconds: float = 0.5) -> float:
    """Spin loop turns per second of one core: the best of many short tries over ``seconds``
    (the least disturbed: a shared virtual machine's speed here swings by a third)."""
    spin(50_000)
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        spin(100_000)
        best = min(best, time.perf_counter() - start)
    return 100_000 / best


def workload(count: int, seed: int, order: str = "shuffled") -> list[float]:
    """Task lengths in core-seconds: ``MIX`` in exact proportions, shuffled by ``seed``; with
    ``order="long-last"``, sorted shortest first, so the long tasks are the last ones handed
    out and end up queued behind one another on whichever slave took them (what stealing is
    for)."""
    lengths: list[float] = []
    for share, seconds in MIX[1:]:
        lengths += [seconds] * int(count * share + 0.5)
    lengths += [MIX[0][1]] * max(0, count - len(lengths))
    random.Random(seed).shuffle(lengths)
    if order == "long-last":
        lengths.sort()
    return lengths[:count]


# -- processes ---------------------------------------------------------------------------------


def hog(parent: int) -> None:
    """A busy loop that shares slave A's CPU; it ends with its parent, however that ends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it quietly
    while os.getppid() == parent:
        for _ in range(200_000):
            pass


@contextlib.contextmanager
def hog_on(cpu: int) -> Iterator[multiprocessing.process.BaseProcess]:
    """A hog pinned to ``cpu`` for the duration; killed and reaped whatever happens."""
    # Forked before any cluster (or ZeroMQ context) exists here, so it carries nothing along;
    # a fork also keeps this script's path in its command line (the smoke test looks for it).
    process = multiprocessing.get_context("fork").Process(
        target=hog, args=(os.getpid(),), name="scheduling-hog", daemon=True
    )
    process.start()
    try:
        os.sched_setaffinity(process.pid or 0, {cpu})
        yield process
    finally:
        process.kill()
        process.join()


def pin(pid: int, cpu: int) -> list[int]:
    """Pin ``pid`` and every process below it to ``cpu``; returns those found wrongly pinned.

    Twice: a worker forked between reading the tree and pinning its parent would keep the old
    mask. Processes forked later inherit the pin from their (pinned) parent.
    """
    for _ in range(2):
        for process in (pid, *descendants(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(process, {cpu})
    wrong = []
    for process in (pid, *descendants(pid)):
        with contextlib.suppress(ProcessLookupError):
            if os.sched_getaffinity(process) != {cpu}:
                wrong.append(process)
    return wrong


def interrupted(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` and ``with`` stops what it started."""
    raise KeyboardInterrupt


# -- part 1: a real, unequal cluster -----------------------------------------------------------


@dataclass
class Scenario:
    strategy: str
    stealing: bool
    lengths: list[float]  # core-seconds per task
    loops: list[int]  # spin loop turns per task
    cpus: tuple[int, int]
    timeout: float


@dataclass
class RunResult:
    strategy: str
    stealing: bool
    makespan: float = 0.0
    tasks: dict[str, int] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)  # worker-seconds
    empty: dict[str, float] = field(default_factory=dict)  # seconds with nothing running
    stolen: dict[str, int] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)  # cores delivered while busy
    bound: float = 0.0  # the lower bound at those speeds
    owners: dict[int, str] = field(default_factory=dict)  # worker pid -> slave
    problems: list[str] = field(default_factory=list)


def stolen_from(status: dict, pids: dict[int, str]) -> dict[str, int]:
    """Tasks the master took back from each slave so far, by name (A, B)."""
    counts = dict.fromkeys(pids.values(), 0)
    for summary in status["slaves"]:
        name = pids.get(summary.get("pid", 0))
        if name is not None:
            counts[name] += int(summary.get("stolen", 0))
    return counts


def warm_up(app: ts.Application, loops_per_s: float) -> None:
    count = int(loops_per_s * WARM_UP_SECONDS)
    for future in app.push_tasks(ts.FunctionTask(timed_spin, count) for _ in range(WARM_UP_TASKS)):
        future.result(timeout=60)


def heterogeneous_run(scenario: Scenario, loops_per_s: float) -> RunResult:
    """One LocalCluster of slaves A and B, pinned; every task submitted at once."""
    result = RunResult(scenario.strategy, scenario.stealing)
    with ts.LocalCluster(
        slaves=1, workers=SHAPE[0], strategy=scenario.strategy, stealing=scenario.stealing
    ) as cluster:
        cluster.add_slave(SHAPE[1])
        slaves = {"A": cluster.slave_processes[0].pid, "B": cluster.slave_processes[1].pid}
        app = cluster.connect()
        for name, cpu in zip("AB", scenario.cpus, strict=True):
            pin(slaves[name], cpu)
        warm_up(app, loops_per_s)
        for name, cpu in zip("AB", scenario.cpus, strict=True):
            if wrong := pin(slaves[name], cpu):
                result.problems.append(f"slave {name}: processes {wrong} not pinned to CPU {cpu}")
        by_pid = {pid: name for name, pid in slaves.items()}
        before = stolen_from(app.status(), by_pid)
        start = time.monotonic()
        futures = app.push_tasks(ts.FunctionTask(timed_spin, n) for n in scenario.loops)
        _, not_done = concurrent.futures.wait(futures, timeout=scenario.timeout)
        result.makespan = time.monotonic() - start
        after = stolen_from(app.status(), by_pid)
        result.stolen = {name: after[name] - before[name] for name in after}
        result.owners = {w: name for name, pid in slaves.items() for w in descendants(pid)}
    if not_done:
        result.problems.append(f"{len(not_done)} of {len(futures)} tasks never came back")
    account(result, futures, scenario, start)
    return result


def account(
    result: RunResult, futures: list[concurrent.futures.Future], scenario: Scenario, start: float
) -> None:
    """Tasks, busy and idle time and speed per slave, from what each task reported."""
    spans: dict[str, list[tuple[float, float]]] = {name: [] for name in "AB"}
    work = dict.fromkeys("AB", 0.0)
    for future, length in zip(futures, scenario.lengths, strict=True):
        if not future.done():
            continue  # counted as lost already
        if future.exception() is not None:
            result.problems.append(f"a task failed: {future.exception()!r}")
            continue
        pid, began, ended = future.result()
        name = result.owners.get(pid)
        if name is None:
            result.problems.append(f"a task ran in process {pid}, under neither slave")
            continue
        spans[name].append((began, ended))
        work[name] += length
    for name, workers in zip("AB", SHAPE, strict=True):
        result.tasks[name] = len(spans[name])
        result.busy[name] = sum(end - begin for begin, end in spans[name])
        result.idle[name] = max(0.0, result.makespan * workers - result.busy[name])
        running = covered(spans[name], start)
        result.empty[name] = max(0.0, result.makespan - running)
        # Each slave has one CPU: while any of its workers ran, that CPU delivered this many
        # cores (A's share next to the hog, less whatever else ran there).
        result.speed[name] = work[name] / running if running else 0.0
    result.bound = measured_bound(scenario.lengths, result.speed)


def measured_bound(lengths: list[float], speed: dict[str, float]) -> float:
    """The lower bound at the speeds the slaves showed: the calibration and the hog's share are
    both approximate (the kernel favours a worker that sleeps now and then over the hog, and a
    virtual machine's speed drifts), so the nominal bound is checked against this one."""
    cores = sum(speed.values())
    if not cores or not lengths:
        return 0.0
    return max(sum(lengths) / cores, max(lengths) / max(speed.values()))


def covered(spans: list[tuple[float, float]], start: float) -> float:
    """Seconds after ``start`` during which at least one of ``spans`` was running."""
    total, reach = 0.0, start
    for begin, end in sorted(spans):
        begin = max(begin, reach)
        if end > begin:
            total += end - begin
            reach = end
    return total


def heterogeneous(args: argparse.Namespace, loops_per_s: float) -> list[RunResult]:
    """Every strategy x stealing, ``--repeats`` times, the order reversing every other time."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    lengths = workload(args.tasks, args.seed, args.order)
    loops = [max(1, int(seconds * loops_per_s)) for seconds in lengths]
    bound = max(sum(lengths) / CAPACITY, max(lengths, default=0.0))
    combos = [(s, st) for s in args.strategies for st in args.stealing]
    results: list[RunResult] = []
    with hog_on(cpus[0]):
        for repeat in range(args.repeats):
            order = combos if repeat % 2 == 0 else combos[::-1]
            for number, (strategy, stealing) in enumerate(order, 1):
                scenario = Scenario(
                    strategy, stealing, lengths, loops, (cpus[0], cpus[1]), 60 + 20 * bound
                )
                result = heterogeneous_run(scenario, loops_per_s)
                results.append(result)
                log(
                    f"heterogeneous {repeat + 1}/{args.repeats} {number}/{len(order)}: "
                    f"{strategy}, stealing {on_off(stealing)}: {result.makespan:.2f} s "
                    f"({result.makespan / bound:.2f} x bound, "
                    f"{result.makespan / result.bound if result.bound else 0:.2f} x measured; "
                    f"cores {result.speed.get('A', 0):.2f}+{result.speed.get('B', 0):.2f}), "
                    f"tasks A/B {result.tasks.get('A', 0)}/{result.tasks.get('B', 0)}"
                    + "".join(f"; {p}" for p in result.problems)
                )
    return results


def heterogeneous_rows(results: list[RunResult], bound: float) -> list[dict[str, Any]]:
    """One row per strategy x stealing, medians over its runs, in the order first run."""
    groups: dict[tuple[str, bool], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.strategy, result.stealing), []).append(result)
    rows = []
    for (strategy, stealing), runs in groups.items():
        makespan = statistics.median(r.makespan for r in runs)
        row: dict[str, Any] = {
            "strategy": strategy,
            "stealing": stealing,
            "runs": len(runs),
            "makespan_s": makespan,
            "lower_bound_s": bound,
            "ratio": statistics.median(r.makespan / bound for r in runs),
            "measured_bound_s": statistics.median(r.bound for r in runs),
            "measured_ratio": statistics.median(
                [r.makespan / r.bound for r in runs if r.bound] or [0.0]
            ),
        }
        for name, workers in zip("AB", SHAPE, strict=True):
            idle = statistics.median(r.idle[name] for r in runs)
            row[f"idle_{name}_s"] = idle
            row[f"idle_{name}_pct"] = 100 * statistics.median(
                r.idle[name] / (r.makespan * workers) for r in runs
            )
            row[f"empty_{name}_s"] = statistics.median(r.empty[name] for r in runs)
            row[f"speed_{name}"] = statistics.median(r.speed[name] for r in runs)
            row[f"tasks_{name}"] = statistics.median_low(r.tasks[name] for r in runs)
            row[f"stolen_{name}"] = statistics.median_low(r.stolen.get(name, 0) for r in runs)
        rows.append(row)
    return rows


def print_heterogeneous(
    rows: list[dict[str, Any]], lengths: list[float], repeats: int, order: str
) -> None:
    counts = [sum(1 for x in lengths if x == seconds) for _, seconds in MIX]
    mix = ", ".join(f"{n} x {s * 1000:.0f} ms" for n, (_, s) in zip(counts, MIX, strict=True))
    print(
        f"\n### heterogeneous: slave A 1 worker at half a core, slave B 3 workers on one core"
        f"\n\n{len(lengths)} tasks ({mix}; {sum(lengths):.2f} core-s, longest "
        f"{max(lengths, default=0) * 1000:.0f} ms, {order}), submitted at once;"
        f" capacity {CAPACITY} cores;"
        f" median of {repeats}. lower bound: max(work / {CAPACITY} cores, longest task)."
        " cores A+B: what each slave's CPU delivered while it had a task running (the work it"
        " did / that time); measured ratio: the makespan over the bound at those speeds."
        " idle: worker-seconds with no task, and % of that slave's worker-time.\n"
    )
    print(
        "| strategy | stealing | makespan s | lower bound s | ratio | cores A+B "
        "| measured ratio | idle A | idle B | tasks A/B | stolen A/B |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        print(
            f"| {row['strategy']} | {on_off(row['stealing'])} | {row['makespan_s']:.2f} "
            f"| {row['lower_bound_s']:.2f} | {row['ratio']:.2f} "
            f"| {row['speed_A']:.2f}+{row['speed_B']:.2f} | {row['measured_ratio']:.2f} "
            f"| {row['idle_A_s']:.2f} s ({row['idle_A_pct']:.0f} %) "
            f"| {row['idle_B_s']:.2f} s ({row['idle_B_pct']:.0f} %) "
            f"| {row['tasks_A']}/{row['tasks_B']} | {row['stolen_A']}/{row['stolen_B']} |"
        )
    sys.stdout.flush()  # before the next part's progress lines on stderr


# -- part 2: the master's decisions, simulated --------------------------------------------------


class Simulation:
    """A PushScheduler with ``slaves`` records of 4 workers and a queue that never runs dry."""

    def __init__(self, strategy: type, slaves: int, seed: int, backlog: int = 1000) -> None:
        self.random = random.Random(seed)
        self.scheduler = PushScheduler(strategy(), prefetch=2)
        self.scheduler.setup(None)
        for i in range(slaves):
            record = SlaveRecord(f"slave-{i}", b"slave-%d" % i, workers=4, state=NodeState.ACTIVE)
            record.pace = self.random.uniform(0.005, 0.02)  # what `throughput` rates by
            self.scheduler.add_slave(record)
        self.running: list[tuple[str, str]] = []  # (slave id, task id) in flight
        self.pushed = self.finished = 0
        self.problems: list[str] = []
        self.push(slaves * 4 * 2 + backlog)
        self.dispatch()  # the first fill is not what a running master does: not measured

    def push(self, count: int) -> None:
        for _ in range(count):
            self.scheduler.push_task(TaskRecord(str(self.pushed), b"", "client"))
            self.pushed += 1

    def dispatch(self) -> tuple[int, float]:
        """One dispatch, timed with the outboxes taken; returns (tasks assigned, seconds)."""
        start = time.perf_counter()
        self.scheduler.dispatch()
        batches = self.scheduler.take_outboxes()
        elapsed = time.perf_counter() - start
        assigned = 0
        for slave, tasks in batches:
            self.running.extend((slave.slave_id, task.task_id) for task in tasks)
            assigned += len(tasks)
        return assigned, elapsed

    def finish(self, count: int) -> None:
        """Results for ``count`` tasks in flight, drawn at random."""
        running, draw = self.running, self.random.randrange
        for _ in range(count):
            index = draw(len(running))
            running[index], running[-1] = running[-1], running[index]
            slave_id, task_id = running.pop()
            task = self.scheduler.result_arrived(slave_id, task_id)
            if task is None:
                self.problems.append(f"task {task_id} on {slave_id} was not live")
                continue
            self.scheduler.task_finished(task, None, None)
            self.finished += 1

    def turn(self, batch: int) -> tuple[int, float]:
        """Some results come in, as many new tasks arrive, the master dispatches."""
        count = self.random.randint(1, min(batch, len(self.running)))
        self.finish(count)
        self.push(count)
        assigned, elapsed = self.dispatch()
        if assigned != count:
            self.problems.append(f"{count} slots freed but {assigned} tasks assigned")
        return assigned, elapsed

    def check(self) -> None:
        """The bookkeeping adds up: nothing lost, no slave over its capacity."""
        scheduler = self.scheduler
        held = sum(len(s.in_flight) for s in scheduler.slaves.values())
        if held != len(self.running):
            self.problems.append(f"slaves hold {held} tasks, {len(self.running)} were sent")
        if len(scheduler.queue) + held + self.finished != self.pushed:
            self.problems.append("queued + in flight + finished != pushed")
        if any(scheduler.capacity(s) < 0 for s in scheduler.slaves.values()):
            self.problems.append("a slave holds more than its capacity")


def simulate(strategy: str, slaves: int, decisions: int, batch: int, seed: int) -> dict[str, Any]:
    sim = Simulation(STRATEGIES[strategy], slaves, seed)
    made, seconds, turns = 0, 0.0, 0
    while made < decisions and not sim.problems:
        assigned, elapsed = sim.turn(batch)
        made, seconds, turns = made + assigned, seconds + elapsed, turns + 1
    sim.check()
    return {
        "strategy": strategy,
        "slaves": slaves,
        "decisions": made,
        "turns": turns,
        "seconds": seconds,
        "decisions_per_s": made / seconds if seconds else 0.0,
        "problems": sim.problems[:5],
    }


def simulated(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every strategy x slave count, ``--sim-repeats`` times, the order reversing every other."""
    combos = [(n, s) for n in args.slaves for s in args.strategies]
    runs = []
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)  # as the master's process has it (cli._tune_gc)
    try:
        for repeat in range(args.sim_repeats):
            for slaves, strategy in combos if repeat % 2 == 0 else combos[::-1]:
                run = simulate(strategy, slaves, args.sim_decisions, args.batch, args.seed + repeat)
                run["repeat"] = repeat
                runs.append(run)
                gc.collect()  # the last simulation's garbage is not the next one's cost
            log(f"simulated {repeat + 1}/{args.sim_repeats} done")
    finally:
        gc.set_threshold(*thresholds)
    return runs


def simulated_rows(runs: list[dict[str, Any]], slave_counts: list[int]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        row = rows.setdefault(run["strategy"], {"strategy": run["strategy"], "per_s": {}})
        row["per_s"].setdefault(run["slaves"], []).append(run["decisions_per_s"])
    for row in rows.values():
        row["per_s"] = {n: statistics.median(v) for n, v in row["per_s"].items()}
        first, last = row["per_s"][slave_counts[0]], row["per_s"][slave_counts[-1]]
        row["drop"] = first / last if last else float("inf")
    return list(rows.values())


def print_simulated(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    counts = args.slaves
    print(
        f"\n### simulated master: decisions/s of PushScheduler(prefetch=2), slaves of 4 workers"
        f"\n\n{args.sim_decisions:,} decisions a run after the first fill, 1 to {args.batch}"
        f" results between two dispatches; median of {args.sim_repeats}. drop: decisions/s"
        f" with {counts[0]:,} slaves / with {counts[-1]:,}.\n"
    )
    print(
        "| strategy | "
        + " | ".join(f"{n:,} slaves" for n in counts)
        + f" | drop {counts[0]:,} → {counts[-1]:,} |"
    )
    print("|---|" + "--:|" * (len(counts) + 1))
    for row in rows:
        cells = " | ".join(f"{row['per_s'][n]:,.0f}" for n in counts)
        print(f"| {row['strategy']} | {cells} | {row['drop']:.2f}x |")
    sys.stdout.flush()


# -- the script --------------------------------------------------------------------------------


def on_off(stealing: bool) -> str:
    return "on" if stealing else "off"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def names(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in STRATEGIES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}"
        )
    return chosen


def stealing_modes(text: str) -> list[bool]:
    modes = {"on": True, "off": False}
    chosen = [mode.strip() for mode in text.split(",") if mode.strip()]
    if not chosen or any(mode not in modes for mode in chosen):
        raise argparse.ArgumentTypeError("give on, off or on,off")
    return [modes[mode] for mode in chosen]


def counts(text: str) -> list[int]:
    try:
        chosen = sorted({int(n.replace("_", "")) for n in text.split(",") if n.strip()})
    except ValueError as error:
        raise argparse.ArgumentTypeError("give slave counts such as 10,100,1000") from error
    if not chosen or chosen[0] < 1:
        raise argparse.ArgumentTypeError("give slave counts of 1 or more")
    return chosen


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Two parts:\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--strategies",
        type=names,
        default=list(STRATEGIES),
        help=f"comma-separated, for both parts ({','.join(STRATEGIES)})",
    )
    parser.add_argument(
        "--stealing", type=stealing_modes, default=[True, False], help="on, off or on,off (on,off)"
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=550,
        help="heterogeneous tasks per run (550: ~9 core-seconds, ~6 s a run at best)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="heterogeneous runs per row (3)")
    parser.add_argument(
        "--slaves",
        type=counts,
        default=[10, 100, 1000, 10_000],
        help="simulated slave counts, comma-separated (10,100,1000,10000)",
    )
    parser.add_argument(
        "--sim-decisions", type=int, default=60_000, help="decisions per simulated run (60,000)"
    )
    parser.add_argument("--sim-repeats", type=int, default=3, help="simulated runs per cell (3)")
    parser.add_argument(
        "--batch", type=int, default=100, help="most results between two simulated dispatches"
    )
    parser.add_argument(
        "--parts",
        default="heterogeneous,simulated",
        help="which parts to run (heterogeneous,simulated)",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="for the task mix and simulation")
    parser.add_argument(
        "--order",
        choices=("shuffled", "long-last"),
        default="shuffled",
        help="the order tasks are submitted in: shuffled, or long-last (shortest first, the "
        "long ones at the end, where a slow slave holding them leaves the others idle)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure there")
    args = parser.parse_args(argv)
    args.parts = {part.strip() for part in args.parts.split(",")}
    if not args.parts <= {"heterogeneous", "simulated"}:
        parser.error("--parts takes heterogeneous, simulated or both")
    if min(args.tasks, args.repeats, args.sim_decisions, args.sim_repeats, args.batch) < 1:
        parser.error("sizes and repeats must be 1 or more")
    return args


def run_heterogeneous(args: argparse.Namespace, report: dict[str, Any]) -> list[str]:
    """Part 1 from calibration to table; returns what went wrong."""
    if len(os.sched_getaffinity(0)) < 2:
        print("\nheterogeneous: not run, it needs 2 CPUs and this process may use one")
        return []
    loops_per_s = calibrate()
    lengths = workload(args.tasks, args.seed, args.order)
    bound = max(sum(lengths) / CAPACITY, max(lengths))
    log(f"calibrated: {loops_per_s:,.0f} loop turns per core-second; lower bound {bound:.2f} s")
    results = heterogeneous(args, loops_per_s)
    rows = heterogeneous_rows(results, bound)
    print_heterogeneous(rows, lengths, args.repeats, args.order)
    report["heterogeneous"] = {
        "loops_per_core_s": loops_per_s,
        "work_core_s": sum(lengths),
        "longest_s": max(lengths),
        "order": args.order,
        "lower_bound_s": bound,
        "rows": rows,
        "runs": [vars(result) for result in results],
    }
    return [
        f"{r.strategy}, stealing {on_off(r.stealing)}: {p}" for r in results for p in r.problems
    ]


def run_simulated(args: argparse.Namespace, report: dict[str, Any]) -> list[str]:
    runs = simulated(args)
    rows = simulated_rows(runs, args.slaves)
    print_simulated(rows, args)
    report["simulated"] = {"rows": rows, "runs": runs}
    return [f"{r['strategy']}, {r['slaves']} slaves: {p}" for r in runs for p in r["problems"]]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, interrupted)
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "usable_cpus": sorted(os.sched_getaffinity(0)),
        },
        "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
    }
    problems: list[str] = []
    try:
        if "heterogeneous" in args.parts:
            problems += run_heterogeneous(args, report)
        if "simulated" in args.parts:
            problems += run_simulated(args, report)
    except KeyboardInterrupt:
        log("interrupted: every process started here has been stopped")
        return 130
    finally:
        if args.json:
            with open(args.json, "w") as file:
                json.dump({**report, "problems": problems}, file, indent=1, default=str)
    for problem in problems:
        log(f"WRONG: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
