"""Big payloads between processes of one host: shared memory segments named in the payload.

A task's argument or result of ``threshold`` bytes or more need not travel through every
socket on its way (application -> master -> slave -> worker, and back): on one host (a
``LocalCluster``, or a cluster started so on purpose) the process that pickles it writes it
once into a file under ``/dev/shm`` (a *segment*), and the payload that travels is a
*reference*: a few dozen bytes naming the segment. The process that unpickles it maps the
segment, checks the BLAKE3 digest the reference carries for the segment's bytes (the reference
is a payload like any other, bound to its signed header by its own digest, so the segment is
bound as a frame would be), and unpickles from the mapping.

Pickling uses protocol 5's out-of-band buffers: a NumPy array (or any object that hands pickle a
``PickleBuffer``), and a big ``bytes`` or ``bytearray`` argument or result (wrapped so, see
``wrap_big``), is not copied into the pickle at all: it is written from where it lies into the
segment (one copy, by the kernel), and the receiver rebuilds it over the mapping -- an array as
a view of it (no copy), ``bytes`` with one copy out of it. The receiver maps the segment
*copy-on-write* (``ACCESS_COPY``): an array it writes to changes its own pages only, as an
unpickled array would, never the segment (a task run again sees its argument as sent).

Layout of a segment: the pickle's own bytes, then each out-of-band buffer at a 64-byte aligned
offset. A reference is ``MAGIC`` and msgpack ``[name, size, pickle length, [[offset, length],
...], digest]``. ``MAGIC`` starts with a byte no pickle starts with (protocol 2 and later begin with
``0x80``; ``0xff`` is no opcode), so any node, the master too, which never unpickles a plain
task's payload, tells a reference from a pickle by its first byte.

Who frees what (unlink; a mapping that is still in use lives on until it is let go, as POSIX
keeps an unlinked file's pages while they are mapped, so no object ever sees freed memory):

* an argument's segment: the application that made it, when its task's Future settles (a
  result, a failure, a cancellation) or the application closes;
* a result's segment: the application, as soon as it has read it (or, if it no longer waits
  for that task, at once); the master, for a result it drops (an application gone, a result
  expired, a duplicate); the worker that made it, when it cannot hand it to its slave; the
  slave, for the task of a worker it kills or loses (a timeout, a cancel, a crash);
* everything left over: segment names begin with the cluster's prefix (``cluster_prefix``, made
  from the cluster key, so every node of a cluster knows it and no other cluster shares it);
  ``LocalCluster.close()`` sweeps the prefix once its nodes are gone, and a node whose parent
  (the LocalCluster's program) died sweeps it on its way out, after its own workers are ended.

Segments are files of mode 0600 under ``/dev/shm``: only the user the nodes run as can open
them, the user who can read the cluster key anyway. Linux only: elsewhere sharing is off.

Over 400 lines on purpose: a segment's whole life (naming, making, mapping, checking, freeing,
sweeping) is in one module, so that who frees what can be checked by reading one place.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import mmap
import os
import pickle
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import msgpack

from ..errors import BadDigest
from .digests import Payload

__all__ = [
    "DEFAULT_THRESHOLD",
    "MAGIC",
    "Collector",
    "SegmentMissing",
    "Sharing",
    "available",
    "cluster_prefix",
    "configure",
    "configured",
    "drop_results",
    "free",
    "is_reference",
    "load",
    "parse_threshold",
    "seal",
    "segments",
    "sweep",
    "weight",
    "wrap_big",
]

log = logging.getLogger(__name__)

#: Where segments live (a tmpfs: memory, not disk).
DIRECTORY = "/dev/shm"
#: Every segment's name begins so (then the cluster's token): nothing else is ever unlinked.
NAME_START = "taskswarm-"
#: How a reference payload begins: 0xff starts no pickle.
MAGIC = b"\xffTSHM1"
#: No reference is longer (a name, three numbers and a few buffers' spans).
MAX_REFERENCE = 64 * 1024
#: Payloads of at least this many bytes go through shared memory by default where it is on.
DEFAULT_THRESHOLD = 256 * 1024
#: Out-of-band buffers start at multiples of this (an array's elements stay aligned).
ALIGN = 64
#: The environment variable (and setting) that turns sharing on or off: ``SlaveConfig``'s.
ENVVAR = "TASKSWARM_SHARED_MEMORY"

_SAFE_ID = re.compile(r"[0-9A-Za-z_.]{1,80}")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_serial = itertools.count()


def available() -> bool:
    """Whether this host has POSIX shared memory as files (Linux's ``/dev/shm``)."""
    return os.path.isdir(DIRECTORY) and os.access(DIRECTORY, os.W_OK)


def cluster_prefix(key: bytes) -> str:
    """The prefix of a cluster's segment names, made from its key (every node holds it; a
    LocalCluster makes a fresh key, so a fresh prefix, each time)."""
    token = hashlib.blake2b(key, digest_size=8, person=b"taskswarm-shm").hexdigest()
    return f"{NAME_START}{token}-"


def parse_threshold(value: object) -> int | None:
    """A setting's value as a threshold in bytes, or None for off: ``off``/``0``/False/None
    are off, ``on``/True the default, otherwise a size (``256KiB``, ``1MiB``, bytes)."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_THRESHOLD
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a shared memory threshold cannot be negative: {value}")
        return value or None
    text = str(value).strip().lower()
    if text in ("off", "no", "false", "none", "0", ""):
        return None
    if text in ("on", "yes", "true", "auto"):
        return DEFAULT_THRESHOLD
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{value!r} is neither a size (such as 256KiB or 1MiB) nor on or off")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "")[:1].lower()])
    return size or None


@dataclass(frozen=True)
class Sharing:
    """Sharing as one process does it: its cluster's prefix, and the size from which a
    payload goes through shared memory."""

    prefix: str
    threshold: int

    @classmethod
    def of(cls, key: bytes, setting: object) -> Sharing | None:
        """The sharing a setting asks for (None: off, or no shared memory on this host)."""
        threshold = parse_threshold(setting)
        if threshold is None or not available():
            return None
        return cls(cluster_prefix(key), threshold)

    def name(self, kind: str, task_id: str) -> str:
        """A fresh segment name: ``a`` (argument) or ``r`` (result), this process's pid and the
        task's id, so a slave can find a result its worker made but never reported."""
        return f"{self.prefix}{kind}{os.getpid()}-{_safe(task_id)}-{next(_serial)}"


def _safe(task_id: str) -> str:
    if _SAFE_ID.fullmatch(task_id):
        return task_id
    return hashlib.blake2b(task_id.encode(), digest_size=12).hexdigest()


# -- this process's sharing (a slave and its workers) ------------------------------------------

_configured: Sharing | None = None


def configure(sharing: Sharing | None) -> None:
    """Set how this process shares its results (a slave does, and hands it to its workers)."""
    global _configured
    _configured = sharing


def configured() -> Sharing | None:
    return _configured


# -- pickling with out-of-band buffers --------------------------------------------------------


class Collector:
    """A ``buffer_callback``: takes buffers of ``minimum`` bytes or more out of band (into a
    segment, later); smaller ones stay in the pickle."""

    __slots__ = ("buffers", "minimum", "size")

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self.buffers: list[memoryview] = []
        self.size = 0

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if raw.nbytes < self.minimum:
            return True
        self.buffers.append(raw)
        self.size += raw.nbytes
        return False

    def clear(self) -> None:
        self.buffers = []
        self.size = 0


class _OutOfBand:
    """A big ``bytes``/``bytearray`` pickled as a buffer (pickle copies those in band even
    with a ``buffer_callback``); rebuilt as the same type, with one copy out of the segment."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return type(self.data), (pickle.PickleBuffer(self.data),)


def wrap_big(value: Any, threshold: int) -> Any:
    """``value`` with a big ``bytes``/``bytearray`` in it (itself, or an item of a tuple, list
    or dict it is) marked to travel out of band; ``value`` itself when there is none."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return _OutOfBand(value) if len(value) >= threshold else value
    if kind is tuple or kind is list:
        if any(type(v) in (bytes, bytearray) and len(v) >= threshold for v in value):
            return kind(wrap_big(v, threshold) for v in value)
        return value
    if kind is dict:
        if any(type(v) in (bytes, bytearray) and len(v) >= threshold for v in value.values()):
            return {k: wrap_big(v, threshold) for k, v in value.items()}
    return value


def seal(sharing: Sharing, kind: str, task_id: str, data: bytes, buffers: Sequence[Any]) -> bytes:
    """The payload for a pickle ``data`` and its out-of-band ``buffers``: a reference to a new
    segment holding them when they come to the threshold (or buffers were taken out), else
    ``data`` itself. Raises OSError when no segment can be made (``/dev/shm`` full)."""
    if not buffers:
        if len(data) < sharing.threshold:
            return data
    pieces: list[Any] = [data]
    spans = []
    offset = len(data)
    for buffer in buffers:
        start = -(-offset // ALIGN) * ALIGN
        if start > offset:
            pieces.append(bytes(start - offset))
        pieces.append(buffer)
        spans.append([start, buffer.nbytes])
        offset = start + buffer.nbytes
    name = sharing.name(kind, task_id)
    _create(name, pieces)
    packed: bytes = msgpack.packb([name, offset, len(data), spans, _digest(pieces)])
    return MAGIC + packed


def _digest(pieces: Sequence[Any]) -> bytes:
    """BLAKE3 of a segment's bytes: the reference carries it, and the reference is itself a
    payload whose digest the signed header carries, so the segment is bound to the message as a
    frame would be (checked where it is unpickled, like any payload)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for piece in pieces:
        hasher.update(piece)
    return hasher.digest()


def _create(name: str, pieces: list[Any]) -> None:
    path = os.path.join(DIRECTORY, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        views = [memoryview(p).cast("B") for p in pieces if len(p)]
        while views:
            written = os.writev(fd, views[:1024])  # IOV_MAX
            while views and written >= views[0].nbytes:
                written -= views[0].nbytes
                views.pop(0)
            if written:
                views[0] = views[0][written:]
    except BaseException:
        _unlink(name)
        raise
    finally:
        os.close(fd)


# -- references ---------------------------------------------------------------------------


def is_reference(payload: object) -> bool:
    """Whether a payload names a segment (cheap: the master asks it of what it drops). The
    bytes a node made or opened, or a zero-copy view of a frame."""
    kind = type(payload)
    if kind is bytes:
        return bool(payload[:1] == b"\xff" and payload.startswith(MAGIC))  # type: ignore[index, attr-defined]
    if kind is memoryview:
        return bytes(payload[: len(MAGIC)]) == MAGIC  # type: ignore[index]
    return False


class SegmentMissing(FileNotFoundError):
    """A reference whose segment this process cannot open."""


def _parse(reference: bytes) -> tuple[str, int, int, list[list[int]], bytes]:
    name, size, length, spans, digest = msgpack.unpackb(bytes(reference[len(MAGIC) :]))
    if not _valid_name(name):
        raise ValueError(f"not a taskswarm shared memory segment: {name!r}")
    return name, size, length, spans, digest


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith(NAME_START) and "/" not in name


def load(reference: bytes, loads: Callable[..., Any] = pickle.loads) -> Any:
    """Map a reference's segment (copy-on-write) and unpickle from it: out-of-band buffers are
    views of the mapping, which lives as long as any object built on it."""
    return mapped(reference).load(loads)


class Mapped:
    """A segment mapped but not read yet: a result its application has not asked for.

    Mapping costs a system call; reading (the digest over every page, then unpickling) costs
    a pass over the bytes, which a program that never asks for an intermediate result should
    not pay. The mapping outlives the segment's name, so the name can be freed at once."""

    __slots__ = ("digest", "length", "lock", "mapping", "name", "spans")

    def __init__(
        self, mapping: mmap.mmap, name: str, length: int, spans: list[list[int]], digest: bytes
    ) -> None:
        self.mapping, self.name, self.digest = mapping, name, digest
        self.length, self.spans = length, spans
        #: Held while it is read: one read, whoever asks first (``TaskFuture.result``).
        self.lock = threading.Lock()

    def load(self, loads: Callable[..., Any] = pickle.loads) -> Any:
        """Check the bytes against the reference's digest, then unpickle them."""
        view = memoryview(self.mapping)
        if _digest([view]) != self.digest:
            raise BadDigest(
                f"shared memory segment {self.name!r} ({len(view)} bytes) does not match the "
                "digest its reference carries (changed since it was written): refused, not "
                "unpickled"
            )
        length = self.length
        return loads(view[:length], buffers=[view[start : start + n] for start, n in self.spans])


def mapped(reference: bytes) -> Mapped:
    """Map a reference's segment (copy-on-write), reading nothing yet."""
    name, size, length, spans, digest = _parse(reference)
    try:
        fd = os.open(os.path.join(DIRECTORY, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SegmentMissing(
            f"this payload is in shared memory segment {name!r}, which this process on host "
            f"{socket.gethostname()} cannot find. Shared memory is on, and it works only when "
            "the application and every slave run on one host: this one is elsewhere (or the "
            "task was cancelled and its payload freed meanwhile). Turn it off for a cluster "
            "spread over hosts: LocalCluster(shared_memory=False), ts.connect(..., "
            "shared_memory=False), taskswarm slave --shared-memory off, or "
            f"{ENVVAR}=off"
        ) from None
    try:
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    return Mapped(mapping, name, length, spans, digest)


def weight(payload: Any) -> int:
    """The bytes a payload stands for: a reference's segment size, else its own length (what
    an application counts towards a SUBMIT's worth, so that tasks in shared memory leave in
    batches as tasks in messages do, the first ones running while later ones are pickled)."""
    if is_reference(payload):
        try:
            return _parse(payload)[1]
        except Exception:
            return len(payload)
    return len(payload)


def name_of(reference: bytes) -> str | None:
    try:
        return _parse(reference)[0]
    except Exception:
        return None


def free(payload: object) -> None:
    """Unlink a reference's segment (nothing for any other payload; nothing if gone). A
    payload as received (:class:`~taskswarm.protocol.digests.Payload`) names a segment only
    once its digest is checked (a reference is a few dozen bytes: the check is cheap), so an
    altered one frees nothing."""
    if type(payload) is Payload:
        if len(payload) > MAX_REFERENCE or not is_reference(payload.raw):
            return
        try:
            payload = payload.open()
        except BadDigest:
            return
    if is_reference(payload):
        name = name_of(payload)  # type: ignore[arg-type]  # bytes: is_reference said so
        if name is not None:
            _unlink(name)


def free_name(name: str) -> None:
    if _valid_name(name):
        _unlink(name)


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(DIRECTORY, name))
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not free shared memory segment %s: %s", name, exc)


def segments(prefix: str) -> list[str]:
    """The names of the segments under ``prefix`` now."""
    if not prefix.startswith(NAME_START) or not os.path.isdir(DIRECTORY):
        return []
    try:
        return [name for name in os.listdir(DIRECTORY) if name.startswith(prefix)]
    except OSError:
        return []


def sweep(prefix: str) -> int:
    """Unlink every segment under ``prefix`` (a cluster's, at its end); how many there were."""
    found = segments(prefix)
    for name in found:
        _unlink(name)
    return len(found)


def drop_results(prefix: str, pid: int, task_id: str) -> int:
    """Unlink the result segments worker ``pid`` made for ``task_id`` and never reported (the
    slave killed or lost it while it ran that task)."""
    return sweep(f"{prefix}r{pid}-{_safe(task_id)}-")
