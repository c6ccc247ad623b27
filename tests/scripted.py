"""A byte-level scripted SMTP server for tests: each test writes the server's side.

In the spirit of Exim's test server: the handler reads exactly what the client
sent and answers exactly what the test wants, including things no sane server
would say.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import trio


class Conn:
    """One accepted connection as seen by the scripted server."""

    def __init__(self, stream: trio.abc.Stream, log: list[bytes]) -> None:
        self.stream: trio.abc.Stream = stream
        self.buf = bytearray()
        self.log = log

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("client closed")
        self.buf += data

    async def readline(self) -> bytes:
        """One command line without CRLF (recorded in the log)."""
        while b"\r\n" not in self.buf:
            await self._fill()
        line, _, rest = bytes(self.buf).partition(b"\r\n")
        self.buf = bytearray(rest)
        self.log.append(line)
        return line

    async def read_data(self) -> bytes:
        """Message content up to and including the CRLF.CRLF terminator."""
        while True:
            end = self.buf.find(b"\r\n.\r\n")
            if end >= 0 or self.buf.startswith(b".\r\n"):
                cut = end + 5 if end >= 0 else 3
                data = bytes(self.buf[:cut])
                del self.buf[:cut]
                self.log.append(b"<data>")
                return data
            await self._fill()

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def start_tls(self, context: ssl.SSLContext) -> None:
        assert not self.buf, "client sent data before the TLS handshake"
        ssl_stream = trio.SSLStream(self.stream, context, server_side=True)
        await ssl_stream.do_handshake()
        self.stream = ssl_stream

    async def ehlo_reply(self, *extensions: str, name: str = "scripted.test") -> None:
        lines = [name, *extensions]
        out = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
        await self.send(out)


Handler = Callable[[Conn], Awaitable[None]]


class ScriptedServer:
    """Runs ``handler`` for each connection; ``log`` holds every line received."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.log: list[bytes] = []
        self.connections = 0
        self.errors: list[BaseException] = []

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        task_status.started(port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = Conn(stream, self.log)
        try:
            await self.handler(conn)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a failing script must fail the test, not vanish
            self.errors.append(exc)
        finally:
            with trio.CancelScope(shield=True):
                await conn.stream.aclose()


async def start_scripted(nursery: trio.Nursery, handler: Handler) -> tuple[ScriptedServer, int]:
    server = ScriptedServer(handler)
    port = await nursery.start(server.serve)
    return server, port
