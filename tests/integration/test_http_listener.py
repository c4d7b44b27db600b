"""The daemon's HTTP listener with the email channel: a campaign sent to aiosmtpd, then its
recipients' pixels, rewritten links and one-click unsubscribes fetched over real HTTP."""

from __future__ import annotations

import asyncio
import http.client as http_client
import pathlib
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from html import unescape
from typing import Any

import grpc
import pytest

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.browser import browser
from tests.integration.campaign_client import Client, failure
from tests.integration.conftest import DaemonFactory, DaemonProcess
from tests.integration.email_campaigns import (
    ENV,
    FAST,
    Server,
    email_channel,
    email_transport,
    free_port,
    import_people,
    readers,
    recipient,
)

LISTENER = (
    '[http]\naddress = "127.0.0.1:0"\n'
    '[channel_types.email]\nunsubscribe_secret = { env = "TEST_UNSUBSCRIBE_SECRET" }\n'
)
HTML = (
    '<html><body><p>Dear {{ contact.first_name }}</p><a href="https://example.org/one?a=1&amp;b=2">one</a> '
    "<a href='https://example.org/two'>two</a> <a href=\"mailto:news@example.org\">write</a></body></html>"
)
ONE, TWO = "https://example.org/one?a=1&b=2", "https://example.org/two"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Keeps a redirect as the answer, to look at where it points."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def fetch(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request, without following redirects."""
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=10) as answer:  # noqa: S310 - http(s) URLs from the daemon
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def listener_url(daemon: DaemonProcess) -> str:
    """The public URL the daemon logged when its listener started."""
    [event] = [e for e in daemon.log_events() if e.get("event") == "http listening"]
    return str(event["public_url"])


def sent(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server], count: int, **content: Any
) -> tuple[DaemonProcess, pb.Campaign, dict[str, EmailMessage]]:
    """A daemon with the listener on, and a finished email campaign to `count` readers."""
    server = smtp()
    daemon = daemon_factory(FAST + LISTENER + email_transport("a", server.port), env=ENV).start()
    import_people(daemon, readers(count))
    campaign = send_to_readers(daemon, **content)
    return daemon, campaign, {recipient(m): m for m in server.inbox.parsed()}


def send_to_readers(daemon: DaemonProcess, **content: Any) -> pb.Campaign:
    """An email campaign through transport `a` to the list `readers`, launched and finished."""
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel({"a": 100}, **content), audience=pb.Audience(target_lists=["lists/readers"])
        )
        client.launch(campaign.name)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
    return campaign


def links(message: EmailMessage) -> tuple[str, list[str]]:
    """The open pixel's URL and the link URLs of a message's HTML part."""
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    html = part.get_content()
    [pixel] = re.findall(r'<img src="([^"]+)"', html)
    hrefs = [unescape(u) for u in re.findall(r"href=[\"']([^\"']+)", html)]
    return pixel, hrefs


def unsubscribe_link(message: EmailMessage) -> str:
    """The List-Unsubscribe URL."""
    return str(message["List-Unsubscribe"]).strip("<>")


