"""RecordEvents about messages not sent yet, through the real daemon: refused and not stored, so
that the source's retry applies them once the send is recorded."""

from __future__ import annotations

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory
from tests.integration.sending import FAST, double_campaign, import_list, people

E = svc.MessageEvent
R = svc.MessageEventResult
# One message at a time, each send taking 4 s: the first is SENDING while the others wait QUEUED.
ONE_AT_A_TIME = "[engine]\ntick_interval = 0.05\nbatch_size = 1\nbatches_in_flight = 1\n"


def test_events_before_the_send_are_refused_and_apply_when_sent_again(
    daemon_factory: DaemonFactory, database_url: str
) -> None:
    """A receipt or an open for a QUEUED message, by name or by address, and a receipt for a
    SENDING one are refused (`message not sent yet`) and change nothing; an open of a SENDING
    message is the recipient's and counts. Sent again once the messages are SENT, the refused
    ones apply: the receipt makes its message DELIVERED. An address is found whatever its case.
    On SQLite and PostgreSQL (the address index holds no QUEUED message)."""
    daemon = daemon_factory(TEST_CHANNELS + ONE_AT_A_TIME + f'[database]\nurl = "{database_url}"\n').start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "early", 3), delay_ms=4000)
        client.launch(campaign.name)
        wait_until(lambda: len(client.messages(campaign.name, pb.Message.SENDING)) == 1, 10, "the first send")
        [sending] = client.messages(campaign.name, pb.Message.SENDING)
        queued = sorted(client.messages(campaign.name, pb.Message.QUEUED), key=lambda m: m.address)
        assert len(queued) == 2
        # As a provider may write it: another case (the contact's address is kept in lower case).
        who = E.Recipient(campaign=campaign.name, channel_id="main", address=queued[1].address.upper())
        early = [
            E(event_id="d-queued", kind=E.DELIVERED, message=queued[0].name),
            E(event_id="o-queued", kind=E.OPENED, recipient=who),
            E(event_id="d-sending", kind=E.DELIVERED, message=sending.name),
            E(event_id="o-sending", kind=E.OPENED, message=sending.name),
        ]
        results = client.stub.RecordEvents(svc.RecordEventsRequest(events=early)).results
        assert [(r.status, r.reason) for r in results] == [
            (R.REFUSED, "message not sent yet"),
            (R.REFUSED, "message not sent yet"),
            (R.REFUSED, "message not sent yet"),
            (R.APPLIED, ""),
        ]
        assert client.report(campaign.name).totals.opens == 1

        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, 30, "the campaign")
        results = client.stub.RecordEvents(svc.RecordEventsRequest(events=early)).results
        assert [r.status for r in results] == [R.APPLIED, R.APPLIED, R.APPLIED, R.DUPLICATE]
        delivered = {m.name for m in client.messages(campaign.name, pb.Message.DELIVERED)}
        assert delivered == {queued[0].name, sending.name}
        assert client.report(campaign.name).totals.opens == 2


def test_a_recipient_is_found_by_the_address_as_it_was_sent(daemon_factory: DaemonFactory) -> None:
    """An address with an internationalised domain goes out in ASCII (IDNA); an event naming it
    so, or in other case, finds the message kept under the contact's Unicode address."""
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        rows = [cs.ContactRow(email="zed@bücher.example"), cs.ContactRow(email="ann@example.org")]
        campaign = double_campaign(client, import_list(client, "idn", rows))
        client.launch(campaign.name)
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, 30, "the campaign")

        def opened(event_id: str, address: str) -> tuple[int, str]:
            who = E.Recipient(campaign=campaign.name, channel_id="main", address=address)
            event = E(event_id=event_id, kind=E.OPENED, recipient=who)
            [result] = client.stub.RecordEvents(svc.RecordEventsRequest(events=[event])).results
            return result.status, result.reason

        assert opened("o1", "zed@xn--bcher-kva.example") == (R.APPLIED, "")
        assert opened("o2", "Zed@B\u00dccher.Example") == (R.APPLIED, "")
        assert opened("o3", "ANN@EXAMPLE.ORG") == (R.APPLIED, "")
        assert opened("o4", "bob@example.org") == (R.REFUSED, "message not found")
        assert client.report(campaign.name).totals.opened == 2
