"""ContactService and recipient resolution over the real daemon, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, channel, content, expect_failure
from tests.integration.conftest import API_ONLY, DaemonProcess, DatabaseDaemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, module_database_url: str) -> Iterator[DaemonProcess]:
    """One daemon per database for the module. Its engine is off: these tests check what launch
    freezes, so launched channels must stay QUEUED."""
    config = API_ONLY + '[audience]\ndefault_region = "US"\n'
    with DatabaseDaemon(
        tmp_path_factory.mktemp("audience"), config, module_database_url
    ).running() as process:
        yield process


def _import(client: Client, rows: list[cs.ContactRow], **options: Any) -> cs.ImportContactsResponse:
    requests = [cs.ImportContactsRequest(options=cs.ImportOptions(**options))]
    requests += [cs.ImportContactsRequest(rows=rows[i : i + 3]) for i in range(0, len(rows), 3)]
    return client.contacts.ImportContacts(iter(requests))


def _list(client: Client, list_id: str) -> str:
    client.contacts.CreateList(
        cs.CreateListRequest(list_id=list_id, list=cs.ContactList(display_name=list_id))
    )
    return f"lists/{list_id}"


def _addresses(
    client: Client, name: str, channel_id: str, states: list[pb.Message.State.ValueType] | None = None
) -> list[str]:
    found: list[str] = []
    token = ""
    while True:
        page = client.stub.ListMessages(
            svc.ListMessagesRequest(
                parent=name, channel_id=channel_id, states=states or [], page_size=2, page_token=token
            )
        )
        found += [m.address for m in page.messages]
        token = page.next_page_token
        if not token:
            return sorted(found)


def test_resolution_set_algebra(client: Client) -> None:
    """Targets minus exclusions minus suppressions, one message per address, skipped without one."""
    prefix = "alg"
    a, b, vip = _list(client, f"{prefix}-a"), _list(client, f"{prefix}-b"), _list(client, f"{prefix}-vip")
    rows = [
        cs.ContactRow(contact_id=f"{prefix}1", email="one@example.org", phone="+12025550101"),
        cs.ContactRow(contact_id=f"{prefix}2", email="two@example.org", phone="+12025550102"),
        cs.ContactRow(contact_id=f"{prefix}3", email="three@example.org"),  # no phone
        cs.ContactRow(
            contact_id=f"{prefix}4", email="four@example.org", phone="+12025550102"
        ),  # shares 2's phone
        cs.ContactRow(
            contact_id=f"{prefix}5",
            email="five@example.org",
            phone="+12025550105",
            attributes=content(churned=True),
        ),
        cs.ContactRow(contact_id=f"{prefix}6", email="Six@Example.org", phone="+12025550106"),
    ]
    assert _import(client, rows[:4], list=a).created == 4
    assert _import(client, rows[2:], list=b).created == 2  # 3 and 4 are updated, and join b too
    client.contacts.AddListMembers(cs.AddListMembersRequest(list=vip, contacts=[f"contacts/{prefix}1"]))
    client.contacts.CreateSegment(
        cs.CreateSegmentRequest(
            segment_id=f"{prefix}-churned",
            segment=cs.Segment(display_name="churned", filter="attributes.churned = true"),
        )
    )
    client.contacts.AddSuppressions(
        cs.AddSuppressionsRequest(
            suppressions=[
                cs.Suppression(address="SIX@example.org", reason=cs.Suppression.UNSUBSCRIBED),
                cs.Suppression(
                    address="(202) 555-0101", channel_type="test-sms", reason=cs.Suppression.OPTED_OUT
                ),
            ]
        )
    )
    campaign = client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Algebra",
                audience=pb.Audience(
                    target_lists=[a, b], exclude_lists=[vip], exclude_segments=[f"segments/{prefix}-churned"]
                ),
                channels=[channel("mail", "test-email"), channel("text", "test-sms")],
            )
        )
    )
    estimate = client.stub.EstimateRecipients(svc.EstimateRecipientsRequest(name=campaign.name))
    # 6 targeted; 1 (vip) and 5 (churned) excluded; 6 suppressed on every channel.
    mail = estimate.channels["mail"]
    assert (mail.targeted, mail.excluded, mail.suppressed, mail.skipped, mail.queued) == (6, 2, 1, 0, 3)
    # On SMS, 3 has no phone, 2 and 4 share one number, and 6's suppression is for its email only;
    # the SMS suppression of 1's number does not count, as 1 is already excluded.
    text = estimate.channels["text"]
    assert (text.targeted, text.excluded, text.suppressed, text.skipped, text.queued) == (6, 2, 0, 1, 2)
    client.launch(campaign.name)
    assert _addresses(client, campaign.name, "mail") == [
        "four@example.org",
        "three@example.org",
        "two@example.org",
    ]
    assert _addresses(client, campaign.name, "text") == ["+12025550102", "+12025550106"]
    report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert report.totals.total == 5
    assert report.totals.queued == 5
    assert [c.audience.queued for c in report.channels] == [3, 2]


def test_launch_refuses_lists_and_segments_that_do_not_exist(client: Client) -> None:
    """A campaign naming a missing list or segment cannot launch, and says which."""
    campaign = client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Missing",
                audience=pb.Audience(target_lists=["lists/ghost"], exclude_segments=["segments/ghost"]),
                channels=[channel()],
            )
        )
    )
    found = expect_failure(lambda: client.launch(campaign.name), grpc.StatusCode.FAILED_PRECONDITION)
    assert found.reason == "VALIDATION_FAILED"
    assert sorted(found.fields) == [
        "campaign.audience.exclude_segments[0]",
        "campaign.audience.target_lists[0]",
    ]
    assert client.get(campaign.name).state == pb.Campaign.DRAFT


def test_stop_cancels_queued_messages_and_sms_restart_requeues_them(client: Client) -> None:
    """Stop moves QUEUED messages to CANCELLED; restarting an SMS-like channel queues them again."""
    target = _list(client, "stop-list")
    _import(
        client,
        [cs.ContactRow(email=f"s{i}@example.org", phone=f"+1202555020{i}") for i in range(3)],
        list=target,
    )
    campaign = client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Stop",
                audience=pb.Audience(target_lists=[target]),
                channels=[channel("t", "test-sms")],
            )
        )
    )
    client.launch(campaign.name)
    client.stop(campaign.name)
    assert len(_addresses(client, campaign.name, "t", [pb.Message.CANCELLED])) == 3
    client.stub.RestartCampaign(svc.RestartCampaignRequest(name=campaign.name))
    assert len(_addresses(client, campaign.name, "t", [pb.Message.QUEUED])) == 3
    assert _addresses(client, campaign.name, "t", [pb.Message.CANCELLED]) == []


def test_messages_are_frozen_in_the_byte_order_of_their_addresses(client: Client) -> None:
    """Message ids follow the addresses compared byte by byte, on SQLite and PostgreSQL alike,
    whatever the database's locale would say about punctuation and accents."""
    target = _list(client, "order-list")
    emails = ["a_b@example.org", "ab@example.org", "a-b@example.org", "a.b@example.org", "zed@example.org"]
    emails += ["\u00e9mile@example.org", "emile@example.org"]
    _import(client, [cs.ContactRow(email=email) for email in emails], list=target)
    campaign = client.create(channel("m"), audience=pb.Audience(target_lists=[target]))
    client.launch(campaign.name)
    frozen = [m.address for m in client.messages(campaign.name)]
    assert frozen == sorted(emails, key=lambda email: email.encode())


