"""The default task manager: a pool of worker processes, each fed a short pipeline of tasks.

Data flow (all on the slave's loop thread; no threads of its own)::

    push_task --> queue --feed--> worker's socket (several small tasks per write) ==> worker runs
    worker socket readable --collect--> task_finished --> results queue --> slave sends RESULTS

Each worker has its own socket, whose end the slave polls beside its ZeroMQ socket, so results
are picked up as they are written and a worker that dies is noticed by its socket closing.

A worker holds a *pipeline*: the task it runs and, while tasks are short, the next few, so it
never waits for the slave between two tasks. How deep is measured, not configured: about
``PIPELINE_SECONDS`` of work at the pace tasks have been finishing, never more than
``PIPELINE_BYTES`` of payloads (so a write to a busy worker never blocks) and a single task
when tasks are slow. A big task goes only to an idle worker. Results come back in order, so the
first task of a pipeline is the one running: its timeout counts from the moment the one before
it ended, and when a worker dies it is the one that killed it; the tasks behind it go back to
the front of the queue (they never started).

A worker is ended with its whole process group, so nothing its tasks started outlives it, and
is replaced when its memory passes its limit (see ``containment``): its task then counts as
one that crashed its worker, and fails with ``WorkerMemoryExceeded`` after the usual attempts.

This module is the pool's decisions (how many workers, which task goes where, what a timeout,
a memory limit or a death does); the slave's end of one worker (starting it, framing and writing
tasks to it, ending it) is ``pool_worker``, and the pace arithmetic it shares with the engine
managers is ``pacing``.

Over 400 lines on purpose: each decision here (feed, timeout, cancel, memory limit, death)
changes the same pipelines, and the invariant that a worker's first unanswered task is the one
it runs holds only if every change to them is read together.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from ..protocol import sharing
from ..task import MEMORY_EXCEEDED, Status
from . import pool_worker
from .containment import (
    AUTO,
    MEMORY_CHECK_INTERVAL,
    MEMORY_FRACTION,
    can_measure,
    fair_share,
    format_bytes,
    parse_memory_limit,
    resident_bytes,
    usable_cores,
)
from .pacing import depth, folded
from .pool_worker import PoolWorker, send
from .queued import QueuedManager, WorkItem
from .worker import READ_SIZE, STOP, skip_message

__all__ = ["ProcessPoolManager", "WorkItem", "usable_cores"]

log = logging.getLogger(__name__)

#: Seconds of work a worker is given ahead, at the pace tasks have been finishing.
PIPELINE_SECONDS = 0.005
#: Most tasks in one worker's pipeline.
MAX_PIPELINE = 64


class ProcessPoolManager(QueuedManager):
    """ITaskManager over worker processes; see the module docstring for the flow.

    ``memory_limit`` is what each worker may hold (``taskswarm slave --worker-memory-limit``):
    bytes, a size such as ``"2GiB"``, a fraction of the machine's memory, 0 or ``"none"`` for
    no limit, or ``"auto"`` (the default): the machine's memory over the number of workers.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        context: Any = None,
        memory_limit: str | int | float | None = AUTO,
    ) -> None:
        super().__init__()
        self._target = num_workers if num_workers is not None else usable_cores()
        if self._target < 0:
            raise ValueError("the number of workers cannot be negative")
        self._memory_limit = parse_memory_limit(memory_limit)
        if self._memory_limit is not None and not can_measure():
            log.warning("no way to read a process's memory here: worker memory is not limited")
            self._memory_limit = None
        self._next_memory_check = 0.0
        self._context = context or pool_worker.default_context()
        self._workers: dict[int, PoolWorker] = {}  # by socket fd
        self._started = False
        self._pace = 0.0  # running average of task durations, seconds
        self.generation = 0  # bumped whenever the set of sockets changes (the slave re-polls)
        self._began: list[str] = []  # tasks a worker began since the slave last asked
        self._paths: list[str] = []  # folders of shipped code, on every new worker's sys.path
        self.identity = self.address = ""

    # -- ITaskManager ------------------------------------------------------------------------------

    def init(self, identity: str, address: str) -> None:
        self.identity, self.address = identity, address
        if self._target:
            pool_worker.warm_up(self._context)  # boots while the slave connects and registers

    def get_num_workers(self) -> int:
        return self._target

    @property
    def memory_limit(self) -> int | None:
        """Bytes each worker may hold before it is replaced (at ``MEMORY_FRACTION`` of them);
        None for no limit. The fair share follows the pool's size."""
        if self._memory_limit == AUTO:
            return fair_share(self._target)
        return self._memory_limit  # type: ignore[return-value]

    def start(self) -> None:
        self._started = True
        self._adjust_pool()
        self._feed()

    def stop(self) -> None:
        self._started = False
        workers = list(self._workers.values())
        self._workers.clear()
        self.generation += 1
        for worker in workers:
            send(worker, STOP)
        for worker in workers:
            # One still running a task is killed (the master requeues the task); with it, or
            # after it, whatever its tasks started.
            pool_worker.end(worker, wait=True)

    def update_pool(self, _num_workers: int) -> None:
        if _num_workers < 0:
            raise ValueError("the number of workers cannot be negative")
        log.info("resizing pool from %d to %d workers", self._target, _num_workers)
        self._target = _num_workers
        if self._started:
            self._adjust_pool()
            self._feed()

    def code_shipped(self, paths: list[str]) -> None:
        """New code was shipped: every worker started from now on has ``paths`` on its
        ``sys.path``. Idle workers are replaced now; busy ones take no new task and are
        replaced once their pipelines are done, so no task that comes after the code runs on a
        worker that may have imported the code before it (``slave.shipping`` says why)."""
        self._paths = list(paths)
        for fd, worker in list(self._workers.items()):
            if worker.pipeline:
                worker.stale = True
            else:
                self._retire(fd, worker)
        self._adjust_pool()
        self._feed()

    def wait_for_all(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else _now() + timeout
        while self._pending:
            if not self._workers:
                return False  # nothing could ever finish them: no worker to wait on
            left = None if deadline is None else deadline - _now()
            if left is not None and left <= 0:
                return False
            for conn in wait([w.conn for w in self._workers.values()], left):
                self.collect(cast(Connection, conn).fileno())  # one of the conns given
        return True

    def task_finished(
        self,
        task: WorkItem,
        result: Any,
        error: Any,
        detail: str | None = None,
        ran: tuple[int, float, float] | None = None,
    ) -> None:
        """Queue ``(task_id, status, outcome, detail[, worker, began, ended])``: ``error`` is the
        Status (None for OK), ``result`` the pickled outcome, or a short text saying how a
        worker died; ``detail`` the failure as text for people (see ``task.error_text``);
        ``ran``: which worker ran it (its pid) and when, for the dashboard's task stream."""
        self._pending -= 1
        if task.cancelled:
            sharing.free(result)  # a result no one waits for: its segment goes now
            error, result, detail, ran = Status.CANCELLED, b"", None, None
        if ran is None:
            self._results.put((task.task_id, error or Status.OK, result, detail))
        else:
            self._results.put((task.task_id, error or Status.OK, result, detail, *ran))

    # -- what the slave's loop calls ---------------------------------------------------------

    def take_started(self) -> list[str]:
        """Tasks a worker began since the last call (the slave tells the master, which tells
        their owners: ``Future.running()``)."""
        began, self._began = self._began, []
        return began

    def fds(self) -> list[int]:
        return list(self._workers)

    @property
    def busy(self) -> int:
        return sum(1 for w in self._workers.values() if w.pipeline)

    def held(self) -> list[WorkItem]:
        """Every task pushed and not finished: running ones first, then the rest."""
        pipelines = [list(w.pipeline) for w in self._workers.values()]
        running = [p[0] for p in pipelines if p]
        waiting = [item for p in pipelines for item in p[1:]]
        return running + waiting + list(self._queue)

    def wanted(self) -> int:
        """How many tasks this pool would like to hold to stay busy: each worker's pipeline
        twice over (one in the workers, one ready to follow)."""
        return self._target * 2 * self.depth()

    def depth(self) -> int:
        """Tasks a worker holds: the one it runs and the next, so it never waits for the slave
        between two, and more while tasks are short (from the pace they have been finishing)."""
        return depth(self._pace, PIPELINE_SECONDS, MAX_PIPELINE, unknown=2)

    @property
    def pace(self) -> float:
        """Running average of task durations in seconds (0 until one has finished): the master
        rates slaves by it (the ``throughput`` strategy) and steals only real work."""
        return self._pace

    def next_deadline(self) -> float | None:
        """When ``check_timeouts`` has something to do (monotonic): the earliest running task's
        timeout, or, while tasks run under a memory limit, the next look at the workers'
        memory; None when neither."""
        deadlines = [w.deadline for w in self._workers.values() if w.deadline is not None]
        if self._memory_limit is not None and self.busy:
            deadlines.append(self._next_memory_check)  # the next look at the workers' memory
        return min(deadlines, default=None)

    def check_timeouts(self) -> None:
        """Replace the worker of every task past its timeout (the task fails with TaskTimeout)
        and, when it is time to look, of every worker past its memory limit."""
        now = time.monotonic()
        if now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_INTERVAL
            self._check_memory()
        for fd, worker in list(self._workers.items()):
            deadline = worker.deadline
            if deadline is None or deadline > now:
                continue
            item = worker.take_running()
            log.warning(
                "task %s ran past its %gs timeout; replacing its worker", item.task_id, item.timeout
            )
            self._kill(fd, worker, item)
            self._timed_out(item, "", "its worker process was replaced")
        self._adjust_pool()
        self._feed()

    def cancel(self, task_ids: set[str]) -> None:
        """Forget queued tasks and stop running ones (their workers are replaced)."""
        self._cancel(task_ids, stop_running=True)

    def cancel_unstarted(self, task_ids: set[str]) -> None:
        """Forget these tasks unless one is running: that one finishes, its outcome dropped
        (a ``Future.cancel()`` that crossed the task on its way here; no worker is replaced)."""
        self._cancel(task_ids, stop_running=False)

    def _cancel(self, task_ids: set[str], stop_running: bool) -> None:
        self._cancel_queued(task_ids)
        for fd, worker in list(self._workers.items()):
            waiting = []  # in the worker's pipeline, not started: it answers them unrun
            for position, item in enumerate(worker.pipeline):
                if item.task_id in task_ids and (stop_running or position > 0):
                    item.cancelled = True
                    if position > 0:
                        waiting.append(item.task_id)
            if waiting:
                send(worker, skip_message(waiting))
            running = worker.task
            if running is not None and running.cancelled:
                worker.take_running()
                self._kill(fd, worker, running)
                self.task_finished(running, b"", Status.CANCELLED)
        self._adjust_pool()
        self._feed()

    def collect(self, fd: int) -> None:
        """Read a worker's outcomes (or notice its death), then feed it more tasks."""
        worker = self._workers.get(fd)
        if worker is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._worker_died(fd, worker)
        else:
            worker.unpacker.feed(data)
            finished = list(worker.unpacker)
            ran = sum(1 for outcome in finished if outcome[1] != Status.CANCELLED)
            if ran:  # tasks skipped unrun say nothing of the pace
                self._keep_pace(worker, ran)
            for task_id, status, outcome, *rest in finished:
                self._finished_in(worker, task_id, status, outcome, rest)
            if (worker.retiring or worker.stale) and not worker.pipeline:
                self._retire(fd, worker)
        self._adjust_pool()
        self._feed()

    # -- internals -------------------------------------------------------------------------------

    def _finished_in(
        self, worker: PoolWorker, task_id: str, status: str, outcome: bytes, rest: list[Any]
    ) -> None:
        """``rest``: the failure's text, then when the task began and ended (``worker.py``)."""
        if not worker.pipeline or worker.pipeline[0].task_id != task_id:
            log.error("worker sent an outcome for task %s it was not running; dropped", task_id)
            return
        item = worker.take_running()
        if worker.pipeline:
            self._began.append(worker.pipeline[0].task_id)  # the next one runs now
        text = rest[0] if rest else None
        if len(rest) < 3:
            self.task_finished(item, outcome, None if status == Status.OK else status, text)
            return
        ran = (worker.process.pid, rest[1], rest[2])
        self.task_finished(item, outcome, None if status == Status.OK else status, text, ran)

    def _keep_pace(self, worker: PoolWorker, finished: int) -> None:
        """Fold ``finished`` tasks, read at once, into the running average of task durations.

        Outcomes are read in bursts, so the time since the last read is shared out among all
        of them (timing each from the one before would make all but the first look instant).
        """
        now = time.monotonic()
        duration = (now - worker.started) / finished
        self._pace = folded(self._pace, duration, finished)
        worker.started = now  # the next one starts now

    def _spawn(self) -> None:
        worker = pool_worker.spawn(self._context, self.identity, self._paths)
        self._workers[worker.conn.fileno()] = worker
        self.generation += 1

    def _requeue_pipeline(self, worker: PoolWorker) -> None:
        """Put tasks a worker was given but never started back at the front of the queue."""
        waiting = []
        for item in worker.take_pipeline():
            if item.cancelled:
                self.task_finished(item, b"", Status.CANCELLED)
            else:
                waiting.append(item)
        self._queue.extendleft(reversed(waiting))

    def _drop(self, fd: int) -> None:
        """A worker leaves the pool (its socket is no longer polled)."""
        self._workers.pop(fd, None)
        self.generation += 1

    def _kill(self, fd: int, worker: PoolWorker, running: WorkItem | None = None) -> None:
        """Stop a worker now, with its process group (its running task, ``running``, already
        taken off its pipeline)."""
        self._drop(fd)
        self._requeue_pipeline(worker)
        pool_worker.end(worker, running=running)

    def _retire(self, fd: int, worker: PoolWorker) -> None:
        self._drop(fd)
        pool_worker.end(worker, stop=True)  # what its tasks left running goes with it

    def _check_memory(self) -> None:
        """Replace every worker whose resident memory passed ``MEMORY_FRACTION`` of the limit;
        the task it ran counts as one that crashed its worker (the master runs it again, up to
        ``--max-crashes`` times, then fails it with WorkerMemoryExceeded)."""
        limit = self.memory_limit
        if limit is None:
            return
        for fd, worker in list(self._workers.items()):
            used = resident_bytes(worker.process.pid)
            if used is None or used <= MEMORY_FRACTION * limit:
                continue
            item = worker.task
            if item is not None:
                worker.take_running()
            log.warning(
                "worker process %s reached %s, past %d%% of its memory limit of %s%s; "
                "replacing it (taskswarm slave --worker-memory-limit)",
                worker.process.pid,
                format_bytes(used),
                round(MEMORY_FRACTION * 100),
                format_bytes(limit),
                f" while running task {item.task_id}" if item is not None else "",
            )
            self._kill(fd, worker, item)
            if item is not None:
                how = (
                    f"{MEMORY_EXCEEDED}its worker process reached {format_bytes(used)}, past "
                    f"{round(MEMORY_FRACTION * 100)}% of the {format_bytes(limit)} each worker "
                    "may hold (taskswarm slave --worker-memory-limit)"
                )
                self.task_finished(item, how, Status.CRASH)

    def _adjust_pool(self) -> None:
        """Grow to the target, or retire workers down to it: idle ones now, busy ones after."""
        if not self._started:
            return
        active = [(fd, w) for fd, w in self._workers.items() if not w.retiring]
        for _ in range(self._target - len(active)):
            self._spawn()
        excess = len(active) - self._target
        for fd, worker in sorted(active, key=lambda fw: bool(fw[1].pipeline))[: max(0, excess)]:
            if not worker.pipeline:
                self._retire(fd, worker)
            else:
                worker.retiring = True  # it finishes its pipeline (a few ms of work) first

    def _feed(self) -> None:
        if not self._started or not self._queue:
            return
        feeding = [w for w in self._workers.values() if not (w.retiring or w.stale)]
        if not feeding:
            return
        # Never more than a fair share each, whatever the pace says: the pace may be that of
        # earlier, shorter tasks, and 200 slow tasks must not all go to the first few workers.
        held = len(self._queue) + sum(len(w.pipeline) for w in feeding)
        depth = min(self.depth(), -(-held // len(feeding)))
        for worker in feeding:
            if not self._queue:
                return
            batch = []
            while self._queue and worker.fits(self._queue[0], depth):
                item = self._queue.popleft()
                if not worker.pipeline:
                    worker.started = time.monotonic()
                    self._began.append(item.task_id)
                batch.extend(worker.hand(item))
            if batch:
                send(worker, batch)

    def _worker_died(self, fd: int, worker: PoolWorker) -> None:
        self._drop(fd)
        worker.process.join(timeout=1.0)
        code = worker.process.exitcode
        pool_worker.end(worker)  # the children of the task that killed it go too
        if not worker.pipeline:
            log.warning("an idle worker process exited (code %s); replacing it", code)
            return
        item = worker.take_running()
        self._requeue_pipeline(worker)
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        log.error("task %s killed its worker process (%s)", item.task_id, how)
        # The master decides whether to run it again (a crash does not count as a retry).
        self.task_finished(item, how, Status.CRASH)


def _now() -> float:
    return time.monotonic()
