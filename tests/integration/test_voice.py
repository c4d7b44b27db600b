"""Voice campaigns end to end: the real daemon, the campaignd-voice plugin driving a real baresip,
and SIPp as the called party on loopback, with an RTP sink that hears the prompts."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import signal
import time
import wave
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from campaignd_voice.testing import RtpSink, Sipp, invites, peak_calls, write_prompt
from google.protobuf import field_mask_pb2

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.hostile_templates import NESTED_LOOPS
from tests.integration.campaign_client import (
    ATTESTATION,
    Client,
    content,
    failure,
    future,
    import_contacts,
    wait_until,
)
from tests.integration.conftest import DaemonFactory, DaemonProcess

FAST = "[engine]\ntick_interval = 0.05\nsending_timeout = 60.0\ntransport_rest = 2.0\nbatch_size = 50\n"


def daytime_zone() -> str:
    """A time zone where it is early afternoon now, so that the default quiet hours let calls out."""
    offset = (13 - dt.datetime.now(dt.UTC).hour + 12) % 24 - 12
    # Etc/GMT zones count the other way round: Etc/GMT-3 is three hours ahead of UTC.
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"


def night_zone() -> str:
    """A time zone where it is 03:00-ish now, inside the default quiet hours."""
    offset = (3 - dt.datetime.now(dt.UTC).hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"


@pytest.fixture
def sink() -> Iterator[RtpSink]:
    """The RTP sink the answering peer points calls' audio at."""
    listening = RtpSink().start()
    yield listening
    listening.stop()


@pytest.fixture
def peers(tmp_path: pathlib.Path) -> Iterator[Callable[..., Sipp]]:
    """Start SIPp peers running a scenario; all are stopped at the end."""
    started: list[Sipp] = []

    def start(scenario: str, **kwargs: Any) -> Sipp:
        directory = tmp_path / f"sipp{len(started)}"
        directory.mkdir()
        peer = Sipp(scenario, directory).start(**kwargs)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def transport(name: str, trunk: str, *, concurrency: int = 5, rate: float = 0, extra: str = "") -> str:
    """A [transports.NAME] table of type voice."""
    options = f'trunk = "{trunk}", local_address = "127.0.0.1"{extra}'
    return (
        f'[transports.{name}]\ntype = "voice"\nconcurrency = {concurrency}\nrate = {rate}\n'
        f"options = {{ {options} }}\n"
    )


def phones(count: int, first: int = 0, **attributes: str) -> list[cs.ContactRow]:
    """Contacts with E.164 numbers."""
    rows = []
    for i in range(first, first + count):
        row = cs.ContactRow(phone=f"+1415555{i:04d}")
        row.attributes.update({"first_name": f"Caller{i}", **attributes})
        rows.append(row)
    return rows


def voice_channel(
    prompt: pathlib.Path | None = None, via: str = "", channel_id: str = "call", **overrides: Any
) -> pb.Channel:
    """A voice channel with short timings for tests."""
    values: dict[str, Any] = {
        "caller_id": "+14155550100",
        "ring_timeout": 3,
        "max_call_duration": 30,
        "retry_delay": 1,
        "max_attempts": 2,
    }
    if prompt is not None:
        values["audio"] = str(prompt)
    values.update(overrides)
    return pb.Channel(
        channel_id=channel_id,
        type="voice",
        content=content(**values),
        transports=[pb.TransportShare(transport=via, percent=100)] if via else [],
    )


def launch(
    daemon: DaemonProcess,
    client: Client,
    channel: pb.Channel,
    rows: list[cs.ContactRow],
    list_id: str,
    zone: str = "",
) -> str:
    """Import `rows` into a list and launch a campaign on it; its name."""
    import_contacts(client.contacts, list_id, rows)
    campaign = client.create(
        channel, audience=pb.Audience(target_lists=[f"lists/{list_id}"]), time_zone=zone or daytime_zone()
    )
    client.launch(campaign.name)
    return campaign.name


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def database(backend: str, request: pytest.FixtureRequest) -> str:
    """The [database] table of a backend: SQLite by default, or the test PostgreSQL."""
    if backend == "postgresql":
        return f'[database]\nurl = "{request.getfixturevalue("pg_url")}"\n'
    return ""


