"""`suppressions` commands: addresses that must never be contacted."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

import grpc

from campaignd.cli.arguments import (
    Command,
    Group,
    batched,
    pages,
    paging_arguments,
    read_words,
    suppression_name,
    suppression_reason,
)
from campaignd.cli.connection import EXIT_OK, PROG, Client, UsageError
from campaignd.cli.lists import MEMBERS_PER_CALL
from campaignd.cli.render import print_json, render_suppressions, show_deleted, show_page
from campaignd.v1 import contact_service_pb2 as capi

# --- suppressions


EXIT_SUPPRESSED = 3  # `suppressions check`: the address must not be contacted


def suppressions_add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `suppressions add`."""
    parser.add_argument("addresses", nargs="*", metavar="ADDRESS", help="email addresses or phone numbers")
    parser.add_argument(
        "--file", default=None, help="read addresses from FILE, one per line ('-' for stdin; # comments)"
    )
    parser.add_argument(
        "--reason",
        type=suppression_reason,
        default=capi.Suppression.MANUAL,
        help="unsubscribed, bounced, complained, opted_out or manual (manual)",
    )
    parser.add_argument(
        "--channel-type", default="", metavar="T", help="only this channel type (default: every one)"
    )
    parser.add_argument(
        "--source",
        default=None,
        help="where it came from (default: import:FILE with --file, else the daemon's)",
    )


def run_suppressions_add(client: Client, args: argparse.Namespace) -> int:
    """suppressions add ADDRESS... | --file FILE: in calls of at most 10,000."""
    addresses = list(args.addresses)
    if args.file:
        addresses += read_words(args.file, "--file")
    if not addresses:
        raise UsageError("no addresses given: pass ADDRESS... or --file FILE")
    source = args.source
    if source is None:
        source = f"import:{pathlib.Path(args.file).name}" if args.file and args.file != "-" else ""
    total = capi.AddSuppressionsResponse()
    try:
        for batch in batched(addresses, MEMBERS_PER_CALL):
            request = capi.AddSuppressionsRequest(
                suppressions=[
                    capi.Suppression(
                        address=a, channel_type=args.channel_type, reason=args.reason, source=source
                    )
                    for a in batch
                ]
            )
            reply = client.call(client.contacts.AddSuppressions, request)
            total.added += reply.added
            total.already_suppressed += reply.already_suppressed
    except grpc.RpcError:
        if total.added or total.already_suppressed:
            print(f"{PROG}: {total.added} suppressions were added before the error", file=sys.stderr)
        raise
    if client.json:
        print_json(total)
    else:
        print(f"added {total.added}, already suppressed {total.already_suppressed}")
    return EXIT_OK


def suppressions_remove_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `suppressions remove`."""
    parser.add_argument("name", metavar="SUPPRESSION", type=suppression_name, help="ID or suppressions/ID")


def run_suppressions_remove(client: Client, args: argparse.Namespace) -> int:
    """suppressions remove SUPPRESSION."""
    reply = client.call(client.contacts.RemoveSuppression, capi.RemoveSuppressionRequest(name=args.name))
    return show_deleted(client, reply, args.name, "removed")


def suppressions_list_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `suppressions list`."""
    parser.add_argument(
        "--address", dest="filter_address", default="", metavar="ADDRESS", help="only this address"
    )
    parser.add_argument("--channel-type", default="", metavar="T", help="only this channel type")
    parser.add_argument(
        "--reason",
        type=suppression_reason,
        default=capi.Suppression.REASON_UNSPECIFIED,
        help="only this reason",
    )
    paging_arguments(parser)


def run_suppressions_list(client: Client, args: argparse.Namespace) -> int:
    """suppressions list [--address A] [--channel-type T] [--reason R]."""

    def fetch(token: str) -> tuple[Sequence[capi.Suppression], str]:
        reply = client.call(
            client.contacts.ListSuppressions,
            capi.ListSuppressionsRequest(
                address=args.filter_address,
                channel_type=args.channel_type,
                reason=args.reason,
                page_size=args.page_size,
                page_token=token,
            ),
        )
        return reply.suppressions, reply.next_page_token

    suppressions, token = pages(fetch, args.page_token, args.all)
    reply = capi.ListSuppressionsResponse(suppressions=suppressions, next_page_token=token)
    return show_page(client, "suppressions", reply, suppressions, token, render_suppressions(suppressions))


def suppressions_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `suppressions check`."""
    parser.add_argument("check_address", metavar="ADDRESS", help="an email address or phone number")
    parser.add_argument("--channel-type", required=True, metavar="T", help="the channel type, e.g. email")


def run_suppressions_check(client: Client, args: argparse.Namespace) -> int:
    """suppressions check ADDRESS --channel-type T: exit 0 when it may be contacted, 3 when suppressed."""
    request = capi.CheckSuppressionRequest(address=args.check_address, channel_type=args.channel_type)
    reply = client.call(client.contacts.CheckSuppression, request)
    if client.json:
        print_json(reply)
    elif reply.suppressed:
        print(render_suppressions(reply.suppressions))
    else:
        print("not suppressed")
    return EXIT_SUPPRESSED if reply.suppressed else EXIT_OK


GROUP = Group(
    "suppressions",
    "addresses that must never be contacted",
    (
        Command("add", "suppress addresses", suppressions_add_arguments, run_suppressions_add),
        Command("remove", "remove one suppression", suppressions_remove_arguments, run_suppressions_remove),
        Command(
            "list", "list suppressions, newest first", suppressions_list_arguments, run_suppressions_list
        ),
        Command(
            "check",
            "say whether an address may be contacted (exit 3 when suppressed)",
            suppressions_check_arguments,
            run_suppressions_check,
        ),
    ),
)
