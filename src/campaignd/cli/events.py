"""`campaignctl events`: recording delivery and engagement events about sent messages."""

from __future__ import annotations

import argparse
import re
import sys

import grpc

from campaignd.cli.arguments import Command, Group, parse_json
from campaignd.cli.connection import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    Client,
    UsageError,
    read_text,
    rpc_error_lines,
)
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
    """events record --file FILE: every line is parsed and checked as the daemon checks it before
    the first call; exit 1 when an event was refused."""
    # The daemon's own checks, so that a bad line anywhere stops the command before any chunk is
    # recorded; imported here, as no other command needs them.
    from campaignd.api.campaigns import MAX_EVENTS, message_event
    from campaignd.api.convert import Violations

    events: list[api.MessageEvent] = []
    lines: list[int] = []
    # A byte order mark (as some editors write) is not part of the first line.
    text = read_text(args.file, "events").removeprefix("\ufeff")
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            events.append(parse_json(line, api.MessageEvent(), f"event on line {number}"))
            lines.append(number)
    if not events:
        raise UsageError(f"no events in {args.file}")
    problems = Violations()
    for number, event in zip(lines, events, strict=True):
        message_event(problems, f"line {number}", event)
    if problems.found:
        first = problems.found[0]
        more = f" (and {len(problems.found) - 1} more problems)" if len(problems.found) > 1 else ""
        raise UsageError(f"{args.file}: {first.field}: {first.description}{more}; nothing was sent")
    results: list[api.MessageEventResult] = []
    for start in range(0, len(events), MAX_EVENTS):
        request = api.RecordEventsRequest(events=events[start : start + MAX_EVENTS])
        try:
            results.extend(client.call(client.campaigns.RecordEvents, request).results)
        except grpc.RpcError as err:
            if not isinstance(err, grpc.Call) or err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # Name the file's lines, not the call's indexes, and say what was recorded already.
            for text_line in rpc_error_lines(err, client.target.description):
                print(_line_numbers(text_line, lines[start:]), file=sys.stderr)
            if start:
                print(f"{PROG}: the events of lines 1-{lines[start - 1]} were recorded", file=sys.stderr)
            return EXIT_USAGE
    if client.json:
        print_json(api.RecordEventsResponse(results=results))
    else:
        rows = [[r.event_id, api.MessageEventResult.Status.Name(r.status), r.reason] for r in results]
        print(table(["EVENT", "STATUS", "REASON"], rows))
    refused = any(r.status == api.MessageEventResult.REFUSED for r in results)
    return EXIT_FAILURE if refused else EXIT_OK


def _line_numbers(text: str, lines: list[int]) -> str:
    """`text` with each `events[i]` of a call named by the file's line."""

    def line(found: re.Match[str]) -> str:
        index = int(found[1])
        return f"line {lines[index]}" if index < len(lines) else found[0]

    return re.sub(r"\bevents\[([0-9]+)\]", line, text)


GROUP = Group(
    "events",
    "record delivery and engagement events about sent messages",
    (Command("record", "record events from a JSON lines file", events_record_arguments, run_events_record),),
)
