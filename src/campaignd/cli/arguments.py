"""Parsing of arguments: value parsers for argparse, and the options several commands share."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from google.protobuf import json_format

from campaignd.cli.connection import EXIT_USAGE, PROG, Client, Message, UsageError, read_text
from campaignd.v1 import contact_service_pb2 as capi
from campaignd.v1 import resources_pb2 as res

ID_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
RELATIVE_TIME = re.compile(r"\+(\d+)([smhd])")
RELATIVE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Parser(argparse.ArgumentParser):
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
    # page_size is an int32: a larger one could not be sent, and the daemon would lower it anyway.
    return min(int(text), 2**31 - 1)


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
        try:
            return now + dt.timedelta(**{RELATIVE_UNITS[relative.group(2)]: int(relative.group(1))})
        except OverflowError:
            raise argparse.ArgumentTypeError(f"invalid time {text!r}: later than 9999-12-31") from None
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
    try:
        # The request carries UTC: an instant that is not a date in UTC cannot be sent.
        when.astimezone(dt.UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: in UTC it is outside the years 1 to 9999"
        ) from None
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


def parse_json(text: str, message: Message, what: str) -> Message:
    """Proto3 JSON into `message`; unknown fields are an error, so typos are not silently dropped."""
    try:
        return json_format.Parse(text, message)
    except json_format.ParseError as exc:
        raise UsageError(f"invalid {what}: {exc}") from None


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
