"""Every message between nodes, framed, signed and checked in one place.

A message is a list of ZeroMQ frames::

    [mac, header, payload frames...]

- ``header`` is a msgpack map ``{"v": PROTOCOL_VERSION, "k": kind, ...fields}``: plain data that
  can be read safely before anything else is touched. Its fields are those of the kind's typed
  record (:mod:`taskswarm.protocol.messages`), which ``Codec.decode`` builds and checks. Among
  them, ``dg``: the BLAKE3 digest of each payload, 32 bytes each, in payload order, and ``pf``:
  the layout of the payload frames.
- ``mac`` is keyed BLAKE3 over the header alone, its 32-byte key derived from the cluster key
  (BLAKE3's key-derivation mode, context :data:`MAC_CONTEXT`). Through the digests in the header
  it binds every payload: a payload whose bytes change no longer matches its digest.
- the payloads are opaque bytes, in practice pickles: tasks, results, task systems. The decoder
  hands each on *sealed*, a :class:`~taskswarm.protocol.digests.Payload` (its bytes, unchecked,
  and the digest the signed header gave), and only the node that unpickles a payload checks its
  digest, right before it does (:mod:`taskswarm.protocol.digests` lists where). A node that only
  forwards a payload (the master, for plain tasks and their results) passes the same ``Payload``
  back to ``encode``, which puts the digest it came with into the header it signs: the master
  neither hashes nor copies what it forwards, and a big payload leaves it in the very ZeroMQ
  frame it came in (a frame sent as it is shares its buffer). Bytes a node made itself are
  hashed here as they are sent.

Packing. Small payloads travel *packed*: a run of them shares one frame (a msgpack array of
bins), so a batch of 10,000 tasks is three frames, not 10,001. A payload of ``BIG_PAYLOAD`` bytes
or more travels alone in its own frame, received and forwarded without a copy. Why, measured
(pyzmq 27, inproc, send and receive with ``copy=False``, then the payloads as Python objects):
a frame of its own costs about 4 µs per 200-byte payload and 5.4 µs per 4 KiB one, against
0.2 µs and 1.6 µs packed; at 64 KiB the copy into and out of a packed frame costs more (20 µs)
than a frame of its own (12 µs). So packing stays below 64 KiB, though the master then copies
small payloads out of the packed frames they came in and into the ones it sends (it routes each
task on its own): a few hundred bytes copied cost a fraction of one frame's overhead.

``Codec.decode`` checks the MAC before it parses the header, then turns the header into its
kind's record (the one place headers are read), and nothing here unpickles or hashes a payload:
a message that fails any check raises a ``WireError`` whose ``reason`` the node counts and drops
(``bad-fields`` for a header whose fields do not fit its kind). A payload that does not match
its digest is refused (``BadDigest``, counted as ``bad-digest``) by the node that opens it.

Replay protection (docs/security.md has the threat model). Every header also carries:

- ``sid``: the sender's *session*, random for each Codec (each node process and connection);
- ``seq``: a sequence number, strictly increasing over everything that session sends;
- ``to``: the session the message is *for*, learnt from the peer's own messages. Only HELLO and
  REGISTER, which open a conversation, go unaddressed, and those carry ``ts`` (send time),
  accepted within ``REPLAY_WINDOW`` seconds.

So a captured message replayed to the same node is refused (its number is not new), one replayed
to another node or to a restarted master is refused (it is not addressed to that session), and a
captured HELLO/REGISTER is good only for the window. Refusals are counted by reason.

Over 400 lines on purpose: framing, the MAC, the payload digests, replay and size checks are
the one door every message passes; split, a check could be skipped by a path that bypasses
another module.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import blake3
import msgpack
import msgspec
import zmq

from ..errors import (
    BadFields,
    BadSignature,
    MalformedMessage,
    MessageTooLarge,
    Misdirected,
    Replayed,
    StaleMessage,
    VersionMismatch,
    WireError,
)
from .digests import DIGEST_SIZE, Payload, digest
from .messages import HEADER, PROTOCOL_VERSION, Header, Kind

__all__ = ["PROTOCOL_VERSION", "Kind", "Message", "Codec", "Notice", "Payload"]

R = TypeVar("R", bound=Header)

SIGNATURE_SIZE = 32
#: Most frames one message may carry (header + payloads); a batch larger than this is split.
MAX_FRAMES = 100_000
#: A payload this large travels in a frame of its own (no copy into a packed frame).
BIG_PAYLOAD = 64 * 1024
#: A packed frame is closed once it holds this many bytes.
PACKED_FRAME = 1024 * 1024
#: What the MAC key is derived from the cluster key for (BLAKE3's key derivation mode).
MAC_CONTEXT = "taskswarm 2024 message header MAC v1"
#: Seconds an unaddressed HELLO/REGISTER stays valid (allows this much clock difference).
REPLAY_WINDOW = 300.0
#: Sender sessions remembered for their sequence numbers (oldest forgotten first).
MAX_SESSIONS = 65_536


class Notice:
    """Unsigned one-frame answers the master gives a peer whose messages it cannot accept, so
    that peer can say why instead of waiting: they carry no data and change nothing."""

    AUTH_FAILED = b"taskswarm:auth-failed"
    VERSION = b"taskswarm:version:"  # followed by the master's protocol version

    @staticmethod
    def read(frames: Sequence[Any]) -> str | None:
        """The reason a notice gives, or None when ``frames`` is not a notice."""
        if len(frames) != 1:
            return None
        raw = bytes(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
        if raw == Notice.AUTH_FAILED:
            return "authentication failed: this key does not match the master's"
        if raw.startswith(Notice.VERSION):
            theirs = raw[len(Notice.VERSION) :].decode("ascii", "replace")
            return (
                f"protocol version mismatch: the master speaks version {theirs}, this node "
                f"speaks version {PROTOCOL_VERSION}; install the same taskswarm on both"
            )
        return None


class Message:
    """A message as received: its kind, its header, its payloads and who sent it.

    ``body`` is the header as its typed record (:mod:`taskswarm.protocol.messages`), checked
    by the codec; handlers take it as the record their kind decodes to, ``msg.read(Heartbeat)``,
    and read its fields by name. A message from a codec of the framing alone
    (``Codec(..., typed=False)``: tools and tests) has no ``body``, only ``header``, the plain
    map it travelled as.
    """

    __slots__ = ("kind", "body", "payloads", "sender", "header")

    def __init__(
        self,
        kind: str,
        body: Header | None = None,
        payloads: list[Any] | None = None,
        sender: str = "",
        header: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.body = body
        #: each a :class:`Payload`, sealed: its bytes (for big payloads a zero-copy memoryview
        #: of the frame they came in) and their digest from the signed header, checked only by
        #: the node that unpickles them (``Payload.open``)
        self.payloads: list[Any] = [] if payloads is None else payloads
        self.sender = sender  # the sending session (reply to it with ``to=``)
        #: The header as a plain map, from a codec of the framing alone; None otherwise.
        self.header = header

    def read(self, record: type[R]) -> R:
        """The header as ``record``, the kind's record (TypeError for any other)."""
        body = self.body
        if type(body) is not record:
            raise TypeError(f"a {self.kind} message is not a {record.__name__}")
        return body

    def __repr__(self) -> str:
        return (
            f"Message({self.kind!r}, {self.body or self.header!r}, {len(self.payloads)} payloads)"
        )


