"""Every message kind is a typed record, decoded and checked in one place.

The codec turns a signed header into its kind's record (``taskswarm.protocol.messages``) right
after the signature check. What these tests pin down:

- every record, with any values its types allow, goes through encode and decode unchanged, and
  is read by name (``msg.read(Record).field``);
- a header that lacks a required field, or holds a field of the wrong type or out of its range,
  is refused as ``BadFields`` (a ``MalformedMessage``, counted as ``bad-fields``), as is one whose
  payload count differs from what it says;
- fields a record does not know are ignored (a newer peer may add optional ones);
- task metadata is one record (``TaskMeta``), built by ``task_meta`` and read by the master;
- RESULTS has a record for each direction: a slave's (``Results``, read by the master) and the
  master's to an application (``Delivery``, read by applications' codecs).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskswarm.errors import BadFields, MalformedMessage, VersionMismatch
from taskswarm.protocol.codec import Codec, Kind, Message
from taskswarm.protocol.messages import (
    APPLICATION_HEADER,
    APPLICATION_RECORDS,
    RECORDS,
    Ack,
    Delivered,
    Delivery,
    Header,
    Heartbeat,
    Outcome,
    Register,
    Results,
    Submit,
    TaskMeta,
    Tasks,
)
from taskswarm.scheduling.records import TaskRecord
from taskswarm.task import FunctionTask, task_meta

KEY = b"k" * 32
CHECKS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENVELOPE = ("v", "sid", "seq", "to", "ts", "pf", "dg")

# -- records with any values their types allow -----------------------------------------------------

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def _bound(info: Any, name: str, default: Any) -> Any:
    value = getattr(info, name, None)
    return default if value is None else value


def strategy(info: Any) -> st.SearchStrategy[Any]:
    """Values of a msgspec type (as ``msgspec.inspect`` describes it), within its constraints."""
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.IntType):
        low = _bound(info, "ge", -(2**63))
        return st.integers(low, 2**63 - 1)
    if isinstance(info, mi.FloatType):
        low = _bound(info, "ge", None)
        return st.floats(min_value=low, allow_nan=False)
    if isinstance(info, mi.StrType):
        return st.text(max_size=12)
    if isinstance(info, mi.ListType):
        return st.lists(strategy(info.item_type), max_size=4)
    if isinstance(info, mi.DictType):
        return st.dictionaries(strategy(info.key_type), strategy(info.value_type), max_size=3)
    if isinstance(info, mi.AnyType):
        return plain
    if isinstance(info, mi.UnionType):
        return st.one_of([strategy(t) for t in info.types])
    if isinstance(info, mi.StructType):
        return record_of(info.cls)
    raise AssertionError(f"no strategy for {info!r}")


def record_of(cls: type) -> st.SearchStrategy[Any]:
    fields = mi.type_info(cls).fields
    own = {f.name: strategy(f.type) for f in fields if f.name not in ENVELOPE}
    return st.fixed_dictionaries(own).map(lambda values: cls(**values))


#: Every record: what the master and slaves receive, and the one only applications do.
EVERY_RECORD = [*RECORDS.values(), APPLICATION_RECORDS[Kind.RESULTS]]
records = st.sampled_from(EVERY_RECORD).flatmap(record_of)


def receiver_for(record: Any) -> Codec:
    """A codec of the node that receives ``record``."""
    if type(record) is Delivery:
        return Codec(KEY, headers=APPLICATION_HEADER)
    return Codec(KEY)


def payloads_for(record: Any) -> list[bytes]:
    return [b"payload-%d" % i for i in range(record.expected_payloads() or 0)]


def signed_plain(
    receiver: Codec, header: dict[str, Any], payloads: list[bytes] | None = None
) -> list[bytes]:
    """A correctly signed message for ``receiver`` whose header is ``header`` as it is (plus
    the envelope): what a peer with the key could send."""
    framing = Codec(KEY, typed=False)
    header = dict(header)
    return framing.encode(header.pop("k"), header, payloads or [], to=receiver.session)


# -- what goes through -------------------------------------------------------------------------


@CHECKS
@given(record=records)
def test_every_kind_round_trips_as_its_record(record):
    codec = receiver_for(record)
    payloads = payloads_for(record)

    message = codec.decode(codec.encode(record.kind, record, payloads, to=codec.session))

    assert type(message.body) is type(record)
    assert message.body == record  # the envelope the codec stamped on it included
    assert message.kind == record.kind
    assert [bytes(p.open()) for p in message.payloads] == payloads
    assert message.read(type(record)) is message.body
    for name in record.__struct_fields__:
        assert getattr(message.read(type(record)), name) == getattr(record, name)
    assert not codec.rejected


@CHECKS
@given(record=records, extra=st.dictionaries(st.text(min_size=1, max_size=10), plain, max_size=4))
def test_fields_a_record_does_not_know_are_ignored(record, extra):
    receiver = receiver_for(record)
    header = msgspec.to_builtins(record)
    known = set(record.__struct_fields__) | {"k"}
    header.update({k: v for k, v in extra.items() if k not in known and k not in ENVELOPE})

    message = receiver.decode(signed_plain(receiver, header, payloads_for(record)))

    message.body.v = message.body.sid = message.body.seq = message.body.to = None
    message.body.ts, message.body.pf, message.body.dg = None, record.pf, record.dg
    assert message.body == record


def test_extra_trailing_items_of_a_batch_item_are_ignored_too():
    receiver = Codec(KEY)
    newer = ["t", None, 0, "n", 0, None, None, False, "from a newer peer"]
    header = {"k": Kind.SUBMIT, "tasks": [newer]}

    message = receiver.decode(signed_plain(receiver, header, [b"p"]))

    assert message.read(Submit).tasks == [TaskMeta("t", None, 0, "n")]


def test_a_record_is_sent_as_the_map_a_plain_header_would_be():
    codec, framing = Codec(KEY), Codec(KEY, typed=False)
    beat = Heartbeat(workers=2, want=4, held=["a"])

    plain_view = framing.decode(codec.encode(Kind.HEARTBEAT, beat, to=framing.session)).header

    assert plain_view is not None
    assert {k: plain_view[k] for k in ("k", "workers", "want", "held")} == {
        "k": "heartbeat",
        "workers": 2,
        "want": 4,
        "held": ["a"],
    }
    assert "credit" not in plain_view and "stats" not in plain_view  # defaults stay home


def test_an_outcome_says_which_worker_ran_it_and_when_and_older_peers_read_it():
    """The task stream's fields trail an outcome's array: an older slave's shorter outcome
    reads with them unset, and an older master reads a newer one's first four items."""
    codec = Codec(KEY)
    newer = Outcome("t1", "ok", None, None, 4242, 100.25, 101.5)
    header = {"k": Kind.RESULTS, "results": [["t0", "ok", None], newer]}

    got = codec.decode(signed_plain(codec, msgspec.to_builtins(header), [b"a", b"b"]))

    older, new = got.read(Results).results
    assert (older.worker, older.began, older.ended) == (None, None, None)
    assert (new.worker, new.began, new.ended) == (4242, 100.25, 101.5)

    class OlderOutcome(msgspec.Struct, array_like=True):  # as a master before these fields
        task_id: str
        status: str
        detail: str | None = None
        kept: int | None = None

    wire = msgspec.msgpack.encode(newer)
    assert msgspec.msgpack.decode(wire, type=OlderOutcome) == OlderOutcome("t1", "ok")
    with pytest.raises(BadFields):  # a worker is a process id, never negative
        bad = {"k": Kind.RESULTS, "results": [["t", "ok", None, None, -1, 1.0, 2.0]]}
        codec.decode(signed_plain(codec, bad, [b"x"]))


