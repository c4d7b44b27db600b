"""SMS campaigns end to end: the real daemon, the campaignd-sms plugin, a scripted SMSC."""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2
from smsc import Answer, Smsc, Submitted, running_smsc

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb
from tests.conftest import database_url as database_url  # the fixtures
from tests.conftest import pg_admin as pg_admin
from tests.conftest import pg_url as pg_url
from tests.integration.campaign_client import ATTESTATION, Client, content, ensure_list, failure, future
from tests.integration.conftest import DaemonFactory, DaemonProcess
from tests.integration.conftest import daemon_factory as daemon_factory  # the fixture

PEOPLE = pb.Audience(target_lists=["lists/people"])
FAST = "[engine]\ntick_interval = 0.05\nretry_delay = 0.2\nsending_timeout = 10.0\ntransport_rest = 1.0\n"


def transport(smsc: Smsc, rate: float = 0, window: int = 10) -> str:
    """An smpp transport to the SMSC."""
    options = (
        f'kind = "smpp", host = "127.0.0.1", port = {smsc.port}, system_id = "campaignd", '
        f'password = {{ env = "SMSC_PASSWORD" }}, window = {window}, enquire_link = 5'
    )
    return f'[transports.smsc]\ntype = "sms"\nrate = {rate}\nconcurrency = 10\noptions = {{ {options} }}\n'


def zone_at(hour: int) -> str:
    """An IANA zone where the local time now is around `hour` o'clock."""
    offset = hour - dt.datetime.now(dt.UTC).hour
    offset = (offset + 12) % 24 - 12  # Etc/GMT zones run from -12 to +14
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def number(i: int) -> str:
    """The i-th test number."""
    return f"+1415555{i:04d}"


def import_contacts(daemon: DaemonProcess, count: int, zone: Callable[[int], str], first: int = 0) -> None:
    """`count` contacts with numbers, a first name, and a time zone each."""
    rows = []
    for i in range(first, first + count):
        row = cs.ContactRow(phone=number(i), time_zone=zone(i))
        row.attributes.update({"first_name": f"Ada{i:04d}"})
        rows.append(row)
    with daemon.channel() as channel:
        stub = cs_grpc.ContactServiceStub(channel)
        ensure_list(stub, "people")
        requests = [cs.ImportContactsRequest(options=cs.ImportOptions(list="lists/people"))]
        requests += [cs.ImportContactsRequest(rows=rows[i : i + 1000]) for i in range(0, len(rows), 1000)]
        stub.ImportContacts(iter(requests), timeout=120)


def sms_channel(text: str = "Hi {{ contact.first_name }}, your parcel is on its way.") -> pb.Channel:
    """An sms channel through the SMSC."""
    return pb.Channel(channel_id="sms", type="sms", content=content(text=text, sender="Shop"))


