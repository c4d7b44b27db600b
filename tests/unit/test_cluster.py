"""A cluster's shares of the transports' limits, the fence on a gate, and overlapping holds."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import types
from typing import Any, cast

import pytest

from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.cluster import shares
from campaignd.engine.core import ChannelGate, Engine
from campaignd.engine.transports import Transports
from campaignd.plugin import Transport
from campaignd.store.cluster import Member

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RELAY = Transport("relay", "email", rate=200, concurrency=10, options={})


def member(
    member_id: str, *, live: bool = True, sends: bool = True, transports: tuple[str, ...] = ("relay",)
) -> Member:
    return Member(member_id, f"host:1:{member_id}", "host", 1, "0", sends, transports, NOW, NOW, NOW, live)


def test_rate_and_concurrency_are_divided_among_the_members_that_send_through_a_transport() -> None:
    """Three members share rate 200 and concurrency 10: 200/3 each, 4+3+3 connections, 10 in all."""
    members = [member("a"), member("b"), member("c")]
    parts = [shares.share(RELAY, members, me) for me in ("a", "b", "c")]
    assert [p.rate for p in parts] == pytest.approx([200 / 3] * 3)
    assert [p.concurrency for p in parts] == [4, 3, 3]
    assert sum(p.concurrency for p in parts) == RELAY.concurrency


def test_lapsed_api_only_and_unconfigured_members_take_no_share() -> None:
    """Only live members whose engine sends and whose config has the transport count."""
    members = [
        member("a"),
        member("b", live=False),
        member("c", sends=False),
        member("d", transports=("other",)),
        member("e"),
    ]
    assert shares.users(members, "a", "relay") == ["a", "e"]
    assert shares.share(RELAY, members, "a").rate == 100
    assert shares.senders(members, "a") == 3  # a, d and e send; d's channel rates are shared too


def test_a_member_not_yet_listed_counts_itself() -> None:
    """A member that has just joined shares with the others at once, before it sees itself listed."""
    assert shares.share(RELAY, [member("a")], "b").rate == 100
    assert shares.share(RELAY, [], "b") == RELAY


def test_a_concurrency_smaller_than_the_members_leaves_some_without_a_share() -> None:
    """Concurrency 2 among three members: two get one connection each, the third none."""
    narrow = dataclasses.replace(RELAY, concurrency=2)
    members = [member("a"), member("b"), member("c")]
    assert [shares.share(narrow, members, me).concurrency for me in ("a", "b", "c")] == [1, 1, 0]


class _Plugins:
    """A double of the plugin manager: opens and closes transports, counting what is open."""

    def __init__(self) -> None:
        self.config = types.SimpleNamespace(transports={"relay": RELAY})
        self.opened: list[Transport] = []
        self.closed: list[Transport] = []

    async def open_transport(self, transport: Transport, events: Any, seconds: float) -> str:
        self.opened.append(transport)
        return f"client of {transport.concurrency}"

    async def close_transport(self, transport: Transport, client: Any, seconds: float) -> None:
        self.closed.append(transport)


def _transports(part: dict[str, Transport]) -> tuple[Transports, _Plugins]:
    plugins = _Plugins()
    made = Transports(cast(Any, plugins), cast(Any, None), lambda: 1.0, Clock(), lambda t: part.get("now", t))
    return made, plugins


def test_a_new_share_opens_the_transport_anew_only_after_its_batches_finished() -> None:
    """The share drops from 10 to 5 connections while a batch uses the transport: the next batch
    waits until that one has finished and the old connections are closed, then opens 5."""

    async def scenario() -> None:
        part = {"now": RELAY}
        transports, plugins = _transports(part)
        order: list[str] = []
        async with transports.use(RELAY) as first:
            assert first.transport.concurrency == 10
            part["now"] = dataclasses.replace(RELAY, rate=100, concurrency=5)

            async def next_batch() -> None:
                async with transports.use(RELAY) as second:
                    order.append(f"second batch on {second.transport.concurrency}")

            waiting = asyncio.create_task(next_batch())
            await asyncio.sleep(0.05)
            assert not waiting.done()
            order.append("first batch done")
        await waiting
        assert order == ["first batch done", "second batch on 5"]
        assert [t.concurrency for t in plugins.opened] == [10, 5]
        assert [t.concurrency for t in plugins.closed] == [10]

    asyncio.run(scenario())


def test_rebalance_changes_the_open_transports_rate_at_once() -> None:
    """The limiter of an open transport takes the new share's rate without waiting for a batch."""

    async def scenario() -> None:
        part = {"now": RELAY}
        transports, _ = _transports(part)
        async with transports.use(RELAY) as opened:
            part["now"] = dataclasses.replace(RELAY, rate=50)
            transports.rebalance()
            assert opened.limiter is not None
            assert opened.limiter.rate == 50

    asyncio.run(scenario())


def test_a_transport_without_a_share_is_not_usable_here() -> None:
    """A member whose share of a transport's concurrency is 0 leaves it to the others."""
    part = {"now": dataclasses.replace(RELAY, concurrency=0)}
    transports, _ = _transports(part)
    assert not transports.usable("relay")
    part["now"] = RELAY
    assert transports.usable("relay")


def test_a_fenced_daemons_gate_admits_nothing_until_it_may_send_again() -> None:
    """An open gate refuses while the daemon may not send, and admits again afterwards."""
    allowed = [True]
    gate = ChannelGate(None, lambda: allowed[0])
    gate.open = True

    async def admit() -> bool:
        return await gate.admit()

    assert asyncio.run(admit())
    allowed[0] = False
    assert not gate.open
    assert not asyncio.run(admit())
    allowed[0] = True
    assert asyncio.run(admit())


def _engine() -> Engine:
    database = types.SimpleNamespace(on_fault=lambda listener: None)
    settings = types.SimpleNamespace(engine=types.SimpleNamespace())
    return Engine(
        cast(Any, database),
        cast(Any, None),
        cast(Any, None),
        ChangeHub(),
        lambda: cast(Any, settings),
        cast(Any, None),
    )


def test_overlapping_holds_of_one_channel_keep_it_held_until_both_end() -> None:
    """A Pause here and one from another daemon on the same channel: held until both let go."""

    async def scenario() -> None:
        engine = _engine()
        gate = engine._gates[("c1", "mail")] = ChannelGate(None)
        gate.open = True
        local = engine.close_gates("c1", "mail")
        remote = engine.close_gates("c1")
        assert not gate.open
        engine.reopen(local)
        assert engine._is_held(("c1", "mail"))
        engine.reopen(remote)
        assert not engine._is_held(("c1", "mail"))

    asyncio.run(scenario())


def test_ending_a_hold_makes_a_tick_that_read_before_it_leave_gates_closed() -> None:
    """A tick whose read of the channels began before a hold ended may have read the state from
    before the call: it must not open the gates (the next tick reads afresh)."""

    async def scenario() -> None:
        engine = _engine()
        hold = engine.close_gates("c1")
        engine._holds_at_read = engine._holds  # a tick reads while the hold is on
        engine.reopen(hold)
        assert engine._holds != engine._holds_at_read

    asyncio.run(scenario())
