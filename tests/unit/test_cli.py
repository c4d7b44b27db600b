"""campaignctl without a daemon: argument parsing, rendering, error reporting and target resolution."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import pathlib
import re
from typing import Any, cast

import grpc
import pytest
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from rich.console import Console

from campaignd.cli import arguments, connection, render
from campaignd.cli import main as entry
from campaignd.v1 import campaign_service_pb2 as api
from campaignd.v1 import resources_pb2 as res


def test_campaign_names_accept_id_or_resource_name() -> None:
    """`spring` and `campaigns/spring` name the same campaign; other shapes are refused."""
    assert arguments.campaign_name("spring") == "campaigns/spring"
    assert arguments.campaign_name("campaigns/spring") == "campaigns/spring"
    for bad in ("Spring", "9lives", "a_b", "campaigns/", "lists/x", "a" * 64):
        with pytest.raises(argparse.ArgumentTypeError):
            arguments.campaign_name(bad)


def test_schedule_time_takes_offsets_and_relative_times() -> None:
    """--at takes ISO 8601 with an offset or +N[smhd]; a time without an offset is refused."""
    now = dt.datetime(2025, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert arguments.schedule_time("+10m", now) == now + dt.timedelta(minutes=10)
    assert arguments.schedule_time("+2h", now) == now + dt.timedelta(hours=2)
    assert arguments.schedule_time("2025-05-01T09:00:00+02:00") == dt.datetime(
        2025, 5, 1, 7, 0, tzinfo=dt.UTC
    )
    assert arguments.schedule_time("2025-05-01T09:00:00Z") == dt.datetime(2025, 5, 1, 9, 0, tzinfo=dt.UTC)
    for bad in ("2025-05-01T09:00:00", "tomorrow", "+10x", "+-1m"):
        with pytest.raises(argparse.ArgumentTypeError):
            arguments.schedule_time(bad, now)


def test_content_applies_to_the_channel_before_it() -> None:
    """Each --content belongs to the last --channel; `k:=json` gives typed values."""
    args = entry.build_parser().parse_args(
        [
            "create",
            "--display-name",
            "x",
            "--channel",
            "test-email:mail",
            "--content",
            "text=Hi there",
            "--channel",
            '{"channel_id": "sms", "type": "test-sms", "rate_limit": 5}',
            "--content",
            "text=a=b",
            "--content",
            "parts:=[1, 2]",
        ]
    )
    mail, sms = arguments.build_channels(args.channel_specs)
    assert (mail.type, mail.channel_id, dict(mail.content)) == ("test-email", "mail", {"text": "Hi there"})
    assert (sms.type, sms.channel_id, sms.rate_limit) == ("test-sms", "sms", 5)
    assert sms.content["text"] == "a=b"
    assert json_format.MessageToDict(sms.content)["parts"] == [1, 2]


def test_content_before_any_channel_is_refused() -> None:
    """A --content with no --channel before it is a usage error."""
    with pytest.raises(connection.UsageError, match="must follow"):
        arguments.build_channels([("--content", "text=x"), ("--channel", "test-email:mail")])


def test_options_are_accepted_after_the_command() -> None:
    """--json and connection options work on either side of the command name."""
    args = entry.build_parser().parse_args(["--socket", "/a.sock", "list", "--json", "--state", "running"])
    assert (args.socket, args.json, args.state) == ("/a.sock", True, [res.Campaign.RUNNING])
    args = entry.build_parser().parse_args(["get", "x", "--socket", "/b.sock"])
    assert (args.socket, args.json, args.timeout) == ("/b.sock", False, 30.0)


def test_resource_groups_nest_their_commands() -> None:
    """A Group in the command table becomes `campaignctl GROUP COMMAND`."""
    seen: list[str] = []

    def run(client: connection.Client, args: Any) -> int:
        seen.append(args.name)
        return 0

    table = (
        arguments.Group(
            "contacts", "manage contacts", (arguments.Command("get", "show", arguments.name_argument, run),)
        ),
    )
    args = entry.build_parser(table).parse_args(["contacts", "get", "ann"])
    assert args.run is run


def test_campaign_table_has_aligned_columns() -> None:
    """The list view has the agreed headings and lines up every column."""
    campaigns = [
        res.Campaign(
            name="campaigns/a",
            display_name="A",
            state=res.Campaign.RUNNING,
            channels=[res.Channel(channel_id="mail", type="email")],
        ),
        res.Campaign(name="campaigns/long-name", display_name="Longer display", archived=True),
    ]
    lines = render.render_campaigns(campaigns).splitlines()
    assert lines[0].split() == ["NAME", "DISPLAY", "NAME", "STATE", "CHANNELS", "ARCHIVED", "UPDATED"]
    state_column = lines[0].index("STATE")
    assert [line[state_column:].split()[0] for line in lines[1:]] == ["RUNNING", "-"]
    assert "email:mail" in lines[1]
    assert lines[2].split()[-2:] == ["yes", "-"]


def test_single_campaign_view_lists_fields_and_channels() -> None:
    """`get` prints key/value lines and a channel table."""
    campaign = res.Campaign(
        name="campaigns/a",
        display_name="A",
        labels={"team": "growth"},
        audience=res.Audience(target_lists=["lists/demo"], exclude_lists=["lists/bounced"]),
        channels=[res.Channel(channel_id="mail", type="email", state=res.Channel.PAUSED)],
    )
    text = render.render_campaign(campaign)
    assert "Labels:        team=growth" in text
    assert "Audience:      lists/demo; excluding lists/bounced" in text
    assert text.splitlines()[-1].split()[:3] == ["mail", "email", "PAUSED"]


def test_progress_line_shows_state_counts_rate_and_eta() -> None:
    """A watch line has state, percent done, sent/total, failed, rate and time left."""
    update = api.WatchCampaignResponse(
        campaign=res.Campaign(state=res.Campaign.RUNNING),
        report=res.CampaignReport(
            totals=res.Progress(
                total=1000, sent=300, delivered=100, failed=7, percent_done=40.7, current_rate=12.5
            )
        ),
    )
    update.time.FromDatetime(dt.datetime(2025, 5, 1, 12, 0, tzinfo=dt.UTC))
    update.report.totals.eta.FromDatetime(dt.datetime(2025, 5, 1, 12, 3, 5, tzinfo=dt.UTC))
    line = render.progress_line(update)
    for part in ("RUNNING", "40.7%", "sent 400/1000", "failed 7", "12.5 msg/s"):
        assert part in line
    assert line.endswith("eta 3m05s")
    assert "\n" not in line
    drawn = io.StringIO()
    Console(file=drawn, width=150, color_system=None).print(render.progress_bar(update))
    bar = drawn.getvalue()
    for part in ("RUNNING", "40.7%", "sent 400/1000", "failed 7", "12.5 msg/s", "eta 3m05s"):
        assert part in bar
    assert bar.count("\n") == 1


def test_progress_line_says_when_a_closed_window_reopens() -> None:
    """The report gives window_reopens_time per channel: the watch line names the earliest when
    every RUNNING channel waits for its window, and nothing while one of them can send."""
    closed = res.ChannelReport(channel_id="a", state=res.Channel.RUNNING)
    closed.progress.window_reopens_time.FromDatetime(dt.datetime(2025, 5, 2, 8, 0, tzinfo=dt.UTC))
    later = res.ChannelReport(channel_id="b", state=res.Channel.RUNNING)
    later.progress.window_reopens_time.FromDatetime(dt.datetime(2025, 5, 2, 9, 0, tzinfo=dt.UTC))
    sending = res.ChannelReport(channel_id="c", state=res.Channel.RUNNING)
    done = res.ChannelReport(channel_id="d", state=res.Channel.COMPLETED)

    def line(*channels: res.ChannelReport) -> str:
        update = api.WatchCampaignResponse(
            campaign=res.Campaign(state=res.Campaign.RUNNING),
            report=res.CampaignReport(totals=res.Progress(total=10), channels=channels),
        )
        return render.progress_line(update)

    first = dt.datetime(2025, 5, 2, 8, 0, tzinfo=dt.UTC).astimezone().strftime("%H:%M")
    assert "window closed until" in line(later, closed, done)
    assert first in line(later, closed, done).split("window closed until")[1]
    assert "window closed" not in line(closed, sending)
    assert "window closed" not in line(done)


def test_tables_on_a_terminal_are_drawn_by_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal a table gets a ruled header and keeps every cell, brackets included, as text."""
    monkeypatch.setattr(render.OUTPUT, "terminal", True)
    monkeypatch.setenv("COLUMNS", "120")
    drawn = render.table(["NAME", "REASON"], [["spring", "[bounce] mailbox full"], ["x", "-"]])
    assert "[bounce] mailbox full" in drawn
    assert "─" in drawn  # the rule under the header
    assert "NAME" in drawn
    monkeypatch.setattr(render.OUTPUT, "terminal", False)
    assert render.table(["NAME", "REASON"], [["x", "-"]]) == "NAME  REASON\nx     -"


