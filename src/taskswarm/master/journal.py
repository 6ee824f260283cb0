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

Storage faults (as Redis refuses writes while it cannot save, and PostgreSQL names a damaged
file rather than serve from it):

- at start the directory must take a write and the file must read back whole, else
  ``JournalUnusable`` names the path and the remedy (the master exits 2: a restart cannot help);
- a write that fails while serving (disk full, read-only remount, I/O error) sets ``fault``: a
  write that *accepts* work (``strict``) raises ``JournalFault`` so the sender is refused with
  the reason; any other is dropped, its change kept in memory only (the work already accepted
  carries on; a restart may run some of it again, never lose it). ``check()``, every heartbeat,
  clears the fault once a probe write succeeds;
- a journal deleted or replaced under the running master (SQLite would go on writing to the
  unlinked file) is found by ``check()`` comparing the file's identity: a fault that stays, since
  nothing written from then on would survive a restart.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import TaskswarmError

__all__ = [
    "Journal",
    "JournalFault",
    "JournalUnusable",
    "NullJournal",
    "RestoredState",
    "RestoredSystem",
]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

_INSERT_TASKS = (
    "INSERT OR IGNORE INTO tasks (task_id, client_id, system_id, payload, timeout, max_retries,"
    " name, priority, resources) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class JournalUnusable(TaskswarmError):
    """The state directory or its journal cannot be used at start: the message names the path
    and what to do. Not retried by a restart (the master exits 2)."""


class JournalFault(TaskswarmError):
    """A write that would accept work failed: the sender is refused with this message."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS probe (n INTEGER PRIMARY KEY, data BLOB);
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
    queued: list[tuple[Any, ...]] = field(default_factory=list)
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


#: Bytes written to prove the state directory and the journal take a write (at start, and
#: while a fault lasts): enough that a disk with only crumbs left is not taken for a healthy one.
PROBE_BYTES = 64 * 1024


def _remedy(exc: BaseException) -> str:
    """What an operator should do about a storage error, in words."""
    text = str(exc).lower()
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "disk is full" in text:
        return "its disk is full: free space there, or give --state-dir a directory on another disk"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in text:
        return "it is read-only: make it writable by the master's user, or give --state-dir one"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            "the file is damaged: move it aside (the master then starts with no saved state) or "
            "put back a backup; `sqlite3 FILE .recover` saves what it still holds"
        )
    return "check the disk and the directory's permissions, or give --state-dir another one"


def _guarded(method: Callable[..., _T]) -> Callable[..., _T | None]:
    """A write that fails sets the journal's ``fault`` instead of taking the master down; one
    called with ``strict=True`` (it accepts work) raises ``JournalFault`` so the sender is
    refused."""

    @functools.wraps(method)
    def guarded(self: Journal, *args: Any, strict: bool = False, **kwargs: Any) -> _T | None:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            message = self._failed(method.__name__, exc)
            if strict:
                raise JournalFault(message) from None
            return None

    return guarded


class Journal:
    """One SQLite file; used only from the master's loop thread."""

    durable = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()  # named in messages: no guessing the directory
        #: Why work is refused now (a failed write, a vanished file), or None: in ``status``.
        self.fault: str | None = None
        self.failed_writes = 0
        self._lost = False  # the file went away: a fault that no probe clears
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".taskswarm-probe-{os.getpid()}"
            try:
                with open(probe, "wb") as f:
                    f.write(bytes(PROBE_BYTES))
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                probe.unlink(missing_ok=True)
        except OSError as exc:
            raise JournalUnusable(
                f"state directory {directory} cannot be written ({exc.strerror or exc}); "
                f"{_remedy(exc)}"
            ) from None
        try:
            self._open()
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnusable(
                f"journal {self.path} cannot be used ({exc}); {_remedy(exc)}"
            ) from None
        stat = os.stat(self.path)
        self._identity = (stat.st_dev, stat.st_ino)

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Before any table exists (a new file); an older file is converted just below.
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The -wal file is cut back to this after each checkpoint that empties it.
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        # Every page read once: a damaged file is named now, not half-way through a restore.
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            self._db.close()
            raise sqlite3.DatabaseError("database disk image is malformed: " + "; ".join(problems))
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
        self._probe()
        row = self._db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'system_results'"
        ).fetchone()
        #: Results' sequence numbers are given here, not by SQLite, so that one whose write
        #: failed still has its number and the runners' bookkeeping stays in order.
        self._seq = row[0] if row else 0

    def _probe(self) -> None:
        """A small write and its removal: raises if the journal cannot take one now."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO probe VALUES (1, zeroblob(?))", (PROBE_BYTES,))
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM probe")

    # -- faults --------------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> str:
        self.failed_writes += 1
        message = (
            f"the master cannot save work: writing its journal {self.path} failed ({exc}); "
            f"{_remedy(exc)}. It accepts work again once it can write"
        )
        if self.fault is None:
            self.fault = message
            log.error("%s (in %s); new work is refused meanwhile", message, what)
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
                self.fault = (
                    f"the journal {self.path} was deleted or replaced while the master ran: "
                    "nothing saved from now on would survive a restart, so new work is refused. "
                    "Let the running work finish, put the state directory back, then restart "
                    "the master"
                )
                log.error("%s", self.fault)
            return self.fault
        if self.fault is not None and not self._lost:
            try:
                self._probe()
            except (sqlite3.Error, OSError):
                return self.fault
            log.warning("the journal %s takes writes again: accepting work", self.path)
            self.fault = None
        return self.fault

    def close(self) -> None:
        self._db.close()

    # -- tasks ---------------------------------------------------------------------------------

    @_guarded
    def add_tasks(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """``TaskRecord.journal_row()`` tuples; a task already journaled is left as it is."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                _INSERT_TASKS,
                rows,
            )

    @_guarded
    def count_attempts(self, task_id: str, retries: int, crashes: int) -> None:
        """A task runs again: keep its counts, so a restart does not give it more chances."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE tasks SET retries = ?, crashes = ? WHERE task_id = ?",
                (retries, crashes, task_id),
            )

    @_guarded
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

    @_guarded
    def forget_tasks(self, task_ids: Iterable[str]) -> None:
        """Delivered and confirmed, or cancelled: nothing left to keep."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM tasks WHERE task_id = ?", ((t,) for t in task_ids))

    # -- task systems --------------------------------------------------------------------------

    @_guarded
    def add_system(self, system_id: str, client_id: str, payload: bytes) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR IGNORE INTO systems (system_id, client_id, snapshot) VALUES (?, ?, ?)",
                (system_id, client_id, payload),
            )

    def system_results(self, system_id: str, results: list[tuple[str, bool, bytes]]) -> int:
        """Record results handed to a system; returns the sequence number of the last one."""
        first = self._seq + 1
        self._seq += len(results)
        self._add_system_results(system_id, first, results)
        return self._seq

    @_guarded
    def _add_system_results(
        self, system_id: str, first: int, results: list[tuple[str, bool, bytes]]
    ) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO system_results (seq, system_id, task_id, ok, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    (first + i, system_id, task_id, int(ok), data)
                    for i, (task_id, ok, data) in enumerate(results)
                ),
            )
            self._db.executemany(
                "DELETE FROM tasks WHERE task_id = ?", ((t,) for t, _, _ in results)
            )

    @_guarded
    def snapshot(
        self,
        system_id: str,
        snapshot: bytes,
        applied_seq: int,
        new_tasks: list[tuple[Any, ...]],
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

    @_guarded
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

    @_guarded
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

    @_guarded
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
        """What a restarted master resumes from; a row that cannot be read names the file."""
        try:
            return self._load()
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnusable(
                f"journal {self.path} cannot be read ({exc}); {_remedy(exc)}"
            ) from None

    def _load(self) -> RestoredState:
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
        self, system_id: str, client_id: str, payload: bytes, *, strict: bool = False
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
