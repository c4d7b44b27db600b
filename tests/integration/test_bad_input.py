"""Every class of bad input through the real daemon: INVALID_ARGUMENT naming the field, nothing changed."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import ATTESTATION, Client, Failure, channel, content, failure
from tests.integration.conftest import API_ONLY, DaemonFactory, DatabaseDaemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, module_database_url: str) -> Iterator[DatabaseDaemon]:
    """One API-only daemon for the module, on each database in turn."""
    with DatabaseDaemon(tmp_path_factory.mktemp("bad"), API_ONLY, module_database_url).running() as process:
        yield process


def refused(daemon: DatabaseDaemon, call: Callable[[], Any]) -> Failure:
    """Make a call that must be refused with INVALID_ARGUMENT and must change nothing."""
    before = daemon.digest()
    with pytest.raises(grpc.RpcError) as caught:
        call()
    found = failure(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT, found
    assert found.reason == "INVALID_ARGUMENT", found
    assert daemon.digest() == before
    return found


def _timestamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (svc.CreateCampaignRequest(campaign_id="nl1\n"), "campaign_id"),
        (svc.CreateCampaignRequest(request_id="r1\n"), "request_id"),
        (
            svc.CreateCampaignRequest(campaign=pb.Campaign(audience=pb.Audience(target_lists=["lists/x\n"]))),
            "campaign.audience.target_lists[0]",
        ),
        (
            svc.CreateCampaignRequest(
                campaign=pb.Campaign(audience=pb.Audience(target_segments=["segments/s\n"]))
            ),
            "campaign.audience.target_segments[0]",
        ),
        (svc.CreateCampaignRequest(campaign=pb.Campaign(labels={"team\n": "a"})), "campaign.labels[team\n]"),
        (
            svc.CreateCampaignRequest(
                campaign=pb.Campaign(
                    channels=[pb.Channel(channel_id="m\n", type="test-email", content=content(text="x"))]
                )
            ),
            "campaign.channels[0].channel_id",
        ),
        (
            svc.CreateCampaignRequest(
                campaign=pb.Campaign(
                    channels=[
                        pb.Channel(
                            channel_id="m",
                            type="test-email",
                            content=content(text="x"),
                            send_window=pb.SendWindow(start_time="00:00\n", end_time="08:00"),
                        )
                    ]
                )
            ),
            "campaign.channels[0].send_window.start_time",
        ),
        (
            svc.CreateCampaignRequest(
                campaign=pb.Campaign(
                    channels=[
                        pb.Channel(
                            channel_id="m",
                            type="test-email",
                            content=content(text="x"),
                            transports=[pb.TransportShare(transport="relay\n", percent=100)],
                        )
                    ]
                )
            ),
            "campaign.channels[0].transports[0].transport",
        ),
    ],
)
def test_a_trailing_newline_passes_no_id_or_name_check(
    daemon: DatabaseDaemon, client: Client, request_: svc.CreateCampaignRequest, field: str
) -> None:
    """An id, name, label key, transport or HH:MM with a trailing newline is refused on its field."""
    request = svc.CreateCampaignRequest()
    request.CopyFrom(request_)
    if not request.HasField("campaign"):
        request.campaign.CopyFrom(pb.Campaign(display_name="x", channels=[channel()]))
    if not request.campaign.display_name:
        request.campaign.display_name = "x"
    found = refused(daemon, lambda: client.stub.CreateCampaign(request))
    assert field in found.fields


def test_a_trailing_newline_in_a_resource_name_is_refused(daemon: DatabaseDaemon, client: Client) -> None:
    """`campaigns/{id}\\n`, `lists/{id}\\n`, `contacts/{id}\\n` are not names, even of existing resources."""
    campaign = client.create()
    found = refused(
        daemon, lambda: client.stub.GetCampaign(svc.GetCampaignRequest(name=campaign.name + "\n"))
    )
    assert found.fields == ["name"]
    found = refused(daemon, lambda: client.contacts.DeleteList(cs.DeleteListRequest(name="lists/x\n")))
    assert found.fields == ["name"]
    found = refused(
        daemon,
        lambda: client.contacts.AddListMembers(
            cs.AddListMembersRequest(list="lists/x", contacts=["contacts/a\n"])
        ),
    )
    assert found.fields == ["contacts[0]"]


@pytest.mark.parametrize(
    ("stamp", "field"),
    [
        (_timestamp(253_402_300_800), "schedule_time"),  # 10000-01-01T00:00:00Z
        (_timestamp(2**62), "schedule_time"),
        (_timestamp(-62_135_596_801), "schedule_time"),  # before year 1
        (_timestamp(4_102_444_800, nanos=1_000_000_000), "schedule_time.nanos"),
        (_timestamp(4_102_444_800, nanos=-1), "schedule_time.nanos"),
    ],
)
def test_schedule_times_outside_the_timestamp_range_are_refused(
    daemon: DatabaseDaemon, client: Client, stamp: timestamp_pb2.Timestamp, field: str
) -> None:
    """Schedule times past year 9999, before year 1, or with nanos outside 0-999,999,999 are refused."""
    campaign = client.create()
    found = refused(
        daemon,
        lambda: client.stub.ScheduleCampaign(
            svc.ScheduleCampaignRequest(name=campaign.name, schedule_time=stamp, attestation=ATTESTATION)
        ),
    )
    assert found.fields == [field]


def test_a_schedule_time_at_the_end_of_year_9999_is_taken(client: Client) -> None:
    """The last second the Timestamp type holds is a valid schedule time."""
    campaign = client.create()
    scheduled = client.stub.ScheduleCampaign(
        svc.ScheduleCampaignRequest(
            name=campaign.name, schedule_time=_timestamp(253_402_300_799), attestation=ATTESTATION
        )
    )
    assert scheduled.channels[0].schedule_time.seconds == 253_402_300_799


def _struct_with(value: float) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct["text"] = "hi"
    struct["delay_ms"] = value
    return struct


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_in_channel_content_are_refused(
    daemon: DatabaseDaemon, client: Client, value: float
) -> None:
    """NaN and Infinity in a channel's content Struct are refused on their path, on create and update."""
    bad = pb.Channel(channel_id="main", type="test-email", content=_struct_with(value))
    found = refused(
        daemon,
        lambda: client.stub.CreateCampaign(
            svc.CreateCampaignRequest(campaign=pb.Campaign(display_name="x", channels=[bad]))
        ),
    )
    assert found.fields == ["campaign.channels[0].content.delay_ms"]
    campaign = client.create()
    found = refused(
        daemon,
        lambda: client.stub.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=pb.Campaign(name=campaign.name, channels=[bad]),
                update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
            )
        ),
    )
    assert found.fields == ["campaign.channels[0].content.delay_ms"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_in_contact_attributes_are_refused(
    daemon: DatabaseDaemon, client: Client, value: float
) -> None:
    """NaN and Infinity in contact attributes are refused on create and update, also inside a list."""
    attributes = struct_pb2.Struct()
    attributes["score"] = value
    found = refused(
        daemon,
        lambda: client.contacts.CreateContact(
            cs.CreateContactRequest(contact=cs.Contact(email="nan@example.com", attributes=attributes))
        ),
    )
    assert found.fields == ["contact.attributes.score"]
    contact = client.contacts.CreateContact(
        cs.CreateContactRequest(contact=cs.Contact(email=f"ok{int(value == value)}@example.com"))
    )
    listed = struct_pb2.Struct()
    listed.get_or_create_list("scores").extend([1.0, value])
    found = refused(
        daemon,
        lambda: client.contacts.UpdateContact(
            cs.UpdateContactRequest(
                contact=cs.Contact(name=contact.name, attributes=listed),
                update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
            )
        ),
    )
    assert found.fields == ["contact.attributes.scores[1]"]


@pytest.mark.parametrize(
    "timestamp",
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+23:59"],
)
def test_filter_timestamps_outside_years_1_to_9999_in_utc_are_refused(
    daemon: DatabaseDaemon, client: Client, timestamp: str
) -> None:
    """A segment or contact filter whose time falls outside years 1-9999 in UTC is refused, not run."""
    text = f'create_time > "{timestamp}"'
    found = refused(
        daemon,
        lambda: client.contacts.CreateSegment(
            cs.CreateSegmentRequest(segment=cs.Segment(display_name="s", filter=text))
        ),
    )
    assert found.fields == ["segment.filter"]
    assert "outside years 0001-9999" in found.message
    found = refused(daemon, lambda: client.contacts.ListContacts(cs.ListContactsRequest(filter=text)))
    assert found.fields == ["filter"]


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_filter_timestamps_at_the_ends_of_the_range_run(client: Client, timestamp: str) -> None:
    """The first and last second of years 1-9999 compare with stored times without error."""
    email = f"edge-{timestamp[:4]}@example.com"
    client.contacts.CreateContact(cs.CreateContactRequest(contact=cs.Contact(email=email)))
    found = client.contacts.ListContacts(
        cs.ListContactsRequest(filter=f'create_time != "{timestamp}" AND email = "{email}"')
    )
    assert [c.email for c in found.contacts] == [email]


def test_page_tokens_cannot_be_forged_or_altered(daemon: DatabaseDaemon, client: Client) -> None:
    """A page token the server made pages on; an altered, truncated, foreign or garbage one is refused."""
    for _ in range(3):
        client.create()
    first = client.stub.ListCampaigns(svc.ListCampaignsRequest(page_size=1))
    token = first.next_page_token
    assert token
    second = client.stub.ListCampaigns(svc.ListCampaignsRequest(page_size=1, page_token=token))
    assert second.campaigns[0].name != first.campaigns[0].name
    body, mac = token.split(".")
    forged_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    for bad in [
        f"{forged_body}.{mac}",
        f"{body}.{mac[:-1]}",
        body,
        "eyJwIjp7InQiOiIyMDI0LTAxLTAxIiwiaSI6IngifSwiZiI6IjAifQ==",  # an unsigned token of the old kind
        "\x00\xff" * 10,
        "x" * 5000,
        "..",
    ]:
        found = refused(
            daemon, functools.partial(client.stub.ListCampaigns, svc.ListCampaignsRequest(page_token=bad))
        )
        assert found.fields == ["page_token"]
    # A good token of another list call, or of other filters, is not taken either.
    found = refused(
        daemon,
        lambda: client.stub.ListCampaigns(
            svc.ListCampaignsRequest(page_size=1, page_token=token, channel_type="test-sms")
        ),
    )
    assert found.fields == ["page_token"]
    found = refused(daemon, lambda: client.contacts.ListLists(cs.ListListsRequest(page_token=token)))
    assert found.fields == ["page_token"]


def test_page_tokens_hold_across_a_restart(daemon: DatabaseDaemon, client: Client) -> None:
    """The signing key is kept in the database: a token made before a restart pages on after it."""
    for _ in range(2):
        client.create()
    token = client.stub.ListCampaigns(svc.ListCampaignsRequest(page_size=1)).next_page_token
    daemon.stop()
    daemon.start()
    with daemon.channel() as channel_:
        again = Client(channel_).stub.ListCampaigns(svc.ListCampaignsRequest(page_size=1, page_token=token))
    assert len(again.campaigns) == 1


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda c: c.contacts.ListSuppressions(
                cs.ListSuppressionsRequest(reason=cs.Suppression.Reason.ValueType(99))
            ),
            "reason",
        ),
        (
            lambda c: c.contacts.ListSuppressions(
                cs.ListSuppressionsRequest(reason=cs.Suppression.Reason.ValueType(-1))
            ),
            "reason",
        ),
        (
            lambda c: c.contacts.AddSuppressions(
                cs.AddSuppressionsRequest(
                    suppressions=[
                        cs.Suppression(address="a@example.com", reason=cs.Suppression.Reason.ValueType(42))
                    ]
                )
            ),
            "suppressions[0].reason",
        ),
        (
            lambda c: c.stub.ListCampaigns(
                svc.ListCampaignsRequest(states=[pb.Campaign.State.ValueType(77)])
            ),
            "states[0]",
        ),
        (
            lambda c: c.stub.ListMessages(
                svc.ListMessagesRequest(parent="campaigns/x", states=[pb.Message.State.ValueType(2**30)])
            ),
            "states[0]",
        ),
    ],
)
def test_unknown_enum_values_are_refused(
    daemon: DatabaseDaemon, client: Client, call: Callable[[Client], Any], field: str
) -> None:
    """An enum number the API does not define is INVALID_ARGUMENT on its field, never INTERNAL."""
    found = refused(daemon, lambda: call(client))
    assert found.fields == [field]


