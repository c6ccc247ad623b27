"""Message content: templates refuse header injection; over-long lines are
re-encoded rather than sent raw or refused; Message-ID/Date added by default;
message files that cannot be mail refused at start."""

from __future__ import annotations

import re
import subprocess
import sys
from email import message_from_bytes, policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import trio

from bulkmail.message import (
    Recipient,
    StaticContent,
    TemplateContent,
    TemplateValueError,
    as_content,
)
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


# -- Message-ID and Date from the library (issue 16 item 14) ------------------------


async def test_the_library_adds_message_id_and_date_by_default() -> None:
    from bulkmail import Mailer, MailerConfig, Relay
    from bulkmail.sink import Sink, SinkConfig

    raw = b"From: News <news@Sender.Test>\r\nSubject: hi\r\n\r\nbody\r\n"
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(record_messages=True))
        port = await nursery.start(sink.serve)
        async with Mailer(MailerConfig(relay=Relay("127.0.0.1", port), secure="none")) as m:
            await m.send("b@sender.test", raw, ["a@example.test"])
            await m.send("b@sender.test", StaticContent(raw), ["c@example.test"])  # opt out
        nursery.cancel_scope.cancel()
    added, plain = (message_from_bytes(x.content) for x in sink.messages)
    assert re.fullmatch(r"<[0-9a-f]{32}@sender\.test>", added["Message-ID"])
    assert parsedate_to_datetime(added["Date"]).tzinfo is not None
    assert plain["Message-ID"] is None and plain["Date"] is None


def test_identity_keeps_what_the_message_has_and_is_stable_per_recipient() -> None:
    dated = b"From: a@s.test\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\nSubject: x\r\n\r\nb\r\n"
    assert as_content(dated).render(Recipient("r@x.test")).normalized.count(b"Date:") == 1
    template = TemplateContent("From: a@s.test\nSubject: hi ${name}\n\nb\n", identity=True)
    ann, bob = Recipient("ann@x.test", {"name": "A"}), Recipient("bob@x.test", {"name": "A"})
    ids = [message_from_bytes(template.raw(r))["Message-ID"] for r in (ann, ann, bob)]
    assert ids[0] == ids[1] != ids[2]  # a resend carries the same id; another reader not
    assert as_content(lambda r: b"From: a@s.test\r\n\r\nx\r\n").raw(ann).startswith(
        b"Message-ID: <")
    assert as_content(dated, identity=False).raw(ann) == dated


# -- message files the CLI refuses (issue 16 item 5) --------------------------------


@pytest.mark.parametrize(("content", "said"), [
    (b"From: a@s.test\nSubject: x\n\nbinary \x00 here\n", "NUL byte (line 4)"),
    (b"Hello,\nthis is just text without headers.\n", "does not start with a header line"),
    (b"From: a@s.test\nthis line is body text\n\nbody\n", "line 2 is neither a header"),
])
def test_a_message_file_that_cannot_be_mail_is_exit_2(
    content: bytes, said: str, tmp_path: Path
) -> None:
    (tmp_path / "msg.eml").write_bytes(content)
    (tmp_path / "list.txt").write_text("a@example.test\n")
    result = subprocess.run(
        [sys.executable, "-m", "bulkmail", "send", "--sender", "b@s.test", "--recipients",
         str(tmp_path / "list.txt"), "--message", str(tmp_path / "msg.eml"),
         "--relay", "127.0.0.1:9", "--tls", "none", "--no-journal", "--quiet"],
        capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2
    assert said in result.stderr and "Traceback" not in result.stderr
    if "header" in said:
        assert "then one empty line, then the body" in result.stderr  # what it must look like


@pytest.mark.parametrize("text", [
    "Hi $name, ${name}!", "$$name costs {0} {{x}} }{", "${a}${b}$a_b", "no placeholders",
    "$email <$recipient> 100%", "{$name}", "$$", "tail $name",
])
def test_template_renders_as_string_template_does(text: str) -> None:
    """The precompiled format string gives Template.substitute's output and KeyError."""
    import string

    from bulkmail.message import _format_string

    template = string.Template(text)
    values = {"name": "{v}$x", "a": "A", "b": "}", "a_b": "", "email": "e@x", "recipient": "r"}
    assert _format_string(template).format_map(values) == template.substitute(values)
    missing = {k: v for k, v in values.items() if k not in ("name", "a")}
    try:
        want: object = template.substitute(missing)
    except KeyError as exc:
        want = exc.args
    try:
        got: object = _format_string(template).format_map(missing)
    except KeyError as exc:
        got = exc.args
    assert got == want
