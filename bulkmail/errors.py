"""Errors of the I/O layers, each carrying an SMTP reply.

Every failure that ends a session -- a refused connection, a timeout, a 421,
a TLS failure -- is expressed as a :class:`Reply` (synthesised when the server
said nothing), so the policy that maps replies to delivered / bounced /
deferred has one input type.  Classes also subclass the matching builtins
(``ConnectionError``, ``TimeoutError``) so callers can catch them naturally.
"""

from __future__ import annotations

import os

from .protocol.handshake import Failure
from .protocol.replies import Reply, synthetic_reply

__all__ = [
    "SMTPAuthError", "SMTPCommandError", "SMTPConnectError", "SMTPConnectionLost", "SMTPError",
    "SMTPProtocolViolation", "SMTPServerUnavailable", "SMTPTLSError", "SMTPTimeout",
    "os_error_text", "synthetic_reply",
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


def os_error_text(exc: BaseException) -> str:
    """What the operating system said, plainly: ``[Errno 111] Connection refused``.

    trio reports a failed connect as ``all attempts to connect to ... failed``
    with the real errors in an exception group as its cause; an operator
    needs those (refused, unreachable, no route), not the wrapper, so the
    distinct ``[Errno N] strerror`` of each attempt are joined (trio's own
    strerror repeats the address: the C library's text is used).
    """
    found: list[str] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        elif isinstance(error, OSError) and error.errno is not None:
            text = f"[Errno {error.errno}] {os.strerror(error.errno)}"
            if text not in found:
                found.append(text)
        elif error.__cause__ is not None:
            walk(error.__cause__)

    walk(exc)
    if not found and exc.__cause__ is not None:
        walk(exc.__cause__)
    return "; ".join(found) if found else str(exc) or type(exc).__name__


#: the exception each way a session can end (``protocol.handshake.Failure``) is raised as
ERROR_FOR_FAILURE: dict[Failure, type[SMTPError]] = {
    Failure.UNAVAILABLE: SMTPServerUnavailable, Failure.COMMAND: SMTPCommandError,
    Failure.TLS: SMTPTLSError, Failure.AUTH: SMTPAuthError,
    Failure.PROTOCOL: SMTPProtocolViolation, Failure.LOST: SMTPConnectionLost,
    Failure.TIMEOUT: SMTPTimeout,
}


def lost_connection(text: str) -> Reply:
    """The reply for a session that failed on the network: deferral, never a bounce."""
    return synthetic_reply(451, "4.4.2", text)
