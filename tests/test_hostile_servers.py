"""Hostile and broken servers, byte by byte over real sockets: every case ends
in a clear error within its stage deadline, with bounded memory, and every
recipient gets a reply of its own -- never another recipient's, never none."""

from __future__ import annotations

import pytest
import trio

from bulkmail.config import SessionConfig, Timeouts
from bulkmail.errors import (
    SMTPProtocolViolation,
    SMTPServerUnavailable,
    SMTPTimeout,
    SMTPTLSError,
)
from bulkmail.policy import Verdict, classify
from bulkmail.protocol.data import PreparedMessage
from bulkmail.session import Envelope, SMTPSession

from .conftest import TLS
from .scripted import Conn, start_scripted

MESSAGE = PreparedMessage.from_bytes(b"Subject: t\r\n\r\nbody\r\n")
EHLO = ("PIPELINING", "8BITMIME")


def config(port: int, **kwargs: object) -> SessionConfig:
    base: dict[str, object] = {"host": "127.0.0.1", "port": port, "secure": "none"}
    base.update(kwargs)
    return SessionConfig(**base)  # type: ignore[arg-type]


async def run_session(handler, *, rcpts=("a@x.test", "b@x.test"), **kwargs):
    """Connect, send one envelope, quit; returns (session or error, results, server)."""
    async with trio.open_nursery() as nursery:
        server, port = await start_scripted(nursery, handler)
        try:
            session = await SMTPSession.connect(config(port, **kwargs), "127.0.0.1")
        except Exception as exc:  # the tests inspect it
            nursery.cancel_scope.cancel()
            return exc, None, server
        results = await session.send_batch([Envelope("s@x.test", list(rcpts), MESSAGE)])
        await session.quit()
        nursery.cancel_scope.cancel()
    return session, results, server


async def greet_then(conn: Conn, reply: bytes) -> None:
    await conn.send(b"220 hostile.test ESMTP\r\n")
    await conn.readline()  # EHLO
    await conn.send(reply)
    await trio.sleep_forever()


