"""How long the master keeps what it no longer needs: bounded by live work, not by history.

Once a heartbeat the core sweeps (``MasterCore.sweep``): applications silent past
``client_timeout`` are lost, results kept uncollected past ``result_ttl`` expire, the oldest go
first past ``result_cap`` bytes (``enforce_result_cap``, here), and departed slaves, gone
applications, collected task systems and closed sessions are forgotten ``forget_after`` seconds
on. Every few seconds the journal gives its free space back, a full garbage collection follows
completed task systems, and freed memory goes back to the system (``trim_memory``).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ops.config import MasterConfig

if TYPE_CHECKING:
    from .applications import ApplicationTable
    from .systems import SystemTable

__all__ = ["Retention", "enforce_result_cap", "trim_memory", "tune_malloc"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: The retention settings' defaults, from their one declaration (taskswarm.ops.config): results no
#: application collected are kept a day (``--result-ttl``, as Celery's ``result_expires``), at
#: most 1 GiB of them (``--result-cap-mib``); an application silent 10 s (twenty missed beats) is
#: lost (``--client-timeout``); departed slaves, gone applications and collected systems stay in
#: ``status`` 300 s (``--forget-after``), at most ``DEPARTED_KEPT`` departed slaves meanwhile.
RESULT_TTL: float = MasterConfig.result_ttl
RESULT_CAP: int = MasterConfig.result_cap_mib * MIB
CLIENT_TIMEOUT: float = MasterConfig.client_timeout
FORGET_AFTER: float = MasterConfig.forget_after
#: Seconds a closed connection's reply address is kept (at most ``forget_after``): a peer that
#: sends again is given a new one as its message gets in, so this need not be long.
SESSION_GRACE = 2.0
#: Seconds between the journal's space reclaims.
JOURNAL_MAINTENANCE = 5.0
#: Least seconds between the full garbage collections run after task systems completed.
GC_INTERVAL = 30.0


@dataclass(frozen=True)
class Retention:
    """The retention settings: seconds, bytes (0: no cap), seconds, seconds."""

    result_ttl: float = RESULT_TTL
    result_cap: int = RESULT_CAP
    client_timeout: float = CLIENT_TIMEOUT
    forget_after: float = FORGET_AFTER


def enforce_result_cap(cap: int, applications: ApplicationTable, systems: SystemTable) -> None:
    """Keep the results held for collection under ``cap`` bytes: oldest go first."""
    if not cap:
        return
    over = applications.retained_bytes() + systems.held - cap
    if over <= 0:
        return
    plain: list[tuple[float, int, Any, int]] = [
        (made, 0, (client, task_id), size)
        for made, client, task_id, size in applications.retained()
    ]
    kept: list[tuple[float, int, Any, int]] = [
        (at, 1, record, size) for at, record, size in systems.retained()
    ]
    dropped: dict[Any, list[str]] = defaultdict(list)
    count = 0
    for _, kind, what, size in sorted(plain + kept, key=lambda row: row[0]):
        if over <= 0:
            break
        over -= size
        count += 1
        if kind == 0:
            dropped[what[0]].append(what[1])
        else:
            systems.drop(what, "capped")
    for client, task_ids in dropped.items():
        applications.drop_unconfirmed(client, task_ids)
    log.warning(
        "dropped the %d oldest uncollected results to stay under --result-cap %d bytes",
        count,
        cap,
    )


class Collector:
    """A full garbage collection once task systems completed (at most every GC_INTERVAL).

    A finished system leaves reference cycles behind (its runner thread and handles, the
    class its application sent by value), holding the system and all it kept. A node
    collects its oldest generation rarely (``cli._tune_gc``), so without this they would
    pile up for a long while: 1,000 systems made the master's RSS creep by ~7 MiB. A full
    collection costs about 0.3 s with a million tasks queued, hence the interval.
    """

    def __init__(self) -> None:
        self._next = time.monotonic() + GC_INTERVAL

    def collect(self, systems: SystemTable) -> None:
        if not systems.finished_since_gc or time.monotonic() < self._next:
            return
        systems.finished_since_gc = 0
        gc.collect()
        self._next = time.monotonic() + GC_INTERVAL


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # glibc


_libc = _load_libc()
_malloc_trim = _libc.malloc_trim if _libc is not None else None
#: glibc's ``mallopt`` parameter, and the size from which blocks get their own mapping.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def tune_malloc() -> None:
    """Big blocks (results of megabytes) in mappings of their own, returned when freed.

    glibc raises this threshold each time such a block is freed, after which big results are
    carved out of its heaps and the fragments they leave keep the master's RSS up long after
    they were delivered (a soak of 1,000 results of 4 MiB: +19 MiB with it moving, +11 fixed).
    Setting it fixes it at this size. A no-op elsewhere than glibc.
    """
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim_memory() -> None:
    """Hand memory freed since the last call back to the system (glibc's ``malloc_trim``).

    The results passing through (megabytes each, pickled and framed in several threads) are
    freed once delivered, but glibc keeps freed blocks in its arenas, so the master's RSS would
    stay at its highest point for ever; trimming lets it follow live work. A no-op elsewhere.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
