"""`campaignctl` as an operator runs it: a subprocess talking to the real daemon over its socket.

The first tests check argument parsing and rendering without a daemon; the rest run the command
line against a daemon with the test channel types loaded.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import signal
import subprocess
import time

import pytest

from tests.integration.conftest import DaemonFactory, DaemonProcess
from tests.integration.ctl import CLEAN_ENV, CTL, ctl_at, ok, run_ctl
from tests.integration.test_auth import start_tls_daemon, write_pki

ATTESTATION = ("--accepted-by", "alice@example.com", "--terms-version", "2024-05")


def state_of(daemon: DaemonProcess, name: str) -> str:
    """The campaign's state as `get --json` reports it."""
    return str(json.loads(ok(daemon, "get", name, "--json"))["state"])


def create_demo(daemon: DaemonProcess, campaign_id: str = "spring") -> None:
    """A DRAFT campaign with one test-email channel targeting lists/demo."""
    ok(
        daemon,
        "create",
        "--id",
        campaign_id,
        "--display-name",
        "Spring sale",
        "--label",
        "team=growth",
        "--target-list",
        "lists/demo",
        "--channel",
        "test-email:mail",
        "--content",
        "text=Hello",
    )


@pytest.fixture
def plugged(plugged: DaemonProcess) -> DaemonProcess:
    """The API-only daemon with the test channel types, and lists/demo for its campaigns to target."""
    return plugged.ensure_lists("demo")


