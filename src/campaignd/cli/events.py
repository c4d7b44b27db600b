"""`campaignctl events`: recording delivery and engagement events about sent messages."""

from __future__ import annotations

import argparse

from campaignd.cli.arguments import Command, Group, parse_json
from campaignd.cli.connection import EXIT_FAILURE, EXIT_OK, Client, UsageError, read_text
from campaignd.cli.render import print_json, table
from campaignd.v1 import campaign_service_pb2 as api


def events_record_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `events record`."""
    parser.add_argument(
        "--file",
        required=True,
        metavar="FILE",
        help="one MessageEvent per line in proto3 JSON (- for standard input)",
    )


def run_events_record(client: Client, args: argparse.Namespace) -> int:
    """events record --file FILE: every line is checked before the first call; exit 1 when an
    event was refused."""
    events = []
    for number, line in enumerate(read_text(args.file, "events").splitlines(), 1):
        if line.strip():
            events.append(parse_json(line, api.MessageEvent(), f"event on line {number}"))
    if not events:
        raise UsageError(f"no events in {args.file}")
    results: list[api.MessageEventResult] = []
    for start in range(0, len(events), 1000):
        request = api.RecordEventsRequest(events=events[start : start + 1000])
        results.extend(client.call(client.campaigns.RecordEvents, request).results)
    if client.json:
        print_json(api.RecordEventsResponse(results=results))
    else:
        rows = [[r.event_id, api.MessageEventResult.Status.Name(r.status), r.reason] for r in results]
        print(table(["EVENT", "STATUS", "REASON"], rows))
    refused = any(r.status == api.MessageEventResult.REFUSED for r in results)
    return EXIT_FAILURE if refused else EXIT_OK


GROUP = Group(
    "events",
    "record delivery and engagement events about sent messages",
    (Command("record", "record events from a JSON lines file", events_record_arguments, run_events_record),),
)
