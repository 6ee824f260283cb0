"""The wire format: what a node accepts, and everything it must drop before touching a payload.

A message is ``[signature, header, payload_0, ...]``. The signature is keyed BLAKE3 (its key
derived from the cluster key) over the header; the header is a msgpack map
``{"v": version, "k": kind, ..., "dg": digests}`` that carries the BLAKE3 digest of each payload;
payloads are opaque bytes the decoder never unpickles, handed on sealed (``Payload``) with their
digest, checked where they would be unpickled (``Payload.open``). Every message refused at the
door raises a ``WireError`` whose ``reason`` the codec counts; a payload altered on the way is
refused with ``BadDigest`` by whoever opens it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import blake3
import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from taskswarm import errors
from taskswarm.errors import (
    BadDigest,
    BadSignature,
    MalformedMessage,
    TaskswarmError,
    VersionMismatch,
    WireError,
)
from taskswarm.protocol.codec import (
    BIG_PAYLOAD,
    MAC_CONTEXT,
    PROTOCOL_VERSION,
    Codec,
    Kind,
    Message,
    Payload,
)
from taskswarm.protocol.messages import Ack

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

CHECKS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sign(key: bytes, frames: list[bytes]) -> bytes:
    """The documented signature of ``[header, payload frames...]``, computed independently of
    the codec: keyed BLAKE3 over the header alone, its key derived from the cluster key."""
    mac_key = blake3.blake3(key, derive_key_context=MAC_CONTEXT).digest()
    return blake3.blake3(frames[0] if frames else b"", key=mac_key).digest()


def signed(header: object, *payloads: bytes, key: bytes = KEY) -> list[bytes]:
    """A correctly signed message whose header is whatever we say (valid or not)."""
    frames = [msgpack.packb(header, use_bin_type=True), *payloads]
    return [sign(key, frames), *frames]


def opened(message: Message) -> list[bytes]:
    """The payloads' bytes, each checked against its digest as the node unpickling it does."""
    return [bytes(payload.open()) for payload in message.payloads]


# -- strategies ----------------------------------------------------------------------------------

plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
plain_values = st.recursive(
    plain_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
RESERVED = ("v", "k", "sid", "seq", "to", "ts", "pf", "dg")  # the wire's own header fields
field_names = st.text(max_size=12).filter(lambda name: name not in RESERVED)
headers = st.dictionaries(field_names, plain_values, max_size=6)
payload_lists = st.lists(st.binary(max_size=64), max_size=5)
kinds = st.sampled_from(sorted(Kind.ALL))


# -- what goes through -----------------------------------------------------------------------------

# Tests of the framing alone (any header, any payloads) use ``Codec(..., typed=False)``: it reads
# a header as a plain map. Headers as their kinds' typed records: tests/test_messages.py.


@CHECKS
@given(kind=kinds, header=headers, payloads=payload_lists)
def test_every_kind_with_any_plain_header_and_payloads_round_trips(kind, header, payloads):
    codec = Codec(KEY, typed=False)

    message = codec.decode(codec.encode(kind, header, payloads, to=codec.session))

    assert message.kind == kind
    assert {k: v for k, v in message.header.items() if k not in RESERVED} == header
    assert message.sender == codec.session
    assert message.header["v"] == PROTOCOL_VERSION
    assert message.header["k"] == kind
    assert opened(message) == payloads
    assert all(type(p) is Payload for p in message.payloads)  # sealed, never unpickled here
    assert not codec.rejected


@CHECKS
@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 100, BIG_PAYLOAD - 1, BIG_PAYLOAD, BIG_PAYLOAD + 1]), max_size=8
    )
)
def test_small_payloads_share_a_frame_and_big_ones_travel_alone(sizes):
    codec = Codec(KEY, typed=False)
    payloads = [bytes([i % 256]) * n for i, n in enumerate(sizes)]

    frames = codec.encode(Kind.TASKS, {}, payloads, to=codec.session)
    message = codec.decode(frames)

    assert opened(message) == payloads
    big = sum(1 for n in sizes if n >= BIG_PAYLOAD)
    assert len(frames) - 2 <= 2 * big + 1  # runs of small ones between big ones, one frame each


def test_ten_thousand_small_payloads_are_one_frame():
    codec = Codec(KEY, typed=False)
    payloads = [i.to_bytes(4, "big") for i in range(10_000)]

    frames = codec.encode(Kind.TASKS, {}, payloads, to=codec.session)

    assert len(frames) == 3
    assert opened(codec.decode(frames)) == payloads


