""" "Sending work": the master decides, keeping each slave at most ``prefetch`` tasks per worker."""

from __future__ import annotations

from .records import SlaveRecord
from .scheduler import BaseScheduler

__all__ = ["PushScheduler"]


class PushScheduler(BaseScheduler):
    name = "push"

    def capacity(self, slave: SlaveRecord) -> int:
        return slave.workers * self.prefetch - len(slave.in_flight)