@pytest.mark.parametrize("backend", BACKENDS)
def test_answered_calls_play_the_prompt_and_are_delivered(
    daemon_factory: DaemonFactory,
    peers: Callable[..., Sipp],
    sink: RtpSink,
    tmp_path: pathlib.Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """Answered calls play the prompt (its sound reaches the called party) and end DELIVERED with
    outcome answered and the talk time; the report counts them by outcome."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    prompt = write_prompt(tmp_path / "prompt.wav", 1.5)
    daemon = daemon_factory(database(backend, request) + FAST + transport("trunk", peer.trunk)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt), phones(3), "answered")
        assert client.finished(name).state == pb.Campaign.COMPLETED
        found = client.messages(name)
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=name))
    assert [m.state for m in found] == [pb.Message.DELIVERED] * 3
    assert {m.outcome for m in found} == {"answered"}
    for message in found:
        talk = message.talk_time.ToTimedelta().total_seconds()
        assert 1.2 <= talk <= 3.0, f"a 1.5 s prompt, yet talk time {talk}"
    assert sink.with_sound() == 3, "the prompt's sound did not reach every called party"
    peer.stop()
    assert peer.received("BYE") == 3, "a call was not hung up when its prompt ended"
    assert report.totals.delivered == 3
    assert dict(report.totals.by_outcome) == {"answered": 3}
    assert dict(report.channels[0].progress.by_outcome) == {"answered": 3}


@pytest.mark.parametrize("backend", BACKENDS)
def test_busy_and_no_answer_are_retried_then_fail_and_503_fails_at_once(
    daemon_factory: DaemonFactory,
    peers: Callable[..., Sipp],
    tmp_path: pathlib.Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """Busy and unanswered calls are dialled again after retry_delay, max_attempts times in all,
    then FAILED with their outcome; a 503 FAILS at once with the SIP status."""
    busy, silent, unavailable = peers("busy.xml"), peers("noanswer.xml"), peers("unavailable.xml")
    prompt = write_prompt(tmp_path / "prompt.wav", 1.0)
    config = (
        database(backend, request)
        + FAST
        + transport("busy", busy.trunk)
        + transport("silent", silent.trunk)
        + transport("unavailable", unavailable.trunk)
    )
    daemon = daemon_factory(config).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        started = time.monotonic()
        names = {
            via: launch(daemon, client, voice_channel(prompt, via, retry_delay=2), phones(2, first), via)
            for first, via in ((0, "busy"), (10, "silent"), (20, "unavailable"))
        }
        for name in names.values():
            assert client.finished(name).state == pb.Campaign.COMPLETED
        elapsed = time.monotonic() - started
        found = {via: client.messages(name) for via, name in names.items()}
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=names["busy"]))
    for via, outcome in (("busy", "busy"), ("silent", "no_answer")):
        for message in found[via]:
            assert message.state == pb.Message.FAILED, message
            assert (message.reason, message.outcome, message.attempts) == (outcome, outcome, 2), message
    assert elapsed >= 2.0, "the second attempt came before retry_delay"
    for message in found["unavailable"]:
        assert message.state == pb.Message.FAILED
        assert (message.reason, message.attempts) == ("sip_503", 1), message
        assert message.last_error == "503 Service Unavailable"
    assert dict(report.totals.by_outcome) == {"busy": 2}
    assert dict(report.totals.failed_by_reason) == {"busy": 2}
    assert invites(busy.stop()) == 4
    assert invites(silent.stop()) == 4
    assert silent.received("CANCEL") == 4, "an unanswered call was not cancelled at the ring timeout"
    assert invites(unavailable.stop()) == 2


def test_thirty_calls_never_exceed_the_concurrency(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """30 calls through a transport with concurrency 5: SIPp never sees more than 5 at once, and
    does see 5."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    prompt = write_prompt(tmp_path / "prompt.wav", 1.0)
    daemon = daemon_factory(FAST + transport("trunk", peer.trunk, concurrency=5)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt), phones(30), "thirty")
        assert client.finished(name).state == pb.Campaign.COMPLETED
        found = client.messages(name)
    assert [m.state for m in found] == [pb.Message.DELIVERED] * 30
    screen = peer.stop()
    assert invites(screen) == 30
    assert peer.wire_peak() == 5, f"SIPp saw {peer.wire_peak()} calls at once; the cap is 5"
    # SIPp's own count also holds calls it has not yet cleaned up after their BYE.
    assert peak_calls(screen) <= 6


