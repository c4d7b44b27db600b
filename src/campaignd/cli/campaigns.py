"""Campaign commands: create, get, list, update, delete, duplicate, and the lifecycle verbs."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import message as pb_message

from campaignd.cli.arguments import (
    Command,
    _OrderedChannelSpec,
    build_channels,
    campaign_state,
    key_value,
    list_name,
    more_hint,
    name_argument,
    pages,
    paging_arguments,
    parse_json,
    resource_id,
    schedule_time,
    segment_name,
    write_arguments,
)
from campaignd.cli.connection import EXIT_OK, PROG, Client, UsageError, read_text
from campaignd.cli.render import print_json, render_campaigns, show_campaign
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import resources_pb2 as res

UPDATABLE_FIELDS = ("display_name", "labels", "audience", "time_zone", "guard", "channels")


def lifecycle_arguments(
    *, channel: bool = True, reason: bool = False, attestation: bool = False, schedule: bool = False
) -> Callable[[argparse.ArgumentParser], None]:
    """Arguments of a lifecycle verb, with the options its request has."""

    def add(parser: argparse.ArgumentParser) -> None:
        name_argument(parser)
        if channel:
            parser.add_argument(
                "--channel", default="", type=resource_id, metavar="ID", help="act on this channel only"
            )
        if schedule:
            parser.add_argument(
                "--at",
                type=schedule_time,
                metavar="TIME",
                help="when to start: ISO 8601 with an offset, or +10m, +2h, +1d",
            )
        if attestation:
            parser.add_argument(
                "--accepted-by", default="", metavar="WHO", help="who accepted the terms (required)"
            )
            parser.add_argument(
                "--terms-version",
                default="",
                metavar="V",
                help="the version of the terms accepted (required)",
            )
        if reason:
            parser.add_argument("--reason", default="", help="why, recorded in the history")
        write_arguments(parser)

    return add


def attestation_from(args: argparse.Namespace) -> res.ConsentAttestation:
    """The consent attestation; both parts are required before anything may be sent."""
    if not args.accepted_by or not args.terms_version:
        raise UsageError(
            f"{args.command} needs a consent attestation: pass --accepted-by WHO and --terms-version V "
            "(who accepted which version of the terms for this audience)"
        )
    return res.ConsentAttestation(accepted_by=args.accepted_by, terms_version=args.terms_version)


def run_get(client: Client, args: argparse.Namespace) -> int:
    """get NAME."""
    return show_campaign(
        client, client.call(client.campaigns.GetCampaign, api.GetCampaignRequest(name=args.name))
    )


def list_arguments(parser: argparse.ArgumentParser) -> None:
    """Filters and paging of `list`."""
    parser.add_argument(
        "--state", action="append", type=campaign_state, default=[], help="only this state (repeatable)"
    )
    parser.add_argument("--channel-type", default="", help="only campaigns with a channel of this type")
    parser.add_argument(
        "--label", action="append", type=key_value, default=[], metavar="K=V", help="only with this label"
    )
    parser.add_argument("--archived", action="store_true", help="include archived campaigns")
    paging_arguments(parser)


def run_list(client: Client, args: argparse.Namespace) -> int:
    """list [filters]."""

    def fetch(token: str) -> tuple[Sequence[res.Campaign], str]:
        reply = client.call(
            client.campaigns.ListCampaigns,
            api.ListCampaignsRequest(
                page_size=args.page_size,
                page_token=token,
                states=args.state,
                channel_type=args.channel_type,
                labels=dict(args.label),
                show_archived=args.archived,
            ),
        )
        return reply.campaigns, reply.next_page_token

    campaigns, token = pages(fetch, args.page_token, args.all)
    if client.json:
        print_json(api.ListCampaignsResponse(campaigns=campaigns, next_page_token=token))
    elif campaigns:
        print(render_campaigns(campaigns))
    else:
        print(f"{PROG}: no campaigns", file=sys.stderr)
    if not client.json:
        more_hint("campaigns", token)
    return EXIT_OK


def campaign_flag_arguments(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """The flags that describe a campaign, for `create` and `update`."""
    parser.add_argument("--display-name", default=None, help="human-readable name")
    parser.add_argument(
        "--label",
        action="append",
        type=key_value,
        default=[],
        metavar="K=V",
        help="set a label (repeatable)" if update else "a label (repeatable)",
    )
    if update:
        parser.add_argument(
            "--remove-label", action="append", default=[], metavar="K", help="remove a label (repeatable)"
        )
    for flag, what, parse in (
        ("--target-list", "a list to target, ID or lists/ID", list_name),
        ("--target-segment", "a segment to target, ID or segments/ID", segment_name),
        ("--exclude-list", "a list to exclude", list_name),
        ("--exclude-segment", "a segment to exclude", segment_name),
    ):
        more = "; replaces that part of the audience" if update else ""
        parser.add_argument(
            flag, action="append", type=parse, default=None, metavar="NAME", help=f"{what} (repeatable{more})"
        )
    parser.add_argument("--time-zone", default=None, help="IANA time zone for recipients without one")
    parser.add_argument(
        "--max-failure-percent",
        type=float,
        default=None,
        help="guard: pause a channel above this failure rate",
    )
    parser.add_argument(
        "--min-sends", type=int, default=None, help="guard: judge the rate after this many sends"
    )


def channel_flag_arguments(parser: argparse.ArgumentParser) -> None:
    """--channel, --content and --content-file, kept in command-line order."""
    parser.add_argument(
        "--channel",
        dest="channel_specs",
        action=_OrderedChannelSpec,
        default=[],
        metavar="TYPE:ID|JSON",
        help="a channel: TYPE:ID, or proto3 JSON of a Channel (repeatable)",
    )
    parser.add_argument(
        "--content",
        dest="channel_specs",
        action=_OrderedChannelSpec,
        metavar="K=TEXT|K:=JSON",
        help="a content field of the channel given before it (repeatable)",
    )
    parser.add_argument(
        "--content-file",
        dest="channel_specs",
        action=_OrderedChannelSpec,
        metavar="K=PATH",
        help="a content field read from a file, e.g. html=body.html",
    )


AUDIENCE_FLAGS = {
    "target_list": "target_lists",
    "target_segment": "target_segments",
    "exclude_list": "exclude_lists",
    "exclude_segment": "exclude_segments",
}
CAMPAIGN_FLAGS = (
    "display_name",
    "time_zone",
    "max_failure_percent",
    "min_sends",
    *AUDIENCE_FLAGS,
)


def create_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `create`."""
    parser.add_argument("--file", help="proto3 JSON of a Campaign ('-' for stdin), instead of the flags")
    parser.add_argument("--id", default="", type=resource_id, help="the campaign id; generated when omitted")
    campaign_flag_arguments(parser, update=False)
    channel_flag_arguments(parser)
    write_arguments(parser, etag=False)