def test_a_heartbeat_carries_its_slaves_cpu_and_memory_only_when_measured():
    codec, framing = Codec(KEY), Codec(KEY, typed=False)
    beat = Heartbeat(workers=2, cpu=150.5, rss=2**33)

    message = codec.decode(codec.encode(Kind.HEARTBEAT, beat, to=codec.session))
    plain_view = framing.decode(
        codec.encode(Kind.HEARTBEAT, Heartbeat(workers=2), to=framing.session)
    ).header

    assert (message.read(Heartbeat).cpu, message.read(Heartbeat).rss) == (150.5, 2**33)
    assert plain_view is not None and "cpu" not in plain_view and "rss" not in plain_view
    with pytest.raises(BadFields):
        codec.decode(signed_plain(codec, {"k": Kind.HEARTBEAT, "cpu": -1.0}))


def test_a_plain_header_of_the_right_shape_decodes_to_its_record():
    """What handlers not yet written with records send: maps and lists."""
    codec = Codec(KEY)
    header = {"results": [["t1", "ok", None], ["t2", "crash", "signal 9"]], "credit": 2}

    message = codec.decode(codec.encode(Kind.RESULTS, header, [b"1", b""], to=codec.session))

    assert message.read(Results).results == [
        Outcome("t1", "ok", None),
        Outcome("t2", "crash", "signal 9"),
    ]
    assert message.read(Results).credit == 2 and message.read(Results).want is None
    with pytest.raises(TypeError, match="not a Submit"):
        message.read(Submit)


