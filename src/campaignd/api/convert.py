"""Requests in, records out: validation of every API input with field paths, and conversions."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import math
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from campaignd.campaigns import MAX_CHANNELS, CampaignReport, ChannelReport, Progress
from campaignd.errors import FieldViolation, invalid_argument
from campaignd.lifecycle import ChannelState, MessageState
from campaignd.model import (
    Attestation,
    Audience,
    CampaignRecord,
    ChannelRecord,
    Guard,
    Remarketing,
    SendWindow,
    TransportShare,
)
from campaignd.plugin.manager import Plugins
from campaignd.store.campaigns import Event
from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import resources_pb2 as pb

ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
LIST_NAME = re.compile(r"lists/[a-z][a-z0-9-]{0,62}")
SEGMENT_NAME = re.compile(r"segments/[a-z][a-z0-9-]{0,62}")
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
TRANSPORT = re.compile(r"[a-z][a-z0-9_-]{0,62}")

MAX_AUDIENCE_ENTRIES = 100
MAX_LABELS = 64
MAX_CONTENT_BYTES = 256 * 1024
MAX_TEXT = 1000
OUTCOMES = frozenset(s.value for s in MessageState) | {
    "answered",
    "busy",
    "no_answer",
    "unreachable",
    "rejected",
    "timed_out",
    "not_opened",
}


class Violations:
    """Collects every problem of a request so that all are reported at once."""

    def __init__(self) -> None:
        self.found: list[FieldViolation] = []

    def add(self, path: str, description: str) -> None:
        """Record one problem."""
        self.found.append(FieldViolation(path, description))

    def raise_if_any(self) -> None:
        """INVALID_ARGUMENT with every problem found so far."""
        if self.found:
            raise invalid_argument(self.found)

    def text(self, path: str, value: str, *, max_length: int = MAX_TEXT, required: bool = False) -> None:
        """A free-text field: length bound, no control characters."""
        if required and not value.strip():
            self.add(path, "required")
        elif len(value) > max_length:
            self.add(path, f"longer than {max_length} characters")
        elif any(_control(ch) and ch != "\t" for ch in value):
            self.add(path, "contains control characters")

    def request_id(self, path: str, value: str) -> None:
        """An idempotency key: optional, 1-100 characters of [A-Za-z0-9_.:-]."""
        if value and not REQUEST_ID.fullmatch(value):
            self.add(path, "must be 1-100 characters of letters, digits and _.:-")

    def etag(self, path: str, value: str) -> None:
        """An etag as the server sent it."""
        if len(value) > 100:
            self.add(path, "longer than 100 characters")


def id_from_name(name: str, collection: str, path: str = "name") -> str:
    """The id in `{collection}/{id}`, or INVALID_ARGUMENT naming `path`."""
    prefix = f"{collection}/"
    found = name.removeprefix(prefix) if name.startswith(prefix) else None
    if found is None or not ID.fullmatch(found):
        raise invalid_argument(
            [
                FieldViolation(
                    path, f"must be {collection}/{{id}} with an id of 1-63 [a-z0-9-] starting with a letter"
                )
            ]
        )
    return found


def campaign_id_from_name(name: str, path: str = "name") -> str:
    """The id in `campaigns/{id}`, or INVALID_ARGUMENT naming `path`."""
    return id_from_name(name, "campaigns", path)


def check_id(v: Violations, path: str, value: str, *, required: bool = False) -> None:
    """A resource or channel id: 1-63 characters of [a-z0-9-] starting with a letter; empty is
    allowed unless `required` (a new resource then gets a generated id)."""
    if not value:
        if required:
            v.add(path, "required")
    elif not ID.fullmatch(value):
        v.add(path, "must be 1-63 characters of [a-z0-9-] starting with a letter")


# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
MAX_NESTING = 32


def check_timestamp(v: Violations, path: str, value: timestamp_pb2.Timestamp) -> dt.datetime | None:
    """The time a Timestamp stands for, or None (recorded in v) when it is outside the type's
    range or its nanos are not 0-999,999,999."""
    if not TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS:
        v.add(path, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
        return None
    if not 0 <= value.nanos <= 999_999_999:
        v.add(f"{path}.nanos", "must be between 0 and 999999999")
        return None
    return value.ToDatetime(tzinfo=dt.UTC)


def struct_dict(v: Violations, path: str, struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict, checked first: every number finite (JSON has no NaN or Infinity, and
    neither database stores them) and at most MAX_NESTING levels deep; {} when not (in v)."""
    problems = struct_problems(path, struct)
    for problem in problems:
        v.add(problem.field, problem.description)
    return {} if problems else json_format.MessageToDict(struct)


