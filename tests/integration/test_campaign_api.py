"""CampaignService over the real daemon: the transition table, etags, replays, pages, bad input."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from campaignd import lifecycle
from campaignd.lifecycle import Allowed, ChannelState, Operation, Refused
from campaignd.testing.channels import SEMANTICS
from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import (
    ATTESTATION,
    Client,
    channel,
    ensure_list,
    expect_failure,
    force_state,
    future,
)
from tests.integration.conftest import API_ONLY, DaemonProcess, DatabaseDaemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, module_database_url: str) -> Iterator[DatabaseDaemon]:
    """One API-only daemon for the whole module, on each database in turn: these tests drive the
    lifecycle alone."""
    with DatabaseDaemon(tmp_path_factory.mktemp("api"), API_ONLY, module_database_url).running() as process:
        yield process


# -- the whole transition table ------------------------------------------------------------------

OPERATOR_OPERATIONS = sorted(lifecycle.OPERATOR_OPERATIONS, key=lambda op: op.value)


def _reach(client: Client, database_url: str, state: ChannelState, type_: str) -> pb.Campaign:
    """A one-channel campaign whose channel is in `state`."""
    campaign = client.create(channel(type_=type_))
    name = campaign.name
    steps: dict[ChannelState, list[Callable[[], Any]]] = {
        ChannelState.DRAFT: [],
        ChannelState.SCHEDULED: [lambda: client.schedule(name)],
        ChannelState.QUEUED: [lambda: client.launch(name)],
        ChannelState.PAUSED: [lambda: client.launch(name), lambda: client.pause(name)],
        ChannelState.RUNNING: [
            lambda: client.launch(name),
            lambda: client.pause(name),
            lambda: client.resume(name),
        ],
        ChannelState.STOPPED: [lambda: client.launch(name), lambda: client.stop(name)],
    }
    for step in steps.get(state, []):
        step()
    if state in (ChannelState.COMPLETED, ChannelState.FAILED):
        # Only the sending engine reaches these; put the channel there directly.
        force_state(database_url, name, state.value)
    reached = client.get(name)
    assert reached.channels[0].state == pb.Channel.State.Value(state.name)
    return reached


def _call(client: Client, op: Operation, campaign: pb.Campaign) -> Any:
    name, stub = campaign.name, client.stub
    calls: dict[Operation, Callable[[], Any]] = {
        Operation.EDIT: lambda: stub.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=pb.Campaign(name=name, channels=[channel(type_="", text="edited")]),
                update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
            )
        ),
        Operation.DELETE: lambda: stub.DeleteCampaign(svc.DeleteCampaignRequest(name=name)),
        Operation.TEST_SEND: lambda: stub.SendTestMessage(
            svc.SendTestMessageRequest(
                name=name,
                channel_id="main",
                addresses=["a@example.org" if campaign.channels[0].type == "test-email" else "+14155550100"],
            )
        ),
        Operation.ESTIMATE: lambda: stub.EstimateRecipients(svc.EstimateRecipientsRequest(name=name)),
        Operation.SCHEDULE: lambda: client.schedule(name),
        Operation.UNSCHEDULE: lambda: stub.UnscheduleCampaign(svc.UnscheduleCampaignRequest(name=name)),
        Operation.LAUNCH: lambda: client.launch(name),
        Operation.PAUSE: lambda: client.pause(name),
        Operation.RESUME: lambda: client.resume(name),
        Operation.STOP: lambda: client.stop(name),
        Operation.RESTART: lambda: stub.RestartCampaign(svc.RestartCampaignRequest(name=name)),
        Operation.RETRY_FAILED: lambda: stub.RetryFailedMessages(svc.RetryFailedMessagesRequest(name=name)),
    }
    return calls[op]()


def _expected(state: ChannelState, op: Operation, type_: str) -> lifecycle.Decision:
    if op is Operation.DELETE:
        return lifecycle.decide_delete([state], force=False)
    # The EDIT here changes channel content, which a schedule-only type refuses while SCHEDULED.
    return lifecycle.decide(state, op, SEMANTICS[type_], edit_fields=frozenset({"channels"}))


@pytest.mark.parametrize("type_", sorted(SEMANTICS))
@pytest.mark.parametrize("op", OPERATOR_OPERATIONS, ids=str)
@pytest.mark.parametrize("state", list(ChannelState), ids=str)
def test_transition_table_through_the_api(
    client: Client, module_database_url: str, state: ChannelState, op: Operation, type_: str
) -> None:
    """Each state x operation does what the lifecycle table says, or is refused with its reason, no change."""
    campaign = _reach(client, module_database_url, state, type_)
    history_before = client.history(campaign.name)
    expected = _expected(state, op, type_)
    if isinstance(expected, Refused):
        found = expect_failure(lambda: _call(client, op, campaign), grpc.StatusCode.FAILED_PRECONDITION)
        assert found.reason == expected.reason.value
        after = client.get(campaign.name)
        assert after.etag == campaign.etag
        assert after.channels[0].state == campaign.channels[0].state
        assert len(client.history(campaign.name)) == len(history_before)
        return
    assert isinstance(expected, Allowed)
    if op is Operation.TEST_SEND:
        # Sent outside the campaign: accepted, and the campaign does not change.
        reply = _call(client, op, campaign)
        assert [r.accepted for r in reply.results] == [True]
        assert client.get(campaign.name).etag == campaign.etag
        assert len(client.history(campaign.name)) == len(history_before)
        return
    _call(client, op, campaign)
    if op is Operation.DELETE:
        expect_failure(lambda: client.get(campaign.name), grpc.StatusCode.NOT_FOUND)
        return
    after = client.get(campaign.name)
    target = expected.target or state
    assert after.channels[0].state == pb.Channel.State.Value(target.name)
    assert after.state == pb.Campaign.State.Value(target.name)
    if op not in (Operation.ESTIMATE,):
        last = client.history(campaign.name)[-1]
        assert (last.from_state, last.to_state) == (
            pb.Channel.State.Value(state.name),
            pb.Channel.State.Value(target.name),
        ) or op is Operation.EDIT


# -- campaign-wide and per-channel operations ------------------------------------------------------


def test_campaign_wide_pause_acts_on_every_channel_where_legal(client: Client) -> None:
    """Pausing a campaign pauses its queued channels and leaves its draft channel alone."""
    campaign = client.create(channel("a"), channel("b", "test-sms"), channel("c", "test-voice"))
    client.launch(campaign.name, "a")
    client.launch(campaign.name, "b")
    paused = client.pause(campaign.name)
    assert [c.state for c in paused.channels] == [pb.Channel.PAUSED, pb.Channel.PAUSED, pb.Channel.DRAFT]
    assert paused.state == pb.Campaign.PAUSED
    found = expect_failure(lambda: client.pause(campaign.name), grpc.StatusCode.FAILED_PRECONDITION)
    assert found.reason == "NOTHING_TO_DO"


def test_one_channel_operation_leaves_the_others(client: Client) -> None:
    """An operation naming a channel changes only that channel; the campaign state is derived."""
    campaign = client.create(channel("a"), channel("b"))
    launched = client.launch(campaign.name, "b")
    assert [c.state for c in launched.channels] == [pb.Channel.DRAFT, pb.Channel.QUEUED]
    assert launched.state == pb.Campaign.QUEUED
    found = expect_failure(lambda: client.pause(campaign.name, "nope"), grpc.StatusCode.NOT_FOUND)
    assert "channels/nope" in found.message


def test_sms_like_channel_restarts_and_email_like_does_not(client: Client) -> None:
    """A restartable channel type restarts from STOPPED; a final one is refused with its reason."""
    campaign = client.create(channel("mail"), channel("text", "test-sms"))
    client.launch(campaign.name)
    client.stop(campaign.name)
    restarted = client.stub.RestartCampaign(svc.RestartCampaignRequest(name=campaign.name))
    assert [c.state for c in restarted.channels] == [pb.Channel.STOPPED, pb.Channel.RUNNING]
    found = expect_failure(
        lambda: client.stub.RestartCampaign(
            svc.RestartCampaignRequest(name=campaign.name, channel_id="mail")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert found.reason == "RESTART_NOT_SUPPORTED"


def test_editing_a_scheduled_email_like_channel_returns_it_to_draft(client: Client) -> None:
    """An edit of a SCHEDULED channel whose type returns to DRAFT first does so, recorded in history."""
    campaign = client.schedule(client.create().name)
    updated = client.stub.UpdateCampaign(
        svc.UpdateCampaignRequest(
            campaign=pb.Campaign(name=campaign.name, channels=[channel(type_="", text="new")]),
            update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
        )
    )
    assert updated.channels[0].state == pb.Channel.DRAFT
    assert updated.channels[0].content.fields["text"].string_value == "new"
    assert not updated.channels[0].HasField("schedule_time")
    assert any(
        e.operation == "edit" and e.to_state == pb.Channel.DRAFT for e in client.history(campaign.name)
    )


def test_descriptive_fields_change_in_any_state(client: Client) -> None:
    """display_name and labels may change while a campaign runs; its audience may not."""
    campaign = client.launch(client.create().name)
    renamed = client.stub.UpdateCampaign(
        svc.UpdateCampaignRequest(
            campaign=pb.Campaign(name=campaign.name, display_name="Renamed", labels={"k": "v"}),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name", "labels"]),
        )
    )
    assert (renamed.display_name, dict(renamed.labels)) == ("Renamed", {"k": "v"})
    found = expect_failure(
        lambda: client.stub.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=pb.Campaign(name=campaign.name, audience=pb.Audience(target_lists=["lists/y"])),
                update_mask=field_mask_pb2.FieldMask(paths=["audience"]),
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert found.reason == "EDIT_NOT_ALLOWED"


# -- launch -------------------------------------------------------------------------------------------


def test_launch_without_attestation_is_refused_and_runs_nothing(client: Client) -> None:
    """LaunchCampaign without a consent attestation is INVALID_ARGUMENT and the campaign stays DRAFT."""
    campaign = client.create()
    found = expect_failure(
        lambda: client.stub.LaunchCampaign(svc.LaunchCampaignRequest(name=campaign.name)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert found.fields == ["attestation"]
    assert client.get(campaign.name).state == pb.Campaign.DRAFT


def test_launch_reports_every_problem_at_once(client: Client) -> None:
    """A campaign missing its audience and a channel's required text lists both problems."""
    campaign = client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Incomplete",
                channels=[pb.Channel(channel_id="a", type="test-email"), channel("b", text="invalid")],
            )
        )
    )
    found = expect_failure(lambda: client.launch(campaign.name), grpc.StatusCode.FAILED_PRECONDITION)
    assert found.reason == "VALIDATION_FAILED"
    assert sorted(found.fields) == [
        "campaign.audience",
        "campaign.audience",
        "campaign.channels[a].content.text",
        "campaign.channels[b].content.text",
    ]
    assert client.get(campaign.name).etag == campaign.etag