def test_the_call_rate_is_held(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """A transport with rate 4 calls per second: 20 calls reach SIPp spread at 4 per second, and
    take the 4 seconds the rate asks, not much more."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    prompt = write_prompt(tmp_path / "prompt.wav", 0.5)
    daemon = daemon_factory(FAST + transport("trunk", peer.trunk, concurrency=20, rate=4)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt), phones(20), "paced")
        assert client.finished(name).state == pb.Campaign.COMPLETED
    peer.stop()
    invited = peer.invite_times()
    assert len(invited) == 20

    def busiest(seconds: float) -> int:
        return max(sum(1 for t in invited if start <= t < start + seconds) for start in invited)

    # Dials leave the daemon a quarter of a second apart (each one acknowledged by baresip before
    # the next call is admitted); baresip's own trip from a dial to its INVITE varies on a loaded
    # machine, so a window at SIPp may catch one call more at its edge, never more than that.
    assert busiest(1.0) <= 4 + 1, f"{busiest(1.0)} calls within one second; the rate is 4/s"
    assert busiest(3.0) <= 12 + 1, f"{busiest(3.0)} calls within three seconds; the rate is 4/s"
    span = invited[-1] - invited[0]
    assert 20 / 4 - 1 - 0.3 <= span <= 20 / 4 * 1.3, f"20 calls at 4/s took {span:.2f} s"


def test_stop_lets_answered_calls_finish_dials_nothing_new_and_is_final(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """Stop during a campaign: the calls in progress play their prompt to the end, nobody else is
    called, the rest are CANCELLED, and RestartCampaign is refused with the reason."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    prompt = write_prompt(tmp_path / "prompt.wav", 3.0)
    daemon = daemon_factory(FAST + transport("trunk", peer.trunk, concurrency=2)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt), phones(10), "stopped")
        wait_until(lambda: sink.heard() >= 2, 30, "two calls to be answered")
        client.stop(name)
        assert client.finished(name).state == pb.Campaign.STOPPED
        wait_until(
            lambda: all(m.state != pb.Message.SENDING for m in client.messages(name)),
            30,
            "the calls in progress to end",
        )
        found = client.messages(name)
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.RestartCampaign(svc.RestartCampaignRequest(name=name))
    delivered = [m for m in found if m.state == pb.Message.DELIVERED]
    assert len(delivered) == 2, found
    for message in delivered:
        assert message.talk_time.ToTimedelta().total_seconds() >= 2.8, "a call was cut short by Stop"
    assert sum(m.state == pb.Message.CANCELLED for m in found) == 8
    time.sleep(1)
    assert invites(peer.stop()) == 2, "someone was called after Stop"
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure(refused.value).reason == "RESTART_NOT_SUPPORTED"


def baresip_children(daemon: DaemonProcess) -> list[int]:
    """Process ids of the baresip processes the daemon started."""
    assert daemon.proc is not None
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if command == "baresip" and parent == daemon.proc.pid:
            found.append(int(entry.name))
    return found