def struct_problems(path: str, struct: struct_pb2.Struct) -> list[FieldViolation]:
    """The non-finite numbers and too deep nesting in a Struct, each on its path."""
    found: list[FieldViolation] = []
    for key, value in struct.fields.items():
        _value_problems(found, f"{path}.{key[:70]}", value, 1)
    return found


def _value_problems(found: list[FieldViolation], path: str, value: struct_pb2.Value, depth: int) -> None:
    kind = value.WhichOneof("kind")
    if depth > MAX_NESTING:
        found.append(FieldViolation(path, f"nested deeper than {MAX_NESTING} levels"))
    elif kind == "number_value" and not math.isfinite(value.number_value):
        found.append(FieldViolation(path, "must be a finite number (not NaN or Infinity)"))
    elif kind == "struct_value":
        for key, item in value.struct_value.fields.items():
            _value_problems(found, f"{path}.{key[:70]}", item, depth + 1)
    elif kind == "list_value":
        for index, item in enumerate(value.list_value.values):
            _value_problems(found, f"{path}[{index}]", item, depth + 1)


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp, or None."""
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


# -- records -> messages ---------------------------------------------------------------------


def campaign_message(record: CampaignRecord) -> pb.Campaign:
    """The Campaign resource for a stored campaign."""
    message = pb.Campaign(
        name=record.name,
        display_name=record.display_name,
        labels=record.labels,
        audience=pb.Audience(**record.audience.to_json()),
        state=pb.Campaign.State.Value(record.state.name),
        archived=record.archived,
        etag=record.etag,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        time_zone=record.time_zone,
        guard=pb.GuardSettings(
            max_failure_percent=record.guard.max_failure_percent, min_sends=record.guard.min_sends
        ),
        channels=[channel_message(c) for c in record.channels],
    )
    if record.attestation is not None:
        message.attestation.CopyFrom(
            pb.ConsentAttestation(
                accepted_by=record.attestation.accepted_by,
                terms_version=record.attestation.terms_version,
                accept_time=timestamp(record.attestation.accept_time),
            )
        )
    return message


def channel_message(channel: ChannelRecord) -> pb.Channel:
    """The Channel message for a stored channel."""
    content = struct_pb2.Struct()
    content.update(channel.content)
    message = pb.Channel(
        channel_id=channel.channel_id,
        type=channel.type,
        state=pb.Channel.State.Value(channel.state.name),
        content=content,
        transports=[pb.TransportShare(transport=t.transport, percent=t.percent) for t in channel.transports],
        rate_limit=channel.rate_limit,
        schedule_time=timestamp(channel.schedule_time),
        state_time=timestamp(channel.state_time),
        ambiguous_sends=pb.Channel.RESEND if channel.ambiguous_sends == "resend" else pb.Channel.SKIP,
    )
    if channel.send_window is not None:
        message.send_window.CopyFrom(send_window_message(channel.send_window))
    if channel.error is not None:
        error_time = channel.error.get("time")
        message.error.CopyFrom(
            pb.ChannelError(
                code=channel.error.get("code", ""),
                message=channel.error.get("message", ""),
                time=timestamp(dt.datetime.fromisoformat(error_time)) if error_time else None,
            )
        )
    if channel.remarketing is not None:
        message.remarketing.CopyFrom(
            pb.RemarketingSource(
                campaign=channel.remarketing.campaign,
                channel_id=channel.remarketing.channel_id,
                outcomes=channel.remarketing.outcomes,
            )
        )
    return message


def send_window_message(window: SendWindow) -> pb.SendWindow:
    """A SendWindow message."""
    return pb.SendWindow(days=window.days, start_time=window.start_time, end_time=window.end_time)


def event_message(event: Event) -> pb.CampaignEvent:
    """A history entry."""
    return pb.CampaignEvent(
        sequence=event.sequence,
        channel_id=event.channel_id,
        operation=event.operation,
        from_state=_channel_state_value(event.from_state),
        to_state=_channel_state_value(event.to_state),
        actor=event.actor,
        cause=pb.CampaignEvent.Cause.Value(event.cause.upper()),
        reason=event.reason,
        time=timestamp(event.time),
        request_id=event.request_id,
    )


def report_message(report: CampaignReport) -> pb.CampaignReport:
    """The CampaignReport message for a report."""
    return pb.CampaignReport(
        campaign=report.campaign,
        state=pb.Campaign.State.Value(report.state.name),
        totals=progress_message(report.totals),
        channels=[_channel_report(c) for c in report.channels],
        report_time=timestamp(report.report_time),
    )


def _channel_report(channel: ChannelReport) -> pb.ChannelReport:
    message = pb.ChannelReport(
        channel_id=channel.channel_id,
        type=channel.type,
        state=pb.Channel.State.Value(channel.state.name),
        progress=progress_message(channel.progress),
        audience=pb.AudienceCounts(**channel.audience),
        by_transport={name: progress_message(p) for name, p in channel.by_transport.items()},
    )
    if channel.parts is not None:
        message.parts.CopyFrom(
            pb.PartCounts(
                sent=channel.parts.sent, delivered=channel.parts.delivered, failed=channel.parts.failed
            )
        )
    return message


def progress_message(progress: Progress) -> pb.Progress:
    """The Progress message: one counter per message state, named like the state."""
    engaged = progress.engagement
    message = pb.Progress(
        total=progress.total,
        failed_by_reason=progress.failed_by_reason,
        percent_done=progress.percent_done,
        current_rate=progress.current_rate,
        eta=timestamp(progress.eta),
        window_reopens_time=timestamp(progress.window_reopens_time),
        opened=engaged.opened,
        opens=engaged.opens,
        clicked=engaged.clicked,
        clicks=engaged.clicks,
        bounced=engaged.bounced,
        complained=engaged.complained,
        unsubscribed=engaged.unsubscribed,
        clicks_by_link=engaged.clicks_by_link,
        by_outcome=progress.by_outcome,
    )
    for state, n in progress.counts.items():
        setattr(message, state, n)
    return message


def _channel_state_value(state: str) -> pb.Channel.State.ValueType:
    return pb.Channel.State.Value(ChannelState(state).name) if state else pb.Channel.STATE_UNSPECIFIED


# -- messages -> records ---------------------------------------------------------------------


def campaign_record(
    v: Violations,
    message: pb.Campaign,
    campaign_id: str,
    plugins: Plugins,
    *,
    path: str = "campaign",
    fields: Iterable[str] | None = None,
) -> CampaignRecord:
    """Validate the writable fields of `message` (only `fields` when given) into a record."""
    wanted = set(fields) if fields is not None else None

    def check(name: str) -> bool:
        return wanted is None or name in wanted

    if check("display_name"):
        v.text(f"{path}.display_name", message.display_name, max_length=200, required=True)
    if check("labels"):
        _check_labels(v, f"{path}.labels", message.labels)
    if check("audience"):
        _check_audience(v, f"{path}.audience", message.audience)
    if check("time_zone") and message.time_zone:
        _check_time_zone(v, f"{path}.time_zone", message.time_zone)
    if check("guard"):
        if not 0 <= message.guard.max_failure_percent <= 100:
            v.add(f"{path}.guard.max_failure_percent", "must be between 0 and 100")
        if message.guard.min_sends < 0:
            v.add(f"{path}.guard.min_sends", "must not be negative")
    channels: list[ChannelRecord] = []
    if check("channels"):
        if len(message.channels) > MAX_CHANNELS:
            v.add(f"{path}.channels", f"at most {MAX_CHANNELS} channels")
        seen: set[str] = set()
        for index, channel in enumerate(message.channels[:MAX_CHANNELS]):
            channel_path = f"{path}.channels[{index}]"
            if channel.channel_id in seen:
                v.add(f"{channel_path}.channel_id", f"duplicate channel id {channel.channel_id!r}")
            seen.add(channel.channel_id)
            channels.append(
                channel_record(v, channel, plugins, path=channel_path, type_required=wanted is None)
            )
    now = dt.datetime.now(dt.UTC)
    return CampaignRecord(
        id=campaign_id,
        display_name=message.display_name,
        labels=dict(message.labels),
        audience=Audience(*(tuple(getattr(message.audience, k)) for k in Audience.KEYS)),
        time_zone=message.time_zone or "UTC",
        guard=Guard(message.guard.max_failure_percent, message.guard.min_sends),
        archived=False,
        version=0,
        create_time=now,
        update_time=now,
        channels=channels,
    )


def channel_record(
    v: Violations, message: pb.Channel, plugins: Plugins, *, path: str, type_required: bool = True
) -> ChannelRecord:
    """Validate a Channel message into a record (state DRAFT)."""
    check_id(v, f"{path}.channel_id", message.channel_id, required=True)
    if message.type or type_required:
        if not message.type:
            v.add(f"{path}.type", "required")
        elif message.type not in plugins.types:
            v.add(f"{path}.type", f"unknown channel type {message.type!r}; loaded: {sorted(plugins.types)}")
    before = len(v.found)
    content = struct_dict(v, f"{path}.content", message.content)
    if len(v.found) == before and len(json.dumps(content)) > MAX_CONTENT_BYTES:
        v.add(f"{path}.content", f"larger than {MAX_CONTENT_BYTES} bytes")
    elif len(v.found) == before and message.type in plugins.types:
        for problem in plugins.validate(message.type, content, launching=False):
            v.add(f"{path}.content.{problem.field}", problem.description)
    before = len(v.found)
    _check_transports(v, f"{path}.transports", message.transports)
    shares = tuple(TransportShare(t.transport, t.percent) for t in message.transports)
    if message.type in plugins.types and len(v.found) == before:
        for problem in plugins.check_transports(message.type, shares, launching=False):
            v.add(f"{path}.{problem.field}", problem.description)
    if not 0 <= message.rate_limit <= 1_000_000:
        v.add(f"{path}.rate_limit", "must be between 0 and 1000000 messages per second")
    if message.ambiguous_sends not in pb.Channel.AmbiguousSends.values():
        v.add(f"{path}.ambiguous_sends", "must be SKIP or RESEND")
    send_window = None
    if message.HasField("send_window"):
        send_window = _check_send_window(v, f"{path}.send_window", message.send_window)
    remarketing = None
    if message.HasField("remarketing"):
        remarketing = _check_remarketing(v, f"{path}.remarketing", message.remarketing)
    return ChannelRecord(
        channel_id=message.channel_id,
        type=message.type,
        state=ChannelState.DRAFT,
        content=content,
        transports=shares,
        rate_limit=message.rate_limit,
        state_time=dt.datetime.now(dt.UTC),
        send_window=send_window,
        remarketing=remarketing,
        ambiguous_sends="resend" if message.ambiguous_sends == pb.Channel.RESEND else None,
    )


def _control(ch: str) -> bool:
    """C0, DEL and C1: Unicode's control characters (category Cc)."""
    return ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F


