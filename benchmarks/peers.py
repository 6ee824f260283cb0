"""taskswarm beside its peers: the same workloads on each framework, 2 workers each, in one run.

Run it as ``python benchmarks/peers.py`` after ``pip install -e '.[bench]'`` (which brings the
peers); ``--help`` lists the options and ``--quick`` is a smoke run (sizes divided by 20).

Frameworks (``--frameworks``), each with 2 worker processes on this machine:

* ``taskswarm-push`` / ``taskswarm-pull``: ``LocalCluster(slaves=1, workers=2)``, that scheduler;
* ``taskswarm-noshm``: ``taskswarm-push`` with shared memory off (``shared_memory=False``):
  every big argument and result travels in messages, as between hosts;
* ``mp.Pool``: ``multiprocessing.Pool(2)``, bulk work through ``imap_unordered(chunksize=1)``;
* ``ProcessPoolExecutor``: ``concurrent.futures.ProcessPoolExecutor(2)``;
* ``loky``: ``loky.get_reusable_executor(max_workers=2)``;
* ``dask``: ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``;
* ``ray``: ``ray.init(num_cpus=2)``, local, with ``ray.remote`` functions;
* ``ipyparallel``: ``ipp.Cluster(n=2)`` and a load-balanced view.

Workloads (``--workloads``):

* ``noop``: 20,000 tasks returning their argument, all submitted at once: tasks/s, from before
  the first task is created to the last result;
* ``noop-submit``: the same 20,000 tasks submitted one call at a time, as a user's loop does:
  taskswarm ``app.submit`` (``noop`` uses its bulk ``push_tasks``), ``mp.Pool.apply_async``,
  ``Executor.submit`` (as in ``noop``: executors have no other way), Dask ``client.submit``,
  Ray ``f.remote`` (as in ``noop``), ipyparallel ``view.apply_async``: tasks/s;
* ``latency``: 1,000 sequential submit-and-wait round trips: p50 and p99 in ms;
* ``cpu``: 200 tasks of ~20 ms of pure-Python work (the loop count is calibrated once, at
  start-up, in the orchestrating process): seconds, and the speedup over the same 200 calls run
  serially just before, in the same driver process (efficiency = speedup / 2 workers). The
  reference is taken again for every measurement because a shared machine's speed drifts by
  ±10 % within a run;
* ``bigarg``: 500 tasks each given its own 1 MiB ``bytes`` and returning its length: MiB/s of
  arguments moved;
* ``bigresult``: 500 tasks each given its number and returning 1 MiB ``bytes`` of its own
  (random bytes made once per worker process, its number in the last 8): MiB/s of results moved;
* ``fanout``: 20,000 tasks in all, every finished task creating two more until the total is
  reached: tasks/s. On taskswarm this is a task system (its own model: the logic runs on the
  master); the peers drive it from their driver process, as completions come in;
* ``queue1m``: 1,000,000 no-op tasks pushed at once (from a generator), run once after
  everything else, on taskswarm and ``mp.Pool`` only: the master's peak RSS and how far it grew,
  how far the framework's driver process's RSS grew, seconds from the start of the push to the
  first result and to ``push_tasks`` returning, seconds in all, tasks/s.

Each framework's client lives in a driver process of its own (this script, run with ``--driver
NAME``), so no framework's threads compete with another's for a GIL; this process only
orchestrates, one JSON line per command and per reply, and every timing is taken inside the
driver, around the workload. Each framework is started once, in its driver (start-up is timed
there, to its first result), warmed up, and kept alive for the whole run. Inside each repetition
the frameworks take turns workload by workload, and the order reverses every other repetition,
so a burst of noise from a neighbour hits all alike. The tables show the median over
``--repeats`` repetitions.

A peer that is not installed, fails to start, fails a workload (an error or a wrong result) or
runs past the per-measurement deadline (``--deadline``) is shown as such in the table, and the run
goes on; a framework that failed a measurement is restarted, in a fresh driver, before its next
workload (a driver that does not answer by the deadline is killed, one that dies is reported as
such). Nothing asserts a timing: the exit code is 1 only when a taskswarm measurement fails or
hangs (a wrong result, a crash, the deadline), 130 on Ctrl-C (after printing what was measured),
else 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import queue
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import taskswarm as ts
from procs import descendants

MIB = 1 << 20
#: Worker processes every framework gets.
WORKERS = 2
#: Seconds of pure-Python work in one ``cpu`` task.
CPU_TASK_SECONDS = 0.020
WORKLOADS = ("noop", "noop-submit", "latency", "cpu", "bigarg", "bigresult", "fanout", "queue1m")
#: Sizes at full scale; ``--quick`` divides them by QUICK_DIVISOR.
DEFAULT_SIZES = {
    "noop": 20_000,
    "noop-submit": 20_000,
    "latency": 1_000,
    "cpu": 200,
    "bigarg": 500,
    "bigresult": 500,
    "fanout": 20_000,
    "queue1m": 1_000_000,
}
QUICK_DIVISOR = 20
#: No-op tasks each framework runs before anything is timed (and a few of every other kind).
WARM_UP = 300
QUICK_WARM_UP = 50
#: Seconds a framework may take to start and warm up.
START_DEADLINE = 180.0
#: Seconds a framework may take to shut down, where its API takes a timeout.
CLOSE_TIMEOUT = 30.0
NOT_INSTALLED = "not installed: pip install -e '.[bench]'"


# -- the task functions (top level, so every framework can ship them) -----------------------------


def noop(x: Any) -> Any:
    """Returns its argument: only the framework's own cost is measured."""
    return x


def spin(count: int) -> int:
    """Pure-Python work that holds the GIL: ``count`` loop turns."""
    total = 0
    for i in range(count):
        total = (total + i * i) % 1_000_003
    return total


def length(blob: bytes) -> int:
    """The ``bigarg`` task: the argument has to travel; the result is small."""
    return len(blob)


#: Where ``big_result`` keeps its random bytes: a module of its own in ``sys.modules``, since a
#: function shipped by value (cloudpickle) gets fresh globals with every task it comes with.
BIG_RESULT_STORE = "_taskswarm_peers_big_result"


def big_result(i: int) -> bytes:
    """The ``bigresult`` task: a small argument, a 1 MiB result of its own. The random bytes are
    made once per process (no framework can compress them; making one result costs a copy, not
    1.7 ms of os.urandom); the last 8 bytes are ``i``, so each result tells which task it is."""
    store = sys.modules.get(BIG_RESULT_STORE)
    if store is None:
        store = types.ModuleType(BIG_RESULT_STORE)
        store.base = os.urandom(MIB - 8)  # type: ignore[attr-defined]
        sys.modules[BIG_RESULT_STORE] = store
    return store.base + i.to_bytes(8, "little")


def big_result_number(blob: bytes) -> int:
    """Which task returned ``blob`` (-1 if it is not 1 MiB long)."""
    return int.from_bytes(blob[-8:], "little") if len(blob) == MIB else -1


class Spawner:
    """``fanout``'s bookkeeping: hands out task numbers, never more than ``total`` in all."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.created = 0

    def take(self, count: int) -> range:
        first = self.created
        self.created = min(self.total, first + count)
        return range(first, self.created)


class FanOutSystem(ts.TaskSystem):
    """``fanout`` on taskswarm: a task system on the master; each finished task pushes two more."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.spawner = Spawner(total)
        self.results: list[Any] = []
        self.error: BaseException | None = None

    def init_system(self, master: Any) -> None:
        pass  # the interface's default raises NotImplementedError

    def generate_tasks(self, master: Any) -> list[ts.Task]:
        return [ts.FunctionTask(noop, i) for i in self.spawner.take(1)]

    def task_finished(self, master: Any, task: Any, result: Any, error: Any) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.results.append(result)
        children = [ts.FunctionTask(noop, i) for i in self.spawner.take(2)]
        if children:
            master.push_tasks(children)

    def is_complete(self, master: Any) -> bool:
        return len(self.results) >= self.spawner.total

    def gather_result(self, master: Any) -> tuple[Any, Any]:
        return self.results, self.error


