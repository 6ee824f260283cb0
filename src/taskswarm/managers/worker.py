"""The loop of one worker process: read tasks, run each, write each outcome back at once.

Tasks arrive on a socket as a stream of msgpack ``[task_id, payload]`` arrays; one read takes
every task waiting, so a slave that sends a worker several small tasks at once costs one system
call, not one per task. Each outcome is written the moment its task ends, in the order the tasks
came: the slave always knows which task is running (the first without an outcome), which is how
it enforces timeouts and names the task that killed a worker.

Kept tiny and import-light because the forkserver preloads it: every worker forks from a process
that already has it (and cloudpickle) imported.
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection

import msgpack

from ..task import run_task_reporting

#: Sent instead of a task: finish and exit.
STOP = msgpack.packb(None)
#: Most bytes taken from the socket per read.
READ_SIZE = 1 << 20


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def writev_all(fd: int, pieces: list) -> None:
    """Write pieces in order with as few system calls as they take, copying none of them."""
    views = [memoryview(p) for p in pieces if len(p)]
    while views:
        written = os.writev(fd, views[:1024])  # IOV_MAX
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def worker_main(conn: Connection) -> None:
    # Ctrl-C goes to the whole process group; the slave decides what happens to running tasks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = conn.fileno()
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            return  # the slave is gone: never outlive it
        if not data:
            return
        unpacker.feed(data)
        for message in unpacker:
            if message is None:
                return
            task_id, payload = message
            status, outcome, text = run_task_reporting(payload)
            message = (
                [task_id, status, outcome] if text is None else [task_id, status, outcome, text]
            )
            try:
                write_all(fd, msgpack.packb(message))
            except OSError:
                return
