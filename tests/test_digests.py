"""Payload digests: the master forwards plain payloads unhashed and uncopied, and a payload altered
on the way is refused where it would be unpickled, before it is, and its task fails visibly.

The header's MAC binds each payload through the digest the header carries (docs/security.md);
only the node that unpickles a payload checks it. Here: the master's codec hashes headers only
for a SUBMIT -> TASKS -> RESULTS round, a big payload leaves it in the very frame it came in,
and a man in the middle that swaps a payload for a booby-trapped pickle, between master and
slave or between master and application, gets its task failed with ``BadDigest`` and its pickle
unpickled by no one.
"""

from __future__ import annotations

import pathlib
import pickle
from types import SimpleNamespace

import blake3
import msgpack
import pytest
import zmq

import taskswarm as ts
from conftest import free_port, wait_for
from relay import Relay
from taskswarm.errors import BadDigest
from taskswarm.protocol import codec as codec_module
from taskswarm.protocol import digests as digests_module
from taskswarm.protocol.codec import BIG_PAYLOAD, Codec, Kind
from taskswarm.protocol.messages import (
    APPLICATION_HEADER,
    Heartbeat,
    Hello,
    Outcome,
    Register,
    Results,
    Submit,
    TaskMeta,
)
from test_master_core import Clock, make_core

KEY = b"k" * 32


class Counting:
    """``blake3.blake3`` that adds up the bytes it is given while ``on``."""

    def __init__(self) -> None:
        self.on, self.bytes, self.calls = False, 0, 0

    def __call__(self, data: bytes = b"", **kwargs):
        if self.on:
            self.bytes += len(data)
            self.calls += 1
        return blake3.blake3(data, **kwargs)


@pytest.fixture
def hashed(monkeypatch) -> Counting:
    counting = Counting()
    counting.AUTO = blake3.blake3.AUTO  # digests.digest asks for it on big payloads
    fake = SimpleNamespace(blake3=counting)
    monkeypatch.setattr(codec_module, "blake3", fake)
    monkeypatch.setattr(digests_module, "blake3", fake)
    return counting


def received(frames: list) -> list[zmq.Frame]:
    """Frames as a node receives them (``recv_multipart(copy=False)``)."""
    return [zmq.Frame(bytes(f)) if not isinstance(f, zmq.Frame) else f for f in frames]


def test_the_master_forwards_plain_payloads_without_hashing_or_copying_them(hashed):
    app, master, slave = Codec(KEY), Codec(KEY), Codec(KEY)
    app_in = Codec(KEY, headers=APPLICATION_HEADER)
    app_in.session = app.session  # one node, one session: it reads the master's RESULTS
    sent: list[tuple[bytes, list]] = []

    def send(identity, kind, header=None, payloads=()):
        to = {b"app": app.session, b"slave": slave.session}[identity]
        hashed.on = True  # the master's codec encoding
        frames = master.encode(kind, header, payloads, to=to)
        hashed.on = False
        sent.append((identity, frames))
        return True

    core = make_core(SimpleNamespace(send=send), Clock())
    headers = 0

    def deliver(identity: bytes, frames: list) -> None:
        nonlocal headers
        headers += len(bytes(frames[1]))
        hashed.on = True
        core.handle(identity, master.decode(received(frames)))
        hashed.on = False

    deliver(b"app", app.encode(Kind.HELLO, Hello(client_id="app"), to=master.session))
    deliver(b"slave", slave.encode(Kind.REGISTER, Register(node_id="s1", workers=1)))
    deliver(b"slave", slave.encode(Kind.HEARTBEAT, Heartbeat(want=4), to=master.session))
    small, big = b"small task" * 10, b"B" * (BIG_PAYLOAD * 4)
    metas = [TaskMeta("t1"), TaskMeta("t2")]
    submit = app.encode(Kind.SUBMIT, Submit(tasks=metas, rid=1), [small, big], to=master.session)
    big_frame = received(submit)[3]
    hashed.on = True
    core.handle(b"app", master.decode([*received(submit)[:3], big_frame]))
    hashed.on = False
    headers += len(submit[1])
    core.turn()

    (tasks,) = [frames for identity, frames in sent if identity == b"slave" and len(frames) > 2]
    assert tasks[-1] is big_frame  # sent on in the very frame it came in: not copied
    message = slave.decode(received(tasks))
    assert [bytes(p.open()) for p in message.payloads] == [small, big]  # digests forwarded
    outcome = [Outcome("t1", "ok"), Outcome("t2", "ok")]
    result_payloads = [b"1", b"2" * 100]
    deliver(
        b"slave",
        slave.encode(Kind.RESULTS, Results(results=outcome), result_payloads, to=master.session),
    )
    core.turn()
    results = [frames for identity, frames in sent if identity == b"app" and len(frames) > 2]
    delivered = app_in.decode(received(results[-1]))
    assert [bytes(p.open()) for p in delivered.payloads] == result_payloads

    # Everything the master hashed was headers: the ones it received and the ones it signed.
    headers += sum(len(bytes(frames[1])) for _, frames in sent)
    assert hashed.bytes == headers
    assert hashed.bytes < len(big)