# -- small helpers -------------------------------------------------------------------------------

#: Where a driver finds the orchestrating process's clock origin, so progress lines share it.
T0_VARIABLE = "TASKSWARM_PEERS_T0"
_T0 = float(os.environ.get(T0_VARIABLE) or time.monotonic())


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (a ``time.monotonic()`` value); TimeoutError past it."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


class WrongResult(RuntimeError):
    """A correctness failure: a result missing, duplicated or wrong."""


def check_exactly_once(results: Sequence[Any], n: int) -> None:
    """Every task 0..n-1 came back exactly once, with its own argument."""
    if len(results) != n or sorted(results) != list(range(n)):
        missing = len(set(range(n)) - set(results))
        raise WrongResult(f"{len(results)} results for {n} tasks, {missing} missing")


def check_all_equal(results: Sequence[Any], n: int, expected: Any) -> None:
    if len(results) != n or any(r != expected for r in results):
        wrong = sum(r != expected for r in results)
        raise WrongResult(f"{len(results)} results for {n} tasks, {wrong} not {expected!r}")


def check_big_results(results: Sequence[bytes], n: int) -> None:
    """Every ``bigresult`` task 0..n-1 came back exactly once, 1 MiB long."""
    wrong = sum(len(blob) != MIB for blob in results)
    if wrong:
        raise WrongResult(f"{wrong} of {len(results)} results not {MIB:,} bytes long")
    check_exactly_once([big_result_number(blob) for blob in results], n)


def wait_all(futures: Sequence[concurrent.futures.Future], deadline: float) -> list[Any]:
    """Results of concurrent.futures-style futures, in order; TimeoutError past ``deadline``."""
    _, not_done = concurrent.futures.wait(futures, timeout=remaining(deadline))
    if not_done:
        for future in not_done:
            future.cancel()
        raise TimeoutError(f"{len(not_done)} of {len(futures)} results still missing")
    return [future.result() for future in futures]


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    """p50 and p99 of the samples (linear interpolation between the closest ranks)."""
    if len(samples_ms) == 1:
        return samples_ms[0], samples_ms[0]
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return cuts[49], cuts[98]


def memory_mib(pid: int, name: str) -> float | None:
    """A process's VmRSS or VmHWM (peak RSS) in MiB, from /proc; None where it cannot tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as file:
            for line in file:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """A process's peak RSS over one measurement, and how far it grew over what it held before.

    The peak (VmHWM) is reset at the start (``5`` into clear_refs, Linux), so what earlier
    workloads did does not count; where that is not allowed, ``reset`` is False and the growth
    is not given.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as file:
                file.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.before = memory_mib(pid, "VmRSS")

    def numbers(self, prefix: str) -> dict[str, Any]:
        peak = memory_mib(self.pid, "VmHWM")
        grown = None
        if self.reset and peak is not None and self.before is not None:
            grown = max(0.0, peak - self.before)
        return {
            f"{prefix}_peak_rss_mib": peak,
            f"{prefix}_rss_before_mib": self.before,
            f"{prefix}_peak_growth_mib": grown,
        }


