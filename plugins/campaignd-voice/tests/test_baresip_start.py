"""Starting a real baresip on ports chosen free: another process may bind one first."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from campaignd_voice import baresip
from campaignd_voice.settings import SipSettings


@pytest.fixture
def taken() -> Iterator[int]:
    """A port on loopback that a TCP listener holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


async def _start(settings: SipSettings) -> str:
    """Start baresip for a transport and close it again; what went wrong, if anything."""
    transport = baresip.Baresip("trunk", settings)
    try:
        await transport.control()
        return ""
    except baresip.BaresipError as exc:
        return str(exc)
    finally:
        await transport.close()


def test_a_sip_port_taken_before_baresip_binds_it_is_replaced(
    taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port picked for SIP is bound (over TCP) by someone else when baresip starts: baresip
    exits with EADDRINUSE, and it is started again on other ports."""
    picks = iter([taken])
    chosen: list[int] = []

    def pick(host: str) -> int:
        chosen.append(next(picks, 0) or baresip.free_port(host, socket.SOCK_DGRAM))
        return chosen[-1]

    monkeypatch.setattr(baresip, "free_sip_port", pick)
    problem = asyncio.run(_start(SipSettings(trunk="127.0.0.1:5999", local_address="127.0.0.1")))
    assert problem == ""
    assert chosen[0] == taken
    assert len(chosen) == 2


def test_a_configured_sip_port_that_is_taken_fails_at_once(taken: int) -> None:
    """A port the operator chose is not replaced: the transport fails, saying why."""
    settings = SipSettings(trunk="127.0.0.1:5999", local_address="127.0.0.1", sip_port=taken)
    assert asyncio.run(_start(settings)) == f"baresip exited at start with status {baresip.EADDRINUSE}"


def test_a_port_free_for_sip_is_free_over_udp_and_tcp() -> None:
    for _ in range(20):
        port = baresip.free_sip_port("127.0.0.1")
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as probe:
                probe.bind(("127.0.0.1", port))
