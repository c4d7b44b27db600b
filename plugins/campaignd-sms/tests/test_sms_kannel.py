"""The kannel transport against real Kannel (bearerbox, smsbox, fakesmsc) and the real daemon."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import urllib.error
import urllib.request

import campaignd_sms
import pytest
from kannel import PASSWORD, USER, free_port, running_kannel
from sms_pool import renderer
from test_sms_daemon import import_contacts, messages, number, report, suppressed, to_people, wait, zone_at

from campaignd.plugin import ChannelInfo, Recipient, SendStatus, Transport
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client
from tests.integration.conftest import DaemonFactory
from tests.integration.conftest import daemon_factory as daemon_factory  # the fixture

SECRET = "a-callback-secret-of-some-length"
FAST = "[engine]\ntick_interval = 0.05\nretry_delay = 0.2\nsending_timeout = 10.0\ntransport_rest = 1.0\n"


def kannel_transport(sendsms_url: str, callback_port: int, password: str = PASSWORD) -> str:
    """A kannel transport; the callback listener on `callback_port`."""
    options = (
        f'kind = "kannel", sendsms_url = "{sendsms_url}", username = "{USER}", '
        f'kannel_password = {{ env = "KANNEL_PASSWORD" }}, callback_host = "127.0.0.1", '
        f'callback_port = {callback_port}, callback_url = "http://127.0.0.1:{callback_port}", '
        f'callback_secret = {{ env = "CALLBACK_SECRET" }}'
    )
    return f'[transports.kannel]\ntype = "sms"\nconcurrency = 20\noptions = {{ {options} }}\n'


def test_a_thousand_through_kannel_delivered_and_a_stop_reply_suppresses(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """1,000 recipients through smsbox: each reaches fakesmsc once, SENT then DELIVERED by the DLR
    callback; a "Stop" typed into fakesmsc suppresses that number and a later campaign skips it."""
    callback = free_port()
    mo_url = f"http://127.0.0.1:{callback}/{SECRET}/mo?from=%p&text=%a"
    with running_kannel(tmp_path, mo_url) as kannel:
        env = {"KANNEL_PASSWORD": PASSWORD, "CALLBACK_SECRET": SECRET}
        daemon = daemon_factory(FAST + kannel_transport(kannel.sendsms_url, callback), env=env).start()
        midday = zone_at(14)
        import_contacts(daemon, 1000, lambda i: midday)
        with daemon.channel() as channel:
            client = Client(channel)
            campaign = to_people(client)
            client.launch(campaign.name)
            wait(
                lambda: report(client, campaign.name).totals.delivered == 1000, seconds=120, what="1000 DLRs"
            )
            assert {m.state for m in messages(client, campaign.name)} == {pb.Message.DELIVERED}
            wait(lambda: len(kannel.received()) == 1000, what="fakesmsc to show 1000")
            assert len({to for _, to in kannel.received()}) == 1000

            kannel.reply(number(5), "Stop")
            wait(lambda: bool(suppressed(daemon, number(5))), what="the suppression")
            again = to_people(client)
            client.launch(again.name)
            wait(lambda: report(client, again.name).totals.delivered == 999, seconds=120, what="999 DLRs")
            assert number(5) not in {m.address for m in messages(client, again.name)}


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_the_listener_opens_at_start_and_a_stop_before_any_campaign_suppresses(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Without any campaign, the daemon's kannel transport listens from the start: a "STOP" typed
    into fakesmsc right after a start is applied, not dropped by smsbox for want of a listener."""
    callback = free_port()
    mo_url = f"http://127.0.0.1:{callback}/{SECRET}/mo?from=%p&text=%a"
    with running_kannel(tmp_path, mo_url) as kannel:
        env = {"KANNEL_PASSWORD": PASSWORD, "CALLBACK_SECRET": SECRET}
        daemon = daemon_factory(FAST + kannel_transport(kannel.sendsms_url, callback), env=env).start()
        wait(lambda: _listening(callback), seconds=10, what="the callback listener")
        kannel.reply(number(3), "STOP")
        wait(lambda: bool(suppressed(daemon, number(3))), what="the suppression")