def test_a_killed_baresip_is_restarted_and_its_calls_end_timed_out(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """baresip killed mid-campaign: the daemon starts it again, the calls it held end FAILED
    timed_out, the others are delivered, and nobody is called twice."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    prompt = write_prompt(tmp_path / "prompt.wav", 3.0)
    daemon = daemon_factory(FAST + transport("trunk", peer.trunk, concurrency=2)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt), phones(6), "killed")
        wait_until(lambda: sink.heard() >= 2, 30, "two calls to be answered")
        [first] = baresip_children(daemon)
        os.kill(first, signal.SIGKILL)
        assert client.finished(name).state == pb.Campaign.COMPLETED
        found = client.messages(name)
        [second] = baresip_children(daemon)
    assert second != first
    timed_out = [m for m in found if m.state == pb.Message.FAILED]
    assert [(m.reason, m.outcome, m.attempts) for m in timed_out] == [("timed_out", "timed_out", 1)] * 2
    assert sum(m.state == pb.Message.DELIVERED for m in found) == 4
    peer.stop()
    called = peer.called()
    assert sorted(called) == sorted(set(called)), "a number was called twice"
    assert len(called) == 6


def test_an_unreachable_trunk_fails_the_channel_with_the_reason(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Calls to a trunk that never answers: the channel FAILS with the reason and the calls not
    yet placed are CANCELLED."""
    from campaignd_voice.testing import free_port

    prompt = write_prompt(tmp_path / "prompt.wav", 1.0)
    daemon = daemon_factory(FAST + transport("nowhere", f"127.0.0.1:{free_port()}", concurrency=2)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt, ring_timeout=2), phones(6), "nowhere")
        campaign = client.finished(name)
        found = client.messages(name)
    assert campaign.state == pb.Campaign.FAILED
    error = campaign.channels[0].error
    assert error.code == "TRANSPORT_FAILED"
    assert "nowhere" in error.message
    assert "did not answer" in error.message or "no answer" in error.message
    assert {m.state for m in found} <= {pb.Message.FAILED, pb.Message.CANCELLED}
    assert sum(m.state == pb.Message.CANCELLED for m in found) >= 3
    assert {m.reason for m in found if m.state == pb.Message.FAILED} == {"unreachable"}


def test_a_refused_registration_fails_the_channel_with_the_reason(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], tmp_path: pathlib.Path
) -> None:
    """A trunk that refuses registration (403): the channel FAILS with the trunk's answer, and
    every waiting call is CANCELLED without being placed."""
    registrar = peers("refuse_register.xml")
    prompt = write_prompt(tmp_path / "prompt.wav", 1.0)
    credentials = ', username = "dialer", password = { env = "TEST_SIP_PASSWORD" }, register = true'
    daemon = daemon_factory(
        FAST + transport("trunk", registrar.trunk, extra=credentials),
        env={"TEST_SIP_PASSWORD": "not-this-one"},
    ).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt), phones(3), "refused")
        campaign = client.finished(name)
        found = client.messages(name)
    assert campaign.state == pb.Campaign.FAILED
    assert "refused registration: 403 Forbidden" in campaign.channels[0].error.message
    assert [m.state for m in found] == [pb.Message.CANCELLED] * 3
    assert invites(registrar.stop()) == 0


def test_a_personalised_text_prompt_is_spoken_once_per_distinct_text(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """A text prompt is synthesised by espeak-ng per recipient, kept once per distinct text, and
    heard by each called party."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    cache = tmp_path / "prompts"
    config = FAST + f'[channel_types.voice]\nprompt_cache = "{cache}"\n' + transport("trunk", peer.trunk)
    daemon = daemon_factory(config).start()
    rows = phones(2)
    rows[1].attributes["first_name"] = "Caller0"  # the same words as the first
    rows += phones(1, first=5)
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        channel = voice_channel(text="Hello {{ contact.first_name }}, your parcel has arrived.")
        name = launch(daemon, client, channel, rows, "spoken")
        assert client.finished(name).state == pb.Campaign.COMPLETED
        found = client.messages(name)
    assert [m.outcome for m in found] == ["answered"] * 3
    assert sink.with_sound() == 3
    assert len(list(cache.glob("*.wav"))) == 2, "one file per distinct text"


def test_a_text_prompt_over_the_template_time_limit_fails_only_its_call(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """A text prompt is rendered by the daemon's render workers within [templates] timeout: the
    recipient whose render runs past it ends FAILED template_error and is never called, a
    preview for it answers INVALID_ARGUMENT, and the other recipients are called."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    cache = tmp_path / "prompts"
    config = (
        FAST
        + f'[channel_types.voice]\nprompt_cache = "{cache}"\n'
        + transport("trunk", peer.trunk)
        + "[templates]\ntimeout = 0.3\n"
    )
    daemon = daemon_factory(config).start()
    rows = phones(3)
    rows[1].attributes["slow"] = True
    text = "{% if contact.slow %}" + NESTED_LOOPS + "{% endif %}Hello {{ contact.first_name }}."
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(text=text), rows, "hostile")
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.PreviewMessage(
                svc.PreviewMessageRequest(name=name, channel_id="call", address="+14155550001"), timeout=30
            )
        assert client.finished(name).state == pb.Campaign.COMPLETED
        found = {m.address: m for m in client.messages(name)}
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the text template took longer than the limit of 0.3 s" in (refused.value.details() or "")
    slow = found["+14155550001"]
    assert (slow.state, slow.reason) == (pb.Message.FAILED, "template_error")
    assert "the text template took longer than the limit of 0.3 s" in slow.last_error
    assert [found[a].outcome for a in ("+14155550000", "+14155550002")] == ["answered"] * 2
    peer.stop()
    assert len(peer.invite_times()) == 2


