"""Tasks on their way out of an application: pickled in the caller's thread, in chunks.

``Application.push_tasks`` hands its tasks here. Each is pickled where it is submitted (a task
that cannot be pickled fails at ``submit``, saying why), its Future made and entered in the
ledger, and the tasks go to the link's I/O thread a chunk at a time, so the master starts on
the first ones while later ones are still being pickled. Futures among a task's arguments are
collected while it is pickled (``taskswarm.inputs``): pending ones become its inputs, named in
its metadata and pinned until its SUBMIT has left; one that already failed fails it at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .. import inputs
from ..inputs import Collector, DependencyFailed, dependency_error
from ..protocol import pickling, sharing
from ..protocol.codec import Kind, too_large
from ..protocol.messages import Ack, Cancel, Scatter, TaskMeta
from ..task import Task, dump_result, dump_shared_result, new_task_id, task_meta
from . import gc_pause
from .handles import TaskFuture
from .ledger import Ledger
from .link import SUBMIT_BYTES, MasterLink

__all__ = ["CHUNK", "Sender"]

#: Tasks pickled before they are handed to the I/O thread: the master starts on the first ones
#: while later ones are still being pickled.
CHUNK = 500

#: A task pickled and not yet handed to the I/O thread: the task, its Future, what the master
#: reads of it, its payload.
Pending = tuple[Task, TaskFuture, TaskMeta, bytes]


class Sender:
    """Pickles one application's tasks and hands them to its link, with their Futures."""

    def __init__(
        self,
        client_id: str,
        link: MasterLink,
        ledger: Ledger,
        share: sharing.Sharing | None,
        on_cancel: Callable[[str], None],
    ) -> None:
        self.client_id = client_id
        self._link, self._ledger, self.sharing = link, ledger, share
        #: What a Future's ``cancel()`` calls (the application's soft cancel).
        self._on_cancel = on_cancel
        #: Big results may stay on their slaves until a Future's ``result()`` asks for them.
        self.keep_results = True

    def scatter(self, value: Any, timeout: float) -> TaskFuture:
        """``Application.scatter``: the value pickled as a result, kept by the master under a
        fresh id until the Future is let go (then FORGET)."""
        link = self._link
        link.check_open()
        data_id = new_task_id()
        share = self.sharing
        payload = dump_shared_result(value, share, data_id) if share else dump_result(value)
        if len(payload) > link.max_payload:
            sharing.free(payload)
            raise too_large("scattered data", len(payload), link.max_bytes)
        self._ledger.scattered(data_id, payload)
        try:
            link.request(Kind.SCATTER, Scatter(data_id=data_id), timeout, [payload], answer=Ack)
        except BaseException:
            self._ledger.forget_scattered(data_id)
            raise
        future = TaskFuture(data_id, _never, self.client_id)
        future.scattered = True
        future.set_result(value)
        weakref.finalize(future, _forget, weakref.ref(link), self._ledger, data_id)
        return future

    def push(self, tasks: Iterable[Task]) -> list[TaskFuture]:
        """One Future per task, in order; all or none (see ``Application.push_tasks``)."""
        futures: list[TaskFuture] = []
        posted: list[TaskFuture] = []
        chunk: list[Pending] = []
        size = 0
        share = self.sharing
        ledger = self._ledger
        collector = Collector(self.client_id, ledger.pin, ledger.unpin)
        outer = inputs.collect(collector)
        paused = gc_pause.pause()
        try:
            for task in tasks:
                try:
                    pending = self._pickle(task, collector)
                except DependencyFailed as failed:
                    futures.append(self._failed_at_once(task, failed, collector))
                    continue
                chunk.append(pending)
                futures.append(pending[1])
                payload = pending[3]
                size += sharing.weight(payload) if share is not None else len(payload)
                if len(chunk) >= CHUNK or size >= SUBMIT_BYTES:
                    self._post(chunk)
                    posted.extend(future for _, future, _, _ in chunk)
                    chunk, size = [], 0
        except BaseException:
            self.withdraw(posted)
            for _, _, meta, payload in chunk:
                sharing.free(payload)  # never handed over
                if meta.deps:
                    ledger.unpin(meta.deps)
            if collector.deps:
                ledger.unpin(list(collector.take()))
            raise
        finally:
            inputs.collect(outer)
            gc_pause.resume(paused)
        self._post(chunk)
        return futures

    def _pickle(self, task: Task, collector: Collector) -> Pending:
        """One task made ready to send: pickled, checked, its Future made; the pending inputs
        it takes (Futures among its arguments) named in its metadata."""
        link = self._link
        payload = pickling.dumps_task(task, self.sharing)
        deps = collector.take() if collector.deps else None
        try:
            if len(payload) > link.max_payload:
                raise too_large(f"task {task.name!r}", len(payload), link.max_bytes)
            meta = task_meta(task)
            if self.keep_results and type(task).finished is Task.finished:
                # Its big result may stay on its slave until asked for (client.remote).
                meta.keep = self._ledger.on_task_finished is None
        except BaseException:
            sharing.free(payload)
            if deps:
                self._ledger.unpin(list(deps))
            raise
        task.client_id = self.client_id
        future = TaskFuture(task.task_id, self._on_cancel, self.client_id)
        future.name = str(task.name)
        if deps:
            meta.deps = list(deps)
            future.inputs = tuple(deps.values())
        return task, future, meta, payload

    def _failed_at_once(
        self, task: Task, failed: DependencyFailed, collector: Collector
    ) -> TaskFuture:
        """A task one of whose inputs had already failed: never sent, its Future failed."""
        if collector.deps:  # inputs pinned before the failed one was met
            self._ledger.unpin(list(collector.take()))
        future = TaskFuture(task.task_id, self._on_cancel, self.client_id)
        future.name = str(task.name)
        self._ledger.end(task, future, dependency_error(task.name, failed.task_id, failed.error))
        return future

    def _post(self, chunk: list[Pending]) -> None:
        if not chunk:
            return
        segments = None
        if self.sharing is not None:
            segments = {
                task.task_id: name
                for task, _, _, payload in chunk
                if sharing.is_reference(payload) and (name := sharing.name_of(payload)) is not None
            }
        self._ledger.add(((task, future) for task, future, _, _ in chunk), segments)
        pinned = [dep for _, _, meta, _ in chunk if meta.deps for dep in meta.deps]
        self._link.post_tasks([(meta, payload) for _, _, meta, payload in chunk], pinned)

    def withdraw(self, futures: Sequence[TaskFuture]) -> None:
        """Cancel tasks already handed over, in one message."""
        if not futures:
            return
        task_ids = [f.task_id for f in futures]
        self._ledger.take(task_ids)
        for future in futures:
            future.stop()
        self._link.post(Kind.CANCEL, Cancel(tasks=task_ids))


def _never(task_id: str) -> None:
    """A scattered value's Future is done from the start: it has nothing to cancel."""


def _forget(link: weakref.ref[MasterLink], ledger: Ledger, data_id: str) -> None:
    """A scattered value's Future was let go: the master may let the value go (once no task
    takes it), and so may this process its shared memory segment. Called by the garbage
    collector, in whatever thread and wherever it runs (a lock may be held there): so it only
    hands the id over, and the link's I/O thread does the rest (``MasterLink``)."""
    ledger.forgotten.append(data_id)
    alive = link()
    if alive is not None and not alive.closed:
        alive.mailbox.wake()
