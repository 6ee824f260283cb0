"""The master's durable state: a SQLite journal (WAL) of what it accepted and delivered.

What is written, and when (always before the master acknowledges or forwards anything):

- every task accepted (plain or pushed by a task system), with its payload: ``tasks``;
- a plain task's outcome, kept until its application confirms receipt: ``tasks.outcome``;
- a task system as received, then a *snapshot* of it (system, outstanding tasks, counters) each
  time its callbacks push tasks, and periodically: ``systems``;
- each result handed to a task system since its last snapshot: ``system_results``; on restart
  these are replayed through ``task_finished``, so every result is applied exactly once;
- a completed system's outcome, so ``system_result(id)`` works after a restart.

What is no longer needed is deleted, so the file follows live work, not history: a plain outcome
once its application confirmed it (or it expired), a task system's row once its result was
collected (or expired). The space they held is given back: the database uses
``auto_vacuum=INCREMENTAL``, and ``maintain()`` (called by the master every few seconds) runs
``incremental_vacuum`` when free pages are a large part of the file, and checkpoints the WAL
with ``journal_size_limit`` so the ``-wal`` file shrinks back too.

A master killed at any point restarts from this file: queued and in-flight tasks are queued
again, task systems resume from snapshot + replay, undelivered results are sent again. WAL with
``synchronous=NORMAL`` survives the process being killed (not a power loss) without an fsync per
commit.

Its parts: the rows it takes and gives back are named records (``journal_rows``), the SQLite
file's schema, upgrades and upkeep are ``journal_store``, and what a storage fault does (refuse
new work with the reason, keep serving what was accepted) is ``journal_faults``. A write that
fails while serving sets ``fault``; ``check()``, every heartbeat, clears it once a probe write
succeeds, and finds a journal deleted or replaced under the running master (SQLite would go on
writing to the unlinked file) by comparing the file's identity: a fault that stays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..protocol.digests import Payload, digest_of, raw
from . import journal_store as store
from .journal_faults import (
    LOST,
    JournalFault,
    JournalUnusable,
    guarded,
    probe_directory,
    remedy,
    write_failed,
)
from .journal_rows import (
    PlainOutcome,
    ReplayedResult,
    RestoredState,
    RestoredSystem,
    SystemResult,
    TaskRow,
)

__all__ = [
    "Journal",
    "JournalFault",
    "JournalUnusable",
    "NullJournal",
    "RestoredState",
    "RestoredSystem",
]

log = logging.getLogger(__name__)


class Journal:
    """One SQLite file; used only from the master's loop thread."""

    durable = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()  # named in messages: no guessing the directory
        #: Why work is refused now (a failed write, a vanished file), or None: in ``status``.
        self.fault: str | None = None
        self.failed_writes = 0
        self._lost = False  # the file went away: a fault that no probe clears
        probe_directory(self.path.parent)
        try:
            #: Results' sequence numbers are given here, not by SQLite, so that one whose write
            #: failed still has its number and the runners' bookkeeping stays in order.
            self._db, self._seq = store.open_journal(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnusable(
                f"journal {self.path} cannot be used ({exc}); {remedy(exc)}"
            ) from None
        stat = os.stat(self.path)
        self._identity = (stat.st_dev, stat.st_ino)

    # -- faults --------------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> str:
        self.failed_writes += 1
        if self.fault is None:
            self.fault = write_failed(self.path, exc)
            log.error("%s (in %s); new work is refused meanwhile", self.fault, what)
        else:
            log.debug("journal write %s failed: %s", what, exc)
        return self.fault

    def check(self) -> str | None:
        """Every heartbeat: is the file still the one open, and does a faulted journal take a
        write again? Returns the fault that stands, if any."""
        try:
            stat = os.stat(self.path)
            same = (stat.st_dev, stat.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            if not self._lost:
                self._lost = True
                self.fault = LOST.format(path=self.path)
                log.error("%s", self.fault)
            return self.fault
        if self.fault is not None and not self._lost:
            try:
                store.probe(self._db)
            except (sqlite3.Error, OSError):
                return self.fault
            log.warning("the journal %s takes writes again: accepting work", self.path)
            self.fault = None
        return self.fault

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write: committed whole at the end of the block, or not at all."""
        with self._db:
            self._db.execute("BEGIN")
            yield

    # -- tasks ---------------------------------------------------------------------------------

    @guarded
    def add_tasks(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """``TaskRow`` records (``TaskRecord.journal_row()``); one already journaled stays as is."""
        with self._transaction():
            self._db.executemany(store.INSERT_TASKS, rows)

    @guarded
    def count_attempts(self, task_id: str, retries: int, crashes: int) -> None:
        """A task runs again: keep its counts, so a restart does not give it more chances."""
        with self._transaction():
            self._db.execute(
                "UPDATE tasks SET retries = ?, crashes = ? WHERE task_id = ?",
                (retries, crashes, task_id),
            )

    @guarded
    def plain_outcomes(self, outcomes: Iterable[tuple[str, bool, bytes, float]]) -> None:
        """Keep plain tasks' outcomes (``PlainOutcome`` records or tuples of that shape) until their
        applications confirm them, or they expire (``done_at`` is wall-clock time)."""
        with self._transaction():
            self._db.executemany(
                "UPDATE tasks SET done = 1, ok = ?, outcome = ?, done_at = ?, payload = NULL,"
                " outcome_digest = ? WHERE task_id = ?",
                (
                    (int(row.ok), raw(row.data), row.done_at, digest_of(row.data), row.task_id)
                    for row in map(PlainOutcome._make, outcomes)
                ),
            )

    @guarded
    def forget_tasks(self, task_ids: Iterable[str]) -> None:
        """Delivered and confirmed, or cancelled: nothing left to keep."""
        with self._transaction():
            self._db.executemany("DELETE FROM tasks WHERE task_id = ?", ((t,) for t in task_ids))

    # -- task systems --------------------------------------------------------------------------

    @guarded
    def add_system(self, system_id: str, client_id: str, payload: bytes, name: str = "") -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO systems (system_id, client_id, snapshot, name)"
                " VALUES (?, ?, ?, ?)",
                (system_id, client_id, payload, name),
            )

    def system_results(self, system_id: str, results: list[tuple[str, bool, bytes]]) -> int:
        """Record results (``SystemResult`` records or tuples of that shape) handed to a system;
        returns the sequence number of the last one."""
        first = self._seq + 1
        self._seq += len(results)
        self._add_system_results(system_id, first, results)
        return self._seq

    @guarded
    def _add_system_results(
        self, system_id: str, first: int, results: list[tuple[str, bool, bytes]]
    ) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT INTO system_results (seq, system_id, task_id, ok, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    (first + i, system_id, row.task_id, int(row.ok), row.data)
                    for i, row in enumerate(map(SystemResult._make, results))
                ),
            )
            self._db.executemany(
                "DELETE FROM tasks WHERE task_id = ?", ((row[0],) for row in results)
            )

    @guarded
    def snapshot(
        self,
        system_id: str,
        snapshot: bytes,
        applied_seq: int,
        new_tasks: list[tuple[Any, ...]],
    ) -> None:
        """The system as it is after applying results up to ``applied_seq``, with the tasks its
        callbacks pushed meanwhile: one transaction, so a restart sees both or neither."""
        with self._transaction():
            self._db.execute(
                "UPDATE systems SET snapshot = ?, restored = 1, applied_seq = ?"
                " WHERE system_id = ?",
                (snapshot, applied_seq, system_id),
            )
            self._db.execute(
                "DELETE FROM system_results WHERE system_id = ? AND seq <= ?",
                (system_id, applied_seq),
            )
            self._db.executemany(store.INSERT_TASKS, new_tasks)

    @guarded
    def system_done(
        self, system_id: str, outcome: bytes, failed: bool, ended_at: float | None = None
    ) -> None:
        """A system completed: keep only its outcome, until it is collected or expires."""
        with self._transaction():
            self._db.execute(
                "UPDATE systems SET outcome = ?, failed = ?, snapshot = x'', ended_at = ?"
                " WHERE system_id = ?",
                (outcome, int(failed), ended_at, system_id),
            )
            self._db.execute("DELETE FROM tasks WHERE system_id = ?", (system_id,))
            self._db.execute("DELETE FROM system_results WHERE system_id = ?", (system_id,))

    @guarded
    def forget_systems(self, system_ids: Iterable[str]) -> None:
        """Collected or expired: nothing of these systems is kept any more."""
        ids = [(s,) for s in system_ids]
        if not ids:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM systems WHERE system_id = ?", ids)
            self._db.executemany("DELETE FROM tasks WHERE system_id = ?", ids)
            self._db.executemany("DELETE FROM system_results WHERE system_id = ?", ids)

    # -- space ---------------------------------------------------------------------------------

    @guarded
    def maintain(self) -> None:
        """Give free space back to the file system (every few seconds): ``journal_store``."""
        store.maintain(self._db, self.path)

    # -- restart -------------------------------------------------------------------------------

    def load(self) -> RestoredState:
        """What a restarted master resumes from; a row that cannot be read names the file."""
        try:
            return self._load()
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnusable(
                f"journal {self.path} cannot be read ({exc}); {remedy(exc)}"
            ) from None

    def _load(self) -> RestoredState:
        state = RestoredState()
        for *task, done, ok, outcome, done_at, sealed in self._db.execute(store.SELECT_TASKS):
            saved = TaskRow._make(task)
            if done:
                when = time.time() if done_at is None else done_at  # older journals: from now
                if sealed is not None:  # sent on with the digest its slave's RESULTS gave
                    outcome = Payload(outcome, sealed)
                state.undelivered.setdefault(saved.client_id, []).append(
                    PlainOutcome(saved.task_id, bool(ok), outcome, when)
                )
            else:
                state.queued.append(saved)
        for (
            system_id,
            client_id,
            snapshot,
            restored,
            applied,
            outcome,
            failed,
            ended_at,
            name,
        ) in self._db.execute(
            "SELECT system_id, client_id, snapshot, restored, applied_seq, outcome, failed,"
            " ended_at, name FROM systems ORDER BY rowid"
        ):
            replay = [
                ReplayedResult(seq, task_id, bool(ok), data)
                for seq, task_id, ok, data in self._db.execute(
                    "SELECT seq, task_id, ok, data FROM system_results WHERE system_id = ?"
                    " AND seq > ? ORDER BY seq",
                    (system_id, applied),
                )
            ]
            state.systems.append(
                RestoredSystem(
                    system_id,
                    client_id,
                    snapshot,
                    bool(restored),
                    replay,
                    outcome,
                    bool(failed),
                    ended_at if ended_at is not None or outcome is None else time.time(),
                    name,
                )
            )
        return state


class NullJournal:
    """A master without a state directory: the same calls, nothing kept."""

    durable = False
    fault: str | None = None
    failed_writes = 0

    def __init__(self) -> None:
        self._seq = 0  # results still need sequence numbers: the runners track what they applied

    def close(self) -> None:
        pass

    def check(self) -> str | None:
        return None

    def add_tasks(self, rows: Iterable[tuple[Any, ...]], *, strict: bool = False) -> None:
        pass

    def plain_outcomes(self, outcomes: Iterable[tuple[str, bool, bytes, float]]) -> None:
        pass

    def count_attempts(self, task_id: str, retries: int, crashes: int) -> None:
        pass

    def forget_tasks(self, task_ids: Iterable[str]) -> None:
        pass

    def add_system(
        self,
        system_id: str,
        client_id: str,
        payload: bytes,
        name: str = "",
        *,
        strict: bool = False,
    ) -> None:
        pass

    def system_results(self, system_id: str, results: list[tuple[str, bool, bytes]]) -> int:
        self._seq += len(results)
        return self._seq

    def snapshot(
        self, system_id: str, snapshot: bytes, applied_seq: int, new_tasks: list[Any]
    ) -> None:
        pass

    def system_done(
        self, system_id: str, outcome: bytes, failed: bool, ended_at: float | None = None
    ) -> None:
        pass

    def forget_systems(self, system_ids: Iterable[str]) -> None:
        pass

    def maintain(self) -> None:
        pass

    def load(self) -> RestoredState:
        return RestoredState()