@pytest.mark.slow
def test_bad_input_exits_2_before_connecting() -> None:
    """Malformed input is refused with exit 2 even where no daemon listens: no call is attempted."""
    missing = "/nonexistent/campaignd.sock"
    cases = [
        ("launch", "spring"),
        ("schedule", "spring", "--at", "+1h"),
        ("schedule", "spring", *ATTESTATION),
        ("create", "--display-name", "x", "--label", "no-equals-sign"),
        ("get", "Bad_Name!"),
        ("create", "--file", "/nonexistent/campaign.json"),
        ("list", "--state", "sleeping"),
        ("update", "spring"),
    ]
    for args in cases:
        result = run_ctl("--socket", missing, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("campaignctl"), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "UNAVAILABLE" not in result.stderr
    assert "--accepted-by" in run_ctl("--socket", missing, "launch", "spring").stderr


# ---------------------------------------------------------------------------------------------
# Against the daemon


@pytest.mark.slow
def test_lifecycle_through_the_cli(plugged: DaemonProcess) -> None:
    """create, get, list, launch, pause, resume, stop, history, archive: each does what it says."""
    create_demo(plugged)
    shown = ok(plugged, "get", "spring")
    assert "State:         DRAFT" in shown
    assert shown.splitlines()[-1].split()[:3] == ["mail", "test-email", "DRAFT"]
    listed = ok(plugged, "list").splitlines()
    assert listed[0].split()[0] == "NAME"
    assert listed[1].split()[:4] == ["spring", "Spring", "sale", "DRAFT"]

    launched = ok(plugged, "launch", "campaigns/spring", *ATTESTATION)
    assert "alice@example.com accepted terms 2024-05" in launched
    assert state_of(plugged, "spring") in {"QUEUED", "RUNNING"}
    ok(plugged, "pause", "spring", "--reason", "checking the copy")
    assert state_of(plugged, "spring") == "PAUSED"
    ok(plugged, "resume", "spring")
    assert state_of(plugged, "spring") == "RUNNING"
    assert "State:         STOPPED" in ok(plugged, "stop", "spring")

    history = [line.split() for line in ok(plugged, "history", "spring").splitlines()[1:]]
    moves = [(row[4], row[5], row[6]) for row in history if row[3] == "mail"]
    assert [m[0] for m in moves][-4:] == ["launch", "pause", "resume", "stop"]
    assert moves[-4][1:] == ("DRAFT", moves[-3][1])
    assert moves[-3][2] == "PAUSED"
    assert moves[-2][1:] == ("PAUSED", "RUNNING")
    assert moves[-1][1:] == ("RUNNING", "STOPPED")
    assert any("checking the copy" in " ".join(row) for row in history)

    assert "Archived:      yes" in ok(plugged, "archive", "spring")
    result = ctl_at(plugged, "list")
    assert result.returncode == 0
    assert "spring" not in result.stdout
    assert "no campaigns" in result.stderr
    archived = ok(plugged, "list", "--archived").splitlines()
    assert archived[1].split()[0] == "spring"
    assert archived[1].split()[-3] == "yes"


@pytest.mark.slow
def test_json_output_parses_and_has_the_state(plugged: DaemonProcess) -> None:
    """--json prints proto3 JSON with the .proto field names; list prints one document."""
    create_demo(plugged)
    created = json.loads(ok(plugged, "get", "spring", "--json"))
    assert created["name"] == "campaigns/spring"
    assert created["state"] == "DRAFT"
    assert created["display_name"] == "Spring sale"
    assert created["audience"]["target_lists"] == ["lists/demo"]
    launched = json.loads(ok(plugged, "--json", "launch", "spring", *ATTESTATION))
    assert launched["state"] in {"QUEUED", "RUNNING"}
    assert launched["attestation"]["accepted_by"] == "alice@example.com"
    listed = json.loads(ok(plugged, "list", "--json"))
    assert [c["name"] for c in listed["campaigns"]] == ["campaigns/spring"]
    assert listed["next_page_token"] == ""
    report = json.loads(ok(plugged, "report", "spring", "--json"))
    assert report["campaign"] == "campaigns/spring"
    history = json.loads(ok(plugged, "history", "spring", "--json"))
    assert [e["operation"] for e in history["events"]][-1] == "launch"


@pytest.mark.slow
def test_bad_input_changes_nothing(plugged: DaemonProcess) -> None:
    """Launch without attestation, a malformed label and a bad name exit 2 and leave the daemon as it was."""
    create_demo(plugged)
    before = json.loads(ok(plugged, "get", "spring", "--json"))
    for args in (
        ("launch", "spring"),
        ("launch", "spring", "--accepted-by", "alice"),
        ("update", "spring", "--label", "team"),
        ("create", "--id", "other", "--display-name", "x", "--label", "=v"),
        ("pause", "spring!"),
    ):
        result = ctl_at(plugged, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip(), args
    after = json.loads(ok(plugged, "get", "spring", "--json"))
    assert after == before
    assert [c["name"] for c in json.loads(ok(plugged, "list", "--json"))["campaigns"]] == ["campaigns/spring"]


def test_invalid_argument_from_the_daemon_exits_2_with_the_field(plugged: DaemonProcess) -> None:
    """A create the daemon refuses as INVALID_ARGUMENT exits 2 and names the offending field."""
    result = ctl_at(plugged, "create", "--display-name", "", "--channel", "test-email:mail")
    assert result.returncode == 2
    assert result.stderr.startswith("campaignctl: INVALID_ARGUMENT: ")
    assert "  field campaign.display_name: " in result.stderr
    assert "no campaigns" in ctl_at(plugged, "list").stderr


def test_pausing_a_draft_is_refused_with_the_reason(plugged: DaemonProcess) -> None:
    """Pause on a DRAFT campaign exits 1 with FAILED_PRECONDITION and the machine-readable reason."""
    create_demo(plugged)
    result = ctl_at(plugged, "pause", "spring")
    assert result.returncode == 1
    assert result.stderr.startswith("campaignctl: FAILED_PRECONDITION: ")
    assert "  reason: " in result.stderr
    assert result.stdout == ""
    assert state_of(plugged, "spring") == "DRAFT"


def test_missing_socket_is_unavailable(tmp_path: pathlib.Path) -> None:
    """With no daemon at the socket, the command exits 1 saying where it looked."""
    socket_path = tmp_path / "nothing.sock"
    result = run_ctl("--socket", str(socket_path), "list")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"campaignctl: UNAVAILABLE: the daemon is not reachable at {socket_path}")


def test_socket_from_environment_and_config(plugged: DaemonProcess) -> None:
    """$CAMPAIGND_SOCKET and --config (the daemon's own file) both find the daemon."""
    create_demo(plugged)
    by_env = run_ctl("list", env={"CAMPAIGND_SOCKET": str(plugged.socket_path)})
    assert by_env.returncode == 0, by_env.stderr
    assert "spring" in by_env.stdout
    by_config = run_ctl("--config", str(plugged.config_path), "get", "spring")
    assert by_config.returncode == 0, by_config.stderr
    assert "campaigns/spring" in by_config.stdout


@pytest.mark.slow
def test_update_sends_only_the_flags_given(plugged: DaemonProcess) -> None:
    """update changes the named fields; --label adds to the labels and --remove-label drops one."""
    create_demo(plugged)
    ok(plugged, "update", "spring", "--display-name", "Spring sale 2", "--label", "tier=gold")
    campaign = json.loads(ok(plugged, "get", "spring", "--json"))
    assert campaign["display_name"] == "Spring sale 2"
    assert campaign["labels"] == {"team": "growth", "tier": "gold"}
    assert campaign["audience"]["target_lists"] == ["lists/demo"]
    ok(plugged, "update", "spring", "--remove-label", "team", "--exclude-list", "lists/bounced")
    campaign = json.loads(ok(plugged, "get", "spring", "--json"))
    assert campaign["labels"] == {"tier": "gold"}
    assert campaign["audience"]["target_lists"] == ["lists/demo"]
    assert campaign["audience"]["exclude_lists"] == ["lists/bounced"]
    stale = ctl_at(plugged, "update", "spring", "--display-name", "x", "--etag", '"stale"')
    assert stale.returncode == 1
    assert stale.stderr.startswith("campaignctl: ABORTED: ")
    assert json.loads(ok(plugged, "get", "spring", "--json"))["display_name"] == "Spring sale 2"


def test_create_from_file_and_add_channel(plugged: DaemonProcess, tmp_path: pathlib.Path) -> None:
    """create --file reads proto3 JSON; add-channel adds a DRAFT channel with its content."""
    spec = {
        "display_name": "From a file",
        "audience": {"target_lists": ["lists/demo"]},
        "channels": [{"channel_id": "mail", "type": "test-email", "content": {"text": "Hi"}}],
    }
    path = tmp_path / "campaign.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    created = json.loads(ok(plugged, "create", "--file", str(path), "--id", "filed", "--json"))
    assert created["display_name"] == "From a file"
    ok(plugged, "add-channel", "filed", "--type", "test-sms", "--id", "sms", "--content", "text=Hi by SMS")
    channels = json.loads(ok(plugged, "get", "filed", "--json"))["channels"]
    assert [(c["channel_id"], c["type"], c["state"]) for c in channels] == [
        ("mail", "test-email", "DRAFT"),
        ("sms", "test-sms", "DRAFT"),
    ]
    assert channels[1]["content"] == {"text": "Hi by SMS"}


def test_schedule_and_unschedule(plugged: DaemonProcess) -> None:
    """schedule --at +1h makes the campaign SCHEDULED; unschedule returns it to DRAFT."""
    create_demo(plugged)
    scheduled = json.loads(ok(plugged, "schedule", "spring", "--at", "+1h", *ATTESTATION, "--json"))
    assert scheduled["state"] == "SCHEDULED"
    start = dt.datetime.fromisoformat(scheduled["channels"][0]["schedule_time"])
    assert dt.timedelta(minutes=59) < start - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=1)
    assert json.loads(ok(plugged, "unschedule", "spring", "--json"))["state"] == "DRAFT"