def wait(predicate: Callable[[], bool], seconds: float = 60, what: str = "") -> None:
    """Poll until `predicate` holds."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def report(client: Client, name: str) -> pb.CampaignReport:
    """GetCampaignReport."""
    return client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=name))


def messages(client: Client, name: str) -> list[pb.Message]:
    """Every message of the campaign."""
    out: list[pb.Message] = []
    token = ""
    while True:
        page = client.stub.ListMessages(
            svc.ListMessagesRequest(parent=name, page_size=1000, page_token=token)
        )
        out += page.messages
        token = page.next_page_token
        if not token:
            return out


def suppressed(daemon: DaemonProcess, address: str) -> list[cs.Suppression]:
    """The suppressions of one number."""
    with daemon.channel() as channel:
        stub = cs_grpc.ContactServiceStub(channel)
        return list(stub.ListSuppressions(cs.ListSuppressionsRequest(address=address)).suppressions)


def with_contacts(
    daemon_factory: DaemonFactory, smsc: Smsc, contacts: int, config: str = ""
) -> DaemonProcess:
    """A daemon sending through the SMSC (with `config` added), and `contacts` contacts where it
    is midday in the list people."""
    daemon = daemon_factory(FAST + transport(smsc) + config, env={"SMSC_PASSWORD": "secret"}).start()
    zone = zone_at(14)
    import_contacts(daemon, contacts, lambda i: zone)
    return daemon


def to_people(client: Client, text: str | None = None) -> pb.Campaign:
    """A draft campaign of one sms channel (`text`, or sms_channel's) to the list people."""
    channel = sms_channel() if text is None else sms_channel(text)
    return client.create(channel, audience=PEOPLE)


@pytest.fixture
def smsc() -> Iterator[Smsc]:
    """A scriptable SMSC that accepts everything with DELIVRD receipts."""
    with running_smsc() as server:
        yield server


def test_a_campaign_is_delivered_in_parts_and_a_stop_reply_opts_out(
    daemon_factory: DaemonFactory, smsc: Smsc
) -> None:
    """300 recipients, a third with a 2-part text: all SENT then DELIVERED by receipt, parts counted
    in messages and the report; a "Stop" reply suppresses the number, marks its message OPTED_OUT,
    and a later campaign leaves it out; "START" lifts the opt-out."""
    daemon = with_contacts(daemon_factory, smsc, 300)
    long_text = "{% if contact.first_name.endswith(('0', '3', '6')) %}" + "x" * 200 + "{% endif %}Hi!"
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client, long_text)
        client.launch(campaign.name)
        wait(lambda: report(client, campaign.name).totals.delivered == 300, what="300 delivered")
        listed = messages(client, campaign.name)
        two_parts = sum(1 for i in range(300) if str(i % 10) in "036")
        assert sorted(m.parts for m in listed).count(2) == two_parts
        assert {m.state for m in listed} == {pb.Message.DELIVERED}
        [sms] = report(client, campaign.name).channels
        assert (sms.parts.sent, sms.parts.delivered) == (300 + two_parts, 300 + two_parts)
        assert len(smsc.submits) == 300 + two_parts

        smsc.reply(number(7).lstrip("+"), "  Stop! ")
        wait(lambda: bool(suppressed(daemon, number(7))), what="the suppression")
        [suppression] = suppressed(daemon, number(7))
        assert suppression.reason == cs.Suppression.OPTED_OUT
        assert suppression.channel_type == "sms"
        wait(lambda: report(client, campaign.name).totals.opted_out == 1, what="the message opted out")
        [opted] = [m for m in messages(client, campaign.name) if m.state == pb.Message.OPTED_OUT]
        assert opted.address == number(7)

        again = to_people(client)
        client.launch(again.name)
        wait(lambda: report(client, again.name).totals.delivered == 299, what="299 delivered")
        assert number(7) not in {m.address for m in messages(client, again.name)}

        smsc.reply(number(7).lstrip("+"), "start")
        wait(lambda: not suppressed(daemon, number(7)), what="the opt-out to be lifted")


def test_the_transport_binds_at_start_and_a_stop_before_any_campaign_opts_out(
    daemon_factory: DaemonFactory, smsc: Smsc
) -> None:
    """Without any campaign, the daemon binds at start, so a STOP the SMSC delivers then (one it
    kept while the daemon was down) suppresses the number before anything is sent to it."""
    daemon = daemon_factory(FAST + transport(smsc), env={"SMSC_PASSWORD": "secret"}).start()
    wait(lambda: smsc.binds == 1, seconds=10, what="the bind")
    smsc.reply(number(4).lstrip("+"), "STOP")
    wait(lambda: bool(suppressed(daemon, number(4))), what="the suppression")
    assert smsc.submits == []