def test_launch_records_the_attestation(client: Client) -> None:
    """The attestation given at launch is stored with the campaign, stamped by the server."""
    launched = client.launch(client.create().name)
    assert launched.attestation.accepted_by == ATTESTATION.accepted_by
    assert launched.attestation.terms_version == ATTESTATION.terms_version
    assert launched.attestation.accept_time.seconds > 0


# -- etags and request ids ---------------------------------------------------------------------------


def test_stale_etag_is_aborted_and_changes_nothing(client: Client) -> None:
    """An update or lifecycle call with an old etag is ABORTED/ETAG_MISMATCH; the current one works."""
    campaign = client.create()
    renamed = client.stub.UpdateCampaign(
        svc.UpdateCampaignRequest(
            campaign=pb.Campaign(name=campaign.name, display_name="Second", etag=campaign.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert renamed.etag != campaign.etag
    found = expect_failure(
        lambda: client.stub.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=pb.Campaign(name=campaign.name, display_name="Third", etag=campaign.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    assert found.reason == "ETAG_MISMATCH"
    expect_failure(lambda: client.launch(campaign.name, etag=campaign.etag), grpc.StatusCode.ABORTED)
    assert client.get(campaign.name).display_name == "Second"
    assert client.launch(campaign.name, etag=renamed.etag).state == pb.Campaign.QUEUED


def test_request_id_replay_returns_the_first_result(client: Client) -> None:
    """A repeated request_id returns the first answer and does not act again."""
    campaign = client.launch(client.create().name)
    first = client.pause(campaign.name, request_id="pause-1")
    client.resume(campaign.name)
    replay = client.pause(campaign.name, request_id="pause-1")
    assert replay == first
    assert client.get(campaign.name).state == pb.Campaign.RUNNING
    assert [e.operation for e in client.history(campaign.name)].count("pause") == 1


def test_concurrent_replays_act_once(client: Client, daemon: DaemonProcess) -> None:
    """Twenty clients sending one CreateCampaign request_id at once create one campaign."""
    results: list[pb.Campaign] = []

    def create() -> None:
        with daemon.channel() as own:
            results.append(
                Client(own).stub.CreateCampaign(
                    svc.CreateCampaignRequest(
                        request_id="create-race",
                        campaign=pb.Campaign(
                            display_name="Race", labels={"race": "yes"}, channels=[channel()]
                        ),
                    )
                )
            )

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 20
    assert len({r.name for r in results}) == 1
    assert client.count(labels={"race": "yes"}) == 1


# -- lists ------------------------------------------------------------------------------------------


def test_pagination_walks_every_campaign_once_newest_first(client: Client) -> None:
    """Pages of 3 over 7 campaigns return each once, newest first; a token is bound to its filters."""
    made = [client.create(labels={"page": "walk"}).name for _ in range(7)]
    seen: list[str] = []
    token = ""
    for _ in range(4):
        page = client.stub.ListCampaigns(
            svc.ListCampaignsRequest(page_size=3, page_token=token, labels={"page": "walk"})
        )
        seen.extend(c.name for c in page.campaigns)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))
    first = client.stub.ListCampaigns(svc.ListCampaignsRequest(page_size=3, labels={"page": "walk"}))
    found = expect_failure(
        lambda: client.stub.ListCampaigns(
            svc.ListCampaignsRequest(page_size=3, page_token=first.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert found.fields == ["page_token"]


def test_list_filters_by_state_type_and_archive(client: Client) -> None:
    """ListCampaigns filters on derived state and channel type, and hides archived campaigns unless asked."""
    label = {"filter": "yes"}
    queued = client.launch(client.create(channel(type_="test-voice"), labels=label).name)
    draft = client.create(labels=label)

    def names(**kw: Any) -> list[str]:
        return [
            c.name for c in client.stub.ListCampaigns(svc.ListCampaignsRequest(labels=label, **kw)).campaigns
        ]

    assert names(states=[pb.Campaign.QUEUED]) == [queued.name]
    assert names(channel_type="test-voice") == [queued.name]
    client.stub.ArchiveCampaign(svc.ArchiveCampaignRequest(name=draft.name))
    assert draft.name not in names()
    assert draft.name in names(show_archived=True)
    found = expect_failure(
        lambda: client.stub.ArchiveCampaign(svc.ArchiveCampaignRequest(name=queued.name)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert found.reason == "CAMPAIGN_ACTIVE"


def test_duplicate_makes_a_draft_copy(client: Client) -> None:
    """DuplicateCampaign copies audience and channels into a new DRAFT campaign without the attestation."""
    source = client.stop(client.launch(client.create(channel("a"), channel("b", "test-sms")).name).name)
    copy = client.stub.DuplicateCampaign(
        svc.DuplicateCampaignRequest(name=source.name, campaign_id="dup-copy")
    )
    assert copy.name == "campaigns/dup-copy"
    assert copy.display_name == f"{source.display_name} (copy)"
    assert [(c.channel_id, c.type, c.state) for c in copy.channels] == [
        ("a", "test-email", pb.Channel.DRAFT),
        ("b", "test-sms", pb.Channel.DRAFT),
    ]
    assert not copy.HasField("attestation")
    assert copy.audience == source.audience


def test_delete_needs_force_after_draft_and_is_refused_while_sending(client: Client) -> None:
    """A stopped campaign is deleted only with force; a queued one not even with force."""
    stopped = client.stop(client.launch(client.create().name).name)
    found = expect_failure(
        lambda: client.stub.DeleteCampaign(svc.DeleteCampaignRequest(name=stopped.name)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert found.reason == "FORCE_REQUIRED"
    client.stub.DeleteCampaign(svc.DeleteCampaignRequest(name=stopped.name, force=True))
    expect_failure(lambda: client.get(stopped.name), grpc.StatusCode.NOT_FOUND)
    queued = client.launch(client.create().name)
    found = expect_failure(
        lambda: client.stub.DeleteCampaign(svc.DeleteCampaignRequest(name=queued.name, force=True)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert found.reason == "CAMPAIGN_ACTIVE"


def test_add_channel_and_remarketing_source(client: Client) -> None:
    """AddChannel adds a DRAFT channel; a remarketing channel must name an existing source channel."""
    campaign = client.launch(client.create().name)
    source = pb.RemarketingSource(campaign=campaign.name, channel_id="main", outcomes=["failed"])
    added = client.stub.AddChannel(
        svc.AddChannelRequest(
            name=campaign.name,
            channel=pb.Channel(
                channel_id="again", type="test-sms", content=channel().content, remarketing=source
            ),
        )
    )
    assert [(c.channel_id, c.state) for c in added.channels] == [
        ("main", pb.Channel.QUEUED),
        ("again", pb.Channel.DRAFT),
    ]
    assert added.channels[1].remarketing.outcomes == ["failed"]
    missing = pb.RemarketingSource(campaign=campaign.name, channel_id="ghost", outcomes=["failed"])
    found = expect_failure(
        lambda: client.stub.AddChannel(
            svc.AddChannelRequest(
                name=campaign.name, channel=pb.Channel(channel_id="x", type="test-sms", remarketing=missing)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert found.fields == ["channel.remarketing"]


# -- bad input --------------------------------------------------------------------------------------

LONG = "x" * 1001
BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("bad id", {"campaign_id": "Bad_ID"}, "campaign_id"),
    ("empty name", {"display_name": ""}, "campaign.display_name"),
    ("long name", {"display_name": "n" * 201}, "campaign.display_name"),
    ("label key", {"labels": {"Bad Key": "v"}}, "campaign.labels[Bad Key]"),
    ("list name", {"audience": pb.Audience(target_lists=["nope"])}, "campaign.audience.target_lists[0]"),
    ("time zone", {"time_zone": "Mars/Olympus"}, "campaign.time_zone"),
    ("type", {"channels": [pb.Channel(channel_id="a", type="fax")]}, "campaign.channels[0].type"),
    (
        "channel id",
        {"channels": [pb.Channel(channel_id="", type="test-email")]},
        "campaign.channels[0].channel_id",
    ),
    ("duplicate ids", {"channels": [channel("a"), channel("a")]}, "campaign.channels[1].channel_id"),
    ("long text", {"channels": [channel(text=LONG)]}, "campaign.channels[0].content.text"),
    (
        "percent",
        {
            "channels": [
                pb.Channel(
                    channel_id="a",
                    type="test-email",
                    transports=[pb.TransportShare(transport="t", percent=0)],
                )
            ]
        },
        "campaign.channels[0].transports[0].percent",
    ),
    (
        "window",
        {
            "channels": [
                pb.Channel(
                    channel_id="a",
                    type="test-email",
                    send_window=pb.SendWindow(start_time="25:00", end_time="08:00"),
                )
            ]
        },
        "campaign.channels[0].send_window.start_time",
    ),
    ("request id", {"request_id": "has spaces"}, "request_id"),
    ("guard", {"guard": pb.GuardSettings(max_failure_percent=101)}, "campaign.guard.max_failure_percent"),
]


@pytest.mark.parametrize(("case", "fields", "path"), BAD_CREATES, ids=[c[0] for c in BAD_CREATES])
def test_bad_create_names_the_field_and_writes_nothing(
    client: Client, case: str, fields: dict[str, Any], path: str
) -> None:
    """A bad CreateCampaign is INVALID_ARGUMENT naming the offending field, and no campaign appears."""
    before = client.count()
    fields = dict(fields)
    request_fields = {k: fields.pop(k) for k in ("campaign_id", "request_id") if k in fields}
    campaign = pb.Campaign(display_name=fields.pop("display_name", "Bad"), **fields)
    found = expect_failure(
        lambda: client.stub.CreateCampaign(svc.CreateCampaignRequest(campaign=campaign, **request_fields)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert path in found.fields, found
    assert client.count() == before


def _bad_calls(client: Client, name: str) -> list[tuple[str, Callable[[], Any], str]]:
    stub = client.stub
    return [
        ("empty name", lambda: stub.GetCampaign(svc.GetCampaignRequest(name="")), "name"),
        ("bad name", lambda: stub.GetCampaign(svc.GetCampaignRequest(name="campaigns/UPPER")), "name"),
        ("other collection", lambda: stub.GetCampaign(svc.GetCampaignRequest(name="lists/x")), "name"),
        (
            "unknown state",
            lambda: stub.ListCampaigns(svc.ListCampaignsRequest(states=[pb.Campaign.State.ValueType(99)])),
            "states[0]",
        ),
        ("negative page", lambda: stub.ListCampaigns(svc.ListCampaignsRequest(page_size=-1)), "page_size"),
        (
            "garbage token",
            lambda: stub.ListCampaigns(svc.ListCampaignsRequest(page_token="%%%")),
            "page_token",
        ),
        (
            "no mask",
            lambda: stub.UpdateCampaign(
                svc.UpdateCampaignRequest(campaign=pb.Campaign(name=name, display_name="x"))
            ),
            "update_mask",
        ),
        (
            "output-only mask",
            lambda: stub.UpdateCampaign(
                svc.UpdateCampaignRequest(
                    campaign=pb.Campaign(name=name), update_mask=field_mask_pb2.FieldMask(paths=["state"])
                )
            ),
            "update_mask.paths[0]",
        ),
        (
            "empty accepted_by",
            lambda: stub.LaunchCampaign(
                svc.LaunchCampaignRequest(name=name, attestation=pb.ConsentAttestation(terms_version="v1"))
            ),
            "attestation.accepted_by",
        ),
        (
            "past schedule",
            lambda: stub.ScheduleCampaign(
                svc.ScheduleCampaignRequest(name=name, schedule_time=future(-5), attestation=ATTESTATION)
            ),
            "schedule_time",
        ),
        ("long reason", lambda: client.pause(name, reason="r" * 1001), "reason"),
        ("bad channel id", lambda: client.pause(name, "BAD"), "channel_id"),
        ("long etag", lambda: client.pause(name, etag="e" * 101), "etag"),
        (
            "too many test addresses",
            lambda: stub.SendTestMessage(
                svc.SendTestMessageRequest(name=name, channel_id="main", addresses=["a@b.c"] * 11)
            ),
            "addresses",
        ),
        (
            "bad history parent",
            lambda: stub.ListCampaignHistory(svc.ListCampaignHistoryRequest(parent="x")),
            "parent",
        ),
    ]


def test_bad_requests_name_the_field_and_change_nothing(client: Client) -> None:
    """Malformed names, unknown enums, oversized strings, missing fields: INVALID_ARGUMENT, no change."""
    campaign = client.create()
    for case, call, path in _bad_calls(client, campaign.name):
        found = expect_failure(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert path in found.fields, (case, found)
    after = client.get(campaign.name)
    assert after.etag == campaign.etag
    assert len(client.history(campaign.name)) == 1


def test_oversized_content_is_refused(client: Client) -> None:
    """Channel content over 256 KiB is refused before anything is stored."""
    big = channel(text="x")
    big.content.update({"note": "y" * 300_000})
    found = expect_failure(lambda: client.create(big), grpc.StatusCode.INVALID_ARGUMENT)
    assert "campaign.channels[0].content" in found.fields


# -- watch ------------------------------------------------------------------------------------------


def test_watchers_get_a_snapshot_then_every_change(client: Client, daemon: DaemonProcess) -> None:
    """Five watchers each get a snapshot first, then see the pause; a reconnect gets a snapshot again."""
    campaign = client.launch(client.create().name)
    seen: dict[int, list[svc.WatchCampaignResponse]] = {i: [] for i in range(5)}
    ready = threading.Barrier(6, timeout=20)

    def watch(index: int) -> None:
        with daemon.channel() as own:
            stream = Client(own).stub.WatchCampaign(svc.WatchCampaignRequest(name=campaign.name), timeout=20)
            for update in stream:
                seen[index].append(update)
                if len(seen[index]) == 1:
                    ready.wait()
                if update.campaign.state == pb.Campaign.PAUSED:
                    stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
                    return

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    ready.wait()
    client.pause(campaign.name)
    for thread in threads:
        thread.join(20)
    for updates in seen.values():
        assert updates[0].snapshot
        assert updates[0].campaign.state == pb.Campaign.QUEUED
        assert updates[-1].campaign.state == pb.Campaign.PAUSED
        assert not updates[-1].snapshot
    again = next(iter(client.stub.WatchCampaign(svc.WatchCampaignRequest(name=campaign.name), timeout=10)))
    assert again.snapshot
    assert again.campaign.state == pb.Campaign.PAUSED


def test_history_pages(client: Client) -> None:
    """History comes back oldest first across pages with increasing sequence numbers."""
    campaign = client.launch(client.create().name)
    for _ in range(3):
        client.pause(campaign.name)
        client.resume(campaign.name)
    events: list[pb.CampaignEvent] = []
    token = ""
    while True:
        page = client.stub.ListCampaignHistory(
            svc.ListCampaignHistoryRequest(parent=campaign.name, page_size=2, page_token=token)
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            break
    assert [e.operation for e in events] == [
        "create",
        "launch",
        *itertools.chain.from_iterable([["pause", "resume"]] * 3),
    ]
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert all(e.actor == "local" and e.cause == pb.CampaignEvent.OPERATOR for e in events)


@pytest.mark.slow
def test_list_messages_pages_exactly_the_selection_in_id_order(
    client: Client, module_database_url: str
) -> None:
    """ListMessages pages through exactly the messages a channel, state and reason selection
    names, in id order, across channels and states, at any page size."""
    ensure_list(client.contacts, "lm")
    rows = [
        cs.ContactRow(contact_id=f"lm{i}", email=f"lm{i}@example.org", phone=f"+1202555{i:04d}")
        for i in range(40)
    ]
    client.contacts.ImportContacts(
        iter(
            [
                cs.ImportContactsRequest(options=cs.ImportOptions(list="lists/lm")),
                cs.ImportContactsRequest(rows=rows),
            ]
        )
    )
    audience = pb.Audience(target_lists=["lists/lm"])
    created = client.create(channel("email"), channel("sms", "test-sms"), audience=audience)
    campaign_id = created.name.removeprefix("campaigns/")
    client.launch(created.name)
    # Spread the messages over every state and two reasons behind the (API-only) daemon's back.
    states = [s.value for s in lifecycle.MessageState]
    engine = sa.create_engine(module_database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        ids = conn.scalars(
            sa.text("SELECT id FROM messages WHERE campaign_id = :c ORDER BY id"), {"c": campaign_id}
        ).all()
        for n, id_ in enumerate(ids):
            conn.execute(
                sa.text("UPDATE messages SET state = :s, reason = :r WHERE id = :id"),
                {"s": states[n * 7 % len(states)], "r": "late" if n % 3 else None, "id": id_},
            )
        stored = conn.execute(
            sa.text("SELECT id, channel_id, state, reason FROM messages WHERE campaign_id = :c"),
            {"c": campaign_id},
        ).all()
    engine.dispose()
    assert len(stored) == 80

    def listed(channel_id: str, wanted: list[str], reason: str, size: int) -> list[int]:
        found: list[int] = []
        token = ""
        while True:
            page = client.stub.ListMessages(
                svc.ListMessagesRequest(
                    parent=created.name,
                    channel_id=channel_id,
                    states=[pb.Message.State.Value(s.upper()) for s in wanted],
                    reason=reason,
                    page_size=size,
                    page_token=token,
                )
            )
            found += [int(m.name.rsplit("/", 1)[1]) for m in page.messages]
            token = page.next_page_token
            if not token:
                return found

    for channel_id, wanted, reason, size in itertools.product(
        ["", "sms"], [[], ["sent", "failed", "cancelled"]], ["", "late"], [3, 100]
    ):
        expected = sorted(
            r.id
            for r in stored
            if channel_id in ("", r.channel_id)
            and (not wanted or r.state in wanted)
            and reason in ("", r.reason)
        )
        assert listed(channel_id, wanted, reason, size) == expected, (channel_id, wanted, reason, size)
