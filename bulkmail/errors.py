"""Errors of the I/O layers, each carrying an SMTP reply.

Every failure that ends a session -- a refused connection, a timeout, a 421,
a TLS failure -- is expressed as a :class:`Reply` (synthesised when the server
said nothing), so the policy that maps replies to delivered / bounced /
deferred has one input type.  Classes also subclass the matching builtins
(``ConnectionError``, ``TimeoutError``) so callers can catch them naturally.
"""

from __future__ import annotations

from .protocol.replies import Reply, synthetic_reply

__all__ = [
    "SMTPAuthError", "SMTPCommandError", "SMTPConnectError", "SMTPConnectionLost", "SMTPError",
    "SMTPProtocolViolation", "SMTPServerUnavailable", "SMTPTLSError", "SMTPTimeout",
    "synthetic_reply",
]


class SMTPError(Exception):
    """Base: something ended a session or a command; ``reply`` says what."""

    def __init__(self, reply: Reply, *, host: str | None = None) -> None:
        super().__init__(str(reply) + (f" (host {host})" if host else ""))
        self.reply = reply
        self.host = host

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def enhanced(self) -> str | None:
        return self.reply.enhanced


class SMTPConnectError(SMTPError, ConnectionError):
    """The TCP connection could not be made."""


class SMTPConnectionLost(SMTPError, ConnectionError):
    """The server closed or reset the connection mid-session."""


class SMTPTimeout(SMTPError, TimeoutError):
    """A stage deadline (RFC 5321 §4.5.3.2) passed without the reply."""


class SMTPServerUnavailable(SMTPError):
    """The server said 421 (or greeted with 554): the session is over."""


class SMTPProtocolViolation(SMTPError):
    """The server broke the protocol; the session is closed and never reused."""


class SMTPTLSError(SMTPError):
    """TLS was required but unavailable, refused, or failed verification."""


class SMTPAuthError(SMTPError):
    """Authentication refused by the server or not allowed here (plaintext)."""


class SMTPCommandError(SMTPError):
    """A session-level command (EHLO, RSET, ...) got an unexpected reply."""
