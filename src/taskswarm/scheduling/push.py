""" "Sending work": the master decides, keeping each slave as busy as it asks to be.

A slave holds ``prefetch`` tasks per worker, or more when it says it needs more (``want``: with
tasks of a few microseconds, a pool needs hundreds on hand to never wait for the master).
"""

from __future__ import annotations

from .records import SlaveRecord
from .scheduler import BaseScheduler

__all__ = ["PushScheduler"]


class PushScheduler(BaseScheduler):
    name = "push"

    def capacity(self, slave: SlaveRecord) -> int:
        return max(slave.workers * self.prefetch, slave.want) - len(slave.in_flight)