def test_callbacks_without_the_secret_are_refused(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A DLR or MO callback without the secret gets 403, is logged and changes nothing; a wrong
    sendsms password is a fatal error of the transport."""
    callback = free_port()
    with running_kannel(tmp_path, f"http://127.0.0.1:{callback}/{SECRET}/mo?from=%p&text=%a") as kannel:
        options = {
            "kind": "kannel",
            "sendsms_url": kannel.sendsms_url,
            "username": USER,
            "kannel_password": "wrong",
            "callback_port": callback,
            "callback_url": f"http://127.0.0.1:{callback}",
            "callback_secret": SECRET,
        }
        recorded: list[object] = []

        class Events:
            """Keeps what it is given."""

            async def record(self, channel_type: str, events: object) -> None:
                recorded.append(events)

        async def scenario() -> list[int]:
            transport = Transport("kannel", "sms", 0, 4, options)
            opening = campaignd_sms.campaignd_open_transport(
                channel_type="sms", transport=transport, events=Events()
            )
            assert opening is not None
            client = await opening
            codes = []
            for path in ("/wrong/mo?from=1415&text=STOP", "/dlr?id=x&type=1", f"/{SECRET}x/dlr?id=x&type=1"):
                codes.append(await asyncio.to_thread(_status, f"http://127.0.0.1:{callback}{path}"))

            class Gate:
                """Admits everything."""

                async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
                    return True

            sending = campaignd_sms.campaignd_send(
                channel_type="sms",
                channel=ChannelInfo("campaigns/c", "sms", "sms", {"text": "hi", "sender": "Shop"}),
                recipients=[Recipient(1, "+14155550100", {}, 1)],
                gate=Gate(),
                transport=transport,
                client=client,
                options={},
                renderer=renderer(),
            )
            assert sending is not None
            [result] = await sending
            assert result.status is SendStatus.RETRY
            assert result.fatal
            assert result.error.startswith("403")
            await asyncio.sleep(0.2)
            await client.close()
            return codes

        assert asyncio.run(scenario()) == [403, 403, 403]
        assert recorded == []
    refusals = [r for r in caplog.records if "kannel callback refused" in r.getMessage()]
    assert len(refusals) == 3


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local test URL
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_with_the_daemon_http_listener_the_callbacks_come_through_it(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """With [http] on, DLRs and a "Stop" reply reach the daemon's listener under /sms/kannel/…,
    and the transport opens no listener of its own."""
    http, unused = free_port(), free_port()
    mo_url = f"http://127.0.0.1:{http}/sms/kannel/kannel/{SECRET}/mo?from=%p&text=%a"
    with running_kannel(tmp_path, mo_url) as kannel:
        env = {"KANNEL_PASSWORD": PASSWORD, "CALLBACK_SECRET": SECRET}
        config = (
            FAST + f'[http]\naddress = "127.0.0.1:{http}"\n' + kannel_transport(kannel.sendsms_url, unused)
        )
        daemon = daemon_factory(config, env=env).start()
        import_contacts(daemon, 20, lambda i: zone_at(14))
        with daemon.channel() as channel:
            client = Client(channel)
            campaign = to_people(client)
            client.launch(campaign.name)
            wait(lambda: report(client, campaign.name).totals.delivered == 20, seconds=120, what="20 DLRs")
            kannel.reply(number(3), "Stop")
            wait(lambda: bool(suppressed(daemon, number(3))), what="the suppression")
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{unused}/{SECRET}/dlr?id=x&type=1", timeout=5)
        forged = f"http://127.0.0.1:{http}/sms/kannel/kannel/not-the-secret/dlr?id=x&type=1"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=5)
        assert refused.value.code == 403
