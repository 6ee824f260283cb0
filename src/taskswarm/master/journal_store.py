"""The journal's SQLite file: its schema, how it is opened and upgraded, how it gives space back.

Apart from the journal's reads and writes because these are about the file, not the master's
state: the pragmas that make it survive a killed process (WAL, ``synchronous=NORMAL``), the check
that names a damaged file at start, the columns an earlier taskswarm's file lacks, and the upkeep
that keeps the file the size of live work (``auto_vacuum=INCREMENTAL``, a WAL cut back after
checkpoints).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from .journal_faults import PROBE_BYTES
from .journal_rows import ACCEPTED_FIELDS, TaskRow

__all__ = ["INSERT_TASKS", "SELECT_TASKS", "maintain", "open_journal", "probe"]

log = logging.getLogger(__name__)

SCHEMA = """
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
    digest BLOB,
    retries INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    ok INTEGER,
    outcome BLOB,
    done_at REAL,
    outcome_digest BLOB
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
    ended_at REAL,
    name TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS system_results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    system_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""

#: Columns an earlier taskswarm's file lacks: added once when it is opened.
_ADDED_COLUMNS = (
    ("tasks", "name", "TEXT NOT NULL DEFAULT ''"),
    ("tasks", "retries", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "crashes", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "priority", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "resources", "TEXT"),
    ("tasks", "done_at", "REAL"),
    ("systems", "ended_at", "REAL"),
    ("tasks", "digest", "BLOB"),
    ("tasks", "outcome_digest", "BLOB"),
    ("systems", "name", "TEXT NOT NULL DEFAULT ''"),
)

#: A task accepted (a ``TaskRow`` without its attempts); one already journaled is left as it is.
INSERT_TASKS = (
    f"INSERT OR IGNORE INTO tasks ({', '.join(ACCEPTED_FIELDS)})"
    f" VALUES ({', '.join('?' * len(ACCEPTED_FIELDS))})"
)
#: Every task, in the order accepted: a ``TaskRow`` and then whether (and how) it ended.
SELECT_TASKS = (
    f"SELECT {', '.join(TaskRow._fields)}, done, ok, outcome, done_at, outcome_digest"
    " FROM tasks ORDER BY rowid"
)

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


def open_journal(path: Path) -> tuple[sqlite3.Connection, int]:
    """The file opened, checked whole, brought to this schema and proved writable; with the
    last sequence number given to a task system's result."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # Before any table exists (a new file); an older file is converted just below.
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # The -wal file is cut back to this after each checkpoint that empties it.
    db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    # Every page read once: a damaged file is named now, not half-way through a restore.
    problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        db.close()
        raise sqlite3.DatabaseError("database disk image is malformed: " + "; ".join(problems))
    db.executescript(SCHEMA)
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
        # A journal from an earlier taskswarm: once, so its free space can be given back.
        log.info("rewriting the journal %s once, so it can give back free space", path)
        db.execute("VACUUM")
    for table, column, kind in _ADDED_COLUMNS:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in columns:  # a journal from an earlier taskswarm
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    probe(db)
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'system_results'").fetchone()
    return db, row[0] if row else 0


def probe(db: sqlite3.Connection) -> None:
    """A small write and its removal: raises if the journal cannot take one now."""
    with db:
        db.execute("BEGIN")
        db.execute("INSERT OR REPLACE INTO probe VALUES (1, zeroblob(?))", (PROBE_BYTES,))
    with db:
        db.execute("BEGIN")
        db.execute("DELETE FROM probe")


def maintain(db: sqlite3.Connection, path: Path) -> None:
    """Give free space back to the file system (called every few seconds by the master).

    Deleted rows leave free pages that SQLite reuses but never returns by itself: a master
    that once held a lot would keep a file that size for ever. A step of
    ``incremental_vacuum`` cuts them off the end once they are a large share of the file;
    a TRUNCATE checkpoint empties a -wal file grown past ``WAL_TRUNCATE``.
    """
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    if free >= MIN_FREE and free >= FREE_SHARE * pages:
        # executescript steps it to the end (execute would free one page per call).
        db.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP});")
    wal = path.with_name(path.name + "-wal")
    try:
        grown = wal.stat().st_size > WAL_TRUNCATE
    except OSError:
        grown = False
    if grown:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
