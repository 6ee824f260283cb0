"""The process pool's end of one worker process: its socket, its pipeline, writes, its end.

Apart from the pool because it is the same for every worker whatever the pool decides: how a
worker is started (from a forkserver), how a task is framed for it, how a write to it never
holds up the slave's loop (a big one goes on in a thread of its own, later ones wait for it), and
how it is ended (with its process group, its writer joined before its socket is closed).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..protocol import sharing
from ..protocol.digests import Payload, digest_of, raw
from .containment import kill_group
from .queued import WorkItem
from .shipping import start_worker
from .worker import STOP, worker_main, write_all, writev_all

__all__ = [
    "LONG_WRITE",
    "PIPELINE_BYTES",
    "PoolWorker",
    "default_context",
    "end",
    "frame_task",
    "send",
    "spawn",
    "warm_up",
]

#: Most payload bytes sent ahead to a busy worker (well under a socket's buffer).
PIPELINE_BYTES = 32 * 1024
#: Bytes written to a worker at once past which a thread of their own writes them: a worker
#: reads a few hundred MiB a second, and the slave's loop (its heartbeats) must not wait on it.
LONG_WRITE = 8 * 1024 * 1024
#: Payloads at least this big are written from where they lie, not copied into a message.
_BIG = 64 * 1024

_pack = msgpack.Packer().pack


@dataclass(eq=False)
class PoolWorker:
    """One worker process, and the tasks sent to it whose outcomes have not come back."""

    process: Any
    conn: Any
    unpacker: Any = field(default_factory=lambda: msgpack.Unpacker(raw=False, max_buffer_size=0))
    pipeline: deque[WorkItem] = field(default_factory=deque)  # sent, no outcome yet
    pipeline_bytes: int = 0
    started: float = 0.0  # when the first task of the pipeline started (as the slave saw it)
    retiring: bool = False
    #: Started before the latest shipped code: takes no new task, replaced once it is idle.
    stale: bool = False
    writer: threading.Thread | None = None  # writing a big task to it, off the slave's loop

    @property
    def task(self) -> WorkItem | None:
        """The task running now."""
        return self.pipeline[0] if self.pipeline else None

    @property
    def deadline(self) -> float | None:
        task = self.task
        if task is None or task.timeout is None:
            return None
        return self.started + task.timeout

    def fits(self, item: WorkItem, depth: int) -> bool:
        """Whether ``item`` joins the pipeline now (``depth`` tasks at most)."""
        if not self.pipeline:
            return True  # an idle worker takes anything: it is reading, so the write completes
        return len(self.pipeline) < depth and self.pipeline_bytes + _weight(item) <= (
            PIPELINE_BYTES
        )

    def hand(self, item: WorkItem) -> list[Any]:
        """Add ``item`` to the pipeline; returns it framed for ``send``."""
        self.pipeline.append(item)
        self.pipeline_bytes += _weight(item)
        return frame_task(item)

    def take_running(self) -> WorkItem:
        """Take the running task off the pipeline (it finished, or its worker is ended)."""
        item = self.pipeline.popleft()
        self.pipeline_bytes -= _weight(item)
        return item

    def take_pipeline(self) -> list[WorkItem]:
        """Empty the pipeline (its worker is ended): the tasks it held, none of them started."""
        items = list(self.pipeline)
        self.pipeline.clear()
        self.pipeline_bytes = 0
        return items


def _weight(item: WorkItem) -> int:
    """A task's bytes on the way to its worker, its inputs' results included: a busy worker
    reads nothing until its task ends, so what is sent ahead to it must fit in its socket's
    buffer, or the slave's write would wait on a worker that waits on the slave."""
    if item.inputs is None:
        return len(item.payload)
    return len(item.payload) + sum(len(data) for _, data in item.inputs)


def default_context() -> Any:  # a forkserver or spawn context: both have Process
    # forkserver: workers fork from a small clean process, not from the slave (whose ZeroMQ
    # threads make a plain fork unsafe), and start far faster than with spawn.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # What a worker needs to run a task, imported once here rather than by each worker
        # at its first task: the worker's loop, and what rebuilds a task (pickling).
        ctx.set_forkserver_preload(
            ["taskswarm.slave.worker", "taskswarm.slave.shipping", "taskswarm.protocol.pickling"]
        )
        return ctx
    return multiprocessing.get_context("spawn")