class FakeCall:
    """The parts of a failed grpc.Call that error reporting reads."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: Any) -> None:
        self._code, self._message = code, message
        packed = []
        for detail in details:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
        status = status_pb2.Status(code=code.value[0], message=message, details=packed)
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


def test_rpc_errors_show_code_reason_and_field_violations() -> None:
    """A refusal prints its code and message, the ErrorInfo reason and every field violation."""
    call = FakeCall(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad campaign",
        error_details_pb2.ErrorInfo(reason="VALIDATION_FAILED", domain="campaignd"),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="campaign.display_name", description="required"
                )
            ]
        ),
    )
    lines = connection.rpc_error_lines(cast(grpc.Call, call), "/run/campaignd.sock")
    assert lines == [
        "campaignctl: INVALID_ARGUMENT: bad campaign",
        "  reason: VALIDATION_FAILED",
        "  field campaign.display_name: required",
    ]
    assert connection.exit_status(grpc.StatusCode.INVALID_ARGUMENT) == 2
    assert connection.exit_status(grpc.StatusCode.FAILED_PRECONDITION) == 1


def test_unavailable_names_where_the_daemon_was_expected() -> None:
    """UNAVAILABLE says the daemon is not reachable at the socket that was tried."""
    call = FakeCall(grpc.StatusCode.UNAVAILABLE, "connect failed")
    lines = connection.rpc_error_lines(cast(grpc.Call, call), "/run/campaignd.sock")
    assert lines == [
        "campaignctl: UNAVAILABLE: the daemon is not reachable at /run/campaignd.sock (connect failed)"
    ]


def test_socket_comes_from_flag_then_environment_then_config(tmp_path: pathlib.Path) -> None:
    """--socket beats $CAMPAIGND_SOCKET, which beats the config's default socket."""
    parser = entry.build_parser()
    env = {"CAMPAIGND_SOCKET": "/env.sock"}
    assert connection.resolve_target(parser.parse_args(["--socket", "/flag.sock", "list"]), env).target == (
        "unix:/flag.sock"
    )
    assert connection.resolve_target(parser.parse_args(["list"]), env).target == "unix:/env.sock"
    config = tmp_path / "config.toml"
    config.write_text('[grpc]\nsocket = "/from/config.sock"\n', encoding="utf-8")
    args = parser.parse_args(["--config", str(config), "list"])
    assert connection.resolve_target(args, env).target == "unix:/from/config.sock"
    with pytest.raises(connection.UsageError, match="only one"):
        connection.resolve_target(parser.parse_args(["--socket", "/a", "--address", "h:1", "list"]), {})


