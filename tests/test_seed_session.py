"""Replays the seed session (tests/data/smtp-session-example.txt, copied from
shared/seeds) against a scripted server and checks every command the client
sends, in order -- STARTTLS, EHLO again, AUTH PLAIN, the transaction, QUIT."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trustme

from bulkmail.config import SessionConfig
from bulkmail.protocol.auth import Credentials
from bulkmail.protocol.data import PreparedMessage
from bulkmail.session import Envelope, SMTPSession

from .scripted import Conn, start_scripted

SEED = Path(__file__).parent / "data" / "smtp-session-example.txt"


def load_seed() -> dict:
    text = SEED.read_text()
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


def wire(data: str) -> bytes:
    """A seed server entry as bytes on the wire (its lines are joined by \\n)."""
    return "".join(line + "\r\n" for line in data.split("\n")).encode()


async def test_seed_session_replayed_command_by_command() -> None:
    seed = load_seed()
    steps = seed["session"]
    server_says = [s["data"] for s in steps if s.get("direction") == "server"]
    client_says = [s["data"] for s in steps if s.get("direction") == "client"]
    message_text = client_says[7].removesuffix("\r\n.") + "\r\n"

    ca = trustme.CA()
    cert = ca.issue_cert("mail.example.com")
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = __import__("ssl").create_default_context()
    ca.configure_trust(client_ctx)

    received: list[str] = []

    async def handler(conn: Conn) -> None:
        replies = iter(server_says)
        await conn.send(wire(next(replies)))  # greeting
        while True:
            line = (await conn.readline()).decode()
            received.append(line)
            reply = next(replies)
            await conn.send(wire(reply))
            if line == "STARTTLS":
                await conn.start_tls(server_ctx)
            elif line == "DATA":
                data = await conn.read_data()
                received.append(data.decode())
                await conn.send(wire(next(replies)))
            elif line == "QUIT":
                return

    async with trio.open_nursery() as nursery:
        server, port = await start_scripted(nursery, handler)
        config = SessionConfig(
            host="mail.example.com",
            port=port,
            secure="starttls",
            ssl_context=client_ctx,
            credentials=Credentials("username", "password", authzid="username"),
            client_hostname="client.sender.com",
            trace=True,
        )
        session = await SMTPSession.connect(config, "127.0.0.1")
        assert session.tls_active and session.authenticated
        results = await session.send_batch(
            [
                Envelope(
                    "alice@sender.com",
                    ["bob@example.com"],
                    PreparedMessage.from_bytes(message_text.encode()),
                )
            ]
        )
        await session.quit()
        nursery.cancel_scope.cancel()

    assert not server.errors
    assert results[0].replies[0].code == 250
    assert results[0].replies[0].text == "Ok: queued as A1B2C3D4E5"
    expected = [c if not c.startswith("From:") else c + "\r\n" for c in client_says]
    assert received == expected
    # the trace has the seed's shape, with the secret redacted
    trace = session.trace
    assert trace is not None
    assert trace.entries[0] == {"direction": "server", "data": server_says[0]}
    assert {"note": "[ TLS handshake occurs ]"} in trace.entries
    assert not any("dXNlcm5hbWUAdXNlcm5hbWUAcGFzc3dvcmQ=" in str(e) for e in trace.entries)
