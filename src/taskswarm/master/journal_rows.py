"""The journal's rows as named records: what goes into the master's journal and what comes back.

Several modules hand rows to the journal or read them back (the scheduler's task records, the
application and system tables, the restart): each row is one record here, so its fields are named
once and the journal's SQL is written from the same names. The records are named tuples, so
code that builds or unpacks the plain tuples of the same shape keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "ACCEPTED_FIELDS",
    "PlainOutcome",
    "ReplayedResult",
    "RestoredState",
    "RestoredSystem",
    "SystemResult",
    "TaskRow",
]


class TaskRow(NamedTuple):
    """A task as journaled: written when accepted (``TaskRecord.journal_row()``, without the
    attempt counts, which start at 0) and read back whole at restart (``from_journal``)."""

    task_id: str
    client_id: str
    system_id: str | None
    payload: bytes | None
    timeout: float | None
    max_retries: int
    name: str
    priority: int
    resources: str | None  # JSON of the resources it needs, or None
    #: The digest its signed SUBMIT gave the payload (sent on with it after a restart); None
    #: for a payload made on the master (a task system's), hashed when sent.
    digest: bytes | None = None
    retries: int = 0
    crashes: int = 0


#: The fields of a ``TaskRow`` a task has when accepted (its attempts are counted later).
ACCEPTED_FIELDS = TaskRow._fields[:-2]


class PlainOutcome(NamedTuple):
    """A plain task's outcome kept until its application confirms it (or it expires)."""

    task_id: str
    ok: bool
    data: bytes
    done_at: float  # wall-clock time it was made, for --result-ttl


class SystemResult(NamedTuple):
    """A result handed to a task system."""

    task_id: str
    ok: bool
    data: bytes


class ReplayedResult(NamedTuple):
    """A result handed to a task system after its last snapshot: replayed on restart."""

    seq: int
    task_id: str
    ok: bool
    data: bytes


@dataclass
class RestoredSystem:
    """A task system as the journal holds it: running (snapshot + replay) or done (outcome)."""

    system_id: str
    client_id: str
    snapshot: bytes
    is_snapshot: bool  # False: the system as first received (not yet initialised)
    replay: list[ReplayedResult]  # since the snapshot, in order
    outcome: bytes | None
    failed: bool
    ended_at: float | None = None  # wall-clock time it completed (for --result-ttl)
    name: str = ""  # TaskSystem.name ("": journaled by an earlier taskswarm)


@dataclass
class RestoredState:
    """Everything a restarted master resumes from."""

    queued: list[TaskRow] = field(default_factory=list)
    #: client_id -> outcomes not confirmed by their application (``PlainOutcome`` records;
    #: annotated by their shape, which the application table's ``restore`` takes).
    undelivered: dict[str, list[tuple[str, bool, bytes, float]]] = field(default_factory=dict)
    systems: list[RestoredSystem] = field(default_factory=list)
