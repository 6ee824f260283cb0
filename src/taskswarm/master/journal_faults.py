"""What a storage fault does to the master's journal, and what the operator is told.

Kept apart from the journal's reads and writes because it is one policy applied to all of them
(as Redis refuses writes while it cannot save, and PostgreSQL names a damaged file rather than
serve from it):

- at start the directory must take a write and the file must read back whole, else
  ``JournalUnusable`` names the path and the remedy (the master exits 2: a restart cannot help);
- a write that fails while serving (disk full, read-only remount, I/O error) sets the journal's
  ``fault``: a write that *accepts* work (``strict``) raises ``JournalFault`` so the sender is
  refused with the reason; any other is dropped, its change kept in memory only (``guarded``);
- a journal deleted or replaced under the running master is a fault that stays (``LOST``).
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import TaskswarmError

__all__ = ["PROBE_BYTES", "JournalFault", "JournalUnusable", "guarded", "probe_directory", "remedy"]

_T = TypeVar("_T")

#: Bytes written to prove the state directory and the journal take a write (at start, and
#: while a fault lasts): enough that a disk with only crumbs left is not taken for a healthy one.
PROBE_BYTES = 64 * 1024

#: The fault that stands once the journal's file went away (``{path}`` is filled in).
LOST = (
    "the journal {path} was deleted or replaced while the master ran: "
    "nothing saved from now on would survive a restart, so new work is refused. "
    "Let the running work finish, put the state directory back, then restart the master"
)


class JournalUnusable(TaskswarmError):
    """The state directory or its journal cannot be used at start: the message names the path
    and what to do. Not retried by a restart (the master exits 2)."""


class JournalFault(TaskswarmError):
    """A write that would accept work failed: the sender is refused with this message."""


def remedy(exc: BaseException) -> str:
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


def write_failed(path: Path, exc: BaseException) -> str:
    """The fault a failed write sets: what happened and what to do, for ``status``."""
    return (
        f"the master cannot save work: writing its journal {path} failed ({exc}); "
        f"{remedy(exc)}. It accepts work again once it can write"
    )


def probe_directory(directory: Path) -> None:
    """At start: the state directory exists and takes a write, else ``JournalUnusable``."""
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
            f"state directory {directory} cannot be written ({exc.strerror or exc}); {remedy(exc)}"
        ) from None


class _Faulting(Protocol):
    def _failed(self, what: str, exc: BaseException) -> str: ...


def guarded(method: Callable[..., _T]) -> Callable[..., _T | None]:
    """A write that fails sets the journal's ``fault`` (through its ``_failed``) instead of
    taking the master down; one called with ``strict=True`` (it accepts work) raises
    ``JournalFault`` so the sender is refused."""

    @functools.wraps(method)
    def guarded(self: _Faulting, *args: Any, strict: bool = False, **kwargs: Any) -> _T | None:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            message = self._failed(method.__name__, exc)
            if strict:
                raise JournalFault(message) from None
            return None

    return guarded
