"""How a followed call is read as a result (SPEC §3.3), and how spoken prompts are made."""

from __future__ import annotations

import array
import asyncio
import os
import pathlib
import subprocess
import tempfile
from typing import Any

import pytest
from campaignd_voice.baresip import sweep_homes
from campaignd_voice.calls import _Call, outcome
from campaignd_voice.prompts import Prompts, check_wav, resample
from campaignd_voice.settings import VoiceContent
from voice_pool import renderer

from campaignd.plugin import Recipient, SendStatus

CONTENT = VoiceContent.from_content(
    {"caller_id": "+14155550100", "text": "Hi", "max_attempts": 3, "retry_delay": 60}
)


def read(attempt: int = 1, **seen: object) -> tuple[SendStatus, str, str, float | None]:
    """(status, reason, outcome, retry delay) of a call seen as `seen`."""
    call = _Call(dialled_at=0.0, **seen)  # type: ignore[arg-type]
    result = outcome(Recipient(1, "+14155550101", {}, attempt), CONTENT, call)
    return result.status, result.reason, result.outcome, result.retry_delay


def test_answered_is_delivered_with_its_talk_time() -> None:
    """An answered call is DELIVERED/answered, its talk time from answer to close."""
    call = _Call(dialled_at=0.0, answered_at=2.0, closed_at=9.5, reason="end of file")
    result = outcome(Recipient(1, "+1", {}, 1), CONTENT, call)
    assert (result.status, result.outcome, result.talk_time) == (SendStatus.DELIVERED, "answered", 7.5)


def test_busy_and_no_answer_retry_until_the_last_attempt() -> None:
    """486/600 and ringing past the timeout retry after retry_delay, then FAIL with their outcome."""
    assert read(reason="486 Busy Here") == (SendStatus.RETRY, "busy", "busy", 60)
    assert read(reason="600 Busy Everywhere") == (SendStatus.RETRY, "busy", "busy", 60)
    assert read(attempt=3, reason="486 Busy Here") == (SendStatus.FAILED, "busy", "busy", None)
    no_answer: dict[str, Any] = {
        "ringing": True,
        "hung_up_for": "ring_timeout",
        "reason": "Connection reset by user",
    }
    assert read(**no_answer) == (SendStatus.RETRY, "no_answer", "no_answer", 60)
    assert read(attempt=3, **no_answer) == (SendStatus.FAILED, "no_answer", "no_answer", None)


def test_other_statuses_fail_with_the_status() -> None:
    """Any other final status FAILS at once with reason sip_<status>."""
    assert read(reason="503 Service Unavailable") == (SendStatus.FAILED, "sip_503", "rejected", None)
    assert read(reason="404 Not Found") == (SendStatus.FAILED, "sip_404", "rejected", None)


def test_silence_from_the_trunk_is_unreachable_and_fatal() -> None:
    """No ringing before the timeout, or no SIP status at all: unreachable, reported fatal."""
    for seen in ({"hung_up_for": "ring_timeout"}, {"reason": "Connection timed out"}):
        call = _Call(dialled_at=0.0, **seen)  # type: ignore[arg-type]
        result = outcome(Recipient(1, "+1", {}, 1), CONTENT, call)
        assert (result.status, result.outcome, result.fatal) == (SendStatus.FAILED, "unreachable", True)


def test_a_call_baresip_lost_is_timed_out_even_when_answered() -> None:
    """baresip lost while holding a call: FAILED timed_out, never retried."""
    assert read(answered_at=1.0, lost=True)[:3] == (SendStatus.FAILED, "timed_out", "timed_out")
    assert read(lost=True)[:3] == (SendStatus.FAILED, "timed_out", "timed_out")


def test_resampling_keeps_the_length_of_the_sound() -> None:
    """22,050 Hz samples become 8 kHz samples of the same duration and level."""
    samples = array.array("h", [1000] * 22050)
    out = resample(samples, 22050)
    assert len(out) == 8000
    assert set(out) == {1000}


def test_spoken_prompts_are_cached_per_distinct_text(tmp_path: pathlib.Path) -> None:
    """The same words give one file, other words another, each an 8 kHz WAV baresip plays."""
    content = VoiceContent.from_content(
        {"caller_id": "+14155550100", "text": "Hello {{ contact.first_name }}"}
    )
    prompts = Prompts(content, {"prompt_cache": str(tmp_path)}, renderer())
    recipients = [
        Recipient(n, f"+{n}", {"attributes": {"first_name": name}}, 1)
        for n, name in ((1, "Ada"), (2, "Ada"), (3, "Grace"))
    ]

    async def speak() -> list[str]:
        texts = await prompts.texts_for(recipients)
        assert texts == ["Hello Ada", "Hello Ada", "Hello Grace"]
        return list(await asyncio.gather(*(prompts.file_for(str(text)) for text in texts)))

    first, second, third = asyncio.run(speak())
    assert first == second != third
    assert check_wav(first) == ""
    assert len(list(tmp_path.glob("*.wav"))) == 2


def test_homes_of_killed_daemons_are_swept_and_live_ones_kept(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A baresip directory whose daemon is gone is removed; one whose daemon runs is kept."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"campaignd-baresip-{gone.pid}-trunk-abc"
    live = tmp_path / f"campaignd-baresip-{os.getpid()}-trunk-def"
    dead.mkdir()
    live.mkdir()
    sweep_homes()
    assert not dead.exists()
    assert live.exists()
