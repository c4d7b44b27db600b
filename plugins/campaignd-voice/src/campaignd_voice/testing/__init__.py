"""Called parties for testing voice campaigns: SIPp running a scenario on loopback, and an RTP sink
that hears the prompts (the answering scenario points the call's media at it). The scenarios ship
in `sipp/`: answer.xml, busy.xml, noanswer.xml, unavailable.xml (503) and refuse_register.xml."""

from __future__ import annotations

import contextlib
import datetime
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field

SCENARIOS = pathlib.Path(__file__).parent / "sipp"

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
BIND_FAILED = 254  # SIPp's exit status when it cannot bind a socket (-2)
ATTEMPTS = 3  # starts of SIPp on fresh ports before a taken port fails the test


class _PortTakenError(AssertionError):
    """SIPp exited at start: a port it was given was taken meanwhile."""


PCMU = 0


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A loopback port nothing is bound to now."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Stream:
    """One call's audio as the sink heard it."""

    packets: int = 0
    sound: int = 0  # packets whose payload is not silence
    first: float = 0.0
    last: float = 0.0


@dataclass
class RtpSink:
    """A UDP socket on loopback that counts RTP streams, one per answered call, by SSRC."""

    port: int = 0
    streams: dict[int, Stream] = field(default_factory=dict)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _running: bool = False

    def start(self) -> RtpSink:
        """Listen on a free loopback port."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._sock is not None
        while self._running:
            try:
                data = self._sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 12 or data[0] >> 6 != 2 or data[1] & 0x7F != PCMU:
                continue
            ssrc = int.from_bytes(data[8:12], "big")
            payload = data[12:]
            now = time.monotonic()
            with self._lock:
                stream = self.streams.setdefault(ssrc, Stream(first=now))
                stream.packets += 1
                stream.last = now
                # G.711 mu-law silence is 0xFF (or 0x7F); speech moves far from it.
                if sum(1 for b in payload if b not in (0xFF, 0x7F, 0xFE, 0x7E)) > len(payload) // 4:
                    stream.sound += 1

    def heard(self, min_packets: int = 5) -> int:
        """Calls whose audio arrived: streams of at least `min_packets` packets."""
        with self._lock:
            return sum(1 for s in self.streams.values() if s.packets >= min_packets)

    def with_sound(self, min_packets: int = 5) -> int:
        """Streams that carried sound, not only silence."""
        with self._lock:
            return sum(1 for s in self.streams.values() if s.sound >= min_packets)

    def peak(self) -> int:
        """The most streams that were flowing at the same time."""
        with self._lock:
            edges = sorted(
                [(s.first, 1) for s in self.streams.values()] + [(s.last, -1) for s in self.streams.values()]
            )
        current = most = 0
        for _, step in edges:
            current += step
            most = max(most, current)
        return most

    def stop(self) -> None:
        """Close the socket."""
        self._running = False
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2)


@dataclass
class Sipp:
    """SIPp running one scenario as the called party on 127.0.0.1:`port`."""

    scenario: str
    directory: pathlib.Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self, *, rtp_sink: int = 0, extra: tuple[str, ...] = ()) -> Sipp:
        """Start it on free ports (SIP, control, media), waiting until it listens; on other
        ports again when one it was given was taken meanwhile."""
        for _ in range(ATTEMPTS - 1):
            try:
                return self._start(rtp_sink, extra)
            except _PortTakenError:
                continue
        return self._start(rtp_sink, extra)

    def _start(self, rtp_sink: int, extra: tuple[str, ...]) -> Sipp:
        self.port = free_port()
        args = [
            SIPP,
            "-sf",
            str(SCENARIOS / self.scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-cp",
            str(free_port()),
            "-mp",
            str(free_port()),
            "-key",
            "rtp_sink",
            str(rtp_sink or free_port()),
            "-trace_screen",
            "-trace_msg",
            "-nostdin",
            *extra,
        ]
        self.process = subprocess.Popen(
            args, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._bound():
                return self
            if self.process.poll() is not None:
                if self.process.returncode == BIND_FAILED:
                    # free_port() only found them free: another process may bind one first (the
                    # media port's neighbours, +1 and +2, are SIPp's too).
                    raise _PortTakenError(f"sipp could not bind its ports (status {BIND_FAILED})")
                raise AssertionError(f"sipp exited at start with status {self.process.returncode}")
            time.sleep(0.05)
        raise AssertionError("sipp did not start listening")

    def _bound(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError:
                return True
        return False

    @property
    def trunk(self) -> str:
        """host:port to send calls to."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> str:
        """Stop it softly (as pressing q) and return its final screen."""
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        logs = sorted(
            self.directory.glob(f"{pathlib.Path(self.scenario).stem}_{self.process.pid}_screen.log")
        )
        return logs[0].read_text(errors="replace") if logs else ""

    def _entries(self) -> list[tuple[float, bool, str, str, str]]:
        """(time, received, first line, Call-ID, whole text) of each message in SIPp's message log."""
        if self.process is None:
            return []
        log = self.directory / f"{pathlib.Path(self.scenario).stem}_{self.process.pid}_messages.log"
        if not log.exists():
            return []
        found = []
        parts = re.split(
            r"\n?-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n", log.read_text(errors="replace")
        )
        for stamp, entry in zip(parts[1::2], parts[2::2], strict=True):
            head, _, body = entry.partition("\n\n")
            first = body.lstrip().split("\n", 1)[0].strip()
            call = re.search(r"^Call-ID:\s*(\S+)", body, re.MULTILINE | re.IGNORECASE)
            if call is not None:
                when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
                found.append((when, "received" in head, first, call[1], body))
        return found

    def invite_times(self) -> list[float]:
        """When each call's first INVITE reached SIPp (seconds since the epoch), in order."""
        seen: dict[str, float] = {}
        for when, received, first, call, _ in self._entries():
            if received and first.startswith("INVITE "):
                seen.setdefault(call, when)
        return sorted(seen.values())

    def received(self, method: str) -> int:
        """Calls for which SIPp received a `method` request (e.g. CANCEL, BYE), each counted once."""
        return len(
            {call for _, got, first, call, _ in self._entries() if got and first.startswith(f"{method} ")}
        )

    def called(self) -> list[str]:
        """The numbers SIPp received calls for, one per call (an INVITE's retransmissions once)."""
        seen: dict[str, str] = {}
        for _, received, first, call, _ in self._entries():
            if received and first.startswith("INVITE "):
                seen.setdefault(call, first.split()[1].removeprefix("sip:").split("@")[0])
        return list(seen.values())

    def wire_peak(self) -> int:
        """The most calls open at once on the wire, from SIPp's message log: a call opens with
        the INVITE SIPp receives and closes with the BYE or CANCEL it receives, or with a final
        refusal it sends. (SIPp's own "Peak" also counts calls it has not yet cleaned up.)"""
        open_calls: set[str] = set()
        most = 0
        for _, received, first, call, body in self._entries():
            ended = (received and first.startswith(("BYE ", "CANCEL "))) or (
                not received and re.match(r"SIP/2\.0 [3-6]\d\d", first) is not None and "INVITE" in body
            )
            if received and first.startswith("INVITE "):
                open_calls.add(call)
            elif ended:
                open_calls.discard(call)
            most = max(most, len(open_calls))
        return most


def peak_calls(screen: str) -> int:
    """The most simultaneous calls SIPp reports on its final screen ("Peak was N calls")."""
    found = [int(n) for n in re.findall(r"Peak was (\d+) calls", screen)]
    return max(found, default=0)


def invites(screen: str) -> int:
    """INVITEs SIPp received, from its final screen."""
    found = [int(n) for n in re.findall(r"----------> INVITE\s+(\d+)", screen)]
    return max(found, default=0)


@contextlib.contextmanager
def sipp(scenario: str, directory: pathlib.Path, **kwargs: object) -> Iterator[Sipp]:
    """SIPp running `scenario` for the length of the block."""
    peer = Sipp(scenario, directory)
    peer.start(**kwargs)  # type: ignore[arg-type]
    try:
        yield peer
    finally:
        peer.stop()


def write_prompt(path: pathlib.Path, seconds: float = 1.0, rate: int = 8000) -> pathlib.Path:
    """A WAV prompt of a 440 Hz tone, `seconds` long, 16-bit mono at `rate`."""
    import math

    frames = bytearray()
    for index in range(int(seconds * rate)):
        value = int(8000 * math.sin(2 * math.pi * 440 * index / rate))
        frames += value.to_bytes(2, "little", signed=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return path