def test_remarketing_channel_targets_an_earlier_channels_outcomes(client: Client) -> None:
    """A remarketing channel's audience is the source channel's recipients with the given states."""
    target = _list(client, "remarket")
    _import(
        client,
        [cs.ContactRow(email=f"r{i}@example.org", phone=f"+1202555030{i}") for i in range(2)],
        list=target,
    )
    campaign = client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Source", audience=pb.Audience(target_lists=[target]), channels=[channel("mail")]
            )
        )
    )
    client.stop(client.launch(campaign.name).name)
    source = pb.RemarketingSource(campaign=campaign.name, channel_id="mail", outcomes=["cancelled"])
    client.stub.AddChannel(
        svc.AddChannelRequest(
            name=campaign.name,
            channel=pb.Channel(
                channel_id="again", type="test-sms", content=channel().content, remarketing=source
            ),
        )
    )
    client.launch(campaign.name, "again")
    assert _addresses(client, campaign.name, "again") == ["+12025550300", "+12025550301"]


def test_import_rejects_bad_rows_and_applies_good_ones_whole(client: Client) -> None:
    """Bad email, bad phone, bad zone and duplicates are reported per row; good rows are applied."""
    rows = [
        cs.ContactRow(
            contact_id="imp-good", email="Good@Example.org", phone="(202) 555-0401", time_zone="Europe/Paris"
        ),
        cs.ContactRow(contact_id="imp-bad-email", email="not-an-email"),
        cs.ContactRow(contact_id="imp-bad-phone", email="phone@example.org", phone="12"),
        cs.ContactRow(contact_id="imp-bad-zone", email="zone@example.org", time_zone="Mars/Base"),
        cs.ContactRow(contact_id="imp-nothing"),
        cs.ContactRow(email="good@example.org", attributes=content(plan="pro")),  # same email: an update
        cs.ContactRow(contact_id="BAD ID", email="id@example.org"),
        cs.ContactRow(contact_id="imp-attr", email="attr@example.org", attributes=content(**{"bad key": 1})),
    ]
    result = _import(client, rows)
    assert (result.created, result.updated, result.rejected) == (1, 1, 6)
    assert {(r.index, r.field) for r in result.rejected_rows} == {
        (1, "email"),
        (2, "phone"),
        (3, "time_zone"),
        (4, "email"),
        (6, "contact_id"),
        (7, "attributes.bad key"),
    }
    good = client.contacts.GetContact(cs.GetContactRequest(name="contacts/imp-good"))
    assert (good.email, good.phone, good.time_zone) == ("good@example.org", "+12025550401", "Europe/Paris")
    assert good.attributes["plan"] == "pro"
    for bad in ("imp-bad-email", "imp-bad-phone", "imp-bad-zone", "imp-attr"):
        expect_failure(
            lambda b=bad: client.contacts.GetContact(cs.GetContactRequest(name=f"contacts/{b}")),
            grpc.StatusCode.NOT_FOUND,
        )