def test_pixels_clicks_and_one_click_unsubscribes_are_counted(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """Opens and clicks count exactly, a redirect goes only to a URL of the message, forged tokens
    get 404 and change nothing, and a replayed unsubscribe counts once and suppresses."""
    daemon, campaign, mail = sent(daemon_factory, smtp, 4, html=HTML, track=True)
    base = listener_url(daemon)
    r0, r1, r2, r3 = (mail[f"reader{i:05d}@example.org"] for i in range(4))
    pixel0, (one0, _two0, mailto0) = links(r0)
    pixel1, (_one1, two1, _) = links(r1)
    assert pixel0.startswith(f"{base}/email/open/")
    assert one0.startswith(f"{base}/email/click/")
    assert mailto0 == "mailto:news@example.org"
    assert unsubscribe_link(r0).startswith(f"{base}/email/unsubscribe/")
    assert r0["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    for url in (pixel0, pixel0, pixel1):
        status, headers, body = fetch(url)
        assert (status, headers["Content-Type"], body[:6]) == (200, "image/gif", b"GIF89a")
    for url, target in ((one0, ONE), (one0, ONE), (two1, TWO)):
        status, headers, _ = fetch(url)
        assert (status, headers["Location"]) == (302, target)
    # Not an open redirect: another URL with a message's token, or a forged token, goes nowhere.
    elsewhere = one0.split("?u=")[0] + "?u=" + urllib.parse.quote("https://evil.example/", safe="")
    assert fetch(elsewhere)[0] == 404
    forged_pixel = re.sub(r"/[0-9a-f]{32}\.gif$", "/" + "0" * 32 + ".gif", pixel0)
    assert fetch(forged_pixel)[0] == 404

    one_click = b"List-Unsubscribe=One-Click"
    assert fetch(unsubscribe_link(r2), one_click)[0] == 200
    assert fetch(unsubscribe_link(r2), one_click)[0] == 200  # a replay changes nothing
    forged = unsubscribe_link(r3)[:-4] + ("0000" if not unsubscribe_link(r3).endswith("0000") else "1111")
    status, _, body = fetch(forged, one_click)
    assert status == 404
    assert b"not valid" in body

    with daemon.channel() as channel:
        client = Client(channel)
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        totals = report.totals
        assert (totals.opened, totals.opens, totals.clicked, totals.clicks) == (2, 3, 2, 3)
        assert dict(totals.clicks_by_link) == {ONE: 2, TWO: 1}
        assert totals.unsubscribed == 1

        def suppressed(address: str) -> bool:
            request = cs.CheckSuppressionRequest(address=address, channel_type="email")
            return client.contacts.CheckSuppression(request).suppressed

        assert [suppressed(recipient(m)) for m in (r0, r1, r2, r3)] == [False, False, True, False]
        outcomes = {
            m.address: m.outcome
            for m in client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
        }
        assert outcomes[recipient(r2)] == "unsubscribed"


def test_listener_off_by_default_and_tracking_needs_it(daemon_factory: DaemonFactory) -> None:
    """Without [http] nothing listens, and a channel asking for tracking cannot launch."""
    daemon = daemon_factory(FAST, env=ENV).start()
    assert not [e for e in daemon.log_events() if e.get("event") == "http listening"]
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(email_channel(track=True, unsubscribe_url="https://news.example.org/u"))
        with pytest.raises(grpc.RpcError) as raised:
            client.launch(campaign.name)
        problem = failure(raised.value)
        assert problem.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "campaign.channels[mail].content.track" in problem.fields


@pytest.mark.slow
def test_the_confirmation_page_in_a_real_browser(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server], tmp_path: pathlib.Path
) -> None:
    """Chromium loads the unsubscribe page, its button POSTs, and the address is suppressed;
    screenshots of both pages are kept in the test's directory."""
    daemon, campaign, mail = sent(daemon_factory, smtp, 1)
    [message] = mail.values()
    link = unsubscribe_link(message)

    async def click() -> tuple[str, str, str]:
        async with browser(tmp_path / "chromium") as page:
            await page.go(link)
            title = await page.evaluate("document.title")
            await page.screenshot(tmp_path / "unsubscribe-page.png")
            await page.evaluate("document.getElementById('unsubscribe').click()")
            await page.wait_for("Page.loadEventFired")
            await page.screenshot(tmp_path / "unsubscribed-page.png")
            return (
                title,
                await page.evaluate("document.title"),
                await page.evaluate("document.body.innerText"),
            )

    before, after, text = asyncio.run(click())
    assert (before, after) == ("Unsubscribe", "Unsubscribed")
    assert "You are unsubscribed" in text
    assert (tmp_path / "unsubscribe-page.png").stat().st_size > 1000
    with daemon.channel() as channel:
        client = Client(channel)
        check = cs.CheckSuppressionRequest(address=recipient(message), channel_type="email")
        assert client.contacts.CheckSuppression(check).suppressed
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        assert report.totals.unsubscribed == 1


def secret_file(directory: pathlib.Path, name: str, value: str) -> str:
    """A secret in a file, as the config names it."""
    path = directory / name
    path.write_text(value + "\n", encoding="utf-8")
    return f'{{ file = "{path}" }}'


def reload(daemon: DaemonProcess, config: str) -> None:
    """Write a new config, SIGHUP, and wait until the daemon says it reloaded."""
    before = sum(1 for e in daemon.log_events() if e.get("event") == "reloaded")
    daemon.write_config(config)
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while sum(1 for e in daemon.log_events() if e.get("event") == "reloaded") == before:
        assert time.monotonic() < deadline, daemon.log_text()
        time.sleep(0.05)


def test_a_reload_rotates_the_secret_and_the_previous_one_still_verifies(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server], tmp_path: pathlib.Path
) -> None:
    """After a reload with a new unsubscribe_secret, new links work at once; links signed with
    previous_unsubscribe_secret work too, and stop working once it is removed."""
    server = smtp()
    old, new = (
        secret_file(tmp_path, "old", "the-old-secret-0123456"),
        secret_file(tmp_path, "new", "the-new-secret-654321"),
    )
    http = '[http]\naddress = "127.0.0.1:0"\n'

    def config(types: str) -> str:
        return FAST + http + f"[channel_types.email]\n{types}" + email_transport("a", server.port)

    daemon = daemon_factory(config(f"unsubscribe_secret = {old}\n"), env=ENV).start()
    import_people(daemon, readers(1))

    def campaign() -> EmailMessage:
        send_to_readers(daemon, html=HTML, track=True)
        return server.inbox.parsed()[-1]

    before = campaign()
    reload(daemon, config(f"unsubscribe_secret = {new}\nprevious_unsubscribe_secret = {old}\n"))
    after = campaign()
    for message in (before, after):
        pixel, (one, _two, _mailto) = links(message)
        assert fetch(pixel)[0] == 200
        assert fetch(one)[0] == 302
        assert fetch(unsubscribe_link(message))[0] == 200
    reload(daemon, config(f"unsubscribe_secret = {new}\n"))
    assert fetch(links(before)[0])[0] == 404
    assert fetch(unsubscribe_link(before))[0] == 404
    assert fetch(links(after)[0])[0] == 200