def test_a_message_is_read_as_its_kinds_record_only():
    message = Message(Kind.HEARTBEAT, Heartbeat(workers=3, held=["t1"]), [], sender="peer")

    assert message.read(Heartbeat).workers == 3 and message.read(Heartbeat).want is None
    with pytest.raises(TypeError, match="not a Results"):
        message.read(Results)
    with pytest.raises(TypeError, match="not a Heartbeat"):
        Message(Kind.HEARTBEAT, None, header={"k": Kind.HEARTBEAT}).read(Heartbeat)


def test_results_are_read_in_the_form_their_receiver_expects():
    """A slave's outcome has a status; the master's to an application says ok or not."""
    slave_form = {"k": Kind.RESULTS, "results": [["t", "error", "ValueError: x"]]}
    master_form = {"k": Kind.RESULTS, "results": [["t", True]]}
    master, application = Codec(KEY), Codec(KEY, headers=APPLICATION_HEADER)

    got = master.decode(signed_plain(master, slave_form, [b"e"])).read(Results)
    assert got.results == [Outcome("t", "error", "ValueError: x")]
    delivered = application.decode(signed_plain(application, master_form, [b"r"]))
    assert delivered.read(Delivery).results == [Delivered("t", True)]
    with pytest.raises(BadFields):  # each receiver knows only its own form
        master.decode(signed_plain(master, master_form, [b"r"]))
    with pytest.raises(BadFields):
        application.decode(signed_plain(application, slave_form, [b"e"]))
    meta = TaskMeta("t", 1.5, 2, "square")
    as_it_travels = ["t", 1.5, 2, "square", 0, None, None, False]
    assert msgspec.to_builtins(meta) == as_it_travels


def test_a_record_sent_as_another_kind_is_refused_at_once():
    with pytest.raises(TypeError, match="not a submit"):
        Codec(KEY).encode(Kind.SUBMIT, Ack(rid=1))


# -- what is refused ---------------------------------------------------------------------------


def _minimal(info: Any) -> Any:
    """A valid value of a required field's type."""
    simple = {mi.StrType: "x", mi.IntType: 1, mi.FloatType: 1.0, mi.BoolType: True}
    return [] if isinstance(info, mi.ListType) else simple[type(info)]


def _required(cls: type) -> list[str]:
    return [f.name for f in mi.type_info(cls).fields if f.required]


def _checked(cls: type) -> list[Any]:
    return [
        f
        for f in mi.type_info(cls).fields
        if f.name not in ENVELOPE and not isinstance(f.type, mi.AnyType)
    ]


@CHECKS
@given(record=records, data=st.data())
def test_a_field_of_the_wrong_type_is_refused_as_bad_fields(record, data):
    fields = _checked(type(record))
    if not fields:
        return  # a kind without fields of its own (DRAIN, SHUTDOWN...)
    field = data.draw(st.sampled_from(fields), label="field")
    header = msgspec.to_builtins(record)
    header[field.name] = b"\x00 bytes are never a field's type"
    receiver = receiver_for(record)

    with pytest.raises(BadFields, match=field.name) as caught:
        receiver.decode(signed_plain(receiver, header, payloads_for(record)))

    assert isinstance(caught.value, MalformedMessage)
    assert receiver.rejected == {"bad-fields": 1}


@pytest.mark.parametrize("kind", sorted(k for k in RECORDS if _required(RECORDS[k])))
def test_a_header_without_a_required_field_is_refused_as_bad_fields(kind):
    fields = [f for f in mi.type_info(RECORDS[kind]).fields if f.required]
    complete = {f.name: _minimal(f.type) for f in fields}
    one = (Kind.SYSTEM, Kind.SYSTEM_DONE, Kind.SHIP, Kind.SCATTER)
    payloads = [b"p"] if kind in one else []
    whole = Codec(KEY)
    assert whole.decode(signed_plain(whole, {"k": kind, **complete}, payloads)).kind == kind
    for field in fields:
        receiver = Codec(KEY)
        header = {"k": kind, **{k: v for k, v in complete.items() if k != field.name}}
        with pytest.raises(BadFields, match=f"missing required field `{field.name}`"):
            receiver.decode(signed_plain(receiver, header, payloads))
        assert receiver.rejected == {"bad-fields": 1}


