"""The plain records that cross the master core's edges, each declared once.

The core (``taskswarm.master.core``) owns no socket and no thread. What it says goes through a
``Send`` callable: the node's encodes and writes to its ZeroMQ socket, a test's keeps
``Outgoing`` records in a list. What other threads tell the loop comes through the node's
mailbox as one of the records below: a task system's runner thread posts ``Push``, ``Progress``
and ``Done``; the dashboard posts ``Ask``. Named fields instead of string-tagged tuples, so a
reader sees what each carries, and a type checker too.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from ..protocol.messages import Header, TaskMeta

__all__ = ["Ask", "Done", "Outgoing", "Progress", "Push", "RunnerMail", "Send"]


class Send(Protocol):
    """How the core sends one message, its header the kind's record: False when it could not
    go (the peer is unreachable)."""

    def __call__(
        self,
        identity: bytes,
        kind: str,
        header: Header | None = None,
        payloads: Sequence[Any] = (),
    ) -> bool: ...


class Outgoing(NamedTuple):
    """One message the core sent, as an in-memory transport keeps it: its header as the plain
    map it would travel as, less the envelope (``msgspec.to_builtins`` of the record)."""

    identity: bytes
    kind: str
    header: dict[str, Any]
    payloads: Sequence[Any]


class Push(NamedTuple):
    """A runner's new tasks ``[(meta, payload), ...]``, with a snapshot when durable and the
    journal's number of the last result the system applied."""

    system_id: str
    tasks: list[tuple[TaskMeta, bytes]]
    snapshot: bytes | None
    applied_seq: int


class Progress(NamedTuple):
    """How far a system is: tasks finished, generated, failed, and the first failure's text
    the first time there is one (the application keeps it; it is not sent again)."""

    system_id: str
    done: int
    total: int
    failed: int
    first_failure: str | None


class Done(NamedTuple):
    """A system completed: its pickled ``(result, error)``, and whether it failed."""

    system_id: str
    outcome: bytes
    failed: bool


#: What a system runner posts.
RunnerMail = Push | Progress | Done


class Ask(NamedTuple):
    """A question run in the loop (``Master.ask``): its answer or exception goes to ``future``."""

    question: Callable[[Any], Any]
    future: concurrent.futures.Future[Any]
