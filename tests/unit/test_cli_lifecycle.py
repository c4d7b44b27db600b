"""campaignctl's lifecycle verbs, from the command line to the request they send.

The connection is a double (it records the request and answers with a fixed campaign), so only
the parsing and the request building are under test here.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from google.protobuf import message as pb_message

from campaignd.cli import campaigns, connection
from campaignd.cli import main as entry
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import resources_pb2 as res

ATTESTATION = ["--accepted-by", "alice@example.com", "--terms-version", "2024-05"]


class RecordingClient:
    """A Client double: records each call's method name and request, answers with a campaign."""

    def __init__(self) -> None:
        self.json = True
        self.calls: list[tuple[str, pb_message.Message]] = []
        self.campaigns = self

    def __getattr__(self, method: str) -> str:
        return method

    def call(self, method: str, request: pb_message.Message) -> res.Campaign:
        """Record the call; answer as the daemon would."""
        self.calls.append((method, request))
        return res.Campaign(name="campaigns/spring")


def sent(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, Any]:
    """The one call a command line makes: its method and request."""
    args = entry.build_parser().parse_args(argv)
    client = RecordingClient()
    assert args.run(cast(connection.Client, client), args) == 0
    capsys.readouterr()
    assert len(client.calls) == 1
    return client.calls[0]


def test_each_verb_sends_its_request_with_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Every lifecycle verb calls its own RPC with the name, channel, reason, etag and request id given."""
    method, request = sent(["pause", "spring", "--channel", "mail", "--reason", "why", "--etag", "e"], capsys)
    assert method == "PauseCampaign"
    assert request == api.PauseCampaignRequest(
        name="campaigns/spring", channel_id="mail", reason="why", etag="e"
    )
    method, request = sent(["retry-failed", "spring", "--request-id", "k1"], capsys)
    assert (method, request) == (
        "RetryFailedMessages",
        api.RetryFailedMessagesRequest(name="campaigns/spring", request_id="k1"),
    )
    method, request = sent(["launch", "spring", *ATTESTATION], capsys)
    assert method == "LaunchCampaign"
    assert request.attestation == res.ConsentAttestation(
        accepted_by="alice@example.com", terms_version="2024-05"
    )
    method, request = sent(["schedule", "spring", "--at", "2030-01-01T09:00:00Z", *ATTESTATION], capsys)
    assert method == "ScheduleCampaign"
    assert request.schedule_time.seconds == 1_893_488_400
    method, request = sent(["archive", "spring"], capsys)
    assert (method, request) == ("ArchiveCampaign", api.ArchiveCampaignRequest(name="campaigns/spring"))
    assert [verb.name for verb in campaigns.VERBS] == [
        "schedule",
        "unschedule",
        "launch",
        "pause",
        "resume",
        "stop",
        "restart",
        "retry-failed",
        "archive",
        "unarchive",
    ]


def test_verbs_refuse_missing_options_before_any_call() -> None:
    """schedule without --at, or launch without an attestation, is a usage error and makes no call."""
    client = RecordingClient()
    for argv, message in (
        (["schedule", "spring", *ATTESTATION], "schedule needs --at"),
        (["schedule", "spring", "--at", "+1h"], "needs a consent attestation"),
        (["launch", "spring", "--accepted-by", "a"], "needs a consent attestation"),
    ):
        args = entry.build_parser().parse_args(argv)
        with pytest.raises(connection.UsageError, match=message):
            args.run(cast(connection.Client, client), args)
    assert client.calls == []
    with pytest.raises(SystemExit):
        entry.build_parser().parse_args(["archive", "spring", "--channel", "mail"])
