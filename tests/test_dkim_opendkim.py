"""DKIM checked by libopendkim (``opendkim-testmsg``), a verifier that shares no
code with dkimpy, on messages captured at the sink over a real socket, with the
public keys served by the loopback DNS server (see ``tests/opendkim.py``)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bulkmail import Mailer, MailerConfig, Recipient, Relay, TemplateContent
from bulkmail.dkim_signing import DKIMSigner
from bulkmail.message import Content, StaticContent
from bulkmail.newsletter import DecoratedContent, Decorations
from bulkmail.sink import Sink, SinkConfig

from .opendkim import opendkim_verify

SELECTOR = "sel._domainkey.sender.test"
LONG_LINE = "<p>" + "Grüße, zoë! " * 400 + "</p>"  # ~5,000 octets on one line
# every line-ending kind, lines that are only dots or start with one, UTF-8
BODY = (
    f"Hello ${{name}},\r\n.\r\n..two dots\n.leading dot\rmixed\r\n{LONG_LINE}\n"
    "ünïcödé ✓\r\n\r\n-- \r\n"
)
HEAD = (
    "From: News <news@sender.test>\r\nTo: ${name} <${email}>\r\nSubject: Grüße ${name}\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\n"
)


def key_pair(algorithm: str) -> tuple[bytes, str]:
    """(PKCS#8 PEM private key, DKIM TXT record), made by `cryptography`, not by us."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, record


async def capture(content: Content, recipients: list[Recipient]) -> list[bytes]:
    """What the sink received, over a real socket."""
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(record_messages=True))
        port = await nursery.start(sink.serve)
        async with Mailer(MailerConfig(relay=Relay("127.0.0.1", port), secure="none")) as m:
            summary = await m.send("news@sender.test", content, recipients)
        nursery.cancel_scope.cancel()
    assert summary.delivered == len(recipients)
    return [message.content for message in sink.messages]


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
@pytest.mark.parametrize("personalised", [False, True], ids=["batched", "personalised"])
async def test_opendkim_verifies_every_message_and_rejects_an_altered_header(
    algorithm: str, personalised: bool, tmp_path: Path
) -> None:
    pem, record = key_pair(algorithm)
    (tmp_path / "key.pem").write_bytes(pem)
    signer = DKIMSigner.from_file("sel", "sender.test", tmp_path / "key.pem")
    assert signer.algorithm == algorithm  # recognised from the PEM itself
    readers = [Recipient(f"r{i}@example.test", {"name": f"Zoë{i}"}) for i in range(3)]
    inner: Content
    if personalised:
        inner = TemplateContent(HEAD + BODY)
    else:
        fixed = (HEAD + BODY).replace("${name}", "all").replace("${email}", "list@sender.test")
        inner = StaticContent(fixed.encode())
    content = DecoratedContent(inner, Decorations(
        identity_domain="sender.test", unsubscribe_url="https://sender.test/u?e=${email}",
        dkim=signer))
    messages = await capture(content, readers)
    assert len(messages) == 3 if personalised else len(messages) >= 1
    # the long line really was re-encoded on the way, and the dot lines survived
    assert all(max(map(len, m.split(b"\r\n"))) <= 998 for m in messages)
    altered = messages[0].replace(b"\r\nSubject: ", b"\r\nSubject: Re: ", 1)
    assert altered != messages[0]
    results = await opendkim_verify([*messages, altered], {SELECTOR: record}, tmp_path)
    assert results[:-1] == [(0, "")] * len(messages)
    status, said = results[-1]
    assert status != 0 and "signature" in said.lower()  # the negative control fails