class Codec:
    """Encodes and verifies messages for one cluster key and one session; counts refusals.

    A Codec is used by one thread (its node's loop) and is the node's session: its ``session``
    goes out with every message, and peers address their answers to it. It decodes each header
    into its typed record (:mod:`taskswarm.protocol.messages`) right after the signature check;
    ``typed=False`` makes a codec of the framing alone, whose headers are plain maps (tools and
    tests that handle headers of their own making). ``headers`` is the decoder of the records
    this node receives: an application's (``APPLICATION_HEADER``) reads the master's RESULTS.
    """

    def __init__(
        self,
        key: bytes,
        max_frames: int = MAX_FRAMES,
        window: float = REPLAY_WINDOW,
        max_bytes: int | None = None,
        *,
        typed: bool = True,
        headers: msgspec.msgpack.Decoder[Header] = HEADER,
    ) -> None:
        if not key:
            raise ValueError("the cluster key must not be empty")
        self._key = key
        #: keyed BLAKE3 takes a 32-byte key: derived from the cluster key, whatever its length
        self._mac_key = blake3.blake3(key, derive_key_context=MAC_CONTEXT).digest()
        self._pack = msgspec.msgpack.Encoder().encode  # records, and maps of plain data
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.window = window
        self.typed = typed
        self._headers = headers.decode
        self.session = secrets.token_hex(8)
        self._numbers = itertools.count(1)
        self._last_seen: OrderedDict[str, int] = OrderedDict()
        self.rejected: Counter[str] = Counter()

    def _sign(self, header: Any) -> bytes:
        return blake3.blake3(header, key=self._mac_key).digest()

    def encode(
        self,
        kind: str,
        header: Header | dict[str, Any] | None = None,
        payloads: Sequence[bytes | Payload] = (),
        to: str | None = None,
    ) -> list[Any]:
        """Frames for one message; ``to`` is the receiving session (None only to open).

        ``header`` is the kind's record (the codec fills in its envelope fields), or a map of
        plain data, sent as it is (tools, and tests that send what no node would). A payload
        this node received (a :class:`Payload`) goes on with the digest it came with, neither
        hashed nor copied; bytes made here are hashed.
        """
        digests, layout, body = _pack_payloads(payloads, self._pack)
        seq, sent = next(self._numbers), None if to is not None else time.time()
        if isinstance(header, Header):  # what nodes send
            if header.kind != kind:
                raise TypeError(f"a {type(header).__name__} record is not a {kind} message")
            header.v, header.sid, header.seq, header.to, header.ts = (
                PROTOCOL_VERSION, self.session, seq, to, sent
            )  # fmt: skip
            header.pf, header.dg = layout, digests
            fields: Any = header
        else:  # a plain map: tools, and tests that make headers a node would never send
            fields = dict(header or ())
            fields.update(v=PROTOCOL_VERSION, k=kind, sid=self.session, seq=seq, to=to)
            if sent is not None:
                fields["ts"] = sent
            if body:
                fields["pf"], fields["dg"] = layout, digests
        packed = self._pack(fields)
        return [self._sign(packed), packed, *body]

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
        if self.max_bytes is not None and sum(map(len, raw)) > self.max_bytes:
            raise MalformedMessage(f"message larger than the limit of {self.max_bytes} bytes")
        signature, rest = raw[0], raw[1:]
        if len(signature) != SIGNATURE_SIZE or not hmac.compare_digest(
            bytes(signature), self._sign(rest[0])
        ):
            raise BadSignature("signature does not match the cluster key")
        # Only now is the header read: the one place where it becomes its kind's record.
        if not self.typed:
            header = _plain_header(rest[0])
            frames = _unpack_payloads(header.get("pf", ""), rest[1:])
            payloads = _sealed(header.get("dg", b""), frames)
            message = Message(header["k"], None, payloads, header["sid"], header)
            self._check_fresh(message, header.get("to"), header.get("ts"), header["seq"])
            return message
        try:
            body = self._headers(rest[0])
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise _why_refused(rest, exc) from None
        if body.v != PROTOCOL_VERSION:
            raise _version_mismatch(body.v)
        kind = body.kind
        if body.sid is None or body.seq is None:
            raise MalformedMessage("header lacks its session and sequence number")
        payloads = _sealed(body.dg, _unpack_payloads(body.pf, rest[1:]))
        expected = body.expected_payloads()
        if expected is not None and expected != len(payloads):
            raise BadFields(f"a {kind} message says {expected} payloads, carries {len(payloads)}")
        message = Message(kind, body, payloads, body.sid)
        self._check_fresh(message, body.to, body.ts, body.seq)
        return message

    def _check_fresh(self, message: Message, to: Any, sent: Any, number: int) -> None:
        """Refuse replays: wrong addressee, an old sequence number, or a stale opening."""
        if to is None:
            if message.kind not in Kind.UNADDRESSED:
                raise Misdirected(f"an unaddressed {message.kind} message", message.sender)
            if not isinstance(sent, (int, float)) or abs(time.time() - sent) > self.window:
                raise StaleMessage(
                    f"a {message.kind} sent at {sent!r} is outside the {self.window:g}s window "
                    "(replayed, or the two machines' clocks differ: sync them)"
                )
        elif to != self.session:
            raise Misdirected(f"a {message.kind} message for another session", message.sender)
        last = self._last_seen.get(message.sender, 0)
        if number <= last:
            raise Replayed(f"{message.kind} number {number} from {message.sender} was seen")
        self._last_seen[message.sender] = number
        self._last_seen.move_to_end(message.sender)
        if len(self._last_seen) > MAX_SESSIONS:
            self._last_seen.popitem(last=False)


