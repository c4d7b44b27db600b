"""Channel commands: add-channel, test-send, preview, estimate, and the channel types available."""

from __future__ import annotations

import argparse
import sys

from campaignd.cli.arguments import (
    ID_PATTERN,
    Command,
    campaign_name,
    content_entry,
    key_value_or_usage,
    name_argument,
    no_arguments,
    parse_json,
    positive_float,
    resource_id,
    transport_share,
    write_arguments,
)
from campaignd.cli.campaigns import used_flags
from campaignd.cli.connection import EXIT_FAILURE, EXIT_OK, Client, UsageError, read_text
from campaignd.cli.render import print_json, render_audience, show_campaign, table
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import resources_pb2 as res


def add_channel_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `add-channel`."""
    name_argument(parser)
    parser.add_argument("--file", help="proto3 JSON of a Channel ('-' for stdin), instead of the flags")
    parser.add_argument("--type", default="", help="channel type, e.g. email, sms, voice")
    parser.add_argument("--id", default="", type=resource_id, help="channel id (default: the type)")
    parser.add_argument(
        "--content",
        action="append",
        default=[],
        metavar="K=TEXT|K:=JSON",
        help="a content field (repeatable)",
    )
    parser.add_argument(
        "--content-file",
        action="append",
        default=[],
        metavar="K=PATH",
        help="a content field read from a file",
    )
    parser.add_argument(
        "--transport",
        action="append",
        type=transport_share,
        default=[],
        metavar="NAME=PERCENT",
        help="send this share through a configured transport (repeatable)",
    )
    parser.add_argument("--rate-limit", type=positive_float, default=None, help="messages per second at most")
    parser.add_argument(
        "--ambiguous-sends",
        choices=["skip", "resend"],
        default=None,
        help="after a crash, a send that started unrecorded: skip it (default) or resend it",
    )
    parser.add_argument(
        "--remarket",
        default="",
        metavar="[CAMPAIGN/]CHANNEL",
        help="take the audience from an earlier channel's recipients (default campaign: this one)",
    )
    parser.add_argument(
        "--outcome",
        action="append",
        default=[],
        help="with --remarket: recipients with this outcome (repeatable)",
    )
    write_arguments(parser)


def channel_from_flags(args: argparse.Namespace) -> res.Channel:
    """A Channel from the flags of `add-channel`."""
    if not args.type:
        raise UsageError("add-channel needs --type (or a channel in --file)")
    channel_id = args.id or args.type
    if not ID_PATTERN.fullmatch(channel_id):
        raise UsageError(
            f"the channel id defaults to the type, and {channel_id!r} is not a valid id: pass --id"
        )
    channel = res.Channel(type=args.type, channel_id=channel_id)
    for text in args.content:
        key, value = content_entry(text)
        channel.content[key] = value
    for text in args.content_file:
        key, path = key_value_or_usage(text, "--content-file")
        channel.content[key] = read_text(path, "--content-file")
    channel.transports.extend(res.TransportShare(transport=t, percent=p) for t, p in args.transport)
    if args.rate_limit is not None:
        channel.rate_limit = args.rate_limit
    if args.ambiguous_sends is not None:
        channel.ambiguous_sends = res.Channel.AmbiguousSends.Value(args.ambiguous_sends.upper())
    if args.remarket:
        if not args.outcome:
            raise UsageError("--remarket needs at least one --outcome, e.g. --outcome failed")
        source_campaign, _, source_channel = args.remarket.rpartition("/")
        try:
            source = campaign_name(source_campaign) if source_campaign else args.name
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--remarket: {exc}") from None
        channel.remarketing.CopyFrom(
            res.RemarketingSource(campaign=source, channel_id=source_channel, outcomes=args.outcome)
        )
    elif args.outcome:
        raise UsageError("--outcome goes with --remarket")
    return channel


def run_add_channel(client: Client, args: argparse.Namespace) -> int:
    """add-channel NAME --type T [--id ID] [--content K=V ...] | --file FILE."""
    if args.file:
        conflicting = used_flags(
            args,
            [
                "type",
                "id",
                "content",
                "content_file",
                "transport",
                "rate_limit",
                "ambiguous_sends",
                "remarket",
            ],
        )
        if conflicting:
            raise UsageError(f"give either --file or channel flags, not both ({', '.join(conflicting)})")
        channel = parse_json(read_text(args.file, "--file"), res.Channel(), f"channel in {args.file}")
    else:
        channel = channel_from_flags(args)
    request = api.AddChannelRequest(
        name=args.name, channel=channel, etag=args.etag, request_id=args.request_id
    )
    return show_campaign(client, client.call(client.campaigns.AddChannel, request))


def test_send_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `test-send`."""
    name_argument(parser)
    parser.add_argument("--channel", required=True, type=resource_id, metavar="ID", help="the DRAFT channel")
    parser.add_argument("addresses", metavar="ADDRESS", nargs="+", help="where to send (at most 10)")


