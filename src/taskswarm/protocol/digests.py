"""Payload digests: what binds a payload to the signed header it came with, and the one check
made before anything is unpickled.

A message's MAC covers its header only (:mod:`taskswarm.protocol.codec`); the header carries
the BLAKE3 digest of each payload. So a payload as received is *sealed*: a :class:`Payload`,
its bytes not yet checked, and the digest the signed header gave for them. Only the node that
unpickles a payload opens it (:meth:`Payload.open`, or :func:`opened`), right before it does:

- a task: the worker that runs it (``taskswarm.task.run_task_reporting``, in a pool's worker
  process or on an engine's worker);
- a plain task's result: the application (``taskswarm.task.load_outcome``);
- a task system, and its tasks' results: the master, where they come in (before they are
  journaled, so what a restart replays was checked too);
- a task system's outcome: the application that asked for it.

A node that only forwards a payload (the master, for plain tasks and their results) never
opens it: it sends the same :class:`Payload` on, and the codec puts the digest it came with into
the header it signs. What such a forwarder may be made to forward (bytes altered on the way in)
is refused where it would be unpickled, unpickled by no one. Bytes a node made itself (a task
system's pushed tasks, the master's own failures) are plain ``bytes``: the codec hashes those
as it sends them.

Kept import-light (BLAKE3 and msgspec): a pool's worker processes import it.
"""

from __future__ import annotations

from typing import Any

import blake3
import msgspec

from ..errors import BadDigest

__all__ = ["DIGEST_SIZE", "Payload", "digest", "opened", "raw", "digest_of"]

#: Bytes of a payload's digest (BLAKE3's default output: 256 bits).
DIGEST_SIZE = 32
#: From this size on, BLAKE3 hashes on every core.
THREADED = 4 * 1024 * 1024
#: The hasher, bound once. For a small payload the call is most of the cost (a 600-byte task:
#: about 140 ns to make the hasher, 400 ns to hash), so ``Payload.open`` calls it inline.
_blake3 = blake3.blake3


def digest(data: Any) -> bytes:
    """The BLAKE3 digest of ``data`` (bytes, or anything with the buffer protocol)."""
    if len(data) >= THREADED:
        return _blake3(data, max_threads=_blake3.AUTO).digest()
    return _blake3(data).digest()


class Payload(msgspec.Struct, gc=False):
    """A payload as received: its bytes (``raw``, unchecked) and the digest its signed header
    gives for them.

    ``raw`` is for forwarding and storing only; :meth:`open` is the way to the bytes for
    anything that reads them. It pickles as its bytes and digest, so a task can be handed to
    another process (an engine's worker) and checked there. (A msgspec struct: built in C, a
    quarter of what a plain class costs, and every forwarded task makes two.)
    """

    #: bytes, or a zero-copy memoryview of the frame they came in; NOT checked
    raw: Any
    #: the BLAKE3 digest the signed header gave
    digest: bytes

    def __len__(self) -> int:
        return len(self.raw)

    def open(self) -> Any:
        """The bytes, once their digest is checked; ``BadDigest`` when they were altered."""
        raw = self.raw
        if (_blake3(raw).digest() if len(raw) < THREADED else digest(raw)) != self.digest:
            raise BadDigest(
                f"a payload of {len(raw)} bytes does not match the digest in its signed "
                "header (altered on the way): refused, not unpickled"
            )
        return raw

    def __reduce__(self) -> tuple[Any, ...]:
        return Payload, (bytes(self.raw), self.digest)

    def __repr__(self) -> str:
        return f"Payload({len(self.raw)} bytes, digest {self.digest[:6].hex()}…)"


def opened(data: bytes | Payload) -> Any:
    """The bytes to unpickle: a received :class:`Payload` checked (``BadDigest``), or bytes
    this node made (or read from its own journal, checked when they came in) as they are."""
    return data.open() if type(data) is Payload else data


def raw(data: Any) -> Any:
    """The bytes to store or send: a :class:`Payload`'s, unchecked, or ``data`` itself."""
    return data.raw if type(data) is Payload else data


def digest_of(data: Any) -> bytes | None:
    """The digest a :class:`Payload` came with; None for bytes this node made."""
    return data.digest if type(data) is Payload else None