def campaign_from_flags(args: argparse.Namespace) -> res.Campaign:
    """A Campaign from the flags of `create`."""
    if args.display_name is None:
        raise UsageError("create needs --display-name (or a campaign in --file)")
    campaign = res.Campaign(
        display_name=args.display_name,
        labels=dict(args.label),
        time_zone=args.time_zone or "",
        channels=build_channels(args.channel_specs),
    )
    for flag, field_name in AUDIENCE_FLAGS.items():
        getattr(campaign.audience, field_name).extend(getattr(args, flag) or [])
    if args.max_failure_percent is not None:
        campaign.guard.max_failure_percent = args.max_failure_percent
    if args.min_sends is not None:
        campaign.guard.min_sends = args.min_sends
    return campaign


def used_flags(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """The options among `names` that were given, spelled as on the command line."""
    return [
        "--channel/--content" if name == "channel_specs" else "--" + name.replace("_", "-")
        for name in names
        if getattr(args, name, None) not in (None, [], "", False)
    ]


def run_create(client: Client, args: argparse.Namespace) -> int:
    """create --file FILE | flags."""
    if args.file:
        conflicting = used_flags(args, [*CAMPAIGN_FLAGS, "label", "channel_specs"])
        if conflicting:
            raise UsageError(f"give either --file or campaign flags, not both ({', '.join(conflicting)})")
        campaign = parse_json(read_text(args.file, "--file"), res.Campaign(), f"campaign in {args.file}")
    else:
        campaign = campaign_from_flags(args)
    request = api.CreateCampaignRequest(campaign=campaign, campaign_id=args.id, request_id=args.request_id)
    return show_campaign(client, client.call(client.campaigns.CreateCampaign, request))


def update_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `update`."""
    name_argument(parser)
    parser.add_argument("--file", help="proto3 JSON of a Campaign; its top-level fields are replaced")
    parser.add_argument(
        "--update-mask",
        default="",
        metavar="FIELDS",
        help="with --file: comma-separated fields to replace (default: the fields in the file)",
    )
    campaign_flag_arguments(parser, update=True)
    write_arguments(parser)


def update_from_file(args: argparse.Namespace) -> tuple[res.Campaign, list[str]]:
    """The campaign in --file and the fields to replace: --update-mask, or the file's own fields."""
    text = read_text(args.file, "--file")
    campaign = parse_json(text, res.Campaign(), f"campaign in {args.file}")
    if args.update_mask:
        paths = [p.strip() for p in args.update_mask.split(",") if p.strip()]
    else:
        by_json_name = {f.json_name: f.name for f in res.Campaign.DESCRIPTOR.fields}
        keys = json.loads(text)  # parse_json succeeded, so this is a JSON object
        paths = [by_json_name.get(k, k) for k in keys if by_json_name.get(k, k) in UPDATABLE_FIELDS]
    if not paths:
        raise UsageError(f"{args.file} has none of the fields update changes: {', '.join(UPDATABLE_FIELDS)}")
    return campaign, paths


def update_from_flags(client: Client, args: argparse.Namespace) -> tuple[res.Campaign, list[str]]:
    """The changes the flags ask for. Labels, audience and guard are replaced as a whole by the API,
    so for those the campaign is read first and the flags are applied to what it has."""
    campaign = res.Campaign()
    paths: list[str] = []
    if args.display_name is not None:
        campaign.display_name = args.display_name
        paths.append("display_name")
    if args.time_zone is not None:
        campaign.time_zone = args.time_zone
        paths.append("time_zone")
    wants_labels = bool(args.label or args.remove_label)
    wants_audience = any(getattr(args, flag) is not None for flag in AUDIENCE_FLAGS)
    wants_guard = args.max_failure_percent is not None or args.min_sends is not None
    if not (paths or wants_labels or wants_audience or wants_guard):
        raise UsageError("nothing to update: give --file or at least one field flag")
    if wants_labels or wants_audience or wants_guard:
        current = client.call(client.campaigns.GetCampaign, api.GetCampaignRequest(name=args.name))
        # The changes are based on this version; the etag makes the daemon refuse them if it moved on.
        campaign.etag = current.etag
        if wants_labels:
            labels = dict(current.labels)
            labels.update(dict(args.label))
            for key in args.remove_label:
                labels.pop(key, None)
            campaign.labels.update(labels)
            paths.append("labels")
        if wants_audience:
            campaign.audience.CopyFrom(current.audience)
            for flag, field_name in AUDIENCE_FLAGS.items():
                if getattr(args, flag) is not None:
                    target = getattr(campaign.audience, field_name)
                    del target[:]
                    target.extend(getattr(args, flag))
            paths.append("audience")
        if wants_guard:
            campaign.guard.CopyFrom(current.guard)
            if args.max_failure_percent is not None:
                campaign.guard.max_failure_percent = args.max_failure_percent
            if args.min_sends is not None:
                campaign.guard.min_sends = args.min_sends
            paths.append("guard")
    return campaign, paths


def run_update(client: Client, args: argparse.Namespace) -> int:
    """update NAME --file FILE | flags."""
    if args.file:
        conflicting = used_flags(args, [*CAMPAIGN_FLAGS, "label", "remove_label"])
        if conflicting:
            raise UsageError(f"give either --file or field flags, not both ({', '.join(conflicting)})")
        campaign, paths = update_from_file(args)
    else:
        if args.update_mask:
            raise UsageError("--update-mask goes with --file; with flags the mask is the flags given")
        campaign, paths = update_from_flags(client, args)
    campaign.name = args.name
    if args.etag:
        campaign.etag = args.etag
    request = api.UpdateCampaignRequest(campaign=campaign, request_id=args.request_id)
    request.update_mask.paths.extend(paths)
    return show_campaign(client, client.call(client.campaigns.UpdateCampaign, request))


def delete_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `delete`."""
    name_argument(parser)
    parser.add_argument(
        "--force", action="store_true", help="delete a campaign that is not DRAFT, with all its data"
    )
    write_arguments(parser)


def run_delete(client: Client, args: argparse.Namespace) -> int:
    """delete NAME."""
    request = api.DeleteCampaignRequest(
        name=args.name, force=args.force, etag=args.etag, request_id=args.request_id
    )
    reply = client.call(client.campaigns.DeleteCampaign, request)
    if client.json:
        print_json(reply)
    else:
        print(f"deleted {reply.name or args.name}")
    return EXIT_OK


def duplicate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `duplicate`."""
    name_argument(parser)
    parser.add_argument("--id", default="", type=resource_id, help="id of the copy; generated when omitted")
    parser.add_argument(
        "--display-name", default="", help='display name of the copy (default "<name> (copy)")'
    )
    write_arguments(parser, etag=False)


def run_duplicate(client: Client, args: argparse.Namespace) -> int:
    """duplicate NAME."""
    request = api.DuplicateCampaignRequest(
        name=args.name, campaign_id=args.id, display_name=args.display_name, request_id=args.request_id
    )
    return show_campaign(client, client.call(client.campaigns.DuplicateCampaign, request))


@dataclass(frozen=True)
class Verb:
    """A lifecycle verb: `campaignctl VERB NAME`, one CampaignService call whose request has these
    options, answered with the campaign."""

    name: str
    help: str
    method: str
    request: Callable[..., pb_message.Message]
    channel: bool = True
    reason: bool = False
    attestation: bool = False
    schedule: bool = False

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        """NAME, the options the request has, --etag and --request-id."""
        lifecycle_arguments(
            channel=self.channel, reason=self.reason, attestation=self.attestation, schedule=self.schedule
        )(parser)

    def run(self, client: Client, args: argparse.Namespace) -> int:
        """Build the request from the options, make the call, show the campaign."""
        if self.schedule and args.at is None:
            raise UsageError("schedule needs --at TIME (ISO 8601 with an offset, or +10m, +2h, +1d)")
        fields: dict[str, Any] = {"name": args.name, "etag": args.etag, "request_id": args.request_id}
        if self.channel:
            fields["channel_id"] = args.channel
        if self.reason:
            fields["reason"] = args.reason
        if self.attestation:
            fields["attestation"] = attestation_from(args)
        request = self.request(**fields)
        if self.schedule:
            request.schedule_time.FromDatetime(args.at.astimezone(dt.UTC))  # type: ignore[attr-defined]
        return show_campaign(client, client.call(getattr(client.campaigns, self.method), request))

    def command(self) -> Command:
        """The verb as a row of the command table."""
        return Command(self.name, self.help, self.arguments, self.run)


VERBS = (
    Verb(
        "schedule",
        "DRAFT -> SCHEDULED: start by itself at --at",
        "ScheduleCampaign",
        api.ScheduleCampaignRequest,
        attestation=True,
        schedule=True,
    ),
    Verb("unschedule", "SCHEDULED -> DRAFT", "UnscheduleCampaign", api.UnscheduleCampaignRequest),
    Verb(
        "launch",
        "DRAFT or SCHEDULED -> sending now",
        "LaunchCampaign",
        api.LaunchCampaignRequest,
        attestation=True,
    ),
    Verb("pause", "QUEUED or RUNNING -> PAUSED", "PauseCampaign", api.PauseCampaignRequest, reason=True),
    Verb("resume", "PAUSED -> RUNNING", "ResumeCampaign", api.ResumeCampaignRequest, reason=True),
    Verb(
        "stop", "QUEUED, RUNNING or PAUSED -> STOPPED", "StopCampaign", api.StopCampaignRequest, reason=True
    ),
    Verb(
        "restart",
        "STOPPED -> RUNNING, where the channel type allows it",
        "RestartCampaign",
        api.RestartCampaignRequest,
        reason=True,
    ),
    Verb(
        "retry-failed",
        "COMPLETED -> RUNNING: send the FAILED messages again",
        "RetryFailedMessages",
        api.RetryFailedMessagesRequest,
    ),
    Verb(
        "archive",
        "hide a campaign that is not sending",
        "ArchiveCampaign",
        api.ArchiveCampaignRequest,
        channel=False,
    ),
    Verb(
        "unarchive",
        "show an archived campaign again",
        "UnarchiveCampaign",
        api.UnarchiveCampaignRequest,
        channel=False,
    ),
)

COMMANDS: tuple[Command, ...] = (
    Command("create", "create a campaign in DRAFT", create_arguments, run_create),
    Command("get", "show a campaign", name_argument, run_get),
    Command("list", "list campaigns, newest first", list_arguments, run_list),
    Command("update", "change a campaign's fields", update_arguments, run_update),
    Command("delete", "delete a DRAFT campaign, or any idle one with --force", delete_arguments, run_delete),
    *(verb.command() for verb in VERBS),
    Command("duplicate", "copy a campaign into a new DRAFT", duplicate_arguments, run_duplicate),
)