def test_opt_out_keywords_with_underscores_opt_out(daemon_factory: DaemonFactory, smsc: Smsc) -> None:
    """An underscore is punctuation like any other: "opt_out" and "_STOP_" opt their numbers out
    and mark their messages OPTED_OUT; "STOP please" is not a keyword."""
    daemon = with_contacts(daemon_factory, smsc, 3)
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client)
        client.launch(campaign.name)
        wait(lambda: report(client, campaign.name).totals.delivered == 3, what="3 delivered")
        smsc.reply(number(0).lstrip("+"), "STOP please", ucs2=True)
        smsc.reply(number(1).lstrip("+"), "opt_out", ucs2=True)
        smsc.reply(number(2).lstrip("+"), " _STOP_ ", ucs2=True)
        wait(lambda: report(client, campaign.name).totals.opted_out == 2, what="2 opted out")
        states = {m.address: m.state for m in messages(client, campaign.name)}
    assert states == {
        number(0): pb.Message.DELIVERED,
        number(1): pb.Message.OPTED_OUT,
        number(2): pb.Message.OPTED_OUT,
    }
    assert [s.reason for s in suppressed(daemon, number(1))] == [cs.Suppression.OPTED_OUT]
    assert [s.reason for s in suppressed(daemon, number(2))] == [cs.Suppression.OPTED_OUT]
    assert suppressed(daemon, number(0)) == []


def test_a_number_that_opts_out_after_the_launch_is_not_sent(
    daemon_factory: DaemonFactory, smsc: Smsc
) -> None:
    """A "STOP" from a number whose message is still queued: that number gets nothing."""
    config = FAST + "batch_size = 5\n" + transport(smsc, rate=20)
    daemon = daemon_factory(config, env={"SMSC_PASSWORD": "secret"}).start()
    midday = zone_at(14)
    import_contacts(daemon, 60, lambda i: midday)
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client)
        client.launch(campaign.name)
        wait(lambda: len(smsc.submits) >= 5, what="the first submits")
        smsc.reply(number(59).lstrip("+"), "STOP")
        wait(lambda: bool(suppressed(daemon, number(59))), what="the suppression")
        wait(lambda: client.get(campaign.name).state == pb.Campaign.COMPLETED, what="the end")
        final = {m.address: m.state for m in messages(client, campaign.name)}
    assert "14155550059" not in {s.destination for s in smsc.submits}
    assert final[number(59)] == pb.Message.OPTED_OUT


def test_stop_and_restart_send_each_recipient_once_and_none_outside_the_window(
    daemon_factory: DaemonFactory, smsc: Smsc
) -> None:
    """2,000 recipients, stopped midway and restarted: each in the window is submitted exactly
    once in all; those where it is night get nothing; a number that opted out while stopped is
    left out and counted OPTED_OUT."""
    smsc.script = lambda submit, count: Answer(stat=None)
    daemon = daemon_factory(FAST + transport(smsc, rate=400), env={"SMSC_PASSWORD": "secret"}).start()
    midday, night = zone_at(14), zone_at(3)
    import_contacts(daemon, 2000, lambda i: night if i % 20 == 0 else midday)
    in_window = {number(i).lstrip("+") for i in range(2000) if i % 20}
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client)
        client.launch(campaign.name)
        wait(lambda: len(smsc.submits) >= 500, what="500 submits")
        stopped = client.stop(campaign.name)
        assert stopped.state == pb.Campaign.STOPPED
        time.sleep(0.5)  # sends in flight finish
        at_stop = {s.destination for s in smsc.submits}
        assert len(at_stop) < 1900
        waiting = sorted(in_window - at_stop)
        quitter = waiting[-1]
        smsc.reply(quitter, "STOP")
        wait(lambda: bool(suppressed(daemon, f"+{quitter}")), what="the suppression")
        client.stub.RestartCampaign(svc.RestartCampaignRequest(name=campaign.name))
        wait(lambda: len(smsc.submits) >= 1900 - 1, seconds=60, what="every recipient in the window")
        time.sleep(0.5)
        counts = report(client, campaign.name).totals
    submitted = collections.Counter(s.destination for s in smsc.submits)
    assert set(submitted) == in_window - {quitter}
    assert max(submitted.values()) == 1
    assert counts.opted_out == 1
    assert counts.queued == 100  # the night-time recipients wait for their morning


