"""The voice plugin against the conformance kit: real baresip calling a real SIPp that answers."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import campaignd_voice
import pytest
from campaignd_voice.testing import RtpSink, Sipp, sipp

from campaignd.testing.conformance import Target, TransportChannelContract, closed_port


@pytest.fixture
def answering(tmp_path: pathlib.Path, rtp_sink: RtpSink) -> Iterator[Sipp]:
    """SIPp answering every call after half a second of ringing, its media to the RTP sink."""
    with sipp("answer.xml", tmp_path, rtp_sink=rtp_sink.port) as peer:
        yield peer


class TestVoice(TransportChannelContract):
    """The "voice" type keeps the contract, through a sip transport driving baresip."""

    # Calls take seconds each (ringing, then the prompt), not milliseconds like a message.
    result_timeout = 40.0
    # A call counts as received when its audio reaches the sink; on a busy machine the last
    # packets of a call can arrive a second or more after its result.
    settle = 3.0

    @pytest.fixture
    def target(self, answering: Sipp, rtp_sink: RtpSink) -> Target:
        """A personalised spoken prompt; a call counts as received once its audio reaches the sink."""
        return Target(
            plugin=campaignd_voice,
            channel_type="voice",
            content={
                "caller_id": "+14155550100",
                "text": "Hi {{ contact.first_name }}.",
                "ring_timeout": 5,
                "max_call_duration": 20,
            },
            addresses=["+14155550101", "+14155550102", "+14155550103"],
            delivered=lambda: rtp_sink.heard(),
            transport_options={"trunk": answering.trunk, "local_address": "127.0.0.1"},
            # A configured baresip that is not there: opening the transport fails at once.
            unreachable_transport_options={"trunk": answering.trunk, "attach": f"127.0.0.1:{closed_port()}"},
            peak_in_flight=rtp_sink.peak,
        )
