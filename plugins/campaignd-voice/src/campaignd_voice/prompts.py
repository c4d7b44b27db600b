"""Prompts: WAV files baresip can play, and text spoken by espeak-ng into such files, kept per
distinct text so that recipients who hear the same words share one file."""

from __future__ import annotations

import array
import asyncio
import hashlib
import os
import pathlib
import secrets
import sys
import tempfile
import wave
from collections.abc import Sequence

from campaignd.plugin import Options, Recipient, Renderer, TemplateError, TemplateSet
from campaignd_voice.settings import VoiceContent, espeak_program

# baresip's aufile plays a file only at the sample rate of the call's codec: G.711, 8 kHz mono.
SAMPLE_RATE = 8000
SYNTHESIS_TIMEOUT = 60.0


class PromptError(ValueError):
    """A prompt cannot be had for a recipient; the message says why."""


def _spoken(text: str | TemplateError) -> str | TemplateError | PromptError:
    if isinstance(text, TemplateError):
        return text
    spoken = text.strip()
    if not spoken:
        return PromptError("the text template gave nothing to say for this recipient")
    return spoken


def check_wav(path: str) -> str:
    """The problem with a WAV prompt file, or ""."""
    try:
        with wave.open(path, "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.getnframes()
    except FileNotFoundError:
        return f"cannot read {path}: no such file"
    except PermissionError:
        return f"cannot read {path}: permission denied"
    except (wave.Error, EOFError) as exc:
        return f"{path} is not a PCM WAV file: {exc}"
    except OSError as exc:
        return f"cannot read {path}: {exc}"
    if width != 2 or channels != 1 or rate != SAMPLE_RATE:
        return (
            f"{path} is {rate} Hz, {channels} channel(s), {8 * width}-bit; baresip plays"
            f" {SAMPLE_RATE} Hz mono 16-bit PCM (e.g. sox in.wav -r 8000 -c 1 -b 16 out.wav)"
        )
    if frames == 0:
        return f"{path} holds no sound"
    return ""


def wav_seconds(path: str) -> float:
    """How long a WAV file plays."""
    with wave.open(path, "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def resample(samples: array.array[int], rate: int) -> array.array[int]:
    """16-bit mono samples at `rate` as samples at SAMPLE_RATE: each output sample is the mean of
    the input samples around it, which keeps speech and drops what 8 kHz cannot carry."""
    if rate == SAMPLE_RATE:
        return samples
    step = rate / SAMPLE_RATE
    count = int(len(samples) / step)
    out = array.array("h", bytes(2 * count))
    half = max(step / 2, 0.5)
    for index in range(count):
        centre = index * step
        low = max(0, int(centre - half))
        high = min(len(samples), int(centre + half) + 1)
        window = samples[low:high]
        out[index] = int(sum(window) / len(window)) if window else 0
    return out


def _write_8k(source: pathlib.Path, target: pathlib.Path) -> None:
    with wave.open(str(source), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise PromptError("espeak-ng wrote samples that are not 16-bit")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = array.array("h", wav.readframes(wav.getnframes()))
    if sys.byteorder == "big":
        samples.byteswap()
    if channels > 1:
        samples = samples[::channels]
    out = resample(samples, rate)
    if sys.byteorder == "big":
        out.byteswap()
    partial = source.with_suffix(".part")
    with wave.open(str(partial), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(out.tobytes())
    os.replace(partial, target)


class Prompts:
    """Where a channel's recipients' prompts come from: its WAV file, or its text template
    rendered by the daemon's renderer and spoken per recipient, synthesised once per distinct
    text."""

    def __init__(self, content: VoiceContent, options: Options, renderer: Renderer) -> None:
        self.content = content
        self.espeak = espeak_program(options)
        cache = options.get("prompt_cache") or os.path.join(
            tempfile.gettempdir(), f"campaignd-voice-prompts-{os.getuid()}"
        )
        self.cache = pathlib.Path(str(cache))
        self.renderer = renderer
        self._pending: dict[str, asyncio.Future[str]] = {}

    async def texts_for(self, recipients: Sequence[Recipient]) -> list[str | TemplateError | PromptError]:
        """The words each recipient hears ("" for an audio prompt), or why there are none: a
        TemplateError when the template failed (over a limit included), a PromptError when it
        gave nothing to say. One call to the renderer for them all."""
        source = self.content.text
        if not source or self.content.audio:
            return [""] * len(recipients)
        if "{" in source:
            rendered = await self.renderer.render(TemplateSet({"text": source}), recipients)
            texts: list[str | TemplateError] = [
                fields if isinstance(fields, TemplateError) else fields["text"] for fields in rendered
            ]
        else:
            texts = [source] * len(recipients)
        return [_spoken(text) for text in texts]

    async def file_for(self, text: str) -> str:
        """The WAV file a recipient hears, given its words from `texts_for`; PromptError when it
        cannot be made."""
        if self.content.audio:
            return self.content.audio
        return await self.synthesise(text)

    async def synthesise(self, text: str) -> str:
        """`text` spoken into an 8 kHz WAV file in the cache; the same file for the same text."""
        if self.espeak is None:
            raise PromptError("espeak-ng is not installed: text prompts cannot be spoken")
        key = hashlib.sha256(f"{self.content.voice}\0{text}".encode()).hexdigest()[:32]
        target = self.cache / f"{key}.wav"
        if target.exists():
            return str(target)
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            await self._speak(text, target)
            future.set_result(str(target))
        except BaseException as exc:
            future.set_exception(
                exc if isinstance(exc, Exception) else PromptError("synthesis was cancelled")
            )
            future.exception()  # retrieved here, so that nobody waiting is not reported as unseen
            raise
        finally:
            self._pending.pop(key, None)
        return str(target)

    async def _speak(self, text: str, target: pathlib.Path) -> None:
        assert self.espeak is not None
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Names of this synthesis alone: batches running at once may speak the same words.
        raw = target.with_name(f"{target.stem}.{secrets.token_hex(6)}.espeak.wav")
        process = await asyncio.create_subprocess_exec(
            self.espeak,
            "-v",
            self.content.voice,
            "-w",
            str(raw),
            "--stdin",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, errors = await asyncio.wait_for(process.communicate(text.encode()), SYNTHESIS_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise PromptError(f"espeak-ng took more than {SYNTHESIS_TIMEOUT:g} s") from None
        if process.returncode != 0 or not raw.exists():
            detail = errors.decode(errors="replace").strip()[:300]
            raise PromptError(f"espeak-ng failed ({process.returncode}): {detail}")
        try:
            await asyncio.to_thread(_write_8k, raw, target)
        finally:
            raw.unlink(missing_ok=True)
