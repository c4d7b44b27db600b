"""What the voice channel accepts as content and options, checked through its hooks."""

from __future__ import annotations

import asyncio
import inspect
import pathlib
import wave

import campaignd_voice
import pytest
from campaignd_voice.testing import write_prompt
from voice_pool import renderer

from campaignd.plugin import ChannelInfo, Recipient, Rendered, TemplateError


def problems(content: dict[str, object], *, launching: bool = True, **options: object) -> dict[str, str]:
    """The plugin's problems with `content`, by field."""
    found = campaignd_voice.campaignd_validate_channel(
        channel_type="voice", content=content, launching=launching, options=options
    )
    return {p.field: p.description for p in found}


def test_a_wav_prompt_and_an_e164_caller_id_are_accepted(prompt: pathlib.Path) -> None:
    """An 8 kHz mono 16-bit WAV and an E.164 caller id: no problem."""
    assert problems({"caller_id": "+14155550100", "audio": str(prompt), "ring_timeout": 20}) == {}


def test_a_caller_id_that_is_not_e164_is_refused(prompt: pathlib.Path) -> None:
    """A caller id without the + and country code is named as the problem."""
    assert "E.164" in problems({"caller_id": "4155550100", "audio": str(prompt)})["caller_id"]


@pytest.mark.parametrize(
    ("rate", "channels", "expected"),
    [(22050, 1, "22050 Hz"), (8000, 2, "2 channel(s)")],
)
def test_a_wav_baresip_cannot_play_is_refused(
    tmp_path: pathlib.Path, rate: int, channels: int, expected: str
) -> None:
    """A WAV at another sample rate or in stereo is refused, saying what it is and what is needed."""
    path = tmp_path / "odd.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\0\0" * channels * 800)
    found = problems({"caller_id": "+14155550100", "audio": str(path)})["audio"]
    assert expected in found
    assert "8000 Hz mono" in found


def test_an_unreadable_or_foreign_audio_file_is_refused(tmp_path: pathlib.Path) -> None:
    """A missing file, a file that is not WAV, and a relative path are each refused."""
    text = tmp_path / "notes.wav"
    text.write_text("not audio", encoding="utf-8")
    assert "no such file" in problems({"audio": str(tmp_path / "missing.wav")})["audio"]
    assert "not a PCM WAV" in problems({"audio": str(text)})["audio"]
    assert "absolute" in problems({"audio": "prompt.wav"})["audio"]


def test_a_text_prompt_needs_espeak_and_a_template_that_compiles() -> None:
    """Text needs a compiling template, and says plainly when espeak-ng is missing."""
    assert problems({"caller_id": "+14155550100", "text": "Hi {{ contact.first_name }}"}) == {}
    assert "line 1" in problems({"text": "Hi {{ contact.first_name "})["text"]
    missing = problems({"text": "Hello"}, espeak="no-such-espeak-ng")["text"]
    assert "espeak-ng is not installed" in missing


def test_a_prompt_is_required_at_launch_and_only_one() -> None:
    """At launch a prompt is required; audio and text together are refused."""
    assert "prompt is required" in problems({"caller_id": "+14155550100"})["audio"]
    assert problems({"caller_id": "+14155550100"}, launching=False) == {}
    assert "not both" in problems({"audio": "/x.wav", "text": "hi"}, launching=False)["text"]


def test_timings_out_of_range_are_refused(prompt: pathlib.Path) -> None:
    """Ring timeout, duration, retry delay and attempts outside their bounds are each named."""
    found = problems(
        {
            "audio": str(prompt),
            "ring_timeout": 0,
            "max_call_duration": -1,
            "retry_delay": 10**9,
            "max_attempts": 2.5,
        },
        launching=False,
    )
    assert set(found) == {"ring_timeout", "max_call_duration", "retry_delay", "max_attempts"}


def test_transport_options_are_checked() -> None:
    """A trunk that is no host:port, registration without credentials and a bad port range are refused."""
    found = {
        p.field
        for p in campaignd_voice.campaignd_validate_options(
            channel_type="voice",
            options={"trunk": "not a host", "register": True, "rtp_ports": "9-8"},
            transport="trunk",
        )
    }
    assert {"trunk", "register", "rtp_ports"} <= found


def preview(channel: ChannelInfo, recipient: Recipient) -> Rendered:
    """What campaignd_render gives, rendered by the daemon's render pool."""
    rendering = campaignd_voice.campaignd_render(
        channel_type="voice", channel=channel, recipient=recipient, options={}, renderer=renderer()
    )
    assert inspect.isawaitable(rendering)

    async def wait() -> Rendered:
        return await rendering

    return asyncio.run(wait())


def test_preview_shows_the_words_a_recipient_hears() -> None:
    """campaignd_render gives the personalised words of a text prompt."""
    channel = ChannelInfo(
        "campaigns/c", "call", "voice", {"caller_id": "+14155550100", "text": "Hi {{ contact.first_name }}."}
    )
    recipient = Recipient(1, "+14155550101", {"attributes": {"first_name": "Ada"}}, 1)
    rendered = preview(channel, recipient)
    assert rendered.text == "Hi Ada."
    assert rendered.summary == "call +14155550101 from +14155550100"


def test_a_preview_whose_text_prompt_runs_past_the_time_limit_is_refused() -> None:
    """A text prompt rendered in the render pool that runs past its time limit gives a
    TemplateError (the client's INVALID_ARGUMENT) naming the text field and the limit."""
    loops = "{% for a in range(99999) %}{% for b in range(99999) %}{% set c = b %}{% endfor %}{% endfor %}"
    channel = ChannelInfo(
        "campaigns/c", "call", "voice", {"caller_id": "+14155550100", "text": "Hi " + loops}
    )
    with pytest.raises(TemplateError) as refused:
        preview(channel, Recipient(1, "+14155550101", {}, 1))
    assert (refused.value.field, refused.value.limit) == ("text", "time")
    assert "the text template took longer than the limit of 0.3 s" in str(refused.value)


def test_the_tone_prompt_helper_writes_what_baresip_plays(tmp_path: pathlib.Path) -> None:
    """The test helper's prompt passes the plugin's own check."""
    path = write_prompt(tmp_path / "tone.wav", 0.2)
    assert problems({"caller_id": "+14155550100", "audio": str(path)}) == {}
