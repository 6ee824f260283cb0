"""The master-side runner of a task system: one thread per live system, the only one touching it.

Data flow on the master (one ``SystemRunner`` thread per live system)::

    master loop --(results)--> runner.inbox --> unpickle --> task.finished, system.task_finished
         ^                                                                   |
         +--------- master mailbox <-- Push(tasks) / Progress / Done(result)

The runner thread is the only thread that touches the system object, so its callbacks run
serially and need no locks; a slow callback stalls only its own system, never the master's
networking thread or another system.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from .. import inputs
from ..errors import DependencyError, TaskSystemError
from ..inputs import DependencyFailed, ResultRef, SystemCollector, dependency_error
from ..protocol.messages import TaskMeta
from ..task import ExceptionWithTraceback, Task, format_remote_traceback, load_outcome, task_meta
from .edges import Done, Progress, Push, RunnerMail

__all__ = ["MasterHandle", "SystemRunner"]

log = logging.getLogger(__name__)

#: How a system's runner thread is named: log records from it are the system's own.
RUNNER_THREAD_PREFIX = "system-"
#: Least seconds between two progress reports of one system.
PROGRESS_INTERVAL = 0.2
#: Most seconds between snapshots of a durable system that is applying results.
SNAPSHOT_INTERVAL = 1.0
#: Results for a system's runner, in journal order: ``(seq, task_id, ok, pickled outcome)``.
ResultBatch = list[tuple[int, str, bool, bytes]]
#: The ``seq`` of a row that is no result but the master sending a task back, unqueued: it
#: named an input whose outcome was already on its way here (``taskswarm.inputs``).
RESEND = -1


class _Finished(Exception):
    """The system completed while checking; unwinds ``_run`` quietly."""


class MasterHandle:
    """What a task system's callbacks get as ``master``: a way to push tasks, and some facts."""

    def __init__(self, runner: SystemRunner) -> None:
        self._runner = runner

    @property
    def system_id(self) -> str:
        return self._runner.system_id

    def push_task(self, task: Task) -> ResultRef:
        """Queue one more task for this system; it is sent when the current callback returns.

        Returns its ``ResultRef``: an argument (or attribute) of a task pushed later that stands
        for this one's result, as a Future does for an application's."""
        return self._runner.add_tasks([task])[0]

    def push_tasks(self, tasks: Iterable[Task]) -> list[ResultRef]:
        """``push_task`` for each; their refs, in order."""
        return self._runner.add_tasks(tasks)

    def cluster(self) -> dict[str, int]:
        """Slaves and workers the master has now (a snapshot, for sizing work)."""
        return self._runner.cluster_info()


