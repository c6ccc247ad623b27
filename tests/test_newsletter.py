"""Newsletter-grade messages: DKIM verified by an independent verifier (dkimpy)
reading keys from a DNS server on loopback, one-click unsubscribe, identity
headers, and a VERP round trip through a real DSN."""

from __future__ import annotations

import base64
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path

import dkim
import dns.resolver
import nacl.signing
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bulkmail import Mailer, MailerConfig, Recipient, Relay, TemplateContent
from bulkmail.dkim_signing import DKIMError, DKIMSigner
from bulkmail.dsn import parse_dsn
from bulkmail.headers import ensure_identity, unsubscribe_headers
from bulkmail.journal import SQLiteJournal
from bulkmail.message import StaticContent
from bulkmail.newsletter import DecoratedContent, Decorations
from bulkmail.reencode import prepare
from bulkmail.sink import Sink, SinkConfig
from bulkmail.verp import verp_recipient, verp_sender

from .dnsserver import DNSServer

MESSAGE = (
    "From: News <news@sender.test>\r\nTo: ${name} <${email}>\r\nSubject: Hello ${name}\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHi ${name}!\r\n"
)


def rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def ed25519_key() -> tuple[bytes, str]:
    signing = nacl.signing.SigningKey.generate()
    public = base64.b64encode(bytes(signing.verify_key)).decode()
    return base64.b64encode(bytes(signing)), f"v=DKIM1; k=ed25519; p={public}"


def txt(value: str) -> str:
    """A TXT record's text, split into 255-octet strings as DNS requires."""
    return " ".join(f'"{value[i:i + 200]}"' for i in range(0, len(value), 200))


async def send_through_sink(content, recipients, **send_kwargs):  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(record_messages=True))
        port = await nursery.start(sink.serve)
        async with Mailer(MailerConfig(relay=Relay("127.0.0.1", port), secure="none")) as m:
            summary = await m.send("news@sender.test", content, recipients, **send_kwargs)
        nursery.cancel_scope.cancel()
    return sink, summary


async def verify_all(messages: list[bytes], records: dict[str, str]) -> list[bool]:
    """dkimpy's verify, with its DNS answered by our loopback server."""
    async with trio.open_nursery() as nursery:
        server = DNSServer()
        port = await nursery.start(server.serve)
        for name, value in records.items():
            server.add(name, "TXT", txt(value))
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = port

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
            return b"".join(b"".join(r.strings) for r in answer)

        results = [
            await trio.to_thread.run_sync(lambda m=m: dkim.verify(m, dnsfunc=dnsfunc))
            for m in messages
        ]
        nursery.cancel_scope.cancel()
    return results


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
async def test_personalised_messages_are_signed_per_recipient(
    algorithm: str, tmp_path: Path
) -> None:
    private, record = rsa_key() if algorithm == "rsa-sha256" else ed25519_key()
    (tmp_path / "key").write_bytes(private)
    signer = DKIMSigner.from_file("sel", "sender.test", tmp_path / "key", algorithm=algorithm)
    content = DecoratedContent(
        TemplateContent(MESSAGE),
        Decorations(identity_domain="sender.test",
                    unsubscribe_url="https://sender.test/unsub?u=${email}", dkim=signer),
    )
    readers = [Recipient(f"r{i}@example.test", {"name": f"R{i}"}) for i in range(3)]
    sink, summary = await send_through_sink(content, readers)
    assert summary.delivered == 3
    bodies = [m.content for m in sink.messages]
    assert await verify_all(bodies, {"sel._domainkey.sender.test": record}) == [True] * 3
    parsed = [message_from_bytes(b) for b in bodies]
    assert len({p["Message-ID"] for p in parsed}) == 3  # unique per personalised message
    assert {p["List-Unsubscribe"] for p in parsed} == {
        f"<https://sender.test/unsub?u=r{i}@example.test>" for i in range(3)
    }
    assert {p["List-Unsubscribe-Post"] for p in parsed} == {"List-Unsubscribe=One-Click"}
    assert all(p["Date"] for p in parsed)
    signed = parsed[0]["DKIM-Signature"].replace("\r\n", "").replace(" ", "")
    for header in ("from", "to", "subject", "date", "message-id", "list-unsubscribe"):
        assert header in signed.split("h=")[1].split(";")[0].lower().split(":")
    # a tampered copy fails verification: the signature is real
    tampered = bodies[0].replace(b"Hi R", b"Hi X")
    assert await verify_all([tampered], {"sel._domainkey.sender.test": record}) == [False]


