"""How far ahead a task manager feeds its workers: measured from the pace tasks finish at.

Shared by the process pool (tasks ahead in each worker's pipeline) and the engine managers
(tasks handed to each engine slot), so both keep the same meaning: while tasks are short a
worker holds a few, so it never waits a round trip between two; while they are slow it holds
one, so every task not yet started can still go back to the master for an idle slave. The pace
is a running average of task durations, starting from the first one's, which the master also
reads (the ``throughput`` strategy; stealing only real work).
"""

from __future__ import annotations

import math

__all__ = ["PACE_WEIGHT", "SLOW_TASK", "depth", "folded"]

#: Weight of the newest task in the running average of task durations.
PACE_WEIGHT = 0.2
#: Tasks at least this long go to a worker one at a time: waiting for the slave between two
#: costs well under 1 % of them, and every task not yet in a pipeline can still be given back
#: to the master for an idle slave.
SLOW_TASK = 0.05


def depth(pace: float, ahead: float, most: int, unknown: int) -> int:
    """Tasks a worker should hold at this ``pace`` (seconds a task): ``ahead`` seconds of work,
    at least 2 and at most ``most``; one for slow tasks; ``unknown`` before any has finished."""
    if pace <= 0.0:
        return unknown
    if pace >= SLOW_TASK:
        return 1
    return max(2, min(most, math.floor(ahead / pace)))


def folded(pace: float, duration: float, finished: int = 1) -> float:
    """The running average after ``finished`` tasks that took ``duration`` seconds each; the
    first tasks to finish (``pace`` still 0: none had) set it to their own duration.

    Folded into 0 instead, the average would start at a fifth of the tasks' length and take
    some ten tasks to come near it: long enough for a slave to take tasks of 60 ms for ones of
    12 ms, and ask the master for a queue of them it is far too slow to run (``Outbox.wanted``).
    """
    if pace <= 0.0:
        return duration
    return pace + (1 - (1 - PACE_WEIGHT) ** finished) * (duration - pace)
