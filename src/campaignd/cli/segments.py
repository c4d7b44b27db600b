"""`segments` commands: saved contact filters."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from campaignd.cli.arguments import (
    Command,
    Group,
    pages,
    paging_arguments,
    resource_id,
    segment_name,
)
from campaignd.cli.connection import Client, UsageError
from campaignd.cli.render import render_segment, render_segments, show, show_deleted, show_page
from campaignd.v1 import contact_service_pb2 as capi

# --- segments


def segment_argument(parser: argparse.ArgumentParser) -> None:
    """The SEGMENT positional."""
    parser.add_argument("name", metavar="SEGMENT", type=segment_name, help="ID or segments/ID")


def segments_create_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `segments create`."""
    parser.add_argument(
        "id", nargs="?", default="", type=resource_id, metavar="ID", help="generated when omitted"
    )
    parser.add_argument("--display-name", default="", help="human-readable name (default: the id)")
    parser.add_argument(
        "--filter", required=True, metavar="EXPR", help="the filter, e.g. 'attributes.plan = \"pro\"'"
    )


def run_segments_create(client: Client, args: argparse.Namespace) -> int:
    """segments create [ID] --filter EXPR [--display-name N]."""
    display_name = args.display_name or args.id
    if not display_name:
        raise UsageError("segments create needs an ID or --display-name")
    request = capi.CreateSegmentRequest(
        segment=capi.Segment(display_name=display_name, filter=args.filter), segment_id=args.id
    )
    return show(client, client.call(client.contacts.CreateSegment, request), render_segment)


def run_segments_get(client: Client, args: argparse.Namespace) -> int:
    """segments get SEGMENT."""
    segment = client.call(client.contacts.GetSegment, capi.GetSegmentRequest(name=args.name))
    return show(client, segment, render_segment)


def run_segments_list(client: Client, args: argparse.Namespace) -> int:
    """segments list."""

    def fetch(token: str) -> tuple[Sequence[capi.Segment], str]:
        reply = client.call(
            client.contacts.ListSegments, capi.ListSegmentsRequest(page_size=args.page_size, page_token=token)
        )
        return reply.segments, reply.next_page_token

    segments, token = pages(fetch, args.page_token, args.all)
    reply = capi.ListSegmentsResponse(segments=segments, next_page_token=token)
    return show_page(client, "segments", reply, segments, token, render_segments(segments))


def run_segments_delete(client: Client, args: argparse.Namespace) -> int:
    """segments delete SEGMENT."""
    reply = client.call(client.contacts.DeleteSegment, capi.DeleteSegmentRequest(name=args.name))
    return show_deleted(client, reply, args.name)


GROUP = Group(
    "segments",
    "saved contact filters, resolved at launch",
    (
        Command("create", "create a segment", segments_create_arguments, run_segments_create),
        Command("get", "show a segment", segment_argument, run_segments_get),
        Command("list", "list the segments", paging_arguments, run_segments_list),
        Command("delete", "delete a segment", segment_argument, run_segments_delete),
    ),
)