def test_a_refused_bind_fails_the_channel(daemon_factory: DaemonFactory, smsc: Smsc) -> None:
    """A wrong SMPP password fails the channel with the SMSC's status, and nothing is submitted."""
    smsc.password = "other"
    daemon = with_contacts(daemon_factory, smsc, 5)
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client)
        client.launch(campaign.name)
        wait(lambda: client.get(campaign.name).state == pb.Campaign.FAILED, what="the channel to fail")
        [failed] = client.get(campaign.name).channels
    assert "ESME_RINVPASWD" in failed.error.message
    assert smsc.submits == []


def test_a_scheduled_sms_channel_may_change_only_its_schedule(
    daemon_factory: DaemonFactory, smsc: Smsc
) -> None:
    """Editing the text of a SCHEDULED sms channel is refused with EDIT_NOT_ALLOWED and changes
    nothing; scheduling it again at another time keeps it SCHEDULED at the new time."""
    daemon = with_contacts(daemon_factory, smsc, 1)
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client)
        client.schedule(campaign.name)
        edited = sms_channel("A new text")
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.UpdateCampaign(
                svc.UpdateCampaignRequest(
                    campaign=pb.Campaign(name=campaign.name, channels=[edited]),
                    update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
                )
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert failure(refused.value).reason == "EDIT_NOT_ALLOWED"
        later = future(120)
        client.stub.ScheduleCampaign(
            svc.ScheduleCampaignRequest(name=campaign.name, schedule_time=later, attestation=ATTESTATION)
        )
        [sms] = client.get(campaign.name).channels
    assert sms.state == pb.Channel.SCHEDULED
    assert sms.schedule_time == later
    assert sms.content.fields["text"].string_value.startswith("Hi ")
    assert smsc.submits == []


def test_a_text_that_renders_blank_is_not_sent(daemon_factory: DaemonFactory, smsc: Smsc) -> None:
    """A template that renders nothing but spaces for a recipient fails that message with reason
    `empty` and submits nothing for it; a preview for that recipient names the problem."""
    daemon = with_contacts(daemon_factory, smsc, 3)
    text = "{% if not contact.first_name.endswith('1') %}Hi {{ contact.first_name }}{% endif %}  "
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client, text)
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.PreviewMessage(
                svc.PreviewMessageRequest(name=campaign.name, channel_id="sms", address=number(1))
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "empty" in str(refused.value.details())
        assert failure(refused.value).fields == ["campaign.channels[sms].content.text"]
        client.launch(campaign.name)
        wait(lambda: report(client, campaign.name).totals.delivered == 2, what="2 delivered")
        final = {m.address: (m.state, m.reason) for m in messages(client, campaign.name)}
    assert final == {
        number(0): (pb.Message.DELIVERED, ""),
        number(1): (pb.Message.FAILED, "empty"),
        number(2): (pb.Message.DELIVERED, ""),
    }
    assert sorted(s.destination for s in smsc.submits) == [number(0)[1:], number(2)[1:]]


def test_a_literal_brace_does_not_hide_a_text_too_long(daemon_factory: DaemonFactory, smsc: Smsc) -> None:
    """A text without template syntax is measured at launch even when it has a "{" (a GSM-7
    character): over max_parts it is refused naming the text, and nothing is sent."""
    daemon = with_contacts(daemon_factory, smsc, 1, "[channel_types.sms]\nmax_parts = 2\n")
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client, "Use code {SAVE10} " + "x" * 400)
        with pytest.raises(grpc.RpcError) as refused:
            client.launch(campaign.name)
        assert client.get(campaign.name).state == pb.Campaign.DRAFT
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure(refused.value).fields == ["campaign.channels[sms].content.text"]
    assert "takes 3 parts" in str(refused.value.details())
    assert smsc.submits == []