def run_test_send(client: Client, args: argparse.Namespace) -> int:
    """test-send NAME --channel ID ADDRESS...; exit 1 when any address was refused."""
    request = api.SendTestMessageRequest(name=args.name, channel_id=args.channel, addresses=args.addresses)
    reply = client.call(client.campaigns.SendTestMessage, request)
    if client.json:
        print_json(reply)
    else:
        print(
            table(
                ["ADDRESS", "ACCEPTED", "DETAIL"],
                ([r.address, "yes" if r.accepted else "no", r.detail or "-"] for r in reply.results),
            )
        )
    return EXIT_OK if all(r.accepted for r in reply.results) else EXIT_FAILURE


def preview_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `preview`."""
    name_argument(parser)
    parser.add_argument("--channel", required=True, type=resource_id, metavar="ID", help="the channel")
    parser.add_argument("recipient", metavar="ADDRESS", help="the recipient whose message is rendered")
    parser.add_argument("--raw", action="store_true", help="print the message as the provider gets it")


def run_preview(client: Client, args: argparse.Namespace) -> int:
    """preview NAME --channel ID ADDRESS."""
    request = api.PreviewMessageRequest(name=args.name, channel_id=args.channel, address=args.recipient)
    reply = client.call(client.campaigns.PreviewMessage, request)
    if client.json:
        print_json(reply)
    elif args.raw:
        sys.stdout.write(reply.data.decode("utf-8", errors="replace"))
    else:
        print(reply.summary)
        if reply.encoding:
            print(f"Encoding: {reply.encoding}, {reply.parts} part{'' if reply.parts == 1 else 's'}")
        print()
        print(reply.text)
    return EXIT_OK


def estimate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `estimate`."""
    name_argument(parser)
    parser.add_argument("--channel", default="", type=resource_id, metavar="ID", help="this channel only")


def run_estimate(client: Client, args: argparse.Namespace) -> int:
    """estimate NAME."""
    request = api.EstimateRecipientsRequest(name=args.name, channel_id=args.channel)
    reply = client.call(client.campaigns.EstimateRecipients, request)
    if client.json:
        print_json(reply)
    else:
        print(render_audience(reply.channels))
    return EXIT_OK


def run_channels(client: Client, args: argparse.Namespace) -> int:
    """channels: the channel types the daemon's plugins provide."""
    reply = client.call(client.campaigns.ListChannelTypes, api.ListChannelTypesRequest())
    if client.json:
        print_json(reply)
        return EXIT_OK
    rows = [
        [
            t.name,
            t.address,
            f"{t.distribution or t.plugin} {t.distribution_version}".strip(),
            ",".join(t.capabilities) or "-",
            "yes" if t.restartable else "no",
            t.edit_while_scheduled,
            ",".join(t.transports) or ("none configured" if t.uses_transports else "-"),
        ]
        for t in reply.channel_types
    ]
    print(
        table(["TYPE", "ADDRESS", "PLUGIN", "CAPABILITIES", "RESTART", "EDIT SCHEDULED", "TRANSPORTS"], rows)
    )
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command("add-channel", "add a DRAFT channel to a campaign", add_channel_arguments, run_add_channel),
    Command(
        "test-send", "send a DRAFT channel's content to test addresses", test_send_arguments, run_test_send
    ),
    Command("preview", "show the message one address would get", preview_arguments, run_preview),
    Command("estimate", "count the recipients a launch would queue", estimate_arguments, run_estimate),
)
# Listed after the report commands in the help, as it always was.
CHANNEL_TYPES = Command(
    "channels", "list the channel types the daemon's plugins provide", no_arguments, run_channels
)