def test_list_pages_with_a_hint_and_all(plugged: DaemonProcess) -> None:
    """list shows one page and says how to get more; --all follows every page."""
    for campaign_id in ("one", "two", "three"):
        create_demo(plugged, campaign_id)
    first = ctl_at(plugged, "list", "--page-size", "2")
    assert first.returncode == 0
    assert len(first.stdout.splitlines()) == 3
    assert "--all" in first.stderr
    assert "--page-token" in first.stderr
    every = ok(plugged, "list", "--page-size", "2", "--all").splitlines()
    assert sorted(line.split()[0] for line in every[1:]) == ["one", "three", "two"]
    as_json = json.loads(ok(plugged, "list", "--page-size", "2", "--all", "--json"))
    assert len(as_json["campaigns"]) == 3


def test_delete_and_duplicate(plugged: DaemonProcess) -> None:
    """duplicate makes a DRAFT copy; delete removes a DRAFT campaign."""
    create_demo(plugged)
    copy = json.loads(ok(plugged, "duplicate", "spring", "--id", "autumn", "--json"))
    assert (copy["name"], copy["state"]) == ("campaigns/autumn", "DRAFT")
    assert ok(plugged, "delete", "spring").strip() == "deleted campaigns/spring"
    names = [c["name"] for c in json.loads(ok(plugged, "list", "--json"))["campaigns"]]
    assert names == ["campaigns/autumn"]