@pytest.mark.parametrize(
    "layout, body",
    [
        ("pp", [msgpack.packb([b"a"])]),  # says two frames, has one
        ("x", [msgpack.packb([b"a"])]),  # unknown layout letter
        ("p", [b"\xc1"]),  # not msgpack
        ("p", [msgpack.packb({"a": 1})]),  # not a list
        ("p", [msgpack.packb([1, 2])]),  # not a list of bytes
        (7, [msgpack.packb([b"a"])]),  # layout not a string
    ],
)
def test_a_signed_message_whose_payload_frames_do_not_match_their_layout_is_malformed(layout, body):
    codec = Codec(KEY)
    header = {"v": PROTOCOL_VERSION, "k": Kind.TASKS, "sid": "s", "seq": 1, "to": codec.session}
    frames = [msgpack.packb({**header, "pf": layout}, use_bin_type=True), *body]

    with pytest.raises(MalformedMessage):
        codec.decode([sign(KEY, frames), *frames])

    assert codec.rejected == {"malformed": 1}


def test_a_message_reads_its_header_fields_by_name():
    codec = Codec(KEY)
    message = codec.decode(codec.encode(Kind.ACK, {"rid": 7, "n": 3}, to=codec.session))

    assert isinstance(message, Message)
    assert message.read(Ack).rid == 7
    assert message.read(Ack).n == 3
    assert message.read(Ack).reason is None  # not said
    assert message.header is None  # a typed codec's message is its record


def test_the_signature_is_keyed_blake3_over_the_header_which_carries_each_payload_digest():
    frames = Codec(KEY).encode(
        Kind.TASKS, {"tasks": ["a", "b"]}, [b"one", b"two"], to=Codec(KEY).session
    )

    assert frames[0] == sign(KEY, frames[1:])
    assert len(frames[0]) == 32
    header = msgpack.unpackb(frames[1])
    assert header["dg"] == blake3.blake3(b"one").digest() + blake3.blake3(b"two").digest()


def test_every_kind_is_a_distinct_string():
    names = [v for k, v in vars(Kind).items() if k.isupper() and isinstance(v, str)]

    assert set(names) == Kind.ALL
    assert len(names) == len(Kind.ALL)
    assert all(isinstance(name, str) and name for name in names)


@CHECKS
@given(header=headers, payloads=payload_lists)
def test_zmq_frames_decode_like_bytes(header, payloads):
    codec = Codec(KEY, typed=False)
    frames = [zmq.Frame(f) for f in codec.encode(Kind.RESULTS, header, payloads, to=codec.session)]

    message = codec.decode(frames)

    assert message.kind == Kind.RESULTS
    assert opened(message) == payloads


def test_frames_received_from_a_real_socket_without_copying_decode():
    codec = Codec(KEY, typed=False)
    context = zmq.Context()
    sender = context.socket(zmq.PAIR)
    receiver = context.socket(zmq.PAIR)
    try:
        receiver.bind("inproc://wire-test")
        sender.connect("inproc://wire-test")
        sender.send_multipart(
            codec.encode(Kind.TASKS, {"tasks": ["t1"]}, [b"x" * 1000], to=codec.session)
        )
        assert receiver.poll(5000), "the message never arrived"
        frames = receiver.recv_multipart(copy=False)

        message = codec.decode(frames)

        assert all(isinstance(f, zmq.Frame) for f in frames)
        assert message.header["tasks"] == ["t1"]
        assert opened(message) == [b"x" * 1000]
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
        context.term()


# -- what is dropped -------------------------------------------------------------------------------


@st.composite
def mutations(draw, frames: list[bytes]) -> tuple[str, list[bytes]]:
    """One change to a signed message: what an attacker or a broken peer could send instead."""
    frames = list(frames)
    non_empty = [i for i, f in enumerate(frames) if f]
    ops = ["drop", "add", "swap", "resplit"] + (["flip", "truncate"] if non_empty else [])
    op = draw(st.sampled_from(ops))
    if op == "flip":
        i = draw(st.sampled_from(non_empty))
        pos = draw(st.integers(0, len(frames[i]) - 1))
        mask = draw(st.integers(1, 255))
        frame = bytearray(frames[i])
        frame[pos] ^= mask
        frames[i] = bytes(frame)
    elif op == "truncate":
        i = draw(st.sampled_from(non_empty))
        frames[i] = frames[i][: draw(st.integers(0, len(frames[i]) - 1))]
    elif op == "drop":
        del frames[draw(st.integers(0, len(frames) - 1))]
    elif op == "add":
        frames.insert(draw(st.integers(0, len(frames))), draw(st.binary(max_size=40)))
    elif op == "swap":
        i, j = draw(st.lists(st.integers(0, len(frames) - 1), min_size=2, max_size=2, unique=True))
        assume(frames[i] != frames[j])
        frames[i], frames[j] = frames[j], frames[i]
    else:  # re-cut the boundary between two neighbouring frames
        i = draw(st.sampled_from([i for i in range(len(frames) - 1) if frames[i] + frames[i + 1]]))
        joined = frames[i] + frames[i + 1]
        cut = draw(st.integers(0, len(joined)).filter(lambda c: c != len(frames[i])))
        frames[i : i + 2] = [joined[:cut], joined[cut:]]
    return op, frames