@pytest.mark.parametrize(
    "reply",
    [
        b"250-" + b"x" * (8 << 20) + b"\r\n",  # a reply line of megabytes
        b"25 ok\r\n",
        b"2500 ok\r\n",
        b"600 ok\r\n",
        b"250-first\r\n251 second\r\n",  # codes disagree across lines
        b"250-line\r\n" * 10_000,  # a multi-line reply that never ends
    ],
    ids=["huge-line", "code-25", "code-2500", "code-600", "codes-disagree", "endless"],
)
async def test_malformed_ehlo_replies_are_protocol_errors(reply: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await greet_then(conn, reply)

    with trio.fail_after(10):
        error, _, _ = await run_session(handler)
    assert isinstance(error, SMTPProtocolViolation)
    assert error.reply.code == 451  # the session failed: deferral, not bounce
    assert len(str(error)) < 2000  # the error carries a bounded excerpt


async def test_reply_without_newline_then_silence_times_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(conn: Conn) -> None:
        await greet_then(conn, b"250 never finished")

    start = trio.current_time()
    error, _, _ = await run_session(handler, timeouts=Timeouts(ehlo=300))
    assert isinstance(error, SMTPTimeout)
    assert trio.current_time() - start == pytest.approx(300, abs=1)


async def test_trickling_server_is_bounded_by_the_stage_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(conn: Conn) -> None:
        for byte in b"220-" + b"x" * 100_000:
            await conn.send(bytes([byte]))
            await trio.sleep(1)

    start = trio.current_time()
    error, _, _ = await run_session(handler, timeouts=Timeouts(greeting=300))
    assert isinstance(error, SMTPTimeout)
    assert trio.current_time() - start == pytest.approx(300, abs=2)  # not 100,000 s


async def test_silence_after_greeting_times_out(autojump_clock: trio.abc.Clock) -> None:
    async def handler(conn: Conn) -> None:
        await conn.send(b"220 hostile.test\r\n")
        await trio.sleep_forever()

    error, _, _ = await run_session(handler, timeouts=Timeouts(ehlo=120))
    assert isinstance(error, SMTPTimeout)
    assert "EHLO" in str(error)


async def test_enhanced_code_of_the_wrong_class_is_ignored() -> None:
    async def handler(conn: Conn) -> None:
        await conn.greet(*EHLO)
        for _ in range(3):  # MAIL, RCPT, RCPT
            await conn.readline()
        await conn.readline()  # DATA
        await conn.send(b"250 2.1.0 ok\r\n550 2.1.5 confused\r\n250 5.0.0 odd but ok\r\n")
        await conn.send(b"354 go\r\n")
        await conn.read_data()
        await conn.send(b"250 2.0.0 queued\r\n")
        await conn.readline()
        await conn.send(b"221 bye\r\n")

    _, results, _ = await run_session(handler)
    first, second = results[0].replies
    assert first.code == 550 and first.enhanced is None
    assert second.code == 250 and second.enhanced == "2.0.0"


async def test_reply_before_its_command_aborts_the_session() -> None:
    async def handler(conn: Conn) -> None:
        await conn.send(b"220 x\r\n250 early\r\n")
        await trio.sleep_forever()

    with trio.fail_after(10):
        error, _, server = await run_session(handler)
    assert isinstance(error, SMTPProtocolViolation)
    assert server.log == []  # not even EHLO was sent


@pytest.mark.parametrize("stray", [b"221 2.0.0 bye\r\n", b"garbage\r\n"])
async def test_stray_reply_among_pipelined_replies_closes_and_defers(stray: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await conn.greet(*EHLO)
        for _ in range(4):  # MAIL, RCPT, RCPT, DATA in one write
            await conn.readline()
        await conn.send(b"250 ok\r\n250 ok\r\n" + stray + b"354 go\r\n")
        await trio.sleep_forever()

    with trio.fail_after(10):
        session, results, _ = await run_session(handler)
    assert isinstance(session, SMTPSession)
    assert not session.is_usable  # closed, never reused
    assert isinstance(session.error, SMTPProtocolViolation)
    verdicts = {classify(r) for r in results[0].replies}
    assert verdicts == {Verdict.DEFERRED}
    assert not results[0].in_doubt


async def test_354_after_every_rcpt_refused_sends_a_lone_dot() -> None:
    seen: list[bytes] = []

    async def handler(conn: Conn) -> None:
        await conn.greet(*EHLO)
        for _ in range(4):
            await conn.readline()
        await conn.send(b"250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n354 go\r\n")
        seen.append(await conn.read_data())
        await conn.send(b"554 5.5.1 no valid recipients\r\n")
        await conn.readline()
        await conn.send(b"221 bye\r\n")

    _, results, _ = await run_session(handler)
    assert seen == [b".\r\n"]
    assert [r.code for r in results[0].replies] == [550, 550]
    assert results[0].delivered == []


async def test_421_to_a_pipelined_rcpt_closes_without_rset() -> None:
    async def handler(conn: Conn) -> None:
        await conn.greet(*EHLO)
        for _ in range(4):
            await conn.readline()
        await conn.send(b"250 ok\r\n250 ok\r\n421 4.7.0 closing\r\n")

    with trio.fail_after(10):
        session, results, server = await run_session(handler)
    assert isinstance(session.error, SMTPServerUnavailable)
    assert [r.code for r in results[0].replies] == [421, 421]
    assert not any(line.startswith((b"RSET", b"QUIT")) for line in server.log)


async def test_421_to_ehlo_has_no_helo_fallback() -> None:
    async def handler(conn: Conn) -> None:
        await greet_then(conn, b"421 4.3.2 shutting down\r\n")

    with trio.fail_after(10):
        error, _, server = await run_session(handler)
    assert isinstance(error, SMTPServerUnavailable)
    assert not any(line.startswith(b"HELO") for line in server.log)


@pytest.mark.parametrize("delay, in_doubt", [(9 * 60, False), (11 * 60, True)])
async def test_slow_end_of_data_reply(
    autojump_clock: trio.abc.Clock, delay: float, in_doubt: bool
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.greet(*EHLO)
        for _ in range(3):
            await conn.readline()
        await conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await conn.read_data()
        await trio.sleep(delay)
        await conn.send(b"250 2.0.0 finally\r\n")
        await trio.sleep_forever()

    session, results, _ = await run_session(handler, rcpts=("a@x.test",))
    (result,) = results
    if in_doubt:
        assert result.in_doubt == frozenset({0})
        assert isinstance(session.error, SMTPTimeout)
    else:
        assert result.replies[0].code == 250 and not result.in_doubt


async def test_quit_then_tls_close_without_close_notify(tls: TLS) -> None:
    async def handler(conn: Conn) -> None:
        await conn.greet("STARTTLS")
        await conn.readline()
        await conn.send(b"220 go ahead\r\n")
        await conn.start_tls(tls.server)
        await conn.readline()
        await conn.ehlo_reply("PIPELINING")
        await conn.readline()
        await conn.send(b"221 bye\r\n")
        # drop the TCP connection under TLS, no close_notify
        assert isinstance(conn.stream, trio.SSLStream)
        await conn.stream.transport_stream.aclose()

    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, handler)
        cfg = config(port, host="localhost", secure="starttls", ssl_context=tls.client)
        with trio.fail_after(5):
            session = await SMTPSession.connect(cfg, "127.0.0.1")
            assert session.tls_active
            await session.quit()
        nursery.cancel_scope.cancel()


async def test_plaintext_injected_after_starttls_220_aborts(tls: TLS) -> None:
    async def handler(conn: Conn) -> None:
        await conn.greet("STARTTLS", "PIPELINING")
        await conn.readline()
        await conn.send(b"220 Ready to start TLS\r\n250 injected before the handshake\r\n")
        await trio.sleep_forever()

    with trio.fail_after(10):
        error, _, server = await run_session(
            handler, host="localhost", secure="starttls", ssl_context=tls.client
        )
    assert isinstance(error, SMTPProtocolViolation)
    assert server.log[-1] == b"STARTTLS"  # nothing else was sent, in clear or otherwise


@pytest.mark.parametrize(
    "offer, answer", [(False, b""), (True, b"454 4.7.0 TLS not available\r\n")]
)
async def test_required_starttls_fails_closed(offer: bool, answer: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await conn.greet(*(("STARTTLS",) if offer else ()), "PIPELINING")
        if offer:
            await conn.readline()
            await conn.send(answer)
        await trio.sleep_forever()

    with trio.fail_after(10):
        error, _, server = await run_session(handler, secure="starttls")
    assert isinstance(error, SMTPTLSError)
    assert error.reply.code // 100 == 4  # recipients are deferred, not bounced
    assert not any(line.startswith((b"MAIL", b"AUTH")) for line in server.log)


async def test_unanswerable_sasl_challenge_cancels_the_exchange(tls: TLS) -> None:
    import base64

    from bulkmail.errors import SMTPAuthError
    from bulkmail.protocol.auth import Credentials

    challenge = base64.b64encode(
        b'realm="x.test",nonce="abc",qop="auth",algorithm=md5-sess'  # no charset=utf-8
    )

    async def handler(conn: Conn) -> None:
        await conn.greet("STARTTLS")
        await conn.readline()
        await conn.send(b"220 go\r\n")
        await conn.start_tls(tls.server)
        await conn.readline()
        await conn.ehlo_reply("AUTH DIGEST-MD5")
        await conn.readline()  # AUTH DIGEST-MD5
        await conn.send(b"334 " + challenge + b"\r\n")
        await conn.readline()  # must be the cancel
        await conn.send(b"501 5.7.0 cancelled\r\n")
        await trio.sleep_forever()

    with trio.fail_after(10):
        error, _, server = await run_session(
            handler, host="localhost", secure="starttls", ssl_context=tls.client,
            credentials=Credentials("user", "пароль", mechanism="DIGEST-MD5"),
        )
    assert isinstance(error, SMTPAuthError)
    assert server.log[-1] == b"*"  # RFC 4954: the client cancels, no half-finished exchange


async def test_a_silent_server_mid_batch_times_out_naming_what_it_waited_for(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.greet(*EHLO)
        for _ in range(4):  # MAIL, 2 RCPT, DATA
            await conn.readline()
        await conn.send(b"250 ok\r\n250 ok\r\n")  # MAIL and the first RCPT only
        await trio.sleep_forever()

    session, results, _ = await run_session(handler, timeouts=Timeouts(rcpt=300))
    assert isinstance(session.error, SMTPTimeout)
    assert session.error.reply.text.endswith("no reply to RCPT within 300s")
    assert all(r.code == 451 for r in results[0].replies) and not results[0].in_doubt