def warm_up(context: Any) -> None:
    """Have the forkserver start booting now, without waiting for it: a fresh interpreter that
    imports the worker's modules once (``set_forkserver_preload``), from which every worker is
    then forked in a millisecond. Its boot overlaps the slave's own start and registration
    instead of holding up the slave's first worker."""
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def spawn(context: Any, identity: str, paths: Sequence[str] = ()) -> PoolWorker:
    """A new worker process, and the slave's end of its socket. It shares big results as this
    slave was told to (``sharing.configured()``), and imports shipped code from ``paths``
    (``shipping.start_worker``)."""
    parent_end, child_end = context.Pipe(duplex=True)
    share = sharing.configured()
    target: Any = start_worker if paths else worker_main
    args: tuple[Any, ...] = (child_end, share, list(paths)) if paths else (child_end, share)
    process = context.Process(
        target=target,
        args=args,
        name=f"taskswarm-worker-{identity}",
        daemon=True,
    )
    process.start()
    child_end.close()
    return PoolWorker(process, parent_end)


def end(
    worker: PoolWorker, *, stop: bool = False, wait: bool = False, running: WorkItem | None = None
) -> None:
    """End a worker with its process group (whatever its tasks started goes with it): asked to
    stop first (``stop``), or given a moment to exit by itself (``wait``), or at once.
    ``running``: the task it ran, whose outcome will never be read; a result it may have put
    in shared memory for it is freed."""
    if stop:
        send(worker, STOP)
    if stop or wait:
        worker.process.join(timeout=1.0)
    kill_group(worker.process)
    _join_writer(worker)
    worker.conn.close()
    share = sharing.configured()
    if share is not None:
        for item in [running, *worker.pipeline] if running is not None else worker.pipeline:
            sharing.drop_results(share.prefix, worker.process.pid, item.task_id)


def frame_task(item: WorkItem) -> list[Any]:
    """A task as the worker reads it, msgpack ``[task_id, payload, digest]``, in one to three
    pieces (a fourth item, its inputs, for a task that takes other tasks' results). The digest
    is the one the task's signed header gave: the worker checks it right before it unpickles
    the task (a payload made on this host, plain bytes, goes without)."""
    payload = item.payload
    if item.inputs is not None:
        # ``[task_id, payload, digest, [[input id, result, digest], ...]]``: a task that takes
        # other tasks' results (rare; packed whole, copies and all).
        given = [[dep, raw(data), digest_of(data)] for dep, data in item.inputs]
        return [_pack([item.task_id, raw(payload), digest_of(payload), given])]
    if type(payload) is Payload:
        data, tail = payload.raw, [payload.digest]
    else:
        data, tail = payload, []
    if len(data) < _BIG:
        return [_pack([item.task_id, data, *tail])]
    head = b"\x93" if tail else b"\x92"  # an array of 3 (or 2): the id, the payload...
    head += _pack(item.task_id) + b"\xc6" + len(data).to_bytes(4, "big")  # ...a bin 32 header
    return [head, data, _pack(tail[0])] if tail else [head, data]


def send(worker: PoolWorker, data: bytes | list[Any]) -> None:
    """Write to a worker, in order. A big write goes on in a thread while the slave's loop
    carries on (its heartbeats, other workers' results); a later write to the same worker
    (a STOP, a SKIP) waits for it first. A worker that died is noticed by the pool's read."""
    _join_writer(worker)
    if isinstance(data, list) and sum(map(len, data)) >= LONG_WRITE:
        worker.writer = threading.Thread(
            target=_write_quietly, args=(worker, data), name="taskswarm-big-write", daemon=True
        )
        worker.writer.start()
        return
    _write_quietly(worker, data)


def _join_writer(worker: PoolWorker) -> None:
    """Before its socket is closed: a write still going on must end (the worker is stopped
    or dead by then, so it fails at once), or it could write to whatever next gets the fd."""
    if worker.writer is not None:
        worker.writer.join()
        worker.writer = None


def _write_quietly(worker: PoolWorker, data: bytes | list[Any]) -> None:
    try:
        if isinstance(data, list):
            writev_all(worker.conn.fileno(), data)
        else:
            write_all(worker.conn.fileno(), data)
    except (OSError, ValueError):
        pass  # it died (or its socket was closed): collect() sees it and reports its tasks
