"""Messages as bytes, parsed back: personalisation, headers, encodings, injection, the sandbox."""

from __future__ import annotations

import asyncio
import email.message
import email.parser
import email.policy
import email.utils
import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qs, urlsplit

import campaignd_email
import pytest
from campaignd_email.message import composer
from smtp_servers import channel, recipient, renderer

from campaignd.plugin import ChannelInfo, Recipient, Rendered

SECRET = "a-long-unsubscribe-secret"  # noqa: S105 (a test key)
OPTIONS = {
    "unsubscribe_url": "https://example.com/u?c={campaign}&ch={channel}&m={message}&a={address}&t={token}",
    "unsubscribe_secret": SECRET,
}
EXPECTED_HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
}


def render(info: ChannelInfo, to: Recipient, options: dict[str, Any] | None = None) -> Rendered:
    """The message through the render hook."""
    rendering = campaignd_email.campaignd_render(
        channel_type="email",
        channel=info,
        recipient=to,
        options=OPTIONS if options is None else options,
        renderer=renderer(),
    )
    assert rendering is not None
    return asyncio.run(rendering)  # type: ignore[arg-type]


def parse(data: bytes) -> email.message.EmailMessage:
    """Bytes as a mail reader would read them."""
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, email.message.EmailMessage)
    assert not message.defects
    return message


def body(message: email.message.EmailMessage, kind: str) -> str:
    """The decoded text/`kind` part."""
    part = message.get_body(preferencelist=(kind,))
    assert part is not None
    assert part.get_content_type() == f"text/{kind}"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def test_personalisation_and_escaping() -> None:
    info = channel(
        subject="{{ contact.first_name }}, your {{ contact.plan }} plan",
        text="Hello {{ contact.first_name }} ({{ contact.email }}), plan {{ contact.plan }}."
        "{{ contact.missing }}\n",
        html="<p>Hello {{ contact.first_name }}, plan {{ contact.plan }} in {{ campaign }}</p>\n",
    )
    rendered = render(info, recipient(7, first_name="Zoë", plan="Gold & <b>Silver</b>"))
    message = parse(rendered.data)
    assert message["Subject"] == "Zoë, your Gold & <b>Silver</b> plan"
    assert rendered.summary == message["Subject"]
    assert body(message, "plain") == "Hello Zoë (user7@example.org), plan Gold & <b>Silver</b>.\n"
    assert body(message, "html") == (
        "<p>Hello Zoë, plan Gold &amp; &lt;b&gt;Silver&lt;/b&gt; in campaigns/spring</p>\n"
    )
    assert rendered.text == "Hello Zoë (user7@example.org), plan Gold & <b>Silver</b>.\n"


def test_headers() -> None:
    info = channel(from_name="Zoë's Shop", reply_to="help@example.com")
    rendered = render(info, recipient(42), OPTIONS | {"message_id_domain": "mail.example.net"})
    message = parse(rendered.data)
    assert set(message.keys()) == EXPECTED_HEADERS | {"Reply-To"}
    assert message["From"].addresses[0].display_name == "Zoë's Shop"
    assert message["From"].addresses[0].addr_spec == "news@example.com"
    assert message["To"] == "user42@example.org"
    assert message["Reply-To"] == "help@example.com"
    assert email.utils.parsedate_to_datetime(message["Date"]).tzinfo is not None
    message_id = message["Message-ID"]
    assert message_id.startswith("<spring.mail.42.")
    assert message_id.endswith("@mail.example.net>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"


def test_the_message_id_domain_defaults_to_the_sender_s() -> None:
    message = parse(render(channel(), recipient(1)).data)
    assert message["Message-ID"].endswith("@example.com>")


def test_the_unsubscribe_url_and_its_token_can_be_verified() -> None:
    message = parse(render(channel(), recipient(9, "Ann+news@example.org")).data)
    url = message["List-Unsubscribe"]
    assert url.startswith("<https://example.com/u?")
    assert url.endswith(">")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url[1:-1]).query).items()}
    assert query["c"] == "spring"
    assert query["ch"] == "mail"
    assert query["m"] == "9"
    assert query["a"] == "Ann+news@example.org"
    signed = f"{query['c']}:{query['ch']}:{query['m']}:{query['a']}".encode()
    assert query["t"] == hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()[:32]
    # The same URL is in the template context.
    assert f"unsubscribe: {url[1:-1]}" in body(message, "plain")


def test_the_channel_s_unsubscribe_url_overrides_the_type_s() -> None:
    info = channel(unsubscribe_url="https://lists.example.com/leave/{message}")
    message = parse(render(info, recipient(3)).data)
    assert message["List-Unsubscribe"] == "<https://lists.example.com/leave/3>"


def test_without_an_unsubscribe_url_there_are_no_list_headers() -> None:
    message = parse(render(channel(), recipient(3), {}).data)
    assert "List-Unsubscribe" not in message
    assert "List-Unsubscribe-Post" not in message


def test_ascii_bodies_go_7bit_and_others_quoted_printable() -> None:
    info = channel(
        text="plain ascii {{ contact.first_name }}\n", html="<p>caf\u00e9 {{ contact.first_name }}</p>"
    )
    rendered = render(info, recipient(1))
    message = parse(rendered.data)
    parts = {p.get_content_type(): p for p in message.iter_parts()}
    assert parts["text/plain"]["Content-Transfer-Encoding"] == "7bit"
    assert parts["text/html"]["Content-Transfer-Encoding"] == "quoted-printable"
    assert body(message, "html") == "<p>café Ann1</p>"


