"""A task system found by its id or a unique prefix of it, as git finds a commit.

People copy ids from `taskswarm status` and the dashboard; a uuid is long, so the first few
characters do, as long as no other system the master knows begins with them. The look-up
lives on the master, once, for every way in: ``Application.system_result`` and
``cancel_system`` (SYSTEM-QUERY with ``rid``), `taskswarm result`, and the dashboard's API.

Pure code over the ids the master knows (its records, and the ids of systems it let go of,
so that a prefix of one still says what became of it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..protocol.messages import AMBIGUOUS_SYSTEM as AMBIGUOUS
from ..protocol.messages import UNKNOWN_SYSTEM as UNKNOWN

__all__ = ["LISTED", "Found", "look_up", "matching"]

#: Most candidates an ambiguous prefix's error lists.
LISTED = 10


@dataclass(frozen=True)
class Found:
    """What a look-up found: the one id (``system_id``), or why none (``error``, ``reason``)."""

    system_id: str | None
    error: str | None = None  # UNKNOWN or AMBIGUOUS
    reason: str = ""


def matching(given: str, ids: Iterable[str]) -> list[str]:
    """The ids ``given`` names: itself when it is one of them (an id wins over a longer id it
    begins), else every id that begins with it, sorted."""
    ids = set(ids)
    if given in ids:
        return [given]
    return sorted(i for i in ids if i.startswith(given)) if given else []


def look_up(given: str, ids: Iterable[str], describe: Callable[[str], str]) -> Found:
    """The one system ``given`` names among ``ids``, or the error to raise, listing the
    candidates of an ambiguous prefix (each as ``describe`` tells it: name, state)."""
    found = matching(given, ids)
    if len(found) == 1:
        return Found(found[0])
    if not found:
        reason = f"no task system with id {given}, nor one whose id begins with it"
        if not given:
            reason = "no task system id given: give its id, or the first characters of it"
        return Found(None, UNKNOWN, reason)
    listed = ", ".join(f"{system_id} ({describe(system_id)})" for system_id in found[:LISTED])
    more = f" and {len(found) - LISTED} more" if len(found) > LISTED else ""
    return Found(
        None,
        AMBIGUOUS,
        f"{given!r} begins the ids of {len(found)} task systems: {listed}{more}; "
        "give more of the id",
    )
