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

    async def greet(self, *extensions: str) -> None:
        """Greet, read the client's EHLO and answer it with ``extensions``."""
        await self.send(b"220 x\r\n")
        await self.readline()
        await self.ehlo_reply(*extensions)

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


class MiniSMTP:
    """A small but real SMTP server loop for scripted tests, with hooks.

    Subclass-free: pass callables.  ``rcpt(address, n)`` returns the RCPT reply
    (n counts RCPTs in this transaction); ``data_done(rcpts, content)`` returns
    the end-of-data reply or ``None`` to drop the connection without one;
    ``mail(sender)`` the MAIL reply.  ``delivered`` records accepted copies.
    """

    def __init__(
        self,
        *,
        extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
        greeting: str = "220 mini.test ESMTP\r\n",
        mail: Callable[[str], str] | None = None,
        rcpt: Callable[[str, int], str] | None = None,
        data_cmd: Callable[[list[str]], str | None] | None = None,
        data_done: Callable[[list[str], bytes], str | None] | None = None,
        forget_pipelined_mail: bool = False,
    ) -> None:
        self.forget_pipelined_mail = forget_pipelined_mail
        self.extensions = extensions
        self.greeting = greeting
        self.mail = mail or (lambda sender: "250 2.1.0 Ok\r\n")
        self.rcpt = rcpt or (lambda address, n: "250 2.1.5 Ok\r\n")
        self.data_cmd = data_cmd or (
            lambda rcpts: "354 go ahead\r\n" if rcpts else "554 5.5.1 no valid recipients\r\n"
        )
        self.data_done = data_done or (lambda rcpts, content: "250 2.0.0 queued\r\n")
        self.delivered: list[str] = []
        self.mail_count = 0
        self.sessions = 0
        self.transactions = 0

    async def __call__(self, conn: Conn) -> None:
        self.sessions += 1
        await conn.send(self.greeting)
        if not self.greeting.startswith("220"):
            return
        sender: str | None = None
        rcpts: list[str] = []
        n = 0
        while True:
            line = (await conn.readline()).decode()
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                await conn.ehlo_reply(*self.extensions)
            elif verb == "MAIL":
                self.mail_count += 1
                reply = self.mail(line)
                forget = self.forget_pipelined_mail and bool(conn.buf)
                if reply.startswith("250") and not forget:
                    sender, rcpts, n = line, [], 0
                await conn.send(reply)
                if reply.startswith("421"):
                    return
            elif verb == "RCPT":
                n += 1
                address = line.partition("<")[2].partition(">")[0]
                if sender is None:
                    await conn.send("503 5.5.1 need MAIL\r\n")
                    continue
                reply = self.rcpt(address, n)
                if reply.startswith("25"):
                    rcpts.append(address)
                await conn.send(reply)
                if reply.startswith("421"):
                    return
            elif verb == "DATA":
                if sender is None:
                    await conn.send("503 5.5.1 need MAIL\r\n")
                    continue
                reply = self.data_cmd(rcpts)
                if reply is None:
                    return
                await conn.send(reply)
                if not reply.startswith("354"):
                    continue
                content = await conn.read_data()
                self.transactions += 1
                done = self.data_done(rcpts, content)
                if done is None:
                    self.delivered.extend(rcpts)  # accepted, but the reply never leaves
                    return
                if done.startswith("250") and rcpts:
                    self.delivered.extend(rcpts)
                await conn.send(done)
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                await conn.send("250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                await conn.send("221 2.0.0 Bye\r\n")
                return
            elif verb == "NOOP":
                await conn.send("250 2.0.0 Ok\r\n")
            else:
                await conn.send("500 5.5.2 what?\r\n")