def test_an_address_that_is_not_host_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--address and $CAMPAIGND_ADDRESS take the TCP listener's HOST:PORT; a Unix socket or a URL
    there is refused with exit 2 before anything is dialled."""
    parser = entry.build_parser()
    for good in ("mx1.example.org:7443", "127.0.0.1:1", "[::1]:65535"):
        assert connection.resolve_target(parser.parse_args(["--address", good, "list"]), {}).target == good
    for bad, expected in (
        ("unix:/run/campaignd/campaignd.sock", "for a Unix socket use --socket PATH"),
        ("/run/campaignd/campaignd.sock", "for a Unix socket use --socket PATH"),
        ("https://mx1:7443", "not 'https://mx1:7443'"),
        ("mx1", "not 'mx1'"),
        ("mx1:0", "not 'mx1:0'"),
        (":7443", "not ':7443'"),
        ("mx1:port", "not 'mx1:port'"),
    ):
        with pytest.raises(connection.UsageError, match=f"--address takes .*{re.escape(expected)}"):
            connection.resolve_target(parser.parse_args(["--address", bad, "list"]), {})
    with pytest.raises(connection.UsageError, match=r"\$CAMPAIGND_ADDRESS takes"):
        connection.resolve_target(parser.parse_args(["list"]), {"CAMPAIGND_ADDRESS": "unix:/x.sock"})
    assert entry.main(["--address", "unix:/x.sock", "list"]) == 2
    assert "for a Unix socket use --socket PATH" in capsys.readouterr().err


def test_unavailable_from_the_daemon_itself_is_its_answer() -> None:
    """An UNAVAILABLE the daemon answered with a reason is printed as its answer, not as unreachable."""
    call = FakeCall(
        grpc.StatusCode.UNAVAILABLE,
        "the email plugin failed",
        error_details_pb2.ErrorInfo(reason="PLUGIN_ERROR"),
    )
    lines = connection.rpc_error_lines(cast(grpc.Call, call), "/run/campaignd.sock")
    assert lines == ["campaignctl: UNAVAILABLE: the email plugin failed", "  reason: PLUGIN_ERROR"]
