"""`campaignctl`: a command-line client of the campaignd gRPC API.

Every command is one row of `COMMANDS`: its arguments and a function that builds the request,
makes the call and prints the answer. Bad local input is refused before any call is made.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import datetime as dt
import json
import os
import pathlib
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf import message as pb_message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from campaignd import __version__, config
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import campaign_service_pb2_grpc as api_grpc
from campaignd.v1 import contact_service_pb2 as capi
from campaignd.v1 import contact_service_pb2_grpc as capi_grpc
from campaignd.v1 import resources_pb2 as res

PROG = "campaignctl"
EXIT_OK = 0
EXIT_FAILURE = 1  # the daemon refused or failed the call
EXIT_USAGE = 2  # bad local input, or the daemon said INVALID_ARGUMENT
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

SOCKET_ENV = "CAMPAIGND_SOCKET"
ADDRESS_ENV = "CAMPAIGND_ADDRESS"
TOKEN_ENV = "CAMPAIGND_TOKEN"  # noqa: S105 - the name of a variable, not a token

ID_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
TERMINAL_STATES = frozenset({res.Campaign.COMPLETED, res.Campaign.STOPPED, res.Campaign.FAILED})
UPDATABLE_FIELDS = ("display_name", "labels", "audience", "time_zone", "guard", "channels")
RELATIVE_TIME = re.compile(r"\+(\d+)([smhd])")
RELATIVE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

Message = TypeVar("Message", bound=pb_message.Message)
Request = TypeVar("Request", bound=pb_message.Message)


class UsageError(Exception):
    """Bad local input: reported on one line with exit status 2, and no call is made."""


# ---------------------------------------------------------------------------------------------
# Parsing of arguments


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def campaign_name(text: str) -> str:
    """`my-campaign` or `campaigns/my-campaign` -> `campaigns/my-campaign`."""
    campaign_id = text.removeprefix("campaigns/")
    if not ID_PATTERN.fullmatch(campaign_id):
        raise argparse.ArgumentTypeError(
            f"invalid campaign name {text!r}: expected ID or campaigns/ID, where ID is 1-63 characters "
            "of a-z, 0-9 and '-' starting with a letter"
        )
    return f"campaigns/{campaign_id}"


def resource_id(text: str) -> str:
    """A campaign or channel id: 1-63 characters of [a-z0-9-], starting with a letter."""
    # argparse also passes string defaults through here: "" is the default of "none given".
    if text and not ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid id {text!r}: expected 1-63 characters of a-z, 0-9 and '-' starting with a letter"
        )
    return text


def key_value(text: str) -> tuple[str, str]:
    """`key=value` -> (key, value); the value may be empty, the key may not."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid {text!r}: expected KEY=VALUE")
    return key, value


def transport_share(text: str) -> tuple[str, int]:
    """`smtp-a=60` -> ("smtp-a", 60)."""
    name, percent = key_value(text)
    if not re.fullmatch(r"[0-9]+", percent) or not 1 <= int(percent) <= 100:
        raise argparse.ArgumentTypeError(f"invalid {text!r}: expected TRANSPORT=PERCENT with 1-100")
    return name, int(percent)


