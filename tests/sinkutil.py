"""Helpers for tests that need the project's sink: start one, get TLS for it,
talk to it byte by byte.

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, greylist=True)
        client = await RawClient.connect(sink.port)
        ...
        nursery.cancel_scope.cancel()
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trio
import trustme

from bulkmail.sink import Sink, SinkConfig

#: where :func:`make_tls` writes the server's PEM files, for ``--tls-cert`` / ``--tls-key``
CERT_FILE = "sink-cert.pem"
KEY_FILE = "sink-key.pem"


async def start_sink(nursery: trio.Nursery, **config_kwargs: object) -> Sink:
    """A sink serving in ``nursery`` on 127.0.0.1 and a free port (``sink.port``)."""
    sink = Sink(SinkConfig(**config_kwargs))  # type: ignore[arg-type]
    await nursery.start(sink.serve)
    return sink


def make_tls(tmp_path: Path) -> tuple[trustme.CA, ssl.SSLContext, ssl.SSLContext]:
    """(ca, server context, client context) for 127.0.0.1, localhost and
    sink.bulkmail.test; the server's certificate and key are also written to
    ``tmp_path / CERT_FILE`` and ``tmp_path / KEY_FILE``."""
    ca = trustme.CA()
    cert = ca.issue_cert("sink.bulkmail.test", "localhost", "127.0.0.1", "::1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / CERT_FILE))
    cert.private_key_pem.write_to_path(str(tmp_path / KEY_FILE))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return ca, server, client


class RawClient:
    """An SMTP client with no opinions: write any bytes, read whole replies."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = b""

    @classmethod
    async def connect(cls, port: int, *, greeting: bool = True) -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        if greeting:
            await client.replies(1)
        return client

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def replies(self, n: int) -> list[bytes]:
        """The next ``n`` replies, each as its last line (``b"250 2.1.0 Ok"``).

        Raises EOFError if the server closes first.
        """
        out: list[bytes] = []
        while len(out) < n:
            while b"\r\n" not in self._buf:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"closed after {out!r}")
                self._buf += data
            line, _, self._buf = self._buf.partition(b"\r\n")
            if line[3:4] != b"-":
                out.append(line)
        return out

    async def codes(self, n: int) -> list[int]:
        return [int(reply[:3]) for reply in await self.replies(n)]

    async def start_tls(self, context: ssl.SSLContext, hostname: str = "127.0.0.1") -> None:
        tls = trio.SSLStream(self.stream, context, server_hostname=hostname)
        await tls.do_handshake()
        self.stream = tls

    async def aclose(self) -> None:
        await self.stream.aclose()
