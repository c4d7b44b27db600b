"""Reports and progress: report, messages, history, and the live progress of watch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence

from campaignd.cli.arguments import (
    Command,
    message_state,
    more_hint,
    name_argument,
    pages,
    paging_arguments,
    resource_id,
)
from campaignd.cli.connection import EXIT_FAILURE, EXIT_OK, PROG, Client
from campaignd.cli.render import (
    print_json,
    progress_bar,
    progress_line,
    render_history,
    render_messages,
    render_report,
    to_dict,
)
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import resources_pb2 as res

TERMINAL_STATES = frozenset({res.Campaign.COMPLETED, res.Campaign.STOPPED, res.Campaign.FAILED})


def run_report(client: Client, args: argparse.Namespace) -> int:
    """report NAME."""
    report = client.call(client.campaigns.GetCampaignReport, api.GetCampaignReportRequest(name=args.name))
    if client.json:
        print_json(report)
    else:
        print(render_report(report))
    return EXIT_OK


def messages_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `messages`."""
    name_argument(parser)
    parser.add_argument("--channel", default="", type=resource_id, metavar="ID", help="this channel only")
    parser.add_argument(
        "--state", action="append", type=message_state, default=[], help="only this state (repeatable)"
    )
    parser.add_argument("--reason", default="", help="only messages failed with this reason")
    paging_arguments(parser)


def run_messages(client: Client, args: argparse.Namespace) -> int:
    """messages NAME [filters]."""

    def fetch(token: str) -> tuple[Sequence[res.Message], str]:
        reply = client.call(
            client.campaigns.ListMessages,
            api.ListMessagesRequest(
                parent=args.name,
                channel_id=args.channel,
                states=args.state,
                reason=args.reason,
                page_size=args.page_size,
                page_token=token,
            ),
        )
        return reply.messages, reply.next_page_token

    messages, token = pages(fetch, args.page_token, args.all)
    if client.json:
        print_json(api.ListMessagesResponse(messages=messages, next_page_token=token))
        return EXIT_OK
    if messages:
        print(render_messages(messages))
    else:
        print(f"{PROG}: no messages", file=sys.stderr)
    more_hint("messages", token)
    return EXIT_OK


def history_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `history`."""
    name_argument(parser)
    paging_arguments(parser)


def run_history(client: Client, args: argparse.Namespace) -> int:
    """history NAME."""

    def fetch(token: str) -> tuple[Sequence[res.CampaignEvent], str]:
        reply = client.call(
            client.campaigns.ListCampaignHistory,
            api.ListCampaignHistoryRequest(parent=args.name, page_size=args.page_size, page_token=token),
        )
        return reply.events, reply.next_page_token

    events, token = pages(fetch, args.page_token, args.all)
    if client.json:
        print_json(api.ListCampaignHistoryResponse(events=events, next_page_token=token))
        return EXIT_OK
    if events:
        print(render_history(events))
    else:
        print(f"{PROG}: no history", file=sys.stderr)
    more_hint("events", token)
    return EXIT_OK


def watch_updates(client: Client, name: str) -> Iterator[api.WatchCampaignResponse]:
    """The updates of WatchCampaign; the stream is cancelled when the caller stops reading."""
    call = client.campaigns.WatchCampaign(api.WatchCampaignRequest(name=name))
    try:
        yield from call
    finally:
        call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs


def run_watch(client: Client, args: argparse.Namespace) -> int:
    """watch NAME: live progress until COMPLETED, STOPPED or FAILED; exit 1 when FAILED."""
    tty = sys.stdout.isatty() and not client.json
    # On a terminal one line is redrawn in place; otherwise each update is a line of its own.
    live = None
    if tty:
        from rich.console import Console
        from rich.live import Live

        live = Live(console=Console(highlight=False), auto_refresh=False)
    try:
        if live is not None:
            live.start()
        for update in watch_updates(client, args.name):
            if client.json:
                print(json.dumps(to_dict(update)), flush=True)
            elif live is not None:
                live.update(progress_bar(update), refresh=True)
            else:
                print(progress_line(update), flush=True)
            state = update.campaign.state or update.report.state
            if state in TERMINAL_STATES:
                if live is not None:
                    live.stop()
                if not client.json:
                    print()
                    print(render_report(update.report))
                return EXIT_FAILURE if state == res.Campaign.FAILED else EXIT_OK
    finally:
        if live is not None:
            live.stop()
    print(f"{PROG}: the daemon ended the watch before the campaign finished", file=sys.stderr)
    return EXIT_FAILURE


COMMANDS: tuple[Command, ...] = (
    Command("report", "show a campaign's counters", name_argument, run_report),
    Command("messages", "list a campaign's messages", messages_arguments, run_messages),
    Command("history", "list a campaign's transitions, oldest first", history_arguments, run_history),
    Command("watch", "show live progress until the campaign ends", name_argument, run_watch),
)
