"""The email channel's routes on the daemon's HTTP listener: RFC 8058 one-click unsubscribe (and
a confirmation page for a GET), the open pixel, and click redirects. Every link is signed with
the type's `unsubscribe_secret` (and verified with `previous_unsubscribe_secret` too); a redirect
only goes to a URL that was in the message. Links of a test send (a negative message id) work
but record nothing."""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import uuid
from urllib.parse import quote

from aiohttp import web

from campaignd.plugin import EventKind, HttpRoute, MessageEvent, MessageEventSink, Options

# The listener's public URL of this type's prefix, set when the daemon mounts the routes.
LISTENER: dict[str, str] = {}
TOKEN_LENGTH = 32
_ID = r"[a-z][a-z0-9-]{0,62}"
# A quoted href value, or an unquoted one, which ends at a space or > (as browsers read it).
_HREF = re.compile(r"""(\bhref\s*=\s*)(?:(["'])(.*?)\2|([^\s"'<>`]+))""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# The smallest transparent GIF.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
MAX_URL = 2000


def sign(secret: str, *parts: object) -> str:
    """The token of `parts` under `secret`."""
    text = ":".join(str(p) for p in parts)
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()[:TOKEN_LENGTH]


def secrets(options: Options) -> tuple[str, ...]:
    """The secrets a token may be signed with: `unsubscribe_secret`, then the previous one."""
    found = (options.get("unsubscribe_secret"), options.get("previous_unsubscribe_secret"))
    return tuple(str(s) for s in found if s)


def _good(keys: tuple[str, ...], token: str, *parts: object) -> bool:
    return any(hmac.compare_digest(sign(key, *parts).encode(), token.encode()) for key in keys)


def unsubscribe_link(base: str, secret: str, campaign: str, channel: str, message: int) -> str:
    """The listener's one-click unsubscribe URL of one message."""
    token = sign(secret, "unsubscribe", campaign, channel, message)
    return f"{base}/unsubscribe/{campaign}/{channel}/{message}/{token}"


def verp_token(secret: str, message: int) -> str:
    """The token of a message's VERP envelope sender."""
    return sign(secret, "bounce", message)[:16]


def verp_address(secret: str, message: int, domain: str) -> str:
    """The VERP envelope sender of a message: bounces come back to it."""
    return f"bounces+m{message}-{verp_token(secret, message)}@{domain}"


def track(
    body: str, base: str, secret: str, campaign: str, channel: str, message: int, unsubscribe: str
) -> str:
    """`body` (HTML) with every http(s) link sent through the click redirect and an open pixel
    at its end; `mailto:` and other links, and the unsubscribe link, are left alone."""

    def rewrite(found: re.Match[str]) -> str:
        url = html.unescape(found[3] if found[2] else found[4]).strip()
        if not re.match(r"https?://", url, re.IGNORECASE) or url == unsubscribe or len(url) > MAX_URL:
            return found[0]
        token = sign(secret, "click", campaign, channel, message, url)
        link = f"{base}/click/{campaign}/{channel}/{message}/{token}?u={quote(url, safe='')}"
        quote_mark = found[2] or '"'
        return f"{found[1]}{quote_mark}{html.escape(link)}{quote_mark}"

    body = _HREF.sub(rewrite, body)
    token = sign(secret, "open", campaign, channel, message)
    pixel = f'<img src="{base}/open/{campaign}/{channel}/{message}/{token}.gif" width="1" height="1" alt="">'
    ends = list(_BODY_END.finditer(body))
    if ends:
        return body[: ends[-1].start()] + pixel + body[ends[-1].start() :]
    return body + pixel


def routes(options: Options, base: str, events: MessageEventSink) -> list[HttpRoute]:
    """The routes, or none when the type has no `unsubscribe_secret` to sign links with. Called
    again at a reload: the new routes verify with the reloaded secrets."""
    keys = secrets(options)
    if not keys:
        return []
    LISTENER["base_url"] = base
    from campaignd_email import bounces

    bounces.serve(str(options.get("bounce_listen") or ""), keys, events)
    # A test send's messages have negative ids: its links work but record nothing.
    target = f"{{campaign:{_ID}}}/{{channel:{_ID}}}/{{message:-?[0-9]{{1,18}}}}"

    def message_of(request: web.Request, *extra: str) -> tuple[str, str, int] | None:
        info = request.match_info
        campaign, channel, message = info["campaign"], info["channel"], int(info["message"])
        if not _good(keys, info["token"], *(extra[:1]), campaign, channel, message, *(extra[1:])):
            return None
        return campaign, channel, message

    def counts(request: web.Request, message: int) -> bool:
        # HEAD (a link checker, a preview) and a test send's links are answered but not counted.
        return request.method != "HEAD" and message >= 0

    async def confirm(request: web.Request) -> web.Response:
        if message_of(request, "unsubscribe") is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", status=404)
        # Relative to the page's own URL, so that it posts back through a proxy's path prefix.
        action = html.escape(request.match_info["token"])
        form = (
            "<p>Do you want to stop receiving these messages?</p>"
            f'<form method="post" action="{action}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit" id="unsubscribe">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", form)

    async def unsubscribe(request: web.Request) -> web.Response:
        found = message_of(request, "unsubscribe")
        if found is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", status=404)
        if found[2] < 0:
            return _page(
                "Unsubscribed", '<p id="done">This was a test message: no address was unsubscribed.</p>'
            )
        event_id = "email-unsubscribe:{}:{}:{}".format(*found)
        [(status, _)] = await events.record_messages(
            [MessageEvent(event_id, EventKind.UNSUBSCRIBED, message=found)]
        )
        if status == "refused":
            return _page("Link not valid", "<p>This message is no longer known.</p>", status=404)
        return _page(
            "Unsubscribed", '<p id="done">You are unsubscribed and will get no more of these messages.</p>'
        )

    async def opened(request: web.Request) -> web.Response:
        found = message_of(request, "open")
        if found is None:
            raise web.HTTPNotFound()
        if counts(request, found[2]):
            await events.record_messages(
                [MessageEvent(f"email-open:{uuid.uuid4()}", EventKind.OPENED, message=found)]
            )
        return web.Response(body=PIXEL, content_type="image/gif", headers={"Cache-Control": "no-store"})

    async def clicked(request: web.Request) -> web.Response:
        url = request.query.get("u", "")
        if not re.match(r"https?://", url, re.IGNORECASE) or len(url) > MAX_URL:
            raise web.HTTPNotFound()
        found = message_of(request, "click", url)
        if found is None:
            raise web.HTTPNotFound()
        if counts(request, found[2]):
            event = MessageEvent(f"email-click:{uuid.uuid4()}", EventKind.CLICKED, message=found, url=url)
            await events.record_messages([event])
        raise web.HTTPFound(url, headers={"Cache-Control": "no-store"})

    return [
        HttpRoute("GET", f"unsubscribe/{target}/{{token:[0-9a-f]{{1,64}}}}", confirm),
        HttpRoute("POST", f"unsubscribe/{target}/{{token:[0-9a-f]{{1,64}}}}", unsubscribe),
        HttpRoute("GET", f"open/{target}/{{token:[0-9a-f]{{1,64}}}}.gif", opened),
        HttpRoute("GET", f"click/{target}/{{token:[0-9a-f]{{1,64}}}}", clicked),
    ]


def _page(title: str, body: str, status: int = 200) -> web.Response:
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em;color:#222}"
        "button{font-size:1.1em;padding:.5em 1.5em;cursor:pointer}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(
        text=page,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        },
    )