async def test_identical_content_is_signed_once() -> None:
    private, record = rsa_key()
    signer = DKIMSigner("sel", "sender.test", private)
    raw = b"From: news@sender.test\r\nSubject: same\r\n\r\nfor everyone\r\n"
    content = DecoratedContent(StaticContent(raw), Decorations("sender.test", dkim=signer))
    assert not content.personalised
    first = content.render(Recipient("a@example.test"))
    assert content.render(Recipient("b@example.test")) is first  # one signature, shared
    sink, summary = await send_through_sink(content, [f"u{i}@x.test" for i in range(60)])
    assert summary.delivered == 60 and sink.stats.messages == 2  # still batched
    assert await verify_all([sink.messages[0].content],
                            {"sel._domainkey.sender.test": record}) == [True]


def test_identity_headers_added_only_when_missing_and_stable() -> None:
    raw = b"From: a@sender.test\r\nSubject: x\r\n\r\nbody\r\n"
    once = ensure_identity(raw, "sender.test", seed=b"same")
    again = ensure_identity(raw, "sender.test", seed=b"same")
    mid = message_from_bytes(once)["Message-ID"]
    assert mid == message_from_bytes(again)["Message-ID"]  # a resend keeps its Message-ID
    assert mid.endswith("@sender.test>")
    kept = ensure_identity(b"Message-ID: <mine@x>\r\n" + raw, "sender.test")
    assert message_from_bytes(kept)["Message-ID"] == "<mine@x>"
    assert once.endswith(b"\r\n\r\nbody\r\n")  # body untouched


def test_unsubscribe_and_signing_refuse_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="https"):
        unsubscribe_headers("http://insecure.test/u")
    signer = DKIMSigner("sel", "sender.test", rsa_key()[0])
    with pytest.raises(DKIMError, match="From"):
        signer.sign(b"Subject: no from\r\n\r\nx\r\n")
    with pytest.raises(DKIMError, match="cannot read"):
        DKIMSigner.from_file("sel", "d.test", tmp_path / "missing.pem")


def test_verp_encoding_round_trip() -> None:
    tagged = verp_sender("bounces@sender.org", "alice@example.com")
    assert tagged == "bounces+alice=example.com@sender.org"
    assert verp_recipient(tagged, "bounces@sender.org") == "alice@example.com"
    assert verp_recipient("other@sender.org", "bounces@sender.org") is None
    assert verp_sender("b@s.org", "x" * 60 + "@example.com") == "b@s.org"  # too long: plain


def dsn_for(verp_address: str, recipient: str) -> bytes:
    return (
        f"From: MAILER-DAEMON@mx.example.test\r\nTo: {verp_address}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <mailbox> User unknown\r\n"
        "--B--\r\n"
    ).encode()


