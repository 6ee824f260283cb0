"""The ready slaves: those a strategy may hand a task to now, kept indexed as they change.

A strategy draws from this set on every assignment, so it must not scan the slaves: adding,
removing and drawing one at random are each O(1) (a list plus each slave's index in it).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from .records import SlaveRecord

__all__ = ["ReadySet"]


class ReadySet:
    """The slaves that can take a task now: O(1) to add, remove and draw one at random."""

    def __init__(self) -> None:
        self._slaves: list[SlaveRecord] = []
        self._index: dict[str, int] = {}

    def add(self, slave: SlaveRecord) -> None:
        if slave.slave_id not in self._index:
            self._index[slave.slave_id] = len(self._slaves)
            self._slaves.append(slave)

    def discard(self, slave_id: str) -> None:
        index = self._index.pop(slave_id, None)
        if index is None:
            return
        last = self._slaves.pop()
        if index < len(self._slaves):
            self._slaves[index] = last
            self._index[last.slave_id] = index

    def choice(self, rng: random.Random) -> SlaveRecord | None:
        if not self._slaves:
            return None
        return self._slaves[int(rng.random() * len(self._slaves))]

    def __contains__(self, slave_id: object) -> bool:
        return slave_id in self._index

    def __len__(self) -> int:
        return len(self._slaves)

    def __iter__(self) -> Iterator[SlaveRecord]:
        return iter(list(self._slaves))
