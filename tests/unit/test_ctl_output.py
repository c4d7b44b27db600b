"""campaignctl's printed output pinned byte for byte: `--json` documents and plain (non-TTY) text.

The commands run with a stand-in for the connection (a double: it returns fixed messages instead
of calling a daemon), so only the printing is under test here.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from campaignd.cli import campaigns, reports
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import resources_pb2 as res


class StubStubs:
    """Service stubs whose methods answer with fixed messages (a double of the gRPC stubs)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def __getattr__(self, method: str) -> Callable[..., Any]:
        answer = self.answers[method]
        return lambda request, **_: answer


class StubClient:
    """A Client double: the output options and canned answers, no connection."""

    def __init__(self, answers: dict[str, Any], *, json_output: bool) -> None:
        self.json = json_output
        self.campaigns = StubStubs(answers)
        self.contacts = StubStubs(answers)

    def call(self, method: Callable[[Any], Any], request: Any) -> Any:
        """Answer as the daemon would have."""
        return method(request)


class StubStream:
    """A server-streaming call double: yields fixed updates, records that it was cancelled."""

    def __init__(self, updates: list[api.WatchCampaignResponse]) -> None:
        self.updates = updates
        self.cancelled = False

    def __iter__(self) -> Iterator[api.WatchCampaignResponse]:
        return iter(self.updates)

    def cancel(self) -> None:
        """Stop the stream."""
        self.cancelled = True


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local times print in UTC, whatever the machine's zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def campaign() -> res.Campaign:
    """A campaign with one channel, as the daemon returns it."""
    c = res.Campaign(
        name="campaigns/spring",
        display_name="Spring sale",
        state=res.Campaign.RUNNING,
        etag="e1",
        labels={"team": "growth"},
        channels=[res.Channel(channel_id="mail", type="email", state=res.Channel.RUNNING)],
    )
    c.create_time.FromSeconds(1_700_000_000)
    c.update_time.FromSeconds(1_700_000_060)
    return c


def report(state: int = res.Campaign.RUNNING) -> res.CampaignReport:
    """A report part way through (or at the end) of a send."""
    r = res.CampaignReport(campaign="campaigns/spring", state=state)  # type: ignore[arg-type]
    r.report_time.FromSeconds(1_700_000_100)
    progress = res.Progress(total=10, sent=4, delivered=2, failed=1, percent_done=70.0, current_rate=12.5)
    progress.failed_by_reason["mailbox_full"] = 1
    r.totals.CopyFrom(progress)
    ch = r.channels.add(channel_id="mail", type="email", state=state)
    ch.progress.CopyFrom(progress)
    return r


def watch_update(state: int) -> api.WatchCampaignResponse:
    """One WatchCampaign update."""
    update = api.WatchCampaignResponse(report=report(state))
    update.campaign.CopyFrom(campaign())
    update.campaign.state = state  # type: ignore[assignment]
    update.time.FromSeconds(1_700_000_100)
    return update


def run(
    command: Callable[[Any, argparse.Namespace], int],
    answers: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    *,
    json_output: bool,
    **args: Any,
) -> tuple[int, str]:
    """Run one command function against canned answers; its status and stdout."""
    status = command(cast(Any, StubClient(answers, json_output=json_output)), argparse.Namespace(**args))
    return status, capsys.readouterr().out


