"""What a slave's process tree uses: CPU and resident memory of the slave and its workers.

Measured once a heartbeat and sent with it (``Heartbeat.cpu``, ``Heartbeat.rss``), so the
master's status, API and page show each slave's load as its host sees it, not only as tasks in
flight. The tree is the slave process and every descendant: its forkserver, its workers and
whatever their tasks started.

psutil does the reading: it finds the descendants (one pass over the process table), keeps the
CPU times each process had at the last look (``cpu_percent``), and reads the same numbers on
Linux, macOS and Windows. One look costs about a millisecond for a slave with a few workers,
once a second; nothing is measured per task.
"""

from __future__ import annotations

import logging
import os

import psutil

__all__ = ["ProcessTreeUsage"]

log = logging.getLogger(__name__)


class ProcessTreeUsage:
    """CPU % since the last look and RSS now, of one process and its descendants."""

    def __init__(self, pid: int | None = None) -> None:
        self._root = psutil.Process(pid or os.getpid())
        #: The processes seen at the last look, by pid: psutil keeps each one's CPU times.
        self._seen: dict[int, psutil.Process] = {}

    def measure(self) -> tuple[float, int] | None:
        """(CPU percent of one core since the last call, resident bytes now); the first call's
        CPU is 0 (nothing to compare with). None when the tree cannot be read at all."""
        try:
            tree = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return None
        seen, cpu, rss = {}, 0.0, 0
        for process in tree:
            known = self._seen.get(process.pid, process)
            try:
                with known.oneshot():
                    cpu += known.cpu_percent(None)
                    rss += known.memory_info().rss
            except psutil.Error:
                continue  # ended meanwhile
            seen[process.pid] = known
        self._seen = seen
        return round(cpu, 1), rss