class SystemRunner:
    """Runs one task system on its own thread, fed by the master's networking thread.

    When ``durable``, every ``push`` to the master carries a snapshot of the system (with its
    outstanding tasks and the sequence number of the last result applied), so a restarted master
    resumes from the snapshot and replays only the results that came after it.
    """

    def __init__(
        self,
        system_id: str,
        client_id: str,
        payload: bytes,
        post: Callable[[RunnerMail], None],
        cluster_info: Callable[[], dict[str, int]],
        *,
        durable: bool = False,
        restored: bool = False,
        replay: ResultBatch | None = None,
    ) -> None:
        self.system_id = system_id
        self.client_id = client_id
        self._payload = payload
        self._post = post
        self.cluster_info = cluster_info
        self._durable = durable
        self._restored = restored
        self._replay = replay or []
        self.inbox: queue.SimpleQueue[ResultBatch | None] = queue.SimpleQueue()
        self._pending: dict[str, Task] = {}  # task id -> the task object, until its result is in
        self._outgoing: list[Task] = []
        #: Tasks the master sent back to be pickled again (``RESEND``), each with the input it
        #: did not know: not new, not counted.
        self._again: list[tuple[Task, str]] = []
        #: Tasks that cannot run, an input having failed, with their error: applied here.
        self._failed_now: list[tuple[Task, BaseException]] = []
        #: The refs of tasks not applied yet, by task id: each gets its task's outcome then (a
        #: weak reference: most are dropped as soon as ``push_task`` returns them).
        self._refs: dict[str, weakref.ref[ResultRef]] = {}
        #: Refs of failed tasks still referred to: the cause of their takers' errors.
        self._failed_refs: weakref.WeakValueDictionary[str, ResultRef] = (
            weakref.WeakValueDictionary()
        )
        self.generated = 0
        self.finished = 0
        #: Tasks whose outcome was an error, and what the first of them said (with its remote
        #: traceback): progress reports carry both, so a run whose every task fails says so.
        self.failed = 0
        self.first_failure: str | None = None
        self._failure_sent = False
        self._applied_seq = 0  # the journal's number of the last result applied
        self._snapshot_seq = 0
        self._last_snapshot = time.monotonic()
        self._last_progress = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"{RUNNER_THREAD_PREFIX}{system_id[:8]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.inbox.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- called from callbacks (runner thread) -----------------------------------------------

    def add_tasks(self, tasks: Iterable[Task], with_refs: bool = True) -> list[ResultRef]:
        """Queue tasks for the next flush; their refs (none for ``generate_tasks``'s list,
        whose refs no one could hold)."""
        refs = []
        for task in tasks:
            if not isinstance(getattr(task, "task_id", None), str):
                raise TaskSystemError(
                    f"{task!r} is not a taskswarm task: subclass ts.Task and call "
                    "super().__init__() in its __init__"
                )
            task.system_id = self.system_id
            task.client_id = self.client_id
            self._outgoing.append(task)
            if not with_refs:
                continue
            ref = ResultRef(task.task_id, self.system_id, str(task.name))
            self._refs[task.task_id] = weakref.ref(ref)
            refs.append(ref)
        return refs

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._begin()
            batch: ResultBatch | None = self._replay
            while batch is not None:
                if self._apply(batch):
                    return
                self._flush()
                self._check_waiting()
                self._report_progress()
                batch = self._next_batch()
        except _Finished:
            return
        except BaseException as exc:  # noqa: BLE001 - a broken system fails alone, loudly
            # A TaskSystemError says all there is to say; a bug's traceback is worth printing.
            log.error(
                "task system %s failed: %s",
                self.system_id,
                exc,
                exc_info=not isinstance(exc, TaskSystemError),
            )
            self._finish(None, exc, format_remote_traceback(exc))

    def _next_batch(self) -> ResultBatch | None:
        """Wait for results; take everything already queued too (one flush for all of it)."""
        batch = self.inbox.get()
        while batch is not None:
            try:
                more = self.inbox.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self.inbox.put(None)
                break
            batch = batch + more
        return batch

    def _begin(self) -> None:
        payload, self._payload = self._payload, b""
        self.handle = MasterHandle(self)
        if self._restored:
            with inputs.reviving(self._revived):
                state = cloudpickle.loads(payload)
            self.system, self._pending, self.generated, self.finished = state
            return
        self.system = cloudpickle.loads(payload)
        self.system.init_system(self.handle)
        self.add_tasks(self.system.generate_tasks(self.handle) or [], with_refs=False)
        self._flush(force_snapshot=True)
        self._check_waiting()

    def _apply(self, batch: ResultBatch) -> bool:
        """Apply a batch of results, asking after each whether the system is complete."""
        for seq, task_id, ok, data in batch:
            if seq == RESEND:
                self._resend(task_id, data.decode())
                continue
            self._applied_seq = max(self._applied_seq, seq)
            task = self._pending.pop(task_id, None)
            if task is None:
                continue  # a duplicate delivery: each task is applied once
            result, error = load_outcome(ok, data, task.name)
            if self._applied(task, result, error):
                return True
        return False

    def _revived(self, ref: ResultRef) -> None:
        """A pending ref found in the snapshot this runner restores."""
        self._refs[ref.task_id] = weakref.ref(ref)

    def _resend(self, task_id: str, dep: str) -> None:
        """The master sent a task back: it named input ``dep``, whose outcome had already left
        for here. Applied by now, it goes in the task's pickle by value."""
        task = self._pending.pop(task_id, None)
        if task is not None:
            self._again.append((task, dep))

    def _applied(self, task: Task, result: Any, error: BaseException | None) -> bool:
        """Give the system one task's outcome; True if it is complete now (and finished)."""
        alive = self._refs.pop(task.task_id, None)
        ref = alive() if alive is not None else None
        if ref is not None:
            ref.outcome = (result, error)
            if error is not None:
                self._failed_refs[task.task_id] = ref
        if isinstance(error, DependencyError):
            given = self._failed_refs.get(error.dependency)
            if given is not None and given.outcome is not None:
                error.__cause__ = given.outcome[1]  # the input's own error, as for a Future
        self.finished += 1
        if error is not None:
            self._count_failure(task, error)
        task.finished(result, error)
        self.system.task_finished(self.handle, task, result, error)
        if self.system.is_complete(self.handle):
            self._finish(*self._gather())
            return True
        return False

    def _check_waiting(self) -> None:
        """After a flush: a system with no task left to wait for is complete, or broken."""
        if not self._pending and not self.system.is_complete(self.handle):
            raise TaskSystemError(
                "the task system is not complete but has no task left to wait for: "
                "generate_tasks or task_finished must push tasks until is_complete is True"
            )
        if not self._pending:
            self._finish(*self._gather())
            raise _Finished

    def _gather(self) -> tuple[Any, Any]:
        """``gather_result``'s ``(result, error)`` pair, checked: Concurrent's samples returned a
        bare value (the seed asks for a pair), which would otherwise end in a bare unpacking
        ``TypeError`` that names neither the method nor the fix."""
        outcome = self.system.gather_result(self.handle)
        name = f"{type(self.system).__name__}.gather_result"
        if not isinstance(outcome, tuple) or len(outcome) != 2:
            raise TaskSystemError(
                f"{name} returned {_short(outcome)}, not a (result, error) pair: "
                "return (result, None) on success, (None, error) on failure"
            )
        result, error = outcome
        if error is not None and not isinstance(error, (BaseException, str)):
            raise TaskSystemError(
                f"{name} returned {_short(outcome)}: the second item is the error, and must be "
                "None, an exception or a message; to send a pair as the result, return "
                "((a, b), None)"
            )
        return result, error

    def _flush(self, force_snapshot: bool = False) -> None:
        """Send what the callbacks pushed (with a snapshot when durable).

        A task an input of which has failed is not sent: it fails here, its callbacks run
        (they may push more), before the snapshot, which so never holds it half done."""
        records: list[tuple[TaskMeta, bytes]] = []
        counts = (self.generated, self.finished)
        while self._outgoing or self._again or self._failed_now:
            again, self._again = self._again, []
            tasks, self._outgoing = self._outgoing, []
            self.generated += len(tasks)
            if again:
                records += self._pickled([task for task, _ in again], [dep for _, dep in again])
            records += self._pickled(tasks)
            failed_now, self._failed_now = self._failed_now, []
            for task, error in failed_now:
                if self._applied(task, None, error):
                    raise _Finished
        snapshot = None
        due = time.monotonic() - self._last_snapshot > SNAPSHOT_INTERVAL
        if self._durable and (
            counts != (self.generated, self.finished)
            or force_snapshot
            or (due and self._applied_seq > self._snapshot_seq)
        ):
            snapshot = self._snapshot()
        if records or snapshot is not None:
            self._post(Push(self.system_id, records, snapshot, self._applied_seq))

    def _pickled(
        self, tasks: list[Task], unknown: list[str] | None = None
    ) -> list[tuple[TaskMeta, bytes]]:
        """Each task's metadata and pickle, its pending inputs named in ``deps``; a task whose
        input failed goes to ``_failed_now`` instead, with its error. ``unknown``: for tasks
        the master sent back, the input each named that it did not know."""
        if not tasks:
            return []
        records = []
        collector = SystemCollector(self.system_id)
        outer = inputs.collect(collector)
        try:
            for i, task in enumerate(tasks):
                if unknown is not None:
                    collector.unknown = unknown[i]
                try:
                    payload = cloudpickle.dumps(task)
                except DependencyFailed as failed:
                    collector.take()
                    self._failed_now.append((task, self._cannot_run(task, failed, collector)))
                    continue
                meta = task_meta(task)
                if collector.deps:
                    meta.deps = list(collector.take())
                records.append((meta, payload))
                self._pending[task.task_id] = task
        finally:
            inputs.collect(outer)
        return records

    @staticmethod
    def _cannot_run(task: Task, failed: DependencyFailed, collector: SystemCollector) -> Exception:
        if failed.task_id == collector.unknown:
            return DependencyError(
                f"task {task.name!r} did not run: its input, task {failed.task_id}, is known "
                "neither to the master nor to this task system (a ResultRef must come from "
                "master.push_task of this system)",
                dependency=failed.task_id,
            )
        return dependency_error(str(task.name), failed.task_id, failed.error)

    def _snapshot(self) -> bytes | None:
        try:
            data: bytes = cloudpickle.dumps(
                (self.system, self._pending, self.generated, self.finished)
            )
        except Exception as exc:
            log.warning(
                "task system %s cannot be snapshotted (%s); it will not survive a master restart",
                self.system_id,
                exc,
            )
            self._durable = False
            return None
        self._snapshot_seq, self._last_snapshot = self._applied_seq, time.monotonic()
        return data

    def _count_failure(self, task: Task, error: BaseException) -> None:
        self.failed += 1
        if self.first_failure is None:
            self.first_failure = describe_failure(task.name or task.task_id, error)

    def _report_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_INTERVAL:
            self._last_progress = now
            self._post(self._progress())

    def _progress(self) -> Progress:
        """A ``progress`` message: done, total, failed, and the first failure's text the first
        time there is one to tell (the application keeps it; it is not sent again)."""
        first = None
        if self.first_failure is not None and not self._failure_sent:
            first, self._failure_sent = self.first_failure, True
        return Progress(self.system_id, self.finished, self.generated, self.failed, first)

    def _finish(self, result: Any, error: Any, tb: str = "") -> None:
        self._post(self._progress())
        failed = error is not None
        if isinstance(error, BaseException):
            error = ExceptionWithTraceback(error, tb)
        try:
            payload = cloudpickle.dumps((result, error))
        except Exception as exc:
            failed = True
            payload = cloudpickle.dumps(
                (None, TaskSystemError(f"the task system's result could not be pickled: {exc}"))
            )
        self._post(Done(self.system_id, payload, failed))


def _short(value: Any, limit: int = 80) -> str:
    """``value`` as an error message shows it: its type and a repr cut to ``limit``."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


def describe_failure(task_name: str, error: BaseException) -> str:
    """What a person reads of a failed task: its name, the error, and the worker's traceback
    when it came with one."""
    text = f"task {task_name!r} failed: {type(error).__name__}: {error}"
    cause = error.__cause__
    remote = getattr(cause, "tb", None)
    if isinstance(remote, str) and remote.strip():
        text += "\n" + remote.strip().strip('"').strip()
    return text
