"""Loopback servers for the TLS policy tests: an HTTPS server for MTA-STS
policy files and a TCP relay that records (and may tamper with) an SMTP
session's bytes -- the man in the middle that strips STARTTLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import trio


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})


class PolicyServer:
    """HTTPS on 127.0.0.1: ``routes[(host, path)]`` answers; ``requests`` logs (host, path)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.routes: dict[tuple[str, str], Response] = {}
        self.requests: list[tuple[str, str]] = []
        self.port = 0

    def policy(self, domain: str, text: str, **kwargs: object) -> None:
        body = text.encode()
        self.routes[f"mta-sts.{domain}", "/.well-known/mta-sts.txt"] = Response(
            body=body, **kwargs  # type: ignore[arg-type]
        )

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_ssl_over_tcp_listeners(0, self.context, host="127.0.0.1")
        self.port = listeners[0].transport_listener.socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            host = next(h.split(":", 1)[1].strip() for h in head[1:]
                        if h.lower().startswith("host:"))
            self.requests.append((host, path))
            response = self.routes.get((host, path), Response(404, b"not found"))
            lines = [f"HTTP/1.1 {response.status} X"]
            headers = {"Content-Length": str(len(response.body)), "Connection": "close",
                       **response.headers}
            lines += [f"{k}: {v}" for k, v in headers.items()]
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + response.body)
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Interceptor:
    """Relays 127.0.0.1:``port`` to ``target``; ``sent`` holds every byte the client
    wrote (what an eavesdropper sees); with ``strip_starttls`` it rewrites the
    server's STARTTLS keyword so the client never sees it offered."""

    def __init__(self, target: int, *, strip_starttls: bool = False) -> None:
        self.target = target
        self.strip_starttls = strip_starttls
        self.sent = bytearray()
        self.connections = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        server = await trio.open_tcp_stream("127.0.0.1", self.target)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, True, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, False, nursery.cancel_scope)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, upstream: bool,
                    scope: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                if upstream:
                    self.sent += data
                elif self.strip_starttls:
                    data = data.replace(b"STARTTLS", b"XXXXXXXX")
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()