def _plain_header(raw: Any) -> dict[str, Any]:
    """A header read as a plain map, its envelope checked (not its kind's fields)."""
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:
        raise MalformedMessage(f"header is not msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise MalformedMessage("header is not a map")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise _version_mismatch(version)
    kind = header.get("k")
    if kind not in Kind.ALL:
        raise MalformedMessage(f"unknown message kind {kind!r}")
    if not isinstance(header.get("sid"), str) or type(header.get("seq")) is not int:
        raise MalformedMessage("header lacks its session and sequence number")
    return header


def _version_mismatch(version: Any) -> VersionMismatch:
    return VersionMismatch(
        f"peer speaks protocol version {version!r}, this node speaks {PROTOCOL_VERSION}"
    )


def _why_refused(rest: Sequence[Any], exc: Exception) -> WireError:
    """The error for a signed header that is not its kind's record, most basic first: not a
    map, another version, an unknown kind, no session, payload frames that do not match their
    layout; and only then the fields of the kind itself."""
    header = _plain_header(rest[0])
    _unpack_payloads(header.get("pf", ""), rest[1:])
    return BadFields(f"a {header['k']} message with bad fields: {exc}")


def _pack_payloads(
    payloads: Sequence[Any], pack: Any = msgspec.msgpack.encode
) -> tuple[bytes, str, list[Any]]:
    """Digests, layout and frames for ``payloads``: runs of small ones packed together, big
    ones alone. A received :class:`Payload` keeps its digest and, when big, the very frame it
    came in (sent on without a copy); bytes made here are hashed."""
    digests: list[bytes] = []
    layout: list[str] = []
    frames: list[Any] = []
    run: list[Any] = []
    size = 0
    for payload in payloads:
        if type(payload) is Payload:
            digests.append(payload.digest)
            payload = payload.raw
        else:
            digests.append(digest(payload))
        n = len(payload)
        if n >= BIG_PAYLOAD:
            if run:
                layout.append("p")
                frames.append(pack(run))
                run, size = [], 0
            layout.append("r")
            frames.append(_frame_of(payload))
            continue
        run.append(payload)
        size += n
        if size >= PACKED_FRAME:
            layout.append("p")
            frames.append(pack(run))
            run, size = [], 0
    if run:
        layout.append("p")
        frames.append(pack(run))
    return b"".join(digests), "".join(layout), frames


def _frame_of(data: Any) -> Any:
    """A big payload as it is sent: the ZeroMQ frame it arrived in, when it is a whole one (its
    bytes are shared, not copied), else the bytes themselves."""
    owner = data.obj if type(data) is memoryview else None
    if isinstance(owner, zmq.Frame) and data.nbytes == len(owner):
        return owner
    return data


_PACKED = msgspec.msgpack.Decoder(list[bytes])


def _sealed(digests: Any, payloads: list[Any]) -> list[Any]:
    """Each payload with the digest the signed header gives it (checked by whoever opens it)."""
    if not isinstance(digests, bytes) or len(digests) != DIGEST_SIZE * len(payloads):
        raise MalformedMessage(f"the header's digests do not match its {len(payloads)} payloads")
    size = DIGEST_SIZE
    return list(
        map(Payload, payloads, [digests[i : i + size] for i in range(0, len(digests), size)])
    )


def _unpack_payloads(layout: Any, frames: Sequence[Any]) -> list[Any]:
    if not isinstance(layout, str) or len(layout) != len(frames):
        raise MalformedMessage(
            f"payload layout {layout!r} does not match the {len(frames)} payload frames"
        )
    payloads: list[Any] = []
    for how, frame in zip(layout, frames, strict=True):
        if how == "r":
            payloads.append(frame if isinstance(frame, bytes) else memoryview(frame))
            continue
        if how != "p":
            raise MalformedMessage(f"unknown payload frame layout {how!r}")
        try:
            payloads.extend(_PACKED.decode(frame))
        except msgspec.ValidationError as exc:
            raise MalformedMessage(
                f"a packed payload frame is not a list of bytes: {exc}"
            ) from None
        except msgspec.DecodeError as exc:
            raise MalformedMessage(f"a packed payload frame is not msgpack: {exc}") from None
    return payloads


#: Bytes a message's signature and header may take beside its payloads: what a payload must
#: leave free under the message limit.
ENVELOPE = 64 * 1024


def too_large(what: str, size: int, limit: int) -> MessageTooLarge:
    """The error for a payload that cannot travel: its size, the limit and how to change it."""
    return MessageTooLarge(
        f"{what} pickles to {_mib(size)}, more than fits in one message (the cluster's limit is "
        f"{_mib(limit)}): send less (split the work, or pass big data as a file every slave can "
        "read), or start the master and every slave with a larger --max-message-mib"
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def within(sizes: Sequence[int], limit: int) -> Iterator[slice]:
    """Slices of consecutive items whose sizes add up to at most ``limit`` each (one item at
    least), so a batch of big payloads goes as several messages the receiver accepts."""
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and total + size > limit:
            yield slice(start, index)
            start, total = index, 0
        total += size
    if start < len(sizes):
        yield slice(start, len(sizes))
