"""What an application still waits for: its tasks' Futures and its task systems' handles.

User threads add to it as they submit and take from it as they cancel; the I/O thread takes
from it as outcomes arrive, and reads it to tell a master it reconnected to what is still due.
One lock guards it, held only for the dictionary work (never while a Future is resolved, whose
callbacks may submit again). A task leaves the ledger before its Future is resolved, so nothing
here holds a result once its Future has it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import Any

from ..errors import BadDigest, DependencyError, TaskError
from ..protocol import sharing
from ..protocol.digests import Payload, opened
from ..protocol.keys import ClusterKeys
from ..protocol.messages import Delivered
from ..task import Task, load_outcome
from .handles import SystemHandle, TaskFuture
from .meter import ProgressCallback
from .remote import Remote

__all__ = ["Entry", "Ledger", "TaskFinished", "resolve"]

log = logging.getLogger(__name__)

#: A task sent and not yet done: the task itself (its ``finished`` runs here) and its Future.
Entry = tuple[Task, TaskFuture]
#: Called as ``(task, result, error)`` after each plain task's Future is resolved.
TaskFinished = Callable[[Task, Any, "BaseException | None"], None]


class Ledger:
    """Tasks by id and task systems by id, as one application waits for them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: dict[str, Entry] = {}
        #: The task systems waited for, by id, until their outcome arrives.
        self.systems: dict[str, SystemHandle] = {}
        #: Handles of systems that ended, while the program refers to them: ``system_result``
        #: of one finds its outcome here (the master let it go once received). Weak, so the
        #: ledger holds no outcome the program has dropped: it is bounded by live work.
        self.ended_systems: weakref.WeakValueDictionary[str, SystemHandle] = (
            weakref.WeakValueDictionary()
        )
        #: The systems this connection sent (not those it only waits for): Ctrl-C cancels these.
        self.sent_systems: set[str] = set()
        #: Called as ``(task, result, error)`` after each plain task's Future is resolved.
        self.on_task_finished: TaskFinished | None = None
        #: task id -> the shared memory segment holding its payload (``sharing``), freed when
        #: the task leaves the ledger, however it leaves.
        self.segments: dict[str, str] = {}
        #: Inputs (tasks whose Futures are arguments of tasks being sent) whose outcome this
        #: application may not confirm yet: the SUBMIT naming them has not left (see
        #: ``taskswarm.inputs``). task id -> how many tasks being sent name it.
        self.pins: Counter[str] = Counter()
        #: Inputs named by tasks in this ledger: task id -> how many.
        self.uses: Counter[str] = Counter()
        #: Inputs whose result is in a shared memory segment that their dependents' workers
        #: map: task id -> the segment, freed when no task here takes it any more.
        self.kept: dict[str, str] = {}
        #: Scattered data still referred to (``app.scatter``): its segment is never freed
        #: while it is here.
        self.scattered_ids: set[str] = set()
        #: Scattered data and kept results whose Future was let go, not yet told to the
        #: master: appended by the garbage collector (no lock), taken by the I/O thread.
        self.forgotten: deque[str] = deque()
        #: Futures whose result stayed on its slave (``taskswarm.client.remote``), by task id:
        #: told where it is now when it is made again.
        self.remote: weakref.WeakValueDictionary[str, TaskFuture] = weakref.WeakValueDictionary()
        #: What a kept result is fetched with (the link sets them): the cluster's keys, and
        #: what wakes the I/O thread to tell the master of Futures let go (None once closed).
        self.keys: ClusterKeys | None = None
        self.wake: Callable[[], None] | None = None

    # -- tasks -------------------------------------------------------------------------------------

    def add(self, entries: Iterable[Entry], segments: dict[str, str] | None = None) -> None:
        with self.lock:
            tasks, uses = self.tasks, self.uses
            for task, future in entries:
                tasks[task.task_id] = (task, future)
                if future.inputs:
                    uses.update(f.task_id for f in future.inputs)
            if segments:
                self.segments.update(segments)

    def take(self, task_ids: Iterable[str]) -> list[Entry | None]:
        """Remove these tasks; each one's entry, or None where it was not waited for."""
        with self.lock:
            pop = self.tasks.pop
            taken = [pop(task_id, None) for task_id in task_ids]
        self._free_segments(task_ids)
        if self.uses:
            self._release_inputs(taken)
        return taken

    # -- inputs (Futures as arguments) ---------------------------------------------------------

    def takes(self, task_id: str) -> bool:
        """Whether a task waited for here, or one being sent, takes ``task_id`` as an input."""
        with self.lock:
            return task_id in self.uses or task_id in self.pins

    def pin(self, task_id: str) -> None:
        """A task being sent names input ``task_id``: its outcome is not confirmed meanwhile."""
        with self.lock:
            self.pins[task_id] += 1

    def unpin(self, task_ids: Iterable[str]) -> None:
        """The SUBMIT naming these inputs has left (or never will): they may be confirmed."""
        with self.lock:
            free = self._count_down(self.pins, task_ids)
        for name in free:
            sharing.free_name(name)

    def _release_inputs(self, entries: Iterable[Entry | None]) -> None:
        """Tasks that left the ledger no longer take their inputs: an input's kept result is
        freed once nothing here takes it."""
        with self.lock:
            taken = []
            for entry in entries:
                if entry is not None and entry[1].inputs:
                    taken += [future.task_id for future in entry[1].inputs]
                    entry[1].inputs = ()  # its inputs' results are not kept alive by it
            free = self._count_down(self.uses, taken)
        for name in free:
            sharing.free_name(name)

    def _count_down(self, counts: Counter[str], task_ids: Iterable[str]) -> list[str]:
        """One less of each in ``counts`` (pins or uses; the lock held); returns the kept
        segments of the inputs nothing here refers to any more, to free."""
        free = []
        for task_id in task_ids:
            left = counts[task_id] - 1
            if left > 0:
                counts[task_id] = left
                continue
            counts.pop(task_id, None)
            name = self._unused_segment(task_id)
            if name is not None:
                free.append(name)
        return free

    def _unused_segment(self, task_id: str) -> str | None:
        """An input's kept segment, taken out, once no task pins or takes it and no scattered
        Future refers to it (the lock held); None while something does, or if none is kept."""
        if task_id in self.uses or task_id in self.pins or task_id in self.scattered_ids:
            return None
        return self.kept.pop(task_id, None)

    def scattered(self, data_id: str, payload: bytes) -> None:
        """Scattered data: its segment (if it is in one) lives until it is forgotten."""
        name = sharing.name_of(payload) if sharing.is_reference(payload) else None
        with self.lock:
            self.scattered_ids.add(data_id)
            if name is not None:
                self.kept[data_id] = name

    def forget_scattered(self, data_id: str) -> None:
        """Scattered data no longer referred to: its segment goes once no task here takes it
        (none can: a task that takes it holds its Future until it is done)."""
        with self.lock:
            self.scattered_ids.discard(data_id)
            free = self._unused_segment(data_id)
        if free is not None:
            sharing.free_name(free)

    def _keep_or_free(self, task_id: str, reference: bytes) -> None:
        """A result read from shared memory: freed, unless tasks being sent or waiting here
        take it (their workers map it). Decided after its Future is resolved: a task pickled
        from then on sees it done and takes its value instead."""
        with self.lock:
            keep = task_id in self.uses or task_id in self.pins
            name = sharing.name_of(reference) if keep else None
            if name is not None:
                self.kept[task_id] = name
        if name is None:
            sharing.free(reference)

    def _free_segments(self, task_ids: Iterable[str]) -> None:
        """The payload segments of tasks that left the ledger (none, unless sharing is on)."""
        if not self.segments:
            return
        with self.lock:
            pop = self.segments.pop
            names = [pop(task_id, None) for task_id in task_ids]
        for name in names:
            if name is not None:
                sharing.free_name(name)

    def find(self, task_ids: Iterable[str]) -> list[Entry | None]:
        with self.lock:
            get = self.tasks.get
            return [get(task_id) for task_id in task_ids]

    def waiting(self) -> set[str]:
        """The ids of every task still waited for."""
        with self.lock:
            return set(self.tasks)

    def futures(self) -> list[TaskFuture]:
        with self.lock:
            return [future for _, future in self.tasks.values()]

    # -- outcomes (the I/O thread) ----------------------------------------------------------------

    def mark_running(self, task_ids: Iterable[str]) -> None:
        """A worker began these tasks: their Futures can no longer be cancelled."""
        for entry in self.find(task_ids):
            if entry is not None:
                entry[1].mark_running()

    def settle(self, results: Sequence[Delivered], payloads: Sequence[bytes | Payload]) -> int:
        """Outcomes arrived, each ``(task_id, ok)`` with a pickled outcome: each task leaves
        the ledger, its ``finished`` and ``on_task_finished`` run, its Future resolves.

        Each payload is checked against the digest its signed header gave right before it is
        unpickled; one altered on the way fails its task with ``BadDigest``, unpickled by no
        one. Returns how many were refused so."""
        with self.lock:
            pop = self.tasks.pop
            entries = [pop(result.task_id, None) for result in results]
        if self.segments:
            self._free_segments([result.task_id for result in results])
        refused = 0
        for result, data, entry in zip(results, payloads, entries, strict=False):
            if entry is not None:
                refused += self._deliver(entry[0], entry[1], result.ok, data, result.at)
            elif result.task_id in self.remote:
                self._moved(result, data)
            else:
                sharing.free(data)  # a result no one here waits for (any more): let it go
        if self.uses:
            self._release_inputs(entries)
        # Nothing here may hold a result once its Future has it: the caller alone decides when
        # it is let go (concurrent.futures' test_free_reference).
        entries = entry = None  # type: ignore[assignment]  # noqa: F841
        return refused

    def _deliver(
        self, task: Task, future: TaskFuture, ok: bool, sealed: bytes | Payload, at: str | None
    ) -> bool:
        on_task_finished = self.on_task_finished
        if ok and at is not None and self.keys is not None:
            # Kept on its slave: the Future is done, its result fetched when asked for.
            remote = future.remote = Remote(task.task_id, at, self.keys, task.name)
            self.remote[task.task_id] = future
            remote.release = weakref.finalize(future, _let_go, self.forgotten, self, task.task_id)
            self._end(task, future, (remote, None))
            return False
        try:
            data = opened(sealed)
        except BadDigest as exc:
            exc.add_note(f"(the outcome of task {task.name!r} was refused, not unpickled)")
            self._end(task, future, (None, exc))
            return True
        if not ok and not len(data):  # taken back unrun (cancel_queued): no outcome
            future.stop()
            if on_task_finished is not None:
                on_task_finished(task, None, CancelledError())
            return False
        if ok and sharing.is_reference(data):
            if on_task_finished is None and type(task).finished is Task.finished:
                # Mapped, not read: read (digest and unpickle) when ``result()`` asks, as a
                # kept result is fetched; so a graph's intermediate results cost nothing here.
                try:
                    lazy = sharing.mapped(bytes(data))
                except (OSError, ValueError):
                    pass  # read below, which says what is wrong
                else:
                    self._end(task, future, (lazy, None))
                    self._keep_or_free(task.task_id, bytes(data))
                    return False
            outcome = load_outcome(ok, data, task.name, free=False)
            self._end(task, future, outcome)
            del outcome  # the caller alone holds the result
            self._keep_or_free(task.task_id, bytes(data))
            return False
        self._end(task, future, load_outcome(ok, data, task.name))
        return False

    def _moved(self, result: Delivered, data: bytes | Payload) -> None:
        """A kept result was made again elsewhere, or is lost for good."""
        future = self.remote.get(result.task_id)
        remote = future.remote if future is not None else None
        if remote is None:
            return  # fetched already, or let go
        if result.ok and result.at is not None:
            remote.move(result.at)
        elif not result.ok:
            error: BaseException | None
            try:
                opened_data = opened(data)
                if len(opened_data):
                    error = load_outcome(False, opened_data, remote.name)[1]
                else:  # cancelled while it was being made again
                    error = TaskError(
                        f"the result of task {remote.name!r} was lost with its slave, and "
                        "making it again was cancelled"
                    )
            except BadDigest as exc:
                error = exc
            remote.move(None, error)

    def lose_remote(self, error: BaseException) -> None:
        """The connection closed: results still on their slaves can no longer be had (the
        master lets them go with the application), so a ``result()`` raises at once."""
        for future in list(self.remote.values()):
            if future.remote is not None:
                future.remote.move(None, error)

    def end(self, task: Task, future: TaskFuture, error: BaseException) -> None:
        """A task that never left this process failed (one of its inputs had failed)."""
        self._end(task, future, (None, error))

    def _end(
        self, task: Task, future: TaskFuture, outcome: tuple[Any, BaseException | None]
    ) -> None:
        on_task_finished = self.on_task_finished
        error = outcome[1]
        if type(error) is DependencyError and future.inputs:
            _add_cause(error, future.inputs)
        if type(task).finished is not Task.finished:  # most tasks keep the no-op
            try:
                task.finished(*outcome)
            except Exception:
                log.error("%r.finished() raised", task, exc_info=True)
        if on_task_finished is not None:
            try:
                on_task_finished(task, *outcome)
            except Exception:
                log.error("on_task_finished callback raised", exc_info=True)
        resolve(future, *outcome)

    def fail(self, task_ids: Iterable[str], error: BaseException) -> None:
        """These tasks end with ``error`` (the master refused them)."""
        for entry in self.take(task_ids):
            if entry is not None:
                resolve(entry[1], exception=error)

    # -- task systems ------------------------------------------------------------------------------

    def track_system(
        self, system_id: str, progress: ProgressCallback | None, name: str = ""
    ) -> tuple[SystemHandle, bool]:
        """The handle that waits for ``system_id`` (a new one if none waits yet), and whether
        it is new."""
        with self.lock:
            handle = self.systems.get(system_id)
            if handle is None or handle.done():
                handle = self.systems[system_id] = SystemHandle(system_id, progress, name=name)
                return handle, True
            if progress is not None:
                handle.progress = progress
            return handle, False

    def progress(
        self, system_id: str, done: int, total: int, failed: int, first_failure: str | None
    ) -> None:
        handle = self.systems.get(system_id)
        if handle is not None:
            try:
                handle.set_progress(done, total, failed, first_failure)
            except Exception:
                log.error("progress callback raised", exc_info=True)

    def system_ended(
        self, system_id: str, result: Any = None, error: BaseException | None = None
    ) -> None:
        with self.lock:
            handle = self.systems.pop(system_id, None)
            if handle is None:
                return
            self.ended_systems[system_id] = handle
            self.sent_systems.discard(system_id)
        handle.set_outcome(result, error)

    def ended_system(self, system_id: str) -> SystemHandle | None:
        """The handle of a system that ended, if the program still refers to it."""
        with self.lock:
            return self.ended_systems.get(system_id)

    def forget_system(self, system_id: str, handle: SystemHandle) -> None:
        """Stop waiting for a system the master refused (when ``handle`` still stands for it)."""
        with self.lock:
            if self.systems.get(system_id) is handle:
                del self.systems[system_id]
            self.sent_systems.discard(system_id)

    def unfinished_systems(self) -> list[str]:
        with self.lock:
            return [h.system_id for h in self.systems.values() if not h.done()]

    def sent_and_unfinished(self) -> list[SystemHandle]:
        with self.lock:
            return [
                handle
                for system_id, handle in self.systems.items()
                if system_id in self.sent_systems and not handle.done()
            ]

    # -- the end -----------------------------------------------------------------------------------

    def fail_all(self, error: BaseException) -> None:
        """Every Future and handle still waiting ends with ``error``."""
        with self.lock:
            futures = [future for _, future in self.tasks.values()]
            systems = list(self.systems.values())
            self.tasks.clear()
            names, self.segments = list(self.segments.values()), {}
            names += self.kept.values()
            self.kept, self.uses = {}, Counter()
        for name in names:
            sharing.free_name(name)
        for future in futures:
            resolve(future, exception=error)
        for handle in systems:
            handle.set_outcome(error=error)


def _let_go(forgotten: deque[str], ledger: Ledger, task_id: str) -> None:
    """A kept result's Future was garbage-collected: tell the master (the I/O thread does;
    this may run in any thread, under any lock, so it only hands the id over)."""
    forgotten.append(task_id)
    wake = ledger.wake
    if wake is not None:
        wake()


def _add_cause(error: DependencyError, inputs: Iterable[Future[Any]]) -> None:
    """The master failed a task whose input failed: the input's own error is the cause."""
    for future in inputs:
        if getattr(future, "task_id", None) == error.dependency and future.done():
            error.__cause__ = CancelledError() if future.cancelled() else future.exception()
            return


def resolve(
    future: Future[Any], result: Any = None, exception: BaseException | None = None
) -> None:
    """Settle ``future`` unless its owner cancelled it meanwhile."""
    try:  # set_* refuse a future already done (cancelled meanwhile): one lock, not two
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # cancelled by its owner in the meantime