# -- a man in the middle -------------------------------------------------------------------------


class Canary:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


class Tamperer(Relay):
    """In what the master sends of ``kind``, puts ``evil`` in place of every payload (the signed
    header untouched)."""

    def __init__(self, context: zmq.Context, master: str, kind: str, evil: bytes) -> None:
        super().__init__(context, master)
        self.kind, self.evil = kind, evil
        self.tampered = 0

    def inward(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 3 or msgpack.unpackb(frames[1]).get("k") != self.kind:
            return frames
        header = msgpack.unpackb(frames[1])
        count = len(header["dg"]) // 32
        self.tampered += count
        return [*frames[:2], msgpack.packb([self.evil] * count)]  # one packed frame, all evil


@pytest.fixture
def master_address(nodes, key_file) -> str:
    address = f"tcp://127.0.0.1:{free_port()}"
    nodes.start("master", "--bind", address, "--key-file", key_file, "--no-state-dir")
    return address


@pytest.mark.timeout(120)
def test_a_task_altered_between_master_and_slave_fails_unrun_and_is_counted(
    nodes, key_file, master_address, tmp_path
):
    canary = tmp_path / "canary"
    context = zmq.Context()
    relay = Tamperer(context, master_address, Kind.TASKS, pickle.dumps(Canary(str(canary))))
    relay.start()
    try:
        nodes.start(
            "slave", f"tcp://127.0.0.1:{relay.port}", "--key-file", key_file, "--workers", "1"
        )
        with ts.connect(master_address, key_file) as app:
            wait_for(lambda: [s for s in app.status()["slaves"] if s["state"] == "active"])
            future = app.submit(abs, -3)
            with pytest.raises(BadDigest, match="altered on the way"):
                future.result(timeout=60)
            wait_for(lambda: app.status()["slaves"][0]["rejected"] >= 1, timeout=30)
    finally:
        relay.stop.set()
        relay.join(10)
        context.destroy(linger=0)
    assert relay.tampered >= 1
    assert not canary.exists()  # refused before it was unpickled: it never ran


@pytest.mark.timeout(120)
def test_a_result_altered_between_master_and_application_is_refused_and_counted(
    nodes, key_file, master_address, tmp_path
):
    canary = tmp_path / "canary"
    context = zmq.Context()
    relay = Tamperer(context, master_address, Kind.RESULTS, pickle.dumps(Canary(str(canary))))
    relay.start()
    try:
        nodes.start("slave", master_address, "--key-file", key_file, "--workers", "1")
        with ts.connect(f"tcp://127.0.0.1:{relay.port}", key_file) as app:
            future = app.submit(abs, -3)
            with pytest.raises(BadDigest, match="altered on the way"):
                future.result(timeout=60)
            assert app._link.codec.rejected["bad-digest"] == 1
    finally:
        relay.stop.set()
        relay.join(10)
        context.destroy(linger=0)
    assert not canary.exists()