def test_import_into_a_missing_list_writes_nothing(client: Client) -> None:
    """An import whose options name a list that does not exist is refused before any row is written."""
    expect_failure(
        lambda: _import(client, [cs.ContactRow(email="never@example.org")], list="lists/nope"),
        grpc.StatusCode.NOT_FOUND,
    )
    found = client.contacts.ListContacts(cs.ListContactsRequest(filter='email = "never@example.org"'))
    assert list(found.contacts) == []


def test_segment_filters_are_checked_at_creation(client: Client) -> None:
    """Nonsense and injection attempts are refused with the position; a good filter lists its contacts."""
    for text in ['email = "x" OR', "attributes.a'b = 1", "nope = 1", "email = ", '(email = "a"']:
        found = expect_failure(
            lambda t=text: client.contacts.CreateSegment(
                cs.CreateSegmentRequest(segment=cs.Segment(display_name="bad", filter=t))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert found.fields == ["segment.filter"]
    _import(client, [cs.ContactRow(email="seg@example.org", attributes=content(score=42))])
    injected = client.contacts.ListContacts(cs.ListContactsRequest(filter='email = "x\' OR 1=1 --"'))
    assert list(injected.contacts) == []
    matched = client.contacts.ListContacts(cs.ListContactsRequest(filter="attributes.score >= 40"))
    assert "seg@example.org" in [c.email for c in matched.contacts]


def test_suppressions_round_trip(client: Client) -> None:
    """Added suppressions are normalised, checked per channel type, listed, and removable."""
    added = client.contacts.AddSuppressions(
        cs.AddSuppressionsRequest(
            suppressions=[
                cs.Suppression(address="Round@Trip.org", reason=cs.Suppression.BOUNCED, source="smtp:550"),
                cs.Suppression(address="round@trip.org", reason=cs.Suppression.BOUNCED),
            ]
        )
    )
    assert (added.added, added.already_suppressed) == (1, 1)
    check = client.contacts.CheckSuppression(
        cs.CheckSuppressionRequest(address="ROUND@trip.org", channel_type="test-email")
    )
    assert check.suppressed
    assert check.suppressions[0].source == "smtp:550"
    client.contacts.RemoveSuppression(cs.RemoveSuppressionRequest(name=check.suppressions[0].name))
    again = client.contacts.CheckSuppression(
        cs.CheckSuppressionRequest(address="round@trip.org", channel_type="test-email")
    )
    assert not again.suppressed
    found = expect_failure(
        lambda: client.contacts.AddSuppressions(
            cs.AddSuppressionsRequest(
                suppressions=[cs.Suppression(address="nope", reason=cs.Suppression.MANUAL)]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert found.fields == ["suppressions[0].address"]


def test_contacts_crud_and_email_uniqueness(client: Client) -> None:
    """Contacts are created, updated by mask, kept unique by email, and deleted with their memberships."""
    created = client.contacts.CreateContact(
        cs.CreateContactRequest(contact_id="crud", contact=cs.Contact(email="Crud@Example.org"))
    )
    assert created.email == "crud@example.org"
    found = expect_failure(
        lambda: client.contacts.CreateContact(
            cs.CreateContactRequest(contact=cs.Contact(email="crud@example.org"))
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert found.reason == "EMAIL_IN_USE"
    from google.protobuf import field_mask_pb2

    updated = client.contacts.UpdateContact(
        cs.UpdateContactRequest(
            contact=cs.Contact(name="contacts/crud", phone="+442079460000"),
            update_mask=field_mask_pb2.FieldMask(paths=["phone"]),
        )
    )
    assert (updated.email, updated.phone) == ("crud@example.org", "+442079460000")
    found = expect_failure(
        lambda: client.contacts.UpdateContact(
            cs.UpdateContactRequest(
                contact=cs.Contact(name="contacts/crud"),
                update_mask=field_mask_pb2.FieldMask(paths=["email", "phone"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert found.fields == ["contact.email"]
    members = _list(client, "crud-list")
    client.contacts.AddListMembers(cs.AddListMembersRequest(list=members, contacts=["contacts/crud"]))
    client.contacts.DeleteContact(cs.DeleteContactRequest(name="contacts/crud"))
    lists = client.contacts.ListLists(cs.ListListsRequest(page_size=1000)).lists
    assert next(item for item in lists if item.name == members).member_count == 0