def _raw(channel_: grpc.Channel, method: str, body: bytes) -> Any:
    call = channel_.unary_unary(method, request_serializer=None, response_deserializer=None)
    return call(body, timeout=10)


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("/campaignd.v1.CampaignService/CreateCampaign", b"\xff\xff\xff"),
        ("/campaignd.v1.CampaignService/GetCampaign", b"\x0a\x05ab"),  # a string longer than the message
        ("/campaignd.v1.CampaignService/GetCampaign", b"\x0a\x02\xc3\x28"),  # not UTF-8
        ("/campaignd.v1.ContactService/ListSuppressions", b"\x08"),  # a varint cut short
        ("/campaignd.v1.ContactService/CreateContact", b"\x12" + b"\x12\x7f" * 200),
    ],
)
def test_malformed_wire_messages_are_invalid_argument(
    daemon: DatabaseDaemon, method: str, body: bytes
) -> None:
    """Request bytes that do not parse are INVALID_ARGUMENT on `request`, not UNKNOWN."""
    with daemon.channel() as channel_:
        found = refused(daemon, lambda: _raw(channel_, method, body))
    assert found.fields == ["request"]


def test_a_malformed_message_in_the_import_stream_is_invalid_argument(daemon: DatabaseDaemon) -> None:
    """A message of the ImportContacts stream that does not parse ends it with INVALID_ARGUMENT."""
    with daemon.channel() as channel_:
        call = channel_.stream_unary(
            "/campaignd.v1.ContactService/ImportContacts", request_serializer=None, response_deserializer=None
        )
        found = refused(daemon, lambda: call(iter([b"\xff\xff"]), timeout=10))
    assert found.fields == ["request"]


