"""Message content: templates refuse header injection; over-long lines are
re-encoded rather than sent raw or refused."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

import pytest

from bulkmail.message import Recipient, StaticContent, TemplateContent, TemplateValueError
from bulkmail.protocol.errors import MessageError
from bulkmail.reencode import prepare


def test_template_renders_each_recipient_and_knows_email() -> None:
    content = TemplateContent("To: ${name} <${email}>\nSubject: hi\n\nDear ${name}\n")
    prepared = content.render(Recipient("ann@x.test", {"name": "Ann"}))
    assert prepared.normalized == b"To: Ann <ann@x.test>\r\nSubject: hi\r\n\r\nDear Ann\r\n"


@pytest.mark.parametrize("value", ["Ann\r\nBcc: victim@x.test", "Ann\nX-Evil: 1", "A\rB", "A\0B"])
def test_template_values_cannot_add_lines_or_headers(value: str) -> None:
    content = TemplateContent("Subject: hi ${name}\n\nbody\n")
    with pytest.raises(TemplateValueError, match="header injection"):
        content.render(Recipient("ann@x.test", {"name": value}))


def test_missing_template_variable_is_a_clear_error() -> None:
    content = TemplateContent("Subject: hi ${name}\n\n${coupon}\n")
    with pytest.raises(TemplateValueError, match="coupon"):
        content.render(Recipient("ann@x.test", {"name": "Ann"}))


def test_long_html_line_is_reencoded_quoted_printable() -> None:
    html = "<p>" + "x" * 5000 + "</p>"
    raw = (
        "Subject: news\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        "\r\n" + html + "\r\n"
    ).encode()
    prepared = prepare(raw)
    assert prepared.longest_line <= 998
    parsed = BytesParser(policy=policy.default).parsebytes(prepared.normalized)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content().strip() == html


def test_long_line_in_a_multipart_only_touches_that_part() -> None:
    raw = (
        b"Subject: news\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nshort line\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\n" + b"y" * 3000 + b"\r\n"
        b"--b--\r\n"
    )
    prepared = StaticContent(raw).prepared
    assert prepared.longest_line <= 998
    parsed = BytesParser(policy=policy.default).parsebytes(prepared.normalized)
    plain, blob = list(parsed.iter_parts())
    assert plain.get_content() == "short line"  # the CRLF before a boundary is its own
    assert blob["Content-Transfer-Encoding"] == "base64"
    assert blob.get_content() == b"y" * 3000


def test_unfixable_long_header_is_a_clear_error() -> None:
    raw = b"X-Token: " + b"z" * 2000 + b"\r\n\r\nbody\r\n"
    with pytest.raises(MessageError, match="998"):
        prepare(raw)
