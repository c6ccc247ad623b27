"""The session against aiosmtpd, an independent server: plain, STARTTLS,
implicit TLS, AUTH PLAIN / LOGIN, SMTPUTF8 and 8BITMIME, over real sockets."""

from __future__ import annotations

import ssl

import pytest
import trio

from bulkmail.config import SessionConfig
from bulkmail.errors import SMTPAuthError, SMTPTLSError
from bulkmail.protocol.auth import Credentials
from bulkmail.protocol.data import PreparedMessage
from bulkmail.session import Envelope, SMTPSession

from .aiosmtpd_util import Authenticator, RecordingHandler, aiosmtpd_server
from .conftest import TLS

MESSAGE = b"Subject: hi\r\n\r\nline one\r\n.starts with a dot\r\n"


def envelope(*rcpts: str, body: bytes = MESSAGE, sender: str = "news@sender.test") -> Envelope:
    return Envelope(sender, list(rcpts), PreparedMessage.from_bytes(body))


async def deliver(config: SessionConfig, *envelopes: Envelope):
    # aiosmtpd runs in its own thread; give the session a thread-friendly target
    session = await SMTPSession.connect(config, "127.0.0.1")
    try:
        return session, await session.send_batch(list(envelopes))
    finally:
        await session.quit()


async def test_plain_delivery_lockstep_without_pipelining() -> None:
    with aiosmtpd_server() as (handler, port):
        config = SessionConfig("127.0.0.1", port, secure="none", trace=True)
        session, results = await deliver(config, envelope("a@x.test", "b@x.test"))
    assert [r.code for r in results[0].replies] == [250, 250]
    assert not session.extensions.pipelining
    assert handler.messages[0].rcpt_tos == ["a@x.test", "b@x.test"]
    assert handler.messages[0].content == MESSAGE  # dot-stuffing undone by the server
    # lock-step: every command was sent alone, in order
    assert session.trace is not None
    lines = session.trace.client_lines()
    assert lines[1:5] == [
        f"MAIL FROM:<news@sender.test> SIZE={len(MESSAGE)}",
        "RCPT TO:<a@x.test>",
        "RCPT TO:<b@x.test>",
        "DATA",
    ]


async def test_rejected_recipient_gets_its_own_reply() -> None:
    handler = RecordingHandler(reject={"gone@x.test"})
    with aiosmtpd_server(handler) as (_, port):
        config = SessionConfig("127.0.0.1", port, secure="none")
        _, results = await deliver(config, envelope("gone@x.test", "ok@x.test"))
    assert [r.code for r in results[0].replies] == [550, 250]
    assert results[0].replies[0].enhanced == "5.1.1"
    assert handler.messages[0].rcpt_tos == ["ok@x.test"]


async def test_starttls_then_auth_plain_and_login(tls: TLS) -> None:
    for mechanism in ("PLAIN", "LOGIN"):
        auth = Authenticator("user", "s3cret")
        with aiosmtpd_server(
            tls_context=tls.server, require_starttls=True, authenticator=auth,
            auth_require_tls=True,
        ) as (handler, port):
            config = SessionConfig(
                "localhost", port, secure="starttls", ssl_context=tls.client,
                credentials=Credentials("user", "s3cret", mechanism=mechanism),
            )
            session, results = await deliver(config, envelope("a@x.test"))
        assert session.tls_active and session.authenticated
        assert auth.attempts == [(mechanism, True)]
        assert results[0].replies[0].code == 250
        assert len(handler.messages) == 1


async def test_implicit_tls(tls: TLS) -> None:
    with aiosmtpd_server(ssl_context=tls.server) as (handler, port):
        config = SessionConfig("localhost", port, secure="tls", ssl_context=tls.client)
        session, results = await deliver(config, envelope("a@x.test"))
    assert session.tls_active
    assert results[0].replies[0].code == 250
    assert handler.messages[0].rcpt_tos == ["a@x.test"]


async def test_wrong_certificate_name_fails_before_credentials(tls: TLS) -> None:
    auth = Authenticator("user", "s3cret")
    with aiosmtpd_server(tls_context=tls.server, authenticator=auth) as (_, port):
        config = SessionConfig(
            "wrong-name.test", port, secure="starttls", ssl_context=tls.client,
            credentials=Credentials("user", "s3cret"),
        )
        with pytest.raises(SMTPTLSError):
            await SMTPSession.connect(config, "127.0.0.1")
    assert auth.attempts == []


async def test_auth_refused_over_plaintext_unless_allowed() -> None:
    auth = Authenticator("user", "s3cret")
    with aiosmtpd_server(authenticator=auth, auth_require_tls=False) as (_, port):
        config = SessionConfig("127.0.0.1", port, secure="none",
                               credentials=Credentials("user", "s3cret"))
        with pytest.raises(SMTPAuthError) as info:
            await SMTPSession.connect(config, "127.0.0.1")
        assert "without TLS" in info.value.reply.text
        assert auth.attempts == []
        allowed = SessionConfig("127.0.0.1", port, secure="none", allow_plaintext_auth=True,
                                credentials=Credentials("user", "s3cret"))
        session = await SMTPSession.connect(allowed, "127.0.0.1")
        assert session.authenticated
        await session.quit()


async def test_smtputf8_address_needs_the_extension() -> None:
    utf8 = "jörg@x.test"
    with aiosmtpd_server(enable_SMTPUTF8=True) as (handler, port):
        config = SessionConfig("127.0.0.1", port, secure="none")
        session, results = await deliver(config, envelope(utf8, "plain@x.test"))
    assert session.extensions.smtputf8
    assert [r.code for r in results[0].replies] == [250, 250]
    assert handler.messages[0].rcpt_tos == [utf8, "plain@x.test"]
    assert "SMTPUTF8" in handler.messages[0].mail_options

    with aiosmtpd_server(enable_SMTPUTF8=False) as (handler, port):
        config = SessionConfig("127.0.0.1", port, secure="none")
        _, results = await deliver(config, envelope(utf8, "plain@x.test"))
    refused, ok = results[0].replies
    assert refused.code == 553 and "SMTPUTF8" in refused.text
    assert ok.code == 250
    assert handler.messages[0].rcpt_tos == ["plain@x.test"]


async def test_8bit_body_is_declared_8bitmime() -> None:
    body = "Subject: café\r\n\r\nça marche\r\n".encode()
    with aiosmtpd_server() as (handler, port):
        config = SessionConfig("127.0.0.1", port, secure="none")
        _, results = await deliver(config, envelope("a@x.test", body=body))
    assert results[0].replies[0].code == 250
    assert "BODY=8BITMIME" in handler.messages[0].mail_options
    assert handler.messages[0].content == body


async def test_opportunistic_tls_upgrades_without_verification(tls: TLS) -> None:
    with aiosmtpd_server(tls_context=tls.server) as (_handler, port):
        config = SessionConfig("127.0.0.1", port, secure="may")  # untrusted CA: still encrypts
        session, results = await deliver(config, envelope("a@x.test"))
    assert session.tls_active
    assert results[0].replies[0].code == 250


_ = (ssl, trio)
