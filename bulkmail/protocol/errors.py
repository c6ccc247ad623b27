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

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"invalid address {address!r}: {reason}")
        self.address = address
        self.reason = reason


class InvalidArgument(LocalProtocolError):
    """A command argument (EHLO name, ESMTP parameter, ...) with forbidden characters."""


class MessageError(LocalProtocolError):
    """Message content that cannot be sent to this server as it is."""


class RemoteProtocolError(SMTPProtocolError):
    """The server broke the protocol; ``data`` holds (a bounded prefix of) what was read."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data[:1024]
