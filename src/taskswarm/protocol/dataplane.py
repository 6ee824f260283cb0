"""The data plane: results that stay on the slave that made them, and how they are fetched.

A big result of a plain task (``KEEP_BYTES`` or more, not in shared memory) need not travel
slave -> master -> application, nor master -> slave again for each task that takes it: its
slave keeps it (a :class:`Store`), the master learns only its size and where it is, and whoever
needs it fetches it from the slave's *data socket* (a :class:`DataServer`): another slave, for
a task that takes it as an input, or the application, when its ``Future.result()`` is asked
for. So the bytes a task graph moves go from the slave that made them to the one that uses
them, once, and the master's load follows the number of tasks, not their size.

The data socket speaks the cluster's protocol (:mod:`taskswarm.protocol.codec`): FETCH, which
opens a conversation (signed with the cluster key, good within the replay window), and DATA,
addressed to the asker's session, one pickled result per payload under its digest. With a
CurveZMQ key file the socket is encrypted with the cluster's keypair, as the master's is. Only
holders of the cluster key can fetch, as only they can send tasks.

Why a second socket rather than the slave's link to the master: a slave's only socket is a
DEALER connected *to* the master; peers cannot reach it. A ROUTER bound on the address the
slave uses to reach the master (``data_host``) is reachable from wherever the master is.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Iterable
from typing import Any

import zmq

from ..errors import TaskswarmError, WireError
from .codec import Codec, Kind
from .digests import Payload, digest
from .keys import ClusterKeys
from .messages import Data, Fetch
from .transport import bind_router, connect_dealer, receive_batch, try_send

__all__ = [
    "FETCH_TIMEOUT",
    "KEEP_BYTES",
    "DataServer",
    "FetchFailed",
    "Store",
    "data_host",
    "fetch",
]

log = logging.getLogger(__name__)

#: Results this big or bigger stay on their slave (when their task allows it): below it, one
#: more round trip to fetch costs more than the bytes carried through the master.
KEEP_BYTES = 64 * 1024
#: Seconds a fetch waits for a data socket's answer before it takes the slave for lost.
FETCH_TIMEOUT = 10.0


class FetchFailed(TaskswarmError):
    """A kept result could not be had from where the master said it was."""


def data_host(master_address: str) -> str:
    """The address this host reaches the master from: where its data socket listens, so
    that whoever reaches the master reaches it too (loopback for a master on loopback)."""
    rest = master_address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0].strip("[]")
    try:
        target = socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"
    if target.startswith("127."):
        return "127.0.0.1"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((target, 9))  # no packet is sent: this only picks the route
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


class Store:
    """The results one slave keeps, by task id, until the master says DROP."""

    def __init__(self) -> None:
        self._kept: dict[str, Any] = {}
        self.bytes = 0

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._kept

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, task_id: str, data: Any) -> None:
        old = self._kept.pop(task_id, None)
        if old is not None:
            self.bytes -= len(old)
        self._kept[task_id] = data
        self.bytes += len(data)

    def get(self, task_id: str) -> Payload | None:
        """The result under its digest (hashed once, when first asked for)."""
        data = self._kept.get(task_id)
        if data is None or type(data) is Payload:
            return data
        sealed = Payload(data, digest(data))
        self._kept[task_id] = sealed
        return sealed

    def drop(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            data = self._kept.pop(task_id, None)
            if data is not None:
                self.bytes -= len(data)


class DataServer:
    """A slave's data socket: answers FETCH from its store, on the slave's loop thread."""

    def __init__(
        self, context: zmq.Context[Any], host: str, keys: ClusterKeys, store: Store
    ) -> None:
        self.store = store
        # A FETCH is a few ids: anything much bigger is not one.
        self.socket, self.address = bind_router(
            context, f"tcp://{host}:0", keys.curve_secret, max_bytes=1024 * 1024
        )
        self.codec = Codec(keys.hmac, max_bytes=1024 * 1024)
        self.served = 0  # bytes sent

    def serve(self) -> None:
        """Answer every FETCH waiting; anything else is counted and dropped."""
        for frames in receive_batch(self.socket):
            identity, rest = frames[0], frames[1:]
            try:
                message = self.codec.decode(rest)
            except WireError as exc:
                log.debug("data socket dropped a message: %s", exc)
                continue
            if message.kind != Kind.FETCH:
                self.codec.rejected["unexpected"] += 1
                continue
            found, payloads, missing = [], [], []
            for task_id in message.read(Fetch).data_ids:
                data = self.store.get(task_id)
                if data is None:
                    missing.append(task_id)
                else:
                    found.append(task_id)
                    payloads.append(data)
            answer = Data(data_ids=found, missing=missing)
            frames_out = self.codec.encode(Kind.DATA, answer, payloads, to=message.sender)
            if try_send(self.socket, [identity, *frames_out]):
                self.served += sum(map(len, payloads))

    def close(self) -> None:
        self.socket.close(linger=0)


def fetch(
    address: str,
    data_ids: list[str],
    keys: ClusterKeys,
    timeout: float = FETCH_TIMEOUT,
    context: zmq.Context[Any] | None = None,
) -> dict[str, Payload]:
    """Kept results from the data socket at ``address``, each under the digest its signed
    answer gave (checked by whoever opens it). Blocks the calling thread (its own socket: no
    node's loop is involved, so it may be called from anywhere, a Future's callback too).
    Raises ``FetchFailed`` saying why: no answer within ``timeout``, or some not kept there."""
    ctx = context if context is not None else zmq.Context.instance()
    codec = Codec(keys.hmac)
    sock = connect_dealer(ctx, address, secrets.token_bytes(8), keys.curve_public)
    try:
        sock.send_multipart(codec.encode(Kind.FETCH, Fetch(data_ids=data_ids)), copy=False)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(max(1, int(left * 1000))):
                raise FetchFailed(
                    f"the slave at {address} did not answer within {timeout:g}s (it is gone, "
                    "or this host cannot reach that address)"
                )
            frames = sock.recv_multipart(copy=False)
            try:
                message = codec.decode(frames)
            except WireError as exc:
                log.debug("dropped an answer from %s: %s", address, exc)
                continue
            if message.kind != Kind.DATA:
                continue
            answer = message.read(Data)
            if answer.missing:
                raise FetchFailed(
                    f"the slave at {address} no longer keeps the results of tasks "
                    f"{', '.join(answer.missing)}"
                )
            return dict(zip(answer.data_ids, message.payloads, strict=True))
    finally:
        sock.close(linger=0)
