"""`campaignctl events record` and the engagement in `campaignctl report`, against the real daemon."""

from __future__ import annotations

import json
import pathlib

from campaignd.v1 import campaign_service_pb2 as svc
from tests.integration.campaign_client import Client
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory
from tests.integration.ctl import ctl_at
from tests.integration.sending import FAST, sent_campaign


def test_events_record_forwards_a_file_and_report_shows_engagement(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Events from a JSON lines file are recorded once; the report's engagement table counts them;
    a bad line is exit 2 with nothing sent, a refused event exit 1."""
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        campaign, (a, b) = sent_campaign(Client(channel), "relayed", 2)
    lines = [
        {"eventId": "w1", "kind": "OPENED", "message": a.name},
        {
            "eventId": "w2",
            "kind": "CLICKED",
            "providerMessageId": b.provider_id,
            "url": "https://example.org/x",
        },
        {"eventId": "w3", "kind": "BOUNCED", "message": b.name, "soft": True, "diagnostic": "4.2.2 full"},
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    first = ctl_at(daemon, "events", "record", "--file", str(events))
    assert first.returncode == 0, first.stderr
    assert [row.split() for row in first.stdout.splitlines()[1:]] == [
        ["w1", "APPLIED"],
        ["w2", "APPLIED"],
        ["w3", "APPLIED"],
    ]
    again = ctl_at(daemon, "events", "record", "--file", str(events), "--json")
    assert [r["status"] for r in json.loads(again.stdout)["results"]] == ["DUPLICATE"] * 3

    report = ctl_at(daemon, "report", campaign.name).stdout
    header = next(line for line in report.splitlines() if line.startswith("CHANNEL") and "OPENED" in line)
    row = report.splitlines()[report.splitlines().index(header) + 1]
    assert header.split() == [
        "CHANNEL",
        "OPENED",
        "OPENS",
        "CLICKED",
        "CLICKS",
        "BOUNCED",
        "COMPLAINED",
        "UNSUBSCRIBED",
    ]
    assert row.split() == ["main", "1", "1", "1", "1", "1", "0", "0"]
    assert "https://example.org/x" in report

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"eventId": "w9", "kind": "OPENED", "message": a.name}) + '\n{"kind": "SMILED"}\n'
    )
    refused_line = ctl_at(daemon, "events", "record", "--file", str(bad))
    assert refused_line.returncode == 2
    assert "line 2" in refused_line.stderr
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"eventId": "w8", "kind": "OPENED", "providerMessageId": "nope"}) + "\n")
    refused = ctl_at(daemon, "events", "record", "--file", str(unknown))
    assert refused.returncode == 1
    assert "message not found" in refused.stdout
    with daemon.channel() as channel:
        after = Client(channel).stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert after.totals.opens == 1  # w9 was never sent