def test_an_update_without_the_channel_type_still_checks_the_content(
    daemon: DatabaseDaemon, client: Client
) -> None:
    """UpdateCampaign with a channel that leaves `type` out checks its content against the stored type."""
    campaign = client.create()
    for bad, field in [
        (content(text="hi", unknown_field="x"), "campaign.channels[0].content.unknown_field"),
        (content(text="x" * 1001), "campaign.channels[0].content.text"),
        (content(text="hi", delay_ms="slow"), "campaign.channels[0].content.delay_ms"),
    ]:
        found = refused(
            daemon,
            functools.partial(
                client.stub.UpdateCampaign,
                svc.UpdateCampaignRequest(
                    campaign=pb.Campaign(
                        name=campaign.name, channels=[pb.Channel(channel_id="main", content=bad)]
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
                ),
            ),
        )
        assert found.fields == [field]
    updated = client.stub.UpdateCampaign(
        svc.UpdateCampaignRequest(
            campaign=pb.Campaign(
                name=campaign.name, channels=[pb.Channel(channel_id="main", content=content(text="new"))]
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
        )
    )
    assert updated.channels[0].content["text"] == "new"
    assert updated.channels[0].type == "test-email"


def test_the_daemon_serves_on_after_every_refusal(daemon: DatabaseDaemon, client: Client) -> None:
    """After the bad input of this module the daemon still answers and its log has no unexpected error."""
    daemon.wait_serving(timeout=5)
    assert client.count() >= 1
    assert not [e for e in daemon.log_events() if e.get("event") == "unexpected error"]


def test_an_import_row_with_a_non_finite_attribute_is_rejected_alone(client: Client) -> None:
    """In ImportContacts a row with NaN in its attributes is a rejected row; the others are imported."""
    bad = struct_pb2.Struct()
    bad["score"] = float("nan")
    rows = [
        cs.ContactRow(email="first@example.com"),
        cs.ContactRow(email="nan-row@example.com", attributes=bad),
        cs.ContactRow(email="third@example.com"),
    ]
    reply = client.contacts.ImportContacts(iter([cs.ImportContactsRequest(rows=rows)]))
    assert (reply.created, reply.rejected) == (2, 1)
    assert [(r.index, r.field) for r in reply.rejected_rows] == [(1, "attributes.score")]


# The relay is never connected to: the channel fails validation before it sends.
RELAY = '[transports.relay]\ntype = "email"\noptions = { host = "127.0.0.1", port = 9, security = "none" }\n'
UNSUBSCRIBE = '[channel_types.email]\nunsubscribe_url = "https://example.org/unsubscribe"\n'


def test_a_scheduled_channel_that_no_longer_validates_fails_at_its_start(
    daemon_factory: DaemonFactory,
) -> None:
    """A channel whose content stopped validating while it waited (the config's unsubscribe_url it
    relied on was removed) goes FAILED VALIDATION_FAILED at its time, naming the problem."""
    engine = "[engine]\ntick_interval = 0.05\n"
    daemon = daemon_factory(engine + RELAY + UNSUBSCRIBE).start()
    mail = pb.Channel(
        channel_id="mail",
        type="email",
        content=content(subject="Hi", from_address="news@example.org", text="Hello"),
        transports=[pb.TransportShare(transport="relay", percent=100)],
    )
    with daemon.channel() as channel_:
        client = Client(channel_)
        campaign = client.create(mail)
        when = timestamp_pb2.Timestamp()
        when.GetCurrentTime()
        when.seconds += 2
        client.stub.ScheduleCampaign(
            svc.ScheduleCampaignRequest(name=campaign.name, schedule_time=when, attestation=ATTESTATION)
        )
    assert daemon.stop() == 0
    daemon.write_config(engine + RELAY)
    time.sleep(2.5)
    daemon.start()
    with daemon.channel() as channel_:
        client = Client(channel_)
        deadline = time.monotonic() + 30
        while (found := client.get(campaign.name).channels[0]).state != pb.Channel.FAILED:
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        events = client.history(campaign.name)
    assert found.error.code == "VALIDATION_FAILED"
    assert "campaign.channels[mail].content.unsubscribe_url: required" in found.error.message
    assert (events[-1].operation, events[-1].cause) == ("fail", pb.CampaignEvent.ERROR)


@pytest.mark.parametrize(
    "name", ["suppressions/²", "suppressions/٣", "suppressions/1\n", "suppressions/" + "9" * 19]
)
def test_suppression_names_take_ascii_digits_only(daemon: DatabaseDaemon, client: Client, name: str) -> None:
    """A suppression name with a non-ASCII digit, a newline or 19 digits is refused on `name`."""
    found = refused(daemon, lambda: client.contacts.RemoveSuppression(cs.RemoveSuppressionRequest(name=name)))
    assert found.fields == ["name"]


def test_a_request_with_very_many_long_problems_still_gets_its_answer(
    daemon: DatabaseDaemon, client: Client
) -> None:
    """Hundreds of problems with long values are INVALID_ARGUMENT with the first ones listed and a
    count of the rest, within what a gRPC client accepts in trailers (not RESOURCE_EXHAUSTED)."""
    campaign = pb.Campaign(
        display_name="x",
        labels={f"Bad{i}{'k' * 60}": "v" * 100 for i in range(64)},
        audience=pb.Audience(target_lists=[f"lists/{'Z' * 60}{i}" for i in range(100)]),
        channels=[
            pb.Channel(channel_id=f"c{i}", type="t" * 5000, content=content(text="x")) for i in range(16)
        ],
    )
    found = refused(daemon, lambda: client.stub.CreateCampaign(svc.CreateCampaignRequest(campaign=campaign)))
    assert found.fields[0].startswith("campaign.labels[Bad")
    assert found.fields[-1] == ""  # "N more problems are not listed"
    assert 10 < len(found.fields) < 64 * 2 + 100 + 16
    assert len(found.message) <= 1000


@pytest.mark.parametrize("display_name", ["   ", "\t", "a\nb", "a\x7fb", "a\x9bb", "x" * 201])
def test_a_duplicate_gets_no_blank_or_bad_display_name(
    daemon: DatabaseDaemon, client: Client, display_name: str
) -> None:
    """DuplicateCampaign's display_name, when given, follows the rules of every display_name."""
    source = client.create(channel(), display_name="source")
    found = refused(
        daemon,
        lambda: client.stub.DuplicateCampaign(
            svc.DuplicateCampaignRequest(name=source.name, display_name=display_name)
        ),
    )
    assert found.fields == ["display_name"]
