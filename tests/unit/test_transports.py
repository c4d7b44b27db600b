"""Routing recipients to transports: the percentage split, determinism, failover."""

from __future__ import annotations

import collections

from campaignd.engine.transports import route
from campaignd.plugin import Transport


def transport(name: str) -> Transport:
    return Transport(name, "email", rate=0, concurrency=1, options={})


A, B, C = transport("a"), transport("b"), transport("c")
ADDRESSES = [f"user{i}@example.org" for i in range(10_000)]


def test_split_follows_the_percentages_within_two_points() -> None:
    """70/30 over 10,000 recipients lands within 2 points of 70/30."""
    counts = collections.Counter(t.name for t in route(ADDRESSES, [(A, 70), (B, 30)], lambda _: True) if t)
    assert abs(counts["a"] / len(ADDRESSES) - 0.70) < 0.02
    assert abs(counts["b"] / len(ADDRESSES) - 0.30) < 0.02


def test_a_recipient_always_gets_the_same_transport() -> None:
    """The choice depends on the address only, not on the batch it is in or its position."""
    targets = [(A, 50), (B, 30), (C, 20)]
    whole = dict(zip(ADDRESSES, route(ADDRESSES, targets, lambda _: True), strict=True))
    reversed_batch = list(reversed(ADDRESSES[:500]))
    again = dict(zip(reversed_batch, route(reversed_batch, targets, lambda _: True), strict=True))
    assert all(whole[a] == again[a] for a in reversed_batch)


def test_an_unusable_transport_fails_over_to_the_next() -> None:
    """While `a` rests its recipients go to `b`; `b`'s own recipients stay where they were."""
    targets = [(A, 70), (B, 30)]
    normal = route(ADDRESSES, targets, lambda _: True)
    failed_over = route(ADDRESSES, targets, lambda name: name != "a")
    assert {t.name for t in failed_over if t} == {"b"}
    assert all(after == before for before, after in zip(normal, failed_over, strict=True) if before == B)


def test_nothing_usable_routes_nowhere() -> None:
    """With every transport down, no recipient gets one."""
    assert set(route(ADDRESSES[:100], [(A, 50), (B, 50)], lambda _: False)) == {None}


def test_a_single_transport_takes_every_recipient_while_usable() -> None:
    """With one transport every recipient goes to it, and to none while it is unusable."""
    assert [t.name if t else None for t in route(ADDRESSES[:100], [(A, 100)], lambda _: True)] == ["a"] * 100
    assert route(ADDRESSES[:100], [(A, 100)], lambda _: False) == [None] * 100
