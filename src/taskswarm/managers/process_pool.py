"""The default task manager: a pool of worker processes, one task per worker at a time.

Data flow (all on the slave's loop thread; no threads of its own)::

    push_task --> queue --feed--> idle worker's pipe ==> worker process runs it
    worker pipe readable --collect--> task_finished --> results queue --> slave sends RESULTS

Each worker has its own pipe, whose read end the slave polls beside its ZeroMQ socket, so a result
is picked up the moment it is written and a worker that dies is noticed by its pipe closing.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import msgpack

from ..api import ITaskManager
from ..errors import TaskTimeout
from ..task import Status, dump_error, new_task_id
from .worker import STOP, worker_main

__all__ = ["ProcessPoolManager", "WorkItem"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkItem:
    """A task as a slave holds it: its id and its still-pickled payload."""

    task_id: str
    payload: bytes
    timeout: float | None = None


@dataclass(eq=False)
class _Worker:
    process: Any
    conn: Any
    task: WorkItem | None = None
    started: float = 0.0
    retiring: bool = False

    @property
    def deadline(self) -> float | None:
        if self.task is None or self.task.timeout is None:
            return None
        return self.started + self.task.timeout


def _default_context() -> multiprocessing.context.BaseContext:
    # forkserver: workers fork from a small clean process, not from the slave (whose ZeroMQ
    # threads make a plain fork unsafe), and start far faster than with spawn.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["taskswarm.managers.worker"])
        return ctx
    return multiprocessing.get_context("spawn")


class ProcessPoolManager(ITaskManager):
    """ITaskManager over worker processes; see the module docstring for the flow."""

    def __init__(self, num_workers: int | None = None, context: Any = None) -> None:
        self._target = num_workers if num_workers is not None else (os.cpu_count() or 1)
        if self._target < 0:
            raise ValueError("the number of workers cannot be negative")
        self._context = context or _default_context()
        self._workers: dict[int, _Worker] = {}  # by pipe fd
        self._queue: deque[WorkItem] = deque()
        self._results: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self._pending = 0
        self._started = False
        self.generation = 0  # bumped whenever the set of pipes changes (the slave re-polls)
        self.identity = self.address = ""

    # -- ITaskManager ------------------------------------------------------------------------------

    def init(self, identity: str, address: str) -> None:
        self.identity, self.address = identity, address

    def get_num_workers(self) -> int:
        return self._target

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
            try:
                worker.conn.send_bytes(STOP)
            except OSError:
                pass
        for worker in workers:
            worker.process.join(timeout=1.0)
            if worker.process.is_alive():
                worker.process.kill()  # it is running a task: the master requeues it
                worker.process.join()
            worker.conn.close()

    def update_pool(self, _num_workers: int) -> None:
        if _num_workers < 0:
            raise ValueError("the number of workers cannot be negative")
        log.info("resizing pool from %d to %d workers", self._target, _num_workers)
        self._target = _num_workers
        if self._started:
            self._adjust_pool()
            self._feed()

    def push_task(self, task: WorkItem) -> None:
        self._queue.append(task)
        self._pending += 1
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
                self.collect(conn.fileno())
        return True

    def get_results_queue(self) -> queue.SimpleQueue[tuple[str, str, Any]]:
        return self._results

    def create_task(self, task_class: type, *args: Any, **kwargs: Any) -> Any:
        task = task_class(*args, **kwargs)
        task.task_id = new_task_id()
        return task

    def task_finished(self, task: WorkItem, result: Any, error: Any) -> None:
        """Queue ``(task_id, status, outcome)``: ``error`` is the Status (None for OK),
        ``result`` the pickled outcome, or a short text saying how a worker died."""
        self._pending -= 1
        self._results.put((task.task_id, error or Status.OK, result))

    # -- what the slave's loop calls ---------------------------------------------------------

    def fds(self) -> list[int]:
        return list(self._workers)

    @property
    def busy(self) -> int:
        return sum(1 for w in self._workers.values() if w.task is not None)

    def held(self) -> list[WorkItem]:
        """Every task pushed and not finished: running ones first, then queued ones."""
        running = [w.task for w in self._workers.values() if w.task is not None]
        return running + list(self._queue)

    def take_queued(self) -> list[WorkItem]:
        """Remove the tasks no worker has started (to hand them back to the master)."""
        items = list(self._queue)
        self._queue.clear()
        self._pending -= len(items)
        return items

    def next_deadline(self) -> float | None:
        """When the earliest running task's timeout expires (monotonic), if any has one."""
        deadlines = [w.deadline for w in self._workers.values() if w.deadline is not None]
        return min(deadlines, default=None)

    def check_timeouts(self) -> None:
        """Replace the worker of every task past its timeout; the task fails with TaskTimeout."""
        now = time.monotonic()
        for fd, worker in list(self._workers.items()):
            deadline = worker.deadline
            if deadline is None or deadline > now or worker.task is None:
                continue
            item = worker.task
            log.warning(
                "task %s ran past its %gs timeout; replacing its worker", item.task_id, item.timeout
            )
            self._kill(fd, worker)
            error = TaskTimeout(
                f"task {item.task_id} ran past its timeout of {item.timeout:g}s; its worker "
                "process was replaced",
                "TaskTimeout",
            )
            self.task_finished(item, dump_error(error), Status.TIMEOUT)
        self._adjust_pool()
        self._feed()

    def cancel(self, task_ids: set[str]) -> None:
        """Forget queued tasks and stop running ones (their workers are replaced)."""
        kept: deque[WorkItem] = deque()
        for item in self._queue:
            if item.task_id in task_ids:
                self.task_finished(item, b"", Status.CANCELLED)
            else:
                kept.append(item)
        self._queue = kept
        for fd, worker in list(self._workers.items()):
            if worker.task is not None and worker.task.task_id in task_ids:
                item = worker.task
                self._kill(fd, worker)
                self.task_finished(item, b"", Status.CANCELLED)
        self._adjust_pool()
        self._feed()

    def collect(self, fd: int) -> None:
        """Read one worker's outcome (or notice its death), then give it the next task."""
        worker = self._workers.get(fd)
        if worker is None:
            return
        try:
            task_id, status, data = msgpack.unpackb(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._worker_died(fd, worker)
        else:
            item, worker.task = worker.task, None
            if item is not None and item.task_id == task_id:
                self.task_finished(item, data, None if status == Status.OK else status)
            if worker.retiring:
                self._retire(fd, worker)
        self._adjust_pool()
        self._feed()

    # -- internals -------------------------------------------------------------------------------

    def _spawn(self) -> None:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            args=(child_end,),
            name=f"taskswarm-worker-{self.identity}",
            daemon=True,
        )
        process.start()
        child_end.close()
        self._workers[parent_end.fileno()] = _Worker(process, parent_end)
        self.generation += 1

    def _kill(self, fd: int, worker: _Worker) -> None:
        self._workers.pop(fd, None)
        self.generation += 1
        worker.task = None
        worker.process.kill()
        worker.process.join(timeout=5.0)
        worker.conn.close()

    def _retire(self, fd: int, worker: _Worker) -> None:
        self._workers.pop(fd, None)
        self.generation += 1
        try:
            worker.conn.send_bytes(STOP)
        except OSError:
            pass
        worker.process.join(timeout=1.0)
        worker.conn.close()

    def _adjust_pool(self) -> None:
        """Grow to the target, or retire workers down to it: idle ones now, busy ones after."""
        if not self._started:
            return
        active = [(fd, w) for fd, w in self._workers.items() if not w.retiring]
        for _ in range(self._target - len(active)):
            self._spawn()
        excess = len(active) - self._target
        for fd, worker in sorted(active, key=lambda fw: fw[1].task is not None)[: max(0, excess)]:
            if worker.task is None:
                self._retire(fd, worker)
            else:
                worker.retiring = True

    def _feed(self) -> None:
        if not self._started:
            return
        for worker in self._workers.values():
            if not self._queue:
                return
            if worker.task is None and not worker.retiring:
                item = self._queue.popleft()
                worker.task = item
                worker.started = time.monotonic()
                try:
                    worker.conn.send_bytes(msgpack.packb([item.task_id, item.payload]))
                except OSError:
                    pass  # it died; collect() sees its pipe close and reports the task

    def _worker_died(self, fd: int, worker: _Worker) -> None:
        self._workers.pop(fd, None)
        self.generation += 1
        worker.process.join(timeout=1.0)
        code = worker.process.exitcode
        worker.conn.close()
        if worker.task is None:
            log.warning("an idle worker process exited (code %s); replacing it", code)
            return
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        log.error("task %s killed its worker process (%s)", worker.task.task_id, how)
        # The master decides whether to run it again (a crash does not count as a retry).
        self.task_finished(worker.task, how, Status.CRASH)


def _now() -> float:
    return time.monotonic()