def test_quiet_hours_hold_calls_back_by_default(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], tmp_path: pathlib.Path
) -> None:
    """With no send window set, a voice channel calls only 08:00-21:00 in the recipient's zone:
    at 03:00 there nobody is called."""
    peer = peers("answer.xml")
    prompt = write_prompt(tmp_path / "prompt.wav", 1.0)
    daemon = daemon_factory(FAST + transport("trunk", peer.trunk)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt), phones(2), "night", zone=night_zone())
        time.sleep(2)
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=name))
        client.stop(name)
    assert report.totals.queued == 2
    assert report.channels[0].progress.HasField("window_reopens_time")
    assert invites(peer.stop()) == 0


def test_a_scheduled_voice_channel_takes_edits_and_stays_scheduled(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Editing a SCHEDULED voice channel changes its settings and start time; it stays SCHEDULED."""
    prompt = write_prompt(tmp_path / "prompt.wav", 1.0)
    daemon = daemon_factory(FAST + transport("trunk", "127.0.0.1:5060")).start()
    daemon.ensure_lists("later")
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        campaign = client.create(voice_channel(prompt), audience=pb.Audience(target_lists=["lists/later"]))
        client.schedule(campaign.name)
        edited = voice_channel(prompt, ring_timeout=20)
        updated = client.stub.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=pb.Campaign(name=campaign.name, channels=[edited]),
                update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
            )
        )
        later = future(120)
        rescheduled = client.stub.ScheduleCampaign(
            svc.ScheduleCampaignRequest(name=campaign.name, schedule_time=later, attestation=ATTESTATION)
        )
    [channel] = updated.channels
    assert channel.state == pb.Channel.SCHEDULED
    assert channel.content["ring_timeout"] == 20
    [channel] = rescheduled.channels
    assert channel.state == pb.Channel.SCHEDULED
    assert channel.schedule_time == later


def test_a_baresip_that_cannot_be_restarted_fails_the_channel(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """baresip killed and refusing to start again: the channel FAILS with the error kept, the call
    it held ends timed_out, and the waiting calls are CANCELLED."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    prompt = write_prompt(tmp_path / "prompt.wav", 3.0)
    broken = tmp_path / "broken"
    wrapper = tmp_path / "baresip-once"
    # The first start runs baresip; once `broken` exists, starting fails as a broken install would.
    wrapper.write_text(f'#!/bin/sh\n[ -e "{broken}" ] && exit 3\nexec baresip "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    daemon = daemon_factory(
        FAST + transport("trunk", peer.trunk, concurrency=1, extra=f', baresip = "{wrapper}"')
    ).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt), phones(4), "broken")
        wait_until(lambda: sink.heard() >= 1, 30, "the first call to be answered")
        broken.touch()
        [first] = baresip_children(daemon)
        os.kill(first, signal.SIGKILL)
        campaign = client.finished(name)
        found = client.messages(name)
    assert campaign.state == pb.Campaign.FAILED
    error = campaign.channels[0].error
    assert error.code == "TRANSPORT_FAILED"
    assert "baresip exited at start with status 3" in error.message
    assert [(m.state, m.reason) for m in found[:1]] == [(pb.Message.FAILED, "timed_out")]
    assert [m.state for m in found[1:]] == [pb.Message.CANCELLED] * 3
    peer.stop()
    assert len(peer.called()) == 1


