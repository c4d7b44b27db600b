"""Fuzzing every RPC of both services on the real daemon: hypothesis builds requests from the protos.

Each request mixes valid-shaped values (names of resources that exist, ids, channel types, content a
channel type takes), boundary values (Timestamp and integer range ends, empty and over-long strings,
trailing newlines, NaN and Infinity, enum numbers the API does not define) and garbage; a second test
sends mutated wire bytes. Every answer must be OK or a documented refusal with an ErrorInfo reason —
never INTERNAL, UNKNOWN or a timeout — a refusal must leave the database as it was, and the health
check must pass after each batch.

`CAMPAIGND_FUZZ_EXAMPLES` sets the examples per RPC and test (default 40, a couple of minutes for the whole
run); run longer with e.g. `CAMPAIGND_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest -q -s
tests/integration/test_fuzz.py`; `CAMPAIGND_FUZZ_DATABASE=postgresql` runs it on PostgreSQL instead
of SQLite. The number of inputs tried is printed at the end.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, field_mask_pb2, message_factory, struct_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignd.v1 import campaign_service_pb2, contact_service_pb2
from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.conftest import new_pg_database
from tests.integration.campaign_client import ATTESTATION, Client, failure, future
from tests.integration.conftest import API_ONLY, DatabaseDaemon

DATABASE = os.environ.get("CAMPAIGND_FUZZ_DATABASE", "sqlite")
EXAMPLES = int(os.environ.get("CAMPAIGND_FUZZ_EXAMPLES", "40"))
HEALTH_EVERY = 25
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}

SERVICES = [
    campaign_service_pb2.DESCRIPTOR.services_by_name["CampaignService"],
    contact_service_pb2.DESCRIPTOR.services_by_name["ContactService"],
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]

# -- values -----------------------------------------------------------------------------------

VALID_STRINGS = [
    "campaigns/fz-draft",
    "campaigns/fz-sched",
    "campaigns/fz-launched",
    "campaigns/nope",
    "fz-new",
    "main",
    "second",
    "lists/fz",
    "segments/fz",
    "contacts/fz1",
    "suppressions/1",
    "test-email",
    "test-sms",
    "test-voice",
    "email",
    "09:00",
    "17:30",
    "a@example.com",
    "fz1@example.org",
    "+14155550100",
    "Europe/Oslo",
    'email:"*@example.org"',
    'create_time > "2024-01-01T00:00:00Z"',
    "display_name",
    "channels",
    "labels",
    "guard",
    "attributes",
    "email",
    "Fuzz",
]
BOUNDARY_STRINGS = [
    "",
    " ",
    "\t",
    "x\n",
    "campaigns/fz-draft\n",
    "lists/fz\n",
    "00:00\n",
    "24:00",
    "23:60",
    "campaigns/",
    "campaigns/A",
    "campaigns/" + "a" * 63,
    "campaigns/" + "a" * 64,
    "a" * 63,
    "a" * 64,
    "x" * 1001,
    "\x00",
    "a\x00b",
    "é",
    "\U0001f600",
    "contacts/fz1/../x",
    "suppressions/-1",
    "suppressions/²",
    "suppressions/99999999999999999999",
    'create_time > "0001-01-01T00:00:00+05:00"',
    'create_time < "9999-12-31T23:59:59-01:00"',
    "attributes.x = 1e999",
    "eyJwIjp7fSwiZiI6IiJ9",
    "AAAA.AAAA",
]
STRINGS = st.one_of(st.sampled_from(VALID_STRINGS), st.sampled_from(BOUNDARY_STRINGS), st.text(max_size=40))
NAMES = [
    "campaigns/fz-draft",
    "campaigns/fz-sched",
    "campaigns/fz-launched",
    "lists/fz",
    "segments/fz",
    "contacts/fz1",
    "suppressions/1",
]
# Values that fit a field of this name, so that requests get past the first check and reach the
# deeper ones (the lifecycle, the plugins, the store).
FIELD_STRINGS = {
    "name": NAMES,
    "parent": NAMES,
    "list": NAMES,
    "campaign": NAMES,
    "contacts": ["contacts/fz0", "contacts/fz1", "contacts/nope"],
    "channel_id": ["main", "second", "new"],
    "type": ["test-email", "test-sms", "test-voice", "email"],
    "channel_type": ["test-email", "email", ""],
    "campaign_id": ["fz-new", "fz-draft", ""],
    "contact_id": ["fz-new", "fz1", ""],
    "list_id": ["fz-new", "fz", ""],
    "segment_id": ["fz-new", "fz", ""],
    "start_time": ["09:00", "17:30", "00:00"],
    "end_time": ["09:00", "17:30", "23:59"],
    "address": ["fz1@example.org", "a@example.com", "+14155550100"],
    "addresses": ["fz1@example.org", "a@example.com"],
    "email": ["fz1@example.org", "new@example.org"],
    "phone": ["+14155550100", "+4722334455"],
    "time_zone": ["Europe/Oslo", "UTC"],
    "filter": ['email:"*@example.org"', 'create_time > "2024-01-01T00:00:00Z"', "attributes.score > 3"],
    "etag": ['"1"', '"2"', ""],
    "request_id": ["r1", "r2", ""],
    "transport": ["relay"],
    "outcomes": ["failed", "sent", "no_answer"],
    "paths": ["display_name", "channels", "labels", "guard", "audience", "attributes", "email"],
}

INT32 = st.one_of(
    st.sampled_from([0, 1, -1, 2, 7, 8, 100, 1000, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1)
)
INT64 = st.one_of(st.sampled_from([0, 1, -1, 2**53, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
DOUBLES = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 5.0, 100.0, 100.5, -1.0, math.nan, math.inf, -math.inf, 1e308, 5e-324]),
    st.floats(),
)
# Timestamp seconds around both ends of the type's range (years 1 and 9999) and far beyond.
SECONDS = st.one_of(
    st.sampled_from(
        [
            0,
            -62_135_596_800,
            -62_135_596_801,
            253_402_300_799,
            253_402_300_800,
            2**62,
            -(2**62),
            4_102_444_800,
        ]
    ),
    st.integers(-(2**63), 2**63 - 1),
)
NANOS = st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1]), INT32)

# Keys the test channel types steer sends with (files, crashes, delays) are left out: the fuzz
# must not write files or stall the daemon on purpose.
CONTENT_KEYS = ["text", "note", "subject", "from_address", "html", "fail_matching", "x-unknown"]
JSON_LEAVES = st.one_of(st.none(), st.booleans(), DOUBLES, STRINGS)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(CONTENT_KEYS), inner, max_size=3)
    ),
    max_leaves=8,
)
VALID_CONTENT = [
    {"text": "hello"},
    {"text": "invalid"},
    {"subject": "Hi", "from_address": "news@example.org", "text": "Hello {{ contact.email }}"},
    {"text": "x" * 1001},
]
STRUCTS = st.one_of(
    st.sampled_from(VALID_CONTENT),
    st.dictionaries(st.sampled_from(CONTENT_KEYS), JSON, max_size=4),
    st.dictionaries(st.sampled_from(["score", "city", "first_name"]), JSON, max_size=3),
)


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == descriptor.FieldDescriptor.TYPE_STRING:
        fitting = FIELD_STRINGS.get(field.name)
        if fitting is None:
            return STRINGS
        # Weighted three to one towards values that fit.
        return st.one_of(*[st.sampled_from(fitting)] * 3, STRINGS)
    if kind == descriptor.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (descriptor.FieldDescriptor.TYPE_INT32, descriptor.FieldDescriptor.TYPE_SINT32):
        return INT32
    if kind in (descriptor.FieldDescriptor.TYPE_INT64, descriptor.FieldDescriptor.TYPE_SINT64):
        return INT64
    if kind in (descriptor.FieldDescriptor.TYPE_DOUBLE, descriptor.FieldDescriptor.TYPE_FLOAT):
        return DOUBLES
    if kind == descriptor.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=20)
    if kind == descriptor.FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, max(known) + 1]), INT32)
    raise AssertionError(f"no strategy for {field.full_name}")


def messages(message_descriptor: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of a type: each field unset or set to a valid-shaped, boundary or garbage value."""
    # Generated per descriptor at run time, so typed as Any: its fields are only known then.
    cls: Any = message_factory.GetMessageClass(message_descriptor)
    name = message_descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), SECONDS, NANOS)
    if name == "google.protobuf.Struct":
        return STRUCTS.map(_struct)
    if name == "google.protobuf.FieldMask":
        paths = st.one_of(st.sampled_from(FIELD_STRINGS["paths"]), STRINGS)
        return st.lists(paths, max_size=3).map(lambda found: cls(paths=found))
    if depth > 3:
        return st.just(cls())
    fields = {f.name: st.one_of(st.none(), _field(f, depth)) for f in message_descriptor.fields}
    return st.fixed_dictionaries(fields).map(lambda values: _build(cls, values))


