"""Error hierarchy of the sans-IO layer.

Split the h11 way: a ``LocalProtocolError`` is our misuse (bad address, bad
argument, nothing was sent); a ``RemoteProtocolError`` is the peer's fault and
carries the bytes that were read so a log can show what the server said.
"""

from __future__ import annotations


class SMTPProtocolError(Exception):
    """Base class for every protocol-level error bulkmail raises."""


class LocalProtocolError(SMTPProtocolError, ValueError):
    """We were asked to send something SMTP forbids; nothing was written."""


class InvalidAddress(LocalProtocolError):
    """An envelope address that must not reach the wire, with the reason."""

    def __init__(self, address: str, reason: str, *, needs_smtputf8: bool = False) -> None:
        super().__init__(f"invalid address {address!r}: {reason}")
        self.address = address
        self.reason = reason
        #: refused only because the server lacks SMTPUTF8 (RFC 6531 §3.5: 553 5.6.7)
        self.needs_smtputf8 = needs_smtputf8


class InvalidArgument(LocalProtocolError):
    """A command argument (EHLO name, ESMTP parameter, ...) with forbidden characters."""


class MessageError(LocalProtocolError):
    """Message content that cannot be sent to this server as it is.

    ``code`` and ``enhanced`` are the reply every recipient is given for it
    (552 5.3.4 for SIZE, else 554 5.6.0), chosen where the error is raised.
    """

    def __init__(self, message: str, *, code: int = 554, enhanced: str = "5.6.0") -> None:
        super().__init__(message)
        self.code = code
        self.enhanced = enhanced


class RemoteProtocolError(SMTPProtocolError):
    """The server broke the protocol; ``data`` holds (a bounded prefix of) what was read."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data[:1024]