def test_head_oversized_bodies_unquoted_links_and_a_path_prefix(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """HEAD answers like GET and counts nothing; a body over max_body_bytes is 413 (by its length
    or chunked) and unsubscribes nobody; an unquoted href is tracked; behind a public_url with a
    path the confirmation form posts to that path."""
    server = smtp()
    port = free_port()
    public = "https://mail.example.org/campaignd"
    http = f'[http]\naddress = "127.0.0.1:{port}"\npublic_url = "{public}"\nmax_body_bytes = 1024\n'
    config = FAST + http + LISTENER.split("\n", 2)[2] + email_transport("a", server.port)
    daemon = daemon_factory(config, env=ENV).start()
    import_people(daemon, readers(1))
    html = "<html><body><a href=https://example.org/three?x=1>three</a></body></html>"
    campaign = send_to_readers(daemon, html=html, track=True)
    [message] = server.inbox.parsed()
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    [click] = [unescape(u) for u in re.findall(r'href="([^"]+)"', body.get_content())]
    [pixel] = re.findall(r'<img src="([^"]+)"', body.get_content())
    unsubscribe = unsubscribe_link(message)
    assert click.startswith(f"{public}/email/click/")
    assert unsubscribe.startswith(f"{public}/email/")

    def direct(url: str) -> str:
        return url.replace(public, f"http://127.0.0.1:{port}")

    def head(url: str) -> int:
        request = urllib.request.Request(direct(url), method="HEAD")  # noqa: S310 - the daemon's URL
        try:
            with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert [head(pixel), head(click), head(unsubscribe)] == [200, 302, 200]
    [action] = re.findall(r'<form method="post" action="([^"]+)"', fetch(direct(unsubscribe))[2].decode())
    assert urllib.parse.urljoin(unsubscribe, unescape(action)) == unsubscribe

    too_big = b"List-Unsubscribe=One-Click&" + b"x" * 2000
    assert fetch(direct(unsubscribe), too_big)[0] == 413

    def chunks() -> Iterator[bytes]:
        yield b"List-Unsubscribe=One-Click&"
        for _ in range(10):
            yield b"x" * 500

    url = urllib.parse.urlsplit(direct(unsubscribe))
    connection = http_client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    connection.request("POST", url.path, body=chunks(), encode_chunked=True)
    assert connection.getresponse().status == 413
    connection.close()

    with daemon.channel() as channel:
        client = Client(channel)
        totals = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name)).totals
        assert (totals.opens, totals.clicks, totals.unsubscribed) == (0, 0, 0)
    status, headers, _ = fetch(direct(click))
    assert (status, headers["Location"]) == (302, "https://example.org/three?x=1")
    assert fetch(direct(unsubscribe), b"List-Unsubscribe=One-Click")[0] == 200
    with daemon.channel() as channel:
        report = Client(channel).stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        assert (report.totals.clicks, report.totals.unsubscribed) == (1, 1)


def test_a_test_send_s_links_work_and_record_nothing(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """A tracked test send's pixel, links and unsubscribe link answer (negative message ids) but
    count nothing and unsubscribe nobody."""
    server = smtp()
    daemon = daemon_factory(FAST + LISTENER + email_transport("a", server.port), env=ENV).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(email_channel({"a": 100}, html=HTML, track=True))
        request = svc.SendTestMessageRequest(
            name=campaign.name, channel_id="mail", addresses=["ann@example.org"]
        )
        client.stub.SendTestMessage(request)
    [message] = server.inbox.parsed()
    pixel, (one, _two, _mailto) = links(message)
    unsubscribe = unsubscribe_link(message)
    assert "/-" in unsubscribe
    assert fetch(pixel)[0] == 200
    status, headers, _ = fetch(one)
    assert (status, headers["Location"]) == (302, ONE)
    assert fetch(unsubscribe)[0] == 200
    status, _, body = fetch(unsubscribe, b"List-Unsubscribe=One-Click")
    assert (status, b"test message" in body) == (200, True)
    with daemon.channel() as channel:
        client = Client(channel)
        totals = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name)).totals
        assert (totals.opens, totals.clicks, totals.unsubscribed) == (0, 0, 0)
        check = cs.CheckSuppressionRequest(address="ann@example.org", channel_type="email")
        assert not client.contacts.CheckSuppression(check).suppressed
