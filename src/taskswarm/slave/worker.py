"""The loop of one worker process: read tasks, run each, write each outcome back at once.

Tasks arrive on a socket as a stream of msgpack ``[task_id, payload, digest]`` arrays (the
digest its signed header gave, checked right before the task is unpickled); one read takes
every task waiting, so a slave that sends a worker several small tasks at once costs one system
call, not one per task. Each outcome is written the moment its task ends, in the order the tasks
came, with when it began and ended (``[task_id, status, outcome, text, began, ended]``): the
slave always knows which task is running (the first without an outcome), which is how
it enforces timeouts and names the task that killed a worker. A task the slave takes back while
it waits here (a SKIP message) is answered ``cancelled`` in its place, unrun.

Kept tiny and import-light because the forkserver preloads it: every worker forks from a process
that already has it (and cloudpickle) imported.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from ..protocol import sharing
from ..protocol.digests import Payload
from ..task import Status, run_task_reporting

#: Sent instead of a task: finish and exit.
STOP: bytes = msgpack.packb(None)


def skip_message(task_ids: list[str]) -> bytes:
    """Sent after tasks a worker holds but has not started: it answers each with CANCELLED
    instead of running it (``Future.cancel()`` of a task already on its way to a worker)."""
    packed: bytes = msgpack.packb({"skip": task_ids})
    return packed


#: Seconds between two looks for a SKIP while tasks wait in a worker.
LOOK_EVERY = 0.001
#: Most bytes taken from the socket per read.
READ_SIZE = 1 << 20


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def writev_all(fd: int, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write pieces in order with as few system calls as they take, copying none of them."""
    views = [memoryview(p) for p in pieces if len(p)]
    while views:
        written = os.writev(fd, views[:1024])  # IOV_MAX
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def worker_main(conn: Connection, share: sharing.Sharing | None = None) -> None:
    # A process group of its own, led by this worker: whatever its tasks start is in it, and the
    # slave ends the worker by killing the whole group (containment.kill_group), so no child of
    # a task outlives its timeout, its cancellation or its worker. Out of the terminal's
    # foreground group, the worker no longer gets the terminal's Ctrl-C either: the slave
    # gets it and decides what happens to running tasks.
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sharing.configure(share)  # big results of plain tasks go back through shared memory
    fd = conn.fileno()
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    tasks: deque[list[Any] | None] = deque()  # read, not run yet (None: stop)
    skip: set[str] = set()  # tasks the slave took back while they waited here
    looked = 0.0
    while True:
        # Block for work when there is none; otherwise look (one poll) for a SKIP of the task
        # about to run, which the slave may have sent after it -- at most once a millisecond:
        # a skip takes longer than that to come, and a pipeline of microsecond tasks would pay
        # a system call each for nothing.
        if not tasks:
            if not _read(fd, unpacker, tasks, skip):
                return
        elif (now := time.monotonic()) - looked > LOOK_EVERY:
            looked = now
            if _readable(fd) and not _read(fd, unpacker, tasks, skip):
                return
        if not tasks:
            continue
        message = tasks.popleft()
        if message is None:
            return
        # The digest its signed header gave (if received), then its inputs (if it takes any).
        task_id, payload, *sealed = message
        if task_id in skip:
            skip.discard(task_id)
            reply = [task_id, Status.CANCELLED, b""]
        else:
            digest = sealed[0] if sealed else None
            began = time.time()
            status, outcome, text = run_task_reporting(
                Payload(payload, digest) if digest is not None else payload,
                sealed[1] if len(sealed) > 1 else None,
            )
            # When it ran, as only the worker knows it (the slave reads outcomes in bursts):
            # the dashboard's task stream draws it from here.
            reply = [task_id, status, outcome, text, began, time.time()]
        try:
            write_all(fd, msgpack.packb(reply))
        except OSError:
            sharing.free(reply[2])  # a result's segment no one will ever read
            return


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _read(
    fd: int, unpacker: msgpack.Unpacker, tasks: deque[list[Any] | None], skip: set[str]
) -> bool:
    """Take what the slave has written: tasks join the queue, SKIPs mark queued ones. False
    when the slave is gone (never outlive it)."""
    try:
        data = os.read(fd, READ_SIZE)
    except OSError:
        return False
    if not data:
        return False
    unpacker.feed(data)
    for message in unpacker:
        if type(message) is dict:
            skip.update(message.get("skip", ()))
        else:
            tasks.append(message)
    return True
