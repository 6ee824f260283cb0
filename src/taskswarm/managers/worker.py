"""The loop of one worker process: receive a task, run it, send its outcome back.

Kept tiny and import-light because the forkserver preloads it: every worker forks from a process
that already has it (and cloudpickle) imported.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection

import msgpack

from ..task import run_task

#: Sent instead of a task: finish and exit.
STOP = b""


def worker_main(conn: Connection) -> None:
    # Ctrl-C goes to the whole process group; the slave decides what happens to running tasks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the slave is gone: never outlive it
        if message == STOP:
            return
        task_id, payload = msgpack.unpackb(message)
        status, data = run_task(payload)
        try:
            conn.send_bytes(msgpack.packb([task_id, status, data]))
        except (BrokenPipeError, OSError):
            return
