"""Holding off the cyclic garbage collector while a batch of tasks is made.

Every Future carries a Condition, and Conditions are reference cycles: making tens of thousands
of them sets off collection after collection, each walking every object still alive (all the
tasks and futures made so far). Pausing it for the batch made submitting a third cheaper;
nothing made there is garbage yet, so nothing is held back for long. Pauses nest across threads
(the collector comes back when the last one ends), and a program that switched the collector
off itself keeps it off.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["pause", "resume"]

_lock = threading.Lock()
_pauses = 0


def pause() -> bool:
    """Pause the collector; whether this call paused it (pass that to ``resume``)."""
    global _pauses
    with _lock:
        if _pauses == 0 and not gc.isenabled():
            return False  # switched off by the program itself: leave it so
        _pauses += 1
        gc.disable()
        return True


def resume(paused: bool) -> None:
    """End a pause that ``pause()`` began (nothing when it returned False)."""
    global _pauses
    if not paused:
        return
    with _lock:
        _pauses -= 1
        if _pauses == 0:
            gc.enable()