@pytest.mark.parametrize(
    "kind, header",
    [
        (Kind.HEARTBEAT, {"workers": math.inf}),  # not a whole number
        (Kind.HEARTBEAT, {"workers": -1}),  # a count below zero
        (Kind.HEARTBEAT, {"pace": -0.5}),
        (Kind.STEAL, {"count": -3}),
        (Kind.SUBMIT, {"tasks": [[7, None, 0, "n"]]}),  # a task id that is not a string
        (Kind.SUBMIT, {"tasks": [["t", "soon", 0, "n"]]}),
        (Kind.RESULTS, {"results": [["t"]]}),  # no status
        (Kind.RESULTS, {"results": [["t", 3]]}),
        (Kind.TASKS, {"tasks": ["t1"]}),  # an id where [id, timeout] belongs
        (Kind.CANCEL, {"tasks": "t1"}),
        (Kind.RESULTS_ACK, {"tasks": [1, 2]}),
        (Kind.HELLO, {"client_id": None}),
    ],
)
def test_ill_typed_or_out_of_range_fields_are_refused(kind, header):
    payloads = [b"p"] * len(header.get("tasks", header.get("results", [])))
    receiver = Codec(KEY)

    with pytest.raises(BadFields):
        receiver.decode(signed_plain(receiver, {"k": kind, **header}, payloads))

    assert receiver.rejected == {"bad-fields": 1}


@pytest.mark.parametrize(
    "kind, header, payloads",
    [
        (Kind.SUBMIT, {"tasks": [["a", None, 0, "n"]]}, []),
        (Kind.SUBMIT, {"tasks": [["a", None, 0, "n"]]}, [b"1", b"2"]),
        (Kind.TASKS, {"tasks": []}, [b"1"]),
        (Kind.RESULTS, {"results": [["t", "ok", None]] * 2}, [b"1"]),
        (Kind.SYSTEM, {"system_id": "s"}, []),
        (Kind.SYSTEM_DONE, {"system_id": "s"}, []),
        (Kind.SYSTEM_DONE, {"system_id": "s", "unknown": True}, [b"outcome"]),
        (Kind.SHIP, {"name": "helpers.py"}, []),
        (Kind.SHIP, {"name": "helpers.py"}, [b"1", b"2"]),
    ],
)
def test_a_payload_count_that_differs_from_the_header_is_refused(kind, header, payloads):
    receiver = Codec(KEY)

    with pytest.raises(BadFields, match="payloads"):
        receiver.decode(signed_plain(receiver, {"k": kind, **header}, payloads))


def _carries_no_payloads(record: type) -> bool:
    return not record.batch and record.expected_payloads is Header.expected_payloads


@pytest.mark.parametrize(
    "kind", sorted(k for k, record in RECORDS.items() if _carries_no_payloads(record))
)
def test_a_kind_that_carries_no_payloads_is_refused_with_one(kind):
    """So a payload altered on the way (under a header the key signed) can only reach a node
    in a message whose payloads it checks before it unpickles them: a SHUTDOWN, WELCOME or
    REREGISTER carrying one is refused at the door, whatever its header says."""
    receiver = Codec(KEY)
    fields = [f for f in mi.type_info(RECORDS[kind]).fields if f.required]
    header = {"k": kind, **{f.name: _minimal(f.type) for f in fields}}
    assert receiver.decode(signed_plain(receiver, header)).kind == kind

    with pytest.raises(BadFields, match="0 payloads, carries 1"):
        receiver.decode(signed_plain(receiver, header, [b"altered"]))


def test_envelope_errors_are_named_before_field_errors():
    """Another version is a version mismatch, whatever its fields look like."""
    receiver = Codec(KEY)
    frames = signed_plain(receiver, {"k": Kind.SUBMIT, "tasks": "not a list"})
    header = msgspec.msgpack.decode(frames[1])
    header["v"] = 2
    body = msgspec.msgpack.encode(header)
    with pytest.raises(VersionMismatch):
        receiver.decode([receiver._sign(body), body])


# -- task metadata -----------------------------------------------------------------------------