def test_preview_shows_encoding_and_parts(daemon_factory: DaemonFactory, smsc: Smsc) -> None:
    """PreviewMessage gives the text with its encoding and part count; a text over max_parts is
    refused at launch with the reason."""
    daemon = with_contacts(daemon_factory, smsc, 1, "[channel_types.sms]\nmax_parts = 2\n")
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client, "Привет {{ contact.first_name }} " + "ж" * 60)
        preview = client.stub.PreviewMessage(
            svc.PreviewMessageRequest(name=campaign.name, channel_id="sms", address=number(0))
        )
        assert (preview.encoding, preview.parts) == ("UCS-2", 2)
        assert preview.text.startswith("Привет Ada0000 ")
        too_long = to_people(client, "x" * 400)
        with pytest.raises(grpc.RpcError) as refused:
            client.launch(too_long.name)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "3 parts" in str(refused.value.details())


def test_receipts_after_a_restart_are_applied(daemon_factory: DaemonFactory, smsc: Smsc) -> None:
    """Messages sent before a restart, whose receipts the SMSC delivers only after it (and
    nothing else comes): each is applied, UNDELIV failing its message with the stat."""
    smsc.script = lambda submit, count: Answer(stat=None)
    daemon = with_contacts(daemon_factory, smsc, 3)
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client)
        client.launch(campaign.name)
        wait(lambda: client.get(campaign.name).state == pb.Campaign.COMPLETED, what="the end")
    assert daemon.stop() == 0
    daemon.start()
    wait(lambda: smsc.binds == 2, seconds=10, what="the bind after the restart")
    first, *others = sorted(smsc.accepted(), key=lambda s: s.destination)
    smsc.receipt(first, "UNDELIV", "001")
    for submitted in others:
        smsc.receipt(submitted, "DELIVRD")
    with daemon.channel() as channel:
        client = Client(channel)
        wait(
            lambda: (
                report(client, campaign.name).totals.delivered == 2
                and report(client, campaign.name).totals.failed == 1
            ),
            seconds=90,
            what="the receipts",
        )
        final = {m.address: (m.state, m.reason) for m in messages(client, campaign.name)}
    assert final == {
        number(0): (pb.Message.FAILED, "UNDELIV"),
        number(1): (pb.Message.DELIVERED, ""),
        number(2): (pb.Message.DELIVERED, ""),
    }


def test_a_message_in_parts_is_delivered_only_with_every_part_also_after_a_restart(
    daemon_factory: DaemonFactory, smsc: Smsc, database_url: str
) -> None:
    """Three-part messages sent before a restart, their receipts delivered after it: one whose
    first two parts are DELIVRD and third UNDELIV is FAILED, one whose parts are all DELIVRD is
    DELIVERED only once the last one came, one still missing a part stays SENT."""
    smsc.script = lambda submit, count: Answer(stat=None)
    daemon = with_contacts(daemon_factory, smsc, 3, f'[database]\nurl = "{database_url}"\n')
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client, "x" * 400)
        client.launch(campaign.name)
        wait(lambda: client.get(campaign.name).state == pb.Campaign.COMPLETED, what="the end")
    assert daemon.stop() == 0
    daemon.start()
    wait(lambda: smsc.binds == 2, seconds=10, what="the bind after the restart")
    parts: dict[str, list[Submitted]] = {}
    for submitted in sorted(smsc.accepted(), key=lambda s: s.message_id):
        parts.setdefault(submitted.destination, []).append(submitted)
    assert [len(p) for p in parts.values()] == [3, 3, 3]
    # In destination order, as number(0), number(1), number(2).
    failing, delivered, missing = (parts[d] for d in sorted(parts))
    for submitted in [*failing[:2], *delivered[:2], *missing[:2]]:
        smsc.receipt(submitted, "DELIVRD")
    smsc.receipt(failing[2], "UNDELIV", "001")
    with daemon.channel() as channel:
        client = Client(channel)
        wait(lambda: report(client, campaign.name).totals.failed == 1, seconds=90, what="the failure")
        # The receipts of the first parts came before the failure was applied, after the same hold.
        assert report(client, campaign.name).totals.delivered == 0
        smsc.receipt(delivered[2], "DELIVRD")
        wait(lambda: report(client, campaign.name).totals.delivered == 1, seconds=90, what="the last part")
        final = {m.address: (m.state, m.reason) for m in messages(client, campaign.name)}
    assert final == {
        number(0): (pb.Message.FAILED, "UNDELIV"),
        number(1): (pb.Message.DELIVERED, ""),
        number(2): (pb.Message.SENT, ""),
    }


