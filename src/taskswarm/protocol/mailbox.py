"""A thread-safe inbox that a ZeroMQ poll loop can wait on.

A node's loop owns its sockets (ZeroMQ sockets are not thread-safe); other threads hand it work
through a ``Mailbox``: a queue plus a pipe whose read end sits in the loop's poller. The pipe is
written only when the mailbox goes from empty to non-empty, so a burst of posts costs one syscall.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any

__all__ = ["Mailbox"]


class Mailbox:
    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._signalled = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._closed = False

    def fileno(self) -> int:
        """The fd to register with a poller: readable while items are waiting."""
        return self._read_fd

    def post(self, item: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._items.append(item)
            if self._signalled:
                return
            self._signalled = True
        os.write(self._write_fd, b"\0")

    def wake(self) -> None:
        """Make the loop's poll return, without the lock: safe from a signal handler."""
        try:
            os.write(self._write_fd, b"\0")
        except OSError:
            pass

    def drain(self) -> list[Any]:
        """Take everything posted so far (called by the loop when the fd is readable)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._signalled = False
            try:
                os.read(self._read_fd, 4096)
            except BlockingIOError:
                pass
        return items

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.close(self._read_fd)
        os.close(self._write_fd)
