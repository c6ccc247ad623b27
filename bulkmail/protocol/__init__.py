"""Sans-IO SMTP: no sockets, no trio, no clock -- bytes in, bytes out.

:class:`ClientConnection` is the whole client side of a connection (its
rules in :mod:`.handshake` and :mod:`.pipeline`); the rest are its parts.
"""

from __future__ import annotations

from .client import Stage
from .connection import ClientConnection, Event, Failure, Mode
from .errors import (
    InvalidAddress,
    InvalidArgument,
    LocalProtocolError,
    MessageError,
    RemoteProtocolError,
    SMTPProtocolError,
)
from .extensions import Extensions, parse_ehlo
from .replies import Reply, ReplyParser
from .transaction import Envelope, TransactionResult

__all__ = [
    "ClientConnection",
    "Envelope",
    "Event",
    "Extensions",
    "Failure",
    "InvalidAddress",
    "InvalidArgument",
    "LocalProtocolError",
    "MessageError",
    "Mode",
    "RemoteProtocolError",
    "Reply",
    "ReplyParser",
    "SMTPProtocolError",
    "Stage",
    "TransactionResult",
    "parse_ehlo",
]
