"""Frozen configuration for one SMTP session (mirrors the seed session schema)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from .protocol.auth import Credentials

#: none: plaintext only; may: STARTTLS when offered, unverified (Postfix's
#: ``may``); starttls: STARTTLS required and verified; tls: implicit TLS (465).
Security = Literal["none", "may", "starttls", "tls"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-stage deadlines in seconds; defaults are RFC 5321 §4.5.3.2's minimums."""

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    tls: float = 60.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_done: float = 600.0
    command: float = 300.0
    quit: float = 10.0


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How to talk to one server.  ``host`` is the name TLS verifies against."""

    host: str
    port: int = 25
    secure: Security = "may"
    ssl_context: ssl.SSLContext | None = None
    credentials: Credentials | None = None
    allow_plaintext_auth: bool = False
    client_hostname: str = field(default_factory=socket.gethostname)
    timeouts: Timeouts = field(default_factory=Timeouts)
    use_pipelining: bool = True
    use_chunking: bool = True
    #: transactions written ahead of their replies when BDAT pipelining is on
    chunking_window: int = 32
    source_address: str | None = None
    trace: bool = False
    max_reply_line: int = 4096

    def tls_context(self) -> ssl.SSLContext:
        """The context for this session; opportunistic TLS does not verify."""
        if self.ssl_context is not None:
            return self.ssl_context
        return _default_context(verify=self.secure != "may")


@lru_cache(maxsize=2)
def _default_context(*, verify: bool) -> ssl.SSLContext:
    """Built once per process, not per connection: loading the system CA store
    costs milliseconds, and a context is safe to share between sessions."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
