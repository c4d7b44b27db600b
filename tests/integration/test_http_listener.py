"""The daemon's HTTP listener with the email channel: a campaign sent to aiosmtpd, then its
recipients' pixels, rewritten links and one-click unsubscribes fetched over real HTTP."""

from __future__ import annotations

import asyncio
import pathlib
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
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
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel({"a": 100}, **content), audience=pb.Audience(target_lists=["lists/readers"])
        )
        client.launch(campaign.name)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
    return daemon, campaign, {recipient(m): m for m in server.inbox.parsed()}


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