def cpu_busy_percent(seconds: float) -> float | None:
    """How busy all CPUs were over the next ``seconds`` (from /proc/stat), in percent."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as file:
            values = [int(v) for v in file.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, IndexError, ValueError):
        return None
    total = total1 - total0
    return 100.0 * (1 - (idle1 - idle0) / total) if total > 0 else None


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def descendants_running(marker: bytes) -> list[int]:
    """This script's live descendants whose command line contains ``marker``."""
    if not Path("/proc/self/stat").exists():
        return []
    return [pid for pid in descendants(os.getpid()) if marker in command_line(pid)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_if_lingering(pids: list[int], grace: float, what: str) -> None:
    """Wait up to ``grace`` s for these processes (started by this script) to exit; then
    SIGKILL, by pid, those still running."""
    deadline = time.monotonic() + grace
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if left:
        progress(f"killed {len(left)} leftover {what} process(es): {left}")


def reap_leftovers(grace: float = 10.0) -> None:
    """After every framework is shut down: no child process of this script may outlive it.
    Resource trackers (multiprocessing's, loky's) are left alone: they stay until this process
    exits, by design, and then exit by themselves."""
    if not Path("/proc/self/stat").exists():
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        left = [p for p in descendants(os.getpid()) if b"resource_tracker" not in command_line(p)]
        if not left:
            return
        time.sleep(0.2)
    kill_if_lingering(left, 0.0, "child")


def short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# -- the frameworks ------------------------------------------------------------------------------


class Framework:
    """One framework as the benchmark drives it. Subclasses start it, stop it, and run tasks."""

    name = ""
    #: Modules that must import for the framework to run (checked before starting it).
    modules: tuple[str, ...] = ()
    #: Runs queue1m (a million tasks at once); the others are reported as not run.
    runs_queue = False

    def __init__(self) -> None:
        self.status = "ok"  # or why it does not run
        self.version = ""
        self.startup_s: float | None = None
        self.running = False
        self.needs_restart = False

    def missing(self) -> str | None:
        """The first required module that is not installed, if any."""
        for module in self.modules:
            if importlib.util.find_spec(module) is None:
                return module
        return None

    # what each framework implements
    def launch(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    def bulk(self, fn: Callable[[Any], Any], args: Iterable[Any], deadline: float) -> list[Any]:
        """Submit ``fn(a)`` for every ``a`` at once; every result (in any order)."""
        raise NotImplementedError

    def submit_each(
        self, fn: Callable[[Any], Any], args: Iterable[Any], deadline: float
    ) -> list[Any]:
        """Submit ``fn(a)`` for every ``a``, one call each (a user's loop); every result."""
        raise NotImplementedError

    def call(self, fn: Callable[[Any], Any], arg: Any, deadline: float) -> Any:
        """One round trip: submit ``fn(arg)`` and wait for its result."""
        raise NotImplementedError

    def fanout(self, total: int, deadline: float) -> list[Any]:
        """``fanout``: the results of all ``total`` no-op tasks (numbered 0..total-1)."""
        raise NotImplementedError

    def queue(self, n: int, deadline: float) -> dict[str, Any]:
        """``queue1m``'s measurements (only where ``runs_queue``)."""
        raise NotImplementedError


class Taskswarm(Framework):
    runs_queue = True

    def __init__(self, scheduler: str, shared_memory: bool = True) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.shared_memory = shared_memory
        self.name = f"taskswarm-{scheduler}" if shared_memory else "taskswarm-noshm"
        self.version = f"taskswarm {ts.__version__}"
        self.cluster: ts.LocalCluster | None = None
        self.app: ts.Application | None = None

    def launch(self) -> None:
        self.cluster = ts.LocalCluster(
            slaves=1, workers=WORKERS, scheduler=self.scheduler, shared_memory=self.shared_memory
        )
        self.app = self.cluster.connect()

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.close()  # closes self.app too
        self.cluster = self.app = None

    def bulk(self, fn, args, deadline):
        futures = self.app.push_tasks([ts.FunctionTask(fn, a) for a in args])
        return wait_all(futures, deadline)

    def submit_each(self, fn, args, deadline):
        return wait_all([self.app.submit(fn, a) for a in args], deadline)

    def call(self, fn, arg, deadline):
        return self.app.submit(fn, arg).result(timeout=remaining(deadline))

    def fanout(self, total, deadline):
        system = FanOutSystem(total)
        try:
            return self.app.run_system(system, timeout=remaining(deadline))
        except TimeoutError:
            with contextlib.suppress(Exception):
                self.app.cancel_system(system.system_id)
            raise

    def queue(self, n, deadline):
        master, driver = PeakMemory(self.cluster.master_process.pid), PeakMemory(os.getpid())
        first: list[float] = []

        def on_task_finished(task: Any, result: Any, error: Any) -> None:
            if not first:  # only the application's I/O thread calls this
                first.append(time.perf_counter())

        # The application calls this as each result comes in, also while push_tasks is still
        # creating tasks (a done-callback could only be added once push_tasks has returned).
        self.app.on_task_finished = on_task_finished
        try:
            start = time.perf_counter()
            futures = self.app.push_tasks(ts.FunctionTask(noop, i) for i in range(n))
            pushed = time.perf_counter()
            results = wait_all(futures, deadline)
            elapsed = time.perf_counter() - start
        finally:
            self.app.on_task_finished = None
        del futures
        check_exactly_once(results, n)
        return {
            **master.numbers("master"),
            **driver.numbers("driver"),
            "first_result_s": first[0] - start if first else None,
            "push_returned_s": pushed - start,
            "seconds": elapsed,
            "tasks_per_s": n / elapsed,
        }


class MpPool(Framework):
    name = "mp.Pool"
    runs_queue = True

    def __init__(self) -> None:
        super().__init__()
        self.version = f"Python {platform.python_version()} stdlib"
        self.pool: Any = None

    def launch(self) -> None:
        self.pool = multiprocessing.Pool(WORKERS)

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        self.pool = None

    def bulk(self, fn, args, deadline):
        args = list(args)
        iterator = self.pool.imap_unordered(fn, args, chunksize=1)
        return [iterator.next(timeout=remaining(deadline)) for _ in args]

    def submit_each(self, fn, args, deadline):
        results = [self.pool.apply_async(fn, (a,)) for a in args]
        return [result.get(timeout=remaining(deadline)) for result in results]

    def call(self, fn, arg, deadline):
        return self.pool.apply_async(fn, (arg,)).get(timeout=remaining(deadline))

    def fanout(self, total, deadline):
        spawner, results, errors = Spawner(total), [], []
        finished = threading.Event()

        def submit(i: int) -> None:
            self.pool.apply_async(noop, (i,), callback=on_result, error_callback=on_error)

        def on_result(value: Any) -> None:  # runs on the pool's result-handler thread
            results.append(value)
            for i in spawner.take(2):
                submit(i)
            if len(results) == total:
                finished.set()

        def on_error(exc: BaseException) -> None:
            errors.append(exc)
            finished.set()

        for i in spawner.take(1):
            submit(i)
        if not finished.wait(remaining(deadline)):
            raise TimeoutError(f"{len(results)} of {total} results after the deadline")
        if errors:
            raise errors[0]
        return results

    def queue(self, n, deadline):
        # No master here: the queue lives in this process, so its peak RSS is the one to read.
        driver = PeakMemory(os.getpid())
        start = time.perf_counter()
        iterator = self.pool.imap_unordered(noop, range(n), chunksize=1)
        results = [iterator.next(timeout=remaining(deadline))]
        first = time.perf_counter()
        results.extend(iterator.next(timeout=remaining(deadline)) for _ in range(n - 1))
        elapsed = time.perf_counter() - start
        check_exactly_once(results, n)
        return {
            **driver.numbers("driver"),
            "first_result_s": first - start,
            "push_returned_s": None,
            "seconds": elapsed,
            "tasks_per_s": n / elapsed,
        }


class ExecutorFramework(Framework):
    """A framework driven through a ``concurrent.futures.Executor``."""

    executor: Any = None

    def bulk(self, fn, args, deadline):
        return wait_all([self.executor.submit(fn, a) for a in args], deadline)

    def submit_each(self, fn, args, deadline):
        # The same calls as bulk: an executor submits one call at a time either way.
        return wait_all([self.executor.submit(fn, a) for a in args], deadline)

    def call(self, fn, arg, deadline):
        return self.executor.submit(fn, arg).result(timeout=remaining(deadline))

    def fanout(self, total, deadline):
        # Each future reports itself done into a queue, and this loop submits its children.
        # (A concurrent.futures.wait(FIRST_COMPLETED) loop costs O(pending) per call, with up
        # to total/2 pending: it measured that loop, at ~500 tasks/s, more than the executor.)
        spawner, results = Spawner(total), []
        finished: queue.SimpleQueue[concurrent.futures.Future] = queue.SimpleQueue()

        def submit(i: int) -> None:
            self.executor.submit(noop, i).add_done_callback(finished.put)

        for i in spawner.take(1):
            submit(i)
        while len(results) < total:
            try:
                future = finished.get(timeout=remaining(deadline))
            except queue.Empty:
                raise TimeoutError(
                    f"{len(results)} of {total} results after the deadline"
                ) from None
            results.append(future.result())
            for i in spawner.take(2):
                submit(i)
        return results


class ProcessPool(ExecutorFramework):
    name = "ProcessPoolExecutor"

    def __init__(self) -> None:
        super().__init__()
        self.version = f"Python {platform.python_version()} stdlib"

    def launch(self) -> None:
        self.executor = concurrent.futures.ProcessPoolExecutor(WORKERS)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = None


class Loky(ExecutorFramework):
    name = "loky"
    modules = ("loky",)

    def launch(self) -> None:
        import loky

        self.version = f"loky {loky.__version__}"
        self.executor = loky.get_reusable_executor(max_workers=WORKERS)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, kill_workers=True)
        self.executor = None


class IpyParallel(ExecutorFramework):
    """ipyparallel: a load-balanced view; its AsyncResults are concurrent.futures Futures."""

    name = "ipyparallel"
    modules = ("ipyparallel",)

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Any = None
        self.client: Any = None
        self.view: Any = None

    def launch(self) -> None:
        import ipyparallel as ipp

        self.version = f"ipyparallel {ipp.__version__}"
        self.cluster = ipp.Cluster(n=WORKERS, log_level=logging.ERROR)
        self.client = self.cluster.start_and_connect_sync()
        self.client.wait_for_engines(WORKERS, timeout=START_DEADLINE)
        self.view = self.client.load_balanced_view()
        self.executor = self.view.executor

    def shutdown(self) -> None:
        # Each engine starts a nanny in a session of its own, which outlives the engine for a
        # moment, no longer below this process: noted now, and waited for at the end.
        nannies = descendants_running(b"ipyparallel.engine.nanny")
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.stop_cluster_sync()
            self.cluster = self.client = self.view = self.executor = None
            kill_if_lingering(nannies, CLOSE_TIMEOUT, "ipyparallel nanny")

    def bulk(self, fn, args, deadline):
        # The view's own bulk call: one task per item (chunksize 1), results as they come.
        result = self.view.map_async(fn, list(args), ordered=False)
        return list(result.get(timeout=remaining(deadline)))

    def submit_each(self, fn, args, deadline):
        # An AsyncResult is a concurrent.futures Future; one apply_async holds one call.
        return wait_all([self.view.apply_async(fn, a) for a in args], deadline)


class Dask(Framework):
    name = "dask"
    modules = ("dask", "distributed")

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Any = None
        self.client: Any = None

    def launch(self) -> None:
        import dask
        import distributed

        self.version = f"dask {dask.__version__}, distributed {distributed.__version__}"
        # The bigarg tasks carry 1 MiB each in the graph, on purpose.
        warnings.filterwarnings("ignore", message="(?is).*large (object|graph)")
        self.cluster = distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = distributed.Client(self.cluster)

    def shutdown(self) -> None:
        # Closing with tasks still in flight (after a timeout) makes the in-process scheduler
        # log CRITICAL tracebacks about the closed client: expected here, so not shown.
        logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)
        try:
            if self.client is not None:
                self.client.close(timeout=CLOSE_TIMEOUT)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=CLOSE_TIMEOUT)
            self.cluster = self.client = None

    def bulk(self, fn, args, deadline):
        return self.gather(self.client.map(fn, list(args), pure=False), deadline)

    def submit_each(self, fn, args, deadline):
        return self.gather([self.client.submit(fn, a, pure=False) for a in args], deadline)

    def gather(self, futures: list[Any], deadline: float) -> list[Any]:
        """Every future's result once all are done; the futures cancelled past ``deadline``."""
        import distributed

        try:
            distributed.wait(futures, timeout=remaining(deadline))
        except TimeoutError:
            self.client.cancel(futures)
            raise
        return self.client.gather(futures)

    def call(self, fn, arg, deadline):
        return self.client.submit(fn, arg, pure=False).result(timeout=remaining(deadline))

    def fanout(self, total, deadline):
        import distributed

        spawner, results = Spawner(total), []
        roots = [self.client.submit(noop, i, pure=False) for i in spawner.take(1)]
        completed = distributed.as_completed(roots, with_results=True, timeout=remaining(deadline))
        for _, value in completed:
            results.append(value)
            for i in spawner.take(2):
                completed.add(self.client.submit(noop, i, pure=False))
        return results


