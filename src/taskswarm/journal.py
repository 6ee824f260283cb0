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
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Journal", "NullJournal", "RestoredState", "RestoredSystem"]

log = logging.getLogger(__name__)

_INSERT_TASKS = (
    "INSERT OR IGNORE INTO tasks (task_id, client_id, system_id, payload, timeout, max_retries,"
    " name, priority, resources) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    system_id TEXT,
    payload BLOB,
    timeout REAL,
    max_retries INTEGER NOT NULL DEFAULT 0,
    name TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL DEFAULT 0,
    resources TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    ok INTEGER,
    outcome BLOB,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_by_system ON tasks(system_id);
CREATE TABLE IF NOT EXISTS systems (
    system_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    snapshot BLOB NOT NULL,
    restored INTEGER NOT NULL DEFAULT 0,
    applied_seq INTEGER NOT NULL DEFAULT 0,
    outcome BLOB,
    failed INTEGER NOT NULL DEFAULT 0,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS system_results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    system_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""


@dataclass
class RestoredSystem:
    system_id: str
    client_id: str
    snapshot: bytes
    is_snapshot: bool  # False: the system as first received (not yet initialised)
    replay: list[tuple[int, str, bool, bytes]]  # (seq, task_id, ok, data) since the snapshot
    outcome: bytes | None
    failed: bool
    ended_at: float | None = None  # wall-clock time it completed (for --result-ttl)


@dataclass
class RestoredState:
    #: (task_id, client_id, system_id, payload, timeout, max_retries, name, retries, crashes)
    queued: list[tuple] = field(default_factory=list)
    #: client_id -> [(task_id, ok, outcome, done_at)]: outcomes not confirmed by their application
    undelivered: dict[str, list[tuple[str, bool, bytes, float]]] = field(default_factory=dict)
    systems: list[RestoredSystem] = field(default_factory=list)


#: ``PRAGMA auto_vacuum`` value for INCREMENTAL.
_INCREMENTAL = 2
#: Bytes the -wal file is cut back to after a checkpoint (it grows past this only while one
#: transaction needs it); ``maintain()`` empties one grown past ``WAL_TRUNCATE``.
WAL_LIMIT = 4 * 1024 * 1024
WAL_TRUNCATE = 1024 * 1024
#: Free pages are given back once they are this share of the file and at least ``MIN_FREE``.
FREE_SHARE = 0.25
MIN_FREE = 256
#: Most pages one ``maintain()`` gives back: bounds the time it takes the master's loop.
VACUUM_STEP = 8192


class Journal:
    """One SQLite file; used only from the master's loop thread."""

    durable = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Before any table exists (a new file); an older file is converted just below.
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The -wal file is cut back to this after each checkpoint that empties it.
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        self._db.executescript(_SCHEMA)
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
            # A journal from an earlier taskswarm: once, so its free space can be given back.
            log.info("rewriting the journal %s once, so it can give back free space", self.path)
            self._db.execute("VACUUM")
        for table, column, kind in (
            ("tasks", "name", "TEXT NOT NULL DEFAULT ''"),
            ("tasks", "retries", "INTEGER NOT NULL DEFAULT 0"),
            ("tasks", "crashes", "INTEGER NOT NULL DEFAULT 0"),
            ("tasks", "priority", "INTEGER NOT NULL DEFAULT 0"),
            ("tasks", "resources", "TEXT"),
            ("tasks", "done_at", "REAL"),
            ("systems", "ended_at", "REAL"),
        ):
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:  # a journal from an earlier taskswarm
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._db.close()

    # -- tasks ---------------------------------------------------------------------------------

    def add_tasks(self, rows: Iterable[tuple]) -> None:
        """``TaskRecord.journal_row()`` tuples; a task already journaled is left as it is."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                _INSERT_TASKS,
                rows,
            )

    def count_attempts(self, task_id: str, retries: int, crashes: int) -> None:
        """A task runs again: keep its counts, so a restart does not give it more chances."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE tasks SET retries = ?, crashes = ? WHERE task_id = ?",
                (retries, crashes, task_id),
            )

    def plain_outcomes(self, outcomes: Iterable[tuple[str, bool, bytes, float]]) -> None:
        """Keep plain tasks' outcomes ``(task_id, ok, data, done_at)`` until their applications
        confirm them, or they expire (``done_at`` is wall-clock time, for ``--result-ttl``)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE tasks SET done = 1, ok = ?, outcome = ?, done_at = ?, payload = NULL"
                " WHERE task_id = ?",
                ((int(ok), data, when, task_id) for task_id, ok, data, when in outcomes),
            )

    def forget_tasks(self, task_ids: Iterable[str]) -> None:
        """Delivered and confirmed, or cancelled: nothing left to keep."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM tasks WHERE task_id = ?", ((t,) for t in task_ids))

    # -- task systems --------------------------------------------------------------------------

    def add_system(self, system_id: str, client_id: str, payload: bytes) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR IGNORE INTO systems (system_id, client_id, snapshot) VALUES (?, ?, ?)",
                (system_id, client_id, payload),
            )

    def system_results(self, system_id: str, results: list[tuple[str, bool, bytes]]) -> int:
        """Record results handed to a system; returns the sequence number of the last one."""
        with self._db:
            self._db.execute("BEGIN")
            last = 0
            for task_id, ok, data in results:
                cursor = self._db.execute(
                    "INSERT INTO system_results (system_id, task_id, ok, data) VALUES (?, ?, ?, ?)",
                    (system_id, task_id, int(ok), data),
                )
                last = cursor.lastrowid
            self._db.executemany(
                "DELETE FROM tasks WHERE task_id = ?", ((t,) for t, _, _ in results)
            )
        return last

    def snapshot(
        self,
        system_id: str,
        snapshot: bytes,
        applied_seq: int,
        new_tasks: list[tuple],
    ) -> None:
        """The system as it is after applying results up to ``applied_seq``, with the tasks its
        callbacks pushed meanwhile: one transaction, so a restart sees both or neither."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE systems SET snapshot = ?, restored = 1, applied_seq = ?"
                " WHERE system_id = ?",
                (snapshot, applied_seq, system_id),
            )
            self._db.execute(
                "DELETE FROM system_results WHERE system_id = ? AND seq <= ?",
                (system_id, applied_seq),
            )
            self._db.executemany(
                _INSERT_TASKS,
                new_tasks,
            )

    def system_done(
        self, system_id: str, outcome: bytes, failed: bool, ended_at: float | None = None
    ) -> None:
        """A system completed: keep only its outcome, until it is collected or expires."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE systems SET outcome = ?, failed = ?, snapshot = x'', ended_at = ?"
                " WHERE system_id = ?",
                (outcome, int(failed), ended_at, system_id),
            )
            self._db.execute("DELETE FROM tasks WHERE system_id = ?", (system_id,))
            self._db.execute("DELETE FROM system_results WHERE system_id = ?", (system_id,))

    def forget_systems(self, system_ids: Iterable[str]) -> None:
        """Collected or expired: nothing of these systems is kept any more."""
        ids = [(s,) for s in system_ids]
        if not ids:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM systems WHERE system_id = ?", ids)
            self._db.executemany("DELETE FROM tasks WHERE system_id = ?", ids)
            self._db.executemany("DELETE FROM system_results WHERE system_id = ?", ids)

    # -- space ---------------------------------------------------------------------------------

    def maintain(self) -> None:
        """Give free space back to the file system (called every few seconds by the master).

        Deleted rows leave free pages that SQLite reuses but never returns by itself: a master
        that once held a lot would keep a file that size for ever. A step of
        ``incremental_vacuum`` cuts them off the end once they are a large share of the file;
        a TRUNCATE checkpoint empties a -wal file grown past ``WAL_TRUNCATE``.
        """
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        if free >= MIN_FREE and free >= FREE_SHARE * pages:
            # executescript steps it to the end (execute would free one page per call).
            self._db.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP});")
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            grown = wal.stat().st_size > WAL_TRUNCATE
        except OSError:
            grown = False
        if grown:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    # -- restart -------------------------------------------------------------------------------

    def load(self) -> RestoredState:
        state = RestoredState()
        for row in self._db.execute(
            "SELECT task_id, client_id, system_id, payload, timeout, max_retries, name, priority,"
            " resources, retries, crashes, done, ok, outcome, done_at FROM tasks ORDER BY rowid"
        ):
            *task, done, ok, outcome, done_at = row
            if done:
                when = time.time() if done_at is None else done_at  # older journals: from now
                state.undelivered.setdefault(task[1], []).append((task[0], bool(ok), outcome, when))
            else:
                state.queued.append(tuple(task))
        for (
            system_id,
            client_id,
            snapshot,
            restored,
            applied,
            outcome,
            failed,
            ended_at,
        ) in self._db.execute(
            "SELECT system_id, client_id, snapshot, restored, applied_seq, outcome, failed,"
            " ended_at FROM systems"
        ):
            replay = [
                (seq, task_id, bool(ok), data)
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
                )
            )
        return state


class NullJournal:
    """A master without a state directory: the same calls, nothing kept."""

    durable = False

    def __init__(self) -> None:
        self._seq = 0  # results still need sequence numbers: the runners track what they applied

    def close(self) -> None:
        pass

    def add_tasks(self, rows: Iterable[tuple]) -> None:
        pass

    def plain_outcomes(self, outcomes: Iterable[tuple[str, bool, bytes, float]]) -> None:
        pass

    def count_attempts(self, task_id: str, retries: int, crashes: int) -> None:
        pass

    def forget_tasks(self, task_ids: Iterable[str]) -> None:
        pass

    def add_system(self, system_id: str, client_id: str, payload: bytes) -> None:
        pass

    def system_results(self, system_id: str, results: list[tuple[str, bool, bytes]]) -> int:
        self._seq += len(results)
        return self._seq

    def snapshot(self, system_id: str, snapshot: bytes, applied_seq: int, new_tasks: list) -> None:
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