GET_JSON = (
    "{\n"
    '  "name": "campaigns/spring",\n'
    '  "display_name": "Spring sale",\n'
    '  "labels": {\n'
    '    "team": "growth"\n'
    "  },\n"
    '  "channels": [\n'
    "    {\n"
    '      "channel_id": "mail",\n'
    '      "type": "email",\n'
    '      "state": "RUNNING",\n'
    '      "transports": [],\n'
    '      "rate_limit": 0.0,\n'
    '      "ambiguous_sends": "AMBIGUOUS_SENDS_UNSPECIFIED"\n'
    "    }\n"
    "  ],\n"
    '  "state": "RUNNING",\n'
    '  "etag": "e1",\n'
    '  "create_time": "2023-11-14T22:13:20Z",\n'
    '  "update_time": "2023-11-14T22:14:20Z",\n'
    '  "archived": false,\n'
    '  "time_zone": ""\n'
    "}\n"
)
GET_TEXT = (
    "Name:          campaigns/spring\n"
    "Display name:  Spring sale\n"
    "State:         RUNNING\n"
    "Archived:      no\n"
    "Labels:        team=growth\n"
    "Audience:      -\n"
    "Time zone:     -\n"
    "Guard:         daemon defaults\n"
    "Attestation:   -\n"
    "Etag:          e1\n"
    "Created:       2023-11-14 22:13:20\n"
    "Updated:       2023-11-14 22:14:20\n"
    "\n"
    "CHANNEL  TYPE   STATE    SINCE  SCHEDULED  CONTENT  ERROR\n"
    "mail     email  RUNNING  -      -          -        -\n"
)
LIST_JSON = (
    "{\n"
    '  "campaigns": [\n'
    "    {\n"
    '      "name": "campaigns/spring",\n'
    '      "display_name": "Spring sale",\n'
    '      "labels": {\n'
    '        "team": "growth"\n'
    "      },\n"
    '      "channels": [\n'
    "        {\n"
    '          "channel_id": "mail",\n'
    '          "type": "email",\n'
    '          "state": "RUNNING",\n'
    '          "transports": [],\n'
    '          "rate_limit": 0.0,\n'
    '          "ambiguous_sends": "AMBIGUOUS_SENDS_UNSPECIFIED"\n'
    "        }\n"
    "      ],\n"
    '      "state": "RUNNING",\n'
    '      "etag": "e1",\n'
    '      "create_time": "2023-11-14T22:13:20Z",\n'
    '      "update_time": "2023-11-14T22:14:20Z",\n'
    '      "archived": false,\n'
    '      "time_zone": ""\n'
    "    }\n"
    "  ],\n"
    '  "next_page_token": ""\n'
    "}\n"
)
LIST_TEXT = (
    "NAME    DISPLAY NAME  STATE    CHANNELS    ARCHIVED  UPDATED\n"
    "spring  Spring sale   RUNNING  email:mail  no        2023-11-14 22:14:20\n"
)
WATCH_JSON = (
    '{"campaign": {"name": "campaigns/spring", "display_name": "Spring sale", "labels": {"team"'
    ': "growth"}, "channels": [{"channel_id": "mail", "type": "email", "state": "RUNNING", "tra'
    'nsports": [], "rate_limit": 0.0, "ambiguous_sends": "AMBIGUOUS_SENDS_UNSPECIFIED"}], "stat'
    'e": "RUNNING", "etag": "e1", "create_time": "2023-11-14T22:13:20Z", "update_time": "2023-1'
    '1-14T22:14:20Z", "archived": false, "time_zone": ""}, "report": {"campaign": "campaigns/sp'
    'ring", "state": "RUNNING", "totals": {"total": "10", "sent": "4", "delivered": "2", "faile'
    'd": "1", "failed_by_reason": {"mailbox_full": "1"}, "percent_done": 70.0, "current_rate": '
    '12.5, "queued": "0", "sending": "0", "opted_out": "0", "cancelled": "0", "retrying": "0", '
    '"assumed_delivered": "0", "opened": "0", "clicked": "0", "bounced": "0", "by_outcome": {},'
    ' "opens": "0", "clicks": "0", "complained": "0", "unsubscribed": "0", "clicks_by_link": {}'
    '}, "channels": [{"channel_id": "mail", "type": "email", "state": "RUNNING", "progress": {"'
    'total": "10", "sent": "4", "delivered": "2", "failed": "1", "failed_by_reason": {"mailbox_'
    'full": "1"}, "percent_done": 70.0, "current_rate": 12.5, "queued": "0", "sending": "0", "o'
    'pted_out": "0", "cancelled": "0", "retrying": "0", "assumed_delivered": "0", "opened": "0"'
    ', "clicked": "0", "bounced": "0", "by_outcome": {}, "opens": "0", "clicks": "0", "complain'
    'ed": "0", "unsubscribed": "0", "clicks_by_link": {}}, "by_transport": {}}], "report_time":'
    ' "2023-11-14T22:15:00Z"}, "time": "2023-11-14T22:15:00Z", "snapshot": false}\n{"campaign": '
    '{"name": "campaigns/spring", "display_name": "Spring sale", "labels": {"team": "growth"}, '
    '"channels": [{"channel_id": "mail", "type": "email", "state": "RUNNING", "transports": [],'
    ' "rate_limit": 0.0, "ambiguous_sends": "AMBIGUOUS_SENDS_UNSPECIFIED"}], "state": "COMPLETE'
    'D", "etag": "e1", "create_time": "2023-11-14T22:13:20Z", "update_time": "2023-11-14T22:14:'
    '20Z", "archived": false, "time_zone": ""}, "report": {"campaign": "campaigns/spring", "sta'
    'te": "COMPLETED", "totals": {"total": "10", "sent": "4", "delivered": "2", "failed": "1", '
    '"failed_by_reason": {"mailbox_full": "1"}, "percent_done": 70.0, "current_rate": 12.5, "qu'
    'eued": "0", "sending": "0", "opted_out": "0", "cancelled": "0", "retrying": "0", "assumed_'
    'delivered": "0", "opened": "0", "clicked": "0", "bounced": "0", "by_outcome": {}, "opens":'
    ' "0", "clicks": "0", "complained": "0", "unsubscribed": "0", "clicks_by_link": {}}, "chann'
    'els": [{"channel_id": "mail", "type": "email", "state": "COMPLETED", "progress": {"total":'
    ' "10", "sent": "4", "delivered": "2", "failed": "1", "failed_by_reason": {"mailbox_full": '
    '"1"}, "percent_done": 70.0, "current_rate": 12.5, "queued": "0", "sending": "0", "opted_ou'
    't": "0", "cancelled": "0", "retrying": "0", "assumed_delivered": "0", "opened": "0", "clic'
    'ked": "0", "bounced": "0", "by_outcome": {}, "opens": "0", "clicks": "0", "complained": "0'
    '", "unsubscribed": "0", "clicks_by_link": {}}, "by_transport": {}}], "report_time": "2023-'
    '11-14T22:15:00Z"}, "time": "2023-11-14T22:15:00Z", "snapshot": false}\n'
)
WATCH_TEXT = (
    "22:15:00  RUNNING     70.0%  sent 6/10  failed 1  12.5 msg/s\n"
    "22:15:00  FAILED      70.0%  sent 6/10  failed 1  12.5 msg/s\n"
    "\n"
    "Campaign:     campaigns/spring\n"
    "State:        FAILED\n"
    "Report time:  2023-11-14 22:15:00\n"
    "\n"
    "CHANNEL  TYPE   STATE   TOTAL  QUEUED  IN FLIGHT  SENT  DELIVERED  FAILED  OPTED OUT  CANC"
    "ELLED  DONE   RATE\n"
    "mail     email  FAILED  10     0       0          6     2          1       0          0   "
    "       70.0%  12.5/s\n"
    "(all)           FAILED  10     0       0          6     2          1       0          0   "
    "       70.0%  12.5/s\n"
    "\n"
    "CHANNEL  FAILURE REASON  COUNT\n"
    "mail     mailbox_full    1\n"
)