def test_a_message_in_parts_failed_by_a_receipt_and_sent_again_is_delivered_by_its_new_parts(
    daemon_factory: DaemonFactory, smsc: Smsc, database_url: str
) -> None:
    """A 3-part message whose third part is UNDELIV fails; RetryFailedMessages sends it again,
    every new part is DELIVRD, and it is DELIVERED: the first attempt's parts no longer count."""
    # The first attempt's receipts come at once; the second's only when sent below, after it
    # was recorded SENT.
    smsc.script = lambda submit, count: Answer(stat=("DELIVRD", "DELIVRD", "UNDELIV", None)[min(count, 3)])
    daemon = with_contacts(daemon_factory, smsc, 1, f'[database]\nurl = "{database_url}"\n')
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = to_people(client, "x" * 400)
        client.launch(campaign.name)
        wait(lambda: report(client, campaign.name).totals.failed == 1, what="the failure")
        wait(lambda: client.get(campaign.name).state == pb.Campaign.COMPLETED, what="the end")
        client.stub.RetryFailedMessages(svc.RetryFailedMessagesRequest(name=campaign.name))
        wait(lambda: report(client, campaign.name).totals.sent == 1, what="the message sent again")
        for submitted in smsc.accepted()[3:]:
            smsc.receipt(submitted, "DELIVRD")
        wait(lambda: report(client, campaign.name).totals.delivered == 1, what="the new parts' receipts")
        (message,) = messages(client, campaign.name)
    assert (message.state, message.parts) == (pb.Message.DELIVERED, 3)
    assert len(smsc.accepted()) == 6


def test_receipts_on_another_members_bind_deliver_a_message_in_parts_once_every_part_is(
    daemon_factory: DaemonFactory, smsc: Smsc, pg_url: str
) -> None:
    """Two daemons on one PostgreSQL database, both bound; the SMSC sends each receipt back on
    the bind that did not submit the part. Messages of three parts are DELIVERED once their
    third part's receipt came, and not after two."""
    smsc.script = lambda submit, count: Answer(stat=None)
    env = {"SMSC_PASSWORD": "secret"}
    config = FAST + transport(smsc) + f'[database]\nurl = "{pg_url}"\n'
    first = daemon_factory(config, env=env, name="member0").start()
    daemon_factory(config, env=env, name="member1").start()
    wait(lambda: smsc.binds == 2, seconds=10, what="both members to bind")
    zone = zone_at(14)
    import_contacts(first, 10, lambda i: zone)
    with first.channel() as channel:
        client = Client(channel)
        campaign = to_people(client, "x" * 400)
        client.launch(campaign.name)
        wait(lambda: report(client, campaign.name).totals.sent == 10, what="every message SENT")
        parts: dict[str, list[Submitted]] = {}
        for submitted in sorted(smsc.accepted(), key=lambda s: s.message_id):
            parts.setdefault(submitted.destination, []).append(submitted)
        assert sorted(len(p) for p in parts.values()) == [3] * 10
        for submitted in (s for p in parts.values() for s in p[:2]):
            smsc.receipt(submitted, "DELIVRD", elsewhere=True)
        # The other member holds a part it does not know for a second, then hands it over.
        time.sleep(3.0)
        assert report(client, campaign.name).totals.delivered == 0
        for submitted in (p[2] for p in parts.values()):
            smsc.receipt(submitted, "DELIVRD", elsewhere=True)
        wait(lambda: report(client, campaign.name).totals.delivered == 10, seconds=20, what="every message")
