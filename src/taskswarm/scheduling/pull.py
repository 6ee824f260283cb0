""" "Polling work": idle slaves ask for tasks by granting the master credit.

A slave grants credit for what it can hold when it registers and one more for every task it
finishes; the master spends one per task it sends. Suited to homogeneous clusters, where the
slave knows best when it is idle.
"""

from __future__ import annotations

from .records import SlaveRecord, TaskRecord
from .scheduler import BaseScheduler

__all__ = ["PullScheduler"]


class PullScheduler(BaseScheduler):
    name = "pull"

    def capacity(self, slave: SlaveRecord) -> int:
        return slave.credit

    def _tasked_pushed(self, slave_id: str) -> None:
        self.slaves[slave_id].credit -= 1
        super()._tasked_pushed(slave_id)

    def reclaim_missing(
        self, slave: SlaveRecord, held: set[str], sent_before: float
    ) -> list[TaskRecord]:
        missing = super().reclaim_missing(slave, held, sent_before)
        slave.credit += len(missing)  # spent on tasks that never arrived
        self.refresh(slave)
        return missing
