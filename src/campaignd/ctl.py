"""`campaignctl`: a command-line client of the campaignd gRPC API.

Every command is one row of `COMMANDS`: its arguments and a function that builds the request,
makes the call and prints the answer. Bad local input is refused before any call is made.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf import message as pb_message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from campaignd import __version__, config
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import campaign_service_pb2_grpc as api_grpc
from campaignd.v1 import resources_pb2 as res

PROG = "campaignctl"
EXIT_OK = 0
EXIT_FAILURE = 1  # the daemon refused or failed the call
EXIT_USAGE = 2  # bad local input, or the daemon said INVALID_ARGUMENT
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

SOCKET_ENV = "CAMPAIGND_SOCKET"
ADDRESS_ENV = "CAMPAIGND_ADDRESS"
TOKEN_ENV = "CAMPAIGND_TOKEN"  # noqa: S105 - the name of a variable, not a token

ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
TERMINAL_STATES = frozenset({res.Campaign.COMPLETED, res.Campaign.STOPPED, res.Campaign.FAILED})
UPDATABLE_FIELDS = ("display_name", "labels", "audience", "time_zone", "guard", "channels")
RELATIVE_TIME = re.compile(r"^\+(\d+)([smhd])$")
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
    if not ID_PATTERN.match(campaign_id):
        raise argparse.ArgumentTypeError(
            f"invalid campaign name {text!r}: expected ID or campaigns/ID, where ID is 1-63 characters "
            "of a-z, 0-9 and '-' starting with a letter"
        )
    return f"campaigns/{campaign_id}"


def resource_id(text: str) -> str:
    """A campaign or channel id: 1-63 characters of [a-z0-9-], starting with a letter."""
    # argparse also passes string defaults through here: "" is the default of "none given".
    if text and not ID_PATTERN.match(text):
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
    if not percent.isdigit() or not 1 <= int(percent) <= 100:
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
    if not text.isdigit() or int(text) < 1:
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
    if relative := RELATIVE_TIME.match(text):
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
    if not channel_type or not ID_PATTERN.match(channel_id):
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
    engagement = [
        [ch.channel_id, str(ch.progress.opened), str(ch.progress.clicked), str(ch.progress.bounced)]
        for ch in report.channels
        if ch.progress.opened or ch.progress.clicked or ch.progress.bounced
    ]
    if engagement:
        parts.append(table(["CHANNEL", "OPENED", "CLICKED", "BOUNCED"], engagement))
    transports = [
        [ch.channel_id, name, str(p.total), str(sent_count(p)), str(p.failed), f"{p.current_rate:.1f}/s"]
        for ch in report.channels
        for name, p in sorted(ch.by_transport.items())
    ]
    if transports:
        parts.append(table(["CHANNEL", "TRANSPORT", "TOTAL", "SENT", "FAILED", "RATE"], transports))
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
                m.transport or "-",
                m.reason or "-",
                m.outcome or "-",
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
            "TRANSPORT",
            "REASON",
            "OUTCOME",
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
    if code == grpc.StatusCode.UNAVAILABLE:
        head = f"the daemon is not reachable at {where}" + (f" ({details})" if details else "")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        head = f"no answer from {where} in time (see --timeout)"
    else:
        head = details
    lines = [f"{PROG}: {code.name}: {head}"]
    if code == grpc.StatusCode.UNAUTHENTICATED:
        lines.append(f"  pass a token with --token-file, --token or ${TOKEN_ENV}")
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        # The rich status disagrees with the call's status; the code and message above still hold.
        status = None
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
    for flag, what in (
        ("--target-list", "a list to target, lists/ID"),
        ("--target-segment", "a segment to target, segments/ID"),
        ("--exclude-list", "a list to exclude"),
        ("--exclude-segment", "a segment to exclude"),
    ):
        more = "; replaces that part of the audience" if update else ""
        parser.add_argument(
            flag, action="append", default=None, metavar="NAME", help=f"{what} (repeatable{more})"
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
    if not ID_PATTERN.match(channel_id):
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
            args, ["type", "id", "content", "content_file", "transport", "rate_limit", "remarket"]
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
    Command("estimate", "count the recipients a launch would queue", estimate_arguments, run_estimate),
    Command("report", "show a campaign's counters", name_argument, run_report),
    Command("messages", "list a campaign's messages", messages_arguments, run_messages),
    Command("history", "list a campaign's transitions, oldest first", history_arguments, run_history),
    Command("watch", "show live progress until the campaign ends", name_argument, run_watch),
)


# ---------------------------------------------------------------------------------------------
# Entry point


def global_arguments(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Connection and output options. They are accepted before and after the command; after it,
    they default to SUPPRESS so that they do not overwrite what was given before it."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--socket", default=default(None), metavar="PATH", help=f"the daemon's Unix socket (${SOCKET_ENV})"
    )
    group.add_argument(
        "--config",
        default=default(None),
        metavar="FILE",
        help="read the socket path from the daemon's config",
    )
    group.add_argument(
        "--address",
        default=default(None),
        metavar="HOST:PORT",
        help=f"the daemon's TLS listener (${ADDRESS_ENV})",
    )
    group.add_argument(
        "--ca-file",
        default=default(None),
        metavar="FILE",
        help="CA certificates for --address (default: system)",
    )
    group.add_argument(
        "--cert-file", default=default(None), metavar="FILE", help="client certificate for mTLS"
    )
    group.add_argument("--key-file", default=default(None), metavar="FILE", help="client key for mTLS")
    group.add_argument("--token", default=default(""), help=f"bearer token for --address (${TOKEN_ENV})")
    group.add_argument(
        "--token-file", default=default(None), metavar="FILE", help="read the bearer token from FILE"
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=default(30.0),
        metavar="SECONDS",
        help="deadline of each call (30)",
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print proto3 JSON")


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