def positive_float(text: str) -> float:
    """A number greater than zero."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid {text!r}: expected a number greater than 0")
    return value


def page_size(text: str) -> int:
    """A positive number; the daemon lowers one above its maximum to the maximum."""
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid page size {text!r}: expected a number from 1")
    return int(text)


def campaign_state(text: str) -> res.Campaign.State.ValueType:
    """A campaign state name in any case, e.g. `running`."""
    name = text.upper().replace("-", "_")
    names = res.Campaign.State.keys()[1:]  # without STATE_UNSPECIFIED
    if name not in names:
        choices = ", ".join(n.lower() for n in names)
        raise argparse.ArgumentTypeError(f"invalid state {text!r}: choose from {choices}")
    return res.Campaign.State.Value(name)


def message_state(text: str) -> res.Message.State.ValueType:
    """A message state name in any case, e.g. `failed`."""
    name = text.upper().replace("-", "_")
    names = res.Message.State.keys()[1:]  # without STATE_UNSPECIFIED
    if name not in names:
        choices = ", ".join(n.lower() for n in names)
        raise argparse.ArgumentTypeError(f"invalid message state {text!r}: choose from {choices}")
    return res.Message.State.Value(name)


def schedule_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO 8601 with a UTC offset (`2025-05-01T09:00:00+02:00`, `...Z`) or relative (`+10m`, `+2h`)."""
    now = now or dt.datetime.now(dt.UTC)
    if relative := RELATIVE_TIME.fullmatch(text):
        return now + dt.timedelta(**{RELATIVE_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: expected ISO 8601 with an offset (2025-05-01T09:00:00+02:00) "
            "or +N followed by s, m, h or d"
        ) from None
    if when.tzinfo is None:
        # A time without an offset would mean different instants on the client and the daemon.
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: add a UTC offset, e.g. {text}Z")
    return when


class _OrderedChannelSpec(argparse.Action):
    """Collects --channel and --content options in command-line order, so that each --content
    applies to the --channel before it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        specs = list(getattr(namespace, self.dest, None) or [])
        specs.append((option_string or "", str(values)))
        setattr(namespace, self.dest, specs)


def content_entry(text: str, option: str = "--content") -> tuple[str, Any]:
    """`key=text` -> a string; `key:=json` -> any JSON value."""
    key, sep, value = text.partition("=")
    if not sep or not key or key == ":":
        raise UsageError(f"invalid {option} {text!r}: expected KEY=TEXT or KEY:=JSON")
    if not key.endswith(":"):
        return key, value
    try:
        return key[:-1], json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"invalid {option} {text!r}: the value after := is not JSON ({exc.msg})") from None


def parse_channel(text: str) -> res.Channel:
    """A --channel value: proto3 JSON of a Channel, `TYPE:ID`, or `TYPE` (the id is the type)."""
    if text.lstrip().startswith("{"):
        return parse_json(text, res.Channel(), "--channel")
    channel_type, _, channel_id = text.partition(":")
    channel_id = channel_id or channel_type
    if not channel_type or not ID_PATTERN.fullmatch(channel_id):
        raise UsageError(
            f"invalid --channel {text!r}: expected TYPE:ID (ID is 1-63 characters of a-z, 0-9 and '-' "
            "starting with a letter) or a JSON object"
        )
    return res.Channel(type=channel_type, channel_id=channel_id)


def build_channels(specs: Sequence[tuple[str, str]]) -> list[res.Channel]:
    """Channels from --channel/--content/--content-file options in command-line order."""
    channels: list[res.Channel] = []
    for option, value in specs:
        if option == "--channel":
            channels.append(parse_channel(value))
            continue
        if not channels:
            raise UsageError(f"{option} {value!r} must follow the --channel it belongs to")
        if option == "--content-file":
            key, path = key_value_or_usage(value, option)
            channels[-1].content[key] = read_text(path, option)
        else:
            key, content = content_entry(value, option)
            channels[-1].content[key] = content
    return channels


def key_value_or_usage(text: str, option: str) -> tuple[str, str]:
    """Like key_value, for values parsed after argparse."""
    try:
        return key_value(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{option}: {exc}") from None


def read_text(path: str, what: str) -> str:
    """A local file's text; `-` is standard input."""
    if path == "-":
        return sys.stdin.read()
    try:
        return pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {what} {path}: not UTF-8 text") from None


def parse_json(text: str, message: Message, what: str) -> Message:
    """Proto3 JSON into `message`; unknown fields are an error, so typos are not silently dropped."""
    try:
        return json_format.Parse(text, message)
    except json_format.ParseError as exc:
        raise UsageError(f"invalid {what}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Connection


@dataclass(frozen=True)
class Target:
    """Where the daemon listens and how to reach it."""

    target: str
    description: str
    credentials: grpc.ChannelCredentials | None = None  # None: the Unix socket, trusted by file mode


def resolve_target(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """Flags first, then $CAMPAIGND_SOCKET / $CAMPAIGND_ADDRESS, then the daemon's config."""
    given = [flag for flag in ("socket", "address", "config") if getattr(args, flag, None)]
    if len(given) > 1:
        raise UsageError("give only one of --socket, --address and --config")
    if args.socket:
        return unix_target(pathlib.Path(args.socket))
    if args.address:
        return tcp_target(args.address, args, environ)
    if not args.config:
        if environ.get(SOCKET_ENV):
            return unix_target(pathlib.Path(environ[SOCKET_ENV]))
        if environ.get(ADDRESS_ENV):
            return tcp_target(environ[ADDRESS_ENV], args, environ)
    try:
        # Only the socket path is needed; the daemon's secret files may be unreadable to this user.
        settings = config.load(pathlib.Path(args.config) if args.config else None, check_files=False)
    except config.ConfigError as exc:
        raise UsageError(f"cannot find the daemon's socket: {exc}") from None
    return unix_target(settings.socket_path)


def unix_target(path: pathlib.Path) -> Target:
    """The daemon's Unix socket."""
    return Target(f"unix:{path}", str(path))


def tcp_target(address: str, args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """A TCP listener: always TLS, with a bearer token and optionally a client certificate."""
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    root = read_bytes(args.ca_file, "--ca-file") if args.ca_file else None
    key = read_bytes(args.key_file, "--key-file") if args.key_file else None
    cert = read_bytes(args.cert_file, "--cert-file") if args.cert_file else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    token = args.token
    if args.token_file:
        token = read_text(args.token_file, "--token-file").strip()
    token = token or environ.get(TOKEN_ENV, "")
    if token:
        # Sent as `authorization: Bearer <token>`, and only ever over TLS.
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return Target(address, address, credentials)


def read_bytes(path: str, what: str) -> bytes:
    """A local file's bytes."""
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


class Client:
    """A connection to the daemon, opened at the first call, and the output options."""

    def __init__(self, target: Target, *, timeout: float, json_output: bool) -> None:
        self.target = target
        self.timeout = timeout
        self.json = json_output
        self._channel: grpc.Channel | None = None
        self._campaigns: api_grpc.CampaignServiceStub | None = None
        self._contacts: capi_grpc.ContactServiceStub | None = None

    @property
    def channel(self) -> grpc.Channel:
        """The gRPC channel."""
        if self._channel is None:
            if self.target.credentials is None:
                self._channel = grpc.insecure_channel(self.target.target)
            else:
                self._channel = grpc.secure_channel(self.target.target, self.target.credentials)
        return self._channel

    @property
    def campaigns(self) -> api_grpc.CampaignServiceStub:
        """The CampaignService stub."""
        if self._campaigns is None:
            self._campaigns = api_grpc.CampaignServiceStub(self.channel)
        return self._campaigns

    @property
    def contacts(self) -> capi_grpc.ContactServiceStub:
        """The ContactService stub."""
        if self._contacts is None:
            self._contacts = capi_grpc.ContactServiceStub(self.channel)
        return self._contacts

    def call(self, method: grpc.UnaryUnaryMultiCallable[Request, Message], request: Request) -> Message:
        """A unary call with the --timeout deadline."""
        return method(request, timeout=self.timeout)

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._channel is not None:
            self._channel.close()


# ---------------------------------------------------------------------------------------------
# Output


def to_dict(message: pb_message.Message) -> dict[str, Any]:
    """Proto3 JSON as a dict, with field names as in the .proto and every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(message: pb_message.Message) -> None:
    """One message as an indented proto3 JSON document."""
    print(json.dumps(to_dict(message), indent=2))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
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


def progress_line(update: api.WatchCampaignResponse, *, tty: bool) -> str:
    """One line of `watch`: state, percent done, sent/failed/total, rate, eta."""
    p = update.report.totals
    state = state_name(update.campaign.state or update.report.state)
    now = update.time.ToDatetime(tzinfo=dt.UTC) if is_set(update.time) else dt.datetime.now(dt.UTC)
    fields = [f"{state:<9}"]
    if tty:
        filled = round(min(max(p.percent_done, 0.0), 100.0) / 5)
        fields.append("[" + "#" * filled + "-" * (20 - filled) + "]")
    else:
        fields.insert(0, now.astimezone().strftime("%H:%M:%S"))
    fields += [
        f"{p.percent_done:5.1f}%",
        f"sent {sent_count(p)}/{p.total}",
        f"failed {p.failed}",
        f"{p.current_rate:.1f} msg/s",
    ]
    if is_set(p.eta):
        fields.append(f"eta {duration((p.eta.ToDatetime(tzinfo=dt.UTC) - now).total_seconds())}")
    if is_set(p.window_reopens_time):
        fields.append(f"window closed until {local_time(p.window_reopens_time)}")
    return "  ".join(fields)


# ---------------------------------------------------------------------------------------------
# Errors from the daemon


def rpc_error_lines(err: grpc.Call, where: str) -> list[str]:
    """The code and message of a failed call, then the reason and field violations it carries."""
    code = err.code()
    details = err.details() or ""
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        # The rich status disagrees with the call's status; the code and message still hold.
        status = None
    # The daemon's own errors carry an ErrorInfo: then UNAVAILABLE is its answer (e.g. a
    # provider that failed a test send), not a connection problem.
    if code == grpc.StatusCode.UNAVAILABLE and (status is None or not status.details):
        head = f"the daemon is not reachable at {where}" + (f" ({details})" if details else "")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        head = f"no answer from {where} in time (see --timeout)"
    else:
        head = details
    lines = [f"{PROG}: {code.name}: {head}"]
    if code == grpc.StatusCode.UNAUTHENTICATED:
        lines.append(f"  pass a token with --token-file, --token or ${TOKEN_ENV}")
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            extra = ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))
            lines.append(f"  reason: {info.reason}" + (f" ({extra})" if extra else ""))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  field {v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Is(capi.ImportContactsResponse.DESCRIPTOR):
            # A failed import says what it had written: those rows stay.
            written = capi.ImportContactsResponse()
            detail.Unpack(written)
            lines.append(
                f"  written before the error: created {written.created}, updated {written.updated}, "
                f"rejected {written.rejected}"
            )
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            lines += [f"  {v.type} {v.subject}: {v.description}".rstrip() for v in failure.violations]
    return lines


def exit_status(code: grpc.StatusCode) -> int:
    """2 for INVALID_ARGUMENT (the input was wrong), 1 for every other failure."""
    return EXIT_USAGE if code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILURE


# ---------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True)
class Command:
    """A command: its name, help, arguments, and the function that runs it."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Client, argparse.Namespace], int]


@dataclass(frozen=True)
class Group:
    """A resource with commands of its own: `campaignctl NAME COMMAND ...`."""

    name: str
    help: str
    commands: Sequence[Command | Group] = field(default_factory=tuple)


def name_argument(parser: argparse.ArgumentParser) -> None:
    """The campaign NAME positional."""
    parser.add_argument("name", metavar="NAME", type=campaign_name, help="ID or campaigns/ID")


def write_arguments(parser: argparse.ArgumentParser, *, etag: bool = True, request_id: bool = True) -> None:
    """--etag and --request-id, the conflict and idempotency keys of changing calls."""
    if etag:
        parser.add_argument("--etag", default="", help="act only if the campaign still has this etag")
    if request_id:
        parser.add_argument(
            "--request-id",
            default="",
            metavar="KEY",
            help="idempotency key: a repeat returns the first call's result",
        )


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


def show_campaign(client: Client, campaign: res.Campaign) -> int:
    """Print a campaign as JSON or as text."""
    if client.json:
        print_json(campaign)
    else:
        print(render_campaign(campaign))
    return EXIT_OK


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


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command that takes none."""


def paging_arguments(parser: argparse.ArgumentParser) -> None:
    """--page-size, --page-token and --all."""
    parser.add_argument(
        "--page-size", type=page_size, default=0, help="results per page (the daemon caps it)"
    )
    parser.add_argument("--page-token", default="", help="continue from a previous page")
    parser.add_argument("--all", action="store_true", help="follow next_page_token to the last page")


def pages(
    fetch: Callable[[str], tuple[Sequence[Message], str]], first_token: str, every: bool
) -> tuple[list[Message], str]:
    """Items of one page, or of every page; returns them and the token of the page after."""
    items: list[Message] = []
    token = first_token
    while True:
        page, token = fetch(token)
        items.extend(page)
        if not every or not token:
            return items, token


def more_hint(what: str, token: str) -> None:
    """Say on stderr that there are more results, and how to get them."""
    if token:
        print(f"{PROG}: more {what} exist: pass --all, or --page-token {token}", file=sys.stderr)


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


def run_schedule(client: Client, args: argparse.Namespace) -> int:
    """schedule NAME --at TIME --accepted-by WHO --terms-version V."""
    if args.at is None:
        raise UsageError("schedule needs --at TIME (ISO 8601 with an offset, or +10m, +2h, +1d)")
    attestation = attestation_from(args)
    request = api.ScheduleCampaignRequest(
        name=args.name,
        channel_id=args.channel,
        attestation=attestation,
        etag=args.etag,
        request_id=args.request_id,
    )
    request.schedule_time.FromDatetime(args.at.astimezone(dt.UTC))
    return show_campaign(client, client.call(client.campaigns.ScheduleCampaign, request))


def run_unschedule(client: Client, args: argparse.Namespace) -> int:
    """unschedule NAME."""
    request = api.UnscheduleCampaignRequest(
        name=args.name, channel_id=args.channel, etag=args.etag, request_id=args.request_id
    )
    return show_campaign(client, client.call(client.campaigns.UnscheduleCampaign, request))


def run_launch(client: Client, args: argparse.Namespace) -> int:
    """launch NAME --accepted-by WHO --terms-version V."""
    request = api.LaunchCampaignRequest(
        name=args.name,
        channel_id=args.channel,
        attestation=attestation_from(args),
        etag=args.etag,
        request_id=args.request_id,
    )
    return show_campaign(client, client.call(client.campaigns.LaunchCampaign, request))


def run_pause(client: Client, args: argparse.Namespace) -> int:
    """pause NAME."""
    request = api.PauseCampaignRequest(
        name=args.name,
        channel_id=args.channel,
        reason=args.reason,
        etag=args.etag,
        request_id=args.request_id,
    )
    return show_campaign(client, client.call(client.campaigns.PauseCampaign, request))


def run_resume(client: Client, args: argparse.Namespace) -> int:
    """resume NAME."""
    request = api.ResumeCampaignRequest(
        name=args.name,
        channel_id=args.channel,
        reason=args.reason,
        etag=args.etag,
        request_id=args.request_id,
    )
    return show_campaign(client, client.call(client.campaigns.ResumeCampaign, request))


def run_stop(client: Client, args: argparse.Namespace) -> int:
    """stop NAME."""
    request = api.StopCampaignRequest(
        name=args.name,
        channel_id=args.channel,
        reason=args.reason,
        etag=args.etag,
        request_id=args.request_id,
    )
    return show_campaign(client, client.call(client.campaigns.StopCampaign, request))


def run_restart(client: Client, args: argparse.Namespace) -> int:
    """restart NAME."""
    request = api.RestartCampaignRequest(
        name=args.name,
        channel_id=args.channel,
        reason=args.reason,
        etag=args.etag,
        request_id=args.request_id,
    )
    return show_campaign(client, client.call(client.campaigns.RestartCampaign, request))


def run_retry_failed(client: Client, args: argparse.Namespace) -> int:
    """retry-failed NAME."""
    request = api.RetryFailedMessagesRequest(
        name=args.name, channel_id=args.channel, etag=args.etag, request_id=args.request_id
    )
    return show_campaign(client, client.call(client.campaigns.RetryFailedMessages, request))


def run_archive(client: Client, args: argparse.Namespace) -> int:
    """archive NAME."""
    request = api.ArchiveCampaignRequest(name=args.name, etag=args.etag, request_id=args.request_id)
    return show_campaign(client, client.call(client.campaigns.ArchiveCampaign, request))


def run_unarchive(client: Client, args: argparse.Namespace) -> int:
    """unarchive NAME."""
    request = api.UnarchiveCampaignRequest(name=args.name, etag=args.etag, request_id=args.request_id)
    return show_campaign(client, client.call(client.campaigns.UnarchiveCampaign, request))


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
    drawn = False
    try:
        for update in watch_updates(client, args.name):
            if client.json:
                print(json.dumps(to_dict(update)), flush=True)
            elif tty:
                # \r and "erase to end of line" redraw the one line in place.
                sys.stdout.write("\r" + progress_line(update, tty=True) + "\x1b[K")
                sys.stdout.flush()
                drawn = True
            else:
                print(progress_line(update, tty=False), flush=True)
            state = update.campaign.state or update.report.state
            if state in TERMINAL_STATES:
                if drawn:
                    print()
                    drawn = False
                if not client.json:
                    print()
                    print(render_report(update.report))
                return EXIT_FAILURE if state == res.Campaign.FAILED else EXIT_OK
    finally:
        if drawn:
            print()
    print(f"{PROG}: the daemon ended the watch before the campaign finished", file=sys.stderr)
    return EXIT_FAILURE


# ---------------------------------------------------------------------------------------------
# Contacts, lists, segments and suppressions (ContactService)


def resource_name(collection: str, what: str) -> Callable[[str], str]:
    """A parser of `ID` or `{collection}/ID` into `{collection}/ID`, for argparse."""

    def parse(text: str) -> str:
        resource = text.removeprefix(f"{collection}/")
        if not ID_PATTERN.fullmatch(resource):
            raise argparse.ArgumentTypeError(
                f"invalid {what} {text!r}: expected ID or {collection}/ID, where ID is 1-63 characters "
                "of a-z, 0-9 and '-' starting with a letter"
            )
        return f"{collection}/{resource}"

    return parse


contact_name = resource_name("contacts", "contact")
list_name = resource_name("lists", "list")
segment_name = resource_name("segments", "segment")


def suppression_name(text: str) -> str:
    """`42` or `suppressions/42` -> `suppressions/42` (ids are assigned by the daemon)."""
    resource = text.removeprefix("suppressions/")
    if not resource or any(c == "/" or c.isspace() for c in resource):
        raise argparse.ArgumentTypeError(f"invalid suppression {text!r}: expected ID or suppressions/ID")
    return f"suppressions/{resource}"


def suppression_reason(text: str) -> capi.Suppression.Reason.ValueType:
    """A suppression reason in any case, e.g. `bounced` or `opted-out`."""
    name = text.upper().replace("-", "_")
    names = capi.Suppression.Reason.keys()[1:]  # without REASON_UNSPECIFIED
    if name not in names:
        choices = ", ".join(n.lower() for n in names)
        raise argparse.ArgumentTypeError(f"invalid reason {text!r}: choose from {choices}")
    return capi.Suppression.Reason.Value(name)


def reason_name(value: int) -> str:
    """A Suppression.Reason number as a lower-case name."""
    return capi.Suppression.Reason.Name(value).lower() if value else "-"  # type: ignore[arg-type]


MAX_BATCH_SIZE = 10_000  # rows per ImportContacts message the daemon accepts


def batch_size(text: str) -> int:
    """--batch-size: 1 to MAX_BATCH_SIZE rows."""
    if not re.fullmatch(r"[0-9]+", text) or not 1 <= int(text) <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"invalid batch size {text!r}: expected 1-{MAX_BATCH_SIZE}")
    return int(text)


def batched(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """`items` in slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_words(path: str, what: str) -> list[str]:
    """The non-blank lines of a file (`-`: standard input), stripped; lines starting with # are skipped."""
    return [
        line.strip()
        for line in read_text(path, what).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


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


def contact_field_arguments(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """--email, --phone, --time-zone and --attr."""
    clear = "; '' clears it" if update else ""
    parser.add_argument("--email", default=None, help=f"email address{clear}")
    parser.add_argument("--phone", default=None, help=f"phone number, E.164 or national{clear}")
    parser.add_argument("--time-zone", default=None, metavar="ZONE", help=f"IANA time zone{clear}")
    parser.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="K=TEXT|K:=JSON",
        help="an attribute (repeatable)" + ("; other attributes are kept" if update else ""),
    )


def attributes_from(texts: Sequence[str]) -> dict[str, Any]:
    """The --attr options as a dict."""
    return dict(content_entry(text, "--attr") for text in texts)


def contacts_create_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contacts create`."""
    parser.add_argument("--id", default="", type=resource_id, help="the contact id; generated when omitted")
    contact_field_arguments(parser, update=False)
    write_arguments(parser, etag=False)


def run_contacts_create(client: Client, args: argparse.Namespace) -> int:
    """contacts create [--id ID] [--email E] [--phone P] [--time-zone Z] [--attr K=V ...]."""
    contact = capi.Contact(email=args.email or "", phone=args.phone or "", time_zone=args.time_zone or "")
    contact.attributes.update(attributes_from(args.attr))
    request = capi.CreateContactRequest(contact=contact, contact_id=args.id, request_id=args.request_id)
    return show(client, client.call(client.contacts.CreateContact, request), render_contact)


def contact_argument(parser: argparse.ArgumentParser) -> None:
    """The CONTACT positional."""
    parser.add_argument("name", metavar="CONTACT", type=contact_name, help="ID or contacts/ID")


def run_contacts_get(client: Client, args: argparse.Namespace) -> int:
    """contacts get CONTACT."""
    contact = client.call(client.contacts.GetContact, capi.GetContactRequest(name=args.name))
    return show(client, contact, render_contact)


def contacts_update_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contacts update`."""
    contact_argument(parser)
    contact_field_arguments(parser, update=True)
    parser.add_argument(
        "--remove-attr", action="append", default=[], metavar="K", help="remove an attribute (repeatable)"
    )


def run_contacts_update(client: Client, args: argparse.Namespace) -> int:
    """contacts update CONTACT [field flags]: the update mask names exactly the fields given."""
    contact = capi.Contact(name=args.name)
    paths: list[str] = []
    for flag in ("email", "phone", "time_zone"):
        if getattr(args, flag) is not None:
            setattr(contact, flag, getattr(args, flag))
            paths.append(flag)
    changes = attributes_from(args.attr)
    if changes or args.remove_attr:
        # The API replaces the attributes as a whole; the others are kept by sending them back.
        current = client.call(client.contacts.GetContact, capi.GetContactRequest(name=args.name))
        attributes = json_format.MessageToDict(current.attributes)
        attributes.update(changes)
        for key in args.remove_attr:
            attributes.pop(key, None)
        contact.attributes.update(attributes)
        paths.append("attributes")
    if not paths:
        raise UsageError("nothing to update: give --email, --phone, --time-zone, --attr or --remove-attr")
    request = capi.UpdateContactRequest(contact=contact)
    request.update_mask.paths.extend(paths)
    return show(client, client.call(client.contacts.UpdateContact, request), render_contact)


def run_contacts_delete(client: Client, args: argparse.Namespace) -> int:
    """contacts delete CONTACT."""
    reply = client.call(client.contacts.DeleteContact, capi.DeleteContactRequest(name=args.name))
    return show_deleted(client, reply, args.name)


def contacts_list_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contacts list`."""
    parser.add_argument("--filter", default="", metavar="EXPR", help="a segment filter (docs/segments.md)")
    parser.add_argument("--list", default=None, type=list_name, metavar="LIST", help="only members of LIST")
    paging_arguments(parser)


def run_contacts_list(client: Client, args: argparse.Namespace) -> int:
    """contacts list [--filter EXPR] [--list LIST]."""

    def fetch(token: str) -> tuple[Sequence[capi.Contact], str]:
        reply = client.call(
            client.contacts.ListContacts,
            capi.ListContactsRequest(
                filter=args.filter, list=args.list or "", page_size=args.page_size, page_token=token
            ),
        )
        return reply.contacts, reply.next_page_token

    contacts, token = pages(fetch, args.page_token, args.all)
    reply = capi.ListContactsResponse(contacts=contacts, next_page_token=token)
    return show_page(client, "contacts", reply, contacts, token, render_contacts(contacts))


# --- contacts import


CSV_LINE_LIMIT = 1 << 20  # bytes in one line of a CSV file, and characters in one field
CSV_MESSAGE_BYTES = 2 << 20  # rows per stream message are also capped by size (gRPC allows 4 MiB)
CONTACT_FIELDS = ("contact_id", "email", "phone", "time_zone")
ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MATCH_ON = {"email": capi.ImportOptions.EMAIL, "contact_id": capi.ImportOptions.CONTACT_ID}
REJECTED_COLUMNS = ("error_field", "error_reason")
LINE_TOO_LONG = "line too long"
EXTRA_FIELDS = "extra fields"


def column_mapping(text: str) -> tuple[str, str]:
    """`--map csvcol=field`: field is contact_id, email, phone, time_zone or attributes.NAME."""
    column, sep, target = text.rpartition("=")
    column, target = column.strip(), target.strip()
    if not sep or not column:
        raise argparse.ArgumentTypeError(f"invalid --map {text!r}: expected CSVCOLUMN=FIELD")
    attribute = target.removeprefix("attributes.")
    if target not in CONTACT_FIELDS and not (
        target.startswith("attributes.") and ATTRIBUTE_NAME.fullmatch(attribute)
    ):
        raise argparse.ArgumentTypeError(
            f"invalid --map {text!r}: the field is one of {', '.join(CONTACT_FIELDS)} or attributes.NAME "
            "(NAME: 1-63 characters of A-Z, a-z, 0-9 and _ not starting with a digit)"
        )
    return column, target


class LineTooLongError(Exception):
    """A physical line of the CSV file is longer than CSV_LINE_LIMIT bytes; it was skipped."""


class CsvLines:
    """The text lines of a CSV file, read in bytes and decoded line by line, so that a line longer
    than CSV_LINE_LIMIT is skipped (raising LineTooLongError once) without being held in memory.

    An iterator class rather than a generator: csv.reader goes on reading after the exception."""

    def __init__(self, raw: IO[bytes], encoding: str) -> None:
        self.raw = raw
        self.decoder = codecs.getincrementaldecoder(encoding)()
        self.line = 0  # physical lines read
        self.bytes_read = 0

    def __iter__(self) -> CsvLines:
        return self

    def __next__(self) -> str:
        chunk = self.raw.readline(CSV_LINE_LIMIT + 1)
        if not chunk:
            raise StopIteration
        self.line += 1
        self.bytes_read += len(chunk)
        if len(chunk) > CSV_LINE_LIMIT and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # skip the rest of the line
                chunk = self.raw.readline(CSV_LINE_LIMIT)
                self.bytes_read += len(chunk)
            raise LineTooLongError
        return self.decoder.decode(chunk)


@dataclass(frozen=True)
class CsvRecord:
    """One record of a CSV file: its fields, or why it could not be read."""

    line: int  # the physical line it starts on, from 1
    fields: list[str] | None
    error: str = ""


def csv_records(raw: IO[bytes], encoding: str, lines: CsvLines | None = None) -> Iterator[CsvRecord]:
    """The non-blank records of a CSV file, each a row of fields or a record with an error."""
    lines = lines or CsvLines(raw, encoding)
    reader = csv.reader(lines)
    while True:
        start = lines.line + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except LineTooLongError:
            yield CsvRecord(start, None, LINE_TOO_LONG)
            continue
        except csv.Error as exc:
            # With field_size_limit set, a quoted field running over many lines ends up here too.
            too_long = "field limit" in str(exc)
            yield CsvRecord(start, None, LINE_TOO_LONG if too_long else f"not valid CSV: {exc}")
            continue
        if fields and any(fields):
            yield CsvRecord(start, fields)


def check_encoding(path: pathlib.Path, encoding: str) -> bool:
    """Refuse a file that is not valid in `encoding`, naming the line; False when it is empty
    (nothing but white space)."""
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown --encoding {encoding!r}") from None
    if "\n,a".encode(codec.name, errors="replace") != b"\n,a":
        raise UsageError(
            f"--encoding {encoding}: only encodings in which ASCII is one byte per character are "
            "supported (convert the file, e.g. with iconv -t utf-8)"
        )
    decoder = codec.incrementaldecoder()
    line, content = 1, False
    try:
        with path.open("rb") as raw:
            while chunk := raw.read(1 << 16):
                for piece in chunk.splitlines(keepends=True):
                    try:
                        text = decoder.decode(piece)
                    except UnicodeDecodeError as exc:
                        byte = exc.object[exc.start : exc.start + 1].hex()
                        raise UsageError(
                            f"{path}: line {line} is not valid {encoding} (byte 0x{byte}: {exc.reason}); "
                            "pass the file's --encoding, e.g. --encoding latin-1"
                        ) from None
                    content = content or bool(text.replace("\ufeff", "").strip())
                    line += piece.endswith(b"\n")
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise UsageError(
                    f"{path}: line {line} is not valid {encoding} (cut off at the end)"
                ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return content


@dataclass(frozen=True)
class ImportPlan:
    """What `contacts import` does with each column of the file."""

    path: pathlib.Path
    encoding: str
    header: list[str]
    targets: list[str | None]  # per column: a ContactRow field, attributes.NAME, or None (ignored)

    def row(self, fields: Sequence[str]) -> capi.ContactRow | str:
        """A ContactRow from a record's fields, or why the record is rejected locally."""
        if len(fields) > len(self.header):
            return EXTRA_FIELDS
        row = capi.ContactRow()
        attributes: dict[str, Any] = {}
        for target, value in zip(self.targets, fields, strict=False):
            if target is None or value == "":
                continue  # an empty cell sets nothing
            if target.startswith("attributes."):
                attributes[target.removeprefix("attributes.")] = value
            else:
                setattr(row, target, value.strip())
        if attributes:
            row.attributes.update(attributes)
        return row

    def original(self, record: CsvRecord) -> list[str]:
        """The record's cells as in the file, one per header column (empty for an unreadable one)."""
        fields = list(record.fields or [])[: len(self.header)]
        return fields + [""] * (len(self.header) - len(fields))


def plan_import(args: argparse.Namespace) -> ImportPlan:
    """Every check that needs no daemon: the encoding, the header and the mapping."""
    path = pathlib.Path(args.file)
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file" if not path.exists() else f"{path}: not a file")
    if not check_encoding(path, args.encoding):
        raise UsageError(f"{path}: empty file")
    with path.open("rb") as raw:
        records = csv_records(raw, args.encoding)
        head = next(records, None)
        if head is None:  # only empty cells, e.g. lines of commas
            raise UsageError(f"{path}: empty file")
        if head.fields is None:
            raise UsageError(f"{path}: line {head.line}: cannot read the header: {head.error}")
        if next(records, None) is None:
            raise UsageError(f"{path}: no rows after the header")
    header = [name.strip().lstrip("\ufeff") for name in head.fields]
    seen: dict[str, int] = {}
    for number, name in enumerate(header, 1):
        if name in seen:
            raise UsageError(f"{path}: columns {seen[name]} and {number} have the same header {name!r}")
        seen[name] = number
    targets: list[str | None] = [None] * len(header)
    mapped: dict[str, str] = {}  # target -> column
    for column, target in args.map:
        if column not in seen:
            raise UsageError(f"--map {column}={target}: {path} has no column {column!r}")
        if targets[seen[column] - 1] is not None:
            raise UsageError(f"--map: column {column!r} is mapped twice")
        if target in mapped:
            raise UsageError(f"--map: columns {mapped[target]!r} and {column!r} both map to {target}")
        targets[seen[column] - 1] = target
        mapped[target] = column
    for index, name in enumerate(header):
        if targets[index] is not None:
            continue
        field_name = name.lower()
        if field_name in CONTACT_FIELDS and field_name not in mapped:
            target = field_name  # a column named like a field fills that field
        elif args.only_mapped:
            continue
        elif not ATTRIBUTE_NAME.fullmatch(name):
            raise UsageError(
                f"{path}: column {index + 1} ({name!r}) is not a valid attribute name (1-63 characters of "
                f"A-Z, a-z, 0-9 and _ not starting with a digit): pass --map '{name}=attributes.NAME', "
                "or --only-mapped to skip the columns not mapped"
            )
        else:
            target = f"attributes.{name}"
        if target in mapped:
            raise UsageError(f"{path}: columns {mapped[target]!r} and {name!r} both map to {target}")
        targets[index] = target
        mapped[target] = name
    if args.match_on == "contact_id" and "contact_id" not in mapped:
        raise UsageError("--match-on contact_id needs a column mapped to contact_id")
    if not mapped:
        raise UsageError("no column is imported: map at least one with --map")
    plan = ImportPlan(path, args.encoding, header, targets)
    destination = rejected_path(args, plan)
    if destination.resolve() == path.resolve():
        raise UsageError(f"--rejected {destination} would overwrite the input")
    if not destination.parent.is_dir():
        raise UsageError(f"--rejected {destination}: no directory {destination.parent}")
    return plan


class ImportProgress:
    """A one-line progress bar on stderr: rows sent, and an estimate of the total from the share of
    the file's bytes read so far."""

    def __init__(self, total_bytes: int, *, enabled: bool) -> None:
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.last = 0.0
        self.drawn = False

    def update(self, rows: int, bytes_read: int, *, force: bool = False, note: str = "") -> None:
        """Redraw, at most ten times a second."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.1):
            return
        self.last = now
        share = min(bytes_read / self.total_bytes, 1.0) if self.total_bytes else 1.0
        filled = round(share * 20)
        estimate = f"/~{round(rows / share):,}" if 0 < share < 1 else ""
        bar = "[" + "#" * filled + "-" * (20 - filled) + "]"
        note = f", {note}" if note else ""
        sys.stderr.write(f"\rimporting {bar} {share * 100:5.1f}%  {rows:,}{estimate} rows sent{note}\x1b[K")
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        """Erase the bar; the summary follows."""
        if self.drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.drawn = False


class ImportStream:
    """The request messages of ImportContacts: the options, then the file's rows in order. Rows
    rejected locally are counted here and not sent. gRPC reads this in a thread of its own."""

    def __init__(
        self, plan: ImportPlan, options: capi.ImportOptions, batch_size: int, progress: ImportProgress
    ) -> None:
        self.plan = plan
        self.options = options
        self.batch_size = batch_size
        self.progress = progress
        self.sent = 0
        self.local_rejected = 0
        self.failure: BaseException | None = None

    def __iter__(self) -> Iterator[capi.ImportContactsRequest]:
        try:
            yield from self._messages()
        except Exception as exc:
            # The stream ends here rather than being cancelled, so that the daemon applies the
            # rows sent and answers with what it wrote; the main thread reports the failure.
            self.failure = exc

    def _messages(self) -> Iterator[capi.ImportContactsRequest]:
        first = True
        batch: list[capi.ContactRow] = []
        size = 0
        with self.plan.path.open("rb") as raw:
            lines = CsvLines(raw, self.plan.encoding)
            records = csv_records(raw, self.plan.encoding, lines)
            next(records)  # the header
            try:
                for record in records:
                    row = self.plan.row(record.fields) if record.fields is not None else record.error
                    if isinstance(row, str):
                        self.local_rejected += 1
                        continue
                    if batch and (len(batch) >= self.batch_size or size + row.ByteSize() > CSV_MESSAGE_BYTES):
                        yield self._message(batch, first)
                        first, batch, size = False, [], 0
                    batch.append(row)
                    size += row.ByteSize() + 8
                    self.sent += 1
                    self.progress.update(self.sent, lines.bytes_read)
            except (OSError, ValueError) as exc:
                # The rows read so far are sent all the same, and the stream ends after them.
                self.failure = exc
            if batch or first:
                yield self._message(batch, first)
            self.progress.update(self.sent, lines.bytes_read, force=True, note="waiting for the daemon")

    def _message(self, rows: list[capi.ContactRow], first: bool) -> capi.ImportContactsRequest:
        request = capi.ImportContactsRequest(rows=rows)
        if first:
            request.options.CopyFrom(self.options)
        return request


@dataclass(frozen=True)
class Rejection:
    """A row that was not imported: its line in the file, the field at fault, and why."""

    line: int
    field: str
    reason: str


def write_rejected(
    plan: ImportPlan, server: Mapping[int, capi.RejectedRow], destination: pathlib.Path
) -> list[Rejection]:
    """Read the file again, in the same order as it was sent, and pick out the rejected records:
    those rejected locally and those whose stream index the daemon rejected. They are written to
    `destination`: original columns plus error_field and error_reason. OSError when that fails."""
    rejections: list[Rejection] = []
    with destination.open("w", encoding=plan.encoding, errors="replace", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*plan.header, *REJECTED_COLUMNS])
        index = 0
        with plan.path.open("rb") as raw:
            records = csv_records(raw, plan.encoding)
            next(records)  # the header
            for record in records:
                row = plan.row(record.fields) if record.fields is not None else record.error
                if isinstance(row, str):
                    rejection = Rejection(record.line, "", row)
                else:
                    found = server.get(index)
                    index += 1
                    if found is None:
                        continue
                    rejection = Rejection(record.line, found.field, found.reason)
                rejections.append(rejection)
                writer.writerow([*plan.original(record), rejection.field, rejection.reason])
    return rejections


def rejected_path(args: argparse.Namespace, plan: ImportPlan) -> pathlib.Path:
    """--rejected, or the default next to the input."""
    return pathlib.Path(args.rejected) if args.rejected else default_rejected_path(plan.path)


def default_rejected_path(path: pathlib.Path) -> pathlib.Path:
    """`contacts.csv` -> `contacts.rejected.csv`, next to it."""
    stem = path.name.removesuffix(".csv").removesuffix(".CSV")
    return path.with_name(f"{stem}.rejected.csv")


def contacts_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contacts import`."""
    parser.add_argument("file", metavar="FILE.csv", help="a CSV file with a header line")
    parser.add_argument(
        "--map",
        action="append",
        type=column_mapping,
        default=[],
        metavar="CSVCOL=FIELD",
        help="import a column into contact_id, email, phone, time_zone or attributes.NAME (repeatable)",
    )
    parser.add_argument(
        "--only-mapped",
        action="store_true",
        help="skip the columns not mapped (by default they become attributes named by their header)",
    )
    parser.add_argument(
        "--match-on",
        choices=sorted(MATCH_ON),
        default="email",
        help="which field finds an existing contact to update (email)",
    )
    parser.add_argument(
        "--list", default=None, type=list_name, metavar="LIST", help="also add the contacts to LIST"
    )
    parser.add_argument("--encoding", default="utf-8", help="the file's encoding (utf-8)")
    parser.add_argument(
        "--rejected",
        default=None,
        metavar="FILE",
        help="where to write rejected rows as CSV (default: FILE.rejected.csv next to the input)",
    )
    parser.add_argument(
        "--batch-size",
        type=batch_size,
        default=1000,
        metavar="N",
        help=f"rows per stream message, 1-{MAX_BATCH_SIZE:,} (1000)",
    )


def run_contacts_import(client: Client, args: argparse.Namespace) -> int:
    """contacts import FILE.csv: stream the rows, report created/updated/rejected, write rejects."""
    previous_limit = csv.field_size_limit(CSV_LINE_LIMIT)
    try:
        return import_contacts(client, args, plan_import(args))
    finally:
        csv.field_size_limit(previous_limit)


def import_contacts(client: Client, args: argparse.Namespace, plan: ImportPlan) -> int:
    """The import itself, after the local checks passed."""
    options = capi.ImportOptions(match_on=MATCH_ON[args.match_on], list=args.list or "")
    progress = ImportProgress(plan.path.stat().st_size, enabled=sys.stderr.isatty() and not client.json)
    stream = ImportStream(plan, options, args.batch_size, progress)
    try:
        # No deadline: a large file takes as long as it takes (Ctrl-C cancels it).
        reply = client.contacts.ImportContacts(iter(stream))
    finally:
        progress.finish()
    server = {r.index: r for r in reply.rejected_rows}
    rejected = reply.rejected + stream.local_rejected
    destination: pathlib.Path | None = None
    rejections: list[Rejection] = []
    write_error = ""
    if rejected:
        destination = rejected_path(args, plan)
        try:
            rejections = write_rejected(plan, server, destination)
        except OSError as exc:
            write_error = f"{PROG}: cannot write the rejected rows to {destination}: {exc.strerror or exc}"
            destination = None
    total = stream.sent + stream.local_rejected
    if client.json:
        print(
            json.dumps(
                {
                    "created": reply.created,
                    "updated": reply.updated,
                    "rejected": rejected,
                    "rejected_file": str(destination) if destination else "",
                    "rejected_rows": [
                        {"line": r.line, "field": r.field, "reason": r.reason} for r in rejections
                    ],
                },
                indent=2,
            )
        )
    else:
        where = f", written to {destination}" if destination else ""
        print(
            key_values(
                [
                    ("Created", str(reply.created)),
                    ("Updated", str(reply.updated)),
                    ("Rejected", f"{rejected}{where}"),
                ]
            )
        )
        for r in rejections[:10]:
            print(f"  line {r.line}: {r.field + ': ' if r.field else ''}{r.reason}", file=sys.stderr)
        if len(rejections) > 10:
            print(f"  ... and {len(rejections) - 10} more in {destination}", file=sys.stderr)
        if rejected > len(rejections) and not write_error:
            print(
                f"  {rejected - len(rejections)} rejected rows were not itemised by the daemon",
                file=sys.stderr,
            )
    if write_error:
        print(write_error, file=sys.stderr)
        return EXIT_FAILURE
    if stream.failure is not None:
        print(
            f"{PROG}: reading {plan.path} failed after {stream.sent} rows were sent: {stream.failure}; "
            "the rows sent were imported (counted above), the rest of the file was not",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_FAILURE if total and rejected >= total else EXIT_OK


# --- lists


def lists_create_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lists create`."""
    parser.add_argument(
        "id", nargs="?", default="", type=resource_id, metavar="ID", help="generated when omitted"
    )
    parser.add_argument("--display-name", default="", help="human-readable name (default: the id)")


def run_lists_create(client: Client, args: argparse.Namespace) -> int:
    """lists create [ID] [--display-name N]."""
    display_name = args.display_name or args.id
    if not display_name:
        raise UsageError("lists create needs an ID or --display-name")
    request = capi.CreateListRequest(list=capi.ContactList(display_name=display_name), list_id=args.id)
    return show(client, client.call(client.contacts.CreateList, request), render_list)


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


def run_lists_list(client: Client, args: argparse.Namespace) -> int:
    """lists list."""

    def fetch(token: str) -> tuple[Sequence[capi.ContactList], str]:
        reply = client.call(
            client.contacts.ListLists, capi.ListListsRequest(page_size=args.page_size, page_token=token)
        )
        return reply.lists, reply.next_page_token

    lists, token = pages(fetch, args.page_token, args.all)
    reply = capi.ListListsResponse(lists=lists, next_page_token=token)
    return show_page(client, "lists", reply, lists, token, render_lists(lists))


def list_argument(parser: argparse.ArgumentParser) -> None:
    """The LIST positional."""
    parser.add_argument("name", metavar="LIST", type=list_name, help="ID or lists/ID")


def run_lists_delete(client: Client, args: argparse.Namespace) -> int:
    """lists delete LIST."""
    reply = client.call(client.contacts.DeleteList, capi.DeleteListRequest(name=args.name))
    return show_deleted(client, reply, args.name)


MEMBERS_PER_CALL = 10_000


def members_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lists add` and `lists remove`."""
    list_argument(parser)
    parser.add_argument(
        "contacts",
        nargs="+",
        metavar="CONTACT",
        help="ID or contacts/ID; '-' reads them from standard input, one per line",
    )


def member_names(texts: Sequence[str]) -> list[str]:
    """The CONTACT arguments, with `-` replaced by the ids on standard input; all checked first."""
    names: list[str] = []
    for text in texts:
        for word in read_text("-", "standard input").split() if text == "-" else [text]:
            try:
                names.append(contact_name(word))
            except argparse.ArgumentTypeError as exc:
                raise UsageError(str(exc)) from None
    if not names:
        raise UsageError("no contacts given")
    return names


def run_lists_add(client: Client, args: argparse.Namespace) -> int:
    """lists add LIST CONTACT... | -: in calls of at most 10,000 contacts."""
    total = capi.AddListMembersResponse()
    try:
        for batch in batched(member_names(args.contacts), MEMBERS_PER_CALL):
            reply = client.call(
                client.contacts.AddListMembers, capi.AddListMembersRequest(list=args.name, contacts=batch)
            )
            total.added += reply.added
            total.already_members += reply.already_members
    except grpc.RpcError:
        if total.added or total.already_members:
            print(f"{PROG}: {total.added} contacts were added before the error", file=sys.stderr)
        raise
    if client.json:
        print_json(total)
    else:
        print(f"added {total.added}, already members {total.already_members}")
    return EXIT_OK


def run_lists_remove(client: Client, args: argparse.Namespace) -> int:
    """lists remove LIST CONTACT... | -: in calls of at most 10,000 contacts."""
    total = capi.RemoveListMembersResponse()
    try:
        for batch in batched(member_names(args.contacts), MEMBERS_PER_CALL):
            reply = client.call(
                client.contacts.RemoveListMembers,
                capi.RemoveListMembersRequest(list=args.name, contacts=batch),
            )
            total.removed += reply.removed
    except grpc.RpcError:
        if total.removed:
            print(f"{PROG}: {total.removed} contacts were removed before the error", file=sys.stderr)
        raise
    if client.json:
        print_json(total)
    else:
        print(f"removed {total.removed}")
    return EXIT_OK


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


# --- suppressions


EXIT_SUPPRESSED = 3  # `suppressions check`: the address must not be contacted


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


CONTACT_COMMANDS: tuple[Command | Group, ...] = (
    Group(
        "contacts",
        "contacts: create, get, update, delete, list, import",
        (
            Command("create", "create a contact", contacts_create_arguments, run_contacts_create),
            Command("get", "show a contact", contact_argument, run_contacts_get),
            Command("update", "change a contact's fields", contacts_update_arguments, run_contacts_update),
            Command(
                "delete", "delete a contact and its list memberships", contact_argument, run_contacts_delete
            ),
            Command("list", "list contacts, oldest first", contacts_list_arguments, run_contacts_list),
            Command(
                "import",
                "create or update contacts from a CSV file",
                contacts_import_arguments,
                run_contacts_import,
            ),
        ),
    ),
    Group(
        "lists",
        "static lists of contacts",
        (
            Command("create", "create a list", lists_create_arguments, run_lists_create),
            Command("list", "list the lists", paging_arguments, run_lists_list),
            Command("delete", "delete a list (not its contacts)", list_argument, run_lists_delete),
            Command("add", "add contacts to a list", members_arguments, run_lists_add),
            Command("remove", "remove contacts from a list", members_arguments, run_lists_remove),
        ),
    ),
    Group(
        "segments",
        "saved contact filters, resolved at launch",
        (
            Command("create", "create a segment", segments_create_arguments, run_segments_create),
            Command("get", "show a segment", segment_argument, run_segments_get),
            Command("list", "list the segments", paging_arguments, run_segments_list),
            Command("delete", "delete a segment", segment_argument, run_segments_delete),
        ),
    ),
    Group(
        "suppressions",
        "addresses that must never be contacted",
        (
            Command("add", "suppress addresses", suppressions_add_arguments, run_suppressions_add),
            Command(
                "remove", "remove one suppression", suppressions_remove_arguments, run_suppressions_remove
            ),
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
    ),
)


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


EVENT_COMMANDS = Group(
    "events",
    "record delivery and engagement events about sent messages",
    (Command("record", "record events from a JSON lines file", events_record_arguments, run_events_record),),
)


COMMANDS: tuple[Command | Group, ...] = (
    Command("create", "create a campaign in DRAFT", create_arguments, run_create),
    Command("get", "show a campaign", name_argument, run_get),
    Command("list", "list campaigns, newest first", list_arguments, run_list),
    Command("update", "change a campaign's fields", update_arguments, run_update),
    Command("delete", "delete a DRAFT campaign, or any idle one with --force", delete_arguments, run_delete),
    Command(
        "schedule",
        "DRAFT -> SCHEDULED: start by itself at --at",
        lifecycle_arguments(attestation=True, schedule=True),
        run_schedule,
    ),
    Command("unschedule", "SCHEDULED -> DRAFT", lifecycle_arguments(), run_unschedule),
    Command("launch", "DRAFT or SCHEDULED -> sending now", lifecycle_arguments(attestation=True), run_launch),
    Command("pause", "QUEUED or RUNNING -> PAUSED", lifecycle_arguments(reason=True), run_pause),
    Command("resume", "PAUSED -> RUNNING", lifecycle_arguments(reason=True), run_resume),
    Command("stop", "QUEUED, RUNNING or PAUSED -> STOPPED", lifecycle_arguments(reason=True), run_stop),
    Command(
        "restart",
        "STOPPED -> RUNNING, where the channel type allows it",
        lifecycle_arguments(reason=True),
        run_restart,
    ),
    Command(
        "retry-failed",
        "COMPLETED -> RUNNING: send the FAILED messages again",
        lifecycle_arguments(),
        run_retry_failed,
    ),
    Command(
        "archive", "hide a campaign that is not sending", lifecycle_arguments(channel=False), run_archive
    ),
    Command(
        "unarchive", "show an archived campaign again", lifecycle_arguments(channel=False), run_unarchive
    ),
    Command("duplicate", "copy a campaign into a new DRAFT", duplicate_arguments, run_duplicate),
    Command("add-channel", "add a DRAFT channel to a campaign", add_channel_arguments, run_add_channel),
    Command(
        "test-send", "send a DRAFT channel's content to test addresses", test_send_arguments, run_test_send
    ),
    Command("preview", "show the message one address would get", preview_arguments, run_preview),
    Command("estimate", "count the recipients a launch would queue", estimate_arguments, run_estimate),
    Command("report", "show a campaign's counters", name_argument, run_report),
    Command("messages", "list a campaign's messages", messages_arguments, run_messages),
    Command("history", "list a campaign's transitions, oldest first", history_arguments, run_history),
    Command("watch", "show live progress until the campaign ends", name_argument, run_watch),
    Command("channels", "list the channel types the daemon's plugins provide", no_arguments, run_channels),
    *CONTACT_COMMANDS,
    EVENT_COMMANDS,
)


# ---------------------------------------------------------------------------------------------
# Entry point


def global_arguments(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Connection and output options. They are accepted before and after the command; after it,
    they default to SUPPRESS so that they do not overwrite what was given before it."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")

    def add(*flags: str, **options: Any) -> None:
        # A command's own option of the same name wins (`suppressions list --address`); the
        # connection option is then accepted before the command name only.
        if top or flags[0] not in parser._option_string_actions:
            group.add_argument(*flags, **options)

    add("--socket", default=default(None), metavar="PATH", help=f"the daemon's Unix socket (${SOCKET_ENV})")
    add(
        "--config",
        default=default(None),
        metavar="FILE",
        help="read the socket path from the daemon's config",
    )
    add(
        "--address",
        default=default(None),
        metavar="HOST:PORT",
        help=f"the daemon's TLS listener (${ADDRESS_ENV})",
    )
    add(
        "--ca-file",
        default=default(None),
        metavar="FILE",
        help="CA certificates for --address (default: system)",
    )
    add("--cert-file", default=default(None), metavar="FILE", help="client certificate for mTLS")
    add("--key-file", default=default(None), metavar="FILE", help="client key for mTLS")
    add("--token", default=default(""), help=f"bearer token for --address (${TOKEN_ENV})")
    add("--token-file", default=default(None), metavar="FILE", help="read the bearer token from FILE")
    add(
        "--timeout",
        type=positive_float,
        default=default(30.0),
        metavar="SECONDS",
        help="deadline of each call (30)",
    )
    add("--json", action="store_true", default=default(False), help="print proto3 JSON")


def add_commands(
    subparsers: argparse._SubParsersAction[_Parser], commands: Sequence[Command | Group], dest: str
) -> None:
    """One subparser per command; a Group gets subparsers of its own."""
    for entry in commands:
        sub = subparsers.add_parser(entry.name, help=entry.help, description=entry.help)
        if isinstance(entry, Group):
            nested = sub.add_subparsers(dest=f"{dest}_{entry.name}", required=True, metavar="COMMAND")
            add_commands(nested, entry.commands, f"{dest}_{entry.name}")
            continue
        entry.arguments(sub)
        global_arguments(sub, top=False)
        sub.set_defaults(run=entry.run)


def build_parser(commands: Sequence[Command | Group] = COMMANDS) -> _Parser:
    """The parser for the whole command line."""
    parser = _Parser(prog=PROG, description="A command-line client of the campaignd daemon.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    global_arguments(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(subparsers, commands, "command")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `campaignctl`; returns the exit status."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    client: Client | None = None
    try:
        target = resolve_target(args, environ)
        client = Client(target, timeout=args.timeout, json_output=args.json)
        status: int = args.run(client, args)
        return status
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as err:
        if not isinstance(err, grpc.Call):
            raise
        where = client.target.description if client else "?"
        for line in rpc_error_lines(err, where):
            print(line, file=sys.stderr)
        return exit_status(err.code())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `head`) went away; stop quietly and keep the interpreter from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