@CHECKS
@given(kind=kinds, header=headers, payloads=payload_lists, data=st.data())
def test_any_single_change_to_a_signed_message_is_rejected_and_counted(
    kind, header, payloads, data
):
    """A change to the signature or the header is refused at the door; a change to payload
    frames alone is refused there when the frames no longer parse, or else by whoever opens the
    changed payload to unpickle it (its digest, in the signed header, no longer matches)."""
    codec = Codec(KEY)
    original = codec.encode(kind, header, payloads, to=codec.session)
    op, frames = data.draw(mutations(original), label="mutation")
    assert frames != original

    try:
        message = codec.decode(frames)
    except WireError as refused:
        if len(frames) < 2:
            assert isinstance(refused, MalformedMessage)
        elif frames[:2] != original[:2]:
            assert isinstance(refused, BadSignature), op
        else:  # the payload frames no longer parse as their signed layout says
            assert isinstance(refused, MalformedMessage), op
        assert codec.rejected == {refused.reason: 1}
        return
    # Through the door only with the signature and header untouched, and then a changed
    # payload is refused where it would be unpickled, before it is.
    assert frames[:2] == original[:2], op
    with pytest.raises(BadDigest):
        opened(message)


def test_a_message_signed_with_another_key_is_a_bad_signature():
    codec = Codec(KEY)

    with pytest.raises(BadSignature):
        codec.decode(Codec(OTHER_KEY).encode(Kind.HEARTBEAT, to=Codec(KEY).session))

    assert codec.rejected == {"bad-signature": 1}


@pytest.mark.parametrize("frames", [[], [b""], [sign(KEY, [])]], ids=["none", "empty", "sig-only"])
def test_fewer_than_two_frames_is_malformed(frames):
    codec = Codec(KEY)

    with pytest.raises(MalformedMessage, match="at least 2 frames"):
        codec.decode(frames)

    assert codec.rejected == {"malformed": 1}


def test_more_frames_than_the_limit_is_malformed_before_the_signature_is_computed():
    codec = Codec(KEY, max_frames=3, typed=False)
    big = b"x" * BIG_PAYLOAD  # big payloads travel one per frame
    codec.decode(codec.encode(Kind.TASKS, {}, [big, big], to=codec.session))  # at the limit

    with pytest.raises(MalformedMessage, match="too many frames"):
        codec.decode(codec.encode(Kind.TASKS, {}, [big, big, big], to=codec.session))

    assert codec.rejected == {"malformed": 1}


@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, 0, "1", None])
def test_a_correctly_signed_message_of_another_version_names_both_versions(version):
    codec = Codec(KEY)

    with pytest.raises(VersionMismatch) as caught:
        codec.decode(signed({"v": version, "k": Kind.HEARTBEAT}))

    assert repr(version) in str(caught.value)
    assert str(PROTOCOL_VERSION) in str(caught.value)
    assert codec.rejected == {"version": 1}


def test_a_correctly_signed_message_without_a_version_is_a_version_mismatch():
    codec = Codec(KEY)

    with pytest.raises(VersionMismatch, match="None"):
        codec.decode(signed({"k": Kind.HEARTBEAT}))


@pytest.mark.parametrize("kind", ["no-such-kind", "", None, 3, b"heartbeat"])
def test_a_correctly_signed_message_of_an_unknown_kind_is_malformed(kind):
    codec = Codec(KEY)

    with pytest.raises(MalformedMessage, match="unknown message kind"):
        codec.decode(signed({"v": PROTOCOL_VERSION, "k": kind}))

    assert codec.rejected == {"malformed": 1}


@pytest.mark.parametrize(
    "header", [[PROTOCOL_VERSION, Kind.HEARTBEAT], 1, "heartbeat", b"bytes", None, 1.5]
)
def test_a_correctly_signed_header_that_is_not_a_map_is_malformed(header):
    codec = Codec(KEY)

    with pytest.raises(MalformedMessage, match="not a map"):
        codec.decode(signed(header))

    assert codec.rejected == {"malformed": 1}