class Ray(Framework):
    name = "ray"
    modules = ("ray",)

    def __init__(self) -> None:
        super().__init__()
        self.ray: Any = None
        self.remotes: dict[Callable, Any] = {}

    def launch(self) -> None:
        import ray

        self.version = f"ray {ray.__version__}"
        self.ray = ray
        ray.init(
            num_cpus=WORKERS,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )

    def shutdown(self) -> None:
        if self.ray is not None:
            self.ray.shutdown()
        self.ray, self.remotes = None, {}

    def remote(self, fn: Callable) -> Any:
        """``ray.remote(fn)``, made once per function (as a ``@ray.remote`` decorator would)."""
        if fn not in self.remotes:
            self.remotes[fn] = self.ray.remote(fn)
        return self.remotes[fn]

    def bulk(self, fn, args, deadline):
        task = self.remote(fn)
        return self.ray.get([task.remote(a) for a in args], timeout=remaining(deadline))

    def submit_each(self, fn, args, deadline):
        # The same calls as bulk: Ray has no other way than one f.remote per task.
        return self.bulk(fn, args, deadline)

    def call(self, fn, arg, deadline):
        return self.ray.get(self.remote(fn).remote(arg), timeout=remaining(deadline))

    def fanout(self, total, deadline):
        task, ray = self.remote(noop), self.ray
        spawner, results = Spawner(total), []
        pending = [task.remote(i) for i in spawner.take(1)]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=remaining(deadline))
            if not ready:
                raise TimeoutError(f"{len(results)} of {total} results after the deadline")
            if pending:  # and whatever else is done by now, in the same sweep
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            for value in ray.get(ready, timeout=remaining(deadline)):
                results.append(value)
                pending.extend(task.remote(i) for i in spawner.take(2))
        return results


FRAMEWORKS: dict[str, Callable[[], Framework]] = {
    "taskswarm-push": lambda: Taskswarm("push"),
    "taskswarm-pull": lambda: Taskswarm("pull"),
    "taskswarm-noshm": lambda: Taskswarm("push", shared_memory=False),
    "mp.Pool": MpPool,
    "ProcessPoolExecutor": ProcessPool,
    "loky": Loky,
    "dask": Dask,
    "ray": Ray,
    "ipyparallel": IpyParallel,
}


# -- the driver: one process per framework, holding its client -----------------------------------


@dataclass
class Job:
    """What one measurement needs, as a driver gets it from the orchestrating process."""

    sizes: dict[str, int]
    spin_count: int = 0
    spin_expected: int = 0
    blobs: list[bytes] = field(default_factory=list)


def warm_up(fw: Framework, n: int, deadline: float) -> None:
    """A few hundred no-op tasks, some round trips, and each other kind of task once or twice."""
    check_exactly_once(fw.bulk(noop, range(n), deadline), n)
    for i in range(20):
        if fw.call(noop, i, deadline) != i:
            raise WrongResult(f"warm-up round trip {i} came back wrong")
    check_all_equal(fw.bulk(spin, [1000] * 4, deadline), 4, spin(1000))
    check_all_equal(fw.bulk(length, [b"x" * 4096] * 4, deadline), 4, 4096)
    check_exactly_once(fw.submit_each(noop, range(20), deadline), 20)
    check_big_results(fw.bulk(big_result, range(4), deadline), 4)
    check_exactly_once(fw.fanout(min(n, 100), deadline), min(n, 100))


def start_framework(fw: Framework, warm_up_tasks: int) -> dict[str, Any]:
    """Start, time to the first result, warm up; on failure, stop what started and raise."""
    deadline = time.monotonic() + START_DEADLINE
    start = time.perf_counter()
    fw.running = True
    try:
        fw.launch()
        fw.call(noop, 0, deadline)
        startup_s = time.perf_counter() - start
        warm_up(fw, warm_up_tasks, deadline)
    except Exception:
        stop_framework(fw)
        raise
    return {"startup_s": startup_s}


def stop_framework(fw: Framework) -> None:
    if not fw.running:
        return
    fw.running = False
    try:
        fw.shutdown()
    except Exception as exc:
        progress(f"{fw.name}: shutting down raised {short(exc)}")


# Each workload's measurement: (framework, job, deadline) -> one repetition's numbers. They run
# in the framework's driver, so the timed region holds the framework's work and nothing else.


def measure_noop(fw: Framework, job: Job, deadline: float) -> dict[str, Any]:
    n = job.sizes["noop"]
    start = time.perf_counter()
    results = fw.bulk(noop, range(n), deadline)
    elapsed = time.perf_counter() - start
    check_exactly_once(results, n)
    return {"seconds": elapsed, "tasks_per_s": n / elapsed}


def measure_noop_submit(fw: Framework, job: Job, deadline: float) -> dict[str, Any]:
    n = job.sizes["noop-submit"]
    start = time.perf_counter()
    results = fw.submit_each(noop, range(n), deadline)
    elapsed = time.perf_counter() - start
    check_exactly_once(results, n)
    return {"seconds": elapsed, "tasks_per_s": n / elapsed}


def measure_latency(fw: Framework, job: Job, deadline: float) -> dict[str, Any]:
    samples = []
    for i in range(job.sizes["latency"]):
        start = time.perf_counter()
        result = fw.call(noop, i, deadline)
        samples.append((time.perf_counter() - start) * 1000)
        if result != i:
            raise WrongResult(f"round trip {i} returned {result!r}")
    p50, p99 = percentiles(samples)
    return {"p50_ms": p50, "p99_ms": p99, "mean_ms": statistics.fmean(samples)}


