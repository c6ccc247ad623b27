"""How a sink behaves: one frozen value, passed down (no global state)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class SinkConfig:
    """Everything a :class:`~bulkmail.sink.Sink` needs; all faults are off by default."""

    host: str = "127.0.0.1"
    #: 0 picks a free port; :attr:`Sink.port` tells which
    port: int = 0
    #: the name in the greeting and the EHLO reply
    hostname: str = "sink.bulkmail.test"
    #: PEM files, loaded when ``ssl_context`` is not given
    tls_cert: str | None = None
    tls_key: str | None = None
    ssl_context: ssl.SSLContext | None = None
    #: TLS from the first byte (port 465 style) instead of STARTTLS
    implicit_tls: bool = False
    #: (user, password) for AUTH PLAIN / LOGIN; MAIL then needs AUTH first
    auth: tuple[str, str] | None = None
    pipelining: bool = True
    chunking: bool = True
    #: advertised as SIZE; larger content gets 552 after its end
    max_message_size: int = 50 * 1024 * 1024
    #: seconds without progress before a client gets 421 and is closed
    idle_timeout: float = 300.0
    #: seconds of simulated round trip: paid once per batch of replies (the greeting is one)
    latency: float = 0.0
    #: probability that a RCPT gets 450 (rate limited) / 550 (no such user)
    defer_rate: float = 0.0
    reject_rate: float = 0.0
    #: 451 on each recipient's first attempt, accepted from the second on
    greylist: bool = False
    #: 452 past this many accepted recipients in one transaction
    max_rcpts: int | None = None
    #: probability that a transaction ends in a disconnect instead of its final reply
    drop_rate: float = 0.0
    #: seeds the fault decisions, so a run can be repeated exactly
    seed: int | None = None
    #: keep every accepted message in :attr:`Sink.messages` (tests only: costs memory)
    record_messages: bool = False
    #: :func:`~bulkmail.sink.run_sink` rewrites this JSON file every second and at exit
    stats_file: str | None = None
    #: concurrent sessions served; a client beyond them gets 421 at once and is
    #: closed (instead of waiting out its greeting timeout once descriptors run out)
    max_connections: int | None = None

    def __post_init__(self) -> None:
        for name in ("defer_rate", "reject_rate", "drop_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate}")
        if self.max_rcpts is not None and self.max_rcpts < 1:
            raise ValueError("max_rcpts must be at least 1")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.latency < 0 or self.idle_timeout <= 0 or self.max_message_size < 1:
            raise ValueError("latency, idle_timeout and max_message_size must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.implicit_tls and self.tls_cert is None and self.ssl_context is None:
            raise ValueError("implicit_tls needs tls_cert/tls_key or ssl_context")

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The context to serve TLS with, or None when TLS is not configured."""
        if self.ssl_context is not None:
            return self.ssl_context
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context
