"""A slave's shipped code: archives unpacked into folders of its own, on its workers' sys.path.

::

    master --SHIP(name, archive)--> Slave.on_ship --> Shelf.receive: digest checked --> take:
        unpacked into <tmp>/taskswarm-code-PID-XXXX/N-NAME/ --paths, newest first-->
        manager.code_shipped
    process pool: idle workers replaced now, busy ones once their pipelines are done;
        every new worker starts in ``start_worker``: the paths put on sys.path, then its loop

Each archive the slave receives is unpacked into a fresh folder (``N-NAME``, N counting up),
never over an older one: a worker still running a task with the old code keeps files that do
not change under it. The folder of the version before stays until the same name is shipped
again (a task begun before may still import lazily from it); older ones are removed at once,
and the whole tree when the slave closes (normally, on SIGINT or SIGTERM, or when its parent
program is gone), so nothing is left behind. The tree is made with mode 0700: no other user of
the host can change the code the workers import.

Why workers are replaced rather than told: a worker that already imported ``helpers`` keeps it
in ``sys.modules``, and objects made from it (classes, functions held by other modules) keep
the old code however the module is reloaded; a fresh process imports the new files from the
start. Workers fork from the pool's forkserver in about a millisecond, so replacing the idle
ones costs less than a task; a busy one takes no new task and is replaced once its pipeline is
done, so a task that arrives after the code never runs on a worker that started before it.

``start_worker`` is what a worker process runs first: the forkserver preloads this module
with the worker's own (what it imports, a worker has imported already).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadDigest, ShippingError
from ..protocol.archives import check_name, unpack
from ..protocol.messages import Ship
from .worker import worker_main

if TYPE_CHECKING:
    from ..protocol.codec import Message
    from .contracts import TaskManagerContract

__all__ = ["Shelf", "start_worker"]

log = logging.getLogger(__name__)


class Shelf:
    """The archives this slave unpacked, by name: the folder of each one's latest version."""

    def __init__(self, parent: str | os.PathLike[str] | None = None) -> None:
        #: Where the tree goes (None: the system's temporary directory).
        self.parent = parent
        self.root: Path | None = None  # made with the first archive
        self._count = 0
        #: name -> (digest, folder) of the latest version, oldest name first.
        self._latest: dict[str, tuple[bytes, Path]] = {}
        #: name -> folder of the version before, kept for tasks begun with it.
        self._before: dict[str, Path] = {}

    def receive(self, msg: Message, manager: TaskManagerContract, rejected: Counter[str]) -> None:
        """A SHIP from the master: its digest checked, then unpacked, then handed to the task
        manager for every task pushed after it. One refused is counted in ``rejected`` (as
        ``bad-digest`` or ``bad-archive``) and logged; the slave carries on without it."""
        name, payload = msg.read(Ship).name, msg.payloads[0]
        try:
            paths = self.take(name, payload.open(), payload.digest)
        except (BadDigest, ShippingError, OSError) as exc:  # OSError: no room for the folder
            rejected[exc.reason if isinstance(exc, BadDigest) else "bad-archive"] += 1
            log.error("shipped code %s refused: %s", name, exc)
            return
        if paths is not None:
            log.info("shipped code %s unpacked, for the tasks from now on", name)
            manager.code_shipped(paths)

    def paths(self) -> list[str]:
        """The folders a worker puts on ``sys.path``, the latest shipped first (it wins where
        two archives hold a module of the same name)."""
        return [str(folder) for _, folder in reversed(self._latest.values())]

    def take(self, name: str, data: Any, digest: bytes) -> list[str] | None:
        """Unpack an archive (its digest already checked); returns the new ``paths()``, or
        None when it is the very archive already unpacked under ``name`` (the master sends
        everything again when a slave registers again). ShippingError for an archive refused
        whole (an unsafe entry, too big); nothing of it is left then."""
        check_name(name)
        latest = self._latest.get(name)
        if latest is not None and latest[0] == digest:
            return None
        self._count += 1
        folder = self._make_root() / f"{self._count}-{name}"
        unpack(bytes(data), folder)
        if latest is not None:
            stale = self._before.pop(name, None)
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
            self._before[name] = latest[1]
            del self._latest[name]  # re-inserted below: newest last
        self._latest[name] = (digest, folder)
        return self.paths()

    def _make_root(self) -> Path:
        if self.root is None:
            self.root = Path(
                tempfile.mkdtemp(prefix=f"taskswarm-code-{os.getpid()}-", dir=self.parent)
            )
        return self.root

    def close(self) -> None:
        """Remove every folder unpacked here. Safe twice."""
        root, self.root = self.root, None
        self._latest.clear()
        self._before.clear()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def start_worker(conn: Connection, share: Any, paths: list[str]) -> None:
    """A pool worker's process when code was shipped: the shipped folders first on
    ``sys.path``, the import system told to look again (a forkserver's finders were made
    before those folders existed), then the worker's loop."""
    sys.path[:0] = [path for path in paths if path not in sys.path]
    importlib.invalidate_caches()
    worker_main(conn, share)
