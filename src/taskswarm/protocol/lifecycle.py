"""What every node's loop shares: a mailbox, a stop any thread may ask for, a watch on its parent.

A node (master, slave) runs one loop that blocks on a ZeroMQ poller, which also watches the
node's ``Mailbox``. ``stop`` sets a flag and wakes that poller, so it is safe from a signal
handler or another thread, and the loop ends at its next turn. A node started by another process
(LocalCluster's) is given that process's pid and stops by itself once its parent is gone, so no
node outlives the program that started it; on its way out it then sweeps its cluster's shared
memory segments (``sweep_orphaned``), since no one is left to free them.
"""

from __future__ import annotations

import logging
import os

from . import sharing
from .mailbox import Mailbox

__all__ = ["NodeLifecycle"]

log = logging.getLogger(__name__)


class NodeLifecycle:
    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self._stopping = False
        #: Stop when this process is no longer our parent (set for LocalCluster's nodes).
        self.parent_pid: int | None = None
        #: The parent died: the cluster is over (its shared memory goes when this node ends).
        self.orphaned = False
        #: The prefix of this cluster's shared memory segments (``sharing.cluster_prefix``).
        self.shared_prefix: str | None = None
        self._closed = False

    def stop(self) -> None:
        """Ask the loop to end; safe from a signal handler or another thread."""
        self._stopping = True
        self.mailbox.wake()

    def _check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("the process that started this node is gone; stopping")
            self.orphaned = True
            self.stop()

    def sweep_orphaned(self) -> None:
        """Once this node's own processes are gone: if its cluster's program died, free every
        shared memory segment of the cluster (each node of it does; the last one finds all)."""
        if self.orphaned and self.shared_prefix is not None:
            swept = sharing.sweep(self.shared_prefix)
            if swept:
                log.info("freed %d shared memory segments of the ended cluster", swept)

    def _first_close(self) -> bool:
        """True on the first call only: a node closes once however often ``close`` is called."""
        if self._closed:
            return False
        self._closed = True
        return True