async def test_verp_round_trip_with_a_real_dsn(tmp_path: Path) -> None:
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("alice@example.test\nbob@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"From: news@sender.test\nSubject: hi\n\nhello\n")
    journal = tmp_path / "journal.sqlite"
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(record_messages=True))
        port = await nursery.start(sink.serve)
        proc = await trio.run_process(
            [sys.executable, "-m", "bulkmail", "send", "--sender", "bounces@sender.test",
             "--recipients", str(rcpts), "--message", str(message), "--relay",
             f"127.0.0.1:{port}", "--tls", "none", "--journal", str(journal), "--verp",
             "--quiet"], capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    senders = {m.rcpts[0]: m.mail_from for m in sink.messages}
    assert senders == {
        "alice@example.test": "bounces+alice=example.test@sender.test",
        "bob@example.test": "bounces+bob=example.test@sender.test",
    }
    # the DSN is vague about the recipient; the VERP address it was sent to is not
    dsn = tmp_path / "bounce.eml"
    dsn.write_bytes(dsn_for(senders["bob@example.test"], "mailbox@mx.example.test"))
    assert [r.recipient for r in parse_dsn(dsn.read_bytes(),
                                           verp_sender="bounces@sender.test")] == [
        "bob@example.test"
    ]
    suppress = tmp_path / "suppress.txt"
    result = subprocess.run(
        [sys.executable, "-m", "bulkmail", "bounces", "--journal", str(journal),
         "--verp-sender", "bounces@sender.test", "--suppress", str(suppress), str(dsn)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    with SQLiteJournal(journal) as db:
        rows = {r.address: r for r in db.iter_records()}
    assert {a: r.status.value for a, r in rows.items()} == {
        "alice@example.test": "delivered", "bob@example.test": "bounced"}
    assert (rows["bob@example.test"].code, rows["bob@example.test"].enhanced) == (550, "5.1.1")
    assert suppress.read_text() == "bob@example.test\n"



def test_header_values_cannot_carry_line_breaks() -> None:
    content = DecoratedContent(
        StaticContent(b"From: news@sender.test\r\nSubject: x\r\n\r\nbody\r\n"),
        Decorations(unsubscribe_url="https://sender.test/u?t=${token}"),
    )
    assert content.personalised  # a per-recipient URL makes every message its own
    ok = content.render(Recipient("a@x.test", {"token": "abc"}))
    assert b"List-Unsubscribe: <https://sender.test/u?t=abc>\r\n" in ok.normalized
    # a value is percent-encoded data: its line break cannot start a header
    evil = content.render(Recipient("b@x.test", {"token": "abc\r\nBcc: victim@x.test"}))
    assert b"<https://sender.test/u?t=abc%0D%0ABcc%3A%20victim@x.test>\r\n" in evil.normalized
    assert b"\r\nBcc:" not in evil.normalized


@pytest.mark.parametrize("template", [
    b"From: a@sender.test\nSubject: hi ${name}\n\nHello ${name}\n",
    b"From: a@sender.test\nDate: Mon, 2 Nov 2026 10:00:00 +0000\nSubject: x\n\nHi ${name}\n",
    b"From: a@sender.test\n${extra}: header from a variable\n\nHi ${name}\n",  # slow path
])
def test_identity_on_a_template_equals_adding_it_to_each_rendering(template: bytes) -> None:
    fast = DecoratedContent(TemplateContent(template), Decorations(identity_domain="sender.test"))
    reader = Recipient("r@example.test", {"name": "Ann", "extra": "X-Extra"})
    raw = TemplateContent(template).raw(reader)
    expected = ensure_identity(raw, "sender.test", seed=raw + b"r@example.test")
    got = fast.render(reader).normalized
    # the Date is the clock's; everything else must match byte for byte
    strip_date = [line for line in got.split(b"\r\n") if not line.startswith(b"Date:")]
    want = prepare(expected).normalized.split(b"\r\n")
    assert strip_date == [line for line in want if not line.startswith(b"Date:")]
    assert got.count(b"\r\nDate: ") + got.startswith(b"Date: ") == 1
    assert got.count(b"Message-ID: <") == 1


def test_signing_content_without_from_is_refused_when_built_not_per_recipient() -> None:
    private, _ = ed25519_key()
    signer = DKIMSigner("sel", "sender.test", private, "ed25519-sha256")
    with pytest.raises(DKIMError, match="From header"):
        DecoratedContent(TemplateContent("Subject: hi ${name}\n\nx\n"), Decorations(dkim=signer))
    with pytest.raises(DKIMError, match="From header"):
        DecoratedContent(StaticContent(b"Subject: hi\r\n\r\nx\r\n"), Decorations(dkim=signer))


def test_a_hand_built_signer_with_a_bad_key_fails_when_the_content_is_built() -> None:
    broken = DKIMSigner("sel", "sender.test", b"bm90IGEga2V5", "ed25519-sha256")
    with pytest.raises(DKIMError, match="does not sign"):
        DecoratedContent(StaticContent(b"From: a@sender.test\r\n\r\nx\r\n"),
                         Decorations(dkim=broken))
