"""Fixtures of the voice plugin's tests: an RTP sink and SIPp called parties on loopback."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from campaignd_voice.testing import RtpSink, write_prompt
from voice_pool import renderer


@pytest.fixture
def rtp_sink() -> Iterator[RtpSink]:
    """A UDP socket on loopback that hears the calls' audio."""
    sink = RtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def prompt(tmp_path: pathlib.Path) -> pathlib.Path:
    """A one-second 8 kHz WAV prompt."""
    return write_prompt(tmp_path / "prompt.wav", 1.0)


@pytest.fixture(scope="session", autouse=True)
def _render_workers() -> Iterator[None]:
    """Stop the render pool's worker processes once the tests are done."""
    yield
    if renderer.cache_info().currsize:
        renderer().close()