def measure_cpu(fw: Framework, job: Job, deadline: float) -> dict[str, Any]:
    n = job.sizes["cpu"]
    start = time.perf_counter()
    check_all_equal([spin(job.spin_count) for _ in range(n)], n, job.spin_expected)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    results = fw.bulk(spin, [job.spin_count] * n, deadline)
    elapsed = time.perf_counter() - start
    check_all_equal(results, n, job.spin_expected)
    speedup = serial / elapsed
    return {
        "seconds": elapsed,
        "serial_s": serial,
        "speedup": speedup,
        "efficiency_pct": 100 * speedup / WORKERS,
    }


def measure_bigarg(fw: Framework, job: Job, deadline: float) -> dict[str, Any]:
    blobs = job.blobs
    start = time.perf_counter()
    results = fw.bulk(length, blobs, deadline)
    elapsed = time.perf_counter() - start
    check_all_equal(results, len(blobs), MIB)
    return {"seconds": elapsed, "mib_per_s": len(blobs) / elapsed}


def measure_bigresult(fw: Framework, job: Job, deadline: float) -> dict[str, Any]:
    n = job.sizes["bigresult"]
    start = time.perf_counter()
    results = fw.bulk(big_result, range(n), deadline)
    elapsed = time.perf_counter() - start
    check_big_results(results, n)
    return {"seconds": elapsed, "mib_per_s": n / elapsed}


def measure_fanout(fw: Framework, job: Job, deadline: float) -> dict[str, Any]:
    n = job.sizes["fanout"]
    start = time.perf_counter()
    results = fw.fanout(n, deadline)
    elapsed = time.perf_counter() - start
    check_exactly_once(results, n)
    return {"seconds": elapsed, "tasks_per_s": n / elapsed}


def measure_queue(fw: Framework, job: Job, deadline: float) -> dict[str, Any]:
    numbers = fw.queue(job.sizes["queue1m"], deadline)
    gc.collect()  # a million futures and results, gone before anything else runs
    return numbers


MEASURE: dict[str, Callable[[Framework, Job, float], dict[str, Any]]] = {
    "noop": measure_noop,
    "noop-submit": measure_noop_submit,
    "latency": measure_latency,
    "cpu": measure_cpu,
    "bigarg": measure_bigarg,
    "bigresult": measure_bigresult,
    "fanout": measure_fanout,
    "queue1m": measure_queue,
}


def measure_in_driver(fw: Framework, command: dict[str, Any]) -> dict[str, Any]:
    """One ``measure`` command: the workload's inputs made here (untimed), then the measurement."""
    workload = command["workload"]
    job = Job(
        sizes=command["sizes"],
        spin_count=command["spin_count"],
        spin_expected=command["spin_expected"],
    )
    if workload == "bigarg":
        base = os.urandom(MIB - 8)  # every task gets its own object: no framework can dedupe
        job.blobs = [base + i.to_bytes(8, "little") for i in range(job.sizes["bigarg"])]
    return MEASURE[workload](fw, job, time.monotonic() + command["deadline_s"])


def answer(fw: Framework, command: dict[str, Any]) -> dict[str, Any]:
    """A driver's reply to one command: ``ok`` and what was asked for, or the error."""
    reply: dict[str, Any] = {"ok": True}
    try:
        if command["op"] == "start":
            reply.update(start_framework(fw, command["warm_up"]))
        elif command["op"] == "measure":
            reply["numbers"] = measure_in_driver(fw, command)
        elif command["op"] == "stop":
            stop_framework(fw)
        else:
            raise ValueError(f"unknown command {command['op']!r}")
    except Exception as exc:
        reply = {"ok": False, "error": short(exc), "timeout": isinstance(exc, TimeoutError)}
    reply.update(version=fw.version, pid=os.getpid())
    return reply


def serve(name: str) -> int:
    """A framework's driver process (``--driver NAME``): the framework's client lives here and
    nowhere else. Commands come one JSON line each on stdin, replies go one JSON line each to
    stdout, until ``stop``, the end of stdin, or SIGTERM; the framework is shut down either way."""
    commands = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    # Whatever the framework prints goes to stderr, never among the replies; it reads nothing.
    os.dup2(2, 1)
    with open(os.devnull, "rb") as null:
        os.dup2(null.fileno(), 0)
    # SIGTERM (from the orchestrating process) shuts down as cleanly as a finished run does.
    # Processes forked from here (pool workers) get the default back: terminate() must kill them.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    os.register_at_fork(after_in_child=_default_sigterm)
    fw = FRAMEWORKS[name]()
    try:
        for line in commands:
            command = json.loads(line)
            replies.write(json.dumps(answer(fw, command)) + "\n")
            replies.flush()
            if command["op"] == "stop":
                break
    except KeyboardInterrupt:
        progress(f"{name}'s driver: told to stop in the middle of a command, shutting down ...")
    finally:
        stop_framework(fw)
        reap_leftovers()
    return 0


# -- the run: the orchestrating process ----------------------------------------------------------

#: Seconds the orchestrating process waits for a reply beyond the deadline its command carries.
ANSWER_MARGIN = 30.0
#: Seconds a driver may take to shut its framework down and exit.
STOP_WAIT = 4 * CLOSE_TIMEOUT


class DriverExited(RuntimeError):
    """A framework's driver process is gone."""


class DriverHung(TimeoutError):
    """A driver did not answer in time."""


class DriverFailed(RuntimeError):
    """A driver reported an error; the text is its own."""


class DriverTimedOut(TimeoutError):
    """A driver reported that the deadline passed."""


def family_of(pid: int) -> list[tuple[int, bytes]]:
    """The live processes below ``pid``, each with its command line (so a reused pid is told
    apart)."""
    return [(child, command_line(child)) for child in descendants(pid)]