def start_watch(daemon: DaemonProcess, *args: str) -> subprocess.Popen[str]:
    """`campaignctl watch` in the background, its output in pipes."""
    return subprocess.Popen(
        [*CTL, "--socket", str(daemon.socket_path), "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
        # A shell that started the tests in the background may have SIGINT ignored; undo that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_first_line(proc: subprocess.Popen[str]) -> str:
    """The watch's first line, which comes with the snapshot."""
    assert proc.stdout is not None
    return proc.stdout.readline()


def test_watch_prints_lines_until_stopped_elsewhere(plugged: DaemonProcess) -> None:
    """On a non-TTY, watch prints one line per update and exits 0 with the report when stopped."""
    create_demo(plugged)
    ok(plugged, "launch", "spring", *ATTESTATION)
    watch = start_watch(plugged, "spring")
    try:
        first = wait_for_first_line(watch)
        assert "\r" not in first
        assert any(state in first for state in ("QUEUED", "RUNNING"))
        ok(plugged, "stop", "spring", "--reason", "enough")
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    lines = [first, *out.splitlines()]
    assert "STOPPED" in lines[[i for i, line in enumerate(lines) if "%" in line][-1]]
    assert "Campaign:     campaigns/spring" in out
    assert "State:        STOPPED" in out


def test_watch_json_prints_one_document_per_line(plugged: DaemonProcess) -> None:
    """watch --json prints each update as one JSON line; the first is the snapshot."""
    create_demo(plugged)
    ok(plugged, "launch", "spring", *ATTESTATION)
    watch = start_watch(plugged, "spring", "--json")
    try:
        first = json.loads(wait_for_first_line(watch))
        ok(plugged, "stop", "spring")
        out, _ = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0
    assert first["snapshot"] is True
    assert first["campaign"]["name"] == "campaigns/spring"
    updates = [json.loads(line) for line in out.splitlines()]
    assert updates[-1]["campaign"]["state"] == "STOPPED"


def test_watch_ctrl_c_exits_130_quietly(plugged: DaemonProcess) -> None:
    """Ctrl-C ends watch with status 130 and nothing on stderr."""
    create_demo(plugged)
    watch = start_watch(plugged, "spring")
    try:
        wait_for_first_line(watch)
        time.sleep(0.2)
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 130
    assert err == ""


def test_tls_address_with_token(daemon_factory: DaemonFactory, tmp_path: pathlib.Path) -> None:
    """--address with --ca-file and a token from a file, $CAMPAIGND_TOKEN or --token reaches the TLS port;
    without a token the daemon's refusal says how to pass one."""
    pki = write_pki(tmp_path / "pki")
    _, tokens, port = start_tls_daemon(daemon_factory, pki, tmp_path / "tokens")
    address = f"127.0.0.1:{port}"
    tls = ("--address", address, "--ca-file", str(pki.ca_file))
    created = run_ctl(
        *tls, "--token-file", str(tokens.operator_file), "create", "--display-name", "x", "--id", "t"
    )
    assert created.returncode == 0, created.stderr
    by_env = run_ctl(
        "--ca-file",
        str(pki.ca_file),
        "list",
        env={"CAMPAIGND_ADDRESS": address, "CAMPAIGND_TOKEN": tokens.viewer},
    )
    assert by_env.returncode == 0, by_env.stderr
    assert "t " in by_env.stdout
    # `--token=` form: a generated token may begin with "-", which argparse would take for an option.
    viewer_launch = run_ctl(*tls, f"--token={tokens.viewer}", "launch", "t", *ATTESTATION)
    assert viewer_launch.returncode == 1
    assert viewer_launch.stderr.startswith("campaignctl: PERMISSION_DENIED: ")
    anonymous = run_ctl(*tls, "list")
    assert anonymous.returncode == 1
    assert anonymous.stderr.startswith("campaignctl: UNAUTHENTICATED: ")
    assert "--token-file" in anonymous.stderr


def test_mutual_tls_with_client_certificate(daemon_factory: DaemonFactory, tmp_path: pathlib.Path) -> None:
    """--cert-file and --key-file present a client certificate where the daemon requires one."""
    pki = write_pki(tmp_path / "pki")
    _, tokens, port = start_tls_daemon(daemon_factory, pki, tmp_path / "tokens", client_ca=True)
    tls = ("--address", f"127.0.0.1:{port}", "--ca-file", str(pki.ca_file), f"--token={tokens.viewer}")
    with_cert = run_ctl(
        *tls, "--cert-file", str(pki.client_cert_file), "--key-file", str(pki.client_key_file), "list"
    )
    assert with_cert.returncode == 0, with_cert.stderr
    without_cert = run_ctl(*tls, "list")
    assert without_cert.returncode == 1
    assert "UNAVAILABLE" in without_cert.stderr
    half = run_ctl(*tls, "--cert-file", str(pki.client_cert_file), "list")
    assert half.returncode == 2


def test_restart_follows_the_channel_type(plugged: DaemonProcess) -> None:
    """restart brings a stopped SMS-like channel back to sending, and is refused for an email-like one."""
    ok(
        plugged,
        "create",
        "--id",
        "texts",
        "--display-name",
        "Texts",
        "--target-list",
        "lists/demo",
        "--channel",
        "test-sms:sms",
        "--content",
        "text=Hi",
        "--channel",
        "test-email:mail",
        "--content",
        "text=Hi",
    )
    ok(plugged, "launch", "texts", *ATTESTATION)
    ok(plugged, "stop", "texts")
    restarted = json.loads(ok(plugged, "restart", "texts", "--channel", "sms", "--json"))
    states = {c["channel_id"]: c["state"] for c in restarted["channels"]}
    assert states["sms"] in {"QUEUED", "RUNNING"}
    assert states["mail"] == "STOPPED"
    refused = ctl_at(plugged, "restart", "texts", "--channel", "mail")
    assert refused.returncode == 1
    assert refused.stderr.startswith("campaignctl: FAILED_PRECONDITION: ")
