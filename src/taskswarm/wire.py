"""Every message between nodes, framed, signed and checked in one place.

A message is a list of ZeroMQ frames::

    [signature, header, payload_0, payload_1, ...]

- ``header`` is a msgpack map ``{"v": PROTOCOL_VERSION, "k": kind, ...fields}``: plain data that
  can be read safely before anything else is touched.
- ``payload_i`` are opaque bytes, in practice cloudpickle: tasks, results, task systems. The
  master routes most of them without ever unpickling them.
- ``signature`` is HMAC-SHA256, with the cluster key, over every other frame, each preceded by its
  length (so frames cannot be re-cut without changing the digest).

``Codec.decode`` checks the signature before it parses the header, and nothing here unpickles: a
message that fails any check raises a ``WireError`` whose ``reason`` the node counts and drops.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import BadSignature, MalformedMessage, VersionMismatch, WireError

__all__ = ["PROTOCOL_VERSION", "Kind", "Message", "Codec"]

PROTOCOL_VERSION = 1
SIGNATURE_SIZE = 32
#: Most frames one message may carry (header + payloads); a batch larger than this is split.
MAX_FRAMES = 100_000
_LENGTH = struct.Struct("!Q")


class Kind:
    """Message kinds. Each node dispatches through a table keyed on these."""

    # slave -> master
    REGISTER = "register"  # {node_id, host, pid, workers}
    RESULTS = "results"  # {results: [[task_id, status, detail], ...]} + one payload per result
    # application -> master
    HELLO = "hello"  # {client_id}
    SUBMIT = "submit"  # {tasks: [[task_id, timeout, max_retries, name], ...], rid} + payloads
    SYSTEM = "system"  # {system_id, rid} + the pickled task system
    SYSTEM_QUERY = "system-query"  # {system_id}
    STATUS = "status"  # {rid}
    RESIZE = "resize"  # {slave_id, workers} to master; {workers} master -> slave
    BYE = "bye"  # a node leaves on purpose
    CANCEL = "cancel"  # {tasks} or {system_id} to master; {tasks} master -> slave
    RESULTS_ACK = "results-ack"  # {tasks}: the application has these results (journal may drop)
    DRAIN = "drain"  # a slave takes no new tasks (it is stopping)
    # master -> nodes
    WELCOME = "welcome"  # {node_id}
    REREGISTER = "reregister"  # the master does not know the sender (it restarted, or lost it)
    TASKS = "tasks"  # {tasks: [[task_id, timeout], ...]} + one payload per task
    ACK = "ack"  # {rid, n}: the master accepted a submission (push_task_response)
    REJECT = "reject"  # {rid, reason}: the master refused it (push_task_failed)
    SYSTEM_PROGRESS = "system-progress"  # {system_id, done, total}
    SYSTEM_DONE = "system-done"  # {system_id, error?} + pickled (result, error)
    STATUS_REPLY = "status-reply"  # {rid, status}
    SHUTDOWN = "shutdown"
    # both ways
    HEARTBEAT = "heartbeat"

    ALL = frozenset(v for k, v in vars().items() if k.isupper() and isinstance(v, str))


@dataclass(slots=True)
class Message:
    kind: str
    header: dict[str, Any]
    payloads: list[bytes] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.header[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)


class Codec:
    """Encodes and verifies messages for one cluster key, and counts what it rejected."""

    def __init__(self, key: bytes, max_frames: int = MAX_FRAMES) -> None:
        if not key:
            raise ValueError("the cluster key must not be empty")
        self._key = key
        self.max_frames = max_frames
        self.rejected: Counter[str] = Counter()

    def _sign(self, frames: Sequence[bytes | memoryview]) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for frame in frames:
            mac.update(_LENGTH.pack(len(frame)))
            mac.update(frame)
        return mac.digest()

    def encode(
        self, kind: str, header: dict[str, Any] | None = None, payloads: Sequence[bytes] = ()
    ) -> list[bytes]:
        fields = dict(header or ())
        fields["v"] = PROTOCOL_VERSION
        fields["k"] = kind
        frames = [msgpack.packb(fields, use_bin_type=True), *payloads]
        return [self._sign(frames), *frames]

    def decode(self, frames: Sequence[Any]) -> Message:
        """Verify and parse; raises a ``WireError`` (and counts it) for anything to drop."""
        try:
            return self._decode(frames)
        except WireError as exc:
            self.rejected[exc.reason] += 1
            raise

    def _decode(self, frames: Sequence[Any]) -> Message:
        if len(frames) < 2:
            raise MalformedMessage(f"a message needs at least 2 frames, got {len(frames)}")
        if len(frames) > self.max_frames + 1:
            raise MalformedMessage(f"too many frames: {len(frames)} > {self.max_frames + 1}")
        raw = [f.buffer if hasattr(f, "buffer") else f for f in frames]
        signature, rest = raw[0], raw[1:]
        if len(signature) != SIGNATURE_SIZE or not hmac.compare_digest(
            bytes(signature), self._sign(rest)
        ):
            raise BadSignature("signature does not match the cluster key")
        try:
            header = msgpack.unpackb(rest[0], raw=False, strict_map_key=True)
        except Exception as exc:
            raise MalformedMessage(f"header is not msgpack: {exc}") from exc
        if not isinstance(header, dict):
            raise MalformedMessage("header is not a map")
        version = header.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"peer speaks protocol version {version!r}, this node speaks {PROTOCOL_VERSION}"
            )
        kind = header.get("k")
        if kind not in Kind.ALL:
            raise MalformedMessage(f"unknown message kind {kind!r}")
        return Message(kind, header, [bytes(p) for p in rest[1:]])
