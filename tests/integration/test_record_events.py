"""RecordEvents through the real daemon: applied once by event id, counted in the report and the
watch, suppressing where it must."""

from __future__ import annotations

import grpc
import pytest

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, failure, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory
from tests.integration.sending import FAST, double_campaign, sent_campaign

E = svc.MessageEvent
APPLIED, DUPLICATE, REFUSED = (
    svc.MessageEventResult.APPLIED,
    svc.MessageEventResult.DUPLICATE,
    svc.MessageEventResult.REFUSED,
)


def test_events_are_applied_once_counted_and_suppress(
    daemon_factory: DaemonFactory, database_url: str
) -> None:
    """Opens, clicks per link, bounces, complaints and unsubscribes count exactly; repeats and
    unknown messages change nothing; hard bounces, complaints and unsubscribes are suppressed and
    a later campaign skips them (on SQLite and PostgreSQL)."""
    daemon = daemon_factory(TEST_CHANNELS + FAST + f'[database]\nurl = "{database_url}"\n').start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign, (a, b, c, d, e) = sent_campaign(client, "engaged", 5)
        who = E.Recipient(campaign=campaign.name, channel_id="main", address=d.address)
        events = [
            E(event_id="o1", kind=E.OPENED, message=a.name),
            E(event_id="o2", kind=E.OPENED, message=a.name),
            E(event_id="o3", kind=E.OPENED, provider_message_id=b.provider_id),
            E(event_id="k1", kind=E.CLICKED, message=a.name, url="https://example.org/one"),
            E(event_id="k2", kind=E.CLICKED, message=a.name, url="https://example.org/one"),
            E(event_id="k3", kind=E.CLICKED, message=b.name, url="https://example.org/two"),
            E(event_id="d1", kind=E.DELIVERED, message=a.name),
            E(
                event_id="b1",
                kind=E.BOUNCED,
                provider_message_id=c.provider_id,
                diagnostic="5.1.1 user unknown",
            ),
            E(event_id="b2", kind=E.BOUNCED, message=e.name, soft=True, diagnostic="4.2.2 mailbox full"),
            E(event_id="b3", kind=E.BOUNCED, message=c.name, soft=True),  # c still counts once
            E(event_id="x1", kind=E.COMPLAINED, recipient=who),
            E(event_id="u1", kind=E.UNSUBSCRIBED, message=b.name),
            E(event_id="o1", kind=E.OPENED, message=b.name),  # a repeat within the batch
            E(event_id="n1", kind=E.OPENED, provider_message_id="no-such-message"),
            E(event_id="n2", kind=E.OPENED, message=f"{campaign.name}/channels/main/messages/999999"),
        ]
        results = client.stub.RecordEvents(svc.RecordEventsRequest(events=events)).results
        assert [(r.event_id, r.status) for r in results] == [
            (ev.event_id, want)
            for ev, want in zip(events, [APPLIED] * 12 + [DUPLICATE, REFUSED, REFUSED], strict=True)
        ]
        assert results[-1].reason == "message not found"
        again = client.stub.RecordEvents(svc.RecordEventsRequest(events=events[:3]))
        assert [r.status for r in again.results] == [DUPLICATE] * 3

        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        for progress in (report.totals, report.channels[0].progress):
            assert (progress.opened, progress.opens) == (2, 3)
            assert (progress.clicked, progress.clicks) == (2, 3)
            assert dict(progress.clicks_by_link) == {
                "https://example.org/one": 2,
                "https://example.org/two": 1,
            }
            assert (progress.bounced, progress.complained, progress.unsubscribed) == (2, 1, 1)
        assert (report.totals.delivered, report.totals.failed, report.totals.sent) == (1, 1, 3)
        update = next(
            iter(client.stub.WatchCampaign(svc.WatchCampaignRequest(name=campaign.name), timeout=30))
        )
        assert (update.report.totals.opened, update.report.totals.clicks) == (2, 3)
        assert update.report.totals.unsubscribed == 1

        after = {
            m.address: m
            for m in client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
        }
        assert (after[c.address].state, after[c.address].reason) == (pb.Message.FAILED, "bounced")
        assert after[e.address].state == pb.Message.SENT  # a soft bounce leaves it
        assert after[b.address].outcome == "unsubscribed"
        suppressed = [client.suppressed(m.address, "test-email") for m in (a, b, c, d, e)]
        assert suppressed == [False, True, True, True, False]

        later = double_campaign(client, "lists/engaged")
        client.launch(later.name)
        wait_until(lambda: client.channel_state(later.name) == pb.Channel.COMPLETED, 30, "the later campaign")
        sent_to = {
            m.address for m in client.stub.ListMessages(svc.ListMessagesRequest(parent=later.name)).messages
        }
        assert sent_to == {a.address, e.address}


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (E(kind=E.OPENED, provider_message_id="p"), "events[1].event_id"),
        (E(event_id="z", provider_message_id="p"), "events[1].kind"),
        (E(event_id="z", kind=E.OPENED), "events[1].target"),
        (E(event_id="z", kind=E.OPENED, message="campaigns/x/messages/1"), "events[1].message"),
        (
            E(event_id="z", kind=E.CLICKED, provider_message_id="p", url="javascript:alert(1)"),
            "events[1].url",
        ),
        (E(event_id="z", kind=E.OPENED, provider_message_id="p", soft=True), "events[1].soft"),
        (
            E(
                event_id="z",
                kind=E.OPENED,
                recipient=E.Recipient(campaign="x", channel_id="main", address="a"),
            ),
            "events[1].recipient.campaign",
        ),
    ],
)
def test_malformed_events_are_refused_whole(
    daemon_factory: DaemonFactory, event: svc.MessageEvent, field: str
) -> None:
    """A malformed event makes the request INVALID_ARGUMENT naming its field; nothing is recorded."""
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign, messages = sent_campaign(client, "malformed", 1)
        good = E(event_id="good", kind=E.OPENED, message=messages[0].name)
        with pytest.raises(grpc.RpcError) as raised:
            client.stub.RecordEvents(svc.RecordEventsRequest(events=[good, event]))
        problem = failure(raised.value)
        assert (problem.code, problem.fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        assert report.totals.opens == 0
        assert client.stub.RecordEvents(svc.RecordEventsRequest(events=[good])).results[0].status == APPLIED


def test_concurrent_calls_each_get_their_own_results(daemon_factory: DaemonFactory) -> None:
    """Many RecordEvents calls at once (as tracking pixels arrive) are written together, yet
    each call gets the results of its own events, a repeated event id is applied once across
    calls, and the counts are exact."""
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign, messages = sent_campaign(client, "busy", 20)
        calls = []
        for k in range(120):
            events = [E(event_id=f"open-{k}", kind=E.OPENED, message=messages[k % 20].name)]
            if k % 10 == 0:
                events.append(E(event_id=f"lost-{k}", kind=E.OPENED, provider_message_id="no-such-message"))
            calls.append(events)
        # One event id in ten calls: applied by one of them, a duplicate in the others.
        same = E(event_id="same", kind=E.CLICKED, message=messages[0].name, url="https://example.org/")
        calls += [[same]] * 10
        futures = [client.stub.RecordEvents.future(svc.RecordEventsRequest(events=c)) for c in calls]
        answers = [[(r.event_id, r.status) for r in f.result(timeout=60).results] for f in futures]

        for k, answer in enumerate(answers[:120]):
            want = [(f"open-{k}", APPLIED)] + ([(f"lost-{k}", REFUSED)] if k % 10 == 0 else [])
            assert answer == want
        assert sorted(status for [(_, status)] in answers[120:]) == sorted([APPLIED] + [DUPLICATE] * 9)
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        assert (report.totals.opens, report.totals.opened) == (120, 20)
        assert (report.totals.clicks, report.totals.clicked) == (1, 1)
    written = [e["events"] for e in daemon.log_events() if e.get("event") == "message events recorded"]
    assert sum(written) == 120 + 12 + 10
    assert len(written) < len(calls)  # some calls shared a transaction
