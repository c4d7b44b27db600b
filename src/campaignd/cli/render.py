"""Output: proto3 JSON, tables and key/value text of campaigns, reports, contacts and the rest."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format, struct_pb2
from google.protobuf import message as pb_message
from google.protobuf.timestamp_pb2 import Timestamp

from campaignd.cli.arguments import more_hint
from campaignd.cli.connection import EXIT_OK, PROG, Client, Message
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import contact_service_pb2 as capi
from campaignd.v1 import resources_pb2 as res

# rich is imported where something is drawn, not here: plain output and --json start without it.
if TYPE_CHECKING:
    from rich.console import RenderableType


def to_dict(message: pb_message.Message) -> dict[str, Any]:
    """Proto3 JSON as a dict, with field names as in the .proto and every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(message: pb_message.Message) -> None:
    """One message as an indented proto3 JSON document."""
    print(json.dumps(to_dict(message), indent=2))


@dataclass
class Output:
    """How text output is drawn: plain columns, or with rich when stdout is a terminal."""

    terminal: bool = False


# Set once by `main` from the command line and stdout; plain unless both allow drawing.
OUTPUT = Output()


def capture(renderable: RenderableType) -> str:
    """A rich renderable drawn for the terminal, as text to print. Never narrower than it needs:
    a wide table runs past the edge (as plain columns would) rather than cutting cells short."""
    from rich.console import Console

    # Tables are not expanded, so a wide console only keeps rich from shrinking their columns.
    console = Console(highlight=False, width=1 << 14)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get().rstrip("\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; a rich table on a terminal."""
    if OUTPUT.terminal:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        drawn = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for header in headers:
            drawn.add_column(header, no_wrap=True)
        for row in rows:
            # Text, not markup: a label or a reason may hold square brackets.
            drawn.add_row(*(Text(cell) for cell in row))
        return capture(drawn)
    all_rows = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in all_rows
    )


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """`Key:  value` lines, values aligned."""
    pairs = list(pairs)
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}}  {value}".rstrip() for key, value in pairs)


def is_set(timestamp: Timestamp) -> bool:
    """Whether a Timestamp field carries a time (proto3 leaves an unset one at the epoch)."""
    return bool(timestamp.seconds or timestamp.nanos)