# Descriptors come from the pure-Python or the upb runtime, typed apart in the stubs: Any here.
def _field(field: Any, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(_single(key, depth), _single(value, depth), max_size=3)
    if field.is_repeated:
        return st.lists(_single(field, depth), max_size=3)
    return _single(field, depth)


def _single(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _build(cls: Any, values: dict[str, Any]) -> Message:
    message: Message = cls()
    for name, value in values.items():
        if value is not None:
            _assign(message, name, value)
    return message


def _assign(message: Message, name: str, value: Any) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    message.ClearField(name)
    target = getattr(message, name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        if field.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, name, value)


# Requests that succeed (or fail only on the state the fuzz left behind), one or two of whose
# fields the second strategy replaces: every check is then reached with the rest of the request
# valid, rather than only the first check a garbage request trips.
_MAIL = pb.Channel(
    channel_id="second",
    type="test-email",
    content=_struct({"text": "hello", "note": "n"}),
    rate_limit=5,
    send_window=pb.SendWindow(days=[1, 2], start_time="08:00", end_time="20:00"),
)
_CAMPAIGN = pb.Campaign(
    display_name="Fuzz",
    labels={"team": "fuzz"},
    audience=pb.Audience(target_lists=["lists/fz"], exclude_segments=["segments/fz"]),
    time_zone="Europe/Oslo",
    guard=pb.GuardSettings(max_failure_percent=5, min_sends=10),
    channels=[pb.Channel(channel_id="main", type="test-email", content=_struct({"text": "hello"}))],
)
_CONTACT = cs.Contact(email="seed@example.org", phone="+4722334455", time_zone="UTC")
_CONTACT.attributes.update({"score": 3, "city": "Oslo"})
SEEDS: dict[str, list[Message]] = {
    "CreateCampaign": [svc.CreateCampaignRequest(campaign=_CAMPAIGN, campaign_id="fz-new", request_id="r1")],
    "UpdateCampaign": [
        svc.UpdateCampaignRequest(
            campaign=pb.Campaign(name="campaigns/fz-draft", display_name="New", channels=[_MAIL]),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        svc.UpdateCampaignRequest(
            campaign=pb.Campaign(
                name="campaigns/fz-draft",
                channels=[pb.Channel(channel_id="main", content=_struct({"text": "changed"}))],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
        ),
    ],
    "ScheduleCampaign": [
        svc.ScheduleCampaignRequest(
            name="campaigns/fz-draft", schedule_time=future(), attestation=ATTESTATION
        )
    ],
    "LaunchCampaign": [svc.LaunchCampaignRequest(name="campaigns/fz-draft", attestation=ATTESTATION)],
    "AddChannel": [svc.AddChannelRequest(name="campaigns/fz-draft", channel=_MAIL)],
    "DuplicateCampaign": [svc.DuplicateCampaignRequest(name="campaigns/fz-draft", campaign_id="fz-copy")],
    "SendTestMessage": [
        svc.SendTestMessageRequest(name="campaigns/fz-draft", channel_id="main", addresses=["a@example.com"])
    ],
    "PreviewMessage": [
        svc.PreviewMessageRequest(name="campaigns/fz-draft", channel_id="main", address="fz1@example.org")
    ],
    "ListCampaigns": [
        svc.ListCampaignsRequest(states=[pb.Campaign.DRAFT], labels={"team": "fuzz"}, page_size=1)
    ],
    "ListMessages": [
        svc.ListMessagesRequest(
            parent="campaigns/fz-launched", channel_id="main", states=[pb.Message.QUEUED], page_size=1
        )
    ],
    "CreateContact": [cs.CreateContactRequest(contact=_CONTACT, contact_id="fz-seed")],
    "UpdateContact": [
        cs.UpdateContactRequest(
            contact=cs.Contact(name="contacts/fz1", email="fz1@example.org", attributes=_CONTACT.attributes),
            update_mask=field_mask_pb2.FieldMask(paths=["attributes", "email"]),
        )
    ],
    "ListContacts": [cs.ListContactsRequest(filter="attributes.score > 1", list="lists/fz", page_size=1)],
    "ImportContacts": [
        cs.ImportContactsRequest(
            options=cs.ImportOptions(list="lists/fz", match_on=cs.ImportOptions.EMAIL),
            rows=[cs.ContactRow(email="imp@example.org", attributes=_CONTACT.attributes)],
        )
    ],
    "CreateSegment": [
        cs.CreateSegmentRequest(
            segment_id="fz-seg",
            segment=cs.Segment(display_name="S", filter='create_time > "2024-01-01T00:00:00Z"'),
        )
    ],
    "AddListMembers": [cs.AddListMembersRequest(list="lists/fz", contacts=["contacts/fz0"])],
    "AddSuppressions": [
        cs.AddSuppressionsRequest(
            suppressions=[
                cs.Suppression(address="s@example.org", channel_type="email", reason=cs.Suppression.BOUNCED)
            ]
        )
    ],
    "ListSuppressions": [
        cs.ListSuppressionsRequest(address="fz2@example.org", reason=cs.Suppression.MANUAL, page_size=1)
    ],
    "CheckSuppression": [cs.CheckSuppressionRequest(address="fz2@example.org", channel_type="email")],
}


def _paths(message_descriptor: Any, seed: Message, depth: int = 0) -> list[tuple[str, ...]]:
    """Every field of a seed's type, and of the messages set in it, as a path of field names."""
    found: list[tuple[str, ...]] = []
    for field in message_descriptor.fields:
        found.append((field.name,))
        inner = field.message_type
        if inner is None or inner.GetOptions().map_entry or inner.full_name.startswith("google.protobuf."):
            continue
        value = getattr(seed, field.name)
        nested = value[0] if field.is_repeated and len(value) else None if field.is_repeated else value
        if nested is not None and depth < 2 and (field.is_repeated or seed.HasField(field.name)):
            found.extend((field.name, *rest) for rest in _paths(inner, nested, depth + 1))
    return found


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Message]) -> Message:
    """A seed request with one or two of its fields (at any depth) replaced by a generated value."""
    message = draw(st.sampled_from(seeds))
    copy = type(message)()
    copy.CopyFrom(message)
    for _ in range(draw(st.integers(1, 2))):
        # Taken again after each change: a replaced list may have left nothing to descend into.
        path = draw(st.sampled_from(_paths(copy.DESCRIPTOR, copy)))
        parent = copy
        for name in path[:-1]:
            value = getattr(parent, name)
            parent = value[0] if parent.DESCRIPTOR.fields_by_name[name].is_repeated else value
        field = parent.DESCRIPTOR.fields_by_name[path[-1]]
        _assign(parent, field.name, draw(_field(field, 0)))
    return copy


# -- the daemon -------------------------------------------------------------------------------


class Tally:
    """How many inputs were tried, and the health checks made."""

    def __init__(self) -> None:
        self.inputs = 0
        self.refused = 0
        self.health_checks = 0


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Counts the inputs of the module and prints them at its end."""
    counts = Tally()
    yield counts
    capture = request.config.pluginmanager.getplugin("capturemanager")
    # Printed past pytest's capture, so that CI's log shows it.
    with capture.global_and_fixture_disabled():
        print(
            f"\nfuzz: {counts.inputs} inputs tried over {len(METHODS)} RPCs "
            f"({counts.inputs - counts.refused} answered OK, {counts.refused} refused, "
            f"{counts.health_checks} health checks passed); CAMPAIGND_FUZZ_EXAMPLES={EXAMPLES}"
        )


@pytest.fixture(scope="module")
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite, or a new PostgreSQL database with CAMPAIGND_FUZZ_DATABASE=postgresql."""
    if DATABASE == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('fuzzdb') / 'campaignd.db'}"
        return
    with new_pg_database(request.getfixturevalue("pg_admin"), "campaignd_fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[DatabaseDaemon]:
    """An API-only daemon (no engine, so only calls change the database), with resources that
    valid-shaped requests name."""
    process = DatabaseDaemon(tmp_path_factory.mktemp("fuzz"), API_ONLY, database_url)
    process.start()
    with process.channel() as channel_:
        client = Client(channel_)
        client.contacts.CreateList(cs.CreateListRequest(list_id="fz", list=cs.ContactList(display_name="fz")))
        for n in range(3):
            client.contacts.CreateContact(
                cs.CreateContactRequest(contact_id=f"fz{n}", contact=cs.Contact(email=f"fz{n}@example.org"))
            )
        client.contacts.AddListMembers(
            cs.AddListMembersRequest(list="lists/fz", contacts=[f"contacts/fz{n}" for n in range(3)])
        )
        client.contacts.CreateSegment(
            cs.CreateSegmentRequest(
                segment_id="fz", segment=cs.Segment(display_name="fz", filter='email:"*@example.org"')
            )
        )
        client.contacts.AddSuppressions(
            cs.AddSuppressionsRequest(
                suppressions=[cs.Suppression(address="fz2@example.org", reason=cs.Suppression.MANUAL)]
            )
        )
        audience = pb.Audience(target_lists=["lists/fz"])
        main = pb.Channel(channel_id="main", type="test-email", content=_struct({"text": "hello"}))
        for campaign_id in ("fz-draft", "fz-sched", "fz-launched"):
            client.create(main, campaign_id=campaign_id, audience=audience)
        client.stub.ScheduleCampaign(
            svc.ScheduleCampaignRequest(
                name="campaigns/fz-sched", schedule_time=future(), attestation=ATTESTATION
            )
        )
        client.launch("campaigns/fz-launched")
    yield process
    process.cleanup()


def _healthy(daemon: DatabaseDaemon, tally: Tally) -> None:
    with daemon.channel() as channel_:
        reply = health_pb2_grpc.HealthStub(channel_).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    tally.health_checks += 1


def _call(channel_: grpc.Channel, path: str, method: descriptor.MethodDescriptor, request: Any) -> None:
    """One call with serialised bytes (or a list of them for a request stream); raises RpcError."""
    if method.client_streaming:
        call = channel_.stream_unary(path, request_serializer=None, response_deserializer=None)
        call(iter(request), timeout=15)
    elif method.server_streaming:
        stream = channel_.unary_stream(path, request_serializer=None, response_deserializer=None)(
            request, timeout=15
        )
        first: Any = stream  # grpc-stubs types neither next() nor cancel() on this iterator
        try:
            next(first)  # the first update (a snapshot) or the refusal
        finally:
            first.cancel()
    else:
        channel_.unary_unary(path, request_serializer=None, response_deserializer=None)(request, timeout=15)


def _check(daemon: DatabaseDaemon, tally: Tally, method: descriptor.MethodDescriptor, request: Any) -> None:
    """Make one call and check the answer: OK, or a documented refusal that changed nothing."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    before = daemon.digest()
    tally.inputs += 1
    with daemon.channel() as channel_:
        try:
            _call(channel_, path, method, request)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED and method.server_streaming:
                return
            found = failure(error)
            assert found.code not in NEVER, (path, found)
            assert found.reason, (path, found)  # every refusal of the services carries its reason
            # An import stream refused partway has applied the messages before the bad one and says
            # how many rows (documented in api.md); every other refusal changes nothing.
            if found.metadata.get("applied_rows", "0") == "0":
                assert daemon.digest() == before, (path, "a refused call changed the database")
            tally.refused += 1
    if tally.inputs % HEALTH_EVERY == 0:
        _healthy(daemon, tally)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _, m in METHODS])
@FUZZ
@given(data=st.data())
def test_every_rpc_answers_generated_requests_without_internal_errors(
    daemon: DatabaseDaemon,
    tally: Tally,
    service: descriptor.ServiceDescriptor,
    method: descriptor.MethodDescriptor,
    data: st.DataObject,
) -> None:
    """Generated requests get OK or a refusal with a reason, never INTERNAL/UNKNOWN, and a refusal
    changes nothing in the database."""
    strategy = messages(method.input_type)
    if method.name in SEEDS:
        strategy = st.one_of(strategy, mutated(SEEDS[method.name]))
    if method.client_streaming:
        requests = data.draw(st.lists(strategy, min_size=1, max_size=3))
        _check(daemon, tally, method, [r.SerializeToString() for r in requests])
    else:
        _check(daemon, tally, method, data.draw(strategy).SerializeToString())
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _, m in METHODS])
@FUZZ
@given(data=st.data())
def test_every_rpc_answers_mutated_wire_bytes_without_internal_errors(
    daemon: DatabaseDaemon,
    tally: Tally,
    service: descriptor.ServiceDescriptor,
    method: descriptor.MethodDescriptor,
    data: st.DataObject,
) -> None:
    """Request bytes cut short, flipped or spliced with garbage get INVALID_ARGUMENT or another
    refusal with a reason (or OK when they still parse), never UNKNOWN or INTERNAL."""
    body = bytearray(data.draw(messages(method.input_type)).SerializeToString())
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["cut", "flip", "insert"]))
        at = data.draw(st.integers(0, len(body)))
        if how == "cut":
            del body[at:]
        elif how == "flip" and at < len(body):
            body[at] ^= data.draw(st.integers(1, 255))
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    _check(daemon, tally, method, [bytes(body)] if method.client_streaming else bytes(body))
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


def test_the_daemon_is_healthy_after_the_fuzz(daemon: DatabaseDaemon, tally: Tally) -> None:
    """After every generated input the daemon serves, and its log has no unexpected error."""
    _healthy(daemon, tally)
    unexpected = [e for e in daemon.log_events() if e.get("event") == "unexpected error"]
    assert not unexpected, unexpected[:3]