def test_bad_voice_content_is_refused_with_its_field_and_changes_nothing(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A caller id that is not E.164 and a WAV baresip cannot play: INVALID_ARGUMENT naming each
    field, and no campaign is created."""
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(b"\0\0\0\0" * 100)
    daemon = daemon_factory(FAST + transport("trunk", "127.0.0.1:5060")).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        before = client.count()
        with pytest.raises(grpc.RpcError) as bad:
            client.create(voice_channel(stereo, caller_id="4155550100"))
        after = client.count()
    found = failure(bad.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f.endswith("content.caller_id") for f in found.fields), found.fields
    assert any(f.endswith("content.audio") for f in found.fields), found.fields
    assert "8000 Hz mono" in found.message or "8000 Hz mono" in str(found)
    assert after == before


def test_busy_recipients_are_called_again_by_a_remarketing_channel(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """A second campaign whose audience is the first one's busy recipients calls exactly them."""
    busy, answering = peers("busy.xml"), peers("answer.xml", rtp_sink=sink.port)
    prompt = write_prompt(tmp_path / "prompt.wav", 1.0)
    config = FAST + transport("busy", busy.trunk) + transport("answering", answering.trunk)
    daemon = daemon_factory(config).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        first = launch(daemon, client, voice_channel(prompt, "busy", max_attempts=1), phones(2), "first")
        assert client.finished(first).state == pb.Campaign.COMPLETED
        again = voice_channel(prompt, "answering")
        again.remarketing.CopyFrom(pb.RemarketingSource(campaign=first, channel_id="call", outcomes=["busy"]))
        second = client.create(again, time_zone=daytime_zone())
        client.launch(second.name)
        assert client.finished(second.name).state == pb.Campaign.COMPLETED
        found = client.messages(second.name)
    assert sorted(m.address for m in found) == ["+14155550000", "+14155550001"]
    assert [m.outcome for m in found] == ["answered", "answered"]
    answering.stop()
    assert sorted(answering.called()) == ["+14155550000", "+14155550001"]


def test_a_call_is_hung_up_at_its_longest_duration(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """A prompt longer than max_call_duration: the call is hung up at that duration, DELIVERED."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    prompt = write_prompt(tmp_path / "prompt.wav", 6.0)
    daemon = daemon_factory(FAST + transport("trunk", peer.trunk)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        name = launch(daemon, client, voice_channel(prompt, max_call_duration=1.5), phones(1), "long")
        assert client.finished(name).state == pb.Campaign.COMPLETED
        [message] = client.messages(name)
    assert (message.state, message.outcome) == (pb.Message.DELIVERED, "answered")
    talk = message.talk_time.ToTimedelta().total_seconds()
    assert 1.4 <= talk <= 3.0, f"hung up after {talk} s; the longest is 1.5 s"
    peer.stop()
    assert peer.received("BYE") == 1


def test_a_test_call_and_a_preview_reach_the_operator_before_launch(
    daemon_factory: DaemonFactory, peers: Callable[..., Sipp], sink: RtpSink, tmp_path: pathlib.Path
) -> None:
    """SendTestMessage on a DRAFT voice channel calls the given number and plays the prompt;
    PreviewMessage shows the words a contact would hear, calling nobody."""
    peer = peers("answer.xml", rtp_sink=sink.port)
    daemon = daemon_factory(FAST + transport("trunk", peer.trunk)).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        import_contacts(client.contacts, "draft", phones(1))
        channel = voice_channel(text="Hello {{ contact.first_name }}, this is a test.")
        campaign = client.create(channel, audience=pb.Audience(target_lists=["lists/draft"]))
        preview = client.stub.PreviewMessage(
            svc.PreviewMessageRequest(name=campaign.name, channel_id="call", address="+14155550000")
        )
        assert sink.heard() == 0
        sent = client.stub.SendTestMessage(
            svc.SendTestMessageRequest(name=campaign.name, channel_id="call", addresses=["+14155559999"])
        )
    assert preview.text == "Hello Caller0, this is a test."
    assert [(r.address, r.accepted) for r in sent.results] == [("+14155559999", True)]
    assert sink.with_sound() == 1
    peer.stop()
    assert peer.called() == ["+14155559999"]
