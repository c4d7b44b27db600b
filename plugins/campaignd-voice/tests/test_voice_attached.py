"""sip transports attached to a baresip they did not start, one that a user runs and shares."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import campaignd_voice
import pytest
from campaignd_voice.baresip import write_config
from campaignd_voice.settings import SipSettings
from campaignd_voice.testing import RtpSink, Sipp, free_port, sipp, write_prompt
from voice_pool import renderer

from campaignd.plugin import ChannelInfo, Recipient, SendStatus, Transport
from campaignd.testing.conformance import RecordingEvents

PROMPT_SECONDS = 4.0


@pytest.fixture
def answering(tmp_path: pathlib.Path, rtp_sink: RtpSink) -> Iterator[Sipp]:
    """SIPp answering every call after half a second of ringing."""
    with sipp("answer.xml", tmp_path, rtp_sink=rtp_sink.port) as peer:
        yield peer


@pytest.fixture
def shared_baresip(tmp_path: pathlib.Path, answering: Sipp) -> Iterator[str]:
    """A baresip the test runs itself, as a user would; its ctrl_tcp address."""
    home = tmp_path / "baresip"
    home.mkdir()
    ctrl = free_port(socket.SOCK_STREAM)
    settings = SipSettings.from_options({"trunk": answering.trunk, "local_address": "127.0.0.1"}, 4)
    write_config(home, settings, ctrl, free_port())
    with (tmp_path / "baresip.log").open("wb") as log:
        process = subprocess.Popen([settings.baresip, "-f", str(home)], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"127.0.0.1:{ctrl}"
    finally:
        process.terminate()
        process.wait(10)


class _Open:
    async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
        return True


async def _open(transport: Transport) -> Any:
    opening = campaignd_voice.campaignd_open_transport("voice", transport, RecordingEvents())
    assert opening is not None
    return await opening


async def _close(transport: Transport, client: Any) -> None:
    closing = campaignd_voice.campaignd_close_transport("voice", transport, client)
    assert closing is not None
    await closing


def test_closing_an_attached_transport_leaves_the_calls_of_others_on_that_baresip(
    shared_baresip: str, answering: Sipp, tmp_path: pathlib.Path
) -> None:
    """Two transports attached to one baresip (two daemons, or one reloaded): while one is in a
    call, the other closes. The call goes on to the end of its prompt."""
    prompt = write_prompt(tmp_path / "prompt.wav", PROMPT_SECONDS)
    options = {"trunk": answering.trunk, "attach": shared_baresip}
    calling = Transport("calling", "voice", rate=0, concurrency=1, options=options)
    closing = Transport("closing", "voice", rate=0, concurrency=1, options=options)
    channel = ChannelInfo(
        campaign="c",
        channel_id="voice",
        type="voice",
        content={"caller_id": "+14155550100", "audio": str(prompt), "ring_timeout": 10},
    )

    async def scenario() -> tuple[SendStatus, float | None]:
        first = await _open(calling)
        other = await _open(closing)
        send = campaignd_voice.campaignd_send(
            "voice", channel, [Recipient(1, "+14155550101", {}, 1)], _Open(), calling, first, {}, renderer()
        )
        assert send is not None
        call = asyncio.ensure_future(send)
        # Into the prompt: half a second of ringing, then the answer.
        await asyncio.sleep(2.0)
        await _close(closing, other)
        (result,) = await asyncio.wait_for(call, 30)
        await _close(calling, first)
        return result.status, result.talk_time

    status, talk_time = asyncio.run(scenario())
    assert status is SendStatus.DELIVERED
    assert talk_time is not None
    assert talk_time >= PROMPT_SECONDS - 0.5, f"the call lasted {talk_time} s"