def test_long_lines_and_non_ascii_text_survive_and_lines_stay_short() -> None:
    long_line = "word " * 400 + "end"
    text = f"Grüße {{{{ contact.first_name }}}}\n{long_line}\n\u4f60\u597d\u4e16\u754c\n"
    rendered = render(channel(text=text, html=""), recipient(1))
    message = parse(rendered.data)
    assert message.get_content_type() == "text/plain"
    assert body(message, "plain") == f"Grüße Ann1\n{long_line}\n你好世界\n"
    assert all(len(line) <= 998 for line in rendered.data.split(b"\r\n"))
    assert b"\n" not in rendered.data.replace(b"\r\n", b"")


def test_html_only_is_a_single_part() -> None:
    rendered = render(channel(text="", html="<p>{{ contact.first_name }}</p>"), recipient(1))
    message = parse(rendered.data)
    assert message.get_content_type() == "text/html"
    # A message ends with a line break; a single part's body carries it.
    assert body(message, "html") == "<p>Ann1</p>\n"
    assert rendered.text == "<p>Ann1</p>"


def test_a_body_holding_the_boundary_is_encoded_so_the_structure_holds() -> None:
    boundary = composer(channel(), OPTIONS)._boundary
    to = recipient(1, first_name=f"\n--{boundary}--\nContent-Type: text/html\n\n<script>")
    message = parse(render(channel(), to).data)
    assert len(list(message.iter_parts())) == 2
    assert f"--{boundary}--" in body(message, "plain")


def test_a_long_ascii_subject_is_folded() -> None:
    subject = "A subject " * 20 + "{{ contact.first_name }}"
    rendered = render(channel(subject=subject), recipient(1))
    head = rendered.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if not line.startswith(b"List-Unsubscribe:"))
    assert parse(rendered.data)["Subject"] == ("A subject " * 20 + "Ann1")


def test_a_non_ascii_subject_is_encoded_in_words() -> None:
    subject = "Ünïcödé " * 12 + "{{ contact.first_name }} 🎉"
    rendered = render(channel(subject=subject), recipient(1))
    assert rendered.data.isascii()
    assert parse(rendered.data)["Subject"] == "Ünïcödé " * 12 + "Ann1 🎉"


@pytest.mark.parametrize(
    "content",
    [
        {"subject": "Hi\r\nBcc: victim@example.net"},
        {"subject": "Hi {{ contact.first_name }}"},
        {"from_name": "Shop\r\nBcc: victim@example.net"},
        {"from_name": "{{ contact.first_name }}"},
        {"from_name": "Zoë {{ contact.first_name }}"},
        {"subject": "Hi {{ contact.first_name }}\u2028x\x0bBcc: y"},
    ],
)
def test_header_injection_adds_no_header(content: dict[str, str]) -> None:
    to = recipient(1, first_name="Ann\r\nBcc: victim@example.net\nX-Evil: 1\r\n\r\nbody")
    rendered = render(channel(**content), to)
    message = parse(rendered.data)
    assert set(message.keys()) == EXPECTED_HEADERS
    head = rendered.data.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in head
    assert b"\nX-Evil:" not in head


def test_an_address_that_would_inject_is_refused() -> None:
    with pytest.raises(ValueError, match="not an address"):
        render(channel(), recipient(1, "a@example.org\r\nBcc: victim@example.net"))


@pytest.mark.parametrize(
    ("address", "written"),
    [("zoe@bücher.example.org", "zoe@xn--bcher-kva.example.org"), ("zoe@straße.de", "zoe@xn--strae-oqa.de")],
)
def test_an_internationalised_domain_is_written_in_ascii_by_idna_2008(address: str, written: str) -> None:
    message = parse(render(channel(), recipient(1, address)).data)
    assert message["To"] == written


def test_a_non_ascii_local_part_is_refused() -> None:
    with pytest.raises(ValueError, match="SMTPUTF8"):
        render(channel(), recipient(1, "zoë@example.org"))


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''['__class__'] }}",
        "{% include '/etc/passwd' %}",
        "{% import '/etc/passwd' as x %}",
        "{% extends '/etc/passwd' %}",
    ],
)
def test_sandbox_escapes_are_refused_at_validation_and_at_render(template: str) -> None:
    problems = campaignd_email.campaignd_validate_channel(
        channel_type="email", content={"text": template}, launching=False, options={}
    )
    assert [p.field for p in problems] == ["text"]
    with pytest.raises(ValueError, match="text template"):
        render(channel(text=template), recipient(1))


@pytest.mark.parametrize(
    "template",
    [
        "{% set name = '__cl' ~ 'ass__' %}{{ ''[name] }}",
        "{{ contact.attributes.update({'a': 1}) }}",
        "{{ 'x' * 10000000 }}",
        "{{ 9 ** 9999999 }}",
        "{% for i in range(1000000) %}{% endfor %}",
    ],
)
def test_the_sandbox_stops_what_validation_cannot_see(template: str) -> None:
    with pytest.raises(ValueError, match="text template failed"):
        render(channel(text=template), recipient(1))


def test_missing_attributes_render_empty_and_contact_fields_win() -> None:
    info = channel(
        text="[{{ contact.nothing }}][{{ contact.email }}][{{ contact.items }}][{{ contact.time_zone }}]"
    )
    rendered = render(info, recipient(1, email="spoof@example.net", items="three"))
    assert rendered.text == "[][user1@example.org][three][Europe/Paris]"


def test_a_template_error_is_a_value_error_fit_for_the_client() -> None:
    with pytest.raises(ValueError, match="the subject template failed: contact has no attribute 'nothing'"):
        render(channel(subject="{{ contact.nothing.deeper }}"), recipient(1))


def test_render_answers_only_for_email() -> None:
    assert (
        campaignd_email.campaignd_render(
            channel_type="sms", channel=channel(), recipient=recipient(1), options={}, renderer=renderer()
        )
        is None
    )
