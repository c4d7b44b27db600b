"""Who a call's peer and metadata make the caller."""

from __future__ import annotations

from campaignd.api.auth import FORWARDED_FOR, LOCAL, Authenticator, Principal


def authenticator() -> Authenticator:
    return Authenticator([])


def test_a_unix_socket_peer_is_the_local_admin() -> None:
    assert authenticator().authenticate("unix:", [("authorization", "Bearer nothing")]) == LOCAL


def test_a_unix_socket_peer_may_name_the_caller_it_forwards() -> None:
    # What a front process does: the name is recorded, and the role stays the socket's.
    found = authenticator().authenticate(
        "unix:/run/campaignd/campaignd-core.sock", [(FORWARDED_FOR, b"deployer")]
    )
    assert found == Principal("deployer", "admin")


def test_a_tcp_peer_cannot_name_a_caller() -> None:
    assert authenticator().authenticate("ipv4:127.0.0.1:5555", [(FORWARDED_FOR, b"root")]) is None