class Driver:
    """One framework as the orchestrating process sees it: a driver process of its own (this
    script, ``--driver NAME``), started once and kept for the whole run, told what to do."""

    def __init__(self, name: str) -> None:
        self.spec = FRAMEWORKS[name]()  # never launched here: only what it is and needs
        self.name = self.spec.name
        self.runs_queue = self.spec.runs_queue
        self.version = self.spec.version
        self.status = "ok"  # or why it does not run
        self.startup_s: float | None = None
        self.needs_restart = False
        self.pids: list[int] = []  # every driver process it had, restarts included
        self.process: subprocess.Popen[bytes] | None = None
        self.family: list[tuple[int, bytes]] = []  # what the driver had started, last seen
        self.busy = False  # a command is out and its reply not in
        self.buffer = b""

    def spawn(self) -> None:
        script = str(Path(__file__).resolve())  # __main__ stays this script in the driver
        self.process = subprocess.Popen(
            [sys.executable, script, "--driver", self.name, "--workers", str(WORKERS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env={**os.environ, T0_VARIABLE: repr(_T0)},
            start_new_session=True,  # Ctrl-C reaches only this process, which stops the drivers
        )
        self.family, self.busy, self.buffer = [], False, b""

    def exited(self) -> DriverExited:
        process = self.process
        assert process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)
        return DriverExited(f"driver exited (code {process.returncode})")

    def ask(self, command: dict[str, Any], wait_s: float) -> dict[str, Any]:
        """Send one command and wait up to ``wait_s`` for its reply."""
        process = self.process
        if process is None or process.stdin is None or process.stdout is None:
            raise DriverExited("no driver running")
        try:
            process.stdin.write(json.dumps(command).encode() + b"\n")
        except BrokenPipeError:
            raise self.exited() from None
        self.busy = True
        deadline = time.monotonic() + wait_s
        fd = process.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DriverHung(f"no answer from its driver in {wait_s:g}s")
            if select.select([fd], [], [], min(left, 0.5))[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise self.exited()
                self.buffer += chunk
            elif process.poll() is not None:
                raise self.exited()
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.busy = False
        return json.loads(line)

    def request(self, command: dict[str, Any], wait_s: float) -> dict[str, Any]:
        """``ask``, with an error reply raised (DriverTimedOut or DriverFailed)."""
        reply = self.ask(command, wait_s)
        self.version = reply.get("version") or self.version
        if not reply["ok"]:
            raise (DriverTimedOut if reply["timeout"] else DriverFailed)(reply["error"])
        self.family = family_of(reply["pid"])
        return reply

    def kill(self, grace: float) -> None:
        """The driver gone, however it is: SIGTERM (it shuts its framework down) and up to
        ``grace`` s to exit, then SIGKILL to it and to whatever it started that is still alive."""
        process = self.process
        if process is None:
            return
        family = self.family
        if process.poll() is None:
            family = family + family_of(process.pid)
            with contextlib.suppress(OSError):
                process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        if process.poll() is None:
            process.kill()
            process.wait()
        left = [pid for pid, line in set(family) if alive(pid) and command_line(pid) == line]
        kill_if_lingering(left, min(grace, 5.0), f"{self.name}")
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.process, self.family, self.busy = None, [], False


def start_driver(fw: Driver, ctx: Context) -> None:
    """Its driver started and told to start the framework; on failure, note why, stop it."""
    missing = fw.spec.missing()
    if missing:
        fw.status = f"{NOT_INSTALLED} (no {missing})"
        progress(f"{fw.name}: {fw.status}")
        return
    progress(f"starting {fw.name} ...")
    try:
        fw.spawn()
        command = {"op": "start", "warm_up": ctx.args.warm_up}
        reply = fw.request(command, START_DEADLINE + ANSWER_MARGIN)
    except Exception as exc:
        fw.status = f"failed to start: {exc if isinstance(exc, DRIVER_ERRORS) else short(exc)}"
        progress(f"{fw.name}: {fw.status}")
        stop_driver(fw)
        return
    fw.startup_s, fw.status, fw.needs_restart = reply["startup_s"], "ok", False
    fw.pids.append(reply["pid"])
    progress(f"{fw.name} up in {fw.startup_s:.2f}s ({fw.version}; driver pid {reply['pid']})")


def stop_driver(fw: Driver) -> None:
    """Told to stop where it can hear it (it is idle), else SIGTERM; killed if need be."""
    process = fw.process
    if process is None:
        return
    if process.poll() is None and not fw.busy:
        try:
            fw.ask({"op": "stop"}, STOP_WAIT)
            process.wait(STOP_WAIT)
        except (OSError, ValueError, TimeoutError, DriverExited, subprocess.TimeoutExpired) as exc:
            progress(f"{fw.name}: stopping its driver: {short(exc)}")
    fw.kill(STOP_WAIT)


def restart_driver(fw: Driver, ctx: Context) -> None:
    """After a failed or timed-out measurement: a fresh driver, so leftovers skew nothing."""
    progress(f"restarting {fw.name} after a failed measurement ...")
    stop_driver(fw)
    start_driver(fw, ctx)


DRIVER_ERRORS = (DriverExited, DriverFailed, DriverHung, DriverTimedOut)


def failure(exc: BaseException, deadline_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out (deadline {deadline_s:g}s)"
    if isinstance(exc, DRIVER_ERRORS):
        return f"failed: {exc}"
    return f"failed: {short(exc)}"


@dataclass
class Cell:
    """One (workload, framework): its measurements, one dict per repetition, and its status."""

    workload: str
    framework: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"

    def median(self, key: str) -> float | None:
        values = [run[key] for run in self.runs if run.get(key) is not None]
        return statistics.median(values) if values else None

    def values(self, key: str) -> list[float]:
        return [run[key] for run in self.runs if run.get(key) is not None]


@dataclass
class Context:
    """Everything the run needs and everything it found."""

    args: argparse.Namespace
    sizes: dict[str, int]
    frameworks: list[Driver]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    spin_count: int = 0
    spin_expected: int = 0
    spin_call_ms: float = 0.0

    def serial_cpu_s(self) -> list[float]:
        """Every ``cpu`` measurement's serial reference, from all frameworks' drivers."""
        return [
            run["serial_s"]
            for (workload, _), cell in sorted(self.cells.items())
            if workload == "cpu"
            for run in cell.runs
        ]

    idle_cpu_percent: float | None = None
    started_at: str = ""
    interrupted: bool = False

    def cell(self, workload: str, framework: str) -> Cell:
        key = (workload, framework)
        if key not in self.cells:
            self.cells[key] = Cell(workload, framework)
        return self.cells[key]


def calibrate_spin() -> tuple[int, int, float]:
    """The loop count for one ~20 ms ``spin`` call here; also its result and measured ms.

    Scaled from the fastest of a few timed calls, twice, so a busy neighbour skews it little.
    """
    count = 20_000
    for _ in range(2):
        best = min(_timed(spin, count) for _ in range(5))
        count = max(1, round(count * CPU_TASK_SECONDS / best))
    call_s = min(_timed(spin, count) for _ in range(5))
    return count, spin(count), call_s * 1000


def _timed(fn: Callable[[int], Any], arg: int) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


QUEUE_NOT_RUN = "not run: queue1m runs on taskswarm and mp.Pool only"


def summary(workload: str, numbers: dict[str, Any]) -> str:
    """One progress line's worth of a measurement."""
    if workload == "latency":
        return f"p50 {numbers['p50_ms']:.3f} ms, p99 {numbers['p99_ms']:.3f} ms"
    if workload == "cpu":
        return f"{numbers['seconds']:.2f} s, speedup {numbers['speedup']:.2f}"
    if workload in ("bigarg", "bigresult"):
        return f"{numbers['mib_per_s']:,.0f} MiB/s"
    return f"{numbers['tasks_per_s']:,.0f} tasks/s in {numbers['seconds']:.2f} s"


def measure_cell(fw: Driver, ctx: Context, workload: str) -> None:
    """One measurement of one framework, by its driver, recorded in its cell (or why none)."""
    cell = ctx.cell(workload, fw.name)
    if workload == "queue1m" and not fw.runs_queue:
        cell.status = QUEUE_NOT_RUN
        return
    if fw.status == "ok" and fw.needs_restart:
        restart_driver(fw, ctx)
    if fw.status != "ok" or cell.status != "ok":
        cell.status = fw.status if cell.status == "ok" else cell.status
        return
    deadline_s = ctx.args.deadline * (3 if workload == "queue1m" else 1)
    command = {
        "op": "measure",
        "workload": workload,
        "deadline_s": deadline_s,
        "sizes": ctx.sizes,
        "spin_count": ctx.spin_count,
        "spin_expected": ctx.spin_expected,
    }
    try:
        numbers = fw.request(command, deadline_s + ANSWER_MARGIN)["numbers"]
    except Exception as exc:
        cell.status = failure(exc, deadline_s)
        fw.needs_restart = True
        progress(f"  {fw.name} {workload}: {cell.status}")
        if isinstance(exc, DriverHung):  # it cannot be told: SIGTERM, then SIGKILL
            fw.kill(CLOSE_TIMEOUT)
        elif isinstance(exc, DriverExited):  # what it started may still be running
            fw.kill(0.0)
        return
    cell.runs.append(numbers)
    progress(f"  {fw.name} {workload}: {summary(workload, numbers)}")


def run_repetition(ctx: Context, repeat: int) -> None:
    order = ctx.frameworks if repeat % 2 == 0 else ctx.frameworks[::-1]
    for workload in ctx.args.workloads:
        if workload == "queue1m":
            continue
        progress(f"repetition {repeat + 1}/{ctx.args.repeats}: {workload}")
        for fw in order:
            measure_cell(fw, ctx, workload)


def stop_everything(ctx: Context) -> None:
    """Every driver stopped, one by one; a second Ctrl-C kills what is left at once."""
    progress("shutting everything down ...")
    try:
        for fw in reversed(ctx.frameworks):
            stop_driver(fw)
    except KeyboardInterrupt:
        progress("interrupted again: killing every driver that is left")
        for fw in ctx.frameworks:
            fw.kill(0.0)
        raise
    finally:
        reap_leftovers()


def run(ctx: Context) -> None:
    """The whole run; every driver (and so every framework) is stopped at the end, however it
    ends."""
    ctx.spin_count, ctx.spin_expected, ctx.spin_call_ms = calibrate_spin()
    progress(f"cpu task: spin({ctx.spin_count:,}) takes {ctx.spin_call_ms:.1f} ms here")
    try:
        for fw in ctx.frameworks:
            start_driver(fw, ctx)
        ctx.idle_cpu_percent = cpu_busy_percent(2.0)
        if ctx.idle_cpu_percent is not None:
            progress(f"all started; CPU busy while idle: {ctx.idle_cpu_percent:.1f}%")
        for repeat in range(ctx.args.repeats):
            run_repetition(ctx, repeat)
        if "queue1m" in ctx.args.workloads:
            progress(f"queue1m: {ctx.sizes['queue1m']:,} tasks at once, once")
            # mp.Pool's small queue first, as before the drivers were separate processes.
            for fw in sorted(ctx.frameworks, key=lambda f: f.name != "mp.Pool"):
                measure_cell(fw, ctx, "queue1m")
    finally:
        stop_everything(ctx)


# -- reporting -----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


Column = tuple[str, Callable[[Cell, Context], str]]


def metric(key: str, spec: str) -> Callable[[Cell, Context], str]:
    return lambda cell, ctx: fmt(cell.median(key), spec)


def spread(key: str, spec: str) -> Callable[[Cell, Context], str]:
    def column(cell: Cell, ctx: Context) -> str:
        values = cell.values(key)
        return f"{min(values):{spec}}–{max(values):{spec}}" if values else "—"

    return column


def versus(key: str, other: str) -> Callable[[Cell, Context], str]:
    """This framework's median over ``other``'s, for the same workload."""

    def column(cell: Cell, ctx: Context) -> str:
        base = ctx.cells.get((cell.workload, other))
        return fmt(ratio(cell.median(key), base.median(key) if base else None), ".2f")

    return column


def versus_workload(key: str, other: str) -> Callable[[Cell, Context], str]:
    """This framework's median over its own median for workload ``other``."""

    def column(cell: Cell, ctx: Context) -> str:
        base = ctx.cells.get((other, cell.framework))
        return fmt(ratio(cell.median(key), base.median(key) if base else None), ".2f")

    return column


TABLES: dict[str, tuple[str, list[Column]]] = {
    "noop": (
        "{n:,} no-op tasks submitted at once (higher is better)",
        [
            ("tasks/s", metric("tasks_per_s", ",.0f")),
            ("min–max", spread("tasks_per_s", ",.0f")),
            ("× mp.Pool", versus("tasks_per_s", "mp.Pool")),
            ("× dask", versus("tasks_per_s", "dask")),
        ],
    ),
    "noop-submit": (
        "{n:,} no-op tasks submitted one call at a time (higher is better)",
        [
            ("tasks/s", metric("tasks_per_s", ",.0f")),
            ("min–max", spread("tasks_per_s", ",.0f")),
            ("× mp.Pool", versus("tasks_per_s", "mp.Pool")),
            ("× dask", versus("tasks_per_s", "dask")),
            ("× its noop", versus_workload("tasks_per_s", "noop")),
        ],
    ),
    "latency": (
        "{n:,} sequential submit-and-wait round trips (lower is better)",
        [
            ("p50 ms", metric("p50_ms", ".3f")),
            ("p99 ms", metric("p99_ms", ".3f")),
            ("p50 × mp.Pool", versus("p50_ms", "mp.Pool")),
        ],
    ),
    "cpu": (
        "{n:,} tasks of ~20 ms pure Python; speedup over the same calls run serially",
        [
            ("seconds", metric("seconds", ".2f")),
            ("speedup", metric("speedup", ".2f")),
            ("efficiency %", metric("efficiency_pct", ".0f")),
        ],
    ),
    "bigarg": (
        "{n:,} tasks with a 1 MiB bytes argument each (higher is better)",
        [
            ("MiB/s", metric("mib_per_s", ",.0f")),
            ("min–max", spread("mib_per_s", ",.0f")),
            ("× mp.Pool", versus("mib_per_s", "mp.Pool")),
        ],
    ),
    "bigresult": (
        "{n:,} tasks returning 1 MiB of bytes each (higher is better)",
        [
            ("MiB/s", metric("mib_per_s", ",.0f")),
            ("min–max", spread("mib_per_s", ",.0f")),
            ("× mp.Pool", versus("mib_per_s", "mp.Pool")),
        ],
    ),
    "fanout": (
        "{n:,} tasks, each finished one creating two more (higher is better)",
        [
            ("tasks/s", metric("tasks_per_s", ",.0f")),
            ("min–max", spread("tasks_per_s", ",.0f")),
            ("× mp.Pool", versus("tasks_per_s", "mp.Pool")),
        ],
    ),
    "queue1m": (
        "{n:,} no-op tasks pushed at once",
        [
            ("master peak RSS MiB", metric("master_peak_rss_mib", ",.0f")),
            ("master growth MiB", metric("master_peak_growth_mib", ",.0f")),
            ("driver growth MiB", metric("driver_peak_growth_mib", ",.0f")),
            ("first result s", metric("first_result_s", ".2f")),
            ("push returned s", metric("push_returned_s", ".2f")),
            ("total s", metric("seconds", ".1f")),
            ("tasks/s", metric("tasks_per_s", ",.0f")),
        ],
    ),
}

NOTES = {
    "noop-submit": "taskswarm: app.submit per task (noop: push_tasks); mp.Pool: apply_async "
    "(noop: imap_unordered); dask: client.submit (noop: client.map); ipyparallel: apply_async "
    "(noop: map_async). Executors and Ray make the same calls in both (submit, f.remote). "
    "× its noop: over the framework's own noop median, where noop ran too.",
    "cpu": "Serial reference: the same calls run just before each measurement in the same driver "
    "process (the framework's client), median {serial} s; the calibration, before any framework "
    "started, predicts {predicted:.2f} s ({call_ms:.1f} ms a call). The idle frameworks still "
    "share the CPUs, so an efficiency (speedup / {workers} workers) above 100% says the serial "
    "run was the one slowed down.",
    "fanout": "taskswarm runs it as a task system on the master; the peers drive it from their "
    "driver process as completions arrive (executors: a done-callback queue; dask: as_completed; "
    "ray: ray.wait; mp.Pool: apply_async callbacks).",
    "queue1m": "Peak RSS counts from just before the push; growth is that peak less the RSS "
    "the process held then. The driver is the framework's own driver process; mp.Pool has no "
    "master: its queue lives in the driver. first result: from the start of the push.",
}


def render_frameworks(ctx: Context) -> list[str]:
    lines = ["| framework | version | start-up s | status |", "|---|---|--:|---|"]
    for fw in ctx.frameworks:
        lines.append(
            f"| {fw.name} | {fw.version or '—'} | {fmt(fw.startup_s, '.2f')} | {fw.status} |"
        )
    return lines


def render_workload(ctx: Context, workload: str) -> list[str]:
    title, columns = TABLES[workload]
    repeats = "once" if workload == "queue1m" else f"median of {ctx.args.repeats}"
    lines = [
        f"### {workload}: {title.format(n=ctx.sizes[workload])}; {repeats}",
        "",
        "| framework | " + " | ".join(header for header, _ in columns) + " | note |",
        "|---|" + "--:|" * len(columns) + "---|",
    ]
    for fw in ctx.frameworks:
        cell = ctx.cells.get((workload, fw.name)) or Cell(workload, fw.name, status="not measured")
        values = " | ".join(column(cell, ctx) for _, column in columns)
        note = "" if cell.status == "ok" else cell.status
        lines.append(f"| {fw.name} | {values} | {note} |")
    if workload in NOTES:
        serials = ctx.serial_cpu_s()
        serial = fmt(statistics.median(serials) if serials else None, ".2f")
        note = NOTES[workload].format(
            serial=serial,
            predicted=ctx.spin_call_ms * ctx.sizes["cpu"] / 1000,
            call_ms=ctx.spin_call_ms,
            workers=WORKERS,
        )
        lines += ["", note]
    return lines


def render(ctx: Context) -> str:
    idle = fmt(ctx.idle_cpu_percent, ".1f")
    lines = [
        f"## taskswarm and its peers, {WORKERS} workers each",
        "",
        f"{ctx.started_at}; Python {platform.python_version()} on {platform.platform()}; "
        f"{os.cpu_count()} CPUs, {idle}% busy (whole machine) while every framework sat idle; "
        f"{ctx.args.repeats} repetition(s), frameworks alternating inside each"
        + (" — INTERRUPTED, partial results" if ctx.interrupted else ""),
        "",
        *render_frameworks(ctx),
    ]
    for workload in ctx.args.workloads:
        lines += ["", *render_workload(ctx, workload)]
    return "\n".join(lines)


def report(ctx: Context) -> dict[str, Any]:
    cells = []
    for workload in ctx.args.workloads:
        for fw in ctx.frameworks:
            cell = ctx.cells.get((workload, fw.name)) or Cell(
                workload, fw.name, status="not measured"
            )
            keys = sorted({key for run in cell.runs for key in run})
            cells.append(
                {
                    "workload": workload,
                    "framework": fw.name,
                    "status": cell.status,
                    "median": {key: cell.median(key) for key in keys},
                    "runs": cell.runs,
                }
            )
    return {
        "parameters": {
            "sizes": ctx.sizes,
            "repeats": ctx.args.repeats,
            "warm_up": ctx.args.warm_up,
            "deadline_s": ctx.args.deadline,
            "workers": WORKERS,
            "quick": ctx.args.quick,
            "cpu_task": {"spin_count": ctx.spin_count, "call_ms": ctx.spin_call_ms},
        },
        "environment": {
            "date": ctx.started_at,
            "orchestrator_pid": os.getpid(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "start_method": multiprocessing.get_start_method(),
            "idle_cpu_busy_percent": ctx.idle_cpu_percent,
            "pyzmq": distribution_version("pyzmq"),
            "cloudpickle": distribution_version("cloudpickle"),
        },
        "frameworks": {
            fw.name: {
                "version": fw.version,
                "startup_s": fw.startup_s,
                "status": fw.status,
                "driver_pids": fw.pids,
            }
            for fw in ctx.frameworks
        },
        "serial_cpu_s": ctx.serial_cpu_s(),
        "interrupted": ctx.interrupted,
        "results": cells,
    }


# -- command line --------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def choices(valid: Sequence[str]) -> Callable[[str], list[str]]:
    """A comma-separated list of names from ``valid``, in the order given."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in valid]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(unknown) or '(none given)'}; choose from {', '.join(valid)}"
            )
        return list(dict.fromkeys(names))

    return parse


def size_override(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if name not in DEFAULT_SIZES or not value:
        raise argparse.ArgumentTypeError(f"expected WORKLOAD=N with WORKLOAD in {WORKLOADS}")
    return name, positive(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Run the same workloads on taskswarm and its peers (2 workers each) in one run, "
            "frameworks alternating inside each repetition; print markdown tables of medians "
            "and write JSON. Progress goes to stderr. Peers come with pip install -e '.[bench]'."
        ),
    )
    parser.add_argument(
        "--frameworks",
        type=choices(list(FRAMEWORKS)),
        default=list(FRAMEWORKS),
        help=f"comma-separated, from: {', '.join(FRAMEWORKS)} (default: all)",
    )
    parser.add_argument(
        "--workloads",
        type=choices(WORKLOADS),
        default=list(WORKLOADS),
        help=f"comma-separated, from: {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--repeats",
        type=positive,
        default=3,
        help="repetitions of every workload but queue1m; tables show medians (default: 3)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: every size divided by {QUICK_DIVISOR}, a shorter warm-up",
    )
    parser.add_argument(
        "--size",
        type=size_override,
        action="append",
        default=[],
        metavar="WORKLOAD=N",
        help="override one workload's size (repeatable), e.g. --size queue1m=200000",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=300.0,
        help="seconds one measurement may take before it is reported as timed out "
        "(queue1m gets 3x) (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=positive,
        default=WORKERS,
        help="worker processes each framework gets (default: %(default)s; on a many-core "
        "machine, a larger number shows how each one scales)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=str(Path(__file__).resolve().parent / "peers.json"),
        help="where to write the results as JSON (default: benchmarks/peers.json)",
    )
    parser.add_argument("--driver", choices=list(FRAMEWORKS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warm_up = QUICK_WARM_UP if args.quick else WARM_UP
    return args


def sizes_for(args: argparse.Namespace) -> dict[str, int]:
    divisor = QUICK_DIVISOR if args.quick else 1
    sizes = {name: max(1, n // divisor) for name, n in DEFAULT_SIZES.items()}
    sizes.update(args.size)
    return sizes


def taskswarm_failed(ctx: Context) -> bool:
    """A taskswarm measurement failed or hung: the one thing that makes the exit code 1."""
    return any(
        cell.framework.startswith("taskswarm") and cell.status.startswith(("failed", "timed out"))
        for cell in ctx.cells.values()
    ) or any(fw.name.startswith("taskswarm") and fw.status != "ok" for fw in ctx.frameworks)


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    global WORKERS
    args = parse_args(argv)
    WORKERS = args.workers
    if args.driver:
        return serve(args.driver)
    ctx = Context(
        args=args,
        sizes=sizes_for(args),
        frameworks=[Driver(name) for name in args.frameworks],
        started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    # SIGTERM shuts down as cleanly as Ctrl-C does: the finally blocks stop every driver.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        run(ctx)
    except KeyboardInterrupt:
        ctx.interrupted = True
        progress("interrupted: every framework is shut down; the results so far follow")
    print(render(ctx))
    with open(args.json, "w", encoding="utf-8") as file:
        json.dump(report(ctx), file, indent=2)
        file.write("\n")
    progress(f"wrote {args.json}")
    if ctx.interrupted:
        return 130
    return 1 if taskswarm_failed(ctx) else 0


if __name__ == "__main__":
    sys.exit(main())
