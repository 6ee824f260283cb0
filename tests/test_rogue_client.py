"""A rogue peer on the master's port: nothing it sends is unpickled, the master keeps serving."""

from __future__ import annotations

import pathlib
import pickle

import cloudpickle
import zmq

from conftest import wait_for
from taskswarm.protocol.codec import Codec, Kind
from test_task_systems import RecursiveSum


class Canary:
    """Unpickling this creates a file: if the file ever exists, something was unpickled."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def test_unsigned_and_wrongly_signed_messages_are_dropped_before_unpickling(app, cluster, tmp_path):
    canary = tmp_path / "canary"
    payload = pickle.dumps(Canary(canary))
    assert not canary.exists()
    header = {"tasks": ["t1"], "system_id": "s1", "client_id": "rogue", "rid": 1}
    wrong_key = Codec(b"not-the-cluster-key-at-all-00000")
    messages = [
        [b"\0" * 32, cloudpickle.dumps(header), payload],  # unsigned
        wrong_key.encode(Kind.SUBMIT, header, [payload]),
        wrong_key.encode(Kind.SYSTEM, header, [payload]),
        wrong_key.encode(Kind.RESULTS, {"results": [["t1", True]]}, [payload]),
        [payload],  # a bare pickle
        [b""],
        [b"x" * 31, b"\x81\xa1v\x01", payload],  # short signature
    ]
    context = zmq.Context()
    rogue = context.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(cluster.address)
    try:
        for _ in range(20):
            for frames in messages:
                rogue.send_multipart(frames)

        def rejected():
            counts = app.status()["master"]["rejected"]
            return sum(counts.values()) >= 20 * len(messages)

        wait_for(rejected, timeout=20)
    finally:
        rogue.close()
        context.term()
    assert not canary.exists()
    assert app.run_system(RecursiveSum(500), timeout=60) == sum(range(500))
    assert not canary.exists()