@pytest.mark.parametrize(
    "raw_header",
    [b"", b"\xc1", b"\x92\x01", msgpack.packb({1: "int key"}), b"\x81\xa1v\x01\xff"],
    ids=["empty", "reserved-byte", "truncated-array", "int-keys", "trailing-garbage"],
)
def test_a_correctly_signed_header_that_is_not_msgpack_is_malformed(raw_header):
    codec = Codec(KEY)
    frames = [sign(KEY, [raw_header]), raw_header]

    with pytest.raises(MalformedMessage):
        codec.decode(frames)

    assert codec.rejected == {"malformed": 1}


def test_rejections_are_counted_per_reason():
    codec = Codec(KEY)
    bad = [
        Codec(OTHER_KEY).encode(Kind.HEARTBEAT, to=Codec(KEY).session),
        Codec(OTHER_KEY).encode(Kind.BYE, to=Codec(KEY).session),
        [b"x"],
        signed({"v": PROTOCOL_VERSION + 1, "k": Kind.BYE}),
    ]
    for frames in bad:
        with pytest.raises(WireError):
            codec.decode(frames)
    codec.decode(codec.encode(Kind.BYE, to=codec.session))

    assert codec.rejected == {"bad-signature": 2, "malformed": 1, "version": 1}


def test_an_empty_cluster_key_is_refused():
    with pytest.raises(ValueError, match="must not be empty"):
        Codec(b"")


# -- nothing is unpickled ----------------------------------------------------------------------


class CreatesAFileWhenUnpickled:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_the_booby_trapped_payload_used_below_does_create_its_file_when_unpickled(tmp_path):
    target = tmp_path / "control"

    pickle.loads(pickle.dumps(CreatesAFileWhenUnpickled(target))).close()

    assert target.exists()


def test_decoding_a_signed_message_leaves_a_pickled_payload_as_bytes(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps(CreatesAFileWhenUnpickled(target))
    codec = Codec(KEY, typed=False)

    message = codec.decode(codec.encode(Kind.TASKS, {"tasks": ["t"]}, [payload], to=codec.session))

    assert type(message.payloads[0]) is Payload
    assert opened(message) == [payload]
    assert not target.exists()


def test_a_pickled_payload_altered_on_the_way_is_refused_when_opened_never_unpickled(tmp_path):
    from taskswarm.task import Status, load_outcome, run_task_reporting

    target = tmp_path / "pwned"
    codec = Codec(KEY, typed=False)
    harmless = pickle.dumps("harmless")
    frames = codec.encode(Kind.TASKS, {"tasks": ["t"]}, [harmless], to=codec.session)
    evil = pickle.dumps(CreatesAFileWhenUnpickled(target))
    frames[2] = msgpack.packb([evil])  # the signed header is untouched, the payload replaced

    message = codec.decode(frames)  # the master forwards it as it is, unopened

    with pytest.raises(BadDigest):
        message.payloads[0].open()
    status, _, text = run_task_reporting(message.payloads[0])  # what a worker does
    assert status == Status.ERROR and text.startswith("BadDigest: ")
    result, error = load_outcome(True, message.payloads[0], "t")  # what an application does
    assert result is None and isinstance(error, BadDigest)
    assert not target.exists()


def test_a_badly_signed_pickled_payload_is_dropped_without_being_unpickled(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps(CreatesAFileWhenUnpickled(target))

    with pytest.raises(BadSignature):
        Codec(KEY).decode(
            Codec(OTHER_KEY).encode(Kind.TASKS, {"tasks": ["t"]}, [payload], to=Codec(KEY).session)
        )

    assert not target.exists()


def test_a_pickle_in_place_of_the_header_is_never_unpickled(tmp_path):
    target = tmp_path / "pwned"
    header = pickle.dumps(CreatesAFileWhenUnpickled(target))

    with pytest.raises(MalformedMessage):
        Codec(KEY).decode([sign(KEY, [header]), header])

    assert not target.exists()


# -- the error tree ------------------------------------------------------------------------------


ERROR_CLASSES = sorted(
    (
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ),
    key=lambda cls: cls.__name__,
)


def test_every_error_descends_from_one_root():
    assert all(issubclass(cls, TaskswarmError) for cls in ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_says_when_it_is_raised(cls):
    assert cls.__doc__
    assert cls is TaskswarmError or cls.__doc__.startswith("Raised "), cls.__doc__


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_keeps_its_type_and_message_across_pickling(cls):
    copy = pickle.loads(pickle.dumps(cls("what went wrong")))

    assert type(copy) is cls
    assert str(copy) == "what went wrong"
    assert cls.__module__ == "taskswarm.errors"


def test_each_wire_error_names_a_distinct_reason():
    wire_errors = [cls for cls in ERROR_CLASSES if issubclass(cls, WireError)]

    assert {BadSignature, MalformedMessage, VersionMismatch} <= set(wire_errors)
    assert len({cls.reason for cls in (BadSignature, MalformedMessage, VersionMismatch)}) == 3