def local_time(timestamp: Timestamp) -> str:
    """A Timestamp in local time to the second, or '-' when unset."""
    if not is_set(timestamp):
        return "-"
    return timestamp.ToDatetime(tzinfo=dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `45s`."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def state_name(value: int) -> str:
    """A Campaign/Channel state number as its name; '-' when unspecified."""
    return res.Campaign.State.Name(value) if value else "-"  # type: ignore[arg-type]


def render_campaigns(campaigns: Sequence[res.Campaign]) -> str:
    """The campaign list table."""
    return table(
        ["NAME", "DISPLAY NAME", "STATE", "CHANNELS", "ARCHIVED", "UPDATED"],
        (
            [
                c.name.removeprefix("campaigns/"),
                c.display_name,
                state_name(c.state),
                ",".join(f"{ch.type}:{ch.channel_id}" for ch in c.channels) or "-",
                "yes" if c.archived else "no",
                local_time(c.update_time),
            ]
            for c in campaigns
        ),
    )


def render_campaign(c: res.Campaign) -> str:
    """One campaign: key/value lines, then its channels."""
    audience = ", ".join([*c.audience.target_lists, *c.audience.target_segments]) or "-"
    excluded = ", ".join([*c.audience.exclude_lists, *c.audience.exclude_segments])
    if excluded:
        audience += f"; excluding {excluded}"
    guard = "daemon defaults"
    if c.guard.max_failure_percent or c.guard.min_sends:
        percent = f"{c.guard.max_failure_percent:g}%" if c.guard.max_failure_percent else "the default rate"
        sends = str(c.guard.min_sends) if c.guard.min_sends else "the default number of"
        guard = f"pause above {percent} failures after {sends} sends"
    attestation = "-"
    if c.attestation.accepted_by:
        attestation = f"{c.attestation.accepted_by} accepted terms {c.attestation.terms_version}"
        if is_set(c.attestation.accept_time):
            attestation += f" at {local_time(c.attestation.accept_time)}"
    lines = key_values(
        [
            ("Name", c.name),
            ("Display name", c.display_name),
            ("State", state_name(c.state)),
            ("Archived", "yes" if c.archived else "no"),
            ("Labels", ", ".join(f"{k}={v}" for k, v in sorted(c.labels.items())) or "-"),
            ("Audience", audience),
            ("Time zone", c.time_zone or "-"),
            ("Guard", guard),
            ("Attestation", attestation),
            ("Etag", c.etag or "-"),
            ("Created", local_time(c.create_time)),
            ("Updated", local_time(c.update_time)),
        ]
    )
    if not c.channels:
        return lines + "\n\nNo channels."
    channels = table(
        ["CHANNEL", "TYPE", "STATE", "SINCE", "SCHEDULED", "CONTENT", "ERROR"],
        (
            [
                ch.channel_id,
                ch.type,
                state_name(ch.state),
                local_time(ch.state_time),
                local_time(ch.schedule_time),
                ",".join(sorted(ch.content.keys())) or "-",
                f"{ch.error.code}: {ch.error.message}" if ch.error.code else "-",
            ]
            for ch in c.channels
        ),
    )
    return f"{lines}\n\n{channels}"


def sent_count(progress: res.Progress) -> int:
    """Messages the provider accepted, whether or not delivery has been confirmed since."""
    return progress.sent + progress.delivered + progress.assumed_delivered


def progress_row(label: str, kind: str, state: int, p: res.Progress) -> list[str]:
    """One row of the report table."""
    return [
        label,
        kind,
        state_name(state),
        *(
            str(n)
            for n in (
                p.total,
                p.queued,
                p.sending + p.retrying,
                sent_count(p),
                p.delivered,
                p.failed,
                p.opted_out,
                p.cancelled,
            )
        ),
        f"{p.percent_done:.1f}%",
        f"{p.current_rate:.1f}/s",
    ]


def render_report(report: res.CampaignReport) -> str:
    """A campaign report: counters per channel and in total, failures by reason, transports."""
    headers = [
        "CHANNEL",
        "TYPE",
        "STATE",
        "TOTAL",
        "QUEUED",
        "IN FLIGHT",
        "SENT",
        "DELIVERED",
        "FAILED",
        "OPTED OUT",
        "CANCELLED",
        "DONE",
        "RATE",
    ]
    rows = [progress_row(ch.channel_id, ch.type, ch.state, ch.progress) for ch in report.channels]
    rows.append(progress_row("(all)", "", report.state, report.totals))
    parts = [
        key_values(
            [
                ("Campaign", report.campaign),
                ("State", state_name(report.state)),
                ("Report time", local_time(report.report_time)),
            ]
        ),
        table(headers, rows),
    ]
    failures = [
        [ch.channel_id, reason, str(count)]
        for ch in report.channels
        for reason, count in sorted(ch.progress.failed_by_reason.items())
    ]
    if failures:
        parts.append(table(["CHANNEL", "FAILURE REASON", "COUNT"], failures))
    # Provider messages: an SMS in 3 parts counts 3, which is what providers bill.
    counted = [
        [ch.channel_id, str(ch.parts.sent), str(ch.parts.delivered), str(ch.parts.failed)]
        for ch in report.channels
        if ch.parts.sent
    ]
    if counted:
        parts.append(table(["CHANNEL", "PARTS SENT", "PARTS DELIVERED", "PARTS FAILED"], counted))
    outcomes = [
        [ch.channel_id, outcome, str(count)]
        for ch in report.channels
        for outcome, count in sorted(ch.progress.by_outcome.items())
    ]
    if outcomes:
        parts.append(table(["CHANNEL", "OUTCOME", "COUNT"], outcomes))
    parts.extend(render_engagement(report))
    transports = [
        [ch.channel_id, name, str(p.total), str(sent_count(p)), str(p.retrying), str(p.failed)]
        for ch in report.channels
        for name, p in sorted(ch.by_transport.items())
    ]
    if transports:
        parts.append(table(["CHANNEL", "TRANSPORT", "TOTAL", "SENT", "RETRYING", "FAILED"], transports))
    return "\n\n".join(parts)


def render_audience(channels: Mapping[str, res.AudienceCounts]) -> str:
    """Audience counts per channel."""
    return table(
        ["CHANNEL", "TARGETED", "EXCLUDED", "SUPPRESSED", "SKIPPED", "QUEUED"],
        (
            [name, *(str(n) for n in (a.targeted, a.excluded, a.suppressed, a.skipped, a.queued))]
            for name, a in sorted(channels.items())
        ),
    )


def render_messages(messages: Sequence[res.Message]) -> str:
    """The message list table."""
    rows = []
    for m in messages:
        # `campaigns/{c}/channels/{ch}/messages/{m}`
        parts = m.name.split("/")
        channel_id = parts[3] if len(parts) >= 6 else "-"
        rows.append(
            [
                parts[-1],
                channel_id,
                m.address,
                res.Message.State.Name(m.state) if m.state else "-",
                str(m.attempts),
                str(m.parts) if m.parts else "-",
                m.transport or "-",
                m.reason or "-",
                m.outcome or "-",
                f"{m.talk_time.ToTimedelta().total_seconds():.1f}s" if m.HasField("talk_time") else "-",
                m.last_error or "-",
            ]
        )
    return table(
        [
            "MESSAGE",
            "CHANNEL",
            "ADDRESS",
            "STATE",
            "ATTEMPTS",
            "PARTS",
            "TRANSPORT",
            "REASON",
            "OUTCOME",
            "TALK",
            "LAST ERROR",
        ],
        rows,
    )


def render_history(events: Sequence[res.CampaignEvent]) -> str:
    """The history table, oldest first."""
    return table(
        ["SEQ", "TIME", "CHANNEL", "OPERATION", "FROM", "TO", "ACTOR", "CAUSE", "REASON"],
        (
            [
                str(e.sequence),
                local_time(e.time),
                e.channel_id or "(all)",
                e.operation,
                state_name(e.from_state),
                state_name(e.to_state),
                e.actor or "-",
                res.CampaignEvent.Cause.Name(e.cause) if e.cause else "-",
                e.reason or "-",
            ]
            for e in events
        ),
    )


def progress_fields(update: api.WatchCampaignResponse) -> tuple[str, float, list[str]]:
    """The parts of a `watch` line: state, percent done, then sent/failed/total, rate, eta."""
    p = update.report.totals
    state = state_name(update.campaign.state or update.report.state)
    now = update.time.ToDatetime(tzinfo=dt.UTC) if is_set(update.time) else dt.datetime.now(dt.UTC)
    fields = [
        f"{p.percent_done:5.1f}%",
        f"sent {sent_count(p)}/{p.total}",
        f"failed {p.failed}",
        f"{p.current_rate:.1f} msg/s",
    ]
    if is_set(p.eta):
        fields.append(f"eta {duration((p.eta.ToDatetime(tzinfo=dt.UTC) - now).total_seconds())}")
    reopens = window_reopens(update.report)
    if reopens is not None:
        fields.append(f"window closed until {local_time(reopens)}")
    return state, p.percent_done, fields


def window_reopens(report: res.CampaignReport) -> Timestamp | None:
    """When a closed send window reopens, if every RUNNING channel waits for one (the report
    gives it per channel): the earliest of them; else None."""
    running = [c for c in report.channels if c.state == res.Channel.RUNNING]
    closed = [c.progress.window_reopens_time for c in running if is_set(c.progress.window_reopens_time)]
    if not running or len(closed) < len(running):
        return None
    return min(closed, key=lambda t: (t.seconds, t.nanos))


def progress_line(update: api.WatchCampaignResponse) -> str:
    """One line of `watch` without a terminal: time, state, percent done, counts, rate, eta."""
    state, _, fields = progress_fields(update)
    now = update.time.ToDatetime(tzinfo=dt.UTC) if is_set(update.time) else dt.datetime.now(dt.UTC)
    return "  ".join([now.astimezone().strftime("%H:%M:%S"), f"{state:<9}", *fields])


def progress_bar(update: api.WatchCampaignResponse) -> RenderableType:
    """The live line of `watch` on a terminal: state, a bar of the percent done, counts, rate, eta."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    state, percent, fields = progress_fields(update)
    line = Table.grid(padding=(0, 2))
    line.add_row(
        Text(f"{state:<9}", style="bold"),
        ProgressBar(total=100.0, completed=min(max(percent, 0.0), 100.0), width=20),
        Text("  ".join(fields)),
    )
    return line


def show_campaign(client: Client, campaign: res.Campaign) -> int:
    """Print a campaign as JSON or as text."""
    if client.json:
        print_json(campaign)
    else:
        print(render_campaign(campaign))
    return EXIT_OK


def reason_name(value: int) -> str:
    """A Suppression.Reason number as a lower-case name."""
    return capi.Suppression.Reason.Name(value).lower() if value else "-"  # type: ignore[arg-type]


def attribute_json(value: Any) -> str:
    """An attribute value as compact JSON; whole numbers without `.0` (Struct keeps only doubles)."""

    def plain(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return json.dumps(plain(value), ensure_ascii=False, separators=(",", ":"))


def attributes_text(struct: struct_pb2.Struct) -> str:
    """`k=v k2=[1,2]`, keys sorted; '-' when there are none."""
    values = json_format.MessageToDict(struct)
    if not values:
        return "-"
    return " ".join(
        f"{k}={v if isinstance(v, str) else attribute_json(v)}" for k, v in sorted(values.items())
    )


def render_contacts(contacts: Sequence[capi.Contact]) -> str:
    """The contact list table."""
    return table(
        ["ID", "EMAIL", "PHONE", "TIME ZONE", "ATTRIBUTES", "UPDATED"],
        (
            [
                c.name.removeprefix("contacts/"),
                c.email or "-",
                c.phone or "-",
                c.time_zone or "-",
                attributes_text(c.attributes),
                local_time(c.update_time),
            ]
            for c in contacts
        ),
    )


def render_contact(c: capi.Contact) -> str:
    """One contact as `Key: value` lines."""
    return key_values(
        [
            ("Name", c.name),
            ("Email", c.email or "-"),
            ("Phone", c.phone or "-"),
            ("Time zone", c.time_zone or "-"),
            ("Attributes", attributes_text(c.attributes)),
            ("Created", local_time(c.create_time)),
            ("Updated", local_time(c.update_time)),
        ]
    )


def show(client: Client, message: Message, render: Callable[[Message], str]) -> int:
    """Print a message as JSON or through `render`."""
    if client.json:
        print_json(message)
    else:
        print(render(message))
    return EXIT_OK


def show_deleted(client: Client, reply: pb_message.Message, name: str, verb: str = "deleted") -> int:
    """The answer of a Delete/Remove call."""
    if client.json:
        print_json(reply)
    else:
        print(f"{verb} {getattr(reply, 'name', '') or name}")
    return EXIT_OK


def show_page(
    client: Client, what: str, reply: pb_message.Message, items: Sequence[Message], token: str, render: str
) -> int:
    """A list command's output: one JSON document, or a table and the more-results hint."""
    if client.json:
        print_json(reply)
        return EXIT_OK
    if items:
        print(render)
    else:
        print(f"{PROG}: no {what}", file=sys.stderr)
    more_hint(what, token)
    return EXIT_OK


def render_list(c: capi.ContactList) -> str:
    """One list as `Key: value` lines."""
    return key_values(
        [
            ("Name", c.name),
            ("Display name", c.display_name),
            ("Members", str(c.member_count)),
            ("Created", local_time(c.create_time)),
        ]
    )


def render_lists(lists: Sequence[capi.ContactList]) -> str:
    """The list table."""
    return table(
        ["ID", "DISPLAY NAME", "MEMBERS", "CREATED"],
        (
            [c.name.removeprefix("lists/"), c.display_name, str(c.member_count), local_time(c.create_time)]
            for c in lists
        ),
    )


def render_segment(s: capi.Segment) -> str:
    """One segment as `Key: value` lines."""
    return key_values(
        [
            ("Name", s.name),
            ("Display name", s.display_name),
            ("Filter", s.filter or "(every contact)"),
            ("Created", local_time(s.create_time)),
        ]
    )


def render_segments(segments: Sequence[capi.Segment]) -> str:
    """The segment table."""
    return table(
        ["ID", "DISPLAY NAME", "FILTER", "CREATED"],
        (
            [s.name.removeprefix("segments/"), s.display_name, s.filter or "-", local_time(s.create_time)]
            for s in segments
        ),
    )


def render_suppressions(suppressions: Sequence[capi.Suppression]) -> str:
    """The suppression table."""
    return table(
        ["ID", "ADDRESS", "CHANNEL TYPE", "REASON", "SOURCE", "CREATED"],
        (
            [
                s.name.removeprefix("suppressions/"),
                s.address,
                s.channel_type or "(all)",
                reason_name(s.reason),
                s.source or "-",
                local_time(s.create_time),
            ]
            for s in suppressions
        ),
    )


ENGAGEMENT = ("opened", "opens", "clicked", "clicks", "bounced", "complained", "unsubscribed")


def render_engagement(report: res.CampaignReport) -> list[str]:
    """Engagement per channel (unique and total opens and clicks, bounces, complaints,
    unsubscribes) and clicks per link; nothing when no event was recorded."""
    rows = [
        [ch.channel_id, *(str(getattr(ch.progress, f)) for f in ENGAGEMENT)]
        for ch in report.channels
        if any(getattr(ch.progress, f) for f in ENGAGEMENT)
    ]
    if not rows:
        return []
    tables = [table(["CHANNEL", *(f.upper() for f in ENGAGEMENT)], rows)]
    links = [
        [ch.channel_id, url, str(n)]
        for ch in report.channels
        for url, n in sorted(ch.progress.clicks_by_link.items())
    ]
    if links:
        tables.append(table(["CHANNEL", "LINK", "CLICKS"], links))
    return tables