def _check_labels(v: Violations, path: str, labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        v.add(path, f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            v.add(f"{path}[{key[:70]}]", "keys are 1-63 characters of [a-z0-9_.-] starting with a letter")
        if len(value) > 63 or any(_control(ch) for ch in value):
            v.add(f"{path}[{key[:70]}]", "values are at most 63 printable characters")


def _check_audience(v: Violations, path: str, audience: pb.Audience) -> None:
    for key in Audience.KEYS:
        entries = list(getattr(audience, key))
        pattern = LIST_NAME if key.endswith("lists") else SEGMENT_NAME
        if len(entries) > MAX_AUDIENCE_ENTRIES:
            v.add(f"{path}.{key}", f"at most {MAX_AUDIENCE_ENTRIES} entries")
        for index, entry in enumerate(entries[:MAX_AUDIENCE_ENTRIES]):
            if not pattern.fullmatch(entry):
                kind = "lists" if key.endswith("lists") else "segments"
                v.add(f"{path}.{key}[{index}]", f"must be {kind}/{{id}}")
        if len(set(entries)) != len(entries):
            v.add(f"{path}.{key}", "contains duplicates")


def _check_time_zone(v: Violations, path: str, name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        v.add(path, f"unknown IANA time zone {name[:64]!r}")


def _check_transports(v: Violations, path: str, shares: Sequence[pb.TransportShare]) -> None:
    names = [s.transport for s in shares]
    for index, share in enumerate(shares):
        if not TRANSPORT.fullmatch(share.transport):
            v.add(f"{path}[{index}].transport", "must be a transport name from the daemon's configuration")
        if not 1 <= share.percent <= 100:
            v.add(f"{path}[{index}].percent", "must be between 1 and 100")
    if shares and sum(s.percent for s in shares) != 100:
        v.add(path, "percentages must add up to 100")
    if len(set(names)) != len(names):
        v.add(path, "names a transport twice")


def _check_send_window(v: Violations, path: str, window: pb.SendWindow) -> SendWindow | None:
    stored = {"days": list(window.days), "start_time": window.start_time, "end_time": window.end_time}
    checked, problems = SendWindow.check(stored, path)
    v.found.extend(problems)
    return checked


def _check_remarketing(v: Violations, path: str, source: pb.RemarketingSource) -> Remarketing:
    if not source.campaign.startswith("campaigns/") or not ID.fullmatch(
        source.campaign.removeprefix("campaigns/")
    ):
        v.add(f"{path}.campaign", "must be campaigns/{id}")
    check_id(v, f"{path}.channel_id", source.channel_id, required=True)
    if not source.outcomes:
        v.add(f"{path}.outcomes", "required")
    for index, outcome in enumerate(source.outcomes):
        if outcome not in OUTCOMES:
            v.add(f"{path}.outcomes[{index}]", f"unknown outcome; one of {sorted(OUTCOMES)}")
    return Remarketing(source.campaign, source.channel_id, tuple(source.outcomes))


def attestation(
    v: Violations, message: pb.ConsentAttestation, present: bool, path: str, now: dt.datetime
) -> Attestation:
    """The consent attestation to store, accepted `now`; required."""
    if not present:
        v.add(path, "required: who accepted which terms version")
    else:
        v.text(f"{path}.accepted_by", message.accepted_by, max_length=200, required=True)
        v.text(f"{path}.terms_version", message.terms_version, max_length=100, required=True)
    return Attestation(message.accepted_by, message.terms_version, now)


# -- page tokens -----------------------------------------------------------------------------


def page_size(v: Violations, path: str, value: int, default: int, maximum: int) -> int:
    """The effective page size."""
    if value < 0:
        v.add(path, "must not be negative")
        return default
    return min(value or default, maximum)


MAX_PAGE_TOKEN = 1000
_Row = TypeVar("_Row")


class PagedRequest(Protocol):
    """A List request: the page it asks for."""

    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Page:
    """The page a List call answers: how many rows it shows, and where the page before it ended
    (None on the first page)."""

    size: int
    position: Mapping[str, str | int] | None
    selection: Any
    tokens: PageTokens

    @property
    def limit(self) -> int:
        """How many rows to read: one more than the page shows tells whether another follows."""
        return self.size + 1

    def result(
        self, rows: Sequence[_Row], position: Callable[[_Row], Mapping[str, str | int]]
    ) -> tuple[Sequence[_Row], str]:
        """The rows (read with `limit`) the page shows, and the next page's token ("" on the last
        page), which holds `position` of the last row shown."""
        if len(rows) <= self.size:
            return rows, ""
        return rows[: self.size], self.tokens.encode(position(rows[self.size - 1]), self.selection)


class PageTokens:
    """Opaque page tokens: a position and the filters it was made with, signed with an HMAC so
    that a client can neither forge nor alter one; every daemon of a database shares the key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]

    def page(self, v: Violations, request: PagedRequest, selection: Any, default: int, maximum: int) -> Page:
        """The page `request` asks for with the filters `selection`; a bad `page_size` or
        `page_token` is recorded in v."""
        size = page_size(v, "page_size", request.page_size, default, maximum)
        return Page(size, self.decode(v, "page_token", request.page_token, selection), selection, self)

    def encode(self, position: Mapping[str, str | int], selection: Any) -> str:
        """A token for the next page, bound to the filters it was made with."""
        body = json.dumps({"p": position, "f": _fingerprint(selection)}, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def decode(self, v: Violations, path: str, token: str, selection: Any) -> dict[str, str | int] | None:
        """The position in a page token, or None for the first page (or a bad token, recorded in v)."""
        if not token:
            return None
        body = self._verified(token)
        if body is None:
            v.add(path, "is not a page token this server made")
            return None
        try:
            found = json.loads(body)
            fingerprint, position = found["f"], found["p"]
        except (ValueError, KeyError, TypeError):
            # Signed by us yet unreadable: a token of an older format.
            v.add(path, "is not a page token this server made")
            return None
        if fingerprint != _fingerprint(selection):
            v.add(path, "was made for other filters")
            return None
        if not isinstance(position, dict) or not all(
            isinstance(value, str | int) and not isinstance(value, bool) for value in position.values()
        ):
            v.add(path, "is not a page token this server made")
            return None
        return position

    def _verified(self, token: str) -> bytes | None:
        if len(token) > MAX_PAGE_TOKEN or not token.isascii() or token.count(".") != 1:
            return None
        body_text, mac_text = token.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            return None
        return body if hmac.compare_digest(mac, self._mac(body)) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _fingerprint(selection: Any) -> str:
    return hashlib.sha256(repr(selection).encode()).hexdigest()[:16]


def channel_types(plugins: Plugins) -> list[svc.ChannelTypeInfo]:
    """What the loaded plugins provide, for ListChannelTypes."""
    by_type = {name: p for p in plugins.loaded for name in p.channel_types}
    found = []
    for name, declared in sorted(plugins.types.items()):
        plugin = by_type.get(name)
        semantics = plugins.semantics(name)
        info = svc.ChannelTypeInfo(
            name=name,
            address=declared.address,
            description=declared.description,
            version=declared.version,
            plugin=plugin.name if plugin else "",
            distribution=plugin.distribution if plugin else "",
            distribution_version=plugin.version if plugin else "",
            capabilities=sorted(declared.capabilities),
            content_fields=[
                svc.ContentFieldInfo(name=f.name, kind=f.kind, required=f.required, description=f.description)
                for f in declared.fields
            ],
            restartable=semantics.restartable,
            edit_while_scheduled=semantics.edit_while_scheduled.value,
            uses_transports=declared.uses_transports,
            transports=sorted(t.name for t in plugins.config.transports.values() if t.channel_type == name),
        )
        window = plugins.default_window(name)
        if window is not None:
            info.default_window.CopyFrom(send_window_message(window))
        found.append(info)
    return found
