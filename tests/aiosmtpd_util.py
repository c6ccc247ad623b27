"""aiosmtpd (an independent SMTP server from PyPI) on 127.0.0.1, for interop tests."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class RecordingHandler:
    """Accepts everything and keeps what it got."""

    messages: list[Received] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.reject:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode()
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), content,
                     list(envelope.mail_options))
        )
        return "250 2.0.0 OK queued"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Authenticator:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.attempts: list[tuple[str, bool]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login == self.user and auth_data.password == self.password
        )
        self.attempts.append((mechanism, ok))
        return AuthResult(success=ok)


@contextmanager
def aiosmtpd_server(handler: RecordingHandler | None = None, *,
                    ssl_context: ssl.SSLContext | None = None,
                    **smtp_kwargs: Any) -> Iterator[tuple[RecordingHandler, int]]:
    handler = handler or RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            ssl_context=ssl_context, server_hostname="localhost",
                            **smtp_kwargs)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()