def test_get_json_is_pinned(capsys: pytest.CaptureFixture[str]) -> None:
    """`get --json` prints the campaign as indented proto3 JSON, unchanged byte for byte."""
    status, out = run(
        campaigns.run_get, {"GetCampaign": campaign()}, capsys, json_output=True, name="campaigns/spring"
    )
    assert (status, out) == (0, GET_JSON)


def test_get_text_is_pinned(capsys: pytest.CaptureFixture[str]) -> None:
    """`get` without a terminal prints the same key/value text as before."""
    status, out = run(
        campaigns.run_get, {"GetCampaign": campaign()}, capsys, json_output=False, name="campaigns/spring"
    )
    assert (status, out) == (0, GET_TEXT)


def list_args() -> dict[str, Any]:
    """The arguments of a plain `list`."""
    return {
        "state": [],
        "channel_type": "",
        "label": [],
        "archived": False,
        "page_size": 0,
        "page_token": "",
        "all": False,
    }


def test_list_json_is_pinned(capsys: pytest.CaptureFixture[str]) -> None:
    """`list --json` prints the ListCampaigns response, unchanged byte for byte."""
    answer = api.ListCampaignsResponse(campaigns=[campaign()])
    status, out = run(campaigns.run_list, {"ListCampaigns": answer}, capsys, json_output=True, **list_args())
    assert (status, out) == (0, LIST_JSON)


def test_list_text_is_pinned(capsys: pytest.CaptureFixture[str]) -> None:
    """`list` without a terminal prints the plain table as before."""
    answer = api.ListCampaignsResponse(campaigns=[campaign()])
    status, out = run(campaigns.run_list, {"ListCampaigns": answer}, capsys, json_output=False, **list_args())
    assert (status, out) == (0, LIST_TEXT)


def test_watch_json_is_pinned(capsys: pytest.CaptureFixture[str]) -> None:
    """`watch --json` prints one JSON line per update and exits 0 at COMPLETED."""
    updates = [watch_update(res.Campaign.RUNNING), watch_update(res.Campaign.COMPLETED)]
    status, out = run(
        reports.run_watch,
        {"WatchCampaign": StubStream(updates)},
        capsys,
        json_output=True,
        name="campaigns/spring",
    )
    assert (status, out) == (0, WATCH_JSON)


def test_watch_text_is_pinned(capsys: pytest.CaptureFixture[str]) -> None:
    """`watch` without a terminal prints timestamped lines, then the report, as before."""
    updates = [watch_update(res.Campaign.RUNNING), watch_update(res.Campaign.FAILED)]
    status, out = run(
        reports.run_watch,
        {"WatchCampaign": StubStream(updates)},
        capsys,
        json_output=False,
        name="campaigns/spring",
    )
    assert (status, out) == (1, WATCH_TEXT)
