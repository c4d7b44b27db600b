"""`campaignctl events record` and the engagement in `campaignctl report`, against the real daemon."""

from __future__ import annotations

import json
import pathlib

from campaignd.cli.events import _line_numbers
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


def test_events_record_checks_every_line_before_sending_any(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A bad event after the first 1000 is exit 2 naming its line (blank lines counted), and
    nothing is recorded; a byte order mark is skipped, and a 2000-character url is taken."""
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        campaign, (a, _b) = sent_campaign(Client(channel), "checked", 2)
    good = [json.dumps({"eventId": f"o{i}", "kind": "OPENED", "message": a.name}) for i in range(1001)]
    no_url = json.dumps({"eventId": "c1", "kind": "CLICKED", "message": a.name})
    events = tmp_path / "events.jsonl"
    events.write_text("\ufeff" + "\n".join([*good[:500], "", "", *good[500:], no_url]) + "\n")
    bad = ctl_at(daemon, "events", "record", "--file", str(events))
    assert bad.returncode == 2, bad.stderr
    assert "line 1004.url: required for CLICKED" in bad.stderr
    assert "nothing was sent" in bad.stderr
    with daemon.channel() as channel:
        report = Client(channel).stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert report.totals.opens == 0

    url = "https://example.org/" + "x" * (2000 - len("https://example.org/"))
    longest = {"eventId": "c2", "kind": "CLICKED", "message": a.name, "url": url}
    events.write_text("\ufeff" + json.dumps(longest) + "\n", encoding="utf-8")
    taken = ctl_at(daemon, "events", "record", "--file", str(events))
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.splitlines()[1].split() == ["c2", "APPLIED"]
    longer = {**longest, "eventId": "c3", "url": url + "y"}
    events.write_text(json.dumps(longer) + "\n", encoding="utf-8")
    refused = ctl_at(daemon, "events", "record", "--file", str(events))
    assert refused.returncode == 2
    assert (
        "line 1.url: required for CLICKED: an absolute http(s) URL of at most 2000 characters"
        in refused.stderr
    )


def test_a_daemon_s_refusal_names_the_file_s_line() -> None:
    """The indexes of a call's INVALID_ARGUMENT are turned into the file's line numbers."""
    assert _line_numbers("  field events[1].url: bad", [7, 9, 12]) == "  field line 9.url: bad"
    assert _line_numbers("events[5].kind", [7]) == "events[5].kind"
