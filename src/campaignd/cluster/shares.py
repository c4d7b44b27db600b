"""A transport's rate and concurrency divided among the members that send through it.

Each member sends at `rate / n` and keeps `concurrency // n` sends in flight (the remainder goes
to the first members in id order), where n counts the live members whose engine sends and whose
config has the transport. Every member computes the same division from the same member list, and
does it again whenever the list changes. A member may therefore get no share of a transport
whose concurrency is smaller than the number of members: it then leaves that transport to the
others. The price of dividing rather than counting sends in the database: a member that has the
transport but little to send through it keeps its share idle (see docs/operations.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from campaignd.plugin import Transport
from campaignd.store.cluster import Member


def users(members: Iterable[Member], me: str, transport: str) -> list[str]:
    """Ids of the members sharing `transport` (this one, `me`, always among them), in id order."""
    found = {m.id for m in members if m.live and m.sends and transport in m.transports}
    return sorted(found | {me})


def share(transport: Transport, members: Iterable[Member], me: str) -> Transport:
    """`transport` with the rate and concurrency that member `me` may use of it."""
    sharing = users(members, me, transport.name)
    n, index = len(sharing), sharing.index(me)
    concurrency = transport.concurrency // n + (1 if index < transport.concurrency % n else 0)
    return dataclasses.replace(transport, rate=transport.rate / n, concurrency=concurrency)


def senders(members: Iterable[Member], me: str) -> int:
    """How many live members send, this one included: a channel's rate is divided among them."""
    return len({m.id for m in members if m.live and m.sends} | {me})