def test_task_meta_is_the_record_the_master_reads():
    task = FunctionTask(pow, 2, 3)
    task.timeout, task.max_retries, task.priority, task.resources = 2, 1, -4, {"gpu": 1}

    meta = task_meta(task)
    record = TaskRecord.from_meta(meta, b"payload", "client")

    assert meta == TaskMeta(task.task_id, 2.0, 1, task.name, -4, {"gpu": 1.0})
    assert (record.task_id, record.timeout, record.max_retries, record.name) == (
        task.task_id,
        2.0,
        1,
        task.name,
    )
    assert (record.priority, record.resources) == (-4, {"gpu": 1.0})
    plain = task_meta(FunctionTask(abs, 1))
    assert plain.timeout is None and plain.priority == 0 and plain.resources is None


def test_the_master_also_takes_task_metadata_as_the_array_it_travels_as():
    record = TaskRecord.from_meta(["t", 2, 1, "n", 3, {"gpu": 1}], b"p", "c")

    assert (record.task_id, record.timeout, record.max_retries, record.priority) == ("t", 2.0, 1, 3)
    with pytest.raises(ValueError, match="Expected `str`"):
        TaskRecord.from_meta([7, None, 0, "n"], b"p", "c")
    with pytest.raises(ValueError, match="does not fit in 64 bits"):
        TaskRecord.from_meta(["t", None, 0, "n", 2**63, None], b"p", "c")


@given(
    meta=st.builds(
        TaskMeta,
        st.text(max_size=8),
        st.none() | st.floats(min_value=1e-9, max_value=1e9),
        st.integers(0, 2**63 - 1),
        st.text(max_size=8),
        st.integers(-(2**63), 2**63 - 1),
        st.none() | st.dictionaries(st.text(min_size=1, max_size=4), st.floats(0, 1e6)),
    )
)
def test_task_meta_in_range_travels_and_is_taken(meta):
    codec = Codec(KEY)
    frames = codec.encode(Kind.SUBMIT, Submit(tasks=[meta], rid=1), [b"t"], to=codec.session)

    (got,) = codec.decode(frames).read(Submit).tasks

    assert got == meta
    record = TaskRecord.from_meta(got, b"t", "c")
    assert (record.max_retries, record.priority) == (meta.max_retries, meta.priority)


@pytest.mark.parametrize(
    "meta, says",
    [
        (TaskMeta("t", math.inf), "timeout inf is not a positive number"),
        (TaskMeta("t", math.nan), "timeout nan is not a positive number"),
        (TaskMeta("t", -1.0), "timeout -1.0 is not a positive number"),
        (TaskMeta("t", None, 2**63), "max_retries 9223372036854775808 is out of range"),
        (TaskMeta("t", None, -1), "max_retries -1 is out of range"),
        (TaskMeta("t", None, 0, "n", 2**63), "does not fit in 64 bits"),
        (TaskMeta("t", None, 0, "n", 0, {"gpu": -1.0}), "must be a number >= 0"),
        (TaskMeta("t", None, 0, "n", 0, {"": 1.0}), "non-empty strings"),
    ],
)
def test_task_numbers_out_of_range_are_refused_where_the_master_takes_them(meta, says):
    """Not while decoding: the batch is answered with a REJECT naming the task (test_hardening)."""
    codec = Codec(KEY)
    frames = codec.encode(Kind.SUBMIT, Submit(tasks=[meta]), [b"t"], to=codec.session)
    (got,) = codec.decode(frames).read(Submit).tasks

    with pytest.raises(ValueError, match=says):
        TaskRecord.from_meta(got, b"t", "c")


def test_a_slave_registration_lists_what_it_still_holds():
    codec = Codec(KEY)
    record = Register(node_id="s1", workers=2, want=4, held=["t1"], resources={"gpu": 1.0})

    message = codec.decode(codec.encode(Kind.REGISTER, record, to=codec.session))

    register = message.read(Register)
    assert register.held == ["t1"]
    assert register.host == "?" and register.pid == 0  # not said
    assert register.resources == {"gpu": 1.0}


def test_tasks_for_a_slave_carry_their_timeouts():
    codec = Codec(KEY)
    header = {"tasks": [["t1", None], ["t2", 2.5]]}  # as the master sends them

    tasks = codec.decode(codec.encode(Kind.TASKS, header, [b"1", b"2"], to=codec.session))

    assert [(t.task_id, t.timeout) for t in tasks.read(Tasks).tasks] == [("t1", None), ("t2", 2.5)]
